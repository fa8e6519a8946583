"""Fused optimizer updates, step for step against torch.optim (single-tensor, foreach=False).

The same random gradients go to ``gradflow.optim.fused`` (NumPy twins here; the host
harness shows the compiled kernels equal the twins bit for bit) and to torch's
optimizers for 20 steps, in float64 and float32. L1 has no torch counterpart: torch gets
the gradient plus ``l1 * sign(param)`` instead, which is the same rule.
"""
import numpy
import pytest

from gradflow.optim import fused

torch = pytest.importorskip("torch")

STEPS = 20
SHAPE = (7, 5)

# name -> (torch optimizer class, torch kwargs, extra gradflow kwargs)
CASES = {
    "sgd": ("SGD", dict(lr=0.1), {}),
    "sgd_wd": ("SGD", dict(lr=0.1, weight_decay=0.05), {}),
    "sgd_momentum": ("SGD", dict(lr=0.1, momentum=0.9), {}),
    "sgd_dampening_wd": ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01), {}),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), {}),
    "sgd_maximize_l1": ("SGD", dict(lr=0.1, momentum=0.5, maximize=True), dict(l1=0.01)),
    "adam": ("Adam", dict(lr=0.01), {}),
    "adam_betas_wd": ("Adam", dict(lr=0.02, betas=(0.3, 0.5), eps=1e-6, weight_decay=0.1), {}),
    "adam_amsgrad": ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01), {}),
    "adam_maximize_l1": ("Adam", dict(lr=0.01, maximize=True), dict(l1=0.02)),
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1), {}),
    "adamw_amsgrad_l1": ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True), dict(l1=0.01)),
    "adagrad": ("Adagrad", dict(lr=0.1), {}),
    "adagrad_decay_wd": ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05, eps=1e-8), {}),
    "adagrad_maximize_l1": ("Adagrad", dict(lr=0.1, maximize=True), dict(l1=0.01)),
    "adadelta": ("Adadelta", dict(), {}),
    "adadelta_wd": ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05), {}),
    "adadelta_maximize_l1": ("Adadelta", dict(maximize=True), dict(l1=0.01)),
    "rmsprop": ("RMSprop", dict(lr=0.01), {}),
    "rmsprop_centered": ("RMSprop", dict(lr=0.01, centered=True, weight_decay=0.01), {}),
    "rmsprop_momentum": ("RMSprop", dict(lr=0.01, momentum=0.9, alpha=0.9), {}),
    "rmsprop_centered_momentum": ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, alpha=0.3), {}),
    "rmsprop_maximize_l1": ("RMSprop", dict(lr=0.01, maximize=True), dict(l1=0.01)),
}
DEFAULTS = {
    "SGD": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    "Adam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False),
    "AdamW": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False, maximize=False),
    "Adagrad": dict(lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
    "RMSprop": dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
}
STATE = {"SGD": ["momentum_buffer"], "Adam": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
         "AdamW": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], "Adagrad": ["sum"],
         "Adadelta": ["square_avg", "acc_delta"], "RMSprop": ["square_avg", "grad_avg", "momentum_buffer"]}


class Ours:
    """Drives the fused functions the way an optimizer class would, keeping torch's state names."""

    def __init__(self, kind, hp, extra, param):
        self.kind, self.hp, self.l1, self.p = kind, dict(DEFAULTS[kind], **hp), extra.get("l1", 0.0), param
        self.state = {name: numpy.zeros_like(param) for name in STATE[kind]}
        self.step_count = 0

    def step(self, grad):
        hp, s, p = self.hp, self.state, self.p
        self.step_count += 1
        if self.kind == "SGD":
            fused.sgd_(p, grad, s["momentum_buffer"] if hp["momentum"] else None, lr=hp["lr"],
                       momentum=hp["momentum"], dampening=hp["dampening"], nesterov=hp["nesterov"],
                       weight_decay=hp["weight_decay"], l1=self.l1, maximize=hp["maximize"],
                       first_step=self.step_count == 1)
        elif self.kind in ("Adam", "AdamW"):
            fused.adam_(p, grad, s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"], lr=hp["lr"],
                        beta1=hp["betas"][0], beta2=hp["betas"][1], eps=hp["eps"], weight_decay=hp["weight_decay"],
                        step=self.step_count, amsgrad=hp["amsgrad"], decoupled_weight_decay=self.kind == "AdamW",
                        l1=self.l1, maximize=hp["maximize"])
        elif self.kind == "Adagrad":
            fused.adagrad_(p, grad, s["sum"], lr=hp["lr"], lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"],
                           eps=hp["eps"], step=self.step_count, l1=self.l1, maximize=hp["maximize"])
        elif self.kind == "Adadelta":
            fused.adadelta_(p, grad, s["square_avg"], s["acc_delta"], lr=hp["lr"], rho=hp["rho"], eps=hp["eps"],
                            weight_decay=hp["weight_decay"], l1=self.l1, maximize=hp["maximize"])
        else:
            fused.rmsprop_(p, grad, s["square_avg"], s["grad_avg"] if hp["centered"] else None,
                           s["momentum_buffer"] if hp["momentum"] > 0 else None, lr=hp["lr"], alpha=hp["alpha"],
                           eps=hp["eps"], weight_decay=hp["weight_decay"], momentum=hp["momentum"],
                           centered=hp["centered"], l1=self.l1, maximize=hp["maximize"])


def _start(dtype):
    rng = numpy.random.default_rng(0)
    p = rng.standard_normal(SHAPE).astype(dtype)
    p.reshape(-1)[:3] = [0.0, -0.0, 1e-3]  # sign(0) = 0 for L1
    grads = rng.standard_normal((STEPS,) + SHAPE).astype(dtype)
    grads[:, 0, 0] = 0.0
    return p, grads


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch_step_for_step(case, dtype):
    kind, hp, extra = CASES[case]
    p0, grads = _start(dtype)
    ours = Ours(kind, hp, extra, p0.copy())
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    opt = getattr(torch.optim, kind)([tp], foreach=False, **hp)
    l1 = extra.get("l1", 0.0)
    sign = -1.0 if hp.get("maximize") else 1.0
    # float32 drifts by a few ulps per step (torch's CPU kernels use FMAs); float64 must agree to ~1e-14
    rtol, atol = (1e-13, 1e-14) if dtype == numpy.float64 else (2e-5, 2e-6)
    for k in range(STEPS):
        g = grads[k]
        tg = g + sign * l1 * numpy.sign(tp.detach().numpy()).astype(dtype) if l1 else g
        tp.grad = torch.tensor(numpy.ascontiguousarray(tg, dtype=dtype))
        opt.step()
        ours.step(g)
        numpy.testing.assert_allclose(ours.p, tp.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"step {k + 1}")
    assert ours.p.dtype == dtype
    state = opt.state[tp]
    for name, value in ours.state.items():
        if name in state and state[name] is not None:
            numpy.testing.assert_allclose(value, state[name].numpy(), rtol=rtol * 10, atol=atol, err_msg=name)


def test_updates_in_place_and_checks_arguments():
    p = numpy.ones(4)
    buf = numpy.zeros(4)
    alias = p
    assert fused.sgd_(p, numpy.ones(4), buf, lr=0.5, momentum=0.9, first_step=True) is None
    assert alias is p and (p == 0.5).all() and (buf == 1).all()
    with pytest.raises(ValueError):
        fused.sgd_(p, numpy.ones(4), None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError):
        fused.sgd_(p, numpy.ones(5), None, lr=0.1)
    with pytest.raises(ValueError):
        fused.sgd_(p, numpy.ones(4), buf, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)
    with pytest.raises(TypeError):
        fused.sgd_(numpy.ones(4, numpy.int64), numpy.ones(4, numpy.int64), None, lr=0.1)
    with pytest.raises(ValueError):
        fused.adam_(p, numpy.ones(4), buf, buf.copy(), None, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                    weight_decay=0, step=1, amsgrad=True)
    with pytest.raises(ValueError):
        fused.rmsprop_(p, numpy.ones(4), buf, None, None, lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0,
                       momentum=0, centered=True)


def test_l1_pulls_toward_zero():
    p = numpy.array([2.0, -2.0, 0.0])
    fused.sgd_(p, numpy.zeros(3), None, lr=0.5, l1=0.2)
    numpy.testing.assert_array_equal(p, [1.9, -1.9, 0.0])


def test_flat_buffer_updates_every_view_in_one_call():
    rng = numpy.random.default_rng(11)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal(s) for s in shapes]
    flat_p, views = fused.flat_buffer(params)
    flat_g, _ = fused.flat_buffer(grads)
    flat_m, _ = fused.flat_buffer([numpy.zeros(s) for s in shapes])
    flat_v, _ = fused.flat_buffer([numpy.zeros(s) for s in shapes])
    assert all(v.base is flat_p for v in views) and [v.shape for v in views] == shapes
    hp = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1)
    fused.adam_(flat_p, flat_g, flat_m, flat_v, None, **hp)
    for p, g, v in zip(params, grads, views):
        fused.adam_(p, g, numpy.zeros_like(p), numpy.zeros_like(p), None, **hp)
        numpy.testing.assert_array_equal(v, p)
