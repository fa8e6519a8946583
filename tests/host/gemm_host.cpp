// Host entry points for kernels/gemm.cu under tests/host/cuda_emulation.h. The grid is the
// caller's (gradflow.gemm.gemm_grid, or a smaller one to exercise the grid-stride loops).
#include "cuda_emulation.h"
#include "../../kernels/gemm.cu"

extern "C" void run_gemm_f32(const float* A, const float* B, float* C, long long M, long long N, long long K,
                             long long sam, long long sak, long long sbk, long long sbn, unsigned gx, unsigned gy) {
    gf_launch({gx, gy, 1}, {16, 16, 1}, [&] { gf_gemm_f32(A, B, C, M, N, K, sam, sak, sbk, sbn); });
}

extern "C" void run_gemm_f64(const double* A, const double* B, double* C, long long M, long long N, long long K,
                             long long sam, long long sak, long long sbk, long long sbn, unsigned gx, unsigned gy) {
    gf_launch({gx, gy, 1}, {16, 16, 1}, [&] { gf_gemm_f64(A, B, C, M, N, K, sam, sak, sbk, sbn); });
}
