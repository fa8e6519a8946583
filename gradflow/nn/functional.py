"""Stateless building blocks, as ``torch.nn.functional``: activations, ``linear``, losses, metrics."""
from gradflow import backend, ops
from gradflow.activation import (dropout, elu, gelu, leaky_relu, log_softmax, noisy_relu, prelu, relu,
                                 selu, sigmoid, softmax, softmax_cross_entropy, softplus, tanh)
from gradflow.conv import (adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d, avg_pool2d, conv1d, conv2d,
                           conv_transpose1d, conv_transpose2d, max_pool1d, max_pool2d)
from gradflow.normalization import batch_norm, group_norm, layer_norm
from gradflow.nn.losses import (accuracy, binary_cross_entropy, binary_cross_entropy_with_logits,
                                cross_entropy, huber_loss, l1_loss, misclassification_rate, mse_loss,
                                nll_loss, smooth_l1_loss)
from gradflow.nn.utils import l1_penalty, l2_penalty
from gradflow.tensor import Tensor


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
    """Zero whole channels: one keep/drop draw per (sample, channel) of (N, C, *) or (C, *) input."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return x
    if x.ndim not in (3, 4):
        raise ValueError(f"dropout2d: expected a 3-d or 4-d input, got shape {x.shape}")
    lead = 2 if x.ndim == 4 else 1
    mask_shape = x.shape[:lead] + (1,) * (x.ndim - lead)
    keep = dropout(Tensor._wrap(backend.xp_of(x.data).ones(mask_shape, dtype=x.dtype)), p, True)
    return x * keep


def one_hot(target, num_classes=-1):
    """Integer class ids of any shape as an int64 one-hot tensor with a trailing class axis."""
    t = target.data if isinstance(target, Tensor) else target
    xp = backend.xp_of(t)
    if num_classes < 0:
        num_classes = int(t.max()) + 1
    flat = t.reshape(-1)
    out = xp.zeros((flat.size, num_classes), dtype="int64")
    out[xp.arange(flat.size), flat] = 1
    return Tensor(out.reshape(t.shape + (num_classes,)))


__all__ = ["batch_norm", "dropout2d", "embedding", "group_norm", "layer_norm",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d", "conv1d", "conv2d",
           "conv_transpose1d", "conv_transpose2d", "max_pool1d", "max_pool2d",
           "accuracy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "dropout",
           "elu", "gelu", "huber_loss", "l1_loss", "l1_penalty", "l2_penalty", "leaky_relu", "linear",
           "log_softmax", "misclassification_rate", "mse_loss", "nll_loss", "noisy_relu", "one_hot", "prelu",
           "relu", "selu", "sigmoid", "smooth_l1_loss", "softmax", "softmax_cross_entropy", "softplus", "tanh"]
