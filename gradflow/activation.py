"""Elementwise activations as differentiable Functions: sigmoid, tanh, the relu family and the smooth ones.

Every forward is one kernel (``gradflow.kernel``: the NumPy twin on the CPU, CUDA on the
GPU) and saves only what its backward reads: the output for sigmoid/tanh/relu, the
input where the derivative needs it, or a one-byte mask for the piecewise-linear ones.
Every backward is one more kernel, wrapped in a Function of its own whose backward is
written with differentiable ops, so second derivatives work (third ones too, through ops).
Formulas and edge cases (kinks, NaN, thresholds) follow PyTorch, except that gelu's CDF
is erfc(-x/sqrt 2)/2, accurate in the left tail where torch's 1 + erf cancels.
Supported dtypes: float32 and float64.

Softmax along an axis and the fused softmax cross-entropy are in ``gradflow.softmax_ops``, the
ops that draw Philox masks (dropout, noisy relu) in ``gradflow.dropout_ops``. Both build on this
module (``_quiet``, ``_tensor``, ``MaskScale``, ``relu``); it imports neither.
"""
import math

import numpy

from gradflow import backend, ops
from gradflow.kernel import Elementwise
from gradflow.tensor import DTypeError, Function, OpError, Tensor, as_tensor

_ACT = ("activations.cuh",)
_quiet = numpy.errstate(all="ignore")  # NaN/inf propagate silently, as on the GPU


def _check_float(x, name):
    if x.dtype not in (numpy.float32, numpy.float64):
        raise DTypeError(f"{name}: expected a float32 or float64 tensor, got {x.dtype}")


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
    one flat read-only buffer of zeros per dtype (``_zeros_for``). Comparisons and maximum raise no
    floating-point warnings, NaN included: no errstate. ``out``: where y goes (x itself in a replay
    where x dies here)."""
    return numpy.maximum(x, _zeros_for(x), out=out)


def _zeros_for(x):
    """What relu compares ``x`` with: a view of zeros of x's shape (from 1024 elements, C-contiguous), else
    a zero of its dtype. The views share one flat read-only buffer per dtype, which only grows; a large
    numpy.zeros maps the kernel's zero page, which costs address space rather than memory."""
    n = x.size
    if n < 1024 or not x.flags.c_contiguous:
        return x.dtype.type(0)
    zeros = _ZEROS.get(x.dtype)
    if zeros is None or zeros.size < n:
        zeros = numpy.zeros(max(n, 0 if zeros is None else 2 * zeros.size), x.dtype)
        zeros.flags.writeable = False
        _ZEROS[x.dtype] = zeros
    return zeros[:n].reshape(x.shape)


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
        zeros = _zeros_for(arrays[0])  # x has the recorded shape and layout in every replay: bound once
        name = f"_zeros{id(zeros)}"
        return (f"_maximum({x}, {name}{f', out={x}' if 0 in dying else ''})",
                {"_maximum": numpy.maximum, name: zeros})

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
        g_type = arrays[1].dtype.type
        bits = _SAME_WIDTH_INT.get(arrays[1].dtype.itemsize)
        if arrays[1].ndim == 0 or bits is None:
            return f"relu_grad_np({y}, {g}{f', {g}' if 1 in dying else ''})", {"relu_grad_np": _relu_grad_np}
        # _relu_grad_np written out (the same two passes) for the recorded dtype: no Python frame in between
        ints, floats = f"_{bits.__name__}", f"_{g_type.__name__}"
        out = f", out={g}.view({ints})" if 1 in dying else ""
        return (f"_multiply({g}.view({ints}), _not_equal({y}, 0){out}).view({floats})",
                {"_multiply": numpy.multiply, "_not_equal": numpy.not_equal, ints: bits, floats: g_type})

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
