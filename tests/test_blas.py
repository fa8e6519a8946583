"""blas.axpy: y += a * x with one rounding per element (as torch's add with alpha=), in any layout."""
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
