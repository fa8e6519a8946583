"""Level-1 BLAS from the OpenBLAS in NumPy's wheels, for the optimizers' updates on the CPU.

``axpy``: ``y += a * x`` with one rounding per element. PyTorch's CPU optimizers update with
``param.add_(update, alpha=-lr)`` and apply weight decay with ``grad.add(param, alpha=weight_decay)``;
both are one fused multiply-add per element. NumPy has no fma ufunc: ``y + a * x`` rounds twice (after
one SGD step 1.8 % of float32 elements differ from torch's) and makes two passes over memory through a
temporary. OpenBLAS's saxpy/daxpy does it in one pass with the FMA instructions of the CPU it runs on,
as torch's vectorized add does: the same bits as torch, and inside a training step of the
784-128-32-10 MLP the flat SGD update (109k floats) took 40 instead of 44.5 us.

``scale_add``: ``y = y * b + x`` with two roundings, SGD's momentum ``buf.mul_(momentum).add_(grad)``
as torch and NumPy round it, in one pass (saxpby with alpha 1) instead of NumPy's two (109k floats:
about 6 us less). Whether a compiler contracted a kernel's ``alpha * x + beta * y`` into one fma, and
which product it fused, differs between the kernels OpenBLAS builds for each CPU, so ``scale_add``
uses BLAS only after a probe on this machine got NumPy's bits; else it is NumPy's two passes.

NumPy wheels bundle OpenBLAS with prefixed 64-bit-integer symbols (``scipy_cblas_saxpy64_``); where
NumPy was built against another BLAS (conda's MKL, macOS Accelerate) no such library is found and
both functions compute with NumPy (``axpy`` then rounds twice).
"""
import ctypes
import functools
import glob
import os

import numpy

# (symbol pattern, integer type): the names OpenBLAS exports in NumPy's wheels, then plain builds
_SCHEMES = (("scipy_cblas_{}{}64_", ctypes.c_int64), ("scipy_cblas_{}{}", ctypes.c_int), ("cblas_{}{}", ctypes.c_int))
_DTYPES = ((numpy.float32, "s", ctypes.c_float), (numpy.float64, "d", ctypes.c_double))


def _bind(lib, routine, scheme, argtypes):
    """{dtype: lib's C ``routine`` (axpy, axpby) for it, with ``argtypes(index type, real type)``}, or {}."""
    name, index = scheme
    found = {}
    for dtype, letter, real in _DTYPES:
        fn = getattr(lib, name.format(letter, routine), None)
        if fn is None:
            return {}
        fn.restype = None
        fn.argtypes = argtypes(index, real)
        found[numpy.dtype(dtype)] = fn
    return found


def _load():
    """({dtype: C axpy}, {dtype: C axpby}) from the OpenBLAS next to NumPy, or ({}, {}) when there is none."""
    root = os.path.dirname(numpy.__file__)
    for path in sorted(glob.glob(os.path.join(os.path.dirname(root), "numpy.libs", "*openblas*")) +
                       glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for scheme in _SCHEMES:
            axpy_fns = _bind(lib, "axpy", scheme, lambda i, r: (i, r, ctypes.c_void_p, i, ctypes.c_void_p, i))
            if axpy_fns:
                return axpy_fns, _bind(lib, "axpby", scheme,
                                       lambda i, r: (i, r, ctypes.c_void_p, i, r, ctypes.c_void_p, i))
    return {}, {}


_AXPY, _AXPBY = _load()
_SCALE_ADD = None  # {dtype: C axpby} where the probe found NumPy's bits; built on first use


def fused():
    """True when ``axpy`` rounds once (a BLAS axpy was found)."""
    return bool(_AXPY)


def axpy(a, x, y):
    """``y += a * x`` in place on NumPy array ``y`` (x of y's shape and dtype; a a number or 0-d array,
    taken in y's dtype), rounded once per element where BLAS does it, in any memory layout; returns y."""
    fn = _AXPY.get(y.dtype)
    if fn is None or type(x) is not numpy.ndarray or type(y) is not numpy.ndarray or x.dtype != y.dtype or \
            x.shape != y.shape or not y.flags.writeable:
        numpy.add(y, y.dtype.type(a) * x, out=y)
        return y
    if not y.size:
        return y
    if (x.flags.c_contiguous and y.flags.c_contiguous) or (x.flags.f_contiguous and y.flags.f_contiguous):
        fn(y.size, float(a), x.ctypes.data, 1, y.ctypes.data, 1)  # the same element order in memory
        return y
    x, dense = numpy.ascontiguousarray(x), numpy.ascontiguousarray(y)  # another layout: round once all the same
    fn(y.size, float(a), x.ctypes.data, 1, dense.ctypes.data, 1)
    y[...] = dense
    return y


def _probe_scale_add():
    """{dtype: C axpby} for the dtypes whose BLAS ``y = 1 * x + b * y`` gave NumPy's ``y * b + x``
    bit for bit on probe data: every length up to 70 (vector bodies and scalar tails) and one long
    one, values of mixed sign and magnitude, and infinities and NaN."""
    good = {}
    rng = numpy.random.default_rng(12345)
    for dtype, fn in _AXPBY.items():
        ok = True
        for n in list(range(1, 71)) + [4099]:
            x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
            y = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
            if n == 4099:
                y[:3] = (numpy.inf, -numpy.inf, numpy.nan)
            for b in (0.9, 0.99, 0.5, 1.7):
                with numpy.errstate(all="ignore"):
                    expected = y * dtype.type(b) + x
                got = y.copy()
                fn(n, 1.0, x.ctypes.data, 1, b, got.ctypes.data, 1)
                if got.tobytes() != expected.tobytes():
                    ok = False
                    break
            if not ok:
                break
        if ok:
            good[dtype] = fn
    return good


def scale_add(y, b, x):
    """``y = y * b + x`` in place on NumPy array ``y`` (x of y's shape and dtype, b a nonzero number taken
    in y's dtype), rounded as NumPy's ``y *= b; y += x``: in one BLAS pass where the probe allowed it
    and both are C-contiguous, else with NumPy; returns y."""
    global _SCALE_ADD
    if _SCALE_ADD is None:
        _SCALE_ADD = _probe_scale_add()
    fn = _SCALE_ADD.get(y.dtype)
    if fn is not None and b != 0 and type(x) is numpy.ndarray and type(y) is numpy.ndarray and \
            x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous and \
            y.flags.writeable and y.size:
        fn(y.size, 1.0, x.ctypes.data, 1, float(b), y.ctypes.data, 1)
        return y
    with numpy.errstate(all="ignore"):  # as the in-place NumPy update it replaces: inf and NaN propagate
        numpy.multiply(y, b, out=y)
        numpy.add(y, x, out=y)
    return y


# ---- bound calls: the steady SGD step calls the same update on the same arrays every step ------------------------
def _bound(fn, args, arrays):
    """``fn(*args)`` as a callable of no arguments that keeps ``arrays`` (whose addresses ``args`` holds)
    alive as long as it lives."""
    call = functools.partial(fn, *args)
    call.arrays = arrays
    return call


def _dense_pair(x, y):
    return type(x) is numpy.ndarray and type(y) is numpy.ndarray and x.dtype == y.dtype and x.shape == y.shape \
        and x.flags.c_contiguous and y.flags.c_contiguous and y.flags.writeable and y.size > 0


def bind_axpy(a, x, y):
    """``axpy(a, x, y)`` as a callable of no arguments, for a caller that repeats it on the same arrays: the
    BLAS call with the arrays' addresses taken now (each ``.ctypes.data`` costs 1-1.5 us inside a training
    step, four of them a quarter of the whole SGD update's overhead), or ``axpy`` itself where it would not
    call BLAS on C-contiguous arrays. A NumPy array keeps its memory for life, so the addresses stay valid."""
    fn = _AXPY.get(y.dtype) if isinstance(y, numpy.ndarray) else None
    if fn is None or not _dense_pair(x, y):
        return functools.partial(axpy, a, x, y)
    return _bound(fn, (y.size, float(a), x.ctypes.data, 1, y.ctypes.data, 1), (x, y))


def bind_scale_add(y, b, x):
    """``scale_add(y, b, x)`` as a callable of no arguments, as ``bind_axpy``."""
    global _SCALE_ADD
    if _SCALE_ADD is None:
        _SCALE_ADD = _probe_scale_add()
    fn = _SCALE_ADD.get(y.dtype) if isinstance(y, numpy.ndarray) else None
    if fn is None or b == 0 or not _dense_pair(x, y):
        return functools.partial(scale_add, y, b, x)
    return _bound(fn, (y.size, 1.0, x.ctypes.data, 1, float(b), y.ctypes.data, 1), (x, y))
