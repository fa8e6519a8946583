// Host entry points for kernels/gemm.cu under tests/host/cuda_emulation.h.
#include "cuda_emulation.h"
#include "../../kernels/gemm.cu"

extern "C" void run_gemm_f32(const float* A, const float* B, float* C, int M, int N, int K,
                             long long sam, long long sak, long long sbk, long long sbn) {
    gf_launch({unsigned(N + 15) / 16, unsigned(M + 15) / 16, 1}, {16, 16, 1},
              [&] { gf_gemm_f32(A, B, C, M, N, K, sam, sak, sbk, sbn); });
}

extern "C" void run_gemm_f64(const double* A, const double* B, double* C, int M, int N, int K,
                             long long sam, long long sak, long long sbk, long long sbn) {
    gf_launch({unsigned(N + 15) / 16, unsigned(M + 15) / 16, 1}, {16, 16, 1},
              [&] { gf_gemm_f64(A, B, C, M, N, K, sam, sak, sbk, sbn); });
}
