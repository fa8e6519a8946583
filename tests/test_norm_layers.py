"""Normalization, embedding, Dropout2d/Unflatten and the conv/pool/norm modules against PyTorch."""

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import nn
from gradflow import normalization as N
from gradflow.nn import functional as F

torch.set_num_threads(1)


def _rand(*shape, seed=0, dtype=numpy.float64):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _load_from_torch(module, tmodule):
    module.load_state_dict({k: v.detach().numpy() for k, v in tmodule.state_dict().items()})


def _check_module(module, tmodule, x, steps=3, atol=1e-9, train=True):
    """Same outputs, input gradients, parameter gradients and state over a few train (or eval) steps."""
    _load_from_torch(module, tmodule)
    module.train(train)
    tmodule.train(train)
    for step in range(steps):
        xs = x * (1 + step) + step
        gx, tx = gf.Tensor(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
        y, ty = module(gx), tmodule(tx)
        numpy.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=atol, rtol=1e-6)
        r = _rand(*ty.shape, seed=10 + step, dtype=xs.dtype)
        for p in module.parameters():
            p.grad = None
        tmodule.zero_grad()
        (y * gf.Tensor(r)).sum().backward()
        (ty * torch.tensor(r)).sum().backward()
        numpy.testing.assert_allclose(gx.grad.numpy(), tx.grad.numpy(), atol=atol, rtol=1e-6)
        for (name, p), (_, tp) in zip(module.named_parameters(), tmodule.named_parameters()):
            numpy.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), atol=atol, rtol=1e-6, err_msg=name)
        tstate = tmodule.state_dict()
        for name, v in module.state_dict().items():
            numpy.testing.assert_allclose(v.numpy(), tstate[name].numpy(), atol=atol, rtol=1e-6, err_msg=name)


# ---- BatchNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(momentum=0.3, eps=1e-3), dict(affine=False),
                                dict(track_running_stats=False)], ids=str)
@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4)])
def test_batchnorm1d_matches_torch(kw, shape):
    x = _rand(*shape)
    _check_module(nn.BatchNorm1d(3, dtype=numpy.float64, **kw), torch.nn.BatchNorm1d(3, dtype=torch.float64, **kw),
                  x)
    _check_module(nn.BatchNorm1d(3, dtype=numpy.float64, **kw), torch.nn.BatchNorm1d(3, dtype=torch.float64, **kw),
                  x, train=False)


@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False)],
                         ids=str)
def test_batchnorm2d_matches_torch_in_train_and_eval(kw):
    m, tm = nn.BatchNorm2d(4, dtype=numpy.float64, **kw), torch.nn.BatchNorm2d(4, dtype=torch.float64, **kw)
    if kw.get("affine", True):
        with torch.no_grad():
            tm.weight.uniform_(0.5, 1.5)
            tm.bias.uniform_(-0.5, 0.5)
    x = _rand(3, 4, 5, 6)
    _check_module(m, tm, x)          # three training steps: running stats and num_batches_tracked follow
    _check_module(m, tm, x, steps=1, train=False)  # then evaluation with those running stats
    if kw.get("track_running_stats", True):
        assert int(m.num_batches_tracked.item()) == int(tm.num_batches_tracked) == 3 + 0


def test_batchnorm_float32_large_batch_matches_torch():
    x = (_rand(64, 8, 14, 14, dtype=numpy.float32) * 3 + 5).astype(numpy.float32)
    m, tm = nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    _check_module(m, tm, x, steps=1, atol=2e-4)


def test_batchnorm_state_dict_and_errors():
    m = nn.BatchNorm2d(3)
    assert list(m.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())
    assert m.num_batches_tracked.dtype == numpy.int64
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(gf.Tensor(_rand(1, 3, 1, 1, dtype=numpy.float32)))
    with pytest.raises(ValueError, match="4-d"):
        m(gf.Tensor(_rand(2, 3, dtype=numpy.float32)))
    with pytest.raises(ValueError, match="channels"):
        F.batch_norm(gf.Tensor(_rand(4, 2)), gf.zeros(3), gf.ones(3), training=True)


def test_batchnorm_gradcheck_and_double_backward():
    x = gf.Tensor(_rand(4, 3, 2, 3), requires_grad=True)
    w = gf.Tensor(_rand(3, seed=1), requires_grad=True)
    b = gf.Tensor(_rand(3, seed=2), requires_grad=True)
    train = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)
    rm, rv = gf.Tensor(_rand(3, seed=3)), gf.Tensor(numpy.abs(_rand(3, seed=4)) + 0.5)
    evaluate = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False)
    for f in (train, evaluate):
        assert gf.gradcheck(f, [x, w, b])
        assert gf.gradgradcheck(f, [x, w, b])


def test_batchnorm_double_backward_matches_torch():
    x, w = _rand(5, 3, 4), _rand(3, seed=1)
    gx, gw = gf.Tensor(x, requires_grad=True), gf.Tensor(w, requires_grad=True)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = F.batch_norm(gx, None, None, gw, None, training=True)
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, None, training=True)
    a, = gf.grad((y ** 3).sum(), [gx], create_graph=True)
    ta, = torch.autograd.grad((ty ** 3).sum(), [tx], create_graph=True)
    (a * a).sum().backward()
    (ta * ta).sum().backward()
    numpy.testing.assert_allclose(gx.grad.numpy(), tx.grad.numpy(), rtol=1e-7, atol=1e-9)
    numpy.testing.assert_allclose(gw.grad.numpy(), tw.grad.numpy(), rtol=1e-7, atol=1e-9)


# ---- LayerNorm / GroupNorm ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,normalized", [((4, 6), 6), ((2, 3, 5), (3, 5)), ((2, 3, 5), 5)])
@pytest.mark.parametrize("kw", [dict(), dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-2)], ids=str)
def test_layernorm_matches_torch(shape, normalized, kw):
    tm = torch.nn.LayerNorm(normalized, dtype=torch.float64, **kw)
    if tm.weight is not None:
        with torch.no_grad():
            tm.weight.uniform_(0.5, 1.5)
    _check_module(nn.LayerNorm(normalized, dtype=numpy.float64, **kw), tm, _rand(*shape))


@pytest.mark.parametrize("groups,shape", [(1, (2, 6, 3, 3)), (3, (2, 6, 3, 3)), (6, (2, 6, 4)), (2, (3, 4))])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_matches_torch(groups, shape, affine):
    tm = torch.nn.GroupNorm(groups, shape[1], affine=affine, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            tm.weight.uniform_(0.5, 1.5)
            tm.bias.uniform_(-1, 1)
    _check_module(nn.GroupNorm(groups, shape[1], affine=affine, dtype=numpy.float64), tm, _rand(*shape))


def test_layer_and_group_norm_gradcheck_and_double_backward():
    x = gf.Tensor(_rand(3, 4, 5), requires_grad=True)
    w, b = gf.Tensor(_rand(4, 5, seed=1), requires_grad=True), gf.Tensor(_rand(4, 5, seed=2), requires_grad=True)
    f = lambda x, w, b: F.layer_norm(x, (4, 5), w, b)
    assert gf.gradcheck(f, [x, w, b]) and gf.gradgradcheck(f, [x, w, b])
    w, b = gf.Tensor(_rand(4, seed=1), requires_grad=True), gf.Tensor(_rand(4, seed=2), requires_grad=True)
    g = lambda x, w, b: F.group_norm(x, 2, w, b)
    assert gf.gradcheck(g, [x, w, b]) and gf.gradgradcheck(g, [x, w, b])


def test_norm_errors_are_clear():
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="expected an input with shape"):
        F.layer_norm(gf.Tensor(_rand(2, 3)), (4,))
    with pytest.raises(TypeError, match="floating-point"):
        F.layer_norm(gf.tensor([[1, 2]]), 2)


def test_norm_twins_are_stable_for_large_offsets():
    x = (_rand(4, 3, 50, dtype=numpy.float32) + 1e4).astype(numpy.float32)
    xhat, mean, var = N.norm_forward(x, 1e-5)
    ref = x.astype(numpy.float64)
    numpy.testing.assert_allclose(var, ref.var(axis=(0, 2)), rtol=1e-3)
    numpy.testing.assert_allclose(xhat, (ref - ref.mean(axis=(0, 2))[:, None]) /
                                  numpy.sqrt(ref.var(axis=(0, 2))[:, None] + 1e-5), atol=1e-2)


# ---- Embedding, Dropout2d, Unflatten ---------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(padding_idx):
    tm = torch.nn.Embedding(7, 4, padding_idx=padding_idx, dtype=torch.float64)
    m = nn.Embedding(7, 4, padding_idx=padding_idx, dtype=numpy.float64)
    if padding_idx is not None:
        assert (m.weight.numpy()[padding_idx] == 0).all()
    _load_from_torch(m, tm)
    idx = numpy.array([[0, 2, 2, 6], [1, 2, 6, 6]])
    y, ty = m(gf.tensor(idx)), tm(torch.tensor(idx))
    numpy.testing.assert_allclose(y.numpy(), ty.detach().numpy())
    r = _rand(2, 4, 4)
    (y * gf.Tensor(r)).sum().backward()
    (ty * torch.tensor(r)).sum().backward()
    numpy.testing.assert_allclose(m.weight.grad.numpy(), tm.weight.grad.numpy())


def test_embedding_gradcheck_double_backward_and_errors():
    idx = gf.tensor([[0, 2, 2], [1, 3, 0]])
    w = gf.Tensor(_rand(4, 3), requires_grad=True)
    # padding_idx deliberately breaks the gradient (as in PyTorch): checked by the parity test instead
    assert gf.gradcheck(lambda w: F.embedding(idx, w), [w])
    assert gf.gradgradcheck(lambda w: F.embedding(idx, w) ** 2, [w])
    g, = gf.grad((F.embedding(idx, w, padding_idx=2) ** 2).sum(), [w], create_graph=True)
    tw = torch.tensor(w.numpy(), requires_grad=True)
    tg, = torch.autograd.grad((torch.nn.functional.embedding(torch.tensor(idx.numpy()), tw, padding_idx=2) ** 2).sum(),
                              [tw], create_graph=True)
    (g ** 3).sum().backward()
    (tg ** 3).sum().backward()
    numpy.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())
    with pytest.raises(IndexError, match="out of range"):
        F.embedding(gf.tensor([4]), w)
    with pytest.raises(TypeError, match="integers"):
        F.embedding(gf.tensor([0.0]), w)


def test_dropout2d_drops_whole_channels_and_scales():
    gf.manual_seed(0)
    x = gf.Tensor(numpy.ones((8, 16, 3, 3), numpy.float32), requires_grad=True)
    m = nn.Dropout2d(0.5)
    y = m(x)
    per_channel = y.numpy().reshape(8, 16, 9)
    assert set(numpy.unique(per_channel)) <= {0.0, 2.0}
    assert (per_channel.min(axis=2) == per_channel.max(axis=2)).all()  # a channel is all kept or all dropped
    assert 0.25 < (per_channel[:, :, 0] == 0).mean() < 0.75
    y.sum().backward()
    numpy.testing.assert_array_equal(x.grad.numpy(), y.numpy())
    m.eval()
    assert m(x) is x or numpy.array_equal(m(x).numpy(), x.numpy())


def test_unflatten_matches_torch():
    x = _rand(2, 12, 5)
    y = nn.Unflatten(1, (3, 4))(gf.Tensor(x))
    assert y.shape == tuple(torch.nn.Unflatten(1, (3, 4))(torch.tensor(x)).shape) == (2, 3, 4, 5)
    assert nn.Unflatten(-1, (5, 1))(gf.Tensor(x)).shape == (2, 12, 5, 1)


# ---- conv and pool modules -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda t: t.Conv2d(4, 6, 3, padding=1, stride=2),
    lambda t: t.Conv2d(4, 8, (3, 2), groups=2, bias=False, dilation=2),
    lambda t: t.Conv2d(4, 6, 3, padding="same"),
    lambda t: t.Conv1d(4, 6, 3, padding=2),
    lambda t: t.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    lambda t: t.ConvTranspose1d(4, 2, 4, stride=2),
    lambda t: t.MaxPool2d(2),
    lambda t: t.MaxPool2d(3, 2, 1, ceil_mode=True),
    lambda t: t.AvgPool2d(3, 2, 1, count_include_pad=False),
    lambda t: t.AdaptiveAvgPool2d((2, 3)),
    lambda t: t.MaxPool1d(2),
    lambda t: t.AvgPool1d(3, 2),
    lambda t: t.AdaptiveAvgPool1d(3),
])
def test_modules_match_torch(make):
    tm = make(torch.nn).double()
    m = make(nn).to(numpy.float64)
    x = _rand(2, 4, 7) if "1d" in type(tm).__name__ else _rand(2, 4, 7, 6)
    assert [k for k in m.state_dict()] == [k for k in tm.state_dict()]
    for k, v in m.state_dict().items():
        assert v.shape == tuple(tm.state_dict()[k].shape)
    _check_module(m, tm, x, steps=1)
    assert repr(m).split("(")[0] == repr(tm).split("(")[0]


def test_conv_default_init_matches_torch_distribution():
    gf.manual_seed(0)
    m = nn.Conv2d(16, 32, 5)
    bound = 1 / numpy.sqrt(16 * 25)  # PyTorch: kaiming_uniform(a=sqrt(5)) and the bias both give U(-b, b)
    for p in (m.weight, m.bias):
        assert numpy.abs(p.numpy()).max() <= bound + 1e-7
    assert abs(m.weight.numpy().std() - bound / numpy.sqrt(3)) < 0.05 * bound / numpy.sqrt(3)
    t = nn.ConvTranspose2d(8, 4, 3)
    assert numpy.abs(t.bias.numpy()).max() <= 1 / numpy.sqrt(4 * 9) + 1e-7


def test_dropout2d_of_a_3d_input_drops_per_sample_and_channel_as_torch():
    """torch 2 reads a 3-d input to dropout2d as (N, C, L), with a warning; here it was an
    unbatched (C, H, W), a whole sample kept or dropped at once."""
    gf.manual_seed(0)
    x = gf.Tensor(numpy.ones((64, 8, 5), numpy.float32))
    with pytest.warns(UserWarning, match="interpreted as shape \\(N, C, L\\)"):
        y = F.dropout2d(x, 0.5).numpy()
    assert (y.min(axis=2) == y.max(axis=2)).all()          # each (sample, channel) all kept or all dropped
    kept = y[:, :, 0] != 0
    assert (kept.any(axis=1) & (~kept).any(axis=1)).mean() > 0.9   # samples with channels kept and dropped


def test_batchnorm_state_dict_without_num_batches_tracked_loads_as_torch():
    """torch's BatchNorm fills a missing num_batches_tracked with its own (older checkpoints, state
    dicts written by hand): such a dict loads strictly and it is not reported missing. Here the
    strict load raised and strict=False listed it."""
    def build(lib):
        return lib.nn.Sequential(lib.nn.Linear(2, 2), lib.nn.BatchNorm1d(2))

    values = {"0.weight": numpy.eye(2), "0.bias": numpy.zeros(2), "1.weight": numpy.full(2, 2.0),
              "1.bias": numpy.ones(2), "1.running_mean": numpy.full(2, 0.5), "1.running_var": numpy.full(2, 4.0)}
    ours, theirs = build(gf), build(torch)
    for model, lib in ((ours, gf), (theirs, torch)):
        model[1].num_batches_tracked.add_(3)
        assert model.load_state_dict({k: lib.tensor(v) for k, v in values.items()}) is not None
    assert int(ours[1].num_batches_tracked.numpy()) == int(theirs[1].num_batches_tracked) == 3
    partial = {k: v for k, v in values.items() if k.startswith("1.")}
    got = ours.load_state_dict({k: gf.tensor(v) for k, v in partial.items()}, strict=False)
    want = theirs.load_state_dict({k: torch.tensor(v) for k, v in partial.items()}, strict=False)
    assert list(got.missing_keys) == list(want.missing_keys) == ["0.weight", "0.bias"]
    x = numpy.random.default_rng(0).standard_normal((3, 2)).astype(numpy.float32)
    ours.eval(), theirs.eval()
    numpy.testing.assert_allclose(ours(gf.tensor(x)).detach().numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                  rtol=1e-6)
