"""Losses (values vs closed forms and PyTorch, float64 gradchecks, edge cases) and metrics."""
import math

import numpy
import pytest

import gradflow
from gradflow import nn
from gradflow.nn import functional as F

rng = numpy.random.default_rng(0)
LOGITS = rng.standard_normal((5, 4))
CLASSES = numpy.array([0, 3, 1, 1, 2])
PROBS = rng.dirichlet(numpy.ones(4), size=5)
PRED = rng.standard_normal((3, 4))
TARGET = rng.standard_normal((3, 4))
P01 = rng.uniform(0.05, 0.95, size=(3, 4))
T01 = rng.uniform(0.0, 1.0, size=(3, 4))
POS_WEIGHT = numpy.array([0.5, 1.0, 2.0, 3.0])
WEIGHT = rng.uniform(0.5, 1.5, size=(3, 4))


def T(a, grad=False):
    return gradflow.Tensor(numpy.array(a, dtype=numpy.float64), requires_grad=grad)


def I(a):
    return gradflow.Tensor(numpy.array(a, dtype=numpy.int64))


# ---- closed forms (no torch needed) -------------------------------------------------------------------------
def test_cross_entropy_closed_forms():
    # uniform logits: -log(1/C) per row
    assert F.cross_entropy(T(numpy.zeros((3, 5))), I([0, 2, 4])).item() == pytest.approx(math.log(5))
    x = LOGITS
    logp = x - numpy.log(numpy.exp(x).sum(1, keepdims=True))
    rows = -logp[numpy.arange(5), CLASSES]
    assert F.cross_entropy(T(x), I(CLASSES)).item() == pytest.approx(rows.mean())
    assert F.cross_entropy(T(x), I(CLASSES), reduction="sum").item() == pytest.approx(rows.sum())
    assert numpy.allclose(F.cross_entropy(T(x), I(CLASSES), reduction="none").numpy(), rows)
    eps = 0.2
    smooth = (1 - eps) * rows - eps / 4 * logp.sum(1)
    assert F.cross_entropy(T(x), I(CLASSES), label_smoothing=eps).item() == pytest.approx(smooth.mean())
    assert F.cross_entropy(T(x), T(PROBS)).item() == pytest.approx(-(PROBS * logp).sum(1).mean())
    # probability targets that are one-hot agree with class targets
    onehot = numpy.eye(4)[CLASSES]
    assert F.cross_entropy(T(x), T(onehot)).item() == pytest.approx(rows.mean())


def test_cross_entropy_ignore_index():
    x = LOGITS
    target = CLASSES.copy()
    target[1] = -100
    logp = x - numpy.log(numpy.exp(x).sum(1, keepdims=True))
    keep = target != -100
    rows = -logp[numpy.arange(5)[keep], target[keep]]
    assert F.cross_entropy(T(x), I(target)).item() == pytest.approx(rows.mean())
    smooth = 0.9 * rows - 0.1 / 4 * logp[keep].sum(1)
    assert F.cross_entropy(T(x), I(target), label_smoothing=0.1).item() == pytest.approx(smooth.mean())
    assert F.nll_loss(T(logp), I(target)).item() == pytest.approx(rows.mean())


def test_nll_loss_closed_form():
    logp = numpy.log(PROBS)
    expected = -logp[numpy.arange(5), CLASSES]
    assert F.nll_loss(T(logp), I(CLASSES)).item() == pytest.approx(expected.mean())
    assert numpy.allclose(F.nll_loss(T(logp), I(CLASSES), reduction="none").numpy(), expected)
    # log_softmax + nll_loss == cross_entropy
    x = T(LOGITS)
    assert F.nll_loss(F.log_softmax(x, 1), I(CLASSES)).item() == pytest.approx(F.cross_entropy(x, I(CLASSES)).item())


def test_regression_closed_forms():
    d = PRED - TARGET
    assert F.mse_loss(T(PRED), T(TARGET)).item() == pytest.approx((d ** 2).mean())
    assert F.mse_loss(T(PRED), T(TARGET), reduction="sum").item() == pytest.approx((d ** 2).sum())
    assert F.l1_loss(T(PRED), T(TARGET)).item() == pytest.approx(numpy.abs(d).mean())
    for delta in (0.5, 1.0, 2.0):
        a = numpy.abs(d)
        huber = numpy.where(a < delta, 0.5 * d ** 2, delta * (a - 0.5 * delta))
        assert numpy.allclose(F.huber_loss(T(PRED), T(TARGET), "none", delta).numpy(), huber)
        smooth = numpy.where(a < delta, 0.5 * d ** 2 / delta, a - 0.5 * delta)
        assert F.smooth_l1_loss(T(PRED), T(TARGET), beta=delta).item() == pytest.approx(smooth.mean())
    assert F.smooth_l1_loss(T(PRED), T(TARGET), beta=0.0).item() == pytest.approx(numpy.abs(d).mean())


def test_binary_closed_forms():
    p, t = P01, T01
    bce = -(t * numpy.log(p) + (1 - t) * numpy.log(1 - p))
    assert F.binary_cross_entropy(T(p), T(t)).item() == pytest.approx(bce.mean())
    assert F.binary_cross_entropy(T(p), T(t), weight=T(WEIGHT)).item() == pytest.approx((bce * WEIGHT).mean())
    x = PRED
    sig = 1 / (1 + numpy.exp(-x))
    bcel = -(t * numpy.log(sig) + (1 - t) * numpy.log(1 - sig))
    assert F.binary_cross_entropy_with_logits(T(x), T(t)).item() == pytest.approx(bcel.mean())
    weighted = -(POS_WEIGHT * t * numpy.log(sig) + (1 - t) * numpy.log(1 - sig))
    got = F.binary_cross_entropy_with_logits(T(x), T(t), pos_weight=T(POS_WEIGHT), reduction="sum").item()
    assert got == pytest.approx(weighted.sum())


def test_binary_losses_are_stable_at_extremes():
    x = T([1000.0, -1000.0, 0.0], grad=True)
    t = T([0.0, 0.0, 1.0])
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert numpy.allclose(loss.numpy(), [1000.0, 0.0, math.log(2)])
    loss.sum().backward()
    assert numpy.allclose(x.grad.numpy(), [1.0, 0.0, -0.5])  # sigmoid(x) - t, even at x = 0
    p = T([0.0, 1.0, 1.0, 0.0], grad=True)
    bce = F.binary_cross_entropy(p, T([1.0, 0.0, 1.0, 0.0]), reduction="none")
    assert bce.numpy().tolist() == [100.0, 100.0, 0.0, 0.0]  # logs clamped at -100 as in PyTorch
    bce.sum().backward()
    assert numpy.all(numpy.isfinite(p.grad.numpy()))


def test_cross_entropy_is_stable_for_huge_logits():
    x = T([[1e4, 0.0, -1e4]], grad=True)
    loss = F.cross_entropy(x, I([1]))
    assert loss.item() == pytest.approx(1e4)
    loss.backward()
    assert numpy.allclose(x.grad.numpy(), [[1.0, -1.0, 0.0]])


# ---- gradients (float64 central differences) ---------------------------------------------------------------------
GRADCHECKS = {
    "cross_entropy": lambda: ([T(LOGITS, True)], lambda x: F.cross_entropy(x, I(CLASSES))),
    "cross_entropy_sum": lambda: ([T(LOGITS, True)], lambda x: F.cross_entropy(x, I(CLASSES), reduction="sum")),
    "cross_entropy_smooth": lambda: ([T(LOGITS, True)], lambda x: F.cross_entropy(x, I(CLASSES),
                                                                                  label_smoothing=0.1)),
    "cross_entropy_probs": lambda: ([T(LOGITS, True), T(PROBS, True)], lambda x, q: F.cross_entropy(x, q)),
    "nll_loss": lambda: ([T(numpy.log(PROBS), True)], lambda x: F.nll_loss(x, I(CLASSES))),
    "mse_loss": lambda: ([T(PRED, True), T(TARGET, True)], F.mse_loss),
    "l1_loss": lambda: ([T(PRED, True), T(TARGET, True)], F.l1_loss),
    "huber_loss": lambda: ([T(PRED, True), T(TARGET, True)], lambda a, b: F.huber_loss(a, b, delta=0.7)),
    "smooth_l1_loss": lambda: ([T(PRED, True), T(TARGET, True)], lambda a, b: F.smooth_l1_loss(a, b, beta=0.7)),
    "bce": lambda: ([T(P01, True), T(T01, True)], F.binary_cross_entropy),
    "bce_weighted": lambda: ([T(P01, True)], lambda p: F.binary_cross_entropy(p, T(T01), weight=T(WEIGHT))),
    "bce_logits": lambda: ([T(PRED, True), T(T01, True)], F.binary_cross_entropy_with_logits),
    "bce_logits_pos_weight": lambda: ([T(PRED, True), T(T01, True), T(POS_WEIGHT, True)],
                                      lambda x, t, w: F.binary_cross_entropy_with_logits(x, t, pos_weight=w)),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    inputs, fn = GRADCHECKS[name]()
    assert gradflow.gradcheck(fn, inputs)


@pytest.mark.parametrize("name", ["bce", "bce_logits_pos_weight", "huber_loss", "cross_entropy_smooth"])
def test_gradgradcheck(name):
    inputs, fn = GRADCHECKS[name]()
    assert gradflow.gradgradcheck(fn, inputs)


# ---- against PyTorch -------------------------------------------------------------------------------------------------
def _torch_case(torch, name):
    tf = torch.nn.functional
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    ti = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    ignored = CLASSES.copy()
    ignored[2] = -100
    cases = {
        "ce": ((LOGITS,), lambda x: F.cross_entropy(x, I(CLASSES)), lambda x: tf.cross_entropy(x, ti(CLASSES))),
        "ce_none": ((LOGITS,), lambda x: F.cross_entropy(x, I(CLASSES), reduction="none"),
                    lambda x: tf.cross_entropy(x, ti(CLASSES), reduction="none")),
        "ce_smooth": ((LOGITS,), lambda x: F.cross_entropy(x, I(CLASSES), label_smoothing=0.15),
                      lambda x: tf.cross_entropy(x, ti(CLASSES), label_smoothing=0.15)),
        "ce_smooth_ignore": ((LOGITS,), lambda x: F.cross_entropy(x, I(ignored), label_smoothing=0.15),
                             lambda x: tf.cross_entropy(x, ti(ignored), label_smoothing=0.15)),
        "ce_probs_smooth": ((LOGITS, PROBS), lambda x, q: F.cross_entropy(x, q, label_smoothing=0.1),
                            lambda x, q: tf.cross_entropy(x, q, label_smoothing=0.1)),
        "nll_sum": ((numpy.log(PROBS),), lambda x: F.nll_loss(x, I(CLASSES), reduction="sum"),
                    lambda x: tf.nll_loss(x, ti(CLASSES), reduction="sum")),
        "nll_ignore": ((numpy.log(PROBS),), lambda x: F.nll_loss(x, I(ignored)),
                       lambda x: tf.nll_loss(x, ti(ignored))),
        "mse": ((PRED, TARGET), F.mse_loss, tf.mse_loss),
        "l1_sum": ((PRED, TARGET), lambda a, b: F.l1_loss(a, b, "sum"), lambda a, b: tf.l1_loss(a, b, reduction="sum")),
        "huber": ((PRED, TARGET), lambda a, b: F.huber_loss(a, b, delta=0.6),
                  lambda a, b: tf.huber_loss(a, b, delta=0.6)),
        "smooth_l1": ((PRED, TARGET), lambda a, b: F.smooth_l1_loss(a, b, "none", 0.6),
                      lambda a, b: tf.smooth_l1_loss(a, b, reduction="none", beta=0.6)),
        "bce": ((P01, T01), F.binary_cross_entropy, tf.binary_cross_entropy),
        "bce_weight": ((P01, T01), lambda p, q: F.binary_cross_entropy(p, q, weight=T(WEIGHT), reduction="sum"),
                       lambda p, q: tf.binary_cross_entropy(p, q, weight=torch.tensor(WEIGHT), reduction="sum")),
        "bce_logits": ((PRED, T01), F.binary_cross_entropy_with_logits, tf.binary_cross_entropy_with_logits),
        "bce_logits_pw": ((PRED, T01),  # torch does not differentiate w.r.t. pos_weight; our gradcheck does
                          lambda x, y: F.binary_cross_entropy_with_logits(x, y, weight=T(WEIGHT),
                                                                          pos_weight=T(POS_WEIGHT)),
                          lambda x, y: tf.binary_cross_entropy_with_logits(x, y, weight=torch.tensor(WEIGHT),
                                                                           pos_weight=torch.tensor(POS_WEIGHT))),
    }
    arrays, ours, theirs = cases[name]
    return arrays, ours, theirs, t


TORCH_CASES = ["ce", "ce_none", "ce_smooth", "ce_smooth_ignore", "ce_probs_smooth", "nll_sum", "nll_ignore", "mse",
               "l1_sum", "huber", "smooth_l1", "bce", "bce_weight", "bce_logits", "bce_logits_pw"]


@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_torch_values_and_gradients(name):
    torch = pytest.importorskip("torch")
    arrays, ours, theirs, t = _torch_case(torch, name)
    xs = [T(a, True) for a in arrays]
    ts = [t(a) for a in arrays]
    got, want = ours(*xs), theirs(*ts)
    assert numpy.allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
    got.sum().backward()
    want.sum().backward()
    for x, tt in zip(xs, ts):
        assert numpy.allclose(x.grad.numpy(), tt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_float32_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    x = gradflow.Tensor(LOGITS.astype(numpy.float32), requires_grad=True)
    tx = torch.tensor(LOGITS.astype(numpy.float32), requires_grad=True)
    loss = nn.CrossEntropyLoss()(x, I(CLASSES))
    want = torch.nn.CrossEntropyLoss()(tx, torch.tensor(CLASSES))
    assert loss.dtype == numpy.float32 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    want.backward()
    assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-7)


# ---- modules ------------------------------------------------------------------------------------------------------
def test_loss_modules_match_functional():
    pairs = [
        (nn.CrossEntropyLoss(label_smoothing=0.1), lambda: F.cross_entropy(T(LOGITS), I(CLASSES), label_smoothing=0.1),
         (T(LOGITS), I(CLASSES))),
        (nn.NLLLoss(reduction="sum"), lambda: F.nll_loss(T(LOGITS), I(CLASSES), "sum"), (T(LOGITS), I(CLASSES))),
        (nn.MSELoss(), lambda: F.mse_loss(T(PRED), T(TARGET)), (T(PRED), T(TARGET))),
        (nn.L1Loss(), lambda: F.l1_loss(T(PRED), T(TARGET)), (T(PRED), T(TARGET))),
        (nn.HuberLoss(delta=0.3), lambda: F.huber_loss(T(PRED), T(TARGET), delta=0.3), (T(PRED), T(TARGET))),
        (nn.SmoothL1Loss(beta=0.3), lambda: F.smooth_l1_loss(T(PRED), T(TARGET), beta=0.3), (T(PRED), T(TARGET))),
        (nn.BCELoss(), lambda: F.binary_cross_entropy(T(P01), T(T01)), (T(P01), T(T01))),
        (nn.BCEWithLogitsLoss(pos_weight=POS_WEIGHT), lambda: F.binary_cross_entropy_with_logits(
            T(PRED), T(T01), pos_weight=T(POS_WEIGHT)), (T(PRED), T(T01))),
    ]
    for module, expected, args in pairs:
        assert module(*args).item() == pytest.approx(expected().item()), type(module).__name__
    assert repr(nn.MSELoss(reduction="sum")) == "MSELoss(reduction='sum')"
    assert [n for n, _ in nn.BCEWithLogitsLoss(pos_weight=POS_WEIGHT).named_buffers()] == ["pos_weight"]


# ---- errors ----------------------------------------------------------------------------------------------------------
def test_loss_errors():
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.mse_loss(T(PRED), T(TARGET), reduction="avg")
    with pytest.raises(ValueError, match=r"input shape \(3, 1\) and target shape \(3,\) differ"):
        F.mse_loss(T(numpy.zeros((3, 1))), T(numpy.zeros(3)))
    with pytest.raises(IndexError, match="out of"):
        F.cross_entropy(T(LOGITS), I([0, 1, 2, 3, 4]))
    with pytest.raises(IndexError, match="target class 7 is out of range for 4 classes"):
        F.nll_loss(T(LOGITS), I([0, 1, 2, 3, 7]))
    with pytest.raises(TypeError, match="integer class indices"):
        F.nll_loss(T(LOGITS), T(numpy.zeros(5)))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        F.cross_entropy(T(LOGITS), I(CLASSES), label_smoothing=1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(T([1.5]), T([1.0]))
    with pytest.raises(ValueError, match="delta must be positive"):
        F.huber_loss(T(PRED), T(TARGET), delta=0)


# ---- metrics -----------------------------------------------------------------------------------------------------
def test_accuracy_variants():
    logits = T([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    target = I([0, 1, 2, 2])
    assert F.accuracy(logits, target) == 0.75
    assert F.accuracy(F.softmax(logits, 1), target) == 0.75  # probabilities: same argmax
    assert F.misclassification_rate(logits, target) == 0.25
    assert F.accuracy(logits, T(numpy.eye(3)[[0, 1, 2, 2]])) == 0.75  # one-hot targets
    assert F.accuracy(logits.numpy(), [0, 1, 2, 2]) == 0.75             # arrays and lists too
    probs = T([0.9, 0.2, 0.6, 0.4])
    assert F.accuracy(probs, I([1, 0, 0, 0])) == 0.75
    assert F.accuracy(T([[2.0], [-1.0], [0.5], [-0.5]]), I([1, 0, 0, 0]), threshold=0.0) == 0.75
    with pytest.raises(ValueError, match="4 predictions but 3 targets"):
        F.accuracy(logits, I([0, 1, 2]))


@pytest.mark.parametrize("loss", [lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
                                  lambda x, t: F.nll_loss(x, t)], ids=["cross_entropy-smoothed", "nll_loss"])
def test_an_all_ignored_batch_has_a_nan_loss_and_zero_gradients_as_in_torch(loss):
    """A batch made only of padding (every target ignore_index): the mean is 0 / 0, NaN, but the
    gradient is zero in torch -- a NaN gradient would poison every weight at the next step."""
    x = gradflow.Tensor(numpy.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    value = loss(x, gradflow.tensor(numpy.array([-100, -100, -100])))
    value.backward()
    assert math.isnan(value.item())
    assert numpy.array_equal(x.grad.numpy(), numpy.zeros((3, 4)))
    # one valid row: the usual mean over the valid rows, the ignored rows' gradients zero
    x.grad = None
    loss(x, gradflow.tensor(numpy.array([-100, 2, -100]))).backward()
    assert numpy.array_equal(x.grad.numpy()[[0, 2]], numpy.zeros((2, 4))) and numpy.abs(x.grad.numpy()[1]).sum() > 0


# ---- per-class weights (weight=) against torch --------------------------------------------------------------------
def _weighted_cases():
    r = numpy.random.default_rng(7)
    cases = []
    for shape in [(6, 4), (3, 4, 2, 3), (4,), (0, 4)]:
        tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        t = r.integers(0, 4, size=tshape)
        if t.size > 2:
            t.reshape(-1)[1] = -100
            t.reshape(-1)[-1] = 3
        cases.append((shape, t))
    return cases


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("fn, smoothing", [("cross_entropy", 0.0), ("cross_entropy", 0.2), ("nll_loss", 0.0)])
def test_weighted_class_targets_match_torch(fn, smoothing, reduction, dtype):  # nll_loss has no smoothing
    torch = pytest.importorskip("torch")
    r = numpy.random.default_rng(3)
    w = r.uniform(0.2, 3.0, size=4).astype(dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    for shape, t in _weighted_cases():
        a = r.normal(size=shape).astype(dtype)
        if fn == "nll_loss" and a.size:
            a = a - numpy.log(numpy.exp(a).sum(axis=0 if a.ndim == 1 else 1, keepdims=True))
        kw = dict(reduction=reduction, weight=gradflow.Tensor(w))
        tkw = dict(reduction=reduction, weight=torch.tensor(w))
        if smoothing:
            kw["label_smoothing"] = tkw["label_smoothing"] = smoothing
        x, tx = gradflow.Tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
        got = getattr(F, fn)(x, I(t), **kw)
        want = getattr(torch.nn.functional, fn)(tx, torch.tensor(t), **tkw)
        assert got.dtype == numpy.dtype(dtype) and got.shape == tuple(want.shape), (shape, got.shape, want.shape)
        assert numpy.allclose(got.numpy(), want.detach().numpy(), equal_nan=True, **tol), shape
        g = r.normal(size=got.shape).astype(dtype)
        (got * gradflow.Tensor(g)).sum().backward()
        (want * torch.tensor(g)).sum().backward()
        assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), equal_nan=True, **tol), shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_weighted_probability_targets_match_torch(reduction, smoothing):
    torch = pytest.importorskip("torch")
    r = numpy.random.default_rng(5)
    w = r.uniform(0.2, 3.0, size=3)
    for shape in [(5, 3), (2, 3, 4), (3,)]:
        a = r.normal(size=shape)
        q = numpy.exp(r.normal(size=shape))
        q /= q.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
        x, tx = T(a, True), torch.tensor(a, requires_grad=True)
        got = F.cross_entropy(x, T(q), reduction=reduction, label_smoothing=smoothing, weight=T(w))
        want = torch.nn.functional.cross_entropy(tx, torch.tensor(q), reduction=reduction,
                                                 label_smoothing=smoothing, weight=torch.tensor(w))
        assert numpy.allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
        got.sum().backward()
        want.sum().backward()
        assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("targets", [[-100, -100, -100], [0, 1, 2]])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_weighted_mean_with_no_weight_is_nan_as_in_torch(targets, smoothing):
    """All rows ignored: NaN loss, zero gradient; counted rows whose weights sum to 0: NaN gradient too."""
    torch = pytest.importorskip("torch")
    a = numpy.random.default_rng(1).normal(size=(3, 4))
    w = numpy.array([0.0, 0.0, 0.0, 1.0])
    x, tx = T(a, True), torch.tensor(a, requires_grad=True)
    got = F.cross_entropy(x, I(targets), weight=T(w), label_smoothing=smoothing)
    want = torch.nn.functional.cross_entropy(tx, torch.tensor(targets), weight=torch.tensor(w),
                                             label_smoothing=smoothing)
    assert numpy.isnan(got.item()) and numpy.isnan(want.item())
    got.backward()
    want.backward()
    assert numpy.array_equal(x.grad.numpy(), tx.grad.numpy(), equal_nan=True)


def test_weighted_loss_modules_match_torch():
    torch = pytest.importorskip("torch")
    a = numpy.random.default_rng(2).normal(size=(6, 4)).astype(numpy.float32)
    t = numpy.array([0, 3, 2, -100, 1, 3])
    w = numpy.array([1.0, 2.0, 0.5, 3.0], dtype=numpy.float32)
    for ours, theirs, inp in [
        (nn.CrossEntropyLoss(weight=gradflow.Tensor(w), label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1), a),
        (nn.NLLLoss(weight=gradflow.Tensor(w), reduction="sum"),
         torch.nn.NLLLoss(weight=torch.tensor(w), reduction="sum"), a),
    ]:
        x, tx = gradflow.Tensor(inp, requires_grad=True), torch.tensor(inp, requires_grad=True)
        got, want = ours(x, I(t)), theirs(tx, torch.tensor(t))
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        got.backward()
        want.backward()
        assert numpy.allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-6)
        assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}


def test_weighted_loss_errors_name_the_problem():
    x = T(numpy.zeros((3, 4)))
    with pytest.raises(RuntimeError, match=r"defined either for all 4 classes .* shape: \[3\]"):
        F.cross_entropy(x, I([0, 1, 2]), weight=T(numpy.ones(3)))
    with pytest.raises(RuntimeError, match=r"defined either for all 4 classes .* shape: \[2, 2\]"):
        F.nll_loss(x, I([0, 1, 2]), weight=T(numpy.ones((2, 2))))
    with pytest.raises(RuntimeError, match="dtype"):
        F.cross_entropy(x, I([0, 1, 2]), weight=gradflow.Tensor(numpy.ones(4, numpy.float32)))
    with pytest.raises(IndexError, match="out of range"):
        F.cross_entropy(x, I([0, 4, 2]), weight=T(numpy.ones(4)))
    with pytest.raises(TypeError, match="weight="):
        nn.CrossEntropyLoss(T(numpy.ones(4)))
    with pytest.raises(TypeError, match="weight="):
        F.cross_entropy(x, I([0, 1, 2]), T(numpy.ones(4)))


def test_unweighted_cross_entropy_keeps_the_fused_path(monkeypatch):
    """weight=None must not leave the fused SoftmaxCrossEntropy op (the CPU fast path)."""
    from gradflow import softmax_ops
    calls = []
    orig = softmax_ops.SoftmaxCrossEntropy.forward
    monkeypatch.setattr(softmax_ops.SoftmaxCrossEntropy, "forward", lambda self, *a: calls.append(1) or orig(self, *a))
    F.cross_entropy(T(LOGITS), I(CLASSES))
    nn.CrossEntropyLoss()(T(LOGITS), I(CLASSES))
    assert len(calls) == 2


# ---- class-index losses inside gradflow.compile: what they derive from the targets is made by an op --------------
_W = [1.0, 2.0, 0.5, 1.5]
CLASS_LOSSES = {
    "nll": lambda out, y: F.nll_loss(F.log_softmax(out, dim=1), y),
    "nll-weight": lambda out, y: F.nll_loss(F.log_softmax(out, dim=1), y, weight=gradflow.tensor(_W)),
    "nll-sum-ignore": lambda out, y: F.nll_loss(F.log_softmax(out, dim=1), y, reduction="sum", ignore_index=1),
    "nll-nd": lambda out, y: F.nll_loss(F.log_softmax(out.reshape(6, 4, 2), dim=1), y),
    "ce-smoothing": lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1, ignore_index=2),
    "ce-smoothing-nd": lambda out, y: F.cross_entropy(out.reshape(6, 4, 2), y, label_smoothing=0.2, ignore_index=3),
    "ce-weight": lambda out, y: F.cross_entropy(out, y, weight=gradflow.tensor(_W), ignore_index=0),
    "ce-weight-smoothing": lambda out, y: F.cross_entropy(out, y, weight=gradflow.tensor(_W), label_smoothing=0.1),
    "ce-weight-none": lambda out, y: F.cross_entropy(out, y, weight=gradflow.tensor(_W), reduction="none"),
}


def _class_loss_run(loss_fn, compiled, batches):
    gradflow.manual_seed(0)
    model = nn.Linear(5, 8 if loss_fn in (CLASS_LOSSES["nll-nd"], CLASS_LOSSES["ce-smoothing-nd"]) else 4)
    opt = gradflow.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        (loss.sum() if loss.ndim else loss).backward()
        opt.step()
        return loss

    fn = gradflow.compile(step, strict=True) if compiled else step
    losses = [fn(x, y).data.tobytes() for x, y in batches]
    return losses, [p.data.tobytes() for p in model.parameters()], fn


@pytest.mark.parametrize("name", list(CLASS_LOSSES))
def test_class_index_losses_are_captured_and_replay_the_eager_bytes(name):
    """nll_loss, label smoothing and class weights derive one-hot rows, indices, weights and the mean's
    divisor from each batch's targets inside an op: a compiled step records them (strict: no eager
    fallback) and every replay equals eager bit for bit, with a new batch of targets each step and
    ignored rows in some."""
    rng = numpy.random.default_rng(3)
    batches = []
    for k in range(7):
        y = rng.integers(0, 4, (6, 2) if name.endswith("-nd") else 6)
        if k % 3 == 1:
            y[:2] = {"nll-sum-ignore": 1, "ce-smoothing": 2, "ce-weight": 0, "ce-smoothing-nd": 3}.get(name, y[0])
        batches.append((gradflow.tensor(rng.standard_normal((6, 5)).astype(numpy.float32)), gradflow.tensor(y)))
    want_losses, want_params, _ = _class_loss_run(CLASS_LOSSES[name], False, batches)
    got_losses, got_params, compiled = _class_loss_run(CLASS_LOSSES[name], True, batches)
    assert compiled.captured
    assert got_losses == want_losses and got_params == want_params


def test_a_replayed_class_loss_still_rejects_a_target_out_of_range():
    """The range check runs in the op's forward, so a replay makes it too: an error, not a wrong loss."""
    model = nn.Linear(5, 4)
    step = gradflow.compile(lambda x, y: F.nll_loss(F.log_softmax(model(x), dim=1), y, weight=gradflow.tensor(_W)),
                            strict=True)
    x = gradflow.tensor(numpy.ones((3, 5), numpy.float32))
    for _ in range(3):
        step(x, gradflow.tensor(numpy.array([0, 1, 3])))
    assert step.captured
    with pytest.raises(IndexError, match="target class 4 is out of range for 4 classes"):
        step(x, gradflow.tensor(numpy.array([0, 4, 3])))


def test_inside_a_graph_capture_a_target_out_of_range_makes_the_loss_nan(monkeypatch):
    """A CUDA graph cannot read the check's result on the host: the derived arrays stay in range and the
    loss comes out NaN (the mean, and the position itself for 'sum' and 'none') instead of a number
    computed from another class."""
    from gradflow import backend
    from gradflow.nn import losses
    monkeypatch.setattr(backend, "capturing", True)
    t = numpy.array([0, 7, 2])
    q, valid, divisor, nan = losses._one_hot_rows(t, "cross_entropy", 4, -100, numpy.dtype(numpy.float32), 0.1)
    assert q.shape == (3, 4) and numpy.isnan(nan)
    assert numpy.isnan(losses._gather_targets(t, "cross_entropy", 4, -100, numpy.dtype(numpy.float32))[2])
    index, wt, valid, total, nan = losses._weighted_targets(t, numpy.ones(4, numpy.float32), "nll_loss", 4, -100)
    assert numpy.isnan(wt[1]) and numpy.isnan(total) and not numpy.isnan(wt[[0, 2]]).any()  # sum and 'none' too
    assert numpy.isnan(q[1]).all() and not numpy.isnan(q[[0, 2]]).any()
    monkeypatch.setattr(backend, "capturing", False)
    assert losses._one_hot_rows(t[[0, 2]], "cross_entropy", 4, -100, numpy.dtype(numpy.float32), 0.1)[3] == 0


@pytest.mark.parametrize("kind", ["nll", "nll-weight", "ce-smoothing", "ce-weight"])
def test_a_log_zero_elsewhere_or_an_ignored_row_leaks_no_nan(kind):
    """A -inf (log 0) in a class that is not the target, and NaN or inf in a row that ignore_index skips,
    count nothing: torch picks the target's log-probability and masks ignored rows. (Summing the row
    against one-hot weights gave 0 * -inf = NaN.)"""
    import torch
    probs = numpy.array([[0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]], numpy.float32)
    x = numpy.log(probs)
    x[2] = [numpy.nan, numpy.inf, -numpy.inf, 0.0]  # row 2 is ignored
    t = numpy.array([0, 2, 3])
    kw = {"ignore_index": 3}
    if kind.endswith("weight"):
        kw["weight"] = numpy.array([1.0, 2.0, 0.5, 1.5], numpy.float32)
    if kind == "ce-smoothing":
        kw["label_smoothing"] = 0.1
        x[:2] = numpy.array([[3.0, 1.0, -2.0, 0.5], [0.2, -1.0, 2.0, 1.0]], numpy.float32)
    ours, theirs = gradflow.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    mine = {k: gradflow.tensor(v) if k == "weight" else v for k, v in kw.items()}
    torch_kw = {k: torch.tensor(v) if k == "weight" else v for k, v in kw.items()}
    if kind.startswith("nll"):
        got = F.nll_loss(ours, gradflow.tensor(t), **mine)
        want = torch.nn.functional.nll_loss(theirs, torch.tensor(t), **torch_kw)
    else:
        got = F.cross_entropy(ours, gradflow.tensor(t), **mine)
        want = torch.nn.functional.cross_entropy(theirs, torch.tensor(t), **torch_kw)
    got.backward()
    want.backward()
    assert numpy.isfinite(got.item()) and got.item() == pytest.approx(want.item(), rel=1e-6)
    numpy.testing.assert_allclose(ours.grad.numpy()[:2], theirs.grad.numpy()[:2], rtol=1e-6, atol=1e-7)
