"""Weight initializers with ``torch.nn.init``'s names and formulas.

Every initializer draws on the host from ``gradflow.random.default_generator`` (so
``manual_seed`` makes them reproducible on any device), casts to the tensor's dtype, moves
the values to the tensor's device and writes them into the tensor's data in place,
bumping its version. Each returns the tensor.
"""
import math
import warnings

import numpy

from gradflow import backend
from gradflow import random as gf_random


def _rng(generator):
    if generator is None:
        return gf_random.default_generator.numpy
    return generator.numpy if isinstance(generator, gf_random.Generator) else generator


def _fill(tensor, values):
    values = numpy.asarray(values).astype(tensor.dtype, copy=False)
    tensor.data[...] = backend.to_device(values, tensor.device)
    tensor._bump_version()
    return tensor


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``)."""
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d")
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4  # the value torch uses (self-normalising nets are usually drawn with gain 1)
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {tensor.shape}")
    receptive = int(numpy.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} not supported, use 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    return _fill(tensor, _rng(generator).uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std^2)."""
    return _fill(tensor, _rng(generator).normal(mean, std, size=tensor.shape))


def constant_(tensor, val):
    return _fill(tensor, numpy.full(tensor.shape, val))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio (2010): N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def _zero_element(tensor):
    """As in PyTorch: a zero-element tensor (``Linear(0, n)``) has nothing to draw; its fan may be 0."""
    if tensor.data.size == 0:
        warnings.warn("Initializing zero-element tensors is a no-op", UserWarning, stacklevel=3)
        return True
    return False


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): U(-b, b) with b = gain * sqrt(3 / fan), keeping activations' variance."""
    if _zero_element(tensor):
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): N(0, std^2) with std = gain / sqrt(fan)."""
    if _zero_element(tensor):
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)


def lecun_normal_(tensor, generator=None):
    """LeCun normal, N(0, 1/fan_in): the init SELU's self-normalisation assumes."""
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, 1.0 / math.sqrt(fan_in), generator)


def lecun_uniform_(tensor, generator=None):
    """LeCun uniform, U(-sqrt(3/fan_in), sqrt(3/fan_in)): the same variance as ``lecun_normal_``."""
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(3.0 / fan_in)
    return uniform_(tensor, -bound, bound, generator)


def eye_(tensor):
    """The identity in a 2-D tensor (ones on the main diagonal of a non-square one too): keeps a
    Linear layer's input as it is."""
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    return _fill(tensor, numpy.eye(*tensor.shape))


def dirac_(tensor, groups=1):
    """A 3-, 4- or 5-d convolution weight that passes each input channel (of each of ``groups``
    groups) to the matching output channel: a one at the kernel's centre, as torch's."""
    if tensor.ndim not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    if tensor.shape[0] % groups != 0:
        raise ValueError("dim 0 must be divisible by groups")
    out_per_group = tensor.shape[0] // groups
    values = numpy.zeros(tensor.shape)
    centre = tuple(s // 2 for s in tensor.shape[2:])
    for g in range(groups):
        for d in range(min(out_per_group, tensor.shape[1])):
            values[(g * out_per_group + d, d) + centre] = 1
    return _fill(tensor, values)


def orthogonal_(tensor, gain=1, generator=None):
    """Saxe et al. (2013): a (semi-)orthogonal matrix, the tensor read as (shape[0], rest), times ``gain``.

    torch's algorithm: the Q of a Gaussian matrix's QR (of its transpose when it is wide), its
    columns' signs set by R's diagonal so Q is Haar-distributed (Mezzadri 2007)."""
    if tensor.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if tensor.data.size == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.data.size // rows
    flat = _rng(generator).normal(0.0, 1.0, size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = numpy.linalg.qr(flat)
    q = q * numpy.sign(numpy.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, (q * gain).reshape(tensor.shape))


def _norm_cdf(x):
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """N(mean, std^2) restricted to [a, b] (absolute bounds, not in stds), by rejection as torch's.

    Where [a, b] holds over 30% of the mass, normals outside it are drawn again; else uniform
    proposals on [a, b] are kept with probability pdf(x) / pdf(mode). The bounds are taken in the
    tensor's dtype, so no value lands outside them after the cast."""
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in nn.init.trunc_normal_. "
                      "The distribution of values may be incorrect.", UserWarning, stacklevel=2)
    rng, dtype = _rng(generator), numpy.dtype(tensor.dtype)
    lo, hi = numpy.asarray(a).astype(dtype), numpy.asarray(b).astype(dtype)
    by_normal = _norm_cdf((b - mean) / std) - _norm_cdf((a - mean) / std) > 0.3
    log_peak = -0.5 * ((max(a, min(mean, b)) - mean) / std) ** 2
    out = numpy.empty(tensor.data.size, dtype)
    pending = numpy.arange(out.size)
    while pending.size:
        if by_normal:
            v = rng.normal(mean, std, size=pending.size).astype(dtype)
            ok = (v >= lo) & (v <= hi)
        else:
            v = rng.uniform(a, b, size=pending.size)
            ok = numpy.log1p(-rng.uniform(size=pending.size)) <= -0.5 * ((v - mean) / std) ** 2 - log_peak
            v = numpy.clip(v.astype(dtype), lo, hi)
        out[pending[ok]] = v[ok]
        pending = pending[~ok]
    return _fill(tensor, out.reshape(tensor.shape))


def sparse_(tensor, sparsity, std=0.01, generator=None):
    """Martens (2010): N(0, std^2) with ceil(sparsity * rows) entries of every column set to zero
    (rows chosen at random per column), a 2-d tensor only."""
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rng = _rng(generator)
    rows, cols = tensor.shape
    num_zeros = math.ceil(sparsity * rows)
    values = rng.normal(0.0, std, size=(rows, cols))
    for col in range(cols):
        values[rng.permutation(rows)[:num_zeros], col] = 0
    return _fill(tensor, values)
