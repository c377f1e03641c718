// Single-linkage components under an L1 threshold: the block split at the heart of eps-lumping.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "polyode.hpp"

namespace afde {

using RefMat = Eigen::Ref<const RowMat>;

// The s'(h) part of the eps-FDE distance of two neurons with raw incoming rows x_i, x_j
// (weights and bias), symmetrised over the two orientations of the substitution (lumping.cpp):
//   w_plus * sum|x_i + x_j| + w_minus * sum|x_i - x_j| + w_max * max(|x_i|_1, |x_j|_1).
struct SelfTerm {
  Eigen::Ref<const RowMat> X;
  double w_plus = 0, w_minus = 0, w_max = 0;
};

// Labels of the connected components of the graph on the rows of F with an edge (i, j) iff
//   d(i, j) = ||F_i - F_j||_1 + self(i, j) <= eps.
// Labels are canonical: blocks numbered by their smallest member, in index order.
// eps == 0 groups identical rows by a lexicographic sort (O(d n log n)); eps > 0 sorts by the
// row sum, a lower bound of the L1 distance, scans only the window where the bound is <= eps,
// exits each distance early once it passes eps, and skips pairs already joined. The result is
// identical to cluster_allpairs for every input; threads never change it.
std::vector<std::int64_t> cluster(const RefMat& F, const SelfTerm* self, double eps, int threads);

// Rows read in place, in the caller's dtype (float or double): row i is
//   factor[i] * (data[i * ld + 0 .. d-1], bias[i])
// with the bias column present only when `bias` is given and factor 1 when `factor` is null.
// Lets the engine cluster a float32 model's weight rows (and their biases, and a per-row sign or
// 1 / norm) without a float64 copy; every sum is accumulated in double.
template <class T>
struct RowSet {
  const T* data = nullptr;
  Eigen::Index n = 0, d = 0, ld = 0;  // rows, stored columns, row stride (elements)
  const double* bias = nullptr;
  const double* factor = nullptr;
  // Optional, from a pass the caller made anyway (exact_blocks): per row, the stripe sums of the
  // stored columns (pool_stripes(cols()) of them, pool_bounds) and sum |stored entries|, both
  // without factor and bias. cluster_rows then reads each row only where a distance needs it.
  const double* raw_pools = nullptr;
  const double* raw_abs = nullptr;
  Eigen::Index rows() const { return n; }
  Eigen::Index cols() const { return d + (bias ? 1 : 0); }
  const T* row(Eigen::Index i) const { return data + i * ld; }
  double f(Eigen::Index i) const { return factor ? factor[i] : 1.0; }
  double extra(Eigen::Index i) const { return bias ? f(i) * bias[i] : 0.0; }
};

// Sums of n values read as double, in 8 interleaved partial sums: independent additions the
// compiler vectorises (one running sum is bound by the latency of each addition, ~4x slower than
// reading the memory). Any order is as exact as another for the bounds that use them.
template <class T>
inline double sum8(const T* x, Eigen::Index n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Eigen::Index q = 0;
  for (; q + 8 <= n; q += 8)
    for (int r = 0; r < 8; ++r) a[r] += static_cast<double>(x[q + r]);
  double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; q < n; ++q) s += static_cast<double>(x[q]);
  return s;
}
template <class T>
inline double sum_abs8(const T* x, Eigen::Index n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Eigen::Index q = 0;
  for (; q + 8 <= n; q += 8)
    for (int r = 0; r < 8; ++r) a[r] += std::abs(static_cast<double>(x[q + r]));
  double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; q < n; ++q) s += std::abs(static_cast<double>(x[q]));
  return s;
}
// two sums, of f(x) and of g(x), in one pass, 8 partial sums each (a fixed order: the same
// result for any thread count)
template <class T, class F, class G>
inline void two_sums8(const T* x, Eigen::Index n, F f, G g, double& s0, double& s1) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Eigen::Index q = 0;
  for (; q + 8 <= n; q += 8)
    for (int r = 0; r < 8; ++r) {
      const double v = static_cast<double>(x[q + r]);
      a[r] += f(v);
      b[r] += g(v);
    }
  s0 = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  s1 = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
  for (; q < n; ++q) {
    const double v = static_cast<double>(x[q]);
    s0 += f(v);
    s1 += g(v);
  }
}
// sum x and sum |x| in one pass
template <class T>
inline void sum_sumabs8(const T* x, Eigen::Index n, double& s0, double& s1) {
  two_sums8(x, n, [](double v) { return v; }, [](double v) { return std::abs(v); }, s0, s1);
}
// sum |x| and sum x^2 in one pass
template <class T>
inline void sum_abs_sq8(const T* x, Eigen::Index n, double& s1, double& s2) {
  two_sums8(x, n, [](double v) { return std::abs(v); }, [](double v) { return v * v; }, s1, s2);
}

#if defined(__SSE2__)
// float rows: the same sums with explicit SSE2 conversions (the compiler leaves the templates
// above scalar for float, a conversion per element). 8 floats per step into 4 pairs of doubles.
namespace simd {
inline __m128d abs_pd(__m128d v) { return _mm_andnot_pd(_mm_set1_pd(-0.0), v); }
inline double hsum(__m128d a, __m128d b, __m128d c, __m128d d) {
  const __m128d s = _mm_add_pd(_mm_add_pd(a, b), _mm_add_pd(c, d));
  return _mm_cvtsd_f64(_mm_add_pd(s, _mm_unpackhi_pd(s, s)));
}
// (sum, sum |x|, sum x^2) of x[0 .. n8), n8 a multiple of 8; which ones: template flags
template <bool S, bool A, bool Q>
inline void sums(const float* x, Eigen::Index n8, double& s, double& a, double& q) {
  __m128d s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0, a0 = s0, a1 = s0, a2 = s0, a3 = s0;
  __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0;
  for (Eigen::Index k = 0; k < n8; k += 8) {
    const __m128 lo = _mm_loadu_ps(x + k), hi = _mm_loadu_ps(x + k + 4);
    const __m128d v0 = _mm_cvtps_pd(lo), v1 = _mm_cvtps_pd(_mm_movehl_ps(lo, lo));
    const __m128d v2 = _mm_cvtps_pd(hi), v3 = _mm_cvtps_pd(_mm_movehl_ps(hi, hi));
    if (S) { s0 = _mm_add_pd(s0, v0); s1 = _mm_add_pd(s1, v1); s2 = _mm_add_pd(s2, v2); s3 = _mm_add_pd(s3, v3); }
    if (A) {
      a0 = _mm_add_pd(a0, abs_pd(v0)); a1 = _mm_add_pd(a1, abs_pd(v1));
      a2 = _mm_add_pd(a2, abs_pd(v2)); a3 = _mm_add_pd(a3, abs_pd(v3));
    }
    if (Q) {
      q0 = _mm_add_pd(q0, _mm_mul_pd(v0, v0)); q1 = _mm_add_pd(q1, _mm_mul_pd(v1, v1));
      q2 = _mm_add_pd(q2, _mm_mul_pd(v2, v2)); q3 = _mm_add_pd(q3, _mm_mul_pd(v3, v3));
    }
  }
  s = hsum(s0, s1, s2, s3);
  a = hsum(a0, a1, a2, a3);
  q = hsum(q0, q1, q2, q3);
}
}  // namespace simd

// the SIMD sums over whole 8-float steps, then the tail in the same accumulators
template <bool S, bool A, bool Q>
inline void float_sums(const float* x, Eigen::Index n, double& s, double& a, double& q) {
  const Eigen::Index n8 = n - n % 8;
  simd::sums<S, A, Q>(x, n8, s, a, q);
  for (Eigen::Index k = n8; k < n; ++k) {
    const double v = static_cast<double>(x[k]);
    if (S) s += v;
    if (A) a += std::abs(v);
    if (Q) q += v * v;
  }
}
inline double sum8(const float* x, Eigen::Index n) {
  double s, a, q;
  float_sums<true, false, false>(x, n, s, a, q);
  return s;
}
inline double sum_abs8(const float* x, Eigen::Index n) {
  double s, a, q;
  float_sums<false, true, false>(x, n, s, a, q);
  return a;
}
inline void sum_sumabs8(const float* x, Eigen::Index n, double& s0, double& s1) {
  double q;
  float_sums<true, true, false>(x, n, s0, s1, q);
}
inline void sum_abs_sq8(const float* x, Eigen::Index n, double& s1, double& s2) {
  double s;
  float_sums<false, true, true>(x, n, s, s1, s2);
}
inline double max_abs8(const float* x, Eigen::Index n) {
  const Eigen::Index n8 = n - n % 8;
  const __m128 sign = _mm_set1_ps(-0.0f);
  __m128 m0 = _mm_setzero_ps(), m1 = m0;
  for (Eigen::Index k = 0; k < n8; k += 8) {
    m0 = _mm_max_ps(m0, _mm_andnot_ps(sign, _mm_loadu_ps(x + k)));
    m1 = _mm_max_ps(m1, _mm_andnot_ps(sign, _mm_loadu_ps(x + k + 4)));
  }
  float t[4];
  _mm_storeu_ps(t, _mm_max_ps(m0, m1));
  float m = std::max(std::max(t[0], t[1]), std::max(t[2], t[3]));
  for (Eigen::Index k = n8; k < n; ++k) m = std::max(m, std::abs(x[k]));
  return static_cast<double>(m);
}
#endif

// max |x| (NaN-free rows)
template <class T>
inline double max_abs8(const T* x, Eigen::Index n) {
  double m = 0.0;
  for (Eigen::Index q = 0; q < n; ++q) m = std::max(m, std::abs(static_cast<double>(x[q])));
  return m;
}

// The stripes of the pooled lower bound: P = min(64, max(D, 1)) stripes over D columns, stripe q
// holding columns lo[q] .. lo[q + 1] - 1.
inline Eigen::Index pool_stripes(Eigen::Index D) { return std::min<Eigen::Index>(64, std::max<Eigen::Index>(D, 1)); }
inline std::vector<Eigen::Index> pool_bounds(Eigen::Index D) {
  const Eigen::Index P = pool_stripes(D);
  std::vector<Eigen::Index> lo(P + 1);
  for (Eigen::Index q = 0; q <= P; ++q) lo[q] = (q * D + P - 1) / P;
  return lo;
}

// cluster() on a RowSet (no self term): the same algorithm and the same labels as cluster() on
// the rows materialised in double.
template <class T>
std::vector<std::int64_t> cluster_rows(const RowSet<T>& F, double eps, int threads);
template <class T>
std::vector<std::int64_t> cluster_rows_allpairs(const RowSet<T>& F, double eps);

// Mean distance of a row from the zero row (a neuron with no weights): the scale of a relative eps.
double mean_norm(const RefMat& F, const SelfTerm* self);

// The definition, all n(n-1)/2 pairs, for tests and benchmarks.
std::vector<std::int64_t> cluster_allpairs(const RefMat& F, const SelfTerm* self, double eps);

// Size thresholds of the parallel loops. Each OpenMP loop of the engine runs in parallel only when
// its work (rows x columns) exceeds its own default threshold, below which threads cost more than
// they save. set_parallel_threshold(t) with t >= 0 replaces every default: work >= t runs in
// parallel (0: always, when more than one thread is asked for; tests use it to exercise the
// parallel paths on small inputs). t < 0 (or NaN) restores the defaults. Process-wide; results
// never depend on it.
void set_parallel_threshold(double work);
double parallel_threshold();  // the override, or -1 when the defaults apply
bool parallel_worth(double work, double default_threshold);
// Threads in the team that ran the pair scan of the last cluster() call (1: serially), for tests.
int last_cluster_threads();

// Renumber labels so blocks are numbered by first appearance.
std::vector<std::int64_t> canonical(const std::vector<std::int64_t>& labels);

}  // namespace afde
