"""Backend selection: a GPU that CuPy cannot compile for falls back to the CPU with one warning."""
import sys
import types
import warnings

import numpy
import pytest

from gradflow import backend


class _FakeArray:
    def __init__(self, values):
        self.values = numpy.asarray(values, numpy.float32)


def fake_cupy(kernel_error=None, available=True, result_offset=1.0):
    """A stand-in cupy module: a device is 'present'; compiling a kernel raises ``kernel_error``."""
    cp = types.ModuleType("cupy")
    cp.float32 = numpy.float32
    cp.is_available = lambda: available
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cp.arange = lambda n, dtype=None: _FakeArray(numpy.arange(n))
    cp.asnumpy = lambda a: a.values

    class ElementwiseKernel:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x):
            if kernel_error is not None:
                raise kernel_error
            return _FakeArray(x.values + result_offset)

    cp.ElementwiseKernel = ElementwiseKernel
    return cp


@pytest.fixture
def fresh_backend(monkeypatch):
    """Run with a forgotten probe result; restore the real one afterwards."""
    saved = (backend._cupy, backend._cupy_checked, backend._cupy_error, backend._fallback_warning)
    backend._reset()
    monkeypatch.delenv("GRADFLOW_DEVICE", raising=False)
    yield monkeypatch
    backend._cupy, backend._cupy_checked, backend._cupy_error, backend._fallback_warning = saved


NVRTC_MISSING = RuntimeError("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open shared object")


def test_gpu_without_nvrtc_falls_back_to_cpu_with_one_warning(fresh_backend):
    fresh_backend.setitem(sys.modules, "cupy", fake_cupy(NVRTC_MISSING))
    with pytest.warns(RuntimeWarning, match=r"running on the CPU.*libnvrtc.*gradflow\[cuda13\]") as record:
        assert backend.default_device() == "cpu"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second decision is silent
        assert backend.default_device() == "cpu"
    assert not backend.cuda_is_available()


def test_gpu_without_nvrtc_raises_when_cuda_is_asked_for(fresh_backend):
    fresh_backend.setitem(sys.modules, "cupy", fake_cupy(NVRTC_MISSING))
    fresh_backend.setenv("GRADFLOW_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match=r"'cuda' requested but unavailable.*cannot compile.*libnvrtc"):
        backend.default_device()
    with pytest.raises(RuntimeError, match="libnvrtc"):
        backend.cupy()


def test_missing_headers_and_wrong_results_are_probe_failures(fresh_backend):
    fresh_backend.setitem(sys.modules, "cupy", fake_cupy(RuntimeError("Failed to find CUDA headers.")))
    with pytest.warns(RuntimeWarning, match="CUDA headers"):
        assert backend.default_device() == "cpu"
    backend._reset()
    fresh_backend.setitem(sys.modules, "cupy", fake_cupy(result_offset=2.0))
    with pytest.warns(RuntimeWarning, match="trivial kernel computed"):
        assert backend.default_device() == "cpu"


def test_probe_runs_once_and_a_working_gpu_is_chosen(fresh_backend):
    calls = []
    cp = fake_cupy()
    real_kernel = cp.ElementwiseKernel

    class Counting(real_kernel):
        def __call__(self, x):
            calls.append(1)
            return super().__call__(x)

    cp.ElementwiseKernel = Counting
    fresh_backend.setitem(sys.modules, "cupy", cp)
    assert backend.default_device() == "cuda" and backend.cuda_is_available() and backend.cupy() is cp
    assert backend.default_device() == "cuda"
    assert len(calls) == 1


def test_no_device_falls_back_silently(fresh_backend):
    fresh_backend.setitem(sys.modules, "cupy", fake_cupy(available=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.default_device() == "cpu"
    with pytest.raises(RuntimeError, match="is_available"):
        backend.cupy()
