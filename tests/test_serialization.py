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
    with pytest.raises(ValueError, match="not a valid gradflow checkpoint: .*plain.npz"):
        serialization.load(tmp_path / "plain.npz")
    numpy.savez(tmp_path / "evil.npz", __gradflow_meta__=numpy.array([{"x": 1}], dtype=object))
    with pytest.raises(serialization.CheckpointError, match="not a valid gradflow checkpoint") as err:
        serialization.load(tmp_path / "evil.npz")
    assert "allow_pickle" not in str(err.value)  # never suggest unpickling an untrusted file


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


# ---- stale temporaries, permissions, symlinks --------------------------------------------------
def _dead_pid():
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _tmp_name(target, pid):
    return f"{target}.{serialization._HOST}-{pid}-0123abcd.tmp"


@pytest.mark.parametrize("how", ["save", "load"])
def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, how):
    import subprocess
    import sys
    path = tmp_path / "ckpt.npz"
    serialization.save({"x": 1}, path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _tmp_name("ckpt.npz", _dead_pid())
        live_other = _tmp_name("ckpt.npz", sleeper.pid)     # another process still writing
        live_own = _tmp_name("ckpt.npz", os.getpid())       # another thread of ours may be writing
        other_target = _tmp_name("other.npz", _dead_pid())  # not this file's
        other_host = f"ckpt.npz.elsewhere-{_dead_pid()}-0123abcd.tmp"  # a pid on another host says nothing
        legacy_old, legacy_new = "ckpt.npz.ab_cd123.tmp", "ckpt.npz.xyz98765.tmp"
        unrelated = "ckpt.npz.notes.tmp"
        for name in (dead, live_other, live_own, other_target, other_host, legacy_old, legacy_new, unrelated):
            (tmp_path / name).write_bytes(b"partial")
        day_ago = os.path.getmtime(tmp_path / legacy_old) - 2 * 24 * 3600
        os.utime(tmp_path / legacy_old, (day_ago, day_ago))
        if how == "save":
            serialization.save({"x": 2}, path)
        else:
            assert serialization.load(path) == {"x": 1}
        left = set(os.listdir(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert dead not in left and legacy_old not in left
    assert {live_other, live_own, other_target, other_host, legacy_new, unrelated, "ckpt.npz"} <= left


def test_a_killed_save_leaves_the_old_file_and_its_temporary_is_cleaned(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "ckpt.npz"
    serialization.save({"version": 1, "w": numpy.ones(10)}, path)
    code = (
        "import os, numpy, gradflow.serialization as s\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), 9)\n"   # die after writing, before the rename
        f"s.save({{'version': 2, 'w': numpy.zeros(10)}}, {str(path)!r})\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(serialization.__file__)))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(temps) == 1
    assert serialization.load(path)["version"] == 1   # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.npz"]       # and the dead writer's temporary is gone


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        serialization.save({"x": 1}, tmp_path / "a.npz")
        with open(tmp_path / "b.bin", "wb"):
            pass
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "a.npz").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "b.bin").st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_resaving_keeps_the_files_mode(tmp_path):
    path = tmp_path / "a.npz"
    serialization.save({"x": 1}, path)
    os.chmod(path, 0o640)
    serialization.save({"x": 2}, path)
    assert os.stat(path).st_mode & 0o777 == 0o640   # as open(path, "wb") would keep it


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_saving_to_a_symlink_writes_through_it(tmp_path, monkeypatch):
    real_dir, link_dir = tmp_path / "store", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target, link = real_dir / "ckpt.npz", link_dir / "latest.npz"
    serialization.save({"v": 1}, target)
    os.symlink(os.path.relpath(target, link_dir), link)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    serialization.save({"v": 2}, link)
    assert os.path.islink(link) and os.readlink(link) == os.path.relpath(target, link_dir)
    assert serialization.load(target) == {"v": 2} and serialization.load(link) == {"v": 2}
    (src, dst), = replaced
    assert os.path.dirname(src) == str(real_dir) and dst == str(target)  # atomic in the target's directory
    assert os.listdir(link_dir) == ["latest.npz"] and os.listdir(real_dir) == ["ckpt.npz"]
    os.unlink(target)  # a dangling link: the save creates its target
    serialization.save({"v": 3}, link)
    assert os.path.islink(link) and serialization.load(target) == {"v": 3}


# ---- files that are not (complete) checkpoints ------------------------------------------------
def _check_refused(path):
    with pytest.raises(serialization.CheckpointError) as err:
        serialization.load(path)
    message = str(err.value)
    assert str(path) in message and ("not a valid gradflow checkpoint" in message)
    assert "allow_pickle" not in message and "pickle=True" not in message
    return message


def test_truncated_empty_text_and_random_files_are_refused(tmp_path):
    good = tmp_path / "good.npz"
    serialization.save({"w": numpy.arange(1000.0), "meta": {"a": [1, 2]}}, good)
    data = good.read_bytes()
    for cut in (0, 1, 10, 100, len(data) // 2, len(data) - 22, len(data) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        _check_refused(bad)
    (tmp_path / "text.npz").write_text("epoch 3, loss 0.1\n" * 20)
    _check_refused(tmp_path / "text.npz")
    (tmp_path / "random.npz").write_bytes(numpy.random.default_rng(0).bytes(4096))
    _check_refused(tmp_path / "random.npz")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # one bit-flipped byte inside the array data: the CRC catches it
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    _check_refused(tmp_path / "flipped.npz")
    with pytest.raises(FileNotFoundError):
        serialization.load(tmp_path / "missing.npz")


def _npy(array=None, header=None, payload=b""):
    import io
    buf = io.BytesIO()
    if header is None:
        numpy.lib.format.write_array(buf, array, allow_pickle=False)
        return buf.getvalue()
    numpy.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def _archive(path, entries):
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, blob in entries.items():
            z.writestr(name + ".npy", blob)
    return path


def _meta(text):
    return _npy(numpy.frombuffer(text.encode(), dtype=numpy.uint8))


def test_crafted_metadata_is_refused(tmp_path):
    import json
    ok = {"format": "gradflow", "version": 1}
    cases = {
        "not_json": {"__gradflow_meta__": _meta("{this is not json")},
        "not_utf8": {"__gradflow_meta__": _npy(numpy.frombuffer(b"\xff\xfe\x00{", dtype=numpy.uint8))},
        "meta_not_bytes": {"__gradflow_meta__": _npy(numpy.zeros(3))},
        "missing_keys": {"__gradflow_meta__": _meta(json.dumps({"format": "gradflow"}))},
        "a_list": {"__gradflow_meta__": _meta("[1, 2]")},
        "deep_json": {"__gradflow_meta__": _meta('{"format": "gradflow", "version": 1, "data": '
                                                  + "[" * 100000 + "]" * 100000 + "}")},
        "deep_data": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": "X"}).replace(
            '"X"', '{"a": ' * 5000 + "1" + "}" * 5000))},
        "missing_array": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": {"w": {"__tensor__": "a0"}}}))},
        "bad_ref": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": {"w": {"__tensor__": [1]}}}))},
        "bad_dict_items": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": {"__dict__": [[[1], 2]]}}))},
        "object_array": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": {"__ndarray__": "a0"}})),
                         "a0": _npy(header={"descr": "|O", "fortran_order": False, "shape": (2,)},
                                    payload=b"\x80\x04N." * 2)},
        "stray_entry": {"__gradflow_meta__": _meta(json.dumps({**ok, "data": 1})), "../../etc/x": _npy(numpy.ones(1))},
    }
    for name, entries in cases.items():
        _check_refused(_archive(tmp_path / f"{name}.npz", entries))
    # a compressed archive was not written by gradflow.save (and could unpack to far more than its size)
    import zipfile
    with zipfile.ZipFile(tmp_path / "deflated.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__gradflow_meta__.npy", _meta(json.dumps({**ok, "data": 1})))
    _check_refused(tmp_path / "deflated.npz")


def test_a_header_promising_more_data_than_the_file_holds_allocates_nothing(tmp_path):
    import json
    import tracemalloc
    meta = _meta(json.dumps({"format": "gradflow", "version": 1, "data": {"w": {"__tensor__": "a0"}}}))
    huge = {"descr": "<f8", "fortran_order": False, "shape": (2 ** 40,)}  # 8 TiB promised, 16 bytes held
    paths = [_archive(tmp_path / "huge.npz", {"__gradflow_meta__": meta, "a0": _npy(header=huge, payload=b"\0" * 16)}),
             _archive(tmp_path / "huge_meta.npz", {"__gradflow_meta__": _npy(
                 header={"descr": "|u1", "fortran_order": False, "shape": (2 ** 45,)}, payload=b"{}")}),
             _archive(tmp_path / "short.npz", {"__gradflow_meta__": meta, "a0": _npy(
                 header={"descr": "<f4", "fortran_order": False, "shape": (1000,)}, payload=b"\0" * 400)})]
    tracemalloc.start()
    try:
        for path in paths:
            assert "promises" in _check_refused(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_valid_file_still_loads_writable_arrays(tmp_path):
    serialization.save({"t": gradflow.Tensor(numpy.arange(6, dtype=numpy.float32).reshape(2, 3)),
                        "f": numpy.asfortranarray(numpy.arange(6.0).reshape(2, 3))}, tmp_path / "v.npz")
    back = serialization.load(tmp_path / "v.npz")
    back["t"].data[0, 0] = 7  # writable, like numpy.load's arrays
    assert back["t"].numpy().tolist() == [[7, 1, 2], [3, 4, 5]]
    assert back["f"].tolist() == numpy.arange(6.0).reshape(2, 3).tolist()
