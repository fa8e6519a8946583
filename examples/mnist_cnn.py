"""Train a LeNet-style CNN on MNIST to >= 99% test accuracy.

    python examples/mnist_cnn.py                 # 3 epochs, 99.07% test accuracy (seed 0)
    python examples/mnist_cnn.py --device cpu --epochs 1 --limit 2000   # a quick look

Two conv blocks (5x5 convolution, BatchNorm, ReLU, 2x2 max pooling), then dropout between
two Linear layers: the same model runs unchanged on the CPU (im2col + BLAS) or a GPU
(gradflow's CUDA kernels + cuBLAS). Adam with a cosine learning-rate decay over the
epochs. The 60k training images are split 55k/5k into training and validation sets; the
10k test images are evaluated once at the end. Writes ``checkpoint.npz`` (resumable with
``--resume``), ``curves.png`` and ``metrics.json`` to ``--out``.
"""
import argparse
import os
import sys

try:
    import gradflow
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gradflow
from gradflow import nn, optim
from gradflow.optim import lr_scheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_mlp import mnist_loaders, train_and_report  # noqa: E402  (the same data split and reporting)


def lenet(channels=(16, 32), hidden=128, dropout=0.25, nn=nn):
    """The CNN: (N, 28, 28) images -> 10 logits. ``nn`` may be ``torch.nn`` (the benchmarks' peer)."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Unflatten(1, (1, 28)),
        nn.Conv2d(1, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, 10))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32], help="channels of the two conv layers")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when usable)")
    p.add_argument("--data", default=None, help="directory holding the MNIST IDX files (raw or .gz)")
    p.add_argument("--out", default=os.path.join("runs", "mnist_cnn"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate only this many test images")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written by an earlier run")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--compile", action="store_true",
                   help="replay each training step through gradflow.compile (same results, less overhead)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = args.device or gradflow.backend.default_device()
    gradflow.manual_seed(args.seed)
    loaders = mnist_loaders(args, device, flatten=False)
    if loaders is None:
        return 2
    model = lenet(tuple(args.channels), args.hidden, args.dropout).to(device)
    optimizer = optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr * 0.05)
    return train_and_report(args, "MNIST CNN", model, optimizer, scheduler, loaders, device, f"adam lr={args.lr}")


if __name__ == "__main__":
    sys.exit(main())
