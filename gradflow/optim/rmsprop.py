"""RMSprop (``torch.optim.RMSprop``): steps divided by a running RMS of the gradient."""
from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class RMSprop(Optimizer):
    """Hinton's RMSprop; ``centered`` subtracts the running mean of the gradient from its variance."""

    flat = True  # elementwise update: one fused call per group on flat buffers

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, *,
                 maximize=False, l1=0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize, l1=l1))

    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "alpha", "eps", "weight_decay", "momentum", "l1")

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = self._zeros(p)
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = self._zeros(p)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = self._zeros(p)

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        grad_avg, buf = state.get("grad_avg"), state.get("momentum_buffer")
        fused.rmsprop_(p.data, p.grad.data, state["square_avg"].data, grad_avg.data if grad_avg is not None else None,
                       buf.data if buf is not None else None, lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                       weight_decay=group["weight_decay"], momentum=group["momentum"], centered=group["centered"],
                       l1=group["l1"], maximize=group["maximize"])
