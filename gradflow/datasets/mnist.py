"""MNIST from the standard IDX files, verified against the published MD5s.

Where the files are looked for, in order:

1. the ``root`` argument;
2. ``$GRADFLOW_DATA`` and ``$GRADFLOW_DATA/mnist``;
3. the cache, ``$XDG_CACHE_HOME/gradflow/mnist`` (default ``~/.cache/gradflow/mnist``);
4. the copy bundled with a source checkout, ``<repo>/data/mnist``;
5. a download from the standard mirrors into the cache (when ``download=True``).

Each file may be gzip-compressed (``name.gz``) or raw. The MD5 is taken of the
*decompressed* bytes, so re-compressed copies still verify.

Images come back as float32 in [0, 1], flattened to 784 values per image (``flatten=False``
keeps 28x28); labels as int64.
"""
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy

from gradflow.data import TensorDataset

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5S = {  # of the decompressed files, as published with the dataset
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# IDX type byte -> numpy dtype (big-endian, as the format stores it)
_IDX_DTYPES = {0x08: numpy.dtype("u1"), 0x09: numpy.dtype("i1"), 0x0B: numpy.dtype(">i2"),
               0x0C: numpy.dtype(">i4"), 0x0D: numpy.dtype(">f4"), 0x0E: numpy.dtype(">f8")}


class MNISTError(RuntimeError):
    """A missing, corrupt or unreadable MNIST file."""


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradflow" / "mnist"


def bundled_dir():
    """``data/mnist`` next to the ``gradflow`` package: present in a checkout or editable install."""
    import gradflow
    return Path(gradflow.__file__).resolve().parents[1] / "data" / "mnist"


def search_dirs(root=None):
    """The directories to look in, in order."""
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    env = os.environ.get("GRADFLOW_DATA")
    if env:
        dirs += [Path(env), Path(env) / "mnist"]
    dirs += [cache_dir(), bundled_dir()]
    seen, unique = set(), []
    for d in dirs:
        if str(d) not in seen:
            seen.add(str(d))
            unique.append(d)
    return unique


def _find_file(directory, name):
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path):
    """The decompressed contents of ``path`` (gzip is recognised by its magic, not its name)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise MNISTError(f"{path}: cannot decompress ({e}); the file is corrupt or truncated, "
                         f"delete it and supply a good copy") from None


def parse_idx(data, name="<bytes>"):
    """An ndarray from the bytes of an IDX file, checking the header against the payload."""
    if len(data) < 4:
        raise MNISTError(f"{name}: truncated IDX file: {len(data)} bytes, not even a 4-byte header")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise MNISTError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with "
                         f"type TT in {sorted(hex(t) for t in _IDX_DTYPES)} and NN >= 1 dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MNISTError(f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(numpy.prod(shape)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise MNISTError(f"{name}: {problem}: header says shape {shape} ({expected} bytes of data), "
                         f"found {found} bytes")
    return numpy.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path, md5=None):
    """Read one IDX file (raw or gzip); with ``md5``, verify the decompressed bytes first."""
    data = read_bytes(path)
    if md5 is not None:
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            raise MNISTError(f"{path}: MD5 mismatch: decompressed contents hash to {digest}, expected {md5}; "
                             f"the file is corrupt or not the original, delete it and supply a good copy")
    return parse_idx(data, str(path))


def _download(name, directory, mirrors, timeout=30):
    """Fetch ``name.gz`` from the first mirror that answers with verified contents, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            read_idx(tmp, MD5S.get(name))
            target = directory / (name + ".gz")
            os.replace(tmp, target)
            return target
        except Exception as e:  # network errors, bad contents: try the next mirror
            errors.append(f"{url}: {e}")
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise MNISTError("download failed:\n  " + "\n  ".join(errors))


def _locate(names, root, download):
    looked = []
    for directory in search_dirs(root):
        found = [_find_file(directory, n) for n in names]
        if all(found):
            return found
        looked.append(f"{directory} ({'missing ' + ', '.join(n for n, f in zip(names, found) if not f)})")
    if download:
        target = cache_dir()
        try:
            return [_find_file(target, n) or _download(n, target, MIRRORS) for n in names]
        except (MNISTError, OSError) as e:
            looked.append(f"download into {target}: {e}")
    else:
        looked.append("download: disabled (download=False)")
    raise MNISTError(
        "MNIST files " + ", ".join(names) + " (raw or .gz) not found. Looked in:\n  - " + "\n  - ".join(looked) +
        "\nSupply them by passing root=DIR (or --data DIR), setting GRADFLOW_DATA=DIR, or copying them to "
        f"{cache_dir()}; they are published at http://yann.lecun.com/exdb/mnist/")


def load_mnist(root=None, train=True, download=True, flatten=True, verify=True):
    """``(images, labels)`` as NumPy arrays: float32 in [0, 1] of shape (N, 784) or (N, 28, 28), int64."""
    split = "train" if train else "test"
    names = FILES[split]
    image_path, label_path = _locate(names, root, download)
    images = read_idx(image_path, MD5S[names[0]] if verify else None)
    labels = read_idx(label_path, MD5S[names[1]] if verify else None)
    if images.ndim != 3:
        raise MNISTError(f"{image_path}: expected a 3-d image array (N, rows, cols), got shape {images.shape}")
    if labels.ndim != 1:
        raise MNISTError(f"{label_path}: expected a 1-d label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise MNISTError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    images = images.astype(numpy.float32) / numpy.float32(255.0)
    if flatten:
        images = images.reshape(len(images), -1)
    return images, labels.astype(numpy.int64)


class MNIST(TensorDataset):
    """The MNIST train (60k) or test (10k) split as a ``TensorDataset`` of (image, label)."""

    def __init__(self, root=None, train=True, download=True, flatten=True, verify=True):
        images, labels = load_mnist(root, train=train, download=download, flatten=flatten, verify=verify)
        super().__init__(images, labels)
        self.train = train

    @property
    def images(self):
        return self.arrays[0]

    @property
    def labels(self):
        return self.arrays[1]
