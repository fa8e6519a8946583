"""blas.axpy: y += a * x with one rounding per element (as torch's add with alpha=), in any layout; blas.scale_add:
y = y * b + x rounded as NumPy (torch's buf.mul_(b).add_(x)) in one pass where a probe allows it."""
import ctypes

import numpy
import pytest

from gradflow import blas

needs_blas = pytest.mark.skipif(not blas.fused(), reason="NumPy here has no OpenBLAS axpy (the update rounds twice)")


def _fma32(a, x, y):
    """float32 fma emulated in float64: the product is exact there, and for operands of similar magnitude so is the sum."""
    return (y.astype(numpy.float64) + numpy.float64(numpy.float32(a)) * x.astype(numpy.float64)).astype(numpy.float32)


@needs_blas
@pytest.mark.parametrize("layout", ["c", "f", "transposed", "strided", "0-d", "empty", "mixed"])
def test_axpy_rounds_once_in_every_layout(layout):
    """C- or F-ordered alike go straight to BLAS; other layouts through a dense copy; elements outside a
    strided view are left alone."""
    rng = numpy.random.default_rng(0)
    base_x = rng.standard_normal((40, 30)).astype(numpy.float32)
    base_y = rng.standard_normal((40, 30)).astype(numpy.float32)
    before = base_y.copy()
    pick = {"c": lambda a: a, "f": numpy.asfortranarray, "transposed": lambda a: a.T, "strided": lambda a: a[::2, 1::3],
            "0-d": lambda a: a[3:4, 4:5].reshape(()), "empty": lambda a: a[:0], "mixed": lambda a: a}[layout]
    x = pick(base_x) if layout != "mixed" else numpy.asfortranarray(base_x)
    y = pick(base_y)
    expected = _fma32(-0.037, x, y)
    out = blas.axpy(-0.037, x, y)
    assert out is y
    assert y.tobytes() == expected.tobytes()
    if layout == "c":  # the data shows the difference one rounding makes
        assert (before + numpy.float32(-0.037) * base_x != expected).any()
    if layout == "strided":
        outside = numpy.ones(base_y.shape, bool)
        outside[::2, 1::3] = False
        assert numpy.array_equal(base_y[outside], before[outside])


def test_axpy_without_blas_rounds_twice_as_numpy(monkeypatch):
    monkeypatch.setattr(blas, "_AXPY", {})
    rng = numpy.random.default_rng(1)
    x, y = rng.standard_normal(1000).astype(numpy.float32), rng.standard_normal(1000).astype(numpy.float32)
    expected = y + numpy.float32(0.3) * x
    assert blas.axpy(0.3, x, y).tobytes() == expected.tobytes()
    assert not blas.fused()


@needs_blas
def test_axpy_float64_and_other_dtypes():
    rng = numpy.random.default_rng(2)
    x, y = rng.standard_normal(777), rng.standard_normal(777)
    expected = y + 1.5 * x
    blas.axpy(1.5, x, y)
    numpy.testing.assert_allclose(y, expected, rtol=1e-15, atol=1e-15)
    h = numpy.ones(5, numpy.float16)
    assert blas.axpy(2.0, numpy.ones(5, numpy.float16), h).tolist() == [3.0] * 5  # no BLAS: NumPy


# ---- scale_add: y = y * b + x, rounded twice as NumPy and torch's buf.mul_(b).add_(x) ----------------------
def _numpy_scale_add(y, b, x):
    out = y.copy()
    with numpy.errstate(all="ignore"):
        out *= b
        out += x
    return out


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("n", [1, 7, 33, 109386])
def test_scale_add_rounds_as_numpy(dtype, n):
    rng = numpy.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    y = (rng.standard_normal(n) * 3).astype(dtype)
    expected = _numpy_scale_add(y, 0.9, x)
    assert blas.scale_add(y, 0.9, x) is y
    assert y.tobytes() == expected.tobytes()


@pytest.mark.skipif(not blas._AXPBY, reason="NumPy here has no OpenBLAS axpby")
def test_scale_add_uses_blas_where_the_probe_found_numpys_bits(monkeypatch):
    """The one-pass BLAS call is taken (a stand-in kernel records it) for contiguous arrays, and the data
    would show a kernel that rounds once: y * b + x in one fma differs from NumPy's two roundings."""
    assert blas._probe_scale_add().keys() == blas._AXPBY.keys()  # this machine's OpenBLAS rounds as NumPy
    calls = []
    real = blas._AXPBY[numpy.dtype(numpy.float32)]
    monkeypatch.setattr(blas, "_SCALE_ADD", {numpy.dtype(numpy.float32): lambda *a: (calls.append(a[0]), real(*a))})
    rng = numpy.random.default_rng(3)
    x, y = rng.standard_normal(1000).astype(numpy.float32), rng.standard_normal(1000).astype(numpy.float32)
    once = (y.astype(numpy.float64) * numpy.float32(0.9) + x).astype(numpy.float32)
    expected = _numpy_scale_add(y, 0.9, x)
    assert (once != expected).any()
    blas.scale_add(y, 0.9, x)
    assert calls == [1000] and y.tobytes() == expected.tobytes()
    strided = numpy.ones(20, numpy.float32)[::2]
    blas.scale_add(strided, 0.5, numpy.ones(10, numpy.float32))  # not contiguous: NumPy
    assert calls == [1000] and strided.tolist() == [1.5] * 10


def test_scale_add_probe_refuses_a_kernel_that_rounds_once(monkeypatch):
    """A BLAS build whose axpby is one fma (y * b + x rounded once) fails the probe: NumPy computes."""
    def fma_axpby(n, alpha, x_ptr, incx, beta, y_ptr, incy):
        x = numpy.ctypeslib.as_array(ctypes.cast(x_ptr, ctypes.POINTER(ctypes.c_float)), (n,))
        y = numpy.ctypeslib.as_array(ctypes.cast(y_ptr, ctypes.POINTER(ctypes.c_float)), (n,))
        y[...] = (y.astype(numpy.float64) * numpy.float32(beta) + x).astype(numpy.float32)

    monkeypatch.setattr(blas, "_AXPBY", {numpy.dtype(numpy.float32): fma_axpby})
    assert blas._probe_scale_add() == {}
    monkeypatch.setattr(blas, "_SCALE_ADD", None)
    rng = numpy.random.default_rng(4)
    x, y = rng.standard_normal(500).astype(numpy.float32), rng.standard_normal(500).astype(numpy.float32)
    expected = _numpy_scale_add(y, 0.9, x)
    assert blas.scale_add(y, 0.9, x).tobytes() == expected.tobytes()
    assert blas._SCALE_ADD == {}


# ---- bound calls: the same bits as the calls they stand for, on arrays they keep alive ----------------------------
@pytest.mark.parametrize("layout", ["c", "strided", "float16", "empty"])
def test_bound_calls_give_the_bits_of_axpy_and_scale_add(layout):
    """``bind_axpy``/``bind_scale_add`` take the arrays' addresses once; repeated, they give what
    ``axpy``/``scale_add`` give step after step, BLAS or NumPy (layouts BLAS is not called for)."""
    rng = numpy.random.default_rng(5)
    dtype = numpy.float16 if layout == "float16" else numpy.float32
    make = {"c": lambda: rng.standard_normal(300), "strided": lambda: rng.standard_normal(600)[::2],
            "float16": lambda: rng.standard_normal(300), "empty": lambda: rng.standard_normal(0)}[layout]
    g, buf, p = (make().astype(dtype) for _ in range(3))
    if layout == "strided":
        g, buf, p = (numpy.repeat(a, 2)[::2] for a in (g, buf, p))
    g2, buf2, p2 = g.copy(), buf.copy(), p.copy()
    momentum, step = blas.bind_scale_add(buf, 0.9, g), blas.bind_axpy(-0.05, buf, p)
    for _ in range(3):
        momentum()
        step()
        blas.scale_add(buf2, 0.9, g2)
        blas.axpy(-0.05, buf2, p2)
        assert buf.tobytes() == buf2.tobytes() and p.tobytes() == p2.tobytes()


@needs_blas
def test_a_bound_blas_call_keeps_its_arrays_alive():
    """The bound C call holds raw addresses: it must hold the arrays too, or a freed array's memory
    would be written to."""
    import gc
    x, y = numpy.full(1000, 2.0, numpy.float32), numpy.ones(1000, numpy.float32)
    call = blas.bind_axpy(0.5, x, y)
    assert call.arrays[1] is y
    del x
    gc.collect()
    call()
    assert (y == 2.0).all()
