// Shared by every gradflow kernel source.
//
// One source has to compile three ways: under NVRTC (CuPy's runtime compiler, which
// cannot include system headers), under nvcc (the compile tests), and under plain g++
// (the host harness that checks the element math against the NumPy twins). GF_FN is
// the one spelling of "small inline element function" for all three, and the typed
// math wrappers below pick the float or double builtin by overload, so templates on T
// never silently promote float math to double.
#ifndef GF_COMMON_CUH
#define GF_COMMON_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GF_DEVICE_BUILD 1
#define GF_FN __device__ __forceinline__
#else
#include <math.h>
#include <string.h>
#define GF_FN inline
#endif

GF_FN float gf_exp(float x) { return expf(x); }
GF_FN double gf_exp(double x) { return exp(x); }
GF_FN float gf_expm1(float x) { return expm1f(x); }
GF_FN double gf_expm1(double x) { return expm1(x); }
GF_FN float gf_log(float x) { return logf(x); }
GF_FN double gf_log(double x) { return log(x); }
GF_FN float gf_log1p(float x) { return log1pf(x); }
GF_FN double gf_log1p(double x) { return log1p(x); }
GF_FN float gf_tanh(float x) { return tanhf(x); }
GF_FN double gf_tanh(double x) { return tanh(x); }
GF_FN float gf_erf(float x) { return erff(x); }
GF_FN double gf_erf(double x) { return erf(x); }
GF_FN float gf_erfc(float x) { return erfcf(x); }
GF_FN double gf_erfc(double x) { return erfc(x); }
GF_FN float gf_sqrt(float x) { return sqrtf(x); }
GF_FN double gf_sqrt(double x) { return sqrt(x); }
// a * b + c rounded once, where torch adds with alpha= (its CPU kernels use fused multiply-add,
// and the NumPy twins call BLAS axpy); written out so that no compiler setting changes it.
GF_FN float gf_fma(float a, float b, float c) { return fmaf(a, b, c); }
GF_FN double gf_fma(double a, double b, double c) { return fma(a, b, c); }

// +infinity without INFINITY/HUGE_VAL, which NVRTC does not define.
template <typename T> GF_FN T gf_inf();
#ifdef GF_DEVICE_BUILD
template <> GF_FN float gf_inf<float>() { return __int_as_float(0x7f800000); }
template <> GF_FN double gf_inf<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
#else
template <> inline float gf_inf<float>() { return INFINITY; }
template <> inline double gf_inf<double>() { return (double)INFINITY; }
#endif

// Sign tests that see subnormals. CuPy compiles every kernel with -ftz=true, which makes
// float comparisons flush subnormal operands to zero (x > 0 is false for x = 1e-45f);
// PyTorch and NumPy do not flush, and masks such as relu's must match them bit for bit.
// So float sign tests read the bits (integer compares never flush); double is never flushed.
GF_FN int gf_float_bits(float x) {
#ifdef GF_DEVICE_BUILD
  return __float_as_int(x);
#else
  int b;
  memcpy(&b, &x, sizeof b);
  return b;
#endif
}
GF_FN bool gf_gt0(float x) {  // x > 0: +0 and NaN excluded, +inf included
  const int b = gf_float_bits(x);
  return b > 0 && b <= 0x7f800000;
}
GF_FN bool gf_gt0(double x) { return x > 0.0; }
GF_FN bool gf_lt0(float x) {  // x < 0: -0 and NaN excluded
  const int b = gf_float_bits(x), m = b & 0x7fffffff;
  return b < 0 && m != 0 && m <= 0x7f800000;
}
GF_FN bool gf_lt0(double x) { return x < 0.0; }
GF_FN bool gf_le0(float x) {  // x <= 0: NaN excluded
  const int m = gf_float_bits(x) & 0x7fffffff;
  return !gf_gt0(x) && m <= 0x7f800000;
}
GF_FN bool gf_le0(double x) { return x <= 0.0; }

// NaN-propagating max, like torch.maximum (fmax would drop the NaN).
template <typename T> GF_FN T gf_max(T a, T b) { return (a != a || a > b) ? a : b; }

// sign(x) in {-1, 0, +1}; NaN stays NaN, like numpy.sign and torch.sign.
template <typename T> GF_FN T gf_sign(T x) { return gf_gt0(x) ? T(1) : (gf_lt0(x) ? T(-1) : x); }

#endif  // GF_COMMON_CUH
