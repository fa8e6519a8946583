"""Optimizers: step-for-step agreement with torch.optim, hand-computed updates, validation, state dicts."""
import math

import numpy
import pytest

import gradflow
from gradflow import nn, optim, serialization
from gradflow.nn import functional as F


# Modules and factories follow the default device, which conftest pins: the CPU, or the ``device``
# of the tests parametrized over it (the torch step-for-step comparisons also run on CUDA).
STEPS = 12


def small_model(dtype=numpy.float64, seed=0):
    gradflow.manual_seed(seed)
    return nn.MLP([3, 5, 2], activation="tanh", dtype=dtype)


def batches(n=STEPS, seed=1):
    rng = numpy.random.default_rng(seed)
    return [(rng.standard_normal((8, 3)), rng.integers(0, 2, size=8)) for _ in range(n)]


def train_ours(model, opt, data, dtype=numpy.float64):
    trace = []
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(gradflow.tensor(x.astype(dtype))), gradflow.tensor(y)).backward()
        opt.step()
        trace.append([p.numpy().copy() for p in model.parameters()])
    return trace


def torch_twin(torch, model, dtype):
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(dtype)
    with torch.no_grad():
        for t, p in zip(theirs.parameters(), model.parameters()):
            t.copy_(torch.tensor(p.numpy()))
    return theirs


def train_torch(torch, model, opt, data, dtype):
    trace = []
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.tensor(x, dtype=dtype)), torch.tensor(y)).backward()
        opt.step()
        trace.append([p.detach().numpy().copy() for p in model.parameters()])
    return trace


# (our class, torch class name, kwargs shared by both)
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.5, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adam", dict(lr=0.01, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2)),
    ("Adagrad", dict(lr=0.1, maximize=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, maximize=True)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k) or 'defaults'}" for n, k in CONFIGS])
def test_matches_torch_step_for_step_float64(name, kwargs, device):
    torch = pytest.importorskip("torch")
    model = small_model()
    theirs = torch_twin(torch, model, torch.float64)
    data = batches()
    ours_trace = train_ours(model, getattr(optim, name)(model.parameters(), **kwargs), data)
    torch_opt = getattr(torch.optim, name)(theirs.parameters(), foreach=False, **kwargs)
    torch_trace = train_torch(torch, theirs, torch_opt, data, torch.float64)
    for step, (a, b) in enumerate(zip(ours_trace, torch_trace)):
        for p, q in zip(a, b):
            assert numpy.allclose(p, q, rtol=1e-10, atol=1e-12), f"step {step + 1}: max diff {abs(p - q).max()}"


FLOAT32_CONFIGS = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("Adam", dict(lr=0.01)),
                   ("AdamW", dict(lr=0.01, amsgrad=True)), ("Adagrad", dict(lr=0.1)), ("Adadelta", dict()),
                   ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9))]


@pytest.mark.parametrize("name,kwargs", FLOAT32_CONFIGS, ids=[n for n, _ in FLOAT32_CONFIGS])
def test_matches_torch_float32(name, kwargs, device):
    torch = pytest.importorskip("torch")
    model = small_model(numpy.float32)
    theirs = torch_twin(torch, model, torch.float32)
    data = batches()
    ours = train_ours(model, getattr(optim, name)(model.parameters(), **kwargs), data, numpy.float32)
    ref = train_torch(torch, theirs, getattr(torch.optim, name)(theirs.parameters(), foreach=False, **kwargs), data,
                      torch.float32)
    for p, q in zip(ours[-1], ref[-1]):
        assert p.dtype == numpy.float32 and numpy.allclose(p, q, rtol=1e-5, atol=1e-6)


def test_param_groups_match_torch():
    torch = pytest.importorskip("torch")
    model = small_model()
    theirs = torch_twin(torch, model, torch.float64)
    ours_params, torch_params = list(model.parameters()), list(theirs.parameters())
    ours_opt = optim.SGD([{"params": ours_params[:2]}, {"params": ours_params[2:], "lr": 0.01}], lr=0.2, momentum=0.9)
    torch_opt = torch.optim.SGD([{"params": torch_params[:2]}, {"params": torch_params[2:], "lr": 0.01}], lr=0.2,
                                momentum=0.9, foreach=False)
    a = train_ours(model, ours_opt, batches())
    b = train_torch(torch, theirs, torch_opt, batches(), torch.float64)
    for p, q in zip(a[-1], b[-1]):
        assert numpy.allclose(p, q, rtol=1e-10, atol=1e-12)
    assert [g["lr"] for g in ours_opt.param_groups] == [0.2, 0.01]


def test_state_dict_layout_matches_torch():
    torch = pytest.importorskip("torch")
    model = small_model()
    theirs = torch_twin(torch, model, torch.float64)
    ours_opt = optim.Adam(model.parameters(), amsgrad=True)
    torch_opt = torch.optim.Adam(theirs.parameters(), amsgrad=True)
    train_ours(model, ours_opt, batches(2))
    train_torch(torch, theirs, torch_opt, batches(2), torch.float64)
    ours, ref = ours_opt.state_dict(), torch_opt.state_dict()
    assert sorted(ours["state"]) == sorted(ref["state"]) == [0, 1, 2, 3]
    assert set(ours["state"][0]) == set(ref["state"][0])
    assert ours["state"][0]["step"] == int(ref["state"][0]["step"]) == 2
    assert ours["param_groups"][0]["params"] == ref["param_groups"][0]["params"]
    common = set(ours["param_groups"][0]) & set(ref["param_groups"][0])
    assert {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "params"} <= common
    for key in common - {"params"}:
        assert ours["param_groups"][0][key] == ref["param_groups"][0][key], key


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    w = nn.Parameter(numpy.zeros(2))
    tw = torch.zeros(2, requires_grad=True)
    for name in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop"):
        ours = getattr(optim, name)([w]).defaults
        ref = getattr(torch.optim, name)([tw]).defaults
        for key, value in ours.items():
            if key in ref:
                assert ref[key] == value, (name, key)


# ---- hand-computed updates (no torch needed) ------------------------------------------------------------------------------
def param_with_grads(value, grads):
    p = nn.Parameter(numpy.array(value, dtype=numpy.float64))

    def set_grad(i):
        p.grad = gradflow.Tensor(numpy.array(grads[i], dtype=numpy.float64))
    return p, set_grad


def test_sgd_momentum_by_hand():
    p, set_grad = param_with_grads([1.0, -2.0], [[0.5, 1.0], [0.1, -1.0], [0.0, 0.0]])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    set_grad(0)
    opt.step()  # d = g + 0.5 p = [1.0, 0.0]; buf = d; p -= 0.1 buf
    assert numpy.allclose(p.numpy(), [0.9, -2.0])
    set_grad(1)
    opt.step()  # d = [0.1 + 0.45, -1 - 1] = [0.55, -2]; buf = 0.9 [1, 0] + d = [1.45, -2]
    assert numpy.allclose(p.numpy(), [0.9 - 0.145, -2.0 + 0.2])
    assert numpy.allclose(opt.state[p]["momentum_buffer"].numpy(), [1.45, -2.0])


def test_sgd_nesterov_and_maximize_by_hand():
    p, set_grad = param_with_grads([0.0], [[1.0], [1.0]])
    opt = optim.SGD([p], lr=1.0, momentum=0.5, nesterov=True)
    set_grad(0)
    opt.step()  # buf = 1; step = g + 0.5 buf = 1.5
    set_grad(1)
    opt.step()  # buf = 0.5 + 1 = 1.5; step = 1 + 0.75 = 1.75
    assert p.numpy().tolist() == [-3.25]
    q, set_q = param_with_grads([0.0], [[2.0]])
    set_q(0)
    optim.SGD([q], lr=0.5, maximize=True).step()
    assert q.numpy().tolist() == [1.0]


def test_adam_first_step_by_hand():
    p, set_grad = param_with_grads([1.0, 1.0, 1.0], [[0.3, -2.0, 0.0]])
    set_grad(0)
    optim.Adam([p], lr=0.1, eps=1e-8).step()
    g = numpy.array([0.3, -2.0, 0.0])
    # bias-corrected moments are g and g^2 after one step: the step is lr * g / (|g| + eps)
    assert numpy.allclose(p.numpy(), 1.0 - 0.1 * g / (numpy.abs(g) + 1e-8), rtol=1e-12)


def test_adamw_decay_is_decoupled_by_hand():
    p, set_grad = param_with_grads([2.0], [[0.0]])
    set_grad(0)
    optim.AdamW([p], lr=0.1, weight_decay=0.5).step()
    assert p.numpy().tolist() == pytest.approx([2.0 * (1 - 0.1 * 0.5)])  # zero grad: only the decay acts


def test_adagrad_and_rmsprop_first_steps_by_hand():
    p, set_grad = param_with_grads([1.0], [[2.0]])
    set_grad(0)
    optim.Adagrad([p], lr=0.5).step()  # sum = 4; p -= 0.5 * 2 / (2 + 1e-10)
    assert p.numpy()[0] == pytest.approx(0.5)
    q, set_q = param_with_grads([1.0], [[2.0]])
    set_q(0)
    optim.RMSprop([q], lr=0.01, alpha=0.75).step()  # v = 0.25 * 4 = 1; p -= 0.01 * 2 / (1 + eps)
    assert q.numpy()[0] == pytest.approx(0.98)


def test_l1_option_adds_sign_by_hand():
    p, set_grad = param_with_grads([0.5, -0.5, 0.0], [[1.0, 1.0, 1.0]])
    set_grad(0)
    optim.SGD([p], lr=0.1, l1=0.2).step()  # g + 0.2 sign(p) = [1.2, 0.8, 1.0]
    assert numpy.allclose(p.numpy(), [0.5 - 0.12, -0.5 - 0.08, -0.1])


def test_l1_option_equals_l1_penalty_in_the_loss():
    x = gradflow.Tensor(numpy.random.default_rng(0).standard_normal((6, 3)))
    y = gradflow.tensor([0, 1, 0, 1, 1, 0])
    a, b = small_model(), small_model()
    opt_a = optim.Adam(a.parameters(), lr=0.01, l1=0.03)
    opt_b = optim.Adam(b.parameters(), lr=0.01)
    for _ in range(5):
        opt_a.zero_grad()
        F.cross_entropy(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        (F.cross_entropy(b(x), y) + 0.03 * nn.l1_penalty(b.parameters())).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert numpy.allclose(p.numpy(), q.numpy(), rtol=1e-10, atol=1e-12)


def test_full_batch_gradient_descent_on_least_squares():
    """SGD over one batch holding every sample is plain gradient descent; it finds the least-squares fit."""
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    w_true = numpy.array([[1.0, -2.0, 0.5]])
    Y = X @ w_true.T + 0.3
    model = nn.Linear(3, 1, dtype=numpy.float64)
    opt = optim.SGD(model.parameters(), lr=0.3)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(model(gradflow.Tensor(X)), gradflow.Tensor(Y)).backward()
        opt.step()
    assert numpy.allclose(model.weight.numpy(), w_true, atol=1e-6)
    assert model.bias.item() == pytest.approx(0.3, abs=1e-6)


# ---- validation: nothing is updated when anything is wrong ---------------------------------------------------------
def test_invalid_hyperparameters_in_constructor():
    w = [nn.Parameter(numpy.zeros(2))]
    with pytest.raises(ValueError, match=r"SGD: invalid lr=-0.1 in param_groups\[0\]"):
        optim.SGD(w, lr=-0.1)
    with pytest.raises(ValueError, match="invalid momentum=-0.5"):
        optim.SGD(w, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        optim.SGD(w, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="invalid beta1=1.0"):
        optim.Adam(w, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="invalid eps=-1"):
        optim.Adam(w, eps=-1)
    with pytest.raises(ValueError, match="invalid rho=1.5"):
        optim.Adadelta(w, rho=1.5)
    with pytest.raises(ValueError, match="invalid lr_decay=-1"):
        optim.Adagrad(w, lr_decay=-1)
    with pytest.raises(ValueError, match="invalid alpha=-0.1"):
        optim.RMSprop(w, alpha=-0.1)
    with pytest.raises(ValueError, match="invalid lr=nan"):
        optim.Adam(w, lr=float("nan"))


def _two_params_with_grads():
    a = nn.Parameter(numpy.ones(3))
    b = nn.Parameter(numpy.ones((2, 2)))
    a.grad = gradflow.Tensor(numpy.ones(3))
    b.grad = gradflow.Tensor(numpy.ones((2, 2)))
    return a, b


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop"])
def test_bad_hyperparameter_found_before_any_update(name):
    a, b = _two_params_with_grads()
    opt = getattr(optim, name)([{"params": [a]}, {"params": [b]}], lr=0.1)
    opt.param_groups[1]["lr"] = -1.0  # e.g. a broken schedule
    with pytest.raises(ValueError, match=r"invalid lr=-1.0 in param_groups\[1\]"):
        opt.step()
    assert numpy.all(a.numpy() == 1) and numpy.all(b.numpy() == 1) and not opt.state
    assert a._version == 0


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_bad_gradient_found_before_any_update(name):
    a, b = _two_params_with_grads()
    opt = getattr(optim, name)([a, b], lr=0.1, momentum=0.9) if name != "Adam" else optim.Adam([a, b])
    b.grad = gradflow.Tensor(numpy.ones(4))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] has shape \(2, 2\) but its grad has "
                                         r"shape \(4,\)"):
        opt.step()
    b.grad = gradflow.Tensor(numpy.ones((2, 2), dtype=numpy.float32))
    with pytest.raises(TypeError, match="dtype float64 but its grad has dtype float32"):
        opt.step()
    assert numpy.all(a.numpy() == 1) and not opt.state


def test_step_skips_params_without_grad_and_bumps_versions():
    a, b = _two_params_with_grads()
    b.grad = None
    opt = optim.SGD([a, b], lr=0.5)
    opt.step()
    assert numpy.all(a.numpy() == 0.5) and numpy.all(b.numpy() == 1)
    assert a._version == 1 and b._version == 0


def test_stale_saved_tensor_detected_after_step():
    w = nn.Parameter(numpy.array([1.0, 2.0]))
    y = (w * w).sum()
    w.grad = gradflow.Tensor(numpy.ones(2))
    optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_param_group_errors():
    w = nn.Parameter(numpy.zeros(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [w]}, {"params": [w]}], lr=0.1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        optim.SGD(w, lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([w * 2], lr=0.1)
    opt = optim.SGD([w], lr=0.1)
    v = nn.Parameter(numpy.zeros(3))
    opt.add_param_group({"params": v, "lr": 0.5, "momentum": 0.9})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["dampening"] == 0
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [v]})
    assert "Parameter Group 1" in repr(opt) and "momentum: 0.9" in repr(opt)


def test_zero_grad_and_closure():
    w = nn.Parameter(numpy.array([3.0]))
    opt = optim.SGD([w], lr=0.25)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        calls.append(loss.item())
        return loss
    with gradflow.no_grad():  # the closure re-enables gradients itself
        loss = opt.step(closure)
    assert loss.item() == 9.0 and calls == [9.0] and w.item() == pytest.approx(1.5)
    opt.zero_grad(set_to_none=False)
    assert w.grad.numpy().tolist() == [0.0]
    opt.zero_grad()
    assert w.grad is None


# ---- state dicts ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(amsgrad=True)),
                                         ("Adagrad", {}), ("Adadelta", {}), ("RMSprop", dict(centered=True,
                                                                                            momentum=0.5))])
def test_state_dict_round_trip_through_a_file(tmp_path, name, kwargs):
    data = batches(10)
    straight = small_model()
    train_ours(straight, getattr(optim, name)(straight.parameters(), **kwargs), data)

    first = small_model()
    opt = getattr(optim, name)(first.parameters(), **kwargs)
    train_ours(first, opt, data[:5])
    serialization.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.npz")

    saved = serialization.load(tmp_path / "ckpt.npz")
    resumed = small_model(seed=99)  # different weights, overwritten by the load
    resumed.load_state_dict(saved["model"])
    opt2 = getattr(optim, name)(resumed.parameters(), lr=123.0)  # hyperparameters come from the file
    opt2.load_state_dict(saved["optimizer"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train_ours(resumed, opt2, data[5:])
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert numpy.array_equal(p.numpy(), q.numpy())


def test_load_state_dict_checks_before_changing():
    model = small_model()
    opt = optim.Adam(model.parameters())
    train_ours(model, opt, batches(1))
    sd = opt.state_dict()
    other = optim.Adam(small_model().parameters(), lr=0.5)
    bad = {"state": dict(sd["state"]), "param_groups": sd["param_groups"]}
    bad["state"][0] = dict(bad["state"][0], exp_avg=gradflow.Tensor(numpy.zeros((7, 7))))
    with pytest.raises(ValueError, match=r"state 'exp_avg' for parameter 0 has shape \(7, 7\)"):
        other.load_state_dict(bad)
    assert other.param_groups[0]["lr"] == 0.5 and not other.state
    with pytest.raises(ValueError, match="has 1 parameter groups, this optimizer has 2"):
        optim.Adam([{"params": [nn.Parameter(numpy.zeros(1))]},
                    {"params": [nn.Parameter(numpy.zeros(1))]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="has 4 parameters, this optimizer's has 1"):
        optim.Adam([nn.Parameter(numpy.zeros(1))]).load_state_dict(sd)


def test_loaded_state_takes_the_parameter_dtype():
    model = small_model(numpy.float32)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_ours(model, opt, batches(1), numpy.float32)
    sd = opt.state_dict()
    sd["state"][0]["momentum_buffer"] = gradflow.Tensor(sd["state"][0]["momentum_buffer"].numpy().astype(numpy.float64))
    opt.load_state_dict(sd)
    assert opt.state[next(model.parameters())]["momentum_buffer"].dtype == numpy.float32
    train_ours(model, opt, batches(1), numpy.float32)
    assert math.isfinite(float(next(model.parameters()).numpy().sum()))


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01))])
def test_training_step_replays_under_compile(name, kwargs):
    """step/zero_grad are replay_as_call: a gradflow.compile-d step equals the eager one bit for bit."""
    def make_step(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)  # (the fused cross-entropy keeps its targets as a constant)
            loss.backward()
            opt.step()
            return loss
        return step
    eager_model, compiled_model = small_model(), small_model()
    eager = make_step(eager_model, getattr(optim, name)(eager_model.parameters(), **kwargs))
    compiled_opt = getattr(optim, name)(compiled_model.parameters(), **kwargs)
    compiled = gradflow.compile(make_step(compiled_model, compiled_opt), strict=True)
    data = [(gradflow.Tensor(x), gradflow.Tensor(numpy.eye(2)[y])) for x, y in batches(4)]
    for i in range(12):
        a, b = eager(*data[i % 4]), compiled(*data[i % 4])
        assert a.data.tobytes() == b.data.tobytes(), f"step {i}"
    assert compiled.captured
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        assert numpy.array_equal(p.numpy(), q.numpy())
    if name == "Adam":
        assert compiled_opt.state[next(compiled_model.parameters())]["step"] == 12


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3},
                                    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
                                    {"momentum": 0.5, "weight_decay": 5e-4, "maximize": True}],
                         ids=["plain", "momentum", "dampening", "nesterov-decay", "maximize-decay"])
def test_sgd_steps_are_torchs_bit_for_bit(dtype, kwargs):
    """torch adds with alpha= (param.add_(buf, alpha=-lr), grad.add(param, alpha=weight_decay)) by one
    fused multiply-add per element; NumPy's p + (-lr) * buf rounds twice and 1-2 % of the elements came
    out one ulp off after a step. With BLAS axpy the CPU update rounds as torch's. Shapes include a
    Linear weight (stored (in, out) here), odd sizes and a scalar."""
    torch = pytest.importorskip("torch")
    from gradflow import blas
    if not blas.fused():
        pytest.skip("NumPy here has no OpenBLAS axpy to round once (the update rounds twice)")
    rng = numpy.random.default_rng(3)
    lin = nn.Linear(37, 19)
    lin = lin.double() if dtype == "float64" else lin
    extra = [gradflow.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in ((1001,), (3, 5), ())]
    ours = [lin.weight, lin.bias] + extra
    theirs = [torch.tensor(p.numpy().copy(), requires_grad=True) for p in ours]
    opt = optim.SGD(ours, lr=0.05, **kwargs)
    topt = torch.optim.SGD(theirs, lr=0.05, **kwargs)
    for _ in range(4):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in ours]
        for p, t, g in zip(ours, theirs, grads):
            p.grad, t.grad = gradflow.tensor(g), torch.tensor(g)
        opt.step()
        topt.step()
        for p, t in zip(ours, theirs):
            assert p.numpy().tobytes() == t.detach().numpy().tobytes()
