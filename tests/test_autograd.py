"""The tape: ordering, accumulation, freeing, higher order, and the errors it raises."""
import gc
import tracemalloc
import weakref

import numpy
import pytest

import gradflow as gf


def test_shared_input_accumulates():
    x = gf.tensor([2.0, -1.0], requires_grad=True)
    y = x * x + x * 3.0          # x used three times
    y.sum().backward()
    assert numpy.allclose(x.grad.numpy(), 2 * x.numpy() + 3)


def test_diamond_graph_is_processed_in_topological_order():
    x = gf.tensor(1.5, requires_grad=True)
    a = x * 2
    b = a.exp()
    c = a * b + b              # a reaches c through two paths
    c.backward()
    xv = 1.5
    expected = 2 * numpy.exp(2 * xv) + 2 * xv * 2 * numpy.exp(2 * xv) + 2 * numpy.exp(2 * xv)
    assert numpy.isclose(x.grad.item(), expected, rtol=1e-5)


def test_grads_accumulate_across_backward_calls():
    x = gf.tensor([1.0], requires_grad=True)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    assert x.grad.item() == 5.0


def test_grads_of_two_leaves_never_alias():
    a = gf.tensor([1.0, 2.0], requires_grad=True)
    b = gf.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad.data *= 10
    assert numpy.allclose(b.grad.numpy(), [1, 1])


def test_ten_thousand_op_chain_backpropagates_without_recursion():
    x = gf.tensor(1.0, dtype=numpy.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert numpy.isclose(x.grad.item(), 1.0001 ** 10_000)


def test_backward_frees_saved_tensors_and_graph():
    x = gf.tensor(numpy.ones(1000), dtype=numpy.float64, requires_grad=True)
    h = x.exp()
    fn = h.creator
    loss = (h * h).sum()
    ref = weakref.ref(h)
    del h
    loss.backward()
    assert fn.inputs is None and fn._saved == ()
    assert ref() is None  # the intermediate died once its consumers were processed


def test_second_backward_on_freed_graph_is_a_clear_error():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert numpy.allclose(x.grad.numpy(), [4.0, 8.0])


def test_backward_errors_say_what_to_do():
    with pytest.raises(RuntimeError, match="does not require grad"):
        gf.tensor([1.0]).sum().backward()
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(2,\)"):
        (x * 2).backward()
    y = x * 2
    y.backward(gf.tensor([1.0, 10.0]))
    assert numpy.allclose(x.grad.numpy(), [2, 20])
    with pytest.raises(RuntimeError, match="gradient shape"):
        (x * 2).backward(gf.tensor([1.0, 2.0, 3.0]))


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        gf.tensor([1, 2], requires_grad=True)


def test_shape_errors_name_the_op_and_shapes():
    a, b = gf.zeros(128, 784), gf.zeros(128, 32)
    with pytest.raises(ValueError, match=r"matmul: \(128, 784\) @ \(128, 32\)"):
        a @ b
    with pytest.raises(RuntimeError, match="float32 @ float64"):
        gf.zeros(2, 2) @ gf.zeros(2, 2, dtype=numpy.float64)
    with pytest.raises(ValueError, match="reshape"):
        gf.zeros(3, 4).reshape(5, 5)


def test_inplace_change_of_saved_tensor_is_detected():
    w = gf.tensor([1.0, 2.0], requires_grad=True)
    x = gf.tensor([3.0, 4.0])
    y = (w * x).sum()
    x += 1                      # x was saved by Mul
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_inplace_change_through_a_view_is_detected():
    w = gf.tensor([[1.0, 2.0]], requires_grad=True)
    x = gf.tensor([[3.0, 4.0]])
    y = (w * x).sum()
    view = x.reshape(2)
    view[0] = 7.0
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_inplace_on_tensor_requiring_grad_is_refused():
    w = gf.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        w += 1
    with gf.no_grad():
        w += 1
    assert w.item() == 2.0 and w._version == 1


def test_no_grad_context_and_decorator():
    x = gf.tensor([1.0], requires_grad=True)
    with gf.no_grad():
        y = x * 2
        with gf.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.creator is None and z.requires_grad

    @gf.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad and gf.is_grad_enabled()


def test_grad_function_leaves_dot_grad_untouched():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    y = (x ** 3).sum()
    gx, = gf.grad(y, [x])
    assert numpy.allclose(gx.numpy(), 3 * x.numpy() ** 2) and x.grad is None


def test_grad_of_intermediate_tensor():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    y = (h * h).sum()
    gh, = gf.grad(y, h)  # a tuple, as torch.autograd.grad
    assert numpy.allclose(gh.numpy(), 2 * h.numpy())


def test_grad_unused_input():
    x = gf.tensor([1.0], requires_grad=True)
    z = gf.tensor([1.0], requires_grad=True)
    y = (x * 2).sum()
    with pytest.raises(RuntimeError, match="allow_unused"):
        gf.grad(y, [x, z], retain_graph=True)
    assert gf.grad(y, [x, z], allow_unused=True)[1] is None


def test_higher_order_gradients():
    x = gf.tensor(0.7, dtype=numpy.float64, requires_grad=True)
    y = x ** 4
    g1, = gf.grad(y, [x], create_graph=True)
    g2, = gf.grad(g1, [x], create_graph=True)
    g3, = gf.grad(g2, [x])
    assert numpy.isclose(g1.item(), 4 * 0.7 ** 3)
    assert numpy.isclose(g2.item(), 12 * 0.7 ** 2)
    assert numpy.isclose(g3.item(), 24 * 0.7)


def test_backward_create_graph_records_grad():
    x = gf.tensor([0.3, -0.2], dtype=numpy.float64, requires_grad=True)
    (x.exp() * x).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    x.grad = None
    g.sum().backward()
    xv = numpy.array([0.3, -0.2])
    assert numpy.allclose(x.grad.numpy(), numpy.exp(xv) * (2 + xv))


def test_retain_grad_on_intermediate():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    assert numpy.allclose(h.grad.numpy(), 2 * h.numpy())


def test_detach_shares_data_but_not_history():
    x = gf.tensor([1.0], requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.creator is None


def test_training_loop_does_not_leak_memory():
    rng = numpy.random.default_rng(0)
    w = gf.Tensor(0.1 * rng.standard_normal((16, 8)).astype(numpy.float32), requires_grad=True)
    b = gf.Tensor(numpy.zeros(8, numpy.float32), requires_grad=True)
    x = gf.Tensor(rng.standard_normal((4, 16)).astype(numpy.float32))

    def step():
        loss = ((x @ w + b).exp().mean() - 1.0) ** 2
        loss.backward()
        with gf.no_grad():
            w.data -= 1e-3 * w.grad.data
            b.data -= 1e-3 * b.grad.data
        w.grad = b.grad = None

    for _ in range(200):
        step()
    gc.collect()
    tracemalloc.start()
    for _ in range(2000):
        step()
    first, _ = tracemalloc.get_traced_memory()
    for _ in range(8000):
        step()
    second, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert second - first < 64 * 1024, f"memory grew by {second - first} bytes over 8000 steps"
