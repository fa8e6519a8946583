"""Train the 784-128-32-10 MLP on MNIST.

    python examples/mnist_mlp.py                      # 5 epochs, about 98% test accuracy
    python examples/mnist_mlp.py --epochs 15 --weight-decay 5e-4

The 60k training images are split 55k/5k into training and validation sets; the 10k test
images are evaluated once at the end. Writes ``checkpoint.npz`` (resumable with
``--resume``), ``curves.png`` and ``metrics.json`` to ``--out``.
"""
import argparse
import os
import sys
import time

try:
    import gradflow
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gradflow
from gradflow import nn, optim
from gradflow.data import DataLoader, random_split
from gradflow.datasets import MNIST, MNISTError
from gradflow.optim import lr_scheduler
from gradflow.train import ModelCheckpoint, evaluate, fit
from gradflow.plot import write_run_outputs

OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop,
              "adagrad": optim.Adagrad, "adadelta": optim.Adadelta}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD/RMSprop momentum (Adam: ignored)")
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain instead of Nesterov momentum")
    p.add_argument("--momentum-warmup", type=int, default=0, metavar="EPOCHS",
                   help="raise momentum linearly from 0.5 to --momentum over this many epochs")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty (AdamW: decoupled decay); default: the optimizer's own (0, AdamW 0.01)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden layer")
    p.add_argument("--schedule", choices=["cosine", "step", "none"], default="cosine",
                   help="learning-rate schedule over the epochs")
    p.add_argument("--warmup", type=int, default=0, metavar="EPOCHS", help="linear learning-rate warm-up")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 32], help="hidden layer sizes")
    p.add_argument("--activation", default="relu")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when usable)")
    p.add_argument("--data", default=None, help="directory holding the MNIST IDX files (raw or .gz)")
    p.add_argument("--out", default=os.path.join("runs", "mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written by an earlier run")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--compile", action="store_true",
                   help="replay each training step through gradflow.compile (same results, less overhead)")
    return p.parse_args(argv)


def make_optimizer(args, params):
    kwargs = dict(lr=args.lr)
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        kwargs.update(momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0)
    elif args.optimizer == "rmsprop":
        kwargs.update(momentum=args.momentum)
    return OPTIMIZERS[args.optimizer](params, **kwargs)


def make_schedulers(args, optimizer):
    schedulers = []
    main_epochs = max(args.epochs - args.warmup, 1)
    if args.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_epochs)
    elif args.schedule == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=max(main_epochs // 3, 1), gamma=0.1)
    else:
        main = None
    if args.warmup:
        warm = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=args.warmup)
        main = warm if main is None else lr_scheduler.SequentialLR(optimizer, [warm, main], [args.warmup])
    if main is not None:
        schedulers.append(main)
    if args.momentum_warmup:
        schedulers.append(lr_scheduler.MomentumWarmup(optimizer, start=0.5, end=args.momentum,
                                                      total_iters=args.momentum_warmup))
    return schedulers


def mnist_loaders(args, device, flatten=True):
    """(train, validation, test) DataLoaders: the 60k training images split (n - val_size, val_size)
    with ``--limit``/``--val-size``, and the 10k test images (``test_limit`` of them, if set);
    None (with the reason printed) when the MNIST files are missing."""
    try:
        train_full = MNIST(args.data, train=True, flatten=flatten)
        test_set = MNIST(args.data, train=False, flatten=flatten)
    except MNISTError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    n = len(train_full) if args.limit is None else min(args.limit, len(train_full))
    val_size = min(args.val_size, n // 2)
    train_set, val_set, _ = random_split(train_full, [n - val_size, val_size, len(train_full) - n],
                                         generator=args.seed)
    test_limit = getattr(args, "test_limit", None)
    if test_limit is not None:
        test_set, _ = random_split(test_set, [test_limit, len(test_set) - test_limit], generator=args.seed)
    return (DataLoader(train_set, batch_size=args.batch_size, shuffle=True, device=device),
            DataLoader(val_set, batch_size=1000, device=device), DataLoader(test_set, batch_size=1000, device=device))


def train_and_report(args, name, model, optimizer, schedulers, loaders, device, recipe):
    """Train with ``fit`` (checkpointing every epoch to ``--out``), evaluate on the test set and
    write ``metrics.json`` and ``curves.png``; ``recipe`` describes the optimizer in the header."""
    train_loader, val_loader, test_loader = loaders
    os.makedirs(args.out, exist_ok=True)
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    print(f"{model}\n{len(train_loader.dataset)} train / {len(val_loader.dataset)} validation / "
          f"{len(test_loader.dataset)} test images on {device}; {recipe} batch={args.batch_size} epochs={args.epochs}")

    start = time.perf_counter()
    history = fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=args.epochs,
                  callbacks=[ModelCheckpoint(checkpoint)], scheduler=schedulers, progress=args.progress,
                  resume=args.resume, compile=args.compile)
    seconds = time.perf_counter() - start
    if not args.progress:  # fit printed nothing
        for epoch, acc in zip(history.epochs, history["val_accuracy"]):
            print(f"epoch {epoch}: validation accuracy {acc * 100:.2f}%")
    test = evaluate(model, test_loader, nn.CrossEntropyLoss())
    print(f"test accuracy {test['accuracy'] * 100:.2f}% (loss {test['loss']:.4f}) after {history.epochs[-1]} "
          f"epochs, {seconds:.1f}s of training on {device}")

    print(write_run_outputs(args.out, history,
                            {"args": vars(args), "device": device, "train_seconds": seconds, "test": test,
                             "history": history.history},
                            title=f"{name}: test accuracy {test['accuracy'] * 100:.2f}%"))
    print(f"checkpoint: {checkpoint}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    device = args.device or gradflow.backend.default_device()
    gradflow.manual_seed(args.seed)
    loaders = mnist_loaders(args, device)
    if loaders is None:
        return 2
    model = nn.MLP([784, *args.hidden, 10], activation=args.activation, dropout=args.dropout, device=device)
    optimizer = make_optimizer(args, model.parameters())
    return train_and_report(args, "MNIST MLP", model, optimizer, make_schedulers(args, optimizer), loaders, device,
                            f"{args.optimizer} lr={args.lr}")


if __name__ == "__main__":
    sys.exit(main())
