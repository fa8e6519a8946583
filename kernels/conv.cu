// im2col and col2im for convolution and pooling (NCHW), one thread per element.
//
// The column matrix has shape (C * kh * kw, N * OH * OW), row-major: row (c, i, j) holds
// input channel c seen through kernel tap (i, j) at every output position of every image.
// A convolution is then one GEMM, W(O, C*kh*kw) @ cols, and pooling a reduction over the
// kh*kw rows of each channel. col2im is the adjoint: every input element gathers the
// column entries that read it (no atomics, so the result is deterministic).
// Built by CuPy as a RawModule; the NumPy twins are gradflow/conv.py's im2col/col2im.
#include "common.cuh"

struct GfConvGeometry {
  long long n, c, h, w;        // input
  long long kh, kw, sh, sw;    // kernel and stride
  long long ph, pw, dh, dw;    // leading padding and dilation
  long long oh, ow;            // output
};

template <typename T>
__device__ void gf_im2col(const T* x, T* cols, GfConvGeometry g, T pad_value) {
  const long long total = g.c * g.kh * g.kw * g.n * g.oh * g.ow;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    long long t = idx;
    const long long ow = t % g.ow; t /= g.ow;
    const long long oh = t % g.oh; t /= g.oh;
    const long long n = t % g.n; t /= g.n;
    const long long j = t % g.kw; t /= g.kw;
    const long long i = t % g.kh;
    const long long c = t / g.kh;
    const long long h = oh * g.sh - g.ph + i * g.dh;
    const long long w = ow * g.sw - g.pw + j * g.dw;
    cols[idx] = (h >= 0 && h < g.h && w >= 0 && w < g.w) ? x[((n * g.c + c) * g.h + h) * g.w + w] : pad_value;
  }
}

template <typename T>
__device__ void gf_col2im(const T* cols, T* x, GfConvGeometry g) {
  const long long total = g.n * g.c * g.h * g.w;
  const long long plane = g.oh * g.ow, per_tap = g.n * plane;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    long long t = idx;
    const long long w = t % g.w; t /= g.w;
    const long long h = t % g.h; t /= g.h;
    const long long c = t % g.c;
    const long long n = t / g.c;
    T acc = T(0);
    for (long long i = 0; i < g.kh; ++i) {
      const long long hs = h + g.ph - i * g.dh;
      if (hs < 0 || hs % g.sh) continue;
      const long long oh = hs / g.sh;
      if (oh >= g.oh) continue;
      for (long long j = 0; j < g.kw; ++j) {
        const long long ws = w + g.pw - j * g.dw;
        if (ws < 0 || ws % g.sw) continue;
        const long long ow = ws / g.sw;
        if (ow >= g.ow) continue;
        acc += cols[((c * g.kh + i) * g.kw + j) * per_tap + n * plane + oh * g.ow + ow];
      }
    }
    x[idx] = acc;
  }
}

// Scalars one by one (CuPy passes NumPy scalars, not structs): n c h w kh kw sh sw ph pw dh dw oh ow.
#define GF_GEOMETRY_PARAMS                                                                         \
  long long n, long long c, long long h, long long w, long long kh, long long kw, long long sh,      \
      long long sw, long long ph, long long pw, long long dh, long long dw, long long oh, long long ow
#define GF_GEOMETRY {n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow}

#define GF_CONV_ENTRIES(T, S)                                                                      \
  extern "C" __global__ void gf_im2col_##S(const T* x, T* cols, GF_GEOMETRY_PARAMS, T pad_value) { \
    const GfConvGeometry g = GF_GEOMETRY;                                                          \
    gf_im2col<T>(x, cols, g, pad_value);                                                           \
  }                                                                                                \
  extern "C" __global__ void gf_col2im_##S(const T* cols, T* x, GF_GEOMETRY_PARAMS) {              \
    const GfConvGeometry g = GF_GEOMETRY;                                                          \
    gf_col2im<T>(cols, x, g);                                                                      \
  }

GF_CONV_ENTRIES(float, f32)
GF_CONV_ENTRIES(double, f64)
