"""Normalization ops (batch, layer and group norm): forward and backward side by side.

All three normalize rows of one view: the contiguous input seen as (outer, rows, L), row
r being every x[o, r, l]. BatchNorm of (N, C, *) is the view (N, C, L) (a row per
channel); LayerNorm and GroupNorm use (1, rows, L) (a row per normalized group). One
Function, ``NormRows``, computes xhat = (x - mean) / sqrt(var + eps) and the row
statistics; the learnable affine part is ordinary broadcasting ops on top.

On the GPU forward and backward are the fused row kernels of ``kernels/norm.cu`` (Welford
statistics in one pass, one backward kernel); the NumPy twins below do the same math with
two-pass statistics. A backward recorded for higher-order gradients (``create_graph``)
runs the same formula as differentiable ops instead, so double backward works.

BatchNorm's running statistics are updated in place by ``RunningStats``, an op of its
own, so ``gradflow.compile`` records and replays the update with the rest of the step.
"""
import numpy

from gradflow import backend, ops
from gradflow.kernel import RawKernel, row_threads
from gradflow.tensor import Function, OpError, as_tensor, is_grad_enabled


# ---- the row kernels and their NumPy twins -----------------------------------------------------------
NORM_FWD = RawKernel("norm.cu", "gf_norm_fwd")
NORM_BWD = RawKernel("norm.cu", "gf_norm_bwd")


def _launch(kernel, rows, count, dtype, args):
    """One block per row (grid-strided), threads by row length."""
    kernel.function(dtype)((int(min(rows, 2 ** 31 - 1)),), (row_threads(count),), args)


def norm_forward(x3, eps):
    """(outer, rows, L) array -> (xhat of the same shape, mean (rows,), biased var (rows,))."""
    outer, rows, length = x3.shape
    xp = backend.xp_of(x3)
    if xp is numpy:
        mean = x3.mean(axis=(0, 2))
        d = x3 - mean[:, None]
        var = numpy.einsum("orl,orl->r", d, d) / (outer * length) if d.size else numpy.zeros(rows, x3.dtype)
        d *= (1.0 / numpy.sqrt(var + eps)).astype(x3.dtype)[:, None]
        return d, mean, var.astype(x3.dtype, copy=False)
    x3 = xp.ascontiguousarray(x3)
    y, mean, var = xp.empty_like(x3), xp.empty(rows, x3.dtype), xp.empty(rows, x3.dtype)
    if x3.size:
        _launch(NORM_FWD, rows, outer * length, x3.dtype,
                (x3, y, mean, var, numpy.int64(outer), numpy.int64(rows), numpy.int64(length), x3.dtype.type(eps)))
    return y, mean, var


def norm_backward(x3, g3, mean, var, eps):
    """gx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps) per row of the (outer, rows, L) view."""
    outer, rows, length = x3.shape
    xp = backend.xp_of(x3)
    if xp is numpy:
        inv = (1.0 / numpy.sqrt(var + eps)).astype(x3.dtype)[:, None]
        xhat = (x3 - mean[:, None]) * inv
        count = outer * length
        a = g3.sum(axis=(0, 2)) / count
        b = numpy.einsum("orl,orl->r", g3, xhat) / count
        xhat *= b.astype(x3.dtype)[:, None]
        gx = g3 - a.astype(x3.dtype)[:, None]
        gx -= xhat
        gx *= inv
        return gx
    x3, g3 = xp.ascontiguousarray(x3), xp.ascontiguousarray(g3)
    gx = xp.empty_like(x3)
    if x3.size:
        _launch(NORM_BWD, rows, outer * length, x3.dtype,
                (x3, g3, mean, var, gx, numpy.int64(outer), numpy.int64(rows), numpy.int64(length),
                 x3.dtype.type(eps)))
    return gx


# ---- Functions ------------------------------------------------------------------------------------------
class NormRows(Function):
    """(xhat, mean, var) of the rows of an (outer, rows, L) view of x; xhat has x's shape."""

    def __init__(self, view, eps):
        self.view, self.eps = tuple(view), float(eps)

    def forward(self, x):
        xp = backend.xp_of(x)
        xhat, mean, var = norm_forward(xp.ascontiguousarray(x).reshape(self.view), self.eps)
        self.save_for_backward(x, mean, var)
        return xhat.reshape(x.shape), mean, var

    def backward(self, g, gmean=None, gvar=None):
        x, mean, var = self.saved_tensors
        if is_grad_enabled():  # recording a backward for double backward: differentiable ops
            return _norm_backward_ops(x, g, self.view, self.eps)
        return NormRowsGrad(self.view, self.eps)(x, g, mean, var)


class NormRowsGrad(Function):
    """The fused first-order backward of NormRows (its own backward is never recorded: see NormRows)."""

    def __init__(self, view, eps):
        self.view, self.eps = view, eps

    def forward(self, x, g, mean, var):
        xp = backend.xp_of(x)
        gx = norm_backward(xp.ascontiguousarray(x).reshape(self.view), xp.ascontiguousarray(g).reshape(self.view),
                           mean, var, self.eps)
        return gx.reshape(x.shape)

    def backward(self, ggx):
        raise RuntimeError("NormRowsGrad is the first-order backward only; double backward records the "
                           "differentiable formula instead (create_graph=True)")


def _norm_backward_ops(x, g, view, eps):
    """NormRows' input gradient as differentiable ops (the double-backward path)."""
    x3, g3 = ops.reshape(x, view), ops.reshape(g, view)
    m = ops.mean(x3, (0, 2), keepdims=True)
    d = x3 - m
    inv = 1.0 / ops.sqrt(ops.mean(d * d, (0, 2), keepdims=True) + eps)
    xhat = d * inv
    gx = (g3 - ops.mean(g3, (0, 2), keepdims=True) - xhat * ops.mean(g3 * xhat, (0, 2), keepdims=True)) * inv
    return ops.reshape(gx, x.shape)


class RunningStats(Function):
    """BatchNorm's running-statistics update, in place on the buffers (recorded like any op).

    running = (1 - f) * running + f * batch, with the unbiased batch variance, as PyTorch.
    f is ``momentum``, or 1 / num_batches_tracked (a cumulative average) when momentum is
    None. ``num_batches_tracked`` (when given) is incremented first. Returns an empty array.
    """

    def __init__(self, momentum, count):
        self.momentum, self.count = momentum, int(count)

    def forward(self, mean, var, running_mean, running_var, num_batches_tracked=None):
        xp = backend.xp_of(mean)
        if num_batches_tracked is not None:
            num_batches_tracked += 1
        if self.momentum is None:
            f = (1.0 / num_batches_tracked).astype(running_mean.dtype)
        else:
            f = running_mean.dtype.type(self.momentum)
        unbiased = var * var.dtype.type(self.count / (self.count - 1))
        running_mean *= 1 - f
        running_mean += f * mean.astype(running_mean.dtype, copy=False)
        running_var *= 1 - f
        running_var += f * unbiased.astype(running_var.dtype, copy=False)
        return xp.empty(0, dtype=mean.dtype)


# ---- the functional API -----------------------------------------------------------------------------------
def _float_tensor(x, name):
    x = as_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype}")
    return x


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * ops.reshape(as_tensor(weight), shape)
    if bias is not None:
        y = y + ops.reshape(as_tensor(bias), shape)
    return y


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               num_batches_tracked=None):
    """Normalize each channel of (N, C, *) over the batch and spatial positions, as ``torch.nn.functional``.

    Training: batch statistics, and the running ones (when given) are updated in place
    with ``momentum`` (None: a cumulative average over ``num_batches_tracked``, which is
    then required and is incremented). Evaluation: the running statistics.
    """
    x = _float_tensor(input, "batch_norm")
    if x.ndim < 2:
        raise OpError(f"batch_norm: expected an input of at least 2 dimensions (N, C, *), got shape {x.shape}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise OpError(f"batch_norm: {name} must have shape ({c},) for an input with {c} channels, "
                             f"got {tuple(t.shape)}")
    shape = (1, c) + (1,) * (x.ndim - 2)
    if not training:
        if running_mean is None or running_var is None:
            raise OpError("batch_norm: running_mean and running_var are required when training=False")
        scale = 1.0 / ops.sqrt(as_tensor(running_var) + eps)
        if weight is not None:
            scale = scale * as_tensor(weight)
        shift = -as_tensor(running_mean) * scale
        if bias is not None:
            shift = shift + as_tensor(bias)
        return x * ops.reshape(scale, shape) + ops.reshape(shift, shape)
    n = x.shape[0]
    length = int(numpy.prod(x.shape[2:])) if x.ndim > 2 else 1
    if n * length <= 1:
        raise OpError(f"batch_norm: expected more than 1 value per channel when training, got input of "
                         f"shape {x.shape}")
    xhat, mean, var = NormRows((n, c, length), eps)(x)
    if running_mean is not None and running_var is not None:
        if momentum is None and num_batches_tracked is None:
            raise OpError("batch_norm: momentum=None (cumulative average) needs num_batches_tracked")
        stats = [mean.detach(), var.detach(), as_tensor(running_mean), as_tensor(running_var)]
        if num_batches_tracked is not None:
            stats.append(num_batches_tracked)
        RunningStats(momentum, n * length)(*stats)
    return _affine(xhat, weight, bias, shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing ``normalized_shape`` dimensions of each sample."""
    x = _float_tensor(input, "layer_norm")
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape or k > x.ndim:
        raise OpError(f"layer_norm: expected an input with shape [*, {', '.join(map(str, normalized_shape))}], "
                         f"got {x.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise OpError(f"layer_norm: {name} must have shape {normalized_shape}, got {tuple(t.shape)}")
    length = int(numpy.prod(normalized_shape))
    xhat, _, _ = NormRows((1, x.numel() // length if length else 0, length), eps)(x)
    return _affine(xhat, weight, bias, normalized_shape)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalize each sample's channels in ``num_groups`` groups (over the group's channels and positions)."""
    x = _float_tensor(input, "group_norm")
    if x.ndim < 2:
        raise OpError(f"group_norm: expected an input of at least 2 dimensions (N, C, *), got shape {x.shape}")
    n, c = x.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise OpError(f"group_norm: num_groups ({num_groups}) must divide the number of channels ({c})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise OpError(f"group_norm: {name} must have shape ({c},), got {tuple(t.shape)}")
    xhat, _, _ = NormRows((1, n * num_groups, x.numel() // max(n * num_groups, 1)), eps)(x)
    return _affine(xhat, weight, bias, (1, c) + (1,) * (x.ndim - 2))

