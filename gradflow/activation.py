"""Activations, softmax, fused softmax cross-entropy and dropout as differentiable Functions.

Every forward is one kernel (``gradflow.kernel``: the NumPy twin on the CPU, CUDA on the
GPU) and saves only what its backward reads: the output for sigmoid/tanh/softmax, the
input where the derivative needs it, or a one-byte mask for the piecewise-linear ones.
Every backward is one more kernel, wrapped in a Function of its own whose backward is
written with differentiable ops, so second derivatives work (third ones too, through ops).
Formulas and edge cases (kinks, NaN, thresholds) follow PyTorch, except that gelu's CDF
is erfc(-x/sqrt 2)/2, accurate in the left tail where torch's 1 + erf cancels.
Supported dtypes: float32 and float64.
"""
import math
import warnings

import numpy

from gradflow import backend, ops, philox
from gradflow.kernel import Elementwise, RawKernel, RowKernel, device_scalar_twin, row_threads
from gradflow.tensor import DTypeError, Function, OpError, Tensor, as_tensor

_ACT = ("activations.cuh",)
_quiet = numpy.errstate(all="ignore")  # NaN/inf propagate silently, as on the GPU


def _check_float(x, name):
    if x.dtype not in (numpy.float32, numpy.float64):
        raise DTypeError(f"{name}: expected a float32 or float64 tensor, got {x.dtype}")


def _where0(cond, a):
    """where(cond, a, 0) in a's dtype."""
    return backend.xp_of(a).where(cond, a, a.dtype.type(0))


class MaskScale(Function):
    """g * (mask ? a : b) for a bool mask (no gradient): the backward of leaky_relu, noisy_relu
    and dropout (relu's is ReLUGrad, from its output). (a, b) = (1, 0) is noisy relu's select,
    where(mask, g, 0), exactly 0 where the mask is off even for a NaN or inf g, as PyTorch. Linear
    in g, so its backward is itself. The mask is an input, not a constructor argument, so a
    captured step (gradflow.compile) sees it flow."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def forward(self, mask, g):
        self.save_for_backward(mask)
        return mask_scale(mask, g, self.a, self.b)

    def replay_source(self, mask, g, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the NumPy twin, without the op around it,
        into g's own buffer where g dies here (noisy relu and dropout)."""
        if saved or type(arrays[1]) is not numpy.ndarray or not all(type(v) in (int, float) for v in (self.a, self.b)):
            return None
        out = f", {g}" if 1 in dying and self.b == 0 else ""
        return f"mask_scale_np({mask}, {g}, {self.a!r}, {self.b!r}{out})", {"mask_scale_np": mask_scale.numpy}

    def backward(self, ggx):
        mask, = self.saved_tensors
        return None, MaskScale(self.a, self.b)(mask, ggx)


_SAME_WIDTH_INT = {2: numpy.int16, 4: numpy.int32, 8: numpy.int64}


def _mask_scale_np(mask, g, a, b, out=None):
    """The NumPy twin; ``out`` (noisy relu and dropout, b == 0: g itself in a replay where g dies here) is where
    the result goes."""
    if b == 0 and a == 1:  # noisy relu: where(mask, g, 0) exactly (a NaN gradient at a dead unit gives 0,
        # as PyTorch's threshold_backward), as g's bits times the mask in integers: bits * 1 or
        # bits * 0, a +0. One pass, ~15x faster than where on a random mask, faster than the
        # hand-written loop's `g *= a > 0` (which would keep NaN); integer work, so no
        # floating-point state to quiet
        it = _SAME_WIDTH_INT[g.dtype.itemsize]
        bits = numpy.multiply(g.view(it), mask, out=None if out is None else out.view(it))
        if bits.ndim == 0:  # 0-d operands give a NumPy scalar
            bits = numpy.asarray(bits)
        return bits.view(g.dtype)
    with numpy.errstate(all="ignore"):  # as _quiet (one errstate object cannot be entered twice)
        if b == 0:  # dropout: g * mask * scale, as PyTorch (a NaN gradient stays NaN where dropped)
            out = numpy.multiply(g, a, out=out)
            out *= mask
            return out
        return numpy.where(mask, g * a, g * b)


mask_scale = Elementwise("mask_scale", "bool mask, T g, T a, T b", "T gx", "gx = gf_mask_scale(mask, g, a, b)",
                         headers=_ACT, scalars="a b", numpy=_mask_scale_np)


# ---- sigmoid and tanh: the derivative comes from the saved output ----------------------------------
@_quiet
def _sigmoid_np(x):
    return 1 / (1 + numpy.exp(-x))


sigmoid_fwd = Elementwise("sigmoid_fwd", "T x", "T y", "y = gf_sigmoid(x)", headers=_ACT, numpy=_sigmoid_np)
sigmoid_bwd = Elementwise("sigmoid_bwd", "T y, T gy", "T gx", "gx = gf_sigmoid_grad(y, gy)", headers=_ACT,
                          numpy=_quiet(lambda y, gy: gy * (1 - y) * y))


class Sigmoid(Function):
    def forward(self, x):
        y = sigmoid_fwd(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return SigmoidGrad()(y, gy)


class SigmoidGrad(Function):
    """gx = gy * (1 - y) * y."""

    def forward(self, y, gy):
        self.save_for_backward(y, gy)
        return sigmoid_bwd(y, gy)

    def backward(self, ggx):
        y, gy = self.saved_tensors
        g_y = ggx * gy * (1 - 2 * y) if self.needs_input_grad[0] else None
        g_gy = SigmoidGrad()(y, ggx) if self.needs_input_grad[1] else None
        return g_y, g_gy


tanh_fwd = Elementwise("tanh_fwd", "T x", "T y", "y = gf_tanh(x)", headers=_ACT, numpy=_quiet(numpy.tanh))
tanh_bwd = Elementwise("tanh_bwd", "T y, T gy", "T gx", "gx = gf_tanh_grad(y, gy)", headers=_ACT,
                       numpy=_quiet(lambda y, gy: gy * (1 - y * y)))


class Tanh(Function):
    def forward(self, x):
        y = tanh_fwd(x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return TanhGrad()(y, gy)


class TanhGrad(Function):
    """gx = gy * (1 - y^2)."""

    def forward(self, y, gy):
        self.save_for_backward(y, gy)
        return tanh_bwd(y, gy)

    def backward(self, ggx):
        y, gy = self.saved_tensors
        g_y = ggx * gy * y * -2.0 if self.needs_input_grad[0] else None
        g_gy = TanhGrad()(y, ggx) if self.needs_input_grad[1] else None
        return g_y, g_gy


# ---- piecewise linear: relu keeps its output, the others a one-byte mask -------------------------------
_ZEROS = {}  # dtype -> one flat read-only array of zeros (_relu_out_np)


def _relu_out_np(x, out=None):
    """relu(x): the NumPy twin of relu_out.

    NumPy's maximum against a scalar runs a loop that is not vectorized: ~3x slower than against an
    array of zeros (NumPy 2.4, 16K float32: 7.5 vs 2.3 us; 1M: 466 vs 168 us), with the same bits. So
    from 1024 elements on (below, the scalar is as fast) a C-contiguous x is compared with a view of
    one flat read-only buffer of zeros per dtype, which only grows; a large numpy.zeros maps the
    kernel's zero page, which costs address space rather than memory. Comparisons and maximum
    raise no floating-point warnings, NaN included: no errstate. ``out``: where y goes (x itself
    in a replay where x dies here)."""
    n = x.size
    if n < 1024 or not x.flags.c_contiguous:
        return numpy.maximum(x, x.dtype.type(0), out=out)
    zeros = _ZEROS.get(x.dtype)
    if zeros is None or zeros.size < n:
        zeros = numpy.zeros(max(n, 0 if zeros is None else 2 * zeros.size), x.dtype)
        zeros.flags.writeable = False
        _ZEROS[x.dtype] = zeros
    return numpy.maximum(x, zeros[:n].reshape(x.shape), out=out)


def _relu_grad_np(y, g, out=None):
    """g where relu's output y != 0 (x > 0 or NaN: the kernel's !(x <= 0)), +0 elsewhere, even for a NaN
    or inf g (as torch's threshold_backward): g's bits times the mask in integers, bits * 1 or bits *
    0. Two passes, as the hand-written loop's `g *= a > 0` (which would keep NaN); ``out``: where the
    result goes (g itself in a replay where g dies here)."""
    it = _SAME_WIDTH_INT[g.dtype.itemsize]
    bits = numpy.multiply(g.view(it), numpy.not_equal(y, 0), out=None if out is None else out.view(it))
    if bits.ndim == 0:  # 0-d operands give a NumPy scalar
        bits = numpy.asarray(bits)
    return bits.view(g.dtype)


relu_out = Elementwise("relu_out", "T x", "T y", "y = gf_relu(x)", headers=_ACT, numpy=_relu_out_np)
relu_grad = Elementwise("relu_grad", "T y, T g", "T gx", "gx = gf_relu_grad(y, g)", headers=_ACT,
                        numpy=_relu_grad_np)


@_quiet
def _leaky_relu_np(x, slope):
    keep = x > 0
    return numpy.where(keep, x, x * slope), keep


leaky_relu_fwd = Elementwise("leaky_relu_fwd", "T x, T slope", "T y, bool mask",
                             "y = gf_leaky_relu(x, slope); mask = gf_gt0(x)", headers=_ACT, scalars="slope",
                             numpy=_leaky_relu_np)


class ReLU(Function):
    """y = max(x, 0), keeping y for the backward as torch does (its mask is y != 0): the forward is one
    pass, and y is held anyway as the next layer's input (a one-byte mask made in the forward cost
    a pass and 1.2-3.5 us per layer inside a training step)."""

    def forward(self, x):
        y = relu_out(x)
        self.save_for_backward(y)
        return y

    def replay_source(self, x, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the NumPy twin, into x's own buffer where
        x dies here (a layer's pre-activation). The output it saves is the output itself."""
        if type(arrays[0]) is not numpy.ndarray or saved:
            return None
        return f"relu_out_np({x}{f', {x}' if 0 in dying else ''})", {"relu_out_np": _relu_out_np}

    def backward(self, gy):
        y, = self.saved_tensors
        return ReLUGrad()(y, gy)


class ReLUGrad(Function):
    """gx = g where relu's output y != 0, else +0. No gradient for y (piecewise constant); linear in g,
    so its backward is itself."""

    def forward(self, y, g):
        self.save_for_backward(y)
        return relu_grad(y, g)

    def replay_source(self, y, g, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the NumPy twin, into g's buffer where g dies here."""
        if saved or type(arrays[1]) is not numpy.ndarray:
            return None
        return f"relu_grad_np({y}, {g}{f', {g}' if 1 in dying else ''})", {"relu_grad_np": _relu_grad_np}

    def backward(self, ggx):
        y, = self.saved_tensors
        return None, ReLUGrad()(y, ggx)


class LeakyReLU(Function):
    def __init__(self, negative_slope):
        self.slope = float(negative_slope)

    def forward(self, x):
        y, mask = leaky_relu_fwd(x, self.slope)
        self.save_for_backward(mask)
        return y

    def backward(self, gy):
        mask, = self.saved_tensors
        return MaskScale(1.0, self.slope)(mask, gy)


# ---- prelu: a learnable slope per channel (dim 1) ---------------------------------------------------
prelu_fwd = Elementwise("prelu_fwd", "T x, T w", "T y", "y = gf_prelu(x, w)", headers=_ACT,
                        numpy=_quiet(lambda x, w: numpy.where(x > 0, x, w * x)))


@_quiet
def _prelu_bwd_np(x, w, g):
    pos = x > 0
    return numpy.where(pos, g, w * g), numpy.where(pos, x.dtype.type(0), x * g)


prelu_bwd = Elementwise("prelu_bwd", "T x, T w, T g", "T gx, T gw",
                        "gx = gf_prelu_grad_x(x, w, g); gw = gf_prelu_grad_w(x, g)", headers=_ACT,
                        numpy=_prelu_bwd_np)


def _channel_shape(x_shape, w_size):
    """Shape that broadcasts a (C,) or (1,) weight over dim 1 of x, as torch.prelu does."""
    if w_size == 1:
        return (1,) * len(x_shape)
    if len(x_shape) < 2 or x_shape[1] != w_size:
        raise OpError(f"prelu: a weight of {w_size} entries needs an input with {w_size} channels in "
                         f"dim 1, got shape {x_shape}")
    return (1, w_size) + (1,) * (len(x_shape) - 2)


class PReLU(Function):
    def forward(self, x, w):
        if w.ndim != 1:
            raise OpError(f"prelu: weight must be 1-D (C,) or (1,), got shape {w.shape}")
        if x.dtype != w.dtype:
            raise DTypeError(f"prelu: input dtype {x.dtype} differs from weight dtype {w.dtype}")
        self.save_for_backward(x, w)
        return prelu_fwd(x, w.reshape(_channel_shape(x.shape, w.size)))

    def backward(self, gy):
        x, w = self.saved_tensors
        gx, gw = PReLUGrad()(x, w, gy)
        return (gx if self.needs_input_grad[0] else None), (gw if self.needs_input_grad[1] else None)


class PReLUGrad(Function):
    """(gx, gw) = (x > 0 ? g : w g, sum over non-channel dims of (x > 0 ? 0 : x g))."""

    def forward(self, x, w, g):
        self.save_for_backward(x, w, g)
        self.w_shape = _channel_shape(x.shape, w.size)
        gx, gw = prelu_bwd(x, w.reshape(self.w_shape), g)
        gw = gw.sum(axis=tuple(i for i, s in enumerate(self.w_shape) if s == 1))
        return gx, backend.xp_of(x).asarray(gw).reshape(w.shape)

    def backward(self, ggx, ggw):
        x, w, g = self.saved_tensors
        pos = (x.data > 0)
        wb = ops.reshape(w, self.w_shape)
        ggwb = ops.reshape(ggw, self.w_shape)
        g_x = g_w = g_g = None
        if self.needs_input_grad[0]:  # only gw depends on x (away from the kink)
            g_x = ops.where(pos, 0.0, g * ggwb)
        if self.needs_input_grad[1]:
            g_w = ops.reshape(ops.sum_to(ops.where(pos, 0.0, ggx * g), self.w_shape), w.shape)
        if self.needs_input_grad[2]:
            g_g = ops.where(pos, ggx, wb * ggx) + ops.where(pos, 0.0, x * ggwb)
        return g_x, g_w, g_g


# ---- smooth activations whose derivative is computed from the input ---------------------------------
@_quiet
def _elu_np(x, neg, pos):
    return numpy.where(x <= 0, numpy.expm1(x) * neg, x * pos)


@_quiet
def _elu_bwd_np(x, g, neg, pos):
    return numpy.where(x <= 0, g * neg * numpy.exp(x), g * pos)


elu_fwd = Elementwise("elu_fwd", "T x, T neg, T pos", "T y", "y = gf_elu(x, neg, pos)", headers=_ACT,
                      scalars="neg pos", numpy=_elu_np)
elu_bwd = Elementwise("elu_bwd", "T x, T g, T neg, T pos", "T gx", "gx = gf_elu_grad(x, g, neg, pos)",
                      headers=_ACT, scalars="neg pos", numpy=_elu_bwd_np)


@_quiet
def _softplus_np(x, beta, threshold):
    return numpy.where(x * beta > threshold, x, numpy.log1p(numpy.exp(x * beta)) / beta)


@_quiet
def _softplus_bwd_np(x, g, beta, threshold):
    z = numpy.exp(x * beta)
    return numpy.where(x * beta > threshold, g, g * z / (z + 1))


softplus_fwd = Elementwise("softplus_fwd", "T x, T beta, T threshold", "T y", "y = gf_softplus(x, beta, threshold)",
                           headers=_ACT, scalars="beta threshold", numpy=_softplus_np)
softplus_bwd = Elementwise("softplus_bwd", "T x, T g, T beta, T threshold", "T gx",
                           "gx = gf_softplus_grad(x, g, beta, threshold)", headers=_ACT, scalars="beta threshold",
                           numpy=_softplus_bwd_np)

_math_erfc = numpy.frompyfunc(math.erfc, 1, 1)


def _erfc(x):
    """erfc elementwise (NumPy has none): math.erfc in double, rounded to x's dtype."""
    return numpy.asarray(_math_erfc(x), dtype=numpy.float64).astype(x.dtype, copy=False)


_SQRT1_2 = 0.70710678118654752440
_INV_SQRT_2PI = 0.39894228040143267794
_SQRT_2_PI = 0.79788456080286535588
_KAPPA = 0.044715


@_quiet
def _gelu_np(x):
    return x * 0.5 * _erfc(-x * _SQRT1_2)


@_quiet
def _gelu_bwd_np(x, g):
    cdf = 0.5 * _erfc(-x * _SQRT1_2)
    pdf = _INV_SQRT_2PI * numpy.exp(x * x * -0.5)
    return g * (cdf + x * pdf)


@_quiet
def _gelu_tanh_np(x):
    inner = _SQRT_2_PI * (x + _KAPPA * (x * x * x))
    return 0.5 * x * (1 + numpy.tanh(inner))


@_quiet
def _gelu_tanh_bwd_np(x, g):
    t = x.dtype.type
    x_sq = x * x
    th = numpy.tanh(_SQRT_2_PI * (x + _KAPPA * (x_sq * x)))
    left_derivative = 0.5 * (1 + th)
    inner_derivative = _SQRT_2_PI * (1 + t(3) * t(_KAPPA) * x_sq)
    return g * (left_derivative + 0.5 * x * (1 - th * th) * inner_derivative)


gelu_fwd = Elementwise("gelu_fwd", "T x", "T y", "y = gf_gelu(x)", headers=_ACT, numpy=_gelu_np)
gelu_bwd = Elementwise("gelu_bwd", "T x, T g", "T gx", "gx = gf_gelu_grad(x, g)", headers=_ACT, numpy=_gelu_bwd_np)
gelu_tanh_fwd = Elementwise("gelu_tanh_fwd", "T x", "T y", "y = gf_gelu_tanh(x)", headers=_ACT, numpy=_gelu_tanh_np)
gelu_tanh_bwd = Elementwise("gelu_tanh_bwd", "T x, T g", "T gx", "gx = gf_gelu_tanh_grad(x, g)", headers=_ACT,
                            numpy=_gelu_tanh_bwd_np)


class _Smooth(Function):
    """y = f(x) in one kernel, saving x; subclasses name the kernels and f'' (for double backward)."""
    fwd = bwd = None

    def __init__(self, *params):
        self.params = params

    def forward(self, x):
        self.save_for_backward(x)
        return self.fwd(x, *self.params)

    def backward(self, gy):
        x, = self.saved_tensors
        return _SmoothGrad(type(self), self.params)(x, gy)

    def second(self, x):
        """f''(x) as differentiable ops."""
        raise NotImplementedError


class _SmoothGrad(Function):
    """gx = gy * f'(x) in one kernel; backward: (ggx * gy * f''(x), ggx * f'(x)).

    Built from the _Smooth subclass and its parameters, not from the forward op, a new object in
    each step: ``gradflow.compile`` compares what ops are built with between two recordings, and
    a model with ELU, SELU or Softplus never captured."""

    def __init__(self, kind, params):
        self.kind, self.params = kind, params

    def forward(self, x, gy):
        self.save_for_backward(x, gy)
        return self.kind.bwd(x, gy, *self.params)

    def backward(self, ggx):
        x, gy = self.saved_tensors
        g_x = ggx * gy * self.kind(*self.params).second(x) if self.needs_input_grad[0] else None
        g_gy = _SmoothGrad(self.kind, self.params)(x, ggx) if self.needs_input_grad[1] else None
        return g_x, g_gy


class ELU(_Smooth):
    """(neg, pos) = (alpha, 1) for elu, (alpha * scale, scale) for selu."""
    fwd, bwd = elu_fwd, elu_bwd

    def second(self, x):
        neg, _ = self.params
        return ops.where(x.data <= 0, ops.exp(x) * neg, 0.0)


class Softplus(_Smooth):
    fwd, bwd = softplus_fwd, softplus_bwd

    def second(self, x):
        beta, threshold = self.params
        s = sigmoid(x * beta)
        return ops.where(x.data * beta > threshold, 0.0, s * (1 - s) * beta)


class GELU(_Smooth):
    fwd, bwd = gelu_fwd, gelu_bwd

    def second(self, x):  # phi(x) * (2 - x^2)
        x2 = x * x
        return ops.exp(x2 * -0.5) * _INV_SQRT_2PI * (2 - x2)


class GELUTanh(_Smooth):
    fwd, bwd = gelu_tanh_fwd, gelu_tanh_bwd

    def second(self, x):  # (1 - t^2) (u' + x/2 (u'' - 2 t u'^2)), t = tanh(u), u = k (x + kappa x^3)
        x2 = x * x
        t = tanh((x + x2 * x * _KAPPA) * _SQRT_2_PI)
        du = (x2 * (3 * _KAPPA) + 1) * _SQRT_2_PI
        ddu = x * (6 * _KAPPA * _SQRT_2_PI)
        return (1 - t * t) * (du + x * 0.5 * (ddu - t * du * du * 2))


# ---- softmax along an axis: row kernels on a contiguous (rows, cols) view --------------------------
def _as_rows(a, axis):
    """a with ``axis`` moved last, as a C-contiguous 2-D (rows, cols) array, and its moved shape."""
    if a.ndim == 2 and axis % 2 == 1 and a.flags.c_contiguous:  # already rows: skip moveaxis
        return a, a.shape
    xp = backend.xp_of(a)
    moved = xp.moveaxis(a, axis, -1)
    rows = math.prod(moved.shape[:-1])
    return xp.ascontiguousarray(moved).reshape(rows, moved.shape[-1]), moved.shape


def _from_rows(out, moved_shape, axis):
    if out.ndim == 2 and axis % 2 == 1 and out.shape == moved_shape:
        return out
    return backend.xp_of(out).moveaxis(out.reshape(moved_shape), -1, axis)


@_quiet
def _softmax_rows_np(a, b=None):
    if a.shape[1] == 0:
        return a.copy()
    e = numpy.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@_quiet
def _log_softmax_rows_np(a, b=None):
    if a.shape[1] == 0:
        return a.copy()
    m = a.max(axis=1, keepdims=True)
    return a - m - numpy.log(numpy.exp(a - m).sum(axis=1, keepdims=True))


@_quiet
def _softmax_bwd_rows_np(y, g):
    return y * (g - (g * y).sum(axis=1, keepdims=True))


@_quiet
def _log_softmax_bwd_rows_np(y, g):
    return g - numpy.exp(y) * g.sum(axis=1, keepdims=True)


softmax_rows = RowKernel("gf_softmax_fwd", numpy=_softmax_rows_np)
log_softmax_rows = RowKernel("gf_log_softmax_fwd", numpy=_log_softmax_rows_np)
softmax_bwd_rows = RowKernel("gf_softmax_bwd", numpy=_softmax_bwd_rows_np)
log_softmax_bwd_rows = RowKernel("gf_log_softmax_bwd", numpy=_log_softmax_bwd_rows_np)


def _along(kernel, axis, a, b=None):
    """Run a row kernel along ``axis`` of same-shape arrays a (and b)."""
    if a.ndim == 0:
        return kernel(a.reshape(1, 1), None if b is None else b.reshape(1, 1)).reshape(())
    a2, moved = _as_rows(a, axis)
    b2 = None if b is None else _as_rows(b, axis)[0]
    return _from_rows(kernel(a2, b2), moved, axis)


class Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        y = _along(softmax_rows, self.axis, x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return SoftmaxGrad(self.axis)(y, gy)


class SoftmaxGrad(Function):
    """gx = y * (g - sum(g * y)) along the axis."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        self.save_for_backward(y, g)
        return _along(softmax_bwd_rows, self.axis, y, g)

    def backward(self, ggx):
        y, g = self.saved_tensors
        ax = self.axis if y.ndim else None
        g_y = g_g = None
        if self.needs_input_grad[0]:
            s = ops.sum(g * y, ax, keepdims=True)
            t = ops.sum(ggx * y, ax, keepdims=True)
            g_y = ggx * (g - s) - g * t
        if self.needs_input_grad[1]:  # the Jacobian is symmetric
            g_g = SoftmaxGrad(self.axis)(y, ggx)
        return g_y, g_g


class LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        y = _along(log_softmax_rows, self.axis, x)
        self.save_for_backward(y)
        return y

    def backward(self, gy):
        y, = self.saved_tensors
        return LogSoftmaxGrad(self.axis)(y, gy)


class LogSoftmaxGrad(Function):
    """gx = g - exp(y) * sum(g) along the axis."""

    def __init__(self, axis):
        self.axis = axis

    def forward(self, y, g):
        self.save_for_backward(y, g)
        return _along(log_softmax_bwd_rows, self.axis, y, g)

    def backward(self, ggx):
        y, g = self.saved_tensors
        ax = self.axis if y.ndim else None
        p = ops.exp(y)
        g_y = -ggx * p * ops.sum(g, ax, keepdims=True) if self.needs_input_grad[0] else None
        g_g = ggx - ops.sum(ggx * p, ax, keepdims=True) if self.needs_input_grad[1] else None
        return g_y, g_g


# ---- fused softmax cross-entropy ---------------------------------------------------------------------
# On the CPU a training batch (every target a class in [0, C), none equal to ignore_index) takes a
# short path: the targets are checked once, by one reduction, in the forward; the backward knows it
# from the count the forward saved (count == rows) and does no check. m (the row max) and
# logs = log(sum(exp(x - m))) are kept apart, not folded into one log-sum-exp m + logs (rounded at
# the magnitude of m), so that the loss logs - (x[t] - m) and the softmax stay accurate for large
# logits, as PyTorch's log_softmax. The CPU backward's softmax is exp(x - m) / sum, both saved by
# the forward (as the hand-written NumPy loop in benchmarks/numpy_mlp.py); the GPU kernel
# recomputes exp((x - m) - logs) from m and logs instead.

def _dense_targets(t, cols, ignore_index):
    """True when every int64 target in ``t`` (rows,) is a class in [0, cols) other than ignore_index."""
    # negative targets wrap to huge unsigned values: one reduction checks both bounds
    return t.size > 0 and numpy.maximum.reduce(t.view(numpy.uint64)) < cols and \
        not (0 <= ignore_index < cols and (t == ignore_index).any())


_ROW_STARTS = {}  # (rows, cols): read-only _row_starts of a batch of up to 4096 rows, reused


def _row_starts(rows, cols):
    """The flat index of each row's first element in a C-contiguous (rows, cols) array."""
    starts = _ROW_STARTS.get((rows, cols))
    if starts is None:
        starts = numpy.arange(0, rows * cols, cols)
        if rows <= 4096:
            if len(_ROW_STARTS) >= 64:
                _ROW_STARTS.clear()
            starts.flags.writeable = False
            _ROW_STARTS[rows, cols] = starts
    return starts


def _row_max(x):
    """x.max(axis=1, keepdims=True) of logits x (rows, cols > 0). NumPy runs its inner loop once per
    row, all overhead with few classes (float32 128x10: 7.2 us); reducing a transposed copy over its
    rows takes 3.4 us. The same maxima (a maximum rounds nothing; of a -0 and a +0 either may come
    out, and x - m is a zero either way)."""
    rows, cols = x.shape
    if cols <= 16 and rows >= 64:
        return numpy.maximum.reduce(numpy.ascontiguousarray(x.T), axis=0).reshape(rows, 1)
    return x.max(axis=1, keepdims=True)


def _row_sums(e):
    """e.sum(axis=1, keepdims=True) of a float32/float64 (rows, cols): from 64 rows on one BLAS gemv,
    e @ ones (float32 128x10: 2.9 vs 4.8 us; 128x1000: 7.6 vs 22.5 us)."""
    rows, cols = e.shape
    if ops._gemv_sums(e):  # from 64 rows on
        return numpy.matmul(e, ops.ones_vector(cols, e.dtype)).reshape(rows, 1)
    return numpy.add.reduce(e, axis=1, keepdims=True)


def _xent_rows_core_np(x, t, ignore_index):
    """(loss, m, logs, e, s, count) of logits x (rows, cols) against int64 targets t (rows,): m the row
    max, e = exp(x - m), s its row sums and logs = log(s) (m, s and logs (rows, 1)), count the number
    of rows that count (a Python int)."""
    rows, cols = x.shape
    m = _row_max(x) if cols else numpy.zeros((rows, 1), x.dtype)
    z = x - m
    e = numpy.exp(z)
    s = _row_sums(e)
    logs = numpy.log(s)  # -inf without classes
    if _dense_targets(t, cols, ignore_index):
        # (m - x[t]) + logs == logs - (x[t] - m) exactly: IEEE rounding is symmetric in sign
        return logs[:, 0] - z.take(_row_starts(rows, cols) + t), m, logs, e, s, rows
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= cols))
    if bad.any():
        raise IndexError(f"softmax_cross_entropy: target {int(t[bad][0])} is out of bounds for {cols} classes")
    picked = z[numpy.arange(rows), numpy.where(valid, t, 0)] if cols else logs[:, 0]  # cols 0: every row ignored
    return numpy.where(valid, logs[:, 0] - picked, x.dtype.type(0)), m, logs, e, s, int(numpy.count_nonzero(valid))


@_quiet
def _xent_rows_np(x, target, ignore_index):
    """(loss, m, logs) per row of logits x (rows, cols) for int class indices ``target`` (rows,):
    the NumPy twin of the GPU row kernel gf_xent_fwd."""
    loss, m, logs, _, _, _ = _xent_rows_core_np(x, numpy.asarray(target, numpy.int64), ignore_index)
    return loss, m[:, 0], logs[:, 0]


@_quiet  # NaN/inf propagate silently; a mean over no valid rows is NaN, as in torch
def _xent_fwd_np(x, target, ignore_index, reduction):
    """SoftmaxCrossEntropy's forward on the CPU: (loss, e, s, count), e = exp(x - m) and its row sums
    s in the (rows, cols) layout of ``_as_rows(x, 1)``, count a 0-d array of x's dtype."""
    x2 = x if x.ndim == 2 and x.flags.c_contiguous else _as_rows(x, 1)[0]
    loss, _, _, e, s, n = _xent_rows_core_np(x2, target if target.ndim == 1 else target.reshape(-1), ignore_index)
    count = numpy.asarray(n, dtype=x.dtype)
    if reduction == "none":
        return loss.reshape(target.shape), e, s, count
    total = numpy.add.reduce(loss)
    return numpy.asarray(total / count if reduction == "mean" else total, dtype=x.dtype), e, s, count


def _onehot_grad_np(p, t, w, ignore_index, dense):
    """(p - onehot(t)) * w for softmax rows p (rows, cols) and targets t (rows,), in p's buffer on
    the short path (``dense``: see _dense_targets); rows whose target is ignore_index get 0."""
    rows, cols = p.shape
    if dense:
        if not p.flags.c_contiguous:  # the flat indices address C order (reshape would copy)
            p = numpy.ascontiguousarray(p)
        p.reshape(-1)[_row_starts(rows, cols) + t] -= 1
        p *= w
        return p
    onehot = (numpy.arange(cols) == t[:, None]).astype(p.dtype)
    return numpy.where((t == ignore_index)[:, None], p.dtype.type(0), (p - onehot) * w)


@_quiet
def _xent_grad_np(target, e, s, count, g, reduction, ignore_index, shape):
    """SoftmaxCrossEntropyGrad's forward on the CPU: the gradient of logits of ``shape`` from the
    e = exp(x - m) and row sums s the forward saved. count == rows tells that the forward found
    every row valid (exact below 2**24 rows; beyond, the checked path runs)."""
    rows, cols = e.shape
    w = g.reshape(rows, 1) if reduction == "none" else g / count if reduction == "mean" else g
    t = target if target.ndim == 1 else target.reshape(-1)
    gx = _onehot_grad_np(e / s, t, w, ignore_index, 0 < rows < 2 ** 24 and cols > 0 and int(count) == rows)
    return gx if len(shape) == 2 else _from_rows(gx, shape[:1] + shape[2:] + shape[1:2], 1)


xent_fwd_rows = RawKernel("softmax.cu", "gf_xent_fwd")


def xent_rows(x, target, ignore_index):
    """Loss, row max and log-sum of exp(x - max) of each row in one pass (GPU: one block per row)."""
    if not _on_cuda(x):
        return _xent_rows_np(x, target, ignore_index)
    cp = backend.cupy()
    rows, cols = x.shape
    loss = cp.empty(rows, dtype=x.dtype)
    m = cp.empty(rows, dtype=x.dtype)
    logs = cp.empty(rows, dtype=x.dtype)
    if rows:
        xent_fwd_rows.function(x.dtype)((min(rows, 2 ** 31 - 1),), (row_threads(cols),),
                                        (cp.ascontiguousarray(x), cp.ascontiguousarray(target, dtype=cp.int64),
                                         loss, m, logs, numpy.int64(rows), numpy.int64(cols),
                                         numpy.int64(ignore_index)))
    return loss, m, logs


def _on_cuda(a):
    return backend.device_of(a) == "cuda"


@_quiet
def _xent_bwd_np(x, m, logs, target, w, cols, ignore_index):
    """The NumPy twin of the xent_bwd kernel (target broadcast against x, e.g. (rows, 1))."""
    p = numpy.exp((x - m) - logs)
    if x.ndim == 2 and target.shape == (x.shape[0], 1):
        t = numpy.asarray(target[:, 0], numpy.int64)
        return _onehot_grad_np(p, t, w, ignore_index, _dense_targets(t, cols, ignore_index))
    onehot = (numpy.arange(cols) == target).astype(x.dtype)
    gx = (p - onehot) * w
    return numpy.where(target == ignore_index, x.dtype.type(0), gx)


xent_bwd = Elementwise("xent_bwd", "T x, T m, T logs, int64 target, T w, int64 cols, int64 ignore_index", "T gx",
                       "gx = gf_xent_grad(x, m, logs, target, (long long)(i % cols), w, ignore_index)",
                       headers=("softmax.cuh",), scalars="cols ignore_index", numpy=_xent_bwd_np)

_REDUCTIONS = ("mean", "sum", "none")


class SoftmaxCrossEntropy(Function):
    """Cross-entropy of logits (N, C[, d...]) against class indices (N[, d...]), class axis 1.

    Forward: one row pass gives each row's max, log-sum of exp(x - max) and loss. Backward:
    one kernel (softmax - onehot) * g / N. Besides the logits, the targets and the count of rows
    that count, it keeps two statistics: the row max and log-sum on the GPU, whose
    kernel recomputes the softmax from them; exp(x - max) (in the rows layout) and its row sums
    on the CPU, where recomputing costs passes.
    The target is an input (without gradient), so a captured step sees each batch's.
    """

    def __init__(self, reduction, ignore_index):
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, x, target):
        if not _on_cuda(x):
            loss, e, s, count = _xent_fwd_np(x, target, self.ignore_index, self.reduction)
            self.save_for_backward(x, target, e, s, count)
            return loss
        return self._forward_cuda(x, target)

    def replay_source(self, x, target, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the CPU forward, without the op around it."""
        if type(arrays[0]) is not numpy.ndarray or saved not in ((), (2, 3, 4)):
            return None
        call = f"xent_fwd_np({x}, {target}, {self.ignore_index!r}, {self.reduction!r})"
        return call + ("" if saved else "[0]"), {"xent_fwd_np": _xent_fwd_np}

    @_quiet  # a mean over no valid rows is NaN, as in torch
    def _forward_cuda(self, x, target):
        x2, _ = _as_rows(x, 1)
        t = target.reshape(-1)
        xp = backend.xp_of(x)
        loss, m, logs = xent_rows(x2, t, self.ignore_index)
        count = xp.asarray((t != self.ignore_index).sum(), dtype=x.dtype)  # stays on the device
        self.save_for_backward(x, target, m, logs, count)
        if self.reduction == "none":
            return loss.reshape(target.shape)
        total = loss.sum()
        return xp.asarray(total / count if self.reduction == "mean" else total, dtype=x.dtype)

    def backward(self, gy):
        x, target, a, b, count = self.saved_tensors
        return SoftmaxCrossEntropyGrad(self.reduction, self.ignore_index)(x, target, a, b, count, gy), None


class SoftmaxCrossEntropyGrad(Function):
    """gx = (softmax(x) - onehot(target)) * w per row, w = g (sum/none) or g / N (mean).

    (a, b) are the statistics SoftmaxCrossEntropy saved: the row max m and log-sum logs (rows,)
    on the GPU, e = exp(x - m) (rows, cols) and its row sums s (rows, 1) on the CPU."""

    def __init__(self, reduction, ignore_index):
        self.reduction, self.ignore_index = reduction, ignore_index

    def _row_weights(self, g, count, rows):
        xp = backend.xp_of(g)
        if self.reduction == "none":
            return g.reshape(rows, 1)
        w = g / count if self.reduction == "mean" else g
        return xp.asarray(w, dtype=g.dtype).reshape(1, 1)  # broadcasts against the rows in the kernel

    def forward(self, x, target, a, b, count, g):
        self.save_for_backward(x, target, count, g)
        if not _on_cuda(x):
            return _xent_grad_np(target, a, b, count, g, self.reduction, self.ignore_index, x.shape)
        x2, moved = _as_rows(x, 1)
        rows, cols = x2.shape
        t = target.reshape(rows, 1)
        gx = xent_bwd(x2, a.reshape(rows, 1), b.reshape(rows, 1), t, self._row_weights(g, count, rows), cols,
                      self.ignore_index)
        return _from_rows(gx, moved, 1)

    def replay_source(self, x, target, a, b, count, g, arrays, saved=(), dying=()):
        """What ``gradflow.compile``'s generated CPU replay runs: the CPU forward, without the op around it."""
        if type(arrays[0]) is not numpy.ndarray or saved:
            return None
        return (f"xent_grad_np({target}, {a}, {b}, {count}, {g}, {self.reduction!r}, {self.ignore_index!r}, "
                f"{tuple(arrays[0].shape)!r})"), {"xent_grad_np": _xent_grad_np}

    def backward(self, ggx):
        x, target, count, g = self.saved_tensors
        xp = backend.xp_of(x.data)
        target = target.data
        t = xp.expand_dims(target, 1)                          # (N, 1, d...)
        valid = t != self.ignore_index
        classes = xp.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
        onehot = Tensor._wrap((classes == t).astype(x.dtype))
        p = softmax(x, axis=1)
        g_x = g_g = None
        if self.needs_input_grad[0]:
            w = g if self.reduction == "none" else ops.broadcast_to(ops.reshape(g, (1,) * target.ndim),
                                                                    target.shape)
            if self.reduction == "mean":
                w = w / count
            w = ops.where(valid, ops.unsqueeze(w, 1), 0.0)
            g_x = w * p * (ggx - ops.sum(ggx * p, 1, keepdims=True))
        if self.needs_input_grad[5]:
            z = ops.squeeze(ops.sum(ops.where(valid, ggx * (p - onehot), 0.0), 1, keepdims=True), 1)
            if self.reduction == "sum":
                g_g = ops.sum(z)
            elif self.reduction == "mean":
                g_g = ops.sum(z) / count
            else:
                g_g = z
        return g_x, None, None, None, None, g_g


# ---- dropout and noisy relu: Philox draws keyed on (seed, offset + element index) -------------------
_DROP = ("dropout.cuh",)


@_quiet
def _dropout_np(x, scale, seed, offset, threshold):
    keep = philox.keep(seed, offset, x.size, threshold).reshape(x.shape)
    y = numpy.multiply(x, keep)  # (x * keep) * scale == x * (keep ? scale : 0) bit for bit, NaN and -0 too
    y *= x.dtype.type(scale)
    return y, keep


dropout_fwd = Elementwise("dropout_fwd", "T x, T scale, uint64 seed, uint64 offset, uint64 threshold",
                          "T y, bool mask",
                          "mask = gf_dropout_keep(seed, offset + i, threshold); y = gf_dropout(x, mask, scale)",
                          headers=_DROP, scalars="scale seed offset threshold", numpy=_dropout_np)


@_quiet
def _noisy_relu_np(x, sigma, seed, offset):
    z = x + sigma * philox.normal(seed, offset, x.size).reshape(x.shape).astype(x.dtype)
    keep = z > 0
    return _where0(keep, z), keep


noisy_relu_fwd = Elementwise("noisy_relu_fwd", "T x, T sigma, uint64 seed, uint64 offset", "T y, bool mask",
                             "const T z = gf_noisy_preact(x, sigma, seed, offset + i); mask = gf_gt0(z); "
                             "y = mask ? z : T(0)",
                             headers=_DROP, scalars="sigma seed offset", numpy=_noisy_relu_np)


# inside a CUDA graph (gradflow.compile) the Philox seed and offset are read from device memory
dropout_fwd_dev = device_scalar_twin(dropout_fwd, "seed offset")
noisy_relu_fwd_dev = device_scalar_twin(noisy_relu_fwd, "seed offset")


def _philox_args(kernel, twin, seed, offset):
    """The kernel for a draw and its (seed, offset) arguments: host integers, or the 0-d device arrays
    ``Generator.next_offset`` hands out while a CUDA graph is captured."""
    if type(seed) is int:
        return kernel, numpy.uint64(seed), numpy.uint64(offset)
    return twin, seed, offset


def _warm(twin, *scalars):
    """Compile a draw's device-scalar twin for float32 and float64 before a CUDA graph is captured
    (CuPy compiles and loads a kernel at its first call: not something to do while capturing)."""
    xp = backend.cupy()
    seed = xp.zeros((), numpy.uint64)
    for dtype in (numpy.float32, numpy.float64):
        twin(xp.zeros(4, dtype), scalars[0], seed, seed, *scalars[1:])


class Dropout(Function):
    """Inverted dropout: y = x * keep / (1 - p); the bool mask is all backward keeps."""

    device_draws = True  # gradflow.compile may put it in a CUDA graph (random.Generator.next_offset)

    @staticmethod
    def warm_device_draws():
        _warm(dropout_fwd_dev, 2.0, numpy.uint64(2 ** 31))

    def __init__(self, p, generator=None):
        self.p, self.generator = p, generator

    def forward(self, x):
        threshold = philox.keep_threshold(self.p)
        self.scale = 0.0 if self.p == 1 else 1.0 / (1.0 - self.p)
        seed, offset = philox.reserve(x.size, self.generator)
        x = backend.xp_of(x).ascontiguousarray(x)  # i is the C-order element index
        kernel, seed, offset = _philox_args(dropout_fwd, dropout_fwd_dev, seed, offset)
        y, mask = kernel(x, self.scale, seed, offset, numpy.uint64(threshold))
        self.save_for_backward(mask)
        return y

    def backward(self, gy):
        mask, = self.saved_tensors
        return MaskScale(self.scale, 0.0)(mask, gy)


class NoisyReLU(Function):
    """relu(x + std * n), n ~ N(0, 1) drawn from Philox; the noise is a constant for backward."""

    device_draws = True  # gradflow.compile may put it in a CUDA graph

    @staticmethod
    def warm_device_draws():
        _warm(noisy_relu_fwd_dev, 0.1)

    def __init__(self, std, generator=None):
        self.std, self.generator = float(std), generator

    def forward(self, x):
        seed, offset = philox.reserve(x.size, self.generator)
        x = backend.xp_of(x).ascontiguousarray(x)
        kernel, seed, offset = _philox_args(noisy_relu_fwd, noisy_relu_fwd_dev, seed, offset)
        y, mask = kernel(x, self.std, seed, offset)
        self.save_for_backward(mask)
        return y

    def backward(self, gy):
        mask, = self.saved_tensors
        return MaskScale(1.0, 0.0)(mask, gy)


# ---- the functional API ------------------------------------------------------------------------------
def _tensor(x, name):
    x = as_tensor(x)
    _check_float(x, name)
    return x


def sigmoid(x):
    return Sigmoid()(_tensor(x, "sigmoid"))


def tanh(x):
    return Tanh()(_tensor(x, "tanh"))


def relu(x, inplace=False):  # inplace accepted (a new tensor is returned either way)
    return ReLU()(_tensor(x, "relu"))


def leaky_relu(x, negative_slope=0.01, inplace=False):
    return LeakyReLU(negative_slope)(_tensor(x, "leaky_relu"))


def prelu(x, weight):
    """max(0, x) + weight * min(0, x); ``weight`` (C,) is per channel (dim 1) or (1,) shared."""
    return PReLU()(_tensor(x, "prelu"), _tensor(weight, "prelu"))


def noisy_relu(x, std=0.1, training=True):
    """ReLU of x plus N(0, std^2) noise while training (reproducible under manual_seed); plain ReLU at eval."""
    x = _tensor(x, "noisy_relu")
    if not training or std == 0:
        return relu(x)
    if std < 0:
        raise ValueError(f"noisy_relu: std must be >= 0, got {std}")
    return NoisyReLU(std)(x)


def elu(x, alpha=1.0, inplace=False):
    return ELU(float(alpha), 1.0)(_tensor(x, "elu"))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu(x, inplace=False):
    return ELU(SELU_ALPHA * SELU_SCALE, SELU_SCALE)(_tensor(x, "selu"))


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch semantics)."""
    return Softplus(float(beta), float(threshold))(_tensor(x, "softplus"))


def gelu(x, approximate="none"):
    """x * Phi(x); ``approximate='tanh'`` uses 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if approximate == "none":
        return GELU()(_tensor(x, "gelu"))
    if approximate == "tanh":
        return GELUTanh()(_tensor(x, "gelu"))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _axis(axis, ndim, name):
    if ndim == 0:
        if axis not in (0, -1):
            raise IndexError(f"{name}: dimension out of range (expected to be in range of [-1, 0], but got {axis})")
        return -1
    if not -ndim <= axis < ndim:
        raise IndexError(f"{name}: dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
                         f"but got {axis})")
    return axis % ndim


def _implicit_dim(name, ndim):
    """torch's dim for softmax/log_softmax/softmin called without one (deprecated there, with a
    warning): 0 for 0-, 1- and 3-d inputs, else 1. Not the last dim: a (N, C, H, W) batch
    normalised over W would be a silently different result from the same PyTorch code."""
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
                  f"dim=X as an argument.", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(x, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """exp(x - max) / sum(exp(x - max)) along ``dim`` (``axis`` is the NumPy spelling); ``dtype`` casts
    the input first, as torch's."""
    x = _tensor(x if dtype is None else ops.astype(as_tensor(x), dtype), "softmax")
    dim = dim if axis is None else axis
    return Softmax(_axis(_implicit_dim("softmax", x.ndim) if dim is None else dim, x.ndim, "softmax"))(x)


def log_softmax(x, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """x - max - log(sum(exp(x - max))) along ``dim`` (``axis`` is the NumPy spelling); ``dtype`` casts
    the input first, as torch's."""
    x = _tensor(x if dtype is None else ops.astype(as_tensor(x), dtype), "log_softmax")
    dim = dim if axis is None else axis
    return LogSoftmax(_axis(_implicit_dim("log_softmax", x.ndim) if dim is None else dim, x.ndim,
                            "log_softmax"))(x)


def softmax_cross_entropy(logits, target, reduction="mean", ignore_index=-100):
    """Cross-entropy of ``logits`` (N, C) or (N, C, d...) or (C,) against class indices.

    ``target`` holds int class indices of shape (N,)/(N, d...)/() (a Tensor or an array).
    Rows whose target equals ``ignore_index`` add nothing and are left out of the mean,
    as in ``torch.nn.functional.cross_entropy``. ``reduction``: 'mean', 'sum' or 'none'.
    """
    logits = _tensor(logits, "softmax_cross_entropy")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"softmax_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(target, Tensor):
        target = Tensor._wrap(backend.xp_of(logits.data).asarray(target))
    if target.dtype.kind not in "iu":
        raise DTypeError(f"softmax_cross_entropy: target must hold integer class indices, got dtype {target.dtype}")
    squeeze = logits.ndim == 1
    if squeeze:
        logits, target = ops.unsqueeze(logits, 0), ops.reshape(target, (1,))
    expected = logits.shape[:1] + logits.shape[2:]
    if logits.ndim < 2 or target.shape != expected:
        raise OpError(f"softmax_cross_entropy: target shape {target.shape} does not match logits shape "
                         f"{logits.shape} (expected {expected})")
    loss = SoftmaxCrossEntropy(reduction, int(ignore_index))(logits, ops.astype(target, numpy.int64))
    return ops.reshape(loss, ()) if squeeze and reduction == "none" else loss


def dropout(x, p=0.5, training=True, inplace=False, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) while training.

    The mask comes from Philox keyed on (seed, offset, element index), the offset taken
    from ``gradflow.random.default_generator`` (or ``generator``), so the same
    ``manual_seed`` gives the same mask on the CPU and on the GPU.
    """
    x = _tensor(x, "dropout")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return x
    return Dropout(float(p), generator)(x)


# ==== issue 13: more activations, each one kernel forward and one kernel backward ===================
# NumPy twins follow the kernels' operation order; second derivatives (for double backward) are ops.
@_quiet
def _silu_np(x):
    return x / (1 + numpy.exp(-x))


@_quiet
def _silu_bwd_np(x, g):
    s = 1 / (1 + numpy.exp(-x))
    return g * s * (1 + x * (1 - s))


@_quiet
def _hardtanh_np(x, lo, hi):
    t = x.dtype.type
    return numpy.where(x < t(lo), t(lo), numpy.where(x > t(hi), t(hi), x))


@_quiet
def _hardtanh_bwd_np(x, g, lo, hi):
    t = x.dtype.type
    return numpy.where((x <= t(lo)) | (x >= t(hi)), t(0), g)


def _clamp06(z):
    t = z.dtype.type
    return numpy.where(z < 0, t(0), numpy.where(z > 6, t(6), z))


@_quiet
def _hardsigmoid_np(x):
    return _clamp06(x + x.dtype.type(3)) / x.dtype.type(6)


@_quiet
def _hardsigmoid_bwd_np(x, g):
    return numpy.where((x > -3) & (x < 3), g / g.dtype.type(6), g.dtype.type(0))


@_quiet
def _hardswish_np(x):
    return x * _clamp06(x + x.dtype.type(3)) / x.dtype.type(6)


@_quiet
def _hardswish_bwd_np(x, g):
    t = x.dtype.type
    # the kinks at -3 and 3 belong to the flat parts, as in torch 2: 0 at -3, g at 3
    return numpy.where(x <= -3, t(0), numpy.where(x < 3, g * ((x / t(3)) + t(0.5)), g))


@_quiet
def _mish_np(x):
    return x * numpy.tanh(numpy.log1p(numpy.exp(x)))


@_quiet
def _mish_bwd_np(x, g):
    s = 1 / (1 + numpy.exp(-x))
    t = numpy.tanh(numpy.log1p(numpy.exp(x)))
    return g * (t + x * s * (1 - t * t))


@_quiet
def _softsign_np(x):
    return x / (numpy.abs(x) + 1)


@_quiet
def _softsign_bwd_np(x, g):
    d = numpy.abs(x) + 1
    return g / (d * d)


@_quiet
def _logsigmoid_np(x):
    neg = x < 0
    z = numpy.exp(numpy.where(neg, x, -x))
    return numpy.where(neg, x, x.dtype.type(0)) - numpy.log1p(z)


@_quiet
def _logsigmoid_bwd_np(x, g):
    neg = x < 0
    t = x.dtype.type
    z = numpy.exp(numpy.where(neg, x, -x))
    return g * (numpy.where(neg, t(1), t(0)) - numpy.where(neg, t(1), t(-1)) * z / (1 + z))


@_quiet
def _celu_np(x, alpha, inv_alpha):
    return numpy.where(x <= 0, numpy.expm1(x * inv_alpha) * alpha, x)


@_quiet
def _celu_bwd_np(x, g, alpha, inv_alpha):
    return numpy.where(x <= 0, g * inv_alpha * alpha * numpy.exp(x * inv_alpha), g)


def _pair_kernels(name, params="", scalars="", fwd_np=None, bwd_np=None):
    extra = "".join(f", T {p}" for p in params.split())
    call = "".join(f", {p}" for p in params.split())
    fwd = Elementwise(f"{name}_fwd", "T x" + extra, "T y", f"y = gf_{name}(x{call})", headers=_ACT,
                      scalars=scalars, numpy=fwd_np)
    bwd = Elementwise(f"{name}_bwd", "T x, T g" + extra, "T gx", f"gx = gf_{name}_grad(x, g{call})", headers=_ACT,
                      scalars=scalars, numpy=bwd_np)
    return fwd, bwd


silu_fwd, silu_bwd = _pair_kernels("silu", fwd_np=_silu_np, bwd_np=_silu_bwd_np)
hardtanh_fwd, hardtanh_bwd = _pair_kernels("hardtanh", "lo hi", "lo hi", _hardtanh_np, _hardtanh_bwd_np)
hardsigmoid_fwd, hardsigmoid_bwd = _pair_kernels("hardsigmoid", fwd_np=_hardsigmoid_np, bwd_np=_hardsigmoid_bwd_np)
hardswish_fwd, hardswish_bwd = _pair_kernels("hardswish", fwd_np=_hardswish_np, bwd_np=_hardswish_bwd_np)
mish_fwd, mish_bwd = _pair_kernels("mish", fwd_np=_mish_np, bwd_np=_mish_bwd_np)
softsign_fwd, softsign_bwd = _pair_kernels("softsign", fwd_np=_softsign_np, bwd_np=_softsign_bwd_np)
logsigmoid_fwd, logsigmoid_bwd = _pair_kernels("logsigmoid", fwd_np=_logsigmoid_np, bwd_np=_logsigmoid_bwd_np)
celu_fwd, celu_bwd = _pair_kernels("celu", "alpha inv_alpha", "alpha inv_alpha", _celu_np, _celu_bwd_np)


class SiLU(_Smooth):
    fwd, bwd = silu_fwd, silu_bwd

    def second(self, x):  # s (1 - s) (2 + x (1 - 2 s))
        s = sigmoid(x)
        return s * (1 - s) * (2 + x * (1 - 2 * s))


class Hardtanh(_Smooth):
    fwd, bwd = hardtanh_fwd, hardtanh_bwd

    def second(self, x):
        return ops.zeros_like_array(x)


class Hardsigmoid(_Smooth):
    fwd, bwd = hardsigmoid_fwd, hardsigmoid_bwd

    def second(self, x):
        return ops.zeros_like_array(x)


class Hardswish(_Smooth):
    fwd, bwd = hardswish_fwd, hardswish_bwd

    def second(self, x):
        inside = (x.data >= -3) & (x.data <= 3)
        return Tensor._wrap(inside.astype(x.dtype) / x.dtype.type(3))  # piecewise constant: no gradient


class Mish(_Smooth):
    fwd, bwd = mish_fwd, mish_bwd

    def second(self, x):  # d/dx [t + x s (1 - t^2)], t = tanh(softplus x), t' = (1 - t^2) s, s' = s (1 - s)
        s = sigmoid(x)
        t = tanh(softplus(x))
        u = 1 - t * t
        return u * s * 2 + x * s * (1 - s) * u - x * s * 2 * t * u * s


class Softsign(_Smooth):
    fwd, bwd = softsign_fwd, softsign_bwd

    def second(self, x):  # -2 sign(x) / (1 + |x|)^3
        d = ops.abs(x) + 1
        return ops.sign(x) * -2.0 / (d * d * d)


class LogSigmoid(_Smooth):
    fwd, bwd = logsigmoid_fwd, logsigmoid_bwd

    def second(self, x):
        s = sigmoid(x)
        return -(s * (1 - s))


class CELU(_Smooth):
    fwd, bwd = celu_fwd, celu_bwd

    def second(self, x):
        alpha, inv = self.params
        return ops.where(x.data <= 0, ops.exp(x * inv) * inv, 0.0)


def silu(x, inplace=False):
    return SiLU()(_tensor(x, "silu"))


def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) cannot be greater than max_val ({max_val})")
    return Hardtanh(float(min_val), float(max_val))(_tensor(x, "hardtanh"))


def relu6(x, inplace=False):
    return hardtanh(x, 0.0, 6.0)


def hardsigmoid(x, inplace=False):
    return Hardsigmoid()(_tensor(x, "hardsigmoid"))


def hardswish(x, inplace=False):
    return Hardswish()(_tensor(x, "hardswish"))


def mish(x, inplace=False):
    return Mish()(_tensor(x, "mish"))


def softsign(x):
    return Softsign()(_tensor(x, "softsign"))


def logsigmoid(x):
    return LogSigmoid()(_tensor(x, "logsigmoid"))


def celu(x, alpha=1.0, inplace=False):
    if alpha == 0:
        raise ValueError("ZeroDivisionError: alpha cannot be 0 for CELU")
    return CELU(float(alpha), 1.0 / float(alpha))(_tensor(x, "celu"))


def softmin(x, dim=None):
    """softmax(-x) along ``dim``."""
    x = _tensor(x, "softmin")
    return softmax(-x, _implicit_dim("softmin", x.ndim) if dim is None else dim)
