"""Datasets, random_split and DataLoader (fast path, generic path, shuffling, devices)."""
import numpy
import pytest

import gradflow
from gradflow.data import DataLoader, Dataset, Subset, TensorDataset, random_split


def _dataset(n=10):
    x = numpy.arange(n * 3, dtype=numpy.float32).reshape(n, 3)
    y = numpy.arange(n, dtype=numpy.int64)
    return TensorDataset(x, y)


class Squares(Dataset):
    """A map-style dataset without arrays, to exercise the per-sample path."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return numpy.array([i, i * i], dtype=numpy.float32), i


def test_tensor_dataset_indexing_and_length():
    ds = _dataset(5)
    assert len(ds) == 5
    x, y = ds[2]
    assert x.tolist() == [6.0, 7.0, 8.0] and y.item() == 2
    with pytest.raises(ValueError, match="different first dimensions"):
        TensorDataset(numpy.zeros((3, 2)), numpy.zeros(4))


def test_loader_sequential_batches_cover_everything_in_order():
    loader = DataLoader(_dataset(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x, y = batches[0]
    assert isinstance(x, gradflow.Tensor) and x.dtype == numpy.float32 and x.shape == (4, 3)
    assert y.dtype == numpy.int64


def test_loader_drop_last():
    loader = DataLoader(_dataset(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [len(b[1]) for b in loader] == [4, 4]


def test_loader_shuffle_is_a_permutation_and_seeded():
    gradflow.manual_seed(3)
    first = numpy.concatenate([y.numpy() for _, y in DataLoader(_dataset(50), batch_size=8, shuffle=True)])
    assert sorted(first.tolist()) == list(range(50)) and first.tolist() != list(range(50))
    gradflow.manual_seed(3)
    again = numpy.concatenate([y.numpy() for _, y in DataLoader(_dataset(50), batch_size=8, shuffle=True)])
    assert numpy.array_equal(first, again)
    # rows stay aligned: x[i] belongs to label y[i]
    for x, y in DataLoader(_dataset(50), batch_size=8, shuffle=True):
        assert numpy.array_equal(x.numpy()[:, 0], y.numpy() * 3)


def test_loader_new_order_every_epoch_and_own_generator_state():
    loader = DataLoader(_dataset(30), batch_size=30, shuffle=True, generator=123)
    state = loader.state_dict()
    e1 = next(iter(loader))[1].numpy()
    e2 = next(iter(loader))[1].numpy()
    assert not numpy.array_equal(e1, e2)
    loader.load_state_dict(state)
    assert numpy.array_equal(next(iter(loader))[1].numpy(), e1)


def test_loader_accepts_numpy_and_gradflow_generators():
    a = DataLoader(_dataset(20), batch_size=20, shuffle=True, generator=numpy.random.default_rng(5))
    b = DataLoader(_dataset(20), batch_size=20, shuffle=True, generator=gradflow.random.Generator(5))
    assert numpy.array_equal(next(iter(a))[1].numpy(), next(iter(b))[1].numpy())
    with pytest.raises(TypeError, match="generator"):
        DataLoader(_dataset(4), shuffle=True, generator="seed")


def test_loader_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_dataset(4), batch_size=0)


def test_fast_path_does_not_call_getitem(monkeypatch):
    ds = _dataset(12)

    def forbidden(self, index):
        raise AssertionError("per-sample __getitem__ used on a TensorDataset")
    monkeypatch.setattr(TensorDataset, "__getitem__", forbidden)
    assert sum(len(y) for _, y in DataLoader(ds, batch_size=5, shuffle=True)) == 12


def test_generic_dataset_is_collated():
    batches = list(DataLoader(Squares(5), batch_size=2))
    x, y = batches[0]
    assert x.shape == (2, 2) and x.numpy().tolist() == [[0, 0], [1, 1]]
    assert y.numpy().tolist() == [0, 1] and y.dtype == numpy.int64
    assert [len(b[1]) for b in batches] == [2, 2, 1]


def test_random_split_lengths_and_fractions():
    ds = _dataset(10)
    a, b = random_split(ds, [7, 3], generator=0)
    ids = sorted(int(a[i][1].item()) for i in range(len(a))) + sorted(int(b[i][1].item()) for i in range(len(b)))
    assert len(a) == 7 and len(b) == 3 and sorted(ids) == list(range(10))
    c, d, e = random_split(ds, [0.5, 0.3, 0.2], generator=0)
    assert (len(c), len(d), len(e)) == (5, 3, 2)
    f, g = random_split(_dataset(11), [0.5, 0.5], generator=0)  # remainder goes to the first
    assert (len(f), len(g)) == (6, 5)
    with pytest.raises(ValueError, match="sum to"):
        random_split(ds, [5, 4])


def test_random_split_is_seeded():
    a1, _ = random_split(_dataset(20), [10, 10], generator=1)
    a2, _ = random_split(_dataset(20), [10, 10], generator=1)
    assert numpy.array_equal(a1.indices, a2.indices)


def test_subset_uses_fast_path_and_maps_indices():
    ds = _dataset(10)
    sub = Subset(Subset(ds, [9, 8, 7, 6, 5]), [0, 2, 4])
    assert [int(y.item()) for _, y in [sub[i] for i in range(3)]] == [9, 7, 5]
    got = numpy.concatenate([y.numpy() for _, y in DataLoader(sub, batch_size=2)])
    assert got.tolist() == [9, 7, 5]
    shuffled = numpy.concatenate([y.numpy() for _, y in DataLoader(sub, batch_size=2, shuffle=True)])
    assert sorted(shuffled.tolist()) == [5, 7, 9]


def test_single_tensor_dataset_yields_tensors():
    batches = list(DataLoader(TensorDataset(numpy.ones((5, 2), numpy.float32)), batch_size=2))
    assert all(isinstance(b, gradflow.Tensor) for b in batches)


def test_loader_device_cpu_keeps_data_on_cpu():
    x, y = next(iter(DataLoader(_dataset(4), batch_size=4, device="cpu")))
    assert x.device == "cpu" and y.device == "cpu"


@pytest.mark.gpu
def test_loader_keeps_small_dataset_resident_on_gpu():
    loader = DataLoader(_dataset(40), batch_size=16, shuffle=True, device="cuda")
    batches = list(loader)
    assert all(x.device == "cuda" and y.device == "cuda" for x, y in batches)
    resident = loader._resident[1]
    list(loader)
    assert loader._resident[1] is resident  # copied once, reused every epoch
    ys = numpy.concatenate([y.numpy() for _, y in batches])
    assert sorted(ys.tolist()) == list(range(40))
    for x, y in batches:
        assert numpy.array_equal(x.numpy()[:, 0], y.numpy() * 3)
