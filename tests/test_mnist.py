"""MNIST: IDX parsing (synthetic and corrupt files), MD5 checks, the search order, download, the real data."""
import gzip
import hashlib

import numpy
import pytest

from gradflow.datasets import MNIST, MNISTError, load_mnist
from gradflow.datasets import mnist

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(directory, n=6, label_offset=0, gz=True, train=True, seed=0):
    """Synthetic MNIST-shaped images/labels; labels are (i + label_offset) % 10 to tell copies apart."""
    rng = numpy.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=numpy.uint8)
    labels = ((numpy.arange(n) + label_offset) % 10).astype(numpy.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    image_name, label_name = mnist.FILES["train" if train else "test"]
    for name, array in ((image_name, images), (label_name, labels)):
        data = idx_bytes(array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images, labels


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No GRADFLOW_DATA, an empty cache, no bundled copy and no network: only what a test puts there."""
    monkeypatch.delenv("GRADFLOW_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "bundled_dir", lambda: tmp_path / "bundled")
    monkeypatch.setattr(mnist, "MIRRORS", ())
    return tmp_path


# ---- parsing ------------------------------------------------------------------------------------------
def test_read_idx_raw_and_gzip(tmp_path):
    a = numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4)
    (tmp_path / "raw").write_bytes(idx_bytes(a))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(a)))
    for name in ("raw", "packed.gz"):
        got = mnist.read_idx(tmp_path / name)
        assert got.dtype == numpy.uint8 and numpy.array_equal(got, a)


def test_read_idx_other_types(tmp_path):
    a = numpy.array([[1.5, -2.0], [3.25, 0.0]], dtype=numpy.float32)
    (tmp_path / "f").write_bytes(idx_bytes(a, 0x0D))
    assert numpy.array_equal(mnist.read_idx(tmp_path / "f"), a)
    b = numpy.array([-3, 70000], dtype=numpy.int32)
    (tmp_path / "i").write_bytes(idx_bytes(b, 0x0C))
    assert mnist.read_idx(tmp_path / "i").tolist() == [-3, 70000]


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(MNISTError, match="bad-magic.*bad IDX magic number 0x12340801"):
        mnist.read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")  # unknown type byte
    with pytest.raises(MNISTError, match="magic"):
        mnist.read_idx(path)


def test_truncated_payload_and_header(tmp_path):
    data = idx_bytes(numpy.zeros((4, 28, 28), numpy.uint8))
    path = tmp_path / "short"
    path.write_bytes(data[:-10])
    with pytest.raises(MNISTError, match=r"short.*truncated.*\(4, 28, 28\).*3136 bytes of data\), found 3126"):
        mnist.read_idx(path)
    path.write_bytes(data[:9])
    with pytest.raises(MNISTError, match="truncated IDX header"):
        mnist.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(MNISTError, match="truncated IDX file"):
        mnist.read_idx(path)
    path.write_bytes(data + b"xx")
    with pytest.raises(MNISTError, match="trailing bytes"):
        mnist.read_idx(path)


def test_corrupt_gzip_names_the_file(tmp_path):
    packed = gzip.compress(idx_bytes(numpy.zeros((50, 28, 28), numpy.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MNISTError, match="cut.gz: cannot decompress"):
        mnist.read_idx(path)


def test_md5_mismatch_names_file_and_hashes(tmp_path):
    data = idx_bytes(numpy.zeros(3, numpy.uint8))
    path = tmp_path / "labels"
    path.write_bytes(data)
    assert mnist.read_idx(path, hashlib.md5(data).hexdigest()).tolist() == [0, 0, 0]
    with pytest.raises(MNISTError, match=f"labels: MD5 mismatch.*{hashlib.md5(data).hexdigest()}.*expected 0123"):
        mnist.read_idx(path, "0123")


# ---- load_mnist on synthetic files ---------------------------------------------------------------------------
def test_load_synthetic_scaled_and_typed(isolated):
    images, labels = write_split(isolated / "data", n=7, label_offset=2)
    x, y = load_mnist(isolated / "data", verify=False, download=False)
    assert x.shape == (7, 784) and x.dtype == numpy.float32
    assert numpy.allclose(x, images.reshape(7, -1) / 255.0) and 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == numpy.int64 and y.tolist() == labels.tolist()
    x2, _ = load_mnist(isolated / "data", verify=False, download=False, flatten=False)
    assert x2.shape == (7, 28, 28)


def test_load_raw_files_and_test_split(isolated):
    write_split(isolated / "data", n=3, gz=False, train=False)
    x, y = load_mnist(isolated / "data", train=False, verify=False, download=False)
    assert x.shape == (3, 784) and y.tolist() == [0, 1, 2]


def test_verify_rejects_non_original_files(isolated):
    write_split(isolated / "data")
    with pytest.raises(MNISTError, match="train-images-idx3-ubyte.gz: MD5 mismatch"):
        load_mnist(isolated / "data", download=False)


def test_count_mismatch(isolated):
    write_split(isolated / "data", n=5)
    (isolated / "data" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(numpy.zeros(4, numpy.uint8))))
    with pytest.raises(MNISTError, match="5 images but .* 4 labels"):
        load_mnist(isolated / "data", verify=False, download=False)


def test_search_order(isolated, monkeypatch):
    env = isolated / "env"
    write_split(mnist.bundled_dir(), label_offset=5)
    assert load_mnist(verify=False, download=False)[1][0] == 5          # bundled copy
    write_split(mnist.cache_dir(), label_offset=4)
    assert load_mnist(verify=False, download=False)[1][0] == 4          # cache beats bundled
    monkeypatch.setenv("GRADFLOW_DATA", str(env))
    write_split(env / "mnist", label_offset=3)
    assert load_mnist(verify=False, download=False)[1][0] == 3          # $GRADFLOW_DATA/mnist beats the cache
    write_split(env, label_offset=2)
    assert load_mnist(verify=False, download=False)[1][0] == 2          # $GRADFLOW_DATA itself comes first
    write_split(isolated / "arg", label_offset=1)
    assert load_mnist(isolated / "arg", verify=False, download=False)[1][0] == 1  # the argument beats all


def test_not_found_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("GRADFLOW_DATA", str(isolated / "env"))
    with pytest.raises(MNISTError) as err:
        load_mnist(isolated / "nowhere", download=False)
    message = str(err.value)
    for place in (isolated / "nowhere", isolated / "env", isolated / "env" / "mnist", mnist.cache_dir(),
                  mnist.bundled_dir()):
        assert str(place) in message
    assert "download=False" in message and "GRADFLOW_DATA" in message and "root=" in message


def test_download_from_mirror_into_cache(isolated, monkeypatch):
    """A file:// mirror stands in for the network; the first mirror serves garbage and is skipped."""
    served = isolated / "mirror"
    images, labels = write_split(served, n=4, label_offset=7)
    broken = isolated / "broken"
    broken.mkdir()
    for name in mnist.FILES["train"]:
        (broken / (name + ".gz")).write_bytes(gzip.compress(b"not an idx file"))
    md5s = {name: hashlib.md5(gzip.decompress((served / (name + ".gz")).read_bytes())).hexdigest()
            for name in mnist.FILES["train"]}
    monkeypatch.setattr(mnist, "MD5S", md5s)
    monkeypatch.setattr(mnist, "MIRRORS", (broken.as_uri() + "/", served.as_uri() + "/"))
    x, y = load_mnist(download=True)
    assert y.tolist() == labels.tolist()
    for name in mnist.FILES["train"]:
        assert (mnist.cache_dir() / (name + ".gz")).is_file()
    assert not list(mnist.cache_dir().glob("*.part"))  # no partial downloads left behind


def test_download_failure_is_reported(isolated, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", ((isolated / "empty").as_uri() + "/",))
    with pytest.raises(MNISTError, match="download into .*download failed"):
        load_mnist(download=True)


# ---- the real, bundled files ---------------------------------------------------------------------------------
@pytest.fixture
def bundled_only(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADFLOW_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if not all((mnist.bundled_dir() / (n + ".gz")).is_file() for n in NAMES):
        pytest.skip("the bundled data/mnist copy is not present (not a source checkout)")


def test_bundled_test_split_verifies_and_loads(bundled_only):
    ds = MNIST(train=False, download=False)
    assert len(ds) == 10000 and ds.images.shape == (10000, 784)
    assert numpy.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.images.dtype == numpy.float32 and ds.images.max() == 1.0 and ds.images.min() == 0.0


def test_bundled_train_split_verifies_and_loads(bundled_only):
    x, y = load_mnist(download=False)
    assert x.shape == (60000, 784) and y.shape == (60000,)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert numpy.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
