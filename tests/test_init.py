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
