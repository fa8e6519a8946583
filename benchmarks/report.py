"""Printing the table as results arrive, ratios, targets, the JSON file and the plot."""
import json
import math
import os
import statistics
import sys
from contextlib import contextmanager

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety
    tqdm = None

THROUGHPUT_CASES = ("mlp", "mlp_large", "inference", "cnn")


# ---- formatting ------------------------------------------------------------------------------------------
def fmt_time(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def fmt_rate(x):
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def spread(timing):
    """'IQR a..b' of a Timing dict, as a +- percentage of the median, and min..max."""
    med = timing["median_s"]
    iqr = 100.0 * timing["iqr_s"] / med if med else 0.0
    return f"±{iqr / 2:.1f}%", f"{fmt_time(timing['min_s'])}..{fmt_time(timing['max_s'])}"


# ---- live output ------------------------------------------------------------------------------------------
class Reporter:
    """Prints rows as they come (through tqdm.write while a bar is shown) and keeps notes."""

    def __init__(self, stream=None, progress=True):
        self.stream = stream or sys.stdout
        # a bar only on a terminal: in a log it would interleave with the rows
        self.progress_enabled = progress and tqdm is not None and sys.stderr.isatty()
        self._bar = None
        self.notes = []

    def line(self, text=""):
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def header(self, title, columns=None, widths=None):
        self.line("")
        self.line(f"== {title} ==")
        if columns:
            self.row(columns, widths)
            self.line("-" * (sum(widths) + 2 * (len(widths) - 1)))

    def row(self, cells, widths, left=2):
        """One table row: the first ``left`` cells flush left, the others flush right, except a
        last column of width 1 (free text, such as flags), flush left."""
        parts = [str(c).ljust(w) if i < left or (i == len(widths) - 1 and w == 1) else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        self.line("  ".join(parts).rstrip())

    def note(self, text):
        """Print and keep a note (each distinct text once)."""
        if text in self.notes:
            return
        self.notes.append(text)
        self.line(f"  note: {text}")

    @contextmanager
    def progress(self, total, desc):
        if not self.progress_enabled or total <= 1:
            yield _NoBar()
            return
        bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        self._bar = bar
        try:
            yield bar
        finally:
            self._bar = None
            bar.close()


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass


# ---- ratios --------------------------------------------------------------------------------------------------
def _speed(record):
    """Higher-is-better number of a record: throughput, or 1/time for ops and time to accuracy."""
    if record.get("unit") == "samples/s":
        return record["value"]
    if record.get("unit") == "s" and record.get("value"):
        return 1.0 / record["value"]
    return None


def _key(record):
    if record["case"] == "ops":
        return ("ops", record["op"], record["shape"])
    if record["case"] == "tta":
        return ("tta", record["model"], record["batch"])
    return (record["case"], record["model"], record["batch"])


def compute_ratios(records):
    """Speed ratios (>1: the first is faster) for every group measured by several contestants.

    gradflow / PyTorch and gradflow / NumPy loop on the same device, captured / eager,
    and GPU / CPU for each contestant.
    """
    groups = {}
    for r in records:
        if r["case"] == "tta" and not r.get("reached"):
            continue
        if _speed(r) is None:
            continue
        groups.setdefault(_key(r), {})[(r["contestant"], r["device"])] = r
    pairs = [("gradflow", "torch"), ("gradflow", "numpy-loop"), ("gradflow-captured", "torch"),
             ("gradflow-captured", "gradflow"), ("gradflow-captured", "numpy-loop"),
             ("gradflow-captured", "torch-cudagraph"), ("torch-cudagraph", "torch")]
    out = []
    for key, by in groups.items():
        for device in ("cpu", "cuda"):
            for a, b in pairs:
                if (a, device) in by and (b, device) in by:
                    out.append(_ratio(key, f"{a} / {b}", device, by[(a, device)], by[(b, device)]))
        for name in sorted({c for c, _ in by}):
            if (name, "cuda") in by and (name, "cpu") in by:
                out.append(_ratio(key, f"{name} GPU / CPU", "cuda/cpu", by[(name, "cuda")], by[(name, "cpu")]))
    return out


def _ratio(key, what, device, a, b):
    return {"group": list(key), "what": what, "device": device, "ratio": speed_ratio(a, b),
            "a": a["label"], "b": b["label"]}


def speed_ratio(a, b):
    """How much faster record ``a`` ran than record ``b`` (>1: ``a`` is faster).

    Two timings of one measurement were taken side by side: round k timed a repeat of each
    contestant, seconds apart. The ratio is then the median over the rounds of b's time / a's
    time in that round (rounds either one set aside, for other processes' load, left out).
    A virtual machine's speed wanders by tens of percent over seconds to minutes; the ratio of
    the two medians mixes the rounds where one contestant met a slow patch with rounds where
    the other did, the per-round ratio cancels it (in the runs of 2026-12-01, the former
    spread 0.87-1.12 over seven runs of one row, the latter 0.92-0.98). Records without such
    paired timings (time to accuracy) compare throughputs.
    """
    ta, tb = a.get("timing"), b.get("timing")
    if ta and tb and len(ta.get("times", ())) == len(tb.get("times", ())):
        pairs = [y / x for x, y, use_x, use_y in zip(ta["times"], tb["times"], ta["used"], tb["used"])
                 if use_x and use_y and x > 0]
        if len(pairs) >= 2:
            return statistics.median(pairs)
    return _speed(a) / _speed(b)


def print_ratios(reporter, ratios, case):
    rows = [r for r in ratios if r["group"][0] == case]
    if not rows:
        return
    reporter.line("")
    reporter.line(f"  ratios (speed, >1 means the first is faster): {case}")
    for r in rows:
        where = " ".join(str(g) for g in r["group"][1:])
        reporter.line(f"    {where:<34} {r['what']:<34} {r['device']:<9} {fmt_ratio(r['ratio'])}")


# ---- targets ---------------------------------------------------------------------------------------------
def _find(records, case, contestant, device, batch=None):
    for r in records:
        if r["case"] == case and r["contestant"] == contestant and r["device"] == device and \
                (batch is None or r["batch"] == batch):
            return r
    return None


def _target(what, a, b, threshold, a_label, b_label):
    if a is None or b is None:
        missing = " and ".join(label for label, r in ((a_label, a), (b_label, b)) if r is None)
        return {"target": what, "threshold": threshold, "ratio": None, "status": "not measured",
                "detail": f"no {missing} result in this run"}
    ratio = speed_ratio(a, b)
    detail = f"{a['label']} {fmt_rate(a['value'])}/s vs {b['label']} {fmt_rate(b['value'])}/s"
    shaky = [r["label"] for r in (a, b) if r.get("drift", 1.0) > 1.25 or r.get("timing", {}).get("contended")]
    if shaky:
        detail += f"; unreliable: the machine drifted or was busy while measuring {', '.join(shaky)}"
    return {"target": what, "threshold": threshold, "ratio": ratio,
            "status": "met" if ratio >= threshold else "missed", "detail": detail, "reliable": not shaky}


def compute_targets(records, mlp_batches, large_batches):
    """The issue's throughput targets, each met / missed / not measured."""
    def check(what, case, batch, device, peer, threshold, ours="gradflow"):
        a = _find(records, case, ours, device, batch)
        b = _find(records, case, peer, device, batch)
        out.append(_target(what, a, b, threshold, f"{ours}/{device}", f"{peer}/{device}"))

    out = []
    for b in mlp_batches:
        check(f"CPU mlp batch {b}: gradflow >= 1.0x PyTorch eager", "mlp", b, "cpu", "torch", 1.0)
    check("CPU mlp batch 128: gradflow >= 0.85x NumPy loop", "mlp", 128, "cpu", "numpy-loop", 0.85)
    check("GPU mlp batch 128: gradflow >= 1.0x PyTorch eager", "mlp", 128, "cuda", "torch", 1.0)
    check("CPU cnn batch 128: gradflow >= 0.8x PyTorch eager", "cnn", 128, "cpu", "torch", 0.8)
    check("GPU cnn batch 128: gradflow >= 0.8x PyTorch eager", "cnn", 128, "cuda", "torch", 0.8)
    for b in large_batches:
        check(f"GPU mlp_large batch {b} (matmul-bound): gradflow >= 0.9x PyTorch eager", "mlp_large", b, "cuda",
              "torch", 0.9)
    # issue 12: the whole step as one replayed plan
    cap = "gradflow-captured"
    for b in (32, 128):
        if b in mlp_batches:
            check(f"CPU mlp batch {b}: compiled step >= 1.0x NumPy loop", "mlp", b, "cpu", "numpy-loop", 1.0, cap)
            check(f"CPU mlp batch {b}: compiled step >= 1.3x gradflow eager", "mlp", b, "cpu", "gradflow", 1.3, cap)
    check("CPU inference batch 128: compiled forward >= 1.0x PyTorch no_grad", "inference", 128, "cpu", "torch",
          1.0, cap)
    check("GPU mlp batch 128: compiled step >= 3x PyTorch eager", "mlp", 128, "cuda", "torch", 3.0, cap)
    check("GPU mlp batch 128: compiled step >= 1.0x PyTorch CUDA graph", "mlp", 128, "cuda", "torch-cudagraph",
          1.0, cap)
    return out


def print_targets(reporter, targets):
    reporter.header("targets")
    for t in targets:
        mark = {"met": "MET   ", "missed": "MISSED", "not measured": "n/a   "}[t["status"]]
        ratio = fmt_ratio(t["ratio"]) if t["ratio"] is not None else ""
        reporter.line(f"  [{mark}] {t['target']:<70} {ratio:>7}  ({t['detail']})")


# ---- files ------------------------------------------------------------------------------------------------
def write_json(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def plot(path, records, title=""):
    """Throughput vs batch size, one line per contestant/device, one panel per throughput case.

    Returns None on success, else why the plot was skipped.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written (pip install matplotlib)"
    panels = []
    for case in THROUGHPUT_CASES:
        for model in sorted({r["model"] for r in records if r["case"] == case}):
            rows = [r for r in records if r["case"] == case and r["model"] == model and r.get("unit") == "samples/s"]
            if rows:
                panels.append((case, model, rows))
    if not panels:
        return "no throughput results to plot"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    styles = {"cpu": "-", "cuda": "--"}
    markers = {"gradflow": "o", "gradflow-captured": "D", "torch": "s", "numpy-loop": "^"}
    for ax, (case, model, rows) in zip(axes[0], panels):
        for label in sorted({r["label"] for r in rows}):
            pts = sorted((r["batch"], r["value"]) for r in rows if r["label"] == label)
            contestant, device = label.split("/")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(device, "-"),
                    marker=markers.get(contestant, "."), label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s")
        kind = "inference" if case == "inference" else "training"
        ax.set_title(f"{model} {kind}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
