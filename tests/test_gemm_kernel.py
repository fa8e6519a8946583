"""kernels/gemm.cu (the matmul used inside captured CUDA graphs) against NumPy.

Without a GPU the kernel runs on the host under tests/host/cuda_emulation.h: every CUDA
thread a std::thread, __syncthreads() a barrier, so its real tiling, load-order and stride
logic runs. The grid comes from gradflow.gemm.gemm_grid, as on the GPU, or is made smaller
on purpose so the kernel's grid-stride loops (what covers M or N beyond CUDA's grid limits)
have to visit several tiles per block.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

import gradflow as gf
from gradflow.gemm import MAX_GRID, TILE, gemm_grid

HOST = Path(__file__).parent / "host"


@pytest.fixture(scope="module")
def host_gemm(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot build the host harness")
    lib = tmp_path_factory.mktemp("gemm") / "gemm_host.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(HOST / "gemm_host.cpp"),
                    "-o", str(lib)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def run_host(lib, a, b, grid=None):
    m, k = a.shape
    n = b.shape[1]
    c = numpy.full((m, n), numpy.nan, a.dtype)  # the kernel must write every element (no memset)
    fn = lib.run_gemm_f32 if a.dtype == numpy.float32 else lib.run_gemm_f64
    item = a.itemsize
    gx, gy = grid or gemm_grid(m, n)
    # base pointers of possibly strided views
    fn(ctypes.c_void_p(a.ctypes.data), ctypes.c_void_p(b.ctypes.data), ctypes.c_void_p(c.ctypes.data),
       *[ctypes.c_longlong(v) for v in (m, n, k)],
       *[ctypes.c_longlong(s // item) for s in (a.strides[0], a.strides[1], b.strides[0], b.strides[1])],
       ctypes.c_uint(gx), ctypes.c_uint(gy))
    return c


def operands(rng, m, k, n, layout, dtype):
    if layout == "contiguous":
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    elif layout == "a_transposed":        # gy.T @ x in Linear's weight gradient
        a, b = rng.standard_normal((k, m)).T, rng.standard_normal((k, n))
    elif layout == "b_transposed":        # x @ W.T in Linear's forward
        a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k)).T
    elif layout == "both_transposed":
        a, b = rng.standard_normal((k, m)).T, rng.standard_normal((n, k)).T
    else:                                 # sliced: non-unit strides on both axes, an offset base
        a, b = rng.standard_normal((m, 2 * k))[:, ::2], rng.standard_normal((k + 3, 2 * n))[3:, ::2]
    return a.astype(dtype), b.astype(dtype)


LAYOUTS = ["contiguous", "a_transposed", "b_transposed", "both_transposed", "sliced"]


@pytest.mark.parametrize("dtype,tol", [(numpy.float32, 1e-5), (numpy.float64, 1e-12)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (16, 16, 16), (17, 33, 5), (64, 16, 64), (65, 17, 129), (3, 50, 70)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_host_gemm_matches_numpy(host_gemm, dtype, tol, m, k, n, layout):
    rng = numpy.random.default_rng(m * 100 + k * 10 + n)
    a, b = operands(rng, m, k, n, layout, dtype)
    expected = a.astype(numpy.float64) @ b.astype(numpy.float64)
    numpy.testing.assert_allclose(run_host(host_gemm, a, b), expected, rtol=tol, atol=tol * k)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_host_gemm_with_empty_inner_dimension_writes_zeros(host_gemm, dtype):
    a, b = numpy.ones((70, 0), dtype), numpy.ones((0, 5), dtype)
    numpy.testing.assert_array_equal(run_host(host_gemm, a, b), numpy.zeros((70, 5), dtype))


@pytest.mark.parametrize("grid", [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_host_gemm_grid_stride_loops_cover_every_tile(host_gemm, grid):
    """A grid smaller than the tile count (what CUDA's grid limits force for huge M or N) still
    computes every tile: 5 x 3 tiles here."""
    rng = numpy.random.default_rng(7)
    a, b = operands(rng, 5 * TILE - 3, 9, 3 * TILE - 10, "b_transposed", numpy.float64)
    assert gemm_grid(*a.shape[:1], b.shape[1]) == (5, 3)
    numpy.testing.assert_allclose(run_host(host_gemm, a, b, grid), a @ b, rtol=1e-12, atol=1e-12)


def test_grid_respects_cuda_limits():
    """M on grid.x (up to 2**31 - 1 blocks): over a million rows no longer exceeds grid.y's 65535."""
    assert gemm_grid(10 ** 7, 128) == (-(-10 ** 7 // TILE), 2)
    assert gemm_grid(10 ** 7, 128)[0] > 65535
    gx, gy = gemm_grid(256, 10 ** 8)  # a very wide C: grid.y is capped, the kernel loops over the rest
    assert gx == 4 and gy == MAX_GRID[1] == 65535
    assert gemm_grid(1, 1) == (1, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_gpu_gemm_matches_cublas(dtype):
    cp = gf.backend.cupy()
    from gradflow.gemm import gemm
    rng = numpy.random.default_rng(0)
    for m, k, n in [(128, 784, 128), (128, 128, 32), (33, 17, 65), (65536 * TILE + 1, 2, 2), (5, 0, 3)]:
        for layout in LAYOUTS:
            a, b = (cp.asarray(x) for x in operands(rng, m, k, n, layout, dtype))
            cp.testing.assert_allclose(gemm(a, b), a @ b, rtol=1e-4 if dtype == numpy.float32 else 1e-10,
                                       atol=1e-3)
