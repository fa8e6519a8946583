"""DataLoader worker processes, samplers, pin_memory and the shared resident device copy (issues 13, 10.9)."""
import os
import time

import numpy
import pytest
import torch

import gradflow as gf
from gradflow import backend
from gradflow import data as D


class Squares(D.Dataset):
    """A map-style dataset with per-sample Python work and a random augmentation."""

    def __init__(self, n=37):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        noise = numpy.random.random()  # seeded per worker: reproducible
        return gf.tensor([float(i), float(i) ** 2 + noise]), i % 3


class Pids(D.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        info = D.get_worker_info()
        return numpy.array([i, os.getpid(), -1 if info is None else info.id])


class Broken(D.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 7:
            raise ValueError(f"bad sample {i}")
        return numpy.array([i])


class Slow(D.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        time.sleep(0.05 * (i % 3))
        return numpy.array([i])


def _epoch(loader):
    return [tuple(b.numpy().tolist() if isinstance(b, gf.Tensor) else b for b in batch) for batch in loader]


def test_workers_match_single_process_and_are_deterministic():
    single = D.DataLoader(Slow(), batch_size=3, shuffle=True, generator=5)
    multi = D.DataLoader(Slow(), batch_size=3, shuffle=True, generator=5, num_workers=2)
    a = [b.numpy().ravel().tolist() for b in single]
    b = [b.numpy().ravel().tolist() for b in multi]
    assert a == b and sorted(sum(a, [])) == list(range(8))  # same order, in order despite uneven delays
    first = _epoch(D.DataLoader(Squares(), batch_size=5, shuffle=True, generator=1, num_workers=2))
    again = _epoch(D.DataLoader(Squares(), batch_size=5, shuffle=True, generator=1, num_workers=2))
    assert first == again  # seeded: the same batches, augmentation included


def test_real_processes_and_worker_info():
    loader = D.DataLoader(Pids(), batch_size=2, num_workers=3)
    rows = numpy.concatenate([b.numpy() for b in loader])
    assert rows[:, 0].tolist() == list(range(12))
    assert os.getpid() not in set(rows[:, 1]) and len(set(rows[:, 1])) == 3
    assert rows[:, 2].tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]  # round-robin
    assert D.get_worker_info() is None


def test_worker_init_fn_and_seeds():
    def init(worker_id):
        info = D.get_worker_info()
        assert info.id == worker_id and info.num_workers == 2
        numpy.random.seed(1000 + worker_id)

    loader = D.DataLoader(Squares(8), batch_size=2, num_workers=2, worker_init_fn=init, generator=0)
    x = numpy.concatenate([b[0].numpy().astype(numpy.float64) for b in loader])
    noise = x[:, 1] - x[:, 0] ** 2
    draws = {0: numpy.random.RandomState(1000).random_sample(4), 1: numpy.random.RandomState(1001).random_sample(4)}
    expected = [draws[0][0], draws[0][1], draws[1][0], draws[1][1],   # batches 0, 1 on workers 0, 1
                draws[0][2], draws[0][3], draws[1][2], draws[1][3]]   # batches 2, 3
    numpy.testing.assert_allclose(noise, expected, atol=1e-4)  # float32 samples


def test_worker_error_is_reraised_with_traceback():
    loader = D.DataLoader(Broken(), batch_size=2, num_workers=2)
    with pytest.raises(ValueError) as info:
        list(loader)
    text = str(info.value)
    assert "Caught ValueError in DataLoader worker process 1" in text and "bad sample 7" in text
    assert "__getitem__" in text  # the worker's own traceback


def test_worker_init_error_is_reported():
    def bad_init(worker_id):
        raise KeyError("no config")

    with pytest.raises(KeyError, match="no config"):
        list(D.DataLoader(Slow(), batch_size=2, num_workers=1, worker_init_fn=bad_init))


def test_bounded_prefetch_and_clean_shutdown():
    loader = D.DataLoader(Slow(), batch_size=1, num_workers=2, prefetch_factor=1)
    it = iter(loader)
    next(it)
    it.close()  # abandoning an epoch shuts the workers down
    loader = D.DataLoader(Slow(), batch_size=1, num_workers=2, persistent_workers=True)
    list(loader)
    pool = loader._pool
    assert pool is not None and pool.alive()
    list(loader)
    assert loader._pool is pool  # reused across epochs
    pids = [w.pid for w in pool.workers]
    pool.shutdown()
    assert all(not w.is_alive() for w in pool.workers) and pids


def test_worker_death_is_reported():
    class Dies(D.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if D.get_worker_info() is not None:
                os._exit(3)
            return numpy.array([i])

    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(D.DataLoader(Dies(), batch_size=1, num_workers=1))


def test_dict_free_collate_fn_and_drop_last_and_pin_memory():
    loader = D.DataLoader(Squares(10), batch_size=4, drop_last=True, num_workers=2, pin_memory=True,
                          collate_fn=lambda samples: [s[1] for s in samples])
    assert list(loader) == [[0, 1, 2, 0], [1, 2, 0, 1]] and len(loader) == 2


def test_samplers_like_torch():
    ds = list(range(10))
    gf.manual_seed(0)
    order = list(D.RandomSampler(ds))
    assert sorted(order) == ds and order != ds
    assert len(list(D.RandomSampler(ds, replacement=True, num_samples=25))) == 25
    long = list(D.RandomSampler(ds, num_samples=15))
    assert len(long) == 15 and sorted(long[:10]) == ds  # a full permutation, then part of another
    assert list(D.SequentialSampler(ds)) == ds
    sub = list(D.SubsetRandomSampler([3, 5, 7], generator=1))
    assert sorted(sub) == [3, 5, 7]
    w = list(D.WeightedRandomSampler([0.0, 1.0, 0.0, 3.0], 200, generator=2))
    assert set(w) == {1, 3} and 100 < w.count(3) < 190
    assert sorted(D.WeightedRandomSampler([1, 1, 1], 3, replacement=False, generator=0)) == [0, 1, 2]
    with pytest.raises(RuntimeError):
        D.WeightedRandomSampler([1, 0], 2, replacement=False)
    bs = D.BatchSampler(D.SequentialSampler(ds), 4, drop_last=False)
    assert list(bs) == list(torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 4, False))
    assert len(bs) == 3 and len(D.BatchSampler(range(10), 4, True)) == 2
    # through a DataLoader
    loader = D.DataLoader(Squares(10), batch_sampler=bs)
    assert [b[1].tolist() for b in loader] == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0]]
    loader = D.DataLoader(D.TensorDataset(numpy.arange(10)), sampler=D.SubsetRandomSampler([1, 2, 3], generator=0),
                          batch_size=2)
    assert sorted(sum((b.tolist() for b in loader), [])) == [1, 2, 3]
    fast = D.DataLoader(D.TensorDataset(numpy.arange(10)), batch_sampler=bs)
    assert [b.tolist() for b in fast] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="mutually exclusive"):
        D.DataLoader(ds, batch_size=2, batch_sampler=bs)
    with pytest.raises(ValueError, match="num_workers"):
        D.DataLoader(ds, num_workers=-1)


def test_one_resident_copy_per_dataset(monkeypatch):
    """Issue 10 item 2.9: loaders over one dataset share one device copy; it is made once."""
    uploads = []
    real = backend.to_device

    def counting(array, device):
        if device == "cuda":
            if any(array is a for a in ds.arrays):
                uploads.append(array.shape)
            return array.copy()  # stands in for the device copy (the fake keeps batches on the host)
        return real(array, device)

    monkeypatch.setattr(backend, "to_device", counting)
    x = numpy.arange(20, dtype=numpy.float32).reshape(10, 2)
    ds = D.TensorDataset(x, numpy.arange(10))
    train, val = D.Subset(ds, numpy.arange(6)), D.Subset(ds, numpy.arange(6, 10))
    loaders = [D.DataLoader(ds, batch_size=4, device="cuda"), D.DataLoader(train, batch_size=4, device="cuda"),
               D.DataLoader(val, batch_size=4, device="cuda")]
    for _ in range(3):
        for loader in loaders:
            for _ in loader:
                pass
    assert sorted(uploads) == sorted([(10, 2), (10,)]), uploads  # the dataset once, for every loader and epoch


@pytest.mark.gpu
def test_resident_gpu_epochs_upload_no_indices():
    x = numpy.random.default_rng(0).standard_normal((100, 3)).astype(numpy.float32)
    ds = D.TensorDataset(x, numpy.arange(100))
    a = D.DataLoader(ds, batch_size=32, shuffle=True, device="cuda", generator=0)
    b = D.DataLoader(D.Subset(ds, numpy.arange(50)), batch_size=8, shuffle=True, device="cuda", generator=0)
    seen = sorted(int(i) for batch in a for i in batch[1].numpy())
    assert seen == list(range(100))
    list(b)
    assert D._RESIDENT[ds][("arrays", "cuda")][1][0].__class__.__module__.startswith("cupy")
    x1 = [batch[1].numpy().tolist() for batch in D.DataLoader(ds, 10, True, device="cuda", generator=3)]
    x2 = [batch[1].numpy().tolist() for batch in D.DataLoader(ds, 10, True, device="cuda", generator=3)]
    assert x1 == x2
