// Loss scaling (gradflow.amp.GradScaler): PyTorch's _amp_foreach_non_finite_check_and_unscale_
// and _amp_update_scale_ as device kernels. The scale, its inverse, the found-inf flag and the
// growth tracker stay in device memory, so unscaling and updating the scale never wait for the
// host. Built by CuPy as a RawModule; the NumPy twins are in gradflow/amp.py.
#include "common.cuh"

// Not inf and not NaN, from the exponent bits (no math library, no flush-to-zero question).
__device__ __forceinline__ bool gf_amp_finite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool gf_amp_finite(double x) {
  return (__double_as_longlong(x) & 0x7ff0000000000000LL) != 0x7ff0000000000000LL;
}

// float arithmetic spelled in PTX without .ftz: CuPy compiles with -ftz=true, which would flush
// subnormal gradients (and subnormal products) to zero; PyTorch's kernels keep them.
__device__ __forceinline__ float gf_amp_mul(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ double gf_amp_mul(double a, double b) { return a * b; }
__device__ __forceinline__ double gf_amp_widen(float x) {
  double r;
  asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ double gf_amp_widen(double x) { return x; }
__device__ __forceinline__ void gf_amp_narrow(double x, float* out) {
  float r;
  asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(x));
  *out = r;
}
__device__ __forceinline__ void gf_amp_narrow(double x, double* out) { *out = x; }
template <typename T> __device__ __forceinline__ T gf_amp_as(float x);
template <> __device__ __forceinline__ float gf_amp_as<float>(float x) { return x; }
template <> __device__ __forceinline__ double gf_amp_as<double>(float x) { return gf_amp_widen(x); }

// g[i] *= inv_scale over n contiguous elements (grid-strided); *found_inf = 1 when an element
// was inf or NaN before scaling. Several threads may store 1 at once: the same value, a benign
// race (as in PyTorch). The product is taken in T, inv_scale widened exactly for double, as
// PyTorch's CPU and CUDA kernels do for float and double gradients.
template <typename T>
__device__ void gf_amp_unscale(T* g, const float* inv_scale, float* found_inf, long long n) {
  const T inv = gf_amp_as<T>(*inv_scale);
  bool bad = false;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T v = g[i];
    bad |= !gf_amp_finite(v);
    g[i] = gf_amp_mul(v, inv);
  }
  if (bad) *found_inf = 1.0f;
}

// One thread: PyTorch's _amp_update_scale_. Found inf: scale *= backoff (in double, rounded to
// the scale's type: the float32 entry computes in double by design), tracker = 0. Else
// tracker + 1 reaching growth_interval grows the scale (kept only when finite) and resets the
// tracker. GradScaler keeps a float32 scale (f32 entry); the f64 entry follows the file's
// naming convention.
template <typename S>
__device__ void gf_amp_update_scale(S* scale, int* tracker, const float* found_inf, double growth_factor,
                                    double backoff_factor, long long growth_interval) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  if (*found_inf != 0.0f) {
    gf_amp_narrow(gf_amp_widen(*scale) * backoff_factor, scale);
    *tracker = 0;
  } else {
    const int successful = *tracker + 1;
    if (successful == growth_interval) {
      S grown;
      gf_amp_narrow(gf_amp_widen(*scale) * growth_factor, &grown);
      if (gf_amp_finite(grown)) *scale = grown;
      *tracker = 0;
    } else {
      *tracker = successful;
    }
  }
}

// amp_update_scale_dev: the same update with growth_factor, backoff_factor (factors[0], factors[1])
// and growth_interval read from device memory, for a CUDA graph (GradScaler.update inside a
// captured step): the host rewrites them before each launch, so set_growth_factor and friends
// between steps need no new capture.
#define GF_AMP_ENTRIES(T, S)                                                                               \
  extern "C" __global__ void amp_unscale_##S(T* g, const float* inv_scale, float* found_inf, long long n) { \
    gf_amp_unscale<T>(g, inv_scale, found_inf, n);                                                         \
  }                                                                                                        \
  extern "C" __global__ void amp_update_scale_##S(T* scale, int* tracker, const float* found_inf,          \
                                                  double growth_factor, double backoff_factor,             \
                                                  long long growth_interval) {                             \
    gf_amp_update_scale<T>(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval);     \
  }                                                                                                        \
  extern "C" __global__ void amp_update_scale_dev_##S(T* scale, int* tracker, const float* found_inf,      \
                                                      const double* factors, const long long* interval) {  \
    gf_amp_update_scale<T>(scale, tracker, found_inf, factors[0], factors[1], *interval);                  \
  }

GF_AMP_ENTRIES(float, f32)
GF_AMP_ENTRIES(double, f64)
