"""Issue 13's nn additions: Module.apply, hooks, containers, new layers and activations."""
from collections import OrderedDict

import numpy
import pytest
import torch

import gradflow as gf
import gradflow.nn.functional as F
from gradflow import nn


def test_module_apply_named_modules_children():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Sequential(nn.Linear(4, 2), nn.Identity()))
    seen = []

    def init(m):
        seen.append(type(m).__name__)
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)

    assert model.apply(init) is model
    assert seen == ["Linear", "ReLU", "Linear", "Identity", "Sequential", "Sequential"]  # children first
    assert all((m.weight.numpy() == 0.5).all() for m in model.modules() if isinstance(m, nn.Linear))
    assert [n for n, _ in model.named_modules()] == ["", "0", "1", "2", "2.0", "2.1"]
    assert [type(c).__name__ for c in model.children()] == ["Linear", "ReLU", "Sequential"]
    assert model.get_submodule("2.0") is model[2][0] and model.get_parameter("2.0.bias") is model[2][0].bias


def test_register_buffer_in_state_dict():
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running", gf.zeros(3))
            self.register_buffer("scratch", gf.ones(2), persistent=False)

        def forward(self, x):
            return x - self.running

    m = Norm()
    assert list(m.state_dict()) == ["running"] and [n for n, _ in m.named_buffers()] == ["running", "scratch"]
    m.load_state_dict({"running": numpy.array([1.0, 2.0, 3.0], dtype=numpy.float32)})
    assert m(gf.ones(3)).tolist() == [0.0, -1.0, -2.0]


def test_forward_hooks_and_tensor_hooks():
    lin = nn.Linear(2, 2)
    calls = []
    pre = lin.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    post = lin.register_forward_hook(lambda m, args, out: calls.append(args[0].tolist()) or out * 0)
    out = lin(gf.ones(1, 2))
    assert calls == [[[2.0, 2.0]]] and out.tolist() == [[0.0, 0.0]]
    pre.remove()
    post.remove()
    assert lin(gf.ones(1, 2)).tolist() != [[0.0, 0.0]]
    # capture activations for inspection, as people do
    feats = {}
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    model[0].register_forward_hook(lambda m, a, o: feats.__setitem__("fc", o.detach()))
    model(gf.ones(4, 2))
    assert feats["fc"].shape == (4, 3)


def test_containers():
    d = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.ReLU()})
    d["c"] = nn.Linear(3, 1)
    assert list(d.keys()) == ["a", "b", "c"] and "a" in d and len(d) == 3
    assert len(list(d.parameters())) == 4 and set(d.state_dict()) == {"a.weight", "a.bias", "c.weight", "c.bias"}
    pl = nn.ParameterList([nn.Parameter(gf.ones(2)), gf.zeros(3)])
    pl.append(gf.ones(1))
    assert len(pl) == 3 and all(isinstance(p, nn.Parameter) and p.requires_grad for p in pl)
    assert list(pl.state_dict()) == ["0", "1", "2"]
    pd = nn.ParameterDict({"w": gf.ones(2)})
    pd["b"] = nn.Parameter(gf.zeros(1))
    assert list(pd.keys()) == ["w", "b"] and len(list(pd.parameters())) == 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleDict({"x": nn.Linear(2, 1)})
            self.scales = nn.ParameterList([gf.ones(1)])

        def forward(self, x):
            return self.heads["x"](x) * self.scales[0]

    net = Net()
    net(gf.ones(3, 2)).sum().backward()
    assert all(p.grad is not None for p in net.parameters()) and len(list(net.parameters())) == 3


def test_unflatten_and_identity():
    x = gf.tensor(numpy.arange(24.0).reshape(2, 12))
    u = nn.Unflatten(1, (3, -1))
    assert u(x).shape == (2, 3, 4)
    numpy.testing.assert_array_equal(u(x).numpy(), torch.nn.Unflatten(1, (3, -1))(torch.tensor(x.numpy())).numpy())
    with pytest.raises(RuntimeError, match="multiply up"):
        nn.Unflatten(1, (5, 2))(x)
    assert nn.Identity(54, unused="x")(x) is x


@pytest.mark.parametrize("name,args", [("SiLU", ()), ("ReLU6", ()), ("Hardtanh", (-0.5, 0.5)), ("Hardsigmoid", ()),
                                       ("Hardswish", ()), ("Mish", ()), ("Softsign", ()), ("LogSigmoid", ()),
                                       ("CELU", (0.5,)), ("Softmin", (1,)), ("ReLU", ()), ("LeakyReLU", (0.1,)),
                                       ("ELU", ()), ("SELU", ()), ("Dropout", (0.0,))])
def test_activation_modules_match_torch(name, args):
    x = numpy.random.default_rng(0).uniform(-5, 5, (4, 6))
    kwargs = {"inplace": False} if name not in ("Softsign", "LogSigmoid", "Softmin") else {}
    ours = getattr(nn, name)(*args, **kwargs)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    numpy.testing.assert_allclose(ours(gf.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy(), rtol=1e-12,
                                  atol=1e-15)


@pytest.mark.parametrize("fn", [F.silu, F.mish, F.softsign, F.logsigmoid, lambda x: F.celu(x, 0.6),
                                F.hardswish, F.hardsigmoid, lambda x: F.hardtanh(x, -1.5, 1.5),
                                lambda x: F.softmin(x, 0)], ids=lambda f: getattr(f, "__name__", "lambda"))
def test_new_activations_double_backward(fn):
    x = numpy.random.default_rng(3).uniform(-4, 4, (3, 5))
    x[numpy.abs(numpy.abs(x) - 3) < 0.05] = 0.5   # away from hardswish/hardsigmoid kinks
    x[numpy.abs(numpy.abs(x) - 1.5) < 0.05] = 0.2
    t = gf.tensor(x, requires_grad=True)
    gf.gradcheck(fn, [t])
    gf.gradgradcheck(fn, [t])


def test_new_activations_float32_and_edges():
    x = gf.tensor([-80.0, -3.0, 0.0, 3.0, 80.0, float("nan")])
    for ours, theirs in ((F.silu, torch.nn.functional.silu), (F.logsigmoid, torch.nn.functional.logsigmoid),
                         (F.mish, torch.nn.functional.mish), (F.hardswish, torch.nn.functional.hardswish),
                         (F.relu6, torch.nn.functional.relu6), (F.hardsigmoid, torch.nn.functional.hardsigmoid)):
        numpy.testing.assert_allclose(ours(x).numpy(), theirs(torch.tensor(x.numpy())).numpy(), rtol=1e-6)


def test_one_hot_range_checked():
    with pytest.raises(RuntimeError, match="smaller than num_classes"):
        F.one_hot(gf.tensor([0, 3]), 3)
    with pytest.raises(RuntimeError, match="non-negative"):
        F.one_hot(gf.tensor([-1, 0]), 3)
    with pytest.raises(RuntimeError, match="integer"):
        F.one_hot(gf.tensor([0.0]), 3)
    assert F.one_hot(gf.tensor([2, 0])).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_pad_errors_and_grad():
    x = gf.tensor(numpy.random.default_rng(0).standard_normal((2, 3)), requires_grad=True)
    gf.gradcheck(lambda t: F.pad(t, (1, 2, 0, 1), value=3.0), [x])
    with pytest.raises(NotImplementedError, match="constant"):
        F.pad(x, (1, 1), mode="reflect")
    with pytest.raises(ValueError, match="even"):
        F.pad(x, (1,))


@pytest.mark.gpu
def test_new_activation_kernels_on_gpu():
    x = numpy.random.default_rng(0).uniform(-5, 5, (64,))
    for fn in (F.silu, F.mish, F.softsign, F.logsigmoid, F.hardswish, F.hardsigmoid, F.relu6,
               lambda t: F.celu(t, 0.5)):
        for dtype in (numpy.float32, numpy.float64):
            c = gf.tensor(x.astype(dtype), requires_grad=True)
            g = gf.tensor(x.astype(dtype), device="cuda", requires_grad=True)
            yc, yg = fn(c), fn(g)
            numpy.testing.assert_allclose(yg.numpy(), yc.numpy(), rtol=1e-5 if dtype == numpy.float32 else 1e-12)
            yc.sum().backward()
            yg.sum().backward()
            numpy.testing.assert_allclose(g.grad.numpy(), c.grad.numpy(),
                                          rtol=1e-5 if dtype == numpy.float32 else 1e-12)


def _tied_autoencoder(lib):
    class Tied(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = lib.nn.Linear(3, 2)
            self.dec = lib.nn.Linear(2, 3)
            self.dec.weight = lib.nn.Parameter(self.dec.weight.detach() * 2)  # replaced: keeps its place
            self.register_buffer("scale", lib.ones(1))
            self.register_buffer("scale", lib.ones(1) * 3)
            self.head = lib.nn.Linear(3, 3)
            self.head = lib.nn.Linear(3, 1)  # a child replaced: keeps its place before `extra`
            self.extra = lib.nn.Linear(1, 1)

    return Tied()


def test_reassigned_parameters_buffers_and_children_keep_their_place_as_torch():
    # torch assigns into the existing entry; re-registering moved dec.weight behind dec.bias, so
    # parameters(), state_dict() and the optimizer's parameter numbering came out in another order
    ours, theirs = _tied_autoencoder(gf), _tied_autoencoder(torch)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]


def test_a_shared_module_is_in_the_state_dict_under_each_name_as_torch():
    def build(lib):
        lin = lib.nn.Linear(2, 2)
        return lib.nn.Sequential(lin, lib.nn.ReLU(), lin, lib.nn.Linear(2, 1))

    ours, theirs = build(gf), build(torch)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == \
        ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_parameters(remove_duplicate=False)] == \
        [n for n, _ in theirs.named_parameters(remove_duplicate=False)]
    assert [n for n, _ in ours.named_modules(remove_duplicate=False)] == \
        [n for n, _ in theirs.named_modules(remove_duplicate=False)]
    # torch's state dict loads strictly into gradflow and back
    ours.load_state_dict({k: gf.tensor(v.numpy()) for k, v in theirs.state_dict().items()})
    theirs.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in ours.state_dict().items()})
    x = numpy.random.default_rng(0).standard_normal((4, 2)).astype(numpy.float32)
    numpy.testing.assert_allclose(ours(gf.tensor(x)).detach().numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                  rtol=1e-6, atol=1e-7)


def test_parameter_dict_from_a_plain_dict_is_in_sorted_key_order_as_torch():
    """torch's ParameterDict.update sorts a plain dict's keys (an OrderedDict keeps its order): in
    insertion order, parameters() and the optimizer's parameter numbering differed from torch's."""
    def build(lib):
        class M(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.pd = lib.nn.ParameterDict({"x": lib.nn.Parameter(lib.ones(1)), "a": lib.nn.Parameter(lib.ones(2))})
                self.pd.update({"m": lib.nn.Parameter(lib.ones(3)), "b": lib.nn.Parameter(lib.ones(4))})
                self.od = lib.nn.ParameterDict(OrderedDict([("z", lib.nn.Parameter(lib.ones(1))),
                                                            ("c", lib.nn.Parameter(lib.ones(1)))]))
                self.pairs = lib.nn.ParameterDict([("q", lib.nn.Parameter(lib.ones(1))),
                                                   ("p", lib.nn.Parameter(lib.ones(1)))])
        return M()

    ours, theirs = build(gf), build(torch)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(ours.pd.keys()) == list(theirs.pd.keys()) == ["a", "x", "b", "m"]


def test_deleting_from_module_lists_renumbers_as_torch():
    """del seq[i] / del seq[a:b] (AttributeError before) renumber the rest from 0 as torch's, so the
    state-dict keys match; ModuleList += extends."""
    def build(lib):
        nn_ = lib.nn
        seq = nn_.Sequential(nn_.Linear(2, 2), nn_.ReLU(), nn_.Linear(2, 3), nn_.Tanh(), nn_.Linear(3, 1))
        del seq[1]
        del seq[-2:]
        lst = nn_.ModuleList([nn_.Linear(1, 1), nn_.ReLU(), nn_.Linear(1, 2)])
        del lst[0]
        lst += nn_.ModuleList([nn_.Linear(2, 2)])
        return seq, lst

    (seq, lst), (tseq, tlst) = build(gf), build(torch)
    assert list(seq.state_dict()) == list(tseq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert list(lst.state_dict()) == list(tlst.state_dict())
    assert [type(m).__name__ for m in lst] == [type(m).__name__ for m in tlst]
