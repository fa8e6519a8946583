"""Losses on extreme inputs against PyTorch: values and gradients (of loss.sum()) where an infinity, a NaN
or an unusual target dtype once gave gradflow a different number, or an error where torch gives a number
(or the reverse). NaN must match NaN, an infinity its sign, the rest to float32 tolerance."""
import numpy
import pytest

import gradflow
from gradflow.nn import functional as F

torch = pytest.importorskip("torch")
tF = torch.nn.functional

REDUCTIONS = ["mean", "sum", "none"]
F32 = numpy.float32


def _run(lib, name, arrays, differentiable, kwargs):
    """(loss, gradients of loss.sum() w.r.t. the arrays at ``differentiable``) from gradflow or torch;
    arrays in ``kwargs`` (pos_weight) become constant tensors."""
    make = (lambda a, g=False: gradflow.Tensor(a.copy(), requires_grad=g)) if lib == "gradflow" else \
        (lambda a, g=False: torch.tensor(a.copy(), requires_grad=g))
    args = [make(a, i in differentiable) for i, a in enumerate(arrays)]
    kwargs = {k: make(v) if isinstance(v, numpy.ndarray) else v for k, v in kwargs.items()}
    loss = getattr(F if lib == "gradflow" else tF, name)(*args, **kwargs)
    loss.sum().backward()
    as_numpy = (lambda t: numpy.asarray(t.data)) if lib == "gradflow" else (lambda t: t.detach().numpy())
    return [as_numpy(loss)] + [as_numpy(args[i].grad) for i in differentiable]


def _assert_like_torch(name, arrays, differentiable, **kwargs):
    got = _run("gradflow", name, arrays, differentiable, kwargs)
    want = _run("torch", name, arrays, differentiable, kwargs)
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("where", [0, 1])
def test_binary_cross_entropy_refuses_a_nan_as_torch(where, reduction):
    """torch's range check is 0 <= v <= 1, which a NaN fails: it raises, gradflow gave a NaN loss."""
    p, t = numpy.array([0.2, 0.9, 0.5], F32), numpy.array([0.0, 1.0, 0.3], F32)
    (p, t)[where][1] = numpy.nan
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        tF.binary_cross_entropy(torch.tensor(p), torch.tensor(t), reduction=reduction)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(gradflow.Tensor(p, requires_grad=True), gradflow.Tensor(t), reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("where,value", [(1, numpy.inf), (1, -numpy.inf), (0, -numpy.inf)])
def test_bce_with_logits_pos_weight_infinities(where, value, reduction):
    """With pos_weight, an infinite target made gradflow's input gradient -inf / inf where torch's
    (w t + 1 - t) sigmoid(x) - w t is NaN, and a -inf logit made its target gradient NaN where torch's
    log sigmoid(-x) - w log sigmoid(x) is inf."""
    x = numpy.array([[0.3, -1.2, 2.0], [0.5, 0.1, -0.7]], F32)
    t = numpy.array([[0.0, 1.0, 0.3], [1.0, 0.0, 0.5]], F32)
    for position in [(0, 0), (0, 1), (0, 2)]:
        x2, t2 = x.copy(), t.copy()
        (x2, t2)[where][position] = value
        _assert_like_torch("binary_cross_entropy_with_logits", [x2, t2], [0, 1], reduction=reduction,
                           pos_weight=numpy.array([2.0, 0.0, 0.5], F32))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["hinge_embedding_loss", "cosine_embedding_loss"])
def test_unsigned_targets_of_the_embedding_losses(name, reduction):
    """A uint8 target raised OverflowError (a Python -1 cast to uint8); torch compares -1 in the target's
    dtype, so 255 counts as -1 there."""
    t = numpy.array([1, 0, 255, 1], numpy.uint8)
    x = numpy.array([0.3, -1.2, 2.0, 0.5], F32)
    if name == "hinge_embedding_loss":
        _assert_like_torch(name, [x, t], [0], reduction=reduction)
    else:
        x1 = numpy.stack([x, x[::-1], x * 2]).T.copy()
        _assert_like_torch(name, [x1, x1[::-1].copy(), t], [0, 1], reduction=reduction, margin=0.1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,kwargs", [("mse_loss", {}), ("smooth_l1_loss", {}), ("smooth_l1_loss", {"beta": 0.5})])
def test_bool_targets_of_mse_and_smooth_l1(name, kwargs, reduction):
    """torch's mse_loss and smooth_l1_loss take a bool target as 0/1; gradflow raised a DTypeError."""
    x = numpy.array([[0.3, -1.2, 2.0], [0.5, 1.1, -0.7]], F32)
    _assert_like_torch(name, [x, numpy.array([[True, False, True], [False, True, False]])], [0],
                       reduction=reduction, **kwargs)


def test_bool_target_of_huber_loss_forward():
    """torch's huber_loss takes a bool target in the forward (its backward then refuses it)."""
    x = numpy.array([0.3, -1.2, 2.0, 0.5], F32)
    t = numpy.array([True, False, True, False])
    want = tF.huber_loss(torch.tensor(x), torch.tensor(t), reduction="none", delta=0.8).numpy()
    got = F.huber_loss(gradflow.Tensor(x), gradflow.Tensor(t), reduction="none", delta=0.8).numpy()
    numpy.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("value", [numpy.inf, -numpy.inf, numpy.nan])
def test_multi_margin_loss_weight_applies_to_active_terms_only(value, p, reduction):
    """torch's kernel multiplies w[y] into the active hinge terms only: an infinite or NaN weight of a row
    with no active term gives 0 there (gradflow's 0 * inf gave NaN), one with active terms gives inf."""
    x = numpy.array([[3.0, 0.0, 0.5, 0.1], [0.2, 0.4, 0.3, 0.1], [0.1, 0.2, 0.3, 0.4]], F32)  # row 0: no active term
    for cls in (0, 1):
        weight = numpy.array([1.0, 0.0, 2.0, 0.5], F32)
        weight[cls] = value
        _assert_like_torch("multi_margin_loss", [x, numpy.array([0, 1, 3], numpy.int64)], [0], p=p,
                           weight=weight, reduction=reduction)


def test_binary_cross_entropy_has_no_gradient_for_weight():
    """torch's binary_cross_entropy is not differentiable w.r.t. weight and says so; gradflow gave one."""
    p, t = numpy.array([0.2, 0.9], F32), numpy.array([0.0, 1.0], F32)
    w = numpy.array([1.0, 2.0], F32)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        tF.binary_cross_entropy(torch.tensor(p), torch.tensor(t), weight=torch.tensor(w, requires_grad=True))
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        F.binary_cross_entropy(gradflow.Tensor(p), gradflow.Tensor(t), weight=gradflow.Tensor(w, requires_grad=True))
