// Host entry points for kernels/conv.cu and kernels/norm.cu under tests/host/cuda_emulation.h.
// Warp shuffles are emulated through a block-wide buffer between two barriers (every thread of
// the block calls them together, as the kernels do).
#include "cuda_emulation.h"

static double gf_shfl_buffer[1024];
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    gf_shfl_buffer[threadIdx.x] = static_cast<double>(v);
    __syncthreads();
    const T other = static_cast<T>(gf_shfl_buffer[threadIdx.x ^ lane_mask]);
    __syncthreads();
    return other;
}

#include "../../kernels/conv.cu"
#include "../../kernels/norm.cu"

#define GEOM_PARAMS long long n, long long c, long long h, long long w, long long kh, long long kw, long long sh, \
    long long sw, long long ph, long long pw, long long dh, long long dw, long long oh, long long ow
#define GEOM_ARGS n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow

#define HOST_ENTRIES(T, S)                                                                                    \
    extern "C" void run_im2col_##S(const T* x, T* cols, GEOM_PARAMS, T pad, unsigned grid, unsigned block) { \
        gf_launch({grid}, {block}, [&] { gf_im2col_##S(x, cols, GEOM_ARGS, pad); });                         \
    }                                                                                                         \
    extern "C" void run_col2im_##S(const T* cols, T* x, GEOM_PARAMS, unsigned grid, unsigned block) {        \
        gf_launch({grid}, {block}, [&] { gf_col2im_##S(cols, x, GEOM_ARGS); });                              \
    }                                                                                                         \
    extern "C" void run_norm_fwd_##S(const T* x, T* y, T* mean, T* var, long long outer, long long rows,     \
                                     long long L, T eps, unsigned grid, unsigned block) {                    \
        gf_launch({grid}, {block}, [&] { gf_norm_fwd_##S(x, y, mean, var, outer, rows, L, eps); });          \
    }                                                                                                         \
    extern "C" void run_norm_bwd_##S(const T* x, const T* g, const T* mean, const T* var, T* gx,             \
                                     long long outer, long long rows, long long L, T eps, unsigned grid,     \
                                     unsigned block) {                                                        \
        gf_launch({grid}, {block}, [&] { gf_norm_bwd_##S(x, g, mean, var, gx, outer, rows, L, eps); });      \
    }

HOST_ENTRIES(float, f32)
HOST_ENTRIES(double, f64)
