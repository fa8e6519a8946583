"""Regression tests for issue 9: PyTorch code ported to gradflow must not give a silently wrong number.

Each test compares with PyTorch (the oracle, pinned in the ``test`` extra) on the CPU.
"""
import numpy
import pytest

torch = pytest.importorskip("torch")

import gradflow as gf  # noqa: E402
import gradflow.nn.functional as F  # noqa: E402
from gradflow import activation  # noqa: E402


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
    _, m, logs = activation._xent_rows_np(x, numpy.array([1, 1, 1]), 1)
    gx = activation._xent_bwd_np(x, m[:, None], logs[:, None], numpy.array([[1], [0], [1]]),
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
