"""The conv/pool/norm CUDA kernels against their NumPy twins, and the layers on the GPU vs the CPU.

Skipped without a GPU. Sums are ordered differently on the GPU, so floats are compared
with tolerances scaled to the dtype.
"""
import numpy
import pytest

import gradflow as gf
from gradflow import conv as C
from gradflow import nn
from gradflow import normalization as N
from gradflow.nn import functional as F

pytestmark = pytest.mark.gpu
TOL = {numpy.float32: 2e-4, numpy.float64: 1e-10}
GEOMETRIES = [
    C.Geometry((3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    C.Geometry((5, 5), (1, 1), (2, 2), (2, 2), (1, 1)),
    C.Geometry((3, 2), (2, 1), (1, 0), (2, 1), (1, 2)),
    C.Geometry((2, 2), (2, 2), (0, 0), (0, 0), (1, 1)),
    C.Geometry((3, 3), (3, 2), (1, 1), (-1, 0), (2, 1)),   # a transposed conv's negative trailing pad
]


@pytest.fixture(scope="module")
def cp():
    return gf.backend.cupy()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=repr)
def test_im2col_col2im_kernels_match_numpy(cp, geom, dtype):
    x = numpy.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(dtype)
    cols, hw = C.im2col(x, geom, pad_value=-1.5)
    gcols, ghw = C.im2col(cp.asarray(x), geom, pad_value=-1.5)
    assert ghw == hw
    numpy.testing.assert_array_equal(gcols.get(), cols)
    r = numpy.random.default_rng(1).standard_normal(cols.shape).astype(dtype)
    back = C.col2im(r, x.shape, geom)
    numpy.testing.assert_allclose(C.col2im(cp.asarray(r), x.shape, geom).get(), back, rtol=TOL[dtype],
                                  atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("view", [(8, 4, 49), (1, 12, 300), (3, 5, 1), (1, 2, 5000)])
def test_norm_kernels_match_numpy(cp, view, dtype):
    rng = numpy.random.default_rng(0)
    x = (rng.standard_normal(view) * 3 + 100).astype(dtype)
    g = rng.standard_normal(view).astype(dtype)
    xhat, mean, var = N.norm_forward(x, 1e-5)
    gxhat, gmean, gvar = N.norm_forward(cp.asarray(x), 1e-5)
    tol = TOL[dtype] * 10
    numpy.testing.assert_allclose(gmean.get(), mean, rtol=tol)
    numpy.testing.assert_allclose(gvar.get(), var, rtol=tol * 10, atol=tol)
    numpy.testing.assert_allclose(gxhat.get(), xhat, rtol=tol, atol=tol * 10)
    gx = N.norm_backward(x, g, mean, var, 1e-5)
    ggx = N.norm_backward(cp.asarray(x), cp.asarray(g), cp.asarray(mean), cp.asarray(var), 1e-5)
    numpy.testing.assert_allclose(ggx.get(), gx, rtol=tol, atol=tol * 10)


LAYERS = [
    lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2),
    lambda: nn.Conv2d(4, 8, 3, groups=2, dilation=2, padding="same", bias=False),
    lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    lambda: nn.Conv1d(4, 6, 3, padding=1),
    lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    lambda: nn.AdaptiveAvgPool2d((3, 2)),
    lambda: nn.BatchNorm2d(4),
    lambda: nn.BatchNorm2d(4, momentum=None),
    lambda: nn.GroupNorm(2, 4),
    lambda: nn.LayerNorm((7, 6)),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("train", [True, False])
def test_layers_on_gpu_match_cpu(cp, make, train):
    gf.manual_seed(0)
    cpu = make().to(numpy.float64)
    gpu = make().to(numpy.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    cpu.train(train)
    gpu.train(train)
    x = numpy.random.default_rng(0).standard_normal((3, 4, 7) if isinstance(cpu, nn.Conv1d) else (3, 4, 7, 6))
    for step in range(2):
        xc, xg = gf.Tensor(x + step, requires_grad=True), gf.Tensor(cp.asarray(x + step), requires_grad=True)
        yc, yg = cpu(xc), gpu(xg)
        assert yg.device == "cuda"
        numpy.testing.assert_allclose(yg.numpy(), yc.numpy(), rtol=1e-9, atol=1e-9)
        r = numpy.random.default_rng(step).standard_normal(yc.shape)
        (yc * gf.Tensor(r)).sum().backward()
        (yg * gf.Tensor(cp.asarray(r))).sum().backward()
        numpy.testing.assert_allclose(xg.grad.numpy(), xc.grad.numpy(), rtol=1e-9, atol=1e-9)
        for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
            numpy.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
    for name, v in cpu.state_dict().items():
        numpy.testing.assert_allclose(gpu.state_dict()[name].numpy(), v.numpy(), rtol=1e-9, atol=1e-9,
                                      err_msg=name)


def test_embedding_and_max_pool_indices_on_gpu(cp):
    w = numpy.random.default_rng(0).standard_normal((7, 3))
    idx = numpy.array([[0, 2, 2], [6, 1, 2]])
    wc, wg = gf.Tensor(w, requires_grad=True), gf.Tensor(cp.asarray(w), requires_grad=True)
    yc, yg = F.embedding(gf.tensor(idx), wc, 2), F.embedding(gf.tensor(idx, device="cuda"), wg, 2)
    numpy.testing.assert_array_equal(yg.numpy(), yc.numpy())
    (yc ** 2).sum().backward()
    (yg ** 2).sum().backward()
    numpy.testing.assert_allclose(wg.grad.numpy(), wc.grad.numpy())
    x = numpy.random.default_rng(1).standard_normal((2, 3, 8, 7))
    _, ic = F.max_pool2d(gf.Tensor(x), 3, 2, 1, return_indices=True)
    _, ig = F.max_pool2d(gf.Tensor(cp.asarray(x)), 3, 2, 1, return_indices=True)
    numpy.testing.assert_array_equal(ig.numpy(), ic.numpy())


def test_cnn_example_model_trains_on_gpu(cp):
    """A few steps of the example's CNN on the GPU, float32, against the same steps on the CPU."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mnist_cnn.py")
    spec = importlib.util.spec_from_file_location("mnist_cnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gf.manual_seed(0)
    cpu = module.lenet(dropout=0.0)
    gpu = module.lenet(dropout=0.0)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    opts = [gf.optim.Adam(m.parameters(), lr=1e-3) for m in (cpu, gpu)]
    rng = numpy.random.default_rng(0)
    for _ in range(3):
        x, y = rng.random((16, 28, 28), dtype=numpy.float32), rng.integers(0, 10, 16)
        losses = []
        for m, opt, dev in ((cpu, opts[0], "cpu"), (gpu, opts[1], "cuda")):
            opt.zero_grad()
            loss = F.cross_entropy(m(gf.tensor(x, device=dev)), gf.tensor(y, device=dev))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-3 * max(1.0, abs(losses[0]))
