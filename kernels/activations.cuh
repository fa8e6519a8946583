// Element math of the activation functions and of their first derivatives.
//
// Each forward/derivative pair follows PyTorch's CPU formulas (operation order
// included) so results agree to rounding. Derivatives take what the forward saved:
// the output for sigmoid/tanh, the input otherwise; masks come from dropout.cuh or
// the forward kernels themselves.
#ifndef GF_ACTIVATIONS_CUH
#define GF_ACTIVATIONS_CUH
#include "common.cuh"

template <typename T> GF_FN T gf_sigmoid(T x) { return T(1) / (T(1) + gf_exp(-x)); }
template <typename T> GF_FN T gf_sigmoid_grad(T y, T g) { return g * (T(1) - y) * y; }

template <typename T> GF_FN T gf_tanh_grad(T y, T g) { return g * (T(1) - y * y); }

// relu(NaN) is NaN and the kink x = 0 gets gradient 0, as in torch; a positive subnormal
// passes (gf_le0/gf_gt0 do not flush, see common.cuh).
template <typename T> GF_FN T gf_relu(T x) { return gf_le0(x) ? T(0) : x; }

// relu's backward from its output y (+0 where x <= 0, x elsewhere, NaN kept): g where y != 0,
// +0 elsewhere, as torch's threshold_backward of the result. Float reads y's bits (-ftz would
// flush a subnormal y to zero in a comparison); double is never flushed.
GF_FN bool gf_nonzero(float y) { return (gf_float_bits(y) & 0x7fffffff) != 0; }
GF_FN bool gf_nonzero(double y) { return !(y == 0.0); }
template <typename T> GF_FN T gf_relu_grad(T y, T g) { return gf_nonzero(y) ? g : T(0); }

template <typename T> GF_FN T gf_leaky_relu(T x, T slope) { return gf_gt0(x) ? x : x * slope; }

// g * (mask ? a : b): the backward of leaky_relu (1, slope), dropout (1/(1-p), 0) and
// noisy_relu (1, 0) (relu's is gf_relu_grad, from its output). Linear in g, so it is also its
// own backward. (a, b) = (1, 0) is a select, exactly 0 where the mask is off
// even for a NaN or inf g (PyTorch's threshold_backward), dropout's (scale, 0) multiplies.
template <typename T> GF_FN T gf_mask_scale(bool mask, T g, T a, T b) {
  return (a == T(1) && b == T(0)) ? (mask ? g : T(0)) : g * (mask ? a : b);
}

// prelu with a per-channel slope w (broadcast by the caller).
template <typename T> GF_FN T gf_prelu(T x, T w) { return gf_gt0(x) ? x : w * x; }
template <typename T> GF_FN T gf_prelu_grad_x(T x, T w, T g) { return gf_gt0(x) ? g : w * g; }
template <typename T> GF_FN T gf_prelu_grad_w(T x, T g) { return gf_gt0(x) ? T(0) : x * g; }

// ELU family: x <= 0 ? neg * expm1(x) : pos * x, with (neg, pos) = (alpha, 1) for elu and
// (alpha * scale, scale) for selu; neg is folded on the host like torch's negcoef.
template <typename T> GF_FN T gf_elu(T x, T neg, T pos) { return x <= T(0) ? gf_expm1(x) * neg : x * pos; }
template <typename T> GF_FN T gf_elu_grad(T x, T g, T neg, T pos) {
  return x <= T(0) ? g * neg * gf_exp(x) : g * pos;
}

// softplus(x) = log1p(exp(beta x)) / beta, linear above threshold (torch semantics).
template <typename T> GF_FN T gf_softplus(T x, T beta, T threshold) {
  return x * beta > threshold ? x : gf_log1p(gf_exp(x * beta)) / beta;
}
template <typename T> GF_FN T gf_softplus_grad(T x, T g, T beta, T threshold) {
  const T z = gf_exp(x * beta);
  return x * beta > threshold ? g : g * z / (z + T(1));
}

// gelu(x) = x * Phi(x), Phi the standard normal CDF. Phi = erfc(-x / sqrt 2) / 2 rather
// than torch's (1 + erf(x / sqrt 2)) / 2, which cancels to a few bits for x < -3 in float.
template <typename T> GF_FN T gf_gelu(T x) {
  return x * T(0.5) * gf_erfc(-x * T(0.70710678118654752440));
}
template <typename T> GF_FN T gf_gelu_grad(T x, T g) {
  const T cdf = T(0.5) * gf_erfc(-x * T(0.70710678118654752440));
  const T pdf = T(0.39894228040143267794) * gf_exp(x * x * T(-0.5));
  return g * (cdf + x * pdf);
}

// gelu's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <typename T> GF_FN T gf_gelu_tanh(T x) {
  const T x_cube = x * x * x;
  const T inner = T(0.79788456080286535588) * (x + T(0.044715) * x_cube);
  return T(0.5) * x * (T(1) + gf_tanh(inner));
}
template <typename T> GF_FN T gf_gelu_tanh_grad(T x, T g) {
  const T x_sq = x * x;
  const T inner = T(0.79788456080286535588) * (x + T(0.044715) * (x_sq * x));
  const T t = gf_tanh(inner);
  const T left_derivative = T(0.5) * (T(1) + t);
  const T inner_derivative = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * x_sq);
  const T right_derivative = T(0.5) * x * (T(1) - t * t) * inner_derivative;
  return g * (left_derivative + right_derivative);
}

// ==== issue 13: more activations (torch's CPU formulas and operation order) ====
// silu(x) = x * sigmoid(x); derivative sigmoid * (1 + x (1 - sigmoid)).
template <typename T> GF_FN T gf_silu(T x) { return x / (T(1) + gf_exp(-x)); }
template <typename T> GF_FN T gf_silu_grad(T x, T g) {
  const T s = T(1) / (T(1) + gf_exp(-x));
  return g * s * (T(1) + x * (T(1) - s));
}

// hardtanh(x) = clamp(x, lo, hi) (NaN stays NaN); gradient 0 at and outside the bounds.
template <typename T> GF_FN T gf_hardtanh(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }
template <typename T> GF_FN T gf_hardtanh_grad(T x, T g, T lo, T hi) {
  return (x <= lo || x >= hi) ? T(0) : g;
}

// hardsigmoid(x) = min(max(x + 3, 0), 6) / 6; gradient g / 6 strictly inside (-3, 3).
template <typename T> GF_FN T gf_hardsigmoid(T x) {
  const T z = x + T(3);
  return (z < T(0) ? T(0) : (z > T(6) ? T(6) : z)) / T(6);
}
template <typename T> GF_FN T gf_hardsigmoid_grad(T x, T g) {
  return (x > T(-3) && x < T(3)) ? g / T(6) : T(0);
}

// hardswish(x) = x * min(max(x + 3, 0), 6) / 6.
template <typename T> GF_FN T gf_hardswish(T x) {
  const T z = x + T(3);
  return x * (z < T(0) ? T(0) : (z > T(6) ? T(6) : z)) / T(6);
}
template <typename T> GF_FN T gf_hardswish_grad(T x, T g) {  // the kinks belong to the flat parts, as torch 2's
  if (x <= T(-3)) return T(0);
  if (x < T(3)) return g * ((x / T(3)) + T(0.5));
  return g;
}

// mish(x) = x * tanh(softplus(x)).
template <typename T> GF_FN T gf_mish(T x) { return x * gf_tanh(gf_log1p(gf_exp(x))); }
template <typename T> GF_FN T gf_mish_grad(T x, T g) {
  const T s = T(1) / (T(1) + gf_exp(-x));
  const T t = gf_tanh(gf_log1p(gf_exp(x)));
  return g * (t + x * s * (T(1) - t * t));
}

// softsign(x) = x / (1 + |x|).
template <typename T> GF_FN T gf_softsign(T x) { return x / ((x < T(0) ? -x : x) + T(1)); }
template <typename T> GF_FN T gf_softsign_grad(T x, T g) {
  const T d = (x < T(0) ? -x : x) + T(1);
  return g / (d * d);
}

// logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)), stable for both signs.
template <typename T> GF_FN T gf_logsigmoid(T x) {
  const T z = gf_exp(x < T(0) ? x : -x);
  return (x < T(0) ? x : T(0)) - gf_log1p(z);
}
template <typename T> GF_FN T gf_logsigmoid_grad(T x, T g) {
  const bool neg = x < T(0);
  const T z = gf_exp(neg ? x : -x);
  return g * ((neg ? T(1) : T(0)) - (neg ? T(1) : T(-1)) * z / (T(1) + z));
}

// celu(x) = x > 0 ? x : alpha * expm1(x / alpha) (torch: elu with input_scale = 1 / alpha).
template <typename T> GF_FN T gf_celu(T x, T alpha, T inv_alpha) {
  return x <= T(0) ? gf_expm1(x * inv_alpha) * alpha : x;
}
template <typename T> GF_FN T gf_celu_grad(T x, T g, T alpha, T inv_alpha) {
  return x <= T(0) ? g * inv_alpha * alpha * gf_exp(x * inv_alpha) : g;
}

#endif  // GF_ACTIVATIONS_CUH
