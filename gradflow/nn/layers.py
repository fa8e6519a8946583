"""Layers: ``Linear``, ``Dropout``, one module per activation, ``Flatten``, ``Identity`` and ``MLP``."""
import math

import numpy

from gradflow import backend
from gradflow.nn import functional as F
from gradflow.nn import init
from gradflow.nn.module import Module, Parameter, Sequential


def _empty(shape, device, dtype):
    xp = backend.xp_for(device or backend.default_device())
    return xp.empty(shape, dtype=numpy.dtype(dtype or numpy.float32))


def _empty_weight(out_features, in_features, device, dtype):
    """A Linear weight of shape (out, in), laid out in memory as (in, out) on the CPU.

    Values, shape and every op are PyTorch's; only the memory order differs (``weight.T``
    is the contiguous one). With the weight stored this way, the forward ``x @ W.T`` and the
    weight gradient ``(x.T @ gy).T`` are plain row-major GEMMs, which OpenBLAS runs up to
    ~1.5x faster than the (out, in) orientation for MLP-sized layers -- the layout a
    hand-written NumPy MLP uses. Optimizers keep the order (``fused.flat_buffer``), so the
    gradient buffer has it too. On the GPU the weight is row-major (out, in), as in PyTorch.
    """
    w = _empty((in_features, out_features), device, dtype)
    return w.T if type(w) is numpy.ndarray else _empty((out_features, in_features), device, dtype)


class Linear(Module):
    """y = x W^T + b, with W of shape (out_features, in_features) as in PyTorch.

    Initialised like PyTorch: W ~ kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)),
    and b ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool):
                raise TypeError(f"Linear: {name} must be an int, got {value!r} ({type(value).__name__})")
            if value < 0:
                raise ValueError(f"Linear: {name} must be >= 0, got {value}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(_empty_weight(self.out_features, self.in_features, device, dtype))
        if bias:
            self.bias = Parameter(_empty((self.out_features,), device, dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input (a placeholder where a layer is optional)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Flatten dimensions ``start_dim..end_dim`` (by default all but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Zero each element with probability ``p`` while training and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Module):
    """Zero whole channels of (N, C, H, W) (or (C, H, W)) inputs with probability ``p`` while training."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout2d(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class _DropoutNd(Module):
    """What torch's dropout modules share: ``p`` checked at construction, ``inplace`` accepted (the
    result is always a new tensor) and shown."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout1d(_DropoutNd):
    """Zero whole channels of (N, C, L) (or (C, L)) inputs with probability ``p`` while training."""

    def forward(self, x):
        return F.dropout1d(x, self.p, self.training)


class Dropout3d(_DropoutNd):
    """Zero whole channels of (N, C, D, H, W) (or (C, D, H, W)) inputs with probability ``p`` while training."""

    def forward(self, x):
        return F.dropout3d(x, self.p, self.training)


class AlphaDropout(_DropoutNd):
    """Dropout for SELU networks: keeps the input's zero mean and unit variance (Klambauer et al. 2017)."""

    def forward(self, x):
        return F.alpha_dropout(x, self.p, self.training)


class FeatureAlphaDropout(_DropoutNd):
    """Alpha dropout of whole channels of (N, C, ...) inputs."""

    def forward(self, x):
        return F.feature_alpha_dropout(x, self.p, self.training)


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``; weight ~ N(0, 1) as in PyTorch.

    ``padding_idx``'s row starts at zero and receives no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, device=None, dtype=None,
                 _weight=None):
        super().__init__()
        if max_norm is not None:
            raise NotImplementedError("Embedding: max_norm is not supported")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} must be within num_embeddings "
                                 f"({self.num_embeddings})")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = Parameter(_empty((self.num_embeddings, self.embedding_dim), device, dtype))
        if _weight is None:
            self.reset_parameters()
        else:
            self.weight.data[...] = backend.to_device(numpy.asarray(_weight) if not hasattr(_weight, "shape")
                                                      else getattr(_weight, "data", _weight), self.weight.device)

    def reset_parameters(self):
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None):
        rows, dim = embeddings.shape
        m = cls(rows, dim, padding_idx, device=embeddings.device, dtype=embeddings.dtype, _weight=embeddings)
        m.weight.requires_grad_(not freeze)
        return m

    def forward(self, indices):
        return F.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


# ---- activations ------------------------------------------------------------------------------------
class ReLU(Module):
    def __init__(self, inplace=False):  # inplace is accepted; gradflow returns a new tensor either way
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class SELU(Module):
    def __init__(self, inplace=False):  # inplace is accepted; gradflow returns a new tensor either way
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.selu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Leaky ReLU whose negative slope is learned (one per channel, or one shared)."""

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters = num_parameters
        self.weight = Parameter(_empty((num_parameters,), device, dtype))
        self.weight.data[...] = init

    def forward(self, x):
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class NoisyReLU(Module):
    """ReLU of the input plus Gaussian noise of standard deviation ``std`` while training (Nair & Hinton, 2010)."""

    def __init__(self, std=0.1):
        super().__init__()
        self.std = std

    def forward(self, x):
        return F.noisy_relu(x, self.std, self.training)

    def extra_repr(self):
        return f"std={self.std}"


class ELU(Module):
    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Softplus(Module):
    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    def __init__(self, dim=None):  # None: torch's implicit dim (see softmax_ops._implicit_dim)
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.log_softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


# ==== issue 13: more activation modules and shape layers ============================================
class SiLU(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return F.silu(x)


class Hardtanh(Module):
    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0)

    def extra_repr(self):
        return ""


class Hardsigmoid(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return F.hardsigmoid(x)


class Hardswish(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return F.hardswish(x)


class Mish(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return F.mish(x)


class Softsign(Module):
    def forward(self, x):
        return F.softsign(x)


class LogSigmoid(Module):
    def forward(self, x):
        return F.logsigmoid(x)


class CELU(Module):
    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.celu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Softmin(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmin(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Unflatten(Module):
    """Expand dimension ``dim`` into ``unflattened_size`` (the inverse of Flatten)."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x):
        dim = self.dim % x.ndim
        size = list(self.unflattened_size)
        if size.count(-1) > 1:
            raise RuntimeError("Unflatten: only one dimension can be inferred (-1)")
        if -1 in size:
            known = math.prod(s for s in size if s != -1)
            size[size.index(-1)] = x.shape[dim] // known if known else 0
        if math.prod(size) != x.shape[dim]:
            raise RuntimeError(f"unflatten: Provided sizes {self.unflattened_size} don't multiply up to the size of "
                               f"dim {self.dim} ({x.shape[dim]}) in the input tensor")
        return x.reshape(x.shape[:dim] + tuple(size) + x.shape[dim + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "prelu": PReLU, "noisy_relu": NoisyReLU,
               "sigmoid": Sigmoid, "tanh": Tanh, "elu": ELU, "selu": SELU, "softplus": Softplus,
               "gelu": GELU, "identity": Identity, "linear": Identity, "silu": SiLU, "mish": Mish,
               "hardswish": Hardswish, "relu6": ReLU6, "celu": CELU}


def _activation(spec):
    if isinstance(spec, str):
        try:
            return ACTIVATIONS[spec.lower()]()
        except KeyError:
            raise ValueError(f"unknown activation {spec!r}; choose from {sorted(ACTIVATIONS)}") from None
    if isinstance(spec, Module):
        raise TypeError("MLP(activation=...) takes a name or a Module class/factory, not a Module instance "
                        "(each layer needs its own)")
    module = spec()
    if not isinstance(module, Module):
        raise TypeError(f"activation factory returned {type(module).__name__}, not a Module")
    return module


class MLP(Module):
    """A multi-layer perceptron: ``MLP([784, 128, 32, 10])`` is Linear-act-Linear-act-Linear.

    ``activation`` (a name such as 'relu' or 'tanh', or a Module class) follows every hidden
    layer and so does ``Dropout(dropout)`` when ``dropout > 0``; the last layer is linear,
    producing logits.
    """

    def __init__(self, sizes, activation="relu", dropout=0.0, bias=True, device=None, dtype=None):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, bias=bias, device=device, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
                if dropout > 0:
                    layers.append(Dropout(dropout))
        self.sizes = sizes
        self.layers = Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
