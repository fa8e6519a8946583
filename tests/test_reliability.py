"""Faults a user can run into: graph-connected gradients, non-finite gradients, bad inputs.

Each test pins one root cause of issue 11 and compares with PyTorch where PyTorch has the call.
"""
import gc
import weakref

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import nn, optim


# ---- zero_grad(set_to_none=False) after backward(create_graph=True) ---------------------------
@pytest.mark.parametrize("owner", ["optimizer", "module"])
def test_zero_grad_detaches_a_graph_connected_grad(owner):
    model = nn.Linear(4, 3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    zero = (lambda: opt.zero_grad(set_to_none=False)) if owner == "optimizer" else \
        (lambda: model.zero_grad(set_to_none=False))
    x = gf.tensor(numpy.random.default_rng(0).standard_normal((5, 4), dtype=numpy.float32))
    generations = []
    for _ in range(4):
        loss = (model(x) ** 2).sum()
        loss.backward(create_graph=True)
        graph = weakref.ref(model.weight.grad.creator)
        generations.append(model.weight.grad.generation)
        zero()
        del loss
        gc.collect()
        assert graph() is None, "zero_grad kept the backward graph alive"
        g = model.weight.grad
        assert g.creator is None and not g.requires_grad
        assert not g.numpy().any()
    # the first step assigns, later ones add to the zeroed grad (one op more): then no growth
    assert len(set(generations[1:])) == 1, f"each backward chained onto the last: graph depth {generations}"


@pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True")
def test_zero_grad_after_create_graph_matches_torch():
    w0 = numpy.random.default_rng(1).standard_normal(3).astype(numpy.float32)
    w = gf.tensor(w0, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    gopt, topt = optim.SGD([w], lr=0.1), torch.optim.SGD([tw], lr=0.1)
    for _ in range(3):
        for p, opt, lib in ((w, gopt, gf), (tw, topt, torch)):
            opt.zero_grad(set_to_none=False)
            (p ** 3).sum().backward(create_graph=True)
            opt.step()
        numpy.testing.assert_allclose(w.grad.numpy(), tw.grad.detach().numpy(), rtol=1e-6)
        numpy.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-6)


def test_zero_grad_after_create_graph_keeps_sibling_grads():
    # with create_graph the two leaves may receive one shared gradient array: zeroing one
    # must not zero (or fail on) the other
    a = gf.ones(3, requires_grad=True)
    b = gf.ones(3, requires_grad=True)
    (a + b).sum().backward(create_graph=True)
    nn.utils.zero_grads([a], set_to_none=False)
    assert not a.grad.numpy().any()
    numpy.testing.assert_array_equal(b.grad.numpy(), numpy.ones(3, numpy.float32))


# ---- clip_grad_norm_ with non-finite gradients ---------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_non_finite_as_torch(bad, norm_type):
    grads = [numpy.array([1.0, bad, 2.0], numpy.float32), numpy.array([3.0, 4.0], numpy.float32)]
    ps = [gf.zeros(3, requires_grad=True), gf.zeros(2, requires_grad=True)]
    tps = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    for p, tp, g in zip(ps, tps, grads):
        p.grad = gf.tensor(g.copy())
        tp.grad = torch.tensor(g.copy())
    total = nn.utils.clip_grad_norm_(ps, 1.0, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type=norm_type)
    numpy.testing.assert_array_equal(total.numpy(), ttotal.numpy())
    for p, tp in zip(ps, tps):
        numpy.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_clip_grad_norm_error_if_nonfinite(bad):
    p = gf.zeros(2, requires_grad=True)
    p.grad = gf.tensor([bad, 1.0])
    with pytest.raises(RuntimeError, match="non-finite|nan|inf"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert p.grad.numpy()[1] == 1.0  # nothing clipped before raising
