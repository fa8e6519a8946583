"""Module registration, state dicts, layers, activation modules, MLP, clipping and penalties."""
import math
from collections import OrderedDict

import numpy
import pytest

import gradflow
from gradflow import nn, optim
from gradflow.nn import functional as F


@pytest.fixture(autouse=True)
def _on_cpu(monkeypatch):
    """Modules and factories follow the default device; pin it so these tests mean the same on a GPU host."""
    monkeypatch.setenv("GRADFLOW_DEVICE", "cpu")


def t64(*shape, seed=0):
    return gradflow.Tensor(numpy.random.default_rng(seed).standard_normal(shape), requires_grad=True)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(numpy.ones(3, dtype=numpy.float32))
        self.inner = nn.Linear(3, 2)
        self.note = "not registered"
        self.register_buffer("steps", gradflow.Tensor(numpy.zeros(1, dtype=numpy.int64)))
        self.register_buffer("scratch", gradflow.Tensor(numpy.zeros(2, dtype=numpy.float32)), persistent=False)

    def forward(self, x):
        return self.inner(x * self.scale)


# ---- Parameter and registration -------------------------------------------------------------------------
def test_parameter_is_a_tensor_that_requires_grad():
    p = nn.Parameter(numpy.zeros((2, 2), dtype=numpy.float32))
    assert isinstance(p, gradflow.Tensor) and p.requires_grad and p.is_leaf
    assert repr(p).startswith("Parameter containing:\ntensor(")
    assert type(p * 2) is gradflow.Tensor  # op results are plain tensors


def test_registration_names_and_order():
    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["scale", "inner.weight", "inner.bias"]
    assert list(b.parameters())[1] is b.inner.weight
    assert [n for n, _ in b.named_children()] == ["inner"]
    assert [type(m).__name__ for m in b.modules()] == ["Block", "Linear"]
    assert [n for n, _ in b.named_buffers()] == ["steps", "scratch"]
    assert b.note == "not registered" and "note" not in dict(b.named_parameters())
    assert "scale" in dir(b)


def test_shared_parameters_are_listed_once():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert len(list(model.children())) == 2


def test_reassigning_and_deleting():
    b = Block()
    with pytest.raises(TypeError, match="cannot assign ndarray as parameter 'scale'"):
        b.scale = numpy.ones(3)
    b.scale = None
    assert [n for n, _ in b.named_parameters()] == ["inner.weight", "inner.bias"]
    b.extra = nn.Parameter(numpy.ones(1, dtype=numpy.float32))
    assert "extra" in dict(b.named_parameters())
    del b.extra
    assert "extra" not in dict(b.named_parameters())
    b.inner = nn.Linear(3, 5)  # replacing a submodule
    assert b.inner.out_features == 5 and dict(b.named_parameters())["inner.weight"].shape == (5, 3)


def test_assigning_before_init_is_a_clear_error():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(numpy.ones(1, dtype=numpy.float32))
    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_missing_attribute_error():
    with pytest.raises(AttributeError, match="'Block' object has no attribute 'nope'"):
        Block().nope


def test_train_eval_propagate():
    model = nn.MLP([4, 3, 2], dropout=0.5)
    assert model.training and all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad():
    model = nn.Linear(3, 2)
    model(gradflow.ones(4, 3)).sum().backward()
    assert model.weight.grad is not None
    model.zero_grad(set_to_none=False)
    assert numpy.all(model.weight.grad.numpy() == 0)
    model.zero_grad()
    assert model.weight.grad is None


def test_call_runs_forward():
    class Twice(nn.Module):
        def forward(self, x):
            return x * 2
    assert Twice()(gradflow.tensor([1.0])).item() == 2.0
    with pytest.raises(NotImplementedError, match="does not define forward"):
        nn.Module()(1)


# ---- devices and dtypes --------------------------------------------------------------------------------------
def test_to_dtype_keeps_parameter_objects():
    b = Block()
    w = b.inner.weight
    b.inner(gradflow.ones(1, 3)).sum().backward()
    b.to(gradflow.float64)
    assert b.inner.weight is w and w.dtype == numpy.float64 and w.grad.dtype == numpy.float64
    assert b.steps.dtype == numpy.int64  # integer buffers are not cast
    b.float()
    assert w.dtype == numpy.float32
    assert b.to("cpu") is b
    with pytest.raises(TypeError, match="floating-point"):
        b.to(numpy.int32)


@pytest.mark.skipif(gradflow.cuda_is_available(), reason="checks the error without a GPU")
def test_to_cuda_without_gpu_says_why():
    with pytest.raises(RuntimeError, match="cuda"):
        nn.Linear(2, 2).to("cuda")


@pytest.mark.gpu
def test_to_cuda_moves_parameters_and_buffers():
    b = Block().to("cuda")
    assert all(p.device == "cuda" for p in b.parameters()) and b.steps.device == "cuda"
    y = b(gradflow.ones(2, 3, device="cuda"))
    y.sum().backward()
    assert b.inner.weight.grad.device == "cuda"
    sd = b.state_dict()
    fresh = Block()
    fresh.load_state_dict(sd)
    assert numpy.array_equal(fresh.inner.weight.numpy(), b.inner.weight.numpy())


# ---- state dicts ---------------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    a, b = Block(), Block()
    sd = a.state_dict()
    assert list(sd) == ["scale", "steps", "inner.weight", "inner.bias"]  # scratch is not persistent
    assert not sd["inner.weight"].requires_grad
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k in sd:
        assert numpy.array_equal(b.state_dict()[k].numpy(), sd[k].numpy())
    assert b.inner.weight._version > 0  # loading counts as an in-place change


def test_load_state_dict_accepts_arrays_and_casts():
    m = nn.Linear(2, 1)
    m.load_state_dict({"weight": numpy.array([[1.0, 2.0]]), "bias": [3.0]})
    assert m.weight.dtype == numpy.float32 and m.weight.numpy().tolist() == [[1.0, 2.0]]
    assert m.bias.numpy().tolist() == [3.0]


def test_load_state_dict_errors_name_keys_and_shapes():
    m = nn.MLP([4, 3, 2])
    sd = m.state_dict()
    before = m.layers[0].weight.numpy()
    bad = OrderedDict(sd)
    del bad["layers.2.bias"]
    bad["layers.0.weight"] = numpy.zeros((3, 5), dtype=numpy.float32)
    bad["extra.weight"] = numpy.zeros((7,), dtype=numpy.float32)
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(bad)
    msg = str(err.value)
    assert "Error(s) in loading state_dict for MLP" in msg
    assert "Unexpected key(s) in state_dict: 'extra.weight' (7)" in msg
    assert "Missing key(s) in state_dict: 'layers.2.bias' (expected shape (2))" in msg
    assert "size mismatch for 'layers.0.weight': copying a value of shape (3, 5)" in msg
    assert "the shape in the current model is (3, 4)" in msg
    assert numpy.array_equal(m.layers[0].weight.numpy(), before)  # nothing was copied


def test_load_state_dict_non_strict_reports_keys():
    m = nn.Linear(2, 2)
    sd = m.state_dict()
    sd.pop("bias")
    sd["other"] = numpy.zeros(1)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["other"]
    sd["weight"] = numpy.zeros((1, 1))
    with pytest.raises(RuntimeError, match="size mismatch for 'weight'"):
        m.load_state_dict(sd, strict=False)  # shapes are checked even when not strict


# ---- Linear ----------------------------------------------------------------------------------------------------
def test_linear_shapes_and_values():
    lin = nn.Linear(5, 3)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    x = numpy.random.default_rng(1).standard_normal((4, 5)).astype(numpy.float32)
    expected = x @ lin.weight.numpy().T + lin.bias.numpy()
    assert numpy.allclose(lin(gradflow.Tensor(x)).numpy(), expected, atol=1e-6)
    x3 = numpy.random.default_rng(2).standard_normal((2, 4, 5)).astype(numpy.float32)
    assert numpy.allclose(lin(gradflow.Tensor(x3)).numpy(), x3 @ lin.weight.numpy().T + lin.bias.numpy(), atol=1e-6)
    assert repr(lin) == "Linear(in_features=5, out_features=3, bias=True)"


def test_linear_default_init_matches_pytorch_bounds():
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) gives exactly this bound
    w = lin.weight.numpy()
    assert w.dtype == numpy.float32 and numpy.abs(w).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound and abs(w.mean()) < 0.01 * bound
    assert numpy.abs(lin.bias.numpy()).max() <= bound and lin.bias.numpy().std() > 0.4 * bound


def test_linear_init_is_reproducible():
    gradflow.manual_seed(7)
    a = nn.Linear(3, 2).weight.numpy()
    gradflow.manual_seed(7)
    assert numpy.array_equal(a, nn.Linear(3, 2).weight.numpy())


def test_linear_without_bias_and_float64():
    lin = nn.Linear(3, 2, bias=False, dtype=numpy.float64)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    assert lin.weight.dtype == numpy.float64
    assert repr(lin) == "Linear(in_features=3, out_features=2, bias=False)"


def test_linear_gradcheck_and_gradgradcheck():
    x, w, b = t64(4, 3, seed=1), t64(2, 3, seed=2), t64(2, seed=3)
    gradflow.gradcheck(F.linear, [x, w, b])
    gradflow.gradcheck(lambda x, w: F.linear(x, w), [x, w])
    gradflow.gradcheck(F.linear, [t64(2, 4, 3, seed=4), w, b])  # batched input
    gradflow.gradcheck(F.linear, [t64(3, seed=5), w, b])        # a single vector
    gradflow.gradgradcheck(F.linear, [x, w, b])


def test_linear_input_errors():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="does not match weight"):
        lin(gradflow.ones(2, 4))
    with pytest.raises(TypeError, match="dtype float64 differs from weight dtype float32"):
        lin(gradflow.ones(2, 3, dtype=numpy.float64))


# ---- containers -----------------------------------------------------------------------------------------------
def test_sequential():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[-1], nn.Linear)
    assert len(seq[:2]) == 2 and seq[:2][0] is seq[0]
    assert seq(gradflow.ones(5, 3)).shape == (5, 2)
    seq.append(nn.Tanh())
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2", "3"]
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.Sigmoid())]))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]


def test_module_list_registers_members():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x
    s = Stack()
    assert len(list(s.parameters())) == 6 and len(s.layers) == 3
    s.layers.append(nn.Linear(2, 1))
    s.layers.insert(0, nn.Identity())
    assert isinstance(s.layers[0], nn.Identity) and s(gradflow.ones(1, 2)).shape == (1, 1)
    s.layers[0] = nn.Linear(2, 2)
    assert len(list(s.parameters())) == 10


# ---- activations and other layers ---------------------------------------------------------------------------------
ACTIVATION_CASES = [
    (nn.ReLU(), lambda x: F.relu(x)),
    (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
    (nn.Sigmoid(), lambda x: F.sigmoid(x)),
    (nn.Tanh(), lambda x: F.tanh(x)),
    (nn.ELU(0.5), lambda x: F.elu(x, 0.5)),
    (nn.SELU(), lambda x: F.selu(x)),
    (nn.Softplus(2.0, 10.0), lambda x: F.softplus(x, 2.0, 10.0)),
    (nn.GELU(), lambda x: F.gelu(x)),
    (nn.GELU("tanh"), lambda x: F.gelu(x, "tanh")),
    (nn.Softmax(dim=1), lambda x: F.softmax(x, 1)),
    (nn.LogSoftmax(dim=1), lambda x: F.log_softmax(x, 1)),
    (nn.Identity(), lambda x: x),
]


@pytest.mark.parametrize("module,fn", ACTIVATION_CASES, ids=lambda c: type(c).__name__)
def test_activation_modules_match_functional(module, fn):
    x = gradflow.Tensor(numpy.linspace(-3, 3, 12, dtype=numpy.float32).reshape(3, 4))
    assert numpy.allclose(module(x).numpy(), fn(x).numpy())


def test_activation_modules_match_torch():
    torch = pytest.importorskip("torch")
    x = numpy.linspace(-4, 4, 24).reshape(4, 6)
    pairs = [(nn.ReLU(), torch.nn.ReLU()), (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
             (nn.ELU(0.7), torch.nn.ELU(0.7)), (nn.SELU(), torch.nn.SELU()), (nn.Sigmoid(), torch.nn.Sigmoid()),
             (nn.Tanh(), torch.nn.Tanh()), (nn.Softplus(), torch.nn.Softplus()), (nn.GELU(), torch.nn.GELU()),
             (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)), (nn.LogSoftmax(dim=1), torch.nn.LogSoftmax(dim=1)),
             (nn.PReLU(), torch.nn.PReLU()), (nn.Flatten(), torch.nn.Flatten())]
    for ours, theirs in pairs:
        got = ours(gradflow.Tensor(x).to(gradflow.float32)).numpy()
        want = theirs(torch.tensor(x, dtype=torch.float32)).detach().numpy()
        assert numpy.allclose(got, want, atol=1e-6), type(ours).__name__


def test_prelu_learns_its_slope():
    act = nn.PReLU(num_parameters=3, init=0.1)
    assert [n for n, _ in act.named_parameters()] == ["weight"] and act.weight.numpy().tolist() == [
        pytest.approx(0.1)] * 3
    x = gradflow.Tensor(-numpy.ones((2, 3), dtype=numpy.float32))
    act(x).sum().backward()
    assert numpy.allclose(act.weight.grad.numpy(), [-2.0, -2.0, -2.0])


def test_noisy_relu_is_noisy_only_in_training():
    act = nn.NoisyReLU(std=0.5)
    x = gradflow.Tensor(numpy.ones((200,), dtype=numpy.float32))
    noisy = act(x).numpy()
    assert noisy.std() > 0.3
    act.eval()
    assert numpy.array_equal(act(x).numpy(), numpy.ones(200, dtype=numpy.float32))


def test_dropout_module_train_and_eval():
    drop = nn.Dropout(0.25)
    x = gradflow.ones(100, 100)
    y = drop(x).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02 and numpy.allclose(y[kept], 1 / 0.75)
    drop.eval()
    assert numpy.array_equal(drop(x).numpy(), x.numpy())
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_flatten_and_identity():
    x = gradflow.ones(2, 3, 4, 5)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert nn.Identity(1, key="ignored")(x) is x


# ---- MLP ----------------------------------------------------------------------------------------------------------
def test_mlp_structure():
    model = nn.MLP([784, 128, 32, 10])
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert sum(p.numel() for p in model.parameters()) == 784 * 128 + 128 + 128 * 32 + 32 + 32 * 10 + 10
    assert model(gradflow.ones(3, 784)).shape == (3, 10)
    assert repr(model).startswith("MLP(\n  (layers): Sequential(\n    (0): Linear(in_features=784, out_features=128")


def test_mlp_options():
    model = nn.MLP([4, 8, 8, 2], activation="tanh", dropout=0.1)
    assert [type(m).__name__ for m in model.layers] == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout",
                                                        "Linear"]
    assert isinstance(nn.MLP([2, 3, 1], activation=nn.SELU).layers[1], nn.SELU)
    assert isinstance(nn.MLP([2, 3, 1], activation=lambda: nn.LeakyReLU(0.3)).layers[1], nn.LeakyReLU)
    assert len(nn.MLP([3, 1]).layers) == 1
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.MLP([2, 2, 2], activation="swish")
    with pytest.raises(TypeError, match="not a Module instance"):
        nn.MLP([2, 2, 2], activation=nn.ReLU())
    with pytest.raises(ValueError, match="at least an input and an output"):
        nn.MLP([3])


def test_mlp_trains_on_xor():
    gradflow.manual_seed(0)
    x = gradflow.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = gradflow.tensor([0, 1, 1, 0])
    model = nn.MLP([2, 16, 2], activation="tanh")
    opt = optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 and F.accuracy(model(x), y) == 1.0


# ---- clipping and penalties ---------------------------------------------------------------------------------------------
def _with_grads(values):
    params = []
    for v in values:
        p = nn.Parameter(numpy.zeros_like(numpy.asarray(v, dtype=numpy.float32)))
        p.grad = gradflow.Tensor(numpy.asarray(v, dtype=numpy.float32))
        params.append(p)
    return params


def test_clip_grad_norm_scales_jointly():
    params = _with_grads([[3.0, 0.0], [0.0, 4.0]])  # joint L2 norm 5
    total = nn.clip_grad_norm_(params, 1.0)
    assert total.item() == pytest.approx(5.0)
    assert numpy.allclose(params[0].grad.numpy(), [0.6, 0.0], atol=1e-6)
    assert numpy.allclose(params[1].grad.numpy(), [0.0, 0.8], atol=1e-6)
    small = _with_grads([[0.1, 0.2]])
    nn.clip_grad_norm_(small, 1.0)
    assert numpy.allclose(small[0].grad.numpy(), [0.1, 0.2])  # within the limit: untouched
    inf = _with_grads([[-3.0, 1.0], [2.0]])
    assert nn.clip_grad_norm_(inf, 1.5, norm_type="inf" and math.inf).item() == 3.0
    assert numpy.allclose(inf[0].grad.numpy(), [-1.5, 0.5], atol=1e-6)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    values = [numpy.random.default_rng(i).standard_normal(s).astype(numpy.float32) for i, s in
              enumerate([(3, 4), (4,), (2, 2)])]
    for norm_type in (1.0, 2.0, 3.0, math.inf):
        ours = _with_grads(values)
        theirs = [torch.zeros(v.shape, requires_grad=True) for v in values]
        for t, v in zip(theirs, values):
            t.grad = torch.tensor(v)
        total = nn.clip_grad_norm_(ours, 0.5, norm_type)
        want = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
        assert total.item() == pytest.approx(want.item(), rel=1e-5)
        for p, t in zip(ours, theirs):
            assert numpy.allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_nonfinite():
    params = _with_grads([[numpy.inf, 1.0]])
    with pytest.raises(RuntimeError, match="inf"):
        nn.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert nn.clip_grad_norm_(_with_grads([]), 1.0).item() == 0.0


def test_clip_grad_value():
    params = _with_grads([[-3.0, 0.5, 2.0]])
    nn.clip_grad_value_(params, 1.0)
    assert params[0].grad.numpy().tolist() == [-1.0, 0.5, 1.0]


def test_penalties_values_and_gradients():
    w = t64(3, 2, seed=1)
    b = t64(2, seed=2)
    l2 = nn.l2_penalty([w, b])
    l1 = nn.l1_penalty([w, b])
    assert l2.item() == pytest.approx((w.numpy() ** 2).sum() + (b.numpy() ** 2).sum())
    assert l1.item() == pytest.approx(numpy.abs(w.numpy()).sum() + numpy.abs(b.numpy()).sum())
    (0.5 * l2).backward()
    assert numpy.allclose(w.grad.numpy(), w.numpy())  # d/dw of 0.5 * ||w||^2
    gradflow.gradcheck(lambda w, b: nn.l2_penalty([w, b]), [w, b])
    gradflow.gradcheck(lambda w: nn.l1_penalty(w), [w])
    with pytest.raises(ValueError, match="no parameters"):
        nn.l2_penalty([])


def test_l2_penalty_equals_sgd_weight_decay():
    """SGD on loss + lam/2 * ||w||^2 takes the same step as SGD(weight_decay=lam) on the loss."""
    gradflow.manual_seed(1)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    x = gradflow.randn(5, 3)
    lam = 0.1
    opt_a = optim.SGD(a.parameters(), lr=0.5)
    opt_b = optim.SGD(b.parameters(), lr=0.5, weight_decay=lam)
    (a(x).sum() + 0.5 * lam * nn.l2_penalty(a.parameters())).backward()
    b(x).sum().backward()
    opt_a.step()
    opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert numpy.allclose(p.numpy(), q.numpy(), atol=1e-6)


def test_train_eval_switch_changes_the_compiled_mode_key():
    import importlib
    compile_module = importlib.import_module("gradflow.compile")  # gradflow.compile is also a function
    model = nn.MLP([2, 2, 2], dropout=0.5)
    modes = compile_module._modes
    model.train()  # already training: nothing changes
    assert compile_module._modes == modes
    model.eval()   # another mode state: compiled steps look up (or record) another plan
    assert compile_module._modes != modes
    model.train()  # back: the training plans recorded before are found again
    assert compile_module._modes == modes


def test_one_hot():
    assert F.one_hot(gradflow.tensor([2, 0])).numpy().tolist() == [[0, 0, 1], [1, 0, 0]]
    out = F.one_hot(gradflow.tensor([[1], [3]]), num_classes=5)
    assert out.shape == (2, 1, 5) and out.dtype == numpy.int64 and out.numpy()[1, 0, 3] == 1


# ---- Module.state_dict(destination, prefix, keep_vars) and Module.to's overloads, as torch's ----------------
def _twin_models():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    return torch, ours, theirs


def test_state_dict_keep_vars_destination_and_prefix_as_torch():
    torch, ours, theirs = _twin_models()
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict())
    w = ours[0].weight
    assert sd["0.weight"] is not w and sd["0.weight"].grad_fn is None and not sd["0.weight"].requires_grad
    assert numpy.shares_memory(sd["0.weight"].data, w.data)  # a detached view, as torch's
    kept = ours.state_dict(keep_vars=True)
    assert kept["0.weight"] is w and kept["1.running_mean"] is ours[1].running_mean
    assert list(kept) == list(sd)
    for prefix in ("enc.", "enc"):
        assert list(ours.state_dict(prefix=prefix)) == list(theirs.state_dict(prefix=prefix))
    dest = OrderedDict(extra=1)
    assert ours.state_dict(destination=dest, prefix="m.") is dest
    assert list(dest) == ["extra"] + ["m." + k for k in sd]
    with pytest.warns(FutureWarning, match="Positional args are being deprecated"):
        out = ours.state_dict({}, "p.", True)
    assert out["p.0.weight"] is w
    assert list(ours.state_dict("enc.")) == ["enc." + k for k in sd]  # gradflow's older positional prefix


def test_module_to_overloads():
    torch, ours, _ = _twin_models()
    w = ours[0].weight
    assert ours.to(gradflow.float64) is ours and w.dtype == numpy.float64
    assert ours.to("cpu", gradflow.float32) is ours and w.dtype == numpy.float32
    ours.to(device="cpu", dtype=gradflow.double, non_blocking=True)
    assert w.dtype == numpy.float64 and ours[0].weight is w
    ours.to(gradflow.zeros(2, dtype=gradflow.float32))  # another tensor's device and dtype
    assert w.dtype == numpy.float32 and w.device == "cpu"
    ours.to(gradflow.device("cpu"), dtype=numpy.float64)
    ours.to("cuda:0" if gradflow.cuda_is_available() else "cpu", gradflow.float32, True)
    assert w.dtype == numpy.float32
    assert ours[1].num_batches_tracked.dtype == numpy.int64  # integer buffers stay
    with pytest.raises(TypeError, match="floating-point"):
        ours.to("cpu", gradflow.int32)
    with pytest.raises(TypeError, match="floating-point"):
        ours.to(gradflow.zeros(2, dtype=gradflow.long))
    with pytest.raises(RuntimeError, match="does not accept copy argument"):
        ours.to("cpu", copy=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.to("cpu", foo=True)
    with pytest.raises(ValueError, match="one GPU per process"):
        ours.to("cuda:1")


@pytest.mark.skipif(gradflow.cuda_is_available(), reason="checks the error without a GPU")
def test_module_to_cuda_forms_without_gpu_change_nothing():
    m = nn.Linear(2, 2)
    for args, kwargs in [(("cuda:0",), {}), (("cuda", gradflow.float64), {}), ((), {"device": "cuda"}),
                         ((gradflow.device("cuda"),), {})]:
        with pytest.raises(RuntimeError, match="cuda"):
            m.to(*args, **kwargs)
        assert m.weight.dtype == numpy.float32 and m.weight.device == "cpu"
