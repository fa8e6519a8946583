"""Issue 12, one launch per training step: the GPU replay of a whole step as ONE CUDA graph.

No GPU is needed for most of this file. ``_segments`` (a pure function of the plan) says how the
GPU runner splits a plan into graphs and host ops; the runner itself is exercised on the CPU
with a fake CuPy whose "graph" is the captured Python work replayed at each launch (host
emulation: the same prologue/launch/epilogue code path, NumPy arrays in place of device ones),
and compared bit for bit with eager training. A ``gpu`` test replays on a real GPU.
"""
import contextlib
import importlib
import types

import numpy
import pytest

import gradflow as gf
from gradflow import backend, nn, optim
from gradflow.nn import functional as F
from gradflow.optim import fused

compile_module = importlib.import_module("gradflow.compile")

OPTIMIZERS = {
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-4),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: optim.Adam(ps, lr=2e-3, betas=(0.8, 0.99), weight_decay=1e-4),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=2e-3, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=2e-3, weight_decay=0.05),
    "rmsprop-centered-momentum": lambda ps: optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=1e-2, lr_decay=1e-3),
}


class Noisy(nn.Module):
    def forward(self, x):
        return gf.dropout_ops.noisy_relu(x, 0.05, self.training)


def build(opt_name, sizes=(20, 16, 12, 5), random=True):
    """Linear, noisy ReLU, dropout, Linear, ReLU, dropout, Linear (plain ReLUs, no dropout: not random)."""
    gf.manual_seed(0)
    a, b, c, d = sizes
    if random:
        model = nn.Sequential(nn.Linear(a, b), Noisy(), nn.Dropout(0.2), nn.Linear(b, c), nn.ReLU(),
                              nn.Dropout(0.2), nn.Linear(c, d))
    else:
        model = nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d))
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))  # a new LR every step
    return model, opt, sched


def make_step(model, opt, clip=1.0, loss_fn=F.cross_entropy):
    def step(x, y):
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss, out.detach()
    return step


def batches(n_in, n_out, n=4, bs=16):
    rng = numpy.random.default_rng(4)
    return [(gf.tensor(rng.standard_normal((bs, n_in), dtype=numpy.float32)), gf.tensor(rng.integers(0, n_out, bs)))
            for _ in range(n)]


def recorded_plan(step, x, y):
    """Record ``step`` (two eager runs) and return its plan, as the GPU runner gets it."""
    compiled = gf.compile(step, strict=True)
    compiled(x, y)
    compiled(x, y)
    assert compiled.captured
    return next(iter(compiled.cache.values())).plan


# ---- host emulation of CuPy's graph capture --------------------------------------------------------------
class FakeGraph:
    launches = 0
    persistent = []  # what a captured segment writes that outlives it (see emulated_gpu)

    def __init__(self, run):
        self.run = run

    def launch(self, stream):
        FakeGraph.launches += 1
        self.run()


class FakeStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def emulated_gpu(monkeypatch):
    """A CuPy whose arrays are NumPy's and whose captured graphs replay the captured Python work."""
    stream = FakeStream()
    cuda = types.SimpleNamespace(MemoryPool=lambda: types.SimpleNamespace(malloc=None),
                                 Stream=lambda non_blocking=True: stream, get_current_stream=lambda: stream,
                                 using_allocator=lambda malloc: contextlib.nullcontext())
    fake = types.SimpleNamespace(cuda=cuda, ndarray=numpy.ndarray, array=numpy.array, ones=numpy.ones,
                                 empty=numpy.empty, zeros=numpy.zeros)
    monkeypatch.setattr(backend, "cupy", lambda: fake)

    def capture(s, run):
        # CUDA runs the Python of a captured segment once and records its kernels without running
        # them: here the Python runs, then the persistent arrays it wrote are put back
        # (backend.capturing stays False: it routes matmuls to the GPU GEMM kernel, which NumPy cannot run)
        saved = [(a, a.copy()) for a in FakeGraph.persistent]
        try:
            run()
        finally:
            for a, copy in saved:
                a[...] = copy
        return FakeGraph(run), None

    monkeypatch.setattr(compile_module, "capture_stream", capture)
    monkeypatch.setattr(compile_module, "gemm", lambda a, b: a @ b)  # the GEMM module preload: no GPU here
    FakeGraph.launches = 0
    FakeGraph.persistent = []
    return FakeGraph


def persistent(opt):
    """The arrays a captured step writes that outlive it: flat parameters, gradients, optimizer state."""
    arrays = []
    for layout in opt._flat.values():
        arrays += [layout.param_flat, layout.grad_flat] + [buf for buf, _ in layout.state.values()]
    return arrays


def calls_of(plan):
    calls = {}
    for i, op in enumerate(plan.ops):
        hook = getattr(op[1], "_graph_call", None) if op[0] == compile_module._CALL else None
        if hook is not None:
            calls[i] = hook(*op[2], **op[3])
    return calls


def leaf_buffers(plan):
    return {i: op[1]._grad_buffer for i, op in enumerate(plan.ops) if op[0] == compile_module._LEAF}


# ---- the plan structure ----------------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_whole_mlp_step_is_one_graph_segment(opt_name):
    """784-128-32-10 with noisy ReLU and dropout; zero_grad + forward + backward + clip_grad_norm_ +
    step: ONE graph, no host op before, between or after graph launches but its prologue/epilogue."""
    model, opt, _ = build(opt_name, (784, 128, 32, 10))
    x, y = batches(784, 10, n=1)[0]
    plan = recorded_plan(make_step(model, opt), x, y)
    items = compile_module._segments(plan, calls_of(plan), leaf_buffers(plan))
    assert [kind for kind, _ in items] == ["graph"]
    seg = items[0][1]
    kinds = [item[0] for item in seg.device]
    assert kinds.count("leaf") == 6 and kinds.count("call") == 2  # clip, then the optimizer update
    assert kinds[-1] == "call" and seg.calls[-1] is seg.device[-1][1]
    assert len(seg.hosts) == 1 and not seg.need_none  # zero_grad clears every .grad before the launch
    drawing = [op for op in seg.ops() if op[0] == compile_module._FUNCTION and op[1].__class__.__name__ in
               ("Dropout", "NoisyReLU")]
    assert len(drawing) == 3  # the random draws are in the graph


def test_a_call_without_a_graph_part_splits_the_step():
    """The structure test can fail: a host call in the middle ends the graph; after it nothing is known
    of the .grad buffers, so the optimizer update that reads them is a host call too."""
    model, opt, _ = build("adam")
    x, y = batches(20, 5, n=1)[0]
    plan = recorded_plan(make_step(model, opt), x, y)
    calls = calls_of(plan)
    clip = next(i for i, op in enumerate(plan.ops) if op[0] == compile_module._CALL
                and op[1].__name__ == "clip_grad_norm_")
    calls[clip] = None
    items = compile_module._segments(plan, calls, leaf_buffers(plan))
    assert [kind for kind, _ in items] == ["graph", "host", "host"]


def test_gradient_accumulation_across_steps_needs_an_empty_grad():
    """Without zero_grad in the step, the first delivery must find .grad None: checked before the launch."""
    model, opt, _ = build("sgd-momentum")
    x, y = batches(20, 5, n=1)[0]

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    plan = recorded_plan(step, x, y)
    items = compile_module._segments(plan, calls_of(plan), leaf_buffers(plan))
    assert [kind for kind, _ in items] == ["graph"]
    assert len(items[0][1].need_none) == 6


# ---- the device-scalar update kernels --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_device_scalar_update_equals_the_scalar_kernel_bit_for_bit(opt_name, dtype):
    """The twin reading its hyperparameters from 0-d arrays updates exactly as the scalar kernel."""
    rng = numpy.random.default_rng(1)
    p = gf.tensor(rng.standard_normal(50).astype(dtype), requires_grad=True)
    opt = OPTIMIZERS[opt_name]([p])
    for _ in range(3):
        p.grad = gf.tensor(rng.standard_normal(50).astype(dtype))
        with fused.deferred() as calls:
            opt.step()
        assert calls
        for update, args in calls:
            before, scalars, after = update.split(args)
            want = [a.copy() for a in after]
            update(*before, *scalars, *want)
            launches, upload = optim.optimizer._device_scalars([(update, args)])
            for view, value in zip(launches[0][4], scalars):
                view[...] = value
            upload()
            update.device(*before, *launches[0][2], numpy.zeros((), numpy.float32), *after)  # found_inf = 0
            for a, w in zip(after, want):
                assert a.tobytes() == w.tobytes()
            kept = [a.copy() for a in after]
            update.device(*before, *launches[0][2], numpy.ones((), numpy.float32), *after)   # skipped
            for a, k in zip(after, kept):
                assert a.tobytes() == k.tobytes()


# ---- the emulated GPU replay -----------------------------------------------------------------------------
def eager_run(opt_name, steps, sizes, clip, reseed_at=None, loss_fn=F.cross_entropy):
    model, opt, sched = build(opt_name, sizes)
    step = make_step(model, opt, clip, loss_fn)
    data = batches(sizes[0], sizes[-1])
    gf.manual_seed(11)
    out = []
    for i in range(steps):
        if i == reseed_at:
            gf.manual_seed(99)
        loss, y = step(*data[i % len(data)])
        out.append(loss.data.tobytes() + y.data.tobytes())
        sched.step()
    return model, opt, out


def emulated_run(opt_name, steps, sizes, clip, emulated, reseed_at=None, loss_fn=F.cross_entropy):
    model, opt, sched = build(opt_name, sizes)
    step = make_step(model, opt, clip, loss_fn)
    data = batches(sizes[0], sizes[-1])
    compiled = gf.compile(step, strict=True)
    gf.manual_seed(11)
    out, runner = [], None
    for i in range(steps):
        if i == reseed_at:
            gf.manual_seed(99)
        x, y = data[i % len(data)]
        if i < 2:
            loss, o = compiled(x, y)  # the two recording runs (eager)
        else:
            if runner is None:
                runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
                emulated.persistent = persistent(opt)
            before = emulated.launches
            loss, o = runner.run([x.data, y.data])
            assert emulated.launches - before == 1, "one graph launch per step"
            assert runner.steps is not None and [s[0] for s in runner.steps] == ["graph"]
        out.append(loss.data.tobytes() + o.data.tobytes())
        sched.step()
    return model, opt, out


def assert_same(a, b):
    (model_a, opt_a, out_a), (model_b, opt_b, out_b) = a, b
    for i, (x, y) in enumerate(zip(out_a, out_b)):
        assert x == y, f"step {i}: loss or output differs"
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert p.data.tobytes() == q.data.tobytes(), name
        assert p.grad.data.tobytes() == q.grad.data.tobytes(), name
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
def test_emulated_one_launch_replay_equals_eager_bit_for_bit(opt_name, emulated_gpu):
    """zero_grad, forward with dropout and noisy ReLU, backward, delivery into the flat gradient buffers,
    clipping and the fused update with an LR changing every step: one launch per step, the same bytes
    (losses, outputs, masks through them, parameters, gradients, optimizer state) as eager."""
    sizes = (20, 16, 12, 5)
    assert_same(eager_run(opt_name, 30, sizes, 1.0), emulated_run(opt_name, 30, sizes, 1.0, emulated_gpu))


@pytest.mark.parametrize("loss", ["nll", "weighted", "smoothed"])
def test_emulated_one_launch_replay_with_losses_that_derive_from_the_targets(loss, emulated_gpu):
    """nll_loss, class weights and label smoothing derive their target arrays in an op (no host work):
    still one launch per step, bit-identical to eager."""
    w = gf.tensor(numpy.array([1.0, 2.0, 0.5, 1.5, 1.0], numpy.float32))
    loss_fn = {"nll": lambda out, y: F.nll_loss(F.log_softmax(out, dim=1), y),
               "weighted": lambda out, y: F.cross_entropy(out, y, weight=w),
               "smoothed": lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)}[loss]
    sizes = (20, 16, 12, 5)
    assert_same(eager_run("sgd-momentum", 8, sizes, 1.0, loss_fn=loss_fn),
                emulated_run("sgd-momentum", 8, sizes, 1.0, emulated_gpu, loss_fn=loss_fn))


def test_emulated_replay_draws_follow_manual_seed_between_steps(emulated_gpu):
    """The Philox offsets are written before every launch from the generator: a reseed is seen."""
    sizes = (20, 16, 12, 5)
    assert_same(eager_run("adam", 12, sizes, None, reseed_at=7),
                emulated_run("adam", 12, sizes, None, emulated_gpu, reseed_at=7))


def test_emulated_replay_grad_is_the_parameters_own_buffer(emulated_gpu):
    model, opt, _, = build("adam")
    run = emulated_run("adam", 4, (20, 16, 12, 5), None, emulated_gpu)
    for p in run[0].parameters():
        assert p.grad.data is p._grad_buffer


def test_emulated_replay_with_a_leftover_grad_runs_that_step_eagerly(emulated_gpu):
    """The host precondition: a .grad present before a step that does not clear it means eager."""
    model, opt, _ = build("sgd-momentum", random=False)  # two models side by side: one random stream
    ref_model, ref_opt, _ = build("sgd-momentum", random=False)
    x, y = batches(20, 5, n=1)[0]

    def make(model, opt):
        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step

    compiled, eager = gf.compile(make(model, opt), strict=True), make(ref_model, ref_opt)
    for m, o, s in ((model, opt, compiled), (ref_model, ref_opt, eager)):
        for _ in range(2):
            s(x, y)
            o.zero_grad()
    runner = compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
    emulated_gpu.persistent = persistent(opt)
    runner.run([x.data, y.data]), eager(x, y)          # graph: .grad was None
    assert emulated_gpu.launches == 1
    runner.run([x.data, y.data]), eager(x, y)          # .grad left over: accumulates, eagerly
    assert emulated_gpu.launches == 1
    for o in (opt, ref_opt):
        o.zero_grad()
    runner.run([x.data, y.data]), eager(x, y)          # graph again
    assert emulated_gpu.launches == 2
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.data.tobytes() == q.data.tobytes()
        assert p.grad.data.tobytes() == q.grad.data.tobytes()


# ---- on a real GPU ---------------------------------------------------------------------------------------
def gpu_run(opt_name, steps, compiled):
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), Noisy(), nn.Dropout(0.2), nn.Linear(128, 32), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(32, 10)).to("cuda")
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.05 * step))
    step = make_step(model, opt)
    if compiled:
        step = gf.compile(step, strict=True)
    rng = numpy.random.default_rng(4)
    data = [(gf.tensor(rng.standard_normal((128, 784), dtype=numpy.float32), device="cuda"),
             gf.tensor(rng.integers(0, 10, 128), device="cuda")) for _ in range(4)]
    gf.manual_seed(11)
    losses, launches = [], []
    for i in range(steps):
        runner = compiled and step.cache and next(iter(step.cache.values())).plan and \
            next(iter(step.cache.values())).plan.graph_runner
        before = runner.launches if runner else None
        loss, _ = step(*data[i % len(data)])
        if before is not None:
            launches.append(runner.launches - before)
        losses.append(float(loss.item()))
        sched.step()
    if compiled:
        runner = next(iter(step.cache.values())).plan.graph_runner
        assert [s[0] for s in runner.steps] == ["graph"], "the whole step is one CUDA graph"
    return model, losses, launches


@pytest.mark.gpu
@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_gpu_whole_step_is_one_graph_launch_and_matches_eager(opt_name):
    """784-128-32-10, noisy ReLU + dropout, clipping, LR schedule: one graph launch per replayed step, and
    100 steps agree with eager within float32 rounding (graphs use gradflow's GEMM, eager cuBLAS)."""
    eager_model, eager_losses, _ = gpu_run(opt_name, 100, compiled=False)
    model, losses, launches = gpu_run(opt_name, 100, compiled=True)
    assert launches and set(launches) == {1}
    numpy.testing.assert_allclose(losses, eager_losses, rtol=2e-3, atol=2e-4)
    for a, b in zip(eager_model.parameters(), model.parameters()):
        numpy.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-2, atol=2e-3)


def test_emulated_zero_grad_after_the_step_is_a_host_act_after_the_launch(emulated_gpu):
    """PyTorch's other order (backward, step, zero_grad): still one launch; .grad ends None as in eager."""
    def make(model, opt):
        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        return step

    items, model, ref_model = emulated_against_eager(make, "adam", emulated_gpu)
    assert [kind for kind, _ in items] == ["graph", "graph"] and not items[1][1].device
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.grad is None and q.grad is None


def emulated_against_eager(make, opt_name, emulated_gpu, steps=5):
    """Record ``make(model, opt)``'s step, replay it on the emulated GPU runner next to eager:
    each replay one launch, the same loss and weights bit for bit. Returns the segments."""
    model, opt, _ = build(opt_name, random=False)
    ref_model, ref_opt, _ = build(opt_name, random=False)
    x, y = batches(20, 5, n=1)[0]
    compiled, eager = gf.compile(make(model, opt), strict=True), make(ref_model, ref_opt)
    compiled(x, y), compiled(x, y), eager(x, y), eager(x, y)
    plan = next(iter(compiled.cache.values())).plan
    items = compile_module._segments(plan, calls_of(plan), leaf_buffers(plan))
    runner = compile_module._CudaGraphRunner(plan)
    emulated_gpu.persistent = persistent(opt)
    for i in range(steps):
        a, b = runner.run([x.data, y.data]), eager(x, y)
        assert a.data.tobytes() == b.data.tobytes()
        assert emulated_gpu.launches == i + 1
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.data.tobytes() == q.data.tobytes()
    return items, model, ref_model


def test_emulated_grad_set_to_none_in_the_step_is_a_host_act_before_the_launch(emulated_gpu):
    """``p.grad = None`` written in the step (instead of zero_grad) clears before the launch, as
    zero_grad does: one launch per step, bit-identical to eager."""
    def make(model, opt):
        def step(x, y):
            for p in model.parameters():
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step

    items, _, _ = emulated_against_eager(make, "sgd-momentum", emulated_gpu)
    assert [kind for kind, _ in items] == ["graph"]


def test_emulated_scheduler_step_inside_the_step_runs_after_the_launch(emulated_gpu):
    """``sched.step()`` at the end of the step (a per-batch schedule): a host call after the
    graph, so the next launch's optimizer reads the new rate; bit-identical to eager."""
    def make(model, opt):
        sched = optim.lr_scheduler.StepLR(opt, 1, gamma=0.7)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            return loss
        return step

    items, _, _ = emulated_against_eager(make, "adam", emulated_gpu)
    assert [kind for kind, _ in items][0] == "graph" and "host" in [kind for kind, _ in items]
