"""gradflow.amp.GradScaler against torch.amp.GradScaler (CPU), and under gradflow.compile.

The unscale and update operations are compared with torch's own kernels bit for bit; whole
training runs (SGD with momentum, Adam; with and without unscale_ + clipping) with forced
overflow steps give the same scale sequence, the same skipped steps and the same parameters;
a compiled step replays bit-identically to eager, skipped steps and scale changes included.
"""
import copy
import pickle
import warnings

import numpy
import pytest

import gradflow as gf
from gradflow import amp, nn, optim
from gradflow.nn import functional as F
from test_compile_one_launch import emulated_gpu  # noqa: F401  (the host emulation of the GPU runner)

torch = pytest.importorskip("torch")
# overflowing steps are the point here: NumPy's overflow/invalid warnings from the forced infs are expected
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


# ---- the two operations, bit for bit -------------------------------------------------------------------
def _grads(rng, dtype, bad=None):
    gs = [(rng.standard_normal(shape) * 1e3).astype(dtype) for shape in ((7, 5), (5,), (3, 2, 4))]
    gs[0].flat[3] = numpy.finfo(dtype).tiny / 4  # a subnormal
    if bad is not None:
        gs[2].flat[5] = bad
    return gs


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("inv", [1.0 / 3.0, 1.0, 2.0 ** -16, 7.0])
@pytest.mark.parametrize("bad", [None, numpy.inf, -numpy.inf, numpy.nan])
def test_non_finite_check_and_unscale_matches_torch(dtype, inv, bad):
    rng = numpy.random.default_rng(0)
    gs = _grads(rng, dtype, bad)
    tg = [torch.from_numpy(g.copy()) for g in gs]
    t_found, t_inv = torch.zeros(()), torch.full((), inv, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(tg, t_found, t_inv)
    found, inv_scale = numpy.zeros((), numpy.float32), numpy.full((), inv, numpy.float32)
    amp.non_finite_check_and_unscale_(gs, found, inv_scale)
    for g, t in zip(gs, tg):
        assert g.dtype == dtype and g.tobytes() == t.numpy().tobytes()
    assert float(found) == float(t_found) == (0.0 if bad is None else 1.0)


def test_found_inf_is_only_ever_set():
    """Pre-zeroing is the caller's job (as torch): a clean gradient leaves a set flag set."""
    found = numpy.ones((), numpy.float32)
    amp.non_finite_check_and_unscale_([numpy.ones(3, numpy.float32)], found, numpy.full((), 0.5, numpy.float32))
    assert float(found) == 1.0


@pytest.mark.parametrize("growth,backoff,interval", [(2.0, 0.5, 2), (1.7, 0.3, 3), (1.0001, 0.999, 1)])
def test_update_scale_matches_torch(growth, backoff, interval):
    pattern = [0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    for start in (65536.0, 3.0e38, 1e-30):  # 3e38: growing would overflow to inf, so the scale stays
        scale, tracker = numpy.full((), start, numpy.float32), numpy.zeros((), numpy.int32)
        t_scale, t_tracker = torch.full((), start), torch.zeros((), dtype=torch.int32)
        for f in pattern:
            found = numpy.full((), f, numpy.float32)
            amp.update_scale_(scale, tracker, found, growth, backoff, interval)
            torch._amp_update_scale_(t_scale, t_tracker, torch.full((), float(f)), growth, backoff, interval)
            assert scale.tobytes() == t_scale.numpy().tobytes() and int(tracker) == int(t_tracker)
            assert scale.dtype == numpy.float32 and tracker.dtype == numpy.int32


# ---- whole training runs against torch -------------------------------------------------------------------
def _init_weights():
    rng = numpy.random.default_rng(1)
    return [(rng.standard_normal((16, 10)) * 0.3).astype(numpy.float32), numpy.zeros(16, numpy.float32) + 0.1,
            (rng.standard_normal((3, 16)) * 0.3).astype(numpy.float32), numpy.zeros(3, numpy.float32) - 0.1]


def _data(n=6, overflow_at=(2,)):
    rng = numpy.random.default_rng(2)
    out = []
    for k in range(n):
        x = rng.standard_normal((8, 10)).astype(numpy.float32)
        if k in overflow_at:
            x[1, 3] = numpy.inf  # this batch's gradients are inf/NaN: its step must be skipped
        out.append((x, rng.standard_normal((8, 3)).astype(numpy.float32)))
    return out


def _model(m, weights):
    model = m.nn.Sequential(m.nn.Linear(10, 16), m.nn.ReLU(), m.nn.Linear(16, 3))
    with m.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(m.from_numpy(w.copy()))
    return model


OPTS = {"sgd": lambda m, ps: m.optim.SGD(ps, lr=1e-3, momentum=0.9),
        "adam": lambda m, ps: m.optim.Adam(ps, lr=1e-2)}


def train(m, opt_name, steps, clip=None, init_scale=2.0 ** 127, growth_interval=3):
    """``m`` is torch or gradflow. 2**127 times a loss of ~100 overflows: the first steps back off."""
    model = _model(m, _init_weights())
    opt = OPTS[opt_name](m, model.parameters())
    scaler = m.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    data = _data()
    scales, skipped, returned = [], [], []
    for i in range(steps):
        x, y = (m.from_numpy(a.copy()) for a in data[i % len(data)])
        opt.zero_grad()
        loss = m.nn.functional.mse_loss(model(x), y, reduction="sum")
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            m.nn.utils.clip_grad_norm_(model.parameters(), clip)
        returned.append(scaler.step(opt))
        skipped.append(sum(float(v) for v in scaler._found_inf_per_device(opt).values()) > 0)
        scaler.update()
        scales.append(scaler.get_scale())
    params = [p.detach().numpy().copy() for p in model.parameters()]
    return scales, skipped, params, scaler.state_dict(), returned


def _backs_off_and_grows(scales):
    pairs = list(zip(scales, scales[1:]))
    return any(b < a for a, b in pairs) and any(b > a for a, b in pairs)


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_training_matches_torch(opt_name, clip):
    want = train(torch, opt_name, 30, clip)
    got = train(gf, opt_name, 30, clip)
    assert got[0] == want[0], "scale sequence"
    assert got[1] == want[1], "skipped steps"
    assert any(got[1][:5]) and any(got[1][10:]) and not all(got[1][10:]), "the run has skipped and taken steps"
    assert _backs_off_and_grows(got[0])
    for a, b in zip(got[2], want[2]):
        numpy.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert got[3] == want[3]
    assert got[4] == want[4] == [None] * 30


def test_step_returns_the_optimizer_steps_value():
    model = _model(gf, _init_weights())
    opt = optim.SGD(model.parameters(), lr=0.1)
    scaler = amp.GradScaler("cpu")
    x, y = (gf.tensor(a) for a in _data()[0])

    def closure_free_step():
        return "stepped"

    opt.step = lambda *a, **k: closure_free_step()  # an optimizer whose step returns a value
    scaler.scale(F.mse_loss(model(x), y)).backward()
    assert scaler.step(opt) == "stepped"
    scaler.update()
    x, y = (gf.tensor(a) for a in _data()[2])
    opt.zero_grad()
    scaler.scale(F.mse_loss(model(x), y)).backward()
    assert scaler.step(opt) is None  # skipped: inf in the gradients


# ---- the API's contract, as torch's ------------------------------------------------------------------------
def _one_backward(m, scaler):
    model = _model(m, _init_weights())
    opt = m.optim.SGD(model.parameters(), lr=0.1)
    x, y = (m.from_numpy(a.copy()) for a in _data()[0])
    scaler.scale(m.nn.functional.mse_loss(model(x), y)).backward()
    return model, opt


def _raises_like_torch(action):
    """``action(m, scaler, opt)`` raises the same exception type and message in both libraries."""
    errors = []
    for m in (torch, gf):
        scaler = m.amp.GradScaler("cpu")
        model, opt = _one_backward(m, scaler)
        with pytest.raises(Exception) as info:
            action(m, scaler, opt)
        errors.append(info.value)
    assert type(errors[1]) is type(errors[0]) and str(errors[1]) == str(errors[0]).replace("torch", "gradflow")


def test_unscale_twice_raises():
    _raises_like_torch(lambda m, s, o: (s.unscale_(o), s.unscale_(o)))


def test_unscale_after_step_raises():
    _raises_like_torch(lambda m, s, o: (s.step(o), s.unscale_(o)))


def test_step_twice_raises():
    _raises_like_torch(lambda m, s, o: (s.step(o), s.step(o)))


def test_step_with_a_closure_raises():
    _raises_like_torch(lambda m, s, o: s.step(o, closure=lambda: None))


def test_update_before_any_step_raises():
    _raises_like_torch(lambda m, s, o: s.update())


def test_step_before_scale_raises():
    for m in (torch, gf):
        scaler = m.amp.GradScaler("cpu")
        opt = m.optim.SGD(_model(m, _init_weights()).parameters(), lr=0.1)
        with pytest.raises(AssertionError, match="did not use scaler.scale"):
            scaler.step(opt)


def test_bad_factors_raise():
    for m in (torch, gf):
        with pytest.raises(AssertionError, match="growth factor must be > 1.0"):
            m.amp.GradScaler("cpu", growth_factor=1.0)
        with pytest.raises(AssertionError, match="backoff factor must be < 1.0"):
            m.amp.GradScaler("cpu", backoff_factor=1.0)


def test_unscale_then_step_does_not_unscale_again():
    scaler = amp.GradScaler("cpu", init_scale=8.0)
    model, opt = _one_backward(gf, scaler)
    want = [p.grad.data / 8.0 for p in model.parameters()]
    scaler.unscale_(opt)
    got = [p.grad.data.copy() for p in model.parameters()]
    opt.step = lambda: None
    scaler.step(opt)
    for w, g, p in zip(want, got, model.parameters()):
        assert w.tobytes() == g.tobytes() == p.grad.data.tobytes()


def test_update_with_new_scale():
    for m in (torch, gf):
        scaler = m.amp.GradScaler("cpu")
        _one_backward(m, scaler)
        scaler.update(1024.0)
        assert scaler.get_scale() == 1024.0
        scaler.update(m.full((), 8.0))
        assert scaler.get_scale() == 8.0
        if m is gf:  # torch 2.13's docstring says 1-element but its 0-d scale refuses copy_ from shape (1,)
            scaler.update(m.full((1,), 16.0))
            assert scaler.get_scale() == 16.0
        with pytest.raises(AssertionError, match="new_scale should be"):
            scaler.update(m.ones(2))
        with pytest.raises(AssertionError, match="new_scale should be"):
            scaler.update(m.ones((), requires_grad=True))


def test_scale_nested_outputs_like_torch():
    rng = numpy.random.default_rng(3)
    arrays = [rng.standard_normal(3).astype(numpy.float32) for _ in range(3)]
    results = []
    for m in (torch, gf):
        scaler = m.amp.GradScaler("cpu", init_scale=3.0)
        a, b, c = (m.from_numpy(x.copy()) for x in arrays)
        out = scaler.scale([a, (b, [c])])
        assert isinstance(out, list) and isinstance(out[1], tuple) and isinstance(out[1][1], list)
        results.append([out[0].numpy(), out[1][0].numpy(), out[1][1][0].numpy()])
        assert [t.numpy().tolist() for t in scaler.scale(iter([a]))] == [results[-1][0].tolist()]
        with pytest.raises(ValueError, match="outputs must be a Tensor or an iterable of Tensors"):
            scaler.scale(3.0)
    for x, y in zip(*results):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
def test_scale_result_dtype_like_torch(dtype):
    x = numpy.ones(3, dtype)
    want = torch.amp.GradScaler("cpu", init_scale=4.0).scale(torch.from_numpy(x))
    got = amp.GradScaler("cpu", init_scale=4.0).scale(gf.tensor(x))
    assert str(got.dtype) == str(want.dtype).replace("torch.", "") and got.numpy().tolist() == want.tolist()


def test_fp16_gradients_raise_in_unscale():
    p = gf.ones(3, dtype=numpy.float16, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    scaler = amp.GradScaler("cpu")
    scaler.scale(p.sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients."):
        scaler.unscale_(opt)


def test_disabled_is_a_pass_through():
    model, opt = _one_backward(gf, amp.GradScaler("cpu", enabled=False))
    scaler = amp.GradScaler("cpu", enabled=False)
    loss = gf.ones(())
    assert scaler.scale(loss) is loss and scaler.scale([loss])[0] is loss
    before = [p.data.copy() for p in model.parameters()]
    grads = [p.grad.data.copy() for p in model.parameters()]
    assert scaler.unscale_(opt) is None
    assert [p.grad.data.tobytes() for p in model.parameters()] == [g.tobytes() for g in grads]
    scaler.step(opt)  # optimizer.step() itself
    assert all((p.data != b).any() for p, b in zip(model.parameters(), before))
    scaler.update()
    assert scaler.get_scale() == 1.0 and scaler.state_dict() == {} and not scaler.is_enabled()
    scaler.load_state_dict({})  # a no-op when disabled


def test_cuda_scaler_without_cuda_warns_and_disables_itself_like_torch():
    if gf.cuda.is_available():
        pytest.skip("a GPU is present")
    for m in (torch, gf):
        with pytest.warns(UserWarning, match="CUDA is not available.  Disabling."):
            scaler = m.amp.GradScaler()
        assert not scaler.is_enabled()


def test_deprecated_cuda_amp_spelling():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no CUDA here: disabled, as torch's
        with pytest.warns(FutureWarning, match="gradflow.amp.GradScaler\\('cuda', args...\\)"):
            scaler = gf.cuda.amp.GradScaler(init_scale=8.0)
    assert isinstance(scaler, amp.GradScaler) and scaler._device == "cuda"
    assert gf.GradScaler is amp.GradScaler


def test_getters_and_setters_like_torch():
    for m in (torch, gf):
        scaler = m.amp.GradScaler("cpu", init_scale=32.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=7)
        assert (scaler.get_scale(), scaler.get_growth_factor(), scaler.get_backoff_factor(),
                scaler.get_growth_interval(), scaler.is_enabled()) == (32.0, 3.0, 0.25, 7, True)
        scaler.set_growth_factor(4.0)
        scaler.set_backoff_factor(0.125)
        scaler.set_growth_interval(9)
        assert (scaler.get_growth_factor(), scaler.get_backoff_factor(),
                scaler.get_growth_interval()) == (4.0, 0.125, 9)
        scaler.scale(m.ones(()))
        assert isinstance(scaler._get_scale_async(), m.Tensor) and scaler._get_scale_async().dtype == m.float32


def test_state_dict_round_trip_like_torch():
    want = train(torch, "adam", 7)[3]
    got = train(gf, "adam", 7)[3]
    assert got == want and set(got) == {"scale", "growth_factor", "backoff_factor", "growth_interval",
                                        "_growth_tracker"}
    fresh = amp.GradScaler("cpu")
    fresh.load_state_dict(got)
    assert fresh.state_dict() == got
    live = amp.GradScaler("cpu")
    live.scale(gf.ones(()))
    scale_array = live._scale
    live.load_state_dict(got)  # into the existing arrays, in place
    assert live._scale is scale_array and live.state_dict() == got
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        live.load_state_dict({})


def test_resume_from_state_dict_continues_identically():
    """Run 12 steps; or 6, save, continue in a new scaler loaded from the state dict: the same scales."""
    full = train(gf, "sgd", 12)[0]
    model = _model(gf, _init_weights())
    opt = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=3)
    data = _data()
    scales = []
    for i in range(12):
        if i == 6:
            state = copy.deepcopy(scaler.state_dict())
            scaler = amp.GradScaler("cpu")
            scaler.load_state_dict(state)
        x, y = (gf.tensor(a) for a in data[i % len(data)])
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(x), y, reduction="sum")).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == full


def test_pickle_keeps_the_scale():
    scaler = amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=3)
    _, opt = _one_backward(gf, scaler)
    with pytest.raises(AssertionError, match="may only be pickled"):
        scaler.unscale_(opt)
        pickle.dumps(scaler)
    scaler.step(opt)
    scaler.update()
    clone = pickle.loads(pickle.dumps(scaler))
    assert clone.state_dict() == scaler.state_dict() and clone._scale is None


# ---- under gradflow.compile ---------------------------------------------------------------------------------
def compiled_run(opt_name, steps, compiled, clip=1.0, reload_at=None):
    gf.manual_seed(0)
    model = _model(gf, _init_weights())
    opt = OPTS[opt_name](gf, model.parameters())
    scaler = amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=3)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y, reduction="sum")
        scaler.scale(loss).backward()
        if clip is not None:  # else scaler.step unscales
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        return loss

    fn = gf.compile(step, strict=True) if compiled else step
    data = [(gf.tensor(x), gf.tensor(y)) for x, y in _data()]
    out, saved = [], None
    for i in range(steps):
        if i == 8:
            saved = scaler.state_dict()
        if i == reload_at:
            scaler.load_state_dict(saved)
        loss = fn(*data[i % len(data)])
        out.append((loss.data.tobytes(), scaler.get_scale(), scaler._get_growth_tracker(),
                    b"".join(p.data.tobytes() + p.grad.data.tobytes() for p in model.parameters())))
    if compiled:
        assert fn.captured and all(e.eager_reason is None for e in fn.cache.values())
    return out


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_compiled_step_with_scaler_equals_eager_bit_for_bit(opt_name, clip):
    """30 steps: the first ones overflow (2**127 times the loss), every sixth batch holds an inf, and the
    scale grows every third clean step; the replay reads the scale array, never a recorded constant."""
    want = compiled_run(opt_name, 30, False, clip)
    got = compiled_run(opt_name, 30, True, clip)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: compiled differs from eager"
    assert _backs_off_and_grows([s for _, s, _, _ in got][2:])  # while replaying


def test_compiled_step_with_scaler_load_state_dict_mid_run():
    want = compiled_run("adam", 20, False, reload_at=14)
    got = compiled_run("adam", 20, True, reload_at=14)
    assert want == got


def test_compiled_scale_reads_the_scale_array():
    """The recorded multiply's input is the scaler's own array (filled in place by update), not a copy."""
    scaler = amp.GradScaler("cpu", init_scale=4.0)
    w = gf.ones(3, requires_grad=True)
    fn = gf.compile(lambda x: scaler.scale((w * x).sum()), strict=True)
    x = gf.ones(3)
    for _ in range(3):
        fn(x)
    assert fn.captured
    scaler.update(10.0)
    assert fn(x).item() == 30.0
    scaler.load_state_dict({**scaler.state_dict(), "scale": 0.5})
    assert fn(x).item() == 1.5


# ---- on a GPU -----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("bad", [None, numpy.inf, numpy.nan])
def test_gpu_kernels_equal_the_numpy_twins(dtype, bad):
    cp = gf.backend.cupy()
    rng = numpy.random.default_rng(0)
    gs = _grads(rng, dtype, bad) + [rng.standard_normal(100_000).astype(dtype)]
    found, inv = numpy.zeros((), numpy.float32), numpy.full((), 1 / 3, numpy.float32)
    dg = [cp.asarray(g) for g in gs] + [cp.asarray(gs[0]).T]  # and a non-contiguous one
    dfound, dinv = cp.asarray(found), cp.asarray(inv)
    amp.non_finite_check_and_unscale_(dg, dfound, dinv)
    want_t = gs[0].T.copy()
    amp.non_finite_check_and_unscale_(gs + [want_t], found, inv)
    for g, d in zip(gs + [want_t], dg):
        # -ftz: a float32 product that is subnormal may flush to zero on the device
        numpy.testing.assert_allclose(cp.asnumpy(d), g, rtol=0, atol=numpy.finfo(dtype).tiny)
    assert float(dfound) == float(found)
    for growth, backoff, interval in ((2.0, 0.5, 2), (1.7, 0.3, 3)):
        scale, tracker = numpy.full((), 3.0e38, numpy.float32), numpy.zeros((), numpy.int32)
        dscale, dtracker = cp.asarray(scale), cp.asarray(tracker)
        for f in [0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0]:
            amp.update_scale_(scale, tracker, numpy.full((), f, numpy.float32), growth, backoff, interval)
            amp.update_scale_(dscale, dtracker, cp.full((), f, numpy.float32), growth, backoff, interval)
            assert cp.asnumpy(dscale).tobytes() == scale.tobytes() and int(dtracker) == int(tracker)


@pytest.mark.gpu
def test_gpu_training_with_scaler_matches_cpu():
    cpu = train(gf, "adam", 20, clip=1.0)

    def on_gpu():
        model = _model(gf, _init_weights()).to("cuda")
        opt = optim.Adam(model.parameters(), lr=1e-2)
        scaler = amp.GradScaler("cuda", init_scale=2.0 ** 127, growth_interval=3)
        data = _data()
        scales = []
        for i in range(20):
            x, y = (gf.tensor(a, device="cuda") for a in data[i % len(data)])
            opt.zero_grad()
            scaler.scale(F.mse_loss(model(x), y, reduction="sum")).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        return scales, [p.numpy() for p in model.parameters()]

    scales, params = on_gpu()
    assert scales == cpu[0]
    for a, b in zip(params, cpu[2]):
        numpy.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_device_kernels_keep_subnormals():
    """CuPy compiles with -ftz=true; the unscale product and the scale update must not flush (PyTorch's
    kernels keep subnormal gradients): their float32 arithmetic is PTX without .ftz. Checked on the PTX
    NVRTC makes, so without a GPU."""
    N = pytest.importorskip("cupy_nvrtc")
    if N.unavailable() is not None:
        pytest.skip(N.unavailable())
    with N.offline():
        c = N.compile_raw_module("amp.cu", N.ARCHS[0])
    assert "-ftz=true" in " ".join(c.options)
    for entry in ("amp_unscale_f32", "amp_update_scale_f32", "amp_update_scale_dev_f32"):
        body = c.body(entry)
        arithmetic = [ln for ln in body if ln.split()[0].startswith(("mul.", "cvt.", "fma.", "add."))
                      and ".f32" in ln.split()[0]]
        assert arithmetic and not [ln for ln in arithmetic if ".ftz" in ln.split()[0]], arithmetic
    assert any(ln.startswith("mul.rn.f32") for ln in c.body("amp_unscale_f32"))


def test_emulated_gpu_replay_with_scaler_equals_eager(emulated_gpu):
    """The GPU runner (host emulation, tests/test_compile_one_launch.py): the scaler's calls are parts of the
    step's one graph (tests/test_amp_graph.py); while the first steps overflow the optimizer has no state
    yet and those replays run eagerly. Same bytes as eager at every step."""
    import test_compile_one_launch as one_launch
    want = compiled_run("sgd", 16, False)

    gf.manual_seed(0)
    model = _model(gf, _init_weights())
    opt = OPTS["sgd"](gf, model.parameters())
    scaler = amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=3)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y, reduction="sum")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return loss

    compiled = gf.compile(step, strict=True)
    data = [(gf.tensor(x), gf.tensor(y)) for x, y in _data()]
    got, runner, launches = [], None, []
    for i in range(16):
        x, y = data[i % len(data)]
        if i < 2:
            loss = compiled(x, y)
        else:
            if runner is None:
                runner = one_launch.compile_module._CudaGraphRunner(next(iter(compiled.cache.values())).plan)
            emulated_gpu.persistent = one_launch.persistent(opt) + [scaler._scale, scaler._growth_tracker,
                                                                    scaler._graph_buffers().inv_scale,
                                                                    scaler._graph_buffers().flag(opt)]
            before = emulated_gpu.launches
            loss = runner.run([x.data, y.data])
            launches.append(emulated_gpu.launches - before)
        got.append((loss.data.tobytes(), scaler.get_scale(), scaler._get_growth_tracker(),
                    b"".join(p.data.tobytes() + p.grad.data.tobytes() for p in model.parameters())))
    for i, (a, b) in enumerate(zip(want, got)):
        assert a == b, f"step {i}: emulated GPU replay differs from eager"
    first = launches.index(1)
    assert 0 < first and launches == [0] * first + [1] * (14 - first)
    assert [s[0] for s in runner.steps] == ["graph"]  # forward, backward, deliveries and the scaler's calls
