"""Learning-rate schedules against torch.optim.lr_scheduler, closed forms, state dicts; momentum warm-up."""
import math

import numpy
import pytest

import gradflow
from gradflow import nn, optim, serialization
from gradflow.optim import lr_scheduler as S

EPOCHS = 25


def two_groups(opt_cls=optim.SGD, **kwargs):
    a, b = nn.Parameter(numpy.zeros(2)), nn.Parameter(numpy.zeros(3))
    return opt_cls([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.2, **kwargs)


def lrs(scheduler, steps=EPOCHS):
    values = [scheduler.get_last_lr()]
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        values.append(scheduler.get_last_lr())
        assert values[-1] == [g["lr"] for g in scheduler.optimizer.param_groups]
    return values


SCHEDULES = {
    "StepLR": lambda M, o: M.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda M, o: M.MultiStepLR(o, milestones=[3, 7, 7, 15], gamma=0.3),
    "ExponentialLR": lambda M, o: M.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, T_max=10, eta_min=0.001),  # runs past T_max
    "LinearLR": lambda M, o: M.LinearLR(o, start_factor=0.1, total_iters=6),
    "LinearLR-decay": lambda M, o: M.LinearLR(o, start_factor=1.0, end_factor=0.25, total_iters=8),
    "LambdaLR": lambda M, o: M.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "LambdaLR-per-group": lambda M, o: M.LambdaLR(o, [lambda e: 0.9 ** e, lambda e: 1 + e]),
    "SequentialLR": lambda M, o: M.SequentialLR(o, [M.LinearLR(o, start_factor=0.2, total_iters=3),
                                                    M.CosineAnnealingLR(o, T_max=12)], milestones=[3]),
    "ConstantLR": lambda M, o: M.ConstantLR(o, factor=0.5, total_iters=4),
    "SequentialLR-3": lambda M, o: M.SequentialLR(o, [M.ConstantLR(o, factor=0.5, total_iters=2),
                                                      M.ExponentialLR(o, 0.8), M.StepLR(o, 3, 0.5)],
                                                  milestones=[4, 9]),
}


def _torch_optimizer(torch):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.2)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours = lrs(SCHEDULES[name](S, two_groups()))
    theirs = lrs(SCHEDULES[name](torch.optim.lr_scheduler, _torch_optimizer(torch)))
    for epoch, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=1e-14, abs=1e-16), f"epoch {epoch}: {a} vs {b}"


def test_closed_forms_without_torch():
    step = lrs(S.StepLR(two_groups(), step_size=3, gamma=0.1), 7)
    assert [v[0] for v in step] == pytest.approx([0.2, 0.2, 0.2, 0.02, 0.02, 0.02, 0.002, 0.002])
    multi = lrs(S.MultiStepLR(two_groups(), [2, 5, 5], gamma=0.5), 6)
    assert [v[1] for v in multi] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.025, 0.00625, 0.00625])
    exp = lrs(S.ExponentialLR(two_groups(), 0.5), 3)
    assert [v[0] for v in exp] == pytest.approx([0.2, 0.1, 0.05, 0.025])
    cos = lrs(S.CosineAnnealingLR(two_groups(), T_max=4), 4)
    assert [v[0] for v in cos] == pytest.approx([0.2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)])
    warm = lrs(S.LinearLR(two_groups(), start_factor=0.25, total_iters=3), 5)
    assert [v[0] for v in warm] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    const = lrs(S.ConstantLR(two_groups(), factor=0.5, total_iters=2), 3)
    assert [v[0] for v in const] == pytest.approx([0.1, 0.1, 0.2, 0.2])
    lam = lrs(S.LambdaLR(two_groups(), lambda e: e + 1), 2)
    assert [v[1] for v in lam] == pytest.approx([0.05, 0.1, 0.15])
    seq = S.SequentialLR(o := two_groups(), [S.LinearLR(o, start_factor=0.5, total_iters=2),
                                             S.ExponentialLR(o, 0.5)], milestones=[2])
    assert [v[0] for v in lrs(seq, 4)] == pytest.approx([0.1, 0.15, 0.2, 0.1, 0.05])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_state_dict_round_trip(tmp_path, name):
    straight = lrs(SCHEDULES[name](S, two_groups()))
    opt = two_groups()
    sched = SCHEDULES[name](S, opt)
    first = lrs(sched, 9)
    serialization.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.npz")
    saved = serialization.load(tmp_path / "s.npz")
    opt2 = two_groups()
    sched2 = SCHEDULES[name](S, opt2)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    rest = lrs(sched2, EPOCHS - 9)
    assert first + rest[1:] == straight


def test_scheduler_errors():
    with pytest.raises(ValueError, match="start_factor"):
        S.LinearLR(two_groups(), start_factor=0)
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(two_groups(), step_size=0)
    with pytest.raises(ValueError, match="expected 2 lr_lambdas"):
        S.LambdaLR(two_groups(), [lambda e: 1.0])
    opt = two_groups()
    with pytest.raises(ValueError, match="len\\(milestones\\) == len\\(schedulers\\) - 1"):
        S.SequentialLR(opt, [S.StepLR(opt, 2), S.StepLR(opt, 3)], milestones=[])
    with pytest.raises(ValueError, match="another optimizer"):
        S.SequentialLR(opt, [S.StepLR(two_groups(), 2)], milestones=[])
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(two_groups(), 2, last_epoch=3)


def test_lambda_is_not_saved():
    sched = S.LambdaLR(two_groups(), lambda e: 1.0)   # a function: None in its place, as torch
    assert sched.state_dict()["lr_lambdas"] == [None, None] and "optimizer" not in sched.state_dict()


# ---- momentum warm-up ----------------------------------------------------------------------------------------------------
def test_momentum_warmup_values_for_sgd():
    opt = two_groups(momentum=0.9)
    warm = S.MomentumWarmup(opt, start=0.5, end=0.9, total_iters=4)
    seen = [warm.get_last_momentum()[0]]
    for _ in range(6):
        opt.step()
        warm.step()
        seen.append(opt.param_groups[1]["momentum"])
    assert seen == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9])
    assert warm.get_last_lr() == [0.2, 0.05]  # learning rates untouched


def test_momentum_warmup_drives_adam_beta1_and_round_trips():
    opt = optim.Adam([nn.Parameter(numpy.zeros(2))], betas=(0.9, 0.999))
    warm = S.MomentumWarmup(opt, start=0.5, end=0.95, total_iters=3)
    assert opt.param_groups[0]["betas"] == (0.5, 0.999)
    warm.step()
    state = warm.state_dict()
    warm.step()
    assert opt.param_groups[0]["betas"] == pytest.approx((0.8, 0.999))
    again = S.MomentumWarmup(opt, start=0.5, end=0.95, total_iters=3)
    again.load_state_dict(state)
    again.step()
    assert opt.param_groups[0]["betas"] == pytest.approx((0.8, 0.999))
    with pytest.raises(KeyError, match="no momentum or betas"):
        S.MomentumWarmup(optim.Adagrad([nn.Parameter(numpy.zeros(1))]))
    with pytest.raises(ValueError, match="end=1.0"):
        S.MomentumWarmup(opt, end=1.0)


def test_momentum_switched_on_later_matches_torch():
    """SGD built with momentum 0, raised by a schedule: the buffer starts at the first gradient, as in torch."""
    torch = pytest.importorskip("torch")
    ours = nn.Parameter(numpy.array([1.0, -1.0]))
    theirs = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = optim.SGD([ours], lr=0.1)
    topt = torch.optim.SGD([theirs], lr=0.1, foreach=False)
    warm = S.MomentumWarmup(opt, start=0.0, end=0.9, total_iters=3)
    for step in range(6):
        g = numpy.array([math.sin(step + 1.0), math.cos(step * 2.0)])
        ours.grad = gradflow.Tensor(g)
        theirs.grad = torch.tensor(g)
        topt.param_groups[0]["momentum"] = opt.param_groups[0]["momentum"]
        opt.step()
        topt.step()
        warm.step()
        assert numpy.allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12)
