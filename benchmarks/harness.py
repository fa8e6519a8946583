"""Timing, statistics, memory meters, thread pinning and machine information.

Method, in short (README.md has the long form):

* the first call is timed on its own (wall clock, synchronized), since it includes one-off
  costs -- CUDA kernel compilation, BLAS and allocator warm-up -- then a few warm-up calls
  run untimed;
* the number of calls per repeat is calibrated so one repeat lasts at least ``min_time``;
  each repeat is timed as a whole and divided by its call count;
* on a GPU the clock is a pair of CUDA events around the repeat (recorded after a
  synchronize), read after the end event completes, so queued work is never missed;
* inputs rotate through several buffers so small cases do not run from a hot cache;
* statistics are the median and quartiles (IQR) plus min/max over repeats, and every raw
  repeat time is kept for the JSON file.
"""
import contextlib
import gc
import math
import os
import platform
import socket
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field

import numpy


# ---- clocks ------------------------------------------------------------------------------------
class WallClock:
    """Host wall clock; for CPU work."""
    kind = "perf_counter"

    def sync(self):
        pass

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        return time.perf_counter() - self._t0


class CupyClock:
    """CUDA events on CuPy's current stream."""
    kind = "cuda-events (cupy)"

    def __init__(self):
        from gradflow import backend
        self.cp = backend.cupy()
        self._e0, self._e1 = self.cp.cuda.Event(), self.cp.cuda.Event()

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def start(self):
        self.sync()
        self._e0.record()

    def stop(self):
        self._e1.record()
        self._e1.synchronize()
        return self.cp.cuda.get_elapsed_time(self._e0, self._e1) / 1e3


class TorchCudaClock:
    """CUDA events on PyTorch's current stream."""
    kind = "cuda-events (torch)"

    def __init__(self):
        import torch
        self.torch = torch
        self._e0 = torch.cuda.Event(enable_timing=True)
        self._e1 = torch.cuda.Event(enable_timing=True)

    def sync(self):
        self.torch.cuda.synchronize()

    def start(self):
        self.sync()
        self._e0.record()

    def stop(self):
        self._e1.record()
        self._e1.synchronize()
        return self._e0.elapsed_time(self._e1) / 1e3


# ---- measurement -----------------------------------------------------------------------------------
# ---- other processes' load -----------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
FOREIGN_LIMIT = 0.10   # a repeat during which other processes used more of the machine is set aside


def _cpu_snapshot():
    """(busy clock ticks of the whole machine, this process's CPU ticks, wall time) or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    t = os.times()
    return sum(v) - v[3] - v[4], (t.user + t.system) * CLK_TCK, time.perf_counter()


def foreign_load(before, after):
    """Fraction of the machine's CPU time that *other* processes used between two snapshots.

    Machine-wide busy ticks minus this process's own, over the wall time times the CPU
    count. On a shared machine this tells a clean repeat from one that competed with
    someone else's work; None where /proc is unavailable.
    """
    if before is None or after is None:
        return None
    wall = after[2] - before[2]
    if wall <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / (wall * CLK_TCK * (os.cpu_count() or 1)))


def wait_for_quiet(max_wait, window=0.5, limit=FOREIGN_LIMIT):
    """Wait (at most ``max_wait`` seconds) for a ``window`` in which the machine is nearly idle.

    Called by the parent between measurements, while the workers idle, so any CPU use seen
    is someone else's. Returns the seconds waited (``max_wait`` or more: it stayed busy).
    """
    start = time.perf_counter()
    while True:
        before = _cpu_snapshot()
        time.sleep(window)
        load = foreign_load(before, _cpu_snapshot())
        waited = time.perf_counter() - start
        if load is None or load <= limit or waited >= max_wait:
            return waited


class Canary:
    """A fixed single-threaded workload (NumPy elementwise on 1 MiB arrays, and a Python
    loop) timed before every round: if the machine itself slows down -- a virtual machine's
    host busy elsewhere, which no process here can see -- the canary slows too.

    It uses no BLAS and no thread pool, so it never wakes threads that could disturb the
    contestants.
    """

    def __init__(self):
        self.a = numpy.linspace(0.0, 1.0, 1 << 18, dtype=numpy.float32)
        self.b = numpy.empty_like(self.a)
        self.times = []

    def run(self):
        t0 = time.perf_counter()
        for _ in range(10):
            numpy.multiply(self.a, 1.0001, out=self.b)
            numpy.add(self.b, self.a, out=self.b)
        total = 0
        for i in range(20000):
            total += i
        self.times.append(time.perf_counter() - t0)
        return total

    def drift(self):
        """Median of the slower half of the runs over the median of the faster half (1.0: the
        machine kept its speed; one stray slow run does not count, a slow stretch does)."""
        if len(self.times) < 4:
            return 1.0
        t = sorted(self.times)
        k = len(t) // 2
        return float(numpy.median(t[-k:]) / numpy.median(t[:k]))


# ---- measurement -----------------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call: every repeat's value, the first call, and summary statistics.

    Repeats during which other processes used more than ``FOREIGN_LIMIT`` of the machine
    are left out of the statistics (they stay in ``times``, marked in ``used``), as long
    as at least half of them, and two, remain; otherwise all count and ``contended`` is set.
    """
    times: list                 # seconds per call, one value per repeat
    calls_per_repeat: int
    first_call_s: float
    warmup_calls: int
    clock: str
    foreign: list = field(default_factory=list)   # other processes' share of the CPU, per repeat
    used: list = field(init=False)
    contended: bool = field(init=False)
    median_s: float = field(init=False)
    q1_s: float = field(init=False)
    q3_s: float = field(init=False)
    min_s: float = field(init=False)
    max_s: float = field(init=False)

    def __post_init__(self):
        clean = [f is None or f <= FOREIGN_LIMIT for f in (self.foreign or [None] * len(self.times))]
        self.contended = sum(clean) < max(2, (len(self.times) + 1) // 2) and not all(clean)
        self.used = [True] * len(self.times) if self.contended else clean
        if len(self.times) == 1:
            self.used = [True]
        kept = [t for t, u in zip(self.times, self.used) if u]
        self.median_s, self.q1_s, self.q3_s = quartiles(kept)
        self.min_s, self.max_s = min(kept), max(kept)

    @property
    def iqr_s(self):
        return self.q3_s - self.q1_s

    def as_dict(self):
        d = asdict(self)
        d["iqr_s"] = self.iqr_s
        return d


def quartiles(values):
    """(median, first quartile, third quartile), interpolating like numpy's default."""
    a = numpy.asarray(values, dtype=float)
    q1, med, q3 = numpy.percentile(a, [25, 50, 75])
    return float(med), float(q1), float(q3)


class Runner:
    """One thing to time: ``fn(*inputs[i % len(inputs)])`` on ``clock``."""

    def __init__(self, fn, inputs, clock):
        self.fn, self.inputs, self.clock = fn, list(inputs), clock
        self.k = 0
        self.first = None
        self.calls = 1
        self.warmup = 0
        self.times = []
        self.foreign = []

    def _call(self):
        self.fn(*self.inputs[self.k % len(self.inputs)])
        self.k += 1

    def prepare(self, warmup=3, min_time=0.2, max_calls=100_000):
        """Time the first call alone, warm up, and choose the calls per repeat.

        The calls per repeat come from timing steady calls after the warm-up, doubling their
        number until they last a tenth of ``min_time``: the warm-up's own calls can be many
        times slower than the rest (a compiled step records its first two calls), and
        calibrating on them made such a contestant's repeats last a fraction of ``min_time``
        -- short repeats that start after the pause between workers with cold caches and
        sleeping BLAS threads, which biased the ratios against it.
        """
        clock = self.clock
        clock.sync()
        t0 = time.perf_counter()
        self._call()
        clock.sync()
        self.first = time.perf_counter() - t0
        if self.first > 0.5:
            warmup = min(warmup, 1)   # a slow call needs little warming and costs a lot
        self.warmup = warmup
        for _ in range(warmup):
            self._call()
        clock.sync()
        n = 1
        while True:
            clock.start()
            for _ in range(n):
                self._call()
            elapsed = clock.stop()
            if elapsed >= min_time / 10 or n >= max_calls:
                break
            n *= 2
        per_call = elapsed / n
        self.calls = max(1, min(max_calls, math.ceil(min_time / max(per_call, 1e-9))))

    def repeat(self):
        clock = self.clock
        clock.start()
        before = _cpu_snapshot()
        for _ in range(self.calls):
            self._call()
        elapsed = clock.stop()
        self.foreign.append(foreign_load(before, _cpu_snapshot()))
        self.times.append(elapsed / self.calls)

    def clean_repeats(self):
        return sum(1 for f in self.foreign if f is None or f <= FOREIGN_LIMIT)

    def timing(self):
        return Timing(times=list(self.times), calls_per_repeat=self.calls, first_call_s=self.first,
                      warmup_calls=self.warmup, clock=self.clock.kind, foreign=list(self.foreign))


def measure(fn, inputs, clock, repeats=5, min_time=0.2, warmup=3, max_calls=100_000):
    """Time one function in this process (no interleaving); returns a ``Timing``."""
    runner = Runner(fn, inputs, clock)
    runner.prepare(warmup, min_time, max_calls)
    for _ in range(repeats):
        runner.repeat()
    return runner.timing()


def n_buffers(bytes_per_input, target_bytes=48 << 20, lo=2, hi=16):
    """How many input buffers to rotate so together they exceed the last-level cache."""
    return int(max(lo, min(hi, math.ceil(target_bytes / max(bytes_per_input, 1)))))


# ---- memory ----------------------------------------------------------------------------------------------
def _proc_bytes(path, key):
    """A "Key:  N kB" field of a /proc file in bytes; None where unavailable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _proc_status(key):
    return _proc_bytes("/proc/self/status", key)


def _reset_rss_peak():
    """Reset the kernel's resident-set high-water mark (VmHWM); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ chatter) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Every meter is switched on *before* the model is built: ``build()`` makes the model and
# its optimizer and warms them up (so gradients and optimizer state exist), then one more
# ``step()`` is measured. Each meter returns, in bytes, everything the contestant holds
# that was allocated under it -- parameters, gradients, optimizer state, activations --
# at the step's peak (``peak_bytes``) and just before the step (``before_bytes``). The
# input batch is made before the meter starts and so is not counted.

def host_tracemalloc_peak(build, step):
    """NumPy buffers and Python objects, traced by ``tracemalloc`` (NumPy registers its buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        state = build()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        reset = _reset_rss_peak()
        rss0 = _proc_status("VmRSS")
        step(state)
        peak = tracemalloc.get_traced_memory()[1]
        hwm = _proc_status("VmHWM")
    finally:
        tracemalloc.stop()
    out = {"peak_bytes": int(peak), "before_bytes": int(before)}
    if reset and rss0 is not None and hwm is not None:
        out["rss_rise_bytes"] = int(max(0, hwm - rss0))   # misses memory the allocator reuses
    return out


def torch_cpu_peak(build, step):
    """PyTorch's CPU allocator, from the profiler's memory events (``profile_memory=True``):
    each op's own net allocation and each free, in time order, accumulated -- a transient
    inside a single op is not seen."""
    from torch.profiler import ProfilerActivity, profile, record_function
    gc.collect()
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        state = build()
        gc.collect()
        with record_function("gradflow-bench-measured-step"):
            step(state)
    events = prof.events()
    start = min(e.time_range.start for e in events if e.name == "gradflow-bench-measured-step")
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in events if e.self_cpu_memory_usage)
    level = before = peak = 0
    for t, d in deltas:
        level += d
        if t < start:
            before = peak = level
        else:
            peak = max(peak, level)
    return {"peak_bytes": int(peak), "before_bytes": int(before)}


def cupy_peak(build, step):
    """CuPy's memory pool, through a memory hook on its malloc and free."""
    from gradflow import backend
    cp = backend.cupy()
    from cupy.cuda.memory_hook import MemoryHook

    class PeakHook(MemoryHook):
        name = "gradflow-bench-peak"

        def __init__(self):
            self.sizes = {}          # pointer -> bytes, for blocks taken while hooked
            self.level = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.sizes[kw["mem_ptr"]] = kw["mem_size"]
            self.level += kw["mem_size"]
            self.peak = max(self.peak, self.level)

        def free_postprocess(self, **kw):
            self.level -= self.sizes.pop(kw["mem_ptr"], 0)

    stream = cp.cuda.get_current_stream()
    stream.synchronize()
    hook = PeakHook()
    with hook:
        state = build()
        stream.synchronize()
        before = hook.peak = hook.level
        step(state)
        stream.synchronize()
    return {"peak_bytes": int(hook.peak), "before_bytes": int(before)}


def torch_cuda_peak(build, step):
    """PyTorch's CUDA allocator: ``max_memory_allocated`` above what was allocated before ``build``."""
    import torch
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    state = build()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    step(state)
    torch.cuda.synchronize()
    return {"peak_bytes": int(torch.cuda.max_memory_allocated() - base), "before_bytes": int(before)}


# ---- GPU kernel launches ---------------------------------------------------------------------------------
def count_cuda_kernels(fn, sync):
    """How many CUDA kernels ``fn`` launches (any library), via PyTorch's CUPTI profiler.

    Returns None where that is unavailable (no CUDA build of PyTorch). Memcpy/memset
    activities are not counted.
    """
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        if not torch.cuda.is_available():
            return None
        sync()
        with quiet_stderr(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        names = [e.name for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
        return sum(1 for n in names if not n.startswith(("Memcpy", "Memset", "[memory]")))
    except Exception:
        return None


# ---- threads ---------------------------------------------------------------------------------------------------
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def blas_threads():
    """(threads NumPy's BLAS uses, how that was found)."""
    try:
        from threadpoolctl import threadpool_info
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            return int(pools[0]["num_threads"]), f"threadpoolctl ({pools[0].get('internal_api')})"
    except Exception:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), f"${var}"
    return usable_cores(), "usable cores (OpenBLAS/MKL default)"


def blas_threads_info():
    threads, source = blas_threads()
    return {"blas_threads": threads, "blas_threads_source": source}


def pin_threads(n):
    """Give PyTorch's intra-op pool ``n`` threads (the count NumPy's BLAS uses); return what is set."""
    info = blas_threads_info()
    info["torch_threads"] = None
    try:
        import torch
        torch.set_num_threads(int(n))
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return info


def set_thread_env(n):
    """Set the BLAS/OpenMP thread variables; effective only before NumPy is first imported."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)


# ---- machine information --------------------------------------------------------------------------
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine_info():
    """What the numbers were measured on: CPU, GPU, driver and library versions."""
    import gradflow
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_bytes": _proc_bytes("/proc/meminfo", "MemTotal"),
        "numpy": numpy.__version__,
        "numpy_blas": _numpy_blas(),
        "gradflow": getattr(gradflow, "__version__", "?"),
        "gradflow_commit": _git("rev-parse", "--short", "HEAD"),
        "gradflow_tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "torch": _dist_version("torch"), "torch_cuda": None,   # the torch worker fills in the rest
        "cupy": None, "gpu": None, "cuda_driver": None, "cuda_runtime": None,
    }
    from gradflow import backend
    if backend.cuda_is_available():
        cp = backend.cupy()
        info["cupy"] = cp.__version__
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu_memory_bytes"] = int(props.get("totalGlobalMem", 0))
        info["cuda_driver"] = _cuda_version(cp.cuda.runtime.driverGetVersion())
        info["cuda_runtime"] = _cuda_version(cp.cuda.runtime.runtimeGetVersion())
    return info


def _dist_version(name):
    """An installed distribution's version without importing it (the parent never imports torch)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    except ImportError:
        return None


def _cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


def _numpy_blas():
    try:
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return None
