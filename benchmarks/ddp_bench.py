"""The rank side of the ``ddp`` case: run under ``mpiexec -n N python -m benchmarks.ddp_bench``.

Every rank trains the 784-128-32-10 MLP wrapped in DistributedDataParallel on its share of
a global batch (N(0, 1) inputs, random labels, momentum SGD, the ``mlp`` case's data), so
a step processes ``--batch`` samples whatever N is. After warm-up, rank 0 picks a step
count that lasts at least ``--min-time`` and every rank runs it ``--repeats`` times
between barriers; the time of a repeat is the slowest rank's. Then the all-reduce of the
model's gradient buckets alone is timed (bandwidth = bytes / time). Rank 0 prints one JSON
line with the results.
"""
import argparse
import json
import statistics
import time

import numpy

import gradflow as gf
import gradflow.distributed as dist
from gradflow import nn, optim
from gradflow.nn.parallel import DistributedDataParallel
from gradflow.train import training_step

SIZES = (784, 128, 32, 10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512, help="global batch (split evenly over the processes)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.25, help="seconds per timed repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sync(device):
    if device == "cuda":
        gf.backend.cupy().cuda.get_current_stream().synchronize()


def _slowest(seconds):
    t = gf.tensor(numpy.array([seconds]))
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return float(t.numpy()[0])


def _timed(fn, args, device, what):
    """Warm up, agree on a step count, then time ``repeats`` runs of it (the slowest rank's time)."""
    for _ in range(args.warmup):
        fn()
    _sync(device)
    dist.barrier()
    # a fixed number of calibration steps: each step is a collective, and a count that each rank
    # took from its own clock (run until min_time / 4) differed between ranks now and then, which
    # left one rank waiting for a collective the other never made (the job hung)
    steps, start = 3, time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    per = _slowest((time.perf_counter() - start) / steps)
    count = [max(2, int(args.min_time / max(per, 1e-9)))]
    dist.broadcast_object_list(count, src=0)     # every rank must run the same number of collectives
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(count[0]):
            fn()
        _sync(device)
        times.append(_slowest(time.perf_counter() - start) / count[0])
    return times


def main(argv=None):
    args = parse_args(argv)
    dist.init_process_group("nccl" if args.device == "cuda" else "mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} processes")
    share = args.batch // world
    rng = numpy.random.default_rng([args.seed, 8, args.batch])
    x = rng.standard_normal((args.batch, SIZES[0])).astype(numpy.float32)[rank * share:(rank + 1) * share]
    y = rng.integers(0, SIZES[-1], args.batch)[rank * share:(rank + 1) * share]
    x, y = gf.tensor(x, device=args.device), gf.tensor(y, device=args.device)
    gf.manual_seed(args.seed)
    ddp = DistributedDataParallel(nn.MLP(SIZES, device=args.device))
    opt = optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    step = training_step(ddp, nn.CrossEntropyLoss(), opt)
    times = _timed(lambda: step(x, y), args, args.device, "step")

    # the communication alone: all-reduce every gradient bucket, as backward does
    buckets = [b.flat for b in ddp._buckets]

    def reduce_all():
        for work in [dist._all_reduce_array(flat, "sum") for flat in buckets]:
            work.wait()
    reduce_times = _timed(reduce_all, args, args.device, "all-reduce")
    nbytes = sum(b.nbytes for b in buckets)
    if rank == 0:
        median = statistics.median(times)
        reduce_median = statistics.median(reduce_times)
        print(json.dumps({
            "processes": world, "backend": dist.get_backend(), "device": args.device, "batch": args.batch,
            "per_process_batch": share, "step_times_s": times, "median_s": median,
            "samples_per_s": args.batch / median, "buckets": len(buckets), "gradient_bytes": nbytes,
            "allreduce_times_s": reduce_times, "allreduce_median_s": reduce_median,
            "allreduce_GBps": nbytes / reduce_median / 1e9,
            "allreduce_bus_GBps": nbytes / reduce_median / 1e9 * (2 * (world - 1) / world) if world > 1 else None,
        }), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
