// Fused optimizer updates: one element of one parameter, updated in place.
//
// Each function is the per-element body of PyTorch's single-tensor (foreach=False)
// rule, with the same operation order, so float32/float64 results match torch.optim
// to rounding. Hyperparameter arithmetic that does not depend on the element (bias
// corrections, 1 - beta, -lr, ...) is folded on the host in double and passed as T,
// as torch does when it multiplies a tensor by a Python float. Optional state is
// passed as a pointer that is null when the variant does not keep it.
#ifndef GF_OPTIMIZERS_CUH
#define GF_OPTIMIZERS_CUH
#include "common.cuh"

// torch.lerp: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w).
template <typename T> GF_FN T gf_lerp(T a, T b, T w) {
  return (w < T(0.5) && w > T(-0.5)) ? a + w * (b - a) : b - (b - a) * (T(1) - w);
}

// The gradient every rule starts from: negated to maximize, plus weight decay and the
// L1 penalty l1 * sign(param) at the point torch adds weight decay.
template <typename T> GF_FN T gf_opt_grad(T p, T g, int maximize, T weight_decay, T l1) {
  if (maximize) g = -g;
  if (weight_decay != T(0)) g = gf_fma(weight_decay, p, g);
  if (l1 != T(0)) g = g + l1 * gf_sign(p);
  return g;
}

// SGD with optional momentum (buf null without it); first_step initializes buf = g.
template <typename T>
GF_FN void gf_sgd(T& p, T g, T* buf, T neg_lr, T momentum, T one_minus_dampening, int nesterov, int first_step,
                  T weight_decay, T l1, int maximize) {
  g = gf_opt_grad(p, g, maximize, weight_decay, l1);
  if (buf) {
    *buf = first_step ? g : gf_fma(one_minus_dampening, g, *buf * momentum);
    g = nesterov ? gf_fma(momentum, *buf, g) : *buf;
  }
  p = gf_fma(neg_lr, g, p);
}

// Adam / AdamW (decoupled: p *= 1 - lr * wd first), optional AMSGrad (vmax null without).
template <typename T>
GF_FN void gf_adam(T& p, T g, T& m, T& v, T* vmax, T one_minus_beta1, T beta2, T one_minus_beta2,
                   T bias_correction2_sqrt, T eps, T neg_step_size, T weight_decay, T decay_factor,
                   int decoupled, T l1, int maximize) {
  if (maximize) g = -g;
  if (weight_decay != T(0)) {
    if (decoupled) p = p * decay_factor;
    else g = gf_fma(weight_decay, p, g);
  }
  if (l1 != T(0)) g = g + l1 * gf_sign(p);
  m = gf_lerp(m, g, one_minus_beta1);
  v = v * beta2 + one_minus_beta2 * g * g;
  T second = v;
  if (vmax) {
    *vmax = gf_max(*vmax, v);
    second = *vmax;
  }
  const T denom = gf_sqrt(second) / bias_correction2_sqrt + eps;
  p = p + neg_step_size * m / denom;
}

template <typename T>
GF_FN void gf_adagrad(T& p, T g, T& sum, T neg_clr, T eps, T weight_decay, T l1, int maximize) {
  g = gf_opt_grad(p, g, maximize, weight_decay, l1);
  sum = sum + g * g;
  const T denom = gf_sqrt(sum) + eps;
  p = p + neg_clr * g / denom;
}

template <typename T>
GF_FN void gf_adadelta(T& p, T g, T& square_avg, T& acc_delta, T neg_lr, T rho, T one_minus_rho, T eps,
                       T weight_decay, T l1, int maximize) {
  g = gf_opt_grad(p, g, maximize, weight_decay, l1);
  square_avg = square_avg * rho + one_minus_rho * g * g;
  const T denom = gf_sqrt(square_avg + eps);
  const T delta = gf_sqrt(acc_delta + eps) / denom * g;
  acc_delta = acc_delta * rho + one_minus_rho * delta * delta;
  p = gf_fma(neg_lr, delta, p);
}

// RMSprop; grad_avg non-null when centered, buf non-null when momentum > 0.
template <typename T>
GF_FN void gf_rmsprop(T& p, T g, T& square_avg, T* grad_avg, T* buf, T neg_lr, T alpha, T one_minus_alpha, T eps,
                      T momentum, T weight_decay, T l1, int maximize) {
  g = gf_opt_grad(p, g, maximize, weight_decay, l1);
  square_avg = square_avg * alpha + one_minus_alpha * g * g;
  T avg;
  if (grad_avg) {
    *grad_avg = gf_lerp(*grad_avg, g, one_minus_alpha);
    avg = gf_sqrt(square_avg + T(-1) * *grad_avg * *grad_avg);
  } else {
    avg = gf_sqrt(square_avg);
  }
  avg = avg + eps;
  if (buf) {
    *buf = *buf * momentum + g / avg;
    p = gf_fma(neg_lr, *buf, p);
  } else {
    p = p + neg_lr * g / avg;
  }
}

// ==== issue 13: NAdam, RAdam, Adamax (torch's single-tensor rules, same operation order) ====
// NAdam: c_grad = -lr (1 - mu) / (1 - mu_product), c_avg = -lr mu_next / (1 - mu_product mu_next),
// folded on the host; decoupled weight decay multiplies p by decay_factor = 1 - lr wd first.
template <typename T>
GF_FN void gf_nadam(T& p, T g, T& m, T& v, T one_minus_beta1, T beta2, T one_minus_beta2, T bias_correction2,
                    T eps, T c_grad, T c_avg, T weight_decay, T decay_factor, int decoupled, int maximize) {
  if (maximize) g = -g;
  if (weight_decay != T(0)) {
    if (decoupled) p = p * decay_factor;
    else g = gf_fma(weight_decay, p, g);
  }
  m = gf_lerp(m, g, one_minus_beta1);
  v = v * beta2 + one_minus_beta2 * g * g;
  const T denom = gf_sqrt(v / bias_correction2) + eps;
  p = p + c_grad * g / denom;
  p = p + c_avg * m / denom;
}

// RAdam: rectified (rect > 0 folded on the host when rho_t > 5) or plain momentum SGD.
// torch computes bc2_sqrt / (sqrt(v) + eps) as reciprocal(sqrt(v) + eps) * bc2_sqrt.
template <typename T>
GF_FN void gf_radam(T& p, T g, T& m, T& v, T one_minus_beta1, T beta2, T one_minus_beta2, T bias_correction1,
                    T lr, T bias_correction2_sqrt, T eps, T rect, int rectify, T weight_decay, T decay_factor,
                    int decoupled, int maximize) {
  if (maximize) g = -g;
  if (weight_decay != T(0)) {
    if (decoupled) p = p * decay_factor;
    else g = gf_fma(weight_decay, p, g);
  }
  m = gf_lerp(m, g, one_minus_beta1);
  v = v * beta2 + one_minus_beta2 * g * g;
  T u = m / bias_correction1;
  u = u * lr;
  if (rectify) {
    const T adaptive = (T(1) / (gf_sqrt(v) + eps)) * bias_correction2_sqrt;
    u = u * adaptive;
    u = u * rect;
  }
  p = p - u;
}

// Adamax: exp_inf = max(exp_inf * beta2, |g| + eps) (NaN-propagating), p += (-clr m) / exp_inf.
template <typename T>
GF_FN void gf_adamax(T& p, T g, T& m, T& u, T one_minus_beta1, T beta2, T eps, T neg_clr, T weight_decay,
                     int maximize) {
  if (maximize) g = -g;
  if (weight_decay != T(0)) g = gf_fma(weight_decay, p, g);
  m = gf_lerp(m, g, one_minus_beta1);
  u = gf_max(u * beta2, (g < T(0) ? -g : g) + eps);
  p = p + neg_clr * m / u;
}

#endif  // GF_OPTIMIZERS_CUH
