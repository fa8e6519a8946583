"""gradflow's Philox4x64-10 stream on the CPU (gradflow/philox.py over numpy.random.Philox).

Known answers come from Random123's kat_vectors; the stream layout (word c of seed s is word
c % 4 of the block at counter c // 4 under key (s, 0)) is checked against the block function,
so offsets that are not a multiple of 4, splits and 2^64 wraparound all land on the same words.
The host build of kernels/philox.cuh is compared with this module in test_kernels_host.py.
"""
import numpy
import pytest

import gradflow as gf
from gradflow import dropout_ops as D, philox

M64 = 2 ** 64 - 1
# Random123 kat_vectors, philox4x64 10: (counter words, key words) -> output words (word 0 first).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x16554d9eca36314c, 0xdb20fe9d672d0fdc, 0xd7e772cee186176b, 0x7e68b68aec7ba23b)),
    ((M64,) * 4, (M64,) * 2, (0x87b092c3013fe90b, 0x438c3c67be8d0224, 0x9cc7d7c69cd777b6, 0xa09caebf594f0ba0)),
    ((0x243f6a8885a308d3, 0x13198a2e03707344, 0xa4093822299f31d0, 0x082efa98ec4e6c89),
     (0x452821e638d01377, 0xbe5466cf34e90c6c),
     (0xa528f45403e61d95, 0x38c72dbd566e9788, 0xa5a1610e72fd18b5, 0x57bd43b5e52b7fe6)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_known_answers(counter, key, expected):
    numpy.testing.assert_array_equal(philox.philox4x64_10(counter, key), numpy.array(expected, numpy.uint64))


def test_numpy_philox_emits_the_block_after_its_counter():
    """The fact the layout rests on: Philox(key=k, counter=c) returns the blocks of c+1, c+2, ..."""
    raw = numpy.random.Philox(key=5, counter=9).random_raw(8)
    numpy.testing.assert_array_equal(raw[:4], philox.philox4x64_10((10, 0, 0, 0), (5, 0)))
    numpy.testing.assert_array_equal(raw[4:], philox.philox4x64_10((11, 0, 0, 0), (5, 0)))


def _expected(seed, offset, n):
    """Word by word from the block function: block (c // 4, 0, 0, 0) under key (seed, 0), word c % 4."""
    out = []
    for i in range(n):
        c = (offset + i) % 2 ** 64
        out.append(philox.philox4x64_10((c // 4, 0, 0, 0), (seed, 0))[c % 4])
    return numpy.array(out, numpy.uint64)


@pytest.mark.parametrize("seed, offset, n", [(0, 0, 9), (1, 1, 7), (7, 2, 3), (7, 3, 1), (123, 5, 12),
                                             (M64, 2 ** 40 + 3, 9), (3, 2 ** 64 - 5, 11), (3, 2 ** 64 - 4, 4),
                                             (3, 2 ** 64 - 1, 2), (9, 2 ** 63 + 1, 0)])
def test_stream_layout_any_alignment_and_wraparound(seed, offset, n):
    got = philox.bits(seed, offset, n)
    assert got.dtype == numpy.uint64 and got.shape == (n,)
    numpy.testing.assert_array_equal(got, _expected(seed, offset, n))


def test_draws_depend_only_on_seed_and_counter():
    whole = philox.bits(11, 6, 1000)
    for cut in (1, 2, 3, 4, 5, 333, 999):   # every alignment of the second piece's offset
        numpy.testing.assert_array_equal(
            numpy.concatenate([philox.bits(11, 6, cut), philox.bits(11, 6 + cut, 1000 - cut)]), whole)
    for start in range(8):
        numpy.testing.assert_array_equal(philox.bits(11, 6 + start, 20), whole[start:start + 20])
    assert not (philox.bits(12, 6, 1000) == whole).any()   # another seed, other words


def test_keep_and_normal_read_the_same_words():
    w = philox.bits(5, 3, 1000)
    thr = philox.keep_threshold(0.3)
    numpy.testing.assert_array_equal(philox.keep(5, 3, 1000, thr), (w >> numpy.uint64(11)) >= thr)
    hi, lo = (w >> numpy.uint64(32)).astype(float), (w & numpy.uint64(0xFFFFFFFF)).astype(float)
    want = numpy.sqrt(-2 * numpy.log((hi + 1) / 2 ** 32)) * numpy.cos(2 * numpy.pi * (lo / 2 ** 32))
    numpy.testing.assert_allclose(philox.normal(5, 3, 1000), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate(p):
    n = 10 ** 6
    keep = philox.keep(42, 1001, n, philox.keep_threshold(p))
    assert abs(keep.mean() - (1 - p)) < 0.002


def test_dropout_masks_are_uncorrelated():
    n = 10 ** 6
    thr = philox.keep_threshold(0.5)
    a = philox.keep(9, 0, n, thr).astype(float)
    b = philox.keep(9, n, n, thr).astype(float)    # the next call's offset
    c = philox.keep(10, 0, n, thr).astype(float)   # another seed, same offset
    for u, v in [(a, b), (a, c), (a[:-1], a[1:]), (a[:-4], a[4:])]:   # ... neighbours, next block
        assert abs(numpy.corrcoef(u, v)[0, 1]) < 0.005


def test_normal_moments():
    z = philox.normal(3, 17, 10 ** 6)
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005
    assert abs((z ** 3).mean()) < 0.02 and abs((z ** 4).mean() - 3) < 0.05
    assert numpy.isfinite(z).all() and numpy.abs(z).max() < 6.7   # u1 >= 2^-32 bounds the tails


def test_keep_threshold_is_exact_to_2_pow_minus_53():
    assert philox.keep_threshold(0.0) == 0 and philox.keep_threshold(1.0) == 2 ** 53
    assert philox.keep_threshold(0.5) == 2 ** 52 and philox.keep_threshold(2.0 ** -60) == 1
    p = 0.3
    assert 0 <= philox.keep_threshold(p) / 2 ** 53 - p < 2.0 ** -53
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            philox.keep_threshold(bad)


def test_dropout_kernel_twin_edge_thresholds():
    x = numpy.ones(1000, numpy.float32)
    y, keep = D.dropout_fwd(x, 0.0, numpy.uint64(1), numpy.uint64(0), numpy.uint64(philox.keep_threshold(1.0)))
    assert not keep.any() and not y.any()
    y, keep = D.dropout_fwd(x, 1.0, numpy.uint64(1), numpy.uint64(0), numpy.uint64(0))
    assert keep.all() and (y == 1).all()


def test_dropout_twin_scales_like_the_kernel():
    """(x * keep) * scale is x * (keep ? scale : 0): NaN stays NaN where dropped, -0 keeps its sign."""
    x = numpy.array([1.5, -2.0, numpy.nan, numpy.inf, -0.0, 3.0] * 50, numpy.float32)
    y, keep = D.dropout_fwd(x, 1 / 0.7, numpy.uint64(8), numpy.uint64(3), numpy.uint64(philox.keep_threshold(0.3)))
    assert keep.any() and not keep.all()
    with numpy.errstate(invalid="ignore"):   # inf * 0
        want = x * numpy.where(keep, numpy.float32(1 / 0.7), numpy.float32(0))
    numpy.testing.assert_array_equal(y, want)
    assert (numpy.signbit(y) == numpy.signbit(want)).all()


def test_generator_offsets_are_consumed_per_element():
    gf.manual_seed(21)
    x = gf.Tensor(numpy.ones((3, 5), numpy.float32))
    D.dropout(x, 0.5)
    D.noisy_relu(x, std=1.0)
    assert gf.random.default_generator.next_offset(1) == (21, 30)
