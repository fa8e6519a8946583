"""gradflow's counter-based random stream on the CPU: NumPy's Philox4x64-10, bit for bit
the same as ``kernels/philox.cuh``.

Kernels draw their random bits from (seed, offset + element index), so a mask depends only
on ``gradflow.manual_seed`` and the offset ``gradflow.random.default_generator`` hands out,
never on the device, the launch geometry or how a tensor is split.

The stream. Word ``c`` (a 64-bit counter) of seed ``s`` is word ``c % 4`` of the Philox4x64-10
block encrypted from counter ``(c // 4, 0, 0, 0)`` under key ``(s, 0)`` (Random123's
``philox4x64(ctr, key)``, Salmon et al., SC'11). Element ``i`` of a call at ``offset`` uses word
``(offset + i) mod 2^64``: one 64-bit word per element, so a call for n elements consumes n
counters of the generator, whatever the op.

Why this layout: it is exactly the sequence ``numpy.random.Philox(key=s)`` emits. NumPy's
Philox increments its 256-bit counter *before* encrypting a block and returns the block's 4
words in order, so a generator whose counter is set to ``c // 4 - 1`` (mod 2^256) returns the
block of ``c // 4`` next; dropping the first ``c % 4`` words aligns an offset that is not a
multiple of 4. One ``random_raw(c % 4 + n)`` then gives a whole call's words at C speed.

What the ops make of a word ``w``:
- dropout keeps an element when ``w >> 11`` (its top 53 bits, uniform on [0, 2^53)) is
  ``>= keep_threshold(p) = ceil(p * 2^53)``: P(keep) = 1 - p to 2^-53, p = 1 keeps nothing;
- noisy ReLU's N(0, 1) draw is Box-Muller on the high and low 32-bit halves of ``w``.
"""
import math
import sys
import threading

import numpy

from gradflow.random import default_generator

_WORDS = 4                 # 64-bit words per Philox4x64 block
_MASK64 = (1 << 64) - 1
_WRAP = 1 << 64            # kernels compute offset + i in 64-bit unsigned arithmetic
_KEEP_BITS = 53            # dropout compares the top 53 bits of a word with its threshold
_SHIFT = numpy.uint64(64 - _KEEP_BITS)
_HI = 1 if sys.byteorder == "little" else 0  # which uint32 of a uint64 holds its high half


class _Philox(threading.local):
    """One ``numpy.random.Philox`` per thread, re-aimed by setting its state (a fresh
    construction costs ~3x more, and the setter keeps each call independent of the last)."""

    def __init__(self):
        self.bit_generator = numpy.random.Philox(key=0)
        self.counter = numpy.zeros(4, numpy.uint64)
        self.key = numpy.zeros(2, numpy.uint64)
        self.state = {"bit_generator": "Philox", "state": {"counter": self.counter, "key": self.key},
                      "buffer": numpy.zeros(_WORDS, numpy.uint64), "buffer_pos": _WORDS,
                      "has_uint32": 0, "uinteger": 0}

    def raw(self, key, counter, n):
        """``random_raw(n)`` of a Philox whose next block is encrypted from ``counter + 1``."""
        self.key[:] = (key & _MASK64, key >> 64)
        self.counter[:] = [(counter >> (64 * j)) & _MASK64 for j in range(4)]
        self.bit_generator.state = self.state
        return self.bit_generator.random_raw(n)


_philox = _Philox()


def philox4x64_10(counter, key):
    """Random123's ``philox4x64_10(ctr, key)`` of one block: ``counter`` 4 and ``key`` 2 uint64
    words (word 0 least significant), through NumPy's C generator. Returns the 4 output words."""
    ctr = sum(int(c) << (64 * j) for j, c in enumerate(counter))
    k = int(key[0]) | int(key[1]) << 64
    return _philox.raw(k, (ctr - 1) % (1 << 256), _WORDS)


def bits(seed, offset, n):
    """The uint64 words ``offset, offset + 1, ..., offset + n - 1`` (mod 2^64) of seed's stream:
    element i's word, as ``gf_philox_bits(seed, offset + i)``."""
    seed, offset, n = int(seed) & _MASK64, int(offset) & _MASK64, int(n)
    if offset + n > _WRAP:  # the counter wraps to 0, as offset + i does in the kernels
        head = _WRAP - offset
        return numpy.concatenate([bits(seed, offset, head), bits(seed, 0, n - head)])
    block, skip = divmod(offset, _WORDS)
    return _philox.raw(seed, (block - 1) % (1 << 256), skip + n)[skip:]


def keep(seed, offset, n, threshold):
    """Dropout's keep decisions (bool), as ``gf_dropout_keep``: top 53 bits >= threshold."""
    w = bits(seed, offset, n)
    return numpy.right_shift(w, _SHIFT, out=w) >= numpy.uint64(threshold)


def normal(seed, offset, n):
    """Standard normals (float64) by Box-Muller on each word's halves, as ``gf_philox_normal``."""
    halves = bits(seed, offset, n).view(numpy.uint32).reshape(n, 2)  # uint32 -> float64 converts fast
    u1 = (halves[:, _HI].astype(numpy.float64) + 1.0) * 2.0 ** -32    # (0, 1]
    u2 = halves[:, 1 - _HI].astype(numpy.float64) * 2.0 ** -32        # [0, 1)
    return numpy.sqrt(-2.0 * numpy.log(u1)) * numpy.cos(6.283185307179586476925 * u2)


def keep_threshold(p):
    """ceil(p * 2^53): an element is kept when its word's top 53 bits are >= this, so
    P(keep) = 1 - p to within 2^-53 (p * 2^53 is exact in float64), and p = 1 keeps nothing."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return math.ceil(p * 2.0 ** _KEEP_BITS)


def reserve(n, generator=None):
    """(seed, offset) for a kernel call that consumes ``n`` counters (one word per element)."""
    return (generator or default_generator).next_offset(n)
