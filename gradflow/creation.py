"""Tensor factories with PyTorch's names; random ones draw from ``gradflow.random``."""
import numpy

from gradflow import backend
from gradflow.random import default_generator
from gradflow.tensor import Tensor


def _make(array, dtype, device, requires_grad):
    device = device or backend.default_device()
    array = backend.to_device(array if dtype is None else array.astype(dtype, copy=False), device)
    return Tensor(array, requires_grad=requires_grad)


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor that owns a copy of ``data``, on ``device`` (default: the default device)."""
    if isinstance(data, Tensor):
        data = data.data
    if hasattr(data, "shape") and not isinstance(data, numpy.generic):
        data = data.copy()
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device or backend.default_device())


def from_numpy(array):
    """Share memory with a NumPy array, as ``torch.from_numpy`` does."""
    if not isinstance(array, numpy.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array)


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)


def zeros(*shape, dtype=numpy.float32, device=None, requires_grad=False):
    return Tensor(backend.xp_for(device or backend.default_device()).zeros(_shape(shape), dtype=dtype),
                  requires_grad=requires_grad)


def ones(*shape, dtype=numpy.float32, device=None, requires_grad=False):
    return Tensor(backend.xp_for(device or backend.default_device()).ones(_shape(shape), dtype=dtype),
                  requires_grad=requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False):
    """``value`` everywhere; without ``dtype``, bool/int/float values give bool/int64/float32, as torch.full."""
    if dtype is None:
        dtype = bool if isinstance(value, (bool, numpy.bool_)) else numpy.int64 if isinstance(value, (int, numpy.integer)) \
            else numpy.float32
    return Tensor(backend.xp_for(device or backend.default_device()).full(_shape((shape,)), value, dtype=dtype),
                  requires_grad=requires_grad)


def empty(*shape, dtype=numpy.float32, device=None):
    return Tensor(backend.xp_for(device or backend.default_device()).empty(_shape(shape), dtype=dtype))


def zeros_like(t, dtype=None, requires_grad=False):
    return Tensor(backend.xp_of(t.data).zeros(t.shape, dtype=dtype or t.dtype), requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return Tensor(backend.xp_of(t.data).ones(t.shape, dtype=dtype or t.dtype), requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None):
    a = numpy.arange(start, stop, step) if stop is not None else numpy.arange(start)
    if dtype is None:
        dtype = numpy.int64 if a.dtype.kind in "iu" else numpy.float32
    return _make(a, dtype, device, False)


def eye(n, m=None, dtype=numpy.float32, device=None):
    return _make(numpy.eye(n, m), dtype, device, False)


def rand(*shape, dtype=numpy.float32, device=None, requires_grad=False):
    return _make(default_generator.numpy.random(_shape(shape)), dtype, device, requires_grad)


def randn(*shape, dtype=numpy.float32, device=None, requires_grad=False):
    return _make(default_generator.numpy.standard_normal(_shape(shape)), dtype, device, requires_grad)


def randint(low, high, shape, dtype=numpy.int64, device=None):
    return _make(default_generator.numpy.integers(low, high, size=_shape((shape,))), dtype, device, False)
