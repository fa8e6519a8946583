"""CUDA C++ sources of gradflow's kernels (installed as the package ``gradflow.kernels``).

The ``.cuh`` headers hold small element functions that compile under NVRTC, nvcc and g++;
``softmax.cu`` holds the row-wise kernels. ``gradflow.kernel`` turns them into CuPy
kernels; the tests compile them with nvcc and g++.
"""
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent


def source(name):
    """The text of one source file beside this module."""
    return (DIRECTORY / name).read_text(encoding="utf-8")
