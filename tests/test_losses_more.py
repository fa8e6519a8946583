"""Margin, embedding and likelihood losses against PyTorch: every reduction in float32 and float64
(values and gradients, edge values included), the nn modules (signatures, defaults, buffers), torch's
legacy size_average/reduce, float64 gradchecks and the error cases. tests/test_torch_parity.py has one
more row per function (exception types, broadcasting, 0-d and empty inputs)."""
import inspect
import math
import zlib

import numpy
import pytest

import gradflow
from gradflow import nn
from gradflow.nn import functional as F

torch = pytest.importorskip("torch")
tF = torch.nn.functional

REDUCTIONS = ["mean", "sum", "none"]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


def _inputs(name, dtype):
    """(differentiable arrays, constant arrays, kwargs) for ``name``; edge values in every set."""
    r = numpy.random.default_rng(zlib.crc32(name.encode()))
    x = r.normal(size=(6, 4))
    pm1 = numpy.where(r.random(6) < 0.5, -1.0, 1.0)
    if name == "margin_ranking_loss":
        a, b = r.normal(size=6), r.normal(size=6)
        a[0], b[0], pm1[0] = 1.0, 0.5, 1.0            # -1 * 0.5 + 0.5 == 0: the clamp's kink
        a[1], b[1] = 1e4, -1e4                         # large
        return [a, b], [pm1], dict(margin=0.5)
    if name == "hinge_embedding_loss":
        v = r.normal(size=8)
        v[:3] = [0.7, 0.0, 50.0]                       # x == margin (kink), 0, large
        return [v], [numpy.array([-1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0])], dict(margin=0.7)
    if name == "soft_margin_loss":
        v = r.normal(size=6) * 2
        v[:2] = [0.0, 30.0]
        return [v], [pm1], {}
    if name == "multilabel_soft_margin_loss":
        x[0, :2] = [0.0, 40.0]
        return [x], [(r.random((6, 4)) < 0.5).astype(float), r.uniform(0.5, 2.0, size=4)], {}
    if name == "multilabel_margin_loss":
        x[0] = [1.0, 0.0, 0.5, 2.0]                    # 1 - x[0] + x[1] == 0: the hinge's kink
        t = numpy.array([[0, 2, -1, 1], [3, -1, 0, 0], [1, 1, 2, -1], [-1, 0, 1, 2], [0, 1, 2, 3], [2, 3, -1, -1]])
        return [x], [t], {}
    if name.startswith("multi_margin_loss"):
        x[0] = [1.0, 0.0, 0.5, 2.0]                    # margin - x[0] + x[1] == 0
        p = 2 if name.endswith("p2") else 1
        return [x], [numpy.array([0, 3, 1, 1, 2, 0]), r.uniform(0.5, 2.0, size=4)], dict(p=p, margin=1.0)
    if name == "cosine_embedding_loss":
        b = r.normal(size=(6, 4))
        x[0] = 0.0                                     # a zero vector (the 1e-12 in the denominator)
        b[1] = x[1] * 3                                # cos == 1
        return [x, b], [numpy.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])], dict(margin=0.1)
    if name.startswith("triplet_margin_loss"):
        a, p, n = x, r.normal(size=(6, 4)), r.normal(size=(6, 4))
        p[0] = a[0]                                    # d(a, n) == d(p, n): swap's tie, in an active row
        n[0] = a[0] + 0.1
        return [a, p, n], [], dict(margin=0.5, swap=name.endswith("swap"), p=1 if name.endswith("p1") else 2)
    if name == "pairwise_distance":
        b = r.normal(size=(6, 4))
        x[0], b[0] = 0.0, 1e-6                         # x1 - x2 + eps == 0: zero distance
        return [x, b], [], {}
    if name.startswith("poisson_nll_loss"):
        t = numpy.array([0.0, 1.0, 2.0, 0.5, 3.0, 7.0])
        log_input = not name.endswith("prob")
        v = r.normal(size=6) if log_input else r.uniform(0.1, 3.0, size=6)
        return [v], [t], dict(log_input=log_input, full=True)
    if name == "gaussian_nll_loss":
        var = r.uniform(0.1, 2.0, size=(6, 4))
        var[0, :2] = [0.0, 1e-9]                       # clamped to eps, gradient still that of var
        return [x, r.normal(size=(6, 4)), var], [], dict(full=True)
    raise KeyError(name)


NAMES = ["margin_ranking_loss", "hinge_embedding_loss", "soft_margin_loss", "multilabel_soft_margin_loss",
         "multilabel_margin_loss", "multi_margin_loss", "multi_margin_loss_p2", "cosine_embedding_loss",
         "triplet_margin_loss", "triplet_margin_loss_swap", "triplet_margin_loss_p1", "pairwise_distance",
         "poisson_nll_loss", "poisson_nll_loss_prob", "gaussian_nll_loss"]


def _call(lib, name, xs, consts, kw, reduction):
    f = getattr(lib, name.split("_p2")[0].split("_swap")[0].split("_p1")[0].split("_prob")[0])
    kw = dict(kw)
    if name != "pairwise_distance":
        kw["reduction"] = reduction
    if name.startswith("multilabel_soft") or name.startswith("multi_margin"):
        kw["weight"] = consts.pop()                    # the weight variants
    return f(*xs, *consts, **kw)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, reduction", [(n, r) for n in NAMES for r in REDUCTIONS
                                             if n != "pairwise_distance" or r == "none"])  # it has no reduction
def test_matches_torch(name, reduction, dtype):
    arrays, consts, kw = _inputs(name, dtype)
    arrays = [a.astype(dtype) for a in arrays]
    consts = [c.astype(dtype) if c.dtype.kind == "f" else c for c in consts]
    xs = [gradflow.Tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    got = _call(F, name, xs, [gradflow.Tensor(c) for c in consts], kw, reduction)
    want = _call(tF, name, ts, [torch.tensor(c) for c in consts], kw, reduction)
    assert got.dtype == numpy.dtype(dtype) and got.shape == tuple(want.shape)
    numpy.testing.assert_allclose(got.numpy(), want.detach().numpy(), **TOL[dtype])
    g = numpy.random.default_rng(1).normal(size=got.shape).astype(dtype)
    (got * gradflow.Tensor(g)).sum().backward()
    (want * torch.tensor(g)).sum().backward()
    for x, t in zip(xs, ts):
        numpy.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "pairwise_distance"])
def test_gradcheck(name):
    """float64 central differences, away from the kinks (the edge rows are compared with torch above)."""
    arrays, consts, kw = _inputs(name, "float64")
    r = numpy.random.default_rng(2)
    arrays = [a + r.uniform(0.01, 0.02, size=a.shape) for a in arrays]   # off the exact kinks and ties
    if name == "gaussian_nll_loss":
        arrays[2] = numpy.abs(arrays[2]) + 0.1
    if name.startswith("poisson_nll_loss"):
        arrays[0] = numpy.clip(arrays[0], -3, 3) if kw["log_input"] else numpy.abs(arrays[0]) + 0.1
    xs = [gradflow.Tensor(a, requires_grad=True) for a in arrays]
    cs = [gradflow.Tensor(c) for c in consts]
    assert gradflow.gradcheck(lambda *v: _call(F, name, v, list(cs), kw, "sum"), xs)


# ---- modules ------------------------------------------------------------------------------------------------
MODULES = ["MarginRankingLoss", "HingeEmbeddingLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss",
           "MultiLabelMarginLoss", "MultiMarginLoss", "CosineEmbeddingLoss", "TripletMarginLoss", "PoissonNLLLoss",
           "GaussianNLLLoss"]


@pytest.mark.parametrize("name", MODULES)
def test_module_signature_is_torchs(name):
    ours = inspect.signature(getattr(nn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    assert list(ours) == list(theirs)
    for key, p in theirs.items():
        assert ours[key].kind == p.kind and ours[key].default == p.default, key


@pytest.mark.parametrize("name", [n.split("_p")[0] for n in NAMES if not n.endswith(("_swap", "_p1", "_p2"))])
def test_functional_signature_is_torchs(name):
    if name == "pairwise_distance":  # a builtin in torch: its documented signature
        assert str(inspect.signature(F.pairwise_distance)) == "(x1, x2, p=2.0, eps=1e-06, keepdim=False)"
        return
    ours = inspect.signature(getattr(F, name)).parameters
    theirs = inspect.signature(getattr(tF, name)).parameters
    assert list(ours) == list(theirs)
    assert all(ours[k].default == p.default for k, p in theirs.items()), name


def test_modules_match_torch_modules():
    r = numpy.random.default_rng(4)
    x, y, z = (r.normal(size=(5, 3)) for _ in range(3))
    pm1 = numpy.array([1.0, -1.0, 1.0, 1.0, -1.0])
    cls = numpy.array([0, 2, 1, 1, 0])
    w = numpy.array([0.5, 1.0, 2.0])
    mlm = numpy.array([[0, -1, 1], [2, 1, -1], [1, 0, 2], [-1, 0, 0], [2, -1, -1]])
    var = numpy.abs(r.normal(size=5)) + 0.1
    cases = [  # (constructor args, kwargs, differentiable inputs, constant inputs)
        ("MarginRankingLoss", (0.3,), {}, [x[:, 0], y[:, 0]], [pm1]),
        ("HingeEmbeddingLoss", (0.5, None, None, "sum"), {}, [x], [numpy.sign(y)]),
        ("SoftMarginLoss", (), dict(reduction="none"), [x], [numpy.sign(y)]),
        ("MultiLabelSoftMarginLoss", (w,), {}, [x], [(y > 0).astype(float)]),
        ("MultiLabelMarginLoss", (), dict(reduction="sum"), [x], [mlm]),
        ("MultiMarginLoss", (2, 0.7, w), {}, [x], [cls]),
        ("CosineEmbeddingLoss", (0.2,), {}, [x, y], [pm1]),
        ("TripletMarginLoss", (0.8, 1.0, 1e-6, True), {}, [x, y, z], []),
        ("PoissonNLLLoss", (True, True, None, 1e-8, None, "none"), {}, [x], [numpy.abs(y) * 3]),
        ("GaussianNLLLoss", (), dict(full=True, eps=1e-3), [x, y, var], []),
    ]
    for name, args, kw, diff, const in cases:
        g_args = tuple(gradflow.Tensor(a) if isinstance(a, numpy.ndarray) else a for a in args)
        t_args = tuple(torch.tensor(a) if isinstance(a, numpy.ndarray) else a for a in args)
        ours, theirs = getattr(nn, name)(*g_args, **kw), getattr(torch.nn, name)(*t_args, **kw)
        assert ours.reduction == theirs.reduction, name
        assert set(ours.state_dict()) == set(theirs.state_dict()), name
        xs = [gradflow.Tensor(a, requires_grad=True) for a in diff]
        ts = [torch.tensor(a, requires_grad=True) for a in diff]
        got = ours(*xs, *[gradflow.Tensor(c) for c in const])
        want = theirs(*ts, *[torch.tensor(c) for c in const])
        numpy.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
        got.sum().backward()
        want.sum().backward()
        for a, b in zip(xs, ts):
            numpy.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_weight_buffers_follow_the_module():
    m = nn.MultiMarginLoss(weight=gradflow.Tensor(numpy.ones(3)))
    assert [n for n, _ in m.named_buffers()] == ["weight"]
    assert [n for n, _ in nn.MultiLabelSoftMarginLoss().named_buffers()] == []


@pytest.mark.parametrize("size_average, reduce, expected", [(None, False, "none"), (False, None, "sum"),
                                                             (True, True, "mean"), (False, False, "none")])
def test_legacy_size_average_and_reduce(size_average, reduce, expected):
    x, t = numpy.random.default_rng(5).normal(size=(4, 3)), numpy.sign(numpy.random.default_rng(6).normal(size=(4, 3)))
    with pytest.warns(UserWarning, match=f"reduction='{expected}'"):
        got = F.soft_margin_loss(gradflow.Tensor(x), gradflow.Tensor(t), size_average, reduce)
    with pytest.warns(UserWarning):
        module = nn.SoftMarginLoss(size_average, reduce)
    assert module.reduction == expected
    want = tF.soft_margin_loss(torch.tensor(x), torch.tensor(t), reduction=expected)
    numpy.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


# ---- errors ---------------------------------------------------------------------------------------------------
def T(a, grad=False):
    return gradflow.Tensor(numpy.asarray(a, dtype=numpy.float64), requires_grad=grad)


def I(a):
    return gradflow.Tensor(numpy.asarray(a, dtype=numpy.int64))


X = T(numpy.random.default_rng(7).normal(size=(3, 4)))


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.margin_ranking_loss(X, X, X, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: F.margin_ranking_loss(X[0], X[0], X), RuntimeError, "same dimension"),
    (lambda: F.hinge_embedding_loss(X, X, reduction="batchmean"), ValueError, "reduction"),
    (lambda: F.soft_margin_loss(X, T(numpy.ones((3, 4)), True)), RuntimeError, "not differentiable with respect to "
                                                                               "argument 'target'"),
    (lambda: F.multilabel_soft_margin_loss(X, X, reduction="avg"), ValueError, "avg is not valid"),
    (lambda: F.multilabel_soft_margin_loss(T(1.0), T(1.0)), IndexError, "0-d"),
    (lambda: F.multilabel_margin_loss(X, I([[0, 4, -1, 1]] * 3)), RuntimeError, "out of range"),
    (lambda: F.multilabel_margin_loss(X, I([[0, -2, -1, 1]] * 3)), RuntimeError, "out of range"),
    (lambda: F.multilabel_margin_loss(X, I(numpy.zeros((3, 3)))), RuntimeError, "inconsistent target size"),
    (lambda: F.multilabel_margin_loss(X, gradflow.Tensor(numpy.zeros((3, 4), numpy.int32))), TypeError, "Long"),
    (lambda: F.multilabel_margin_loss(T(numpy.zeros((2, 3, 4))), I(numpy.zeros((2, 3, 4)))), RuntimeError,
     "non-empty vector or matrix"),
    (lambda: F.multi_margin_loss(X, I([0, 4, 1])), RuntimeError, "target out of range"),
    (lambda: F.multi_margin_loss(X, I([0, 1])), RuntimeError, "Expected target size \\[3\\], but got \\[2\\]"),
    (lambda: F.multi_margin_loss(X, T([0, 1, 2])), TypeError, "Long"),
    (lambda: F.multi_margin_loss(X, I([0, 1, 2]), p=3), ValueError, "only p == 1 and p == 2"),
    (lambda: F.multi_margin_loss(X, I([0, 1, 2]), weight=T(numpy.ones((1, 4)))), ValueError, "one-dimensional"),
    (lambda: F.multi_margin_loss(X, I([0, 1, 2]), weight=T(numpy.ones(3))), RuntimeError, "inconsistent weight"),
    (lambda: F.multi_margin_loss(X, I([0, 1, 2]), weight=T(numpy.ones(4), True)), RuntimeError,
     "not differentiable with respect to argument 'weight'"),
    (lambda: F.cosine_embedding_loss(X, X, T(numpy.ones((3, 1)))), RuntimeError, "0D or 1D target"),
    (lambda: F.cosine_embedding_loss(X[0], X[0], T(numpy.ones(3))), RuntimeError, "1D target tensor expects 2D"),
    (lambda: F.triplet_margin_loss(X, X, X, margin=0.0), ValueError, "margin must be greater than 0"),
    (lambda: F.triplet_margin_loss(X, X, X[0]), RuntimeError, "same number of dimensions"),
    (lambda: F.poisson_nll_loss(X, X, reduction="avg"), ValueError, "avg is not a valid value for reduction"),
    (lambda: F.gaussian_nll_loss(X, X, T(numpy.ones(4))), ValueError, "var is of incorrect size"),
    (lambda: F.gaussian_nll_loss(X, X, -1.0), ValueError, "var has negative"),
    (lambda: F.gaussian_nll_loss(X, X, T(-numpy.ones((3, 4)))), ValueError, "var has negative"),
    (lambda: F.gaussian_nll_loss(X, X, 1), TypeError, "Tensor or a float"),
    (lambda: F.gaussian_nll_loss(X, X, T(numpy.ones((3, 4))), reduction="avg"), ValueError, "avg is not valid"),
    (lambda: nn.MultiMarginLoss(p=3), ValueError, "only p == 1 and p == 2"),
    (lambda: nn.MultiMarginLoss(weight=T(numpy.ones((2, 2)))), ValueError, "expected weight to be None or 1D"),
    (lambda: nn.TripletMarginLoss(margin=-1.0), ValueError, "expected margin to be greater than 0"),
    (lambda: nn.CosineEmbeddingLoss(reduction="avg"), ValueError, "reduction must be one of"),
], ids=lambda v: "" if callable(v) or isinstance(v, type) else v[:40])
def test_errors(call, error, match):
    torch_counterpart = error  # the same exception type as torch's (gradflow's may subclass it)
    with pytest.raises(torch_counterpart, match=match):
        call()


def test_closed_forms():
    """A few hand-computed values, independent of torch."""
    assert F.margin_ranking_loss(T([1.0]), T([3.0]), T([1.0]), margin=0.5).item() == 2.5
    assert F.hinge_embedding_loss(T([0.2, 3.0]), T([-1.0, 1.0]), reduction="none").numpy().tolist() == [0.8, 3.0]
    assert F.soft_margin_loss(T([0.0]), T([1.0])).item() == pytest.approx(math.log(2))
    # sample: targets {0, 2}, others {1, 3}: hinges 1 - x0 + x1, 1 - x0 + x3, 1 - x2 + x1, 1 - x2 + x3, over C = 4
    x = numpy.array([0.5, 0.2, 1.0, -0.3])
    pairs = [1 - x[j] + x[i] for j in (0, 2) for i in (1, 3)]
    want = sum(max(0.0, p) for p in pairs) / 4
    assert F.multilabel_margin_loss(T(x), I([0, 2, -1, 1])).item() == pytest.approx(want)
    assert F.multi_margin_loss(T([[0.1, 0.2, 0.4, 0.8]]), I([3])).item() == pytest.approx((0.3 + 0.4 + 0.6) / 4)
    assert F.pairwise_distance(T([[3.0, 0.0]]), T([[0.0, 4.0]]), eps=0.0).numpy().tolist() == [5.0]
    assert F.gaussian_nll_loss(T([1.0]), T([3.0]), T([2.0])).item() == pytest.approx(0.5 * (math.log(2) + 2))
