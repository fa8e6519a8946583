"""Activations, softmax, cross-entropy and dropout: gradients, double backward, torch values."""
import numpy
import pytest

import gradflow as gf
from gradflow import activation as A
from gradflow import dropout_ops as D
from gradflow import philox
from gradflow import softmax_ops as S
from gradflow.gradcheck import gradcheck, gradgradcheck


def t(*shape, seed=0, away_from_zero=False, dtype=numpy.float64):
    a = numpy.random.default_rng(seed).standard_normal(shape)
    if away_from_zero:
        a = numpy.where(numpy.abs(a) < 0.1, 0.5, a)  # finite differences must not straddle a kink
    return gf.Tensor(a.astype(dtype), requires_grad=True)


def seeded(fn, seed=5):
    """Random ops redraw each call: fix the stream so central differences see one function."""
    def run(*xs):
        gf.manual_seed(seed)
        return fn(*xs)
    return run


SMOOTH = {
    "sigmoid": A.sigmoid,
    "tanh": A.tanh,
    "elu": lambda x: A.elu(x, 1.3),
    "selu": A.selu,
    "softplus": A.softplus,
    "softplus_beta": lambda x: A.softplus(x * 4, beta=2.0, threshold=3.0),  # crosses the threshold
    "gelu": A.gelu,
    "gelu_tanh": lambda x: A.gelu(x, approximate="tanh"),
    "softmax": S.softmax,
    "softmax_axis0": lambda x: S.softmax(x, axis=0),
    "log_softmax": S.log_softmax,
    "log_softmax_axis1": lambda x: S.log_softmax(x, axis=1),
}
PIECEWISE = {
    "relu": A.relu,
    "leaky_relu": lambda x: A.leaky_relu(x, 0.2),
    "dropout": seeded(lambda x: D.dropout(x, 0.4)),
    "noisy_relu": seeded(lambda x: D.noisy_relu(x, std=0.3)),
}


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_gradcheck_and_double_backward(name):
    x = t(2, 3, 4, seed=len(name))
    gradcheck(SMOOTH[name], [x])
    gradgradcheck(SMOOTH[name], [x])


@pytest.mark.parametrize("name", PIECEWISE)
def test_piecewise_gradcheck_and_double_backward(name):
    x = t(3, 5, seed=1, away_from_zero=True)
    if name == "noisy_relu":  # keep x + noise away from the kink too
        gf.manual_seed(5)
        noise = philox.normal(*gf.random.default_generator.next_offset(15), 15).reshape(3, 5) * 0.3
        x.data[numpy.abs(x.data + noise) < 0.05] += 0.2
    gradcheck(PIECEWISE[name], [x])
    gradgradcheck(PIECEWISE[name], [x])


@pytest.mark.parametrize("wshape", [(4,), (1,)])
def test_prelu_gradcheck(wshape):
    x = t(3, 4, 2, seed=2, away_from_zero=True)
    w = gf.Tensor(numpy.random.default_rng(3).random(wshape) * 0.5, requires_grad=True)
    gradcheck(A.prelu, [x, w])
    gradgradcheck(A.prelu, [x, w])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2), (4,)], ids=str)
def test_cross_entropy_gradcheck(reduction, shape):
    x = t(*shape, seed=4)
    rng = numpy.random.default_rng(5)
    target = rng.integers(0, shape[1] if len(shape) > 1 else shape[0], shape[:1] + shape[2:] if len(shape) > 1 else ())
    if len(shape) > 1:
        target.reshape(-1)[1] = -100  # ignored
    fn = lambda x: S.softmax_cross_entropy(x, target, reduction=reduction)  # noqa: E731
    gradcheck(fn, [x])
    gradgradcheck(fn, [x])


def test_third_order_through_ops():
    x = gf.Tensor(numpy.array([0.3, -1.2, 2.0]), requires_grad=True)
    (g,) = gf.grad(A.tanh(x).sum(), x, create_graph=True)
    (h,) = gf.grad(g.sum(), x, create_graph=True)
    (k,) = gf.grad(h.sum(), x)
    th = numpy.tanh(x.numpy())
    numpy.testing.assert_allclose(k.numpy(), -2 * (1 - th ** 2) * (1 - 3 * th ** 2), rtol=1e-12)


# ---- values against PyTorch ----------------------------------------------------------------------------
torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH = {
    "sigmoid": (A.sigmoid, torch.sigmoid),
    "tanh": (A.tanh, torch.tanh),
    "relu": (A.relu, torch.relu),
    "leaky_relu": (lambda x: A.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "elu": (lambda x: A.elu(x, 1.3), lambda x: F.elu(x, 1.3)),
    "selu": (A.selu, F.selu),
    "softplus": (A.softplus, F.softplus),
    "softplus_beta": (lambda x: A.softplus(x, beta=2.0, threshold=5.0), lambda x: F.softplus(x, 2.0, 5.0)),
    "gelu": (A.gelu, F.gelu),
    "gelu_tanh": (lambda x: A.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "softmax": (lambda x: S.softmax(x, -1), lambda x: torch.softmax(x, -1)),
    "softmax_axis0": (lambda x: S.softmax(x, 0), lambda x: torch.softmax(x, 0)),
    "log_softmax": (lambda x: S.log_softmax(x, -1), lambda x: torch.log_softmax(x, -1)),
    "log_softmax_axis1": (lambda x: S.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1)),
}
TOL = {numpy.float32: dict(rtol=2e-6, atol=2e-7), numpy.float64: dict(rtol=1e-13, atol=1e-15)}


def extremes(dtype, shape=(4, 6, 8)):
    a = numpy.random.default_rng(7).standard_normal(shape) * 3
    flat = a.reshape(-1)
    flat[:14] = [0.0, -0.0, 80, -80, 20, -20, 1e-3, -1e-3, 1e-40, -1e-40, 5.0, -5.0, 30, -30]
    return a.astype(dtype)


def _ours_and_torch(fn, tfn, a, g):
    x = gf.Tensor(a.copy(), requires_grad=True)
    y = fn(x)
    y.backward(gf.Tensor(g))
    tx = torch.tensor(a, requires_grad=True)
    ty = tfn(tx)
    ty.backward(torch.tensor(g))
    return y.numpy(), x.grad.numpy(), ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", TORCH)
def test_matches_torch(name, dtype):
    fn, tfn = TORCH[name]
    a = extremes(dtype)
    g = numpy.random.default_rng(8).standard_normal(a.shape).astype(dtype)
    y, gx, ty, tgx = _ours_and_torch(fn, tfn, a, g)
    assert y.dtype == dtype and gx.dtype == dtype
    # torch's gelu computes 1 + erf(x / sqrt 2), which cancels for x << 0 (ours uses erfc):
    # allow its rounding error, about eps * |x|
    slack = 2 * numpy.finfo(dtype).eps * numpy.abs(a) if name == "gelu" else 0
    assert_close(y, ty, slack=slack, **TOL[dtype])
    scale = max(1.0, numpy.abs(tgx).max()) if name.startswith("log_softmax") else 1.0  # g - exp(y) sum(g) cancels
    assert_close(gx, tgx, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale * 8, slack=slack * numpy.abs(g))


def assert_close(actual, desired, rtol, atol, slack=0):
    """assert_allclose with an extra per-element absolute allowance ``slack``."""
    bad = ~(numpy.abs(actual - desired) <= atol + rtol * numpy.abs(desired) + slack)
    bad &= ~(numpy.isnan(actual) & numpy.isnan(desired))
    if bad.any():
        numpy.testing.assert_allclose(actual[bad], desired[bad], rtol=rtol, atol=atol)


def test_gelu_float32_is_accurate_in_the_tail():
    """Relative error stays O(x^2 eps) (the conditioning of erfc), where 1 + erf loses every bit."""
    a = numpy.linspace(-12, 4, 2001).astype(numpy.float32)
    ref = A.gelu(gf.Tensor(a.astype(numpy.float64))).numpy()
    y = A.gelu(gf.Tensor(a)).numpy()
    rel = numpy.abs(y - ref) / numpy.maximum(numpy.abs(ref), 1e-300)
    assert (rel <= (4 + a.astype(float) ** 2) * numpy.finfo(numpy.float32).eps).all()


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh", "softplus", "elu", "gelu"])
def test_nan_propagates_like_torch(name):
    fn, tfn = TORCH[name]
    a = numpy.array([numpy.nan, 1.0, -1.0, 0.0])
    g = numpy.array([1.0, 2.0, 3.0, 4.0])
    y, gx, ty, tgx = _ours_and_torch(fn, tfn, a, g)
    numpy.testing.assert_array_equal(numpy.isnan(y), numpy.isnan(ty))
    numpy.testing.assert_allclose(gx, tgx, equal_nan=True)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "selu", "softplus_beta", "gelu", "gelu_tanh", "softmax",
                                  "log_softmax_axis1"])
def test_second_derivatives_match_torch(name):
    fn, tfn = TORCH[name]
    rng = numpy.random.default_rng(9)
    a = rng.standard_normal((3, 5)) * 2
    gy, v = rng.standard_normal((2, 3, 5))
    x, g = gf.Tensor(a, requires_grad=True), gf.Tensor(gy, requires_grad=True)
    gx, = gf.grad(fn(x), x, g, create_graph=True)
    hx, hg = gf.grad(gx, [x, g], gf.Tensor(v))
    tx, tg = torch.tensor(a, requires_grad=True), torch.tensor(gy, requires_grad=True)
    tgx, = torch.autograd.grad(tfn(tx), tx, tg, create_graph=True)
    thx, thg = torch.autograd.grad(tgx, [tx, tg], torch.tensor(v))
    numpy.testing.assert_allclose(hx.numpy(), thx.numpy(), rtol=1e-11, atol=1e-13)
    numpy.testing.assert_allclose(hg.numpy(), thg.numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("wshape", [(6,), (1,)])
def test_prelu_matches_torch(dtype, wshape):
    a = extremes(dtype)
    w = (numpy.random.default_rng(1).random(wshape) * 0.5).astype(dtype)
    g = numpy.random.default_rng(2).standard_normal(a.shape).astype(dtype)
    x, wt = gf.Tensor(a, requires_grad=True), gf.Tensor(w, requires_grad=True)
    y = A.prelu(x, wt)
    y.backward(gf.Tensor(g))
    tx, tw = torch.tensor(a, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = F.prelu(tx, tw)
    ty.backward(torch.tensor(g))
    numpy.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[dtype])
    numpy.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), **TOL[dtype])
    numpy.testing.assert_allclose(wt.grad.numpy(), tw.grad.numpy(), rtol=TOL[dtype]["rtol"] * 50, atol=1e-4
                                  if dtype == numpy.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(16, 10), (4, 5, 3), (7,)], ids=str)
def test_cross_entropy_matches_torch(dtype, reduction, shape):
    rng = numpy.random.default_rng(10)
    a = (rng.standard_normal(shape) * 4).astype(dtype)
    a.reshape(-1)[0] = 80
    classes = shape[1] if len(shape) > 1 else shape[0]
    target = rng.integers(0, classes, shape[:1] + shape[2:] if len(shape) > 1 else ())
    if len(shape) > 1:
        target.reshape(-1)[:2] = -100
    x = gf.Tensor(a, requires_grad=True)
    loss = S.softmax_cross_entropy(x, target, reduction=reduction)
    tx = torch.tensor(a, requires_grad=True)
    tloss = F.cross_entropy(tx, torch.tensor(target), reduction=reduction, ignore_index=-100)
    assert loss.shape == tuple(tloss.shape) and loss.dtype == dtype
    numpy.testing.assert_allclose(loss.numpy(), tloss.detach().numpy(), rtol=TOL[dtype]["rtol"] * 4,
                                  atol=TOL[dtype]["atol"] * 10)
    g = rng.standard_normal(loss.shape).astype(dtype)
    loss.backward(gf.Tensor(g))
    tloss.backward(torch.tensor(g))
    numpy.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), **TOL[dtype])


def test_cross_entropy_edge_cases():
    x = gf.Tensor(numpy.zeros((2, 3)), requires_grad=True)
    assert numpy.isnan(S.softmax_cross_entropy(x, numpy.array([-100, -100])).item())  # nothing to average
    with pytest.raises(IndexError):
        S.softmax_cross_entropy(x, numpy.array([0, 3]))
    with pytest.raises(ValueError):
        S.softmax_cross_entropy(x, numpy.array([0, 1, 2]))
    with pytest.raises(TypeError):
        S.softmax_cross_entropy(x, numpy.array([0.0, 1.0]))
    target = gf.Tensor(numpy.array([2, 0]))  # a Tensor target works too
    numpy.testing.assert_allclose(S.softmax_cross_entropy(x, target).item(), numpy.log(3))


def test_softmax_edge_cases():
    x = gf.Tensor(numpy.array([[-numpy.inf, 0.0, -numpy.inf], [1e4, 1e4, -1e4]]))
    numpy.testing.assert_allclose(S.softmax(x).numpy(), [[0, 1, 0], [0.5, 0.5, 0]])
    assert S.softmax(gf.Tensor(numpy.array(3.0))).item() == 1.0
    assert S.softmax(gf.Tensor(numpy.zeros((2, 0)))).shape == (2, 0)
    with pytest.raises(IndexError):
        S.softmax(x, axis=2)
    with pytest.raises(TypeError):
        S.softmax(gf.Tensor(numpy.array([1, 2])))


# ---- dropout -------------------------------------------------------------------------------------------
def test_dropout_mask_is_reproducible_and_matches_philox():
    x = gf.Tensor(numpy.ones((64, 32), numpy.float32), requires_grad=True)
    gf.manual_seed(123)
    y1 = D.dropout(x, 0.25)
    y2 = D.dropout(x, 0.25)  # the next call takes a fresh offset
    gf.manual_seed(123)
    y3 = D.dropout(x, 0.25)
    numpy.testing.assert_array_equal(y1.numpy(), y3.numpy())
    assert (y1.numpy() != y2.numpy()).any()
    keep = philox.keep(123, 0, x.numel(), philox.keep_threshold(0.25)).reshape(x.shape)
    numpy.testing.assert_array_equal(y1.numpy(), numpy.where(keep, numpy.float32(1 / 0.75), 0))
    fn = y1.creator
    mask, = fn.saved_tensors
    assert mask.dtype == numpy.bool_ and mask.shape == x.shape  # one byte per element
    y1.backward(gf.Tensor(numpy.full(x.shape, 2.0, numpy.float32)))
    numpy.testing.assert_array_equal(x.grad.numpy(), numpy.where(keep, numpy.float32(2 / 0.75), 0))


def test_dropout_edge_cases():
    x = gf.Tensor(numpy.random.default_rng(0).standard_normal((10, 10)), requires_grad=True)
    assert D.dropout(x, 0.0) is x
    assert D.dropout(x, 0.7, training=False) is x
    y = D.dropout(x, 1.0)
    assert not y.numpy().any()
    y.sum().backward()
    assert not x.grad.numpy().any()
    with pytest.raises(ValueError):
        D.dropout(x, 1.2)
    rate = (D.dropout(gf.Tensor(numpy.ones(200_000)), 0.3).numpy() != 0).mean()
    assert abs(rate - 0.7) < 0.005


def test_noisy_relu():
    x = gf.Tensor(numpy.full((200, 100), 50.0), requires_grad=True)
    assert (D.noisy_relu(x, training=False).numpy() == 50).all()
    gf.manual_seed(4)
    y = D.noisy_relu(x, std=2.0)
    gf.manual_seed(4)
    numpy.testing.assert_array_equal(D.noisy_relu(x, std=2.0).numpy(), y.numpy())
    noise = y.numpy() - 50
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 2.0) < 0.05
    z = gf.Tensor(numpy.linspace(-3, 3, 1000), requires_grad=True)
    out = D.noisy_relu(z, std=0.5)
    out.sum().backward()
    numpy.testing.assert_array_equal(z.grad.numpy(), (out.numpy() > 0).astype(float))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_relu_gradient_is_zero_at_dead_units_even_for_nan_and_inf_gradients(dtype):
    """PyTorch's relu backward selects (where(x > 0, g, 0)): a NaN or inf gradient arriving at
    a dead unit gives 0, not NaN (g * 0); dropout multiplies, so NaN stays NaN there."""
    x = numpy.array([-1.0, 2.0, -0.0, 3.0], dtype)
    g = numpy.array([numpy.nan, numpy.nan, numpy.inf, -0.0], dtype)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(g))
    xg = gf.tensor(x, requires_grad=True)
    gf.nn.functional.relu(xg).backward(gf.tensor(g))
    numpy.testing.assert_array_equal(xg.grad.numpy(), xt.grad.numpy())
    assert numpy.signbit(xg.grad.numpy()).tolist() == numpy.signbit(xt.grad.numpy()).tolist()


@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 3, 4), (1, 2, 3, 4)])
def test_softmax_without_dim_takes_torchs_implicit_dim(shape):
    """torch: dim 0 for 0-, 1- and 3-d inputs, else 1 (with a deprecation warning); the last dim
    normalised a 3- or 4-d batch over another axis than the same PyTorch code, silently."""
    import torch
    x = numpy.random.default_rng(0).standard_normal(shape)
    for name in ("softmax", "log_softmax", "softmin"):
        with pytest.warns(UserWarning, match="Implicit dimension choice"):
            ours = getattr(gf.nn.functional, name)(gf.Tensor(x)).numpy()
        with pytest.warns(UserWarning):
            theirs = getattr(torch.nn.functional, name)(torch.tensor(x)).numpy()
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    with pytest.warns(UserWarning):
        numpy.testing.assert_allclose(gf.nn.Softmax()(gf.Tensor(x)).numpy(),
                                      torch.nn.Softmax()(torch.tensor(x)).numpy(), rtol=1e-12)


_SPECIALS = [0.0, -0.0, 1.5, -2.0, numpy.nan, -numpy.nan, numpy.inf, -numpy.inf, 1e-40, -1e-40]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("layout", ["0-d", "empty", "small", "rows", "transposed", "strided", "large"])
def test_relu_against_a_zeros_array_is_bitwise_numpys_maximum_with_a_scalar(dtype, layout):
    """The CPU relu compares with a cached array of zeros (NumPy's maximum against a scalar is not
    vectorized): the same bits as maximum(x, 0) for NaN (either sign), -0, inf and subnormals, in
    every layout, and the cached zeros stay zero and read-only."""
    rng = numpy.random.default_rng(0)
    n = {"0-d": 1, "empty": 0, "small": 10, "rows": 6 * 400, "transposed": 6 * 400, "strided": 6 * 800,
         "large": 3 * 100_000}[layout]
    x = rng.choice(numpy.array(_SPECIALS + list(rng.standard_normal(20)), dtype), n)
    x = {"0-d": lambda: x.reshape(()), "empty": lambda: x.reshape(0, 3), "small": lambda: x,
         "rows": lambda: x.reshape(6, 400), "transposed": lambda: x.reshape(6, 400).T,
         "strided": lambda: x.reshape(6, 800)[:, ::2], "large": lambda: x.reshape(3, -1)}[layout]()
    def bits(a):
        return numpy.ascontiguousarray(a).reshape(-1).view(numpy.uint8)

    y = A._relu_out_np(x)
    expected = numpy.maximum(x, dtype(0))
    assert numpy.asarray(y).shape == x.shape and numpy.asarray(y).dtype == dtype
    assert numpy.array_equal(bits(y), bits(expected))
    g = rng.standard_normal(x.shape).astype(dtype)  # the backward's mask, read off the output: y != 0
    assert numpy.array_equal(bits(A._relu_grad_np(y, g)), bits(numpy.where(expected != 0, g, dtype(0))))
    for zeros in A._ZEROS.values():
        assert not zeros.flags.writeable and not zeros.any()


@pytest.mark.parametrize("shape", [(128, 10), (64, 3), (32, 10), (200, 16), (70, 17), (5, 1000), (1, 1)])
def test_row_statistics_of_cross_entropy_match_numpys_reductions(shape):
    """The row max (from a transposed copy for few classes) is exactly x.max(axis=1); the row sums
    (a BLAS gemv from 64 rows on) equal the axis-1 sums to rounding."""
    rng = numpy.random.default_rng(1)
    for dtype in (numpy.float32, numpy.float64):
        x = rng.standard_normal(shape).astype(dtype)
        x.flat[::7] = numpy.nan if x.size > 20 else x.flat[::7]
        m = S._row_max(x)
        assert m.shape == (shape[0], 1)
        numpy.testing.assert_array_equal(m, x.max(axis=1, keepdims=True))
        e = numpy.exp(rng.standard_normal(shape)).astype(dtype)
        s = S._row_sums(e)
        assert s.shape == (shape[0], 1) and s.dtype == dtype
        numpy.testing.assert_allclose(s, e.sum(axis=1, keepdims=True), rtol=1e-6 if dtype == numpy.float32 else 1e-13)
