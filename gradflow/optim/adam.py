"""Adam and AdamW (``torch.optim.Adam``/``AdamW``): per-coordinate steps from running gradient moments."""
from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class Adam(Optimizer):
    """Kingma & Ba (2015). ``weight_decay`` adds an L2 term to the gradient (coupled), unless
    ``decoupled_weight_decay=True``, which shrinks the weights directly (that is ``AdamW``)."""

    flat = True  # elementwise update: one fused call per group on flat buffers

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, l1=0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, l1=l1))

    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "eps", "weight_decay", "l1")
        betas = group["betas"]
        self._check(len(betas) == 2, where, "betas", betas, "must be a pair (beta1, beta2)")
        for i, beta in enumerate(betas):
            self._check(isinstance(beta, (int, float)) and 0.0 <= beta < 1.0, where, f"beta{i + 1}", beta,
                        "must be in [0, 1)")

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = self._zeros(p)
            state["exp_avg_sq"] = self._zeros(p)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = self._zeros(p)

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        beta1, beta2 = group["betas"]
        max_sq = state.get("max_exp_avg_sq")
        fused.adam_(p.data, p.grad.data, state["exp_avg"].data, state["exp_avg_sq"].data,
                    max_sq.data if max_sq is not None else None, lr=group["lr"], beta1=beta1, beta2=beta2,
                    eps=group["eps"], weight_decay=group["weight_decay"], step=state["step"],
                    amsgrad=group["amsgrad"], decoupled_weight_decay=group["decoupled_weight_decay"],
                    l1=group["l1"], maximize=group["maximize"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): p -= lr * wd * p before the Adam step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, l1=0):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, l1=l1)
