"""Inputs for every declared elementwise kernel, shared by the host and GPU tests.

``spec(name, rng, dtype)`` gives a kernel's arguments (inputs, then the outputs an in-place
kernel updates): random values plus the extremes each kernel must handle.
"""
import zlib

import numpy

from gradflow import activation as A
from gradflow import philox
from gradflow import softmax_ops as S


def rng_for(name):
    """A generator seeded by the kernel's name (stable across runs, unlike hash())."""
    return numpy.random.default_rng(zlib.crc32(name.encode()))


def values(rng, dtype, n=300):
    """Random values plus the extremes every elementwise kernel must handle."""
    f = numpy.finfo(dtype)
    special = [0.0, -0.0, 80.0, -80.0, 20.0, -20.0, 1e4, -1e4, 1e-3, -1e-3, 1.0, -1.0, f.tiny, -f.tiny,
               f.tiny / 8, -f.tiny / 8, numpy.nan]  # tiny / 8: a denormal
    return numpy.concatenate([rng.standard_normal(n) * 3, special]).astype(dtype)


def positive(rng, dtype, n):
    return (numpy.abs(rng.standard_normal(n)) + 0.01).astype(dtype)


SELU = (A.SELU_ALPHA * A.SELU_SCALE, A.SELU_SCALE)


def _optimizer_state(rng, dtype, n, k):
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


def spec(name, rng, dtype):
    """Arguments for kernel ``name`` (inputs, then the outputs it updates in place if any)."""
    from gradflow import kernel as K
    if name.endswith("_dev") and name[:-4] in K.ELEMENTWISE:  # a device-scalar twin (kernel.device_scalar_twin):
        base, twin = K.ELEMENTWISE[name[:-4]], K.ELEMENTWISE[name]  # the scalar kernel's case, each scalar
        args = list(spec(name[:-4], rng, dtype))                    # the twin reads from memory an array
        n = next(a.size for p, a in zip(base.params, args) if not p.scalar)  # holding its value everywhere
        for k, p in enumerate(base.params):
            if p.scalar and not twin.params[k].scalar:
                args[k] = numpy.full(n, args[k], dtype=dtype if p.placeholder else p.type)
        n_in = sum(not p.output for p in base.params)
        if sum(not p.output for p in twin.params) > n_in:  # its skip flag (found_inf): 0, the update runs
            args.insert(n_in, numpy.zeros(n, numpy.float32))  # (test_kernels_host checks a set flag)
        return tuple(args)
    x = values(rng, dtype)
    n = x.size
    g = rng.standard_normal(n).astype(dtype)
    bits = dict(seed=numpy.uint64(0x1234_5678_9ABC_DEF0), offset=numpy.uint64(2 ** 33 + 5))
    if name == "mask_scale":
        return rng.random(n) < 0.5, g, 1.7, 0.3
    if name in ("sigmoid_fwd", "tanh_fwd", "relu_out", "gelu_fwd", "gelu_tanh_fwd"):
        return (x,)
    if name == "relu_grad":  # relu's output (its extremes: +-0, subnormals, NaN) and a gradient with NaN and inf
        g[:3] = (numpy.nan, numpy.inf, -numpy.inf)
        return A._relu_out_np(x), g
    if name == "sigmoid_bwd":
        return A._sigmoid_np(x), g
    if name == "tanh_bwd":
        return numpy.tanh(x), g
    if name in ("gelu_bwd", "gelu_tanh_bwd"):
        return x, g
    if name == "leaky_relu_fwd":
        return x, 0.01
    if name in ("prelu_fwd", "prelu_bwd"):
        xs = x[:312].reshape(4, 78)
        w = rng.standard_normal((1, 78)).astype(dtype)
        return (xs, w) if name == "prelu_fwd" else (xs, w, g[:312].reshape(4, 78))
    if name == "elu_fwd":
        return x, 1.3, 1.0
    if name == "elu_bwd":
        return x, g, *SELU
    if name == "softplus_fwd":
        return x, 1.5, 20.0
    if name == "softplus_bwd":
        return x, g, 0.5, 10.0
    if name in ("silu_fwd", "hardsigmoid_fwd", "hardswish_fwd", "mish_fwd", "softsign_fwd", "logsigmoid_fwd"):
        return (x,)
    if name in ("silu_bwd", "hardsigmoid_bwd", "hardswish_bwd", "mish_bwd", "softsign_bwd", "logsigmoid_bwd"):
        return x, g
    if name == "hardtanh_fwd":
        return x, -1.0, 6.0
    if name == "hardtanh_bwd":
        return x, g, 0.0, 6.0
    if name == "celu_fwd":
        return x, 1.7, 1 / 1.7
    if name == "celu_bwd":
        return x, g, 0.5, 2.0
    if name == "xent_bwd":
        rows, cols = 40, 7
        logits = (rng.standard_normal((rows, cols)) * 5).astype(dtype)
        logits[0, :] = [80, -80, 0, 1e4, -1e4, 3, 3]
        _, m, logs = S._xent_rows_np(logits, numpy.zeros(rows, numpy.int64), -100)
        target = rng.integers(0, cols, (rows, 1))
        target[3] = -100
        w = rng.standard_normal((rows, 1)).astype(dtype)
        return logits, m[:, None], logs[:, None], target, w, cols, -100
    if name == "dropout_fwd":
        return x, 1 / 0.7, bits["seed"], bits["offset"], numpy.uint64(philox.keep_threshold(0.3))
    if name == "noisy_relu_fwd":
        return x, 0.5, bits["seed"], bits["offset"]
    # optimizers: gradient, host-folded scalars, then the updated arrays
    m = 64
    grad, p = _optimizer_state(rng, dtype, m, 2)
    grad[:4] = [0, numpy.nan, 1e-30, -0.0]
    p[:4] = [0, 1, -0.0, 3]
    pos = [positive(rng, dtype, m) for _ in range(3)]
    if name == "sgd":
        return grad, -0.1, 0.01, 0.001, 1, p
    if name == "sgd_momentum":
        return grad, -0.1, 0.9, 0.8, 1, 0, 0.01, 0.001, 0, p, g[:m]
    adam = (grad, 0.1, 0.999, 0.001, (1 - 0.999 ** 3) ** 0.5, 1e-8, -0.01 / (1 - 0.9 ** 3), 0.01, 1 - 1e-4)
    if name == "adam":
        return (*adam, 1, 0.001, 0, p, g[:m], pos[0])
    if name == "adam_amsgrad":
        return (*adam, 0, 0.0, 1, p, g[:m], pos[0], pos[1])
    if name == "nadam":
        return grad, 0.1, 0.999, 0.001, 1 - 0.999 ** 3, 1e-8, -0.002, -0.01, 0.01, 1 - 2e-5, 0, 1, p, g[:m], pos[0]
    if name == "radam":
        return grad, 0.1, 0.999, 0.001, 1 - 0.9 ** 7, 0.01, (1 - 0.999 ** 7) ** 0.5, 1e-8, 0.3, 1, 0.01, 0.99, 1, 0, \
            p, g[:m], pos[0]
    if name == "adamax":
        return grad, 0.1, 0.999, 1e-8, -0.02, 0.01, 1, p, g[:m], pos[0]
    if name == "adagrad":
        return grad, -0.01, 1e-10, 0.01, 0.001, 1, p, pos[0]
    if name == "adadelta":
        return grad, -1.0, 0.9, 0.1, 1e-6, 0.01, 0.002, 0, p, pos[0], pos[1]
    if name.startswith("rmsprop"):
        scalars = (grad, -0.01, 0.99, 0.01, 1e-8, 0.9, 0.01, 0.001, 0)
        grad_avg = g[:m] * 0.1
        square_avg = grad_avg * grad_avg + pos[0]
        extra = {"rmsprop": (), "rmsprop_centered": (grad_avg,), "rmsprop_momentum": (pos[1],),
                 "rmsprop_centered_momentum": (grad_avg, pos[1])}[name]
        return (*scalars, p, square_avg, *extra)
    raise KeyError(name)


# Kernels that call exp/log/erf/tanh/cos differ from NumPy by the libm: |host - numpy| <=
# (rel * |numpy| + abs) * eps of the dtype. GELU's tails cancel (1 + erf, 1 + tanh near -1),
# so they get an absolute term. All other kernels must match bit for bit.
TRANSCENDENTAL = {name: (8, 0) for name in ("sigmoid_fwd", "tanh_fwd", "elu_fwd", "elu_bwd", "softplus_fwd",
                                            "softplus_bwd", "noisy_relu_fwd")}
TRANSCENDENTAL.update({name: (8, 0) for name in ("silu_fwd", "silu_bwd", "softsign_bwd", "logsigmoid_fwd",
                                                  "logsigmoid_bwd", "celu_fwd", "celu_bwd")})
TRANSCENDENTAL.update({"mish_fwd": (16, 0), "mish_bwd": (16, 4), "silu_bwd": (8, 2)})
TRANSCENDENTAL["xent_bwd"] = (8, 4)  # softmax - 1 cancels for a confident target
TRANSCENDENTAL.update({"gelu_fwd": (64, 4), "gelu_bwd": (64, 4), "gelu_tanh_fwd": (8, 32), "gelu_tanh_bwd": (8, 32)})
