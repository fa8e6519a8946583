"""The NCCL side of a process group: collectives on CuPy arrays, one process per GPU.

NCCL comes from CuPy (``cupy.cuda.nccl``, with the library from the ``nvidia-nccl-cu12/13``
wheels). Rank 0 draws NCCL's unique id and MPI broadcasts it, so MPI stays the only
rendezvous. Collectives are enqueued on the current CUDA stream, in place; ``Work.wait``
records an event after them and polls it until the process group's deadline, so a dead
peer (whose NCCL kernel would spin forever) ends in ``DistributedError``, after which the
NCCL communicator is aborted.
"""
import pickle
import time

import numpy

from gradflow import backend
from gradflow.distributed.mpi import DistributedError


def _nccl():
    cp = backend.cupy()
    from cupy.cuda import nccl
    if not nccl.available:
        raise RuntimeError("backend='nccl' needs the NCCL library: pip install nvidia-nccl-cu13 (or -cu12, "
                           "matching your CuPy build)")
    return cp, nccl


_DTYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "uint32": "NCCL_UINT32",
           "int64": "NCCL_INT64", "uint64": "NCCL_UINT64", "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
           "float64": "NCCL_FLOAT64", "bool": "NCCL_UINT8"}
_OPS = {"sum": "NCCL_SUM", "avg": "NCCL_AVG", "product": "NCCL_PROD", "max": "NCCL_MAX", "min": "NCCL_MIN"}


def select_device(local_rank, local_size):
    """One GPU per process: the process of local rank r (its rank on this machine) uses device r."""
    cp = backend.cupy()
    count = cp.cuda.runtime.getDeviceCount()
    if local_size > count:
        raise RuntimeError(f"backend='nccl' needs one GPU per process, but {local_size} processes run on this "
                           f"machine and it has {count} visible GPU(s); start at most {count} per machine "
                           f"(mpiexec -ppn {count}) or use backend='mpi'")
    cp.cuda.Device(local_rank).use()
    return local_rank


class Communicator:
    """An NCCL communicator over every rank of the MPI communicator ``mpi_comm``."""

    def __init__(self, mpi_comm):
        cp, nccl = _nccl()
        self.nccl = nccl
        self.mpi = mpi_comm
        self.rank, self.size = mpi_comm.rank, mpi_comm.size
        self.device = select_device(mpi_comm.local_rank, mpi_comm.local_size)
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = pickle.loads(mpi_comm.broadcast_bytes(pickle.dumps(uid) if self.rank == 0 else b"", 0))
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _args(self, array, op=None):
        if not array.flags.c_contiguous:
            raise ValueError("NCCL collectives need contiguous arrays")
        name = _DTYPES.get(numpy.dtype(array.dtype).name)
        if name is None:
            raise TypeError(f"NCCL has no type for {array.dtype}")
        stream = backend.cupy().cuda.get_current_stream().ptr
        return getattr(self.nccl, name), (None if op is None else getattr(self.nccl, _OPS[op])), stream

    def allreduce(self, array, op):
        dtype, nop, stream = self._args(array, op)
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, nop, stream)
        return self._event()

    def bcast(self, array, src):
        dtype, _, stream = self._args(array)
        self.comm.bcast(array.data.ptr, array.size, dtype, src, stream)
        return self._event()

    def allgather(self, send, recv):
        dtype, _, stream = self._args(send)
        self.comm.allGather(send.data.ptr, recv.data.ptr, send.size, dtype, stream)
        return self._event()

    def _event(self):
        event = backend.cupy().cuda.Event(disable_timing=True)
        event.record()
        return event

    def wait(self, events, what, timeout):
        """Poll the events until done or ``timeout`` seconds; on time-out abort NCCL and raise."""
        deadline = time.monotonic() + timeout
        nap = 2e-5
        for event in events:
            while not event.done:
                if time.monotonic() > deadline:
                    try:
                        self.comm.abort()
                    finally:
                        raise DistributedError(
                            f"rank {self.rank}: NCCL {what} did not finish within {timeout:g} s "
                            f"(GRADFLOW_DIST_TIMEOUT): another rank has died, hangs, or called a different "
                            f"collective")
                time.sleep(nap)
                nap = min(nap * 1.5, 2e-3)
        self.comm.check_async_error()

    def free(self):
        self.comm.destroy()
