"""Softmax and log-softmax along an axis, and the fused softmax cross-entropy, as differentiable Functions.

Its own module because these are row operations, not elementwise ones: every forward and
backward runs along one axis, as a row kernel (or the cross-entropy's fused row pass) on a
contiguous (rows, cols) view, with the layout helpers and CPU fast paths that brings. The
conventions are ``gradflow.activation``'s (one kernel per forward and per backward, NumPy
twins on the CPU, second derivatives through differentiable ops), whose helpers it imports.
Supported dtypes: float32 and float64.
"""
import math
import warnings

import numpy

from gradflow import backend, ops
from gradflow.activation import _quiet, _tensor
from gradflow.kernel import Elementwise, RawKernel, RowKernel, row_threads
from gradflow.tensor import DTypeError, Function, OpError, Tensor, as_tensor


# ---- softmax along an axis: row kernels on a contiguous (rows, cols) view --------------------------
def _as_rows(a, axis):
    """a with ``axis`` moved last, as a C-contiguous 2-D (rows, cols) array, and its moved shape."""
    if a.ndim == 2 and axis % 2 == 1 and a.flags.c_contiguous:  # already rows: skip moveaxis
        return a, a.shape
    xp = backend.xp_of(a)
    moved = xp.moveaxis(a, axis, -1)
    rows = math.prod(moved.shape[:-1])
    return xp.ascontiguousarray(moved).reshape(rows, moved.shape[-1]), moved.shape


def _from_rows(out, moved_shape, axis):
    if out.ndim == 2 and axis % 2 == 1 and out.shape == moved_shape:
        return out
    return backend.xp_of(out).moveaxis(out.reshape(moved_shape), -1, axis)


@_quiet
def _softmax_rows_np(a, b=None):
    if a.shape[1] == 0:
        return a.copy()
    e = numpy.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@_quiet
def _log_softmax_rows_np(a, b=None):
    if a.shape[1] == 0:
        return a.copy()
    m = a.max(axis=1, keepdims=True)
    return a - m - numpy.log(numpy.exp(a - m).sum(axis=1, keepdims=True))


@_quiet
def _softmax_bwd_rows_np(y, g):
    return y * (g - (g * y).sum(axis=1, keepdims=True))


@_quiet
def _log_softmax_bwd_rows_np(y, g):
    return g - numpy.exp(y) * g.sum(axis=1, keepdims=True)


softmax_rows = RowKernel("gf_softmax_fwd", numpy=_softmax_rows_np)
log_softmax_rows = RowKernel("gf_log_softmax_fwd", numpy=_log_softmax_rows_np)
softmax_bwd_rows = RowKernel("gf_softmax_bwd", numpy=_softmax_bwd_rows_np)
log_softmax_bwd_rows = RowKernel("gf_log_softmax_bwd", numpy=_log_softmax_bwd_rows_np)


def _along(kernel, axis, a, b=None):
    """Run a row kernel along ``axis`` of same-shape arrays a (and b)."""
    if a.ndim == 0:
        return kernel(a.reshape(1, 1), None if b is None else b.reshape(1, 1)).reshape(())
    a2, moved = _as_rows(a, axis)
    b2 = None if b is None else _as_rows(b, axis)[0]
    return _from_rows(kernel(a2, b2), moved, axis)


class Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        y = _along(softmax_rows, self.axis, x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return SoftmaxGrad(self.axis)(y, gy)


class SoftmaxGrad(Function):
    """gx = y * (g - sum(g * y)) along the axis."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        self.save_for_backward(y, g)
        return _along(softmax_bwd_rows, self.axis, y, g)

    def backward(self, ggx):
        y, g = self.saved_tensors
        ax = self.axis if y.ndim else None
        g_y = g_g = None
        if self.needs_input_grad[0]:
            s = ops.sum(g * y, ax, keepdims=True)
            t = ops.sum(ggx * y, ax, keepdims=True)
            g_y = ggx * (g - s) - g * t
        if self.needs_input_grad[1]:  # the Jacobian is symmetric
            g_g = SoftmaxGrad(self.axis)(y, ggx)
        return g_y, g_g


class LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        y = _along(log_softmax_rows, self.axis, x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return LogSoftmaxGrad(self.axis)(y, gy)


class LogSoftmaxGrad(Function):
    """gx = g - exp(y) * sum(g) along the axis."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        self.save_for_backward(y, g)
        return _along(log_softmax_bwd_rows, self.axis, y, g)

    def backward(self, ggx):
        y, g = self.saved_tensors
        ax = self.axis if y.ndim else None
        p = ops.exp(y)
        g_y = -ggx * p * ops.sum(g, ax, keepdims=True) if self.needs_input_grad[0] else None
        g_g = ggx - ops.sum(ggx * p, ax, keepdims=True) if self.needs_input_grad[1] else None
        return g_y, g_g


# ---- fused softmax cross-entropy ---------------------------------------------------------------------
# On the CPU a training batch (every target a class in [0, C), none equal to ignore_index) takes a
# short path: the targets are checked once, by one reduction, in the forward; the backward knows it
# from the count the forward saved (count == rows) and does no check. m (the row max) and
# logs = log(sum(exp(x - m))) are kept apart, not folded into one log-sum-exp m + logs (rounded at
# the magnitude of m), so that the loss logs - (x[t] - m) and the softmax stay accurate for large
# logits, as PyTorch's log_softmax. The CPU backward's softmax is exp(x - m) / sum, both saved by
# the forward (as the hand-written NumPy loop in benchmarks/numpy_mlp.py); the GPU kernel
# recomputes exp((x - m) - logs) from m and logs instead.

def _dense_targets(t, cols, ignore_index):
    """True when every int64 target in ``t`` (rows,) is a class in [0, cols) other than ignore_index."""
    # negative targets wrap to huge unsigned values: one reduction checks both bounds
    return t.size > 0 and numpy.maximum.reduce(t.view(numpy.uint64)) < cols and \
        not (0 <= ignore_index < cols and (t == ignore_index).any())


_ROW_STARTS = {}  # (rows, cols): read-only _row_starts of a batch of up to 4096 rows, reused


def _row_starts(rows, cols):
    """The flat index of each row's first element in a C-contiguous (rows, cols) array."""
    starts = _ROW_STARTS.get((rows, cols))
    if starts is None:
        starts = numpy.arange(0, rows * cols, cols)
        if rows <= 4096:
            if len(_ROW_STARTS) >= 64:
                _ROW_STARTS.clear()
            starts.flags.writeable = False
            _ROW_STARTS[rows, cols] = starts
    return starts


def _row_max(x):
    """x.max(axis=1, keepdims=True) of logits x (rows, cols > 0). NumPy runs its inner loop once per
    row, all overhead with few classes (float32 128x10: 7.2 us); reducing a transposed copy over its
    rows takes 3.4 us. The same maxima (a maximum rounds nothing; of a -0 and a +0 either may come
    out, and x - m is a zero either way)."""
    rows, cols = x.shape
    if cols <= 16 and rows >= 64:
        return numpy.maximum.reduce(numpy.ascontiguousarray(x.T), axis=0).reshape(rows, 1)
    return x.max(axis=1, keepdims=True)


def _row_sums(e):
    """e.sum(axis=1, keepdims=True) of a float32/float64 (rows, cols): from 64 rows on one BLAS gemv,
    e @ ones (float32 128x10: 2.9 vs 4.8 us; 128x1000: 7.6 vs 22.5 us)."""
    rows, cols = e.shape
    if ops._gemv_sums(e):  # from 64 rows on
        return numpy.matmul(e, ops.ones_vector(cols, e.dtype)).reshape(rows, 1)
    return numpy.add.reduce(e, axis=1, keepdims=True)


def _xent_rows_core_np(x, t, ignore_index):
    """(loss, m, logs, e, s, count) of logits x (rows, cols) against int64 targets t (rows,): m the row
    max, e = exp(x - m), s its row sums and logs = log(s) (m, s and logs (rows, 1)), count the number
    of rows that count (a Python int)."""
    rows, cols = x.shape
    m = _row_max(x) if cols else numpy.zeros((rows, 1), x.dtype)
    z = x - m
    e = numpy.exp(z)
    s = _row_sums(e)
    logs = numpy.log(s)  # -inf without classes
    if _dense_targets(t, cols, ignore_index):
        # (m - x[t]) + logs == logs - (x[t] - m) exactly: IEEE rounding is symmetric in sign
        return logs[:, 0] - z.take(_row_starts(rows, cols) + t), m, logs, e, s, rows
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= cols))
    if bad.any():
        raise IndexError(f"softmax_cross_entropy: target {int(t[bad][0])} is out of bounds for {cols} classes")
    picked = z[numpy.arange(rows), numpy.where(valid, t, 0)] if cols else logs[:, 0]  # cols 0: every row ignored
    return numpy.where(valid, logs[:, 0] - picked, x.dtype.type(0)), m, logs, e, s, int(numpy.count_nonzero(valid))


@_quiet
def _xent_rows_np(x, target, ignore_index):
    """(loss, m, logs) per row of logits x (rows, cols) for int class indices ``target`` (rows,):
    the NumPy twin of the GPU row kernel gf_xent_fwd."""
    loss, m, logs, _, _, _ = _xent_rows_core_np(x, numpy.asarray(target, numpy.int64), ignore_index)
    return loss, m[:, 0], logs[:, 0]


def _xent_fwd(x, target, ignore_index, reduction):
    """SoftmaxCrossEntropy's forward on the CPU: (loss, e, s, count), e = exp(x - m) and its row sums
    s in the (rows, cols) layout of ``_as_rows(x, 1)``, count a 0-d array of x's dtype."""
    x2 = x if x.ndim == 2 and x.flags.c_contiguous else _as_rows(x, 1)[0]
    loss, _, _, e, s, n = _xent_rows_core_np(x2, target if target.ndim == 1 else target.reshape(-1), ignore_index)
    count = numpy.asarray(n, dtype=x.dtype)
    if reduction == "none":
        return loss.reshape(target.shape), e, s, count
    total = numpy.add.reduce(loss)
    return numpy.asarray(total / count if reduction == "mean" else total, dtype=x.dtype), e, s, count


def _onehot_grad_np(p, t, w, ignore_index, dense):
    """(p - onehot(t)) * w for softmax rows p (rows, cols) and targets t (rows,), in p's buffer on
    the short path (``dense``: see _dense_targets); rows whose target is ignore_index get 0."""
    rows, cols = p.shape
    if dense:
        if not p.flags.c_contiguous:  # the flat indices address C order (reshape would copy)
            p = numpy.ascontiguousarray(p)
        p.reshape(-1)[_row_starts(rows, cols) + t] -= 1
        p *= w
        return p
    onehot = (numpy.arange(cols) == t[:, None]).astype(p.dtype)
    return numpy.where((t == ignore_index)[:, None], p.dtype.type(0), (p - onehot) * w)


def _xent_grad(target, e, s, count, g, reduction, ignore_index, shape, e_dies=False):
    """SoftmaxCrossEntropyGrad's forward on the CPU: the gradient of logits of ``shape`` from the
    e = exp(x - m) and row sums s the forward saved. count == rows tells that the forward found
    every row valid (exact below 2**24 rows; beyond, the checked path runs). ``e_dies``: nothing
    reads e after this, so the softmax e / s is computed in its buffer."""
    rows, cols = e.shape
    w = g.reshape(rows, 1) if reduction == "none" else g / count if reduction == "mean" else g
    t = target if target.ndim == 1 else target.reshape(-1)
    p = numpy.divide(e, s, out=e if e_dies else None)
    gx = _onehot_grad_np(p, t, w, ignore_index, 0 < rows < 2 ** 24 and cols > 0 and int(count) == rows)
    return gx if len(shape) == 2 else _from_rows(gx, shape[:1] + shape[2:] + shape[1:2], 1)


def _xent_fwd_grad(x, target, ignore_index, reduction, g):
    """(loss, gradient of the logits by the loss's upstream gradient g): SoftmaxCrossEntropy's forward
    and then SoftmaxCrossEntropyGrad's, as one call, for a compiled step's replay where nothing but
    that gradient reads what the forward saves (``loss.backward()`` on the loss itself): the same
    operations in the same order, so the same bits, with the softmax computed in e's buffer."""
    if reduction == "none" or x.ndim != 2 or target.ndim != 1 or not x.flags.c_contiguous:
        loss, e, s, count = _xent_fwd(x, target, ignore_index, reduction)
        return loss, _xent_grad(target, e, s, count, g, reduction, ignore_index, x.shape, e_dies=True)
    # (rows, cols) logits: the two functions' steps, with what they share (the count) taken once
    rows, cols = x.shape
    loss, _, _, e, s, n = _xent_rows_core_np(x, target, ignore_index)
    count = numpy.asarray(n, dtype=x.dtype)
    total = numpy.add.reduce(loss)
    if reduction == "mean":
        total, g = total / count, g / count
    dense = 0 < rows < 2 ** 24 and cols > 0 and n == rows
    gx = _onehot_grad_np(numpy.divide(e, s, out=e), target, g, ignore_index, dense)
    return numpy.asarray(total, dtype=x.dtype), gx


# NaN/inf propagate silently; a mean over no valid rows is NaN, as in torch
_xent_fwd_np, _xent_grad_np, _xent_fwd_grad_np = _quiet(_xent_fwd), _quiet(_xent_grad), _quiet(_xent_fwd_grad)


xent_fwd_rows = RawKernel("softmax.cu", "gf_xent_fwd")


def xent_rows(x, target, ignore_index):
    """Loss, row max and log-sum of exp(x - max) of each row in one pass (GPU: one block per row)."""
    if not _on_cuda(x):
        return _xent_rows_np(x, target, ignore_index)
    cp = backend.cupy()
    rows, cols = x.shape
    loss = cp.empty(rows, dtype=x.dtype)
    m = cp.empty(rows, dtype=x.dtype)
    logs = cp.empty(rows, dtype=x.dtype)
    if rows:
        xent_fwd_rows.function(x.dtype)((min(rows, 2 ** 31 - 1),), (row_threads(cols),),
                                        (cp.ascontiguousarray(x), cp.ascontiguousarray(target, dtype=cp.int64),
                                         loss, m, logs, numpy.int64(rows), numpy.int64(cols),
                                         numpy.int64(ignore_index)))
    return loss, m, logs


def _on_cuda(a):
    return backend.device_of(a) == "cuda"


@_quiet
def _xent_bwd_np(x, m, logs, target, w, cols, ignore_index):
    """The NumPy twin of the xent_bwd kernel (target broadcast against x, e.g. (rows, 1))."""
    p = numpy.exp((x - m) - logs)
    if x.ndim == 2 and target.shape == (x.shape[0], 1):
        t = numpy.asarray(target[:, 0], numpy.int64)
        return _onehot_grad_np(p, t, w, ignore_index, _dense_targets(t, cols, ignore_index))
    onehot = (numpy.arange(cols) == target).astype(x.dtype)
    gx = (p - onehot) * w
    return numpy.where(target == ignore_index, x.dtype.type(0), gx)


xent_bwd = Elementwise("xent_bwd", "T x, T m, T logs, int64 target, T w, int64 cols, int64 ignore_index", "T gx",
                       "gx = gf_xent_grad(x, m, logs, target, (long long)(i % cols), w, ignore_index)",
                       headers=("softmax.cuh",), scalars="cols ignore_index", numpy=_xent_bwd_np)

_REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropy(Function):
    """Cross-entropy of logits (N, C[, d...]) against class indices (N[, d...]), class axis 1.

    Forward: one row pass gives each row's max, log-sum of exp(x - max) and loss. Backward:
    one kernel (softmax - onehot) * g / N. Besides the logits, the targets and the count of rows
    that count, it keeps two statistics: the row max and log-sum on the GPU, whose
    kernel recomputes the softmax from them; exp(x - max) (in the rows layout) and its row sums
    on the CPU, where recomputing costs passes.
    The target is an input (without gradient), so a captured step sees each batch's.
    """

    def __init__(self, reduction, ignore_index):
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, x, target):
        if not _on_cuda(x):
            loss, e, s, count = _xent_fwd_np(x, target, self.ignore_index, self.reduction)
            self.save_for_backward(x, target, e, s, count)
            return loss
        return self._forward_cuda(x, target)

    def replay_source(self, x, target, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the CPU forward, without the op around it."""
        if type(arrays[0]) is not numpy.ndarray or saved not in ((), (2, 3, 4)):
            return None
        call = f"xent_fwd_np({x}, {target}, {self.ignore_index!r}, {self.reduction!r})"
        return call + ("" if saved else "[0]"), {"xent_fwd_np": _xent_fwd_np}

    def replay_source_with_grad(self, grad, names, grad_names, arrays):
        """The replay's one line for this forward and ``grad`` (the Function that differentiates it, whose
        inputs are named ``grad_names``) when nothing else reads what the forward saves (``gradflow.compile``
        checks that): the loss and the gradient of the logits, ``_xent_fwd_grad`` on the CPU; else None."""
        if type(grad) is not SoftmaxCrossEntropyGrad or type(arrays[0]) is not numpy.ndarray or \
                (grad.reduction, grad.ignore_index) != (self.reduction, self.ignore_index) or \
                list(grad_names[:2]) != list(names):  # the gradient of these logits, for these targets
            return None
        x, target, g = names[0], names[1], grad_names[5]
        return (f"xent_fwd_grad_np({x}, {target}, {self.ignore_index!r}, {self.reduction!r}, {g})",
                {"xent_fwd_grad_np": _xent_fwd_grad_np})

    @_quiet  # a mean over no valid rows is NaN, as in torch
    def _forward_cuda(self, x, target):
        x2, _ = _as_rows(x, 1)
        t = target.reshape(-1)
        xp = backend.xp_of(x)
        loss, m, logs = xent_rows(x2, t, self.ignore_index)
        count = xp.asarray((t != self.ignore_index).sum(), dtype=x.dtype)  # stays on the device
        self.save_for_backward(x, target, m, logs, count)
        if self.reduction == "none":
            return loss.reshape(target.shape)
        total = loss.sum()
        return xp.asarray(total / count if self.reduction == "mean" else total, dtype=x.dtype)

    def backward(self, gy):
        x, target, a, b, count = self.saved_tensors
        return SoftmaxCrossEntropyGrad(self.reduction, self.ignore_index)(x, target, a, b, count, gy), None


class SoftmaxCrossEntropyGrad(Function):
    """gx = (softmax(x) - onehot(target)) * w per row, w = g (sum/none) or g / N (mean).

    (a, b) are the statistics SoftmaxCrossEntropy saved: the row max m and log-sum logs (rows,)
    on the GPU, e = exp(x - m) (rows, cols) and its row sums s (rows, 1) on the CPU."""

    def __init__(self, reduction, ignore_index):
        self.reduction, self.ignore_index = reduction, ignore_index

    def _row_weights(self, g, count, rows):
        xp = backend.xp_of(g)
        if self.reduction == "none":
            return g.reshape(rows, 1)
        w = g / count if self.reduction == "mean" else g
        return xp.asarray(w, dtype=g.dtype).reshape(1, 1)  # broadcasts against the rows in the kernel

    def forward(self, x, target, a, b, count, g):
        self.save_for_backward(x, target, count, g)
        if not _on_cuda(x):
            return _xent_grad_np(target, a, b, count, g, self.reduction, self.ignore_index, x.shape)
        x2, moved = _as_rows(x, 1)
        rows, cols = x2.shape
        t = target.reshape(rows, 1)
        gx = xent_bwd(x2, a.reshape(rows, 1), b.reshape(rows, 1), t, self._row_weights(g, count, rows), cols,
                      self.ignore_index)
        return _from_rows(gx, moved, 1)

    def replay_source(self, x, target, a, b, count, g, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the CPU forward, without the op around it."""
        if type(arrays[0]) is not numpy.ndarray or saved:
            return None
        e_dies = ", e_dies=True" if 2 in dying else ""
        return (f"xent_grad_np({target}, {a}, {b}, {count}, {g}, {self.reduction!r}, {self.ignore_index!r}, "
                f"{tuple(arrays[0].shape)!r}{e_dies})"), {"xent_grad_np": _xent_grad_np}

    def backward(self, ggx):
        x, target, count, g = self.saved_tensors
        xp = backend.xp_of(x.data)
        target = target.data
        t = xp.expand_dims(target, 1)                          # (N, 1, d...)
        valid = t != self.ignore_index
        classes = xp.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
        onehot = Tensor._wrap((classes == t).astype(x.dtype))
        p = softmax(x, axis=1)
        g_x = g_g = None
        if self.needs_input_grad[0]:
            w = g if self.reduction == "none" else ops.broadcast_to(ops.reshape(g, (1,) * target.ndim),
                                                                    target.shape)
            if self.reduction == "mean":
                w = w / count
            w = ops.where(valid, ops.unsqueeze(w, 1), 0.0)
            g_x = w * p * (ggx - ops.sum(ggx * p, 1, keepdims=True))
        if self.needs_input_grad[5]:
            z = ops.squeeze(ops.sum(ops.where(valid, ggx * (p - onehot), 0.0), 1, keepdims=True), 1)
            if self.reduction == "sum":
                g_g = ops.sum(z)
            elif self.reduction == "mean":
                g_g = ops.sum(z) / count
            else:
                g_g = z
        return g_x, None, None, None, None, g_g


# ---- the functional API ------------------------------------------------------------------------------
def _axis(axis, ndim, name):
    if ndim == 0:
        if axis not in (0, -1):
            raise IndexError(f"{name}: dimension out of range (expected to be in range of [-1, 0], but got {axis})")
        return -1
    if not -ndim <= axis < ndim:
        raise IndexError(f"{name}: dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
                         f"but got {axis})")
    return axis % ndim


def _implicit_dim(name, ndim):
    """torch's dim for softmax/log_softmax/softmin called without one (deprecated there, with a
    warning): 0 for 0-, 1- and 3-d inputs, else 1. Not the last dim: a (N, C, H, W) batch
    normalised over W would be a silently different result from the same PyTorch code."""
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
                  f"dim=X as an argument.", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(x, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """exp(x - max) / sum(exp(x - max)) along ``dim`` (``axis`` is the NumPy spelling); ``dtype`` casts
    the input first, as torch's."""
    x = _tensor(x if dtype is None else ops.astype(as_tensor(x), dtype), "softmax")
    dim = dim if axis is None else axis
    return Softmax(_axis(_implicit_dim("softmax", x.ndim) if dim is None else dim, x.ndim, "softmax"))(x)


def log_softmax(x, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """x - max - log(sum(exp(x - max))) along ``dim`` (``axis`` is the NumPy spelling); ``dtype`` casts
    the input first, as torch's."""
    x = _tensor(x if dtype is None else ops.astype(as_tensor(x), dtype), "log_softmax")
    dim = dim if axis is None else axis
    return LogSoftmax(_axis(_implicit_dim("log_softmax", x.ndim) if dim is None else dim, x.ndim,
                            "log_softmax"))(x)


def softmin(x, dim=None):
    """softmax(-x) along ``dim``."""
    x = _tensor(x, "softmin")
    return softmax(-x, _implicit_dim("softmin", x.ndim) if dim is None else dim)


def softmax_cross_entropy(logits, target, reduction="mean", ignore_index=-100):
    """Cross-entropy of ``logits`` (N, C) or (N, C, d...) or (C,) against class indices.

    ``target`` holds int class indices of shape (N,)/(N, d...)/() (a Tensor or an array).
    Rows whose target equals ``ignore_index`` add nothing and are left out of the mean,
    as in ``torch.nn.functional.cross_entropy``. ``reduction``: 'mean', 'sum' or 'none'.
    """
    logits = _tensor(logits, "softmax_cross_entropy")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"softmax_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(target, Tensor):
        target = Tensor._wrap(backend.xp_of(logits.data).asarray(target))
    if target.dtype.kind not in "iu":
        raise DTypeError(f"softmax_cross_entropy: target must hold integer class indices, got dtype {target.dtype}")
    squeeze = logits.ndim == 1
    if squeeze:
        logits, target = ops.unsqueeze(logits, 0), ops.reshape(target, (1,))
    expected = logits.shape[:1] + logits.shape[2:]
    if logits.ndim < 2 or target.shape != expected:
        raise OpError(f"softmax_cross_entropy: target shape {target.shape} does not match logits shape "
                         f"{logits.shape} (expected {expected})")
    loss = SoftmaxCrossEntropy(reduction, int(ignore_index))(logits, ops.astype(target, numpy.int64))
    return ops.reshape(loss, ()) if squeeze and reduction == "none" else loss
