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


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return Tensor(backend.xp_for(device or backend.default_device()).zeros(_shape(shape), dtype=_float(dtype)),
                  requires_grad=requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return Tensor(backend.xp_for(device or backend.default_device()).ones(_shape(shape), dtype=_float(dtype)),
                  requires_grad=requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False):
    if dtype is None:  # torch infers it from the fill value (a NumPy int too: it gave float32; torch reads
        # a numpy.bool_ as a float)
        dtype = numpy.bool_ if isinstance(value, bool) else \
            numpy.int64 if isinstance(value, (int, numpy.integer)) else _float(None)
    return Tensor(backend.xp_for(device or backend.default_device()).full(_shape((shape,)), value, dtype=dtype),
                  requires_grad=requires_grad)


def empty(*shape, dtype=None, device=None):
    return Tensor(backend.xp_for(device or backend.default_device()).empty(_shape(shape), dtype=_float(dtype)))


def zeros_like(t, dtype=None, requires_grad=False):
    return Tensor(backend.xp_of(t.data).zeros(t.shape, dtype=dtype or t.dtype), requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return Tensor(backend.xp_of(t.data).ones(t.shape, dtype=dtype or t.dtype), requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None):
    a = numpy.arange(start, stop, step) if stop is not None else numpy.arange(start)
    if dtype is None:
        dtype = numpy.int64 if a.dtype.kind in "iu" else _float(None)
    return _make(a, dtype, device, False)


def eye(n, m=None, dtype=None, device=None):
    return _make(numpy.eye(n, m), _float(dtype), device, False)


def rand(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    return _make(_rng(generator).random(_shape(shape)), _float(dtype), device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    return _make(_rng(generator).standard_normal(_shape(shape)), _float(dtype), device, requires_grad)


def randint(*args, size=None, dtype=numpy.int64, device=None, generator=None):
    """``randint(high, size)`` or ``randint(low, high, size)``: integers in [low, high), as torch."""
    if size is None:
        if not args:
            raise TypeError("randint() missing the size argument")
        args, size = args[:-1], args[-1]
    if len(args) == 1:
        low, high = 0, args[0]
    elif len(args) == 2:
        low, high = args
    else:
        raise TypeError(f"randint() takes (high, size) or (low, high, size), got {len(args) + 1} arguments")
    if not low < high:
        raise RuntimeError(f"randint(): random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    return _make(_rng(generator).integers(low, high, size=_shape((size,))), dtype, device, False)


# ==== API breadth (issue 13): more factories ================================================
def _float(dtype):
    """``dtype``, or the default floating dtype (``set_default_dtype``) when None."""
    from gradflow.tensor import get_default_dtype
    return get_default_dtype() if dtype is None else dtype


def _rng(generator):
    return (generator or default_generator).numpy


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    if steps < 0:
        raise RuntimeError(f"linspace: number of steps must be non-negative, got {steps}")
    return _make(numpy.linspace(float(start), float(end), int(steps)), _float(dtype), device, requires_grad)


def logspace(start, end, steps, base=10.0, dtype=None, device=None, requires_grad=False):
    return _make(numpy.logspace(float(start), float(end), int(steps), base=base), _float(dtype), device, requires_grad)


def _like(t, dtype, device):
    return (dtype or t.dtype), (device or t.device)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return Tensor(backend.xp_for(device).full(t.shape, fill_value, dtype=dtype), requires_grad=requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return Tensor(backend.xp_for(device).empty(t.shape, dtype=dtype), requires_grad=requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return _make(default_generator.numpy.random(t.shape), dtype, device, requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(t, dtype, device)
    return _make(default_generator.numpy.standard_normal(t.shape), dtype, device, requires_grad)


def randint_like(t, low=0, high=None, dtype=None, device=None):
    if high is None:
        low, high = 0, low
    dtype, device = _like(t, dtype, device)
    return _make(default_generator.numpy.integers(low, high, size=t.shape), dtype, device, False)


def randperm(n, dtype=numpy.int64, device=None, generator=None):
    return _make(_rng(generator).permutation(int(n)), dtype, device, False)
