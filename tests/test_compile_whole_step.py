"""Issue 12's done-when on the CPU: a replayed whole step (forward, backward, clipping, the flat
multi-tensor optimizer update, dropout draws, an LR schedule changing every step) equals eager
bit for bit over 100 steps, across a checkpoint save and resume in the middle."""
import contextlib
import re

import numpy
import pytest

import gradflow as gf
from gradflow import nn, optim
from gradflow.nn import functional as F
from gradflow.train import load_checkpoint, save_checkpoint

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05, weight_decay=1e-3),
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-4),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: optim.Adam(ps, lr=2e-3, betas=(0.8, 0.99), weight_decay=1e-4),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=2e-3, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=2e-3, weight_decay=0.05),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-3, weight_decay=1e-4),
    "rmsprop-centered-momentum": lambda ps: optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=1e-2, lr_decay=1e-3),
}


class Noisy(nn.Module):
    def forward(self, x):
        return F.noisy_relu(x, 0.05, self.training) if hasattr(F, "noisy_relu") else gf.dropout_ops.noisy_relu(
            x, 0.05, self.training)


def build(opt_name, dropout):
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), Noisy(), nn.Dropout(dropout), nn.Linear(16, 12), nn.ReLU(),
                          nn.Dropout(dropout), nn.Linear(12, 5))
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))  # a new LR every step
    return model, opt, sched


def make_step(model, opt, clip):
    def step(x, y):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss, out.detach()
    return step


def batches(n=5, bs=16):
    rng = numpy.random.default_rng(4)
    return [(gf.tensor(rng.standard_normal((bs, 20), dtype=numpy.float32)), gf.tensor(rng.integers(0, 5, bs)))
            for _ in range(n)]


def train(opt_name, dropout, clip, steps, compiled, resume_at=None, path=None):
    model, opt, sched = build(opt_name, dropout)
    step = make_step(model, opt, clip)
    if compiled:
        step = gf.compile(step, strict=True)
    data = batches()
    gf.manual_seed(11)
    losses = []
    for i in range(steps):
        if i == resume_at:  # save, then carry on in brand-new objects restored from the file
            save_checkpoint(path, model, opt, sched, epoch=i)
            model, opt, sched = build(opt_name, dropout)
            step = gf.compile(make_step(model, opt, clip), strict=True)
            load_checkpoint(path, model, opt, sched)
        loss, out = step(*data[i % len(data)])
        losses.append(loss.data.tobytes() + out.data.tobytes())
        sched.step()
    if compiled:
        assert step.captured
    return model, opt, losses


def assert_same(a, b):
    (model_a, opt_a, losses_a), (model_b, opt_b, losses_b) = a, b
    assert len(losses_a) == len(losses_b)
    for i, (x, y) in enumerate(zip(losses_a, losses_b)):
        assert x == y, f"step {i}: loss or output differs"
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert p.data.tobytes() == q.data.tobytes(), name
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for key, value in sa["state"][k].items():
            other = sb["state"][k][key]
            if isinstance(value, gf.Tensor):
                assert value.data.tobytes() == other.data.tobytes(), (k, key)
            else:
                assert value == other, (k, key)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_replay_equals_eager_over_100_steps_with_schedule_dropout_clipping_and_resume(opt_name, tmp_path):
    eager = train(opt_name, 0.2, 1.0, 100, compiled=False)
    replayed = train(opt_name, 0.2, 1.0, 100, compiled=True, resume_at=50, path=tmp_path / "mid.ckpt")
    assert_same(eager, replayed)


@pytest.mark.parametrize("opt_name", ["sgd-nesterov", "adamw"])
def test_replay_equals_eager_without_clipping_or_dropout(opt_name):
    assert_same(train(opt_name, 0.0, None, 100, compiled=False), train(opt_name, 0.0, None, 100, compiled=True))


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_flat_group_update_equals_per_parameter_update(opt_name):
    """The multi-tensor path (one fused call on flat buffers) is the per-parameter rule, bit for bit."""
    runs = []
    for flat in (True, False):
        model, opt, _ = build(opt_name, 0.0)
        opt.flat = flat
        if not flat:
            opt._flat.clear()
        step = make_step(model, opt, None)
        for x, y in batches() * 3:
            step(x, y)
        runs.append([p.data.tobytes() for p in model.parameters()])
    assert runs[0] == runs[1]


def test_parameters_are_views_of_one_flat_buffer_and_survive_module_to():
    model, opt, _ = build("adam", 0.0)
    layout = next(iter(opt._flat.values()))
    assert all(numpy.shares_memory(p.data, layout.param_flat) for p in model.parameters())
    step = make_step(model, opt, None)
    x, y = batches(1)[0]
    step(x, y)
    model.double().float()       # replaces every parameter's array: the next step lays the group out again
    before = [p.data.copy() for p in model.parameters()]
    step(x, y)
    layout = next(iter(opt._flat.values()))
    assert all(numpy.shares_memory(p.data, layout.param_flat) for p in model.parameters())
    assert all(not numpy.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    state = opt.state[next(iter(model.parameters()))]
    assert numpy.shares_memory(state["exp_avg"].data, layout.state["exp_avg"][0])


def test_group_without_every_gradient_takes_the_per_parameter_path():
    model, opt, _ = build("sgd-momentum", 0.0)
    first = next(iter(model.parameters()))
    reference = build("sgd-momentum", 0.0)
    ref_model, ref_opt = reference[0], reference[1]
    ref_opt.flat = False
    for m, o in ((model, opt), (ref_model, ref_opt)):
        gf.manual_seed(5)  # the same noise draws in both
        x, y = batches(1)[0]
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        next(iter(m.parameters())).grad = None  # one parameter has no gradient this step
        o.step()
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    assert first.grad is not None
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.data.tobytes() == q.data.tobytes()


def test_compiled_inference_under_no_grad_replays_generated_code_bit_for_bit():
    model, _, _ = build("sgd", 0.3)
    model.eval()
    forward = gf.compile(model, strict=True)
    data = batches(4, bs=64)
    with gf.no_grad():
        for x, _ in data * 2:
            assert forward(x).data.tobytes() == model(x).data.tobytes()
    plan = next(iter(forward.cache.values())).plan
    assert "def replay" in plan.replay.source and "_deliver" not in plan.replay.source  # forward only
    x = data[0][0]
    with gf.enable_grad():  # grad mode is part of the key: a recording of its own
        forward(x)
    assert len(forward.cache) == 2


def test_generated_replay_is_straight_line_code():
    model, opt, _ = build("adam", 0.0)
    step = gf.compile(make_step(model, opt, 1.0), strict=True)
    for x, y in batches(3):
        step(x, y)
    source = next(iter(step.cache.values())).plan.replay.source
    assert source.startswith("def replay(v0, v1):")
    assert "vals[" not in source and "for " not in source and "_run_op" not in source
    assert "out=bt" in source  # weight gradients computed into the parameters' own buffers


def _replay_equals_forward(fn, arrays, saved=(), dying=()):
    """An op's replay_source (what generated replays run) computes exactly what its forward does; with
    ``dying`` (inputs it may overwrite) into the first dying input's buffer, when the source uses it."""
    names = {f"a{i}" for i in range(len(arrays))}
    expr = fn.replay_source(*sorted(names), arrays=list(arrays), saved=saved, dying=dying)
    assert expr is not None, type(fn).__name__
    scope = {}
    if isinstance(expr, tuple):
        expr, bindings = expr
        scope.update(bindings)
    given = [a.copy() for a in arrays]  # a dying input is overwritten
    scope.update({f"a{i}": a for i, a in enumerate(given)})
    got = eval(expr, scope)
    want = fn.forward(*arrays)
    if dying:
        assert numpy.shares_memory(got[0] if saved else got, given[dying[0]]), expr
    if saved:
        got, *got_saved = got
        for k, g in zip(saved, got_saved):
            assert numpy.asarray(g).tobytes() == numpy.asarray(fn._saved[k]).tobytes()
    assert got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_every_replay_source_computes_what_forward_computes(dtype):
    from gradflow import activation, ops
    rng = numpy.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    _replay_equals_forward(ops.MatMul(), (r(7, 5), r(5, 3)))
    _replay_equals_forward(ops.Linear(), (r(9, 300), r(128, 300), r(128)))   # large weight: other orientation
    _replay_equals_forward(ops.Linear(), (r(9, 12), r(4, 12), r(4)))
    _replay_equals_forward(ops.Permute((1, 0)), (r(4, 6),))
    s = ops.SumTo((6,))
    s.forward(r(4, 6))  # sets x_shape, as during recording
    _replay_equals_forward(s, (r(4, 6),))
    s = ops.SumTo((1, 6))
    s.forward(r(4, 6))
    _replay_equals_forward(s, (r(4, 6),))
    x = r(5, 7)
    x[0, :3] = [0.0, -0.0, numpy.nan]
    _replay_equals_forward(activation.ReLU(), (x,))
    _replay_equals_forward(activation.ReLUGrad(), (activation._relu_out_np(x), r(5, 7)))
    _replay_equals_forward(activation.MaskScale(2.5, 0.0), (x > 0, r(5, 7)))
    _replay_equals_forward(activation.MaskScale(1.0, 0.25), (x > 0, r(5, 7)))
    # into the dying input's buffer: relu's pre-activation (large: the zeros-array path), the gradient
    # that relu's and dropout's backward mask
    big = r(40, 64)
    big[0, :3] = [0.0, -0.0, numpy.nan]
    _replay_equals_forward(activation.ReLU(), (big,))
    _replay_equals_forward(activation.ReLU(), (numpy.asfortranarray(big),))  # not C-contiguous: against a 0
    _replay_equals_forward(activation.ReLUGrad(), (r(), r()))  # 0-d: the NumPy twin
    for a in (x, big):
        _replay_equals_forward(activation.ReLU(), (a,), dying=(0,))
        g = r(*a.shape)
        g[0, :2] = [numpy.nan, -0.0]
        _replay_equals_forward(activation.ReLUGrad(), (activation._relu_out_np(a), g), dying=(1,))
        _replay_equals_forward(activation.MaskScale(1.0, 0.0), (a > 0, g), dying=(1,))
        _replay_equals_forward(activation.MaskScale(2.5, 0.0), (a > 0, g), dying=(1,))


def test_a_replay_overwrites_only_arrays_that_die_unshared():
    """Elementwise ops compute into a dying input's buffer only where nothing else holds that memory:
    not the step's own input (the caller's array), not an array read after the op, not a view of a
    live array. Every step equals eager bit for bit and the caller's input is left as it was."""
    rng = numpy.random.default_rng(3)
    xs = [rng.standard_normal((6, 8)).astype(numpy.float32) for _ in range(3)]
    results = []
    for compiled in (False, True):
        gf.manual_seed(0)
        lin, lin2 = nn.Linear(8, 8), nn.Linear(8, 4)
        opt = optim.SGD(list(lin.parameters()) + list(lin2.parameters()), lr=0.1, momentum=0.9)

        def step(x):
            opt.zero_grad()
            a = F.relu(x)                     # the step's input: never overwritten
            h = lin(a)
            r = F.relu(h)                     # h is read again below: not overwritten
            t = F.relu(h.T)                   # a view of h: not overwritten
            g = lin(a)
            v = g.T                           # a view of g, read after g's last direct use
            q = F.relu(g)                     # so g is not overwritten either
            p = F.relu(lin(r))                # dies here unshared: computed in place
            loss = (lin2(p) * 1.5).sum() + (h * 0.5).sum() + t.sum() + (q * v.T).sum()
            loss.backward()
            opt.step()
            return loss

        run = gf.compile(step, strict=True) if compiled else step
        out = []
        for i in range(6):
            x = xs[i % 3]
            before = x.copy()
            loss = run(gf.from_numpy(x))  # shares the caller's array
            assert numpy.array_equal(x, before)
            out.append((loss.data.tobytes(), b"".join(q.data.tobytes() for q in opt.param_groups[0]["params"])))
        results.append(out)
        if compiled:
            source = next(iter(run.cache.values())).plan.replay.source
            relus = [line for line in source.splitlines() if "_maximum(" in line]
            in_place = [line for line in relus if re.search(r"_maximum\((v\d+), \w+, out=\1\)", line)]
            assert len(relus) == 5 and len(in_place) == 1, relus  # p's pre-activation alone
    assert results[0] == results[1]


def test_grad_set_to_none_inside_a_compiled_step_is_replayed():
    # ``p.grad = None`` instead of zero_grad(): a replay must clear the gradients too, not
    # silently accumulate onto the previous step's (it did, before the assignment was recorded)
    results = []
    for compiled in (False, True):
        model, opt, _ = build("sgd", 0.0)

        def step(x, y):
            for p in model.parameters():
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        run = gf.compile(step, strict=True) if compiled else step
        losses = [run(x, y).data.tobytes() for x, y in batches(6)]
        results.append((losses, [p.data.tobytes() for p in model.parameters()]))
        if compiled:
            assert run.captured
    assert results[0] == results[1]


def test_assigning_a_tensor_to_grad_inside_a_compiled_step_is_refused():
    model, opt, _ = build("sgd", 0.0)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        model[0].weight.grad = model[0].weight.grad * 2
        opt.step()
        return loss

    run = gf.compile(step, strict=True)
    x, y = batches(1)[0]
    with pytest.raises(gf.CaptureError, match="assigns a Tensor to .grad"):
        run(x, y)


@pytest.mark.parametrize("in_place", ["array", "tensor"])
def test_post_accumulate_grad_hooks_run_in_every_replay(in_place):
    # a hook that rescales .grad in place (gradient scaling per layer, optimizer-in-backward
    # patterns) ran only while recording: replays silently skipped it
    results = []
    for compiled in (False, True):
        model, opt, _ = build("sgd", 0.0)
        w = model[0].weight
        if in_place == "array":
            w.register_post_accumulate_grad_hook(lambda p: p.grad.data.__imul__(numpy.float32(0.5)))
        else:
            def halve(p):
                with gf.no_grad():
                    p.grad.mul_(0.5)
            w.register_post_accumulate_grad_hook(halve)
        step = make_step(model, opt, None)
        run = gf.compile(step, strict=True) if compiled else step
        losses = [run(x, y)[0].data.tobytes() for x, y in batches(6)]
        results.append((losses, [p.data.tobytes() for p in model.parameters()]))
        if compiled:
            assert run.captured
    assert results[0] == results[1]


@pytest.mark.parametrize("schedule", ["StepLR", "OneCycleLR", "SequentialLR"])
def test_scheduler_stepped_inside_a_compiled_step_steps_in_every_replay(schedule):
    # a per-batch schedule stepped inside the step was not replayed: the rate froze after recording
    results = []
    for compiled in (False, True):
        model, opt, _ = build("sgd", 0.0)
        if schedule == "StepLR":
            sched = optim.lr_scheduler.StepLR(opt, 1, gamma=0.7)
        elif schedule == "OneCycleLR":
            sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)
        else:
            sched = optim.lr_scheduler.SequentialLR(opt, [optim.lr_scheduler.ConstantLR(opt, 0.5, total_iters=2),
                                                          optim.lr_scheduler.ExponentialLR(opt, 0.9)], milestones=[2])
        step = make_step(model, opt, None)

        def step_and_schedule(x, y):
            out = step(x, y)
            sched.step()
            return out

        run = gf.compile(step_and_schedule, strict=True) if compiled else step_and_schedule
        losses = [run(x, y)[0].data.tobytes() for x, y in batches(6)]
        results.append((losses, opt.param_groups[0]["lr"], [p.data.tobytes() for p in model.parameters()]))
    assert results[0] == results[1]


def test_reseeding_inside_a_compiled_step_runs_it_eagerly():
    # a replay would not reseed, so its dropout masks would silently differ from eager's
    results = []
    for compiled in (False, True):
        model, opt, _ = build("sgd", 0.3)
        step = make_step(model, opt, None)

        def seeded(x, y):
            gf.manual_seed(123)
            return step(x, y)

        if compiled:
            with pytest.raises(gf.CaptureError, match="manual_seed"):
                gf.compile(seeded, strict=True)(*batches(1)[0])
            model, opt, _ = build("sgd", 0.3)
            step = make_step(model, opt, None)
        run = gf.compile(seeded) if compiled else seeded
        with pytest.warns(RuntimeWarning, match="manual_seed") if compiled else contextlib.nullcontext():
            losses = [run(x, y)[0].data.tobytes() for x, y in batches(6)]
        results.append((losses, [p.data.tobytes() for p in model.parameters()]))
    assert results[0] == results[1]


def test_hyperparameters_written_inside_a_compiled_step_are_replayed_or_run_eagerly():
    # ``group['lr'] = ...`` inside the step was not replayed: a warm-up computed in the step froze
    for kind in ("constant", "warmup"):
        results = []
        for compiled in (False, True):
            model, opt, _ = build("sgd", 0.0)
            step = make_step(model, opt, None)
            calls = [0]

            def set_lr_then_step(x, y):
                calls[0] += 1
                for group in opt.param_groups:
                    group["lr"] = 0.05 if kind == "constant" else 0.1 * min(1.0, calls[0] / 4)
                return step(x, y)

            run = gf.compile(set_lr_then_step) if compiled else set_lr_then_step
            with pytest.warns(RuntimeWarning, match="param_groups") if compiled and kind == "warmup" else \
                    contextlib.nullcontext():
                losses = [run(x, y)[0].data.tobytes() for x, y in batches(6)]
            results.append((losses, [p.data.tobytes() for p in model.parameters()]))
            if compiled:
                assert run.captured == (kind == "constant")
        assert results[0] == results[1], kind


# ---- the cross-entropy forward and its gradient as one replay line --------------------------------------------
CE_CASES = {
    "mean": (lambda out, y: F.cross_entropy(out, y), True),
    "sum": (lambda out, y: F.cross_entropy(out, y, reduction="sum"), True),
    "ignored-rows": (lambda out, y: F.cross_entropy(out, y, ignore_index=2), True),
    "nd-logits": (lambda out, y: F.cross_entropy(out.reshape(6, 3, 2), y.reshape(6, 2)), True),
    "none-summed": (lambda out, y: F.cross_entropy(out, y, reduction="none").sum(), False),  # g made after
    "scaled": (lambda out, y: F.cross_entropy(out, y) * 2.0, False),
}


@gf.replay_as_call
def _between(model):
    """A call between the forward and the backward (as a hook would be)."""


@pytest.mark.parametrize("case", list(CE_CASES) + ["call-between"])
def test_cross_entropy_and_its_gradient_as_one_replay_line(case):
    """Where the loss's own backward is the only reader of what the cross-entropy forward saves, the replay
    computes the loss and the logits' gradient in one call (softmax_ops._xent_fwd_grad); a gradient that
    other ops make (a scaled or summed loss) or a call in between keeps the two lines. Either way every
    step equals eager bit for bit, with rows ignored in some steps."""
    loss_fn, one_line = CE_CASES.get(case, (CE_CASES["mean"][0], False))
    rng = numpy.random.default_rng(8)
    batches = []
    for k in range(6):
        y = rng.integers(0, 3, (6, 2) if case == "nd-logits" else 6)
        if k % 2:
            y.reshape(-1)[:2] = 2
        batches.append((gf.tensor(rng.standard_normal((6, 4)).astype(numpy.float32)), gf.tensor(y)))
    results = []
    for compiled in (False, True):
        gf.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6 if case == "nd-logits" else 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            if case == "call-between":
                _between(model)
            loss.backward()
            opt.step()
            return loss

        run = gf.compile(step, strict=True) if compiled else step
        results.append([run(x, y).data.tobytes() for x, y in batches] +
                       [p.data.tobytes() for p in model.parameters()])
        if compiled:
            source = next(iter(run.cache.values())).plan.replay.source
            assert ("xent_fwd_grad_np(" in source) == one_line, source
            assert ("xent_grad_np(" in source) == (not one_line), source
    assert results[0] == results[1]
