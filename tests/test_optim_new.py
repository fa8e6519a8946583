"""NAdam, RAdam and Adamax step for step against torch.optim (float64 and float32)."""
import numpy
import pytest
import torch

import gradflow as gf

CASES = {
    "nadam": ("NAdam", dict(lr=0.01)),
    "nadam_wd_decay": ("NAdam", dict(lr=0.02, betas=(0.8, 0.9), weight_decay=0.1, momentum_decay=0.01)),
    "nadam_decoupled_maximize": ("NAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True,
                                               maximize=True)),
    "radam": ("RAdam", dict(lr=0.01)),
    "radam_rectifies_early": ("RAdam", dict(lr=0.01, betas=(0.9, 0.9))),  # rho_t > 5 from step 6 or so
    "radam_wd": ("RAdam", dict(lr=0.02, betas=(0.5, 0.7), eps=1e-6, weight_decay=0.1)),
    "radam_decoupled_maximize": ("RAdam", dict(lr=0.01, betas=(0.9, 0.8), weight_decay=0.1,
                                               decoupled_weight_decay=True, maximize=True)),
    "adamax": ("Adamax", dict(lr=0.01)),
    "adamax_wd_maximize": ("Adamax", dict(lr=0.05, betas=(0.7, 0.8), eps=1e-4, weight_decay=0.1, maximize=True)),
}
STEPS = 25


def _run(name, kwargs, dtype):
    rng = numpy.random.default_rng(0)
    w0 = rng.standard_normal((6, 4)).astype(dtype)
    grads = [rng.standard_normal((6, 4)).astype(dtype) for _ in range(STEPS)]
    grads[3][0, 0] = 0.0
    p = gf.nn.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    ours = getattr(gf.optim, name)([p], **kwargs)
    theirs = getattr(torch.optim, name)([tp], foreach=False, **kwargs)
    for g in grads:
        p.grad = gf.tensor(g.copy())
        tp.grad = torch.tensor(g.copy())
        ours.step()
        theirs.step()
        yield p.numpy(), tp.detach().numpy()


@pytest.mark.parametrize("case", CASES)
def test_float64_step_for_step(case):
    """Same rule and operation order; torch's vectorized CPU kernels contract to FMAs, so the last bit may differ."""
    name, kwargs = CASES[case]
    for step, (a, b) in enumerate(_run(name, kwargs, numpy.float64)):
        numpy.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-16, err_msg=f"step {step + 1}")


@pytest.mark.parametrize("case", CASES)
def test_float32(case):
    name, kwargs = CASES[case]
    for step, (a, b) in enumerate(_run(name, kwargs, numpy.float32)):
        numpy.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=f"step {step + 1}")


@pytest.mark.parametrize("name", ["NAdam", "RAdam", "Adamax"])
def test_defaults_and_state_dict_match_torch(name):
    p = gf.nn.Parameter(gf.ones(3))
    tp = torch.nn.Parameter(torch.ones(3))
    ours, theirs = getattr(gf.optim, name)([p]), getattr(torch.optim, name)([tp])
    for key, value in ours.defaults.items():
        assert key in theirs.defaults and theirs.defaults[key] == value, key
    p.grad, tp.grad = gf.ones(3), torch.ones(3)
    ours.step()
    theirs.step()
    assert set(ours.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])
    sd = ours.state_dict()
    again = getattr(gf.optim, name)([gf.nn.Parameter(gf.ones(3))])
    again.load_state_dict(sd)
    assert again.state_dict()["state"][0]["step"] == 1


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta1"):
        gf.optim.NAdam([gf.nn.Parameter(gf.ones(1))], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr"):
        gf.optim.Adamax([gf.nn.Parameter(gf.ones(1))], lr=-1)


def _as_gradflow(value):
    if isinstance(value, torch.Tensor):
        return gf.tensor(value.detach().numpy().copy())
    if isinstance(value, dict):
        return {k: _as_gradflow(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_gradflow(v) for v in value]
    return value


@pytest.mark.parametrize("name, kwargs", [("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01)),
                                          ("NAdam", dict(lr=0.01)), ("RAdam", dict(lr=0.01)),
                                          ("Adamax", dict(lr=0.01)), ("RMSprop", dict(lr=0.01, momentum=0.5)),
                                          ("Adagrad", dict(lr=0.1)), ("Adadelta", dict(lr=0.5))])
@pytest.mark.parametrize("shape", [(6, 4), ()])
def test_torch_optimizer_state_dict_resumes_in_gradflow(name, kwargs, shape):
    """torch keeps step counts (and NAdam's mu_product) as 0-d tensors: loading its state dict,
    as Tensors, refused them as state 'of shape ()' for a parameter of another shape; they are
    numbers, and the resumed run continues as torch's own continuation."""
    rng = numpy.random.default_rng(1)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(8)]
    tp = torch.nn.Parameter(torch.tensor(w0))
    theirs = getattr(torch.optim, name)([tp], foreach=False, **kwargs)
    for g in grads[:4]:
        tp.grad = torch.tensor(g)
        theirs.step()
    p = gf.nn.Parameter(gf.tensor(tp.detach().numpy().copy()))
    ours = getattr(gf.optim, name)([p], **kwargs)
    ours.load_state_dict(_as_gradflow(theirs.state_dict()))
    for g in grads[4:]:
        tp.grad, p.grad = torch.tensor(g), gf.tensor(g)
        theirs.step()
        ours.step()
        numpy.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-13, atol=1e-15)
    assert ours.state_dict()["state"][0]["step"] == 8
