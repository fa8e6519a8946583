"""Stochastic gradient descent, with momentum, Nesterov momentum, L2 and L1 terms (``torch.optim.SGD``).

Full-batch gradient descent is SGD over a single batch holding the whole training set.
"""
import numpy

from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + (1 - dampening) * (g + weight_decay * p + l1 * sign(p))."""

    flat = True  # elementwise update: one fused call per group on flat buffers

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, l1=0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, l1=l1))

    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "momentum", "weight_decay", "l1")
        self._check(isinstance(group["dampening"], (int, float)), where, "dampening", group["dampening"],
                    "must be a number")
        if group["nesterov"]:
            self._check(group["momentum"] > 0 and group["dampening"] == 0, where, "nesterov", True,
                        "Nesterov momentum requires momentum > 0 and zero dampening")

    def _init_state(self, p, state, group):
        if "momentum_buffer" not in state or (state["momentum_buffer"] is None and group["momentum"] != 0):
            state["momentum_buffer"] = None if group["momentum"] == 0 else self._zeros(p)
            state["fresh"] = group["momentum"] != 0  # torch starts the buffer at the first gradient

    def _update(self, p, state, group):
        buf = state["momentum_buffer"]
        fused.sgd_(p.data, p.grad.data, None if buf is None else buf.data, lr=group["lr"], momentum=group["momentum"],
                   dampening=group["dampening"], nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                   l1=group["l1"], maximize=group["maximize"], first_step=state.pop("fresh", False))

    def _prepared_update(self, p, state, group):
        """``_update`` with this group's hyperparameters bound (``fused.bind_sgd``), for the steady step on
        the CPU; None on the GPU, before the buffer's first step, or for a hyperparameter that is not a
        plain number (a Tensor could change without a write to the group)."""
        buf = state["momentum_buffer"]
        hyper = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "l1", "maximize")}
        if "fresh" in state or type(p.data) is not numpy.ndarray or \
                any(type(v) not in (int, float, bool) for v in hyper.values()):
            return None
        return fused.bind_sgd(p.data, p.grad.data, None if buf is None else buf.data, **hyper)
