// Philox4x32-10 counter-based RNG (Salmon, Moraes, Dror, Shaw: "Parallel random
// numbers: as easy as 1, 2, 3", SC'11).
//
// A draw is a pure function of (key, counter), so every element computes its own bits
// from (seed, offset + element index): results do not depend on launch geometry, and
// gradflow/philox.py reproduces them bit for bit with NumPy.
#ifndef GF_PHILOX_CUH
#define GF_PHILOX_CUH
#include "common.cuh"

GF_FN unsigned int gf_mulhi32(unsigned int a, unsigned int b) {
#ifdef GF_DEVICE_BUILD
  return __umulhi(a, b);
#else
  return (unsigned int)(((unsigned long long)a * b) >> 32);
#endif
}

// The raw bijection: c (4 words) is encrypted in place under key (k0, k1).
GF_FN void gf_philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const unsigned int hi0 = gf_mulhi32(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    const unsigned int hi1 = gf_mulhi32(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    const unsigned int c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k1;
    c[3] = lo0;
  }
}

// gradflow's stream layout: key = 64-bit seed, counter = (64-bit draw index, 0).
GF_FN void gf_philox_block(unsigned long long seed, unsigned long long counter, unsigned int out[4]) {
  out[0] = (unsigned int)counter;
  out[1] = (unsigned int)(counter >> 32);
  out[2] = 0u;
  out[3] = 0u;
  gf_philox4x32_10(out, (unsigned int)seed, (unsigned int)(seed >> 32));
}

GF_FN unsigned int gf_philox_bits(unsigned long long seed, unsigned long long counter) {
  unsigned int w[4];
  gf_philox_block(seed, counter, w);
  return w[0];
}

// One standard normal per counter from words 0 and 1 by Box-Muller, in double on both
// the host and the device so the two agree to the last bit or two.
GF_FN double gf_philox_normal(unsigned long long seed, unsigned long long counter) {
  unsigned int w[4];
  gf_philox_block(seed, counter, w);
  const double u1 = ((double)w[0] + 1.0) * 2.3283064365386962890625e-10;  // (0, 1]
  const double u2 = (double)w[1] * 2.3283064365386962890625e-10;          // [0, 1)
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

#endif  // GF_PHILOX_CUH
