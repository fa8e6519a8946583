"""Where a gradflow training step spends its time.

    python -m benchmarks.profile_step [--batch 128] [--steps 400] [--sizes 784,128,32,10]
                                      [--device cpu|cuda] [--captured] [--top 20]

Three views of the same step (the suite's MLP + cross_entropy + SGD(momentum) step):

1. wall time per step, uninstrumented, next to the hand-written NumPy loop on the same
   data -- their difference is the framework's cost;
2. a split of the step into *kernel* time -- every ``Function.forward`` on raw arrays
   (the NumPy/CuPy work of forward and backward ops) and every fused optimizer update,
   timed by wrapping them -- and everything else, i.e. Python-side dispatch: Tensor and
   Function objects, the tape and the backward walk, Module calls, the optimizer loop;
   with a per-op table (calls and microseconds per step);
3. cProfile's top functions by own time (the profiler inflates Python-heavy code, so read
   it for *where*, and view 2 for *how much*);
4. with ``--captured`` on the CPU: each line of the generated replay (``gradflow.compile``'s
   straight-line plan), timed in place, 10th percentile and median over the steps -- the
   view that shows what one NumPy call costs inside the step, where caches are not as warm
   as in a micro-benchmark of the call alone.

On the GPU, kernel time is host time spent launching (the GPU runs asynchronously); the
step is synchronized at its end.
"""
import argparse
import cProfile
import functools
import io
import pstats
import time
from collections import defaultdict

import numpy


def _subclasses(cls):
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        for sub in c.__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


class KernelTimer:
    """Wraps every Function subclass's ``forward`` and the fused optimizer updates with a timer."""

    def __init__(self):
        self.stats = defaultdict(lambda: [0, 0.0])   # name -> [calls, seconds]
        self.enabled = False
        self._undo = []

    def _wrap(self, owner, attr, name):
        original = getattr(owner, attr)
        stats = self.stats

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if not self.enabled:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                s = stats[name]
                s[0] += 1
                s[1] += time.perf_counter() - t0
        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def install(self):
        from gradflow.tensor import Function
        import gradflow.activation  # noqa: F401  (load every Function subclass first)
        import gradflow.dropout_ops  # noqa: F401
        import gradflow.softmax_ops  # noqa: F401
        import gradflow.nn  # noqa: F401
        for cls in _subclasses(Function):
            if "forward" in cls.__dict__:
                self._wrap(cls, "forward", cls.__name__)
        try:
            from gradflow.optim import fused
            for attr in dir(fused):
                if attr.endswith("_") and not attr.startswith("_") and callable(getattr(fused, attr)):
                    self._wrap(fused, attr, f"fused.{attr}")
        except ImportError:
            pass
        return self

    def uninstall(self):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def _data(batch, sizes, n=8, seed=0):
    rng = numpy.random.default_rng(seed)
    from benchmarks.cases import random_inputs
    return [(random_inputs(rng, batch, sizes[0]), rng.integers(0, sizes[-1], batch)) for _ in range(n)]


def _run(step, inputs, steps, sync):
    t0 = time.perf_counter()
    for i in range(steps):
        step(*inputs[i % len(inputs)])
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--sizes", default="784,128,32,10")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--captured", action="store_true", help="profile the gradflow.compile'd step instead")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))

    from benchmarks import contestants as C
    weights, _ = C.reference_weights(sizes)
    kind = C.GradflowCaptured if args.captured else C.Gradflow
    gf, loop = kind(args.device), C.NumpyLoop(args.device)
    ok, why = gf.available()
    if not ok:
        raise SystemExit(f"{gf.label}: {why}")
    data = _data(args.batch, sizes)
    trainer = gf.trainer(sizes, weights, 0.01, 0.9)
    gf_inputs = [(gf.put(x), gf.put(y)) for x, y in data]
    ref = loop.trainer(sizes, weights, 0.01, 0.9)
    ref_inputs = [(loop.put(x), loop.put(y)) for x, y in data]
    n = args.steps

    from benchmarks import harness
    harness.wait_for_quiet(20)
    snap = harness._cpu_snapshot()

    # 1 and 2, interleaved chunk by chunk (so a busy patch of the machine hits all alike):
    # uninstrumented gradflow, the NumPy loop, and gradflow with its kernels timed
    timer = KernelTimer().install()
    chunks, chunk = 5, max(1, n // 5)
    gf_times, ref_times, inst_times, kernel_times, call_counts = [], [], [], [], []
    try:
        _run(trainer.step, gf_inputs, 20, gf.sync)
        _run(ref.step, ref_inputs, 20, loop.sync)
        for _ in range(chunks):
            gf_times.append(_run(trainer.step, gf_inputs, chunk, gf.sync))
            ref_times.append(_run(ref.step, ref_inputs, chunk, loop.sync))
            before = {k: tuple(v) for k, v in timer.stats.items()}
            timer.enabled = True
            inst_times.append(_run(trainer.step, gf_inputs, chunk, gf.sync))
            timer.enabled = False
            kernel_times.append(sum(s - before.get(k, (0, 0.0))[1] for k, (_, s) in timer.stats.items()) / chunk)
            call_counts.append(sum(c - before.get(k, (0, 0.0))[0] for k, (c, _) in timer.stats.items()) / chunk)
    finally:
        timer.uninstall()
    med = lambda xs: float(numpy.median(xs))  # noqa: E731
    wall, ref_wall, instrumented = med(gf_times), med(ref_times), med(inst_times)
    kernel, calls = med(kernel_times), med(call_counts)
    n = chunks * chunk
    wrapper_cost = _wrapper_overhead()
    outside = med([i - k - c * wrapper_cost for i, k, c in zip(inst_times, kernel_times, call_counts)])

    us = 1e6
    print(f"gradflow{' (captured)' if args.captured else ''} training step, {'-'.join(map(str, sizes))}, "
          f"batch {args.batch}, {args.device}; medians of {chunks} chunks of {chunk} steps")
    print(f"  wall time per step:             {wall * us:9.1f} us   ({args.batch / wall:,.0f} samples/s)")
    print(f"  NumPy loop, same data:          {ref_wall * us:9.1f} us   -> gradflow costs "
          f"{(wall - ref_wall) * us:+.1f} us/step ({wall / ref_wall:.2f}x)")
    print(f"  instrumented step:              {instrumented * us:9.1f} us   ({calls:.0f} timed calls/step, "
          f"~{wrapper_cost * us:.2f} us timer cost each)")
    print(f"    in kernels (Function.forward on arrays, fused updates): {kernel * us:9.1f} us  "
          f"({kernel / instrumented:.0%})")
    print(f"    Python outside kernels (dispatch, tape, backward walk, modules, optimizer loop): "
          f"{outside * us:9.1f} us  ({outside / instrumented:.0%})")
    print()
    print(f"  {'kernel':<28} {'calls/step':>10} {'us/step':>9} {'us/call':>8}")
    for name, (c, s) in sorted(timer.stats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<28} {c / n:>10.1f} {s / n * us:>9.1f} {s / c * us:>8.1f}")

    # 3. cProfile
    prof = cProfile.Profile()
    prof.enable()
    _run(trainer.step, gf_inputs, n, gf.sync)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    total = sum(v[2] for v in stats.stats.values())
    print()
    print(f"  cProfile, top {args.top} by own time (profiled step {total / n * us:.0f} us; "
          f"the profiler inflates Python-heavy code):")
    print(f"  {'own us/step':>11} {'calls/step':>10}  function")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:args.top]
    for (filename, line, func), (cc, nc, tt, ct, callers) in rows:
        where = func if filename == "~" else f"{_short(filename)}:{line}({func})"
        print(f"  {tt / n * us:>11.1f} {nc / n:>10.1f}  {where}")
    by_file = defaultdict(float)
    for (filename, _, func), v in stats.stats.items():
        by_file["<C builtins: numpy calls, isinstance, ...>" if filename == "~" else _short(filename)] += v[2]
    print()
    print("  own time by file:")
    for name, tt in sorted(by_file.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {tt / n * us:>11.1f} us/step  {name}")
    if args.captured and args.device == "cpu":
        print()
        _replay_lines(trainer, data, n)
    load = harness.foreign_load(snap, harness._cpu_snapshot())
    if load is not None and load > harness.FOREIGN_LIMIT:
        print(f"\n  WARNING: other processes used {load:.0%} of the machine meanwhile; these numbers are inflated")
    return 0


def _replay_lines(trainer, data, steps):
    """View 4: the generated CPU replay with a clock read after each line."""
    plans = [e.plan for e in trainer._captured.cache.values() if e.plan is not None]
    replay = getattr(plans[0], "replay", None) if plans else None
    if replay is None:
        print("  (no generated replay to time: the step did not capture)")
        return
    source = replay.source.splitlines()
    names = dict(replay.__globals__, _clock=time.perf_counter)
    statements = []  # the body's top-level statements, each a list of lines (an if/else block is one)
    for line in source[1:]:
        if line.startswith("     ") or line.startswith("    else:"):
            statements[-1].append(line)
        else:
            statements.append([line])
    lines, labels = [source[0], "    _t = [_clock()]"], []
    for block in statements:
        text = block[0].strip()
        if text.startswith("return"):
            lines += [block[0].replace("return", "_out =", 1), "    _t.append(_clock())", "    return _t"]
        elif text.startswith("del "):
            lines += block
        else:
            lines += block + ["    _t.append(_clock())"]
        if not text.startswith("del "):  # a block by the line that does its usual work (if: its first branch)
            labels.append(block[1].strip() if text.startswith("if ") and len(block) > 1 else text)
    exec("\n".join(lines), names)
    timed = names[source[0].split()[1].split("(")[0]]
    times = numpy.array([numpy.diff(timed(*data[i % len(data)])) for i in range(max(steps, 200))]) * 1e6
    print(f"  the generated replay, line by line ({len(times)} steps; us, 10th percentile and median):")
    for label, low, mid in zip(labels, numpy.percentile(times, 10, axis=0), numpy.median(times, axis=0)):
        print(f"  {low:8.2f} {mid:8.2f}  {label if len(label) <= 90 else label[:87] + '...'}")
    total = times.sum(axis=1)
    print(f"  {numpy.percentile(total, 10):8.2f} {numpy.median(total):8.2f}  (the whole replay)")


def _wrapper_overhead(n=20000):
    def f():
        return None

    timer = KernelTimer()
    holder = type("H", (), {"f": staticmethod(f)})
    timer._wrap(holder, "f", "f")
    timer.enabled = True
    t0 = time.perf_counter()
    for _ in range(n):
        holder.f()
    wrapped = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return max(0.0, wrapped - (time.perf_counter() - t0) / n)


def _short(path):
    for marker in ("/gradflow/", "/site-packages/", "/lib/python"):
        if marker in path:
            return path[path.index(marker) + 1:]
    return path


if __name__ == "__main__":
    raise SystemExit(main())
