"""gradflow's own matrix product kernel (``kernels/gemm.cu``), used while a CUDA graph is captured.

CuPy refuses cuBLAS calls during stream capture, so the matmuls of a captured training
step run through this kernel instead. It sits in the kernel layer (below ``ops``), so
``ops.matmul`` can call it without importing the compiler above it.
"""
import numpy

from gradflow import backend
from gradflow.kernel import RawKernel

gemm_kernel = RawKernel("gemm.cu", "gf_gemm")
TILE = 64               # rows and columns of C per block (GF_GEMM_BM, GF_GEMM_BN)
BLOCK = (16, 16)        # threads per block; each computes a 4 x 4 register block
MAX_GRID = (2 ** 31 - 1, 65535)  # CUDA's limits on grid.x and grid.y


def gemm_grid(m, n):
    """Blocks per axis: M's tiles on grid.x, N's on grid.y, each capped at CUDA's limit (the kernel
    loops over the tiles a capped grid leaves)."""
    return min(-(-m // TILE), MAX_GRID[0]), min(-(-n // TILE), MAX_GRID[1])


def gemm(a, b):
    """a @ b for 2-D CuPy arrays of any strides with gradflow's tiled kernel (capturable).

    The kernel writes every element of the result, so it starts from ``empty`` (no memset).
    """
    cp = backend.cupy()
    if a.dtype != b.dtype or a.dtype not in (numpy.float32, numpy.float64):
        raise TypeError(f"gemm: needs two float32 or two float64 matrices, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: needs two matrices, got shapes {a.shape} and {b.shape}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"gemm: {a.shape} @ {b.shape}: inner dimensions differ")
    c = cp.empty((m, n), dtype=a.dtype)
    if c.size == 0:
        return c
    item = a.itemsize
    strides = [numpy.int64(s // item) for s in (a.strides[0], a.strides[1], b.strides[0], b.strides[1])]
    gemm_kernel.function(a.dtype)(gemm_grid(m, n), BLOCK,
                                  (a, b, c, numpy.int64(m), numpy.int64(n), numpy.int64(k), *strides))
    return c
