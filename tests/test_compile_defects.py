"""Issue 10's compile defects, each caught on the CPU: capture errors, Module.to, train/eval
switches, and clipping without a host read."""
import contextlib
import importlib
import types
import warnings

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import CaptureError, backend, nn, optim
from gradflow.nn import functional as F

compile_module = importlib.import_module("gradflow.compile")  # gradflow.compile the name is the function


# ---- 2.4: an invalidated capture reports the op's error; strict raises CaptureError ----------------------
class FakeStream:
    """A stream whose capture is invalidated by a failing op: end_capture then raises, as CUDA does."""

    def __init__(self):
        self.capturing = False

    def begin_capture(self):
        self.capturing = True

    def end_capture(self):
        self.capturing = False
        if self.invalidated:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated")
        return "graph"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_capture_stream_reports_the_ops_error_not_end_captures():
    stream = FakeStream()
    stream.invalidated = True

    def bad():
        raise ValueError("cuBLAS is not capturable")

    graph, failure = compile_module.capture_stream(stream, bad)
    assert graph is None and isinstance(failure, ValueError) and "cuBLAS" in str(failure)
    assert not stream.capturing and not backend.capturing
    stream.invalidated = False
    assert compile_module.capture_stream(stream, lambda: None) == ("graph", None)


class CaptureSensitive(gf.Function):
    """Fails only while a CUDA graph is being captured (like a cuBLAS call)."""

    def forward(self, x):
        if backend.capturing:
            raise ValueError("not capturable")
        return x * 2


def _runner(strict, monkeypatch):
    stream = FakeStream()
    stream.invalidated = True
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        using_allocator=lambda malloc: contextlib.nullcontext(), get_current_stream=lambda: stream),
        zeros=numpy.zeros)
    monkeypatch.setattr(backend, "cupy", lambda: fake_cupy)
    runner = compile_module._CudaGraphRunner.__new__(compile_module._CudaGraphRunner)
    runner.plan = types.SimpleNamespace(strict=strict, cuda_graphs=True, ops=[])
    runner.pool = types.SimpleNamespace(malloc=None)
    runner.stream = stream
    runner.vals = [numpy.ones(3), None]
    runner.launches = 0
    op = (compile_module._FUNCTION, CaptureSensitive(), [0], [1], True, [], {}, ())
    runner.plan.ops = [op]
    segment = compile_module._Segment(0)
    segment.device.append(("op", op))
    return runner, segment


def test_strict_capture_failure_raises_capture_error(monkeypatch):
    runner, segment = _runner(True, monkeypatch)
    with pytest.raises(CaptureError, match="not capturable"):
        runner._capture_segment(segment)


def test_failed_capture_warns_and_runs_the_ops_eagerly(monkeypatch):
    runner, segment = _runner(False, monkeypatch)
    with pytest.warns(RuntimeWarning, match="not capturable"):
        assert runner._capture_segment(segment) is None
    assert runner.plan.cuda_graphs is False  # later replays: the generated code, no graphs
    runner.plan.outputs = ("tensor", 1, False)
    out = runner._eager_from(segment.start)  # what the runner does with a segment it could not capture
    assert numpy.array_equal(out.data, numpy.full(3, 2.0))


# ---- 2.5: Module.to / _apply drops compiled plans ------------------------------------------------------
def _mlp_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _data(bs=16, seed=0):
    rng = numpy.random.default_rng(seed)
    return gf.tensor(rng.random((bs, 12), dtype=numpy.float32)), gf.tensor(rng.integers(0, 3, bs))


def test_module_apply_invalidates_compiled_plans():
    gf.manual_seed(0)
    eager_model = nn.MLP([12, 8, 3])
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3])
    eager = _mlp_step(eager_model, optim.SGD(eager_model.parameters(), lr=0.1))
    compiled = gf.compile(_mlp_step(model, optim.SGD(model.parameters(), lr=0.1)), strict=True)
    x, y = _data()
    for _ in range(4):
        eager(x, y), compiled(x, y)
    assert compiled.captured
    model._apply(lambda a: a.copy())  # what to(device)/to(dtype) do: new arrays, same Parameters
    eager_model._apply(lambda a: a.copy())
    for _ in range(4):
        assert eager(x, y).data.tobytes() == compiled(x, y).data.tobytes()
    for a, b in zip(eager_model.parameters(), model.parameters()):
        assert numpy.array_equal(a.data, b.data)


# ---- 2.8: train/eval switches keep the recordings ------------------------------------------------------
def test_train_eval_switch_keeps_the_training_plan():
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3], dropout=0.3)
    compiled = gf.compile(_mlp_step(model, optim.SGD(model.parameters(), lr=0.1)), strict=True)
    x, y = _data()
    for _ in range(3):
        compiled(x, y)
    plan = next(iter(compiled.cache.values())).plan
    assert plan is not None
    records = []
    original = compiled._record
    compiled._record = lambda *a: records.append(1) or original(*a)
    for _ in range(3):
        model.eval()
        model.train()
        compiled(x, y)
    assert not records and next(iter(compiled.cache.values())).plan is plan
    model.eval()          # the eval-mode step runs other ops (no dropout): a recording of its own
    compiled(x, y)
    assert records and len(compiled.cache) == 2


def test_fit_with_validation_records_the_step_once():
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3], dropout=0.2)
    x, y = _data(64)
    loader = gf.data.DataLoader(gf.data.TensorDataset(x, y), batch_size=16)
    counts = []
    original = compile_module.CompiledStep._record

    def counting(self, *a):
        counts.append(1)
        return original(self, *a)

    compile_module.CompiledStep._record = counting
    try:
        gf.train.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), loader,
                     val_loader=loader, epochs=3, progress=False, compile=True)
    finally:
        compile_module.CompiledStep._record = original
    assert len(counts) == 2  # two agreeing recordings in epoch 1, replays ever after


# ---- 2.10: clip_grad_norm_ on the device, as torch computes it -------------------------------------------
@pytest.mark.parametrize("case", ["clips", "no-clip", "nan", "inf-norm"])
def test_clip_grad_norm_matches_torch_bit_for_bit(case):
    rng = numpy.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(numpy.float32) for s in ((7, 5), (5,), (3, 7))]
    if case == "nan":
        grads[1][2] = numpy.nan
    max_norm = {"clips": 0.7, "no-clip": 100.0, "nan": 1.0, "inf-norm": 0.3}[case]
    norm_type = numpy.inf if case == "inf-norm" else 2.0
    ours = [gf.Tensor(numpy.zeros_like(g), requires_grad=True) for g in grads]
    theirs = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad = gf.Tensor(g.copy())
        q.grad = torch.from_numpy(g.copy())
    total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    numpy.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=1e-6)
    for p, q in zip(ours, theirs):
        numpy.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6, atol=0)  # NaN equals NaN here


def test_clip_grad_norm_error_if_nonfinite_still_raises():
    p = gf.Tensor(numpy.zeros(3, numpy.float32), requires_grad=True)
    p.grad = gf.Tensor(numpy.array([1.0, numpy.inf, 0.0], numpy.float32))
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


def _clip_run(compiled, norm, steps=8):
    """A step that clips; ``norm``: what it does with clip_grad_norm_'s result ("unused", "returned", or
    "used": returned and scaling the loss it returns)."""
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        total = nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        return loss if norm == "unused" else ((loss * total if norm == "used" else loss), total)

    fn = gf.compile(step, strict=True) if compiled else step
    rng = numpy.random.default_rng(2)
    out = []
    for _ in range(steps):
        x = gf.tensor(rng.standard_normal((6, 12)).astype(numpy.float32))
        y = gf.tensor(rng.integers(0, 3, 6))
        result = fn(x, y)
        out.append(tuple(t.data.tobytes() for t in (result if isinstance(result, tuple) else (result,))))
    return out, [p.data.tobytes() for p in model.parameters()], fn


@pytest.mark.parametrize("norm", ["returned", "used"])
def test_a_step_returning_the_clipped_norm_is_replayed(norm):
    """``clip_grad_norm_``'s norm returned from the step (and read by an op): a slot the call produces,
    taken from what the call returns in each replay; the same bytes as eager, norm included."""
    want_out, want_params, _ = _clip_run(False, norm)
    got_out, got_params, compiled = _clip_run(True, norm)
    assert compiled.captured
    assert got_out == want_out and got_params == want_params
    assert len({total for _, total in got_out}) == len(got_out)  # a fresh norm each replay, not the recorded one
    plan = next(iter(compiled.cache.values())).plan
    assert compile_module._call_results_used(plan)  # on a GPU: replayed without graphs, not with a stale norm


def test_an_unused_call_result_keeps_the_step_for_cuda_graphs():
    """A step that calls clip_grad_norm_ but ignores the norm: nothing the graph runner cannot do."""
    _, _, compiled = _clip_run(True, "unused", steps=3)
    assert compiled.captured
    assert not compile_module._call_results_used(next(iter(compiled.cache.values())).plan)


# ---- 2.6: the .grad a user reads after a replayed step is the parameter's own buffer ---------------------
def test_replayed_grad_is_the_parameters_own_buffer():
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3])
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    compiled = gf.compile(step, strict=True)
    x, y = _data()
    for _ in range(3):
        compiled(x, y)
    grads = [p.grad.data for p in model.parameters()]
    kept = [g.copy() for g in grads]
    compiled(x, y)
    # the same buffer each step (overwritten by the next step, like torch's static grads)...
    assert all(p.grad.data is g for p, g in zip(model.parameters(), grads))
    assert all(numpy.array_equal(p.grad.data, k) for p, k in zip(model.parameters(), kept))
    # ...and never an array an op of the plan produced (scratch the plan rewrites): the view of
    # the optimizer's flat gradient buffer that the parameter owns
    assert all(p.grad.data is p._grad_buffer for p in model.parameters())
    flat = next(iter(opt._flat.values())).grad_flat
    assert all(numpy.shares_memory(p.grad.data, flat) for p in model.parameters())


def accumulation_run(compiled, replace_grad):
    """Gradients accumulated over two micro-batches by a step without zero_grad; every other
    call the user clears them and steps. ``replace_grad``: the user also hands the first
    parameter a gradient of its own before each pair (a Tensor, not the optimizer's buffer)."""
    gf.manual_seed(0)
    model = nn.MLP([12, 8, 3])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def backward(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    run = gf.compile(backward, strict=True) if compiled else backward
    first = next(iter(model.parameters()))
    losses = []
    for k in range(12):
        if k % 2 == 0:
            opt.zero_grad()
            if replace_grad:
                first.grad = gf.Tensor(numpy.full(first.shape, 0.25, numpy.float32))
        losses.append(run(*_data(seed=k)).item())
        if k % 2 == 1:
            opt.step()
    return losses, [p.data.copy() for p in model.parameters()], [p.grad.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("replace_grad", [False, True], ids=["cleared", "user-grad"])
def test_gradients_accumulated_across_replays_equal_eager(replace_grad):
    """A replay computes a gradient straight into the parameter's buffer only when the parameter
    has none yet and still owns that buffer; otherwise it adds to what is there, as eager does."""
    eager, replayed = accumulation_run(False, replace_grad), accumulation_run(True, replace_grad)
    assert eager[0] == replayed[0]
    for a, b in zip(eager[1] + eager[2], replayed[1] + replayed[2]):
        assert a.tobytes() == b.tobytes()


# ---- a parameter given a new array between replays (``p.data = ...``) ------------------------------------
def clipped_run(compiled, clip_at, strict):
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    predict = gf.compile(model) if compiled else model

    step = gf.train.training_step(model, F.cross_entropy, opt)
    run = gf.compile(step, strict=strict) if compiled else step
    rng = numpy.random.default_rng(1)
    x, y = gf.tensor(rng.standard_normal((4, 6), dtype=numpy.float32)), gf.tensor(rng.integers(0, 3, 4))
    out = []
    for i in range(10):
        if i in clip_at:
            w = model[0].weight
            w.data = numpy.clip(w.data, -0.05, 0.05)  # a new array, not the optimizer's view
        out.append(run(x, y)[1].data.tobytes())
        with gf.no_grad():
            out.append(predict(x).data.tobytes())
        out.append(b"".join(p.data.tobytes() for p in model.parameters()))
    return out, run, predict


def test_a_parameter_given_a_new_array_is_read_by_the_next_replay():
    """A plan reads each parameter's array; ``p.data = p.data.clamp(...)`` (a new array, as weight
    clipping written out of place does) left replays reading the old one, silently. The plan now
    checks that every Tensor it reads still holds the array it recorded, else records afresh."""
    want, _, _ = clipped_run(False, {4}, strict=True)
    got, run, predict = clipped_run(True, {4}, strict=True)
    assert got == want
    assert run.captured and predict.captured


def test_a_parameter_given_a_new_array_every_step_runs_eagerly_with_a_warning():
    want, _, _ = clipped_run(False, set(range(3, 10)), strict=False)
    with pytest.warns(RuntimeWarning, match="changes between steps"):
        got, run, _ = clipped_run(True, set(range(3, 10)), strict=False)
    assert got == want and not run.captured


# ---- a parameter changed inside the step by plain NumPy (``p.data *= 0.9``) ------------------------------
def decay_run(compiled, where, strict=False, hook=False):
    gf.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    if hook:  # an optimizer step in backward: a legitimate parameter update, repeated by every replay
        w = model[0].weight
        w.register_post_accumulate_grad_hook(lambda p: p.data.__isub__(numpy.float32(0.01) * p.grad.data))

    def decay():
        for p in model.parameters():
            p.data *= numpy.float32(0.9)  # an in-place NumPy write: no op records it

    def step(x, y):
        if where == "before":
            decay()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if where == "between":
            decay()
        opt.step()
        if where == "after":
            decay()
        return loss

    run = gf.compile(step, strict=strict) if compiled else step
    rng = numpy.random.default_rng(1)
    x, y = gf.tensor(rng.standard_normal((4, 6), dtype=numpy.float32)), gf.tensor(rng.integers(0, 3, 4))
    losses = [run(x, y).data.tobytes() for _ in range(6)]
    return losses + [p.data.tobytes() for p in model.parameters()], run


@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_a_parameter_changed_by_numpy_inside_the_step_runs_eagerly(where):
    """``p.data *= 0.9`` inside a compiled step ran only while recording: every replay silently skipped
    it. The recorder now checksums every leaf an op reads before and after the op, around every call
    and at the end of the step (recording only; a replay does no such work): such a step runs eagerly."""
    want, _ = decay_run(False, where)
    with pytest.warns(RuntimeWarning, match="was changed inside the step"):
        got, run = decay_run(True, where)
    assert got == want and not run.captured
    with pytest.raises(CaptureError, match=r"p.data \*= 0.9"):
        decay_run(True, where, strict=True)


def test_parameters_updated_by_calls_and_hooks_still_capture():
    want, _ = decay_run(False, None, hook=True)
    got, run = decay_run(True, None, strict=True, hook=True)
    assert got == want and run.captured


def raw_write_run(compiled, kind, strict=False):
    """A step that changes an input or a buffer with plain NumPy (``kind``), or nothing (None)."""
    gf.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    teacher = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    teacher.requires_grad_(False)
    bn = nn.BatchNorm1d(6)  # its op updates its running statistics in place: legitimate
    opt = optim.SGD(student.parameters(), lr=0.1)

    def step(x, y):
        if kind == "input-in-place":
            x.data /= numpy.float32(2)
        elif kind == "input-replaced":
            x.data = x.data / numpy.float32(2)
        h = bn(x)
        opt.zero_grad()
        loss = F.cross_entropy(student(h), y) + F.mse_loss(student(h), teacher(h))
        loss.backward()
        opt.step()
        if kind == "teacher-ema":  # a mean-teacher update written with .data
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.data *= numpy.float32(0.9)
                t.data += numpy.float32(0.1) * s.data
        return loss

    run = gf.compile(step, strict=strict) if compiled else step
    rng = numpy.random.default_rng(2)
    out = []
    for _ in range(6):
        x = gf.tensor(rng.standard_normal((4, 6), dtype=numpy.float32))
        y = gf.tensor(rng.integers(0, 3, 4))
        out.append(run(x, y).data.tobytes())
    out += [t.data.tobytes() for m in (student, teacher, bn) for t in list(m.parameters()) + list(m.buffers())]
    return out, run


@pytest.mark.parametrize("kind", ["input-in-place", "input-replaced", "teacher-ema"])
def test_an_input_or_buffer_changed_by_numpy_inside_the_step_runs_eagerly(kind):
    """The same for the step's inputs (``x.data /= 255`` at its start) and for buffers or frozen
    parameters that ops read (a mean-teacher EMA written with ``.data``): replays skipped the write."""
    want, _ = raw_write_run(False, kind)
    with pytest.warns(RuntimeWarning, match="was changed inside the step"):
        got, run = raw_write_run(True, kind)
    assert got == want and not run.captured


def test_ops_that_write_their_inputs_still_capture():
    want, _ = raw_write_run(False, None)
    got, run = raw_write_run(True, None, strict=True)
    assert got == want and run.captured


def freeze_run(lib, opt_name, compiled):
    """Train 9 steps; the first layer is frozen (requires_grad_(False)) for steps 3-5, between calls."""
    rng = numpy.random.default_rng(5)
    model = lib.nn.Sequential(lib.nn.Linear(6, 5), lib.nn.Tanh(), lib.nn.Linear(5, 3))
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.standard_normal(tuple(p.shape)).astype(numpy.float32) * 0.3))
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd" else \
        lib.optim.Adam(model.parameters(), lr=0.01)
    x = lib.tensor(rng.standard_normal((8, 6)).astype(numpy.float32))
    y = lib.tensor(rng.integers(0, 3, 8))

    def step(x, y):
        opt.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = gf.compile(step, strict=True) if compiled else step
    losses = []
    for i in range(9):
        if i in (3, 6):
            model[0].requires_grad_(i == 6)
        losses.append(float(run(x, y).detach().numpy()))
    return losses, [p.detach().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_freezing_a_layer_between_compiled_steps_is_replayed_as_torch(opt_name):
    """A plan delivers gradients to the leaves that required grad while it was recorded: a layer
    frozen between calls kept its gradient in the replay, and the optimizer kept updating it. A leaf
    frozen or unfrozen since the recording makes the plan stale: the step records again."""
    want_losses, want = freeze_run(torch, opt_name, False)
    got_losses, got = freeze_run(gf, opt_name, True)
    numpy.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


SMOOTH_ACTIVATIONS = {"elu": lambda: nn.ELU(0.7), "selu": lambda: nn.SELU(), "celu": lambda: nn.CELU(),
                      "softplus": lambda: nn.Softplus(2.0, 5.0), "gelu": lambda: nn.GELU(),
                      "gelu-tanh": lambda: nn.GELU(approximate="tanh"), "silu": lambda: nn.SiLU(),
                      "mish": lambda: nn.Mish(), "hardtanh": lambda: nn.Hardtanh(), "hardsigmoid": lambda: nn.Hardsigmoid(),
                      "hardswish": lambda: nn.Hardswish(), "softsign": lambda: nn.Softsign(),
                      "logsigmoid": lambda: nn.LogSigmoid()}


@pytest.mark.parametrize("act", list(SMOOTH_ACTIVATIONS))
def test_a_model_with_a_smooth_activation_captures_and_equals_eager(act):
    """These activations' backward op was built from the forward op object, a new one in each step, so
    two recordings never agreed: a model with ELU, SELU, GELU, SiLU, Softplus... never captured
    (strict: CaptureError; else eager with a warning)."""
    rng = numpy.random.default_rng(0)
    data = [(gf.tensor(rng.standard_normal((8, 6)).astype(numpy.float32)), gf.tensor(rng.integers(0, 3, 8)))
            for _ in range(3)]
    results = []
    for compiled in (False, True):
        gf.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), SMOOTH_ACTIVATIONS[act](), nn.Linear(5, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = _mlp_step(model, opt)
        run = gf.compile(step, strict=True) if compiled else step
        losses = [run(*data[i % 3]).data.tobytes() for i in range(6)]
        results.append((losses, b"".join(p.data.tobytes() for p in model.parameters())))
        if compiled:
            assert run.captured
    assert results[0] == results[1]
