"""Array backends: NumPy on the CPU, CuPy on an NVIDIA GPU.

A Tensor's device is the module of its array, so there is no device object to keep in
sync: ``numpy.ndarray`` means ``"cpu"``, ``cupy.ndarray`` means ``"cuda"``.
"""
import os
import warnings

import numpy

capturing = False     # True while gradflow.compile captures a CUDA graph (no cuBLAS then)
_cupy = None          # the cupy module once it proved usable
_cupy_checked = False
_cupy_error = None    # why CUDA is unusable, for the error message
_fallback_warning = None  # set when a GPU is there but unusable: default_device() warns once

_INSTALL_HINT = ("pip install 'gradflow[cuda13]' (CUDA 13 driver) or 'gradflow[cuda12]': their cupy-cudaXXx[ctk] "
                 "brings NVRTC and the CUDA headers as wheels")


def _probe(cupy):
    """Compile and run one trivial kernel: what every gradflow op needs besides a device.

    ``cupy.is_available()`` only counts devices; a host with a driver but no NVRTC (or no
    CUDA headers) passes it and fails at the first kernel. This probe fails here instead.
    """
    kernel = cupy.ElementwiseKernel("T x", "T y", "y = x + T(1)", "gradflow_probe")
    y = kernel(cupy.arange(4, dtype=cupy.float32))
    if cupy.asnumpy(y).tolist() != [1.0, 2.0, 3.0, 4.0]:
        raise RuntimeError(f"a trivial kernel computed {cupy.asnumpy(y).tolist()} instead of [1, 2, 3, 4]")


def _load_cupy():
    global _cupy, _cupy_checked, _cupy_error, _fallback_warning
    if _cupy_checked:
        return _cupy
    _cupy_checked = True
    try:
        import cupy
    except ImportError as e:
        _cupy_error = f"CuPy is not installed ({e}); {_INSTALL_HINT}"
        return None
    try:
        if not cupy.is_available():
            raise RuntimeError("cupy.is_available() is False (no usable CUDA device or driver)")
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError and friends are RuntimeErrors
        _cupy_error = f"CuPy cannot use a CUDA device: {e}"
        return None
    try:
        _probe(cupy)
    except Exception as e:  # noqa: BLE001  (missing NVRTC, headers, driver too old, ...: all mean no GPU path)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _cupy_error = (f"a CUDA device is present but CuPy cannot compile and run a kernel "
                       f"({type(e).__name__}: {first}); NVRTC or the CUDA headers are probably missing: "
                       f"{_INSTALL_HINT}")
        _fallback_warning = f"gradflow: running on the CPU: {_cupy_error}"
        return None
    _cupy = cupy
    return _cupy


def _reset():
    """Forget the probe's result (tests)."""
    global _cupy, _cupy_checked, _cupy_error, _fallback_warning
    _cupy, _cupy_checked, _cupy_error, _fallback_warning = None, False, None, None


def cuda_is_available():
    return _load_cupy() is not None


def cupy():
    """The cupy module; a clear error when CUDA is not usable here."""
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(f"device 'cuda' requested but unavailable: {_cupy_error}")
    return cp


def check_device(device):
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    return device


def default_device():
    """GRADFLOW_DEVICE if set, else 'cuda' when usable, else 'cpu'.

    A GPU that CuPy cannot compile for (see ``_probe``) gives the CPU and one warning that
    says what is missing; with GRADFLOW_DEVICE=cuda it is an error instead.
    """
    global _fallback_warning
    env = os.environ.get("GRADFLOW_DEVICE", "").strip().lower()
    if env:
        check_device(env)
        if env == "cuda":
            cupy()  # raise now, with the reason, rather than at the first op
        return env
    if cuda_is_available():
        return "cuda"
    if _fallback_warning is not None:
        message, _fallback_warning = _fallback_warning, None
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return "cpu"


def device_of(array):
    return "cpu" if isinstance(array, (numpy.ndarray, numpy.generic)) else "cuda"


def xp_of(array):
    """The array module (numpy or cupy) that owns ``array``."""
    return numpy if isinstance(array, (numpy.ndarray, numpy.generic)) else _cupy


def xp_for(device):
    return numpy if check_device(device) == "cpu" else cupy()


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    if device_of(array) == check_device(device):
        return array
    if device == "cpu":
        return array.get()
    return cupy().asarray(array)


def to_numpy(array):
    """A host copy that never aliases device memory."""
    return numpy.array(array) if device_of(array) == "cpu" else array.get()
