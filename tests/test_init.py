"""Initializers: statistics of the drawn weights, gains, fans, dtype/device/version handling."""
import math

import numpy
import pytest

import gradflow
from gradflow import nn
from gradflow.nn import init

SHAPE = (300, 400)  # fan_out 300, fan_in 400: 120k draws, so std estimates are within ~0.5%


def param(shape=SHAPE, dtype=numpy.float32):
    return nn.Parameter(numpy.zeros(shape, dtype=dtype))


def assert_normal(w, std, mean=0.0):
    a = w.numpy().astype(numpy.float64)
    assert abs(a.mean() - mean) < 0.02 * std + 1e-12
    assert a.std() == pytest.approx(std, rel=0.02)
    # a normal has ~0.27% of draws beyond 3 std, a uniform none
    assert 0.001 < numpy.mean(numpy.abs(a - mean) > 3 * std) < 0.005


def assert_uniform(w, bound):
    a = w.numpy().astype(numpy.float64)
    assert a.min() >= -bound and a.max() <= bound
    assert a.min() < -0.99 * bound and a.max() > 0.99 * bound
    assert a.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_uniform_and_normal():
    assert_uniform(init.uniform_(param(), -0.3, 0.3), 0.3)
    w = init.uniform_(param(), 2.0, 5.0).numpy()
    assert w.min() >= 2.0 and w.max() <= 5.0 and w.mean() == pytest.approx(3.5, abs=0.02)
    assert_normal(init.normal_(param(), 0.0, 0.05), 0.05)
    assert_normal(init.normal_(param(), 1.5, 2.0), 2.0, mean=1.5)


def test_xavier():
    fan_in, fan_out = SHAPE[1], SHAPE[0]
    assert_uniform(init.xavier_uniform_(param()), math.sqrt(6 / (fan_in + fan_out)))
    assert_uniform(init.xavier_uniform_(param(), gain=2.0), 2 * math.sqrt(6 / (fan_in + fan_out)))
    assert_normal(init.xavier_normal_(param()), math.sqrt(2 / (fan_in + fan_out)))


def test_kaiming_modes_and_nonlinearities():
    fan_in, fan_out = SHAPE[1], SHAPE[0]
    assert_uniform(init.kaiming_uniform_(param(), nonlinearity="relu"), math.sqrt(2) * math.sqrt(3 / fan_in))
    assert_uniform(init.kaiming_uniform_(param(), mode="fan_out", nonlinearity="relu"),
                   math.sqrt(2) * math.sqrt(3 / fan_out))
    assert_normal(init.kaiming_normal_(param(), nonlinearity="relu"), math.sqrt(2 / fan_in))
    assert_normal(init.kaiming_normal_(param(), mode="fan_out", nonlinearity="tanh"), (5 / 3) / math.sqrt(fan_out))
    # the default: leaky_relu with a=0 has gain sqrt(2); a=sqrt(5) gives torch's Linear bound 1/sqrt(fan_in)
    assert_normal(init.kaiming_normal_(param()), math.sqrt(2 / fan_in))
    assert_uniform(init.kaiming_uniform_(param(), a=math.sqrt(5)), 1 / math.sqrt(fan_in))
    with pytest.raises(ValueError, match="mode 'fan_avg' not supported"):
        init.kaiming_normal_(param(), mode="fan_avg")


def test_lecun():
    assert_normal(init.lecun_normal_(param()), 1 / math.sqrt(SHAPE[1]))
    assert_uniform(init.lecun_uniform_(param()), math.sqrt(3 / SHAPE[1]))


def test_constants():
    assert numpy.all(init.zeros_(param((3, 2))).numpy() == 0)
    assert numpy.all(init.ones_(param((3, 2))).numpy() == 1)
    assert numpy.all(init.constant_(param((4,)), 0.25).numpy() == 0.25)


def test_calculate_gain_matches_torch_values():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    torch = pytest.importorskip("torch")
    for name, param_ in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                         ("leaky_relu", 0.3), ("selu", None), ("sigmoid", None)]:
        assert init.calculate_gain(name, param_) == pytest.approx(torch.nn.init.calculate_gain(name, param_))


def test_fans_of_conv_shaped_weights():
    w = param((64, 32, 5, 5))  # fan_in 32*25 = 800, fan_out 64*25 = 1600
    assert_normal(init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 1600))
    assert_normal(init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / 800))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(param((5,)))


def test_in_place_keeps_dtype_and_object_and_bumps_version():
    w = param((20, 10), dtype=numpy.float64)
    data, version = w.data, w._version
    out = init.kaiming_uniform_(w)
    assert out is w and w.data is data and w.dtype == numpy.float64 and w._version == version + 1
    assert len(numpy.unique(w.numpy())) == 200  # really float64 draws, not float32 ones upcast
    assert init.normal_(param((3,), numpy.float32)).dtype == numpy.float32


def test_reproducible_under_manual_seed_and_own_generator():
    gradflow.manual_seed(11)
    a = init.normal_(param((5, 5))).numpy()
    gradflow.manual_seed(11)
    b = init.normal_(param((5, 5))).numpy()
    assert numpy.array_equal(a, b)
    c = init.normal_(param((5, 5)), generator=numpy.random.default_rng(3)).numpy()
    d = init.normal_(param((5, 5)), generator=gradflow.random.Generator(3)).numpy()
    assert numpy.array_equal(c, d)


@pytest.mark.gpu
def test_initializers_on_gpu_match_cpu_draws():
    gradflow.manual_seed(5)
    cpu = init.xavier_normal_(param((30, 40))).numpy()
    gradflow.manual_seed(5)
    w = nn.Parameter(gradflow.zeros(30, 40, device="cuda"))
    init.xavier_normal_(w)
    assert w.device == "cuda" and numpy.array_equal(w.numpy(), cpu)


# ---- eye_, dirac_, orthogonal_, trunc_normal_, sparse_ ----------------------------------------------
def test_eye_and_dirac_match_torch():
    torch = pytest.importorskip("torch")
    for shape in [(3, 3), (2, 5), (5, 2)]:
        w = init.eye_(param(shape))
        assert isinstance(w, nn.Parameter)
        assert numpy.array_equal(w.numpy(), torch.nn.init.eye_(torch.empty(shape)).numpy())
    for shape, groups in [((4, 3, 5), 1), ((6, 2, 3, 3), 2), ((4, 4, 2, 3, 4), 2), ((6, 1, 3, 3), 3),
                          ((2, 5, 4, 4), 1)]:
        got = init.dirac_(init.ones_(param(shape)), groups).numpy()
        assert numpy.array_equal(got, torch.nn.init.dirac_(torch.ones(shape), groups).numpy()), (shape, groups)
    for bad in [(3,), (2, 3, 4)]:
        with pytest.raises(ValueError, match="Only tensors with 2 dimensions are supported"):
            init.eye_(param(bad))
    with pytest.raises(ValueError, match="Only tensors with 3, 4, or 5 dimensions are supported"):
        init.dirac_(param((3, 3)))
    with pytest.raises(ValueError, match="dim 0 must be divisible by groups"):
        init.dirac_(param((5, 2, 3)), groups=2)


def test_dirac_conv_is_identity():
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    init.dirac_(conv.weight)
    x = numpy.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(numpy.float32)
    numpy.testing.assert_allclose(conv(gradflow.Tensor(x)).numpy(), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 20), (10, 30), (30, 10), (8, 3, 3, 3), (64, 4, 2)])
def test_orthogonal(shape):
    gradflow.manual_seed(0)
    w = init.orthogonal_(param(shape, numpy.float64), gain=2.5).numpy().reshape(shape[0], -1)
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    numpy.testing.assert_allclose(gram, 2.5 ** 2 * numpy.eye(min(rows, cols)), atol=1e-5)
    w32 = init.orthogonal_(param(shape)).numpy().astype(numpy.float64).reshape(shape[0], -1)
    gram = w32 @ w32.T if rows <= cols else w32.T @ w32
    numpy.testing.assert_allclose(gram, numpy.eye(min(rows, cols)), atol=1e-5)


def test_orthogonal_sign_correction_makes_it_haar():
    # without the sign correction QR's Q has a positive-biased diagonal (numpy's R has a negative one)
    gradflow.manual_seed(1)
    diag = numpy.array([numpy.diag(init.orthogonal_(param((4, 4), numpy.float64)).numpy()) for _ in range(2000)])
    assert abs(diag.mean()) < 0.03
    g1, g2 = gradflow.Generator().manual_seed(5), gradflow.Generator().manual_seed(5)
    assert numpy.array_equal(init.orthogonal_(param((6, 9)), generator=g1).numpy(),
                             init.orthogonal_(param((6, 9)), generator=g2).numpy())
    with pytest.raises(ValueError, match="Only tensors with 2 or more dimensions are supported"):
        init.orthogonal_(param((5,)))
    assert init.orthogonal_(param((0, 3))).shape == (0, 3)


def truncated_normal_moments(mean, std, a, b):
    """The mean and std of N(mean, std^2) restricted to [a, b] (the closed forms)."""
    lo, hi = (a - mean) / std, (b - mean) / std
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    z = (math.erf(hi / math.sqrt(2)) - math.erf(lo / math.sqrt(2))) / 2
    m = (pdf(lo) - pdf(hi)) / z
    var = 1 + (lo * pdf(lo) - hi * pdf(hi)) / z - m * m
    return mean + std * m, std * math.sqrt(var)


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -0.04, 0.04), (1.0, 1.0, 2.5, 3.0),
                                          (0.0, 1.0, 0.1, 0.3)])
def test_trunc_normal(mean, std, a, b):
    gradflow.manual_seed(0)
    w = init.trunc_normal_(param(), mean, std, a, b)
    v = w.numpy()
    assert v.min() >= numpy.float32(a) and v.max() <= numpy.float32(b)
    ref_mean, ref_std = truncated_normal_moments(mean, std, a, b)
    v = v.astype(numpy.float64)
    assert v.mean() == pytest.approx(ref_mean, abs=0.01 * (b - a))
    assert v.std() == pytest.approx(ref_std, rel=0.02)


def test_trunc_normal_defaults_and_warning():
    gradflow.manual_seed(0)
    v = init.trunc_normal_(param()).numpy()
    assert v.min() >= -2 and v.max() <= 2 and v.min() < -1.99 and v.max() > 1.99
    with pytest.warns(UserWarning, match="mean is more than 2 std from"):
        init.trunc_normal_(param((10, 10)), mean=5.0, std=1.0, a=0.0, b=1.0)
    g1, g2 = gradflow.Generator().manual_seed(3), gradflow.Generator().manual_seed(3)
    assert numpy.array_equal(init.trunc_normal_(param((30, 30)), generator=g1).numpy(),
                             init.trunc_normal_(param((30, 30)), generator=g2).numpy())


def test_sparse():
    gradflow.manual_seed(0)
    w = init.sparse_(param((100, 300)), sparsity=0.3, std=0.5).numpy()
    zeros_per_column = (w == 0).sum(axis=0)
    assert (zeros_per_column == 30).all()  # ceil(0.3 * 100), as torch
    assert w[w != 0].std() == pytest.approx(0.5, rel=0.02)
    assert not (w == 0).all(axis=1).any()  # the zeros' rows differ from column to column
    assert ((init.sparse_(param((7, 50)), 0.1).numpy() == 0).sum(axis=0) == 1).all()  # ceil(0.7)
    with pytest.raises(ValueError, match="Only tensors with 2 dimensions are supported"):
        init.sparse_(param((3, 3, 3)), 0.5)


def test_new_initializers_fill_in_place_without_grad():
    w = param((4, 4))
    before = w._version
    for fill in (init.eye_, init.orthogonal_, init.trunc_normal_, lambda t: init.sparse_(t, 0.5)):
        assert fill(w) is w and w.grad_fn is None and w.requires_grad
    assert w._version > before
