// Normalization row kernels (BatchNorm, LayerNorm, GroupNorm): one CUDA block per row.
//
// The input is C-contiguous and viewed as (outer, rows, L); row r is every x[o, r, l].
// BatchNorm over (N, C, H*W) has rows = channels; LayerNorm and GroupNorm use outer = 1,
// one row per normalized group. Forward: each thread runs Welford's update over a strided
// slice of the row, the partial (count, mean, M2) states are merged with Chan's formula
// (warp shuffles, then across warps through shared memory), and a second pass writes
// xhat = (x - mean) / sqrt(var + eps); mean and the biased var come out per row.
// Backward, one kernel: the block sums g and g * xhat, then writes
// gx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps).
// Built by CuPy as a RawModule; the NumPy twins are in gradflow/normalization.py.
#include "common.cuh"

template <typename T>
struct GfWelford {
  T n, mean, m2;
};

template <typename T>
__device__ __forceinline__ GfWelford<T> gf_welford_merge(GfWelford<T> a, GfWelford<T> b) {
  const T n = a.n + b.n;
  if (n == T(0)) return a;
  const T delta = b.mean - a.mean;
  const T f = b.n / n;
  GfWelford<T> r;
  r.n = n;
  r.mean = a.mean + delta * f;
  r.m2 = a.m2 + b.m2 + delta * delta * a.n * f;
  return r;
}

template <typename T>
__device__ __forceinline__ GfWelford<T> gf_welford_block(GfWelford<T> st) {
  __shared__ T sn[32], sm[32], s2[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int mask = 16; mask > 0; mask >>= 1) {
    GfWelford<T> o;
    o.n = __shfl_xor_sync(0xffffffffu, st.n, mask);
    o.mean = __shfl_xor_sync(0xffffffffu, st.mean, mask);
    o.m2 = __shfl_xor_sync(0xffffffffu, st.m2, mask);
    st = gf_welford_merge(st, o);
  }
  if (lane == 0) {
    sn[warp] = st.n;
    sm[warp] = st.mean;
    s2[warp] = st.m2;
  }
  __syncthreads();
  GfWelford<T> r = {T(0), T(0), T(0)};
  for (int w = 0; w < warps; ++w) {
    GfWelford<T> o = {sn[w], sm[w], s2[w]};
    r = gf_welford_merge(r, o);
  }
  __syncthreads();  // the next row reuses shared memory
  return r;
}

template <typename T>
__device__ __forceinline__ void gf_sum2_block(T& a, T& b) {
  __shared__ T sa[32], sb[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int mask = 16; mask > 0; mask >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, mask);
    b += __shfl_xor_sync(0xffffffffu, b, mask);
  }
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  a = T(0);
  b = T(0);
  for (int w = 0; w < warps; ++w) {
    a += sa[w];
    b += sb[w];
  }
  __syncthreads();
}

// element k of row r in the (outer, rows, L) view
#define GF_NORM_INDEX(k) ((((k) / L) * rows + r) * L + (k) % L)

template <typename T>
__device__ void gf_norm_fwd(const T* x, T* y, T* mean, T* var, long long outer, long long rows, long long L,
                            T eps) {
  const long long count = outer * L;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    GfWelford<T> st = {T(0), T(0), T(0)};
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
      const T v = x[GF_NORM_INDEX(k)];
      st.n += T(1);
      const T d = v - st.mean;
      st.mean += d / st.n;
      st.m2 += d * (v - st.mean);
    }
    st = gf_welford_block(st);
    const T m = st.mean, v = st.n > T(0) ? st.m2 / st.n : T(0);
    const T inv = T(1) / gf_sqrt(v + eps);
    if (threadIdx.x == 0) {
      mean[r] = m;
      var[r] = v;
    }
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
      const long long i = GF_NORM_INDEX(k);
      y[i] = (x[i] - m) * inv;
    }
  }
}

template <typename T>
__device__ void gf_norm_bwd(const T* x, const T* g, const T* mean, const T* var, T* gx, long long outer,
                            long long rows, long long L, T eps) {
  const long long count = outer * L;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T m = mean[r], inv = T(1) / gf_sqrt(var[r] + eps);
    T s1 = T(0), s2 = T(0);
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
      const long long i = GF_NORM_INDEX(k);
      s1 += g[i];
      s2 += g[i] * (x[i] - m) * inv;
    }
    gf_sum2_block(s1, s2);
    const T a = s1 / T(count), b = s2 / T(count);
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
      const long long i = GF_NORM_INDEX(k);
      gx[i] = (g[i] - a - (x[i] - m) * inv * b) * inv;
    }
  }
}

#define GF_NORM_ENTRIES(T, S)                                                                              \
  extern "C" __global__ void gf_norm_fwd_##S(const T* x, T* y, T* mean, T* var, long long outer,          \
                                             long long rows, long long L, T eps) {                          \
    gf_norm_fwd<T>(x, y, mean, var, outer, rows, L, eps);                                                  \
  }                                                                                                        \
  extern "C" __global__ void gf_norm_bwd_##S(const T* x, const T* g, const T* mean, const T* var, T* gx,  \
                                             long long outer, long long rows, long long L, T eps) {         \
    gf_norm_bwd<T>(x, g, mean, var, gx, outer, rows, L, eps);                                              \
  }

GF_NORM_ENTRIES(float, f32)
GF_NORM_ENTRIES(double, f64)
