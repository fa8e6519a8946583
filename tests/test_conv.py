"""Convolution and pooling (gradflow/conv.py) against PyTorch, gradcheck and double backward."""
import numpy
import pytest
import torch

import gradflow as gf
from gradflow import conv as C
from gradflow.nn import functional as F

torch.set_num_threads(1)


def _rand(*shape, seed=0, dtype=numpy.float64):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _parity(gf_fn, torch_fn, arrays, atol=1e-10, grad=True, seed=1):
    """Outputs and gradients (of a random projection) of gf_fn and torch_fn on the same arrays."""
    gx = [gf.Tensor(a, requires_grad=grad) for a in arrays]
    tx = [torch.tensor(a, requires_grad=grad) for a in arrays]
    y, ty = gf_fn(*gx), torch_fn(*tx)
    numpy.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=atol, rtol=1e-7)
    if grad:
        r = _rand(*ty.shape, seed=seed, dtype=arrays[0].dtype)
        (y * gf.Tensor(r)).sum().backward()
        (ty * torch.tensor(r)).sum().backward()
        for g, t in zip(gx, tx):
            numpy.testing.assert_allclose(g.grad.numpy(), t.grad.numpy(), atol=atol, rtol=1e-7)
    return y


CONV2D_CASES = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(padding=(2, 1), stride=(1, 2)),
    dict(dilation=2, padding=2),
    dict(padding="same"),
    dict(padding="same", dilation=(2, 1)),
    dict(padding="valid"),
    dict(groups=2),
    dict(groups=4, stride=2, padding=1),
    dict(stride=3, padding=1, dilation=2),
]


@pytest.mark.parametrize("kw", CONV2D_CASES, ids=[str(k) for k in CONV2D_CASES])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_torch(kw, kernel, bias):
    groups = kw.get("groups", 1)
    x = _rand(2, 4, 7, 8)
    w = _rand(6 if groups != 4 else 8, 4 // groups, *kernel, seed=1)
    arrays = [x, w] + ([_rand(w.shape[0], seed=2)] if bias else [])
    _parity(lambda *a: F.conv2d(*a[:2], a[2] if bias else None, **kw),
            lambda *a: torch.nn.functional.conv2d(*a[:2], a[2] if bias else None, **kw), arrays)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(groups=3), dict(padding=3, dilation=3, stride=2)])
def test_conv1d_matches_torch(kw):
    x, w, b = _rand(3, 6, 11), _rand(4 if "groups" not in kw else 6, 6 // kw.get("groups", 1), 3, seed=1), None
    _parity(lambda *a: F.conv1d(*a, **kw), lambda *a: torch.nn.functional.conv1d(*a, **kw), [x, w])
    b = _rand(w.shape[0], seed=2)
    _parity(lambda *a: F.conv1d(*a, **kw), lambda *a: torch.nn.functional.conv1d(*a, **kw), [x, w, b])


@pytest.mark.parametrize("kw", [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1),
                                dict(stride=3, padding=2, output_padding=2, dilation=2),
                                dict(groups=2, stride=2), dict(dilation=2, padding=1),
                                dict(stride=2, output_padding=1, dilation=3)])
def test_conv_transpose2d_matches_torch(kw):
    groups = kw.get("groups", 1)
    x, w, b = _rand(2, 4, 5, 6), _rand(4, 6 // groups, 3, 2, seed=1), _rand(6, seed=2)
    _parity(lambda *a: F.conv_transpose2d(*a, **kw), lambda *a: torch.nn.functional.conv_transpose2d(*a, **kw),
            [x, w, b])
    _parity(lambda *a: F.conv_transpose2d(*a, **kw), lambda *a: torch.nn.functional.conv_transpose2d(*a, **kw),
            [x, w])


def test_conv_transpose1d_matches_torch():
    kw = dict(stride=2, padding=1, output_padding=1)
    x, w = _rand(2, 3, 7), _rand(3, 5, 4, seed=1)
    _parity(lambda *a: F.conv_transpose1d(*a, **kw), lambda *a: torch.nn.functional.conv_transpose1d(*a, **kw),
            [x, w])


def test_conv2d_float32_matches_torch():
    x, w, b = _rand(4, 3, 12, 12, dtype=numpy.float32), _rand(8, 3, 5, 5, seed=1, dtype=numpy.float32), \
        _rand(8, seed=2, dtype=numpy.float32)
    y = _parity(lambda *a: F.conv2d(*a, padding=2), lambda *a: torch.nn.functional.conv2d(*a, padding=2), [x, w, b],
                atol=1e-4)
    assert y.dtype == numpy.float32


def test_conv_gradcheck_and_double_backward():
    x = gf.Tensor(_rand(2, 4, 5, 5), requires_grad=True)
    w = gf.Tensor(_rand(4, 2, 3, 3, seed=1), requires_grad=True)
    b = gf.Tensor(_rand(4, seed=2), requires_grad=True)
    f = lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2, dilation=(1, 2))
    assert gf.gradcheck(f, [x, w, b])
    assert gf.gradgradcheck(f, [x, w, b])
    ft = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
    assert gf.gradcheck(ft, [x, gf.Tensor(_rand(4, 3, 3, 2, seed=3), requires_grad=True), b[:3]])
    assert gf.gradgradcheck(ft, [x, gf.Tensor(_rand(4, 3, 3, 2, seed=3), requires_grad=True), b[:3]])


def test_conv_double_backward_matches_torch():
    x, w = _rand(2, 3, 6, 6), _rand(4, 3, 3, 3, seed=1)
    gx, gw = gf.Tensor(x, requires_grad=True), gf.Tensor(w, requires_grad=True)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = F.conv2d(gx, gw, padding=1, stride=2)
    ty = torch.nn.functional.conv2d(tx, tw, padding=1, stride=2)
    ga, gb = gf.grad((y * y).sum(), [gx, gw], create_graph=True)
    ta, tb = torch.autograd.grad((ty * ty).sum(), [tx, tw], create_graph=True)
    ((ga * ga).sum() + (gb * gb).sum()).backward()
    ((ta * ta).sum() + (tb * tb).sum()).backward()
    numpy.testing.assert_allclose(gx.grad.numpy(), tx.grad.numpy(), rtol=1e-8, atol=1e-8)
    numpy.testing.assert_allclose(gw.grad.numpy(), tw.grad.numpy(), rtol=1e-8, atol=1e-8)


def test_conv_errors_are_clear():
    x = gf.Tensor(_rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(x, gf.Tensor(_rand(3, 3, 3, 3)))
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(x, gf.Tensor(_rand(3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="4-d input"):
        F.conv2d(gf.Tensor(_rand(4, 5, 5)), gf.Tensor(_rand(3, 4, 3, 3)))
    with pytest.raises(ValueError, match="larger than"):
        F.conv2d(x, gf.Tensor(_rand(3, 4, 7, 7)))
    with pytest.raises(ValueError, match="same"):
        F.conv2d(x, gf.Tensor(_rand(3, 4, 3, 3)), stride=2, padding="same")
    with pytest.raises(TypeError, match="dtype"):
        F.conv2d(x, gf.Tensor(_rand(3, 4, 3, 3, dtype=numpy.float32)))


def test_im2col_col2im_are_adjoint():
    geom = C.Geometry((3, 2), (2, 1), (1, 0), (2, 1), (1, 2), 1)
    x = _rand(2, 3, 6, 7)
    cols, _ = C.im2col(x, geom)
    r = _rand(*cols.shape, seed=1)
    back = C.col2im(r, x.shape, geom)
    assert numpy.isclose((cols * r).sum(), (x * back).sum())


# ---- pooling ------------------------------------------------------------------------------------
POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=2, stride=3, ceil_mode=True),
]


@pytest.mark.parametrize("kw", POOL_CASES + [dict(kernel_size=3, stride=1, dilation=2, padding=1),
                                             dict(kernel_size=2, dilation=2, ceil_mode=True)],
                         ids=str)
def test_max_pool2d_matches_torch(kw):
    x = _rand(2, 3, 9, 8)
    y = _parity(lambda a: F.max_pool2d(a, **kw), lambda a: torch.nn.functional.max_pool2d(a, **kw), [x])
    _, idx = F.max_pool2d(gf.Tensor(x), return_indices=True, **kw)
    _, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    numpy.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    assert idx.dtype == numpy.int64 and not idx.requires_grad and y.shape == tuple(tidx.shape)


def test_max_pool_ties_and_overlap_match_torch():
    x = numpy.zeros((1, 2, 5, 5))
    x[0, 0, 1:3, 1:3] = 1.0
    kw = dict(kernel_size=3, stride=1)
    _parity(lambda a: F.max_pool2d(a, **kw), lambda a: torch.nn.functional.max_pool2d(a, **kw), [x])


@pytest.mark.parametrize("kw", POOL_CASES + [dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                             dict(kernel_size=3, padding=1, ceil_mode=True, count_include_pad=False),
                                             dict(kernel_size=2, divisor_override=3)], ids=str)
def test_avg_pool2d_matches_torch(kw):
    _parity(lambda a: F.avg_pool2d(a, **kw), lambda a: torch.nn.functional.avg_pool2d(a, **kw), [_rand(2, 3, 9, 8)])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)],
                         ids=str)
def test_pool1d_matches_torch(kw):
    x = _rand(2, 3, 11)
    _parity(lambda a: F.max_pool1d(a, **kw), lambda a: torch.nn.functional.max_pool1d(a, **kw), [x])
    _parity(lambda a: F.avg_pool1d(a, **kw), lambda a: torch.nn.functional.avg_pool1d(a, **kw), [x])
    _, idx = F.max_pool1d(gf.Tensor(x), return_indices=True, **kw)
    _, tidx = torch.nn.functional.max_pool1d(torch.tensor(x), return_indices=True, **kw)
    numpy.testing.assert_array_equal(idx.numpy(), tidx.numpy())


@pytest.mark.parametrize("out", [1, (3, 2), (4, 5), (None, 3), 7])
def test_adaptive_avg_pool2d_matches_torch(out):
    x = _rand(2, 3, 9, 7)
    _parity(lambda a: F.adaptive_avg_pool2d(a, out), lambda a: torch.nn.functional.adaptive_avg_pool2d(a, out), [x])


def test_max_pool_nan_matches_torch():
    x = _rand(1, 2, 6, 6)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[0, 1, 4, 4] = numpy.nan
    y, idx = F.max_pool2d(gf.Tensor(x), 2, return_indices=True)
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    numpy.testing.assert_array_equal(y.numpy(), ty.numpy())
    numpy.testing.assert_array_equal(idx.numpy(), tidx.numpy())


def test_adaptive_avg_pool1d_and_unbatched_match_torch():
    _parity(lambda a: F.adaptive_avg_pool1d(a, 4), lambda a: torch.nn.functional.adaptive_avg_pool1d(a, 4),
            [_rand(2, 3, 10)])
    _parity(lambda a: F.max_pool2d(a, 2), lambda a: torch.nn.functional.max_pool2d(a, 2), [_rand(3, 6, 6)])


def test_pool_gradcheck_and_double_backward():
    x = gf.Tensor(_rand(2, 2, 6, 5), requires_grad=True)
    for f in (lambda a: F.max_pool2d(a, 3, 2, 1), lambda a: F.avg_pool2d(a, 3, 2, 1, count_include_pad=False),
              lambda a: F.adaptive_avg_pool2d(a, (4, 3)), lambda a: F.avg_pool2d(a, 2, ceil_mode=True)):
        assert gf.gradcheck(f, [x])
        assert gf.gradgradcheck(f, [x])


def test_pool_errors_are_clear():
    with pytest.raises(ValueError, match="half of effective kernel"):
        F.max_pool2d(gf.Tensor(_rand(1, 1, 6, 6)), 2, padding=2)
    with pytest.raises(ValueError, match="larger than"):
        F.avg_pool2d(gf.Tensor(_rand(1, 1, 2, 2)), 3)
