"""nn.Linear keeps its weight stored (in, out) on the CPU; everything a user sees stays PyTorch's.

The layout is a speed choice (OpenBLAS runs ``x @ W.T`` and the weight gradient
``(x.T @ gy).T`` as plain row-major GEMMs). These tests pin what must not change with it:
values against torch, the optimizer's flat buffers keeping one element order for parameters,
gradients and state (a mix-up would pair unrelated elements in the fused update), loaded
state, checkpoints, and the compiled replay computing gradients straight into the buffers.
"""
import numpy
import pytest

import gradflow
from gradflow import blas, nn, optim
from gradflow.tensor import Tensor

torch = pytest.importorskip("torch")


def _models(seed=0):
    gradflow.manual_seed(seed)
    g = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    g = g.double()
    with torch.no_grad():
        for (name, p) in g.named_parameters():
            dict(t.named_parameters())[name].copy_(torch.from_numpy(numpy.array(p.data, dtype=numpy.float64)))
    return g, t


def test_weight_is_stored_in_out_and_reads_as_out_in():
    lin = nn.Linear(6, 4)
    w = lin.weight
    assert w.shape == (4, 6)
    assert w.data.T.flags.c_contiguous and not w.is_contiguous()
    assert w.T.is_contiguous()
    # the values are what the initializer drew, row by row, as for a row-major weight
    gradflow.manual_seed(3)
    a = nn.Linear(6, 4).weight.numpy()
    gradflow.manual_seed(3)
    b = nn.Linear(6, 4).weight.numpy()
    numpy.testing.assert_array_equal(a, b)
    assert numpy.abs(a).max() <= 1 / numpy.sqrt(6)


def test_view_of_the_weight_never_silently_copies():
    w = nn.Linear(6, 4).weight
    with pytest.raises(RuntimeError, match=r"reshape"):
        w.view(-1)
    flat = w.reshape(-1)
    numpy.testing.assert_array_equal(flat.numpy(), w.numpy().reshape(-1))
    assert w.view(4, 6).shape == (4, 6)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_training_matches_torch_step_for_step(opt_name):
    g, t = _models()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01) if opt_name == "SGD" else dict(lr=0.01, weight_decay=0.01)
    go = getattr(optim, opt_name)(g.parameters(), **kw)
    to = getattr(torch.optim, opt_name)(t.parameters(), **kw)
    rng = numpy.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((8, 7))
        y = rng.integers(0, 3, 8)
        go.zero_grad()
        loss = nn.functional.cross_entropy(g(gradflow.tensor(x)), gradflow.tensor(y))
        loss.backward()
        go.step()
        to.zero_grad()
        torch.nn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        to.step()
    for name, p in g.named_parameters():
        numpy.testing.assert_allclose(p.numpy(), dict(t.named_parameters())[name].detach().numpy(),
                                      rtol=1e-10, atol=1e-12)


def test_flat_buffers_keep_the_parameters_order_for_grads_and_every_state():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        assert p._grad_buffer.flags.f_contiguous == p.data.flags.f_contiguous
        assert p._grad_buffer.flags.c_contiguous == p.data.flags.c_contiguous
    # state loaded from a row-major source (another process, torch) must land element by element
    ref = {}
    for i, p in enumerate(model.parameters()):
        ref[i] = numpy.arange(p.numel(), dtype=numpy.float32).reshape(p.shape) / 7
    opt.load_state_dict({"state": {i: {"momentum_buffer": gradflow.tensor(v.copy())} for i, v in ref.items()},
                         "param_groups": [dict(opt.param_groups[0], params=[0, 1, 2, 3])]})
    before = [p.numpy().copy() for p in model.parameters()]
    grads = [(0.5 + numpy.arange(p.numel()).reshape(p.shape)).astype(numpy.float32) for p in model.parameters()]
    for p, gr in zip(model.parameters(), grads):
        p.grad = gradflow.tensor(gr)
    opt.step()
    for i, (p, w0, gr) in enumerate(zip(model.parameters(), before, grads)):
        buf = ref[i] * numpy.float32(0.9) + gr
        step = numpy.float64(numpy.float32(-0.1)) * buf.astype(numpy.float64)  # exact in float64
        # torch's param.add_(buf, alpha=-lr) rounds once (gradflow.blas.axpy), else NumPy rounds twice
        expected = (w0 + step).astype(numpy.float32) if blas.fused() else w0 + numpy.float32(-0.1) * buf
        numpy.testing.assert_array_equal(p.numpy(), expected)
        numpy.testing.assert_array_equal(opt.state[p]["momentum_buffer"].numpy(), buf)
        if p.ndim == 2:  # the state is a view of the flat buffer in the parameter's order
            assert opt.state[p]["momentum_buffer"].data.flags.f_contiguous


def test_checkpoint_round_trip_and_torch_state_dict(tmp_path):
    g, t = _models(5)
    path = tmp_path / "m.npz"
    gradflow.save(g.state_dict(), path)
    g2, _ = _models(6)
    g2.load_state_dict(gradflow.load(path))
    for (n, a), (_, b) in zip(g.named_parameters(), g2.named_parameters()):
        numpy.testing.assert_array_equal(a.numpy(), b.numpy())
    # a torch state dict (row-major tensors) loads into the (in, out) storage value for value
    g3, _ = _models(7)
    g3.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    for name, p in g3.named_parameters():
        numpy.testing.assert_array_equal(p.numpy(), t.state_dict()[name].numpy())
    assert g3[0].weight.data.T.flags.c_contiguous  # loaded in place: the layout stays


def test_compiled_step_computes_weight_and_bias_grads_into_their_buffers():
    gradflow.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = gradflow.compile(step)
    rng = numpy.random.default_rng(0)
    x = Tensor._wrap(rng.standard_normal((8, 20)).astype(numpy.float32))
    y = Tensor._wrap(rng.integers(0, 4, 8))
    for _ in range(3):
        compiled(x, y)
    plan = next(iter(compiled.cache.values())).plan
    source = plan.replay.source
    # written out for the usual case: weight gradients into the weights' (in, out) buffers, bias sums
    assert source.count("out=bt") == 2 and source.count("out=b") == 4, source
    assert source.count(".T, o") == 2 and source.count("_deliver(x") == 4, source  # _deliver_leaf otherwise
    for p in model.parameters():
        assert p.grad.data is p._grad_buffer  # the parameter's own buffer, in its order
