// Row-wise softmax math: the per-row reduction state and the element formulas.
//
// A row is reduced to a GfRowState by visiting its elements (each thread a strided
// subset) and merging partial states in any order; the kernels in softmax.cu only
// supply the threads and the merging. Softmax statistics are "online": (m, s) is the
// running max and the sum of exp(x - m), rescaled when m grows, so one read of the row
// gives a numerically stable log-sum-exp.
#ifndef GF_SOFTMAX_CUH
#define GF_SOFTMAX_CUH
#include "common.cuh"

template <typename T> struct GfRowState {
  T m;  // running max (softmax statistics only)
  T s;  // sum of exp(x - m), or a plain sum
};

template <typename T> GF_FN GfRowState<T> gf_row_state(T m, T s) {
  GfRowState<T> st;
  st.m = m;
  st.s = s;
  return st;
}

// (max, sum exp(x - max)); -inf elements contribute nothing, NaN poisons the sum.
template <typename T> struct GfSoftmaxStats {
  static GF_FN GfRowState<T> init() { return gf_row_state(-gf_inf<T>(), T(0)); }
  static GF_FN GfRowState<T> visit(GfRowState<T> st, T x, T) {
    if (x > st.m) return gf_row_state(x, st.s * gf_exp(st.m - x) + T(1));
    if (x == -gf_inf<T>()) return st;
    return gf_row_state(st.m, st.s + gf_exp(x - st.m));
  }
  static GF_FN GfRowState<T> combine(GfRowState<T> a, GfRowState<T> b) {
    if (a.m == -gf_inf<T>()) return gf_row_state(b.m, b.s + a.s);  // a.s is 0 or NaN
    if (b.m == -gf_inf<T>()) return gf_row_state(a.m, a.s + b.s);
    if (a.m < b.m) return gf_row_state(b.m, a.s * gf_exp(a.m - b.m) + b.s);
    return gf_row_state(a.m, a.s + b.s * gf_exp(b.m - a.m));
  }
};


// softmax forward: exp(x - max) / sum
template <typename T> struct GfSoftmaxFwd : GfSoftmaxStats<T> {
  static GF_FN T map(GfRowState<T> st, T x, T) { return gf_exp(x - st.m) / st.s; }
};

// log_softmax forward: x - max - log(sum)
template <typename T> struct GfLogSoftmaxFwd : GfSoftmaxStats<T> {
  static GF_FN T map(GfRowState<T> st, T x, T) { return x - st.m - gf_log(st.s); }
};

template <typename T> struct GfRowSum {
  static GF_FN GfRowState<T> init() { return gf_row_state(T(0), T(0)); }
  static GF_FN GfRowState<T> combine(GfRowState<T> a, GfRowState<T> b) { return gf_row_state(T(0), a.s + b.s); }
};

// softmax backward from the output y: gx = y * (g - sum(g * y))
template <typename T> struct GfSoftmaxBwd : GfRowSum<T> {
  static GF_FN GfRowState<T> visit(GfRowState<T> st, T y, T g) { return gf_row_state(T(0), st.s + g * y); }
  static GF_FN T map(GfRowState<T> st, T y, T g) { return y * (g - st.s); }
};

// log_softmax backward from the output y: gx = g - exp(y) * sum(g)
template <typename T> struct GfLogSoftmaxBwd : GfRowSum<T> {
  static GF_FN GfRowState<T> visit(GfRowState<T> st, T, T g) { return gf_row_state(T(0), st.s + g); }
  static GF_FN T map(GfRowState<T> st, T y, T g) { return g - gf_exp(y) * st.s; }
};

// Cross-entropy loss of one row from its statistics (m = row max, logs = log of the sum
// of exp(x - m)): (m - x[target]) + logs, as -log_softmax; 0 for ignored rows, NaN for a
// target outside [0, cols) (a GPU kernel cannot raise). m and logs are kept apart, never
// folded into one log-sum-exp, so large logits lose no precision (m + logs would be
// rounded at the magnitude of m).
template <typename T>
GF_FN T gf_xent_loss(T m, T logs, const T* row, long long target, long long cols, long long ignore_index) {
  if (target == ignore_index) return T(0);
  if (target < 0 || target >= cols) return T(0) * gf_inf<T>();  // NaN
  return (m - row[target]) + logs;
}

// d loss / d logits for one element: (softmax - onehot) * w, softmax = exp((x - m) - logs)
// (x - m is exact near the max), w the row's upstream gradient already divided by the
// mean's count; ignored rows get 0.
template <typename T>
GF_FN T gf_xent_grad(T x, T m, T logs, long long target, long long col, T w, long long ignore_index) {
  if (target == ignore_index) return T(0);
  return (gf_exp((x - m) - logs) - (col == target ? T(1) : T(0))) * w;
}

#endif  // GF_SOFTMAX_CUH
