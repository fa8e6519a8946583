"""Processes that train together: ``torch.distributed``'s names on MPI and NCCL.

Start N processes with an MPI launcher (``python -m gradflow.distributed.run -n 4
train.py`` or ``mpiexec -n 4 python train.py``), then in each::

    import gradflow.distributed as dist
    dist.init_process_group("mpi")          # or "nccl": one GPU per process
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # in place, on every rank

Rank and world size come from the launcher. CPU tensors always go through MPI (mpi4py on
the NumPy arrays, in place); with ``backend="nccl"`` GPU tensors go through NCCL (CuPy),
with ``"mpi"`` they are staged through host memory. Every collective is non-blocking
underneath and waited for with a deadline (``timeout=`` or ``$GRADFLOW_DIST_TIMEOUT``
seconds, default 30 minutes): if a rank dies or hangs, the others raise
``DistributedError`` instead of waiting forever; an uncaught exception on any rank calls
``MPI_Abort`` so the whole job ends with that error.
"""
import enum
import importlib.util
import pickle

import numpy

from gradflow import backend
from gradflow.backend import cuda_is_available
from gradflow.distributed import mpi as _mpi
from gradflow.distributed.mpi import DistributedError
from gradflow.tensor import Tensor, _in_place

_group = None   # the default process group once init_process_group has run


class ReduceOp(enum.Enum):
    """How ``all_reduce`` combines the ranks' values (``AVG``: floating-point tensors only)."""
    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"


class Backend:
    MPI = "mpi"
    NCCL = "nccl"


class _ProcessGroup:
    def __init__(self, backend_name, timeout):
        self.backend = backend_name
        self.mpi = _mpi.Communicator(timeout)
        self.nccl = None
        if backend_name == Backend.NCCL:
            from gradflow.distributed import nccl
            self.nccl = nccl.Communicator(self.mpi)

    rank = property(lambda self: self.mpi.rank)
    size = property(lambda self: self.mpi.size)


def is_available():
    """True when mpi4py (and so an MPI library) can be imported."""
    return importlib.util.find_spec("mpi4py") is not None


def is_initialized():
    return _group is not None


def _default_group(group=None, who="this call"):
    if group is not None and group is not _group:
        raise ValueError(f"{who}: only the default process group exists (group=None)")
    if _group is None:
        raise RuntimeError(f"{who}: the default process group has not been initialized; call "
                           f"gradflow.distributed.init_process_group() first")
    return _group


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1):
    """Join the job started by the MPI launcher. ``backend``: ``"mpi"`` (CPU collectives; GPU
    tensors staged through the host) or ``"nccl"`` (GPU collectives, one GPU per process, the
    GPU chosen by the process's rank on its node); default ``"nccl"`` when CUDA is usable.
    ``world_size``/``rank``, if given, must agree with the launcher's.
    """
    global _group
    if _group is not None:
        raise RuntimeError("init_process_group: the default process group is already initialized "
                           "(call destroy_process_group() first)")
    if backend is None:
        backend = Backend.NCCL if cuda_is_available() else Backend.MPI
    backend = str(backend).lower()
    if backend not in (Backend.MPI, Backend.NCCL):
        raise ValueError(f"init_process_group: unknown backend {backend!r}; expected 'mpi' or 'nccl'")
    if init_method not in (None, "mpi://", "env://"):
        raise ValueError(f"init_process_group: gradflow's rendezvous is the MPI launcher; init_method "
                         f"{init_method!r} is not supported (leave it None)")
    group = _ProcessGroup(backend, _mpi.timeout_from_env(timeout))
    for name, given, actual in (("world_size", world_size, group.size), ("rank", rank, group.rank)):
        if given not in (-1, None) and int(given) != actual:
            group.mpi.free()
            raise ValueError(f"init_process_group: {name}={given}, but the MPI launcher says {actual}; start "
                             f"the job with mpiexec -n <world size> (or leave {name} unset)")
    _group = group
    if group.size > 1:
        _mpi.install_abort_on_error()


def destroy_process_group(group=None):
    """Leave the process group (MPI itself is finalized at exit)."""
    global _group
    g = _default_group(group, "destroy_process_group")
    _group = None
    if g.nccl is not None:
        g.nccl.free()
    g.mpi.free()
    _mpi.uninstall_abort_on_error()


def get_rank(group=None):
    return _default_group(group, "get_rank").rank


def get_world_size(group=None):
    return _default_group(group, "get_world_size").size


def get_local_rank():
    """This process's rank among the processes on its machine (which GPU it uses)."""
    return _default_group(None, "get_local_rank").mpi.local_rank


def get_backend(group=None):
    return _default_group(group, "get_backend").backend


# ---- waiting -------------------------------------------------------------------------------------------
class Work:
    """A started collective: ``wait()`` completes it (within the group's timeout)."""

    def __init__(self, group, what, mpi_requests=(), nccl_events=(), finish=None):
        self._group, self._what = group, what
        self._requests, self._events = list(mpi_requests), list(nccl_events)
        self._finish = finish
        self._done = False

    def is_completed(self):
        if self._done:
            return True
        if self._requests and not _mpi.mpi().Request.Testall(self._requests):
            return False
        return all(e.done for e in self._events)

    def wait(self, timeout=None):
        """Complete the collective; ``timeout`` (seconds or a timedelta) overrides the group's."""
        if self._done:
            return True
        seconds = self._group.mpi.timeout if timeout is None else _mpi.timeout_from_env(timeout)
        try:
            if self._requests:
                _mpi.wait(self._requests, self._what, seconds, self._group.rank)
            if self._events:
                self._group.nccl.wait(self._events, self._what, seconds)
        except DistributedError:
            _mpi.mark_broken()
            raise
        self._done = True
        if self._finish is not None:
            self._finish()
        return True


def _result(work, async_op):
    if async_op:
        return work
    work.wait()
    return None


_OP_NAMES = frozenset(o.value for o in ReduceOp)


def _op_name(op):
    if op in _OP_NAMES:
        return op
    if isinstance(op, ReduceOp):
        return op.value
    if isinstance(op, str) and op.lower() in _OP_NAMES:
        return op.lower()
    raise ValueError(f"unknown reduce op {op!r}; use gradflow.distributed.ReduceOp.SUM/AVG/PRODUCT/MIN/MAX")


def _array_op(group, array, what, start, finish=None):
    """Run ``start(comm, contiguous_array)`` on ``array``'s device path; return a Work.

    CPU arrays go to MPI, GPU arrays to NCCL (``nccl`` backend) or through a host copy (``mpi``).
    Non-contiguous arrays use a contiguous copy, written back when the collective completes.
    """
    on_gpu = backend.device_of(array) == "cuda"
    if on_gpu and group.nccl is not None:
        xp = backend.xp_of(array)
        work_array = array if array.flags.c_contiguous else xp.ascontiguousarray(array)
        event = start("nccl", group.nccl, work_array)

        def done():
            if work_array is not array:
                array[...] = work_array
            if finish is not None:
                finish(work_array)
        return Work(group, what, nccl_events=[event], finish=done)
    if on_gpu:
        work_array = array.get()
    else:
        work_array = array if array.flags.c_contiguous and array.flags.writeable else numpy.array(array, order="C")
    request = start("mpi", group.mpi, work_array)

    def done():
        if finish is not None:
            finish(work_array)
        if work_array is not array:
            array[...] = backend.to_device(work_array, backend.device_of(array))
    return Work(group, what, mpi_requests=[request], finish=done)


def _all_reduce_array(array, op="sum", group=None):
    """All-reduce a raw array in place; returns the started Work (DistributedDataParallel's path)."""
    g = _default_group(group, "all_reduce")
    op = _op_name(op)
    if op == "avg" and array.dtype.kind not in "fc":
        raise TypeError(f"all_reduce: ReduceOp.AVG needs a floating-point tensor, got {array.dtype}")

    def start(kind, comm, a):
        return comm.allreduce(a, op) if kind == "nccl" else comm.iallreduce(a, op)

    def finish(a):
        if op == "avg" and not (backend.device_of(a) == "cuda" and g.nccl is not None):
            a /= a.dtype.type(g.size)
    return _array_op(g, array, f"all_reduce({op})", start, finish)


def _check_tensor(tensor, who):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{who}: expected a gradflow Tensor, got {type(tensor).__name__}")
    _in_place(f"gradflow.distributed.{who}")


def _bumped(work, tensors):
    finish = work._finish

    def done():
        if finish is not None:
            finish()
        for t in tensors:
            t._bump_version()
    work._finish = done
    return work


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Combine ``tensor`` across ranks with ``op``; every rank ends with the result, in place."""
    _check_tensor(tensor, "all_reduce")
    return _result(_bumped(_all_reduce_array(tensor.data, op, group), [tensor]), async_op)


def broadcast(tensor, src, group=None, async_op=False):
    """Copy rank ``src``'s ``tensor`` into every other rank's ``tensor`` (same shape and dtype)."""
    _check_tensor(tensor, "broadcast")
    g = _default_group(group, "broadcast")
    if not 0 <= int(src) < g.size:
        raise ValueError(f"broadcast: src={src} is not a rank of this {g.size}-process group")

    def start(kind, comm, a):
        return comm.bcast(a, int(src)) if kind == "nccl" else comm.ibcast(a, int(src))
    return _result(_bumped(_array_op(g, tensor.data, "broadcast", start), [tensor]), async_op)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """Fill ``tensor_list[r]`` with rank r's ``tensor`` on every rank."""
    _check_tensor(tensor, "all_gather")
    g = _default_group(group, "all_gather")
    if len(tensor_list) != g.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} tensors; it needs one per rank ({g.size})")
    for i, t in enumerate(tensor_list):
        if not isinstance(t, Tensor) or t.shape != tensor.shape or t.dtype != tensor.dtype or t.device != tensor.device:
            raise ValueError(f"all_gather: tensor_list[{i}] must be a Tensor of shape {tensor.shape}, dtype "
                             f"{tensor.dtype} on '{tensor.device}' like the input")
    xp = backend.xp_of(tensor.data)
    send = xp.ascontiguousarray(tensor.data)
    recv = xp.empty((g.size,) + tensor.shape, dtype=tensor.dtype)
    host_send = send if g.nccl is not None or tensor.device == "cpu" else backend.to_numpy(send)

    def start(kind, comm, a):
        return comm.allgather(send, a) if kind == "nccl" else comm.iallgather(host_send, a)

    def finish(a):
        for r, t in enumerate(tensor_list):
            t.data[...] = backend.to_device(a[r], t.device)
    return _result(_bumped(_array_op(g, recv, "all_gather", start, finish), list(tensor_list)), async_op)


def barrier(group=None):
    """Wait until every rank has reached this call (or the timeout passes)."""
    g = _default_group(group, "barrier")
    Work(g, "barrier", mpi_requests=[g.mpi.ibarrier()]).wait()


def all_gather_object(object_list, obj, group=None):
    """``object_list[r]`` becomes rank r's picklable ``obj`` (through MPI, on the host)."""
    g = _default_group(group, "all_gather_object")
    if len(object_list) != g.size:
        raise ValueError(f"all_gather_object: object_list needs one slot per rank ({g.size}), "
                         f"got {len(object_list)}")
    try:
        parts = g.mpi.allgather_bytes(pickle.dumps(obj))
    except DistributedError:
        _mpi.mark_broken()
        raise
    for r, data in enumerate(parts):
        object_list[r] = pickle.loads(data)


def broadcast_object_list(object_list, src=0, group=None):
    """Replace ``object_list``'s items on every rank with rank ``src``'s (picklable objects)."""
    g = _default_group(group, "broadcast_object_list")
    try:
        data = g.mpi.broadcast_bytes(pickle.dumps(list(object_list)) if g.rank == src else b"", src)
    except DistributedError:
        _mpi.mark_broken()
        raise
    object_list[:] = pickle.loads(data)


__all__ = ["Backend", "DistributedError", "ReduceOp", "Work", "all_gather", "all_gather_object", "all_reduce",
           "barrier", "broadcast", "broadcast_object_list", "destroy_process_group", "get_backend", "get_local_rank",
           "get_rank", "get_world_size", "init_process_group", "is_available", "is_initialized"]
