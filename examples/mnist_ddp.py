"""Train the MNIST MLP of mnist_mlp.py on several processes with DistributedDataParallel.

    python -m gradflow.distributed.run -n 2 examples/mnist_ddp.py          # 2 processes, one BLAS thread each
    python -m gradflow.distributed.run -n 4 --hostfile hosts examples/mnist_ddp.py --epochs 10
    mpiexec -n 2 python examples/mnist_ddp.py                              # the same without the wrapper
    python examples/mnist_ddp.py                                           # a single process works too

Takes mnist_mlp.py's options. ``--batch-size`` is the *global* batch: each of N processes
takes batch/N samples of it (a DistributedSampler gives every process its own share of
each epoch), and DistributedDataParallel averages the gradients, so an optimizer step sees
the same global batch as the single-process example and training reaches the same
accuracy. On GPUs (``backend='nccl'``) each process uses the GPU of its local rank.
Rank 0 prints, writes the checkpoint and metrics.json; validation and test numbers are
over all processes' shares.
"""
import json
import os
import sys
import time

try:
    import gradflow
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gradflow
import gradflow.distributed as dist
from gradflow import nn
from gradflow.data import DataLoader, DistributedSampler, random_split
from gradflow.datasets import MNIST, MNISTError
from gradflow.nn.parallel import DistributedDataParallel
from gradflow.train import ModelCheckpoint, evaluate, fit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_mlp import make_optimizer, make_schedulers, parse_args  # noqa: E402  (the same options and recipe)


def main(argv=None):
    args = parse_args(argv)
    args.out = args.out if args.out != os.path.join("runs", "mnist") else os.path.join("runs", "mnist_ddp")
    device = args.device or gradflow.backend.default_device()
    dist.init_process_group("nccl" if device == "cuda" else "mpi")  # rank and size from the launcher
    rank, world = dist.get_rank(), dist.get_world_size()
    main_rank = rank == 0
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} (the global batch) must be divisible by the "
                         f"{world} processes")
    gradflow.manual_seed(args.seed)  # the same initial model everywhere (DDP broadcasts rank 0's anyway)
    try:
        train_full = MNIST(args.data, train=True)
        test_set = MNIST(args.data, train=False)
    except MNISTError as e:
        print(f"rank {rank}: error: {e}", file=sys.stderr)
        return 2
    n = len(train_full) if args.limit is None else min(args.limit, len(train_full))
    val_size = min(args.val_size, n // 2)
    train_set, val_set, _ = random_split(train_full, [n - val_size, val_size, len(train_full) - n],
                                         generator=args.seed)  # the same split on every rank
    train_loader = DataLoader(train_set, batch_size=args.batch_size // world, device=device,
                              sampler=DistributedSampler(train_set, seed=args.seed))
    val_loader = DataLoader(val_set, batch_size=1000, device=device,
                            sampler=DistributedSampler(val_set, shuffle=False))
    test_loader = DataLoader(test_set, batch_size=1000, device=device,
                             sampler=DistributedSampler(test_set, shuffle=False))

    model = nn.MLP([784, *args.hidden, 10], activation=args.activation, dropout=args.dropout, device=device)
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(args, ddp.parameters())
    schedulers = make_schedulers(args, optimizer)
    checkpoint = os.path.join(args.out, "checkpoint.npz")
    if main_rank:
        os.makedirs(args.out, exist_ok=True)
        print(f"{model}\n{world} process(es) ({dist.get_backend()}), {len(train_set)} train / {len(val_set)} "
              f"validation / {len(test_set)} test images on {device}; {args.optimizer} lr={args.lr} global "
              f"batch={args.batch_size} ({args.batch_size // world} per process) epochs={args.epochs}", flush=True)

    start = time.perf_counter()
    history = fit(ddp, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=args.epochs,
                  callbacks=[ModelCheckpoint(checkpoint)], scheduler=schedulers, progress=args.progress,
                  resume=args.resume, compile=args.compile)
    seconds = time.perf_counter() - start
    test = evaluate(ddp, test_loader, nn.CrossEntropyLoss(), distributed=world > 1)
    if main_rank:
        if not args.progress:
            for epoch, acc in zip(history.epochs, history["val_accuracy"]):
                print(f"epoch {epoch}: validation accuracy {acc * 100:.2f}%")
        print(f"test accuracy {test['accuracy'] * 100:.2f}% (loss {test['loss']:.4f}) after {history.epochs[-1]} "
              f"epochs, {seconds:.1f}s of training on {world} process(es)", flush=True)
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump({"args": vars(args), "device": device, "world_size": world, "train_seconds": seconds,
                       "test": test, "history": history.history}, f, indent=2)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
