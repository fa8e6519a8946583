"""NAdam, RAdam and Adamax (``torch.optim`` names, defaults and single-tensor rules) on fused kernels."""
from gradflow.optim import fused
from gradflow.optim.optimizer import Optimizer


class _AdamFamily(Optimizer):
    def _check_group(self, group, where):
        self._check_nonneg(group, where, "lr", "eps", "weight_decay")
        betas = group["betas"]
        self._check(len(betas) == 2, where, "betas", betas, "must be a pair (beta1, beta2)")
        for i, beta in enumerate(betas):
            self._check(isinstance(beta, (int, float)) and 0.0 <= beta < 1.0, where, f"beta{i + 1}", beta,
                        "must be in [0, 1)")


class NAdam(_AdamFamily):
    """Adam with Nesterov momentum (Dozat, 2016), momentum decay as in torch (``momentum_decay=4e-3``)."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._check_nonneg(group, where, "momentum_decay")

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["mu_product"] = 1.0
            state["exp_avg"] = self._zeros(p)
            state["exp_avg_sq"] = self._zeros(p)

    def _update(self, p, state, group):
        step = state["step"] = int(state["step"]) + 1
        beta1, beta2 = group["betas"]
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * group["momentum_decay"])))
        state["mu_product"] = fused.nadam_mu_product(state["mu_product"], mu)
        fused.nadam_(p.data, p.grad.data, state["exp_avg"].data, state["exp_avg_sq"].data, lr=group["lr"],
                     beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                     momentum_decay=group["momentum_decay"], step=step, mu_product=state["mu_product"],
                     decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"])


class RAdam(_AdamFamily):
    """Rectified Adam (Liu et al., 2020): plain momentum steps until the variance estimate is reliable."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = self._zeros(p)
            state["exp_avg_sq"] = self._zeros(p)

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        beta1, beta2 = group["betas"]
        fused.radam_(p.data, p.grad.data, state["exp_avg"].data, state["exp_avg_sq"].data, lr=group["lr"],
                     beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                     step=state["step"], decoupled_weight_decay=group["decoupled_weight_decay"],
                     maximize=group["maximize"])


class Adamax(_AdamFamily):
    """Adam with the infinity norm of past gradients in place of their RMS (Kingma & Ba, 2015)."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _init_state(self, p, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = self._zeros(p)
            state["exp_inf"] = self._zeros(p)

    def _update(self, p, state, group):
        state["step"] = int(state["step"]) + 1
        beta1, beta2 = group["betas"]
        fused.adamax_(p.data, p.grad.data, state["exp_avg"].data, state["exp_inf"].data, lr=group["lr"],
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      step=state["step"], maximize=group["maximize"])
