"""The real CUDA kernels (through CuPy) against their NumPy twins. Skipped without a GPU.

The GPU build contracts a*b+c into FMAs and uses CUDA's libm, so floats are compared with
a few-eps tolerance; random masks must be identical to the CPU's bit for bit.
"""
import numpy
import pytest

import gradflow as gf
from gradflow import activation as A
from gradflow import dropout_ops as D
from gradflow import kernel as K
from gradflow import philox
from gradflow import softmax_ops as S
from gradflow.optim import fused
from kernel_cases import TRANSCENDENTAL, rng_for, spec

pytestmark = pytest.mark.gpu
DTYPES = [numpy.float32, numpy.float64]


@pytest.fixture(scope="module")
def cp():
    return gf.backend.cupy()


def _to(cp, a):
    return cp.asarray(a) if isinstance(a, numpy.ndarray) else a


def _close(got, want, dtype, rel=16, abs_=16, scale=None):
    """|got - want| <= (rel |want| + abs_ scale) eps; scale defaults to the largest finite |want|."""
    eps = numpy.finfo(dtype).eps
    if scale is None:
        finite = numpy.where(numpy.isfinite(want), want, 0)
        scale = max(1.0, float(numpy.abs(finite).max())) if want.size else 1.0
    bad = ~(numpy.abs(got.astype(float) - want) <= (rel * numpy.abs(want) + abs_ * scale) * eps)
    bad &= ~(numpy.isnan(got) & numpy.isnan(want)) & ~(got == want)  # NaN where NaN; equal infinities
    assert not bad.any(), f"{bad.sum()} mismatches, e.g. got {got[bad][:5]} want {want[bad][:5]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(K.ELEMENTWISE))
def test_elementwise_kernel_matches_numpy(cp, name, dtype):
    k = K.ELEMENTWISE[name]
    args = spec(name, rng_for(name), dtype)
    cpu_args = [a.copy() if isinstance(a, numpy.ndarray) else a for a in args]
    gpu_args = [_to(cp, a) for a in args]
    want = k.numpy(*cpu_args)
    got = k(*gpu_args)
    n_in = sum(not p.output for p in k.params)
    if want is None:  # in-place: compare the updated arrays
        want, got = tuple(cpu_args[n_in:]), tuple(gpu_args[n_in:])
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    rel, abs_ = TRANSCENDENTAL.get(name, (4, 4))  # FMA contraction: a few eps even for + - * /
    first = next(a for a in args if isinstance(a, numpy.ndarray) and a.dtype == dtype)
    for g, w in zip(got, want):
        g = cp.asnumpy(g)
        if g.dtype.kind == "b":
            numpy.testing.assert_array_equal(g, w)  # masks: identical on both devices
        else:
            # the absolute term scales with the first input: cancellation is relative to it
            scale = 1 + numpy.nan_to_num(numpy.abs(numpy.broadcast_to(first, g.shape)), posinf=0)
            _close(g, numpy.broadcast_to(w, g.shape), dtype, 4 * rel, 4 * max(abs_, 4), scale)
    assert k.cupy_kernel() is k.cupy_kernel()  # compiled once


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (3, 33), (5, 100), (4, 1025), (2, 5000), (300, 10)], ids=str)
def test_row_kernels_match_numpy(cp, dtype, shape):
    rng = numpy.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    x[0, 0] = 80
    g = rng.standard_normal(shape).astype(dtype)
    for entry, (a, b) in {"gf_softmax_fwd": (x, None), "gf_log_softmax_fwd": (x, None),
                          "gf_softmax_bwd": (S._softmax_rows_np(x), g),
                          "gf_log_softmax_bwd": (S._log_softmax_rows_np(x), g)}.items():
        kernel = K.ROW_KERNELS[entry]
        got = cp.asnumpy(kernel(cp.asarray(a), None if b is None else cp.asarray(b)))
        _close(got, kernel.numpy(a, b), dtype, 32, 32)
    t = rng.integers(0, shape[1], shape[0])
    t[0] = -100
    loss, m, logs = S.xent_rows(cp.asarray(x), cp.asarray(t), -100)
    want_loss, want_m, want_logs = S._xent_rows_np(x, t, -100)
    numpy.testing.assert_array_equal(cp.asnumpy(m), want_m)
    _close(cp.asnumpy(logs), want_logs, dtype, 32, 32)
    _close(cp.asnumpy(loss), want_loss, dtype, 32, 32)


def test_softmax_special_rows(cp):
    x = numpy.array([[-numpy.inf, 0, 1, -numpy.inf], [1e4, 1e4, -1e4, 0], [0, numpy.nan, 1, 2],
                     [-numpy.inf] * 4], numpy.float32)
    got = cp.asnumpy(S.softmax_rows(cp.asarray(x)))
    numpy.testing.assert_allclose(got, S._softmax_rows_np(x), rtol=1e-6, atol=1e-7, equal_nan=True)


FUNCTIONS = {
    "sigmoid": A.sigmoid, "tanh": A.tanh, "relu": A.relu, "leaky_relu": lambda x: A.leaky_relu(x, 0.1),
    "elu": A.elu, "selu": A.selu, "softplus": A.softplus, "gelu": A.gelu,
    "gelu_tanh": lambda x: A.gelu(x, "tanh"), "softmax": S.softmax, "softmax_axis0": lambda x: S.softmax(x, 0),
    "log_softmax": lambda x: S.log_softmax(x, 1),
    "xent": lambda x: S.softmax_cross_entropy(x, numpy.array([[1, 0, 2, 3, 4, 5, 6, 7]] * 4)[:, :6], "none"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_functions_on_cuda_match_cpu(cp, name, dtype):
    a = (numpy.random.default_rng(3).standard_normal((4, 8, 6)) * 3).astype(dtype)
    results = []
    for device in ("cpu", "cuda"):
        x = gf.Tensor(a.copy() if device == "cpu" else cp.asarray(a), requires_grad=True)
        y = FUNCTIONS[name](x)
        assert y.device == device
        gy = numpy.random.default_rng(4).standard_normal(y.shape).astype(dtype)
        gx, = gf.grad(y, [x], gf.Tensor(gy if device == "cpu" else cp.asarray(gy)), create_graph=True)
        ggx, = gf.grad(gx.sum(), [x], allow_unused=True) if gx.requires_grad else (None,)
        results.append([y.numpy(), gx.numpy()] + ([] if ggx is None else [ggx.numpy()]))
    for c, g in zip(*results):
        _close(g, c, dtype, 64, 64)


def test_dropout_masks_identical_on_cpu_and_gpu(cp):
    a = numpy.random.default_rng(5).standard_normal((33, 97)).astype(numpy.float32)
    out = {}
    for device in ("cpu", "cuda"):
        gf.manual_seed(2024)
        x = gf.Tensor(a if device == "cpu" else cp.asarray(a), requires_grad=True)
        y1, y2 = D.dropout(x, 0.3), D.dropout(x, 0.3)
        (y1 * 2 + y2).sum().backward()
        noisy = D.noisy_relu(x, std=0.5)
        mask, = noisy.creator.saved_tensors
        out[device] = [y1.numpy(), y2.numpy(), x.grad.numpy(), mask.numpy(), noisy.numpy()]
    for c, g in zip(out["cpu"][:4], out["cuda"][:4]):
        numpy.testing.assert_array_equal(c, g)
    numpy.testing.assert_allclose(out["cuda"][4], out["cpu"][4], rtol=1e-6, atol=1e-6)
    keep = philox.keep(2024, 0, a.size, philox.keep_threshold(0.3)).reshape(a.shape)
    numpy.testing.assert_array_equal(out["cuda"][0] != 0, keep & (a != 0))


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 2 ** 33 + 5, 2 ** 64 - 1001, 2 ** 64 - 1])
def test_dropout_and_noise_draws_match_numpy_philox_at_any_offset(cp, offset):
    """Dropout masks bit for bit and noisy-ReLU pre-activations to a few ulp of the NumPy Philox, at
    offsets that are not a multiple of 4 words and across the 2^64 counter wraparound."""
    seed, thr = numpy.uint64(0xDEADBEEF12345678), numpy.uint64(philox.keep_threshold(0.3))
    x = numpy.random.default_rng(6).standard_normal(4099)
    for dtype in DTYPES:
        xd = x.astype(dtype)
        y, keep = D.dropout_fwd(cp.asarray(xd), 1 / 0.7, seed, numpy.uint64(offset), thr)
        want_y, want_keep = D.dropout_fwd(xd, 1 / 0.7, seed, numpy.uint64(offset), thr)
        numpy.testing.assert_array_equal(cp.asnumpy(keep), want_keep)
        numpy.testing.assert_array_equal(cp.asnumpy(y), want_y)
    z, _ = D.noisy_relu_fwd(cp.asarray(x), 0.5, seed, numpy.uint64(offset))
    want_z, _ = D.noisy_relu_fwd(x, 0.5, seed, numpy.uint64(offset))
    numpy.testing.assert_allclose(cp.asnumpy(z), want_z, rtol=1e-13, atol=1e-13)


def test_dropout_rate_on_gpu(cp):
    y = D.dropout(gf.Tensor(cp.ones(10 ** 6, cp.float32)), 0.2)
    assert abs(float((y.data != 0).mean()) - 0.8) < 0.002


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fused_optimizers_on_gpu_match_cpu(cp, dtype):
    rng = numpy.random.default_rng(6)
    p0 = rng.standard_normal(1000).astype(dtype)
    grads = rng.standard_normal((20, 1000)).astype(dtype)
    runs = {
        "sgd": lambda p, g, s, k: fused.sgd_(p, g, s[0], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                                             l1=0.001, first_step=k == 0),
        "adam": lambda p, g, s, k: fused.adam_(p, g, s[0], s[1], s[2], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                                               weight_decay=0.1, step=k + 1, amsgrad=True,
                                               decoupled_weight_decay=True),
        "adagrad": lambda p, g, s, k: fused.adagrad_(p, g, s[0], lr=0.1, lr_decay=0.01, weight_decay=0.01,
                                                     eps=1e-10, step=k + 1),
        "adadelta": lambda p, g, s, k: fused.adadelta_(p, g, s[0], s[1], lr=1.0, rho=0.9, eps=1e-6,
                                                       weight_decay=0.01),
        "rmsprop": lambda p, g, s, k: fused.rmsprop_(p, g, s[0], s[1], s[2], lr=0.01, alpha=0.99, eps=1e-8,
                                                     weight_decay=0.01, momentum=0.9, centered=True),
    }
    for name, step in runs.items():
        cpu_p, gpu_p = p0.copy(), cp.asarray(p0)
        cpu_s = [numpy.zeros_like(p0) for _ in range(3)]
        gpu_s = [cp.zeros_like(gpu_p) for _ in range(3)]
        for k in range(20):
            step(cpu_p, grads[k], cpu_s, k)
            step(gpu_p, cp.asarray(grads[k]), gpu_s, k)
        numpy.testing.assert_allclose(cp.asnumpy(gpu_p), cpu_p, rtol=1e-5 if dtype == numpy.float32 else 1e-12,
                                      atol=1e-6 if dtype == numpy.float32 else 1e-13, err_msg=name)


def test_cross_entropy_large_logits_and_ignore_index_in_range(cp):
    """Loss and gradient on the GPU match PyTorch's float32 accuracy at logits ~1e4 and tied ±3e38."""
    x = numpy.array([[1e4, 1e4 + 1, 1e4 - 2, 1e4], [3e38, 3e38, 3e38, -3e38], [1e6, 1e6 + 0.5, 0, 1e6]],
                    numpy.float32)
    t = numpy.array([1, 0, 2])
    for ignore_index in (0, -100):
        got, want = [], []
        for dev in ("cuda", "cpu"):
            xt = gf.tensor(x, requires_grad=True, device=dev)
            loss = S.softmax_cross_entropy(xt, gf.tensor(t, device=dev), ignore_index=ignore_index)
            loss.backward()
            (got if dev == "cuda" else want).append((loss.numpy(), xt.grad.numpy()))
        numpy.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-6)
        numpy.testing.assert_allclose(got[0][1], want[0][1], rtol=1e-6, atol=1e-7)
