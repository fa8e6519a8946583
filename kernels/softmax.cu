// Row-wise softmax kernels: one CUDA block per row (grid-strided over rows).
//
// Every thread visits a strided slice of its row, the partial states are merged with a
// warp shuffle butterfly and then across warps through shared memory, and the row is
// written in a second strided pass. Built by CuPy as a RawModule on the GPU; compiled
// by g++ the same entry points run on the host, with the threads of a block emulated
// one after another (GF_HOST_THREADS of them), which is what the host tests call.
//
// Layout contract: inputs are C-contiguous (rows, cols); blockDim.x is a multiple of 32.
#include "softmax.cuh"

template <class Op, typename T>
GF_FN GfRowState<T> gf_row_partial(const T* a, const T* b, long long cols, long long t, long long nt) {
  GfRowState<T> st = Op::init();
  for (long long c = t; c < cols; c += nt) st = Op::visit(st, a[c], b[c]);
  return st;
}

#ifdef GF_DEVICE_BUILD

template <class Op, typename T>
__device__ __forceinline__ GfRowState<T> gf_warp_combine(GfRowState<T> st) {
  for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
    GfRowState<T> other;
    other.m = __shfl_xor_sync(0xffffffffu, st.m, lane_mask);
    other.s = __shfl_xor_sync(0xffffffffu, st.s, lane_mask);
    st = Op::combine(st, other);
  }
  return st;
}

// The merged state of the whole block, returned to every thread.
template <class Op, typename T>
__device__ __forceinline__ GfRowState<T> gf_block_combine(GfRowState<T> st) {
  __shared__ T shared_m[32];
  __shared__ T shared_s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  st = gf_warp_combine<Op>(st);
  if (warps == 1) return st;
  if (lane == 0) {
    shared_m[warp] = st.m;
    shared_s[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < warps ? gf_row_state(shared_m[lane], shared_s[lane]) : Op::init();
    st = gf_warp_combine<Op>(st);
    if (lane == 0) {
      shared_m[0] = st.m;
      shared_s[0] = st.s;
    }
  }
  __syncthreads();
  st = gf_row_state(shared_m[0], shared_s[0]);
  __syncthreads();  // the next row may overwrite shared memory
  return st;
}

template <class Op, typename T>
__device__ void gf_rows(const T* a, const T* b, T* out, long long rows, long long cols) {
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const long long base = row * cols;
    GfRowState<T> st = gf_row_partial<Op>(a + base, b + base, cols, threadIdx.x, blockDim.x);
    st = gf_block_combine<Op>(st);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] = Op::map(st, a[base + c], b[base + c]);
  }
}

template <typename T>
__device__ void gf_xent_rows(const T* logits, const long long* target, T* loss, T* shift, T* logsum,
                             long long rows, long long cols, long long ignore_index) {
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x = logits + row * cols;
    GfRowState<T> st = gf_row_partial<GfSoftmaxStats<T> >(x, x, cols, threadIdx.x, blockDim.x);
    st = gf_block_combine<GfSoftmaxStats<T> >(st);
    if (threadIdx.x == 0) {
      const T logs = gf_log(st.s);
      shift[row] = st.m;
      logsum[row] = logs;
      loss[row] = gf_xent_loss(st.m, logs, x, target[row], cols, ignore_index);
    }
  }
}

#define GF_ENTRY extern "C" __global__

#else  // host build: the threads of a block run one after another

#ifndef GF_HOST_THREADS
#define GF_HOST_THREADS 32
#endif

template <class Op, typename T>
GfRowState<T> gf_host_combine(const T* a, const T* b, long long cols) {
  GfRowState<T> st = Op::init();
  for (long long t = 0; t < GF_HOST_THREADS; ++t)
    st = Op::combine(st, gf_row_partial<Op>(a, b, cols, t, GF_HOST_THREADS));
  return st;
}

template <class Op, typename T>
void gf_rows(const T* a, const T* b, T* out, long long rows, long long cols) {
  for (long long row = 0; row < rows; ++row) {
    const long long base = row * cols;
    const GfRowState<T> st = gf_host_combine<Op>(a + base, b + base, cols);
    for (long long c = 0; c < cols; ++c) out[base + c] = Op::map(st, a[base + c], b[base + c]);
  }
}

template <typename T>
void gf_xent_rows(const T* logits, const long long* target, T* loss, T* shift, T* logsum, long long rows,
                  long long cols, long long ignore_index) {
  for (long long row = 0; row < rows; ++row) {
    const T* x = logits + row * cols;
    const GfRowState<T> st = gf_host_combine<GfSoftmaxStats<T> >(x, x, cols);
    const T logs = gf_log(st.s);
    shift[row] = st.m;
    logsum[row] = logs;
    loss[row] = gf_xent_loss(st.m, logs, x, target[row], cols, ignore_index);
  }
}

#define GF_ENTRY extern "C"

#endif  // GF_DEVICE_BUILD

// Entry points, one per op and dtype. a, b: (rows, cols) inputs (b = a where unused).
#define GF_ROWS_ENTRY(NAME, OP, T, SUFFIX)                                                         \
  GF_ENTRY void NAME##_##SUFFIX(const T* a, const T* b, T* out, long long rows, long long cols) { \
    gf_rows<OP<T>, T>(a, b, out, rows, cols);                                                      \
  }

#define GF_SOFTMAX_ENTRIES(T, SUFFIX)                                                            \
  GF_ROWS_ENTRY(gf_softmax_fwd, GfSoftmaxFwd, T, SUFFIX)                                         \
  GF_ROWS_ENTRY(gf_log_softmax_fwd, GfLogSoftmaxFwd, T, SUFFIX)                                  \
  GF_ROWS_ENTRY(gf_softmax_bwd, GfSoftmaxBwd, T, SUFFIX)                                         \
  GF_ROWS_ENTRY(gf_log_softmax_bwd, GfLogSoftmaxBwd, T, SUFFIX)                                  \
  GF_ENTRY void gf_xent_fwd_##SUFFIX(const T* logits, const long long* target, T* loss, T* shift, \
                                     T* logsum, long long rows, long long cols,                   \
                                     long long ignore_index) {                                    \
    gf_xent_rows<T>(logits, target, loss, shift, logsum, rows, cols, ignore_index);               \
  }

GF_SOFTMAX_ENTRIES(float, f32)
GF_SOFTMAX_ENTRIES(double, f64)
