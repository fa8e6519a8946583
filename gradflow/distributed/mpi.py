"""The MPI side of a process group: rank and size from the launcher, collectives on host
arrays through mpi4py, every wait bounded by a deadline.

MPI starts the processes (``mpiexec``), tells each its rank, exchanges NCCL's unique id and
runs the collectives on CPU tensors. Every collective is started non-blocking
(``Iallreduce``, ``Ibcast``, ...) and completed by ``wait``, which polls the request until
a deadline: a rank that died or hangs makes the others fail with ``DistributedError``
after ``timeout`` seconds instead of blocking forever. An uncaught exception on any rank
calls ``MPI_Abort`` (``install_abort_on_error``), which ends every rank of the job.

mpi4py is imported on first use only: importing it initialises MPI.
"""
import atexit
import os
import sys
import time
import traceback

import numpy

DEFAULT_TIMEOUT = 1800.0   # seconds, as PyTorch's default process-group timeout


class DistributedError(RuntimeError):
    """A collective failed or did not finish in time (a rank died, hung or diverged)."""


def mpi():
    """The ``mpi4py.MPI`` module (initialising MPI), or a clear error naming the install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"gradflow.distributed needs mpi4py and an MPI library ({e}); "
                           f"pip install 'gradflow[distributed]' (mpi4py + the mpich wheel)") from None
    return MPI


def timeout_from_env(timeout=None):
    """``timeout`` (seconds or a timedelta), else $GRADFLOW_DIST_TIMEOUT, else 30 minutes."""
    if timeout is None:
        raw = os.environ.get("GRADFLOW_DIST_TIMEOUT", "").strip()
        if not raw:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"GRADFLOW_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if hasattr(timeout, "total_seconds"):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"the distributed timeout must be a positive number of seconds, got {timeout}")
    return timeout


SPIN_SECONDS = 0.001  # poll without sleeping this long first: MPI progresses a collective only while tested


def wait(requests, what, timeout, rank):
    """Complete MPI ``requests``, polling: spin for a few milliseconds (as a blocking MPI wait
    would), then sleep a little between tests, and raise DistributedError when ``timeout``
    seconds pass first."""
    MPI = mpi()
    requests = [r for r in requests if r is not None]
    if not requests or MPI.Request.Testall(requests):
        return
    start = time.monotonic()
    deadline, spin_until = start + timeout, start + SPIN_SECONDS
    nap = 5e-5
    while not MPI.Request.Testall(requests):
        now = time.monotonic()
        if now < spin_until:
            continue
        if now > deadline:
            raise DistributedError(
                f"rank {rank}: {what} did not finish within {timeout:g} s (GRADFLOW_DIST_TIMEOUT / "
                f"init_process_group(timeout=)): another rank has died, hangs, or called a different "
                f"collective")
        time.sleep(nap)
        nap = min(nap * 1.5, 1e-3)


_MPI_OPS = {"sum": "SUM", "avg": "SUM", "product": "PROD", "max": "MAX", "min": "MIN"}


class Communicator:
    """A duplicate of ``MPI.COMM_WORLD`` (gradflow's messages never mix with the user's)."""

    def __init__(self, timeout):
        MPI = mpi()
        if not MPI.Is_initialized():
            MPI.Init_thread()
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.timeout = timeout

    def wait(self, requests, what):
        wait(requests, what, self.timeout, self.rank)

    # ---- collectives on contiguous host arrays, in place ------------------------------------------
    def iallreduce(self, array, op):
        MPI = mpi()
        return self.comm.Iallreduce(MPI.IN_PLACE, array, op=getattr(MPI, _MPI_OPS[op]))

    def ibcast(self, array, src):
        return self.comm.Ibcast(array, root=src)

    def iallgather(self, send, recv):
        return self.comm.Iallgather(send, recv)

    def ibarrier(self):
        return self.comm.Ibarrier()

    def allgather_bytes(self, data):
        """Every rank's ``bytes`` (lengths may differ), in rank order."""
        sizes = numpy.zeros(self.size, dtype=numpy.int64)
        self.wait([self.comm.Iallgather(numpy.array([len(data)], dtype=numpy.int64), sizes)], "all_gather_object")
        recv = numpy.empty(int(sizes.sum()), dtype=numpy.uint8)
        offsets = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]])
        send = numpy.frombuffer(data, dtype=numpy.uint8)
        self.wait([self.comm.Iallgatherv(send, [recv, sizes, offsets, mpi().BYTE])], "all_gather_object")
        return [recv[o:o + s].tobytes() for o, s in zip(offsets, sizes)]

    def broadcast_bytes(self, data, src):
        size = numpy.array([len(data) if self.rank == src else 0], dtype=numpy.int64)
        self.wait([self.comm.Ibcast(size, root=src)], "broadcast_object")
        buf = numpy.frombuffer(data, dtype=numpy.uint8).copy() if self.rank == src else \
            numpy.empty(int(size[0]), dtype=numpy.uint8)
        self.wait([self.comm.Ibcast(buf, root=src)], "broadcast_object")
        return buf.tobytes()

    def abort(self, code=1):
        mpi().COMM_WORLD.Abort(code)

    def free(self):
        self.comm.Free()


# ---- ending the whole job when one rank fails ---------------------------------------------------------
_previous_excepthook = None
_broken = False   # a collective failed: MPI_Finalize at exit could wait forever, so abort instead


def mark_broken():
    global _broken
    _broken = True


def _abort_on_uncaught(exc_type, exc, tb):
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"
    try:
        # one write, then a moment for the launcher to forward it: MPI_Abort kills this rank's
        # proxy too, and a traceback written line by line was seen cut after its first line
        message = (f"gradflow.distributed: uncaught exception on rank {rank}; calling MPI_Abort to end "
                   f"every rank of the job\n" + "".join(traceback.format_exception(exc_type, exc, tb)))
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), message.encode("utf-8", "replace"))
        time.sleep(0.5)
    finally:
        if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) and not _broken:
            code = 130 if exc_type is KeyboardInterrupt else 1
        else:
            code = 1
        mpi().COMM_WORLD.Abort(code)


def _abort_if_broken():
    if _broken:
        sys.stderr.write("gradflow.distributed: exiting after a failed collective; calling MPI_Abort\n")
        sys.stderr.flush()
        mpi().COMM_WORLD.Abort(1)


def install_abort_on_error():
    """An uncaught exception on this rank calls MPI_Abort (so the others do not wait for it)."""
    global _previous_excepthook
    if _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_uncaught
        atexit.register(_abort_if_broken)   # runs before mpi4py's MPI_Finalize


def uninstall_abort_on_error():
    global _previous_excepthook
    if _previous_excepthook is not None:
        sys.excepthook = _previous_excepthook
        _previous_excepthook = None
        atexit.unregister(_abort_if_broken)
