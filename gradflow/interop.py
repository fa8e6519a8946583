"""Zero-copy exchange with other array libraries (DLPack) and safetensors files.

``from_dlpack`` wraps another library's tensor without copying (NumPy/PyTorch CPU tensors
as NumPy arrays, CUDA ones as CuPy arrays), and ``Tensor.__dlpack__`` lets them wrap
gradflow's. safetensors is the weight format PyTorch and most model hubs share: a
state_dict saved by PyTorch loads here, and gradflow's loads into PyTorch.
"""
import os
import sys
import tempfile
from collections import OrderedDict

import numpy

from gradflow import backend
from gradflow.tensor import Tensor

_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def from_dlpack(obj):
    """A Tensor sharing memory with ``obj`` (anything with ``__dlpack__``: torch, NumPy, CuPy, JAX)."""
    if isinstance(obj, Tensor):
        return obj
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: {type(obj).__name__} does not implement __dlpack__")
    if str(getattr(obj, "dtype", "")).endswith("bfloat16") and type(obj).__module__.startswith("torch"):
        # DLPack readers in NumPy/CuPy reject bfloat16: share the bits as int16, then view them as bfloat16
        import ml_dtypes
        bits = from_dlpack(obj.view(sys.modules["torch"].int16)).data
        return Tensor._wrap(bits.view(ml_dtypes.bfloat16))
    device_type = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else _DLPACK_CPU
    if device_type == _DLPACK_CPU:
        return Tensor._wrap(numpy.from_dlpack(obj))
    if device_type == _DLPACK_CUDA:
        return Tensor._wrap(backend.cupy().from_dlpack(obj))
    raise RuntimeError(f"from_dlpack: unsupported DLPack device type {device_type} (gradflow takes CPU and CUDA)")


# ---- safetensors ----------------------------------------------------------------------------------
_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16",
          "uint8": "U8", "bool": "BOOL"}


def _dtype(code):
    if code == "BF16":
        import ml_dtypes
        return numpy.dtype(ml_dtypes.bfloat16)
    for name, c in _NAMES.items():
        if c == code:
            return numpy.dtype(name)
    raise TypeError(f"load_safetensors: unsupported tensor dtype {code!r}")


def _host_array(value, key):
    if isinstance(value, Tensor):
        a = value.data
    elif hasattr(value, "__dlpack__") and not isinstance(value, numpy.ndarray):
        a = from_dlpack(value.detach() if hasattr(value, "detach") else value).data
    else:
        a = numpy.asarray(value)
    a = numpy.ascontiguousarray(backend.to_numpy(a))
    if a.dtype.name not in _NAMES:
        raise TypeError(f"save_safetensors: {key!r} has dtype {a.dtype}, which safetensors cannot store")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def save_safetensors(state_dict, path, metadata=None):
    """Write ``{name: Tensor}`` (gradflow, PyTorch or NumPy values) to ``path`` in safetensors format.

    The file is written next to ``path`` and renamed over it only when complete, so a failed
    save leaves an earlier checkpoint intact.
    """
    from safetensors import TensorSpec, serialize
    arrays = OrderedDict((str(k), _host_array(v, k)) for k, v in state_dict.items())  # alive while serializing
    specs = {k: TensorSpec(dtype=a.dtype.name, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
             for k, a in arrays.items()}
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("save_safetensors: metadata must map str to str")
    blob = bytes(serialize(specs, metadata=metadata))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_safetensors(path, device="cpu"):
    """The tensors of a safetensors file as an ordered ``{name: Tensor}`` (file order), on ``device``."""
    from safetensors import deserialize
    with open(os.fspath(path), "rb") as f:
        blob = f.read()
    out = OrderedDict()
    for name, info in deserialize(blob):
        a = numpy.frombuffer(bytes(info["data"]), dtype=_dtype(info["dtype"])).reshape(info["shape"]).copy()
        out[name] = Tensor._wrap(backend.to_device(a, backend.check_device(device)))
    return out


def save_file(tensors, filename, metadata=None):
    """``safetensors.torch.save_file``'s spelling of ``save_safetensors``."""
    save_safetensors(tensors, filename, metadata)


def load_file(filename, device="cpu"):
    """``safetensors.torch.load_file``'s spelling of ``load_safetensors``."""
    return load_safetensors(filename, device)
