"""``DistributedDataParallel``: one model replica per process, gradients averaged across them.

Each process (rank) runs the same model on its share of every batch. At construction the
replicas are checked to have the same parameters (names, shapes, dtypes) and rank 0's
parameters and buffers are copied to every rank. During backward, gradients are averaged
across ranks in *buckets*: the parameters, in reverse registration order (roughly the
order backward produces their gradients), are grouped into flat buffers of up to
``bucket_cap_mb``; when the last gradient of a bucket is final (a post-accumulate-grad hook
on each parameter), the bucket's gradients are copied into its buffer and a non-blocking
all-reduce starts, while backward carries on with earlier layers. When backward ends, the
reductions are waited for and the averages copied back into ``.grad``, so the optimizer
step that follows sees the same gradient on every rank: the mean over the whole global
batch, as one process training on all of it would compute (up to summation order).

Buckets are started in a fixed order on every rank (MPI and NCCL require collectives in
the same order everywhere). ``no_sync()`` skips the reduction for gradient accumulation.
Under ``gradflow.compile`` the bucket starts and the final wait are ``replay_as_call``
calls, replayed at the same points of the step.
"""
import contextlib
import sys
import weakref

import numpy

from gradflow import backend
from gradflow import distributed as dist
from gradflow.compile import replay_as_call
from gradflow.nn.module import Module
from gradflow.tensor import Tensor

_tape = sys.modules["gradflow.tensor"]  # the module (``gradflow.tensor`` the name is the factory function)


class _Bucket:
    """A flat buffer for the gradients of some parameters of one device and dtype."""

    def __init__(self, params, indices):
        self.params, self.indices = params, indices
        self.offsets, total = [], 0
        for p in params:
            self.offsets.append(total)
            total += p.numel()
        self.flat = backend.xp_of(params[0].data).zeros(total, dtype=params[0].dtype)
        self.nbytes = self.flat.nbytes
        self.work = None
        self.pending = len(params)
        self.views = [(p, self.flat[start:start + p.numel()].reshape(p.shape)) for p, start in zip(params, self.offsets)]


class DistributedDataParallel(Module):
    """Wrap ``module`` so that backward averages its gradients across all ranks.

    Call ``gradflow.distributed.init_process_group`` first. ``bucket_cap_mb`` bounds a
    bucket's size; ``broadcast_buffers`` copies rank 0's buffers to every rank before each
    forward; with ``find_unused_parameters`` a parameter that gets no gradient on some rank
    counts as zero there (and keeps ``grad=None`` if no rank used it) — without it, such a
    parameter is an error at the end of backward. ``device_ids``/``output_device`` are
    accepted for PyTorch compatibility (one device per process is implied).
    """
    # With one process the average is the gradient itself and backward does nothing more;
    # True runs the synchronization anyway (the tests use it to exercise NCCL on one GPU).
    sync_one_process = False

    def __init__(self, module, device_ids=None, output_device=None, broadcast_buffers=True, process_group=None,
                 bucket_cap_mb=25, find_unused_parameters=False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a gradflow.nn.Module, got {type(module).__name__}")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel: call gradflow.distributed.init_process_group() first")
        if process_group is not None:
            raise ValueError("DistributedDataParallel: only the default process group exists (process_group=None)")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.module = module
        self.device_ids, self.output_device = device_ids, output_device
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.bucket_cap_mb = bucket_cap_mb
        self.require_backward_grad_sync = True
        self.world_size = dist.get_world_size()
        self._named_params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        devices = {p.device for _, p in module.named_parameters()}
        if len(devices) > 1:
            raise ValueError(f"DistributedDataParallel: the module's parameters are on several devices "
                             f"{sorted(devices)}; one process drives one device")
        self._verify_same_model()
        self._broadcast_state()
        self._buckets, self._bucket_of = self._make_buckets(bucket_cap_mb * 2 ** 20)
        self._reset_pass()
        me = weakref.ref(self)
        self._hook_handles = [p.register_post_accumulate_grad_hook(_ready_hook(me, i))
                              for i, (_, p) in enumerate(self._named_params)] \
            if self.world_size > 1 or self.sync_one_process else []

    # ---- construction ------------------------------------------------------------------------------
    def _verify_same_model(self):
        """Every rank must hold the same parameters and buffers (names, shapes, dtypes)."""
        mine = [("parameter", n, tuple(p.shape), str(p.dtype)) for n, p in self.module.named_parameters()]
        mine += [("buffer", n, tuple(b.shape), str(b.dtype)) for n, b in self.module.named_buffers()]
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        reference = everyone[0]
        problems = []
        for rank, theirs in enumerate(everyone[1:], start=1):
            if len(theirs) != len(reference):
                problems.append(f"rank {rank} has {len(theirs)} parameters and buffers, rank 0 has {len(reference)}")
                continue
            for a, b in zip(reference, theirs):
                if a != b:
                    problems.append(f"rank {rank} has {b[0]} {b[1]!r} of shape {b[2]} {b[3]}, rank 0 has "
                                    f"{a[0]} {a[1]!r} of shape {a[2]} {a[3]}")
        if problems:
            shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
            raise RuntimeError("DistributedDataParallel: the model differs across ranks (every rank must build the "
                               f"same model):\n  {shown}")

    def _broadcast_state(self):
        """Rank 0's parameters and buffers on every rank, one flat broadcast per device and dtype."""
        tensors = [p for _, p in self.module.named_parameters()] + [b for _, b in self.module.named_buffers()]
        groups = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype.str), []).append(t)
        for group in groups.values():
            flat = Tensor._wrap(backend.xp_of(group[0].data).concatenate([t.data.reshape(-1) for t in group]))
            dist.broadcast(flat, src=0)
            start = 0
            for t in group:
                t.data[...] = flat.data[start:start + t.numel()].reshape(t.shape)
                t._bump_version()
                start += t.numel()

    def _make_buckets(self, cap_bytes):
        """Buckets of parameters in reverse order, split by device and dtype, each at most ``cap_bytes``
        (a single larger parameter gets a bucket of its own)."""
        buckets, bucket_of = [], {}
        open_params, open_indices, open_bytes, open_key = [], [], 0, None
        for index in reversed(range(len(self._named_params))):
            p = self._named_params[index][1]
            key = (p.device, p.dtype.str)
            if open_params and (key != open_key or open_bytes + p.data.nbytes > cap_bytes):
                buckets.append(_Bucket(open_params, open_indices))
                open_params, open_indices, open_bytes = [], [], 0
            open_params.append(p)
            open_indices.append(index)
            open_bytes += p.data.nbytes
            open_key = key
        if open_params:
            buckets.append(_Bucket(open_params, open_indices))
        for b, bucket in enumerate(buckets):
            for index in bucket.indices:
                bucket_of[index] = b
        return buckets, bucket_of

    @property
    def bucket_sizes(self):
        """Bytes of each bucket, in the order they are reduced."""
        return [b.nbytes for b in self._buckets]

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._active:  # the last backward failed before its gradients were synchronized
            self._reset_pass()
        if self.broadcast_buffers and self.world_size > 1 and any(True for _ in self.module.buffers()):
            self._sync_buffers()
        return self.module(*args, **kwargs)

    @replay_as_call
    def _sync_buffers(self):
        for b in self.module.buffers():
            dist.broadcast(b, src=0)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward only accumulates local gradients; the first backward after it averages
        the accumulated sum across ranks."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    # ---- the gradient synchronization -------------------------------------------------------------------
    def _reset_pass(self):
        self._active = False
        self._ready = [False] * len(self._named_params)
        self._next_bucket = 0
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.work = None
            bucket.had_grad = None

    @replay_as_call
    def _grad_ready(self, index):
        """Parameter ``index`` has its final gradient for this backward pass."""
        if not self._active:
            self._active = True
            if _tape._state.backward_depth:  # eager backward: sync at its end (replay calls _finish itself)
                _tape.queue_backward_callback(self._finish)
        if self._ready[index]:
            raise RuntimeError(f"DistributedDataParallel: parameter {self._named_params[index][0]!r} was marked "
                               f"ready twice in one backward pass")
        self._ready[index] = True
        bucket = self._buckets[self._bucket_of[index]]
        bucket.pending -= 1
        if bucket.pending == 0:
            self._start_ready_buckets()

    def _start_ready_buckets(self):
        """Start the all-reduce of every complete bucket whose predecessors have started (same order
        on every rank)."""
        while self._next_bucket < len(self._buckets) and self._buckets[self._next_bucket].pending == 0:
            bucket = self._buckets[self._next_bucket]
            bucket.had_grad = []
            for p, view in bucket.views:
                if p.grad is None:
                    view[...] = 0
                    bucket.had_grad.append(False)
                else:
                    view[...] = p.grad.data
                    bucket.had_grad.append(True)
            bucket.work = dist._all_reduce_array(bucket.flat, "sum")
            self._next_bucket += 1

    @replay_as_call
    def _finish(self):
        """End of backward: start what is left, wait for every bucket, write the averages to ``.grad``."""
        if not self._active:
            return
        missing = [i for i, ready in enumerate(self._ready) if not ready]
        if missing and not self.find_unused_parameters:
            names = [self._named_params[i][0] for i in missing]
            self._reset_pass()
            raise RuntimeError(
                f"DistributedDataParallel: parameters {names[:8]}{' ...' if len(names) > 8 else ''} received no "
                f"gradient in this backward pass on this rank, so their buckets cannot be reduced; pass "
                f"find_unused_parameters=True to DistributedDataParallel when some parameters may go unused, "
                f"or make the loss depend on every parameter")
        for i in missing:
            self._ready[i] = True
            self._buckets[self._bucket_of[i]].pending -= 1
        self._start_ready_buckets()
        used = None
        if self.find_unused_parameters:  # which parameters had a gradient on any rank
            flags = numpy.zeros(len(self._named_params), dtype=numpy.int32)
            for bucket in self._buckets:
                for index, had in zip(bucket.indices, bucket.had_grad):
                    flags[index] = had
            used_work = dist._all_reduce_array(flags, "sum")
        try:
            for bucket in self._buckets:
                bucket.work.wait()
            if self.find_unused_parameters:
                used_work.wait()
                used = flags
        finally:
            self._active = False
        for bucket in self._buckets:
            bucket.flat /= bucket.flat.dtype.type(self.world_size)
            for index, (p, view) in zip(bucket.indices, bucket.views):
                if used is not None and not used[index]:
                    continue
                if p.grad is None:  # a delivery (inside backward), not a user's assignment
                    p._grad = Tensor._wrap(view.copy())
                else:
                    p.grad.data[...] = view
                    p.grad._bump_version()
        self._reset_pass()


def _ready_hook(ddp_ref, index):
    def hook(param):
        ddp = ddp_ref()
        if ddp is not None and ddp.require_backward_grad_sync:
            ddp._grad_ready(index)
    return hook


__all__ = ["DistributedDataParallel"]
