"""Array backends: NumPy on the CPU, CuPy on an NVIDIA GPU.

A Tensor's device is the module of its array, so there is no device object to keep in
sync: ``numpy.ndarray`` means ``"cpu"``, ``cupy.ndarray`` means ``"cuda"``.
"""
import os

import numpy

capturing = False     # True while gradflow.compile captures a CUDA graph (no cuBLAS then)
_cupy = None          # the cupy module once it proved usable
_cupy_checked = False
_cupy_error = None    # why CUDA is unusable, for the error message


def _load_cupy():
    global _cupy, _cupy_checked, _cupy_error
    if _cupy_checked:
        return _cupy
    _cupy_checked = True
    try:
        import cupy
        if not cupy.is_available():
            raise RuntimeError("cupy.is_available() is False (no usable CUDA device or driver)")
        cupy.cuda.runtime.getDeviceCount()
        _cupy = cupy
    except ImportError as e:
        _cupy_error = f"CuPy is not installed ({e}); pip install 'gradflow[cuda12]' or 'gradflow[cuda13]'"
    except Exception as e:  # CUDARuntimeError and friends are RuntimeErrors
        _cupy_error = f"CuPy cannot use a CUDA device: {e}"
    return _cupy


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
    """GRADFLOW_DEVICE if set, else 'cuda' when usable, else 'cpu'."""
    env = os.environ.get("GRADFLOW_DEVICE", "").strip().lower()
    if env:
        check_device(env)
        if env == "cuda":
            cupy()  # raise now, with the reason, rather than at the first op
        return env
    return "cuda" if cuda_is_available() else "cpu"


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
