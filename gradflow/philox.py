"""Philox4x32-10 in NumPy, bit for bit the same as ``kernels/philox.cuh``.

Kernels draw their random bits from (seed, offset + element index) with this
counter-based generator, so a mask depends only on ``gradflow.manual_seed`` and the
offset ``gradflow.random.default_generator`` hands out, never on the device or the
launch geometry. This module is the CPU side of those kernels.
"""
import math

import numpy

from gradflow.random import default_generator

_M0, _M1 = numpy.uint64(0xD2511F53), numpy.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LO = numpy.uint64(0xFFFFFFFF)
_32 = numpy.uint64(32)


def philox4x32_10(counter, key):
    """Encrypt counters under keys: ``counter`` (..., 4) and ``key`` (..., 2) uint32 arrays.

    Returns the (..., 4) uint32 output words, Random123's ``philox4x32(ctr, key)``.
    """
    c = numpy.asarray(counter, dtype=numpy.uint32)
    k = numpy.asarray(key, dtype=numpy.uint32)
    c0, c1, c2, c3 = (c[..., j].astype(numpy.uint64) for j in range(4))
    k0 = k[..., 0].astype(numpy.uint64)
    k1 = k[..., 1].astype(numpy.uint64)
    for r in range(10):
        if r:
            k0 = (k0 + numpy.uint64(_W0)) & _LO
            k1 = (k1 + numpy.uint64(_W1)) & _LO
        p0 = _M0 * c0  # 32 x 32 -> 64-bit products, exact in uint64
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _32) ^ c1 ^ k0, p1 & _LO, (p0 >> _32) ^ c3 ^ k1, p0 & _LO
    return numpy.stack([c0, c1, c2, c3], axis=-1).astype(numpy.uint32)


def philox_block(seed, counters):
    """The four words of gradflow's stream at each 64-bit counter: key = seed, ctr = (counter, 0)."""
    counters = numpy.asarray(counters, dtype=numpy.uint64)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    ctr = numpy.zeros(counters.shape + (4,), dtype=numpy.uint32)
    ctr[..., 0] = (counters & _LO).astype(numpy.uint32)
    ctr[..., 1] = (counters >> _32).astype(numpy.uint32)
    key = numpy.array([seed & 0xFFFFFFFF, seed >> 32], dtype=numpy.uint32)
    return philox4x32_10(ctr, numpy.broadcast_to(key, counters.shape + (2,)))


def counters(offset, n):
    """The counters ``offset + i`` for the elements ``i`` of an n-element array."""
    return numpy.uint64(offset) + numpy.arange(n, dtype=numpy.uint64)


def bits(seed, offset, n):
    """Word 0 of each counter: the uint32 draws dropout compares with its threshold."""
    return philox_block(seed, counters(offset, n))[..., 0]


def normal(seed, offset, n):
    """Standard normals by Box-Muller on words 0 and 1 (float64), as ``gf_philox_normal``."""
    w = philox_block(seed, counters(offset, n))
    u1 = (w[..., 0].astype(numpy.float64) + 1.0) * 2.0 ** -32
    u2 = w[..., 1].astype(numpy.float64) * 2.0 ** -32
    return numpy.sqrt(-2.0 * numpy.log(u1)) * numpy.cos(6.283185307179586476925 * u2)


def keep_threshold(p):
    """ceil(p * 2^32): an element is kept when its draw is >= this, so P(keep) = 1 - p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return math.ceil(p * 2.0 ** 32)


def reserve(n, generator=None):
    """(seed, offset) for a kernel call that consumes ``n`` counters."""
    return (generator or default_generator).next_offset(n)
