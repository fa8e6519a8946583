"""Torch parity: every public gradflow op and Tensor method against PyTorch, one table row each.

The harness and the shared input sets are in ``tests/parity.py``; its docstring says how to
add a row. ``test_every_public_name_has_a_row`` fails when a public name (gradflow.*,
Tensor.*, gradflow.nn.functional.*) has neither a row nor an entry in ``NOT_COMPARED``
saying why: a new op joins the table with its first commit.
"""
import inspect

import numpy
import pytest

pytest.importorskip("torch")

import gradflow  # noqa: E402
import gradflow.nn.functional  # noqa: E402
from parity import (BINARY, EXTREME32, EXTREME64, FLOATS, INTS, POSITIVE, UNARY, Row, boolean, check, dims,  # noqa: E402
                    f32, f64, i32, inf, nan, randint, randn)


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("GRADFLOW_DEVICE", "cpu")  # factories too: parity is checked on the CPU


def _grad_fn(m):
    return m.grad if m.name == "gradflow" else m.autograd.grad


def _cast(m, x, name):
    return x.to(getattr(m, name))


def _meta(t, lo=None, hi=None):
    """Shape, dtype and range of a random tensor (its values differ between the libraries)."""
    ok = True if lo is None else bool(((t.numpy() >= lo) & (t.numpy() < hi)).all())
    return tuple(t.shape), str(t.dtype).replace("torch.", ""), ok


def _backward(m, x):
    y = (x * x * 3).sum()
    y.backward()
    return x.grad


def _retain(m, x):
    h = x * 2
    h.retain_grad()
    (h * h).sum().backward()
    return h.grad


def _set(m, x, index, value):
    y = x * 1
    y[index] = value
    return y


def _inplace(op):
    def f(m, a, b):
        y = a * 1
        if op == "+":
            y += b
        elif op == "-":
            y -= b
        elif op == "*":
            y *= b
        else:
            y /= b
        return y
    return f


def _inplace_aliased(op):
    """``y op= b`` on a copy: the result and a view of y taken before, which must see the update (in-place)."""
    def f(m, a, b):
        y = a.clone()
        view = y[...]
        z = y
        if op == "//":
            z //= b
        elif op == "%":
            z %= b
        elif op == "**":
            z **= b
        elif op == "&":
            z &= b
        elif op == "|":
            z |= b
        else:
            z ^= b
        return z, view, m.tensor(z is y)
    return f


def _no_grad(m, x):
    with m.no_grad():
        y = x * 2
        inside = m.is_grad_enabled()
        with m.enable_grad():
            z = x * 2
    return y.requires_grad, z.requires_grad, inside, m.is_grad_enabled()


def _sum_to(m, x, shape):
    return x.sum_to(shape) if m.name == "gradflow" else x.sum_to_size(shape)


def _logits(n=5, c=4, scale=1.0, dtype=f64):
    return randn(n, c, dtype=dtype, scale=scale)


CLASS_T = numpy.array([0, 3, 1, 1, 2])
KEEPDIM = [(randn(3, 4), d, k) for d in (0, -1, 1, 2) for k in (False, True)] + \
          [(numpy.array(1.5), 0, True), (randn(2, 3, dtype=f32), -2, True), (numpy.zeros((0, 3)), 1, False)]
MATMUL = [(randn(3, 4), randn(4, 2)), (randn(4), randn(4)), (randn(4), randn(4, 3)), (randn(2, 4), randn(4)),
          (randn(2, 3, 4), randn(4, 5)), (randn(2, 3, 4), randn(2, 4, 2)), (randn(3, 4), randn(3, 4)),
          (numpy.array(2.0), randn(3)), (randn(3, 4, dtype=f32), randn(4, 2, dtype=f32)), (randn(0, 3), randn(3, 2))]
PAIRS_SAME_SHAPE = [(randn(2, 3), randn(2, 3)), (randn(2, 3, dtype=f32), randn(2, 3, dtype=f32)),
                    (randint(2, 3), randn(2, 3, dtype=f32)), (randn(2, 3), randn(3, 3)), (numpy.array(1.0), randn(1))]
SHAPES = [(randn(2, 3, 4), s) for s in [(6, 4), (-1,), (4, -1), (2, -1, 2), (5, 5), (24,), (2, 3, 4)]] + \
         [(numpy.array(2.0), (1,)), (numpy.zeros((0, 3)), (3, 0)), (numpy.zeros((0, 3)), (-1,))]
POW = [(randn(3, 4), 2), (randn(3, 4), 3), (numpy.abs(randn(3)) + .1, .5), (randn(3), 0), (randn(3), -1),
       (numpy.array([0.0, 0.0, 1.0]), 0), (numpy.array([0.0, 2.0]), 0.5), (randint(4), 2), (randint(4), -1),
       (randint(4, low=1), 0.5), (numpy.abs(randn(3, 2)) + .1, randn(3, 2)), (numpy.array([0.0, 0, 2]), numpy.array([0.0, 2, 0])),
       (2.0, randn(3)), (0.0, numpy.array([0.0, 1.0, -1.0])), (randn(3, dtype=f32), 2.5), (EXTREME64, 2), (EXTREME32, 0.5)]
WHERE = [(randn(3, 4), randn(3, 4), randn(3, 4)), (randn(3, 1), randn(1, 4), 0.0), (randn(3), 1, 3), (randn(3), 1.0, 3),
         (randn(3), randint(3, dtype=i32), 2.5), (randn(3), randint(3), randn(3, dtype=f32)), (numpy.array(0.3), randn(2), randn(2)),
         (randn(2, 3), randn(3), randn(4))]
CAT = [(randn(2, 3), randn(4, 3), 0), (randn(2, 3), randn(2, 1), 1), (randn(2, 3), randn(2, 1), -1), (randn(2, 3), randn(2, 3), 2),
       (randn(2, 3), randn(2, 4), 0), (randint(2, 3), randn(1, 3, dtype=f32), 0), (numpy.array(1.0), numpy.array(2.0), 0),
       (randn(0, 3), randn(2, 3), 0)]
STACK = [(randn(2, 3), randn(2, 3), d) for d in (0, 1, 2, -1, -3, 3, -4)] + \
        [(randn(2, 3), randn(3, 2), 0), (numpy.array(1.0), numpy.array(2.0), 0), (randint(2), randn(2, dtype=f32), 0)]
INDEX = [(randn(3, 4), 0), (randn(3, 4), (slice(None), 1)), (randn(3, 4), -1), (randn(3, 4), 5), (randn(3, 4), (1, 2)),
         (randn(3, 4), (Ellipsis, None)), (randn(3, 4), slice(1, None)), (randn(3, 4), (slice(None, None, 2), slice(None, 2))),
         (randn(3, 4), numpy.array([0, 2, 2])), (randn(3, 4), (numpy.array([0, 1]), numpy.array([3, 3]))),
         (randn(3, 4), numpy.array([True, False, True])), (randint(3, 4), 1), (numpy.array(1.0), ())]
CLAMP = [(randn(3, 4), -0.5, 0.5), (randn(3, 4), None, 0.0), (randn(3, 4), 0.0, None), (randn(3, 4), None, None),
         (EXTREME64, -1e4, 1e4), (randint(5), -1, 2), (randn(3, dtype=f32), -0.1, 0.1), (randn(3), 1.0, -1.0)]
ACT = FLOATS
LOSS_PAIRS = [(randn(4, 3), randn(4, 3)), (randn(4, 3, dtype=f32), randn(4, 3, dtype=f32)), (randn(5), randn(5) * 3),
              (randn(4, 3, dtype=f32), randint(4, 3)), (numpy.array(1.0), numpy.array(3.0))]
REDUCTIONS = ("mean", "sum", "none")
PROBS = numpy.clip(numpy.random.default_rng(3).random((4, 3)), 0.01, 0.99)
TARGET01 = (numpy.random.default_rng(4).random((4, 3)) > 0.5).astype(f64)
XENT = [(_logits(), CLASS_T, r, ii, ls) for r in REDUCTIONS for ii in (-100, 1, 0) for ls in (0.0, 0.2)] + \
       [(_logits(scale=1e4), CLASS_T, "sum", -100, 0.0), (_logits(dtype=f32) + f32(1e4), CLASS_T, "mean", 3, 0.0),
        (randn(2, 4, 3), numpy.array([[0, 1, 2], [3, 3, 0]]), "mean", -100, 0.0),
        (randn(2, 4, 3), numpy.array([[0, 1, 2], [3, 3, 0]]), "none", 1, 0.0),
        (randn(4), numpy.array(2), "none", -100, 0.0), (_logits(), numpy.array([0, 4, 1, 1, 2]), "mean", -100, 0.0),
        (_logits(), numpy.array([0, 1, 2]), "mean", -100, 0.0), (_logits(), CLASS_T.astype(f32), "mean", -100, 0.0),
        (numpy.array([[3e38, 3e38, 3e38, -3e38]], f32), numpy.array([1]), "mean", -100, 0.0),
        (_logits(), CLASS_T, "mean", -100, 1.5)]

TENSOR_PAIRS = [s for s in BINARY if isinstance(s[0], numpy.ndarray) and isinstance(s[1], numpy.ndarray)]
NO_BOOL = FLOATS + INTS[:2] + INTS[3:]  # torch refuses bool input to argmax/argmin (gradflow accepts it)

ROWS = [
    # ---- elementwise -----------------------------------------------------------------------------
    Row("abs", lambda m, x: m.abs(x), UNARY),
    Row("Tensor.abs", lambda m, x: x.abs(), UNARY),
    Row("Tensor.__abs__", lambda m, x: abs(x), UNARY),
    Row("exp", lambda m, x: m.exp(x), FLOATS),
    Row("Tensor.exp", lambda m, x: x.exp(), FLOATS),
    Row("log", lambda m, x: m.log(x), FLOATS + POSITIVE),
    Row("Tensor.log", lambda m, x: x.log(), POSITIVE),
    Row("sqrt", lambda m, x: m.sqrt(x), FLOATS + POSITIVE),
    Row("Tensor.sqrt", lambda m, x: x.sqrt(), POSITIVE),
    Row("clamp", lambda m, x, lo, hi: m.clamp(x, lo, hi), CLAMP),
    Row("clip", lambda m, x, lo, hi: m.clip(x, min=lo, max=hi), CLAMP),
    Row("Tensor.clamp", lambda m, x, lo, hi: x.clamp(min=lo, max=hi), CLAMP),
    Row("Tensor.clip", lambda m, x, lo, hi: x.clip(lo, hi), CLAMP),
    Row("Tensor.__neg__", lambda m, x: -x, UNARY[:-2]),
    Row("Tensor.__pos__", lambda m, x: +x, UNARY),
    Row("Tensor.__add__", lambda m, a, b: a + b, BINARY),
    Row("Tensor.__radd__", lambda m, a, b: b + a, BINARY),
    Row("Tensor.__sub__", lambda m, a, b: a - b, [s for s in BINARY if s[0].__class__ is not bool]),
    Row("Tensor.__rsub__", lambda m, a, b: b - a, BINARY[:10]),
    Row("Tensor.__mul__", lambda m, a, b: a * b, BINARY),
    Row("Tensor.__rmul__", lambda m, a, b: b * a, BINARY[:10]),
    Row("Tensor.__truediv__", lambda m, a, b: a / b, BINARY),
    Row("Tensor.__rtruediv__", lambda m, a, b: b / a, BINARY[:10]),
    Row("Tensor.__pow__", lambda m, a, b: a ** b, POW),
    Row("Tensor.__rpow__", lambda m, a, b: b ** a, [(randn(3), 2.0), (randn(3), 0.0), (randint(3, low=0), 2)]),
    Row("maximum", lambda m, a, b: m.maximum(a, b), TENSOR_PAIRS),
    Row("minimum", lambda m, a, b: m.minimum(a, b), TENSOR_PAIRS),
    Row("where", lambda m, c, a, b: m.where(c > 0, a, b), WHERE),
    # the condition itself: bool or (deprecated) uint8; int and float conditions raise, as torch (they were taken as != 0)
    Row("where condition", lambda m, c, a, b: m.where(c, a, b),
        [(boolean(3), randn(3), randn(3)), (numpy.array([1, 0, 2], numpy.uint8), randn(3), 0.5), (randint(3), randn(3), randn(3)),
         (randn(3), randn(3), randn(3)), (randint(2, 3, dtype=i32), 1.0, 0.0)]),
    Row("Tensor.__lt__", lambda m, a, b: a < b, BINARY),
    Row("Tensor.__le__", lambda m, a, b: a <= b, BINARY),
    Row("Tensor.__gt__", lambda m, a, b: a > b, BINARY),
    Row("Tensor.__ge__", lambda m, a, b: a >= b, BINARY),
    Row("Tensor.__eq__", lambda m, a, b: a == b, BINARY),
    Row("Tensor.__ne__", lambda m, a, b: a != b, BINARY),
    Row("Tensor.__iadd__", _inplace("+"), BINARY, grad=False),
    Row("Tensor.__isub__", _inplace("-"), BINARY[:16], grad=False),
    Row("Tensor.__imul__", _inplace("*"), BINARY, grad=False),
    Row("Tensor.__itruediv__", _inplace("/"), BINARY, grad=False),
    # ---- matmul and linear ------------------------------------------------------------------------------
    Row("matmul", lambda m, a, b: m.matmul(a, b), MATMUL),
    Row("Tensor.matmul", lambda m, a, b: a.matmul(b), MATMUL),
    Row("Tensor.__matmul__", lambda m, a, b: a @ b, MATMUL),
    Row("Tensor.__rmatmul__", lambda m, a, b: b.__rmatmul__(a), MATMUL[:3]),
    Row("linear", lambda m, x, w, b: m.F.linear(x, w, b),
        [(randn(4, 3), randn(2, 3), randn(2)), (randn(4, 3), randn(2, 3), None), (randn(5, 4, 3), randn(2, 3), randn(2)),
         (randn(3), randn(2, 3), randn(2)), (randn(4, 3), randn(2, 4), None),
         (randn(4, 3, dtype=f32), randn(2, 3, dtype=f32), randn(2, dtype=f32)),
         # biases that broadcast: backward crashed ("returned a gradient of shape (2,) for an input of shape ()")
         (randn(4, 3), randn(2, 3), numpy.array(0.5)), (randn(4, 3), randn(2, 3), randn(1)), (randn(2, 3), randn(3), randn(1)),
         (randn(4, 3), randn(2, 3), randn(4, 2))]),
    Row("F.linear", lambda m, x, w: m.F.linear(x, w), [(randn(4, 3), randn(2, 3)),
                                                       (randn(3), randn(3)), (randn(2, 3), randn(3))]),  # 1-D weight
    # ---- reductions -----------------------------------------------------------------------------------
    Row("sum", lambda m, x, d: m.sum(x, dim=d) if d is not None else m.sum(x), dims(UNARY)),
    Row("Tensor.sum", lambda m, x, d, k: x.sum(d, k) if d is not None else x.sum(), KEEPDIM + [(randn(2, 3), (0, 1), False),
                                                                                          (randn(2, 3), (0, 0), False),
                                                                                          (randn(2, 3, 4), (0, -1), True)]),
    Row("mean", lambda m, x, d: m.mean(x, dim=d) if d is not None else m.mean(x), dims(UNARY)),
    Row("Tensor.mean", lambda m, x, d, k: x.mean(d, keepdim=k), KEEPDIM + [(randn(2, 3, 4), (0, 2), False)]),
    Row("var", lambda m, x, d: m.var(x, dim=d) if d is not None else m.var(x), dims(UNARY)),
    Row("Tensor.var", lambda m, x, d, k: x.var(d, keepdim=k), KEEPDIM),
    Row("Tensor.var unbiased", lambda m, x, u: x.var(1, u), [(randn(3, 4), True), (randn(3, 4), False)]),
    Row("Tensor.var unbiased only", lambda m, x, u: x.var(u), [(randn(3, 4), True), (randn(3, 4), False)]),
    Row("std unbiased only", lambda m, x, u: m.std(x, u), [(randn(3, 4), True), (randn(3, 4), False), (randn(5, dtype=f32), False)]),
    Row("Tensor.var correction", lambda m, x, c: x.var(dim=0, correction=c), [(randn(3, 4), 0), (randn(3, 4), 2)]),
    Row("std", lambda m, x, d: m.std(x, dim=d) if d is not None else m.std(x), dims(FLOATS[:4] + INTS)),
    Row("Tensor.std", lambda m, x, d, k: x.std(d, keepdim=k), KEEPDIM[:8] + [(randn(3, 4), (0, 1), False)]),
    Row("max", lambda m, x: m.max(x), UNARY),
    Row("max dim", lambda m, x, d: m.max(x, dim=d), dims(FLOATS + INTS, (0, 1, -1, 2, -3))),
    Row("max other", lambda m, a, b: m.max(a, b), BINARY[:4]),
    Row("Tensor.max", lambda m, x, d, k: x.max(d, k), [s for s in KEEPDIM if s[0].size or s[1] != 1]),
    Row("min", lambda m, x: m.min(x), UNARY),
    Row("min dim", lambda m, x, d: m.min(x, dim=d), dims(FLOATS + INTS, (0, 1, -1, 2, -3))),
    Row("Tensor.min", lambda m, x, d, k: x.min(dim=d, keepdim=k), KEEPDIM),
    Row("argmax", lambda m, x, d: m.argmax(x, dim=d), dims(NO_BOOL, (None, 0, 1, -1, 2, -3))),
    Row("Tensor.argmax", lambda m, x, d, k: x.argmax(d, k), KEEPDIM),
    Row("argmin", lambda m, x, d: m.argmin(x, dim=d), dims(NO_BOOL, (None, 0, 1, -1, 2, -3))),
    Row("Tensor.argmin", lambda m, x, d, k: x.argmin(dim=d, keepdim=k), KEEPDIM),
    # ---- shapes -----------------------------------------------------------------------------------------------
    Row("reshape", lambda m, x, s: m.reshape(x, s), SHAPES),
    Row("Tensor.reshape", lambda m, x, s: x.reshape(*s), SHAPES),
    Row("Tensor.view", lambda m, x, s: x.view(s), SHAPES),
    # a transposed tensor cannot be viewed flat: torch raises, and so must gradflow (a copy would
    # silently not alias); the same shape, or a split of a contiguous dim, stays a view
    Row("Tensor.view non-contiguous", lambda m, x, s: x.mT.view(s),
        [(randn(3, 4), (12,)), (randn(3, 4), (4, 3)), (randn(2, 3, 4), (2, 12)), (randn(2, 3, 4), (2, 2, 2, 3))]),
    Row("flatten", lambda m, x, a, b: m.flatten(x, a, b),
        [(randn(2, 3, 4), a, b) for a, b in [(0, -1), (1, 2), (0, 1), (-2, -1), (2, 1), (0, 3), (1, 1)]] +
        [(numpy.array(2.0), 0, -1), (numpy.zeros((2, 0, 3)), 0, 1)]),
    Row("Tensor.flatten", lambda m, x: x.flatten(), [(randn(2, 3),), (numpy.array(1.0),)]),
    Row("squeeze", lambda m, x, d: m.squeeze(x, d) if d is not None else m.squeeze(x),
        dims([(randn(2, 1, 3),), (randn(1, 1),), (numpy.array(2.0),), (randn(1, 0, 1),)], (None, 0, 1, -1, 2, 3, (0, 1)))),
    Row("Tensor.squeeze", lambda m, x, d: x.squeeze(dim=d) if d is not None else x.squeeze(),
        dims([(randn(2, 1, 3),), (randn(1, 4, 1),)], (None, 0, 1, -1, 5))),
    Row("unsqueeze", lambda m, x, d: m.unsqueeze(x, d), dims([(randn(2, 3),), (numpy.array(2.0),)], (0, 1, 2, -1, -3, 3, -4))),
    Row("Tensor.unsqueeze", lambda m, x, d: x.unsqueeze(dim=d), dims([(randn(2, 3),)], (0, 2, -1, 3))),
    Row("transpose", lambda m, x, a, b: m.transpose(x, a, b),
        [(randn(2, 3, 4), a, b) for a, b in [(0, 1), (0, -1), (2, 1), (1, 1), (0, 3), (-4, 0)]] + [(numpy.array(1.0), 0, -1)]),
    Row("Tensor.transpose", lambda m, x: x.transpose(0, 1), [(randn(2, 3),), (randn(4),)]),
    Row("swapaxes", lambda m, x, a, b: m.swapaxes(x, a, b), [(randn(2, 3, 4), 0, 2), (randn(2, 3), 1, -2), (randn(2, 3), 0, 2)]),
    Row("permute", lambda m, x, p: m.permute(x, p),
        [(randn(2, 3, 4), p) for p in [(2, 0, 1), (0, 1, 2), (-1, 0, 1), (0, 1), (0, 0, 1), (0, 1, 3)]]),
    Row("Tensor.permute", lambda m, x: x.permute(1, 0), [(randn(2, 3),)]),
    Row("Tensor.T", lambda m, x: x.T, [(randn(2, 3),), (randn(3),), (numpy.array(1.0),)]),
    Row("Tensor.mT", lambda m, x: x.mT, [(randn(2, 3),), (randn(4, 2, 3),), (randn(3),)]),
    Row("broadcast_to", lambda m, x, s: m.broadcast_to(x, s), [(randn(3, 1), (2, 3, 4)), (randn(3), (2, 3)), (randn(3), (2, 4)),
                                                                (numpy.array(1.0), (2,))]),
    Row("Tensor.broadcast_to", lambda m, x, s: x.broadcast_to(s), [(randn(1, 3), (4, 3))]),
    Row("Tensor.expand", lambda m, x: x.expand(2, 4, 3), [(randn(4, 1),), (randn(1, 3),), (randn(2, 3),)]),
    Row("sum_to", lambda m, x, s: _sum_to(m, x, s), [(randn(2, 3, 4), (3, 1)), (randn(2, 3), (1, 3)), (randn(2, 3), (3,))]),
    Row("Tensor.sum_to", lambda m, x, s: _sum_to(m, x, s), [(randn(2, 3, 4), (1, 4))]),
    Row("cat", lambda m, a, b, d: m.cat([a, b], dim=d), CAT),
    Row("concatenate", lambda m, a, b, d: m.concatenate([a, b], d), CAT[:3]),
    Row("stack", lambda m, a, b, d: m.stack([a, b], dim=d), STACK),
    Row("Tensor.__getitem__", lambda m, x, i: x[m.tensor(i) if isinstance(i, numpy.ndarray) else
                                             tuple(m.tensor(j) for j in i) if isinstance(i, tuple) and i and
                                             isinstance(i[0], numpy.ndarray) else i], INDEX),
    Row("Tensor.__setitem__", _set, [(randn(3, 4), 0, 5.0), (randn(3, 4), (slice(None), 1), 2), (randint(3), 1, 7),
                                     (randn(3, 4), 9, 1.0)], grad=False),
    # ---- dtype, device, conversion ---------------------------------------------------------------------
    Row("Tensor.to", lambda m, x, d: _cast(m, x, d), [(randn(3), "float32"), (randn(3, dtype=f32), "float64"),
                                                       (randn(3) * 3, "int64"), (randint(3), "float32"), (randint(3), "bool")]),
    Row("Tensor.to device", lambda m, x: x.to("cpu"), [(randn(3),)]),
    Row("Tensor.cpu", lambda m, x: x.cpu(), [(randn(3),)]),
    Row("Tensor.float", lambda m, x: x.float(), [(randn(3),), (randint(3),), (boolean(2),)]),
    Row("Tensor.double", lambda m, x: x.double(), [(randn(3, dtype=f32),), (randint(3),)]),
    Row("Tensor.type_as", lambda m, x, y: x.type_as(y), [(randn(3), randn(2, dtype=f32)), (randint(3), randn(1))]),
    Row("Tensor.detach", lambda m, x: x.detach(), [(randn(3),)]),
    Row("Tensor.item", lambda m, x: x.item(), [(numpy.array(2.5),), (numpy.array(3),), (randn(1, 1),), (randn(2),),
                                               (numpy.array(True),)]),
    Row("Tensor.tolist", lambda m, x: x.tolist(), [(randn(2, 2),), (randint(3),), (numpy.array(1.5),)]),
    Row("Tensor.numpy", lambda m, x: x.numpy().tolist(), [(randn(2, 2),)], grad=False),
    Row("Tensor.__float__", lambda m, x: float(x), [(numpy.array(2.5),), (randn(2),)]),
    Row("Tensor.__int__", lambda m, x: int(x), [(numpy.array(2.7),), (numpy.array(-3),)]),
    Row("Tensor.__bool__", lambda m, x: bool(x), [(numpy.array(0.0),), (numpy.array(2),), (randn(2),)]),
    Row("Tensor.__len__", lambda m, x: len(x), [(randn(3, 2),), (numpy.array(1.0),)]),
    Row("Tensor.__array__", lambda m, x: numpy.asarray(x.detach()).tolist(), [(randn(2),)]),
    Row("Tensor.dtype", lambda m, x: str(x.dtype).replace("torch.", ""), UNARY),
    Row("Tensor.device", lambda m, x: str(x.device), [(randn(2),)]),
    Row("Tensor.shape", lambda m, x: tuple(x.shape), UNARY),
    Row("Tensor.ndim", lambda m, x: x.ndim, UNARY),
    Row("Tensor.dim", lambda m, x: x.dim(), UNARY),
    Row("Tensor.numel", lambda m, x: x.numel(), UNARY),
    Row("Tensor.size", lambda m, x, d: x.size(d) if d is not None else x.size(), dims([(randn(2, 3),), (numpy.array(1.0),)],
                                                                                   (None, 0, 1, -1, -2, 2))),
    Row("Size", lambda m, x: (x.size().numel(), x.size() == (2, 3)), [(randn(2, 3),)]),
    Row("Tensor.is_leaf", lambda m, x: (x.is_leaf, (x * 2).is_leaf), [(randn(2),), (randn(2, dtype=f32),)]),
    Row("Tensor.requires_grad_", lambda m, x: x.requires_grad_().requires_grad, [(randn(2, dtype=f32),), (randint(2),)],
        grad=False),
    # ---- autograd -------------------------------------------------------------------------------------------
    Row("Tensor.backward", _backward, [(randn(2, 3),), (numpy.array(1.5),)], grad=False),
    Row("Tensor.retain_grad", _retain, [(randn(3),)], grad=False),
    Row("grad", lambda m, x: _grad_fn(m)((x * x).sum(), x), [(randn(3),)], grad=False),
    Row("grad list", lambda m, x: _grad_fn(m)((x ** 3).sum(), [x], create_graph=True)[0].sum(), [(randn(3),)], grad=False),
    Row("no_grad", _no_grad, [(randn(2),)], grad=False),
    Row("enable_grad", _no_grad, [(randn(2, dtype=f32),)], grad=False),
    Row("is_grad_enabled", lambda m: m.is_grad_enabled(), [()]),
    Row("result_type", lambda m, a, b: str(m.result_type(a, b)).replace("torch.", ""),
        [(randint(2), 0.5), (randn(2, dtype=f32), numpy.array(1.0)), (randint(2), randn(2, dtype=f32)), (boolean(2), 2),
         (randint(2, dtype=i32), numpy.array(5))], grad=False),
    Row("promote_types", lambda m, a, b: str(m.promote_types(getattr(m, a), getattr(m, b))).replace("torch.", ""),
        [(a, b) for a in ("int64", "int32", "float32", "float64", "uint8", "int8") for b in ("int64", "float32", "int8")]),
    # ---- factories --------------------------------------------------------------------------------------------
    Row("tensor", lambda m, d: m.tensor(d() if callable(d) else d),  # arrays wrapped in a lambda: passed as data
        [([1, 2],), ([1.0, 2],), ([True, False],), (3.5,), (7,), ([[1, 2], [3, 4]],), ([],),
         (lambda: numpy.array([1.0], f64),), (lambda: numpy.array([1], i32),),
         # NumPy scalars in a list keep their dtype in the promotion, as torch's (the list was float32 / int64)
         ([numpy.float64(0.5), 1.0],), ([[numpy.float64(0.5)], [2.0]],), ([numpy.float32(0.5), 2],), ([numpy.int32(1), 2],),
         ([numpy.int32(1), numpy.int32(2)],), ([numpy.int8(1), numpy.uint8(2)],), ([numpy.float16(1), 2],),
         ([numpy.float16(1), 2.0],), ((numpy.float64(0.1),),), ([numpy.array([1.0, 2.0])],)]),
    Row("from_numpy", lambda m, a: m.from_numpy(a), [(numpy.arange(3.0),), (numpy.arange(3, dtype=i32),)]),
    Row("zeros", lambda m, *s: m.zeros(*s), [(2, 3), ((2, 3),), (0,), ((),)]),
    Row("ones", lambda m, *s: m.ones(*s), [(2, 3), ((4,),)]),
    Row("full", lambda m, s, v: m.full(s, v), [((2, 3), 1.5), ((2,), 3), ((2,), True)]),
    Row("empty", lambda m, *s: _meta(m.empty(*s)), [(2, 3)]),
    Row("zeros_like", lambda m, x: m.zeros_like(x), UNARY),
    Row("ones_like", lambda m, x: m.ones_like(x), UNARY),
    Row("arange", lambda m, *a: m.arange(*a), [(5,), (1, 4), (0, 1, 0.25), (2.0,), (5, 0, -2)]),
    Row("eye", lambda m, *a: m.eye(*a), [(3,), (2, 4)]),
    Row("rand", lambda m, *s: _meta(m.rand(*s), 0, 1), [(2, 3), ((4,),)]),
    Row("randn", lambda m, *s: _meta(m.randn(*s)), [(2, 3)]),
    Row("randint", lambda m, lo, hi, s: _meta(m.randint(lo, hi, s), lo, hi), [(0, 3, (10,)), (-2, 2, (2, 5))]),
    # ---- nn.functional: activations -----------------------------------------------------------------------
    Row("F.relu", lambda m, x: m.F.relu(x), ACT),
    Row("F.leaky_relu", lambda m, x: m.F.leaky_relu(x, 0.1), ACT),
    Row("F.elu", lambda m, x: m.F.elu(x, 1.3), ACT),
    Row("F.selu", lambda m, x: m.F.selu(x), ACT),
    # gelu's erfc form is exact at ±3e38 where torch's x * (1 + erf) overflows to inf (deliberate, activation.py)
    Row("F.gelu", lambda m, x: m.F.gelu(x), ACT, skip=lambda s: s[0] is EXTREME32),
    Row("F.gelu tanh", lambda m, x: m.F.gelu(x, approximate="tanh"), ACT),
    Row("F.sigmoid", lambda m, x: m.F.sigmoid(x), ACT),
    Row("F.tanh", lambda m, x: m.F.tanh(x), ACT),
    Row("F.softplus", lambda m, x: m.F.softplus(x, beta=2.0, threshold=10.0), ACT),
    Row("F.prelu", lambda m, x, w: m.F.prelu(x, w), [(randn(2, 3, 4), numpy.abs(randn(3))), (randn(4, 2), numpy.array([0.2])),
                                                      (randn(2, 3), randn(2))]),
    Row("F.softmax", lambda m, x, d: m.F.softmax(x, dim=d), dims(FLOATS, (0, 1, -1, 2, -3))),
    Row("F.log_softmax", lambda m, x, d: m.F.log_softmax(x, d), dims(FLOATS, (0, 1, -1, 2, -3))),
    Row("F.dropout", lambda m, x, p, t: m.F.dropout(x, p, training=t), [(randn(3, 4), 0.5, False), (randn(3, 4), 0.0, True),
                                                                         (randn(3, 4), 1.0, True), (randn(3), 1.5, True)]),
    Row("F.one_hot", lambda m, t, n: m.F.one_hot(t, n), [(numpy.array([0, 2, 1]), 3), (numpy.array([0, 2, 1]), -1),
                                                         (numpy.array([[1, 0]]), 4)]),
    # ---- nn.functional: losses -------------------------------------------------------------------------
    Row("F.cross_entropy", lambda m, x, t, r, ii, ls: m.F.cross_entropy(x, t, reduction=r, ignore_index=ii, label_smoothing=ls),
        XENT),
    Row("F.cross_entropy probabilities", lambda m, x, t: m.F.cross_entropy(x, t), [(_logits(4, 3), PROBS / PROBS.sum(1, keepdims=True))]),
    Row("F.softmax_cross_entropy", lambda m, x, t, r, ii, ls: (m.F.softmax_cross_entropy if m.name == "gradflow" else
                                                               m.F.cross_entropy)(x, t, reduction=r, ignore_index=ii),
        [s for s in XENT if s[4] == 0.0]),
    Row("F.nll_loss", lambda m, x, t, r, ii: m.F.nll_loss(x, t, reduction=r, ignore_index=ii),
        [(randn(5, 4), CLASS_T, r, ii) for r in REDUCTIONS for ii in (-100, 1)] + [(randn(5, 4), numpy.array([0, 9, 1, 1, 2]), "sum", -100)]),
    Row("F.mse_loss", lambda m, x, t: m.F.mse_loss(x, t), LOSS_PAIRS),
    Row("F.mse_loss reduction", lambda m, x, t, r: m.F.mse_loss(x, t, reduction=r), [(randn(3, 2), randn(3, 2), r) for r in REDUCTIONS]),
    Row("F.l1_loss", lambda m, x, t: m.F.l1_loss(x, t), LOSS_PAIRS),
    Row("F.huber_loss", lambda m, x, t, d: m.F.huber_loss(x, t, delta=d), [(randn(4, 3) * 2, randn(4, 3), d) for d in (1.0, 0.5)]),
    Row("F.smooth_l1_loss", lambda m, x, t, b: m.F.smooth_l1_loss(x, t, beta=b), [(randn(4, 3) * 2, randn(4, 3), b) for b in (1.0, 0.3, 0.0)]),
    Row("F.binary_cross_entropy", lambda m, p, t, r: m.F.binary_cross_entropy(p, t, reduction=r),
        [(PROBS, TARGET01, r) for r in REDUCTIONS] + [(numpy.array([0.0, 1.0, 0.5]), numpy.array([0.0, 1.0, 1.0]), "none"),
                                                      (numpy.array([1.5]), numpy.array([1.0]), "mean")]),
    Row("F.binary_cross_entropy_with_logits",  # torch refuses a pos_weight that requires grad: given as a tuple
        lambda m, x, t, pw: m.F.binary_cross_entropy_with_logits(x, t, pos_weight=pw and m.tensor(numpy.array(pw))),
        [(randn(4, 3) * 3, TARGET01, None), (randn(4, 3), TARGET01, (1.0, 2.0, 0.5)),
         (numpy.array([-1e4, 1e4, 0.0]), numpy.array([1.0, 0.0, 0.5]), None)]),
]


def _method_or_fn(name):
    """gradflow's module-level in-place/alias function, torch's method of the same name (torch has no function)."""
    def f(m, x, *args):
        y = x * 1 if isinstance(x, (m.Tensor,)) and name.endswith("_") else x
        out = getattr(m, name)(y, *args) if m.name == "gradflow" else getattr(y, name)(*args)
        return out
    return f


def _inplace_method(name):
    def f(m, x, *args):
        y = x * 1
        r = getattr(y, name)(*args)
        return y, r is y
    return f


def _hook(m, x):
    seen = []
    x.register_hook(lambda g: seen.append(g.sum().item()) or g * 2)
    (x * 3).sum().backward()
    return x.grad, seen


def _post_hook(m, x):
    seen = []
    x.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.sum().item()))
    (x * 3).sum().backward()
    return seen


def _dlpack(m, x):
    return m.from_dlpack(x.detach()), tuple(int(v) for v in x.__dlpack_device__())


def _grad_mode(m, fn):
    x = m.ones(2, requires_grad=True)
    with getattr(m, fn)(False):
        y = x * 2
        inside = m.is_grad_enabled() if fn == "set_grad_enabled" else m.is_inference_mode_enabled()
    return y.requires_grad, inside


def _default_dtype(m, name):
    before = m.get_default_dtype()
    try:
        m.set_default_dtype(getattr(m, name))
        return str(m.get_default_dtype()).replace("torch.", ""), str(m.tensor([1.5]).dtype).replace("torch.", ""), \
            str((m.tensor([1, 2]) / 2).dtype).replace("torch.", "")
    finally:
        m.set_default_dtype(before)


T_FIRST = [s for s in BINARY if isinstance(s[0], numpy.ndarray)]
BITS = [(boolean(3), boolean(3)), (randint(3), randint(3)), (randint(2, 3), randint(3, dtype=i32)), (randint(3), 6),
        (boolean(3), True), (randn(3), randn(3)), (boolean(3), randint(3))]
UNARY_NAMES = ["ceil", "cos", "exp2", "floor", "isfinite", "isinf", "isnan", "log10", "log2", "logical_not", "neg",
               "relu", "round", "rsqrt", "sigmoid", "sign", "sin", "tanh", "trunc"]
BINARY_NAMES = ["add", "sub", "mul", "pow", "remainder", "floor_divide"]
CMP_NAMES = ["eq", "ne", "lt", "le", "gt", "ge"]
# floor_divide/remainder rows compare values only (torch marks floor_divide's result as requiring grad, with a
# zero gradient); pow of integers by a negative integer tensor raises in gradflow, torch returns wrapped integers.
BINARY_OPTIONS = {
    "floor_divide": dict(grad=False),
    "remainder": dict(grad=False),
    "pow": dict(known={16: "int ** negative int tensor raises (torch wraps)", 18: "bool ** int with negatives raises"}),
}
T_FIRST_OPTIONS = {
    "floor_divide": dict(grad=False),
    "remainder": dict(grad=False),
    "pow": dict(known={14: "int ** negative int tensor raises (torch wraps)", 16: "bool ** int with negatives raises"}),
}
IDX = numpy.array([[0, 2, 1, 0], [1, 0, 2, 2]])
IMG = randn(2, 3, 7, 6)
SEQ = randn(2, 3, 9)
FLOAT_ONLY = {"relu", "sigmoid", "tanh"}  # gradflow's activations take float tensors only (deliberate)
BOOL_IDENTITY = {"ceil", "floor", "round", "trunc"}  # gradflow: identity on bool, torch refuses


def _unary_row(name, fn):
    return Row(name, fn, FLOATS if name.split(".")[-1] in FLOAT_ONLY else UNARY,
               skip=(lambda s: s[0].dtype == bool) if name.split(".")[-1] in BOOL_IDENTITY else None)


NEW_ROWS = [_unary_row(n, lambda m, x, n=n: getattr(m, n)(x)) for n in UNARY_NAMES] + \
    [_unary_row(f"Tensor.{n}", lambda m, x, n=n: getattr(x, n)()) for n in UNARY_NAMES if n not in ("exp2",)] + [
    Row("Tensor.exp2", lambda m, x: x.exp2(), UNARY),
    Row("Tensor.negative", lambda m, x: x.negative(), UNARY[:-2]),
    Row("Tensor.square", lambda m, x: x.square(), UNARY,
        known={6: "x * x: the gradient 2 g x is rounded differently at 5e-324 and 1e308", 9: "bool input gives bool"}),
    Row("Tensor.__invert__", lambda m, x: ~x, BITS),
    Row("bitwise_not", lambda m, x: m.bitwise_not(x), [(s[0],) for s in BITS]),
    ] + [Row(n, lambda m, a, b, n=n: getattr(m, n)(a, b), BINARY, **BINARY_OPTIONS.get(n, {})) for n in BINARY_NAMES] + \
    [Row(f"Tensor.{n}", lambda m, a, b, n=n: getattr(a, n)(b), T_FIRST, **T_FIRST_OPTIONS.get(n, {}))
     for n in BINARY_NAMES + CMP_NAMES + ["multiply", "div", "divide", "true_divide"]] + [
    Row("div", lambda m, a, b, r: m.div(a, b, rounding_mode=r), [s + (r,) for s in BINARY[:12] for r in (None, "trunc", "floor")],
        grad=False),
    # with a rounding mode the result of float tensors requires grad and the gradient is zero, as in torch
    Row("div rounding_mode grad", lambda m, a, b, r: m.div(a, b, rounding_mode=r),
        [s + (r,) for s in BINARY for r in ("trunc", "floor")]),
    Row("Tensor.__floordiv__", lambda m, a, b: a // b, BINARY, **BINARY_OPTIONS["floor_divide"]),
    Row("Tensor.__rfloordiv__", lambda m, a, b: b // a, T_FIRST[:12], grad=False),
    Row("Tensor.__mod__", lambda m, a, b: a % b, BINARY, **BINARY_OPTIONS["remainder"]),
    Row("Tensor.__rmod__", lambda m, a, b: b % a, T_FIRST[:12], grad=False),
    Row("Tensor.__and__", lambda m, a, b: a & b, BITS),
    Row("Tensor.__or__", lambda m, a, b: a | b, BITS),
    Row("Tensor.__xor__", lambda m, a, b: a ^ b, BITS),
    Row("Tensor.__rand__", lambda m, a, b: b & a, BITS[3:5]),
    Row("Tensor.__ror__", lambda m, a, b: b | a, BITS[3:5]),
    Row("Tensor.__rxor__", lambda m, a, b: b ^ a, BITS[3:5]),
    Row("bitwise_and", lambda m, a, b: m.bitwise_and(a, b), BITS),
    Row("bitwise_or", lambda m, a, b: m.bitwise_or(a, b), BITS),
    Row("bitwise_xor", lambda m, a, b: m.bitwise_xor(a, b), BITS),
    Row("logical_and", lambda m, a, b: m.logical_and(a, b), BITS[:3] + BITS[5:] + [(randn(3), randn(3))]),
    Row("logical_or", lambda m, a, b: m.logical_or(a, b), BITS[:3] + BITS[5:]),
    Row("clamp_max", lambda m, x, v: m.clamp_max(x, v), [(randn(3, 4), 0.5), (randint(4), 1), (randn(3), 0)]),
    Row("clamp_min", lambda m, x, v: m.clamp_min(x, v), [(randn(3, 4), 0.5), (randint(4), 1)]),
    Row("Tensor.clamp_max", lambda m, x, v: x.clamp_max(v), [(randn(3, 4), 0.5)]),
    Row("Tensor.clamp_min", lambda m, x, v: x.clamp_min(v), [(randn(3, 4), -0.5)]),
    Row("lerp", lambda m, a, b, w: m.lerp(a, b, w), [(randn(3), randn(3), 0.3), (randn(3), randn(2, 3), randn(3)),
                                                    (randn(3, dtype=f32), randn(3, dtype=f32), 0.7)]),
    Row("Tensor.lerp", lambda m, a, b, w: a.lerp(b, w), [(randn(3), randn(3), 0.6)]),
    Row("isclose", lambda m, a, b: m.isclose(a, b), [(randn(3), randn(3)), (EXTREME64, EXTREME64), (randn(3), randn(3) + 1e-9),
                                                    # different dtypes raise, as torch
                                                    (randint(3), randn(3, dtype=f32)), (randn(3, dtype=f32), randn(3)),
                                                    (numpy.array([0.1], numpy.float16), numpy.array([0.1], f32))]),
    Row("Tensor.isclose", lambda m, a, b: a.isclose(b, equal_nan=True), [(EXTREME64, EXTREME64)]),
    Row("allclose", lambda m, a, b: m.allclose(a, b), [(randn(3), randn(3)), (randn(3), randn(3) * 0 + 1),
                                                      (randint(3), randint(3).astype(f32))]),
    Row("Tensor.allclose", lambda m, a, b: a.allclose(b), [(randn(3), randn(3))]),
    Row("equal", lambda m, a, b: m.equal(a, b), [(randn(3), randn(3)), (randint(3), randint(3) * 1), (randn(2), randn(3))]),
    Row("Tensor.equal", lambda m, a: a.equal(a * 1), [(randn(3),)]),
    # ---- in place --------------------------------------------------------------------------------
    Row("add_", _method_or_fn("add_"), [(randn(3), randn(3)), (randn(2, 3), 2.0)], grad=False),
    Row("sub_", _method_or_fn("sub_"), [(randn(3), randn(3))], grad=False),
    Row("mul_", _method_or_fn("mul_"), [(randn(3), randn(3)), (randint(3), 2)], grad=False),
    Row("div_", _method_or_fn("div_"), [(randn(3), randn(3)), (randint(3), 2)], grad=False),
    Row("fill_", _method_or_fn("fill_"), [(randn(3), 2.5), (randint(3), 7)], grad=False),
    Row("zero_", _method_or_fn("zero_"), [(randn(3),), (randint(3),)], grad=False),
    ] + [Row(f"Tensor.{n}", _inplace_method(n), sets, grad=False) for n, sets in [
        ("add_", [(randn(3), randn(3)), (randint(3), 1.5)]), ("sub_", [(randn(3), randn(3))]),
        ("mul_", [(randn(3), 2.0)]), ("div_", [(randn(3), 4.0)]), ("clamp_", [(randn(4), -0.2, 0.3)]),
        ("clip_", [(randn(4), -0.2, 0.3)]), ("fill_", [(randn(3), 1.5)]), ("zero_", [(randn(3),)]),
        ("copy_", [(randn(2, 3), randn(3)), (randn(3), randint(3)), (randn(3), randn(4))])]] + [
    # ---- reductions and scans -------------------------------------------------------------------------
    Row("prod", lambda m, x, d: m.prod(x) if d is None else m.prod(x, d), dims(UNARY[:5], (None, 0, 1, -1, 2))),
    Row("Tensor.prod", lambda m, x: x.prod(1, keepdim=True), [(randn(3, 4),)]),
    Row("cumsum", lambda m, x, d: m.cumsum(x, d), dims(UNARY[:5] + INTS[:3], (0, 1, -1, 2))),
    Row("Tensor.cumsum", lambda m, x: x.cumsum(dim=0), [(randn(3, 4),)]),
    Row("cumprod", lambda m, x, d: m.cumprod(x, d), dims(UNARY[:2] + INTS[:1], (0, -1, 2))),
    Row("Tensor.cumprod", lambda m, x: x.cumprod(1), [(randn(3, 4),)]),
    Row("logsumexp", lambda m, x, d: m.logsumexp(x, d), dims(FLOATS, (0, 1, -1, 2, (0, 1)))),
    Row("Tensor.logsumexp", lambda m, x: x.logsumexp(1, keepdim=True), [(randn(3, 4),), (randn(3, 4) * 1e4,)]),
    Row("all", lambda m, x, d: m.all(x) if d is None else m.all(x, d), dims(UNARY, (None, 0, -1, 2))),
    Row("any", lambda m, x, d: m.any(x) if d is None else m.any(x, d), dims(UNARY, (None, 0, -1, 2))),
    Row("Tensor.all", lambda m, x: x.all(), [(boolean(3),)]),
    Row("Tensor.any", lambda m, x: x.any(dim=0), [(boolean(2, 3),)]),
    Row("norm", lambda m, x, p, d: m.norm(x, p, d), [(randn(3, 4), 2, None), (randn(3, 4), 1, 1), (randn(3, 4), "fro", None),
                                                     (randn(3, 4), float("inf"), 0), (randn(3, 4), 2, 3)]),
    Row("Tensor.norm", lambda m, x, p: x.norm(p), [(randn(3, 4), p) for p in (2, 1, "fro", float("inf"), 3)]),
    Row("sort", lambda m, x, d, desc: m.sort(x, dim=d, descending=desc, stable=True),
        [(randn(3, 5), d, desc) for d in (0, -1, 2) for desc in (False, True)] + [(randint(6), 0, False)]),
    Row("Tensor.sort", lambda m, x: x.sort(stable=True), [(randn(3, 5),)]),
    Row("argsort", lambda m, x, d: m.argsort(x, dim=d, stable=True), dims([(randn(3, 5),), (randint(7),)], (0, -1, 3))),
    Row("Tensor.argsort", lambda m, x: x.argsort(descending=True, stable=True), [(randn(6),)]),
    Row("topk", lambda m, x, k, d: m.topk(x, k, dim=d), [(randn(3, 5), 2, -1), (randn(3, 5), 3, 0), (randn(3, 5), 9, -1),
                                                        (randn(3, 5), 1, 2)]),
    Row("Tensor.topk", lambda m, x: x.topk(2, largest=False), [(randn(3, 5),)]),
    # ---- shapes and indexing ----------------------------------------------------------------------------
    Row("flip", lambda m, x, d: m.flip(x, d), [(randn(3, 4), (0,)), (randn(3, 4), (0, 1)), (randn(3, 4), (-1,)), (randn(3, 4), (2,))]),
    Row("Tensor.flip", lambda m, x: x.flip(1), [(randn(3, 4),)]),
    Row("roll", lambda m, x, s, d: m.roll(x, s, d), [(randn(3, 4), 1, 0), (randn(3, 4), -2, 1), (randn(3, 4), 5, None),
                                                     (randn(3, 4), (1, 2), (0, 1))]),
    Row("Tensor.roll", lambda m, x: x.roll(1, 1), [(randn(3, 4),)]),
    Row("Tensor.repeat", lambda m, x, r: x.repeat(*r), [(randn(2, 3), (2, 1)), (randn(3), (2, 2)), (randn(2, 3), (2,))]),
    Row("repeat", lambda m, x, r: m.repeat(x, *r) if m.name == "gradflow" else x.repeat(*r), [(randn(2, 3), (1, 2))]),
    Row("repeat_interleave", lambda m, x, r, d: m.repeat_interleave(x, m.tensor(r) if isinstance(r, list) else r, d),
        [(randn(2, 3), 2, None), (randn(2, 3), [1, 0, 2], 1), (randn(2, 3), 3, -2), (randn(0, 3), 2, 0)]),
    Row("Tensor.repeat_interleave", lambda m, x: x.repeat_interleave(2, dim=1), [(randn(3, 2),)]),
    Row("tile", lambda m, x, r: m.tile(x, r), [(randn(2, 3), (2,)), (randn(2, 3), (2, 1, 2)), (randn(3), ())]),
    Row("Tensor.tile", lambda m, x: x.tile(2, 1), [(randn(2, 3),)]),
    Row("chunk", lambda m, x, c, d: m.chunk(x, c, d), [(randn(5, 4), 2, 0), (randn(5, 4), 3, 1), (randn(5, 4), 9, 0), (randn(5, 4), 2, 2)]),
    Row("Tensor.chunk", lambda m, x: x.chunk(2), [(randn(5, 4),)]),
    Row("split", lambda m, x, s, d: m.split(x, s, d), [(randn(5, 4), 2, 0), (randn(5, 4), [1, 3], 1), (randn(5, 4), [2, 2], 0)]),
    Row("Tensor.split", lambda m, x: x.split(2, dim=1), [(randn(5, 4),)]),
    Row("unbind", lambda m, x, d: m.unbind(x, d), [(randn(2, 3), 0), (randn(2, 3), -1), (randn(2, 3), 2)]),
    Row("Tensor.unbind", lambda m, x: x.unbind(1), [(randn(2, 3),)]),
    Row("t", lambda m, x: m.t(x), [(randn(2, 3),), (randn(3),), (randn(2, 3, 4),)]),
    Row("Tensor.t", lambda m, x: x.t(), [(randn(2, 3),)]),
    Row("tril", lambda m, x, k: m.tril(x, k), [(randn(3, 4), 0), (randn(3, 4), 1), (randn(2, 3, 3), -1), (randn(3), 0)]),
    Row("triu", lambda m, x, k: m.triu(x, k), [(randn(3, 4), 0), (randn(3, 4), -1)]),
    Row("Tensor.tril", lambda m, x: x.tril(), [(randn(3, 3),)]),
    Row("Tensor.triu", lambda m, x: x.triu(1), [(randn(3, 3),)]),
    Row("Tensor.expand_as", lambda m, x, y: x.expand_as(y), [(randn(3, 1), randn(3, 4))]),
    Row("Tensor.view_as", lambda m, x, y: x.view_as(y), [(randn(3, 4), randn(2, 6))]),
    Row("Tensor.reshape_as", lambda m, x, y: x.reshape_as(y), [(randn(3, 4), randn(12))]),
    Row("gather", lambda m, x, d, i: m.gather(x, d, m.tensor(i)), [(randn(2, 3), 1, IDX[:, :3]), (randn(3, 4), 0, IDX),
                                                                  (randn(2, 3), 1, IDX + 5)]),
    Row("Tensor.gather", lambda m, x, i: x.gather(1, m.tensor(i)), [(randn(2, 3), IDX[:, :2])]),
    Row("scatter", lambda m, x, i, s: m.scatter(x, 1, m.tensor(i), s), [(randn(2, 4), IDX[:, :3], randn(2, 3)),
                                                                         (randn(2, 4), IDX[:, :2], 1.5)]),
    Row("Tensor.scatter", lambda m, x, i, s: x.scatter(1, m.tensor(i), s), [(randn(2, 4), IDX[:, :2], randn(2, 2))]),
    Row("scatter_add", lambda m, x, i, s: m.scatter_add(x, 1, m.tensor(i), s), [(randn(2, 4), IDX, randn(2, 4))]),
    Row("Tensor.scatter_add", lambda m, x, i, s: x.scatter_add(0, m.tensor(i), s), [(randn(3, 4), IDX, randn(2, 4))]),
    Row("index_add", lambda m, x, i, s: m.index_add(x, 1, m.tensor(i), s, alpha=2.0),
        [(randn(2, 4), numpy.array([3, 0, 3]), randn(2, 3)), (randn(3, 4), numpy.array([], numpy.int64), randn(3, 0))]),
    Row("Tensor.index_add", lambda m, x, i, s: x.index_add(0, m.tensor(i), s), [(randn(3, 4), IDX[0], randn(4, 4))]),
    Row("Tensor.index_add_", lambda m, x, i, s: (x * 1).index_add_(-1, m.tensor(i), s, alpha=0.5),
        [(randn(3, 4), IDX[1], randn(3, 4))]),
    Row("masked_fill", lambda m, x, v: m.masked_fill(x, x > 0, v), [(randn(3, 4), 0.0), (randn(3, 4), -inf), (randint(5), 9)]),
    Row("Tensor.masked_fill", lambda m, x: x.masked_fill(x < 0, 1.5), [(randn(3, 4),)]),
    Row("clone", lambda m, x: m.clone(x), UNARY),
    Row("Tensor.clone", lambda m, x: x.clone(), [(randn(3),)]),
    Row("contiguous", lambda m, x: m.clone(x).contiguous() if m.name == "torch" else m.contiguous(x), [(randn(3, 2),)]),
    Row("Tensor.contiguous", lambda m, x: x.T.contiguous(), [(randn(3, 2),)]),
    Row("Tensor.is_contiguous", lambda m, x: (x.is_contiguous(), x.T.is_contiguous()), [(randn(3, 2),)]),
    Row("bmm", lambda m, a, b: m.bmm(a, b), [(randn(2, 3, 4), randn(2, 4, 5)), (randn(3, 4), randn(4, 5)), (randn(2, 3, 4), randn(3, 4, 5))]),
    Row("einsum", lambda m, eq, *xs: m.einsum(eq, *xs), [("ij,jk->ik", randn(2, 3), randn(3, 4)), ("ii->", randn(3, 3)),
                                                          ("bij->bji", randn(2, 3, 4)), ("i,i->", randn(3), randn(3))]),
    Row("meshgrid", lambda m, a, b, ix: m.meshgrid(a, b, indexing=ix), [(randn(3), randn(2), "ij"), (randn(3), randn(2), "xy")]),
    # ---- dtypes and properties ----------------------------------------------------------------------------------
    ] + [Row(f"Tensor.{n}", lambda m, x, n=n: getattr(x, n)(), [(randn(3),), (randint(3),), (boolean(3),)])
         for n in ("bool", "int", "long", "half")] + [
    Row("Tensor.bfloat16", lambda m, x: x.bfloat16().float(), [(randn(3),)]),
    Row("Tensor.element_size", lambda m, x: x.element_size(), UNARY),
    Row("Tensor.is_floating_point", lambda m, x: x.is_floating_point(), UNARY),
    Row("Tensor.is_cuda", lambda m, x: x.is_cuda, [(randn(2),)]),
    Row("Tensor.ndimension", lambda m, x: x.ndimension(), UNARY),
    Row("Tensor.nelement", lambda m, x: x.nelement(), UNARY),
    Row("Tensor.type", lambda m, x, d: x.type(getattr(m, d)) if d else x.type(), [(randn(3), "float32"), (randint(3), None)]),
    Row("Tensor.softmax", lambda m, x, d: x.softmax(d), dims(FLOATS[:3], (0, -1, 2))),
    Row("Tensor.log_softmax", lambda m, x, d: x.log_softmax(d), dims(FLOATS[:3], (0, -1, 2))),
    Row("softmax", lambda m, x: m.softmax(x, 0), [(randn(3, 4),)]),
    Row("log_softmax", lambda m, x: m.log_softmax(x, -1), [(randn(3, 4),)]),
    Row("Tensor.register_hook", _hook, [(randn(3),)], grad=False),
    Row("Tensor.register_post_accumulate_grad_hook", _post_hook, [(randn(3),)], grad=False),
    Row("Tensor.__dlpack__", _dlpack, [(randn(3),), (randint(2, 2),)], grad=False),
    Row("from_dlpack", lambda m, x: m.from_dlpack(x), [(randn(3),)], grad=False),
    Row("inference_mode", _grad_mode, [("inference_mode",)]),
    Row("set_grad_enabled", _grad_mode, [("set_grad_enabled",)]),
    Row("set_default_dtype", _default_dtype, [("float64",), ("float32",)]),
    Row("device", lambda m, d: str(m.device(d)), [("cpu",)]),
    Row("linspace", lambda m, *a: m.linspace(*a), [(0, 1, 5), (-2.0, 2.0, 1), (3, -3, 4)]),
    Row("logspace", lambda m, *a: m.logspace(*a), [(0, 2, 3), (-1.0, 1.0, 5, 2.0)]),
    Row("full_like", lambda m, x, v: m.full_like(x, v), [(randn(2, 3), 1.5), (randint(3), 7), (randint(3), 2.5)]),
    Row("empty_like", lambda m, x: _meta(m.empty_like(x)), UNARY),
    Row("rand_like", lambda m, x: _meta(m.rand_like(x), 0, 1), FLOATS[:2]),
    Row("randn_like", lambda m, x: _meta(m.randn_like(x)), FLOATS[:2]),
    Row("randint_like", lambda m, x: _meta(m.randint_like(x, 0, 4), 0, 4), [(randn(3, 2),), (randint(5),)]),
    Row("randperm", lambda m, n: (_meta(m.randperm(n)), sorted(m.randperm(n).tolist())), [(5,), (0,)]),
    Row("Tensor.normal_", lambda m, x: _meta(x.detach().normal_(0.0, 2.0)), [(randn(4, 3),)]),
    Row("Tensor.uniform_", lambda m, x: _meta(x.detach().uniform_(-1.0, 1.0), -1, 1), [(randn(4, 3),)]),
    # ---- nn.functional: convolution, pooling, normalisation, embedding ---------------------------------------
    Row("F.conv1d", lambda m, x, w, b, s, p, d, g: m.F.conv1d(x, w, b, s, p, d, g),
        [(SEQ, randn(4, 3, 3), randn(4), 1, 0, 1, 1), (SEQ, randn(6, 1, 2), None, 2, 1, 2, 3), (SEQ, randn(4, 2, 3), None, 1, 0, 1, 1)]),
    Row("F.conv2d", lambda m, x, w, b, s, p, d, g: m.F.conv2d(x, w, b, s, p, d, g),
        [(IMG, randn(4, 3, 3, 3), randn(4), 1, 1, 1, 1), (IMG, randn(3, 1, 2, 3), None, (2, 1), (0, 1), 1, 3),
         (IMG, randn(2, 3, 3, 3), None, 1, 0, 2, 1), (IMG, randn(4, 3, 9, 9), None, 1, 0, 1, 1)]),
    Row("F.conv_transpose1d", lambda m, x, w, s, p, op: m.F.conv_transpose1d(x, w, None, s, p, op),
        [(SEQ, randn(3, 2, 3), 1, 0, 0), (SEQ, randn(3, 4, 2), 2, 1, 1)]),
    Row("F.conv_transpose2d", lambda m, x, w, b, s, p: m.F.conv_transpose2d(x, w, b, s, p),
        [(IMG, randn(3, 2, 3, 3), randn(2), 1, 0), (IMG, randn(3, 4, 2, 2), None, 2, 1)]),
    Row("F.avg_pool1d", lambda m, x, k, s, p: m.F.avg_pool1d(x, k, s, p), [(SEQ, 2, None, 0), (SEQ, 3, 2, 1)]),
    Row("F.avg_pool2d", lambda m, x, k, s, p, c: m.F.avg_pool2d(x, k, s, p, ceil_mode=c),
        [(IMG, 2, None, 0, False), (IMG, 3, 2, 1, False), (IMG, (2, 3), 1, 0, True)]),
    Row("F.max_pool1d", lambda m, x, k, s: m.F.max_pool1d(x, k, s), [(SEQ, 2, None), (SEQ, 3, 1)]),
    Row("F.max_pool2d", lambda m, x, k, s, p, ri: m.F.max_pool2d(x, k, s, p, return_indices=ri),
        [(IMG, 2, None, 0, False), (IMG, 3, 2, 1, True), (IMG, (2, 3), 1, 0, False)]),
    Row("F.adaptive_avg_pool1d", lambda m, x, o: m.F.adaptive_avg_pool1d(x, o), [(SEQ, 3), (SEQ, 4), (SEQ, 1)]),
    Row("F.adaptive_avg_pool2d", lambda m, x, o: m.F.adaptive_avg_pool2d(x, o), [(IMG, (2, 3)), (IMG, 1), (IMG, (4, 4))]),
    Row("F.batch_norm", lambda m, x, rm, rv, w, b, t: m.F.batch_norm(  # running stats as tuples: torch refuses grads
        x, rm and m.tensor(numpy.array(rm)), rv and m.tensor(numpy.array(rv)), w, b, training=t),
        [(IMG, (.1, .1, .1), (2.0, 2.0, 2.0), randn(3), randn(3), False),
         (IMG, None, None, randn(3), randn(3), True), (randn(4, 3), None, None, None, None, True)]),
    Row("F.layer_norm", lambda m, x, s, w, b: m.F.layer_norm(x, s, w, b),
        [(randn(2, 3, 4), (4,), randn(4), randn(4)), (randn(2, 3, 4), (3, 4), None, None), (randn(2, 3, 4), (5,), None, None)]),
    Row("F.group_norm", lambda m, x, g, w, b: m.F.group_norm(x, g, w, b),
        [(randn(2, 4, 3), 2, randn(4), randn(4)), (randn(2, 6, 2, 2), 3, None, None), (randn(2, 4, 3), 3, None, None)]),
    Row("F.embedding", lambda m, i, w, p: m.F.embedding(m.tensor(i), w, padding_idx=p),
        [(numpy.array([[0, 2], [4, 2]]), randn(5, 3), None), (numpy.array([1, 1, 0]), randn(3, 2), 1),
         (numpy.array([5]), randn(3, 2), None)]),
    Row("F.dropout2d", lambda m, x, p, t: m.F.dropout2d(x, p, training=t), [(IMG, 0.5, False), (IMG, 0.0, True)]),
    # the deterministic cases of the channel-wise and alpha dropouts: eval, p = 0, p = 1, shape and p errors
    Row("F.dropout1d", lambda m, x, p, t: m.F.dropout1d(x, p, training=t),
        [(randn(2, 3, 4), 0.5, False), (randn(3, 4), 0.0, True), (randn(2, 3, 4), 1.0, True), (randn(5), 0.5, True),
         (randn(2, 3, 4, 5), 0.5, False), (randn(3, 4), 1.5, True)]),
    Row("F.dropout3d", lambda m, x, p, t: m.F.dropout3d(x, p, training=t),
        [(randn(2, 3, 2, 2, 2), 0.5, False), (randn(3, 2, 2, 2), 0.0, True), (randn(2, 3, 2, 2, 2), 1.0, True),
         (randn(3, 2, 2, 2), 1.0, True), (randn(3, 2, 2, 2), -0.5, True)]),
    Row("F.alpha_dropout", lambda m, x, p, t: m.F.alpha_dropout(x, p, training=t),
        [(randn(3, 4), 0.5, False), (randn(3, 4), 0.0, True), (randn(3, 4), 1.0, True), (randn(3), 1.5, True)]),
    Row("F.feature_alpha_dropout", lambda m, x, p, t: m.F.feature_alpha_dropout(x, p, training=t),
        [(randn(2, 3, 4), 0.5, False), (randn(2, 3), 0.0, True), (randn(2, 3, 4), 1.0, True), (randn(5), 0.5, True),
         (randn(3), 1.5, True)]),
    # ---- nn.functional: more activations, distances, padding -------------------------------------------------
    # torch's CPU kernels use float constants (1.0f / 6.0f, 1 / alpha) in float64 gradients: 3e-8 relative error
    Row("F.celu", lambda m, x: m.F.celu(x, alpha=0.7), ACT, rtol=1e-7),
    Row("F.hardsigmoid", lambda m, x: m.F.hardsigmoid(x), ACT, rtol=1e-7),
    Row("F.hardswish", lambda m, x: m.F.hardswish(x), ACT),
    Row("F.hardtanh", lambda m, x: m.F.hardtanh(x, -0.5, 2.0), ACT),
    Row("F.relu6", lambda m, x: m.F.relu6(x), ACT),
    Row("F.silu", lambda m, x: m.F.silu(x), ACT),
    Row("F.mish", lambda m, x: m.F.mish(x), ACT[:5]),
    Row("F.logsigmoid", lambda m, x: m.F.logsigmoid(x), ACT),
    Row("F.softsign", lambda m, x: m.F.softsign(x), ACT,
        known={6: "gradient at ±inf is the limit 0 (torch: NaN) and at ±3e38 rounds differently"}),
    Row("F.softmin", lambda m, x, d: m.F.softmin(x, dim=d), dims(FLOATS[:3], (0, -1, 2))),
    Row("F.normalize", lambda m, x, p, d: m.F.normalize(x, p, d), [(randn(3, 4), 2.0, 1), (randn(3, 4), 1.0, 0),
                                                                  (numpy.zeros((2, 3)), 2.0, 1), (randn(3, 4), 2.0, 2)]),
    Row("F.cosine_similarity", lambda m, a, b, d: m.F.cosine_similarity(a, b, dim=d),
        [(randn(3, 4), randn(3, 4), 1), (randn(3, 4), randn(1, 4), 1), (randn(3, 4), randn(3, 4), 0)]),
    Row("F.kl_div", lambda m, x, t, r, lt: m.F.kl_div(x, t, reduction=r, log_target=lt),
        [(numpy.log(PROBS), PROBS, r, False) for r in ("mean", "sum", "none", "batchmean")] +
        [(numpy.log(PROBS), numpy.log(PROBS[::-1].copy()), "sum", True), (numpy.log(PROBS), numpy.zeros((4, 3)), "mean", False)]),
    Row("F.pad", lambda m, x, p, mode, v: m.F.pad(x, p, mode=mode, value=v),
        [(randn(2, 3), (1, 2), "constant", None), (randn(2, 3, 4), (1, 0, 2, 1), "constant", 1.5),
         (randn(2, 3), (-1, 1), "constant", None), (randn(1, 2, 5), (2, 1), "reflect", None),
         (randn(1, 2, 5), (2, 1), "replicate", None)],
        known={3: "mode='reflect' raises NotImplementedError", 4: "mode='replicate' raises NotImplementedError"}),
]

# Public names that are gradflow-only or not comparable value for value, and why.
NOT_COMPARED = {
    "CaptureError": "gradflow.compile's error type", "compile": "gradflow-only (whole-step CUDA-graph capture)",
    "compile_invalidate": "gradflow-only", "replay_as_call": "gradflow-only", "cuda_is_available": "environment query",
    "gradcheck": "tested against finite differences in test_autograd", "gradgradcheck": "as gradcheck",
    "save": "serialization (test_serialization)", "load": "serialization (test_serialization)",
    "manual_seed": "gradflow's generator is Philox/NumPy: same seeding API, different streams (deliberate)",
    "Function": "custom-op API (test_autograd)", "Tensor": "its methods have rows",
    "OpError": "exception type", "DTypeError": "exception type",
    "Tensor.astype": "NumPy spelling of Tensor.to(dtype), which has a row",
    "Tensor.cuda": "needs a GPU (test_kernels_gpu)", "Tensor.creator": "gradflow's tape (torch: grad_fn)",
    "Tensor.generation": "tape internals", "Tensor.grad": "compared by the backward rows",
    "Tensor.requires_grad": "compared on every result",
    "F.accuracy": "gradflow-only metric", "F.misclassification_rate": "gradflow-only metric",
    "F.l1_penalty": "gradflow-only regulariser", "F.l2_penalty": "gradflow-only regulariser",
    "F.noisy_relu": "gradflow-only random activation (test_activation)",
    "Tensor.grad_fn": "gradflow's tape object (a Function), not torch's Node", "set_printoptions": "printing only",
    "get_default_dtype": "compared by the set_default_dtype row", "is_inference_mode_enabled": "inference_mode row",
    "Tensor.__dlpack_device__": "compared by the Tensor.__dlpack__ row",
    "Generator": "gradflow's Philox generator: torch.Generator's API, different streams (test_random)",
    "save_safetensors": "serialization (test_interop)", "load_safetensors": "serialization (test_interop)",
}
DTYPES = {"bool", "bool_", "bfloat16", "double", "float", "half", "int", "long", "short", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"}


NEW_ROWS += [  # issue 13: the new activations and nn.functional helpers
    Row("F.silu", lambda m, x: m.F.silu(x), ACT),
    Row("F.mish", lambda m, x: m.F.mish(x), ACT),
    Row("F.softsign", lambda m, x: m.F.softsign(x), ACT,
        known={6: "torch differentiates x / (|x| + 1) as a composite: 3e-55 and nan from cancellation and inf / inf "
                  "at |x| >= 3e38; gradflow's g / (1 + |x|)^2 is exact (about 1e-77, then 0)"}),
    Row("xlogy", lambda m, a, b: m.xlogy(a, b),
        [(randn(3, 4), numpy.abs(randn(3, 4))), (numpy.array([0.0, 0.0, 1.0, 2.0]), numpy.array([0.0, nan, 0.0, 3.0])),
         (randn(3, 1), numpy.abs(randn(4)) + 0.1), (randint(3), numpy.abs(randn(3, dtype=f32)) + 0.5),
         (randn(3, dtype=f32), numpy.abs(randn(3, dtype=f32)))]),
    Row("F.logsigmoid", lambda m, x: m.F.logsigmoid(x), ACT),
    Row("F.hardswish", lambda m, x: m.F.hardswish(x), ACT),
    # torch's float64 hardsigmoid/celu gradients use float32 constants (1.0f/6, 1.0 / alpha.toFloat())
    Row("F.hardsigmoid", lambda m, x: m.F.hardsigmoid(x), ACT, rtol=1e-7),
    Row("F.celu", lambda m, x: m.F.celu(x, 0.7), ACT, rtol=1e-7),
    Row("F.hardtanh", lambda m, x: m.F.hardtanh(x, -0.5, 2.0), ACT),
    Row("F.relu6", lambda m, x: m.F.relu6(x), ACT),
    Row("F.softmin", lambda m, x, d: m.F.softmin(x, d), [(randn(3, 4), 1), (randn(3, 4, dtype=f32), 0), (randn(5), -1)]),
    Row("F.pad", lambda m, x, p, v: m.F.pad(x, p, value=v),
        [(randn(2, 3), (1, 2), None), (randn(2, 3, 4), (1, 0, 2, 1), -1.5), (randn(2, 3), (-1, 2), None),
         (randint(2, 3), (1, 1), 7), (randn(2, 3, dtype=f32), (0, 0, 1, 1), 0.5)]),
    Row("F.normalize", lambda m, x, p, d: m.F.normalize(x, p=p, dim=d),
        [(randn(3, 4), 2.0, 1), (randn(3, 4), 1, 0), (randn(3, 4, dtype=f32), 2.0, -1), (numpy.zeros((2, 3)), 2.0, 1)]),
    Row("F.cosine_similarity", lambda m, a, b, d: m.F.cosine_similarity(a, b, dim=d),
        [(randn(3, 4), randn(3, 4), 1), (randn(2, 3, 4), randn(4), -1), (randn(3, 4, dtype=f32), randn(3, 4, dtype=f32), 0)]),
    Row("F.kl_div", lambda m, a, b, r, lt: m.F.kl_div(a, b, reduction=r, log_target=lt),
        [(randn(3, 4), numpy.abs(randn(3, 4)), r, False) for r in ("mean", "batchmean", "sum", "none")] +
        [(randn(3, 4), randn(3, 4), "sum", True), (randn(3, 4), numpy.zeros((3, 4)), "mean", False)]),
    Row("norm", lambda m, x, p, d: m.norm(x, p, d), [(randn(3, 4), 2, None), (randn(3, 4), 1, 0), (randn(3, 4), "fro", 1)]),
]
NOT_COMPARED["Generator"] = "gradflow's streams differ from torch's by design (see manual_seed); seeding API only"

ROWS += NEW_ROWS  # issue 13/14 names (API breadth; conv, pooling, norm layers)


# ---- folded from the former tests/test_torch_parity_api.py (issue 13's simpler table) ----------------------
def ties(*shape):
    """Small integers as float64: sorts and comparisons with equal keys (stable order, eq/ne/le)."""
    return randint(*shape, low=-3, high=3).astype(f64)


MASK = numpy.array([[True, False, True, False], [False, False, True, True], [True, True, False, False]])
MASK_F = MASK.astype(f64)  # columns with one and with two zeros: prod/cumprod gradients through zeros
IDX_NEG = randint(3, 4, low=-9, high=9)


def more(name, sets):
    """Extra input sets for the existing row ``name`` (one row per public name)."""
    rows = [row for row in ROWS if row.name == name]
    assert rows, f"no row named {name!r}"
    rows[0].inputs = rows[0].inputs + sets


more("div", [(IDX_NEG, randint(4, low=1, high=5), r) for r in (None, "trunc", "floor")])
more("Tensor.__mod__", [(IDX_NEG, randint(4, low=1, high=4)), (randn(3, 4), numpy.abs(randn(4)) + 0.5)])
more("Tensor.__floordiv__", [(IDX_NEG, randint(4, low=1, high=4))])
# true division casts each integer operand to float from its own value: a 0-d tensor or Python int the other
# operand's dtype cannot hold is not wrapped first (uint8 / tensor(-1) gave 1/255, int32 / tensor(2**40) inf)
INT_DIV = [(numpy.array([1, 2], numpy.uint8), numpy.array(-1)), (numpy.array([1, 2], i32), numpy.array(2 ** 40)),
           (numpy.array([1, 2], i32), 2 ** 40), (numpy.array([3, 200], numpy.uint8), -3), (numpy.array(-1), numpy.array([1, 2], numpy.uint8))]
more("Tensor.__truediv__", INT_DIV)
more("div", [s + (None,) for s in INT_DIV])
more("Tensor.div", INT_DIV)
more("Tensor.true_divide", INT_DIV)
more("Tensor.__or__", [(boolean(3, 4), boolean(4))])
# NumPy scalars are numbers, as in torch: x32.clamp(min=numpy.float64(0.5)) and x32 ** numpy.float64(0.5) were
# float64, full((2,), numpy.int64(3)) float32
more("Tensor.clamp", [(randn(4, dtype=f32), numpy.float64(-0.5), numpy.float64(0.5)), (randint(4), numpy.float32(0.5), None),
                      (randn(4, dtype=f32), None, numpy.int64(0)), (randn(4), numpy.float32(-0.1), None)])
more("Tensor.__pow__", [(numpy.abs(randn(3, dtype=f32)), numpy.float64(0.5)), (randint(3, low=1), numpy.float64(0.5)),
                        (randn(3), numpy.float32(2.0)), (randn(3, dtype=f32), numpy.int64(3))])
more("full", [((2,), numpy.int64(3)), ((2,), numpy.int32(3)), ((2,), numpy.float64(0.1)), ((2,), numpy.bool_(True))])
# lerp's tensors share one float dtype, as torch's (float32 with float64 returned float64, int64 returned ints)
more("lerp", [(randn(3, dtype=f32), randn(3), 0.5), (randn(3), randn(3), randn(3, dtype=f32)), (randint(3), randint(3), 0.5),
              (randn(4), randn(4), numpy.array([0.0, 0.49, 0.5, 1.0])), (randn(2, 3), randn(3), 1.0), (randn(3), randn(3), -0.7)])
# all/any of uint8 give uint8, as torch's (bool for every other dtype)
U8 = numpy.array([[0, 3, 255], [1, 2, 4]], numpy.uint8)
for name in ("all", "any"):
    more(name, [(U8, None), (U8, 0), (U8, -1)])
more("Tensor.all", [(U8,)])
more("Tensor.any", [(U8,)])
more("Tensor.eq", [(ties(3, 4), ties(4))])
more("Tensor.ne", [(ties(3, 4), ties(4))])
more("Tensor.le", [(ties(3, 4), ties(3, 4))])
more("sort", [(ties(6, 3), 0, True), (ties(3, 8), -1, False)])
more("argsort", [(ties(5, 3), 0), (ties(3, 8), -1)])
more("Tensor.argsort", [(randint(3, 7, low=0, high=5),), (ties(9),)])
more("cumprod", [(randn(3, 4) * MASK_F, 1), (randn(3, 4) * MASK_F, 0)])
# long scans accumulate as torch's CPU kernels: float32 in float64, float16 in float32 (the float16 cumsum of
# 100 normal values drifted by up to 9 % in float16, the float32 one by ~1e-6 absolute per few hundred terms)
more("cumsum", [(randn(2, 3000, dtype=f32), 1), (randn(300, 2, dtype=numpy.float16), 0)])
# float16 norms accumulate in float32 as torch's (the squares of [300, 300] overflowed: inf, torch 424.2)
HALF_BIG = numpy.array([[300.0, 300.0, -2.0], [1e-3, 0.0, 6e4]], numpy.float16)
more("Tensor.norm", [(HALF_BIG, p) for p in (2, 1, inf, 3)])
more("norm", [(HALF_BIG, 2, 1), (HALF_BIG, "fro", None), (HALF_BIG, 1, 0)])
# float16 var/std accumulate in float32 as torch's (the float16 std of [300, -300, 10] was inf, torch 300)
HALF_SPREAD = numpy.array([[300.0, -300.0, 10.0, 0.5], [1e-3, 2e-3, -1e-3, 0.0]], numpy.float16)
for name in ("var", "std"):
    more(name, [(HALF_SPREAD, None), (HALF_SPREAD, 1), (HALF_SPREAD, 0)])
more("cumprod", [(1 + randn(2, 300, dtype=f32, scale=0.01), -1), (1 + randn(200, dtype=numpy.float16, scale=0.01), 0)])
# prod(dtype=) keeps an integer dtype (NumPy widened int32, int16 and int8 to int64)
ROWS.append(Row("prod dtype", lambda m, x, d, dt: m.prod(x, d, dtype=getattr(m, dt)) if d is not None else m.prod(x, dtype=getattr(m, dt)),
                [(randint(4), 0, "int32"), (randint(2, 3), None, "int16"), (randint(3, dtype=i32), 0, "int8"),
                 (randint(3), 0, "float64"), (randn(3, dtype=f32), None, "float64"), (boolean(3), 0, "int32")]))
more("prod", [(randn(3, 4) * MASK_F, 0), (randn(3, 4) * MASK_F, 1), (randn(3, 4) * MASK_F[:, :1], None)])
more("einsum", [("bij,bjk->bik", randn(2, 3, 4), randn(2, 4, 5)), ("ij,kj", randn(3, 4), randn(2, 4)),
                ("ij->j", randn(3, 4)), ("...i,...j->...ij", randn(2, 3), randn(2, 4)),
                ("iij,jk->ik", randn(3, 3, 4), randn(4, 2)), ("ii->i", randn(3, 3)),
                ("ij,jk", randn(2, 3, dtype=f32), randn(3, 2)), ("i,i", randint(3), randn(3, dtype=f32))])  # raise
more("F.kl_div", [(randn(3, 4), numpy.abs(randn(3, 4)) * MASK_F, "mean", False)])
more("F.cross_entropy", [(randn(2, 5, 3, 2), randint(2, 3, 2, low=0, high=5), "mean", -100, 0.1),
                         (randn(2, 5, 4), numpy.array([[1, -100, 2, 4], [-100, 3, 3, 0]]), "mean", -100, 0.3),
                         (randn(5), numpy.array(2), "none", -100, 0.1)])
# float16 times or divided by a scalar: torch's mul/div kernels read a Python number or a 0-d tensor of another dtype at
# float32 precision (opmath) and round once; rounding 0.1 to float16 first gave a result one float16 ulp off in a
# third of the elements
HALF_GRID = numpy.linspace(0.5, 8.0, 64).astype(numpy.float16)
HALF_SCALARS = [(HALF_GRID, v) for v in (0.1, 0.7071067811865476, 1 / 3, 4097, numpy.array(0.7071067811865476, f32),
                                         numpy.array(0.1, f32), numpy.array(4097), numpy.array(0.3, numpy.float16))]
# bfloat16 sums and means accumulate in float32, as float16's and torch's (the sum of 300 times 0.1 was 32, torch 30;
# mean raised)
BF16_SETS = [(numpy.full((2, 300), 0.1, f32), d) for d in (None, 1, 0)] + [(randn(3, 500, dtype=f32), d) for d in (None, 1, -2)]
ROWS += [
    Row("Tensor.sum bfloat16", lambda m, x, d: (x.bfloat16().sum() if d is None else x.bfloat16().sum(d)).float(), BF16_SETS),
    Row("Tensor.mean bfloat16", lambda m, x, d: (x.bfloat16().mean() if d is None else x.bfloat16().mean(d)).float(), BF16_SETS),
]
ROWS += [
    Row("Tensor.__mul__ float16 by a scalar", lambda m, a, b: a * b, HALF_SCALARS),
    Row("Tensor.__rmul__ float16 by a scalar", lambda m, a, b: b * a, HALF_SCALARS),
    Row("Tensor.__truediv__ float16 by a scalar", lambda m, a, b: a / b, HALF_SCALARS),
    Row("div float16 by a scalar", lambda m, a, b, r: m.div(a, b, rounding_mode=r), [s + (r,) for s in HALF_SCALARS[:3]
                                                                                      for r in ("floor", "trunc")]),
    Row("Tensor.__floordiv__ float16 by a scalar", lambda m, a, b: a // b, HALF_SCALARS[:4], grad=False),
    Row("Tensor.mul_ float16 by a scalar", lambda m, a, b: a.clone().mul_(b), HALF_SCALARS, grad=False),
    Row("Tensor.__itruediv__ float16 by a scalar", _inplace("/"), HALF_SCALARS, grad=False),
]
# //=, %=, **=, &=, |=, ^= update the tensor in place, as torch's: without them Python rebound the name to a new
# tensor, so a view or another name of it kept the old value
ALIAS_DIV = [(IDX_NEG, randint(4, low=1, high=4)), (randn(3, 4), numpy.abs(randn(4)) + 0.5), (randn(3), 0.7), (randint(3), 0),
             (randint(3), 2.5), (randn(3, dtype=f32), 2)]
ROWS += [
    Row("Tensor.__ifloordiv__", _inplace_aliased("//"), ALIAS_DIV, grad=False),
    Row("Tensor.__imod__", _inplace_aliased("%"), ALIAS_DIV),
    Row("Tensor.__ipow__", _inplace_aliased("**"), [(randn(3), 2), (numpy.abs(randn(3)) + 0.1, randn(3)), (randint(3, low=0), 2),
                                                    (randint(3), 0.5), (randn(3, dtype=f32), 3.0)]),
    Row("Tensor.__iand__", _inplace_aliased("&"), BITS),
    Row("Tensor.__ior__", _inplace_aliased("|"), BITS),
    Row("Tensor.__ixor__", _inplace_aliased("^"), BITS),
]
# dtype= of sum, mean, softmax and log_softmax casts the input first, as torch's (the keyword raised TypeError)
DTYPE_ARG = [(randn(3, 4, dtype=f32), "float64"), (randint(3, 4), "float32"), (randn(3, 4), "float32"), (boolean(3, 4), "int32")]
ROWS += [
    Row("sum dtype", lambda m, x, dt: m.sum(x, 1, dtype=getattr(m, dt)), DTYPE_ARG),
    Row("Tensor.sum dtype", lambda m, x, dt: x.sum(dtype=getattr(m, dt)), DTYPE_ARG),
    Row("mean dtype", lambda m, x, dt: m.mean(x, dim=0, dtype=getattr(m, dt)), DTYPE_ARG),
    Row("Tensor.mean dtype", lambda m, x, dt: x.mean(dtype=getattr(m, dt)), DTYPE_ARG),
    Row("F.softmax dtype", lambda m, x, dt: m.F.softmax(x, dim=-1, dtype=getattr(m, dt)), DTYPE_ARG),
    Row("F.log_softmax dtype", lambda m, x, dt: m.F.log_softmax(x, 1, dtype=getattr(m, dt)), DTYPE_ARG),
    Row("Tensor.softmax dtype", lambda m, x, dt: x.softmax(0, dtype=getattr(m, dt)), DTYPE_ARG),
    Row("Tensor.log_softmax dtype", lambda m, x, dt: x.log_softmax(-1, dtype=getattr(m, dt)), DTYPE_ARG),
]
# float32 log10 of powers of ten is exact, as torch's (NumPy's float32 log10 was 1 ulp off: floor(log10(1e-3)) gave -4)
POW10 = numpy.array([10.0 ** k for k in range(-10, 11)], f32)
ROWS += [
    Row("log10 powers of ten", lambda m, x: (m.floor(m.log10(x)), m.ceil(m.log10(x)), m.log10(x) == m.round(m.log10(x))),
        [(POW10,), (POW10.astype(f64),), (numpy.array([10 ** k for k in range(10)]),)], grad=False),
]
# indices as torch reads them: a uint8 tensor or array is a mask (it took rows 1, 0, 1), a list holding lists, tensors,
# slices or None is a tuple (x[[[0, 1], [1, 2]]] is x[[0, 1], [1, 2]]: it was a 2-d index), an empty list indexes
# nothing, a negative step raises; an index assignment refuses a uint8 mask, as torch
U8_MASK = numpy.array([1, 0, 1], numpy.uint8)
ROWS += [
    Row("Tensor.__getitem__ torch index forms", lambda m, x, i: x[i() if callable(i) else i],
        [(randn(3, 4), lambda: U8_MASK), (randn(3, 4), lambda: [[0, 1], [1, 2]]), (randn(3, 4), lambda: [0, [1, 2]]),
         (randn(3, 4), lambda: [[[0, 1], [1, 2]]]), (randn(3, 4), lambda: [None, 0]), (randn(3, 4), lambda: [[0, 1], slice(None)]),
         (randn(3, 4), lambda: [[0], [1]]), (randn(3, 4), lambda: []), (randn(3, 4), lambda: [0, 1]),
         (randn(3, 4), lambda: slice(None, None, -1)), (randn(3, 4), lambda: (slice(None), slice(3, 0, -2)))]),
    Row("Tensor.__getitem__ uint8 tensor mask", lambda m, x: x[m.tensor(U8_MASK)], [(randn(3, 4),), (randn(3),)]),
    Row("Tensor.__setitem__ torch index forms", lambda m, x, i, v: _set(m, x, i() if callable(i) else i, v),
        [(randn(3, 4), lambda: [[0, 1], [1, 2]], 5.0), (randn(3, 4), lambda: U8_MASK, 1.0), (randn(3, 4), lambda: [], 2.0),
         (randn(3, 4), lambda: slice(None, None, -1), 0.0)], grad=False),
]
ROWS += [
    Row("Tensor.round decimals", lambda m, x, d: x.round(decimals=d), [(randn(3, 4), 2), (randn(3, 4, dtype=f32) * 50, -1)]),
    Row("Tensor.add alpha", lambda m, a, b, al: a.add(b, alpha=al), [(randn(3, 4), randn(4), 2), (randint(3), randint(3), 3)]),
    Row("Tensor.sub alpha", lambda m, a, b, al: a.sub(b, alpha=al), [(randn(3, 4), randn(3, 1), 0.5)]),
    Row("Tensor.div rounding_mode", lambda m, a, b, r: a.div(b, rounding_mode=r),
        [(IDX_NEG, randint(4, low=1, high=5), r) for r in ("trunc", "floor")]),
    Row("Tensor.all dim", lambda m, x, d: x.all(dim=d), [(boolean(3, 4), 1)]),
    Row("any keepdim", lambda m, x, d: m.any(x, d, keepdim=True), [(boolean(3, 4), 0)]),
    Row("Tensor.expand -1", lambda m, x, s: x.expand(*s), [(randn(3, 1), (2, -1, 4)), (randn(3, 1), (2, 3, 4))]),
    Row("Tensor.flip dims", lambda m, x, d: x.flip(*d), [(randn(2, 3, 4), (0, 2))]),
    Row("Tensor.masked_fill mask", lambda m, x, k, v: x.masked_fill(m.tensor(k), v),
        [(randn(3, 4), MASK, -1.5), (randn(3, 4), MASK[0], 0.0)]),
    Row("topk largest", lambda m, x, k, d: m.topk(x, k, dim=d, largest=False), [(randn(4, 3), 3, 0)]),
    Row("Tensor.norm dim", lambda m, x, p, d, k: x.norm(p, dim=d, keepdim=k),
        [(randn(3, 4), 2, 1, True), (randn(3, 4), 1, 0, False), (randn(3, 4), inf, 1, False),
         (numpy.zeros((3, 4)), 2, None, False), (numpy.zeros((3, 4)), 2, 1, False)]),
    Row("logsumexp keepdim", lambda m, x, d: m.logsumexp(x * 1000, d, keepdim=True), [(randn(3, 4), (0, 1))]),
    Row("einsum list", lambda m, eq, a, b: m.einsum(eq, [a, b]), [("i,i->", randn(5), randn(5))]),
    # tuple results: only the first output's gradient is compared by check(), so these join the outputs back
    # into one tensor to compare every output's gradient
    Row("meshgrid all outputs", lambda m, ix, *xs: m.stack(m.meshgrid(*xs, indexing=ix)),
        [("ij", randn(3), randn(4)), ("xy", randn(3), randn(4)), ("ij", randn(3), randn(4), randn(2)),
         ("xy", randn(3), randn(4), randn(2))]),
    Row("chunk all outputs", lambda m, x, c, d: m.cat(m.chunk(x, c, d), d), [(randn(2, 7), 3, 1), (randn(6, 2), 4, 0)]),
    Row("split all outputs", lambda m, x, s, d: m.cat(m.split(x, s, d), d), [(randn(2, 5), 2, 1), (randn(2, 5), [1, 3, 1], 1)]),
    Row("unbind all outputs", lambda m, x, d: m.stack(m.unbind(x, d), d), [(randn(2, 3), 1), (randn(2, 3), 0)]),
    Row("Tensor.to dtype=", lambda m, x, d: x.to(dtype=getattr(m, d)), [(randn(3, 4), "float16"), (randn(3, 4), "float")]),
    Row("Tensor.to other", lambda m, x, y: y.to(x), [(randn(3, 4), randint(2)), (randint(2), randn(3))]),
    Row("Tensor.grad_fn is None", lambda m, x: (x.grad_fn is None, (x * 2).grad_fn is None, x.detach().grad_fn is None),
        [(randn(3, 4),)], grad=False),
    Row("F.cross_entropy probabilities nd", lambda m, x, q, r, ls: m.F.cross_entropy(
        x, q.softmax(0 if q.ndim == 1 else 1), reduction=r, label_smoothing=ls),
        [(randn(4, 5), randn(4, 5), "mean", 0.0), (randn(2, 5, 3, 2), randn(2, 5, 3, 2), "mean", 0.0),
         (randn(2, 5, 3), randn(2, 5, 3), "sum", 0.2), (randn(5), randn(5), "mean", 0.0),
         (randn(2, 5, 3), randn(2, 5, 3), "none", 0.1)]),
]



def _grad_scaler(m, w, x, init_scale):
    """One scaled backward, step and update (growth_interval=1): the parameter after SGD (untouched when
    a gradient is inf), its unscaled gradient and the new scale. tests/test_amp.py compares whole runs."""
    w.requires_grad = True
    opt = m.optim.SGD([w], lr=0.5)
    scaler = m.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
    scaler.scale((w * x).sum()).backward()
    scaler.step(opt)
    scaler.update()
    return w.detach(), w.grad, m.tensor(scaler.get_scale())


ROWS += [  # issue 12: loss scaling
    Row("GradScaler", _grad_scaler, [(randn(4, dtype=f32), randn(4, dtype=f32), 1024.0), (randn(5), randn(5), 3.0),
                                     (randn(3, dtype=f32), numpy.array([1.0, inf, 2.0], f32), 8.0),
                                     (randn(3), numpy.array([nan, 1.0, 2.0]), 2.0 ** 20)], grad=False),
]


# ---- margin, embedding and likelihood losses ----------------------------------------------------------------
def _const(a):
    """A tensor made inside the row (so it does not require grad): targets torch does not differentiate."""
    return lambda m: None if a is None else m.tensor(numpy.array(a))


i64 = numpy.int64
PM1 = numpy.array([1.0, -1.0, -1.0, 1.0, 1.0])
HINGE_T = numpy.array([1.0, -1.0, 0.0, 2.0, -1.0, 1.0])
MLM_T = numpy.array([[3, 0, -1, 1], [0, 1, 2, 3], [1, 1, -1, -1], [-1, 2, 0, 1], [2, -1, 5, 1]])[:4]
KINK = numpy.array([[1.0, 0.0, 0.5, 2.0], [0.25, -0.75, 1.25, 0.25], [3.0, 2.0, 2.0, 1.0]])
VAR34 = numpy.abs(randn(3, 4)) + 0.1
ANCHOR = randn(3, 2)
POIS_T = numpy.array([0.0, 1.0, 2.0, 0.5, 3.0, 7.0])
ROWS += [
    Row("F.margin_ranking_loss", lambda m, a, b, t, mg, r: m.F.margin_ranking_loss(a, b, t, margin=mg, reduction=r),
        [(randn(5), randn(5), PM1, 0.0, r) for r in REDUCTIONS] +
        [(randn(5, dtype=f32), randn(5, dtype=f32), PM1.astype(f32), 0.5, "mean"),
         (numpy.array([1.0, 2.0, 0.0, -1.5]), numpy.array([0.5, 2.0, 0.0, -2.0]), numpy.array([1.0, -1.0, 1.0, 1.0]),
          0.5, "none"),  # the hinge's kink (0 exactly): torch's clamp_min passes the gradient there
         (randn(5), randn(5), numpy.array([1, -1, 1, 1, -1]), 0.2, "sum"), (randn(3, 1), randn(1, 4), randn(3, 4), 0.1, "mean"),
         (randn(4, dtype=f32), randn(4), numpy.array([1.0, -1, 1, -1], f32), 0.0, "none"),
         (numpy.array([1e300, -1e300, 3e38]), numpy.array([-1e300, 1e300, 0.0]), numpy.array([1.0, 1.0, -1.0]), 1.0, "none"),
         (randn(3), randn(3), randn(3, 1), 0.0, "mean"), (randn(3), randn(3), PM1[:3], 0.0, "avg"),
         (numpy.array(0.5), numpy.array(1.5), numpy.array(-1.0), 0.3, "mean")]),
    Row("F.hinge_embedding_loss", lambda m, x, t, mg, r: m.F.hinge_embedding_loss(x, t, margin=mg, reduction=r),
        [(randn(6), HINGE_T, 1.0, r) for r in REDUCTIONS] +
        [(numpy.array([1.0, 0.5, 2.0, -1.0, 0.5, 0.0]), HINGE_T, 0.5, "none"),  # x == margin with target -1: kink
         (randn(6, dtype=f32), HINGE_T.astype(f32), 2.0, "mean"), (randn(3, 6), HINGE_T, 1.0, "sum"),
         (randn(6), numpy.array([1, -1, 1, -1, 0, 1]), 1.0, "none"), (randn(6), HINGE_T, -0.5, "mean"),
         (numpy.array([1e300, -1e300, 1e4, 3e38]), numpy.array([1.0, -1.0, -1.0, -1.0]), 1.0, "none"),
         (randn(6), HINGE_T, 1.0, "batchmean"), (randn(2, 3), randn(3, 2), 1.0, "mean")]),
    Row("F.soft_margin_loss", lambda m, x, t, r: m.F.soft_margin_loss(x, t(m), reduction=r),
        [(randn(5), _const(PM1), r) for r in REDUCTIONS] +
        [(randn(2, 5, dtype=f32), _const(PM1.astype(f32)), "mean"), (randn(5) * 3, _const(randn(5)), "sum"),
         (numpy.array([1000.0, -1000.0, 0.0, 50.0, -50.0]), _const(PM1), "none"),  # exp overflows: inf, NaN gradient
         (numpy.array([100.0, -100.0, 0.0], f32), _const(numpy.array([-1.0, 1.0, 1.0], f32)), "none"),
         (randn(5), _const(numpy.array([1, -1, 1, -1, 1])), "mean"), (randn(5), _const(PM1), "x")]),
    Row("F.soft_margin_loss target grad", lambda m, x, t: m.F.soft_margin_loss(x, t), [(randn(3), randn(3))]),
    Row("F.multilabel_soft_margin_loss",
        lambda m, x, t, w, r: m.F.multilabel_soft_margin_loss(x, t, weight=w(m), reduction=r),
        [(randn(4, 3), TARGET01, _const(None), r) for r in REDUCTIONS] +
        [(randn(4, 3), PROBS, _const(numpy.abs(randn(3))), "mean"), (randn(4, 3), PROBS, _const(numpy.abs(randn(3))), "none"),
         (randn(4, 3, dtype=f32), TARGET01.astype(f32), _const(None), "sum"), (randn(3), TARGET01[0], _const(None), "none"),
         (randn(2, 3, 4), randn(2, 3, 4), _const(None), "none"), (numpy.array([60.0, -60.0, 800.0, -800.0]),
                                                                  numpy.array([0.0, 1.0, 1.0, 0.0]), _const(None), "none"),
         (randn(4, 3), TARGET01[0], _const(None), "mean"),  # broadcast target, as torch's
         (numpy.array(0.5), numpy.array(1.0), _const(None), "mean"), (randn(4, 3), TARGET01, _const(None), "avg")]),
    Row("F.multilabel_margin_loss", lambda m, x, t, r: m.F.multilabel_margin_loss(x, t, reduction=r),
        [(randn(4, 4), MLM_T, r) for r in REDUCTIONS] +
        [(KINK, MLM_T[:3], "none"), (randn(4, 4, dtype=f32), MLM_T, "mean"), (randn(4), MLM_T[0], "none"),
         (randn(4), MLM_T[0], "sum"), (numpy.array(0.5), numpy.array(0), "none"), (numpy.array(0.5), numpy.array(-1), "mean"),
         (randn(0, 4), MLM_T[:0], "sum"), (randn(0, 4), MLM_T[:0], "none"), (randn(2, 4) * 1e4, MLM_T[:2], "sum"),
         (randn(4, 4), numpy.array([[0, 4, -1, 1]] * 4), "mean"), (randn(4, 4), numpy.array([[0, -2, -1, 1]] * 4), "mean"),
         (randn(1, 4), numpy.array([[0, -1, 7, 1]]), "mean"), (randn(4, 4), MLM_T[:, :3], "mean"),
         (randn(4, 4), MLM_T.astype(i32), "mean"), (randn(4, 4), MLM_T.astype(f64), "mean"),
         (randn(2, 3, 4), numpy.zeros((2, 3, 4), i64), "mean"), (randn(3, 0), numpy.zeros((3, 0), i64), "mean"),
         (randn(4), MLM_T[0], "x")]),
    Row("F.multi_margin_loss", lambda m, x, y, p, mg, w, r: m.F.multi_margin_loss(x, y, p=p, margin=mg, weight=w(m),
                                                                                   reduction=r),
        [(randn(5, 4), numpy.array([0, 3, 1, 1, 2]), p, 1.0, _const(None), r) for p in (1, 2) for r in REDUCTIONS] +
        [(KINK, numpy.array([0, 2, 1]), p, 1.0, _const(None), "none") for p in (1, 2)] +  # z == 0 exactly
        [(randn(5, 4), CLASS_T, 1, 0.5, _const(numpy.abs(randn(4))), "mean"),
         (randn(5, 4), CLASS_T, 2, 2.0, _const(numpy.abs(randn(4))), "none"),
         (randn(5, 4, dtype=f32), CLASS_T, 1, 1.0, _const(numpy.abs(randn(4, dtype=f32))), "sum"),
         (randn(4), numpy.array(2), 1, 1.0, _const(None), "none"), (randn(4), numpy.array([2]), 2, 1.0, _const(None), "none"),
         (numpy.array(0.3), numpy.array(0), 1, 1.0, _const(None), "none"), (randn(1, 4), numpy.array(3), 1, 1.0, _const(None), "none"),
         (randn(0, 4), numpy.zeros(0, i64), 1, 1.0, _const(None), "sum"), (randn(3, 4) * 1e4, numpy.array([0, 1, 2]), 2, 1.0,
                                                                             _const(None), "sum"),
         (randn(3, 4), numpy.array([0, 4, 1]), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0, -1, 1]), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0, 1]), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([[0], [1], [2]]), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0.0, 1, 2]), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0, 1, 2]), 3, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0, 1, 2]), 1, 1.0, _const(numpy.ones((1, 4))), "mean"),
         (randn(3, 4), numpy.array([0, 1, 2]), 1, 1.0, _const(numpy.ones(3)), "mean"),
         (randn(3, 4, dtype=f32), numpy.array([0, 1, 2]), 1, 1.0, _const(numpy.ones(4)), "mean"),
         (randn(2, 3, 4), numpy.zeros((2, 3), i64), 1, 1.0, _const(None), "mean"),
         (randn(3, 0), numpy.zeros(3, i64), 1, 1.0, _const(None), "mean"),
         (randn(3, 4), numpy.array([0, 1, 2]), 1, 1.0, _const(None), "x")]),
    Row("F.multi_margin_loss weight grad", lambda m, x, y, w: m.F.multi_margin_loss(x, y, weight=w),
        [(randn(3, 4), numpy.array([0, 1, 2]), numpy.ones(4))]),
    Row("F.cosine_embedding_loss", lambda m, a, b, t, mg, r: m.F.cosine_embedding_loss(a, b, t, margin=mg, reduction=r),
        [(randn(5, 3), randn(5, 3), PM1, 0.0, r) for r in REDUCTIONS] +
        [(randn(6, 3), randn(6, 3), HINGE_T, 0.2, "none"), (randn(5, 3, dtype=f32), randn(5, 3, dtype=f32),
                                                            PM1.astype(f32), -0.5, "mean"),
         (numpy.zeros((2, 3)), numpy.array([[1.0, 2, 3], [0.5, 0.1, 0.2]]), numpy.array([1.0, -1.0]), -0.5, "sum"),
         (numpy.zeros((2, 3)), numpy.zeros((2, 3)), numpy.array([1.0, -1.0]), -0.5, "none"),
         (numpy.array([[1.0, 2.0], [3.0, -1.0]]), numpy.array([[2.0, 4.0], [-3.0, 1.0]]), numpy.array([1.0, -1.0]), 0.0, "none"),
         (randn(3) * 1e150, randn(3) * 1e-150, numpy.array(-1.0), 0.0, "mean"), (randn(3), randn(3), numpy.array(1.0), 0.0, "none"),
         (randn(5, 3), randn(1, 3), numpy.array([1, -1, 1, 1, -1]), 0.1, "mean"),
         (randn(5, 3), randn(5, 3), numpy.ones((5, 1)), 0.0, "mean"), (randn(3), randn(3), numpy.ones(3), 0.0, "mean"),
         (randn(5, 3), randn(5, 3), numpy.array(1.0), 0.0, "mean"), (randn(5, 3), randn(5, 3), PM1[:2], 0.0, "mean"),
         (randn(5, 3), randn(5, 3), PM1, 0.0, "x")]),
    Row("F.pairwise_distance", lambda m, a, b, p, e, k: m.F.pairwise_distance(a, b, p=p, eps=e, keepdim=k),
        [(randn(4, 3), randn(4, 3), p, 1e-6, False) for p in (2.0, 1.0, 3.0, 0.5, inf, 0.0, -1.0)] +
        [(numpy.zeros((2, 3)), numpy.full((2, 3), 1e-6), p, 1e-6, False) for p in (2.0, 1.0, 3.0, inf)] +  # distance 0
         [(randn(4, 3, dtype=f32), randn(4, 3, dtype=f32), 2.0, 1e-6, True), (randn(3), randn(2, 3), 2.0, 0.0, False),
         (numpy.array(1.5), numpy.array(-0.5), 2.0, 1e-6, False), (numpy.array(1.5), numpy.array(-0.5), 1.0, 1e-6, True),
         (randint(2, 3), randint(2, 3), 2.0, 1e-6, False), (randn(2, 3, 4), randn(2, 3, 4), 2.0, 1e-6, False),
         (randn(4, 3), randn(2, 3), 2.0, 1e-6, False), (randn(2, 3) * 1e200, randn(2, 3), 2.0, 1e-6, False)]),
    Row("F.triplet_margin_loss", lambda m, a, p_, n, mg, p, e, sw, r: m.F.triplet_margin_loss(
        a, p_, n, margin=mg, p=p, eps=e, swap=sw, reduction=r),
        [(randn(5, 3), randn(5, 3), randn(5, 3), 1.0, 2, 1e-6, sw, r) for sw in (False, True) for r in REDUCTIONS] +
        [(randn(5, 3), randn(5, 3), randn(5, 3), 0.5, p, 1e-6, True, "mean") for p in (1, 3, inf)] +
        [(ANCHOR, ANCHOR, randn(3, 2), 1.0, 2, 1e-6, True, "none"),  # swap's tie: d(a, n) == d(p, n), gradient halved
         (ANCHOR, ANCHOR + 1.0, ANCHOR + 1.0, 1.0, 2, 0.0, False, "none"),   # margin + d_pos - d_neg == 0: clamp's kink
         (randn(5, 3, dtype=f32), randn(5, 3, dtype=f32), randn(5, 3, dtype=f32), 1.0, 2, 1e-6, False, "mean"),
         (randn(3), randn(3), randn(3), 0.2, 2, 1e-6, False, "none"), (randn(2, 4, 3), randn(2, 4, 3), randn(2, 4, 3), 1.0, 2,
                                                                       1e-6, True, "none"),
         (randn(5, 3), randn(1, 3), randn(5, 3), 1.0, 2, 1e-6, False, "none"),
         (numpy.array(1.0), numpy.array(2.0), numpy.array(4.0), 1.0, 2, 1e-6, False, "none"),
         (randn(5, 3), randn(5, 3), randn(3), 1.0, 2, 1e-6, False, "mean"),
         (randn(5, 3), randn(5, 3), randn(5, 3), 0.0, 2, 1e-6, False, "mean"),
         (randn(5, 3), randn(5, 3), randn(5, 3), 1.0, 2, 1e-6, False, "x")]),
    Row("F.poisson_nll_loss", lambda m, x, t, li, fu, e, r: m.F.poisson_nll_loss(x, t, log_input=li, full=fu, eps=e,
                                                                                  reduction=r),
        [(randn(6), POIS_T, li, fu, 1e-8, r) for li in (True, False) for fu in (False, True) for r in REDUCTIONS
         if li or r == "mean"] +
        [(numpy.abs(randn(6)), POIS_T, False, fu, 1e-8, "none") for fu in (False, True)] +
        [(numpy.array([0.0, 1.0, 2.0, 0.5, 0.0, 3.0]), POIS_T, False, True, 0.1, "sum"),
         (randn(6, dtype=f32), POIS_T.astype(f32), True, True, 1e-8, "mean"), (randn(3, 6), POIS_T, True, False, 1e-8, "sum"),
         (randn(6), numpy.array([0, 1, 2, 3, 4, 5]), True, True, 1e-8, "none"),
         (numpy.array([700.0, -700.0, 20.0]), numpy.array([3.0, 0.0, 1e4]), True, True, 1e-8, "none"),
         (randn(6), POIS_T, True, False, 1e-8, "avg")]),
    Row("F.gaussian_nll_loss", lambda m, x, t, v, fu, e, r: m.F.gaussian_nll_loss(x, t, v, full=fu, eps=e, reduction=r),
        [(randn(3, 4), randn(3, 4), VAR34, fu, 1e-6, r) for fu in (False, True) for r in REDUCTIONS] +
        [(randn(3, 4), randn(3, 4), v, False, 1e-6, "mean") for v in (numpy.abs(randn(3)) + 0.1, numpy.abs(randn(3, 1)) + 0.1,
                                                                         numpy.abs(randn(1, 4)) + 0.1, numpy.ones((1, 1)),
                                                                         numpy.ones(4), numpy.array(1.0), 0.5, -0.5, 1)] +
        [(randn(3, 4), randn(3, 4), numpy.array([[0.0, 1e-9, 1e-6, 2.0]] * 3), False, 1e-6, "none"),  # clamped var
         (randn(3, 4), randn(3, 4), VAR34 - 1.0, False, 1e-6, "mean"),
         (randn(3, 4, dtype=f32), randn(3, 4, dtype=f32), VAR34.astype(f32), True, 1e-3, "sum"),
         (randn(3, 4), randn(4), VAR34, False, 1e-6, "mean"), (randn(2, 3, 4), randn(2, 3, 4), VAR34[None, :2], False, 1e-6,
                                                               "none"),
         (randn(2, 3, 4), randn(2, 3, 4), VAR34[None], False, 1e-6, "none"),
         (randn(3, 4), randn(3, 4), VAR34, False, 1e-6, "x")]),
]

@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_parity(row):
    """Every input set of the row; the failure lists each failing set (index into row.inputs) and why."""
    failures = []
    for i, inputs in enumerate(row.inputs):
        if row.skip and row.skip(inputs):
            continue
        shown = ", ".join(f"array{v.shape}:{v.dtype}" if isinstance(v, numpy.ndarray) else repr(v) for v in inputs)
        try:
            check(row, inputs)
        except Exception as e:  # noqa: BLE001  (a backward that raises is a difference too)
            if i not in row.known:
                failures.append(f"[{i}] ({shown}): {type(e).__name__}: {str(e).strip()[:600]}")
        else:
            if i in row.known:
                failures.append(f"[{i}] ({shown}) now agrees with torch: remove it from known ({row.known[i]})")
    assert not failures, f"{row.name}: {len(failures)} of {len(row.inputs)} input sets differ from torch:\n" + \
        "\n".join(failures)


def public_names():
    """Every public callable of gradflow, Tensor and gradflow.nn.functional, as ROWS names them."""
    names = {n for n, v in vars(gradflow).items() if not n.startswith("_") and callable(v) and not inspect.ismodule(v)}
    names -= DTYPES
    names |= {f"Tensor.{n}" for n in vars(gradflow.Tensor) if not n.startswith("_") or
              n.startswith("__") and n.endswith("__") and n[2:-2] not in ("init", "repr", "module", "doc", "dict",
                                                                         "weakref", "hash", "array_priority")}
    names |= {f"F.{n}" for n in gradflow.nn.functional.__all__}
    return names


def test_every_public_name_has_a_row():
    covered = {row.name.split(" ")[0] for row in ROWS} | set(NOT_COMPARED)
    missing = sorted(public_names() - covered)
    assert not missing, (f"public names with no parity row: {missing}; add a Row to tests/test_torch_parity.py "
                         f"(see tests/parity.py) or, if PyTorch has no equivalent, an entry in NOT_COMPARED")
