"""``gradflow.cuda``: torch.cuda's everyday queries (gradflow drives one GPU per process)."""
from gradflow import backend
from gradflow import random as _random


def is_available():
    return backend.cuda_is_available()


def device_count():
    """Visible CUDA devices (0 without a usable CUDA runtime)."""
    if not is_available():
        return 0
    return int(backend.cupy().cuda.runtime.getDeviceCount())


def current_device():
    if not is_available():
        raise RuntimeError(f"gradflow.cuda.current_device(): CUDA is not available")
    return int(backend.cupy().cuda.Device().id)


def get_device_name(device=None):
    cp = backend.cupy()
    props = cp.cuda.runtime.getDeviceProperties(0 if device is None else int(str(device).rpartition(":")[2] or 0))
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else name


def synchronize(device=None):
    """Wait for every queued kernel to finish (a no-op without CUDA, so timing code runs anywhere)."""
    if is_available():
        backend.cupy().cuda.Device().synchronize()


def manual_seed(seed):
    """gradflow draws CPU and GPU randomness from one seeded stream, so this seeds it (like manual_seed)."""
    _random.manual_seed(seed)


manual_seed_all = manual_seed


def empty_cache():
    """Return CuPy's cached free blocks to the driver (torch.cuda.empty_cache)."""
    if is_available():
        backend.cupy().get_default_memory_pool().free_all_blocks()
