"""Every differentiable core op against float64 central differences (and double backward)."""
import numpy
import pytest

import gradflow as gf
from gradflow import gradcheck, gradgradcheck

# Every test here runs on the CPU and, where a usable GPU exists, on CUDA (conftest's ``device``):
# tensors are made with gf.tensor, which follows the pinned default device.
pytestmark = pytest.mark.usefixtures("device")


def t(*shape, positive=False, seed=None):
    rng = numpy.random.default_rng(seed if seed is not None else sum(shape) + len(shape))
    a = rng.standard_normal(shape)
    if positive:
        a = numpy.abs(a) + 0.5
    return gf.tensor(a, requires_grad=True)


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "maximum": gf.maximum,
    "minimum": gf.minimum,
}
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((3, 4), ())]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_binary_broadcasting(name, shapes):
    a = t(*shapes[0], positive=name == "pow", seed=1)
    b = t(*shapes[1], positive=name in ("div", "pow"), seed=2)
    gradcheck(BINARY[name], [a, b])
    gradgradcheck(BINARY[name], [a, b])


@pytest.mark.parametrize("fn", [lambda x: 2.0 + x, lambda x: 2.0 - x, lambda x: x - 2, lambda x: 3 * x,
                                lambda x: 1.0 / x, lambda x: x / 4, lambda x: x ** 3, lambda x: x ** 0.5,
                                lambda x: 2.0 ** x, lambda x: -x, lambda x: +x * 1])
def test_scalar_operands(fn):
    x = t(3, 2, positive=True)
    gradcheck(fn, [x])
    gradgradcheck(fn, [x])


@pytest.mark.parametrize("fn", [gf.exp, gf.log, gf.sqrt, gf.abs, lambda x: gf.clamp(x, -0.3, 0.4),
                                lambda x: gf.clamp(x, min=0.1), lambda x: x.clamp(max=0.2)])
def test_unary(fn):
    x = t(4, 3, positive=fn in (gf.log, gf.sqrt))
    if fn is gf.abs:
        x.data[numpy.abs(x.data) < 0.05] = 0.3  # keep away from the kink
    gradcheck(fn, [x])
    gradgradcheck(fn, [x])


def test_where():
    a, b = t(3, 4, seed=3), t(4, seed=4)
    cond = numpy.random.default_rng(0).random((3, 4)) > 0.5
    gradcheck(lambda a, b: gf.where(cond, a, b), [a, b])
    gradgradcheck(lambda a, b: gf.where(cond, a, b), [a, b])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul(sa, sb):
    a, b = t(*sa, seed=5), t(*sb, seed=6)
    gradcheck(gf.matmul, [a, b])
    gradgradcheck(gf.matmul, [a, b])


@pytest.mark.parametrize("op", ["sum", "mean", "var", "max", "min"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_reductions(op, axis, keepdims):
    x = t(3, 4, 5, seed=7)
    fn = lambda x: getattr(x, op)(axis=axis, keepdims=keepdims)
    gradcheck(fn, [x])
    gradgradcheck(fn, [x])


def test_reduction_values_match_numpy():
    x = numpy.random.default_rng(1).standard_normal((3, 4, 5))
    g = gf.tensor(x)
    assert numpy.allclose(g.sum(axis=1).numpy(), x.sum(axis=1))
    assert numpy.allclose(g.mean(axis=(0, 2), keepdims=True).numpy(), x.mean(axis=(0, 2), keepdims=True))
    assert numpy.allclose(g.var(axis=0).numpy(), x.var(axis=0, ddof=1))
    assert numpy.allclose(gf.var(g, correction=0).numpy(), x.var())
    assert numpy.allclose(g.max(dim=2, keepdim=True).values.numpy(), x.max(axis=2, keepdims=True))
    assert numpy.allclose(g.min().numpy(), x.min())


def test_max_ties_share_gradient():
    x = gf.tensor(numpy.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    assert numpy.allclose(x.grad.numpy(), [0, 0.5, 0.5, 0])


@pytest.mark.parametrize("fn", [
    lambda x: x.reshape(6, 4), lambda x: x.reshape(-1), lambda x: x.T, lambda x: x.transpose(0, 2),
    lambda x: x.permute(2, 0, 1), lambda x: x.flatten(), lambda x: x.flatten(1), lambda x: x.mT,
    lambda x: x[:, None].squeeze(1), lambda x: x.unsqueeze(0), lambda x: x.unsqueeze(-1),
    lambda x: x[:1].squeeze(), lambda x: gf.broadcast_to(x[:, :1], (2, 3, 4)), lambda x: gf.sum_to(x, (1, 4)),
    lambda x: gf.sum_to(x, (3, 1)), lambda x: x.expand(5, 2, 3, 4),
])
def test_shape_ops(fn):
    gradcheck(fn, [t(2, 3, 4, seed=8)])
    gradgradcheck(fn, [t(2, 3, 4, seed=8)])


def test_concatenate_and_stack():
    a, b, c = t(2, 3, seed=1), t(4, 3, seed=2), t(2, 3, seed=3)
    gradcheck(lambda a, b: gf.concatenate([a, b], axis=0), [a, b])
    gradcheck(lambda a, c: gf.concatenate([a, c], axis=1), [a, c])
    gradcheck(lambda a, c: gf.stack([a, c], axis=1), [a, c])
    gradgradcheck(lambda a, b: gf.concatenate([a, b], axis=0), [a, b])


@pytest.mark.parametrize("index", [
    (slice(1, 3),), (slice(None), 2), (Ellipsis, slice(None, None, 2)), (numpy.array([0, 2, 2, 1]),),
    (numpy.array([0, 1, 1]), numpy.array([2, 2, 0])), (slice(None), [3, 3, 0]), 1, (-1, slice(1, None)),
])
def test_getitem(index):
    x = t(4, 5, seed=9)
    gradcheck(lambda x: x[index], [x])
    gradgradcheck(lambda x: x[index], [x])


def test_getitem_boolean_mask_and_repeated_indices_accumulate():
    x = t(4, 5, seed=10)
    mask = x.data > 0
    gradcheck(lambda x: x[mask], [x])
    x.grad = None
    idx = gf.tensor(numpy.array([1, 1, 1, 3]))
    x[idx].sum().backward()
    expected = numpy.zeros((4, 5))
    expected[1] = 3
    expected[3] = 1
    assert numpy.allclose(x.grad.numpy(), expected)


def test_astype_is_differentiable():
    x = t(3, seed=11)
    gradcheck(lambda x: x.float().double() * 2, [x], atol=1e-4, rtol=1e-2, eps=1e-3)
    assert x.float().dtype == numpy.float32


def test_float32_default_and_scalar_keeps_dtype():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    assert x.dtype == numpy.float32
    assert (x * 2.5 + 1).dtype == numpy.float32
    assert (2 ** x).dtype == numpy.float32
    assert gf.tensor([1, 2]).dtype == numpy.int64


@pytest.mark.parametrize("xshape", [(5, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(xshape, bias):
    x, w = t(*xshape, seed=12), t(3, 4, seed=13)
    args = [x, w] + ([t(3, seed=14)] if bias else [])
    gradcheck(gf.ops.linear, args)
    gradgradcheck(gf.ops.linear, args)
    expected = x.numpy() @ w.numpy().T + (args[2].numpy() if bias else 0)
    assert numpy.allclose(gf.ops.linear(*args).numpy(), expected)


def test_linear_shape_error_names_shapes():
    with pytest.raises(ValueError, match=r"linear: input \(2, 5\) does not match weight \(3, 4\)"):
        gf.ops.linear(gf.zeros(2, 5), gf.zeros(3, 4))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16, numpy.int64])
@pytest.mark.parametrize("shape", [(128, 10), (1, 5), (0, 4), (3, 0), (2000, 3)])
def test_sum_rows_is_the_axis0_sum(dtype, shape):
    """sum_rows (a bias gradient: ones @ a by BLAS for float32/float64) equals a.sum(axis=0) to
    rounding, with NumPy's dtype, NaN and inf propagation, into ``out`` when given, and the cached
    ones stay ones and read-only."""
    from gradflow.ops import _ONES, sum_rows
    rng = numpy.random.default_rng(0)
    a = (rng.standard_normal(shape) * 4).astype(dtype)
    expected = a.sum(axis=0)
    got = sum_rows(a)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    rtol = {numpy.float32: 1e-5, numpy.float16: 1e-2}.get(dtype, 1e-12)
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)
    out = numpy.empty_like(expected)
    assert sum_rows(a, out=out) is out
    numpy.testing.assert_array_equal(out, got)
    if a.size and dtype in (numpy.float32, numpy.float64):
        a[0, 0], a[-1, -1] = numpy.nan, numpy.inf
        got = sum_rows(a)
        assert numpy.isnan(got[0]) and (shape[1] == 1 or numpy.isposinf(got[-1]))
    for ones in _ONES.values():
        assert not ones.flags.writeable and (ones == 1).all()
