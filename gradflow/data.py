"""Datasets and mini-batch loading, with PyTorch's names.

``DataLoader`` has a fast path for ``TensorDataset`` (and ``Subset``s of one): a batch is
one fancy-index of each whole array with a slice of a permutation, never a Python loop
over samples. On the GPU a dataset that fits comfortably is copied to the device once and
batches are sliced there, so an epoch costs no host-to-device traffic besides the indices.
"""
import math

import numpy

from gradflow import backend
from gradflow import random as gf_random
from gradflow.tensor import Tensor

# A dataset up to this size is kept resident on the GPU by DataLoader(device='cuda').
RESIDENT_BYTES = 2 << 30


class Dataset:
    """Anything with ``__len__`` and ``__getitem__(i)`` returning one sample (a tuple or a value)."""

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


def _raw(x):
    return x.data if isinstance(x, Tensor) else (x if hasattr(x, "shape") else numpy.asarray(x))


class TensorDataset(Dataset):
    """Samples are rows of equally long arrays (inputs, targets, ...)."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        self.arrays = tuple(_raw(t) for t in tensors)
        lengths = [len(a) for a in self.arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorDataset: tensors have different first dimensions {lengths}")

    @property
    def tensors(self):
        return tuple(Tensor(a) for a in self.arrays)

    def __getitem__(self, index):
        return tuple(Tensor(a[index]) for a in self.arrays)

    def __len__(self):
        return len(self.arrays[0])


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = numpy.asarray(indices, dtype=numpy.int64)

    def __getitem__(self, index):
        if isinstance(index, (int, numpy.integer)):
            return self.dataset[int(self.indices[index])]
        return self.dataset[self.indices[index]]

    def __len__(self):
        return len(self.indices)


def _numpy_generator(generator):
    """A numpy Generator from None (the global gradflow stream), a gradflow or numpy Generator, or a seed."""
    if generator is None:
        return gf_random.default_generator.numpy  # looked up now: manual_seed replaces it
    if isinstance(generator, gf_random.Generator):
        return generator.numpy
    if isinstance(generator, numpy.random.Generator):
        return generator
    if isinstance(generator, (int, numpy.integer)):
        return numpy.random.default_rng(int(generator))
    raise TypeError(f"generator must be None, a seed, a gradflow.random.Generator or a numpy Generator, "
                    f"got {type(generator).__name__}")


def random_split(dataset, lengths, generator=None):
    """Split into non-overlapping random ``Subset``s of the given lengths (ints or fractions summing to 1)."""
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0) \
            and sum(lengths) <= 1 + 1e-9:
        sizes = [int(math.floor(n * frac)) for frac in lengths]
        for i in range(n - sum(sizes)):  # the remainder goes round-robin, as in torch
            sizes[i % len(sizes)] += 1
        lengths = sizes
    if any(int(x) != x or x < 0 for x in lengths):
        raise ValueError(f"random_split: lengths must be non-negative ints or fractions summing to 1, got {lengths}")
    if sum(lengths) != n:
        raise ValueError(f"random_split: lengths {lengths} sum to {sum(lengths)}, but the dataset has {n} samples")
    order = _numpy_generator(generator).permutation(n)
    subsets, start = [], 0
    for length in lengths:
        subsets.append(Subset(dataset, order[start:start + int(length)]))
        start += int(length)
    return subsets


def _tensor_source(dataset):
    """(arrays, indices or None) when ``dataset`` is a TensorDataset or a chain of Subsets of one."""
    indices = None
    while isinstance(dataset, Subset):
        indices = dataset.indices if indices is None else dataset.indices[indices]
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset):
        return dataset.arrays, indices
    return None, None


def default_collate(samples):
    """Stack a list of samples (tuples of Tensors/arrays/numbers, or single values) into batch Tensors."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(default_collate([s[i] for s in samples]) for i in range(len(first)))
    arrays = [_raw(s) for s in samples]
    xp = backend.xp_of(arrays[0]) or numpy
    return Tensor(xp.stack(arrays))


class DataLoader:
    """Iterate over ``dataset`` in mini-batches of Tensors.

    ``shuffle`` draws a new permutation every epoch from ``generator`` (default: the global
    ``gradflow.random`` stream, so ``manual_seed`` makes epochs reproducible). ``device``
    puts batches there (default: where the data already is).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, generator=None, device=None,
                 collate_fn=None, sampler=None):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle (the sampler orders "
                             "the samples; DistributedSampler shuffles itself)")
        self.sampler = sampler  # an iterable of dataset indices with len(), e.g. DistributedSampler
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = None if device is None else backend.check_device(device)
        self.collate_fn = collate_fn or default_collate
        if isinstance(generator, (int, numpy.integer)):
            generator = numpy.random.default_rng(int(generator))
        _numpy_generator(generator)  # reject a wrong type now rather than at the first epoch
        self._generator = generator
        self._resident = None  # (host arrays, their device copies) for the fast path

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # The generator's state belongs to a checkpoint when it is the loader's own.
    def state_dict(self):
        if self._generator is None:
            return {}
        return {"generator": _numpy_generator(self._generator).bit_generator.state}

    def load_state_dict(self, state):
        if "generator" in state:
            _numpy_generator(self._generator).bit_generator.state = state["generator"]

    def _order(self, n):
        if self.sampler is not None:
            return numpy.fromiter(iter(self.sampler), dtype=numpy.int64)
        if self.shuffle:
            return _numpy_generator(self._generator).permutation(n)
        return None

    def _source(self, arrays):
        """The arrays to slice batches from: on the GPU, a copy made once and kept for every epoch."""
        device = self.device
        if device != "cuda" or all(backend.device_of(a) == device for a in arrays):
            return arrays
        if sum(a.nbytes for a in arrays) > RESIDENT_BYTES:
            return arrays  # too big to keep: batches are moved one by one
        cached = self._resident
        if cached is None or cached[0] is not arrays:
            cached = self._resident = (arrays, tuple(backend.to_device(a, device) for a in arrays))
        return cached[1]

    def __iter__(self):
        arrays, indices = _tensor_source(self.dataset)
        if arrays is not None:
            yield from self._iter_arrays(arrays, indices)
        else:
            yield from self._iter_samples()

    def _batches(self, n):
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield start, min(start + self.batch_size, n)

    def _iter_arrays(self, arrays, indices):
        n = len(arrays[0]) if indices is None else len(indices)
        source = self._source(arrays)
        where = backend.device_of(source[0])  # indices must live with the arrays they index
        order = self._order(n)
        if order is not None:
            n = len(order)  # a sampler may yield fewer (or repeated) indices
        if order is not None:
            order = backend.to_device(order, where)
        if indices is not None:
            indices = backend.to_device(indices, where)
        for start, stop in self._batches(n):
            take = slice(start, stop) if order is None else order[start:stop]
            if indices is not None:
                take = indices[take]
            batch = tuple(Tensor(a[take]) for a in source)  # a contiguous slice is a view, no copy
            if self.device is not None:
                batch = tuple(b if b.device == self.device else Tensor(backend.to_device(b.data, self.device))
                              for b in batch)
            yield batch if len(batch) > 1 else batch[0]

    def _iter_samples(self):
        n = len(self.dataset)
        order = self._order(n)
        if order is not None:
            n = len(order)
        for start, stop in self._batches(n):
            ids = range(start, stop) if order is None else order[start:stop]
            batch = self.collate_fn([self.dataset[int(i)] for i in ids])
            if self.device is not None:
                batch = _move(batch, self.device)
            yield batch


class DistributedSampler:
    """The indices of this rank's share of ``dataset``, for ``DataLoader(sampler=...)``.

    Every epoch the indices are shuffled (``shuffle``) by a generator seeded with
    ``(seed, epoch)`` — the same permutation on every rank; call ``set_epoch(epoch)`` before each epoch (``fit``
    does) — then rank r takes every ``num_replicas``-th index starting at r. So each epoch
    the ranks see disjoint shares that together cover the dataset exactly once: when it
    does not divide evenly, the order is padded with its first indices (a few samples are
    seen twice) or, with ``drop_last``, cut to a multiple of ``num_replicas``.
    ``num_replicas``/``rank`` default to the process group's.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from gradflow import distributed
            if not distributed.is_initialized():
                raise RuntimeError("DistributedSampler: pass num_replicas and rank, or call "
                                   "gradflow.distributed.init_process_group() first")
            num_replicas = distributed.get_world_size() if num_replicas is None else num_replicas
            rank = distributed.get_rank() if rank is None else rank
        if int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive integer, got {num_replicas!r}")
        if int(rank) != rank or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0
        n = len(dataset)
        if drop_last and n % self.num_replicas:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        """Shuffle differently in each epoch (the same way on every rank)."""
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = numpy.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = numpy.arange(n)
        if self.total_size > n:  # pad with the first indices (repeated as often as needed)
            order = numpy.concatenate([order, numpy.resize(order, self.total_size - n)])
        else:
            order = order[:self.total_size]
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())


def _move(batch, device):
    if isinstance(batch, tuple):
        return tuple(_move(b, device) for b in batch)
    if isinstance(batch, Tensor) and batch.device != device:
        return Tensor(backend.to_device(batch.data, device))
    return batch
