"""Training curves as a PNG. matplotlib is optional: without it ``plot_history`` raises ImportError."""


def plot_history(history, path, title=None):
    """Save loss and accuracy per epoch (train and validation, where recorded) to ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"plot_history needs matplotlib ({e}); pip install matplotlib") from None
    logs = history.history if hasattr(history, "history") else history
    epochs = history.epochs if hasattr(history, "epochs") else list(range(1, len(logs["loss"]) + 1))
    panels = [("loss", "loss"), ("accuracy", "accuracy (%)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4))
    for ax, (metric, label) in zip(axes, panels):
        for key, name in ((metric, "train"), ("val_" + metric, "validation")):
            values = logs.get(key)
            if values and any(v is not None for v in values):
                points = [(e, v * (100 if metric == "accuracy" else 1)) for e, v in zip(epochs, values) if v is not None]
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_run_outputs(out, history, metrics, title):
    """What the examples leave in ``out`` after training: ``metrics.json`` (``metrics`` as JSON)
    and ``curves.png`` (skipped, with the reason, when matplotlib is missing). Returns a line
    naming every file written, with its folder, for the user to find them."""
    import json
    import os
    path = os.path.join(out, "metrics.json")
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    try:
        curves = plot_history(history, os.path.join(out, "curves.png"), title=title)
    except ImportError as e:
        return f"note: no plot ({e}); wrote {path}"
    return f"wrote {curves} and {path}"
