"""``gradflow.autograd``: torch.autograd's names, including PyTorch-style custom Functions.

Two ways to define an op, one engine:

* ``gradflow.tensor.Function`` (gradflow's internal style, used by every op in ``ops.py``):
  an instance per call, ``forward`` on raw arrays, ``backward`` on Tensors.
* ``gradflow.autograd.Function`` (PyTorch's style, below): static ``forward(ctx, ...)`` and
  ``backward(ctx, ...)`` on Tensors, called through ``MyFn.apply(...)``. Each ``apply``
  builds one internal node (``_CustomNode``) whose array-level forward runs the user's
  forward on Tensors with recording off, so the tape, ``gradcheck``, double backward (the
  user's backward is recorded when ``create_graph=True``) and ``gradflow.compile`` (the
  node is one recorded op; its forward re-runs on replay) all treat it as any other op.
"""
import sys

from gradflow import backend, ops
from gradflow.gradcheck import gradcheck, gradgradcheck
from gradflow.tensor import (Tensor, enable_grad, grad, inference_mode, is_grad_enabled, no_grad,
                             set_grad_enabled)

_tape = sys.modules["gradflow.tensor"]  # the module (gradflow.tensor the attribute is the factory function)


class FunctionCtx:
    """The ``ctx`` of a custom Function: what forward leaves for backward."""

    def __init__(self, node):
        self._node = node
        self.needs_input_grad = ()
        self._non_differentiable = set()

    def save_for_backward(self, *tensors):
        """Save inputs, outputs or intermediates for backward; in-place changes to them are caught."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save Tensors (or None), got {type(t).__name__}; "
                                f"store other values as attributes of ctx")
        self._node.save_for_backward(*[None if t is None else t.data for t in tensors])

    @property
    def saved_tensors(self):
        return self._node.saved_tensors

    def mark_non_differentiable(self, *tensors):
        self._non_differentiable.update(id(t.data) for t in tensors)

    def set_materialize_grads(self, value):
        """Accepted for compatibility: gradflow always passes zeros for outputs that got no gradient."""

    def mark_dirty(self, *tensors):
        raise RuntimeError("custom Functions that modify their inputs in place are not supported by gradflow; "
                           "return a new tensor instead")


class _CustomNode(_tape.Function):
    """One call of a PyTorch-style Function on the tape. ``spec`` (the Function class and the
    non-tensor arguments) is fixed at construction; the ctx is made afresh by each forward."""

    def __init__(self, cls, template):
        self.cls = cls
        self.template = template  # the call's arguments, with None where a Tensor goes

    @property
    def name(self):
        return f"{self.cls.__name__}Backward"

    def forward(self, *arrays):
        ctx = self.ctx = FunctionCtx(self)
        ctx.needs_input_grad = self._needs
        it = iter(arrays)
        args = [Tensor._wrap(next(it)) if a is _TENSOR else a for a in self.template]
        recorder, _tape._state._recorder = _tape._state._recorder, None  # the user's ops are inside this one op
        try:
            with no_grad():
                if "setup_context" in _defined(self.cls):  # torch 2's style: forward without ctx
                    out = self.cls.forward(*args)
                    self.cls.setup_context(ctx, tuple(args), out)
                else:
                    out = self.cls.forward(ctx, *args)
        finally:
            _tape._state._recorder = recorder
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        for o in outs:
            if not isinstance(o, Tensor):
                raise TypeError(f"{self.cls.__name__}.forward must return a Tensor or a tuple of Tensors, got "
                                f"{type(o).__name__}; wrap arrays with gradflow.tensor(...)")
        self.single = single
        arrays_out = tuple(o.data for o in outs)
        for a in arrays_out:
            if any(a is x for x in arrays):  # an input returned as is: give the output its own array
                arrays_out = tuple(b.view() if b is a else b for b in arrays_out)
        return arrays_out[0] if single else arrays_out

    def backward(self, *gys):
        grads = self.cls.backward(self.ctx, *gys)  # the engine set the grad mode (create_graph)
        if not isinstance(grads, tuple):
            grads = (grads,)
        n_args = len(self.template)
        if len(grads) > n_args and all(g is None for g in grads[n_args:]):
            grads = grads[:n_args]  # trailing Nones are allowed, as in torch
        if len(grads) != n_args:
            raise RuntimeError(f"{self.cls.__name__}.backward returned {len(grads)} gradients, but forward took "
                               f"{n_args} arguments; return one per argument (None for non-tensor ones)")
        out = []
        for i, (a, g) in enumerate(zip(self.template, grads)):
            if a is not _TENSOR:
                if g is not None:
                    raise RuntimeError(f"{self.cls.__name__}.backward returned a gradient for argument {i}, "
                                       f"which is not a Tensor; return None for it")
                continue
            if g is not None and not isinstance(g, Tensor):
                raise TypeError(f"{self.cls.__name__}.backward must return Tensors or None, got "
                                f"{type(g).__name__} for argument {i}; wrap raw arrays with gradflow.tensor(...) "
                                f"(gradients are Tensors so backward can itself be differentiated)")
            x = self.inputs[len(out)]
            if g is not None and g.shape != x.shape:  # a broadcast gradient is summed back, as in torch
                try:
                    g = ops.sum_to(g, x.shape)
                except ValueError:
                    raise RuntimeError(f"{self.cls.__name__}.backward returned a gradient of shape {g.shape} for "
                                       f"argument {i} of shape {x.shape}") from None
            out.append(g)
        return tuple(out)

    def __call__(self, *inputs):
        if is_grad_enabled():
            for x in inputs:  # a stale view's requires_grad may change (the tape's __call__ syncs too late for it)
                ops._sync_view(x)
        self._needs = tuple(x.requires_grad and is_grad_enabled() for x in _expand(self.template, inputs))
        return super().__call__(*inputs)


_TENSOR = object()  # marks where a Tensor argument goes in a node's template


def _defined(cls):
    """Names a Function subclass defines itself (not inherited from gradflow.autograd.Function)."""
    names = set()
    for klass in cls.__mro__:
        if klass is Function:
            break
        names.update(vars(klass))
    return names


def _expand(template, tensors):
    it = iter(tensors)
    return [next(it) if a is _TENSOR else _Plain for a in template]


class _Plain:
    requires_grad = False


class Function:
    """Base class of PyTorch-style custom ops::

        class Scale(gradflow.autograd.Function):
            @staticmethod
            def forward(ctx, x, k):
                ctx.k = k
                return x * k

            @staticmethod
            def backward(ctx, g):
                return g * ctx.k, None

        y = Scale.apply(x, 3.0)
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a custom Function must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a custom Function must define backward(ctx, ...) to be differentiated")

    @classmethod
    def apply(cls, *args):
        tensors = [a for a in args if isinstance(a, Tensor)]
        if not tensors:
            raise TypeError(f"{cls.__name__}.apply needs at least one Tensor argument")
        template = tuple(_TENSOR if isinstance(a, Tensor) else a for a in args)
        node = _CustomNode(cls, template)
        out = node(*tensors)
        for o in (out if isinstance(out, tuple) else (out,)):
            if id(o.data) in node.ctx._non_differentiable:
                o.requires_grad = False
        return out


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """``torch.autograd.backward``: backward from several outputs at once."""
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    elif isinstance(grad_tensors, Tensor):
        grad_tensors = [grad_tensors]
    grads = []
    for t, g in zip(tensors, grad_tensors):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, got shape {t.shape}")
            g = Tensor._wrap(backend.xp_of(t.data).ones_like(t.data))
        grads.append(_tape.as_tensor(g, like=t))
    _tape.run_backward(tensors, grads, bool(retain_graph) or create_graph, create_graph)


__all__ = ["Function", "FunctionCtx", "backward", "enable_grad", "grad", "gradcheck", "gradgradcheck",
           "inference_mode", "no_grad", "set_grad_enabled"]
