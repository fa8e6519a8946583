"""Stateless building blocks, as ``torch.nn.functional``: activations, ``linear``, losses, metrics."""
import math
import warnings

from gradflow import backend, ops
from gradflow.activation import elu, gelu, leaky_relu, prelu, relu, selu, sigmoid, softplus, tanh
from gradflow.conv import (adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d, avg_pool2d, conv1d, conv2d,
                           conv_transpose1d, conv_transpose2d, max_pool1d, max_pool2d)
from gradflow.dropout_ops import dropout, noisy_relu
from gradflow.normalization import batch_norm, group_norm, layer_norm
from gradflow.nn.losses import (accuracy, binary_cross_entropy, binary_cross_entropy_with_logits,
                                cross_entropy, huber_loss, l1_loss, misclassification_rate, mse_loss,
                                nll_loss, smooth_l1_loss)
from gradflow.nn.utils import l1_penalty, l2_penalty
from gradflow.softmax_ops import log_softmax, softmax, softmax_cross_entropy
from gradflow.tensor import DTypeError, OpError, Tensor
# issue 13
from gradflow.activation import celu, hardsigmoid, hardswish, hardtanh, logsigmoid, mish, relu6, silu, softsign
from gradflow.softmax_ops import softmin
from gradflow.nn.losses import kl_div
# margin, embedding and likelihood losses
from gradflow.nn.losses import (cosine_embedding_loss, gaussian_nll_loss, hinge_embedding_loss,
                                margin_ranking_loss, multi_margin_loss, multilabel_margin_loss,
                                multilabel_soft_margin_loss, pairwise_distance, poisson_nll_loss, soft_margin_loss,
                                triplet_margin_loss)


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` with weight of shape (out_features, in_features), as in PyTorch (one op)."""
    return ops.linear(input, weight, bias)


def embedding(input, weight, padding_idx=None, max_norm=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer tensor ``input``."""
    if max_norm is not None:
        raise NotImplementedError("embedding: max_norm is not supported")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    return ops.embedding(input, weight, padding_idx)


def dropout2d(input, p=0.5, training=True):
    """Zero whole channels: one keep/drop draw per (sample, channel) of (N, C, H, W) input. A 3-d
    input is (N, C, L), with torch 2's warning (channel-wise 1-d dropout; torch means to read it as
    an unbatched (C, H, W) one day, and will warn before)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return x
    if x.ndim not in (3, 4):
        raise ValueError(f"dropout2d: expected a 3-d or 4-d input, got shape {x.shape}")
    if x.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "This behavior will change in a future release to interpret the input as one without a "
                      "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", UserWarning, stacklevel=2)
    lead = 2
    mask_shape = x.shape[:lead] + (1,) * (x.ndim - lead)
    keep = dropout(Tensor._wrap(backend.xp_of(x.data).ones(mask_shape, dtype=x.dtype)), p, True)
    return x * keep


def _check_p(p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _keep(x, mask_shape, p):
    """A tensor of shape ``mask_shape`` holding 0 or 1/(1-p): dropout's own Philox draw on ones, so
    the mask follows ``manual_seed`` and a compiled step draws a fresh one at each replay."""
    ones = Tensor._wrap(backend.xp_of(x.data).ones(mask_shape, dtype=x.dtype))
    return dropout(ones, p, True)


def _feature_mask_shape(x):
    """One draw per (sample, channel): torch's feature noise, shape (N, C, 1, ...)."""
    if x.ndim < 2:
        raise OpError("Feature dropout requires at least 2 dimensions in the input")
    return x.shape[:2] + (1,) * (x.ndim - 2)


def dropout1d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, L) or unbatched (C, L) input: one keep/drop draw per channel,
    the kept ones scaled by 1/(1-p)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    _check_p(p)
    if x.ndim not in (2, 3):
        raise OpError(f"dropout1d: Expected 2D or 3D input, but received a {x.ndim}D input. Note that dropout1d "
                      f"exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel "
                      f"dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
    if not training or p == 0 or x.data.size == 0:
        return x
    return x * _keep(x, x.shape[:-1] + (1,), p)  # (N, C, 1), or (C, 1) for one sample


def dropout3d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, D, H, W) or unbatched (C, D, H, W) input, one draw per channel.
    Other ranks warn, as torch's, and are read as unbatched (a draw per index of the first dim)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    _check_p(p)
    if x.ndim not in (4, 5):
        warnings.warn(f"dropout3d: Received a {x.ndim}-D input to dropout3d, which is deprecated and will result "
                      f"in an error in a future release. To retain the behavior and silence this warning, please "
                      f"use dropout instead. Note that dropout3d exists to provide channel-wise dropout on inputs "
                      f"with 3 spatial dimensions, a channel dimension, and an optional batch dimension (i.e. 4D "
                      f"or 5D inputs).", UserWarning, stacklevel=2)
    if not training or p == 0 or x.data.size == 0:
        return x
    if x.ndim == 5:
        return x * _keep(x, _feature_mask_shape(x), p)
    if x.ndim == 0 and p < 1:  # torch's unsqueezed input is then 1-d (p = 1 multiplies by 0 first)
        raise OpError("Feature dropout requires at least 2 dimensions in the input")
    return x * _keep(x, x.shape[:1] + (1,) * (x.ndim - 1), p)


_SELU_ALPHA = 1.7580993408473766  # SELU's negative saturation -scale * alpha, negated (torch's constant)


def _alpha_dropout(x, p, training, feature):
    """torch's alpha dropout: y = a * (x * keep + alpha' * (1 - keep)) + b with alpha' SELU's saturation,
    a = ((1 - p)(1 + p alpha'^2))^-1/2 and b = -a alpha' p, which keeps zero mean and unit variance."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    _check_p(p)
    if not training or p == 0 or x.data.size == 0:
        return x
    if p == 1:
        return x * 0.0  # torch multiplies by zero here (not the saturation value)
    mask_shape = _feature_mask_shape(x) if feature else x.shape
    keep = _keep(x, mask_shape, p) * (1.0 - p)  # 0 or 1
    a = 1.0 / math.sqrt((_SELU_ALPHA ** 2 * p + 1) * (1 - p))
    return x * (keep * a) + (keep * (_SELU_ALPHA * a) - _SELU_ALPHA * a * (1 - p))


def alpha_dropout(input, p=0.5, training=False, inplace=False):
    """Dropout for SELU networks: dropped elements take SELU's negative saturation, then an affine
    map restores the input's mean and variance. ``training`` defaults to False, as torch's."""
    return _alpha_dropout(input, p, training, feature=False)


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False):
    """Alpha dropout of whole channels (one draw per (sample, channel) of an (N, C, ...) input)."""
    return _alpha_dropout(input, p, training, feature=True)


def one_hot(target, num_classes=-1):
    """Integer class ids of any shape as an int64 one-hot tensor with a trailing class axis."""
    t = target.data if isinstance(target, Tensor) else target
    xp = backend.xp_of(t)
    if t.dtype.kind not in "iu":
        raise DTypeError(f"one_hot is only applicable to index tensor (integer dtype), got {t.dtype} "
                      f"(convert with .long())")
    if t.size and int(t.min()) < 0:
        raise OpError(f"one_hot: class values must be non-negative, got {int(t.min())}")
    if num_classes < 0:
        if not t.size:
            raise OpError("one_hot: can not infer total number of classes from an empty tensor")
        num_classes = int(t.max()) + 1
    elif t.size and int(t.max()) >= num_classes:
        raise OpError(f"one_hot: class values must be smaller than num_classes ({num_classes}), "
                      f"got {int(t.max())}")
    flat = t.reshape(-1)
    out = xp.zeros((flat.size, num_classes), dtype="int64")
    out[xp.arange(flat.size), flat] = 1
    return Tensor(out.reshape(t.shape + (num_classes,)))


# ==== issue 13: padding, normalization, similarity ==================================================
def pad(input, pad, mode="constant", value=None):
    """Pad the last len(pad)//2 dimensions: ``pad = (left_last, right_last, left_prev, right_prev, ...)``.

    Only ``mode='constant'``; negative amounts crop, as in torch. Differentiable (the gradient is the
    matching slice of the output gradient).
    """
    if mode != "constant":
        raise NotImplementedError(f"F.pad: only mode='constant' is supported, got {mode!r}")
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"F.pad: padding length must be even and at most 2 * ndim ({2 * input.ndim}), got "
                         f"{len(pad)}")
    x = input
    fill = 0.0 if value is None else value
    for i in range(len(pad) // 2):
        dim = input.ndim - 1 - i
        left, right = pad[2 * i], pad[2 * i + 1]
        n = x.shape[dim]
        if left < 0 or right < 0:  # crop first
            x = ops.getitem(x, (slice(None),) * dim + (slice(max(-left, 0), n - max(-right, 0)),))
        parts = []
        for amount in (max(left, 0), max(right, 0)):
            shape = x.shape[:dim] + (amount,) + x.shape[dim + 1:]
            parts.append(Tensor._wrap(backend.xp_of(x.data).full(shape, fill, dtype=x.dtype)))
        if parts[0].shape[dim] or parts[1].shape[dim]:
            x = ops.concatenate([parts[0], x, parts[1]], dim)
    return x


def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """input / max(||input||_p along dim, eps)."""
    denom = ops.clamp(ops.norm(input, p, dim, keepdim=True), min=eps)
    return input / ops.broadcast_to(denom, input.shape)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1 * x2) / (max(||x1||, eps) * max(||x2||, eps)) along ``dim`` (torch's formula since 2.0)."""
    x1, x2 = ops._pair(x1, x2)
    n1 = ops.clamp(ops.norm(x1, 2, dim, keepdim=True), min=eps)
    n2 = ops.clamp(ops.norm(x2, 2, dim, keepdim=True), min=eps)
    return ops.sum((x1 / n1) * (x2 / n2), dim)


__all__ = ["cosine_embedding_loss", "gaussian_nll_loss", "hinge_embedding_loss", "margin_ranking_loss",
           "multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss", "pairwise_distance",
           "poisson_nll_loss", "soft_margin_loss", "triplet_margin_loss",
           "pad", "normalize", "cosine_similarity", "kl_div", "silu", "relu6", "hardtanh", "hardsigmoid",
           "hardswish", "mish", "softsign", "logsigmoid", "celu", "softmin",
           "batch_norm", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
           "feature_alpha_dropout", "embedding", "group_norm", "layer_norm",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d", "conv1d", "conv2d",
           "conv_transpose1d", "conv_transpose2d", "max_pool1d", "max_pool2d",
           "accuracy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "dropout",
           "elu", "gelu", "huber_loss", "l1_loss", "l1_penalty", "l2_penalty", "leaky_relu", "linear",
           "log_softmax", "misclassification_rate", "mse_loss", "nll_loss", "noisy_relu", "one_hot", "prelu",
           "relu", "selu", "sigmoid", "smooth_l1_loss", "softmax", "softmax_cross_entropy", "softplus", "tanh"]
