"""The fused softmax cross-entropy's two CPU paths: the short one (every target a class, no ignored
row: checked once by the forward, known to the backward from the count) and the checked one.
Both against PyTorch, and the compiled replay against eager as batches switch between them."""
import warnings

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import softmax_ops as S
from gradflow.nn import functional as F


def _batches(shape, classes, ignore_index, rng):
    """(name, targets): a batch for the short path, then ones that need the checked path."""
    tshape = shape[:1] + shape[2:]
    dense = rng.integers(0, classes, tshape)
    some = dense.copy()
    some.reshape(-1)[::3] = ignore_index
    return [("dense", dense), ("some ignored", some), ("all ignored", numpy.full(tshape, ignore_index))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(12, 5), (4, 3, 2, 3)], ids=str)
@pytest.mark.parametrize("ignore_index", [-100, 1, 5])  # below, inside and above [0, C)
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # double backward of a mean over no row
def test_both_paths_match_torch_with_double_backward(dtype, reduction, shape, ignore_index):
    rng = numpy.random.default_rng(0)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-11, atol=1e-13)
    for name, t in _batches(shape, shape[1], ignore_index, rng):
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        g, tx = gf.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NaN from a mean over no row, without a NumPy warning
            got = F.cross_entropy(g, gf.tensor(t), reduction=reduction, ignore_index=ignore_index)
            want = torch.nn.functional.cross_entropy(tx, torch.tensor(t), reduction=reduction,
                                                     ignore_index=ignore_index)
            numpy.testing.assert_allclose(got.numpy(), want.detach().numpy(), err_msg=name, **tol)
            w = rng.standard_normal(got.shape).astype(dtype)
            gx, = gf.autograd.grad(got, g, gf.tensor(w), create_graph=True)
            tgx, = torch.autograd.grad(want, tx, torch.tensor(w), create_graph=True)
        numpy.testing.assert_allclose(gx.numpy(), tgx.detach().numpy(), err_msg=name, **tol)
        ignored = numpy.moveaxis(numpy.broadcast_to((t == ignore_index)[:, None], gx.shape), 1, -1)
        assert (numpy.moveaxis(gx.numpy(), 1, -1)[ignored] == 0).all(), name  # exactly zero
        v = rng.standard_normal(shape).astype(dtype)
        ggx, = gf.autograd.grad((gx * gf.tensor(v)).sum(), g)
        tggx, = torch.autograd.grad((tgx * torch.tensor(v)).sum(), tx)
        numpy.testing.assert_allclose(ggx.numpy(), tggx.numpy(), err_msg=name, **tol)


@pytest.mark.parametrize("ignore_index", [-100, 2, 10])
def test_out_of_range_targets_raise_on_both_paths(ignore_index):
    x = gf.tensor(numpy.zeros((4, 10), numpy.float32), requires_grad=True)
    for bad in ([0, 1, 11, 3], [0, -1, 2, 3], [ignore_index, 1, 12, 3], [-5, ignore_index, 2, 3]):
        with pytest.raises(IndexError, match="out of bounds"):
            F.cross_entropy(x, gf.tensor(numpy.array(bad)), ignore_index=ignore_index)


@pytest.mark.parametrize("shape", [(16, 10), (6, 4, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_replay_follows_each_batch_bit_for_bit(shape, reduction):
    """The replay checks each batch's targets again: a batch with ignored rows after dense ones
    (and back) gives eager's loss and gradient bit for bit, an out-of-range target raises."""
    rng = numpy.random.default_rng(1)
    w0 = rng.standard_normal(shape).astype(numpy.float32)
    ignore_index = 3

    def run(compiled):
        p = gf.nn.Parameter(gf.tensor(w0))

        def step(t):
            loss = F.cross_entropy(p * 2.0, t, reduction=reduction, ignore_index=ignore_index)
            loss.sum().backward() if reduction == "none" else loss.backward()
            return loss

        step = gf.compile(step, strict=True) if compiled else step
        rng = numpy.random.default_rng(2)
        dense = [rng.integers(0, 3, shape[:1] + shape[2:]) for _ in range(3)]  # never the ignore_index
        mixed = [d.copy() for d in dense]
        for m in mixed:
            m.reshape(-1)[1::4] = ignore_index
        out = []
        for t in dense + mixed + dense[:1] + [numpy.full_like(dense[0], ignore_index)] + dense[1:]:
            p.grad = None
            loss = step(gf.tensor(t))
            out.append(loss.numpy().tobytes() + p.grad.numpy().tobytes())
        if compiled:
            assert step.captured
            bad = dense[0].copy()
            bad.reshape(-1)[0] = shape[1]
            with pytest.raises(IndexError, match="out of bounds"):
                step(gf.tensor(bad))
            p.grad = None
            out.append(step(gf.tensor(mixed[0])).numpy().tobytes() + p.grad.numpy().tobytes())
        else:
            out.append(out[3])
        return out

    assert run(True) == run(False)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(9, 7), (3, 4, 5)], ids=str)
def test_replay_source_computes_what_forward_computes(dtype, shape):
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    for t in (rng.integers(0, shape[1], shape[:1] + shape[2:]), numpy.full(shape[:1] + shape[2:], -100)):
        for reduction in ("mean", "sum", "none"):
            for saved in ((), (2, 3, 4)):
                fwd = S.SoftmaxCrossEntropy(reduction, -100)
                expr, scope = fwd.replay_source("a0", "a1", arrays=[x, t], saved=saved)
                got = eval(expr, dict(scope, a0=x, a1=t))
                want = fwd.forward(x, t)
                if saved:
                    got, *got_saved = got
                    for k, a in zip(saved, got_saved):
                        assert a.tobytes() == fwd._saved[k].tobytes()
                assert got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()
            _, _, stat, logs, count = fwd._saved
            g = rng.standard_normal(want.shape).astype(dtype)
            bwd = S.SoftmaxCrossEntropyGrad(reduction, -100)
            args = [x, t, stat, logs, count, g]
            expr, scope = bwd.replay_source(*[f"a{i}" for i in range(6)], arrays=args)
            got = eval(expr, dict(scope, **{f"a{i}": a for i, a in enumerate(args)}))
            want = bwd.forward(*args)
            assert got.shape == want.shape == x.shape and got.tobytes() == want.tobytes()


def test_empty_batch_and_no_classes():
    x = gf.tensor(numpy.zeros((0, 4), numpy.float32), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.cross_entropy(x, gf.tensor(numpy.zeros(0, numpy.int64)))
        assert numpy.isnan(loss.item())
        loss.backward()
    assert x.grad.shape == (0, 4)
    x = gf.tensor(numpy.zeros((2, 0), numpy.float32), requires_grad=True)
    loss = F.cross_entropy(x, gf.tensor(numpy.array([-100, -100])), reduction="sum")
    loss.backward()
    assert loss.item() == 0 and x.grad.shape == (2, 0)
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(x, gf.tensor(numpy.array([0, -100])))


def test_any_memory_layout():
    """Fortran-ordered and strided logits and targets: the flat indices of the short path address C order."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((6, 4))
    t = rng.integers(0, 4, 12)[::2]
    want = F.cross_entropy(gf.tensor(x, requires_grad=True), gf.tensor(t.copy()))
    for layout in (numpy.asfortranarray(x), numpy.asfortranarray(x.T).T, numpy.repeat(x, 2, axis=1)[:, ::2]):
        g = gf.tensor(layout, requires_grad=True)
        got = F.cross_entropy(g, gf.tensor(t))
        got.backward()
        assert got.item() == want.item()
        tx = torch.tensor(x, requires_grad=True)
        torch.nn.functional.cross_entropy(tx, torch.tensor(t.copy())).backward()
        numpy.testing.assert_allclose(g.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    # the NumPy twin of the GPU backward kernel, on a Fortran-ordered input
    _, m, logs = S._xent_rows_np(x, t, -100)
    args = (m[:, None], logs[:, None], t[:, None], numpy.full((1, 1), 0.5), 4, -100)
    assert S._xent_bwd_np(numpy.asfortranarray(x), *args).tobytes() == S._xent_bwd_np(x, *args).tobytes()
