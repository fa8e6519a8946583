"""Worker processes: each contestant is timed in a process of its own.

Why: a user runs one framework per process, and contestants that share a process share
more than a BLAS pool -- the heap and where each one's arrays land in it, the allocator's
caches, whatever the other imported and warmed. Measured side by side in one process, the
same gradflow commit against the NumPy loop came out anywhere from 0.86x to 1.04x from one
process to the next. NumPy's OpenBLAS and PyTorch's OpenMP also keep their worker threads
spinning for a while after each call; on a machine with few cores one library's spinning
threads steal the cores the other needs, and timings swing by 2-50x. So the parent only
orchestrates and prints; it sends one job at a time and, when the next job goes to another
worker, first pauses (``cooldown``) so the spinning stops.
"""
import multiprocessing
import time
import traceback
import warnings

GROUPS = {   # worker name: the contestant kind it times (benchmarks.contestants)
    "gradflow": ("Gradflow",),
    "gradflow-captured": ("GradflowCaptured",),
    "numpy-loop": ("NumpyLoop",),
    "torch": ("Torch",),
    "torch-cudagraph": ("TorchCudaGraph",),
}
TORCH_GROUPS = ("torch", "torch-cudagraph")   # workers that set PyTorch's thread count and report its build


def serve(conn, group, cfg):
    """Worker main loop: answer ('ready', info), then one reply per job until None arrives."""
    try:
        from benchmarks import cases
        ctx = cases.Context(group, cfg)
        conn.send(("ok", cases.job_info(ctx)))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    while True:
        job = conn.recv()
        if job is None:
            break
        name, kwargs = job
        try:
            with warnings.catch_warnings(record=True) as caught:   # warnings become notes
                warnings.simplefilter("always")
                result = getattr(cases, "job_" + name)(ctx, **kwargs)
            notes = result.setdefault("notes", [])
            for w in caught:
                text = f"warning: {w.message}"
                if text not in notes:
                    notes.append(text)
            conn.send(("ok", result))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class WorkerError(RuntimeError):
    pass


class Workers:
    """One worker process per group; ``call(group, job, **kwargs)`` runs a job there.

    ``active`` lists the workers that have a contestant available here (on a machine without
    a GPU the CUDA-graph worker has none): the jobs go to those only."""

    def __init__(self, cfg, groups=tuple(GROUPS), cooldown=0.25):
        self.cooldown = cooldown
        self.last = None
        self.procs, self.conns, self.info = {}, {}, {}
        mp = multiprocessing.get_context("spawn")   # a fresh interpreter: nothing inherited
        for group in groups:
            parent, child = mp.Pipe()
            proc = mp.Process(target=serve, args=(child, group, cfg), name=f"bench-{group}", daemon=True)
            proc.start()
            child.close()
            self.procs[group], self.conns[group] = proc, parent
        for group in groups:
            self.info[group] = self._reply(group)
        self.active = [group for group, info in self.info.items() if info["available"]]

    def _reply(self, group):
        conn = self.conns[group]
        try:
            status, payload = conn.recv()
        except EOFError:
            raise WorkerError(f"the {group} worker died (exit code {self.procs[group].exitcode})") from None
        if status != "ok":
            raise WorkerError(f"{group} worker: {payload}")
        return payload

    def call(self, group, job, **kwargs):
        if self.last is not None and self.last != group and self.cooldown:
            time.sleep(self.cooldown)   # let the other worker's spinning threads go to sleep
        self.last = group
        self.conns[group].send((job, kwargs))
        return self._reply(group)

    def close(self):
        for group, conn in self.conns.items():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
