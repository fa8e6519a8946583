"""Op microbenchmarks: one op (forward + backward where it has one) per timed call.

For each op there are three implementations: gradflow's public op, PyTorch's, and the
plain NumPy/CuPy composition a person would write by hand (the same code on either
device). Each ``build_*`` function returns ``(fn, inputs)`` for ``harness.Runner``, with
inputs rotated over a few buffers, or raises ``Unavailable`` with the reason.
"""
import math
from dataclasses import dataclass

import numpy

from benchmarks import numpy_mlp
from gradflow import backend


class Unavailable(Exception):
    """This implementation of the op does not exist here."""


@dataclass
class OpSpec:
    op: str            # "matmul", "relu", "dropout", "softmax_ce", "sgd_update", ...
    shape: str         # human-readable shape(s)
    kind: str          # "matmul" | "activation" | "dropout" | "softmax_ce" | "optimizer"
    args: tuple        # what the builder needs (shapes, names)
    note: str = ""


# ---- the op list -------------------------------------------------------------------------------------------
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "elu", "selu", "softplus", "gelu")


def op_specs(quick):
    """The ops to time: at the 784-128-32-10 MLP's shapes (and the large MLP's, in full mode)."""
    specs = []
    mm = [(128, 784, 128)] if quick else [(128, 784, 128), (128, 128, 32), (128, 32, 10),
                                          (2048, 784, 128), (256, 2048, 2048)]
    for b, k, n in mm:
        specs.append(OpSpec("matmul", f"({b},{k})@({k},{n})", "matmul", (b, k, n), "x @ W.T, forward"))
    act_shape = (2048, 128)
    acts = ("relu", "tanh") if quick else ACTIVATIONS
    for name in acts:
        specs.append(OpSpec(name, _shape(act_shape), "activation", (name, act_shape),
                            "forward + backward" + (", tanh approximation" if name == "gelu" else "")))
    specs.append(OpSpec("dropout", _shape(act_shape), "dropout", (act_shape, 0.5), "p=0.5, forward + backward"))
    for b in ((2048,) if quick else (128, 2048, 8192)):
        specs.append(OpSpec("softmax_ce", _shape((b, 10)), "softmax_ce", ((b, 10),), "mean loss, forward + backward"))
    convs = [(128, 16, 14, 14, 32, 5, 2)] if quick else [(128, 1, 28, 28, 16, 5, 2), (128, 16, 14, 14, 32, 5, 2),
                                                         (32, 64, 32, 32, 64, 3, 1)]
    for n, c, h, w, o, k, pad in convs:
        specs.append(OpSpec("conv2d", f"({n},{c},{h},{w})*({o},{c},{k},{k})", "conv2d", (n, c, h, w, o, k, pad),
                            f"padding {pad}, bias; forward + backward to input, weight and bias"))
    opt_shapes = [(128, 784)] if quick else [(128, 784), (2048, 2048)]
    for optimizer in (("sgd",) if quick else ("sgd", "adam")):
        for shape in opt_shapes:
            specs.append(OpSpec(f"{optimizer}_update", _shape(shape), "optimizer", (optimizer, shape),
                                "one parameter; gradflow: fused in-place kernel, numpy-loop: unfused composition, "
                                "torch: optimizer.step()"))
    return specs


def _shape(shape):
    return "(" + ",".join(str(s) for s in shape) + ")"


def build(spec, contestant, rng, n_inputs):
    builder = {"conv2d": build_conv2d, "matmul": build_matmul, "activation": build_activation, "dropout": build_dropout,
               "softmax_ce": build_softmax_ce, "optimizer": build_optimizer}[spec.kind]
    return builder(contestant.framework, contestant.device, rng, n_inputs, *spec.args)


# ---- helpers -----------------------------------------------------------------------------------------------------
def _host(rng, shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=numpy.float32) * numpy.float32(scale))


def _gf_tensor(array, device, requires_grad=False):
    from gradflow.tensor import Tensor
    t = Tensor._wrap(backend.to_device(numpy.ascontiguousarray(array), device))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _torch_tensor(array, device, requires_grad=False):
    import torch
    t = torch.from_numpy(numpy.ascontiguousarray(array)).to(device)
    return t.requires_grad_(requires_grad)


def _gf_functional():
    try:
        from gradflow.nn import functional
        return functional
    except ImportError as e:
        raise Unavailable(f"gradflow.nn.functional is not importable ({e})")


def _tensors(framework, device, arrays, requires_grad=False):
    if framework == "gradflow":
        return tuple(_gf_tensor(a, device, requires_grad and i == 0) for i, a in enumerate(arrays))
    if framework == "torch":
        return tuple(_torch_tensor(a, device, requires_grad and i == 0) for i, a in enumerate(arrays))
    return tuple(backend.to_device(numpy.ascontiguousarray(a), device) for a in arrays)


# ---- matmul ---------------------------------------------------------------------------------------------------
def build_matmul(framework, device, rng, n_inputs, b, k, n):
    w = _host(rng, (n, k), 1 / math.sqrt(k))
    inputs = []
    for _ in range(n_inputs):
        x, wt = _tensors(framework, device, (_host(rng, (b, k)), w))
        inputs.append((x, wt))

    def fn(x, w):
        return x @ w.T
    return fn, inputs


# ---- conv2d ---------------------------------------------------------------------------------------------------
def build_conv2d(framework, device, rng, n_inputs, n, c, h, w, o, k, pad):
    """conv2d forward and the gradients of input, weight and bias (the MNIST CNN's shapes)."""
    if framework not in ("gradflow", "torch"):
        raise Unavailable("no hand-written convolution to compare with")
    bound = 1 / math.sqrt(c * k * k)
    weight, bias = _host(rng, (o, c, k, k), bound), _host(rng, (o,), bound)
    inputs = []
    for _ in range(n_inputs):
        arrays = (_host(rng, (n, c, h, w)), weight, bias, _host(rng, (n, o, h + 2 * pad - k + 1, w + 2 * pad - k + 1)))
        make = _gf_tensor if framework == "gradflow" else _torch_tensor
        inputs.append(tuple(make(a, device, i < 3) for i, a in enumerate(arrays)))
    if framework == "gradflow":
        F = _gf_functional()
        import gradflow

        def fn(x, wt, b, g):
            return gradflow.grad(F.conv2d(x, wt, b, padding=pad), [x, wt, b], grad_outputs=g)
        return fn, inputs
    import torch
    import torch.nn.functional as TF

    def fn(x, wt, b, g):
        return torch.autograd.grad(TF.conv2d(x, wt, b, padding=pad), [x, wt, b], g)
    return fn, inputs


# ---- activations ------------------------------------------------------------------------------------------------
def _numpy_activation(xp, name):
    """(forward, backward(x, y, g)) written out by hand, as arithmetic: ``where`` on a
    random mask is branchy and several times slower than a multiply in NumPy. (A bool mask
    times a Python float would be float64, hence the typed constants.)"""
    def sigmoid(x):
        return 1.0 / (1.0 + xp.exp(-x))

    def gelu_inner(x):
        return 0.7978845608 * (x + 0.044715 * (x * x * x))

    def gelu_bwd(x, y, g):
        t = xp.tanh(gelu_inner(x))
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608 * (1.0 + 3 * 0.044715 * (x * x)))

    a, lam = 1.6732632423543772, 1.0507009873554805     # SELU's alpha and scale
    table = {
        "relu": (lambda x: xp.maximum(x, 0), lambda x, y, g: g * (x > 0)),
        "leaky_relu": (lambda x: xp.maximum(x, x * 0.01),
                       lambda x, y, g: g * ((x > 0) * x.dtype.type(0.99) + x.dtype.type(0.01))),
        "sigmoid": (sigmoid, lambda x, y, g: g * y * (1.0 - y)),
        "tanh": (xp.tanh, lambda x, y, g: g * (1.0 - y * y)),
        # elu(x) = max(x, 0) + expm1(min(x, 0)); its derivative is exp(min(x, 0))
        "elu": (lambda x: xp.maximum(x, 0) + xp.expm1(xp.minimum(x, 0)),
                lambda x, y, g: g * xp.exp(xp.minimum(x, 0))),
        "selu": (lambda x: lam * (xp.maximum(x, 0) + a * xp.expm1(xp.minimum(x, 0))),
                 lambda x, y, g: g * (lam * (a * xp.exp(xp.minimum(x, 0)) + (x > 0) * x.dtype.type(1 - a)))),
        # softplus(x) = max(x, 0) + log1p(exp(-|x|)), stable and cheaper than logaddexp
        "softplus": (lambda x: xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x))), lambda x, y, g: g * sigmoid(x)),
        "gelu": (lambda x: 0.5 * x * (1.0 + xp.tanh(gelu_inner(x))), gelu_bwd),
    }
    return table[name]


def _tanh_gelu(gelu):
    """GELU is compared in its tanh form everywhere (NumPy has no erf to write the exact one with)."""
    return lambda x: gelu(x, approximate="tanh")


def build_activation(framework, device, rng, n_inputs, name, shape):
    inputs = [_tensors(framework, device, (_host(rng, shape), _host(rng, shape)), requires_grad=True)
              for _ in range(n_inputs)]
    if framework == "gradflow":
        F = _gf_functional()
        import gradflow
        f = getattr(F, name, None)
        if f is None:
            raise Unavailable(f"gradflow.nn.functional has no {name}")
        if name == "gelu":
            f = _tanh_gelu(f)

        def fn(x, g):
            return gradflow.grad(f(x), x, grad_outputs=g)[0]
        return fn, inputs
    if framework == "torch":
        import torch
        import torch.nn.functional as TF
        f = getattr(TF, name)
        if name == "gelu":
            f = _tanh_gelu(f)

        def fn(x, g):
            return torch.autograd.grad(f(x), x, g)
        return fn, inputs
    fwd, bwd = _numpy_activation(backend.xp_for(device), name)

    def fn(x, g):
        return bwd(x, fwd(x), g)
    return fn, inputs


# ---- dropout ------------------------------------------------------------------------------------------------
def build_dropout(framework, device, rng, n_inputs, shape, p):
    inputs = [_tensors(framework, device, (_host(rng, shape), _host(rng, shape)), requires_grad=True)
              for _ in range(n_inputs)]
    if framework == "gradflow":
        F = _gf_functional()
        import gradflow

        def fn(x, g):
            return gradflow.grad(F.dropout(x, p, True), x, grad_outputs=g)[0]
        return fn, inputs
    if framework == "torch":
        import torch
        import torch.nn.functional as TF

        def fn(x, g):
            return torch.autograd.grad(TF.dropout(x, p, True), x, g)
        return fn, inputs
    xp = backend.xp_for(device)
    gen = xp.random.default_rng(0)
    scale = 1.0 / (1.0 - p)

    def fn(x, g):
        mask = (gen.random(x.shape, dtype=numpy.float32) >= p).astype(numpy.float32)
        mask *= scale
        return x * mask, g * mask
    return fn, inputs


# ---- softmax cross-entropy -----------------------------------------------------------------------------------
def build_softmax_ce(framework, device, rng, n_inputs, shape):
    n, c = shape
    host = [(_host(rng, shape), rng.integers(0, c, n)) for _ in range(n_inputs)]
    if framework == "gradflow":
        F = _gf_functional()
        import gradflow
        inputs = [(_gf_tensor(x, device, True), _gf_tensor(y, device)) for x, y in host]

        def fn(x, y):
            return gradflow.grad(F.cross_entropy(x, y), x)[0]
        return fn, inputs
    if framework == "torch":
        import torch
        import torch.nn.functional as TF
        inputs = [(_torch_tensor(x, device, True), _torch_tensor(y, device)) for x, y in host]

        def fn(x, y):
            return torch.autograd.grad(TF.cross_entropy(x, y), x)
        return fn, inputs
    xp = backend.xp_for(device)
    inputs = [(backend.to_device(x, device), backend.to_device(y, device)) for x, y in host]

    def fn(x, y):
        return numpy_mlp.softmax_cross_entropy(xp, x, y)
    return fn, inputs


# ---- optimizer updates ---------------------------------------------------------------------------------------------
LR, MOMENTUM, BETAS, EPS = 0.01, 0.9, (0.9, 0.999), 1e-8


def build_optimizer(framework, device, rng, n_inputs, optimizer, shape):
    host = [(_host(rng, shape), _host(rng, shape)) for _ in range(n_inputs)]
    if framework == "gradflow":
        try:
            from gradflow.optim import fused
        except ImportError as e:
            raise Unavailable(f"gradflow.optim.fused is not importable ({e})")
        return _gradflow_fused(fused, optimizer, device, host)
    if framework == "torch":
        return _torch_optimizer(optimizer, device, host)
    return _numpy_optimizer(backend.xp_for(device), optimizer, device, host)


def _gradflow_fused(fused, optimizer, device, host):
    xp = backend.xp_for(device)
    inputs = []
    for p, g in host:
        p, g = backend.to_device(p, device), backend.to_device(g, device)
        inputs.append((p, g, xp.zeros_like(p), xp.zeros_like(p), [0]))
    if optimizer == "sgd":
        if not hasattr(fused, "sgd_"):
            raise Unavailable("gradflow.optim.fused has no sgd_")

        def fn(p, g, buf, _unused, _count):
            fused.sgd_(p, g, buf, lr=LR, momentum=MOMENTUM, dampening=0.0, nesterov=False, weight_decay=0.0)
        return fn, inputs
    if not hasattr(fused, "adam_"):
        raise Unavailable("gradflow.optim.fused has no adam_")
    import inspect
    params = inspect.signature(fused.adam_).parameters
    kwargs = dict(lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=0.0)
    if "betas" in params:
        kwargs = dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    extra = (None,) if "max_exp_avg_sq" in params else ()   # no AMSGrad

    def fn(p, g, m, v, count):
        count[0] += 1
        fused.adam_(p, g, m, v, *extra, step=count[0], **kwargs)
    return fn, inputs


def _torch_optimizer(optimizer, device, host):
    import torch
    inputs = []
    for p, g in host:
        tp = torch.nn.Parameter(_torch_tensor(p, device))
        tp.grad = _torch_tensor(g, device)
        opt = (torch.optim.SGD([tp], lr=LR, momentum=MOMENTUM) if optimizer == "sgd"
               else torch.optim.Adam([tp], lr=LR, betas=BETAS, eps=EPS))
        inputs.append((opt,))

    def fn(opt):
        opt.step()
    return fn, inputs


def _numpy_optimizer(xp, optimizer, device, host):
    inputs = []
    for p, g in host:
        p, g = backend.to_device(p, device), backend.to_device(g, device)
        inputs.append((p, g, xp.zeros_like(p), xp.zeros_like(p), [0]))
    if optimizer == "sgd":
        def fn(p, g, buf, _unused, _count):
            buf *= MOMENTUM
            buf += g
            p -= LR * buf
        return fn, inputs
    b1, b2 = BETAS

    def fn(p, g, m, v, count):
        count[0] += 1
        t = count[0]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        step_size = LR / (1 - b1 ** t)
        denom = xp.sqrt(v / (1 - b2 ** t))
        denom += EPS
        p -= step_size * (m / denom)
    return fn, inputs
