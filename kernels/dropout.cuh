// Dropout and noisy ReLU: the random decision of each element from Philox.
//
// keep = (top 53 bits of the Philox word of counter offset + i) >= threshold, threshold =
// ceil(p * 2^53) computed on the host, so P(keep) = 1 - p to 2^-53 and p = 1 keeps nothing. The mask
// is written as bool (one byte) next to the output in the same kernel.
#ifndef GF_DROPOUT_CUH
#define GF_DROPOUT_CUH
#include "philox.cuh"

GF_FN bool gf_dropout_keep(unsigned long long seed, unsigned long long counter,
                           unsigned long long threshold) {
  return (gf_philox_bits(seed, counter) >> 11) >= threshold;
}

// x * (keep ? 1/(1-p) : 0): inverted scaling, so eval mode is the identity.
template <typename T> GF_FN T gf_dropout(T x, bool keep, T scale) { return x * (keep ? scale : T(0)); }

// Noisy ReLU (training): relu(x + std * n), n ~ N(0, 1) from Philox; mask = pre-activation > 0.
template <typename T> GF_FN T gf_noisy_preact(T x, T std, unsigned long long seed, unsigned long long counter) {
  return x + std * (T)gf_philox_normal(seed, counter);
}

#endif  // GF_DROPOUT_CUH
