"""Differentiable tensor ops: each op's forward and backward side by side.

``forward`` works on raw arrays and picks NumPy or CuPy from its inputs; ``backward``
is written with these same ops, so a backward pass can be recorded for higher-order
gradients. Broadcast operands get their gradient back through ``sum_to``.
"""
import builtins
import collections

import numpy

from gradflow import backend
from gradflow.gemm import gemm
from gradflow.tensor import (DTypeError, Function, OpError, Tensor, _in_place, _state as _tape_state, as_tensor,
                             enable_grad, is_grad_enabled)


# ---- type promotion: PyTorch's rules, in one place -------------------------------------------
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def promote_types(a, b):
    """``torch.promote_types``: the higher category (bool < int < float < complex) wins whole,
    so int64 with float32 is float32 (NumPy says float64); within a category, the wider type."""
    a, b = numpy.dtype(a), numpy.dtype(b)
    ca, cb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    if ca == cb or {ca, cb} == {2, 3}:
        return numpy.promote_types(a, b)
    return a if ca > cb else b


def _combine(higher, lower):
    """A lower-priority operand only counts when it is of a higher category (torch's combine_categories)."""
    if higher is None or lower is None:
        return lower if higher is None else higher
    if higher.kind in "fc" and not (higher.kind == "f" and lower.kind == "c"):
        return higher
    if higher.kind == "b" or _CATEGORY[lower.kind] > _CATEGORY[higher.kind]:
        return promote_types(higher, lower)
    return higher


def _scalar_dtype(v):
    """A Python number's dtype in promotion: bool, int64, or the default float dtype (float32 unless set)."""
    kind = numpy.asarray(v).dtype.kind
    return {"b": numpy.dtype(bool), "u": numpy.dtype(numpy.int64), "i": numpy.dtype(numpy.int64),
            "f": numpy.dtype(_default_float()), "c": numpy.dtype(numpy.complex64)}[kind]


def result_type(*operands):
    """The dtype PyTorch gives an op on ``operands`` (Tensors and Python numbers), as ``torch.result_type``.

    Tensors with dimensions outrank 0-d tensors, which outrank Python numbers: a lower
    rank only raises the result when it is of a higher category. So ``int64 + float32``
    is float32, a Python float does not upcast a float32 tensor, ``int_tensor + 0.5`` is
    float32, and a float64 0-d tensor does not upcast a float32 vector.
    """
    ranks = [None, None, None]  # dimensioned tensors, 0-d tensors, Python numbers
    for o in operands:
        if isinstance(o, Tensor) or hasattr(o, "dtype") and hasattr(o, "shape") and not isinstance(o, numpy.generic):
            rank, dt = (0 if o.ndim else 1), numpy.dtype(o.dtype)
        else:
            rank, dt = 2, _scalar_dtype(o)
        ranks[rank] = dt if ranks[rank] is None else promote_types(ranks[rank], dt)
    return _combine(ranks[0], _combine(ranks[1], ranks[2]))


def _is_number(v):
    return isinstance(v, (int, float, complex, numpy.generic))


def _operand(v, dtype, like):
    """``v`` as a Tensor of ``dtype`` (a differentiable cast for Tensors), on ``like``'s device."""
    if isinstance(v, Tensor):
        return v if v.dtype == dtype else astype(v, dtype)
    if not _is_number(v) and like is None:
        return astype(as_tensor(v), dtype)
    xp = backend.xp_of(like.data) if like is not None else numpy
    return Tensor._wrap(xp.asarray(v, dtype=dtype))


def _pair(a, b, like=None):
    """Two operands as Tensors of one dtype, promoted as PyTorch does (``result_type``).

    A Python number lives on the other operand's device (or ``like``'s); arrays and lists
    that are not Tensors take the other operand's dtype, as before promotion existed."""
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            if a.dtype == b.dtype:  # the hot path
                return a, b
        elif type(b) is float and a.dtype.kind in "fc" or type(b) is int and a.dtype.kind in "fciu":
            return a, Tensor._wrap(backend.xp_of(a.data).asarray(b, dtype=a.dtype))
        elif not _is_number(b):
            b = as_tensor(b, like=a)
    elif isinstance(b, Tensor) and not _is_number(a):
        a = as_tensor(a, like=b)
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else like
    dtype = result_type(a, b)
    return _operand(a, dtype, like), _operand(b, dtype, like)


def _unbroadcast(g, shape):
    return g if g.shape == shape else sum_to(g, shape)


def _dim(d, ndim, extra=0):
    """One dim in [-n, n) as a non-negative index, n = ndim + extra (unsqueeze/stack: extra=1).

    A 0-d tensor accepts 0 and -1, as in PyTorch; anything else raises IndexError naming
    the valid range (a wrapped-around dim silently reduces the wrong axis)."""
    n = ndim + extra or 1
    if type(d) is int and -n <= d < n:  # the common case, checked cheaply
        return d % n
    if isinstance(d, bool) or not isinstance(d, (int, numpy.integer)):
        raise TypeError(f"a dim must be an int, got {type(d).__name__}")
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return int(d) % n


def _axes(axis, ndim):
    """Dims to reduce, validated: None or () mean all of them, as in PyTorch."""
    if axis is None:
        return tuple(range(ndim))
    if type(axis) is int and ndim:
        return (_dim(axis, ndim),)
    axes = (axis,) if isinstance(axis, (int, numpy.integer)) else tuple(axis)
    if not axes:
        return tuple(range(ndim))
    out = tuple(_dim(a, ndim) for a in axes)
    if len(set(out)) != len(out):
        raise RuntimeError(f"dim {next(a for a in out if out.count(a) > 1)} appears multiple times in the list of dims")
    return out if ndim else ()


def _check_floating(x, name):
    """mean/var of integers would compute with a truncated 1/n: PyTorch refuses, so does gradflow."""
    if x.dtype.kind not in "fc" and x.dtype.name != "bfloat16":
        raise RuntimeError(f"{name}(): could not infer output dtype. Input dtype must be either a floating point "
                           f"or complex dtype. Got: {x.dtype} (convert with .float() first)")


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
    _saved_for = ((1,), (0,))  # a is read for b's gradient, b for a's: `y * 2` keeps no y

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved_tensors
        ga = _unbroadcast(gy * b, self.shapes[0]) if self.needs_input_grad[0] else None
        gb = _unbroadcast(gy * a, self.shapes[1]) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    _saved_for = ((1,), None)  # a is read for b's gradient only

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved_tensors
        ga = _unbroadcast(gy / b, self.shapes[0]) if self.needs_input_grad[0] else None
        gb = _unbroadcast(-gy * a / (b * b), self.shapes[1]) if self.needs_input_grad[1] else None
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
            return gy * (x * 2.0)  # torch's order: 2x overflows to inf as there
        if self.c == 0:  # d(x**0)/dx is 0 everywhere, x = 0 included (0 * 0**-1 would be NaN)
            return zeros_like_array(gy)
        return gy * (x ** (self.c - 1) * self.c)


class Pow(Function):
    def forward(self, a, b):
        y = a ** b
        self.save_for_backward(a, b, y)
        return y

    def backward(self, gy):
        # PyTorch's masks: d/da is 0 where b == 0 (a**0 is constant), d/db is 0 where a == 0
        # and b >= 0 (0**b is constant there), so no 0 * inf NaN appears at a = 0
        a, b, y = self.saved_tensors
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = _unbroadcast(where(b.data == 0, 0.0, gy * b * a ** (b - 1.0)), a.shape)
        if self.needs_input_grad[1]:
            with numpy.errstate(divide="ignore", invalid="ignore"):
                gb = _unbroadcast(where((a.data == 0) & (b.data >= 0), 0.0, gy * y * log(a)), b.shape)
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


def add(a, b):
    return Add()(*_pair(a, b))


def sub(a, b):
    if (a.dtype if isinstance(a, Tensor) else numpy.asarray(a).dtype) == bool or \
            (b.dtype if isinstance(b, Tensor) else numpy.asarray(b).dtype) == bool:
        raise DTypeError("Subtraction, the `-` operator, with a bool tensor is not supported; use ~ or logical_not "
                         "to invert a mask")
    return Sub()(*_pair(a, b))


def _is_half(dtype):
    """float16 or bfloat16 (ml_dtypes' kind 'V'), tested cheaply: ``dtype.name`` costs 2 us per call."""
    return dtype.itemsize == 2 and dtype.kind in "fV"


def _half_by_scalar(t, s):
    """True when ``t`` is a float16/bfloat16 tensor and ``s`` a scalar its dtype would round: a Python number
    or a 0-d tensor of another dtype that does not raise the result type. torch's mul and div kernels read
    such a scalar at float32 (opmath) precision instead of rounding it to the tensor's dtype first."""
    if not (isinstance(t, Tensor) and _is_half(t.dtype)) or isinstance(s, (bool, numpy.bool_)):
        return False
    if isinstance(s, Tensor):
        return s.ndim == 0 and s.dtype != t.dtype and s.dtype != bool and result_type(t, s) == t.dtype
    return isinstance(s, (int, float, numpy.integer, numpy.floating))


def _in_float32(fn, a, b):
    """fn(a, b) for a float16/bfloat16 tensor and a scalar, computed in float32 and rounded once, as torch's."""
    half = (a if isinstance(a, Tensor) and _is_half(a.dtype) else b).dtype
    like = a if isinstance(a, Tensor) else b
    y = fn(*(astype(v, numpy.float32) if isinstance(v, Tensor) else _operand(v, numpy.dtype(numpy.float32), like)
             for v in (a, b)))
    return astype(y, half)


def mul(a, b):
    # x16 * 0.1 and 0.1 * x16: 0.1 at float32, as torch; a 0-d tensor first (tensor(0.1) * x16) is rounded to
    # float16 there (torch's kernel reads only its second operand as a scalar)
    if (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype) or not \
            (_half_by_scalar(a, b) or not isinstance(a, Tensor) and _half_by_scalar(b, a)):
        return Mul()(*_pair(a, b))
    return _in_float32(lambda x, y: Mul()(x, y), a, b)


def _integral(v):
    """A Tensor of ints or bools, or a Python/NumPy int or bool."""
    return v.dtype.kind in "biu" if isinstance(v, Tensor) else isinstance(v, (int, numpy.integer, numpy.bool_))


def div(a, b):
    """True division; integer (or bool) operands give the default float dtype, as in PyTorch.

    Each integer operand becomes a float from its own value, as torch's: promoting to the
    integer result type first wrapped a 0-d tensor or Python int that the other operand's
    dtype cannot hold (uint8 tensor / tensor(-1) divided by 255)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.dtype.kind in "fc":
        return Div()(a, b)  # the hot path
    if _integral(a) and _integral(b):
        dtype, like = numpy.dtype(_default_float()), a if isinstance(a, Tensor) else b
        return Div()(_operand(a, dtype, like), _operand(b, dtype, like))
    if _half_by_scalar(a, b):  # x16 / 0.7: the divisor at float32, as torch's kernel (not for 0.7 / x16)
        return _in_float32(lambda x, y: Div()(x, y), a, b)
    a, b = _pair(a, b)
    if a.dtype.kind in "biu":
        a, b = astype(a, _default_float()), astype(b, _default_float())
    return Div()(a, b)


def pow(a, b):
    if isinstance(b, numpy.generic):  # a number, as in torch (x32 ** numpy.float64(0.5) was float64)
        b = b.item()
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        dtype = result_type(a, b)
        if dtype.kind in "iu" and b < 0:
            raise RuntimeError("Integers to negative integer powers are not allowed.")
        return PowScalar(b)(_operand(a, dtype, a))
    a, b = _pair(a, b)
    if a.dtype == bool:
        raise DTypeError("pow is not implemented for bool tensors")
    if a.dtype.kind in "iu" and bool((b.data < 0).any()):
        raise RuntimeError("Integers to negative integer powers are not allowed.")
    return Pow()(a, b)


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


class StdSqrt(Sqrt):
    """sqrt of a variance, for std: a zero gradient where the variance is 0 (a constant row), as
    torch's std -- not 1 / (2 sqrt 0) = inf, which times the variance's zero gradient gave NaN."""
    def backward(self, gy):
        y, = self.saved_tensors
        zero = Tensor._wrap(y.data == 0)
        return where(zero, 0.0, gy / where(zero, 1.0, y * 2.0))


class Abs(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        self.save_for_backward((x > 0).astype(x.dtype) - (x < 0).astype(x.dtype))  # sign, 0 at NaN as torch
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


class ClampTensor(Function):
    """clamp(x, lo, hi) with tensor bounds (inputs x, then lo and/or hi; all broadcast), as torch's:
    x's gradient where lo <= x <= hi, lo's where x < lo (and lo < hi), hi's where x > hi (or hi < lo,
    where the result is hi)."""
    def __init__(self, has_lo, has_hi):
        self.has_lo, self.has_hi = has_lo, has_hi

    def forward(self, x, *bounds):
        xp = backend.xp_of(x)
        lo = bounds[0] if self.has_lo else None
        hi = bounds[-1] if self.has_hi else None
        y = x if lo is None else xp.maximum(x, lo)  # NaN in x stays NaN, as in torch
        y = y if hi is None else xp.minimum(y, hi)
        inside = xp.ones(y.shape, dtype=bool)
        masks = []
        if lo is not None:
            inside &= x >= lo
            masks.append((x < lo) if hi is None else (x < lo) & (lo < hi))
        if hi is not None:
            inside &= x <= hi
            masks.append((x > hi) if lo is None else (x > hi) | (hi < lo))
        self.save_for_backward(*(m.astype(y.dtype) for m in [inside] + masks))
        return y

    def backward(self, gy):
        return tuple(_unbroadcast(gy * m, t.shape) if need else None
                     for m, t, need in zip(self.saved_tensors, self.inputs, self.needs_input_grad))


class Maximum(Function):
    """Elementwise max (or min, ``kind='minimum'``); at ties the gradient is split evenly, as in PyTorch."""
    def __init__(self, kind="maximum"):
        self.kind = kind

    def forward(self, a, b):
        xp = backend.xp_of(a)
        dtype = xp.result_type(a, b)
        # torch's masks: each side gets the gradient unless it lost (so both get it at NaN), halved at ties
        half = xp.where(a == b, dtype.type(0.5), dtype.type(1)) if dtype.kind in "fc" else None
        lose_a, lose_b = ((a < b), (a > b)) if self.kind == "maximum" else ((a > b), (a < b))
        if half is None:
            self.save_for_backward(None, None)
        else:
            self.save_for_backward(xp.where(lose_a, dtype.type(0), half), xp.where(lose_b, dtype.type(0), half))
        return getattr(xp, self.kind)(a, b)

    def backward(self, gy):
        share_a, share_b = self.saved_tensors
        a, b = self.inputs
        return _unbroadcast(gy * share_a, a.shape), _unbroadcast(gy * share_b, b.shape)


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
    return _float_op(Exp, x, "exp")  # int and bool inputs give the default float, as in torch


def log(x):
    return _float_op(Log, x, "log")


def sqrt(x):
    return _float_op(Sqrt, x, "sqrt")


def abs(x):
    if x.dtype == bool:
        raise DTypeError("abs is not implemented for bool tensors")
    return Abs()(x)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise OpError("clamp: give at least one of min and max")
    # a NumPy scalar bound is a number, as in torch (NumPy's clip promoted float32 by numpy.float64(0.5) to float64)
    if isinstance(min, numpy.generic):
        min = min.item()
    if isinstance(max, numpy.generic):
        max = max.item()
    if x.dtype.kind in "biu" and builtins.any(isinstance(v, float) or isinstance(v, Tensor) and v.dtype.kind == "f"
                                              for v in (min, max)):
        x = astype(x, _default_float())  # an int tensor clamped to float bounds: the default float, as in torch
    if isinstance(min, Tensor) or isinstance(max, Tensor):  # tensor bounds: differentiable, broadcast
        bounds = [b for b in (min, max) if b is not None]
        for b in bounds:
            x, _ = _pair(x, b)
        bounds = [astype(_pair(x, b)[1], x.dtype) for b in bounds]
        return ClampTensor(min is not None, max is not None)(x, *bounds)
    return Clamp(min, max)(x)


clip = clamp


def maximum(a, b):
    return Maximum()(*_pair(a, b))


def minimum(a, b):
    return Maximum("minimum")(*_pair(a, b))


def where(condition, a, b):
    """``condition ? a : b``; a and b may be Python numbers (both too), promoted as PyTorch does."""
    a, b = _pair(a, b, like=condition if isinstance(condition, Tensor) else None)
    if not isinstance(condition, Tensor):
        condition = Tensor._wrap(backend.xp_of(a.data).asarray(condition, dtype=bool))
    elif condition.dtype != bool:
        if condition.dtype != numpy.uint8:  # torch takes bool (and, deprecated, uint8) conditions only
            raise DTypeError(f"where expected condition to be a boolean tensor, but got a tensor with dtype "
                             f"{condition.dtype}; compare it (x > 0, x != 0) to get one")
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
            raise DTypeError(f"matmul: dtypes differ ({a.dtype} @ {b.dtype}); cast one with .to(dtype)")
        self.save_for_backward(a, b)
        return _matmul_arrays(a, b)

    @staticmethod
    def replay_source(a, b, arrays, saved=(), dying=()):
        """The expression a replay generated by ``gradflow.compile`` runs for this op: the forward
        without its checks (shapes are fixed in a plan). Ops without one are replayed by calling
        ``forward``; each must compute exactly what ``forward`` computes. With ``saved`` (indices
        into what forward saves for backward that the plan reads later) the expression gives
        the tuple (output, *those saved arrays). ``dying`` (indices of inputs) names the inputs whose
        array the expression may overwrite: this op is their last reader and nothing else holds
        their memory (an elementwise op can then compute into it, as a hand-written loop would)."""
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
        if a.ndim == 1:  # (..., n) -> (..., 1, n); a 0-d gy (vector @ vector) -> (1,)
            gy2 = reshape(gy2, gy2.shape[:-1] + (1,) + gy2.shape[-1:]) if gy2.ndim else reshape(gy2, (1,))
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
        return gemm(a, b)
    return a @ b


def matmul(a, b):
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):  # PyTorch never promotes two tensors here
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
        # as torch: unsigned ints sum as int64 (NumPy: uint64), float16 and bfloat16 accumulate in float32
        # (NumPy in float16: the mean of [60000, 60000] overflowed to inf; in bfloat16 the sum of 300
        # times 0.1 was 32, torch 30)
        half = _is_half(x.dtype)
        wide = numpy.int64 if x.dtype.kind == "u" and x.dtype.itemsize < 8 else numpy.float32 if half else None
        y = x.sum(axis=self.axes, keepdims=self.keepdims, dtype=wide)
        if self.scale is not None:
            y = y * y.dtype.type(self.scale) if hasattr(y, "dtype") else y * self.scale
        if half:
            y = y.astype(x.dtype)
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
        hit = x == y
        xp = backend.xp_of(x)
        if x.dtype.kind == "f" and (xp is not numpy or numpy.isnan(y).any()):  # NaN results: NaNs share the gradient
            hit |= xp.isnan(x) & xp.isnan(y)
        hit = hit.astype(x.dtype)
        self.save_for_backward(hit / hit.sum(axis=self.axes, keepdims=True))
        self.x_shape = x.shape
        return y if self.keepdims else y.reshape(tuple(s for i, s in enumerate(x.shape) if i not in self.axes))

    def backward(self, gy):
        share, = self.saved_tensors
        if not self.keepdims:
            gy = reshape(gy, _kept_shape(self.x_shape, self.axes))
        return gy * share


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None, dtype=None):
    """torch.sum; ``dtype`` casts the input first (differentiably), as torch's."""
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    if dtype is None:
        return Sum(_axes(axis, x.ndim), keepdims)(x)
    x = astype(x, dtype)
    y = Sum(_axes(axis, x.ndim), keepdims)(x)
    return y if y.dtype == x.dtype else astype(y, x.dtype)  # dtype=int32 stays int32 (sums wrap alike)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None, dtype=None):
    """torch.mean; ``dtype`` casts the input first (so an int tensor's mean with dtype=float32 works)."""
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    if dtype is not None:
        x = astype(x, dtype)
    _check_floating(x, "mean")
    axes = _axes(axis, x.ndim)
    n = int(numpy.prod([x.shape[a] for a in axes])) if axes else 1
    return Sum(axes, keepdims, 1.0 / n if n else float("nan"))(x)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    """Variance with PyTorch's default Bessel correction (``correction=0`` or ``unbiased=False``
    for the population). Positional arguments follow ``torch.var(dim, unbiased, keepdim)``."""
    dim, keepdim = _pick(dim, axis, keepdim, keepdims)
    if isinstance(dim, bool) and unbiased is None:  # torch's var(unbiased) overload: x.var(False)
        dim, unbiased = None, dim
    if unbiased is not None and correction is not None:
        raise TypeError("var: give either unbiased or correction, not both")
    correction = (1 if unbiased is None else int(bool(unbiased))) if correction is None else correction
    if x.dtype.kind not in "fc":
        raise RuntimeError(f"std and var only support floating point and complex dtypes, got {x.dtype}")
    if x.dtype == numpy.float16:  # as torch: accumulate in float32, round the result to float16
        return astype(var(astype(x, numpy.float32), dim, keepdim=keepdim, correction=correction), x.dtype)
    axes = _axes(dim, x.ndim)
    n = int(numpy.prod([x.shape[a] for a in axes])) if axes else 1
    d = x - mean(x, axes, keepdims=True)
    return sum(d * d, axes, keepdim) / builtins.max(n - correction, 0)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    """sqrt(var(...)), with ``var``'s arguments; float16 in float32, as torch (the variance of float16
    [300, -300, 10] is inf in float16, its square root 300)."""
    if isinstance(x, Tensor) and x.dtype == numpy.float16:
        return astype(std(astype(x, numpy.float32), dim, unbiased, keepdim, correction=correction, axis=axis,
                          keepdims=keepdims), x.dtype)
    return StdSqrt()(var(x, dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims))


def _return_type(name):
    """A named tuple like ``torch.return_types.max``: unpacks as (values, indices)."""
    return collections.namedtuple(name, ["values", "indices"])


_MAX_RESULT, _MIN_RESULT = _return_type("max"), _return_type("min")


class MaxMinDim(Function):
    """Values of max/min along one dim, as ``torch.max(x, dim)``: the gradient goes to the
    returned index alone (``amax``-style ``max(x)`` splits it among ties instead)."""
    def __init__(self, axis, keepdims, kind):
        self.axis, self.keepdims, self.kind = axis, keepdims, kind

    def forward(self, x):
        xp = backend.xp_of(x)
        self.x_shape = x.shape
        if x.ndim == 0:
            self.indices = xp.zeros((), dtype=numpy.int64)
            return x.copy()
        if x.shape[self.axis] == 0:
            raise IndexError(f"{self.kind}(): Expected reduction dim {self.axis} to have non-zero size.")
        idx = getattr(xp, "arg" + self.kind)(x, axis=self.axis, keepdims=True)  # NaN wins, as in torch
        y = xp.take_along_axis(x, idx, self.axis)
        self.indices = idx.astype(numpy.int64, copy=False)
        if not self.keepdims:
            y, self.indices = y.squeeze(self.axis), self.indices.squeeze(self.axis)
        return y

    def backward(self, gy):
        if not self.x_shape:
            return gy
        xp = backend.xp_of(gy.data)
        idx = self.indices if self.keepdims else xp.expand_dims(self.indices, self.axis)
        shape = [1] * len(self.x_shape)
        shape[self.axis] = self.x_shape[self.axis]
        hit = xp.arange(self.x_shape[self.axis]).reshape(shape) == idx
        g = gy if self.keepdims else unsqueeze(gy, self.axis)
        return where(hit, broadcast_to(g, self.x_shape), 0.0)


def _max_min(x, axis, keepdims, dim, keepdim, kind):
    if isinstance(axis, Tensor):  # torch.max(a, b) is the elementwise maximum
        return (maximum if kind == "max" else minimum)(x, axis)
    axis, keepdims = _pick(axis, dim, keepdims, keepdim)
    if axis is None:
        if x.data.size == 0:
            raise RuntimeError(f"{kind}(): Expected reduction dim to be specified for input.numel() == 0. "
                               f"Specify the reduction dim with the 'dim' argument.")
        return MaxMin(None, keepdims, kind)(x)
    if not isinstance(axis, (int, numpy.integer)):  # several dims at once: amax/amin semantics
        return MaxMin(_axes(axis, x.ndim), keepdims, kind)(x)
    fn = MaxMinDim(_dim(axis, x.ndim), keepdims, kind)
    values = fn(x)
    return (_MAX_RESULT if kind == "max" else _MIN_RESULT)(values, Tensor._wrap(fn.indices))


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Largest element; with ``dim``, a named tuple (values, indices) as ``torch.max``;
    with a Tensor second argument, the elementwise maximum."""
    return _max_min(x, axis, keepdims, dim, keepdim, "max")


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Smallest element; with ``dim``, a named tuple (values, indices) as ``torch.min``."""
    return _max_min(x, axis, keepdims, dim, keepdim, "min")


class NonDifferentiable(Function):
    """An array function whose result carries no gradient (comparisons, argmax)."""
    def __init__(self, func, **kwargs):
        self.func, self.kwargs = func, kwargs

    def forward(self, *xs):
        xp = backend.xp_of(xs[0])
        return xp.asarray(getattr(xp, self.func)(*xs, **self.kwargs))  # full reductions give scalars

    def __call__(self, *inputs):
        y = super().__call__(*inputs)
        y.requires_grad, y.creator = False, None
        return y


def _arg(x, dim, keepdim, kind):
    if dim is None:
        if x.data.size == 0:
            raise IndexError(f"{kind}(): Expected reduction dim to be specified for input.numel() == 0.")
        y = NonDifferentiable(kind)(reshape(x, (-1,)))
        return reshape(y, (1,) * x.ndim) if keepdim else y
    dim = _dim(dim, x.ndim)
    if x.ndim == 0:
        return Tensor._wrap(backend.xp_of(x.data).zeros((), dtype=numpy.int64))
    if x.shape[dim] == 0:
        raise IndexError(f"{kind}(): Expected reduction dim {dim} to have non-zero size.")
    return NonDifferentiable(kind, axis=dim, keepdims=keepdim)(x)


def argmax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Index of the largest element (of the flattened tensor without ``dim``), int64."""
    dim, keepdim = _pick(dim, axis, keepdim, keepdims)
    return _arg(x, dim, keepdim, "argmax")


def argmin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    dim, keepdim = _pick(dim, axis, keepdim, keepdims)
    return _arg(x, dim, keepdim, "argmin")


# ---- shapes ---------------------------------------------------------------------------------------
def _view_of(y, x, fn, arg):
    """Views share the version counter of their base, so in-place edits are seen by both, and
    know the tensor whose memory they view (``_view_base``, the first one up a chain of views):
    an in-place op through the view rebases that tensor's history too (``_rebase_view_base``).

    y = fn(x, arg). A view also keeps how to take it again from its base (``_view_replay``, the
    chain of view functions) and the version its history is of: once the memory is changed in
    place by any other tensor (the base, a sibling or enclosing view), the view's recorded history
    is stale, and its next use re-takes it from the base as it is then (``_refresh_view``), as
    torch regenerates a view's grad_fn. A view made with grad off keeps no replay, as in torch."""
    base = y.data.base
    if base is not None and (base is x.data or base is x.data.base):
        vc = y._vc = x._version_box()
        y._view_version = vc[0]
        if x._view_base is None:
            y._view_base = x
            if _tape_state.grad_enabled:
                y._view_replay = ((fn, arg),)
        else:
            y._view_base = x._view_base
            if x._view_replay is not None and _tape_state.grad_enabled:
                y._view_replay = x._view_replay + ((fn, arg),)
    return y


def _sync_view(x):
    """``x`` with its current history: a view whose memory was changed in place by another tensor
    since its history was set takes the view's history again from its base (``_refresh_view``)."""
    if x._view_base is not None and x._view_version != x._vc[0]:
        _refresh_view(x)
    return x


def _refresh_view(v):
    """The view ``v`` takes the place of the same view taken of its base now (its replay). The
    memory is shared, so only the history changes: e.g. after ``w = v[1:]; w.mul_(2)`` (with
    ``v = y[0]``) y went through ``ViewWrite`` and so must v's gradient. A view made with grad off
    has no history to take: torch refuses to use it once a base that requires grad has changed."""
    base = v._view_base
    if v._view_replay is None:
        if base.requires_grad and base.creator is not None:
            raise RuntimeError("A view was created in no_grad mode and its base or another view of its base has "
                               "been modified in place since; it has no history to differentiate. Take the view "
                               "with grad mode enabled, or use it inside no_grad too")
    elif base.requires_grad or v.requires_grad:
        _take_place(v, _replay_view(v, base))
    v._view_version = v._vc[0]


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

    def replay_source(self, x, arrays, saved=(), dying=()):
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

    def replay_source(self, x, arrays, saved=(), dying=()):
        lead = len(self.x_shape) - len(self.shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(self.shape)
                                          if s == 1 and self.x_shape[lead + i] != 1)
        if not axes or saved:
            return None
        if axes == (0,) and _gemv_sums(arrays[0]):
            return f"sum_rows({x})" + ("" if lead else ".reshape(1, -1)"), {"sum_rows": sum_rows}
        return f"{x}.sum(axis={axes}, keepdims=True)" + (f".reshape({self.shape})" if lead else "")

    def backward(self, gy):
        return broadcast_to(gy, self.x_shape)


def sum_to_array(x, shape):
    lead = x.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != xs for s, xs in zip(shape, x.shape[lead:])):
        raise ValueError(f"sum_to: cannot sum shape {x.shape} down to {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    if axes == (0,) and x.ndim == 2:  # a bias gradient (sum_rows picks BLAS or NumPy)
        y = sum_rows(x)
        return y if lead else y.reshape(1, -1)
    y = x.sum(axis=axes, keepdims=True) if axes else x
    return y.reshape(shape) if lead else y


_ONES = {}  # dtype -> one flat read-only array of ones (sum_rows)


def _gemv_sums(a):
    """True when sum_rows sums ``a`` by BLAS: a 2-D float32/float64 NumPy array of 64 rows or more
    (below, inside a training step, NumPy's reduction is as fast: measured at 32 rows)."""
    return type(a) is numpy.ndarray and a.ndim == 2 and a.shape[0] >= 64 and a.dtype.char in "fd"


def sum_rows(a, out=None):
    """a.sum(axis=0) of a 2-D float32/float64 NumPy array (64 rows or more) as ones @ a: one BLAS gemv,
    2-3x faster than NumPy's axis-0 reduction at batch sizes (float32 128x128: 2.3 vs 5.5 us,
    128x10: 1.1 vs 3.1 us), and a bias gradient is one per layer and step. Eager mode (sum_to) and a
    captured replay (SumTo's replay_source, compile's delivery into a bias's gradient through
    sum_rows_source) all sum here, so they agree bit for bit. Other arrays sum with NumPy."""
    if not _gemv_sums(a):
        return a.sum(axis=0, out=out)
    return numpy.matmul(ones_vector(a.shape[0], a.dtype), a, out=out)


def sum_rows_source(a, array, out):
    """``sum_rows(array, out=out)`` as the source a replay generated by ``gradflow.compile`` runs, with
    the choice between BLAS and NumPy made now for ``array``'s shape and dtype (fixed in a plan), so
    the replay makes sum_rows's call without the calls around it: (source, the globals it names)."""
    if not _gemv_sums(array):
        return f"{a}.sum(axis=0, out={out})", {}
    name = f"ones{array.shape[0]}{array.dtype.char}"
    return f"matmul({name}, {a}, out={out})", {name: ones_vector(array.shape[0], array.dtype),
                                                 "matmul": numpy.matmul}


def ones_vector(n, dtype):
    """A read-only NumPy vector of n ones (a view of one flat buffer per dtype that only grows)."""
    ones = _ONES.get(dtype)
    if ones is None or ones.size < n:
        ones = numpy.ones(builtins.max(n, 1024, 0 if ones is None else 2 * ones.size), dtype)  # ops.max shadows max
        ones.flags.writeable = False
        _ONES[dtype] = ones
    return ones[:n]


def reshape(x, shape):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if x.shape == shape:
        return x
    return _view_of(Reshape(shape)(x), x, reshape, shape)


def view(x, shape):
    """``Tensor.view``: ``reshape`` that never copies. Where the memory order forbids a view
    (a transposed tensor, or an ``nn.Linear`` weight on the CPU, stored (in, out)) it raises as
    torch does, instead of returning a copy that in-place writes would silently not reach."""
    y = reshape(x, shape)
    if y is not x and x.data.size and not backend.xp_of(x.data).may_share_memory(x.data, y.data):
        raise RuntimeError(f"view size is not compatible with input tensor's size and stride (at least one "
                           f"dimension spans across two contiguous subspaces): a tensor of shape {x.shape} with "
                           f"strides {tuple(s // x.data.itemsize for s in x.data.strides)} cannot be viewed as "
                           f"{tuple(y.shape)} without a copy. Use .reshape(...) instead.")
    return y


def permute(x, axes):
    axes = tuple(axes)
    if len(axes) != x.ndim:
        raise RuntimeError(f"permute(sizes): number of dims don't match in permute: got {len(axes)} dims for a "
                           f"tensor of shape {x.shape}")
    dims = tuple(_dim(a, x.ndim) for a in axes)
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"permute(): duplicate dims are not allowed, got {axes}")
    return _view_of(Permute(dims)(x), x, permute, dims) if x.ndim else x


def transpose(x, *axes):
    """No axes: reverse them all (``.T``). Two axes: swap them, as ``torch.transpose``."""
    if len(axes) == 1 and not isinstance(axes[0], int):
        axes = tuple(axes[0])
    if not axes:
        return permute(x, tuple(reversed(range(x.ndim))))
    if len(axes) == 2:
        return swapaxes(x, *axes)
    return permute(x, axes)


def _matrix_transpose(x):
    """``x.mT``: the last two dims swapped; matrices (or batches of them) only."""
    if x.ndim < 2:
        raise OpError(f"tensor.mT is only supported on matrices or batches of matrices, got a {x.ndim}-D tensor")
    return swapaxes(x, -1, -2)


def swapaxes(x, a, b):
    a, b = _dim(a, x.ndim), _dim(b, x.ndim)
    if x.ndim == 0:
        return x
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return permute(x, order)


def flatten(x, start_dim=0, end_dim=-1):
    start, end = _dim(start_dim, x.ndim), _dim(end_dim, x.ndim)
    if start > end:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    if x.ndim == 0:
        shape = (1,)
    return reshape(x, tuple(int(numpy.prod(x.shape[start:end + 1])) if s == -1 else s for s in shape))


def squeeze(x, axis=None, *, dim=None):
    """Drop size-1 dims (all, or those in ``dim``); a named dim that is not 1 is left alone, as in PyTorch."""
    axis = axis if dim is None else dim
    if axis is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = (_dim(axis, x.ndim),) if isinstance(axis, (int, numpy.integer)) else \
            tuple(_dim(a, x.ndim) for a in axis)
        shape = tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1))
    return reshape(x, shape)


def unsqueeze(x, axis=None, *, dim=None):
    axis = _dim(axis if dim is None else dim, x.ndim, extra=1)
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def broadcast_to(x, shape):
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return _view_of(BroadcastTo(shape)(x), x, broadcast_to, shape)


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


def concatenate(tensors, axis=0, *, dim=None):
    """Join along an existing dim (``torch.cat``); dtypes are promoted as PyTorch does."""
    axis = axis if dim is None else dim
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    for i, t in enumerate(tensors):
        if t.ndim == 0:
            raise RuntimeError(f"zero-dimensional tensor (at position {i}) cannot be concatenated")
    axis = _dim(axis, tensors[0].ndim)
    dtype = result_type(*tensors)
    return Concatenate(axis)(*[_operand(t, dtype, t) for t in tensors])


cat = concatenate


def stack(tensors, axis=0, *, dim=None):
    """Join along a new dim; every tensor must have the same shape."""
    axis = axis if dim is None else dim
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    for t in tensors[1:]:
        if t.shape != tensors[0].shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, got shapes {[t.shape for t in tensors]}")
    axis = _dim(axis, tensors[0].ndim, extra=1)
    return concatenate([unsqueeze(t, axis) for t in tensors], axis)


# ---- indexing ------------------------------------------------------------------------------
def _sequence_as_tuple(index):
    """torch's (and old NumPy's) rule for a list index: shorter than 32 and holding a sequence, tensor, array,
    slice, Ellipsis or None, it is a tuple of indices (x[[rows, cols]] is x[rows, cols], not a 2-d index)."""
    return len(index) < 32 and builtins.any(
        isinstance(i, (Tensor, list, tuple, slice, numpy.ndarray)) or i is None or i is Ellipsis or
        hasattr(i, "__cuda_array_interface__") for i in index)


def _index_arrays(index, xp, top=True):
    """Tensors inside an index become arrays of the indexed tensor's module. As torch: a uint8 tensor or
    array is a mask (NumPy read it as integer positions: x[uint8 [1, 0, 1]] took rows 1, 0, 1), an empty
    list indexes nothing, and a list of lists (or of tensors, slices, None) is a tuple of indices."""
    if top and isinstance(index, list) and _sequence_as_tuple(index):
        index = tuple(index)
    if isinstance(index, tuple):
        return tuple(_index_arrays(i, xp, False) for i in index)
    if isinstance(index, Tensor):
        a = xp.asarray(index.data)
    elif isinstance(index, list):
        a = xp.asarray(index)
        if a.size == 0 and a.dtype.kind == "f":
            a = a.astype(numpy.int64)
    elif isinstance(index, numpy.ndarray) or hasattr(index, "__cuda_array_interface__"):
        a = index
    else:
        if isinstance(index, slice) and index.step is not None and index.step <= 0:
            raise ValueError("step must be greater than zero (torch has no negative-step slices; use flip)")
        return index
    return a.astype(bool) if a.dtype == numpy.uint8 else a


def _refuse_uint8_mask(index):
    """torch refuses a uint8 mask in an index assignment (a bool one is needed): so does gradflow."""
    for i in index if isinstance(index, tuple) else (index,):
        if getattr(i, "dtype", None) == numpy.uint8:
            raise RuntimeError("index assignment with a uint8 mask: torch refuses it (masked_fill_ only supports "
                               "boolean masks); use a bool mask (mask.bool())")


def _int_like(i):
    """An index entry torch applies as an integer (basic indexing): Python and NumPy ints, 0-d int arrays."""
    if isinstance(i, bool):
        return False
    return isinstance(i, (int, numpy.integer)) or getattr(i, "ndim", None) == 0 and i.dtype.kind in "iu"


def _split_ints(index):
    """(the ints of ``index``, the rest) when it holds ints and advanced entries (arrays), else None.

    torch applies such ints first, as basic indexing; NumPy counts them as advanced, which moves
    the result's axes when a slice separates them: ``x[0, :, [1, 2]]`` of a (2, 3, 4) x is (3, 2)
    in torch, (2, 3) in NumPy. Indexing with the ints, then with the rest, is torch's order."""
    if not isinstance(index, tuple) or any(isinstance(i, bool) for i in index):
        return None
    ints = [_int_like(i) for i in index]
    if not builtins.any(ints) or all(ok or isinstance(i, (slice, type(None), type(Ellipsis)))
                                     for i, ok in zip(index, ints)):
        return None
    first, rest = [], []
    for i, is_int in zip(index, ints):
        if is_int:
            first.append(int(i))
        elif i is None:
            rest.append(i)
        elif i is Ellipsis:
            first.append(i)
            rest.append(i)
        else:  # a slice or an index array: the axes it indexes (a bool mask indexes its ndim)
            first.extend([slice(None)] * (i.ndim if getattr(i, "dtype", None) == bool else 1))
            rest.append(i)
    return tuple(first), tuple(rest)


def _is_basic(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Function):
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        try:
            y = x[self.index]
        except IndexError as e:
            raise IndexError(f"indexing a tensor of shape {x.shape}: {e}") from None
        if type(y) is not type(x):  # an int for every axis: NumPy gives a scalar, torch a 0-d view of x
            y = x[(self.index if isinstance(self.index, tuple) else (self.index,)) + (Ellipsis,)]
        return y

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
    split = _split_ints(index)
    if split is not None:
        return getitem(getitem(x, split[0]), split[1])
    y = GetItem(index)(x)
    return _view_of(y, x, getitem, index) if _is_basic(index) else y


class Embedding(Function):
    """Rows of ``weight`` picked by integer ``indices``: y[..., :] = weight[indices[...], :].

    Backward scatter-adds the output gradient into the picked rows (repeated indices
    accumulate); the row ``padding_idx`` gets no gradient, as in PyTorch.
    """
    def __init__(self, padding_idx=None):
        self.padding_idx = padding_idx

    def forward(self, weight, indices):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"embedding: indices must be integers, got {indices.dtype}")
        n = weight.shape[0]
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise IndexError(f"embedding: index out of range: indices span [{int(indices.min())}, "
                             f"{int(indices.max())}] but there are {n} embeddings")
        self.num = n
        self.save_for_backward(indices)
        return backend.xp_of(weight).take(weight, indices, axis=0)

    def backward(self, gy):
        indices, = self.saved_tensors
        return EmbeddingGrad(self.num, self.padding_idx)(gy, indices), None


class EmbeddingGrad(Function):
    """Scatter-add of (..., D) gradient rows into a (num, D) zero matrix at ``indices``."""
    def __init__(self, num, padding_idx):
        self.num, self.padding_idx = num, padding_idx

    def forward(self, gy, indices):
        xp = backend.xp_of(gy)
        d = gy.shape[-1]
        gw = xp.zeros((self.num, d), dtype=gy.dtype)
        flat, rows = indices.reshape(-1), gy.reshape(-1, d)
        if xp is numpy:
            numpy.add.at(gw, flat, rows)
        else:
            import cupyx
            cupyx.scatter_add(gw, flat, rows)
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        self.save_for_backward(indices)
        return gw

    def backward(self, ggw):
        indices, = self.saved_tensors
        g = Embedding(None)(ggw, indices)
        if self.padding_idx is not None:
            g = g * unsqueeze(astype(compare(indices, self.padding_idx, "not_equal"), ggw.dtype), -1)
        return g, None


def embedding(indices, weight, padding_idx=None):
    return Embedding(padding_idx)(weight, as_tensor(indices))


def setitem_(x, index, value):
    """``x[index] = value`` in place; refused where it would corrupt recorded history."""
    _refuse_uint8_mask(index)
    split = _split_ints(_index_arrays(index, backend.xp_of(x.data)))
    if split is not None:  # into the view the ints select (torch's order, see _split_ints)
        return setitem_(getitem(x, split[0]), split[1], value)
    _in_place("index assignment")
    if _records_in_place(x, value):
        index_put_(x, index, value)  # recorded: x's history is rebased, as in torch
        return
    v = value.data if isinstance(value, Tensor) else value
    x.data[_index_arrays(index, backend.xp_of(x.data))] = v
    x._bump_version()


def inplace_(x, other, ufunc):
    """``x += other`` and friends: modify ``x``'s data and bump its version (differentiably, by
    rebasing x's history as torch does, when recording and x or ``other`` requires grad)."""
    if _records_in_place(x, other):
        return rebase_in_place(x, lambda old: _OUT_OF_PLACE[ufunc](old, other), f"in-place {ufunc}",
                               keep_old=ufunc not in ("add", "subtract"))
    _in_place(f"in-place {ufunc}")
    o = other.data if isinstance(other, Tensor) else other
    if isinstance(other, Tensor) and other.device != x.device:
        raise RuntimeError(f"in-place {ufunc}: tensors are on different devices ('{x.device}' and '{other.device}')")
    xp = backend.xp_of(x.data)
    if ufunc in ("multiply", "divide", "floor_divide") and _half_by_scalar(x, other):  # the scalar at float32
        o = xp.asarray(o, dtype=numpy.float32)
    if ufunc in ("floor_divide", "remainder") and x.dtype.kind in "biu" and bool((xp.asarray(o) == 0).any()):
        raise RuntimeError("ZeroDivisionError: integer division or remainder by zero")  # NumPy gives 0
    try:
        getattr(xp, ufunc)(x.data, o, out=x.data, casting="same_kind")
    except ValueError as e:
        raise OpError(f"in-place {ufunc}: {x.shape} and {getattr(o, 'shape', ())}: {e}") from None
    except TypeError as e:  # e.g. a float result into an int tensor
        raise DTypeError(f"in-place {ufunc}: {e}") from None
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
    if x.requires_grad and dtype.kind not in "fc" and dtype.name != "bfloat16":
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
        if x.ndim == 0:
            raise RuntimeError(f"linear: the input is 0-d (a scalar); it needs at least 1 dimension whose last "
                               f"size is in_features={weight.shape[1]} (reshape it, e.g. x.reshape(1, -1))")
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input {x.shape} does not match weight {weight.shape} "
                             f"(in_features {weight.shape[1]})")
        if x.dtype != weight.dtype:
            raise DTypeError(f"linear: input dtype {x.dtype} differs from weight dtype {weight.dtype}; cast the "
                             f"input (x.float() for float32: NumPy arrays default to float64) or the model")
        self.save_for_backward(x, weight)
        if x.ndim != 2:
            y = x @ weight.T
        elif backend.capturing:
            y = _matmul_arrays(x, weight.T)
        elif _transposed_first(x, weight):  # same dot products; OpenBLAS runs this orientation of
            y = (weight @ x.T).T            # a large (out, in) weight ~1.4x faster for small batches
        else:
            y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def replay_source(x, weight, bias=None, arrays=(), saved=(), dying=()):
        if arrays[0].ndim != 2 or bias is None or saved:
            return None
        # y += bias as forward, by the ndarray's own in-place add (its C slot: no Python frame in between)
        if _transposed_first(arrays[0], arrays[1]):  # as forward
            return f"(({weight} @ {x}.T).T).__iadd__({bias})"
        return f"({x} @ {weight}.T).__iadd__({bias})"

    def backward(self, gy):
        x, weight = self.saved_tensors
        need = self.needs_input_grad
        gx = matmul(gy, weight) if need[0] else None
        gw = gb = None
        if need[1]:
            g2 = gy if gy.ndim == 2 else reshape(gy, (-1, gy.shape[-1]))
            x2 = x if x.ndim == 2 else reshape(x, (-1, x.shape[-1]))
            # in the weight's own memory order: (x^T gy)^T for a weight stored (in, out)
            gw = matmul(x2.mT, g2).mT if _stored_transposed(weight.data) else matmul(g2.mT, x2)
        if len(need) > 2 and need[2]:
            gb = sum_to(gy, (gy.shape[-1],))
        return gx, gw, gb


def _stored_transposed(w):
    """Whether a 2-D weight is stored (in, out) in memory, as ``nn.Linear`` keeps it on the CPU."""
    return type(w) is numpy.ndarray and w.ndim == 2 and w.flags.f_contiguous and not w.flags.c_contiguous


def _transposed_first(x, w):
    """Whether ``(w @ x.T).T`` beats ``x @ w.T``: a large row-major (out, in) NumPy weight and a
    small batch; a weight stored (in, out) makes ``x @ w.T`` a plain row-major GEMM instead."""
    return type(w) is numpy.ndarray and w.size >= 16384 and x.shape[0] <= 64 and w.flags.c_contiguous


def linear(x, weight, bias=None):
    if isinstance(weight, Tensor) and weight.ndim != 2 or \
            isinstance(bias, Tensor) and isinstance(weight, Tensor) and tuple(bias.shape) != weight.shape[:1]:
        # torch's other forms: a 1-D weight (x @ w) and a bias that broadcasts (shape () or (1,)); the Linear op's
        # backward takes (out, in) weights and (out,) biases (a () bias crashed backward)
        if weight.ndim < 2 and bias is not None:
            raise OpError(f"linear: a bias needs a 2-D weight (out, in), got a {weight.ndim}-D weight (as torch)")
        y = matmul(x, weight if weight.ndim < 2 else _matrix_transpose(weight))
        return y if bias is None else y + bias
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)


# =============================================================================================
# ==== API breadth (issue 13): the everyday torch ops, each forward next to its backward ====
# =============================================================================================
# Everything here is written against the array API shared by NumPy and CuPy (``xp``), so
# each op runs on both backends. Ops whose derivative is zero almost everywhere (floor,
# ceil, round, sign) return a zero gradient, as torch does; comparisons, logical and
# bitwise ops, argsort and friends carry no gradient at all.
import math  # noqa: E402
import weakref  # noqa: E402


def _t(x, like=None):
    """``x`` as a Tensor (Python scalars take ``like``'s dtype and device)."""
    return x if isinstance(x, Tensor) else as_tensor(x, like=like)


class _Unary(Function):
    """Shared __init__ for unary ops with a constant parameter."""
    def __init__(self, *params):
        self.params = params


class Sin(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.xp_of(x).sin(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy * cos(x)


class Cos(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.xp_of(x).cos(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return -(gy * sin(x))


class Exp2(Function):
    def forward(self, x):
        y = backend.xp_of(x).exp2(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * y * math.log(2.0)


class Log2(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return backend.xp_of(x).log2(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy / (x * math.log(2.0))


class Log10(Function):
    def forward(self, x):
        self.save_for_backward(x)
        xp = backend.xp_of(x)
        if x.dtype == numpy.float32 and xp is numpy:
            # NumPy's float32 log10 is 1 ulp off at most powers of ten (log10(1000) = 3.0000002, log10(1e-3) =
            # -3.0000002: ceil/floor of it counted a digit too many); in float64 it rounds as torch's
            return xp.log10(x.astype(numpy.float64)).astype(numpy.float32)
        return xp.log10(x)

    def backward(self, gy):
        x, = self.saved_tensors
        return gy / (x * math.log(10.0))


class Rsqrt(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        y = xp.reciprocal(xp.sqrt(x))
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return gy * (y * y * y) * -0.5


class Piecewise(_Unary):
    """floor/ceil/round/sign/trunc: constant between jumps, so the gradient is zero (as in torch)."""
    def forward(self, x):
        func, kwargs = self.params
        xp = backend.xp_of(x)
        y = getattr(xp, func)(x, **kwargs)
        if func == "sign" and x.dtype.kind == "f":  # torch.sign(nan) is 0
            y = xp.where(xp.isnan(x), x.dtype.type(0), y)
        return y

    def backward(self, gy):
        return zeros_like_array(gy)


def _float_op(cls, x, name):
    x = _t(x)
    if x.dtype.kind not in "fc":
        x = astype(x, _default_float())
    return cls()(x)


def _default_float():
    from gradflow.tensor import get_default_dtype
    return get_default_dtype()


def sin(x):
    return _float_op(Sin, x, "sin")


def cos(x):
    return _float_op(Cos, x, "cos")


def exp2(x):
    return _float_op(Exp2, x, "exp2")


def log2(x):
    return _float_op(Log2, x, "log2")


def log10(x):
    return _float_op(Log10, x, "log10")


def rsqrt(x):
    return _float_op(Rsqrt, x, "rsqrt")


def _piecewise(x, func, **kwargs):
    x = _t(x)
    if x.dtype.kind not in "fc" and func != "sign":
        return x  # integer floor/ceil/round are the identity in torch (a copy there; harmless here)
    if x.dtype == bool:
        return x
    return Piecewise(func, kwargs)(x)


def floor(x):
    return _piecewise(x, "floor")


def ceil(x):
    return _piecewise(x, "ceil")


def trunc(x):
    return _piecewise(x, "trunc")


def round(x, decimals=0):
    """Round half to even, as ``torch.round`` (``decimals`` digits after the point)."""
    return _piecewise(x, "round", decimals=decimals) if decimals else _piecewise(x, "round")


def sign(x):
    return _piecewise(x, "sign")


def isnan(x):
    return NonDifferentiable("isnan")(_t(x))


def isinf(x):
    return NonDifferentiable("isinf")(_t(x))


def isfinite(x):
    return NonDifferentiable("isfinite")(_t(x))


def _bitwise(a, b, func):
    a, b = _pair(a, b)
    for x in (a, b):
        if x.dtype.kind not in "biu":
            raise DTypeError(f"{func} is only supported for integer and bool tensors, got dtype {x.dtype}")
    return NonDifferentiable(func)(a, b)


def bitwise_and(a, b):
    return _bitwise(a, b, "bitwise_and")


def bitwise_or(a, b):
    return _bitwise(a, b, "bitwise_or")


def bitwise_xor(a, b):
    return _bitwise(a, b, "bitwise_xor")


def bitwise_not(x):
    x = _t(x)
    if x.dtype.kind not in "biu":
        raise DTypeError(f"bitwise_not is only supported for integer and bool tensors, got dtype {x.dtype}")
    return NonDifferentiable("invert")(x)


def logical_not(x):
    return NonDifferentiable("logical_not")(_t(x))


def logical_and(a, b):
    return NonDifferentiable("logical_and")(*_pair(a, b))


def logical_or(a, b):
    return NonDifferentiable("logical_or")(*_pair(a, b))


class Remainder(Function):
    """a mod b with the sign of b (Python's %, torch.remainder): d/da = 1, d/db = -floor(a / b)."""
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return backend.xp_of(a).remainder(a, b)

    def backward(self, gy):
        a, b = self.saved_tensors
        ga = _unbroadcast(gy, a.shape) if self.needs_input_grad[0] else None
        gb = None
        if self.needs_input_grad[1]:
            q = Tensor._wrap(backend.xp_of(a.data).floor_divide(a.data, b.data))
            gb = _unbroadcast(-gy * q, b.shape)
        return ga, gb


def _check_int_divisor(a, b):
    """Integer x // 0 and x % 0 are 0 in NumPy, a silent wrong number: raise as PyTorch does."""
    if a.dtype.kind in "biu" and bool((b.data == 0).any()):
        raise RuntimeError("ZeroDivisionError: integer division or remainder by zero")


def remainder(a, b):
    a, b = _pair(a, b)
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return Remainder()(a, b)
    _check_int_divisor(a, b)
    return NonDifferentiable("remainder")(a, b)



def floor_divide(a, b):
    """a // b rounded toward minus infinity (torch.floor_divide); carries no gradient."""
    if _half_by_scalar(a, b):  # x16 // 0.1: 0.1 at float32, as torch's div kernel (gave 5 for 0.5, torch 4)
        return _in_float32(floor_divide, a, b)
    a, b = _pair(a, b)
    _check_int_divisor(a, b)
    return NonDifferentiable("floor_divide")(a, b)


class RoundedDivide(Function):
    """a / b of float tensors rounded toward minus infinity ('floor', as Python's //) or toward
    zero ('trunc'): torch.div with ``rounding_mode``. Piecewise constant, so its gradient is
    zero -- and, as in PyTorch, that is a gradient: the result requires grad and backward
    gives zeros (a model ported from PyTorch that divides with a rounding mode trains, and
    its parameters get a .grad, as there)."""
    def __init__(self, mode):
        self.mode = mode

    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        xp = backend.xp_of(a)
        return xp.floor_divide(a, b) if self.mode == "floor" else xp.trunc(xp.divide(a, b))

    def backward(self, gy):
        xp = backend.xp_of(gy.data)
        return tuple(Tensor._wrap(xp.zeros(shape, gy.dtype)) if need else None
                     for shape, need in zip(self.shapes, self.needs_input_grad))


def true_divide(a, b, rounding_mode=None):
    """torch.div: ``rounding_mode`` None (true division), 'trunc' or 'floor'."""
    if rounding_mode not in (None, "trunc", "floor"):
        raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found "
                         f"{rounding_mode!r}")
    if rounding_mode is None:
        return div(a, b)
    if _half_by_scalar(a, b):
        return _in_float32(lambda x, y: true_divide(x, y, rounding_mode), a, b)
    a, b = _pair(a, b)
    if a.dtype.kind == "f":
        return RoundedDivide(rounding_mode)(a, b)
    if rounding_mode == "floor":
        return floor_divide(a, b)
    _check_int_divisor(a, b)
    q = NonDifferentiable("trunc")(NonDifferentiable("divide")(a, b))
    return astype(q, a.dtype) if a.dtype.kind in "iu" else q


# ---- reductions: all / any / prod / cumsum / cumprod / logsumexp / norm -----------------------
def _all_any(kind, x, dim, keepdim):
    x = _t(x)
    y = NonDifferentiable(kind, axis=dim, keepdims=keepdim)(x)
    return astype(y, numpy.uint8) if x.dtype == numpy.uint8 else y  # torch keeps uint8 (bool otherwise)


def reduce_all(x, dim=None, keepdim=False):
    """torch.all (named so it does not shadow Python's all() in this module)."""
    return _all_any("all", x, dim, keepdim)


def reduce_any(x, dim=None, keepdim=False):
    """torch.any."""
    return _all_any("any", x, dim, keepdim)


def _scan_accumulator(dtype, xp):
    """The dtype torch's cumsum/cumprod accumulate ``dtype`` in (at::acc_type): on the CPU float32 in
    float64, float16/bfloat16 in float32 everywhere. A scan in the tensor's own dtype drifts along a
    row (the float16 cumsum of 100 normal values was off by up to 9 %, float32 ones by 1e-4 relative)."""
    if dtype == numpy.float32 and xp is numpy:
        return numpy.dtype(numpy.float64)
    if _is_half(dtype):
        return numpy.dtype(numpy.float32)
    return None


def _scan(name, x, axis, dtype):
    xp = backend.xp_of(x)
    acc = _scan_accumulator(dtype, xp)
    if acc is None:
        return getattr(xp, name)(x, axis=axis, dtype=dtype)
    return getattr(xp, name)(x.astype(acc), axis=axis).astype(dtype)


class CumSum(_Unary):
    def forward(self, x):
        axis, dtype = self.params
        return _scan("cumsum", x, axis, dtype)

    def backward(self, gy):
        axis, _ = self.params
        return flip(cumsum(flip(gy, axis), axis), axis)  # the reverse cumulative sum


def _accumulating_dtype(x, dtype):
    if dtype is not None:
        return numpy.dtype(dtype)
    return numpy.dtype(numpy.int64) if x.dtype.kind in "biu" else x.dtype


def cumsum(x, dim, dtype=None):
    x = _t(x)
    dim = _dim(dim, x.ndim)
    if x.ndim == 0:
        return astype(x, _accumulating_dtype(x, dtype))
    return CumSum(dim, _accumulating_dtype(x, dtype))(x)


class CumProd(_Unary):
    """Cumulative product. Backward is exact with zeros: before the first zero of a row
    gx = revcumsum(gy * y) / x; at the first zero it is revcumsum(gy * cumprod(x with that
    zero replaced by 1)); after it, every partial product holds the zero, so gx = 0."""
    def forward(self, x):
        axis, dtype = self.params
        y = _scan("cumprod", x, axis, dtype)
        self.save_for_backward(x, y)
        return y

    def backward(self, gy):
        x, y = self.saved_tensors
        axis, _ = self.params
        xp = backend.xp_of(x.data)
        zero = x.data == 0
        first_zero = zero & (xp.cumsum(zero, axis=axis) == 1)
        safe = where(zero, 1.0, x)
        rev = flip(cumsum(flip(gy * y, axis), axis), axis)
        g = where(zero, 0.0, rev / safe)
        if xp is not numpy or first_zero.any():  # (no host sync on the GPU)
            y1 = cumprod(where(first_zero, 1.0, x), axis)
            at_zero = flip(cumsum(flip(gy * y1, axis), axis), axis)
            g = g + where(first_zero, at_zero, 0.0)
        return g


def cumprod(x, dim, dtype=None):
    x = _t(x)
    dim = _dim(dim, x.ndim)
    if x.ndim == 0:
        return astype(x, _accumulating_dtype(x, dtype))
    return CumProd(dim, _accumulating_dtype(x, dtype))(x)


def _exclusive_cumprod(x, axis):
    """[1, x0, x0 x1, ...] along ``axis`` (the product of the elements before each one)."""
    n = x.shape[axis]
    ones_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
    ones = Tensor._wrap(backend.xp_of(x.data).ones(ones_shape, dtype=x.dtype))
    if n == 1:
        return ones
    head = getitem(x, (slice(None),) * axis + (slice(0, n - 1),))
    return concatenate([ones, cumprod(head, axis)], axis)


class Prod(_Unary):
    """Product over one axis (or all); the gradient of each element is the product of the
    others, left and right exclusive cumulative products, exact when elements are zero."""
    def forward(self, x):
        axis, keepdim = self.params
        self.x_shape = x.shape
        # an int dtype stays (NumPy widens int32 and narrower to int64; prod(dtype=int32) is int32 in torch)
        dtype = x.dtype if x.dtype.kind in "iu" else None
        return backend.xp_of(x).asarray(x.prod(axis=axis, keepdims=keepdim, dtype=dtype))

    def backward(self, gy):
        x, = self.inputs
        axis, keepdim = self.params
        if x.data.size == 0:  # nothing to differentiate (torch: an empty gradient)
            return zeros_like_array(x)
        if axis is None:
            flat = reshape(x, (-1,))
            others = _exclusive_cumprod(flat, 0) * flip(_exclusive_cumprod(flip(flat, 0), 0), 0)
            return reshape(others, x.shape) * gy
        others = _exclusive_cumprod(x, axis) * flip(_exclusive_cumprod(flip(x, axis), axis), axis)
        if not keepdim:
            gy = unsqueeze(gy, axis)
        return others * gy


def prod(x, dim=None, keepdim=False, dtype=None):
    x = _t(x)
    if dtype is not None:
        x = astype(x, dtype)
    elif x.dtype.kind in "biu":
        x = astype(x, numpy.int64)
    if dim is not None:
        dim = _dim(dim, x.ndim)
    if x.ndim == 0:
        return x
    return Prod(dim, keepdim)(x)


def logsumexp(x, dim, keepdim=False):
    """log(sum(exp(x))) along ``dim``, shifted by the (detached) max so it cannot overflow."""
    x = _t(x)
    if x.dtype.kind not in "fc":
        x = astype(x, _default_float())
    xp = backend.xp_of(x.data)
    axes = _axes(dim, x.ndim)
    with numpy.errstate(invalid="ignore"):
        m = x.data.max(axis=axes, keepdims=True) if x.data.size else xp.zeros((1,) * x.ndim, x.dtype)
        m = xp.where(xp.isinf(m), x.dtype.type(0), m)
    shift = Tensor._wrap(m)
    y = log(sum(exp(x - shift), axes, keepdims=True)) + shift
    return y if keepdim else squeeze(y, axes) if axes else y


class Norm(_Unary):
    """The vector p-norm over ``axes`` (``torch.linalg.vector_norm``): sum(|x|^p)^(1/p), the largest
    (smallest) |x| for p = inf (-inf), the count of nonzeros for p = 0.

    One op with torch's gradient formula for each p, not the chain rule through abs, pow and sum:
    that rule meets 0 * inf where the norm or an element is 0 (a zero row of ``F.normalize(x, p=1)``
    got a NaN gradient), where torch's formula gives 0. The output is saved as itself, so double
    backward sees the norm's dependence on x."""
    def forward(self, x):
        p, axes, keepdim = self.params
        xp = backend.xp_of(x)
        if numpy.isinf(p) and builtins.any(x.shape[a] == 0 for a in axes):
            raise RuntimeError(f"norm: cannot compute the {p} norm over an empty dimension (shape {x.shape}): "
                               f"a max or min of no elements has no value")
        x0, half = x, _is_half(x.dtype)
        if half:  # as torch: accumulate in float32 (the norm of float16 [300, 300] was inf, torch 424.2)
            x = x.astype(numpy.float32)
        with numpy.errstate(divide="ignore", over="ignore"):  # |0| ** (p < 0) is inf, as in torch
            if p == 2:
                y = xp.sqrt((x * x).sum(axis=axes, keepdims=True))
            elif p == 1:
                y = xp.abs(x).sum(axis=axes, keepdims=True)
            elif p == 0:
                y = (x != 0).sum(axis=axes, keepdims=True).astype(x.dtype)
            elif numpy.isinf(p):
                y = (xp.abs(x).max if p > 0 else xp.abs(x).min)(axis=axes, keepdims=True)
            else:
                y = (xp.abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p)
        if not keepdim:
            y = y.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axes))
        if half:
            x, y = x0, y.astype(x0.dtype)
        self.save_for_backward(x, y)
        return y

    def backward(self, gy):
        x, y = self.saved_tensors
        p, axes, keepdim = self.params
        if p == 0:
            return None  # a count: no gradient (torch's is undefined, so a leaf's .grad stays None)
        if not keepdim:
            gy = reshape(gy, _kept_shape(x.shape, axes))
            y = reshape(y, _kept_shape(x.shape, axes))
        xp = backend.xp_of(x.data)
        # sign(x) as an op of x (its derivative is 0, as torch's sgn), not a constant: the gradient of p=1
        # and inf (sign(x) times gy) then has a graph even where gy has none, so it can be differentiated
        # again (create_graph), giving 0 there as torch's (backward raised: the gradient required no grad)
        sgn = sign(x)  # 0 at 0 and NaN
        if p == 1:
            return sgn * gy
        zero = Tensor._wrap(y.data == 0)
        if p == 2:
            return gy * where(zero, 0.0, x / where(zero, 1.0, y))
        if numpy.isinf(p):  # amax/amin of |x|: ties (and NaNs) share the gradient
            absx = xp.abs(x.data)
            hit = ((absx == y.data) | xp.isnan(absx)).astype(x.dtype)
            return sgn * (gy / Tensor._wrap(hit.sum(axis=axes, keepdims=True)) * Tensor._wrap(hit))
        if p < 1:  # |x| ** (p - 1) is inf at x = 0: that element's gradient is 0
            at_zero = Tensor._wrap(x.data == 0)
            scaled = sgn * where(at_zero, 0.0, where(at_zero, 1.0, abs(x)) ** (p - 1))
            return scaled * gy * y ** (1 - p)
        scaled = sgn * abs(x) ** (p - 1) if p < 2 else x * abs(x) ** (p - 2)
        return scaled * where(zero, 0.0, gy / where(zero, 1.0, y ** (p - 1)))  # 0 where the norm is 0


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    """Vector norm (p = 2/'fro'/None, 1, inf, -inf, 0 or any real) over ``dim`` (all elements by default)."""
    x = _t(x)
    if dtype is not None:
        x = astype(x, dtype)
    if x.dtype.kind not in "fc":
        raise RuntimeError(f"norm(): input dtype should be floating point, but got {x.dtype}")
    axes = _axes(dim, x.ndim)
    if p is None or p == "fro":
        p = 2
    elif p in ("inf", "-inf"):
        p = float(p)
    elif isinstance(p, str):
        raise ValueError(f"norm: unsupported p={p!r} (gradflow has the vector norms and 'fro', not 'nuc')")
    return Norm(float(p), axes, keepdim)(x)


# ---- sorting and selection -----------------------------------------------------------------------
_SORT_RESULT, _TOPK_RESULT = _return_type("sort"), _return_type("topk")


def _argsort_array(a, axis, descending, stable=True):
    xp = backend.xp_of(a)
    if not descending:
        return xp.argsort(a, axis=axis, kind="stable") if xp is numpy else xp.argsort(a, axis=axis)
    # descending and stable: sort the reversed array ascending, then reverse back
    n = a.shape[axis]
    rev = xp.flip(a, axis)
    idx = xp.argsort(rev, axis=axis, kind="stable") if xp is numpy else xp.argsort(rev, axis=axis)
    return (n - 1) - xp.flip(idx, axis)


def argsort(x, dim=-1, descending=False, stable=False):
    x = _t(x)
    if x.ndim == 0:
        return Tensor._wrap(backend.xp_of(x.data).zeros((), numpy.int64))
    dim = _dim(dim, x.ndim)
    return Tensor._wrap(_argsort_array(x.data, dim, descending).astype(numpy.int64))


def sort(x, dim=-1, descending=False, stable=False):
    """(values, indices) sorted along ``dim``; values carry the gradient through gather."""
    x = _t(x)
    if x.ndim == 0:
        return _SORT_RESULT(x, argsort(x))
    idx = argsort(x, dim, descending)
    return _SORT_RESULT(gather(x, dim, idx), idx)


def topk(x, k, dim=-1, largest=True, sorted=True):
    x = _t(x)
    dim = _dim(dim, x.ndim)
    n = x.shape[dim] if x.ndim else 1
    if not 0 <= k <= n:
        raise RuntimeError(f"topk: k ({k}) is out of range for dimension {dim} of size {n}")
    if x.ndim == 0:
        return _TOPK_RESULT(x, argsort(x))
    idx = argsort(x, dim, descending=largest)
    idx = getitem(idx, (slice(None),) * dim + (slice(0, k),))
    return _TOPK_RESULT(gather(x, dim, idx), idx)


# ---- gather / scatter ----------------------------------------------------------------------------
def _full_index(index, dim):
    """Advanced-index tuple that addresses ``out[..., index[i, j, k], ...]`` along ``dim``."""
    xp = backend.xp_of(index)
    idx = []
    for d, s in enumerate(index.shape):
        if d == dim:
            idx.append(index)
        else:
            idx.append(xp.arange(s).reshape([-1 if k == d else 1 for k in range(index.ndim)]))
    return tuple(idx)


def _add_at(target, index_tuple, values):
    xp = backend.xp_of(target)
    if xp is numpy:
        numpy.add.at(target, index_tuple, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index_tuple, values)


class IndexOutOfRangeError(IndexError, RuntimeError):
    """An index outside a dimension: Python's IndexError that is also the RuntimeError PyTorch raises."""


def _check_index(x, dim, index, name, src=None):
    if index.dtype.kind not in "iu":
        raise RuntimeError(f"{name}(): Expected dtype int64 for index, got {index.dtype}")
    if index.ndim != x.ndim:
        raise RuntimeError(f"{name}(): Index tensor must have the same number of dimensions as input tensor "
                           f"({index.ndim} vs {x.ndim})")
    for d in range(x.ndim):
        if d != dim and index.shape[d] > x.shape[d]:
            raise RuntimeError(f"{name}(): Size does not match at dimension {d}: index {index.shape} and "
                               f"input {x.shape}")
        if src is not None and index.shape[d] > src.shape[d]:
            raise RuntimeError(f"{name}(): index {index.shape} is larger than src {src.shape} at dimension {d}")
    if index.size:
        lo, hi = int(index.min()), int(index.max())
        n = x.shape[dim] if x.ndim else 1
        if lo < 0 or hi >= n:  # torch refuses negative indices here too (NumPy would wrap them silently)
            raise IndexOutOfRangeError(f"{name}(): index {hi if hi >= n else lo} is out of bounds for dimension "
                                       f"{dim} with size {n}")


class Gather(_Unary):
    def forward(self, x, index):
        dim, = self.params
        self.x_shape = x.shape
        return x[_full_index(index, dim)]

    def backward(self, gy):
        _, index = self.inputs
        dim, = self.params
        return ScatterAddInto(dim, self.x_shape)(index, gy), None


class ScatterAddInto(_Unary):
    """zeros(shape) with ``src`` added at ``index`` along ``dim``: gather's adjoint."""
    def forward(self, index, src):
        dim, shape = self.params
        out = backend.xp_of(src).zeros(shape, dtype=src.dtype)
        _add_at(out, _full_index(index, dim), src[tuple(slice(0, s) for s in index.shape)])
        return out

    def backward(self, gout):
        index, _ = self.inputs
        dim, _ = self.params
        return None, gather(gout, dim, index)


def gather(x, dim, index, *, sparse_grad=False):
    x = _t(x)
    index = _t(index) if isinstance(index, Tensor) else Tensor._wrap(backend.xp_of(x.data).asarray(index))
    dim = _dim(dim, x.ndim)
    _check_index(x, dim, index.data, "gather")
    return Gather(dim)(x, index)


class Scatter(_Unary):
    """out = x with ``src`` written at ``index`` along ``dim`` (reduce=None) or added (reduce='add')."""
    def forward(self, x, index, src):
        dim, add = self.params
        out = x.copy()
        sub = src[tuple(slice(0, s) for s in index.shape)] if src.ndim else src
        where_ = _full_index(index, dim)
        if add:
            _add_at(out, where_, sub)
        else:
            out[where_] = sub
        return out

    def backward(self, gy):
        x, index, src = self.inputs
        dim, add = self.params
        gx = gsrc = None
        if self.needs_input_grad[0]:
            if add:
                gx = gy
            else:
                kept = backend.xp_of(gy.data).ones(gy.shape, dtype=gy.dtype)
                kept[_full_index(index.data, dim)] = 0
                gx = gy * Tensor._wrap(kept)
        if self.needs_input_grad[2]:
            g = gather(gy, dim, index)
            if g.shape != src.shape:  # src larger than index: the unused part gets zero
                pad = backend.xp_of(gy.data).zeros(src.shape, dtype=gy.dtype)
                gsrc = setitem_grad(pad, tuple(slice(0, s) for s in index.shape), g)
            else:
                gsrc = g
        return gx, None, gsrc


def setitem_grad(base_zeros, index, g):
    """zeros with ``g`` placed at ``index`` (differentiable in g)."""
    return GetItemGrad(index, base_zeros.shape)(g)


def _scatter(x, dim, index, src, value, add, name):
    x = _t(x)
    index = _t(index) if isinstance(index, Tensor) else Tensor._wrap(backend.xp_of(x.data).asarray(index))
    dim = _dim(dim, x.ndim)
    if src is None:
        if value is None:
            raise TypeError(f"{name}(): expected src or value")
        src = Tensor._wrap(backend.xp_of(x.data).asarray(value, dtype=x.dtype))
    else:
        src = _t(src, like=x)
        if src.dtype != x.dtype:
            raise RuntimeError(f"{name}(): Expected self.dtype to be equal to src.dtype ({x.dtype} vs {src.dtype})")
    _check_index(x, dim, index.data, name, src if src.ndim else None)
    return Scatter(dim, add)(x, index, src)


def scatter(x, dim, index, src=None, value=None, reduce=None):
    if reduce not in (None, "add"):
        raise ValueError(f"scatter(): reduce must be None or 'add', got {reduce!r}")
    if src is not None and not isinstance(src, Tensor) and not hasattr(src, "shape"):
        src, value = None, src  # scatter(dim, index, 1.5): a scalar source
    return _scatter(x, dim, index, src, value, reduce == "add", "scatter")


def scatter_add(x, dim, index, src):
    return _scatter(x, dim, index, src, None, True, "scatter_add")


def masked_fill(x, mask, value):
    """x with ``value`` where ``mask`` (bool, broadcastable) is True; the gradient flows to x elsewhere."""
    x = _t(x)
    m = mask.data if isinstance(mask, Tensor) else backend.xp_of(x.data).asarray(mask)
    if m.dtype != bool:
        raise RuntimeError(f"masked_fill only supports boolean masks, but got mask with dtype {m.dtype}")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise RuntimeError(f"masked_fill only supports a 0-dimensional value tensor, but got one with "
                               f"{value.ndim} dimension(s)")
        v = astype(value, x.dtype)
    else:
        v = Tensor._wrap(backend.xp_of(x.data).asarray(value, dtype=x.dtype))
    out = where(Tensor._wrap(m), v, x)
    return out if out.shape == x.shape else broadcast_to(out, x.shape)


# ---- reshaping, tiling, reordering ---------------------------------------------------------------
class Flip(_Unary):
    def forward(self, x):
        dims, = self.params
        return backend.xp_of(x).flip(x, axis=dims).copy()  # torch.flip returns a new tensor

    def backward(self, gy):
        return flip(gy, self.params[0])


def flip(x, dims):
    x = _t(x)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(_dim(d, x.ndim) for d in dims)
    if x.ndim == 0 or not dims:
        return x
    return Flip(dims)(x)


class Roll(_Unary):
    def forward(self, x):
        shifts, dims = self.params
        return backend.xp_of(x).roll(x, shifts, axis=dims)

    def backward(self, gy):
        shifts, dims = self.params
        neg = -shifts if isinstance(shifts, int) else tuple(-s for s in shifts)
        return roll(gy, neg, dims)


def roll(x, shifts, dims=None):
    x = _t(x)
    if dims is not None:
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
        if len(shifts) != len(dims):
            raise RuntimeError(f"roll: shifts and dimensions must align: shifts {len(shifts)}, dims {len(dims)}")
    return Roll(shifts, dims)(x)


class Repeat(_Unary):
    """torch's repeat is numpy's tile; the gradient sums the copies back together."""
    def forward(self, x):
        reps, = self.params
        self.x_shape = x.shape
        return backend.xp_of(x).tile(x, reps)

    def backward(self, gy):
        reps, = self.params
        padded = (1,) * (len(reps) - len(self.x_shape)) + tuple(self.x_shape)
        inter = []
        for r, n in zip(reps, padded):
            inter += [r, n]
        g = sum(reshape(gy, tuple(inter)), tuple(range(0, 2 * len(reps), 2)))
        return reshape(g, self.x_shape)


def repeat(x, *sizes):
    x = _t(x)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and not isinstance(sizes[0], int) else tuple(sizes)
    if len(sizes) < x.ndim:
        raise RuntimeError(f"Number of dimensions of repeat dims ({len(sizes)}) can not be smaller than number "
                           f"of dimensions of tensor ({x.ndim})")
    return Repeat(sizes)(x)


class IndexSelect(_Unary):
    """x's slices along ``dim`` picked by a 1-d int ``index`` (repeats allowed): y = take(x, index, dim).

    Backward adds each output slice's gradient back into the slice it was copied from, so an
    index that appears k times gets k contributions (torch's index_select backward, an index_add)."""
    def forward(self, x, index):
        dim, = self.params
        self.x_shape = x.shape
        return backend.xp_of(x).take(x, index, axis=dim)

    def backward(self, gy):
        _, index = self.inputs
        dim, = self.params
        return IndexAddInto(dim, self.x_shape)(index, gy), None


class IndexAddInto(_Unary):
    """zeros(shape) with slice i of ``src`` along ``dim`` added at slice index[i]: IndexSelect's adjoint."""
    def forward(self, index, src):
        dim, shape = self.params
        out = backend.xp_of(src).zeros(shape, dtype=src.dtype)
        _add_at(out, (slice(None),) * dim + (index,), src)
        return out

    def backward(self, gout):
        index, _ = self.inputs
        dim, _ = self.params
        return None, IndexSelect(dim)(gout, index)


class IndexAdd(_Unary):
    """out = x, then out[..., index[i], ...] += alpha * source[..., i, ...] along ``dim`` (torch's index_add).

    Repeated indices accumulate (an add-at, not a store). Backward: x's gradient passes through
    unchanged, source's is alpha * the gradient's slices at ``index`` (an IndexSelect)."""
    def forward(self, x, index, src):
        dim, alpha = self.params
        out = x.copy()
        _add_at(out, (slice(None),) * dim + (index,), src if alpha == 1 else src * alpha)
        return out

    def backward(self, gy):
        _, index, _ = self.inputs
        dim, alpha = self.params
        gsrc = None
        if self.needs_input_grad[2]:
            gsrc = IndexSelect(dim)(gy, index)
            if alpha != 1:
                gsrc = gsrc * alpha
        return (gy if self.needs_input_grad[0] else None), None, gsrc


_TORCH_DTYPE_NAMES = {"float32": "Float", "float64": "Double", "float16": "Half", "int64": "Long", "int32": "Int",
                      "int16": "Short", "int8": "Char", "uint8": "Byte", "bool": "Bool"}


def _index_add_args(x, dim, index, source, name):
    """Check index_add's arguments as torch does; returns (x, dim, index (k,), source) with a 0-d x,
    index and source made 1-d (the caller reshapes the result back)."""
    xp = backend.xp_of(x.data)
    dim = _dim(dim, x.ndim)
    index = index.data if isinstance(index, Tensor) else xp.asarray(index)
    source = _t(source, like=x)
    if index.dtype.kind not in "iu":
        raise RuntimeError(f"{name}(): Expected dtype int32/int64 for index but got: "
                           f"{_TORCH_DTYPE_NAMES.get(index.dtype.name, index.dtype.name)}")
    if index.ndim > 1:
        raise IndexError(f"{name}(): Index is supposed to be a vector, but got dim: {index.ndim} with size: "
                         f"{list(index.shape)}")
    if source.dtype != x.dtype:
        raise RuntimeError(f"{name}(): self ({_TORCH_DTYPE_NAMES.get(x.dtype.name, x.dtype.name)}) and source "
                           f"({_TORCH_DTYPE_NAMES.get(source.dtype.name, source.dtype.name)}) must have the same "
                           f"scalar type")
    if source.device != x.device:
        raise RuntimeError(f"{name}(): source is on '{source.device}' but self is on '{x.device}'")
    index = index.reshape(-1)
    if x.ndim == 0 or (x.ndim == 1 and source.ndim == 0):  # a 0-d source counts as one slice, as torch's
        x1, s1 = reshape(x, (-1,)), reshape(source, (-1,))
    else:
        x1, s1 = x, source
    if s1.ndim != x1.ndim or s1.shape[:dim] + s1.shape[dim + 1:] != x1.shape[:dim] + x1.shape[dim + 1:]:
        raise RuntimeError(f"source tensor shape must match self tensor shape, excluding the specified dimension. "
                           f"Got self.shape = {list(x.shape)} source.shape = {list(source.shape)}")
    if index.shape[0] != s1.shape[dim]:
        raise RuntimeError(f"{name}(): Number of indices ({index.shape[0]}) should be equal to source.size(dim): "
                           f"({s1.shape[dim]}), for dim: {dim}")
    n = x1.shape[dim]
    if index.size:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= n:  # torch refuses negative indices (NumPy would wrap them)
            raise IndexOutOfRangeError(f"index {hi if hi >= n else lo} is out of bounds for dimension {dim} "
                                       f"with size {n}")
    return x1, dim, Tensor._wrap(index.astype(numpy.int64, copy=False)), s1


def index_add(x, dim, index, source, *, alpha=1):
    """x with ``alpha * source`` slices added along ``dim`` at ``index`` (k,) (duplicates accumulate),
    as torch.index_add; differentiable w.r.t. x and source."""
    x = _t(x)
    x1, dim, index, src = _index_add_args(x, dim, index, source, "index_add_")
    out = IndexAdd(dim, alpha)(x1, index, src)
    return reshape(out, x.shape) if out.shape != x.shape else out


def index_add_(x, dim, index, source, *, alpha=1):
    """In-place index_add, versioned and recorded as gradflow's other in-place ops."""
    x1, d, idx, src = _index_add_args(x, dim, index, source, "index_add_")
    if _records_in_place(x, src):
        def compute(old):
            out = IndexAdd(d, alpha)(reshape(old, x1.shape) if old.shape != x1.shape else old, idx, src)
            return reshape(out, x.shape) if out.shape != x.shape else out
        return rebase_in_place(x, compute, "index_add_", keep_old=False)
    check_in_place(x, "index_add_")
    target = x.data if x1.shape == x.shape else x.data.reshape(x1.shape)  # 0-d: a view of the same buffer
    _add_at(target, (slice(None),) * d + (idx.data,), src.data if alpha == 1 else src.data * alpha)
    x._bump_version()
    return x


def repeat_interleave(x, repeats=None, dim=None, *, output_size=None):
    """torch.repeat_interleave: each slice of x along ``dim`` (of the flattened x when dim is None)
    repeated ``repeats`` times in place, [a, b] -> [a, a, b, b], unlike repeat/tile's [a, b, a, b].

    ``repeats`` is an int or an int tensor with one count per slice (or a single count). One
    IndexSelect with the index [0]*r0 + [1]*r1 + ..., so the gradient sums each slice's copies.
    ``repeat_interleave(counts)`` alone gives that index, as torch's."""
    if repeats is None:  # torch.repeat_interleave(repeats): arange(len) repeated
        r = x.data if isinstance(x, Tensor) else numpy.asarray(x)
        r = _repeat_counts(r, r.shape[0] if r.ndim == 1 else 1, 0, backend.xp_of(r))
        return Tensor._wrap(backend.xp_of(r).repeat(backend.xp_of(r).arange(r.shape[0]), r))
    x = _t(x)
    xp = backend.xp_of(x.data)
    if dim is None:
        x, dim = reshape(x, (-1,)), 0
    else:
        dim = _dim(dim, x.ndim)
        if x.ndim == 0:
            x = reshape(x, (1,))
    n = x.shape[dim]
    if isinstance(repeats, (bool, numpy.bool_)):
        raise TypeError("repeat_interleave(): repeats must be an int or an int tensor, got bool")
    if isinstance(repeats, (int, numpy.integer)):
        if repeats < 0:
            raise RuntimeError("repeat_interleave(): Repeats must be non-negative")
        r = xp.full(n, int(repeats), dtype=numpy.int64)
    else:
        r = _repeat_counts(repeats.data if isinstance(repeats, Tensor) else xp.asarray(repeats), n, dim, xp)
    index = xp.repeat(xp.arange(n), r)
    if output_size is not None and output_size != index.shape[0]:
        raise RuntimeError(f"repeat_interleave(): output_size {output_size} does not match the repeats' total "
                           f"{index.shape[0]}")
    return IndexSelect(dim)(x, Tensor._wrap(index))


def _repeat_counts(r, n, dim, xp):
    """Per-slice repeat counts (n,) from a 0-d or 1-d int array, checked as torch checks them."""
    if r.dtype.kind not in "iu":
        raise DTypeError(f"repeat_interleave(): repeats must hold integers, got dtype {r.dtype}")
    if r.ndim > 1:
        raise RuntimeError("repeat_interleave(): repeats must be 0-dim or 1-dim tensor")
    if r.size and int(r.min()) < 0:
        raise RuntimeError("repeat_interleave(): repeats can not be negative")
    if r.ndim == 0 or (r.shape[0] == 1 and n != 1):
        return xp.full(n, int(r.reshape(-1)[0]), dtype=numpy.int64)
    if r.shape[0] != n:
        raise RuntimeError(f"repeat_interleave(): repeats must have the same size as input along dim, but got "
                           f"repeats.size(0) = {r.shape[0]} and input.size({dim}) = {n}")
    return r.astype(numpy.int64)


def tile(x, dims):
    """torch.tile: repeat with ``dims`` left-padded by ones when it has fewer entries than x has dims
    (repeat refuses that), so tile(x, (2,)) tiles the last dim. Same op (Repeat) and gradient."""
    x = _t(x)
    dims = (dims,) if isinstance(dims, (int, numpy.integer)) else tuple(dims)
    if any(int(d) < 0 for d in dims):
        raise RuntimeError(f"tile(): Trying to create tensor with negative dimension: {list(dims)}")
    dims = (1,) * (x.ndim - len(dims)) + tuple(int(d) for d in dims)
    return Repeat(dims)(x)


class Tri(_Unary):
    def forward(self, x):
        k, upper = self.params
        xp = backend.xp_of(x)
        return xp.triu(x, k) if upper else xp.tril(x, k)

    def backward(self, gy):
        return Tri(*self.params)(gy)


def tril(x, diagonal=0):
    x = _t(x)
    if x.ndim < 2:
        raise RuntimeError(f"tril: input tensor must have at least 2 dimensions, got {x.ndim}")
    return Tri(int(diagonal), False)(x)


def triu(x, diagonal=0):
    x = _t(x)
    if x.ndim < 2:
        raise RuntimeError(f"triu: input tensor must have at least 2 dimensions, got {x.ndim}")
    return Tri(int(diagonal), True)(x)


def _narrow(x, dim, start, stop):
    return getitem(x, (slice(None),) * dim + (slice(start, stop),))


def split(x, split_size_or_sections, dim=0):
    """Pieces of ``split_size`` along ``dim`` (the last may be smaller), or of the given sizes."""
    x = _t(x)
    dim = _dim(dim, x.ndim)
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0 and n:
            raise RuntimeError(f"split expects split_size be non-negative, but got split_size={size}")
        bounds = [(s, builtins.min(s + size, n)) for s in range(0, n, builtins.max(size, 1))] or [(0, 0)]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if builtins.sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's "
                               f"size at dimension {dim}), but got split_sizes={sizes}")
        bounds, start = [], 0
        for s in sizes:
            bounds.append((start, start + s))
            start += s
    return tuple(_narrow(x, dim, a, b) for a, b in bounds)


def chunk(x, chunks, dim=0):
    x = _t(x)
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    n = x.shape[_dim(dim, x.ndim)]
    return split(x, builtins.max(-(-n // chunks), 1) if n else 1, dim)


def unbind(x, dim=0):
    x = _t(x)
    dim = _dim(dim, x.ndim)
    return tuple(getitem(x, (slice(None),) * dim + (i,)) for i in range(x.shape[dim]))


def t(x):
    x = _t(x)
    if x.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {x.ndim}D")
    return transpose(x) if x.ndim == 2 else x


class Contiguous(Function):
    def forward(self, x):
        return backend.xp_of(x).ascontiguousarray(x)

    def backward(self, gy):
        return gy


def contiguous(x):
    return x if x.data.flags.c_contiguous else Contiguous()(x)


class Clone(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return gy


def clone(x):
    return Clone()(_t(x))


def lerp(start, end, weight):
    """start + weight * (end - start), differentiable in all three, rounded as torch's kernel: from ``start``
    where |weight| < 0.5, else from ``end`` (end - (end - start) * (1 - weight)), so weight 1 gives ``end``.

    As torch, the tensors must share one float dtype (NumPy promotion returned float64 for a float32
    start with a float64 end or weight, and integers where torch raises)."""
    tensors = [t for t in (start, end, weight) if isinstance(t, Tensor)]
    if builtins.any(t.dtype != tensors[0].dtype for t in tensors):
        raise DTypeError(f"lerp: start, end and weight tensors must have one dtype, got "
                         f"{', '.join(str(t.dtype) for t in tensors)}")
    start, end = _pair(start, end)
    if start.dtype.kind not in "fc":
        raise DTypeError(f"lerp is not implemented for {start.dtype} tensors")
    diff = end - start
    if isinstance(weight, Tensor):
        return where(abs(weight).data < 0.5, start + weight * diff, end - diff * (1.0 - weight))
    return start + diff * weight if builtins.abs(weight) < 0.5 else end - diff * (1.0 - weight)


def clamp_min(x, min):
    return clamp(x, min=min)


def clamp_max(x, max):
    return clamp(x, max=max)


# ---- linear algebra and friends ------------------------------------------------------------------
def bmm(a, b):
    a, b = _pair(a, b)
    if a.ndim != 3 or b.ndim != 3:
        raise RuntimeError(f"bmm: batch1 and batch2 must be 3D tensors, got {a.ndim}D and {b.ndim}D")
    if a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: batch sizes differ ({a.shape[0]} and {b.shape[0]})")
    return matmul(a, b)


def _parse_einsum(equation, shapes):
    """(input subscripts, output subscript) with '...' spelled as capital letters."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum(): {len(terms)} operand subscripts for {len(shapes)} operands")
    ell = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    n_ell = 0
    out_terms = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            k = len(shape) - (len(term) - 3)
            n_ell = builtins.max(n_ell, k)
            term = term.replace("...", ell[26 - k:] if k else "")
        out_terms.append(term)
    if "->" in eq:
        out = rhs.replace("...", ell[26 - n_ell:] if n_ell else "")
    else:
        counts = collections.Counter("".join(out_terms))
        out = ell[26 - n_ell:] + "".join(sorted(c for c in counts if counts[c] == 1 and c.islower()))
    return out_terms, out


class Einsum(Function):
    """numpy/cupy einsum; the gradient of each operand is another einsum of the output
    gradient with the other operands (letters only that operand has are broadcast back)."""
    def __init__(self, equation):
        self.equation = equation

    def forward(self, *xs):
        self.save_for_backward(*xs)
        return backend.xp_of(xs[0]).asarray(backend.xp_of(xs[0]).einsum(self.equation, *xs))

    def backward(self, gy):
        xs = self.saved_tensors
        terms, out = _parse_einsum(self.equation, [x.shape for x in xs])
        sizes = {}
        for term, x in zip(terms, xs):
            for c, s in zip(term, x.shape):
                sizes[c] = builtins.max(sizes.get(c, 1), s)
        grads = []
        for k, (term, x) in enumerate(zip(terms, xs)):
            if not self.needs_input_grad[k]:
                grads.append(None)
                continue
            unique = "".join(dict.fromkeys(term))  # a repeated letter (a diagonal) once
            others = [(t_, o) for j, (t_, o) in enumerate(zip(terms, xs)) if j != k]
            avail = set(out).union(*[set(t_) for t_, _ in others]) if others else set(out)
            keep = "".join(c for c in unique if c in avail)
            eq = ",".join([out] + [t_ for t_, _ in others]) + "->" + keep
            g = einsum(eq, gy, *[o for _, o in others])
            if keep != unique:  # letters summed over in this operand only: broadcast back
                shape = tuple(sizes[c] if c in keep else 1 for c in unique)
                g = broadcast_to(reshape(g, shape), tuple(sizes[c] for c in unique))
            if unique != term:  # put the gradient back on the diagonal(s): times identity matrices
                g = _onto_diagonals(g, unique, term, sizes)
            grads.append(sum_to(g, x.shape))
        return tuple(grads)


def _onto_diagonals(g, unique, term, sizes):
    """g over the letters ``unique`` spread onto ``term``, where letters repeat (einsum's 'ii')."""
    free = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in sizes]
    fresh, seen, eyes = [], set(), []
    for c in term:
        if c in seen:
            f = free.pop()
            fresh.append(f)
            eyes.append((c + f, Tensor._wrap(backend.xp_of(g.data).eye(sizes[c], dtype=g.dtype))))
        else:
            seen.add(c)
            fresh.append(c)
    eq = ",".join([unique] + [e for e, _ in eyes]) + "->" + "".join(fresh)
    return einsum(eq, g, *[t for _, t in eyes])


def einsum(equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    operands = [_t(o) for o in operands]
    dtypes = {o.dtype for o in operands}
    if len(dtypes) > 1:  # as torch (and matmul): NumPy would promote, and a float32 operand's gradient became float64
        raise DTypeError(f"einsum: operands have different dtypes ({', '.join(str(o.dtype) for o in operands)}); "
                         f"cast them to one with .to(dtype)")
    return Einsum(equation)(*operands)


def meshgrid(*tensors, indexing="ij"):
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    tensors = [_t(x) for x in tensors]
    for x in tensors:
        if x.ndim > 1:
            raise RuntimeError(f"meshgrid: expected 0D or 1D tensors, got a {x.ndim}D one")
    n = len(tensors)
    sizes = [x.numel() for x in tensors]
    if indexing == "xy" and n >= 2:
        sizes[0], sizes[1] = sizes[1], sizes[0]
    out = []
    for i, x in enumerate(tensors):
        pos = i
        if indexing == "xy" and n >= 2 and i < 2:
            pos = 1 - i
        shape = [1] * n
        shape[pos] = x.numel()
        out.append(broadcast_to(reshape(x, tuple(shape)), tuple(sizes)))
    return tuple(out)


def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype != b.dtype:
        # as torch: promoting compared a float16 0.1 with a float32 0.1 (False) or ints with floats
        raise DTypeError(f"isclose: {a.dtype} did not match {b.dtype}; cast one with .to(dtype)")
    a, b = _pair(a, b)
    return NonDifferentiable("isclose", rtol=rtol, atol=atol, equal_nan=equal_nan)(a, b)


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    return bool(reduce_all(isclose(a, b, rtol, atol, equal_nan)).item())


def equal(a, b):
    """True when both have the same shape and elements (torch.equal)."""
    a, b = _t(a), _t(b)
    return a.shape == b.shape and bool(reduce_all(compare(a, b, "equal")).item())


# ---- in-place updates (versioned: the tape sees them) -------------------------------------------
_OUT_OF_PLACE = {"add": add, "subtract": sub, "multiply": mul, "divide": div, "floor_divide": floor_divide,
                 "remainder": remainder, "power": pow, "bitwise_and": bitwise_and, "bitwise_or": bitwise_or,
                 "bitwise_xor": bitwise_xor}


def _records_in_place(x, *others):
    """True when an in-place update of x must be recorded (grad mode on, x or an operand requires grad).
    Stale views among them take their current history first: whether they require grad may change."""
    if not is_grad_enabled():
        return False
    for t in (x,) + others:
        if isinstance(t, Tensor):
            _sync_view(t)
    return x.requires_grad or builtins.any(isinstance(o, Tensor) and o.requires_grad for o in others)


def _leaf_in_place_error(what):
    return RuntimeError(f"{what}: a leaf tensor that requires grad is being used in an in-place operation; "
                        f"wrap the update in `with gradflow.no_grad():`")


def rebase_in_place(x, compute, what, keep_old=True):
    """A differentiable in-place update, as torch's: ``compute(old)`` builds the new value out of place
    from ``old`` (x's value and history before the update); the result is written into x's buffer
    (views see it), x's version is bumped (ops that saved x's old value then refuse to backward) and x
    takes the new value's place in the graph. ``keep_old``: backward reads the old value, so it is copied.
    x a view of another tensor: that tensor's history is rebased too (``_rebase_view_base``), as
    torch's CopySlices: the view's old value is taken again from the base's old history and, after,
    x is the same view of the base's new history (not the update's node), so hooks and retain_grad
    registered on the view's node before the update see no gradient through it."""
    _sync_view(x)
    if x.creator is None and x.requires_grad:
        raise _leaf_in_place_error(what)
    base = x._view_base
    if base is not None:
        if base.creator is None and base.requires_grad:
            raise RuntimeError(f"{what}: a view of a leaf tensor that requires grad is being used in an in-place "
                               f"operation; wrap the update in `with gradflow.no_grad():`")
        positions = _flat_positions(x.data, base.data)
        if positions is None:
            raise RuntimeError(f"{what} on a view whose elements gradflow cannot map back to the tensor it views "
                               f"(the view or that tensor repeats elements, as expand does); "
                               f"compute the new value out of place instead")
    _in_place(what)
    data = x.data.copy() if keep_old else x.data
    if base is not None and x._view_replay is not None:
        old = _with_history_of(_replay_view(x, _with_history_of(base, base.data)), data)
    else:
        old = _with_history_of(x, data)
    y = compute(old)
    if y.shape != x.shape:
        raise RuntimeError(f"{what}: output with shape {x.shape} doesn't match the broadcast shape {y.shape}")
    if y.dtype != x.dtype:
        if x.dtype.kind not in "fc" and y.dtype.kind in "fc":
            raise RuntimeError(f"{what}: result type {y.dtype} can't be cast to the desired output type {x.dtype}")
        y = astype(y, x.dtype)
    x.data[...] = y.data
    x._bump_version()
    if base is None:
        _take_place(x, y)
        return x
    _rebase_view_base(base, y, positions)
    if x._view_replay is None:  # a view made with grad off: no view of the base to take again
        _take_place(x, y)
        x._view_version = x._vc[0]  # x's new history is current; other views' are not
    else:
        _refresh_view(x)
    return x


def _replay_view(v, base):
    """The view ``v`` taken again (its ``_view_replay``) of ``base``, recorded."""
    with enable_grad():
        for fn, arg in v._view_replay:
            base = fn(base, arg)
    return base


def _with_history_of(x, data):
    """A tensor of ``data`` in x's place in the graph as it is now: x's value before an in-place update."""
    old = Tensor._wrap(data, x.requires_grad)
    if x.creator is not None:
        old.creator, old._index, old.generation = x.creator, x._index, x.generation
    return old


def _take_place(x, y):
    """x takes y's place in the graph: the result of an in-place update of x."""
    x.requires_grad = y.requires_grad
    if y.creator is not None:
        x.creator, x._index, x.generation = y.creator, y._index, y.generation
        y.creator.outputs[y._index] = weakref.ref(x)
    else:
        x.creator = None


class ViewWrite(Function):
    """``base`` with the elements at flat positions ``pos`` replaced by ``view``'s: what an
    in-place op through a view (``y[:, 1:].fill_(0)``, ``y.t().mul_(2)``) makes of the tensor it
    views (torch's CopySlices). The gradient reaches base outside those elements and view
    through them."""
    def __init__(self, pos):
        self.pos = pos

    def forward(self, base, view):
        out = base.copy()
        out.reshape(-1)[self.pos] = view
        return out

    def backward(self, gy):
        gb = gv = None
        if self.needs_input_grad[0]:
            keep = backend.xp_of(gy.data).ones(gy.shape, dtype=gy.dtype)
            keep.reshape(-1)[self.pos] = 0
            gb = gy * Tensor._wrap(keep)
        if self.needs_input_grad[1]:
            gv = getitem(reshape(gy, (-1,)), self.pos)
        return gb, gv


def _flat_positions(view, base):
    """Each element of array ``view`` as a flat index into array ``base`` (C order, what ``ViewWrite``
    indexes: base's values copied C-contiguous) whose memory it views: an int64 array of view's
    shape; None when an element of either repeats (a zero stride, as expand makes) or view's
    layout does not fall on base's elements.

    A base of any layout (``x.T * 1`` is F-ordered in NumPy, torch's is not): view's element
    addresses are looked up among base's, sorted, where a C-contiguous base is the identity."""
    if builtins.any(s == 0 and n > 1 for a in (view, base) for n, s in zip(a.shape, a.strides)):
        return None
    xp, item = backend.xp_of(base), base.itemsize
    def address(a):
        return a.data.ptr if xp is not numpy else a.__array_interface__["data"][0]
    def offsets(a, start):  # each element's offset from base's first, in items, of a's shape
        off = xp.asarray(start, dtype=xp.int64)
        for n, stride in zip(a.shape, a.strides):
            off = off[..., None] + xp.arange(n, dtype=xp.int64) * (stride // item)
        return off
    start = address(view) - address(base)
    if start % item or builtins.any(s % item for a in (view, base) for s in a.strides):
        return None
    pos = offsets(view, start // item)
    if base.flags.c_contiguous:
        return pos
    at = offsets(base, 0).reshape(-1)  # base's element offsets, in C order (distinct: no zero strides)
    order = xp.argsort(at)
    found = xp.searchsorted(at[order], pos).clip(0, builtins.max(base.size - 1, 0))
    if base.size == 0 or not bool((at[order][found] == pos).all()):
        return None if pos.size else pos
    return order[found]


def _rebase_view_base(base, new, positions):
    """After a view of ``base`` was updated in place to ``new`` (its new value, with history): base
    takes the place of ViewWrite(base's old value, new). Its buffer already holds the new values
    (the view wrote through it); only its history changes."""
    _take_place(base, ViewWrite(positions)(_with_history_of(base, base.data), new))


def check_in_place(x, what):
    """Refuse an in-place change on a leaf that requires grad while recording, as PyTorch does."""
    if is_grad_enabled() and x.requires_grad and x.creator is None:
        raise _leaf_in_place_error(what)
    _in_place(what)


def _overwrite(old, new):
    """``new`` (broadcast to old's shape) in old's place, old's history getting a zero gradient:
    what zero_/fill_/copy_ make of a recorded tensor, as torch's. Not ``new + old * 0``, which
    wrote NaN where old held inf or NaN."""
    everywhere = Tensor._wrap(backend.xp_of(old.data).asarray(True))
    return where(everywhere, new, old)


def _constant_in_place(x, value_of, what):
    """zero_/fill_/normal_/uniform_ on a recorded non-leaf: the new value is a constant, so the old
    history gets a zero gradient (torch keeps requires_grad, as here)."""
    def compute(old):
        return _overwrite(old, Tensor._wrap(backend.xp_of(x.data).asarray(value_of(), dtype=x.dtype)))
    return rebase_in_place(x, compute, what, keep_old=False)


def _store(x, array, what):
    """Write ``array`` into x's buffer (broadcast, cast like torch's copy_), bump its version."""
    xp = backend.xp_of(x.data)
    if backend.device_of(array) != x.device:
        array = backend.to_device(array, x.device)
    try:
        xp.copyto(x.data, xp.broadcast_to(xp.asarray(array), x.shape), casting="unsafe")
    except ValueError as e:
        raise RuntimeError(f"{what}: the source of shape {getattr(array, 'shape', ())} cannot be broadcast to "
                           f"the tensor's shape {x.shape} ({e})") from None
    x._bump_version()
    return x


def zero_(x):
    if _records_in_place(x):
        return _constant_in_place(x, lambda: 0, "zero_")  # (a leaf that requires grad: refused there)
    check_in_place(x, "zero_")
    x.data[...] = 0
    x._bump_version()
    return x


def fill_(x, value):
    if _records_in_place(x, value):
        if isinstance(value, Tensor) and value.requires_grad:  # the gradient flows to the fill value
            return rebase_in_place(x, lambda old: _overwrite(old, astype(value, x.dtype)), "fill_", keep_old=False)
        v = value.data if isinstance(value, Tensor) else value
        return _constant_in_place(x, lambda: v, "fill_")
    check_in_place(x, "fill_")
    v = value.data if isinstance(value, Tensor) else value
    x.data[...] = v
    x._bump_version()
    return x


def copy_(x, src):
    if _records_in_place(x, src):
        src = src if isinstance(src, Tensor) else Tensor._wrap(backend.xp_of(x.data).asarray(src))
        if src.device != x.device:
            src = to_device(src, x.device)
        return rebase_in_place(x, lambda old: _overwrite(old, astype(src, x.dtype)), "copy_", keep_old=False)
    check_in_place(x, "copy_")
    return _store(x, src.data if isinstance(src, Tensor) else src, "copy_")


def _arith_(x, other, ufunc, alpha=1):
    if alpha != 1:
        other = other * alpha  # a Tensor times alpha stays differentiable
    return inplace_(x, other, ufunc)


def add_(x, other, alpha=1):
    return _arith_(x, other, "add", alpha)


def sub_(x, other, alpha=1):
    return _arith_(x, other, "subtract", alpha)


def mul_(x, other):
    return _arith_(x, other, "multiply")


def div_(x, other):
    return _arith_(x, other, "divide")


def clamp_(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp_: give at least one of min and max")
    if _records_in_place(x):
        return rebase_in_place(x, lambda old: clamp(old, min, max), "clamp_")
    check_in_place(x, "clamp_")
    lo = min.data if isinstance(min, Tensor) else min
    hi = max.data if isinstance(max, Tensor) else max
    backend.xp_of(x.data).clip(x.data, lo, hi, out=x.data)
    x._bump_version()
    return x


def normal_(x, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std^2) draws from gradflow's host stream (same values on every device)."""
    from gradflow.random import default_generator
    rng = (generator or default_generator).numpy
    if _records_in_place(x):
        return _constant_in_place(x, lambda: rng.normal(mean, std, x.shape), "normal_")
    check_in_place(x, "normal_")
    return _store(x, rng.normal(mean, std, x.shape), "normal_")


def uniform_(x, a=0.0, b=1.0, generator=None):
    from gradflow.random import default_generator
    rng = (generator or default_generator).numpy
    if _records_in_place(x):
        return _constant_in_place(x, lambda: rng.uniform(a, b, x.shape), "uniform_")
    check_in_place(x, "uniform_")
    return _store(x, rng.uniform(a, b, x.shape), "uniform_")


class IndexPut(Function):
    """out = x with ``out[index] = value`` (value broadcast to the indexed part): the recorded form of
    ``x[index] = value``. The gradient reaches x outside the written part and value through it."""
    def __init__(self, index):
        self.index = index

    def forward(self, x, value):
        out = x.copy()
        out[self.index] = value
        return out

    def backward(self, gy):
        x, value = self.inputs
        gx = gv = None
        if self.needs_input_grad[0]:
            kept = backend.xp_of(gy.data).ones(gy.shape, dtype=gy.dtype)
            kept[self.index] = 0
            gx = gy * Tensor._wrap(kept)
        if self.needs_input_grad[1]:
            gv = sum_to(getitem(gy, self.index), value.shape)
        return gx, gv


def index_put_(x, index, value):
    """``x[index] = value`` recorded on the tape (x's history rebased; a leaf that requires grad refused)."""
    xp = backend.xp_of(x.data)
    idx = _index_arrays(index, xp)
    v = value if isinstance(value, Tensor) else Tensor._wrap(xp.asarray(value, dtype=x.dtype))
    if v.dtype != x.dtype:
        v = astype(v, x.dtype)
    return rebase_in_place(x, lambda old: IndexPut(idx)(old, v), "index assignment", keep_old=False)


def expand(x, shape):
    """torch's expand: broadcast_to where -1 keeps that dimension's size."""
    shape = tuple(int(s) for s in shape)
    lead = len(shape) - x.ndim
    if lead < 0:
        raise RuntimeError(f"expand: the number of sizes provided ({len(shape)}) must be greater or equal to the "
                           f"number of dimensions in the tensor ({x.ndim})")
    resolved = []
    for i, s in enumerate(shape):
        if s == -1:
            if i < lead:
                raise RuntimeError(f"expand: -1 is not allowed in a leading, non-existing dimension ({i})")
            s = x.shape[i - lead]
        resolved.append(s)
    return broadcast_to(x, tuple(resolved))


class Xlogy(Function):
    """x * log(y), and 0 where x == 0 (unless y is NaN), as torch.xlogy. Gradients as torch's:
    d/dx = xlogy(x != 0, y), d/dy = x / y."""
    def forward(self, x, y):
        self.save_for_backward(x, y)
        xp = backend.xp_of(x)
        with numpy.errstate(all="ignore"):
            out = x * xp.log(y)
        zero = (x == 0) & ~xp.isnan(y)
        return xp.where(zero, out.dtype.type(0), out)

    def backward(self, g):
        x, y = self.saved_tensors
        gx = gy = None
        if self.needs_input_grad[0]:
            gx = _unbroadcast(g * xlogy(astype(compare(x, 0, "not_equal"), y.dtype), y), x.shape)
        if self.needs_input_grad[1]:
            gy = _unbroadcast(g * x / y, y.shape)
        return gx, gy


def xlogy(x, y):
    x, y = _pair(x, y)
    if x.dtype.kind not in "fc" and y.dtype.kind not in "fc":
        x, y = astype(x, _default_float()), astype(y, _default_float())
    elif x.dtype != y.dtype:
        dtype = numpy.result_type(x.dtype, y.dtype)
        x, y = astype(x, dtype), astype(y, dtype)
    return Xlogy()(x, y)
