"""Loss functions (``torch.nn.functional`` names and semantics) and classification metrics.

Losses that have a numerically delicate closed form get their own ``Function`` (binary
cross-entropy on probabilities and on logits), so their gradients stay finite where a
composition of ``log`` and ``exp`` would produce ``0 * inf``. Their backward passes are
written with differentiable ops, so second derivatives work too.
"""
import math
import warnings

import numpy

from gradflow import activation, backend, ops, softmax_ops
from gradflow.ops import _unbroadcast
from gradflow.nn.module import Module
from gradflow.tensor import DTypeError, Function, OpError, Tensor, as_tensor

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction):
    _check_reduction(reduction)
    if reduction == "mean":
        return ops.mean(loss)
    if reduction == "sum":
        return ops.sum(loss)
    return loss


def _as_target(target, like):
    """``target`` as a Tensor on ``like``'s device; float targets take ``like``'s dtype."""
    if not isinstance(target, Tensor):
        target = as_tensor(target, like=like) if isinstance(target, (int, float)) else Tensor(target)
    if target.device != like.device:
        raise RuntimeError(f"target is on '{target.device}' but input is on '{like.device}'")
    if target.dtype.kind == "f" and target.dtype != like.dtype:
        target = ops.astype(target, like.dtype)
    return target


def _bool_as_float(target, like):
    """A bool target as 0/1 in ``like``'s dtype: torch's mse_loss and huber/smooth_l1 kernels take one so (its
    l1_loss refuses one, as gradflow's subtraction does)."""
    return ops.astype(target, like.dtype) if target.dtype.kind == "b" else target


def _same_shape(name, input, target):
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ "
                         f"(a silent broadcast here is almost always a bug, e.g. (N, 1) vs (N,))")


def _class_targets(name, input, target):
    """Check int class targets (N,) against scores (N, C) (shapes and dtype: nothing data-dependent)."""
    if input.ndim != 2:
        raise OpError(f"{name}: expected input of shape (N, C), got {input.shape}")
    if target.dtype.kind not in "iu":
        raise DTypeError(f"{name}: target must hold integer class indices, got dtype {target.dtype}")
    if target.ndim != 1 or target.shape[0] != input.shape[0]:
        raise OpError(f"{name}: class targets must have shape ({input.shape[0]},), got {target.shape}")


# ---- arrays derived from class-index targets, made by an op ---------------------------------------------------
class _FromTargets(Function):
    """Arrays a loss derives from its class-index targets (one-hot rows, gather indices, weights, the
    mean's divisor), made by an op: a compiled step derives them again from each batch's targets, where
    raw array math on the targets would be frozen into the plan (so such a step ran eagerly).
    ``derive(t, *arrays, *static)`` returns a tuple of arrays, and raises IndexError for a counted target
    out of range. No gradient flows through them."""

    def __init__(self, derive, *static):
        self.derive, self.static = derive, static

    def forward(self, t, *arrays):
        return self.derive(t, *arrays, *self.static)

    def backward(self, *grads):
        return (None,) * len(self.inputs)


def _counted(name, t, classes, ignore_index):
    """(safe, valid, bad) of class ids ``t``: ``valid`` the positions that count, ``safe`` the ids with 0 where
    they do not (an index that is always in range). IndexError for a counted id outside [0, classes); inside
    a CUDA graph capture that check (a host read) is left out: ``bad`` (else None) marks those positions,
    which count as class 0 in ``safe``, and the caller makes their loss NaN."""
    xp = backend.xp_of(t)
    t = t.astype(numpy.int64, copy=False)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= classes))
    if backend.capturing:
        return xp.where(valid & ~bad, t, 0), valid, bad
    if bool(bad.any()):
        raise IndexError(f"{name}: target class {int(t[bad][0])} is out of range for {classes} classes")
    return xp.where(valid, t, 0), valid, None


def _one_hot(safe, valid, num_classes, dtype):
    """One-hot rows for class ids ``safe`` (in range: ``_counted``'s); rows where ``valid`` is False are all zero."""
    xp = backend.xp_of(safe)
    out = xp.zeros((safe.shape[0], num_classes), dtype=dtype)
    out[xp.arange(safe.shape[0]), safe] = 1
    out *= valid[:, None]
    return out


def _mean_terms(valid, dtype, bad=None):
    """(divisor, NaN term) of a mean over the rows that count: every row ignored gives a NaN loss but a
    zero gradient, as torch's (a batch of padding must not poison the weights): divide by max(count, 1)
    and add the NaN as a constant."""
    xp = backend.xp_of(valid)
    count = valid.sum().astype(dtype)
    empty = count == 0 if bad is None else (count == 0) | bad.any()
    return xp.maximum(count, 1), xp.where(empty, dtype.type(xp.nan), dtype.type(0))


def _one_hot_rows(t, name, classes, ignore_index, dtype, smoothing):
    """(q, rows that count, divisor, NaN term): rows of one-hot targets, smoothed ((1 - ε) onehot + ε / C on
    the rows that count), and ``_mean_terms``."""
    safe, valid, bad = _counted(name, t, classes, ignore_index)
    q = _one_hot(safe, valid, classes, dtype)
    if smoothing:
        q = q * (1.0 - smoothing) + (smoothing / classes) * valid[:, None].astype(dtype)
    if bad is not None:  # inside a graph capture: an out-of-range target's row gives NaN
        q = backend.xp_of(q).where(bad[:, None], dtype.type(numpy.nan), q)
    return (q, valid) + _mean_terms(valid, dtype, bad)


def _reduce_rows(loss, terms, reduction):
    """Like ``_reduce``, but a mean divides by the rows that count (PyTorch's ignore_index); ``terms``: the
    Tensors ``_mean_terms`` made."""
    if reduction == "mean":
        divisor, nan = terms
        return ops.sum(loss) / divisor + nan
    return _reduce(loss, reduction)


# ---- classification ------------------------------------------------------------------------------
def cross_entropy(input, target, reduction="mean", label_smoothing=0.0, ignore_index=-100, weight=None):
    """Cross-entropy from unnormalised scores ``input`` (N, C).

    ``target`` is either class indices (N,) of an integer dtype (rows equal to
    ``ignore_index`` are skipped), or class probabilities (N, C). ``label_smoothing`` ε mixes
    the target with the uniform distribution, (1 - ε) * target + ε / C, as in PyTorch.
    Integer targets without smoothing take the fused ``softmax_cross_entropy`` kernel
    (which also accepts (N, C, d...) inputs).
    ``weight`` (C,) rescales each class as torch's: see ``_weighted_cross_entropy``. Weighted
    calls never take the fused kernel (it has no weight input), on the CPU or the GPU.
    """
    _weight_not_positional("cross_entropy", reduction)
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise OpError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    target = _as_target(target, input)
    if input.ndim == 0:
        raise ValueError("cross_entropy: input is 0-d (a single number); expected unnormalised class scores of "
                         "shape (N, C) (or (N, C, d1, ...)), one row per sample")
    if target.dtype.kind == "b":
        raise TypeError("cross_entropy: bool targets are ambiguous; pass class indices as integers "
                        "(target.astype('int64')) or class probabilities as floats of the input's shape "
                        "(for one yes/no output use binary_cross_entropy_with_logits)")
    if weight is not None:
        return _weighted_cross_entropy(input, target, reduction, label_smoothing, ignore_index, weight)
    if target.dtype.kind in "iu":
        if label_smoothing == 0.0:
            return softmax_ops.softmax_cross_entropy(input, target, reduction=reduction, ignore_index=ignore_index)
        if input.ndim != 2:
            return _smoothed_class_targets_nd(input, target, reduction, label_smoothing, ignore_index)
        _class_targets("cross_entropy", input, target)
        q, rows, *valid = _FromTargets(_one_hot_rows, "cross_entropy", input.shape[1], ignore_index, input.dtype,
                                       label_smoothing)(target)
        loss = -ops.sum(q * softmax_ops.log_softmax(input, axis=1), axis=1)
        # an ignored row counts nothing, even a NaN or -inf in it (0 * -inf is NaN), as torch masks it
        return _reduce_rows(ops.where(rows, loss, 0.0), valid, reduction)
    if input.ndim != 2 or target.shape != input.shape:  # issue 13: (C,) and (N, C, d...) inputs too
        return _cross_entropy_probs_nd(input, target, reduction, label_smoothing)
    q = target
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / input.shape[1]
    return _reduce(-ops.sum(q * softmax_ops.log_softmax(input, axis=1), axis=1), reduction)


# ==== issue 13: probability targets of any shape, smoothing with N-d class indices, KL divergence ====
def _cross_entropy_probs_nd(input, target, reduction, label_smoothing):
    """Class-probability targets for input (C,) or (N, C, d...): target has input's shape."""
    if target.ndim == input.ndim - 1 and target.dtype.kind == "f":  # class indices stored as floats
        name = {"float32": "Float", "float64": "Double", "float16": "Half"}.get(target.dtype.name, target.dtype.name)
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {name} (class indices must be "
                           f"integers; probability targets have the input's shape {input.shape})")
    if target.shape != input.shape or input.ndim == 0:
        raise OpError(f"cross_entropy: probability targets must have the input's shape, got input "
                         f"{input.shape} and target {target.shape}")
    axis = 0 if input.ndim == 1 else 1
    q = target
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / input.shape[axis]
    loss = -ops.sum(q * softmax_ops.log_softmax(input, axis=axis), axis=axis)
    return _reduce(loss, reduction)  # torch's mean divides by numel / C: a mean over positions


def _batch_of_class_targets(x, target, name):
    """(x, target, squeezed): an unbatched (C,) input and its 0-d target as a batch of one, and the
    target's shape checked against the input's (N, C, d...) without its class axis."""
    squeeze = x.ndim == 1
    if squeeze:
        x, target = ops.unsqueeze(x, 0), ops.reshape(target, (1,))
    expected = x.shape[:1] + x.shape[2:]
    if target.shape != expected:
        raise ValueError(f"{name}: target shape {target.shape} does not match input shape {x.shape} "
                         f"(expected {expected})")
    return x, target, squeeze


def _gather_targets(t, name, classes, ignore_index, dtype):
    """(gather index (N, 1, d...), positions that count, their count in ``dtype``; NaN when a target is out
    of range inside a CUDA graph capture) of class ids (N, d...)."""
    safe, valid, bad = _counted(name, t, classes, ignore_index)
    xp = backend.xp_of(safe)
    count = valid.sum().astype(dtype)
    if bad is not None:  # inside a graph capture: an out-of-range target makes the mean NaN
        count = xp.where(bad.any(), dtype.type(xp.nan), count)
    return xp.expand_dims(safe, 1), valid, count


def _smoothed_class_targets_nd(input, target, reduction, label_smoothing, ignore_index):
    """Label smoothing with class indices for input (C,) or (N, C, d...)."""
    input, target, squeeze = _batch_of_class_targets(input, target, "cross_entropy")
    c = input.shape[1]
    index, valid, count = _FromTargets(_gather_targets, "cross_entropy", c, ignore_index, input.dtype)(target)
    logp = softmax_ops.log_softmax(input, axis=1)
    nll = -ops.gather(logp, 1, index)
    nll = ops.squeeze(nll, 1)
    smooth = -ops.sum(logp, 1) / float(c)
    loss = nll * (1.0 - label_smoothing) + smooth * label_smoothing
    loss = ops.where(valid, loss, 0.0)
    if reduction == "mean":
        return ops.sum(loss) / count
    loss = _reduce(loss, reduction)
    return ops.reshape(loss, ()) if squeeze and reduction == "none" else loss


# ==== per-class weights (torch's weight=) ====
def _class_weight(name, weight, input):
    """``weight`` as a Tensor (C,) of ``input``'s dtype on its device, checked as torch checks it: the
    caller's own Tensor (detached), so that a compiled step reads its array as it is then."""
    c = input.shape[1] if input.ndim > 1 else input.shape[0]
    if isinstance(weight, Tensor):
        if weight.device != input.device:
            raise RuntimeError(f"{name}: weight is on '{weight.device}' but input is on '{input.device}'")
        if weight.dtype != input.dtype:  # torch refuses the mix rather than casting silently
            raise DTypeError(f"{name}: expected weight of dtype {input.dtype} (the input's), got {weight.dtype}")
        w = weight.data
    else:
        w = backend.xp_of(input.data).asarray(weight, dtype=input.dtype)
    if w.ndim != 1 or w.shape[0] != c:
        prefix = "cross_entropy: " if name == "cross_entropy" else ""
        raise OpError(f"{prefix}weight tensor should be defined either for all {c} classes or no classes but got "
                      f"weight tensor of shape: {list(w.shape)}")
    if not isinstance(weight, Tensor):
        return Tensor._wrap(w)
    return weight.detach() if weight.requires_grad else weight  # no gradient for the weights, as before


def _weighted_targets(t, w, name, classes, ignore_index):
    """(gather index (N, 1, d...), each position's weight w[t] (0 where ignored), positions that count, the
    mean's divisor (the weights' sum, 1 when nothing counts), its NaN term) of class ids (N, d...)."""
    safe, valid, bad = _counted(name, t, classes, ignore_index)
    xp = backend.xp_of(safe)
    wt = xp.where(valid, w[safe], w.dtype.type(0))                        # weight of each position's target
    if bad is not None:  # inside a graph capture: an out-of-range target's position gives NaN
        wt = xp.where(bad, w.dtype.type(xp.nan), wt)
    any_valid = valid.any()
    total = xp.where(any_valid, wt.sum(), w.dtype.type(1)).astype(w.dtype)
    nan = xp.where(any_valid, w.dtype.type(0), w.dtype.type(xp.nan))
    return xp.expand_dims(safe, 1), wt, valid, total, nan


def _weighted_class_nll(name, logp, target, w, reduction, ignore_index, label_smoothing):
    """torch's weighted nll_loss (+ label smoothing) of log-probabilities (C,)/(N, C, d...) and class ids.

    Each position's loss is -w[t] logp[t] (0 where t == ignore_index); smoothing adds ε/C of
    -sum_c w[c] logp[c]. The mean divides both by the sum of w[t] over the positions that count,
    so a batch's loss does not depend on how many rows of a rare class it holds. Built from
    differentiable ops (gather, sum) so the gradient w.r.t. the logits follows; no gradient for w.
    Every position ignored: NaN loss and zero gradient; weights of counted rows summing to 0: NaN
    loss and NaN gradient, both as torch's."""
    logp, target, squeeze = _batch_of_class_targets(logp, target, name)
    c = logp.shape[1]
    if w is None:
        w = Tensor._wrap(backend.xp_of(logp.data).ones(c, dtype=logp.dtype))
    index, wt, valid, total, nan = _FromTargets(_weighted_targets, name, c, ignore_index)(target, w)
    picked = ops.squeeze(ops.gather(logp, 1, index), 1)
    nll = ops.where(valid, -picked * wt, 0.0)  # an ignored position counts nothing, even a NaN or inf there
    smooth = None
    if label_smoothing:
        wb = ops.reshape(w, (1, c) + (1,) * (logp.ndim - 2))
        smooth = ops.where(valid, -ops.sum(logp * wb, 1), 0.0)
    if reduction == "mean":
        # each term divided by the total on its own, as torch's (0/0 and x/0 then give torch's NaN);
        # no position counts: NaN loss, zero gradient (divide by 1, add the NaN as a constant)
        loss = ops.sum(nll) / total
        if smooth is not None:
            loss = loss * (1.0 - label_smoothing) + (ops.sum(smooth) / total) * (label_smoothing / c)
        return loss + nan
    loss = nll if smooth is None else nll * (1.0 - label_smoothing) + smooth * (label_smoothing / c)
    loss = _reduce(loss, reduction)
    return ops.reshape(loss, ()) if squeeze and reduction == "none" else loss


def _weighted_cross_entropy(input, target, reduction, label_smoothing, ignore_index, weight):
    """cross_entropy with ``weight``: torch's semantics for both kinds of target.

    Class indices: the weighted nll of log_softmax (``_weighted_class_nll``). Probabilities
    (input's shape): -sum(w[c] q[c] logp[c]) per position, and the mean divides by the number
    of positions (N * d1 ...), not by the weights: torch's rule for soft targets."""
    w = _class_weight("cross_entropy", weight, input)
    axis = 0 if input.ndim == 1 else 1
    logp = softmax_ops.log_softmax(input, axis=axis)
    if target.dtype.kind in "iu":
        return _weighted_class_nll("cross_entropy", logp, target, w, reduction, ignore_index, label_smoothing)
    if target.shape != input.shape:
        return _cross_entropy_probs_nd(input, target, reduction, label_smoothing)  # raises its shape errors
    q = target
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / input.shape[axis]
    wb = ops.reshape(w, (1,) * axis + (-1,) + (1,) * (input.ndim - axis - 1))
    loss = -ops.sum(q * logp * wb, axis=axis)
    return _reduce(loss, reduction)


def kl_div(input, target, reduction="mean", log_target=False):
    """KL(target || exp(input)) pointwise: target * (log target - input); ``input`` holds log-probabilities.

    ``reduction``: 'mean' (over all elements, torch's default), 'batchmean' (sum / batch size, the
    mathematically correct KL), 'sum' or 'none'. Terms with target 0 contribute 0 (xlogy, as torch).
    """
    if reduction not in ("mean", "batchmean", "sum", "none"):
        raise ValueError(f"kl_div: reduction must be 'mean', 'batchmean', 'sum' or 'none', got {reduction!r}")
    target = _as_target(target, input)
    if log_target:
        loss = ops.exp(target) * (target - input)
    else:
        loss = ops.xlogy(target, target) - target * input
    if reduction == "batchmean":
        return ops.sum(loss) / float(input.shape[0] if input.ndim else 1)
    return _reduce(loss, reduction)


def nll_loss(input, target, reduction="mean", ignore_index=-100, weight=None):
    """Negative log-likelihood of class ``target`` (N,) under log-probabilities ``input`` (N, C).

    With ``weight`` (C,) each row counts weight[target] times and the mean divides by the sum of
    those weights, as torch's; the weighted form (and any input other than (N, C)) also takes
    (C,) and (N, C, d1, ...) inputs."""
    _weight_not_positional("nll_loss", reduction)
    _check_reduction(reduction)
    target = _as_target(target, input)
    if weight is not None or input.ndim != 2:
        if input.ndim == 0:
            raise ValueError("nll_loss: input is 0-d; expected log-probabilities of shape (N, C) or (N, C, d1, ...)")
        if target.dtype.kind not in "iu":
            raise DTypeError(f"nll_loss: target must hold integer class indices, got dtype {target.dtype}")
        w = None if weight is None else _class_weight("nll_loss", weight, input)
        return _weighted_class_nll("nll_loss", input, target, w, reduction, ignore_index, 0.0)
    _class_targets("nll_loss", input, target)
    # picked by gather, not summed against one-hot rows: a -inf (log 0) in another class must not give NaN
    return _weighted_class_nll("nll_loss", input, target, None, reduction, ignore_index, 0.0)


# ---- regression --------------------------------------------------------------------------------------
def mse_loss(input, target, reduction="mean"):
    """Mean squared error (squared L2)."""
    target = _bool_as_float(_as_target(target, input), input)
    _same_shape("mse_loss", input, target)
    diff = input - target
    return _reduce(diff * diff, reduction)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error."""
    target = _as_target(target, input)
    _same_shape("l1_loss", input, target)
    return _reduce(ops.abs(input - target), reduction)


def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5 d^2 where |d| < delta, delta * (|d| - 0.5 delta) beyond: quadratic near 0, linear in the tails."""
    if delta <= 0:
        raise OpError(f"huber_loss: delta must be positive, got {delta}")
    target = _bool_as_float(_as_target(target, input), input)
    _same_shape("huber_loss", input, target)
    d = ops.abs(input - target)
    inner = ops.clamp(d, max=delta)  # |d| where quadratic, delta where linear
    return _reduce(inner * inner * 0.5 + (d - inner) * delta, reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """Huber loss divided by ``beta``: 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta beyond."""
    if beta < 0:
        raise OpError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    if beta == 0:
        return l1_loss(input, target, reduction)
    _check_reduction(reduction)
    return _reduce(huber_loss(input, target, "none", beta) * (1.0 / beta), reduction)


class BinaryCrossEntropy(Function):
    """-(t log p + (1 - t) log(1 - p)) with the logs clamped at -100, as PyTorch does. The range checks are
    torch's 0 <= v <= 1, which a NaN fails too (torch raises for it rather than return a NaN loss)."""

    def forward(self, p, t):
        xp = backend.xp_of(p)
        if p.size and not bool(((p >= 0) & (p <= 1)).all()):
            raise OpError("binary_cross_entropy: all elements of input should be between 0 and 1 "
                             "(pass logits to binary_cross_entropy_with_logits instead)")
        if t.size and not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("binary_cross_entropy: all elements of target should be between 0 and 1 "
                             "(targets are probabilities or 0/1 labels)")
        self.save_for_backward(p, t)
        with numpy.errstate(divide="ignore"):
            log_p = xp.maximum(xp.log(p), -100)
            log_1mp = xp.maximum(xp.log(1 - p), -100)
        return -(t * log_p + (1 - t) * log_1mp)

    def backward(self, gy):
        p, t = self.saved_tensors
        gp = gt = None
        if self.needs_input_grad[0]:
            gp = gy * (p - t) / ops.clamp((1.0 - p) * p, min=1e-12)
        if self.needs_input_grad[1]:
            with numpy.errstate(divide="ignore"):  # -logit(p), unclamped, as torch: ±inf at p = 0 or 1
                gt = gy * (ops.log(1.0 - p) - ops.log(p))
        return gp, gt


def _softplus_neg(x):
    """log(1 + exp(-x)), computed without overflow."""
    return ops.log(1.0 + ops.exp(-ops.abs(x))) + ops.maximum(-x, 0.0)


class BinaryCrossEntropyWithLogits(Function):
    """(1 - t) x + (1 + (w - 1) t) log(1 + exp(-x)): stable for any logit x (w: pos_weight).

    With ``pos_weight`` the gradients are torch's forms, (w t + 1 - t) sigmoid(x) - w t for x and
    log sigmoid(-x) - w log sigmoid(x) for t: equal to the derivatives of the loss, and they give
    torch's NaN / inf where t or x is infinite (other arrangements give inf - inf elsewhere)."""

    def forward(self, x, t, pos_weight=None):
        xp = backend.xp_of(x)
        self.save_for_backward(x, t, pos_weight)
        softplus_neg = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)
        weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * t
        return (1 - t) * x + weight * softplus_neg

    def backward(self, gy):
        x, t, pw = self.saved_tensors
        needs = self.needs_input_grad
        gx = gt = gpw = None
        if needs[0]:
            if pw is None:
                gx = gy * (activation.sigmoid(x) - t)
            else:
                wt = pw * t
                gx = gy * ((wt + 1.0 - t) * activation.sigmoid(x) - wt)
        if needs[1]:
            gt = -x if pw is None else activation.logsigmoid(-x) - pw * activation.logsigmoid(x)
            gt = gy * gt
        if len(needs) > 2 and needs[2]:
            gpw = ops.sum_to(gy * t * _softplus_neg(x), pw.shape)
        return (gx, gt) if len(needs) == 2 else (gx, gt, gpw)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """BCE of probabilities ``input`` in [0, 1] against targets in [0, 1] (same shape)."""
    _check_reduction(reduction)
    target = _as_target(target, input)
    _same_shape("binary_cross_entropy", input, target)
    loss = BinaryCrossEntropy()(input, target)
    if weight is not None:
        weight = _as_target(weight, input)
        _not_differentiable("binary_cross_entropy", "weight", weight)  # torch's kernel refuses it too
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """BCE of ``sigmoid(input)`` computed from the logits directly (no overflow, no log(0))."""
    _check_reduction(reduction)
    target = _as_target(target, input)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    args = (input, target) if pos_weight is None else (input, target, _as_target(pos_weight, input))
    loss = BinaryCrossEntropyWithLogits()(*args)
    if weight is not None:
        loss = loss * _as_target(weight, input)
    return _reduce(loss, reduction)


# ---- metrics ------------------------------------------------------------------------------------------
def predicted_classes(output, threshold=0.5):
    """Class ids from (N, C) scores (argmax) or from (N,)/(N, 1) binary scores (> threshold)."""
    data = output.data if isinstance(output, Tensor) else output
    if data.ndim == 2 and data.shape[1] > 1:
        return data.argmax(axis=1)
    return (data.reshape(data.shape[0]) > threshold).astype(numpy.int64)


def accuracy(output, target, threshold=0.5):
    """Fraction of correct predictions, as a Python float.

    ``output`` holds logits or probabilities of shape (N, C) (argmax is the same for both), or
    binary scores of shape (N,) or (N, 1) compared with ``threshold`` (use 0.0 for logits).
    ``target`` holds class ids (N,) or one-hot/probability rows (N, C).
    """
    predicted = predicted_classes(output, threshold)
    t = target.data if isinstance(target, Tensor) else target
    t = backend.to_device(numpy.asarray(t) if not hasattr(t, "shape") else t, backend.device_of(predicted))
    if t.ndim == 2 and t.shape[1] > 1:
        t = t.argmax(axis=1)
    t = t.reshape(t.shape[0])
    if t.shape[0] != predicted.shape[0]:
        raise ValueError(f"accuracy: {predicted.shape[0]} predictions but {t.shape[0]} targets")
    if t.shape[0] == 0:
        raise ValueError("accuracy: no samples")
    return float((predicted == t).mean())


def misclassification_rate(output, target, threshold=0.5):
    """1 - accuracy: the fraction of wrong predictions."""
    return 1.0 - accuracy(output, target, threshold)


# ---- loss modules ----------------------------------------------------------------------------------------
class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """``weight`` is a keyword here (gradflow's positional order is reduction, label_smoothing,
    ignore_index); it is kept as a buffer, so it follows ``.to()`` and sits in the state_dict as torch's."""

    def __init__(self, reduction="mean", label_smoothing=0.0, ignore_index=-100, weight=None):
        _weight_not_positional("CrossEntropyLoss", reduction)
        super().__init__(reduction)
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index
        self.register_buffer("weight", None if weight is None else as_tensor(weight))

    def forward(self, input, target):
        return cross_entropy(input, target, self.reduction, self.label_smoothing, self.ignore_index, self.weight)


class NLLLoss(_Loss):
    """``weight`` is a keyword here (gradflow's positional order is reduction, ignore_index); a buffer."""

    def __init__(self, reduction="mean", ignore_index=-100, weight=None):
        _weight_not_positional("NLLLoss", reduction)
        super().__init__(reduction)
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else as_tensor(weight))

    def forward(self, input, target):
        return nll_loss(input, target, self.reduction, self.ignore_index, self.weight)


def _weight_not_positional(name, reduction):
    """A port of torch's ``CrossEntropyLoss(w)`` puts the weights where gradflow takes reduction."""
    if not isinstance(reduction, str):
        raise TypeError(f"{name}: reduction must be a string, got {type(reduction).__name__}; gradflow's "
                        f"positional order differs from torch's, so pass class weights as weight=...")


class MSELoss(_Loss):
    def forward(self, input, target):
        return mse_loss(input, target, self.reduction)


class L1Loss(_Loss):
    def forward(self, input, target):
        return l1_loss(input, target, self.reduction)


class HuberLoss(_Loss):
    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        self.delta = delta

    def forward(self, input, target):
        return huber_loss(input, target, self.reduction, self.delta)


class SmoothL1Loss(_Loss):
    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input, target):
        return smooth_l1_loss(input, target, self.reduction, self.beta)


class BCELoss(_Loss):
    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else as_tensor(weight))

    def forward(self, input, target):
        return binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else as_tensor(weight))
        self.register_buffer("pos_weight", None if pos_weight is None else as_tensor(pos_weight))

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, self.reduction, self.pos_weight)


# ==== margin, embedding and likelihood losses: torch's signatures, size_average/reduce included ====
def _legacy_reduction(size_average, reduce, reduction):
    """torch's deprecated ``size_average``/``reduce`` pair as a reduction (with torch's warning)."""
    if size_average is None and reduce is None:
        return reduction
    reduce = True if reduce is None else reduce
    size_average = True if size_average is None else size_average
    new = "none" if not reduce else "mean" if size_average else "sum"
    warnings.warn(f"size_average and reduce args will be deprecated, please use reduction='{new}' instead.",
                  stacklevel=3)
    return new


def _tensor_arg(v, like):
    """``v`` as a Tensor on ``like``'s device with its own dtype (the ops promote as torch's)."""
    if not isinstance(v, Tensor):
        v = as_tensor(v, like=like) if isinstance(v, (int, float)) else Tensor(v)
    if v.device != like.device:
        raise RuntimeError(f"expected all tensors on one device, got '{v.device}' and '{like.device}'")
    return v


def _not_differentiable(name, arg, t):
    if t.requires_grad:  # torch's native kernel has no gradient for it and refuses
        raise RuntimeError(f"The function '{name}' is not differentiable with respect to argument '{arg}'. "
                           f"This input cannot have requires_grad True.")


def _long_targets(name, target):
    if target.dtype != numpy.int64:
        raise DTypeError(f"{name}: expected scalar type Long but found {target.dtype} (class indices are int64)")


def _frames(name, input):
    """(N, C) of a margin loss's input (C,), () or (N, C); torch refuses other shapes and C = 0."""
    if not (input.ndim == 2 and input.shape[1] or input.ndim == 1 and input.shape[0] or input.ndim == 0):
        raise OpError(f"{name}: Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
                      f"{list(input.shape)}")
    return (input.shape[0] if input.ndim == 2 else 1), (input.shape[-1] if input.ndim else 1)


def margin_ranking_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None, reduction="mean"):
    """max(0, -target * (input1 - input2) + margin): target 1 wants input1 ranked higher, -1 input2."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _tensor_arg(target, input1)
    if not input1.ndim == input2.ndim == target.ndim:
        raise OpError(f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
                      f"input1: {input1.shape}, input2: {input2.shape}, target: {target.shape}")
    return _reduce(ops.clamp(-target * (input1 - input2) + margin, min=0), reduction)


def _minus_one(target):
    """-1 as torch compares it with ``target``: in the target's dtype, so an unsigned target wraps it (255 for
    uint8) rather than fail as a Python -1 cast to uint8 does."""
    return int(numpy.iinfo(target.dtype).max) if target.dtype.kind == "u" else -1


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None, reduction="mean"):
    """x where target == 1, max(0, margin - x) where target == -1 (their sum for other targets, as torch's)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _tensor_arg(target, input)
    margin_term = ops.where(target != 1, ops.clamp(margin - input, min=0), 0.0)
    return _reduce(margin_term + ops.where(target != _minus_one(target), input, 0.0), reduction)


class SoftMargin(Function):
    """log(1 + exp(-t x)) as torch's kernel computes it (log1p of exp, so inf where exp overflows),
    and its gradient -t z / (1 + z) with z = exp(-t x) (NaN where z is inf, as torch's)."""

    def forward(self, x, t):
        xp = backend.xp_of(x)
        self.save_for_backward(x, t)
        with numpy.errstate(over="ignore"):
            return xp.log1p(xp.exp(-x * t))

    def backward(self, gy):
        x, t = self.saved_tensors
        z = ops.exp(-t * x)
        return _unbroadcast(-t * z / (z + 1.0) * gy, x.shape), None


def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """log(1 + exp(-target * input)): the logistic loss of a ±1 target (torch has no gradient for target)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _tensor_arg(target, input)
    _not_differentiable("soft_margin_loss", "target", target)
    return _reduce(SoftMargin()(*ops._pair(input, target)), reduction)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    """-(t logsigmoid(x) + (1 - t) logsigmoid(-x)) (times ``weight``), averaged over the last (class) axis."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not valid")
    if input.ndim == 0:
        raise IndexError("multilabel_soft_margin_loss: input is 0-d; expected scores (C,) or (N, C)")
    target = _tensor_arg(target, input)
    loss = -(target * activation.logsigmoid(input) + (1 - target) * activation.logsigmoid(-input))
    if weight is not None:
        loss = loss * _tensor_arg(weight, input)
    loss = ops.sum(loss, input.ndim - 1) / input.shape[-1]
    return _reduce(loss, reduction)


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """sum over target classes j and non-target classes i of max(0, 1 - (x[j] - x[i])), divided by C.

    ``target`` (int64, the input's shape) lists each sample's classes, ended by the first -1. The
    gradient is 0 at the hinge's kink (1 - (x[j] - x[i]) == 0), as torch's kernel."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _tensor_arg(target, input)
    n, c = _frames("multilabel_margin_loss", input)
    if (target.ndim > 1 or target.data.size != c) if input.ndim <= 1 else target.shape != input.shape:
        raise OpError(f"inconsistent target size: {list(target.shape)} for input of size: {list(input.shape)}")
    _long_targets("multilabel_margin_loss", target)
    xp = backend.xp_of(input.data)
    t = target.data.reshape(n, c)
    if t.size and bool(((t < -1) | (t >= c)).any()):
        raise OpError("multilabel_margin_loss: argument #2 'target' is out of range")
    listed = (xp.cumsum(t < 0, axis=1) == 0)[:, :, None] & (t[:, :, None] == xp.arange(c))
    count = listed.sum(axis=1).astype(input.dtype)               # (n, c): how often class k is listed
    pairs = count[:, :, None] * (count == 0)[:, None, :]         # (n, target k, other i)
    x = ops.reshape(input, (n, c))
    z = (1.0 - ops.unsqueeze(x, 2)) + ops.unsqueeze(x, 1)         # z[n, k, i] = 1 - x[k] + x[i]
    hinge = ops.where(Tensor._wrap((z.data > 0) & (pairs > 0)), z, 0.0)
    loss = ops.sum(hinge * Tensor._wrap(pairs), axis=(1, 2)) / c
    return _reduce(loss if input.ndim == 2 else ops.reshape(loss, ()), reduction)


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None, reduce=None,
                      reduction="mean"):
    """sum over i != y of w[y] max(0, margin - x[y] + x[i])^p, divided by C (p = 1 or 2).

    The gradient is 0 at the hinge's kink (margin - x[y] + x[i] == 0), as torch's kernel; torch
    has no gradient for ``weight``, and applies w[y] only to the active terms (an inf weight with
    no active term gives 0, not NaN)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if p != 1 and p != 2:
        raise ValueError("only p == 1 and p == 2 supported")
    if weight is not None:
        weight = _tensor_arg(weight, input)
        if weight.ndim != 1:
            raise ValueError("weight must be one-dimensional")
    target = _tensor_arg(target, input)
    n, c = _frames("multi_margin_loss", input)
    if target.ndim > 1 or target.data.size != n:
        raise OpError(f"multi_margin_loss: target tensor should be 1-D with size equal to the number of input "
                      f"samples (batch size). Expected target size [{n}], but got {list(target.shape)}. "
                      f"Input has shape {list(input.shape)}.")
    _long_targets("multi_margin_loss", target)
    y = target.data.reshape(n)
    if y.size and bool(((y < 0) | (y >= c)).any()):
        raise OpError("multi_margin_loss: target out of range")
    xp = backend.xp_of(input.data)
    x = ops.reshape(input, (n, c))
    rows = xp.arange(n)
    z = (margin - ops.unsqueeze(ops.getitem(x, (rows, y)), 1)) + x   # margin - x[y] + x[i]
    active = (z.data > 0) & (xp.arange(c) != y[:, None])
    hinge = ops.where(Tensor._wrap(active), z, 0.0)
    if p == 2:
        hinge = hinge * hinge
    if weight is not None:
        if weight.data.size != c:
            raise OpError(f"inconsistent weight size, expected {c} but got {list(weight.shape)}")
        if weight.dtype != input.dtype:
            raise DTypeError(f"multi_margin_loss: expected weight of dtype {input.dtype}, got {weight.dtype}")
        _not_differentiable("multi_margin_loss", "weight", weight)
        # weighted only where the hinge is active, as torch's kernel: an inf or NaN weight times an inactive 0
        hinge = hinge * Tensor._wrap(xp.where(active, weight.data[y][:, None], weight.dtype.type(0)))
    loss = ops.sum(hinge, axis=1) / c
    return _reduce(loss if target.ndim == 1 else ops.reshape(loss, ()), reduction)


_COSINE_EPS = float(numpy.float32(1e-12))  # torch adds the float 1e-12 to each squared norm


def cosine_embedding_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None, reduction="mean"):
    """1 - cos(x1, x2) where target == 1, max(0, cos(x1, x2) - margin) where target == -1, else 0.

    cos = sum(x1 x2) / sqrt((|x1|^2 + 1e-12)(|x2|^2 + 1e-12)) along the last axis, as torch's."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _tensor_arg(target, input1)
    if target.ndim > 1:
        raise OpError("0D or 1D target tensor expected, multi-target not supported")
    if input1.ndim != target.ndim + 1 or input2.ndim != target.ndim + 1:
        raise OpError(f"{target.ndim}D target tensor expects {target.ndim + 1}D input tensors, but found inputs "
                      f"with sizes {list(input1.shape)} and {list(input2.shape)}.")
    d = target.ndim
    dot = ops.sum(input1 * input2, d)
    denom = ops.sqrt((ops.sum(input1 * input1, d) + _COSINE_EPS) * (ops.sum(input2 * input2, d) + _COSINE_EPS))
    cos = dot / denom
    loss = ops.where(target == 1, 1 - cos, 0.0) + \
        ops.where(target == _minus_one(target), ops.clamp(cos - margin, min=0), 0.0)
    return _reduce(loss, reduction)


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """||x1 - x2 + eps||_p along the last axis (inputs broadcast), as torch's."""
    diff = x1 - x2 + eps
    if diff.ndim == 0:  # torch's norm over dim -1 of a 0-d tensor: |diff| as a 0-d tensor
        return ops.reshape(ops.norm(ops.reshape(diff, (1,)), p, 0), ())
    return ops.norm(diff, p, max(x1.ndim, x2.ndim) - 1, keepdim)


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False, size_average=None,
                        reduce=None, reduction="mean"):
    """max(0, margin + d(a, p) - d(a, n)) with d the pairwise_distance; ``swap`` takes min(d(a, n), d(p, n))."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    if not anchor.ndim == positive.ndim == negative.ndim:
        raise OpError(f"The anchor, positive, and negative tensors are expected to have the same number of "
                      f"dimensions, but got: anchor {anchor.ndim}D, positive {positive.ndim}D, and negative "
                      f"{negative.ndim}D inputs")
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = ops.minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    return _reduce(ops.clamp(margin + d_pos - d_neg, min=0), reduction)


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None,
                     reduction="mean"):
    """exp(x) - t x (``log_input``) or x - t log(x + eps); ``full`` adds Stirling's t log t - t + 0.5 log(2 pi t)
    where t > 1."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    target = _tensor_arg(target, input)
    loss = ops.exp(input) - target * input if log_input else input - target * ops.log(input + eps)
    if full:
        with numpy.errstate(divide="ignore", invalid="ignore"):
            stirling = target * ops.log(target) - target + 0.5 * ops.log(2 * math.pi * target)
            loss = loss + ops.masked_fill(stirling, target.data <= 1, 0)
    return _reduce(loss, reduction)


class _ClampNoGrad(Function):
    """max(x, eps) whose gradient is that of x itself: torch clamps gaussian_nll_loss's var under no_grad."""

    def __init__(self, eps):
        self.eps = eps

    def forward(self, x):
        return backend.xp_of(x).maximum(x, x.dtype.type(self.eps))

    def backward(self, gy):
        return gy


def gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """0.5 (log(max(var, eps)) + (input - target)^2 / max(var, eps)) (+ 0.5 log(2 pi) if ``full``).

    ``var`` has the input's shape, or one dimension of size 1 where the input's is not, or the input's
    shape without its last dimension (one variance per row), or is a float; it must be >= 0."""
    if isinstance(var, float):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        var = Tensor._wrap(backend.xp_of(input.data).full(input.shape, var, dtype=input.dtype))
    elif not isinstance(var, Tensor) and isinstance(var, (int, bool)):
        raise TypeError(f"gaussian_nll_loss: var must be a Tensor or a float, got {type(var).__name__}")
    else:
        var = _tensor_arg(var, input)
        if var.data.size and bool((var.data < 0).any()):
            raise ValueError("var has negative entry/entries")
    if var.shape != input.shape:
        if input.shape[:-1] == var.shape:
            var = ops.unsqueeze(var, -1)
        elif not (input.ndim == var.ndim and
                  sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1):
            raise ValueError("var is of incorrect size")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not valid")
    var = _ClampNoGrad(eps)(var)
    diff = input - _tensor_arg(target, input)
    loss = (ops.log(var) + diff * diff / var) * 0.5
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)


class _LegacyLoss(_Loss):
    """A loss module taking torch's deprecated ``size_average``/``reduce`` too."""

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__(_legacy_reduction(size_average, reduce, reduction))


class MarginRankingLoss(_LegacyLoss):
    def __init__(self, margin=0.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input1, input2, target):
        return margin_ranking_loss(input1, input2, target, self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(_LegacyLoss):
    def __init__(self, margin=1.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input, target):
        return hinge_embedding_loss(input, target, self.margin, reduction=self.reduction)


class SoftMarginLoss(_LegacyLoss):
    def forward(self, input, target):
        return soft_margin_loss(input, target, reduction=self.reduction)


class MultiLabelSoftMarginLoss(_LegacyLoss):
    """``weight`` (C,) is a buffer, as torch's."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", None if weight is None else as_tensor(weight))

    def forward(self, input, target):
        return multilabel_soft_margin_loss(input, target, self.weight, reduction=self.reduction)


class MultiLabelMarginLoss(_LegacyLoss):
    def forward(self, input, target):
        return multilabel_margin_loss(input, target, reduction=self.reduction)


class MultiMarginLoss(_LegacyLoss):
    """``weight`` (C,) is a buffer, as torch's."""

    def __init__(self, p=1, margin=1.0, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        if p != 1 and p != 2:
            raise ValueError("only p == 1 and p == 2 supported")
        weight = None if weight is None else as_tensor(weight)
        if weight is not None and weight.ndim != 1:
            raise ValueError(f"MultiMarginLoss: expected weight to be None or 1D tensor, got {weight.ndim}D instead")
        self.p, self.margin = p, margin
        self.register_buffer("weight", weight)

    def forward(self, input, target):
        return multi_margin_loss(input, target, self.p, self.margin, self.weight, reduction=self.reduction)


class CosineEmbeddingLoss(_LegacyLoss):
    def __init__(self, margin=0.0, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input1, input2, target):
        return cosine_embedding_loss(input1, input2, target, self.margin, reduction=self.reduction)


class TripletMarginLoss(_LegacyLoss):
    def __init__(self, margin=1.0, p=2.0, eps=1e-6, swap=False, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        if margin <= 0:
            raise ValueError(f"TripletMarginLoss: expected margin to be greater than 0, got {margin} instead")
        self.margin, self.p, self.eps, self.swap = margin, p, eps, swap

    def forward(self, anchor, positive, negative):
        return triplet_margin_loss(anchor, positive, negative, self.margin, self.p, self.eps, self.swap,
                                   reduction=self.reduction)


class PoissonNLLLoss(_LegacyLoss):
    def __init__(self, log_input=True, full=False, size_average=None, eps=1e-8, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.log_input, self.full, self.eps = log_input, full, eps

    def forward(self, log_input, target):
        return poisson_nll_loss(log_input, target, self.log_input, self.full, eps=self.eps, reduction=self.reduction)


class GaussianNLLLoss(_Loss):
    def __init__(self, *, full=False, eps=1e-6, reduction="mean"):
        super().__init__(reduction)
        self.full, self.eps = full, eps

    def forward(self, input, target, var):
        return gaussian_nll_loss(input, target, var, self.full, self.eps, self.reduction)
