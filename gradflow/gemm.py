"""gradflow's own matrix product kernel (``kernels/gemm.cu``), used while a CUDA graph is captured.

CuPy refuses cuBLAS calls during stream capture, so the matmuls of a captured training
step run through this kernel instead. It sits in the kernel layer (below ``ops``), so
``ops.matmul`` can call it without importing the compiler above it.
"""
import numpy

from gradflow import backend
from gradflow.kernel import RawKernel

gemm_kernel = RawKernel("gemm.cu", "gf_gemm")


def gemm(a, b):
    """a @ b for 2-D CuPy arrays of any strides with gradflow's tiled kernel (capturable)."""
    cp = backend.cupy()
    if a.dtype != b.dtype or a.dtype not in (numpy.float32, numpy.float64):
        raise TypeError(f"gemm: needs two float32 or two float64 matrices, got {a.dtype} and {b.dtype}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"gemm: {a.shape} @ {b.shape}: inner dimensions differ")
    c = cp.zeros((m, n), dtype=a.dtype)
    if c.size == 0 or k == 0:
        return c
    item = a.itemsize
    strides = [numpy.int64(s // item) for s in (a.strides[0], a.strides[1], b.strides[0], b.strides[1])]
    gemm_kernel.function(a.dtype)(((n + 15) // 16, (m + 15) // 16), (16, 16),
                                  (a, b, c, numpy.int32(m), numpy.int32(n), numpy.int32(k), *strides))
    return c
