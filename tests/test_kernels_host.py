"""The kernels' element math compiled for the host (g++) against the NumPy twins.

Every ``Elementwise`` operation string and the row kernels of ``softmax.cu`` are built
into one shared library (once per session) and run on random inputs plus extremes
(+-80 and +-1e4 for exp-based functions, zeros at kinks, denormals, NaN). Kernels made
of + - * / and sqrt only must match their NumPy twin bit for bit (both are IEEE and the
host build does not contract to FMA); kernels calling exp/log/erf/tanh differ only by
the libm, within the tolerances below. Philox4x64-10 is checked against known-answer
vectors and bit for bit against NumPy's C Philox (gradflow/philox.py); dropout's mask
statistics are checked on the NumPy side (test_philox.py).
"""
import numpy
import pytest

import kernel_harness as H
from kernel_cases import TRANSCENDENTAL, rng_for, spec
from gradflow import activation as A
from gradflow import dropout_ops as D
from gradflow import kernel as K
from gradflow import philox
from gradflow import softmax_ops as S
from test_philox import KAT as PHILOX_KAT

DTYPES = [numpy.float32, numpy.float64]


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    if H.find_compiler("g++") is None:
        pytest.skip("g++ not found: cannot build the host harness")
    return H.build_host(tmp_path_factory.mktemp("gradflow_host"))


def test_every_kernel_has_a_spec():
    rng = numpy.random.default_rng(0)
    for name in K.ELEMENTWISE:
        spec(name, rng, numpy.float32)  # raises KeyError for a kernel added without a test input


def _copy(a):
    return a.copy() if isinstance(a, numpy.ndarray) else a


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(K.ELEMENTWISE))
def test_elementwise_matches_numpy(host, name, dtype):
    k = K.ELEMENTWISE[name]
    args = spec(name, rng_for(name), dtype)
    got = host.elementwise(name, *[_copy(a) for a in args])
    want_args = [_copy(a) for a in args]
    want = k.numpy(*want_args)
    n_in = sum(not p.output for p in k.params)
    if want is None:  # in-place kernel: compare the updated arrays
        want = tuple(want_args[n_in:])
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for out, g, w in zip([p for p in k.params if p.output], got, want):
        w = numpy.broadcast_to(w, g.shape)
        assert g.dtype == w.dtype, f"{name}.{out.name}: dtype {g.dtype} vs NumPy's {w.dtype}"
        if name in TRANSCENDENTAL and g.dtype.kind == "f":
            rel, abs_ = TRANSCENDENTAL[name]
            eps = numpy.finfo(dtype).eps
            numpy.testing.assert_allclose(g, w, rtol=rel * eps, atol=abs_ * eps, equal_nan=True,
                                          err_msg=f"{name}.{out.name}")
        else:  # bit-exact, NaN where NaN
            numpy.testing.assert_array_equal(g, w, err_msg=f"{name}.{out.name}")


SKIPPABLE = sorted(name for name, k in K.ELEMENTWISE.items() if any(p.name == "found_inf" for p in k.params))


def test_the_optimizer_updates_are_skippable():
    """Every fused optimizer update's device-scalar twin takes the found_inf flag (gradflow.optim.fused.Update)."""
    from gradflow.optim import fused
    updates = [u for u in vars(fused).values() if isinstance(u, fused.Update)]
    assert len(updates) >= 10 and sorted(u.device.name for u in updates) == SKIPPABLE


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", SKIPPABLE)
def test_a_set_found_inf_flag_skips_the_update(host, name, dtype):
    """found_inf != 0 (a loss-scaling overflow): the host build and the NumPy twin leave every in-place
    output (parameter and optimizer state) exactly as it was, NaN gradients included."""
    k = K.ELEMENTWISE[name]
    args = list(spec(name, rng_for(name), dtype))
    flag = next(i for i, p in enumerate(k.params) if p.name == "found_inf")
    args[flag] = numpy.ones_like(args[flag])
    n_in = sum(not p.output for p in k.params)
    before = [a.copy() for a in args[n_in:]]
    got = host.elementwise(name, *[_copy(a) for a in args])
    twin = [_copy(a) for a in args]
    assert k.numpy(*twin) is None
    for g, t, b in zip(got if isinstance(got, tuple) else (got,), twin[n_in:], before):
        assert g.tobytes() == b.tobytes() and t.tobytes() == b.tobytes()


# ---- the row kernels of softmax.cu (threads emulated) -------------------------------------------------
def row_inputs(rng, dtype):
    cases = []
    for rows, cols in [(5, 1), (7, 3), (4, 31), (3, 33), (6, 100), (2, 1000)]:
        cases.append((rng.standard_normal((rows, cols)) * 4).astype(dtype))
    special = numpy.array([
        [80, -80, 0, 1, 2, 3],
        [1e4, 1e4 - 1, -1e4, 0, 0, 0],          # needs the max subtraction
        [-1e4, -1e4 + 2, -1e4, -1e4, -1e4, -1e4],
        [-numpy.inf, 0, 1, -numpy.inf, 2, -numpy.inf],  # masked entries
        [-numpy.inf, -numpy.inf, -numpy.inf, 5, -numpy.inf, -numpy.inf],
        [0, 1, numpy.nan, 2, 3, 4],
        [numpy.finfo(dtype).tiny / 8, 0, -0.0, 0, 0, 0],
    ], dtype=dtype)
    cases.append(special)
    return cases


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_row_kernels_match_numpy(host, dtype):
    rng = numpy.random.default_rng(1)
    eps = numpy.finfo(dtype).eps
    for x in row_inputs(rng, dtype):
        g = rng.standard_normal(x.shape).astype(dtype)
        for entry, (a, b) in {"gf_softmax_fwd": (x, None), "gf_log_softmax_fwd": (x, None),
                              "gf_softmax_bwd": (S._softmax_rows_np(x), g),
                              "gf_log_softmax_bwd": (S._log_softmax_rows_np(x), g)}.items():
            want = K.ROW_KERNELS[entry].numpy(a, b)
            got = host.rows(entry, a, b)
            # the row sums are accumulated in another order: a few eps of the row's largest value
            scale = max(1.0, float(numpy.nanmax(numpy.abs(numpy.where(numpy.isinf(want), 0, want)))))
            numpy.testing.assert_allclose(got, want, rtol=16 * eps, atol=16 * eps * scale, equal_nan=True,
                                          err_msg=f"{entry} {x.shape}")


def test_softmax_rows_sum_to_one_and_are_stable(host):
    x = numpy.array([[1e4, 1e4, -1e4], [88.0, 0.0, -88.0], [-1e30, -1e30, -1e30]], dtype=numpy.float32)
    y = host.rows("gf_softmax_fwd", x)
    numpy.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    numpy.testing.assert_allclose(y[0], [0.5, 0.5, 0], atol=1e-7)
    numpy.testing.assert_allclose(host.rows("gf_log_softmax_fwd", x)[1], [0.0, -88.0, -176.0], atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_rows_match_numpy(host, dtype):
    rng = numpy.random.default_rng(2)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == numpy.float32 else dict(rtol=1e-14, atol=1e-13)
    for rows, cols in [(9, 1), (13, 5), (4, 300)]:
        x = (rng.standard_normal((rows, cols)) * 6).astype(dtype)
        x[0, 0] = 80
        t = rng.integers(0, cols, rows)
        t[1] = -100
        loss, m, logs = host.xent(x, t, -100)
        want_loss, want_m, want_logs = S._xent_rows_np(x, t, -100)
        numpy.testing.assert_array_equal(m, want_m)
        numpy.testing.assert_allclose(logs, want_logs, **tol)
        numpy.testing.assert_allclose(loss, want_loss, **tol)
        assert loss[1] == 0
    loss, _, _ = host.xent(numpy.zeros((2, 3), dtype), numpy.array([3, -1]), -100)
    assert numpy.isnan(loss).all()  # out-of-range targets cannot raise on a GPU: they give NaN


def test_cross_entropy_kernels_accurate_at_large_and_tied_logits(host):
    """Row max and log-sum are kept apart: no rounding of a log-sum-exp at the logits' magnitude."""
    x = numpy.array([[1e4, 1e4 + 1, 1e4 - 2, 1e4], [3e38, 3e38, 3e38, -3e38], [1e6, 1e6 + 0.5, 0, 1e6]],
                    numpy.float32)
    t = numpy.array([1, 2, 0])
    loss, m, logs = host.xent(x, t, 2)  # ignore_index inside the class range
    want_loss, want_m, want_logs = S._xent_rows_np(x, t, 2)
    numpy.testing.assert_array_equal(m, want_m)
    numpy.testing.assert_allclose(logs, want_logs, rtol=1e-6)
    numpy.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert loss[1] == 0
    args = (x, m[:, None], logs[:, None], t[:, None], numpy.ones((3, 1), numpy.float32), 4, 2)
    want = S._xent_bwd_np(*args)
    e = numpy.exp(x[0].astype(numpy.float64) - x[0].max())
    numpy.testing.assert_allclose(want[0] + numpy.eye(4)[1], e / e.sum(), rtol=1e-6)
    assert (want[1] == 0).all()
    numpy.testing.assert_allclose(host.elementwise("xent_bwd", *args), want, rtol=1e-6, atol=1e-7)


# ---- Philox and dropout ---------------------------------------------------------------------------------
# kernels/philox.cuh (Philox4x64-10) compiled for the host against NumPy's C Philox (gradflow/philox.py):
# Random123's known answers, then the stream at many seeds and offsets, misaligned and wrapping at 2^64.
@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_known_answers_host(host, counter, key, expected):
    numpy.testing.assert_array_equal(host.philox4x64_10([counter], key)[0], numpy.array(expected, numpy.uint64))


def test_mulhi64_host_fallback_is_exact(host):
    rng = numpy.random.default_rng(8)
    edges = numpy.array([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63, 2 ** 64 - 1], numpy.uint64)
    a = numpy.concatenate([numpy.repeat(edges, len(edges)), rng.integers(0, 2 ** 64, 5000, numpy.uint64)])
    b = numpy.concatenate([numpy.tile(edges, len(edges)), rng.integers(0, 2 ** 64, 5000, numpy.uint64)])
    want = [(int(u) * int(v)) >> 64 for u, v in zip(a, b)]
    assert host.mulhi64(a, b).tolist() == want


def test_philox_host_and_numpy_agree_bit_for_bit(host):
    rng = numpy.random.default_rng(3)
    ctr = rng.integers(0, 2 ** 64, (300, 4), dtype=numpy.uint64)
    key = rng.integers(0, 2 ** 64, (300, 2), dtype=numpy.uint64)
    numpy.testing.assert_array_equal(host.philox4x64_10(ctr, key),
                                     [philox.philox4x64_10(c, k) for c, k in zip(ctr, key)])
    thr = philox.keep_threshold(0.3)
    cases = [(0, 0, 5000), (2 ** 64 - 1, 2 ** 32 - 3, 5000), (123456789, 2 ** 40, 5000), (5, 1, 7), (5, 2, 1),
             (6, 3, 4097), (7, 2 ** 64 - 4, 9), (7, 2 ** 64 - 3, 4000), (8, 2 ** 64 - 1, 1), (9, 2 ** 63 - 2, 6)]
    cases += [(int(s), int(o), int(n)) for s, o, n in zip(rng.integers(0, 2 ** 64, 20, numpy.uint64),
                                                         rng.integers(0, 2 ** 64, 20, numpy.uint64),
                                                         rng.integers(0, 300, 20))]
    for seed, offset, n in cases:
        numpy.testing.assert_array_equal(host.philox_bits(seed, offset, n), philox.bits(seed, offset, n))
        numpy.testing.assert_array_equal(host.dropout_keep(seed, offset, thr, n), philox.keep(seed, offset, n, thr))
        numpy.testing.assert_allclose(host.philox_normal(seed, offset, n), philox.normal(seed, offset, n),
                                      rtol=1e-14, atol=1e-14)


def test_draws_do_not_depend_on_how_the_work_is_split(host):
    whole = host.philox_bits(7, 100, 1000)
    numpy.testing.assert_array_equal(numpy.concatenate([host.philox_bits(7, 100, 301),
                                                        host.philox_bits(7, 401, 699)]), whole)


@pytest.mark.parametrize("p", [0.0, 2.0 ** -40, 0.3, 1 - 2.0 ** -40, 1.0])
def test_dropout_kernel_masks_match_numpy(host, p):
    x = numpy.random.default_rng(1).standard_normal(3001).astype(numpy.float32)
    args = (x, 1 / (1 - p) if p < 1 else 0.0, numpy.uint64(77), numpy.uint64(2 ** 64 - 1001),
            numpy.uint64(philox.keep_threshold(p)))
    y, keep = host.elementwise("dropout_fwd", *args)
    want_y, want_keep = D.dropout_fwd(*args)
    numpy.testing.assert_array_equal(keep, want_keep)
    numpy.testing.assert_array_equal(y, want_y)
    assert keep.all() if p == 0 else not keep.any() if p == 1 else 0.6 < keep.mean() < 0.8 if p == 0.3 else True


def test_system_headers_only_in_the_host_branch():
    """NVRTC has no system headers: any #include <...> must sit in the not-CUDA branch."""
    device_if = "#if defined(__CUDACC__) || defined(__CUDACC_RTC__)"
    names = sorted(p.name for p in K.kernel_directory().iterdir() if p.name.endswith((".cu", ".cuh")))
    assert {"activations.cuh", "philox.cuh", "dropout.cuh", "optimizers.cuh", "softmax.cu"} <= set(names)
    for name in names:
        stack = []
        for line in K.source(name).splitlines():
            s = line.strip()
            if s.startswith("#if"):
                stack.append([s, False])
            elif s.startswith("#else"):
                stack[-1][1] = True
            elif s.startswith("#endif"):
                stack.pop()
            elif s.startswith("#include <"):
                assert stack and stack[-1] == [device_if, True], f"{name}: {s} is not host-only"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_sign_masks_keep_subnormals_like_torch(host, dtype):
    """A positive subnormal is > 0 for relu/leaky_relu/prelu masks, as in PyTorch (which does not flush).

    The GPU build compiles with -ftz=true, so the kernels test the sign on the bits (gf_gt0/gf_le0);
    test_kernels_nvrtc checks that their float32 PTX has no flushing comparison left.
    """
    torch = pytest.importorskip("torch")
    tiny = numpy.finfo(dtype).tiny
    x = numpy.array([tiny / 8, -tiny / 8, tiny, -tiny, 0.0, -0.0, numpy.nan, numpy.inf, -numpy.inf, 1.0], dtype)
    t = torch.tensor(x, requires_grad=True)
    torch.relu(t).sum().backward()
    relu_mask = (t.grad.numpy() != 0) | numpy.isnan(x)  # torch's relu passes NaN through (mask kept)
    t.grad = None
    torch.nn.functional.leaky_relu(t, 0.25).sum().backward()
    leaky_mask = t.grad.numpy() == 1
    y = host.elementwise("relu_out", x)
    numpy.testing.assert_array_equal(y[:6], torch.relu(torch.tensor(x[:6])).numpy())  # subnormal passes unchanged
    assert y.tobytes() == A.relu_out(x).tobytes()
    ones = numpy.ones_like(x)  # relu's backward reads its mask off the output: y != 0, on the bits
    for got, want in [(host.elementwise("relu_grad", y, ones) != 0, relu_mask),
                      (A.relu_grad(y, ones) != 0, relu_mask),
                      (host.elementwise("leaky_relu_fwd", x, 0.25)[1], leaky_mask),
                      (A.leaky_relu_fwd(x, 0.25)[1], leaky_mask)]:
        numpy.testing.assert_array_equal(got, want)
    assert relu_mask[0] and not relu_mask[1]  # the subnormal case itself
