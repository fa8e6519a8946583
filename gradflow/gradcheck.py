"""Check analytic gradients against float64 central differences.

One backward pass of ``sum(r * f(x))`` for a fixed random ``r`` gives every input's
analytic gradient at once; the numeric side perturbs one element at a time.
"""
import numpy

from gradflow import backend
from gradflow.tensor import Tensor, enable_grad, grad, no_grad


def _outputs(fn, inputs):
    out = fn(*inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _projection(outputs, seed):
    rng = numpy.random.default_rng(seed)
    return [backend.to_device(rng.standard_normal(y.shape), y.device).astype(y.dtype) for y in outputs]


def _weighted_sum(outputs, weights):
    """sum(r * y) over the outputs that depend on the inputs (None when none does)."""
    total = None
    for y, w in zip(outputs, weights):
        if y.requires_grad:
            term = (y * Tensor._wrap(w)).sum()
            total = term if total is None else total + term
    return total


def _scalar(outputs, weights):
    total = 0.0
    for y, w in zip(outputs, weights):
        if y.dtype.kind == "f":
            total += float((backend.to_numpy(y.data).astype(numpy.float64) * backend.to_numpy(w)).sum())
    return total


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """True when ``fn``'s backward matches central differences for every input element.

    ``inputs`` are Tensors; those with ``requires_grad`` are checked and should be float64.
    On a mismatch raises AssertionError naming the input, the worst element and both values.
    """
    inputs = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != numpy.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; use float64 for central differences")
    outputs = _outputs(fn, inputs)
    weights = _projection(outputs, seed)
    total = _weighted_sum(outputs, weights)
    if total is None:  # outputs are constant in the inputs: the numeric side must find zeros
        analytic = [None] * len(checked)
    else:
        analytic = grad(total, [inputs[i] for i in checked], allow_unused=True)

    for i, g in zip(checked, analytic):
        x = inputs[i]
        a = numpy.zeros(x.shape) if g is None else backend.to_numpy(g.data)
        n = numpy.zeros(x.shape)
        flat = x.data.reshape(-1)  # a view: perturbations land in x.data
        with no_grad():
            for k in range(flat.size):
                orig = flat[k].item()
                flat[k] = orig + eps
                plus = _scalar(_outputs(fn, inputs), weights)
                flat[k] = orig - eps
                minus = _scalar(_outputs(fn, inputs), weights)
                flat[k] = orig
                n.reshape(-1)[k] = (plus - minus) / (2 * eps)
        err = numpy.abs(a - n) - (atol + rtol * numpy.abs(n))
        if err.size and err.max() > 0:
            k = numpy.unravel_index(int(err.argmax()), err.shape)
            msg = (f"gradcheck: gradient of input {i} (shape {x.shape}) is wrong at element {tuple(int(j) for j in k)}: "
                   f"analytic {a[k]:.8g}, numeric {n[k]:.8g}, |diff| {abs(a[k] - n[k]):.3g} "
                   f"> atol {atol} + rtol {rtol} * |numeric|; {int((err > 0).sum())} of {err.size} elements fail")
            if raise_exception:
                raise AssertionError(msg)
            return False
    return True


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Check second derivatives: gradcheck of the (recorded) first-order gradient."""
    inputs = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    with no_grad():
        weights = _projection(_outputs(fn, inputs), seed)

    def first_order(*xs):
        with enable_grad():  # gradcheck's numeric side runs under no_grad
            total = _weighted_sum(_outputs(fn, xs), weights)
            gs = grad(total, [xs[i] for i in checked], create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)

    return gradcheck(first_order, inputs, eps, atol, rtol, seed + 1, raise_exception)
