"""Dropout and noisy relu: the ops that draw random masks, as differentiable Functions.

Its own module because these are the ops that consume random numbers: each forward draws from
Philox keyed on (seed, offset + element index), the offset reserved from a ``gradflow.random``
generator, so the same ``manual_seed`` gives the same mask on the CPU and on the GPU, and
``gradflow.compile`` may put them in a CUDA graph (the device-scalar twins). The backward is
``gradflow.activation.MaskScale`` on the saved one-byte mask. Supported dtypes: float32 and float64.
"""
import numpy

from gradflow import backend, philox
from gradflow.activation import MaskScale, _quiet, _tensor, relu
from gradflow.kernel import Elementwise, device_scalar_twin
from gradflow.tensor import Function


def _where0(cond, a):
    """where(cond, a, 0) in a's dtype."""
    return backend.xp_of(a).where(cond, a, a.dtype.type(0))


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
def noisy_relu(x, std=0.1, training=True):
    """ReLU of x plus N(0, std^2) noise while training (reproducible under manual_seed); plain ReLU at eval."""
    x = _tensor(x, "noisy_relu")
    if not training or std == 0:
        return relu(x)
    if std < 0:
        raise ValueError(f"noisy_relu: std must be >= 0, got {std}")
    return NoisyReLU(std)(x)


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
