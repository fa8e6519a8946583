"""Datasets and mini-batch loading, with PyTorch's names.

``DataLoader`` has a fast path for ``TensorDataset`` (and ``Subset``s of one): a batch is
one fancy-index of each whole array with a slice of a permutation, never a Python loop
over samples. On the GPU a dataset that fits comfortably is copied to the device once and
batches are sliced there, so an epoch costs no host-to-device traffic besides the indices.
"""
import math
import weakref

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
    """Stack a list of samples into a batch, as ``torch.utils.data.default_collate`` does.

    Tensors, arrays and numbers stack into one Tensor with a new leading batch axis; tuples
    and lists collate position by position (into a tuple), dicts key by key, nested to any
    depth; strings stay a list. Anything else, or samples whose shapes differ, raises an
    error naming the field (``sample['image']``, ``sample[1]``) and the shapes.
    """
    if not len(samples):
        raise ValueError("default_collate: got an empty batch")
    return _collate(samples, "sample")


def _collate(samples, field):
    first = samples[0]
    if isinstance(first, dict):
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or s.keys() != first.keys():
                got = sorted(map(str, s)) if isinstance(s, dict) else type(s).__name__
                raise ValueError(f"default_collate: {field} of sample 0 has keys {sorted(map(str, first))} but "
                                 f"sample {i} has {got}; every sample needs the same keys")
        return {k: _collate([s[k] for s in samples], f"{field}[{k!r}]") for k in first}
    if isinstance(first, (tuple, list)):
        for i, s in enumerate(samples):
            if not isinstance(s, (tuple, list)) or len(s) != len(first):
                got = f"{len(s)} elements" if isinstance(s, (tuple, list)) else f"a {type(s).__name__}"
                raise ValueError(f"default_collate: {field} has {len(first)} elements in sample 0 but {got} in "
                                 f"sample {i}; every sample needs the same structure")
        return tuple(_collate([s[j] for s in samples], f"{field}[{j}]") for j in range(len(first)))
    if isinstance(first, str):
        return list(samples)
    arrays = []
    for i, s in enumerate(samples):
        if isinstance(s, Tensor):
            a = s.data
        elif hasattr(s, "shape") and hasattr(s, "dtype"):  # NumPy/CuPy arrays and NumPy scalars
            a = s
        elif isinstance(s, (bool, int, float, complex)):
            a = numpy.asarray(s)  # int -> int64, float -> float64, as torch's collate
        else:
            raise TypeError(f"default_collate: cannot batch {field} of type {type(s).__name__} (sample {i}); "
                            f"samples may hold Tensors, arrays, numbers, strings, and tuples, lists or dicts of "
                            f"them; pass a collate_fn for anything else")
        if a.dtype.kind not in "biufc":
            raise TypeError(f"default_collate: cannot batch {field} of dtype {a.dtype} (sample {i}); "
                            f"only numeric data stacks into a Tensor")
        if a.shape != getattr(arrays[0] if arrays else a, "shape"):
            raise ValueError(f"default_collate: cannot stack {field}: sample 0 has shape {tuple(arrays[0].shape)} "
                             f"but sample {i} has shape {tuple(a.shape)}; make every sample the same shape "
                             f"(pad or crop) or pass a collate_fn")
        arrays.append(a)
    xp = backend.xp_of(arrays[0]) or numpy
    return Tensor(xp.stack(arrays))


class DataLoader:
    """Iterate over ``dataset`` in mini-batches of Tensors.

    ``shuffle`` draws a new permutation every epoch from ``generator`` (default: the global
    ``gradflow.random`` stream, so ``manual_seed`` makes epochs reproducible). ``device``
    puts batches there (default: where the data already is).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, generator=None, device=None,
                 collate_fn=None, sampler=None, *, batch_sampler=None, num_workers=0, pin_memory=False, timeout=0,
                 worker_init_fn=None, prefetch_factor=None, persistent_workers=False,
                 multiprocessing_context=None):
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with batch_size, shuffle, "
                                 "sampler, and drop_last")
        elif batch_size is None:
            raise ValueError("DataLoader: batch_size=None (no automatic batching) is not supported; pass a "
                             "positive batch_size, or iterate over the dataset itself for single samples")
        elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, float, numpy.integer)) \
                or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle (the sampler orders "
                             "the samples; DistributedSampler shuffles itself)")
        if int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers option should be non-negative, got {num_workers!r}")
        if num_workers == 0 and (prefetch_factor is not None or persistent_workers):
            raise ValueError("DataLoader: prefetch_factor and persistent_workers need num_workers > 0")
        if prefetch_factor is not None and (int(prefetch_factor) != prefetch_factor or prefetch_factor < 1):
            raise ValueError(f"DataLoader: prefetch_factor must be a positive integer, got {prefetch_factor!r}")
        if timeout < 0:
            raise ValueError("DataLoader: timeout option should be non-negative")
        self.batch_sampler = batch_sampler
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers else prefetch_factor
        self.persistent_workers = persistent_workers
        self.multiprocessing_context = multiprocessing_context
        self._pool = None  # the worker processes, kept between epochs with persistent_workers
        self.sampler = sampler  # an iterable of dataset indices with len(), e.g. DistributedSampler
        self.dataset = dataset
        self.batch_size = None if batch_sampler is not None else int(batch_size)
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
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
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

    def _source(self, arrays, root=None):
        """The arrays to slice batches from: on the GPU, one resident copy per dataset and device,
        made once and shared by every DataLoader (and Subset) over that dataset."""
        device = self.device
        if device != "cuda" or all(backend.device_of(a) == device for a in arrays):
            return arrays
        if sum(a.nbytes for a in arrays) > RESIDENT_BYTES:
            return arrays  # too big to keep: batches are moved one by one
        return _resident(root if root is not None else self.dataset, arrays, device, "arrays",
                         lambda: tuple(backend.to_device(a, device) for a in arrays))

    def __iter__(self):
        arrays, indices = _tensor_source(self.dataset)
        if arrays is not None:
            yield from self._iter_arrays(arrays, indices)
        elif self.num_workers > 0:
            yield from self._iter_workers()
        else:
            yield from self._iter_samples()

    def _index_batches(self, n):
        """The dataset indices of each batch, in order (a range, an array or a list)."""
        if self.batch_sampler is not None:
            for batch in self.batch_sampler:
                yield list(batch)
            return
        order = self._order(n)
        if order is not None:
            n = len(order)
        for start, stop in self._batches(n):
            yield range(start, stop) if order is None else order[start:stop]

    def _batches(self, n):
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield start, min(start + self.batch_size, n)

    def _iter_arrays(self, arrays, indices):
        n = len(arrays[0]) if indices is None else len(indices)
        root = _root_dataset(self.dataset)
        source = self._source(arrays, root)
        where = backend.device_of(source[0])  # indices must live with the arrays they index
        if self.batch_sampler is not None:
            order, batches = None, [numpy.asarray(b, dtype=numpy.int64) for b in self.batch_sampler]
        else:
            order = self._device_order(n, where)
            if order is not None:
                n = len(order)  # a sampler may yield fewer (or repeated) indices
            batches = [slice(start, stop) for start, stop in self._batches(n)]
        if indices is not None and where != "cpu":  # a Subset's indices: uploaded once, kept with the data
            host = indices
            indices = _resident(root, (host,), where, ("indices", id(self.dataset)),
                                lambda: (backend.to_device(host, where),))[0]
        for take in batches:
            if order is not None:
                take = order[take]
            elif where != "cpu" and not isinstance(take, slice):
                take = backend.to_device(take, where)
            if indices is not None:
                take = indices[take]
            batch = tuple(Tensor(a[take]) for a in source)  # a contiguous slice is a view, no copy
            if self.device is not None:
                batch = tuple(b if b.device == self.device else Tensor(backend.to_device(b.data, self.device))
                              for b in batch)
            yield batch if len(batch) > 1 else batch[0]

    def _device_order(self, n, where):
        """This epoch's order where the data lives: drawn on the device for resident GPU data (no
        upload of a host permutation each epoch), from the host generator otherwise."""
        if where == "cpu" or self.sampler is not None or not self.shuffle:
            order = self._order(n)
            return order if order is None or where == "cpu" else backend.to_device(order, where)
        seed = int(_numpy_generator(self._generator).integers(2 ** 63))  # the loader's stream still decides
        return backend.cupy().random.RandomState(seed).permutation(n)

    def _iter_samples(self):
        for ids in self._index_batches(len(self.dataset)):
            batch = self.collate_fn([self.dataset[int(i)] for i in ids])
            yield self._deliver(batch)

    def _deliver(self, batch):
        if self.pin_memory:
            batch = _pin(batch)
        if self.device is not None:
            batch = _move(batch, self.device)
        return batch

    def _iter_workers(self):
        """Batches loaded by ``num_workers`` processes, delivered in order (see ``_WorkerPool``)."""
        batches = list(self._index_batches(len(self.dataset)))  # drawn first: the same order as without workers
        base_seed = int(_numpy_generator(self._generator).integers(2 ** 62))
        pool = self._pool
        if pool is None or not pool.alive():
            pool = _WorkerPool(self, base_seed)
            if self.persistent_workers:
                self._pool = pool
        try:
            for batch in pool.run(batches):
                yield self._deliver(batch)
        finally:
            if not self.persistent_workers:
                pool.shutdown()

    def __del__(self):
        pool = self.__dict__.get("_pool")
        if pool is not None:
            try:
                pool.shutdown()
            except Exception:  # interpreter shutdown: the workers are daemons and die with us
                pass


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
    if isinstance(batch, list):
        return [_move(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, Tensor) and batch.device != device:
        return Tensor(backend.to_device(batch.data, device))
    return batch


# ==== issue 13: samplers, worker processes, pinned memory, one resident device copy per dataset =========
class Sampler:
    """Base of the samplers: an iterable of dataset indices with a length."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A new random permutation each epoch (or ``num_samples`` draws with ``replacement``), from
    ``generator`` (default: gradflow's global stream, so ``manual_seed`` makes it reproducible)."""

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement should be a boolean value, but got replacement={replacement}")
        if num_samples is not None and (int(num_samples) != num_samples or num_samples <= 0):
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={num_samples}")
        self.data_source, self.replacement, self._num_samples = data_source, replacement, num_samples
        _numpy_generator(generator)
        self.generator = generator

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else int(self._num_samples)

    def __iter__(self):
        n, rng = len(self.data_source), _numpy_generator(self.generator)
        if self.replacement:
            return iter(rng.integers(0, n, size=self.num_samples).tolist())
        reps, rest = divmod(self.num_samples, n) if n else (0, 0)
        order = [rng.permutation(n) for _ in range(reps)] + ([rng.permutation(n)[:rest]] if rest else [])
        return iter(numpy.concatenate(order).tolist() if order else [])

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given ``indices`` in a new random order each epoch."""

    def __init__(self, indices, generator=None):
        self.indices = list(indices)
        _numpy_generator(generator)
        self.generator = generator

    def __iter__(self):
        order = _numpy_generator(self.generator).permutation(len(self.indices))
        return iter([self.indices[i] for i in order])

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability proportional to ``weights``."""

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        if int(num_samples) != num_samples or num_samples <= 0 or isinstance(num_samples, bool):
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={num_samples}")
        w = numpy.asarray(backend.to_numpy(weights.data) if isinstance(weights, Tensor) else weights,
                          dtype=numpy.float64)
        if w.ndim != 1:
            raise ValueError(f"weights should be a 1d sequence but given weights have shape {w.shape}")
        if not numpy.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not replacement and num_samples > (w > 0).sum():
            raise RuntimeError("cannot sample n_sample > prob_dist.size(-1) samples without replacement")
        self.weights, self.num_samples, self.replacement = w, int(num_samples), replacement
        _numpy_generator(generator)
        self.generator = generator

    def __iter__(self):
        rng = _numpy_generator(self.generator)
        return iter(rng.choice(len(self.weights), size=self.num_samples, replace=self.replacement,
                               p=self.weights / self.weights.sum()).tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Group the indices of ``sampler`` into lists of ``batch_size`` (the last shorter unless ``drop_last``)."""

    def __init__(self, sampler, batch_size, drop_last):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last}")
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), drop_last

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


# ---- one resident device copy per dataset -----------------------------------------------------------------
_RESIDENT = weakref.WeakKeyDictionary()  # root dataset -> {(key, device): (host arrays, device arrays)}


def _root_dataset(dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _resident(owner, host, device, key, upload):
    """The device copy of ``host`` (a tuple of arrays) kept for ``owner`` while it lives: every loader
    over the same dataset and device shares it, and it is rebuilt only if the host arrays change."""
    try:
        table = _RESIDENT.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: keep it on the loader's side (the old behaviour)
        return upload()
    entry = table.get((key, device))
    if entry is None or len(entry[0]) != len(host) or any(a is not b for a, b in zip(entry[0], host)):
        entry = table[(key, device)] = (tuple(host), upload())
    return entry[1]


# ---- pinned host memory ------------------------------------------------------------------------------------
def _pin(batch):
    """Copy host arrays into page-locked memory (faster, asynchronous uploads); a no-op without CUDA."""
    if isinstance(batch, tuple):
        return tuple(_pin(b) for b in batch)
    if isinstance(batch, list):
        return [_pin(b) for b in batch]
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    if isinstance(batch, Tensor) and batch.device == "cpu" and backend.cuda_is_available():
        import cupyx
        pinned = cupyx.empty_pinned(batch.shape, dtype=batch.dtype)
        pinned[...] = batch.data
        return Tensor(pinned)
    return batch


# ---- worker processes ---------------------------------------------------------------------------------------
class WorkerInfo:
    """What ``get_worker_info()`` returns inside a worker: id, num_workers, seed, dataset."""

    def __init__(self, id, num_workers, seed, dataset):
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self):
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker_info = None


def get_worker_info():
    """Inside a DataLoader worker process: its ``WorkerInfo``; in the main process: None."""
    return _worker_info


class _WorkerError:
    """An exception raised in a worker, carried to the main process with the worker's traceback."""

    def __init__(self, worker_id, exc):
        import traceback
        self.exc_type = type(exc)
        self.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.worker_id = worker_id

    def reraise(self):
        msg = (f"Caught {self.exc_type.__name__} in DataLoader worker process {self.worker_id}.\n"
               f"Original Traceback (most recent call last):\n{self.text}")
        try:
            exc = self.exc_type(msg)
        except Exception:  # an exception type whose constructor takes other arguments
            exc = RuntimeError(msg)
        raise exc


def _worker_loop(worker_id, num_workers, dataset, collate_fn, seed, init_fn, index_queue, result_queue):
    """Body of one worker process: load the batches it is sent until it gets None."""
    global _worker_info
    import random
    try:
        random.seed(seed)
        numpy.random.seed(seed % 2 ** 32)
        gf_random.manual_seed(seed)
        _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset)
        if init_fn is not None:
            init_fn(worker_id)
    except Exception as e:  # a failing worker_init_fn: report it for the first batch this worker gets
        init_error = _WorkerError(worker_id, e)
    else:
        init_error = None
    while True:
        try:
            job = index_queue.get()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if job is None:
            return
        batch_id, ids = job
        if init_error is not None:
            result_queue.put((batch_id, init_error))
            continue
        try:
            result = collate_fn([dataset[int(i)] for i in ids])
        except Exception as e:
            result = _WorkerError(worker_id, e)
        try:
            result_queue.put((batch_id, result))
        except Exception as e:  # e.g. an unpicklable batch
            result_queue.put((batch_id, _WorkerError(worker_id, e)))


class _WorkerPool:
    """``num_workers`` processes that each load whole batches (``dataset[i]`` for each index, then
    ``collate_fn``), for map-style datasets. The main process decides the order of the batches and
    hands them out round-robin, keeping at most ``prefetch_factor`` batches outstanding per worker;
    results come back in order. Worker ``k`` seeds Python's, NumPy's and gradflow's generators with
    ``base_seed + k`` (``base_seed`` drawn from the loader's generator each epoch), then calls
    ``worker_init_fn(k)``, so a seeded run loads the same batches. An exception in a worker is
    raised in the main process with the worker's traceback; a worker that dies is reported."""

    def __init__(self, loader, base_seed):
        import multiprocessing
        ctx = loader.multiprocessing_context
        if ctx is None:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
        elif isinstance(ctx, str):
            ctx = multiprocessing.get_context(ctx)
        self.n = loader.num_workers
        self.prefetch = loader.prefetch_factor
        self.timeout = loader.timeout
        self.result_queue = ctx.Queue()
        self.index_queues, self.workers = [], []
        for k in range(self.n):
            q = ctx.Queue()
            w = ctx.Process(target=_worker_loop, args=(k, self.n, loader.dataset, loader.collate_fn, base_seed + k,
                                                         loader.worker_init_fn, q, self.result_queue), daemon=True)
            w.start()
            self.index_queues.append(q)
            self.workers.append(w)
        self.closed = False

    def alive(self):
        return not self.closed and all(w.is_alive() for w in self.workers)

    def run(self, batches):
        """Yield the collated batches of ``batches`` (an iterable of index lists), in order."""
        import queue as queue_module
        import time
        batches = iter(batches)
        sent = received = 0
        done = False
        waiting = {}

        def send():
            nonlocal sent, done
            while not done and sent - received < self.n * self.prefetch:
                try:
                    ids = next(batches)
                except StopIteration:
                    done = True
                    return
                self.index_queues[sent % self.n].put((sent, list(int(i) for i in ids)))
                sent += 1

        send()
        while received < sent:
            start = time.monotonic()
            while received not in waiting:
                try:
                    batch_id, result = self.result_queue.get(timeout=1.0)
                except queue_module.Empty:
                    dead = [w for w in self.workers if not w.is_alive()]
                    if dead:
                        self.shutdown()
                        raise RuntimeError(f"DataLoader worker (pid {dead[0].pid}) exited unexpectedly with exit "
                                           f"code {dead[0].exitcode}") from None
                    if self.timeout and time.monotonic() - start > self.timeout:
                        self.shutdown()
                        raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds") from None
                    continue
                waiting[batch_id] = result
            result = waiting.pop(received)
            received += 1
            if isinstance(result, _WorkerError):
                self.shutdown()
                result.reraise()
            send()
            yield result

    def shutdown(self):
        """Stop the workers (politely, then by force) and release the queues."""
        if self.closed:
            return
        self.closed = True
        for q in self.index_queues:
            try:
                q.put(None)
            except Exception:
                pass
        for w in self.workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
                w.join(timeout=1)
        for q in self.index_queues + [self.result_queue]:
            q.cancel_join_thread()
            q.close()
