// Philox4x64-10 counter-based RNG (Salmon, Moraes, Dror, Shaw: "Parallel random
// numbers: as easy as 1, 2, 3", SC'11), the generator NumPy ships as numpy.random.Philox.
//
// A draw is a pure function of (key, counter), so every element computes its own bits
// from (seed, offset + element index): results do not depend on launch geometry, and
// gradflow/philox.py reproduces them bit for bit with NumPy's C implementation.
//
// gradflow's stream: word c (a 64-bit counter) of seed s is word c % 4 of the block
// encrypted from counter (c / 4, 0, 0, 0) under key (s, 0) -- the sequence that
// numpy.random.Philox(key=s) emits (gradflow/philox.py explains the mapping).
#ifndef GF_PHILOX_CUH
#define GF_PHILOX_CUH
#include "common.cuh"

// High 64 bits of the 128-bit product a * b.
GF_FN unsigned long long gf_mulhi64(unsigned long long a, unsigned long long b) {
#ifdef GF_DEVICE_BUILD
  return __umul64hi(a, b);
#else
  // Portable host path (no __int128 needed): schoolbook on 32-bit halves.
  const unsigned long long a_lo = a & 0xFFFFFFFFull, a_hi = a >> 32;
  const unsigned long long b_lo = b & 0xFFFFFFFFull, b_hi = b >> 32;
  const unsigned long long lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi;
  const unsigned long long mid = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFull) + lo_hi;  // < 2^64
  return a_hi * b_hi + (hi_lo >> 32) + (mid >> 32);
#endif
}

// The raw bijection: c (4 words) is encrypted in place under key (k0, k1).
GF_FN void gf_philox4x64_10(unsigned long long c[4], unsigned long long k0, unsigned long long k1) {
#ifdef GF_DEVICE_BUILD
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B97F4A7C15ull;
      k1 += 0xBB67AE8584CAA73Bull;
    }
    const unsigned long long hi0 = gf_mulhi64(0xD2E7470EE14C6C93ull, c[0]), lo0 = 0xD2E7470EE14C6C93ull * c[0];
    const unsigned long long hi1 = gf_mulhi64(0xCA5A826395121157ull, c[2]), lo1 = 0xCA5A826395121157ull * c[2];
    const unsigned long long c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k1;
    c[3] = lo0;
  }
}

// Word `counter` of seed's stream: element i of a call at offset draws counter offset + i.
GF_FN unsigned long long gf_philox_bits(unsigned long long seed, unsigned long long counter) {
  unsigned long long c[4] = {counter >> 2, 0ull, 0ull, 0ull};
  gf_philox4x64_10(c, seed, 0ull);
  const unsigned int word = (unsigned int)(counter & 3ull);  // selects, not c[word]: c stays in registers
  return word == 0u ? c[0] : word == 1u ? c[1] : word == 2u ? c[2] : c[3];
}

// One standard normal per counter by Box-Muller on the word's high and low 32 bits, in
// double on both the host and the device so the two agree to the last bit or two.
GF_FN double gf_philox_normal(unsigned long long seed, unsigned long long counter) {
  const unsigned long long w = gf_philox_bits(seed, counter);
  const double u1 = ((double)(unsigned int)(w >> 32) + 1.0) * 2.3283064365386962890625e-10;  // (0, 1]
  const double u2 = (double)(unsigned int)w * 2.3283064365386962890625e-10;                 // [0, 1)
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

#endif  // GF_PHILOX_CUH
