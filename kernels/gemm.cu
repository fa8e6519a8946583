// Tiled matrix product used while a CUDA graph is being captured.
//
// CuPy refuses cuBLAS calls during stream capture, so the matmuls of a captured training
// step run through this kernel instead: C(M,N) = A(M,K) @ B(K,N) with any element strides
// on A and B (transposed views need no copy), C row-major and written in full (beta = 0:
// C is never read, so the caller needs no memset).
//
// A block of 16x16 threads computes a 64x64 tile of C, each thread a 4x4 register block
// (rows ty + 16i, columns tx + 16j: the stores of a warp stay coalesced). K is walked in
// 16-wide slabs staged through shared memory; each slab is loaded in the order in which
// the operand is contiguous (k-fast for a row-major A, m-fast for a transposed A; n-fast
// for a row-major B, k-fast for a transposed B), so the loads of x @ W.T and gy.T @ x
// coalesce too. Tiles are visited with grid-stride loops on both axes: M sits on grid.x
// (limit 2**31 - 1 blocks) and any grid, e.g. grid.y capped at 65535, covers every tile.
#define GF_GEMM_BM 64
#define GF_GEMM_BN 64
#define GF_GEMM_BK 16
#define GF_GEMM_THREADS 256  // blockDim = (16, 16)

template <typename T>
__device__ __forceinline__ void gf_gemm(const T* A, const T* B, T* C, long long M, long long N, long long K,
                                        long long sam, long long sak, long long sbk, long long sbn,
                                        T (*As)[GF_GEMM_BM + 1], T (*Bs)[GF_GEMM_BN + 1]) {
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const bool a_k_fast = !(sam == 1 && sak != 1);  // A row-major (or neither): walk k; A^T: walk m
    const bool b_n_fast = !(sbk == 1 && sbn != 1);  // B row-major (or neither): walk n; B^T: walk k
    const long long tiles_m = (M + GF_GEMM_BM - 1) / GF_GEMM_BM, tiles_n = (N + GF_GEMM_BN - 1) / GF_GEMM_BN;
    for (long long tm = blockIdx.x; tm < tiles_m; tm += gridDim.x) {
        for (long long tn = blockIdx.y; tn < tiles_n; tn += gridDim.y) {
            const long long row0 = tm * GF_GEMM_BM, col0 = tn * GF_GEMM_BN;
            T acc[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
            for (long long k0 = 0; k0 < K; k0 += GF_GEMM_BK) {
#pragma unroll
                for (int r = 0; r < GF_GEMM_BM * GF_GEMM_BK / GF_GEMM_THREADS; ++r) {
                    const int e = tid + r * GF_GEMM_THREADS;
                    const int kk = a_k_fast ? e % GF_GEMM_BK : e / GF_GEMM_BM;
                    const int mm = a_k_fast ? e / GF_GEMM_BK : e % GF_GEMM_BM;
                    const long long gm = row0 + mm, gk = k0 + kk;
                    As[kk][mm] = (gm < M && gk < K) ? A[gm * sam + gk * sak] : T(0);
                }
#pragma unroll
                for (int r = 0; r < GF_GEMM_BN * GF_GEMM_BK / GF_GEMM_THREADS; ++r) {
                    const int e = tid + r * GF_GEMM_THREADS;
                    const int nn = b_n_fast ? e % GF_GEMM_BN : e / GF_GEMM_BK;
                    const int kk = b_n_fast ? e / GF_GEMM_BN : e % GF_GEMM_BK;
                    const long long gk = k0 + kk, gn = col0 + nn;
                    Bs[kk][nn] = (gk < K && gn < N) ? B[gk * sbk + gn * sbn] : T(0);
                }
                __syncthreads();
#pragma unroll
                for (int k = 0; k < GF_GEMM_BK; ++k) {
                    T a[4], b[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
                    for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
                }
                __syncthreads();  // the next slab overwrites the shared tiles
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const long long row = row0 + ty + 16 * i;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const long long col = col0 + tx + 16 * j;
                    if (row < M && col < N) C[row * N + col] = acc[i][j];
                }
            }
        }
    }
}

extern "C" __global__ void gf_gemm_f32(const float* A, const float* B, float* C, long long M, long long N,
                                       long long K, long long sam, long long sak, long long sbk, long long sbn) {
    __shared__ float As[GF_GEMM_BK][GF_GEMM_BM + 1];
    __shared__ float Bs[GF_GEMM_BK][GF_GEMM_BN + 1];
    gf_gemm<float>(A, B, C, M, N, K, sam, sak, sbk, sbn, As, Bs);
}

extern "C" __global__ void gf_gemm_f64(const double* A, const double* B, double* C, long long M, long long N,
                                       long long K, long long sam, long long sak, long long sbk, long long sbn) {
    __shared__ double As[GF_GEMM_BK][GF_GEMM_BM + 1];
    __shared__ double Bs[GF_GEMM_BK][GF_GEMM_BN + 1];
    gf_gemm<double>(A, B, C, M, N, K, sam, sak, sbk, sbn, As, Bs);
}
