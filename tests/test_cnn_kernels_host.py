"""kernels/conv.cu and kernels/norm.cu against their NumPy twins, run on the host.

Without a GPU the kernels run under tests/host/cuda_emulation.h (each CUDA thread a
std::thread, __syncthreads() a barrier, warp shuffles through a block buffer), so their real
indexing, grid-stride loops, Welford merges and block reductions are checked here.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

from gradflow import conv as C
from gradflow import normalization as N

HOST = Path(__file__).parent / "host"
SUFFIX = {numpy.float32: "f32", numpy.float64: "f64"}
CTYPE = {numpy.float32: ctypes.c_float, numpy.float64: ctypes.c_double}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the host harness")
    out = tmp_path_factory.mktemp("cnn_kernels") / "cnn_kernels_host.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(HOST / "cnn_kernels_host.cpp"),
                    "-o", str(out)], check=True, capture_output=True)
    return ctypes.CDLL(str(out))


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


def _geometry(x_shape, geom):
    oh, ow = geom.out_size(*x_shape[2:])
    vals = (*x_shape, *geom.kernel, *geom.stride, *geom.pad_lo, *geom.dilation, oh, ow)
    return [ctypes.c_longlong(v) for v in vals], (oh, ow)


GEOMETRIES = [
    C.Geometry((3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    C.Geometry((3, 2), (2, 1), (1, 0), (2, 1), (1, 2)),
    C.Geometry((2, 2), (2, 2), (0, 0), (0, 0), (1, 1)),
    C.Geometry((3, 3), (3, 2), (1, 1), (-1, 0), (2, 1)),
]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=repr)
def test_host_im2col_col2im_match_numpy(lib, geom, dtype):
    x = numpy.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(dtype)
    want, _ = C.im2col(x, geom, pad_value=-2.5)
    args, _ = _geometry(x.shape, geom)
    cols = numpy.zeros_like(want)
    getattr(lib, f"run_im2col_{SUFFIX[dtype]}")(_ptr(x), _ptr(cols), *args, CTYPE[dtype](-2.5), 3, 32)
    numpy.testing.assert_array_equal(cols, want)
    r = numpy.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    back = numpy.zeros_like(x)
    getattr(lib, f"run_col2im_{SUFFIX[dtype]}")(_ptr(r), _ptr(back), *args, 3, 32)
    tol = 1e-5 if dtype == numpy.float32 else 1e-12
    numpy.testing.assert_allclose(back, C.col2im(r, x.shape, geom), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("view", [(4, 5, 9), (1, 3, 130), (2, 1, 1), (3, 2, 1)])
def test_host_norm_kernels_match_numpy(lib, view, dtype):
    rng = numpy.random.default_rng(0)
    x = (rng.standard_normal(view) * 2 + 50).astype(dtype)
    g = rng.standard_normal(view).astype(dtype)
    xhat, mean, var = N.norm_forward(x, 1e-5)
    y, m, v = numpy.zeros_like(x), numpy.zeros(view[1], dtype), numpy.zeros(view[1], dtype)
    outer, rows, length = (ctypes.c_longlong(s) for s in view)
    eps = CTYPE[dtype](1e-5)
    # two blocks grid-stride over the rows; 64 threads: two warps to merge
    getattr(lib, f"run_norm_fwd_{SUFFIX[dtype]}")(_ptr(x), _ptr(y), _ptr(m), _ptr(v), outer, rows, length, eps, 2, 64)
    tol = 1e-4 if dtype == numpy.float32 else 1e-11
    numpy.testing.assert_allclose(m, mean, rtol=tol)
    numpy.testing.assert_allclose(v, var, rtol=tol * 10, atol=tol)
    numpy.testing.assert_allclose(y, xhat, rtol=tol, atol=tol * 10)
    gx = numpy.zeros_like(x)
    getattr(lib, f"run_norm_bwd_{SUFFIX[dtype]}")(_ptr(x), _ptr(g), _ptr(m), _ptr(v), _ptr(gx), outer, rows, length,
                                                  eps, 2, 64)
    numpy.testing.assert_allclose(gx, N.norm_backward(x, g, mean, var, 1e-5), rtol=tol * 10, atol=tol * 10)
