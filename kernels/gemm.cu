// Tiled matrix product used while a CUDA graph is being captured.
//
// CuPy refuses cuBLAS calls during stream capture, so the matmuls of a captured
// training step run through this kernel instead: C(M,N) = A(M,K) @ B(K,N) with any
// element strides on A and B (transposed views need no copy), C row-major. One 16x16
// tile of C per block; K is walked in 16-wide slabs staged through shared memory.
#define GF_TILE 16

template <typename T>
__device__ __forceinline__ void gf_gemm(const T* A, const T* B, T* C, int M, int N, int K,
                                        long long sam, long long sak, long long sbk, long long sbn,
                                        T (*As)[GF_TILE + 1], T (*Bs)[GF_TILE + 1]) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * GF_TILE + ty;
    const int col = blockIdx.x * GF_TILE + tx;
    T acc = T(0);
    for (int t = 0; t < K; t += GF_TILE) {
        const int ka = t + tx, kb = t + ty;
        As[ty][tx] = (row < M && ka < K) ? A[row * sam + ka * sak] : T(0);
        Bs[ty][tx] = (kb < K && col < N) ? B[kb * sbk + col * sbn] : T(0);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < GF_TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[(long long)row * N + col] = acc;
}

extern "C" __global__ void gf_gemm_f32(const float* A, const float* B, float* C, int M, int N, int K,
                                       long long sam, long long sak, long long sbk, long long sbn) {
    __shared__ float As[GF_TILE][GF_TILE + 1];
    __shared__ float Bs[GF_TILE][GF_TILE + 1];
    gf_gemm<float>(A, B, C, M, N, K, sam, sak, sbk, sbn, As, Bs);
}

extern "C" __global__ void gf_gemm_f64(const double* A, const double* B, double* C, int M, int N, int K,
                                       long long sam, long long sak, long long sbk, long long sbn) {
    __shared__ double As[GF_TILE][GF_TILE + 1];
    __shared__ double Bs[GF_TILE][GF_TILE + 1];
    gf_gemm<double>(A, B, C, M, N, K, sam, sak, sbk, sbn, As, Bs);
}
