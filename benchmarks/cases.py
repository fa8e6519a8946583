"""The measurements, run inside a worker process (see worker.py) for that worker's contestants.

Each ``job_*`` function returns ``{"records": [...], "notes": [...]}`` (plain data for the
parent to print and save). Every worker draws the same data from the same seeds and starts
from the same initial weights, so contestants in different processes see identical inputs.

  mlp        784-128-32-10 training throughput (forward + backward + momentum SGD)
  mlp_large  784-2048-2048-2048-10 training throughput (matmul-bound)
  inference  forward-only throughput of both MLPs
  ops        op microbenchmarks (matmul, activations, dropout, softmax-CE, optimizer updates)
  memory     peak memory of one training step
  tta        wall time to 97% MNIST test accuracy
  cnn        LeNet-style CNN (examples/mnist_cnn.py) training throughput
  ddp        DistributedDataParallel training throughput on 1 and 2 processes, scaling efficiency,
             gradient all-reduce bandwidth (separate mpiexec jobs: see ddp_bench.py)
"""
import math
import time
import traceback
from dataclasses import dataclass

import numpy

from benchmarks import contestants as C
from benchmarks import harness, ops_bench

SMALL = (784, 128, 32, 10)
LARGE = (784, 2048, 2048, 2048, 10)
CNN = "lenet-16-32"   # examples/mnist_cnn.py's default model, on (N, 28, 28) images
CASES = ("mlp", "mlp_large", "inference", "ops", "memory", "tta", "cnn", "ddp")
_CASE_CODE = {"mlp": 1, "mlp_large": 2, "inference": 3, "ops": 4, "memory": 5, "tta": 6, "agreement": 7, "cnn": 8,
              "ddp": 9}


@dataclass
class Config:
    quick: bool = False
    repeats: int = 7
    min_time: float = 0.25     # seconds per timed repeat
    ops_min_time: float = 0.1  # the same for op microbenchmarks
    warmup: int = 3
    devices: tuple = ("cpu",)
    threads: int = 1
    seed: int = 0
    lr: float = 0.01           # throughput cases train on random labels: keep the step small
    momentum: float = 0.9
    mlp_batches: tuple = (32, 128, 512, 2048, 8192)
    large_batches: tuple = (256, 4096)
    inference_batches: tuple = (32, 128, 512, 2048, 8192)
    cnn_batches: tuple = (32, 128)
    memory_plan: tuple = ((SMALL, 128), (SMALL, 2048), (LARGE, 256))
    tta_target: float = 0.97
    tta_max_epochs: float = 10
    tta_batch: int = 128
    tta_lr: float = 0.05
    tta_evals_per_epoch: int = 4
    tta_repeats: int = 3
    ddp_batches: tuple = (128, 2048)  # global batch, split over the processes
    ddp_processes: tuple = (1, 2)
    cooldown: float = 0.25     # pause before switching worker process
    quiet_wait: float = 20.0   # wait up to this long for other processes to go quiet before a measurement
    extra_rounds: bool = True  # repeat more while disturbed repeats leave too few clean ones
    max_spread: float = 0.10   # ... or while some contestant's IQR exceeds this fraction of its median
    max_drift: float = 1.25    # a measurement during which the machine slowed more than this is redone
    attempts: int = 3          # ... at most this many times in all

    @classmethod
    def make(cls, quick=False, repeats=None, devices=("cpu",), threads=1):
        if quick:
            cfg = cls(quick=True, repeats=3, min_time=0.04, ops_min_time=0.02, warmup=2, mlp_batches=(128, 2048),
                      large_batches=(256,), inference_batches=(128, 2048), cnn_batches=(128,), memory_plan=((SMALL, 128),),
                      tta_max_epochs=1, tta_repeats=1, ddp_batches=(512,), cooldown=0.15, quiet_wait=1.0, extra_rounds=False,
                      attempts=1)
        else:
            cfg = cls()
        cfg.devices, cfg.threads = tuple(devices), int(threads)
        if repeats is not None:
            cfg.repeats = max(1, int(repeats))
        return cfg


def model_name(sizes):
    return "-".join(str(s) for s in sizes)


def _rng(cfg, case, *more):
    """The same stream in every worker for the same (case, batch, ...)."""
    return numpy.random.default_rng([cfg.seed, _CASE_CODE[case], *more])


def _error(e):
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.split('/')[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# ---- the worker's context -------------------------------------------------------------------------------
class Context:
    """What a worker keeps between jobs: config, its contestants, weights, MNIST."""

    def __init__(self, group, cfg):
        from benchmarks.worker import GROUPS, TORCH_GROUPS
        self.group, self.cfg = group, cfg
        self.torch = group in TORCH_GROUPS
        kinds = [getattr(C, name) for name in GROUPS[group]]
        self.active, self.skipped = C.split_available(C.contestants(cfg.devices, kinds))
        self.threads = harness.pin_threads(cfg.threads) if self.torch else harness.blas_threads_info()
        self._weights = {}
        self._cnn_weights = None
        self._mnist = None
        self.session = None
        self._warm_up()

    def weights(self, sizes):
        if sizes not in self._weights:
            self._weights[sizes] = C.reference_weights(sizes, self.cfg.seed)
        return self._weights[sizes]

    def cnn_weights(self):
        if self._cnn_weights is None:
            self._cnn_weights = C.reference_cnn_weights(self.cfg.seed)
        return self._cnn_weights

    def mnist(self):
        if self._mnist is None:
            from gradflow.datasets import load_mnist
            self._mnist = load_mnist(train=True, download=False) + load_mnist(train=False, download=False)
        return self._mnist

    def _warm_up(self, seconds=0.3):
        """Some BLAS work first, so the cores are awake when timing starts."""
        if not self.active:
            return   # nothing to time here (e.g. the CUDA-graph worker on a machine without a GPU)
        if self.torch:
            import torch
            a = torch.ones(512, 512)
        else:
            a = numpy.ones((512, 512), dtype=numpy.float32)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ a


def job_info(ctx):
    import sys
    info = {"group": ctx.group, "available": [c.label for c in ctx.active], "skipped": ctx.skipped,
            "threads": ctx.threads, "python": sys.version.split()[0]}
    if ctx.torch:
        try:
            import torch
            info["torch"] = torch.__version__
            info["torch_cuda"] = torch.version.cuda
            info["torch_config"] = torch.__config__.parallel_info().splitlines()[:6]
        except ImportError:
            pass
    return info


# ---- timing sessions: setup, then repeats interleaved across workers, then finish ---------------------------------
class Session:
    """The runners of one timed measurement in this worker, kept between the parent's calls.

    ``setup`` builds and prepares them (first call, warm-up, calibration); the parent then
    asks every worker in turn for one ``repeat`` at a time, so the repeats of contestants
    in different processes interleave and a slow patch of the machine hits them alike
    (within a worker the contestants share one thread pool, so their repeats interleave
    too); ``finish`` turns the timings into records.
    """

    def __init__(self, make_record, make_error):
        self.runners, self.setups, self.errors, self.notes = {}, {}, {}, []
        self.make_record, self.make_error = make_record, make_error
        self.canary = harness.Canary()

    def add(self, contestant, runner, extra):
        self.runners[contestant.label] = runner
        self.setups[contestant.label] = (contestant, extra)

    def fail(self, contestant, err, stage):
        self.errors[contestant.label] = err
        self.setups.setdefault(contestant.label, (contestant, None))
        self.notes.append(f"{contestant.label} failed {stage}: {err}")

    def prepare(self, cfg, min_time):
        for label, runner in list(self.runners.items()):
            try:
                runner.prepare(cfg.warmup, min_time)
            except Exception as e:
                del self.runners[label]
                self.fail(self.setups[label][0], _error(e), "in its first calls")

    def repeat(self):
        """One more repeat of every runner; returns the fewest clean repeats any runner has."""
        self.canary.run()
        for label, runner in list(self.runners.items()):
            try:
                runner.repeat()
            except Exception as e:
                del self.runners[label]
                self.fail(self.setups[label][0], _error(e), "while timing")
        return min((r.clean_repeats() for r in self.runners.values()), default=None)

    def spread(self):
        """The largest relative IQR among the runners' clean repeats (how unsettled the timings are)."""
        worst = 0.0
        for r in self.runners.values():
            clean = [t for t, f in zip(r.times, r.foreign) if f is None or f <= harness.FOREIGN_LIMIT]
            if len(clean) >= 3:
                med, q1, q3 = harness.quartiles(clean)
                worst = max(worst, (q3 - q1) / med if med else 0.0)
        return worst

    def finish(self):
        records = []
        for label, runner in self.runners.items():
            c, extra = self.setups[label]
            rec = self.make_record(c, runner.timing(), extra, self.notes)
            rec["drift"] = self.canary.drift()
            rec["canary_s"] = list(self.canary.times)
            records.append(rec)
        for label, err in self.errors.items():
            records.append(self.make_error(self.setups[label][0], err))
        return records


def job_setup(ctx, kind, **kwargs):
    ctx.session = {"throughput": _throughput_session, "op": _op_session}[kind](ctx, **kwargs)
    ctx.session.prepare(ctx.cfg, ctx.cfg.ops_min_time if kind == "op" else ctx.cfg.min_time)
    return {"notes": _drain(ctx.session.notes)}


def job_repeat(ctx):
    clean = ctx.session.repeat()
    return {"notes": _drain(ctx.session.notes), "clean": clean, "spread": ctx.session.spread(),
            "drift": ctx.session.canary.drift()}


def job_finish(ctx):
    session, ctx.session = ctx.session, None
    records = session.finish()
    return {"records": records, "notes": session.notes}


def _drain(notes):
    out = list(notes)
    notes.clear()
    return out


# ---- throughput (cases 1, 2, 3) -------------------------------------------------------------------------------
def random_inputs(rng, batch, n_in):
    """MNIST-shaped inputs as standardized pixels, N(0, 1).

    Not raw [0, 1) pixels: with all-positive random inputs and random labels many ReLU
    units die, their momentum buffers then decay geometrically into denormal floats, and
    after a second or so every contestant runs 2-4x slower -- measuring the CPU's denormal
    penalty instead of the framework.
    """
    return rng.standard_normal((batch, n_in), dtype=numpy.float32)


def _batch_data(rng, batch, n_in, n_classes):
    """Rotated MNIST-shaped buffers: standardized pixels, labels 0..n_classes-1."""
    count = harness.n_buffers(batch * n_in * 4)
    return [(random_inputs(rng, batch, n_in), rng.integers(0, n_classes, batch)) for _ in range(count)]


def _throughput_session(ctx, case, sizes, batch, mode="train"):
    """Training (``mode='train'``) or inference throughput of the MLP ``sizes`` at one batch size
    (case ``cnn``: of the MNIST CNN, ``sizes`` being its name)."""
    cfg = ctx.cfg
    if case == "cnn":
        weights, source = ctx.cnn_weights()
        rng = _rng(cfg, case, batch)
        data = [(random_inputs(rng, batch, 28 * 28).reshape(batch, 28, 28), rng.integers(0, 10, batch))
                for _ in range(harness.n_buffers(batch * 28 * 28 * 4))]
        return _session(ctx, case, sizes, batch, mode, weights, source, data,
                        lambda c: c.cnn_trainer(weights, cfg.lr, cfg.momentum))
    sizes = tuple(sizes)
    weights, source = ctx.weights(sizes)
    data = _batch_data(_rng(cfg, case, batch, len(sizes)), batch, sizes[0], sizes[-1])
    return _session(ctx, case, sizes, batch, mode, weights, source, data,
                    lambda c: c.trainer(sizes, weights, cfg.lr, cfg.momentum))


def _session(ctx, case, sizes, batch, mode, weights, source, data, make_trainer):
    cfg = ctx.cfg

    def record(c, timing, extra, notes):
        trainer, inputs = extra
        rec = {"case": case, "model": model_name(sizes) if case != "cnn" else sizes, "batch": batch, "mode": mode, "contestant": c.name,
               "device": c.device, "label": c.label, "unit": "samples/s", "value": batch / timing.median_s,
               "timing": timing.as_dict(), "buffers": len(inputs), "init": source}
        if mode == "train":
            rec["final_loss"] = float(numpy.asarray(c.to_host(trainer.step(*inputs[0]))))
            if not math.isfinite(rec["final_loss"]):
                notes.append(f"{c.label} batch {batch}: the loss is not finite after timing")
        if hasattr(trainer, "capture_status"):
            rec.update(trainer.capture_status())
            if not rec["captured"]:
                notes.append(f"{c.label} batch {batch} ran eagerly, not captured: {rec['eager_reason']}")
        return rec

    def error(c, err):
        return {"case": case, "model": model_name(sizes) if case != "cnn" else sizes, "batch": batch, "mode": mode,
                "contestant": c.name,
                "device": c.device, "label": c.label, "error": err}

    session = Session(record, error)
    for c in ctx.active:
        if case == "cnn" and not hasattr(c, "cnn_trainer"):
            session.notes.append(f"{c.label}: no hand-written CNN to compare with; skipped")
            continue
        try:
            trainer = make_trainer(c)
            inputs = [(c.put(x), c.put(y)) for x, y in data]
        except Exception as e:
            session.fail(c, _error(e), "to set up")
            continue
        if mode == "train":
            runner = harness.Runner(trainer.step, inputs, c.clock())
        else:
            runner = harness.Runner(trainer.predict, [(x,) for x, _ in inputs], c.clock())
        session.add(c, runner, (trainer, inputs))
    return session


def job_agreement(ctx, sizes, batch=128, steps=3):
    """Losses of a few steps from the same weights on the same batches (compared by the parent)."""
    cfg = ctx.cfg
    sizes = tuple(sizes)
    weights, source = ctx.weights(sizes)
    rng = _rng(cfg, "agreement", batch)
    data = [(random_inputs(rng, batch, sizes[0]), rng.integers(0, sizes[-1], batch))
            for _ in range(steps)]
    losses, notes = {}, []
    for c in ctx.active:
        try:
            trainer = c.trainer(sizes, weights, 0.1, cfg.momentum)
            losses[c.label] = [float(numpy.asarray(c.to_host(trainer.step(c.put(x), c.put(y))))) for x, y in data]
        except Exception as e:
            notes.append(f"agreement check: {c.label} failed: {_error(e)}")
    return {"losses": losses, "notes": notes, "init": source}


# ---- ops (case 4) --------------------------------------------------------------------------------------------
def _op_session(ctx, index):
    """Op number ``index`` of ``ops_bench.op_specs`` for this worker's contestants."""
    cfg = ctx.cfg
    spec = ops_bench.op_specs(cfg.quick)[index]

    def record(c, timing, extra, notes):
        fn, inputs = extra
        launches = harness.count_cuda_kernels(lambda: fn(*inputs[0]), c.sync) if c.device == "cuda" else None
        return {"case": "ops", "op": spec.op, "shape": spec.shape, "note": spec.note, "contestant": c.name,
                "device": c.device, "label": c.label, "unit": "s", "value": timing.median_s,
                "timing": timing.as_dict(), "launches": launches, "model": None, "batch": None}

    def error(c, err):
        return {"case": "ops", "op": spec.op, "shape": spec.shape, "contestant": c.name, "device": c.device,
                "label": c.label, "error": err}

    session = Session(record, error)
    for c in ctx.active:
        if c.name == "gradflow-captured":
            continue
        try:
            fn, inputs = ops_bench.build(spec, c, _rng(cfg, "ops", index), n_inputs=4)
        except ops_bench.Unavailable as e:
            session.notes.append(f"{spec.op} {spec.shape}: {c.label}: {e}")
            continue
        except Exception as e:
            session.fail(c, _error(e), f"to set up {spec.op} {spec.shape}")
            continue
        session.add(c, harness.Runner(fn, inputs, c.clock()), (fn, inputs))
    return session


# ---- memory (case 5) ------------------------------------------------------------------------------------------
def job_memory(ctx, sizes, batch):
    """Memory a contestant holds at the peak of a training step: parameters, gradients,
    optimizer state and activations (the meter starts before the model is built)."""
    cfg = ctx.cfg
    sizes = tuple(sizes)
    weights, _ = ctx.weights(sizes)
    rng = _rng(cfg, "memory", batch, len(sizes))
    x = random_inputs(rng, batch, sizes[0])
    y = rng.integers(0, sizes[-1], batch)
    notes, records = [], []
    params = sum(w.size + b.size for w, b in weights)
    for c in ctx.active:
        xd, yd = c.put(x), c.put(y)

        def build():
            trainer = c.trainer(sizes, weights, cfg.lr, cfg.momentum)
            for _ in range(2):
                trainer.step(xd, yd)
            c.sync()
            return trainer

        def step(trainer):
            trainer.step(xd, yd)
            c.sync()
        try:
            mem = c.peak_memory(build, step)
        except Exception as e:
            notes.append(f"memory {c.label}: {_error(e)}")
            continue
        records.append({"case": "memory", "model": model_name(sizes), "batch": batch, "contestant": c.name,
                        "device": c.device, "label": c.label, "memory": mem, "peak_bytes": mem["peak_bytes"],
                        "before_bytes": mem["before_bytes"], "meter": mem["meter"],
                        "state_bytes": 3 * 4 * params,                  # parameters, gradients, momentum
                        "layer_output_bytes": 4 * batch * sum(sizes[1:])})
    return {"records": records, "notes": notes}


# ---- time to accuracy (case 6) ---------------------------------------------------------------------------------------
def job_tta(ctx, label):
    """Wall time for the 784-128-32-10 MLP to reach ``cfg.tta_target`` MNIST test accuracy.

    Every contestant trains from the same initial weights on the same shuffled batches
    (one permutation per epoch, drawn from the same seed), with the same learning rate and
    momentum; test accuracy is measured ``tta_evals_per_epoch`` times an epoch, and that
    evaluation counts in the wall time (it is part of getting there). The dataset is put
    on the contestant's device once, before the clock starts.
    """
    cfg = ctx.cfg
    c = next(c for c in ctx.active if c.label == label)
    x_train, y_train, x_test, y_test = ctx.mnist()
    weights, source = ctx.weights(SMALL)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / cfg.tta_batch)
    max_steps = int(cfg.tta_max_epochs * steps_per_epoch)
    eval_every = max(1, steps_per_epoch // cfg.tta_evals_per_epoch)
    order_rng = _rng(cfg, "tta")
    orders = [order_rng.permutation(n) for _ in range(math.ceil(cfg.tta_max_epochs))]

    trainer = c.trainer(SMALL, weights, cfg.tta_lr, cfg.momentum)
    xs, ys, xt = c.put(x_train), c.put(y_train), c.put(x_test)   # resident on the device
    idx = [c.put(o.astype(numpy.int64)) for o in orders]
    curve, train_s, step, reached, accuracy = [], 0.0, 0, False, 0.0
    c.sync()
    snap = harness._cpu_snapshot()
    t0 = time.perf_counter()
    while step < max_steps and not reached:
        seg_start = time.perf_counter()
        for _ in range(eval_every):
            if step >= max_steps:
                break
            epoch, k = divmod(step, steps_per_epoch)
            batch_idx = idx[epoch][k * cfg.tta_batch:(k + 1) * cfg.tta_batch]
            trainer.step(*_take(c, xs, ys, batch_idx))
            step += 1
        c.sync()
        train_s += time.perf_counter() - seg_start
        logits = numpy.asarray(c.to_host(trainer.predict(xt)))
        accuracy = float((logits.argmax(axis=1) == y_test).mean())
        elapsed = time.perf_counter() - t0
        curve.append({"step": step, "epochs": step / steps_per_epoch, "time_s": elapsed, "accuracy": accuracy})
        reached = accuracy >= cfg.tta_target
    foreign = harness.foreign_load(snap, harness._cpu_snapshot())
    rec = {"case": "tta", "model": model_name(SMALL), "batch": cfg.tta_batch, "contestant": c.name, "foreign": foreign,
           "device": c.device, "label": c.label, "reached": reached,
           "time_s": curve[-1]["time_s"] if reached else None, "train_s": train_s,
           "unit": "s", "value": curve[-1]["time_s"] if reached else None, "epochs": step / steps_per_epoch,
           "accuracy": accuracy, "curve": curve, "target": cfg.tta_target, "lr": cfg.tta_lr,
           "momentum": cfg.momentum, "max_epochs": cfg.tta_max_epochs, "init": source}
    return {"records": [rec], "notes": []}


def _take(c, xs, ys, batch_idx):
    """One batch by fancy indexing on the contestant's device, wrapped in its native type."""
    if c.framework == "gradflow":
        from gradflow.tensor import Tensor
        return Tensor._wrap(xs.data[batch_idx.data]), Tensor._wrap(ys.data[batch_idx.data])
    return xs[batch_idx], ys[batch_idx]
