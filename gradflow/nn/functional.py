"""Stateless building blocks, as ``torch.nn.functional``: activations, ``linear``, losses, metrics."""
from gradflow import backend, ops
from gradflow.activation import (dropout, elu, gelu, leaky_relu, log_softmax, noisy_relu, prelu, relu,
                                 selu, sigmoid, softmax, softmax_cross_entropy, softplus, tanh)
from gradflow.nn.losses import (accuracy, binary_cross_entropy, binary_cross_entropy_with_logits,
                                cross_entropy, huber_loss, l1_loss, misclassification_rate, mse_loss,
                                nll_loss, smooth_l1_loss)
from gradflow.nn.utils import l1_penalty, l2_penalty
from gradflow.tensor import Tensor


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` with weight of shape (out_features, in_features), as in PyTorch (one op)."""
    return ops.linear(input, weight, bias)


def one_hot(target, num_classes=-1):
    """Integer class ids of any shape as an int64 one-hot tensor with a trailing class axis."""
    t = target.data if isinstance(target, Tensor) else target
    xp = backend.xp_of(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"one_hot: class ids must be an integer tensor, got dtype {t.dtype} "
                        f"(convert with .astype('int64'))")
    if t.size and int(t.min()) < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {int(t.min())}")
    if num_classes < 0:
        num_classes = int(t.max()) + 1 if t.size else 0
    elif t.size and int(t.max()) >= num_classes:
        raise ValueError(f"one_hot: class values must be smaller than num_classes={num_classes}, got {int(t.max())}")
    flat = t.reshape(-1)
    out = xp.zeros((flat.size, num_classes), dtype="int64")
    out[xp.arange(flat.size), flat] = 1
    return Tensor(out.reshape(t.shape + (num_classes,)))


__all__ = ["accuracy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "dropout",
           "elu", "gelu", "huber_loss", "l1_loss", "l1_penalty", "l2_penalty", "leaky_relu", "linear",
           "log_softmax", "misclassification_rate", "mse_loss", "nll_loss", "noisy_relu", "one_hot", "prelu",
           "relu", "selu", "sigmoid", "smooth_l1_loss", "softmax", "softmax_cross_entropy", "softplus", "tanh"]
