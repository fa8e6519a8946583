"""save/load: what round-trips, what is refused, and that a failed save never destroys the previous file."""
import os

import numpy
import pytest

import gradflow
from gradflow import serialization


def test_round_trip_of_nested_structures(tmp_path):
    obj = {
        "weights": gradflow.Tensor(numpy.arange(6, dtype=numpy.float32).reshape(2, 3)),
        "counts": gradflow.Tensor(numpy.array([1, 2], dtype=numpy.int64)),
        "raw": numpy.array([1.5, 2.5]),
        "nested": {"list": [1, 2.5, "three", None, True], "tuple": (0.9, 0.999)},
        "int_keys": {0: "a", 7: {"deep": numpy.zeros(0)}},
        "__dunder__": 1,
        "big": 2 ** 100,
        "special": [float("inf"), -float("inf")],
        "empty": {},
    }
    serialization.save(obj, tmp_path / "x.npz")
    back = serialization.load(tmp_path / "x.npz")
    assert isinstance(back["weights"], gradflow.Tensor) and back["weights"].dtype == numpy.float32
    assert back["weights"].numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["counts"].dtype == numpy.int64
    assert isinstance(back["raw"], numpy.ndarray) and back["raw"].tolist() == [1.5, 2.5]
    assert back["nested"] == {"list": [1, 2.5, "three", None, True], "tuple": (0.9, 0.999)}
    assert list(back["int_keys"]) == [0, 7] and back["int_keys"][7]["deep"].shape == (0,)
    assert back["__dunder__"] == 1 and back["big"] == 2 ** 100 and back["special"] == [float("inf"), -float("inf")]
    assert back["empty"] == {}


def test_numpy_scalars_become_python_numbers(tmp_path):
    serialization.save({"a": numpy.float32(0.5), "b": numpy.int64(3)}, tmp_path / "s.npz")
    assert serialization.load(tmp_path / "s.npz") == {"a": 0.5, "b": 3}


def test_unsupported_objects_are_refused_without_writing(tmp_path):
    with pytest.raises(TypeError, match="cannot store an object of type set"):
        serialization.save({"bad": {1, 2}}, tmp_path / "a.npz")
    with pytest.raises(TypeError, match="object arrays"):
        serialization.save(numpy.array([{}, None], dtype=object), tmp_path / "b.npz")
    assert os.listdir(tmp_path) == []


def test_foreign_and_pickled_files_are_refused(tmp_path):
    numpy.savez(tmp_path / "plain.npz", a=numpy.zeros(2))
    with pytest.raises(ValueError, match="not a gradflow file"):
        serialization.load(tmp_path / "plain.npz")
    numpy.savez(tmp_path / "evil.npz", __gradflow_meta__=numpy.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        serialization.load(tmp_path / "evil.npz")


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    serialization.save({"version": 1, "w": numpy.ones(1000)}, path)
    real_write = numpy.lib.format.write_array
    calls = []

    def write_then_fail(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second array: the temporary file is half written
            fp.write(b"partial garbage")
            raise OSError("disk full")
        return real_write(fp, array, *args, **kwargs)
    monkeypatch.setattr(numpy.lib.format, "write_array", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        serialization.save({"version": 2, "w": numpy.zeros(1000), "v": numpy.zeros(3)}, path)
    monkeypatch.undo()
    assert len(calls) == 2
    back = serialization.load(path)
    assert back["version"] == 1 and back["w"].sum() == 1000
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file was removed


def test_save_replaces_atomically_and_fsyncs(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    serialization.save({"x": 1}, tmp_path / "f.npz")
    assert synced and len(replaced) == 1
    src, dst = replaced[0]
    assert os.path.dirname(src) == str(tmp_path) and dst == str(tmp_path / "f.npz")


@pytest.mark.gpu
def test_map_location(tmp_path):
    serialization.save({"t": gradflow.Tensor(numpy.ones(3, dtype=numpy.float32))}, tmp_path / "g.npz")
    back = serialization.load(tmp_path / "g.npz", map_location="cuda")
    assert back["t"].device == "cuda"
