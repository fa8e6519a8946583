"""Issue 12: ``optimizer.load_state_dict`` in the middle of a compiled run.

Loading state into the optimizer a compiled step uses must give the bytes eager training gives,
and must leave the step replaying its plan: the loaded values are copied into the optimizer's
existing flat state buffers (``_FlatGroup``), which the plan (and on the GPU its CUDA graph)
holds, instead of replacing them. On the GPU the one-launch replay is exercised by the host
emulation of ``tests/test_compile_one_launch.py``.
"""
import copy

import numpy
import pytest

import gradflow as gf
from gradflow import nn, optim
from gradflow.train import load_checkpoint, save_checkpoint
from test_compile_one_launch import emulated_gpu, persistent  # noqa: F401  (the fixture)
import test_compile_one_launch as one_launch
from test_compile import make_step

OPTIMIZERS = {
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-4),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=2e-3, betas=(0.8, 0.99), weight_decay=1e-4),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=2e-3, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=2e-3, weight_decay=0.05),
    "rmsprop-centered-momentum": lambda ps: optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=1e-2, lr_decay=1e-3),
}
SAVE_AT, LOAD_AT, STEPS = 4, 9, 16


def build(opt_name):
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))
    return model, opt, sched


def batches(n=3, bs=8):
    rng = numpy.random.default_rng(5)
    return [(gf.tensor(rng.standard_normal((bs, 12), dtype=numpy.float32)), gf.tensor(rng.integers(0, 4, bs)))
            for _ in range(n)]


def snapshot(opt):
    """A state_dict that later steps cannot change (state_dict() hands out the live state)."""
    sd = opt.state_dict()
    return {"state": {k: {key: v.detach().clone() if isinstance(v, gf.Tensor) else v for key, v in s.items()}
                      for k, s in sd["state"].items()},
            "param_groups": copy.deepcopy(sd["param_groups"])}


def fingerprint(model, opt, loss):
    parts = [loss.data.tobytes()] + [p.data.tobytes() for p in model.parameters()]
    for s in opt.state_dict()["state"].values():
        parts += [v.data.tobytes() if isinstance(v, gf.Tensor) else repr(v).encode() for v in s.values()]
    return b"".join(parts)


class Stepper:
    """Takes the steps of a run: eagerly, through the compiled CPU replay, or (``emulated``) on the
    one-launch GPU runner, emulated, from the third step on."""

    def __init__(self, mode, step, opt, emulated=None):
        self.mode, self.step, self.opt, self.emulated = mode, step, opt, emulated
        self.compiled = gf.compile(step, strict=True) if mode != "eager" else None
        self.runner, self.launched, self.replayed = None, [], []

    def __call__(self, i, x, y):
        if self.mode == "emulated" and i >= 2:
            if self.runner is None:
                plan = next(iter(self.compiled.cache.values())).plan
                self.runner = one_launch.compile_module._CudaGraphRunner(plan)
                self.emulated.persistent = persistent(self.opt)
            before = self.emulated.launches
            loss = self.runner.run([x.data, y.data])
            self.launched.append(self.emulated.launches - before)
            return loss
        loss = (self.compiled or self.step)(x, y)
        if self.compiled is not None and i >= 2:
            self.replayed.append(self.compiled.captured)
        return loss


def run(opt_name, mode, emulated=None, checkpoint=None):
    """``mode``: "eager", "compiled" (CPU replay) or "emulated" (the one-launch GPU runner, emulated)."""
    model, opt, sched = build(opt_name)
    stepper = Stepper(mode, make_step(model, opt), opt, emulated)
    data = batches()
    out, saved = [], None
    for i in range(STEPS):
        if i == SAVE_AT:
            saved = snapshot(opt)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, opt, sched, epoch=i)
        if i == LOAD_AT and checkpoint is not None:  # model, optimizer and schedule back to SAVE_AT
            load_checkpoint(checkpoint, model, opt, sched)
        elif i == LOAD_AT:
            buffers = {k: {key: b for key, (b, _) in layout.state.items()} for k, layout in opt._flat.items()}
            opt.load_state_dict(saved)
            sched.load_state_dict(sched.state_dict())
            for k, layout in opt._flat.items():  # the loaded state lives in the buffers the plan holds
                assert layout.state.keys() == buffers[k].keys() and layout.steady(opt.state) and \
                    all(layout.state[key][0] is b for key, b in buffers[k].items()), \
                    "load_state_dict replaced the flat state buffers the plan holds"
        x, y = data[i % len(data)]
        out.append(fingerprint(model, opt, stepper(i, x, y)))
        sched.step()
    return out, stepper.launched, stepper.replayed, stepper.compiled


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_load_state_dict_mid_run_compiled_equals_eager(opt_name):
    want, _, _, _ = run(opt_name, "eager")
    got, _, replayed, compiled = run(opt_name, "compiled")
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: compiled differs from eager after load_state_dict at {LOAD_AT}"
    assert all(replayed) and all(e.eager_reason is None for e in compiled.cache.values())


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam", "rmsprop-centered-momentum"])
def test_load_state_dict_mid_run_keeps_one_launch(opt_name, emulated_gpu):
    want, _, _, _ = run(opt_name, "eager")
    got, launched, _, _ = run(opt_name, "emulated", emulated_gpu)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: emulated GPU replay differs from eager after load_state_dict at {LOAD_AT}"
    assert launched and set(launched) == {1}, f"graph launches per step: {launched}"


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_load_checkpoint_into_the_same_objects_mid_run(opt_name, tmp_path):
    """``load_checkpoint`` back into the model, optimizer and schedule a compiled step holds: the same
    bytes as eager, and the step still replays."""
    want, _, _, _ = run(opt_name, "eager", checkpoint=tmp_path / "eager.ckpt")
    got, _, replayed, compiled = run(opt_name, "compiled", checkpoint=tmp_path / "compiled.ckpt")
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: compiled differs from eager after load_checkpoint at {LOAD_AT}"
    assert all(replayed) and all(e.eager_reason is None for e in compiled.cache.values())


def reset_run(opt_name, mode, emulated=None):
    """Load an EMPTY state mid-run (a reset: the optimizer starts its state afresh, as torch's does)."""
    model, opt, sched = build(opt_name)
    stepper = Stepper(mode, make_step(model, opt), opt, emulated)
    data = batches()
    out = []
    for i in range(STEPS):
        if i == LOAD_AT:
            opt.load_state_dict({"state": {}, "param_groups": opt.state_dict()["param_groups"]})
            assert opt.state == {}
        x, y = data[i % len(data)]
        out.append(fingerprint(model, opt, stepper(i, x, y)))
        sched.step()
    return out, stepper.launched


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_state_reset_mid_run_replays_after_one_eager_step(opt_name, emulated_gpu):
    """The reset state is created afresh at the next step; it goes into the layout's existing flat buffers
    (``state_for``), so only that one step runs eagerly and the graph launches again after it."""
    want, _ = reset_run(opt_name, "eager")
    assert reset_run(opt_name, "compiled")[0] == want
    got, launched = reset_run(opt_name, "emulated", emulated_gpu)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: emulated GPU replay differs from eager after a state reset"
    k = LOAD_AT - 2  # replays start at step 2
    assert launched[:k] == [1] * k and launched[k] == 0 and launched[k + 1:] == [1] * (STEPS - LOAD_AT - 1), launched
