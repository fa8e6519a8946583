"""Loss scaling inside the one-launch GPU step: GradScaler's unscale_, step and update as graph parts.

A compiled step with the canonical recipe (``scaler.scale(loss).backward(); scaler.unscale_(opt);
clip_grad_norm_(...); scaler.step(opt); scaler.update()``) replays on the GPU as ONE CUDA graph:
the unscale kernels set a found-inf flag in device memory, the optimizer's update kernels read it
and skip on the device, the scale update reads it; the host reads it once after the launch to
take a skipped step's step-count advance back (tests/test_compile_one_launch.py has the host
emulation of the GPU runner used here). Compared bit for bit with eager training over steps that
overflow (skipped), back off and grow.
"""
import numpy
import pytest

import gradflow as gf
from gradflow import amp, nn, optim
from gradflow.nn import functional as F
from test_compile_one_launch import emulated_gpu  # noqa: F401  (the host emulation of the GPU runner)
import test_compile_one_launch as one_launch

compile_module = one_launch.compile_module
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

OPTS = {"sgd-momentum": lambda ps: optim.SGD(ps, lr=1e-3, momentum=0.9, dampening=0.1, weight_decay=1e-4),
        "adam": lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-4),
        "adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.05)}


def _weights():
    rng = numpy.random.default_rng(1)
    return [(rng.standard_normal((16, 10)) * 0.3).astype(numpy.float32), numpy.zeros(16, numpy.float32) + 0.1,
            (rng.standard_normal((3, 16)) * 0.3).astype(numpy.float32), numpy.zeros(3, numpy.float32) - 0.1]


def _data(n=7, overflow_at=(3,)):
    """Batches; the ones in ``overflow_at`` hold an inf, so their gradients do and their step is skipped."""
    rng = numpy.random.default_rng(2)
    out = []
    for k in range(n):
        x = rng.standard_normal((8, 10)).astype(numpy.float32)
        if k in overflow_at:
            x[1, 3] = numpy.inf
        out.append((gf.tensor(x), gf.tensor(rng.standard_normal((8, 3)).astype(numpy.float32))))
    return out


def setup(opt_name, init_scale=2.0 ** 16, backoff_factor=2.0 ** -8):
    """A small MLP, its optimizer (an LR schedule changing every step) and a scaler whose scale grows by
    2**10 every third clean step until the scaled gradients overflow float32, then backs off by 2**-8."""
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    with gf.no_grad():
        for p, w in zip(model.parameters(), _weights()):
            p.copy_(gf.from_numpy(w.copy()))
    opt = OPTS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))
    scaler = amp.GradScaler("cpu", init_scale=init_scale, growth_factor=2.0 ** 10, backoff_factor=backoff_factor,
                            growth_interval=3)
    return model, opt, sched, scaler


def make_step(model, opt, scaler, clip):
    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y, reduction="sum")
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)  # unscales here when unscale_ was not called
        scaler.update()
        return loss
    return step


def persistent(opt, scaler):
    """What a captured step writes that outlives it: the optimizer's flat buffers and the scaler's arrays."""
    buffers = scaler._graph_buffers()
    return one_launch.persistent(opt) + [scaler._scale, scaler._growth_tracker, buffers.inv_scale,
                                         buffers.flag(opt)]


def snapshot(model, opt, scaler, loss):
    state = opt.state_dict()
    return (loss.data.tobytes(), scaler.get_scale(), scaler._get_growth_tracker(),
            b"".join(p.data.tobytes() + p.grad.data.tobytes() for p in model.parameters()),
            [(k, key, v.data.tobytes() if isinstance(v, gf.Tensor) else v)
             for k, s in sorted(state["state"].items()) for key, v in sorted(s.items())],
            [g["lr"] for g in state["param_groups"]])


def run(opt_name, steps, clip, emulated=None, init_scale=2.0 ** 16, data=None, between=None, **scaler_args):
    """``steps`` training steps, eager (``emulated`` None) or compiled and replayed by the GPU runner
    under host emulation; returns the per-step snapshots and, emulated, the launches of each replay."""
    model, opt, sched, scaler = setup(opt_name, init_scale, **scaler_args)
    step = make_step(model, opt, scaler, clip)
    data = data or _data()
    compiled = gf.compile(step, strict=True) if emulated is not None else None
    out, launches, runner = [], [], None
    for i in range(steps):
        if between is not None:
            between(i, scaler, opt)
        x, y = data[i % len(data)]
        if compiled is None:
            loss = step(x, y)
        elif i < 2:
            loss = compiled(x, y)  # the two recording runs (eager)
        else:
            if runner is None:
                runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
            emulated.persistent = persistent(opt, scaler)  # the optimizer's state appears at its first step
            before = emulated.launches
            loss = runner.run([x.data, y.data])
            launches.append(emulated.launches - before)
            if launches[-1]:
                assert [s[0] for s in runner.steps] == ["graph"], "the whole step is one graph, no host op"
        out.append(snapshot(model, opt, scaler, loss))
        sched.step()
    return out, launches


def assert_same(want, got):
    assert len(want) == len(got)
    for i, (a, b) in enumerate(zip(want, got)):
        for name, x, y in zip(("loss", "scale", "growth tracker", "parameters and gradients", "optimizer state",
                               "lr"), a, b):
            assert x == y, f"step {i}: {name} differs from eager"


# ---- the plan: one graph ------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, 1.0])
def test_scaler_recipe_is_one_graph_segment(clip):
    """zero_grad, forward, scale, backward, deliveries, [unscale_, clip], step, update: ONE graph, every call
    a device part of it (no host op between launches)."""
    model, opt, _, scaler = setup("adam")
    x, y = _data()[0]
    plan = one_launch.recorded_plan(make_step(model, opt, scaler, clip), x, y)
    calls = one_launch.calls_of(plan)
    items = compile_module._segments(plan, calls, one_launch.leaf_buffers(plan))
    assert [kind for kind, _ in items] == ["graph"]
    seg = items[0][1]
    names = [op[1].__name__ for i, op in enumerate(plan.ops) if op[0] == compile_module._CALL and calls[i] in
             [item[1] for item in seg.device if item[0] == "call"]]
    assert names == (["step", "update"] if clip is None else ["unscale_", "clip_grad_norm_", "step", "update"])


def test_without_graph_parts_the_scaler_calls_are_host_calls():
    """The structure test can fail: with the scaler's hooks gone, the calls end the graph (the old plan)."""
    model, opt, _, scaler = setup("adam")
    x, y = _data()[0]
    plan = one_launch.recorded_plan(make_step(model, opt, scaler, 1.0), x, y)
    calls = one_launch.calls_of(plan)
    for i, op in enumerate(plan.ops):
        if op[0] == compile_module._CALL and op[1].__qualname__.startswith("GradScaler."):
            calls[i] = None
    items = compile_module._segments(plan, calls, one_launch.leaf_buffers(plan))
    assert [kind for kind, _ in items] == ["graph", "host", "host", "host", "host"]


# ---- the emulated GPU replay against eager ------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_emulated_one_launch_with_scaler_equals_eager(opt_name, clip, emulated_gpu):
    """32 steps: an inf batch every 7th step and scale growth into float32 overflow (skipped steps, back-off,
    growth while replaying): one launch per step; loss, scale, tracker, parameters, gradients and optimizer
    state (step counts included) bit-identical to eager at every step."""
    want, _ = run(opt_name, 32, clip)
    got, launches = run(opt_name, 32, clip, emulated_gpu)
    assert launches == [1] * 30
    assert_same(want, got)
    scales = [s[1] for s in want]
    assert any(b < a for a, b in zip(scales[2:], scales[3:])) and any(b > a for a, b in zip(scales[2:], scales[3:]))
    states = [s[4] for s in want]
    skipped = [i for i in range(3, 32) if states[i] == states[i - 1]]
    assert len(skipped) >= 4 and len(skipped) <= 20, skipped  # skipped and taken steps while replaying


def test_skipped_steps_do_not_advance_adams_step_count(emulated_gpu):
    """The host advances step counts before the launch; a skipped step takes the advance back after it, so
    the next step's bias corrections use the right count (and SGD's first step stays the first)."""
    for opt_name in ("adam", "sgd-momentum"):
        want, _ = run(opt_name, 12, 1.0)
        got, launches = run(opt_name, 12, 1.0, emulated_gpu)
        assert launches == [1] * 10
        assert_same(want, got)
        if opt_name == "adam":
            counts = [[v for _, name, v in s[4] if name == "step"] for s in got]
            assert counts[2] == counts[3] == [3] * 4 and counts[4] == [4] * 4  # the inf batch (step 3): skipped
            assert counts[-1][0] < 12


def test_skipped_first_steps_replay_eagerly_until_the_state_exists(emulated_gpu):
    """init_scale 2**127: the first steps overflow, so the optimizer has no state yet (as in eager and in
    PyTorch) and those replays run eagerly; from the first step taken on, one launch per step."""
    want, _ = run("adam", 24, 1.0, init_scale=2.0 ** 127, backoff_factor=0.5)
    got, launches = run("adam", 24, 1.0, emulated_gpu, init_scale=2.0 ** 127, backoff_factor=0.5)
    assert_same(want, got)
    first = next(i for i, s in enumerate(want) if s[4])  # the first step whose update was taken
    assert first >= 3
    assert launches == [0] * (first - 1) + [1] * (23 - first)  # replays 2..first eager (the first creates it)


def test_scaler_settings_and_state_changed_between_replays(emulated_gpu):
    """set_growth_factor/set_backoff_factor/set_growth_interval and load_state_dict between steps reach the
    graph (the update reads its factors from device memory; the scale is filled in place)."""
    saved = {}

    def between(i, scaler, opt):
        if i == 6:
            scaler.set_growth_factor(3.0)
            scaler.set_growth_interval(2)
        if i == 9:
            saved.update(scaler.state_dict())
        if i == 12:
            scaler.set_backoff_factor(0.25)
        if i == 16:
            scaler.load_state_dict(saved)

    want, _ = run("adam", 22, 1.0, between=between)
    got, launches = run("adam", 22, 1.0, emulated_gpu, between=between)
    assert launches == [1] * 20
    assert_same(want, got)


def test_unscale_outside_the_step_runs_the_replay_eagerly_and_raises_like_eager(emulated_gpu):
    """The scaler's states are checked before the launch: unscale_ already called this iteration means the
    replay runs eagerly, which raises as the eager step does; nothing is left half-done."""
    model, opt, _, scaler = setup("sgd-momentum")
    step = make_step(model, opt, scaler, 1.0)
    compiled = gf.compile(step, strict=True)
    data = _data()
    compiled(*data[0]), compiled(*data[1])
    runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
    emulated_gpu.persistent = persistent(opt, scaler)
    runner.run([a.data for a in data[2]])
    assert emulated_gpu.launches == 1
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        runner.run([a.data for a in data[4]])
    assert emulated_gpu.launches == 1


def test_a_replay_run_eagerly_does_not_fix_the_graph(emulated_gpu):
    """unscale_ called outside the step (on the last step's gradients) before the first replay and again
    later: those replays run eagerly (their step finds another flag and, as eager, does not unscale
    again); the others launch the graph that unscales in scaler.step."""
    def between(i, scaler, opt):
        if i in (2, 6):
            scaler.unscale_(opt)

    want, _ = run("adam", 10, None, between=between)
    got, launches = run("adam", 10, None, emulated_gpu, between=between)
    assert launches == [0, 1, 1, 1, 0, 1, 1, 1]
    assert_same(want, got)


def test_two_optimizers_one_scaler(emulated_gpu):
    """One scaler, two optimizers (one per layer): each has its own device flag; the update combines both;
    an inf in one layer's gradients skips only that optimizer's step (as eager)."""
    def build():
        model, _, _, scaler = setup("adam")
        first, second = model[0], model[2]
        opts = [optim.SGD(first.parameters(), lr=1e-3, momentum=0.9), optim.Adam(second.parameters(), lr=1e-2)]

        def step(x, y):
            for o in opts:
                o.zero_grad()
            loss = F.mse_loss(model(x), y, reduction="sum")
            scaler.scale(loss).backward()
            scaler.unscale_(opts[0])
            nn.utils.clip_grad_norm_(first.parameters(), 1.0)
            for o in opts:
                scaler.step(o)
            scaler.update()
            return loss
        return model, opts, scaler, step

    data = _data()
    model, opts, scaler, step = build()
    want = []
    for i in range(20):
        loss = step(*data[i % len(data)])
        want.append((loss.data.tobytes(), scaler.get_scale(), b"".join(p.data.tobytes() for p in model.parameters())))
    model, opts, scaler, step = build()
    compiled = gf.compile(step, strict=True)
    got, runner = [], None
    for i in range(20):
        x, y = data[i % len(data)]
        if i < 2:
            loss = compiled(x, y)
        else:
            if runner is None:
                runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
                emulated_gpu.persistent = one_launch.persistent(opts[0]) + one_launch.persistent(opts[1]) + \
                    [scaler._scale, scaler._growth_tracker, scaler._graph_buffers().inv_scale] + \
                    [scaler._graph_buffers().flag(o) for o in opts]
            before = emulated_gpu.launches
            loss = runner.run([x.data, y.data])
            assert emulated_gpu.launches - before == 1 and [s[0] for s in runner.steps] == ["graph"]
        got.append((loss.data.tobytes(), scaler.get_scale(), b"".join(p.data.tobytes() for p in model.parameters())))
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}"


def test_disabled_scaler_in_the_graph(emulated_gpu):
    """enabled=False: scale is the identity, step is the optimizer's step: still one launch, same bytes."""
    def build():
        model, opt, sched, _ = setup("adam")
        return model, opt, sched, amp.GradScaler("cpu", enabled=False)

    outs = []
    for emulated in (None, emulated_gpu):
        model, opt, sched, scaler = build()
        step = make_step(model, opt, scaler, 1.0)
        compiled = gf.compile(step, strict=True) if emulated is not None else step
        out, runner = [], None
        for i, (x, y) in enumerate(_data(overflow_at=()) * 2):
            if emulated is None or i < 2:
                loss = compiled(x, y)
            else:
                if runner is None:
                    runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
                    emulated.persistent = one_launch.persistent(opt)
                before = emulated.launches
                loss = runner.run([x.data, y.data])
                assert emulated.launches - before == 1 and [s[0] for s in runner.steps] == ["graph"]
            out.append(snapshot(model, opt, scaler, loss))
            sched.step()
        outs.append(out)
    assert_same(*outs)


# ---- the device kernels -------------------------------------------------------------------------------------
def test_update_scale_dev_equals_update_scale():
    """The device-memory-factor entry's NumPy path is the scalar one (and so torch's, tests/test_amp.py)."""
    for growth, backoff, interval in ((2.0, 0.5, 2), (1.7, 0.3, 3)):
        a = [numpy.full((), 3.0e38, numpy.float32), numpy.zeros((), numpy.int32)]
        b = [x.copy() for x in a]
        for f in [0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0]:
            found = numpy.full((), f, numpy.float32)
            amp.update_scale_(*a, found, growth, backoff, interval)
            amp.update_scale_dev_(*b, found, numpy.array([growth, backoff]), numpy.array(interval, numpy.int64))
            assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1]


# ---- on a real GPU ------------------------------------------------------------------------------------------
def gpu_run(opt_name, steps, compiled, clip):
    model, opt, sched, scaler = setup(opt_name)
    model.to("cuda")
    opt = OPTS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))
    scaler = amp.GradScaler("cuda", init_scale=2.0 ** 16, growth_factor=2.0 ** 10, backoff_factor=2.0 ** -8,
                            growth_interval=3)
    step = make_step(model, opt, scaler, clip)
    if compiled:
        step = gf.compile(step, strict=True)
    data = [(x.to("cuda"), y.to("cuda")) for x, y in _data()]
    scales, launches = [], []
    for i in range(steps):
        runner = compiled and step.cache and next(iter(step.cache.values())).plan and \
            next(iter(step.cache.values())).plan.graph_runner
        before = runner.launches if runner else None
        step(*data[i % len(data)])
        if before is not None:
            launches.append(runner.launches - before)
        scales.append(scaler.get_scale())
        sched.step()
    if compiled:
        runner = next(iter(step.cache.values())).plan.graph_runner
        assert [s[0] for s in runner.steps] == ["graph"], "the whole step, scaler included, is one CUDA graph"
    return model, opt, scales, launches


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_gpu_scaler_step_is_one_graph_launch_and_matches_eager(opt_name, clip):
    """On a GPU: one launch per replayed step with unscale_, clipping, the skipping update and the scale
    update inside; the same scale sequence and step counts as eager, parameters within float32 rounding
    (graphs use gradflow's GEMM, eager cuBLAS)."""
    eager_model, eager_opt, eager_scales, _ = gpu_run(opt_name, 32, False, clip)
    model, opt, scales, launches = gpu_run(opt_name, 32, True, clip)
    assert launches and set(launches) == {1}
    assert scales == eager_scales
    for a, b in zip(eager_model.parameters(), model.parameters()):
        numpy.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-4)
    for k, s in eager_opt.state_dict()["state"].items():
        if "step" in s:
            assert opt.state_dict()["state"][k]["step"] == s["step"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_gpu_skip_flag_and_update_scale_dev(dtype):
    """The device-scalar update kernels skip on a set flag (params and state untouched, NaN gradients
    included) and run exactly as the NumPy twin on a clear one; amp_update_scale_dev equals the NumPy twin."""
    from gradflow.optim import fused
    cp = gf.backend.cupy()
    rng = numpy.random.default_rng(0)
    p = gf.tensor(rng.standard_normal(1000).astype(dtype), requires_grad=True)
    opt = optim.Adam([p], lr=1e-2)
    p.grad = gf.tensor(rng.standard_normal(1000).astype(dtype))
    p.grad.data[5] = numpy.nan
    with fused.deferred() as calls:
        opt.step()
    (update, args), = calls
    for flag in (1.0, 0.0):
        host = [a.copy() if isinstance(a, numpy.ndarray) else a for a in args]
        dev = tuple(cp.asarray(a) if isinstance(a, numpy.ndarray) else a for a in args)
        before, scalars, after = update.split(host)
        kept = [a.copy() for a in after]
        update.device(*before, *scalars, numpy.full((), flag, numpy.float32), *after)
        launches, upload = optim.optimizer._device_scalars([(update, dev)])
        for view, value in zip(launches[0][4], scalars):
            view[...] = value
        upload()
        d_before, _, d_after = update.split(dev)
        update.device(*d_before, *launches[0][2], cp.full((), flag, numpy.float32), *d_after)
        for d, w, k in zip(d_after, after, kept):
            numpy.testing.assert_allclose(cp.asnumpy(d), w, rtol=4 * numpy.finfo(dtype).eps, equal_nan=True)
            if flag:
                assert cp.asnumpy(d).tobytes() == k.tobytes() == w.tobytes()
    scale, tracker = cp.full((), 3.0e38, numpy.float32), cp.zeros((), numpy.int32)
    hs, ht = numpy.full((), 3.0e38, numpy.float32), numpy.zeros((), numpy.int32)
    for f in [0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0]:
        amp.update_scale_dev_(scale, tracker, cp.full((), f, numpy.float32), cp.asarray([2.0, 0.5]),
                              cp.asarray(numpy.int64(2)))
        amp.update_scale_(hs, ht, numpy.full((), f, numpy.float32), 2.0, 0.5, 2)
        assert cp.asnumpy(scale).tobytes() == hs.tobytes() and int(tracker) == int(ht)
