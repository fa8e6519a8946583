"""``save``/``load`` for state dicts and checkpoints: one ``.npz`` file, no pickle.

A nested structure of dicts, lists, tuples, strings, numbers, None, arrays and Tensors is
split in two: every array goes into the ``.npz`` archive under a generated key, and the rest
becomes a JSON skeleton (stored in the same archive) that refers to those keys. Nothing in a
file is ever unpickled, so a checkpoint can never run code.

``save`` is atomic: it writes a temporary file ``<name>.<host>-<pid>-<random>.tmp`` beside
the destination, flushes and fsyncs it, then ``os.replace``-s it over the destination, so a
crash or an error midway leaves the previous file untouched. A writer killed mid-save
leaves its temporary behind; the next ``save`` or ``load`` of the same file removes the
ones whose writing process (on this host) is gone. Files get the permissions a plain
``open`` would give (the umask, or the replaced file's own mode); a symlink is written
through, so the link stays and its target is replaced.

``load`` checks the archive before reading it: every entry must be an uncompressed ``.npy``
whose header describes exactly the bytes the file holds (a crafted header cannot make it
allocate more than the file's size), and the JSON skeleton must refer only to arrays that
are there. Anything else raises ``CheckpointError`` naming the file.
"""
import json
import math
import os
import re
import secrets
import socket
import stat
import time
import zipfile

import numpy

from gradflow import backend
from gradflow.tensor import Tensor


class CheckpointError(ValueError):
    """The file is not a valid gradflow checkpoint (not ours, truncated, or corrupt)."""


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


# ---- temporaries: named by writer, so a dead writer's leftovers can be told from a live one's -----
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OURS = re.compile(r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp")
_LEGACY = re.compile(r"[a-z0-9_]{8}\.tmp")   # tempfile.mkstemp names of gradflow 0.1 (no writer id)
_LEGACY_AGE_S = 24 * 3600


def _temporary_path(target):
    return f"{target}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _writer_alive(pid):
    if pid == os.getpid() or os.name != "posix":  # ours (another thread may be saving) / cannot tell
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(target):
    """Delete ``target``'s temporaries left by dead writers; never another file's, never a live one's."""
    directory, base = os.path.split(target)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    prefix = base + "."
    for name in names:
        if not name.startswith(prefix):
            continue
        rest, full = name[len(prefix):], os.path.join(directory, name)
        ours = _OURS.fullmatch(rest)
        try:
            if ours:
                stale = ours["host"] == _HOST and not _writer_alive(int(ours["pid"]))
            elif _LEGACY.fullmatch(rest):
                stale = time.time() - os.lstat(full).st_mtime > _LEGACY_AGE_S
            else:
                continue
            if stale:
                os.unlink(full)
        except OSError:  # gone already, or a read-only directory: harmless
            pass


def _create(path, mode_like):
    """Open a new file for writing with the mode a plain ``open`` would give it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        os.chmod(path, stat.S_IMODE(os.stat(mode_like).st_mode))  # open(..., "w") keeps an existing file's mode
    except OSError:
        pass
    return fd


def save(obj, path):
    """Write ``obj`` to ``path`` atomically (see the module docstring for what ``obj`` may hold)."""
    path = os.fspath(path)
    target = os.path.realpath(path)  # through symlinks: replace the link's target, keep the link
    arrays = {}
    meta = {"format": "gradflow", "version": FORMAT_VERSION, "data": _encode(obj, arrays)}
    arrays[_META_KEY] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = _temporary_path(target)
    fd = _create(tmp, target)
    try:
        with os.fdopen(fd, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# ---- load: every size checked against the file before anything is allocated ------------------------
def _read_entry(archive, info, file_size, bad):
    """One ``.npy`` entry as a writable array, refusing any header that the bytes do not back."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise bad(f"entry {info.filename!r} is compressed; gradflow.save never compresses")
    if info.header_offset + info.compress_size > file_size or info.file_size != info.compress_size:
        raise bad(f"entry {info.filename!r} claims {info.file_size} bytes, more than the file holds")
    with archive.open(info) as f:
        version = numpy.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = numpy.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = numpy.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise bad(f"entry {info.filename!r} holds Python objects, which gradflow never stores")
        need = math.prod(shape) * dtype.itemsize
        if f.tell() + need != info.file_size:
            raise bad(f"entry {info.filename!r} promises {need} bytes of {dtype} {shape} data "
                      f"but holds {info.file_size - f.tell()}")
        buffer = bytearray(need)
        if f.readinto(buffer) != need or f.read(1):
            raise bad(f"entry {info.filename!r} is truncated")
    return numpy.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_archive(path, bad):
    file_size = os.path.getsize(path)
    if file_size == 0:
        raise bad("the file is empty")
    with zipfile.ZipFile(path) as archive:
        infos = {}
        for info in archive.infolist():
            key = info.filename[:-4]
            if not info.filename.endswith(".npy") or key in infos or \
                    not (key == _META_KEY or re.fullmatch(r"a[0-9]+", key)):  # the names _encode gives
                raise bad(f"unexpected entry {info.filename!r}")
            infos[key] = info
        if _META_KEY not in infos:
            raise bad(f"no {_META_KEY} entry: a .npz file that gradflow.save did not write")
        meta = _read_entry(archive, infos.pop(_META_KEY), file_size, bad)
        if meta.dtype != numpy.uint8 or meta.ndim != 1:
            raise bad("its metadata is not a byte string")
        meta = json.loads(meta.tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != "gradflow" or "data" not in meta \
                or not isinstance(meta.get("version"), int):
            raise bad("its metadata lacks the gradflow format marker, version or data")
        if meta["version"] > FORMAT_VERSION:
            raise CheckpointError(f"{path} has gradflow format version {meta['version']}; this gradflow reads "
                                  f"version <= {FORMAT_VERSION}: upgrade gradflow to load it")
        arrays = {key: _read_entry(archive, info, file_size, bad) for key, info in infos.items()}
    return meta, arrays


def load(path, map_location="cpu"):
    """Read what ``save`` wrote; Tensors land on ``map_location`` ('cpu' or 'cuda').

    A file that is not a complete gradflow checkpoint raises ``CheckpointError`` (a
    ``ValueError``) naming it; a missing file raises ``FileNotFoundError`` as ``open`` does.
    """
    path = os.fspath(path)
    device = backend.check_device(map_location)
    _remove_stale_temporaries(os.path.realpath(path))

    def bad(reason):
        return CheckpointError(f"not a valid gradflow checkpoint: {path} ({reason})")
    try:
        meta, arrays = _read_archive(path, bad)
    except (CheckpointError, OSError):
        raise
    except zipfile.BadZipFile as e:
        raise bad(f"not a complete .npz archive: {e}; it may be truncated or another kind of file") from None
    except (ValueError, EOFError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as e:
        raise bad(f"corrupt checkpoint: {type(e).__name__}: {e}") from None
    try:
        return _decode(meta["data"], arrays, device)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise bad(f"corrupt checkpoint: its metadata does not describe its arrays ({type(e).__name__}: {e})") from None
