"""Differentiable tensor ops: each op's forward and backward side by side.

``forward`` works on raw arrays and picks NumPy or CuPy from its inputs; ``backward``
is written with these same ops, so a backward pass can be recorded for higher-order
gradients. Broadcast operands get their gradient back through ``sum_to``.
"""
import builtins

import numpy

from gradflow import backend
from gradflow.tensor import Function, Tensor, _in_place, as_tensor, is_grad_enabled


def _pair(a, b):
    """Two operands as Tensors; a Python scalar takes the other's dtype and device."""
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    elif not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    return a, b


def _unbroadcast(g, shape):
    return g if g.shape == shape else sum_to(g, shape)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim if ndim else a for a in axes)


def _pick(axis, dim, keepdims, keepdim):
    """Accept PyTorch's ``dim``/``keepdim`` as spellings of ``axis``/``keepdims``."""
    return (axis if dim is None else dim), (keepdims if keepdim is None else keepdim)


# ---- arithmetic ----------------------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        a, b = self.inputs
        return _unbroadcast(gy, a.shape), _unbroadcast(gy, b.shape)


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        a, b = self.inputs
        return _unbroadcast(gy, a.shape), _unbroadcast(-gy, b.shape) if self.needs_input_grad[1] else None


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved_tensors
        ga = _unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved_tensors
        ga = _unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class PowScalar(Function):
    """x ** c for a constant exponent (no log of a possibly negative base)."""
    def __init__(self, exponent):
        self.c = exponent

    def forward(self, x):
        self.save_for_backward(x)
        return x ** self.c

    def backward(self, gy):
        x, = self.saved_tensors
        if self.c == 2:
            return gy * x * 2.0
        return gy * self.c * x ** (self.c - 1)


class Pow(Function):
    def forward(self, a, b):
        y = a ** b
        self.save_for_backward(a, b, y)
        return y

    def backward(self, gy):
        a, b, y = self.saved_tensors
        ga = _unbroadcast(gy * b * a ** (b - 1.0), a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(gy * y * log(a), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


def add(a, b):
    return Add()(*_pair(a, b))


def sub(a, b):
    return Sub()(*_pair(a, b))


def mul(a, b):
    return Mul()(*_pair(a, b))


def div(a, b):
    return Div()(*_pair(a, b))


def pow(a, b):
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalar(b)(a)
    return Pow()(*_pair(a, b))


def neg(x):
    return Neg()(x)


# ---- elementwise functions -------------------------------------------------------------------
class Exp(Function):
    def forward(self, x):
        y = backend.xp_of(x).exp(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * y


class Log(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.xp_of(x).log(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy / x


class Sqrt(Function):
    def forward(self, x):
        y = backend.xp_of(x).sqrt(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy / (y * 2.0)


class Abs(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        self.save_for_backward(xp.sign(x))
        return xp.abs(x)

    def backward(self, gy):
        sign, = self.saved_tensors
        return gy * sign


class Clamp(Function):
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        xp = backend.xp_of(x)
        inside = xp.ones(x.shape, dtype=bool)
        if self.lo is not None:
            inside &= x >= self.lo
        if self.hi is not None:
            inside &= x <= self.hi
        self.save_for_backward(inside.astype(x.dtype))
        return xp.clip(x, self.lo, self.hi)

    def backward(self, gy):
        inside, = self.saved_tensors
        return gy * inside


class Maximum(Function):
    """Elementwise max; at ties the gradient is split evenly, as in PyTorch."""
    def forward(self, a, b):
        xp = backend.xp_of(a)
        dtype = xp.result_type(a, b)
        share = (a > b).astype(dtype) + (a == b).astype(dtype) * 0.5
        self.save_for_backward(share)
        return xp.maximum(a, b)

    def backward(self, gy):
        share, = self.saved_tensors
        a, b = self.inputs
        return _unbroadcast(gy * share, a.shape), _unbroadcast(gy * (1.0 - share), b.shape)


class Where(Function):
    def forward(self, condition, a, b):
        self.save_for_backward(condition)
        return backend.xp_of(a).where(condition, a, b)

    def backward(self, gy):
        cond, = self.saved_tensors
        _, a, b = self.inputs
        zero = zeros_like_array(gy)
        ga = _unbroadcast(where(cond, gy, zero), a.shape) if self.needs_input_grad[1] else None
        gb = _unbroadcast(where(cond, zero, gy), b.shape) if self.needs_input_grad[2] else None
        return None, ga, gb


def zeros_like_array(t):
    return Tensor._wrap(backend.xp_of(t.data).zeros_like(t.data))


def exp(x):
    return Exp()(x)


def log(x):
    return Log()(x)


def sqrt(x):
    return Sqrt()(x)


def abs(x):
    return Abs()(x)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp: give at least one of min and max")
    return Clamp(min, max)(x)


clip = clamp


def maximum(a, b):
    return Maximum()(*_pair(a, b))


def minimum(a, b):
    return -maximum(-as_tensor(a) if not isinstance(a, Tensor) else -a,
                    -as_tensor(b) if not isinstance(b, Tensor) else -b)


def where(condition, a, b):
    a, b = _pair(a, b)
    if not isinstance(condition, Tensor):
        condition = Tensor._wrap(backend.xp_of(a.data).asarray(condition, dtype=bool))
    elif condition.dtype != bool:
        condition = compare(condition, 0, "not_equal")
    return Where()(condition, a, b)


# ---- matmul --------------------------------------------------------------------------------
class MatMul(Function):
    """y = a @ b; backward is ga = gy @ b^T, gb = a^T @ gy (batched and 1-D too)."""
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            raise ValueError(f"matmul: {a.shape} @ {b.shape}: inner dimensions {ka} and {kb} differ")
        if a.dtype != b.dtype:
            raise TypeError(f"matmul: dtypes differ ({a.dtype} @ {b.dtype}); cast one with .to(dtype)")
        self.save_for_backward(a, b)
        return _matmul_arrays(a, b)

    @staticmethod
    def replay_source(a, b, arrays, saved=()):
        """The expression a replay generated by ``gradflow.compile`` runs for this op: the forward
        without its checks (shapes are fixed in a plan). Ops without one are replayed by calling
        ``forward``; each must compute exactly what ``forward`` computes. With ``saved`` (indices
        into what forward saves for backward that the plan reads later) the expression gives
        the tuple (output, *those saved arrays)."""
        return None if saved else f"{a} @ {b}"

    def backward(self, gy):
        a, b = self.saved_tensors
        if a.ndim == 2 and b.ndim == 2:
            ga = matmul(gy, b.mT) if self.needs_input_grad[0] else None
            gb = matmul(a.mT, gy) if self.needs_input_grad[1] else None
            return ga, gb
        a2 = a if a.ndim > 1 else reshape(a, (1,) + a.shape)
        b2 = b if b.ndim > 1 else reshape(b, b.shape + (1,))
        gy2 = gy
        if a.ndim == 1:
            gy2 = unsqueeze(gy2, -2)
        if b.ndim == 1:
            gy2 = unsqueeze(gy2, -1)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = reshape(sum_to(matmul(gy2, b2.mT), a2.shape), a.shape)
        if self.needs_input_grad[1]:
            gb = reshape(sum_to(matmul(a2.mT, gy2), b2.shape), b.shape)
        return ga, gb


def _matmul_arrays(a, b):
    """a @ b; during CUDA-graph capture CuPy refuses cuBLAS, so gradflow's own GEMM runs."""
    if backend.capturing and a.ndim == 2 and b.ndim == 2:
        from gradflow.compile import gemm
        return gemm(a, b)
    return a @ b


def matmul(a, b):
    a, b = _pair(a, b)
    return MatMul()(a, b)


# ---- reductions ------------------------------------------------------------------------------
class Sum(Function):
    """Sum over axes; ``scale`` turns it into a mean without a second op."""
    def __init__(self, axis, keepdims, scale=None):
        self.axis, self.keepdims, self.scale = axis, keepdims, scale

    def forward(self, x):
        self.axes = _axes(self.axis, x.ndim)
        self.x_shape = x.shape
        y = x.sum(axis=self.axes, keepdims=self.keepdims)
        if self.scale is not None:
            y = y * y.dtype.type(self.scale) if hasattr(y, "dtype") else y * self.scale
        return backend.xp_of(x).asarray(y)

    def backward(self, gy):
        if not self.keepdims:
            gy = reshape(gy, _kept_shape(self.x_shape, self.axes))
        g = broadcast_to(gy, self.x_shape)
        return g * self.scale if self.scale is not None else g


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


class MaxMin(Function):
    """max/min over axes; ties share the gradient evenly (PyTorch's amax/amin)."""
    def __init__(self, axis, keepdims, kind):
        self.axis, self.keepdims, self.kind = axis, keepdims, kind

    def forward(self, x):
        self.axes = _axes(self.axis, x.ndim)
        if x.size == 0:
            raise ValueError(f"{self.kind}: cannot reduce an empty tensor of shape {x.shape}")
        y = getattr(x, self.kind)(axis=self.axes, keepdims=True)
        hit = (x == y).astype(x.dtype)
        self.save_for_backward(hit / hit.sum(axis=self.axes, keepdims=True))
        self.x_shape = x.shape
        return y if self.keepdims else y.reshape(tuple(s for i, s in enumerate(x.shape) if i not in self.axes))

    def backward(self, gy):
        share, = self.saved_tensors
        if not self.keepdims:
            gy = reshape(gy, _kept_shape(self.x_shape, self.axes))
        return gy * share


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    axes = _axes(axis, x.ndim)
    n = int(numpy.prod([x.shape[a] for a in axes])) if axes else 1
    return Sum(axis, keepdims, 1.0 / n if n else float("nan"))(x)


def var(x, axis=None, keepdims=False, correction=1, *, dim=None, keepdim=None):
    """Variance with PyTorch's default Bessel correction (``correction=0`` for the population)."""
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    axes = _axes(axis, x.ndim)
    n = int(numpy.prod([x.shape[a] for a in axes])) if axes else 1
    d = x - mean(x, axes, keepdims=True)
    return sum(d * d, axes, keepdims) / builtins.max(n - correction, 0)


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    return MaxMin(axis, keepdims, "max")(x)


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    return MaxMin(axis, keepdims, "min")(x)


class NonDifferentiable(Function):
    """An array function whose result carries no gradient (comparisons, argmax)."""
    def __init__(self, func, **kwargs):
        self.func, self.kwargs = func, kwargs

    def forward(self, *xs):
        return getattr(backend.xp_of(xs[0]), self.func)(*xs, **self.kwargs)

    def __call__(self, *inputs):
        y = super().__call__(*inputs)
        y.requires_grad, y.creator = False, None
        return y


def argmax(x, axis=None, keepdims=False):
    return NonDifferentiable("argmax", axis=axis, keepdims=keepdims)(x)


def argmin(x, axis=None, keepdims=False):
    return NonDifferentiable("argmin", axis=axis, keepdims=keepdims)(x)


# ---- shapes ---------------------------------------------------------------------------------------
def _view_of(y, x):
    """Views share the version counter of their base, so in-place edits are seen by both."""
    base = y.data.base
    if base is not None and (base is x.data or base is x.data.base):
        y._vc = x._version_box()
    return y


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {x.shape} ({x.size} elements) into {self.shape}") from None

    def backward(self, gy):
        return reshape(gy, self.x_shape)


class Permute(Function):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        if len(self.axes) != x.ndim or sorted(a % x.ndim for a in self.axes) != list(range(x.ndim)):
            raise ValueError(f"permute: axes {self.axes} do not match a tensor of shape {x.shape}")
        return x.transpose(self.axes)

    def replay_source(self, x, arrays, saved=()):
        return f"{x}.T" if not saved and arrays[0].ndim == 2 and tuple(a % 2 for a in self.axes) == (1, 0) else None

    def backward(self, gy):
        inverse = tuple(numpy.argsort([a % gy.ndim for a in self.axes]))
        return permute(gy, inverse)


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return backend.xp_of(x).broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast {x.shape} to {self.shape}") from None

    def backward(self, gy):
        return sum_to(gy, self.x_shape)


class SumTo(Function):
    """Sum a broadcast array back down to ``shape``: the adjoint of broadcast_to."""
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        return sum_to_array(x, self.shape)

    def replay_source(self, x, arrays, saved=()):
        lead = len(self.x_shape) - len(self.shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(self.shape)
                                          if s == 1 and self.x_shape[lead + i] != 1)
        if not axes or saved:
            return None
        return f"{x}.sum(axis={axes}, keepdims=True)" + (f".reshape({self.shape})" if lead else "")

    def backward(self, gy):
        return broadcast_to(gy, self.x_shape)


def sum_to_array(x, shape):
    lead = x.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != xs for s, xs in zip(shape, x.shape[lead:])):
        raise ValueError(f"sum_to: cannot sum shape {x.shape} down to {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    y = x.sum(axis=axes, keepdims=True) if axes else x
    return y.reshape(shape) if lead else y


def reshape(x, shape):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if x.shape == shape:
        return x
    return _view_of(Reshape(shape)(x), x)


def permute(x, axes):
    return _view_of(Permute(tuple(axes))(x), x)


def transpose(x, *axes):
    """No axes: reverse them all (``.T``). Two axes: swap them, as ``torch.transpose``."""
    if len(axes) == 1 and not isinstance(axes[0], int):
        axes = tuple(axes[0])
    if not axes:
        return permute(x, tuple(reversed(range(x.ndim))))
    if len(axes) == 2:
        return swapaxes(x, *axes)
    return permute(x, axes)


def swapaxes(x, a, b):
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return permute(x, order)


def flatten(x, start_dim=0, end_dim=-1):
    start, end = start_dim % builtins.max(x.ndim, 1), end_dim % builtins.max(x.ndim, 1)
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    if x.ndim == 0:
        shape = (1,)
    return reshape(x, tuple(int(numpy.prod(x.shape[start:end + 1])) if s == -1 else s for s in shape))


def squeeze(x, axis=None):
    if axis is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = _axes(axis, x.ndim)
        for a in axes:
            if x.shape[a] != 1:
                raise ValueError(f"squeeze: dimension {a} of shape {x.shape} is not 1")
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return reshape(x, shape)


def unsqueeze(x, axis):
    axis = axis % (x.ndim + 1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def broadcast_to(x, shape):
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return _view_of(BroadcastTo(shape)(x), x)


def sum_to(x, shape):
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return SumTo(shape)(x)


class Concatenate(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        for x in xs[1:]:
            if x.ndim != xs[0].ndim or any(i != self.axis % x.ndim and s != t
                                           for i, (s, t) in enumerate(zip(x.shape, xs[0].shape))):
                raise ValueError(f"concatenate: shapes {[a.shape for a in xs]} differ outside axis {self.axis}")
        self.sizes = [x.shape[self.axis] for x in xs]
        return backend.xp_of(xs[0]).concatenate(xs, axis=self.axis)

    def backward(self, gy):
        grads, start = [], 0
        axis = self.axis % gy.ndim
        for size in self.sizes:
            index = (slice(None),) * axis + (slice(start, start + size),)
            grads.append(getitem(gy, index))
            start += size
        return tuple(grads)


def concatenate(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    return Concatenate(axis)(*tensors)


cat = concatenate


def stack(tensors, axis=0):
    return concatenate([unsqueeze(as_tensor(t), axis) for t in tensors], axis)


# ---- indexing ------------------------------------------------------------------------------
def _index_arrays(index, xp):
    """Tensors inside an index become arrays of the indexed tensor's module."""
    if isinstance(index, tuple):
        return tuple(_index_arrays(i, xp) for i in index)
    if isinstance(index, Tensor):
        return xp.asarray(index.data)
    if isinstance(index, list):
        return xp.asarray(index)
    return index


def _is_basic(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Function):
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        try:
            return x[self.index]
        except IndexError as e:
            raise IndexError(f"indexing a tensor of shape {x.shape}: {e}") from None

    def backward(self, gy):
        return GetItemGrad(self.index, self.x_shape)(gy)


class GetItemGrad(Function):
    """Scatter-add of a gradient into zeros: repeated indices accumulate."""
    def __init__(self, index, shape):
        self.index, self.shape = index, shape

    def forward(self, gy):
        xp = backend.xp_of(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_basic(self.index):
            gx[self.index] = gy
        elif xp is numpy:
            numpy.add.at(gx, self.index, gy)
        else:
            import cupyx
            cupyx.scatter_add(gx, self.index, gy)
        return gx

    def backward(self, ggx):
        return getitem(ggx, self.index)


def getitem(x, index):
    index = _index_arrays(index, backend.xp_of(x.data))
    y = GetItem(index)(x)
    return _view_of(y, x) if _is_basic(index) else y


def setitem_(x, index, value):
    """``x[index] = value`` in place; refused where it would corrupt recorded history."""
    _in_place("index assignment")
    if is_grad_enabled() and (x.requires_grad or (isinstance(value, Tensor) and value.requires_grad)):
        raise RuntimeError("in-place assignment into a tensor that requires grad is not differentiable "
                           "in gradflow; build a new tensor (e.g. with where) or do it under no_grad()")
    v = value.data if isinstance(value, Tensor) else value
    x.data[_index_arrays(index, backend.xp_of(x.data))] = v
    x._bump_version()


def inplace_(x, other, ufunc):
    """``x += other`` and friends: modify ``x``'s data and bump its version."""
    if is_grad_enabled() and x.requires_grad:
        raise RuntimeError(f"in-place {ufunc} on a tensor that requires grad is not differentiable in "
                           f"gradflow; write x = x + y instead, or do it under no_grad()")
    _in_place(f"in-place {ufunc}")
    o = other.data if isinstance(other, Tensor) else other
    if isinstance(other, Tensor) and other.device != x.device:
        raise RuntimeError(f"in-place {ufunc}: tensors are on different devices ('{x.device}' and '{other.device}')")
    xp = backend.xp_of(x.data)
    try:
        getattr(xp, ufunc)(x.data, o, out=x.data, casting="same_kind")
    except ValueError as e:
        raise ValueError(f"in-place {ufunc}: {x.shape} and {getattr(o, 'shape', ())}: {e}") from None
    x._bump_version()
    return x


def compare(x, other, ufunc):
    return NonDifferentiable(ufunc)(*_pair(x, other))


# ---- dtype and device -------------------------------------------------------------------------
class AsType(Function):
    def __init__(self, dtype):
        self.dtype = numpy.dtype(dtype)

    def forward(self, x):
        self.x_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return astype(gy, self.x_dtype)


class ToDevice(Function):
    def __init__(self, device):
        self.device = backend.check_device(device)

    def forward(self, x):
        self.source = backend.device_of(x)
        return backend.to_device(x, self.device)

    def backward(self, gy):
        return to_device(gy, self.source)


def astype(x, dtype):
    dtype = numpy.dtype(dtype)
    if x.dtype == dtype:
        return x
    if x.requires_grad and dtype.kind not in "fc":
        return Tensor._wrap(x.data.astype(dtype))  # integer results carry no gradient
    return AsType(dtype)(x)


def to_device(x, device):
    if x.device == device:
        return x
    if device == "cuda":
        backend.cupy()  # the clear error when CUDA is missing
    return ToDevice(device)(x)


# ---- layers -----------------------------------------------------------------------------------
class Linear(Function):
    """y = x @ W^T + b in one op (PyTorch's weight layout: (out_features, in_features)).

    Backward: gx = gy @ W, gW = gy^T @ x, gb = sum of gy over the batch, each computed
    directly in the parameter's own layout, so no transposed copies are made.
    """
    def forward(self, x, weight, bias=None):
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input {x.shape} does not match weight {weight.shape} "
                             f"(in_features {weight.shape[1]})")
        if x.dtype != weight.dtype:
            raise TypeError(f"linear: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
        self.save_for_backward(x, weight)
        if x.ndim != 2:
            y = x @ weight.T
        elif backend.capturing:
            y = _matmul_arrays(x, weight.T)
        elif weight.size >= 16384:  # same dot products; OpenBLAS runs this orientation of a large
            y = (weight @ x.T).T    # weight ~1.4x faster for small batches (the output is F-ordered)
        else:
            y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def replay_source(x, weight, bias=None, arrays=(), saved=()):
        if arrays[0].ndim != 2 or bias is None or saved:
            return None
        if arrays[1].size >= 16384:  # as forward
            return f"_iadd(({weight} @ {x}.T).T, {bias})"
        return f"_iadd({x} @ {weight}.T, {bias})"

    def backward(self, gy):
        x, weight = self.saved_tensors
        need = self.needs_input_grad
        gx = matmul(gy, weight) if need[0] else None
        gw = gb = None
        if need[1]:
            g2 = gy if gy.ndim == 2 else reshape(gy, (-1, gy.shape[-1]))
            x2 = x if x.ndim == 2 else reshape(x, (-1, x.shape[-1]))
            gw = matmul(g2.mT, x2)
        if len(need) > 2 and need[2]:
            gb = sum_to(gy, (gy.shape[-1],))
        return gx, gw, gb


def linear(x, weight, bias=None):
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)
