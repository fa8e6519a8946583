"""PyTorch-style custom autograd Functions (gradflow.autograd.Function), checked against torch."""
import numpy
import pytest
import torch

import gradflow as gf


def _define(lib):
    class ScaledCube(lib.autograd.Function):
        """y = k * x^3 (+ b); k is a non-tensor argument, b an optional tensor."""

        @staticmethod
        def forward(ctx, x, k, b=None):
            ctx.k = k
            ctx.has_b = b is not None
            ctx.save_for_backward(x)
            y = x * x * x * k
            return y + b if b is not None else y

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            assert ctx.needs_input_grad[1] is False
            gx = g * 3 * ctx.k * x * x if ctx.needs_input_grad[0] else None
            gb = g if ctx.has_b and ctx.needs_input_grad[2] else None
            return gx, None, gb

    class SplitSigns(lib.autograd.Function):
        """Two outputs; saves an output."""

        @staticmethod
        def forward(ctx, x):
            pos = x.clamp(min=0)
            neg = x.clamp(max=0)
            e = x.exp()
            ctx.save_for_backward(x, e)
            return pos * 2, neg + e

        @staticmethod
        def backward(ctx, g_pos, g_neg):
            x, e = ctx.saved_tensors
            return g_pos * 2 * (x > 0).to(x.dtype) + g_neg * ((x < 0).to(x.dtype) + e)

    return ScaledCube, SplitSigns


GF_CUBE, GF_SPLIT = _define(gf)
T_CUBE, T_SPLIT = _define(torch)


def test_matches_torch_values_and_grads():
    rng = numpy.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    x, bb = gf.tensor(a, requires_grad=True), gf.tensor(b, requires_grad=True)
    tx, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    y = GF_CUBE.apply(x, 1.5, bb)
    ty = T_CUBE.apply(tx, 1.5, tb)
    numpy.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-13)
    assert y.grad_fn is not None and "ScaledCube" in repr(y)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    numpy.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(bb.grad.numpy(), tb.grad.numpy(), rtol=1e-12)
    p, n = GF_SPLIT.apply(x)
    tp, tn = T_SPLIT.apply(tx)
    x.grad = None
    tx.grad = None
    (p.sum() + (n * 3).sum()).backward()
    (tp.sum() + (tn * 3).sum()).backward()
    numpy.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


def test_gradcheck_and_double_backward():
    x = gf.tensor(numpy.random.default_rng(1).standard_normal((2, 3)), requires_grad=True)
    b = gf.tensor(numpy.random.default_rng(2).standard_normal(3), requires_grad=True)
    gf.autograd.gradcheck(lambda x, b: GF_CUBE.apply(x, -0.7, b), [x, b])
    gf.autograd.gradgradcheck(lambda x: GF_CUBE.apply(x, 2.0), [x])  # backward is made of ops: recorded
    gf.autograd.gradcheck(lambda x: GF_SPLIT.apply(x), [x])


def test_no_grad_needed_and_non_tensor_only_grads():
    x = gf.tensor([1.0, 2.0])
    y = GF_CUBE.apply(x, 2.0)
    assert not y.requires_grad and y.tolist() == [2.0, 16.0]
    w = gf.tensor([1.0, 2.0], requires_grad=True)
    with gf.no_grad():
        assert not GF_CUBE.apply(w, 2.0).requires_grad


def test_clear_errors():
    class RawArray(gf.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g.data * 2  # a raw array, not a Tensor

    class WrongCount(gf.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            return x * k

        @staticmethod
        def backward(ctx, g):
            return g

    class GradForConstant(gf.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            return x * k

        @staticmethod
        def backward(ctx, g):
            return g, g

    class ReturnsArray(gf.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.data * 2

    x = gf.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="must return Tensors or None, got ndarray"):
        RawArray.apply(x).sum().backward()
    with pytest.raises(RuntimeError, match="returned 1 gradients, but forward took 2"):
        WrongCount.apply(x, 3.0).sum().backward()
    with pytest.raises(RuntimeError, match="not a Tensor; return None"):
        GradForConstant.apply(x, 3.0).sum().backward()
    with pytest.raises(TypeError, match="forward must return a Tensor"):
        ReturnsArray.apply(x)
    with pytest.raises(TypeError, match="at least one Tensor"):
        WrongCount.apply(1.0, 2.0)


def test_in_place_change_of_saved_input_is_caught():
    x = gf.tensor([1.0, 2.0], requires_grad=True)
    h = x * 1
    y = GF_CUBE.apply(h, 2.0)
    with gf.no_grad():
        h.data[0] = 5.0
        h._bump_version()
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_under_compile_matches_eager():
    """A training step using a custom Function, compiled: replays match the eager steps."""
    def make():
        gf.manual_seed(0)
        model = gf.nn.Linear(4, 3)
        return model, gf.optim.SGD(model.parameters(), lr=0.1)

    rng = numpy.random.default_rng(0)
    batches = [(gf.tensor(rng.standard_normal((8, 4)).astype(numpy.float32)),
                gf.tensor(rng.standard_normal((8, 3)).astype(numpy.float32))) for _ in range(4)]

    def step(model, opt, x, t):
        opt.zero_grad()
        loss = ((GF_CUBE.apply(model(x), 0.5) - t) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    eager_model, eager_opt = make()
    eager = [step(eager_model, eager_opt, x, t).item() for x, t in batches]
    model, opt = make()
    compiled = gf.compile(lambda x, t: step(model, opt, x, t))
    got = [compiled(x, t).item() for x, t in batches]
    numpy.testing.assert_allclose(got, eager, rtol=1e-6)
    numpy.testing.assert_allclose(model.weight.numpy(), eager_model.weight.numpy(), rtol=1e-6)


@pytest.mark.gpu
def test_on_gpu():
    x = gf.tensor(numpy.random.default_rng(1).standard_normal((2, 3)), device="cuda", requires_grad=True)
    gf.autograd.gradcheck(lambda x: GF_CUBE.apply(x, -0.7), [x])
    y = GF_CUBE.apply(x, 2.0)
    y.sum().backward()
    assert x.grad.device == "cuda"


def test_setup_context_style_matches_torch():
    def define(lib):
        class Cube(lib.autograd.Function):
            @staticmethod
            def forward(x, k):
                return x * x * x * k

            @staticmethod
            def setup_context(ctx, inputs, output):
                x, k = inputs
                ctx.save_for_backward(x)
                ctx.k = k

            @staticmethod
            def backward(ctx, g):
                x, = ctx.saved_tensors
                return g * 3 * ctx.k * x * x, None
        return Cube

    a = numpy.array([0.5, -1.5, 2.0])
    x, tx = gf.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    define(gf).apply(x, 2.0).sum().backward()
    define(torch).apply(tx, 2.0).sum().backward()
    numpy.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-14)
