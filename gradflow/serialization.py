"""``save``/``load`` for state dicts and checkpoints: one ``.npz`` file, no pickle.

A nested structure of dicts, lists, tuples, strings, numbers, None, arrays and Tensors is
split in two: every array goes into the ``.npz`` archive under a generated key, and the rest
becomes a JSON skeleton (stored in the same archive) that refers to those keys. Loading
uses ``allow_pickle=False``, so a checkpoint can never run code.

``save`` is atomic: it writes a temporary file in the destination directory, flushes and
fsyncs it, then ``os.replace``-s it over the destination, so a crash or an error midway
leaves the previous file untouched.
"""
import json
import os
import tempfile

import numpy

from gradflow import backend
from gradflow.tensor import Tensor

_META_KEY = "__gradflow_meta__"
FORMAT_VERSION = 1


def _encode(obj, arrays):
    """The JSON-able skeleton of ``obj``; arrays are moved into ``arrays``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, Tensor) or hasattr(obj, "__array__") or hasattr(obj, "__cuda_array_interface__"):
        is_tensor = isinstance(obj, Tensor)
        array = backend.to_numpy(obj.data if is_tensor else obj)
        if array.dtype == object:
            raise TypeError("save: object arrays are not supported (they would need pickle)")
        key = f"a{len(arrays)}"
        arrays[key] = array
        return {"__tensor__" if is_tensor else "__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"save: dict key {k!r} of type {type(k).__name__} is not supported")
            items.append([k, _encode(v, arrays)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    raise TypeError(f"save: cannot store an object of type {type(obj).__name__} "
                    "(supported: dict, list, tuple, str, int, float, bool, None, arrays and Tensors)")


def _decode(node, archive, device):
    if isinstance(node, list):
        return [_decode(v, archive, device) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return Tensor(backend.to_device(archive[node["__tensor__"]], device))
    if "__ndarray__" in node:
        return archive[node["__ndarray__"]]
    if "__tuple__" in node:
        return tuple(_decode(v, archive, device) for v in node["__tuple__"])
    if "__dict__" in node:
        return {k: _decode(v, archive, device) for k, v in node["__dict__"]}
    return {k: _decode(v, archive, device) for k, v in node.items()}


def _fsync_dir(directory):
    """Make the rename itself durable (best effort: not every OS can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(obj, path):
    """Write ``obj`` to ``path`` atomically (see the module docstring for what ``obj`` may hold)."""
    path = os.fspath(path)
    arrays = {}
    meta = {"format": "gradflow", "version": FORMAT_VERSION, "data": _encode(obj, arrays)}
    arrays[_META_KEY] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def load(path, map_location="cpu"):
    """Read what ``save`` wrote; Tensors land on ``map_location`` ('cpu' or 'cuda')."""
    path = os.fspath(path)
    with numpy.load(path, allow_pickle=False) as archive:
        if _META_KEY not in archive.files:
            raise ValueError(f"load: {path} is not a gradflow file (no {_META_KEY} entry)")
        meta = json.loads(bytes(archive[_META_KEY]).decode("utf-8"))
        if meta.get("format") != "gradflow" or meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"load: {path} has format {meta.get('format')!r} version {meta.get('version')}, "
                             f"this gradflow reads version <= {FORMAT_VERSION}")
        arrays = {k: archive[k] for k in archive.files if k != _META_KEY}
    return _decode(meta["data"], arrays, backend.check_device(map_location))
