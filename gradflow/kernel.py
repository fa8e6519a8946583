"""Kernels declared once, run by NumPy on the CPU and by CuPy on the GPU.

An ``Elementwise`` holds the pieces of a ``cupy.ElementwiseKernel`` (parameters, the
per-element operation, the ``kernels/`` headers it calls) next to a NumPy function with
the same signature. Called with NumPy arrays it runs the NumPy twin; called with CuPy
arrays it builds the CuPy kernel once and launches it. A ``RowKernel`` does the same for
the row-wise kernels of ``kernels/softmax.cu``; a ``RawKernel`` names any other entry of
a ``kernels/*.cu`` file. The tests compile every declared operation from these same
declarations with NVRTC exactly as CuPy does (tests/test_kernels_nvrtc.py), with nvcc and
with g++, so the GPU code, the host harness and the NumPy twins cannot drift apart.
"""
import functools
import importlib.resources
import re
from pathlib import Path

import numpy

from gradflow import backend

ELEMENTWISE = {}  # name -> Elementwise: every declared kernel, for the compile/host tests
ROW_KERNELS = {}  # entry -> RowKernel
RAW_KERNELS = {}  # (source, entry) -> RawKernel: every extern "C" kernel of kernels/*.cu that gradflow launches
RAW_MODULE_OPTIONS = ("--std=c++11",)  # NVRTC options of every RawModule (CuPy adds its own after them)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_PARAM = re.compile(r"^(?:(raw)\s+)?(\w+)\s+(\w+)$")


def kernel_directory():
    """Where the sources live: the installed ``gradflow.kernels``, else the checkout's ``kernels/``."""
    try:
        return importlib.resources.files("gradflow.kernels")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "kernels"


@functools.lru_cache(maxsize=None)
def source(name):
    return (kernel_directory() / name).read_text(encoding="utf-8")


def expand(*names):
    """The named sources with local ``#include "..."`` lines inlined, each file once.

    NVRTC gets one string (CuPy's preamble or RawModule code) and no include path, so
    includes are resolved here.
    """
    seen = set()

    def one(name):
        if name in seen:
            return ""
        seen.add(name)
        return _INCLUDE.sub(lambda m: one(m.group(1)), source(name))

    return "\n".join(one(n) for n in names)


def _on_gpu(args):
    if type(args[0]) is numpy.ndarray:  # the common CPU case, decided by the first array
        return False
    return any(hasattr(a, "__cuda_array_interface__") for a in args)


class Param:
    """One kernel parameter: ``type`` is a NumPy dtype name or a placeholder such as ``T``."""
    __slots__ = ("type", "name", "raw", "output", "scalar")

    def __init__(self, text, output, scalars):
        m = _PARAM.match(text.strip())
        if m is None:
            raise ValueError(f"cannot parse kernel parameter {text!r}")
        self.raw, self.type, self.name = bool(m.group(1)), m.group(2), m.group(3)
        self.output = output
        self.scalar = self.name in scalars

    @property
    def placeholder(self):
        """One-letter types are type placeholders, as in CuPy (``T`` is bound by the arrays)."""
        return len(self.type) == 1


class Elementwise:
    """One elementwise kernel and its NumPy twin.

    ``in_params``/``out_params``/``operation`` are CuPy ElementwiseKernel syntax; the
    operation calls ``GF_FN`` functions from ``headers`` and may use the flat output index
    ``i``. ``scalars`` names the input parameters that are passed as scalars (CuPy decides
    that at call time; the host and compile harnesses need it up front). ``numpy`` is
    called with exactly the arguments given: it returns new outputs, or updates output
    arrays passed to it in place (the optimizer kernels).
    """

    def __init__(self, name, in_params, out_params, operation, *, headers, numpy, scalars=()):
        self.name = name
        self.in_params = in_params
        self.out_params = out_params
        self.operation = operation
        self.headers = tuple(headers)
        self.numpy = numpy
        scalars = set(scalars.split() if isinstance(scalars, str) else scalars)
        self.params = [Param(p, False, scalars) for p in in_params.split(",")] + \
                      [Param(p, True, ()) for p in out_params.split(",")]
        unknown = scalars - {p.name for p in self.params if not p.output}
        if unknown:
            raise ValueError(f"{name}: scalars {sorted(unknown)} are not input parameters")
        self._kernel = None
        ELEMENTWISE[name] = self

    def __call__(self, *args):
        if _on_gpu(args):
            return self.cupy_kernel()(*args)
        return self.numpy(*args)

    def cupy_kernel(self):
        """The compiled ``cupy.ElementwiseKernel`` (built on first use, then reused)."""
        if self._kernel is None:
            self._kernel = self.make_cupy_kernel(backend.cupy())
        return self._kernel

    def make_cupy_kernel(self, cupy):
        """A new ``cupy.ElementwiseKernel`` for this declaration (needs no device: CuPy compiles at
        the first call); the NVRTC compile test builds its kernels here too."""
        return cupy.ElementwiseKernel(self.in_params, self.out_params, self.operation, "gf_" + self.name,
                                      preamble=expand(*self.headers))

    def __repr__(self):
        return f"Elementwise({self.name!r}: {self.in_params} -> {self.out_params})"


def device_scalar_twin(kernel, names=None, skip=None):
    """``kernel`` with its scalar parameters ``names`` (default: all) taken as arrays: ``<name>_dev``.

    Called with 0-d device arrays there, the kernel reads those values from device memory,
    so a CUDA graph that holds the launch stays valid when the host rewrites them before
    each launch (optimizer hyperparameters, Philox seeds and offsets under gradflow.compile).
    The NumPy twin takes each such array's single value and runs ``kernel``'s twin.
    ``skip`` names one more input, a float32 flag appended after the kernel's inputs: where
    it is nonzero the operation does nothing and every output keeps its value (an in-place
    update skipped on the device: an optimizer step after a loss-scaling overflow, read
    from the found-inf flag with no host sync). The NumPy twin reads the flag's first value.
    Registered like any declaration, so the compile and host tests cover it.
    """
    names = {p.name for p in kernel.params if p.scalar} if names is None else set(names.split())
    moved = [k for k, p in enumerate(kernel.params) if p.scalar and p.name in names]
    if len(moved) != len(names):
        raise ValueError(f"{kernel.name}: {sorted(names)} are not all scalar parameters")
    n_in = sum(not p.output for p in kernel.params)

    def twin(*args):
        args = list(args)
        if skip is not None:
            if numpy.asarray(args.pop(n_in)).reshape(-1)[0] != 0:
                return None  # skipped: the in-place outputs keep their values
        for k in moved:
            args[k] = numpy.asarray(args[k]).reshape(-1)[0]
        return kernel.numpy(*args)

    keep = [p.name for p in kernel.params if p.scalar and p.name not in names]
    in_params, operation = kernel.in_params, kernel.operation
    if skip is not None:
        in_params, operation = f"{in_params}, float32 {skip}", f"if ({skip} == 0.0f) {{ {operation}; }}"
    return Elementwise(kernel.name + "_dev", in_params, kernel.out_params, operation,
                       headers=kernel.headers, scalars=keep, numpy=twin)


def row_threads(cols):
    """Threads per row: a warp for short rows, up to 256 so each thread sees >= 4 elements."""
    threads = 32
    while threads < 256 and threads * 4 < cols:
        threads *= 2
    return threads


@functools.lru_cache(maxsize=None)
def raw_function(source_name, entry):
    """An ``extern "C"`` kernel of a ``kernels/*.cu`` file (the module compiles once)."""
    return _raw_module(source_name).get_function(entry)


@functools.lru_cache(maxsize=None)
def _raw_module(source_name):
    return make_raw_module(backend.cupy(), source_name)


def make_raw_module(cupy, source_name):
    """A new ``cupy.RawModule`` of one ``kernels/*.cu`` file (compiled by CuPy at first use)."""
    return cupy.RawModule(code=expand(source_name), options=RAW_MODULE_OPTIONS)


class RawKernel:
    """One ``extern "C"`` kernel of a ``kernels/*.cu`` file, instantiated as ``<entry>_f32`` and
    ``<entry>_f64``. Declaring it registers it, so the NVRTC compile test checks that every
    declared entry exists and that every entry of the file is declared."""

    def __init__(self, source, entry):
        self.source, self.entry = source, entry
        RAW_KERNELS[(source, entry)] = self

    def function(self, dtype):
        """The CuPy kernel function for ``dtype`` (float32 or float64)."""
        return raw_function(self.source, f"{self.entry}_{dtype_suffix(dtype)}")

    def __repr__(self):
        return f"RawKernel({self.source!r}, {self.entry!r})"


def dtype_suffix(dtype):
    dtype = numpy.dtype(dtype)
    if dtype == numpy.float32:
        return "f32"
    if dtype == numpy.float64:
        return "f64"
    raise TypeError(f"gradflow kernels support float32 and float64, got {dtype}")


class RowKernel:
    """A row-wise kernel ``out[r, :] = f(a[r, :], b[r, :])`` of ``softmax.cu`` and its NumPy twin.

    ``a`` and ``b`` are C-contiguous (rows, cols) arrays of one float dtype; ``b`` is
    optional for kernels that read only ``a``. ``numpy(a, b)`` returns the output.
    """

    def __init__(self, entry, *, numpy, source="softmax.cu"):
        self.entry, self.numpy, self.source = entry, numpy, source
        self.raw = RawKernel(source, entry)
        ROW_KERNELS[entry] = self

    def __call__(self, a, b=None):
        if not _on_gpu((a, b)):
            return self.numpy(a, b)
        cp = backend.cupy()
        a = cp.ascontiguousarray(a)
        b = a if b is None else cp.ascontiguousarray(b)
        rows, cols = a.shape
        out = cp.empty_like(a)
        if a.size:
            fn = self.raw.function(a.dtype)
            fn((min(rows, 2 ** 31 - 1),), (row_threads(cols),), (a, b, out, numpy.int64(rows), numpy.int64(cols)))
        return out

    def __repr__(self):
        return f"RowKernel({self.entry!r})"
