"""Regression tests for issue 9: PyTorch code ported to gradflow must not give a silently wrong number.

Each test compares with PyTorch (the oracle, pinned in the ``test`` extra) on the CPU.
"""
import numpy
import pytest

torch = pytest.importorskip("torch")

import gradflow as gf  # noqa: E402
import gradflow.nn.functional as F  # noqa: E402
from gradflow import softmax_ops  # noqa: E402


def _both(array, requires_grad=False):
    return (gf.tensor(array, requires_grad=requires_grad, device="cpu"),
            torch.tensor(array, requires_grad=requires_grad))


# ---- cross-entropy: ignore_index inside [0, C) and extreme logits ---------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [0, 2, -100])
def test_cross_entropy_ignore_index_inside_class_range(reduction, ignore_index):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    t = numpy.array([0, 2, 2, 1, 3, 0])
    g, tx = _both(x, requires_grad=True)
    got = F.cross_entropy(g, gf.tensor(t), reduction=reduction, ignore_index=ignore_index)
    want = torch.nn.functional.cross_entropy(tx, torch.tensor(t), reduction=reduction, ignore_index=ignore_index)
    numpy.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12)
    got.sum().backward()
    want.sum().backward()
    numpy.testing.assert_allclose(g.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_backward_kernel_honours_ignore_index_in_range():
    x = numpy.random.default_rng(1).standard_normal((3, 4))
    _, m, logs = softmax_ops._xent_rows_np(x, numpy.array([1, 1, 1]), 1)
    gx = softmax_ops._xent_bwd_np(x, m[:, None], logs[:, None], numpy.array([[1], [0], [1]]),
                                 numpy.ones((3, 1)), 4, 1)
    assert (gx[0] == 0).all() and (gx[2] == 0).all() and (gx[1] != 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e6, 1e30])
def test_cross_entropy_accurate_at_large_logits(dtype, scale):
    rng = numpy.random.default_rng(3)
    x = (rng.standard_normal((8, 5)) * 3 + scale).astype(dtype)
    t = rng.integers(0, 5, 8)
    g, tx = _both(x, requires_grad=True)
    got = F.cross_entropy(g, gf.tensor(t), reduction="sum")
    want = torch.nn.functional.cross_entropy(tx, torch.tensor(t), reduction="sum")
    tol = 2e-6 if dtype == "float32" else 1e-13
    numpy.testing.assert_allclose(got.item(), want.item(), rtol=tol)
    got.backward()
    want.backward()
    err = numpy.abs(g.grad.numpy() - tx.grad.numpy()).max() / numpy.abs(tx.grad.numpy()).max()
    assert err < 4 * tol, err


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_tied_extreme_logits(dtype):
    big = 3e38 if dtype == "float32" else 1e308
    x = numpy.array([[big] * 5 + [-big], [-big, big, big, 0.0, -big, 1.0]], dtype)
    t = numpy.array([0, 3])
    g, tx = _both(x, requires_grad=True)
    got = F.cross_entropy(g, gf.tensor(t))
    want = torch.nn.functional.cross_entropy(tx, torch.tensor(t))
    numpy.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
    got.backward()
    want.backward()
    numpy.testing.assert_allclose(g.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-7)
    # the softmax implied by the gradient sums to one per row (it summed to 5 with a rounded lse)
    numpy.testing.assert_allclose((g.grad.numpy() * 2).sum(axis=1), 0, atol=1e-6)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_at_extreme_logits(fn, dtype):
    fin = numpy.finfo(dtype)
    x = numpy.array([[fin.max, fin.max, -fin.max, 0], [1e4, 1e4 + 1, -1e4, 0], [1e-45, 0, -0.0, 5e-324]], dtype)
    g, tx = _both(x, requires_grad=True)
    got = getattr(F, fn)(g, dim=1)
    want = getattr(torch.nn.functional, fn)(tx, dim=1)
    numpy.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-6, atol=1e-30)
    w = numpy.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    (got * gf.tensor(w)).sum().backward()
    (want * torch.tensor(w)).sum().backward()
    numpy.testing.assert_allclose(g.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---- max/min(dim) return (values, indices) ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_dim_return_values_and_indices(kind, dim, keepdim):
    x = numpy.array([[1.0, 5.0, 3.0], [4.0, -2.0, 6.0]])  # two rows: a values-only result unpacks silently
    g, tx = _both(x, requires_grad=True)
    values, indices = getattr(g, kind)(dim=dim, keepdim=keepdim)
    want = getattr(tx, kind)(dim=dim, keepdim=keepdim)
    assert type(getattr(g, kind)(dim)).__name__ == kind
    numpy.testing.assert_array_equal(values.detach().numpy(), want.values.detach().numpy())
    numpy.testing.assert_array_equal(indices.numpy(), want.indices.numpy())
    assert indices.dtype == numpy.int64 and not indices.requires_grad
    fn = getattr(gf, kind)(g, dim, keepdim)
    assert fn.values.shape == tuple(want.values.shape) and fn.indices.shape == tuple(want.indices.shape)
    (values * 3).sum().backward()
    (want.values * 3).sum().backward()
    numpy.testing.assert_array_equal(g.grad.numpy(), tx.grad.numpy())


def test_max_dim_gradient_goes_to_the_returned_index_at_ties():
    x = numpy.array([[2.0, 2.0, 1.0]])
    g, tx = _both(x, requires_grad=True)
    g.max(dim=1).values.sum().backward()
    tx.max(dim=1).values.sum().backward()
    numpy.testing.assert_array_equal(g.grad.numpy(), tx.grad.numpy())
    g.grad = None
    tx.grad = None
    g.max().backward()  # a full reduction splits the gradient among ties, as torch does
    tx.max().backward()
    numpy.testing.assert_array_equal(g.grad.numpy(), tx.grad.numpy())


# ---- integer mean / var are refused -----------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda m: m.tensor([1, 2]), lambda m: m.tensor([True, False]),
                                  lambda m: m.tensor([1, 2]) == m.tensor([1, 3])])
@pytest.mark.parametrize("op", ["mean", "var", "std"])
def test_integer_and_bool_mean_var_raise(make, op):
    with pytest.raises(RuntimeError):
        getattr(make(torch), op)()
    with pytest.raises(RuntimeError, match="float"):
        getattr(make(gf), op)()
    assert (gf.tensor([1, 2]) == gf.tensor([1, 3])).float().mean().item() == 0.5


# ---- out-of-range dims raise IndexError ---------------------------------------------------------------
OUT_OF_RANGE = {
    "sum": lambda m, x: x.sum(dim=2), "mean": lambda m, x: x.mean(dim=-3), "max": lambda m, x: x.max(dim=2),
    "min": lambda m, x: x.min(dim=5), "var": lambda m, x: x.var(dim=2), "std": lambda m, x: x.std(dim=2),
    "argmax": lambda m, x: x.argmax(dim=2), "argmin": lambda m, x: x.argmin(dim=-3),
    "unsqueeze": lambda m, x: x.unsqueeze(3), "unsqueeze_neg": lambda m, x: x.unsqueeze(-4),
    "flatten": lambda m, x: x.flatten(0, 2), "squeeze": lambda m, x: x.squeeze(2),
    "transpose": lambda m, x: x.transpose(0, 2), "permute": lambda m, x: x.permute(0, 2),
    "cat": lambda m, x: m.cat([x, x], dim=2), "stack": lambda m, x: m.stack([x, x], dim=4),
    "size": lambda m, x: x.size(2), "softmax": lambda m, x: (m.nn.functional.softmax(x, dim=2)),
    "log_softmax": lambda m, x: (m.nn.functional.log_softmax(x, dim=-3)),
    "sum_0d": lambda m, x: x.sum().sum(dim=1),
}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_out_of_range_dims_raise_index_error(name):
    x = numpy.ones((2, 3), numpy.float32)
    g, tx = _both(x)
    with pytest.raises(IndexError):
        OUT_OF_RANGE[name](torch, tx)
    with pytest.raises(IndexError, match=r"range|dimension"):
        OUT_OF_RANGE[name](gf, g)


# ---- type promotion ---------------------------------------------------------------------------------
PROMOTION = [
    ("int64 + float32", lambda m: m.tensor([1, 2]) + m.tensor([0.5, 1.5])),
    ("int / int", lambda m: m.tensor([1, 2]) / m.tensor([2, 4])),
    ("int / python int", lambda m: m.tensor([1, 3]) / 2),
    ("python int / int", lambda m: 3 / m.tensor([2, 4])),
    ("int + 0.5", lambda m: m.tensor(1) + 0.5),
    ("float32 * python float", lambda m: m.tensor([1.0], dtype=m.float32) * 0.1),
    ("python float - float32", lambda m: 2.5 - m.tensor([1.0], dtype=m.float32)),
    ("float32 + float64 0-d", lambda m: m.tensor([1.0], dtype=m.float32) + m.tensor(2.0, dtype=m.float64)),
    ("int64 + float64 0-d", lambda m: m.tensor([1]) + m.tensor(2.5, dtype=m.float64)),
    ("int32 + int64 0-d", lambda m: m.tensor([1], dtype=m.int32) + m.tensor(2)),
    ("int32 * python int", lambda m: m.tensor([1], dtype=m.int32) * 3),
    ("bool + bool", lambda m: m.tensor([True]) + m.tensor([True])),
    ("bool + python int", lambda m: m.tensor([True]) + 2),
    ("bool * python float", lambda m: m.tensor([True]) * 1.5),
    ("uint8 + int8", lambda m: m.tensor([1], dtype=m.uint8) + m.tensor([1], dtype=m.int8)),
    ("maximum(int32, float32)", lambda m: m.maximum(m.tensor([1, 5], dtype=m.int32), m.tensor([2.0, 3.0]))),
    ("minimum(float64, int64)", lambda m: m.minimum(m.tensor([1.5], dtype=m.float64), m.tensor([2]))),
    ("float32 < python float", lambda m: m.tensor([0.1], dtype=m.float32) < 0.1),
    ("int ** python float", lambda m: m.tensor([4]) ** 0.5),
    ("python float ** int", lambda m: 2.0 ** m.tensor([2])),
    ("float32 ** float64 tensor", lambda m: m.tensor([2.0]) ** m.tensor([2.0], dtype=m.float64)),
    ("where(cond, 1, 3)", lambda m: m.where(m.tensor([True, False]), 1, 3)),
    ("where(cond, 1.0, 3)", lambda m: m.where(m.tensor([True, False]), 1.0, 3)),
    ("where(cond, int32, 3.5)", lambda m: m.where(m.tensor([True, False]), m.tensor([1, 2], dtype=m.int32), 3.5)),
    ("where(cond, float32, 0)", lambda m: m.where(m.tensor([True, False]), m.tensor([1.0, 2.0]), 0)),
    ("cat(int64, float32)", lambda m: m.cat([m.tensor([1]), m.tensor([0.5])])),
    ("stack(int32, float64)", lambda m: m.stack([m.tensor([1], dtype=m.int32), m.tensor([0.5], dtype=m.float64)])),
    ("mse_loss(float32, int64 target)", lambda m: m.nn.functional.mse_loss(m.tensor([1.0, 2.0]), m.tensor([1, 3]))),
    ("l1_loss(float32, int64 target)", lambda m: m.nn.functional.l1_loss(m.tensor([1.0, 2.0]), m.tensor([1, 3]))),
]


@pytest.mark.parametrize("name,fn", PROMOTION, ids=[p[0] for p in PROMOTION])
def test_type_promotion_matches_torch(name, fn):
    got, want = fn(gf), fn(torch)
    assert str(got.dtype) == str(want.dtype).replace("torch.", ""), name
    numpy.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_result_type_matches_torch():
    samples = {"b": [True], "i32": numpy.array([1], numpy.int32), "i64": [1], "f32": [1.0],
               "f64": numpy.array([1.0]), "u8": numpy.array([1], numpy.uint8), "0d-f64": numpy.float64(1.0),
               "0d-i64": numpy.int64(3)}
    scalars = [True, 2, 2.5]
    tensors = {}
    for k, v in samples.items():
        a = numpy.array(v, dtype=numpy.int64 if k == "i64" else numpy.float32 if k == "f32" else None)
        tensors[k] = (gf.tensor(a), torch.tensor(a))
    operands = list(tensors.values()) + [(s, s) for s in scalars]
    for ga, ta in operands:
        for gb, tb in operands:
            if not (isinstance(ga, gf.Tensor) or isinstance(gb, gf.Tensor)):
                continue
            assert str(gf.result_type(ga, gb)) == str(torch.result_type(ta, tb)).replace("torch.", "")


# ---- pow gradients at zero ----------------------------------------------------------------------------------
POW_CASES = {
    "x**0": lambda x, y: x ** 0, "x**0.0": lambda x, y: x ** 0.0, "x**1": lambda x, y: x ** 1,
    "x**2.5": lambda x, y: x ** 2.5, "0**y": lambda x, y: 0.0 ** y, "x**y": lambda x, y: x ** y,
    "y**x": lambda x, y: y ** x, "2**y": lambda x, y: 2.0 ** y,
}


@pytest.mark.parametrize("name", sorted(POW_CASES))
def test_pow_gradients_at_zero(name):
    x = numpy.array([0.0, 0.0, 2.0, 0.0, 1.5])
    y = numpy.array([0.0, 2.0, 0.0, -1.0, 0.5])
    gx, tx = _both(x, requires_grad=True)
    gy, ty = _both(y, requires_grad=True)
    got = POW_CASES[name](gx, gy)
    want = POW_CASES[name](tx, ty)
    numpy.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
    got.sum().backward()
    want.sum().backward()
    for g, t in ((gx, tx), (gy, ty)):
        if t.grad is None:
            assert g.grad is None
        else:
            numpy.testing.assert_allclose(g.grad.numpy(), t.grad.numpy(), rtol=1e-12, equal_nan=True)


# ---- squeeze, 0-d reductions, grad() tuple ---------------------------------------------------------------
def test_squeeze_on_a_dim_that_is_not_one_is_a_no_op():
    for m in (gf, torch):
        x = m.zeros(2, 1, 3)
        assert tuple(x.squeeze(0).shape) == (2, 1, 3)
        assert tuple(x.squeeze(1).shape) == (2, 3)
        assert tuple(x.squeeze((0, 1)).shape) == (2, 3)
        assert tuple(x.squeeze(dim=-1).shape) == (2, 1, 3)
        assert tuple(m.squeeze(x, 1).shape) == (2, 3)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "argmax", "argmin", "var"])
@pytest.mark.parametrize("dim", [0, -1])
def test_reductions_over_dim_of_a_0d_tensor(op, dim):
    g, t = _both(numpy.array(3.0))
    got, want = getattr(g, op)(dim=dim), getattr(t, op)(dim=dim)
    if op in ("max", "min"):
        got, want = got.values, want.values
    assert got.shape == tuple(want.shape)
    numpy.testing.assert_array_equal(got.numpy(), want.numpy())


def test_grad_of_a_single_input_is_a_tuple():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    result = gf.grad((x * x).sum(), x)
    assert isinstance(result, tuple) and len(result) == 1
    g, = result
    numpy.testing.assert_array_equal(g.numpy(), [2.0, 4.0])


@pytest.mark.parametrize("op", [lambda m, a, b: a // b, lambda m, a, b: a % b, lambda m, a, b: m.floor_divide(a, b),
                                lambda m, a, b: m.remainder(a, b), lambda m, a, b: m.div(a, b, rounding_mode="trunc")])
def test_integer_division_by_zero_raises(op):
    a, b = numpy.array([7, -7, 3]), numpy.array([2, 0, 1])
    with pytest.raises(RuntimeError):
        op(torch, torch.tensor(a), torch.tensor(b))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        op(gf, gf.tensor(a), gf.tensor(b))  # NumPy would give 0: a wrong number without an error
    ok = numpy.array([2, 5, 1])
    numpy.testing.assert_array_equal(op(gf, gf.tensor(a), gf.tensor(ok)).numpy(),
                                     op(torch, torch.tensor(a), torch.tensor(ok)).numpy())


VIEWS = {
    "slice": lambda y: y[:, 1:],
    "int": lambda y: y[1],
    "T": lambda y: y.T,
    "transpose": lambda y: y.transpose(0, 1),
    "permute": lambda y: y.permute(1, 0),
    "reshape": lambda y: y.reshape(3, 2),
    "view": lambda y: y.view(-1),
    "unsqueeze": lambda y: y.unsqueeze(0),
    "flatten": lambda y: y.flatten(),
    "slice of slice": lambda y: y[:, 1:][1:],
    "step": lambda y: y[:, ::2],
}
IN_PLACE = {
    "fill_": lambda v, w: v.fill_(0.5),
    "zero_": lambda v, w: v.zero_(),
    "mul_": lambda v, w: v.mul_(3.0),
    "mul_ tensor": lambda v, w: v.mul_(w.sum()),
    "add_ tensor": lambda v, w: v.add_(w.sum()),
    "clamp_": lambda v, w: v.clamp_(min=2.5),
    "setitem": lambda v, w: v.__setitem__(0, w.sum()),
}


@pytest.mark.parametrize("update", IN_PLACE)
@pytest.mark.parametrize("view", VIEWS)
def test_in_place_through_a_view_reaches_the_base_s_gradient(view, update):
    """An in-place op through a view of a non-leaf changes the tensor it views: that tensor's
    gradient must change with it, as torch's (it silently kept its old history)."""
    grads = []
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
        w = m.tensor(numpy.array([0.5, 2.0]), requires_grad=True)
        y = x * 1.0
        IN_PLACE[update](VIEWS[view](y), w)
        (y * m.tensor(numpy.arange(6.0).reshape(2, 3))).sum().backward()
        grads.append((y.detach().numpy().copy(), x.grad.numpy().copy(), w.grad.numpy().copy() if w.grad is not None
                      else numpy.zeros(2)))
    for ours, theirs in zip(*grads):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_augmented_assignment_through_an_index_and_a_read_before_an_in_place_op():
    """``y[:, 0] += w`` (a view updated in place, then written back); and an op that read x before
    x.mul_(2) keeps the gradient of the value it read (it went through the in-place node)."""
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
        w = m.tensor(numpy.array(2.0), requires_grad=True)
        y = x * 1.0
        y[:, 0] += w * 2.0
        s = y + 0.0               # reads y before the next in-place op
        y.mul_(2.0)
        (s.sum() + (y * y).sum()).backward()
        results.append((x.grad.numpy().copy(), w.grad.numpy().copy()))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_in_place_through_a_view_of_a_leaf_that_requires_grad_raises():
    x = gf.tensor(numpy.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="view of a leaf tensor that requires grad"):
        x[0].add_(1.0)
    with gf.no_grad():
        x[0].add_(1.0)            # what optimizers and initialisers do
    assert x.numpy()[0] == 2.0
    z = gf.tensor(numpy.ones(1), requires_grad=True) * 1.0
    with pytest.raises(RuntimeError, match="cannot map back"):
        z.expand(3).add_(1.0)  # three elements of the view are one of z's (torch refuses too)


MIXED_INDEX = {
    "int slice list": lambda t, m: (0, slice(None), t([1, 2])),
    "int slice tensor": lambda t, m: (1, slice(None), t([3, 0, 3])),
    "list int list": lambda t, m: (t([0, 1]), 0, t([1, 2])),
    "list slice int": lambda t, m: (t([1, 0]), slice(0, 2), -1),
    "int ellipsis list": lambda t, m: (0, Ellipsis, t([2, 1])),
    "0-d tensor slice list": lambda t, m: (m.tensor(1), slice(None), t([0, 3])),
    "int none slice list": lambda t, m: (1, None, slice(1, 3), t([0, 2])),
    "int bool mask": lambda t, m: (0, m.tensor(numpy.array([[True, False, True, False]] * 3))),
}


@pytest.mark.parametrize("name", MIXED_INDEX)
def test_ints_mixed_with_index_arrays_index_as_torch(name):
    """torch applies the ints of an index that also has index arrays first (basic indexing):
    ``x[0, :, [1, 2]]`` of a (2, 3, 4) tensor is (3, 2), where NumPy's rule gives (2, 3) --
    reading, writing and the gradient."""
    out = []
    for m in (gf, torch):
        index = MIXED_INDEX[name](lambda v: m.tensor(numpy.array(v)), m)
        x = m.tensor(numpy.arange(24.0).reshape(2, 3, 4), requires_grad=True)
        got = x[index]
        y = x * 1.0
        y[index] = got * 10.0
        (y * m.tensor(numpy.arange(24.0).reshape(2, 3, 4))).sum().backward()
        plain = m.tensor(numpy.zeros((2, 3, 4)))
        plain[index] = 5.0
        out.append((got.detach().numpy(), y.detach().numpy(), x.grad.numpy(), plain.numpy()))
    for ours, theirs in zip(*out):
        assert ours.shape == theirs.shape
        numpy.testing.assert_array_equal(ours, theirs)


CONSTANT_ROWS = numpy.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])   # row 0 and column 0 constant


@pytest.mark.parametrize("a, kwargs", [(CONSTANT_ROWS, dict(dim=1)), (CONSTANT_ROWS, dict(dim=0, keepdim=True)),
                                       (numpy.ones((2, 3)), dict()), (CONSTANT_ROWS, dict(dim=1, correction=0))])
def test_std_of_a_constant_row_has_a_zero_gradient_as_torch(a, kwargs):
    """d std / dx where the variance is 0: torch gives 0; 1 / (2 sqrt 0) times var's zero gradient was NaN."""
    grads = []
    for m in (gf, torch):
        x = m.tensor(a, requires_grad=True)
        (x.std(**kwargs) * m.tensor(2.0)).sum().backward()
        grads.append(x.grad.numpy())
    numpy.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)
    assert not numpy.isnan(grads[0]).any()


@pytest.mark.parametrize("op, dtype", [(op, dtype) for op in ("exp", "log", "sqrt", "clamp float bounds", "clamp int bounds")
                                       for dtype in ("int64", "int32", "bool")
                                       if not (dtype == "bool" and op.startswith("clamp"))])  # torch: no bool clamp
def test_int_and_bool_inputs_of_float_ops_give_torchs_dtype(op, dtype):
    """int.sqrt() is float32 in torch (the default float); it was float64 here (NumPy's promotion)."""
    a = numpy.array([0, 1, 4, 9]).astype(dtype)
    fn = {"exp": lambda x: x.exp(), "log": lambda x: x.log(), "sqrt": lambda x: x.sqrt(),
          "clamp float bounds": lambda x: x.clamp(0.5, 2.5), "clamp int bounds": lambda x: x.clamp(1, 3)}[op]
    ours, theirs = fn(gf.tensor(a)), fn(torch.tensor(a))
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "")
    numpy.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_hardswish_gradient_at_its_kinks_is_torchs():
    """torch 2 puts x = -3 and x = 3 in the flat parts: gradients 0 and 1 (it was -0.5 and 1.5)."""
    grads = []
    for m in (gf, torch):
        x = m.tensor(numpy.array([-3.0, -2.5, 3.0, 2.5, 4.0, -4.0]), requires_grad=True)
        m.nn.functional.hardswish(x).sum().backward()
        grads.append(x.grad.numpy())
    numpy.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


@pytest.mark.parametrize("op", [lambda m, x, i: x.gather(1, i), lambda m, x, i: x.scatter_add(1, i, m.ones_like(x[:, :1])),
                                lambda m, x, i: x.scatter(1, i, m.ones_like(x[:, :1]))],
                         ids=["gather", "scatter_add", "scatter"])
def test_a_negative_index_in_gather_or_scatter_raises_as_torch(op):
    """torch refuses index -1 there; NumPy's indexing would wrap it to the last element, silently."""
    for m in (torch, gf):
        x = m.tensor(numpy.arange(6.0).reshape(2, 3))
        with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
            op(m, x, m.tensor(numpy.array([[-1], [0]])))


CLAMP_BOUNDS = {
    "both": (numpy.array([0.0, 0.0, 0.0, 1.0, -1.0]), numpy.array([1.0, 1.0, 3.0, 0.5, 2.0])),   # lo > hi once
    "min only": (numpy.array([0.0, 1.0, 0.0, 1.0, 3.0]), None),                                    # a tie at 1
    "max only": (None, numpy.array([1.0, 0.5, 2.0, 1.0, -3.0])),
    "broadcast min": (numpy.array(0.25), numpy.array([1.0, 1.0, 1.0, 1.0, 1.0])),
}


@pytest.mark.parametrize("name", CLAMP_BOUNDS)
def test_clamp_with_tensor_bounds_is_differentiable_in_the_bounds_as_torch(name):
    """Tensor min/max were taken as constants: no gradient reached them (and with x requiring
    grad, backward failed with a device error)."""
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.array([-2.0, 0.5, 2.0, 1.0, 0.0]), requires_grad=True)
        lo, hi = (m.tensor(b, requires_grad=True) if isinstance(b, numpy.ndarray) else b for b in CLAMP_BOUNDS[name])
        y = x.clamp(lo, hi)
        (y * m.tensor(numpy.arange(1.0, 6.0))).sum().backward()
        results.append([y.detach().numpy()] + [t.grad.numpy() for t in (x, lo, hi) if isinstance(t, m.Tensor)])
    for ours, theirs in zip(*results):
        numpy.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("case", ["uint8 sum", "float16 mean", "float16 sum", "float16 mean dim"])
def test_sum_and_mean_of_narrow_dtypes_as_torch(case):
    """uint8 sums are int64 in torch (NumPy: uint64); float16 accumulates in float32 (NumPy's
    float16 accumulation made the mean of [60000, 60000] inf)."""
    a = {"uint8 sum": numpy.array([200, 200, 7], numpy.uint8)}.get(case, numpy.array([[60000.0, 60000.0],
                                                                                         [1.5, 2.25]], numpy.float16))
    fn = {"uint8 sum": lambda x: x.sum(), "float16 mean": lambda x: x.mean(), "float16 sum": lambda x: x.sum(),
          "float16 mean dim": lambda x: x.mean(dim=1)}[case]
    ours, theirs = fn(gf.tensor(a)), fn(torch.tensor(a))
    assert str(ours.dtype) == str(theirs.dtype).replace("torch.", "")
    numpy.testing.assert_array_equal(ours.numpy(), theirs.numpy())


NORM_INPUTS = {
    "zero vector": numpy.zeros(4),
    "some zero rows": numpy.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.0, 3.0, 0.0], [-1.0, -1.0, 1.0]]),
    "no zeros": numpy.array([[0.3, -1.2, 2.0], [1.1, 0.7, -0.4]]),
}
NORM_PS = [1, 3, 0.5, 1.5, -1, -0.5, 4, float("inf"), float("-inf"), 0, 2, "fro", None]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("p", NORM_PS, ids=str)
@pytest.mark.parametrize("name, dim", [(name, dim) for name in NORM_INPUTS for dim in (None, -1, (0, 1))
                                       if not (dim == (0, 1) and NORM_INPUTS[name].ndim == 1)])
def test_norm_gradient_at_zero_rows_and_elements_is_torchs(name, dim, p, keepdim):
    """norm(p) for p != 2 went through abs, pow and sum: where the norm or an element is 0 the chain
    rule meets 0 * inf and gave NaN (torch: 0); p=0 had no gradient node at all (torch: one that
    gives none, so x.grad stays None)."""
    results = []
    for m in (gf, torch):
        x = m.tensor(NORM_INPUTS[name], requires_grad=True)
        y = m.norm(x, p, dim, keepdim) if p is None else x.norm(p, dim=dim, keepdim=keepdim)
        w = m.tensor(numpy.linspace(0.5, 1.5, y.numel()).reshape(tuple(y.shape)))
        (y * w).sum().backward()
        results.append((tuple(y.shape), y.detach().numpy(), x.grad if x.grad is None else x.grad.numpy()))
    (shape, value, grad), (want_shape, want_value, want_grad) = results
    assert shape == want_shape
    numpy.testing.assert_allclose(value, want_value, rtol=1e-12)
    if want_grad is None:
        assert grad is None
    else:
        assert not numpy.isnan(grad).any()
        numpy.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [1, 2, 3, 0.5, float("inf")], ids=str)
def test_normalize_of_a_zero_row_has_torchs_gradient(p):
    """F.normalize divides by clamp(norm, eps): a zero row's gradient went through norm's NaN."""
    results = []
    for m, functional in ((gf, F), (torch, torch.nn.functional)):
        x = m.tensor(numpy.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], numpy.float32), requires_grad=True)
        out = functional.normalize(x, p=p, dim=1)
        (out * m.tensor(numpy.arange(6.0, dtype=numpy.float32).reshape(2, 3))).sum().backward()
        results.append((out.detach().numpy(), x.grad.numpy()))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("p", [2, 3, 0.5, 1.5, -1, 4], ids=str)
def test_norm_double_backward_is_torchs(p):
    a = numpy.array([[0.3, -1.2, 2.0, 0.5], [1.1, 0.7, -0.4, -2.5]])
    results = []
    for m in (gf, torch):
        x = m.tensor(a, requires_grad=True)
        y = x.norm(p, dim=1)
        g, = (gf.grad if m is gf else torch.autograd.grad)((y * m.tensor([0.5, 2.0])).sum(), x, create_graph=True)
        (g * m.tensor(numpy.arange(8.0).reshape(2, 4))).sum().backward()
        results.append(x.grad.numpy())
    numpy.testing.assert_allclose(results[0], results[1], rtol=1e-10)


@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_zero_grad_keeping_the_tensors_of_a_0d_parameter_as_torch(owner):
    """A 0-d parameter's gradient was NumPy's read-only scalar (what an op on 0-d arrays gives), so
    ``zero_grad(set_to_none=False)`` raised TypeError; torch zeroes it in place (aliases see it)."""
    results = []
    for m in (gf, torch):
        model = m.nn.Linear(2, 1)
        with m.no_grad():
            model.weight.copy_(m.tensor([[0.5, -0.25]]))
            model.bias.fill_(0.125)
        model.scale = m.nn.Parameter(m.tensor(1.5))
        opt = m.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        seen = []
        for step in range(3):
            (model(m.tensor([[1.0, -2.0]])) * model.scale * model.scale).sum().backward()
            alias = model.scale.grad
            seen.append(alias.numpy().copy())
            opt.step()
            (opt if owner == "optimizer" else model).zero_grad(set_to_none=False)
            seen += [model.scale.grad.numpy().copy(), alias.numpy().copy(), model.weight.grad.numpy().copy()]
        seen.append(model.scale.detach().numpy().copy())
        results.append(seen)
    for ours, theirs in zip(*results):
        assert ours.shape == theirs.shape
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-6)


OVERWRITES = {
    "zero_": lambda y, w, m: y.zero_(),
    "fill_": lambda y, w, m: y.fill_(2.0),
    "fill_ tensor": lambda y, w, m: y.fill_(w),
    "copy_": lambda y, w, m: y.copy_(m.tensor(numpy.array([5.0, 6.0, 7.0]))),
    "copy_ broadcast tensor": lambda y, w, m: y.copy_(w * 2.0),
    "view zero_": lambda y, w, m: y[1:].zero_(),
    "view copy_ tensor": lambda y, w, m: y[:, :2].copy_(w * 3.0),
    "setitem tensor": lambda y, w, m: y.__setitem__((0, 1), w),
}


@pytest.mark.parametrize("name", OVERWRITES)
def test_overwriting_a_recorded_tensor_that_holds_inf_or_nan_as_torch(name):
    """zero_/fill_/copy_ of a tensor with history computed new + old * 0 (to give the old value a
    zero gradient): NaN where the old value was inf or NaN. fill_(tensor) cut the old history
    (x.grad None where torch's is zeros)."""
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.array([[numpy.inf, 1.0, numpy.nan], [-numpy.inf, 2.0, 3.0]]), requires_grad=True)
        w = m.tensor(numpy.array(0.5), requires_grad=True)
        y = x * 1.0
        OVERWRITES[name](y, w, m)
        (y * m.tensor(numpy.arange(1.0, 7.0).reshape(2, 3))).sum().backward()
        results.append((y.detach().numpy(), x.grad.numpy(), w.grad if w.grad is None else w.grad.numpy()))
    for ours, theirs in zip(*results):
        if theirs is None:
            assert ours is None
        else:
            numpy.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("fill", ["normal_", "uniform_"])
def test_random_fill_of_a_recorded_tensor_that_holds_inf_is_finite(fill):
    x = gf.tensor(numpy.array([numpy.inf, numpy.nan, 1.0]), requires_grad=True)
    y = x * 1.0
    getattr(y, fill)()
    y.sum().backward()
    assert numpy.isfinite(y.detach().numpy()).all()
    numpy.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])


# ---- views taken before an in-place op elsewhere on their base -------------------------------------------
TAKEN_BEFORE = {
    "row": lambda t: t[0], "column": lambda t: t[:, 1], "rows": lambda t: t[1:], "block": lambda t: t[1:, 1:3],
    "step": lambda t: t[:, ::2], "T": lambda t: t.T, "transpose": lambda t: t.transpose(0, 1),
    "reshape": lambda t: t.reshape(4, 3), "view": lambda t: t.view(-1), "unsqueeze": lambda t: t.unsqueeze(0),
    "row of slice": lambda t: t[0][1:], "row of T": lambda t: t.T[1], "slice of view": lambda t: t.view(-1)[2:7],
    "expand": lambda t: t[0:1].expand(2, 4), "the base": lambda t: t,
}
WRITTEN_THROUGH = {
    "row": lambda t: t[0], "column": lambda t: t[:, 1], "block": lambda t: t[1:, 1:3], "row of T": lambda t: t.T[2],
    "slice of view": lambda t: t.view(-1)[5:9], "slice of row": lambda t: t[0][1:],
    "row of reshape": lambda t: t.reshape(4, 3)[1], "the base": lambda t: t,
}
WRITES = {
    "mul_": lambda v, w: v.mul_(2.0), "mul_ tensor": lambda v, w: v.mul_(w), "add_ tensor": lambda v, w: v.add_(w * 1.5),
    "fill_": lambda v, w: v.fill_(0.5), "fill_ tensor": lambda v, w: v.fill_(w), "zero_": lambda v, w: v.zero_(),
    "copy_ tensor": lambda v, w: v.copy_(w * v.detach().clone() + 1.0), "setitem tensor": lambda v, w: v.__setitem__(0, w * 3.0),
    "clamp_": lambda v, w: v.clamp_(min=5.0), "+= tensor": lambda v, w: v.__iadd__(w),
}


@pytest.mark.parametrize("written", WRITTEN_THROUGH)
@pytest.mark.parametrize("taken", TAKEN_BEFORE)
def test_a_view_taken_before_an_in_place_op_on_its_base_or_a_sibling_as_torch(taken, written):
    """A view of y taken before y (or another view of y: a sibling, an enclosing or a nested one) was
    updated in place kept its old history: its value was new (shared memory), its gradient old. In
    torch each view re-derives its grad_fn from its base once the base's version changed."""
    for write in WRITES:
        results = []
        for m in (gf, torch):
            x = m.tensor(numpy.arange(1.0, 13.0).reshape(3, 4), requires_grad=True)
            w = m.tensor(numpy.array(0.75), requires_grad=True)
            y = x * 1.0
            v = TAKEN_BEFORE[taken](y)
            WRITES[write](WRITTEN_THROUGH[written](y), w)
            weight = m.tensor(numpy.linspace(0.5, 2.0, v.numel()).reshape(tuple(v.shape)))
            ((v * weight).sum() + (y * y).sum() * 0.1).backward()
            results.append((v.detach().numpy().copy(), y.detach().numpy().copy(), x.grad.numpy().copy(),
                            numpy.zeros(()) if w.grad is None else w.grad.numpy().copy()))
        for what, ours, theirs in zip(("v", "y", "x.grad", "w.grad"), *results):
            numpy.testing.assert_allclose(ours, theirs, rtol=1e-12, err_msg=f"{write}: {what}")


def _grad_fn(m):
    return gf.grad if m is gf else torch.autograd.grad


STALE_VIEW_CASES = {
    # the audit's two cases: a view between the base and the view written through; a sibling view
    "view of the written view's parent": lambda m, x, w: (lambda y: (lambda v: (v[1:].mul_(2), v.sum()))(y[0]))(x * 1.0),
    "overlapping sibling": lambda m, x, w: (lambda y: (lambda v1, v2: (v2.mul_(3.0), (v1 * m.tensor([1.0, 2.0, 3.0, 4.0])).sum()))(
        y[0], y[:, 1]))(x * 1.0),
    "several writes through several views": lambda m, x, w: _several_writes(m, x, w),
    "an op read the view before the write": lambda m, x, w: (lambda y: (lambda v: (lambda a: (y[:, 0].mul_(w), (a * 2 + v * 3).sum()))(
        v + 1.0))(y[0]))(x * 1.0),
    "a plain base that comes to require grad": lambda m, x, w: (lambda y: (lambda v: (y[1:].add_(w), (v * v).sum() + x.sum()))(y[1]))(
        m.zeros((3, 4))),
    "a write in no_grad, then the sibling": lambda m, x, w: (lambda y: (lambda v, u: (_no_grad_mul(m, u), (v * v).sum()))(
        y[0], y[:, 1]))(x * 1.0),
    "in place on the stale view itself": lambda m, x, w: (lambda y: (lambda v: (y.mul_(w), v.add_(1.0), (v * v).sum() + y.sum()))(
        y[0]))(x * 1.0),
    "setitem on the base": lambda m, x, w: (lambda y: (lambda v: (y.__setitem__(1, w * 4), (v * v).sum()))(y[:, 2]))(x * 1.0),
}


def _several_writes(m, x, w):
    y = x * 1.0
    v1, v2, v3, t = y[0], y[:, 1], y[1:, 2:], y.T
    v2.mul_(w)
    v3.add_(w)
    v1.mul_(2.0)
    t[3].fill_(w)
    return (v1 * 1.5).sum() + (v2 ** 2).sum() + (v3 * 3).sum() + (t * t).sum() + (y * 0.1).sum()


def _no_grad_mul(m, u):
    with m.no_grad():
        u.mul_(10.0)


@pytest.mark.parametrize("name", STALE_VIEW_CASES)
def test_views_that_went_stale_have_torchs_values_and_gradients(name):
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 13.0).reshape(3, 4), requires_grad=True)
        w = m.tensor(numpy.array(0.75), requires_grad=True)
        out = STALE_VIEW_CASES[name](m, x, w)
        loss = out[-1] if isinstance(out, tuple) else out
        loss.backward()
        results.append((loss.detach().numpy(), x.grad.numpy() if x.grad is not None else numpy.zeros((3, 4)),
                        w.grad.numpy() if w.grad is not None else numpy.zeros(())))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_a_stale_view_as_root_target_retained_and_double_backward_as_torch():
    """backward() on a stale view, autograd.grad with respect to one, retain_grad on one, and the
    second derivative through a re-derived view."""
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 13.0).reshape(3, 4), requires_grad=True)
        w = m.tensor(numpy.array(0.75), requires_grad=True)
        y = x * 1.0
        v, r = y[0], y[2]
        r.retain_grad()
        y[:, 1].mul_(w)
        v.backward(m.tensor([1.0, 2.0, 3.0, 4.0]), retain_graph=True)
        first = x.grad.numpy().copy()
        (r * r).sum().backward()
        y2 = x * 1.0
        u = y2[1]
        y2.mul_(2.0)
        unused, = _grad_fn(m)((u * 3).sum() + y2.sum(), [u])
        z = x * 1.0
        s = z[0]
        z[:, 2].mul_(w)
        g, = _grad_fn(m)((s ** 3).sum(), [x], create_graph=True)
        x.grad = None
        (g * g).sum().backward()
        results.append((first, r.grad.numpy(), unused.numpy(), x.grad.numpy(), w.grad.numpy(), v.grad_fn is not None))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_a_view_made_with_grad_off_refuses_to_differentiate_once_its_base_changed():
    """As torch: its history cannot be re-derived (there is none), so using it with grad on raises."""
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 5.0), requires_grad=True)
        y = x * 1.0
        with m.no_grad():
            v = y[1:]
        y.mul_(2.0)
        with pytest.raises(RuntimeError, match="no_grad mode"):
            (v * 2).sum()
        with m.no_grad():
            numpy.testing.assert_array_equal((v * 2).numpy(), [8.0, 12.0, 16.0])  # inside no_grad: fine


def test_a_view_of_a_parameter_keeps_its_gradient_across_an_optimizer_step():
    """A view of a leaf taken before a no_grad update of the leaf (an optimizer step) is re-derived
    from it: still the leaf's gradient. (torch 2.13 drops it here, p.grad stays None: gradflow keeps
    the pre-step behaviour rather than that.)"""
    p = gf.tensor(numpy.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    v = p[1]
    with gf.no_grad():
        p.sub_(0.5)
    (v * v).sum().backward()
    numpy.testing.assert_array_equal(v.numpy(), [3.5, 4.5, 5.5])
    numpy.testing.assert_array_equal(p.grad.numpy(), [[0.0, 0.0, 0.0], [7.0, 9.0, 11.0]])


# ---- tensor hooks and retain_grad across in-place ops ------------------------------------------------
def _hook(calls, name, k):
    def hook(g):
        calls.append(name)
        return g * k
    return hook


def _stale_view_grad_fn(m, v):
    if m is torch:
        v.grad_fn  # torch 2.13 segfaults registering a hook on a stale view before its grad_fn is regenerated


HOOK_CASES = {  # (m, x, H) -> loss, or (loss, {name: tensor whose .grad is compared}); H(name, k) makes a hook
    "hook before an in-place op": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)), y.mul_(2), y.sum())[-1])(x * 1),
    "hook after an in-place op": lambda m, x, H: (lambda y: (y.mul_(2), y.register_hook(H("a", 10)), y.sum())[-1])(x * 1),
    "hooks before and after": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)), y.mul_(2), y.register_hook(H("b", 3)),
                                                          y.sum())[-1])(x * 1),
    "several in-place ops": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)), y.mul_(2), y.register_hook(H("b", 3)),
                                                        y.add_(1), y.register_hook(H("c", 5)), y.mul_(3),
                                                        (y * 2).sum())[-1])(x * 1),
    "two hooks, two in-place ops": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)), y.register_hook(H("b", 3)),
                                                               y.mul_(2), y.mul_(3), y.sum())[-1])(x * 1),
    "old value used before the in-place op": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)), (lambda z: (
        y.mul_(2), y.sum() + z))(y.sum() * 5))[-1][-1])(x * 1),
    "handle removed after the in-place op": lambda m, x, H: (lambda y: (y.register_hook(H("a", 10)).remove(), y.mul_(2),
                                                                        y.sum())[-1])(x * 1),
    "leaf hook, in place under no_grad": lambda m, x, H: (x.register_hook(H("a", 10)), _no_grad_mul(m, x), (x * 3).sum())[-1],
    "leaf hook after in place under no_grad": lambda m, x, H: (_no_grad_mul(m, x), x.register_hook(H("a", 10)),
                                                               (x * 3).sum())[-1],
    "leaf hook, in place through its view under no_grad": lambda m, x, H: (x.register_hook(H("a", 10)), _no_grad_mul(m, x[1:]),
                                                                          (x * 3).sum())[-1],
    "retain_grad before": lambda m, x, H: (lambda y: (y.retain_grad(), y.mul_(2), ((y * 3).sum(), {"y": y}))[-1])(x * 1),
    "retain_grad after": lambda m, x, H: (lambda y: (y.mul_(2), y.retain_grad(), ((y * 3).sum(), {"y": y}))[-1])(x * 1),
    "retain_grad across two in-place ops": lambda m, x, H: (lambda y: (y.retain_grad(), y.mul_(2), y.add_(1),
                                                                       ((y * 3).sum(), {"y": y}))[-1])(x * 1),
    "retain_grad and hooks": lambda m, x, H: (lambda y: (y.retain_grad(), y.register_hook(H("a", 10)), y.mul_(2),
                                                         y.register_hook(H("b", 7)), ((y * 3).sum(), {"y": y}))[-1])(x * 1),
    "view hook, base changed": lambda m, x, H: (lambda b: (lambda v: (v.register_hook(H("a", 10)), b.mul_(2),
                                                                      v.sum())[-1])(b[1:]))(x * 1),
    "view hook, base changed, old view used": lambda m, x, H: (lambda b: (lambda v: (v.register_hook(H("a", 10)), (lambda z: (
        b.mul_(2), z + v.sum()))(v.sum() * 5))[-1][-1])(b[1:]))(x * 1),
    "view hook, view changed, base used": lambda m, x, H: (lambda b: (lambda v: (v.register_hook(H("a", 10)), v.mul_(2),
                                                                                 b.sum())[-1])(b[1:]))(x * 1),
    "view hook, view changed, view used": lambda m, x, H: (lambda b: (lambda v: (v.register_hook(H("a", 10)), v.mul_(2),
                                                                                 v.sum())[-1])(b[1:]))(x * 1),
    "view hook after its base changed": lambda m, x, H: (lambda b: (lambda v: (b.mul_(2), _stale_view_grad_fn(m, v),
                                                                               v.register_hook(H("a", 10)), v.sum())[-1])(b[1:]))(x * 1),
    "view hook, sibling changed": lambda m, x, H: (lambda b: (lambda v: (v.register_hook(H("a", 10)), b[:2].mul_(2),
                                                                         v.sum())[-1])(b[1:]))(x * 1),
    "view of a leaf hook, leaf changed under no_grad": lambda m, x, H: (lambda v: (v.register_hook(H("a", 10)), _no_grad_mul(m, x),
                                                                                   v.sum())[-1])(x[1:]),
    "base hook, view changed": lambda m, x, H: (lambda b: (b.register_hook(H("a", 10)), b[1:].mul_(2), b.sum())[-1])(x * 1),
    "base hook after a view changed": lambda m, x, H: (lambda b: (b[1:].mul_(2), b.register_hook(H("a", 10)), b.sum())[-1])(x * 1),
    "hooks on a view and its view, both changed": lambda m, x, H: (lambda b: (lambda v: (lambda w: (
        v.register_hook(H("a", 10)), w.register_hook(H("b", 3)), w.mul_(2), v.register_hook(H("c", 7)), v.mul_(3),
        v.sum() * 2 + b.sum()))(v[1:])[-1])(b[1:]))(x * 1),
    "view retain_grad, base changed": lambda m, x, H: (lambda b: (lambda v: (v.retain_grad(), b.mul_(2),
                                                                             ((v * 3).sum(), {"v": v}))[-1])(b[1:]))(x * 1),
    "view retain_grad, base changed, not used after": lambda m, x, H: (lambda b: (lambda v: (v.retain_grad(), (lambda z: (
        b.mul_(2), (z + b.sum(), {"v": v})))(v.sum() * 5))[-1][-1])(b[1:]))(x * 1),
    "view retain_grad, view changed": lambda m, x, H: (lambda b: (lambda v: (v.retain_grad(), v.mul_(2),
                                                                             ((b * 3).sum(), {"v": v}))[-1])(b[1:]))(x * 1),
    "view retain_grad after it changed": lambda m, x, H: (lambda b: (lambda v: (v.mul_(2), v.retain_grad(),
                                                                                ((v * 3).sum(), {"v": v}))[-1])(b[1:]))(x * 1),
}


@pytest.mark.parametrize("name", HOOK_CASES)
def test_tensor_hooks_and_retain_grad_across_in_place_ops_as_torch(name):
    """A hook belongs to the node that made the tensor's value when it was registered (torch attaches
    it to the grad_fn then): after an in-place op it sees the old value's gradient, once. gradflow
    kept hooks on the tensor, so every node the tensor had been fired them (x.grad 200, torch 20);
    retain_grad follows the tensor (its newest value's gradient); a view's hooks stay with its old
    node once its base changed."""
    results = []
    for m in (gf, torch):
        calls = []
        x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        out = HOOK_CASES[name](m, x, lambda n, k: _hook(calls, n, k))
        loss, retained = out if isinstance(out, tuple) else (out, {})
        loss.backward()
        grads = {k: None if t.grad is None else t.grad.numpy().tolist() for k, t in retained.items()}
        results.append((x.grad.numpy().tolist(), grads, calls))
    assert results[0] == results[1]


def test_hooks_across_an_in_place_op_under_create_graph_as_torch():
    results = []
    for m in (gf, torch):
        calls = []
        x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 1
        y.register_hook(_hook(calls, "a", 10))
        y.mul_(x)
        g, = _grad_fn(m)(y.sum(), [x], create_graph=True)
        (g * g).sum().backward()
        results.append((g.detach().numpy().tolist(), x.grad.numpy().tolist(), calls))
    assert results[0] == results[1]


# ---- in-place ops through a view of a tensor that is not C-contiguous ------------------------------------
NONCONTIGUOUS_BASES = {  # x of shape (4, 3) -> a non-leaf whose NumPy array is not C-contiguous (torch's is)
    "T": lambda x: x.T * 1.0,                                     # F-ordered
    "permuted 3-d": lambda x: x.reshape(2, 3, 2).permute(2, 0, 1) * 1.0,
}
VIEWS_OF_IT = {"row": lambda y: y[0], "columns": lambda y: y[:, 1:], "T": lambda y: y.transpose(0, 1),
               "row of T": lambda y: y.transpose(0, 1)[1], "step": lambda y: y[..., ::2],
               "unsqueezed row": lambda y: y[0].unsqueeze(0), "flatten of a row": lambda y: y[1].flatten()}
WRITES_INTO_IT = {"mul_": lambda v, w: v.mul_(2.0), "zero_": lambda v, w: v.zero_(), "add_ tensor": lambda v, w: v.add_(w * 1.5),
                  "setitem tensor": lambda v, w: v.__setitem__(0, w * 3.0),
                  "copy_ tensor": lambda v, w: v.copy_(v.detach().clone() * w)}


@pytest.mark.parametrize("view", VIEWS_OF_IT)
@pytest.mark.parametrize("base", NONCONTIGUOUS_BASES)
def test_in_place_through_a_view_of_a_non_contiguous_tensor_as_torch(base, view):
    """``y = x.T * 1`` is F-ordered in NumPy: ``y[0].mul_(2)`` raised "cannot map back" (the view's
    elements were mapped to flat positions of a C-contiguous base only); torch's tensors are."""
    for write in WRITES_INTO_IT:
        results = []
        for m in (gf, torch):
            x = m.tensor(numpy.arange(1.0, 13.0).reshape(4, 3), requires_grad=True)
            w = m.tensor(numpy.array(0.75), requires_grad=True)
            y = NONCONTIGUOUS_BASES[base](x)
            v = VIEWS_OF_IT[view](y)
            WRITES_INTO_IT[write](v, w)
            weight = m.tensor(numpy.linspace(0.5, 2.0, y.numel()).reshape(tuple(y.shape)))
            ((y * weight).sum() + (v * v).sum()).backward()
            results.append((y.detach().numpy().copy(), v.detach().numpy().copy(), x.grad.numpy().copy(),
                            numpy.zeros(()) if w.grad is None else w.grad.numpy().copy()))
        for what, ours, theirs in zip(("y", "v", "x.grad", "w.grad"), *results):
            numpy.testing.assert_allclose(ours, theirs, rtol=1e-12, err_msg=f"{write}: {what}")


def test_in_place_through_a_view_of_an_f_ordered_tensor_second_derivative_as_torch():
    results = []
    for m in (gf, torch):
        x = m.tensor(numpy.arange(1.0, 13.0).reshape(4, 3), requires_grad=True)
        y = x.T * 1.0
        y[:, 1:].mul_(x.T[:, :3])
        g, = _grad_fn(m)((y * y).sum(), [x], create_graph=True)
        (g * g).sum().backward()
        results.append((g.detach().numpy(), x.grad.numpy()))
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("outer", ["linear", "square"])
@pytest.mark.parametrize("dim", [1, None], ids=str)
@pytest.mark.parametrize("p", [1, float("inf"), float("-inf")], ids=str)
def test_norm_double_backward_for_p_1_and_inf_is_torchs(p, dim, outer):
    """The gradient of norm(p=1) and norm(p=+-inf) is sign(x) times a mask and gy: with sign a constant,
    a gy without history (a linear use of the norm) gave a gradient without a graph, and differentiating
    it again raised; torch's is zero there (its sgn is an op of x), and through gy where gy has history."""
    a = numpy.array([[0.3, -1.2, 2.0, 0.0], [1.1, 0.7, -0.4, -2.5], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 1.0]])
    results = []
    for m in (gf, torch):
        x = m.tensor(a, requires_grad=True)
        y = x.norm(p, dim=dim)
        c = m.tensor(numpy.linspace(0.5, 2.0, y.numel()).reshape(tuple(y.shape)))
        loss = (y * c).sum() if outer == "linear" else (y * y * c).sum()
        g, = _grad_fn(m)(loss, [x], create_graph=True)
        assert g.requires_grad
        (g * m.tensor(numpy.arange(16.0).reshape(4, 4))).sum().backward()
        results.append((g.detach().numpy(), (x.grad + 0.0).detach().numpy()))  # + 0: torch's may be a ZeroTensor
    for ours, theirs in zip(*results):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("expr, raises", [
    ("y * 5", False), ("5 * y", False), ("y * c", False), ("y / 4", False), ("y / c", False),
    ("y * w", True), ("w * y", True), ("c / y", True), ("y / w", True), ("w / y", True),
])  # not `4 / y`: torch computes it as y.reciprocal() * 4 (two roundings) and keeps the reciprocal
def test_an_operand_backward_never_reads_is_not_saved_as_torch(expr, raises):
    """torch saves an operand of mul/div only when a gradient will read it: after `z = y * 5`
    an in-place change of y leaves z's backward working (gradflow raised 'modified in place'),
    while `z = y * w` (w requiring grad) still raises, in both."""
    torch = pytest.importorskip("torch")
    import gradflow as gf

    def run(lib, tensor):
        x = tensor([1.0, -2.0, 3.0], requires_grad=True)
        w = tensor([0.5, 2.0, -1.5], requires_grad=True)
        c = tensor([2.0, 4.0, 8.0])
        y = x * 1
        z = eval(expr, {"y": y, "w": w, "c": c})
        y.mul_(3)
        try:
            z.sum().backward()
        except RuntimeError as e:
            return "raised", str(e)
        return x.grad.numpy().tolist(), None if w.grad is None else w.grad.numpy().tolist()

    theirs = run(torch, lambda v, **k: torch.tensor(v, dtype=torch.float64, **k))
    ours = run(gf, lambda v, **k: gf.tensor(numpy.array(v), **k))
    assert (theirs[0] == "raised") == raises
    assert (ours[0] == "raised") == raises, ours
    if not raises:
        assert ours == theirs


# ---- .grad accumulates in place, as torch's AccumulateGrad ------------------------------------------------
def _held_grads(lib, opt_name, compiled):
    """A training loop that keeps references to the .grad tensors (a custom optimizer, logging):
    zero_grad(set_to_none=False), backward, step; the held references are read each step."""
    rng = numpy.random.default_rng(0)
    model = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.Tanh(), lib.nn.Linear(4, 2))
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)).astype(numpy.float32) * 0.5))
    x = lib.tensor(rng.standard_normal((5, 3)).astype(numpy.float32))
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd" else \
        lib.optim.Adam(model.parameters(), lr=0.05)

    def step(x):
        opt.zero_grad(set_to_none=False)
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    run = gf.compile(step, strict=True) if compiled else step
    run(x)
    held = [p.grad for p in model.parameters()]
    seen = []
    for _ in range(4):
        run(x)
        seen.append([g.detach().numpy().copy() for g in held])
        assert all(p.grad is g for p, g in zip(model.parameters(), held))
    return seen


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("compiled", [False, True])
def test_a_held_grad_reference_sees_the_next_backward_as_torch(opt_name, compiled):
    """torch adds a new gradient into the existing .grad in place, so `g = p.grad` taken earlier sees
    later backwards; gradflow gave .grad a new tensor, and the held one read zeros after
    zero_grad(set_to_none=False)."""
    want = _held_grads(torch, opt_name, False)
    got = _held_grads(gf, opt_name, compiled)
    for w, g in zip(want, got):
        for a, b in zip(g, w):
            numpy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulating_backwards_keep_the_grad_tensor_and_never_write_the_callers_gradient():
    w, tw = _both(numpy.ones(3, numpy.float32), requires_grad=True)
    g, tg = _both(numpy.array([1.0, 2.0, 3.0], numpy.float32))
    (w + 0).backward(g)
    (tw + 0).backward(tg)
    first, tfirst = w.grad, tw.grad
    (w * 1).backward(g)
    (tw * 1).backward(tg)
    w.backward(g)  # the caller's gradient straight into the leaf
    tw.backward(tg)
    assert w.grad is first and tw.grad is tfirst
    numpy.testing.assert_array_equal(first.numpy(), tfirst.numpy())  # [3, 6, 9]
    numpy.testing.assert_array_equal(g.numpy(), [1, 2, 3])  # the caller's tensor is untouched

    v = gf.tensor(numpy.ones(2, numpy.float32), requires_grad=True)
    fixed = gf.tensor(numpy.array([5.0, 7.0], numpy.float32))
    v.register_hook(lambda grad: fixed)  # a hook returning a tensor of its own
    v.sum().backward()
    v.sum().backward()
    numpy.testing.assert_array_equal(v.grad.numpy(), [10, 14])
    numpy.testing.assert_array_equal(fixed.numpy(), [5, 7])


def test_gradients_handed_out_during_backward_are_not_accumulated_into_later():
    """Hooks and retain_grad see gradients that may flow on unchanged to a leaf; the leaf's .grad
    is accumulated into in place, so it must be a copy of them, as torch's."""
    def run(lib):
        w = lib.tensor(numpy.array([1.0, 2.0]), requires_grad=True)
        u = lib.tensor(numpy.array([3.0, 4.0]), requires_grad=True)
        saved = []
        y = w + 0
        y.retain_grad()
        z = u * 1
        z.register_hook(lambda g: saved.append(g))
        u.register_hook(lambda g: saved.append(g))
        (y * 3 + z * 5).sum().backward()
        first = [y.grad.numpy().copy()] + [g.numpy().copy() for g in saved]
        held = [y.grad] + list(saved)
        (w * 7 + u * 11).sum().backward()
        return first, [t.numpy() for t in held], w.grad.numpy(), u.grad.numpy()

    (first, held, wg, ug), (tfirst, theld, twg, tug) = run(gf), run(torch)
    for a, b, c in zip(first, held, theld):
        numpy.testing.assert_array_equal(b, c)
        numpy.testing.assert_array_equal(a, b)  # unchanged by the second backward
    numpy.testing.assert_array_equal(wg, twg)
    numpy.testing.assert_array_equal(ug, tug)
