"""Dropout1d/3d, AlphaDropout and FeatureAlphaDropout (modules and functions) against PyTorch's semantics.

Masks come from gradflow's Philox stream, not torch's, so values are checked through the mask
(recovered by redrawing it after the same ``manual_seed``) and distributions, and edge cases and
errors against torch directly."""
import math
import warnings

import numpy
import pytest

import gradflow as gf
from gradflow import nn
from gradflow.nn import functional as F

torch = pytest.importorskip("torch")

ALPHA = 1.7580993408473766  # -(SELU's scale * alpha)


def _rand(*shape, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape)


def _mask(seed, shape, p):
    """The keep mask (bool) the seeded call drew: the same Philox draw, redone."""
    gf.manual_seed(seed)
    return F.dropout(gf.Tensor(numpy.ones(shape)), p, True).numpy() != 0


def _torch_error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), str(info.value)


# ---- channel-wise dropout ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,mask_shape", [((8, 16, 5), (8, 16, 1)), ((16, 5), (16, 1))])
def test_dropout1d_drops_whole_channels(shape, mask_shape):
    x = gf.Tensor(_rand(*shape) + 3, requires_grad=True)
    gf.manual_seed(3)
    y = F.dropout1d(x, 0.4)
    keep = _mask(3, mask_shape, 0.4)
    assert 0.3 < keep.mean() < 0.9
    numpy.testing.assert_allclose(y.numpy(), x.numpy() * keep / 0.6, rtol=1e-15)
    y.sum().backward()
    numpy.testing.assert_allclose(x.grad.numpy(), numpy.broadcast_to(keep / 0.6, shape), rtol=1e-15)
    m = nn.Dropout1d(0.4)
    gf.manual_seed(3)
    numpy.testing.assert_array_equal(m(x).numpy(), y.numpy())
    assert m.eval()(x) is x and F.dropout1d(x, 0.4, training=False) is x and F.dropout1d(x, 0.0) is x


@pytest.mark.parametrize("shape,mask_shape", [((4, 6, 2, 3, 2), (4, 6, 1, 1, 1)), ((6, 2, 3, 2), (6, 1, 1, 1)),
                                              ((6, 3, 2), (6, 1, 1)), ((6, 3), (6, 1)), ((6,), (6,))])
def test_dropout3d_shapes_and_warnings_as_torch(shape, mask_shape):
    x = gf.Tensor(_rand(*shape) + 3)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        gf.manual_seed(5)
        y = nn.Dropout3d(0.5)(x)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        torch.nn.functional.dropout3d(torch.tensor(x.numpy()), 0.5)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert len(ours) == (len(shape) not in (4, 5))
    numpy.testing.assert_allclose(y.numpy(), x.numpy() * _mask(5, mask_shape, 0.5) * 2, rtol=1e-15)


def test_channel_dropout_shape_errors_as_torch():
    for shape in [(5,), (2, 3, 4, 5)]:
        kind, message = _torch_error(torch.nn.functional.dropout1d, torch.zeros(shape))
        with pytest.raises(kind) as info:
            F.dropout1d(gf.Tensor(numpy.zeros(shape)))
        assert str(info.value) == message
        with pytest.raises(kind):
            nn.Dropout1d().eval()(gf.Tensor(numpy.zeros(shape)))  # checked in eval mode too, as torch
    kind, message = _torch_error(torch.nn.functional.dropout3d, torch.tensor(1.0))
    with pytest.raises(kind, match=message), pytest.warns(UserWarning):
        F.dropout3d(gf.tensor(1.0))
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        nn.Dropout1d(1.5)
    with pytest.raises(ValueError, match="between 0 and 1, but got -0.1"):
        F.dropout3d(gf.Tensor(numpy.zeros((1, 2, 2, 2, 2))), -0.1)


def test_p_one_zeroes_everything_as_torch():
    x = _rand(2, 3, 4)
    cases = [(F.dropout1d, torch.nn.functional.dropout1d, x), (F.dropout3d, torch.nn.functional.dropout3d, x),
             (F.alpha_dropout, torch.nn.functional.alpha_dropout, x),
             (F.feature_alpha_dropout, torch.nn.functional.feature_alpha_dropout, x),
             (F.feature_alpha_dropout, torch.nn.functional.feature_alpha_dropout, x[0, 0])]  # p = 1 needs no 2 dims
    for ours, theirs, v in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = ours(gf.Tensor(v), 1.0, True).numpy()
            want = theirs(torch.tensor(v), 1.0, True).numpy()
        assert numpy.array_equal(got, want) and numpy.array_equal(numpy.signbit(got), numpy.signbit(want))


def test_masks_follow_manual_seed_not_numpy():
    x = gf.Tensor(numpy.ones((64, 32, 4)))
    outs = []
    for np_seed in (0, 1):
        numpy.random.seed(np_seed)
        gf.manual_seed(9)
        outs.append([f(x, 0.5, True).numpy() for f in (F.dropout1d, F.alpha_dropout, F.feature_alpha_dropout)])
    for a, b in zip(*outs):
        numpy.testing.assert_array_equal(a, b)
    gf.manual_seed(9)
    first = F.alpha_dropout(x, 0.5, True).numpy()
    assert not numpy.array_equal(first, F.alpha_dropout(x, 0.5, True).numpy())  # a fresh mask each call


# ---- alpha dropout --------------------------------------------------------------------------------------
def _alpha_reference(x, keep, p):
    """torch's _dropout_impl for alpha dropout, given the 0/1 noise."""
    a = 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))
    noise = keep.astype(numpy.float64)
    b = (noise - 1) * (ALPHA * a) + ALPHA * a * p
    return x * (noise * a) + b, noise * a


@pytest.mark.parametrize("feature", [False, True])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_alpha_dropout_formula_and_gradient(feature, p):
    x = gf.Tensor(_rand(6, 5, 7), requires_grad=True)
    module = (nn.FeatureAlphaDropout if feature else nn.AlphaDropout)(p)
    gf.manual_seed(2)
    y = module(x)
    keep = _mask(2, (6, 5, 1) if feature else (6, 5, 7), p)
    want, slope = _alpha_reference(x.numpy(), keep, p)
    numpy.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    if feature:
        assert (keep == keep[..., :1]).all()
    (y * gf.Tensor(_rand(6, 5, 7, seed=1))).sum().backward()
    numpy.testing.assert_allclose(x.grad.numpy(), slope * _rand(6, 5, 7, seed=1), rtol=1e-12, atol=1e-15)
    assert module.eval()(x) is x


@pytest.mark.parametrize("fn", ["alpha_dropout", "feature_alpha_dropout"])
def test_alpha_dropout_keeps_mean_and_variance(fn):
    # SELU's fixed point: zero mean, unit variance; torch's own alpha dropout as the second opinion
    x = torch.nn.functional.selu(torch.randn(1000, 1000, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64) * 1.0).numpy()
    x = (x - x.mean()) / x.std()
    gf.manual_seed(0)
    y = getattr(F, fn)(gf.Tensor(x[:, :, None] if fn.startswith("feature") else x), 0.3, True).numpy()
    theirs = getattr(torch.nn.functional, fn)(torch.tensor(x), 0.3, True).numpy()
    assert abs(y.mean()) < 1e-2 and abs(theirs.mean()) < 1e-2
    assert abs(y.var() - 1) < 1e-2 and abs(theirs.var() - 1) < 1e-2
    # plain dropout does not keep the variance: the property is the alpha variant's
    assert abs(F.dropout(gf.Tensor(x), 0.3).numpy().var() - 1) > 0.1


def test_alpha_dropout_defaults_and_errors_as_torch():
    x = gf.Tensor(_rand(4, 3))
    assert F.alpha_dropout(x) is x and F.feature_alpha_dropout(x) is x  # training=False by default, as torch
    assert F.alpha_dropout(x, 0.0, True) is x
    empty = gf.Tensor(numpy.zeros((0, 3)))
    assert F.alpha_dropout(empty, 0.5, True).shape == (0, 3)
    kind, message = _torch_error(torch.nn.functional.feature_alpha_dropout, torch.zeros(5), 0.5, True)
    with pytest.raises(kind, match=message):
        F.feature_alpha_dropout(gf.Tensor(numpy.zeros(5)), 0.5, True)
    assert F.feature_alpha_dropout(gf.Tensor(numpy.zeros(5)), 0.5, False).shape == (5,)
    with pytest.raises(ValueError, match="between 0 and 1, but got 2"):
        nn.AlphaDropout(2)
    with pytest.raises(ValueError, match="between 0 and 1, but got -1"):
        F.alpha_dropout(x, -1, True)
    for name in ("Dropout1d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"):
        assert repr(getattr(nn, name)(0.25)) == repr(getattr(torch.nn, name)(0.25))
        assert name in nn.__all__
    for name in ("dropout1d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"):
        assert name in F.__all__


def test_alpha_dropout_float32():
    x = gf.Tensor(_rand(50, 40).astype(numpy.float32))
    gf.manual_seed(4)
    y = F.alpha_dropout(x, 0.2, True)
    assert y.dtype == numpy.float32
    want, _ = _alpha_reference(x.numpy().astype(numpy.float64), _mask(4, (50, 40), 0.2), 0.2)
    numpy.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-6)


def test_compiled_step_draws_fresh_masks_each_replay():
    def run(compiled):
        gf.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.AlphaDropout(0.3), nn.Linear(16, 16),
                              nn.Unflatten(1, (4, 4)), nn.Dropout1d(0.3), nn.FeatureAlphaDropout(0.2),
                              nn.Flatten(), nn.Linear(16, 3))
        opt = gf.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            return out.detach()

        if compiled:
            step = gf.compile(step, strict=True)
        x, y = gf.Tensor(_rand(10, 8).astype(numpy.float32)), gf.tensor(numpy.arange(10) % 3)
        gf.manual_seed(1)
        outs = [step(x, y).numpy() for _ in range(6)]
        if compiled:
            assert step.captured
        return outs

    eager, compiled = run(False), run(True)
    for a, b in zip(eager, compiled):
        numpy.testing.assert_array_equal(a, b)
