"""Seeding. ``manual_seed(n)`` makes initializers, shuffling and dropout reproducible.

Two streams hang off one seed: a NumPy ``Generator`` for host-side draws (weight init,
data shuffling) and a counter-based (seed, offset) pair for kernels such as dropout,
whose offset advances by the number of random values each call consumes.
"""
import sys

import numpy


class Generator:
    def __init__(self, seed=0):
        self.manual_seed(seed)

    def manual_seed(self, seed):
        _not_while_recording("manual_seed")
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.numpy = numpy.random.default_rng(self.seed)
        self.offset = 0
        return self

    def next_offset(self, count):
        """Reserve ``count`` counter values for one kernel call; returns (seed, offset).

        While gradflow.compile captures a CUDA graph, (seed, offset) are 0-d device arrays
        instead, which the host fills before every launch with the values this call would
        reserve (``device_draws``): each replay draws fresh masks, the same as eager mode.
        """
        if device_draws is not None:
            return device_draws.take(self, count)
        recorder = sys.modules["gradflow.tensor"]._active_recorder()
        if recorder is not None:
            recorder.on_random_draw()  # a captured CUDA graph would freeze this offset
        offset = self.offset
        self.offset += int(count)
        return self.seed, offset

    def get_state(self):
        return {"seed": self.seed, "offset": self.offset, "numpy": self.numpy.bit_generator.state}

    def set_state(self, state):
        _not_while_recording("set_rng_state")
        self.seed = state["seed"]
        self.offset = state["offset"]
        self.numpy = numpy.random.default_rng()
        self.numpy.bit_generator.state = state["numpy"]


def _not_while_recording(what):
    """Reseeding inside a step that gradflow.compile records: a replay would not reseed (its draws
    would go on from the stream), so the step runs eagerly instead (``strict=True``: an error)."""
    tensor = sys.modules.get("gradflow.tensor")
    recorder = tensor._active_recorder() if tensor is not None else None
    if recorder is not None:
        recorder.on_reseed(what)


default_generator = Generator(0)
device_draws = None  # set by gradflow.compile while it captures a CUDA graph (compile._DeviceDraws)


def manual_seed(seed):
    """Seed every gradflow random stream (like ``torch.manual_seed``)."""
    return default_generator.manual_seed(seed)


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state):
    default_generator.set_state(state)
