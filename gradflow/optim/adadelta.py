"""Adadelta (``torch.optim.Adadelta``): steps scaled by running RMS of past updates over past gradients."""
from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class Adadelta(Optimizer):
    """Zeiler (2012); ``lr`` (default 1.0) scales the otherwise unit-free step."""

    flat = True  # elementwise update: one fused call per group on flat buffers

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False, l1=0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, l1=l1))

    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "eps", "weight_decay", "l1")
        rho = group["rho"]
        self._check(isinstance(rho, (int, float)) and 0.0 <= rho <= 1.0, where, "rho", rho, "must be in [0, 1]")

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = self._zeros(p)
            state["acc_delta"] = self._zeros(p)

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        fused.adadelta_(p.data, p.grad.data, state["square_avg"].data, state["acc_delta"].data, lr=group["lr"],
                        rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"], l1=group["l1"],
                        maximize=group["maximize"])
