"""gradflow.compile on the core alone: replay equals eager, and what cannot be captured is caught."""
import numpy
import pytest

import gradflow as gf
from gradflow import CaptureError


def make_params(seed=0, sizes=(20, 16, 8, 4), dtype=numpy.float64):
    rng = numpy.random.default_rng(seed)
    params = []
    for i, o in zip(sizes, sizes[1:]):
        params.append(gf.Tensor((rng.standard_normal((o, i)) * 0.3).astype(dtype), requires_grad=True))
        params.append(gf.Tensor(numpy.zeros(o, dtype), requires_grad=True))
    return params


@gf.replay_as_call
def sgd(params, lr=0.05):
    for p in params:
        if p.grad is not None:
            p.data -= lr * p.grad.data
            p.grad = None


def mlp_step(params):
    def step(x, y):
        h = x
        for i in range(0, len(params), 2):
            h = gf.ops.linear(h, params[i], params[i + 1])
            if i + 2 < len(params):
                h = gf.maximum(h, 0.0)
        loss = ((h - y) ** 2).mean()
        loss.backward()
        sgd(params)
        return loss
    return step


def batches(n, bs=8, seed=1, dtype=numpy.float64):
    rng = numpy.random.default_rng(seed)
    return [(gf.Tensor(rng.standard_normal((bs, 20)).astype(dtype)), gf.Tensor(rng.standard_normal((bs, 4)).astype(dtype)))
            for _ in range(n)]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_replay_is_bit_identical_to_eager_over_100_steps(dtype):
    p_eager, p_comp = make_params(dtype=dtype), make_params(dtype=dtype)
    eager, compiled = mlp_step(p_eager), gf.compile(mlp_step(p_comp), strict=True)
    data = batches(5, dtype=dtype)
    for i in range(100):
        x, y = data[i % 5]
        a, b = eager(x, y), compiled(x, y)
        assert a.data.tobytes() == b.data.tobytes(), f"step {i}"
    assert compiled.captured
    for a, b in zip(p_eager, p_comp):
        assert numpy.array_equal(a.data, b.data)


def test_changed_shapes_record_again_and_cache_both():
    params = make_params()
    compiled = gf.compile(mlp_step(params), strict=True)
    for bs in (8, 8, 8, 3, 3, 3, 8):
        x, y = batches(1, bs=bs)[0]
        compiled(x, y)
    assert len(compiled.cache) == 2 and all(e.plan is not None for e in compiled.cache.values())


def test_loss_decreases_under_replay():
    params = make_params()
    compiled = gf.compile(mlp_step(params), strict=True)
    x, y = batches(1)[0]
    losses = [compiled(x, y).data.item() for _ in range(60)]
    assert compiled.captured and losses[-1] < 0.5 * losses[0]


def test_host_sync_inside_step_is_refused_or_runs_eagerly():
    params = make_params()

    def step(x, y):
        loss = ((gf.ops.linear(x, params[0], params[1]) ** 2).mean())
        if loss.item() > 1e9:        # data-dependent control flow
            return loss * 0
        loss.backward()
        sgd(params)
        return loss
    x, y = batches(1)[0]
    with pytest.raises(CaptureError, match=r"item\(\) reads tensor data on the host"):
        gf.compile(step, strict=True)(x, y)
    lenient = gf.compile(step)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        lenient(x, y)
    lenient(x, y)                      # stays eager, no second warning needed
    assert not lenient.captured


def test_raw_array_math_that_changes_between_steps_is_detected():
    params = make_params()

    class Leaky(gf.Function):        # backward builds a data-dependent array outside any Function
        def forward(self, x):
            self.x = x
            return x * 1.0

        def backward(self, gy):
            return gy * gf.Tensor(numpy.where(self.x > 0, 1.0, 0.1))

    def step(x, y):
        loss = (Leaky()(gf.ops.linear(x, params[0], params[1])) ** 2).mean()
        loss.backward()
        sgd(params)
        return loss
    data = batches(3)
    compiled = gf.compile(step, strict=True)
    with pytest.raises(CaptureError, match="changes between steps but is not produced by a recorded op"):
        for x, y in data:            # recordings disagree each time; the third gives up
            compiled(x, y)
    assert not compiled.captured


def test_in_place_edit_inside_step_is_refused():
    params = make_params()

    def step(x, y):
        with gf.no_grad():
            x += 1.0
        return (gf.ops.linear(x, params[0], params[1]) ** 2).mean()
    with pytest.raises(CaptureError, match="in-place add"):
        gf.compile(step, strict=True)(*batches(1)[0])


def test_returning_python_numbers_is_refused():
    params = make_params()

    def step(x, y):
        return 3.5
    with pytest.raises(CaptureError, match="returns a float"):
        gf.compile(step, strict=True)(*batches(1)[0])


def test_invalidate_forces_a_new_recording():
    params = make_params()
    compiled = gf.compile(mlp_step(params), strict=True)
    x, y = batches(1)[0]
    for _ in range(3):
        compiled(x, y)
    assert compiled.captured
    gf.compile_invalidate()
    compiled(x, y)
    assert not compiled.captured


def test_non_tensor_arguments_are_part_of_the_key():
    params = make_params()

    def step(x, y, scale):
        loss = ((gf.ops.linear(x, params[0], params[1]) * scale) ** 2).mean()
        loss.backward()
        sgd(params)
        return loss
    compiled = gf.compile(step, strict=True)
    x, y = batches(1)[0]
    for s in (1.0, 1.0, 1.0, 2.0, 2.0, 2.0):
        compiled(x, y, s)
    assert len(compiled.cache) == 2
    with pytest.raises(TypeError, match="hashable"):
        compiled(x, y, [1.0])
