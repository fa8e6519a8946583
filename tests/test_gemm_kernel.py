"""kernels/gemm.cu (the matmul used inside captured CUDA graphs) against NumPy.

Without a GPU the kernel runs on the host under tests/host/cuda_emulation.h: every CUDA
thread a std::thread, __syncthreads() a barrier, so its real tiling and stride logic runs.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

import gradflow as gf

HOST = Path(__file__).parent / "host"


@pytest.fixture(scope="module")
def host_gemm(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the host harness")
    lib = tmp_path_factory.mktemp("gemm") / "gemm_host.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(HOST / "gemm_host.cpp"),
                    "-o", str(lib)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def run_host(lib, a, b):
    m, k = a.shape
    n = b.shape[1]
    c = numpy.zeros((m, n), a.dtype)
    fn = lib.run_gemm_f32 if a.dtype == numpy.float32 else lib.run_gemm_f64
    item = a.itemsize
    # base pointers of possibly strided views
    fn(ctypes.c_void_p(a.ctypes.data), ctypes.c_void_p(b.ctypes.data), ctypes.c_void_p(c.ctypes.data),
       ctypes.c_int(m), ctypes.c_int(n), ctypes.c_int(k),
       *[ctypes.c_longlong(s // item) for s in (a.strides[0], a.strides[1], b.strides[0], b.strides[1])])
    return c


@pytest.mark.parametrize("dtype,tol", [(numpy.float32, 1e-5), (numpy.float64, 1e-12)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (16, 16, 16), (17, 33, 5), (40, 7, 19)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_host_gemm_matches_numpy(host_gemm, dtype, tol, m, k, n, layout):
    rng = numpy.random.default_rng(m * 100 + k * 10 + n)
    if layout == "contiguous":
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    elif layout == "transposed":          # x @ W.T and gy.T @ x in Linear
        a, b = rng.standard_normal((k, m)).T, rng.standard_normal((n, k)).T
    else:
        a, b = rng.standard_normal((m, 2 * k))[:, ::2], rng.standard_normal((k + 3, n))[3:]
    a, b = a.astype(dtype), b.astype(dtype)
    expected = a.astype(numpy.float64) @ b.astype(numpy.float64)
    numpy.testing.assert_allclose(run_host(host_gemm, a, b), expected, rtol=tol, atol=tol * k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_gpu_gemm_matches_cublas(dtype):
    cp = gf.backend.cupy()
    from gradflow.gemm import gemm
    rng = numpy.random.default_rng(0)
    for m, k, n in [(128, 784, 128), (128, 128, 32), (33, 17, 65)]:
        a = cp.asarray(rng.standard_normal((m, k)).astype(dtype))
        b = cp.asarray(rng.standard_normal((n, k)).astype(dtype)).T
        cp.testing.assert_allclose(gemm(a, b), a @ b, rtol=1e-4 if dtype == numpy.float32 else 1e-10, atol=1e-3)
