"""Issue 13's schedules step for step against torch.optim.lr_scheduler (rates and cycled momenta)."""
import numpy
import pytest
import torch

import gradflow as gf
from gradflow.optim import lr_scheduler as S

STEPS = 40


def _pair(opt_name, **kw):
    a, b = gf.nn.Parameter(numpy.zeros(2)), gf.nn.Parameter(numpy.zeros(3))
    ta, tb = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    ours = getattr(gf.optim, opt_name)([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.2, **kw)
    theirs = getattr(torch.optim, opt_name)([{"params": [ta]}, {"params": [tb], "lr": 0.05}], lr=0.2, **kw)
    return ours, theirs


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in opt.param_groups]


SCHEDULES = {
    "PolynomialLR": ("SGD", {}, lambda M, o: M.PolynomialLR(o, total_iters=12, power=2.0)),
    "PolynomialLR-linear": ("SGD", {}, lambda M, o: M.PolynomialLR(o, total_iters=30)),
    "CosineAnnealingWarmRestarts": ("SGD", {}, lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=5, eta_min=0.01)),
    "CosineAnnealingWarmRestarts-mult": ("SGD", {}, lambda M, o: M.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    "CyclicLR": ("SGD", dict(momentum=0.9), lambda M, o: M.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=4)),
    "CyclicLR-triangular2": ("SGD", dict(momentum=0.9),
                             lambda M, o: M.CyclicLR(o, 0.01, 0.1, step_size_up=3, step_size_down=5,
                                                     mode="triangular2")),
    "CyclicLR-exp_range-adam": ("Adam", {}, lambda M, o: M.CyclicLR(o, 0.001, 0.01, step_size_up=5, mode="exp_range",
                                                                   gamma=0.95)),
    "CyclicLR-no-momentum": ("Adagrad", {}, lambda M, o: M.CyclicLR(o, 0.001, 0.01, 4, cycle_momentum=False)),
    "OneCycleLR": ("SGD", dict(momentum=0.9), lambda M, o: M.OneCycleLR(o, max_lr=[0.5, 0.1], total_steps=STEPS)),
    "OneCycleLR-linear-3phase-adam": ("Adam", {}, lambda M, o: M.OneCycleLR(o, max_lr=0.01, epochs=4,
                                                                            steps_per_epoch=10,
                                                                            anneal_strategy="linear",
                                                                            three_phase=True)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_matches_torch_step_for_step(name):
    opt_name, kw, make = SCHEDULES[name]
    ours_opt, theirs_opt = _pair(opt_name, **kw)
    ours, theirs = make(S, ours_opt), make(torch.optim.lr_scheduler, theirs_opt)
    assert ours.get_last_lr() == theirs.get_last_lr()
    assert _momenta(ours_opt) == _momenta(theirs_opt)
    for step in range(STEPS - 1 if "OneCycle" in name else STEPS):
        _step_both(ours_opt, theirs_opt, ours, theirs, step)
        assert _momenta(ours_opt) == _momenta(theirs_opt), f"step {step + 1}"


def _step_both(ours_opt, theirs_opt, ours, theirs, step):
    """One optimizer and scheduler step on each side; the rates must agree exactly."""
    ours_opt.step()
    theirs_opt.step()
    ours.step()
    theirs.step()
    assert ours.get_last_lr() == theirs.get_last_lr(), f"step {step + 1}"
    assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in theirs_opt.param_groups]


def test_warm_restarts_fractional_epochs():
    ours_opt, theirs_opt = _pair("SGD")
    ours = S.CosineAnnealingWarmRestarts(ours_opt, T_0=4, T_mult=2)
    theirs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(theirs_opt, T_0=4, T_mult=2)
    for epoch in (0.5, 1.25, 3.9, 4.0, 7.5, 13.0, 30.2):
        ours.step(epoch)
        theirs.step(epoch)
        assert ours.get_last_lr() == theirs.get_last_lr()


@pytest.mark.parametrize("kw", [dict(), dict(mode="max", threshold_mode="abs", threshold=0.1, patience=1),
                                dict(patience=2, cooldown=2, factor=0.5, min_lr=[0.05, 0.01]),
                                dict(patience=0, eps=0.1)])
def test_reduce_on_plateau_matches_torch(kw):
    ours_opt, theirs_opt = _pair("SGD")
    ours = S.ReduceLROnPlateau(ours_opt, **kw)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs_opt, **kw)
    rng = numpy.random.default_rng(0)
    metrics = list(numpy.linspace(1.0, 0.5, 8)) + list(1.0 + rng.random(30) * 0.01) + [0.1, 0.1, 0.2]
    for m in metrics:
        ours.step(gf.tensor(m) if m > 0.9 else m)  # a Tensor metric works like a float
        theirs.step(m)
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert (ours.num_bad_epochs, ours.cooldown_counter, ours.best) == \
            (theirs.num_bad_epochs, theirs.cooldown_counter, theirs.best)
    sd = ours.state_dict()
    again = S.ReduceLROnPlateau(ours_opt, **kw)
    again.load_state_dict(sd)
    assert again.best == ours.best and again.num_bad_epochs == ours.num_bad_epochs


def test_state_dict_round_trip_cyclic():
    opt, _ = _pair("SGD", momentum=0.9)
    s = S.CyclicLR(opt, 0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.9)
    for _ in range(5):
        s.step()
    sd = s.state_dict()
    assert not any(callable(v) for v in sd.values())
    opt2, _ = _pair("SGD", momentum=0.9)
    s2 = S.CyclicLR(opt2, 0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.9)
    s2.load_state_dict(sd)
    s.step()
    s2.step()
    assert s.get_last_lr() == s2.get_last_lr()


def test_errors():
    opt, _ = _pair("Adagrad")
    with pytest.raises(ValueError, match="momentum"):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        S.OneCycleLR(opt, max_lr=0.1, cycle_momentum=False)
    with pytest.raises(ValueError, match="Factor"):
        S.ReduceLROnPlateau(opt, factor=1.0)
    one = S.OneCycleLR(opt, max_lr=0.1, total_steps=2, cycle_momentum=False)
    one.step()
    one.step()
    with pytest.raises(ValueError, match="Tried to step 3 times"):
        one.step()


def test_nested_sequential_lr_matches_torch():
    """A SequentialLR inside a SequentialLR: the undo of the children's construction steps goes
    down to the inner one's children (torch's recursive_undo), or its warm-up starts at 4x its end."""
    def build(sched, opt):
        inner = sched.SequentialLR(opt, [sched.LinearLR(opt, start_factor=0.1, total_iters=3),
                                         sched.ExponentialLR(opt, gamma=0.8)], milestones=[3])
        return sched.SequentialLR(opt, [inner, sched.StepLR(opt, 2, 0.5)], milestones=[8])

    ours = gf.optim.SGD([gf.nn.Parameter(numpy.ones(2, numpy.float32))], lr=0.1)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    a, b = build(S, ours), build(torch.optim.lr_scheduler, theirs)
    for _ in range(12):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
        ours.step(), theirs.step(), a.step(), b.step()


class _Warmup:
    """A stateful lr_lambda: a callable object whose attributes are its state."""

    def __init__(self):
        self.k = 1.0

    def __call__(self, epoch):
        self.k *= 0.5
        return self.k


def test_lambda_lr_state_dict_keeps_a_callable_objects_state_as_torch():
    """torch saves a callable object's attributes with the scheduler; a resumed run here restarted
    the callable afresh (twice the learning rate after one step)."""
    lrs = []
    for opt_mod, sched in ((gf.optim, S), (torch.optim, torch.optim.lr_scheduler)):
        params = [gf.nn.Parameter(numpy.ones(2, numpy.float32))] if opt_mod is gf.optim else \
            [torch.nn.Parameter(torch.ones(2))]
        opt = opt_mod.SGD(params, lr=0.1)
        first = sched.LambdaLR(opt, _Warmup())
        opt.step(), first.step()
        state = first.state_dict()
        assert state["lr_lambdas"] == [{"k": 0.25}]
        resumed = sched.LambdaLR(opt, _Warmup())
        resumed.load_state_dict(state)
        opt.step(), resumed.step()
        lrs.append(opt.param_groups[0]["lr"])
        assert sched.LambdaLR(opt, lambda e: 1.0).state_dict()["lr_lambdas"] == [None]   # a function: not saved
    assert lrs[0] == pytest.approx(lrs[1], rel=1e-12)


# ---- MultiplicativeLR and ChainedScheduler -----------------------------------------------------------------------
class _Decay:
    """A callable object with state: torch's state_dict saves its attributes."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return self.rate if epoch % 3 else 1.0


CHAINS = {
    "MultiplicativeLR": lambda M, o: M.MultiplicativeLR(o, lambda e: 0.95),
    "MultiplicativeLR-per-group": lambda M, o: M.MultiplicativeLR(o, [lambda e: 0.9, lambda e: 1.0 - 0.01 * e]),
    "MultiplicativeLR-object": lambda M, o: M.MultiplicativeLR(o, _Decay(0.8)),
    "Chained-constant-exponential": lambda M, o: M.ChainedScheduler(
        [M.ConstantLR(o, factor=0.1, total_iters=2), M.ExponentialLR(o, gamma=0.9)]),
    "Chained-multiplicative-step-linear": lambda M, o: M.ChainedScheduler(
        [M.MultiplicativeLR(o, lambda e: 0.97), M.StepLR(o, 4, gamma=0.5),
         M.LinearLR(o, start_factor=0.25, total_iters=6)], optimizer=o),
    "Chained-with-sequential": lambda M, o: M.ChainedScheduler(
        [M.SequentialLR(o, [M.LinearLR(o, start_factor=0.5, total_iters=3), M.ExponentialLR(o, gamma=0.9)],
                        milestones=[3]), M.MultiplicativeLR(o, lambda e: 0.98)]),
}


@pytest.mark.parametrize("name", CHAINS)
def test_multiplicative_and_chained_match_torch_for_20_steps(name):
    ours_opt, theirs_opt = _pair("SGD", momentum=0.9)
    ours, theirs = CHAINS[name](S, ours_opt), CHAINS[name](torch.optim.lr_scheduler, theirs_opt)
    assert ours.get_last_lr() == theirs.get_last_lr()
    for step in range(20):
        _step_both(ours_opt, theirs_opt, ours, theirs, step)


@pytest.mark.parametrize("name", ["MultiplicativeLR-object", "Chained-multiplicative-step-linear",
                                  "Chained-constant-exponential"])
def test_multiplicative_and_chained_state_dict_resume_as_torch(name):
    """Save after 7 steps; rebuild on a fresh optimizer that loads the optimizer's state, load the
    scheduler's, run 13 more: the same rates as torch doing the same (the rebuild's construction
    steps included), and as the run that was not interrupted, where torch's is."""
    ours_opt, theirs_opt = _pair("SGD")
    ours, theirs = CHAINS[name](S, ours_opt), CHAINS[name](torch.optim.lr_scheduler, theirs_opt)
    if name == "MultiplicativeLR-object":
        ours.lr_lambdas[0].rate = theirs.lr_lambdas[0].rate = 0.7  # state a resumed run must keep
    for _ in range(7):
        for o, sch in ((ours_opt, ours), (theirs_opt, theirs)):
            o.step()
            sch.step()
    new_opt, new_theirs_opt = _pair("SGD")
    new_opt.load_state_dict(ours_opt.state_dict())
    new_theirs_opt.load_state_dict(theirs_opt.state_dict())
    resumed = CHAINS[name](S, new_opt)
    resumed_theirs = CHAINS[name](torch.optim.lr_scheduler, new_theirs_opt)
    resumed.load_state_dict(ours.state_dict())
    resumed_theirs.load_state_dict(theirs.state_dict())
    if name == "MultiplicativeLR-object":
        assert resumed.lr_lambdas[0].rate == 0.7
    assert resumed.get_last_lr() == resumed_theirs.get_last_lr() == theirs.get_last_lr()
    for step in range(13):
        for o, sch in ((new_opt, resumed), (new_theirs_opt, resumed_theirs), (theirs_opt, theirs)):
            o.step()
            sch.step()
        assert resumed.get_last_lr() == resumed_theirs.get_last_lr(), f"step {step + 8}"
        assert [g["lr"] for g in new_opt.param_groups] == [g["lr"] for g in new_theirs_opt.param_groups]
        if name == "MultiplicativeLR-object":  # one scheduler: the resumed run is the uninterrupted one
            assert resumed.get_last_lr() == theirs.get_last_lr()


def test_chained_scheduler_errors():
    opt, _ = _pair("SGD")
    other, _ = _pair("SGD")
    with pytest.raises(ValueError, match="at least one scheduler"):
        S.ChainedScheduler([])
    with pytest.raises(ValueError, match="same optimizer"):
        S.ChainedScheduler([S.ExponentialLR(opt, 0.9), S.ExponentialLR(other, 0.9)])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        S.ChainedScheduler([S.ExponentialLR(opt, 0.9), S.ReduceLROnPlateau(opt)])
    with pytest.raises(ValueError, match="lr_lambdas"):
        S.MultiplicativeLR(opt, [lambda e: 0.9])


class _Shrink:
    """A stateful CyclicLR scale_fn: a callable object whose attribute is its state."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return 1.0 / (1.0 + 0.1 * self.calls)


def test_cyclic_lr_state_dict_keeps_a_scale_fn_objects_state_as_torch():
    """torch saves a callable scale_fn object's attributes with CyclicLR (and its load_state_dict
    expects the entry): a resumed run here restarted the callable afresh (other rates), and torch
    could not load this state dict (KeyError '_scale_fn_custom')."""
    rates = []
    for opt_mod, sched in ((gf.optim, S), (torch.optim, torch.optim.lr_scheduler)):
        params = [gf.nn.Parameter(numpy.ones(2, numpy.float32))] if opt_mod is gf.optim else \
            [torch.nn.Parameter(torch.ones(2))]
        opt = opt_mod.SGD(params, lr=0.1, momentum=0.9)
        first = sched.CyclicLR(opt, 0.01, 0.1, step_size_up=3, scale_fn=_Shrink())
        for _ in range(4):
            opt.step(), first.step()
        state = first.state_dict()
        assert state["_scale_fn_custom"] == {"calls": first._scale_fn_custom.calls}
        resumed = sched.CyclicLR(opt, 0.01, 0.1, step_size_up=3, scale_fn=_Shrink())
        resumed.load_state_dict(dict(state))
        for _ in range(3):
            opt.step(), resumed.step()
        rates.append(resumed.get_last_lr())
        assert sched.CyclicLR(opt, 0.01, 0.1, scale_fn=lambda x: 1.0).state_dict()["_scale_fn_custom"] is None
    assert rates[0] == pytest.approx(rates[1], rel=1e-12)
    ours = S.CyclicLR(gf.optim.SGD([gf.nn.Parameter(gf.ones(1))], lr=0.1), 0.01, 0.1)
    theirs = torch.optim.lr_scheduler.CyclicLR(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), 0.01, 0.1)
    theirs.load_state_dict(ours.state_dict())  # raised KeyError: '_scale_fn_custom'
