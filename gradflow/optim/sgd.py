"""Stochastic gradient descent, with momentum, Nesterov momentum, L2 and L1 terms (``torch.optim.SGD``).

Full-batch gradient descent is SGD over a single batch holding the whole training set.
"""
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
