"""Regularisation helpers: gradient clipping (in place) and explicit weight penalties (differentiable)."""
import math

from gradflow import backend, ops
from gradflow.compile import GraphCall, replay_as_call
from gradflow.tensor import Tensor, _active_recorder


def _params(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def zero_grads(parameters, set_to_none=True):
    """Drop each gradient (``set_to_none``) or zero it in place; Module and Optimizer both use it.

    A gradient left by ``backward(create_graph=True)`` is part of a graph: zeroing it in
    place would keep that graph alive and chain the next backward onto it (memory grows
    every step). As PyTorch detaches it first, it is replaced by fresh zeros without
    history; its array may be shared with the graph, so it is never written to.
    """
    if set_to_none and _active_recorder() is None:  # every step of a training loop: nobody to tell
        for p in _params(parameters):
            p._grad = None
        return
    for p in _params(parameters):
        g = p.grad
        if g is None:
            continue
        if set_to_none:
            p.grad = None
        elif g.requires_grad or g.creator is not None:
            p.grad = Tensor._wrap(backend.xp_of(g.data).zeros_like(g.data))
        else:
            g.data[...] = 0
            g._bump_version()


def _graph_clip(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """``clip_grad_norm_`` inside a CUDA graph (a ``compile.GraphCall``): the norm and the scaling
    run on the parameters' own gradient buffers, where the graph delivered the gradients."""
    params = _params(parameters)
    buffers = [getattr(p, "_grad_buffer", None) for p in params]
    if error_if_nonfinite or not params or any(b is None for b in buffers):
        return None  # the nonfinite test reads the norm on the host

    def epilogue():
        for p in params:
            p.grad._bump_version()

    return GraphCall(grads=params, device=lambda: _clip(buffers, float(max_norm), float(norm_type)),
                     epilogue=epilogue)


@replay_as_call(graph=_graph_clip)  # in-place on .grad arrays: a captured step re-runs it as a call
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so their joint ``norm_type``-norm is at most ``max_norm``.

    Returns the joint norm before clipping (a 0-d Tensor), as ``torch.nn.utils.clip_grad_norm_``.
    """
    grads = [p.grad for p in _params(parameters) if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return Tensor(0.0)
    xp = backend.xp_of(grads[0].data)
    total = _clip([g.data for g in grads], max_norm, norm_type, error_if_nonfinite)
    for g in grads:
        g._bump_version()
    return Tensor._wrap(xp.asarray(total))


def _clip(arrays, max_norm, norm_type, error_if_nonfinite=False):
    """clip_grad_norm_ on raw arrays, in place, all on the device; returns the total norm."""
    xp = backend.xp_of(arrays[0])
    if norm_type == math.inf:
        norms = xp.stack([xp.abs(g).max() for g in arrays])
        total = norms.max()
    else:
        norms = xp.stack([xp.linalg.norm(g.ravel(), norm_type) for g in arrays])
        total = xp.linalg.norm(norms, norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):  # the one host read, only when asked for
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                           f"{float(total)}; pass error_if_nonfinite=False to clip anyway")
    # on the device, as torch: coef = min(max_norm / (total + 1e-6), 1) in the norm's dtype, and
    # every gradient is scaled by it (by 1 when nothing is clipped; NaN when the norm is NaN)
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in arrays:
        xp.multiply(g, coef.astype(g.dtype, copy=False), out=g)
    return total


@replay_as_call
def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    for p in _params(parameters):
        if p.grad is not None:
            xp = backend.xp_of(p.grad.data)
            xp.clip(p.grad.data, -clip_value, clip_value, out=p.grad.data)
            p.grad._bump_version()


def l2_penalty(parameters):
    """Sum of squared weights, differentiable. Adding ``0.5 * lam * l2_penalty(ps)`` to the loss
    gives the same gradient as the optimizers' ``weight_decay=lam``."""
    params = _params(parameters)
    if not params:
        raise ValueError("l2_penalty: no parameters")
    total = None
    for p in params:
        term = ops.sum(p * p)
        total = term if total is None else total + term
    return total


def l1_penalty(parameters):
    """Sum of absolute weights, differentiable (its subgradient at 0 is 0). Encourages sparse weights;
    the optimizers' ``l1=lam`` option applies the same ``lam * sign(w)`` term inside the update."""
    params = _params(parameters)
    if not params:
        raise ValueError("l1_penalty: no parameters")
    total = None
    for p in params:
        term = ops.sum(ops.abs(p))
        total = term if total is None else total + term
    return total
