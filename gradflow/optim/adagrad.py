"""Adagrad (``torch.optim.Adagrad``): steps shrink with each coordinate's accumulated squared gradient."""
from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class Adagrad(Optimizer):
    """Duchi et al. (2011): p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum g^2) + eps)."""

    flat = True  # elementwise update: one fused call per group on flat buffers

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, *,
                 maximize=False, l1=0):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize, l1=l1))

    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "l1")

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["sum"] = self._zeros(p)
            state["sum"].data[...] = group["initial_accumulator_value"]

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        fused.adagrad_(p.data, p.grad.data, state["sum"].data, lr=group["lr"], lr_decay=group["lr_decay"],
                       weight_decay=group["weight_decay"], eps=group["eps"], step=state["step"], l1=group["l1"],
                       maximize=group["maximize"])
