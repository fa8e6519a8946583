"""Thread safety of the tape: grad mode and the compile recorder are per thread, as in PyTorch.

Each test runs the threaded work several times in lock step (a barrier before every step),
so the threads' ops interleave as much as the GIL allows.
"""
import sys
import threading

import numpy
import pytest

import gradflow as gf
from gradflow import nn, optim
from gradflow.nn import functional as F


@pytest.fixture(autouse=True)
def _switch_often():
    """Let the interpreter switch threads every few bytecodes, so threads really interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _data(seed, n=6, bs=16):
    rng = numpy.random.default_rng(seed)
    return [(gf.tensor(rng.standard_normal((bs, 20), dtype=numpy.float32)), gf.tensor(rng.integers(0, 5, bs)))
            for _ in range(n)]


def _model(seed):
    gf.manual_seed(seed)
    return nn.MLP([20, 32, 5])


def _train(model, data, barrier=None, step=None):
    opt = optim.Adam(model.parameters(), lr=1e-2)

    def eager(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = step(eager) if step else eager
    losses = []
    for x, y in data:
        if barrier is not None:
            barrier.wait()
        losses.append(step(x, y).item())
    return losses, [p.numpy() for p in model.parameters()]


def _run_threads(*jobs, barrier=None):
    """Run each job in its own thread; re-raise the first exception (a failure breaks ``barrier``)."""
    results, errors = [None] * len(jobs), []

    def target(i, job):
        try:
            results[i] = job()
        except BaseException as e:  # noqa: B902 - re-raised in the main thread
            errors.append(e)
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=target, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results


def test_grad_mode_is_per_thread():
    inside, entered, leave = [], threading.Event(), threading.Event()

    def other():
        with gf.no_grad():
            entered.set()
            leave.wait(10)
            inside.append(gf.is_grad_enabled())

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    assert gf.is_grad_enabled()  # the other thread's no_grad is not ours
    x = gf.ones(3, requires_grad=True)
    assert (x * 2).requires_grad
    leave.set()
    t.join()
    assert inside == [False]
    assert gf.is_grad_enabled()


def test_no_grad_decorator_shared_by_threads():
    barrier = threading.Barrier(2)

    @gf.no_grad()
    def infer(x):
        barrier.wait()
        y = x * 2
        barrier.wait()
        return y.requires_grad, gf.is_grad_enabled()

    def grad_off_caller():
        with gf.no_grad():
            return infer(gf.ones(2, requires_grad=True)), gf.is_grad_enabled()

    def grad_on_caller():
        return infer(gf.ones(2, requires_grad=True)), gf.is_grad_enabled()

    for _ in range(5):
        off, on = _run_threads(grad_off_caller, grad_on_caller, barrier=barrier)
        assert off == ((False, False), False)
        assert on == ((False, False), True)  # restored to this thread's own mode


@pytest.mark.parametrize("repeat", range(3))
def test_two_models_in_two_threads_match_single_threaded(repeat):
    data_a, data_b = _data(1), _data(2)
    want_a = _train(_model(10), data_a)
    want_b = _train(_model(20), data_b)
    model_a, model_b = _model(10), _model(20)
    barrier = threading.Barrier(2)
    got_a, got_b = _run_threads(lambda: _train(model_a, data_a, barrier), lambda: _train(model_b, data_b, barrier),
                                barrier=barrier)
    for want, got in ((want_a, got_a), (want_b, got_b)):
        assert want[0] == got[0]
        for w, g in zip(want[1], got[1]):
            numpy.testing.assert_array_equal(w, g)


def test_training_beside_no_grad_inference():
    data = _data(3, n=8)
    want = _train(_model(5), data)
    model, frozen = _model(5), _model(6)
    x = gf.tensor(numpy.random.default_rng(0).standard_normal((4, 20), dtype=numpy.float32))
    barrier = threading.Barrier(2)

    def infer():
        outs = []
        for _ in data:
            barrier.wait()
            with gf.no_grad():
                for _ in range(3):
                    y = frozen(x)
                    assert not y.requires_grad
            outs.append(y.numpy())
        return outs

    got, outs = _run_threads(lambda: _train(model, data, barrier), infer, barrier=barrier)
    assert want[0] == got[0]
    for w, g in zip(want[1], got[1]):
        numpy.testing.assert_array_equal(w, g)
    for o in outs:
        numpy.testing.assert_array_equal(o, outs[0])


def test_backward_does_not_switch_off_grad_mode_of_other_threads():
    barrier = threading.Barrier(2)
    seen = []

    def backwards():
        for _ in range(50):
            barrier.wait()
            x = gf.ones((64, 64), requires_grad=True)
            (x @ x).exp().sum().backward()

    def records():
        for _ in range(50):
            barrier.wait()
            for _ in range(20):
                seen.append((gf.ones(3, requires_grad=True) * 3).requires_grad)

    _run_threads(backwards, records, barrier=barrier)
    assert all(seen)


def test_two_compiled_steps_in_two_threads():
    data_a, data_b = _data(4, n=6), _data(5, n=6)
    want_a = _train(_model(1), data_a)
    want_b = _train(_model(2), data_b)
    model_a, model_b = _model(1), _model(2)
    barrier = threading.Barrier(2)
    compiled = lambda step: gf.compile(step, strict=True)  # noqa: E731
    got_a, got_b = _run_threads(lambda: _train(model_a, data_a, barrier, compiled),
                                lambda: _train(model_b, data_b, barrier, compiled), barrier=barrier)
    for want, got in ((want_a, got_a), (want_b, got_b)):
        assert want[0] == got[0]
        for w, g in zip(want[1], got[1]):
            numpy.testing.assert_array_equal(w, g)


def test_compiled_step_beside_eager_training():
    data_a, data_b = _data(6, n=6), _data(7, n=6)
    want_a = _train(_model(3), data_a)
    want_b = _train(_model(4), data_b)
    model_a, model_b = _model(3), _model(4)
    barrier = threading.Barrier(2)
    got_a, got_b = _run_threads(lambda: _train(model_a, data_a, barrier, lambda s: gf.compile(s, strict=True)),
                                lambda: _train(model_b, data_b, barrier), barrier=barrier)
    assert want_a[0] == got_a[0] and want_b[0] == got_b[0]


def test_set_grad_enabled_and_inference_mode_are_per_thread():
    switched, done = threading.Event(), threading.Event()
    seen = []

    def other():
        gf.set_grad_enabled(False)  # a plain call: switches this thread only
        with gf.inference_mode():
            switched.set()
            done.wait(10)
        seen.append(gf.is_grad_enabled())

    t = threading.Thread(target=other)
    t.start()
    switched.wait(10)
    assert gf.is_grad_enabled() and not gf.is_inference_mode_enabled()
    assert (gf.ones(2, requires_grad=True) * 2).requires_grad
    done.set()
    t.join()
    assert seen == [False] and gf.is_grad_enabled()
