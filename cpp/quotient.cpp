#include "quotient.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace afde {
namespace {

// Size (rows x columns) above which the memory-bound passes here run in parallel. One thread
// nearly saturates this machine's memory on a copy; a second helps little and, on a loaded
// machine, a parallel region whose thread gets no core costs a scheduler tick (measured: 11 ms
// against 0.3 ms for a 1024 x 1024 layer). Only very large layers (256 MB in float32) go parallel.
constexpr double kMemoryBound = 6.4e7;

int team(int threads) {
#ifdef AFDE_HAVE_OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

// Row i merged over the columns into r (map.k doubles); returns its bias b'_i.
template <class T>
double merged_row(const LayerView<T>& L, const ColumnMap& map, Eigen::Index i, double* r) {
  const T* x = L.W + i * L.ld;
  double bias = L.b ? L.b[i] : 0.0;
  std::fill(r, r + map.k, 0.0);
  for (Eigen::Index q = 0; q < L.d; ++q) {
    const double v = static_cast<double>(x[q]);
    r[map.labels ? map.labels[q] : q] += (map.coef ? map.coef[q] : 1.0) * v;
    if (map.flip && map.flip[q]) bias += v;
  }
  return bias;
}

template <class T>
bool row_finite(const LayerView<T>& L, Eigen::Index i) {
  const T* x = L.W + i * L.ld;
  for (Eigen::Index q = 0; q < L.d; ++q)
    if (!std::isfinite(static_cast<double>(x[q]))) return false;
  return !L.b || std::isfinite(L.b[i]);
}

}  // namespace

template <class T>
void merge_columns(const LayerView<T>& L, const ColumnMap& map, T* out, double* out_bias, int threads) {
  const int nt = team(threads);
  const bool par = parallel_worth(static_cast<double>(L.n) * static_cast<double>(L.d), kMemoryBound);
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel num_threads(nt) if (par && nt > 1)
#endif
  {
    std::vector<double> r(static_cast<std::size_t>(map.k));
#ifdef AFDE_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (Eigen::Index i = 0; i < L.n; ++i) {
      out_bias[i] = merged_row(L, map, i, r.data());
      T* o = out + i * map.k;
      for (Eigen::Index q = 0; q < map.k; ++q) o[q] = static_cast<T>(r[q]);
    }
  }
  (void)nt;
  (void)par;
}

template <class T>
ExactBlocks exact_blocks(const LayerView<T>& L, bool homogeneous, bool signed_, double rel, int threads) {
  const Eigen::Index n = L.n, d = L.d;
  ExactBlocks out;
  if (n == 0) return out;
  std::vector<double> l1(n), c(n, 1.0), raw_abs(n);
  std::vector<char> bad(n, 0);
  const int nt = team(threads);
  const bool par = parallel_worth(static_cast<double>(n) * static_cast<double>(d), kMemoryBound);
  // cluster_rows' stripes over the d weight columns and the bias column
  const Eigen::Index P = pool_stripes(d + 1);
  const std::vector<Eigen::Index> lo = pool_bounds(d + 1);
  std::vector<double> pools(static_cast<std::size_t>(n) * P);
  // per stripe max |x| (signed layers): where each row's first significant entry lies
  std::vector<double> smax(signed_ ? static_cast<std::size_t>(n) * P : 0);
  // (signed) each row's first entry and its first kCand entries above 1e3 rel |a_i|_1, a lower
  // bound of the orientation's threshold 1e3 rel max_j |a_j|_1: taken while the row is in cache,
  // they decide almost every row's orientation without reading the weights again
  constexpr int kCand = 16;
  std::vector<double> x0(signed_ ? n : 0), cand(signed_ ? static_cast<std::size_t>(n) * kCand : 0);
  std::vector<int> ncand(signed_ ? n : 0);
  // The one pass over the weights: per stripe its sum (cluster_rows' pooled bound) and sum |x|
  // (and x^2), so the L1 (and L2) norm, and (signed) its max |x|; a norm that is not finite sends
  // the row to the exact check.
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (par && nt > 1)
#endif
  for (Eigen::Index i = 0; i < n; ++i) {
    const T* x = L.W + i * L.ld;
    double s1 = 0.0, s2 = 0.0;
    double* pool = pools.data() + static_cast<std::size_t>(i) * P;
    for (Eigen::Index q = 0; q < P; ++q) {
      const Eigen::Index a = lo[q], e = std::min<Eigen::Index>(lo[q + 1], d);
      if (e <= a) {
        pool[q] = 0.0;
        if (!smax.empty()) smax[static_cast<std::size_t>(i) * P + q] = 0.0;
        continue;
      }
      if (!smax.empty()) smax[static_cast<std::size_t>(i) * P + q] = max_abs8(x + a, e - a);
      if (homogeneous) {
        double t1, t2;
        pool[q] = sum8(x + a, e - a);
        sum_abs_sq8(x + a, e - a, t1, t2);
        s1 += t1;
        s2 += t2;
      } else {
        double t1;
        sum_sumabs8(x + a, e - a, pool[q], t1);
        s1 += t1;
      }
    }
    raw_abs[i] = s1;
    const double bi = L.b ? L.b[i] : 0.0;
    s1 += std::abs(bi);
    s2 += bi * bi;
    if (!std::isfinite(s1) && !row_finite(L, i)) bad[i] = 1;
    l1[i] = s1;
    if (homogeneous) c[i] = std::sqrt(s2);
    if (signed_ && !bad[i]) {
      x0[i] = d > 0 ? static_cast<double>(x[0]) : 0.0;
      const double f = homogeneous && c[i] > 0 ? 1.0 / c[i] : 1.0;
      const double thr_i = 1e3 * rel * s1 * f;
      const double* sm = smax.data() + static_cast<std::size_t>(i) * P;
      int k = 0;
      for (Eigen::Index q = 0; q < P && k < kCand; ++q) {
        if (!(f * sm[q] > thr_i)) continue;
        const Eigen::Index e = std::min<Eigen::Index>(lo[q + 1], d);
        for (Eigen::Index r = lo[q]; r < e && k < kCand; ++r)
          if (std::abs(f * static_cast<double>(x[r])) > thr_i) cand[static_cast<std::size_t>(i) * kCand + k++] = x[r];
      }
      ncand[i] = k;
    }
  }
  for (Eigen::Index i = 0; i < n; ++i)
    if (bad[i]) {
      out.bad_row = i;
      return out;
    }
  std::vector<double> factor(n, 1.0);
  double scale = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (homogeneous && c[i] > 0) factor[i] = 1.0 / c[i];
    scale = std::max(scale, l1[i] * factor[i]);
  }
  out.signs.assign(n, 1);
  if (signed_) {  // the first significant entry of each aligned row positive
    const double thr = 1e3 * rel * std::max(scale, 1e-300);
    for (Eigen::Index i = 0; i < n; ++i) {
      const T* x = L.W + i * L.ld;
      const double f = factor[i];
      double first = d > 0 ? f * x0[i] : (L.b ? f * L.b[i] : 0.0);
      bool found = false;
      for (int k = 0; k < ncand[i] && !found; ++k) {  // the candidates, in order
        const double v = f * cand[static_cast<std::size_t>(i) * kCand + k];
        if (std::abs(v) > thr) {
          first = v;
          found = true;
        }
      }
      // fewer than kCand candidates were all the entries above the lower bound: none passes;
      // else the first stripe whose max |f x| passes the threshold holds the entry
      for (Eigen::Index q = 0; q < P && !found && ncand[i] == kCand; ++q) {
        if (!(std::abs(f) * smax[static_cast<std::size_t>(i) * P + q] > thr)) continue;
        const Eigen::Index e = std::min<Eigen::Index>(lo[q + 1], d);
        for (Eigen::Index r = lo[q]; r < e; ++r)
          if (std::abs(f * static_cast<double>(x[r])) > thr) {
            first = f * static_cast<double>(x[r]);
            found = true;
            break;
          }
      }
      if (!found && L.b && std::abs(f * L.b[i]) > thr) first = f * L.b[i];
      if (first < 0) {
        out.signs[i] = -1;
        factor[i] = -factor[i];
      }
    }
  }
  RowSet<T> rs;
  rs.data = L.W;
  rs.n = n;
  rs.d = d;
  rs.ld = L.ld;
  std::vector<double> zeros;
  if (L.b) {
    rs.bias = L.b;
  } else {
    zeros.assign(n, 0.0);
    rs.bias = zeros.data();
  }
  rs.factor = factor.data();
  rs.raw_pools = pools.data();
  rs.raw_abs = raw_abs.data();
  out.labels = cluster_rows(rs, rel * scale, threads);
  out.scales = std::move(c);
  return out;
}

template <class T>
QuotientLayer quotient_layer(const LayerView<T>& L, const ColumnMap& map, const std::int64_t* labels,
                             Eigen::Index k, const std::int64_t* signs, bool homogeneous, const double* masses,
                             T* out, T* out_bias, int threads) {
  const Eigen::Index n = L.n;
  const bool ident = map.identity();
  const Eigen::Index kc = ident ? L.d : map.k;
  const int nt = team(threads);
  const bool par = parallel_worth(static_cast<double>(n) * static_cast<double>(L.d), kMemoryBound) && nt > 1;
  QuotientLayer res;
  res.scales.assign(n, 1.0);
  if (homogeneous) {  // c_i: the norm of the merged row and bias
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel num_threads(nt) if (par)
#endif
    {
      std::vector<double> r(static_cast<std::size_t>(ident ? 0 : kc));
#ifdef AFDE_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
      for (Eigen::Index i = 0; i < n; ++i) {
        double s2 = 0.0, bias;
        if (ident) {
          const T* x = L.W + i * L.ld;
          for (Eigen::Index q = 0; q < kc; ++q) s2 += static_cast<double>(x[q]) * static_cast<double>(x[q]);
          bias = L.b ? L.b[i] : 0.0;
        } else {
          bias = merged_row(L, map, i, r.data());
          for (double v : r) s2 += v * v;
        }
        res.scales[i] = std::sqrt(s2 + bias * bias);
      }
    }
  }
  res.masses.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) res.masses[i] = masses ? masses[i] : res.scales[i];
  // blocks as contiguous member lists (members in index order), totals of mass per block
  std::vector<Eigen::Index> start(k + 1, 0), members(n);
  std::vector<double> tot(k, 0.0);
  for (Eigen::Index i = 0; i < n; ++i) {
    ++start[labels[i] + 1];
    tot[labels[i]] += res.masses[i];
  }
  for (Eigen::Index B = 0; B < k; ++B) start[B + 1] += start[B];
  {
    std::vector<Eigen::Index> fill(start.begin(), start.end() - 1);
    for (Eigen::Index i = 0; i < n; ++i) members[fill[labels[i]]++] = i;
  }
  const bool merged_any = k < n;
  double max_diff = 0.0, max_abs = 0.0;
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel num_threads(nt) if (par) reduction(max : max_diff, max_abs)
#endif
  {
    std::vector<double> acc(static_cast<std::size_t>(kc)), r(static_cast<std::size_t>(ident ? 0 : kc));
#ifdef AFDE_HAVE_OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
    for (Eigen::Index B = 0; B < k; ++B) {
      T* o = out + B * kc;
      const Eigen::Index m0 = start[B], m1 = start[B + 1];
      // g_i: sign over scale, the aligned row a_i = g_i (R_i, b'_i)
      auto g_of = [&](Eigen::Index i) {
        const double c = res.scales[i];
        return static_cast<double>(signs ? signs[i] : 1) / (c > 0 ? c : 1.0);
      };
      if (m1 - m0 == 1) {  // a block of one: its aligned row, written once
        const Eigen::Index i = members[m0];
        const double g = g_of(i);
        if (ident) {
          const T* x = L.W + i * L.ld;
          if (g == 1.0 && !merged_any) {
            if (kc > 0) std::memcpy(o, x, sizeof(T) * static_cast<std::size_t>(kc));
          } else if (g == 1.0) {
            T mx = 0;
            for (Eigen::Index q = 0; q < kc; ++q) {
              o[q] = x[q];
              mx = std::max(mx, static_cast<T>(std::abs(x[q])));
            }
            max_abs = std::max(max_abs, static_cast<double>(mx));
          } else {
            double mx = 0.0;
            for (Eigen::Index q = 0; q < kc; ++q) {
              const double v = g * static_cast<double>(x[q]);
              o[q] = static_cast<T>(v);
              mx = std::max(mx, std::abs(v));
            }
            max_abs = std::max(max_abs, mx);
          }
          const double bb = g * (L.b ? L.b[i] : 0.0);
          out_bias[B] = static_cast<T>(bb);
          max_abs = std::max(max_abs, std::abs(bb));
        } else {
          const double bb = g * merged_row(L, map, i, r.data());
          double mx = std::abs(bb);
          for (Eigen::Index q = 0; q < kc; ++q) {
            const double v = g * r[q];
            o[q] = static_cast<T>(v);
            mx = std::max(mx, std::abs(v));
          }
          out_bias[B] = static_cast<T>(bb);
          max_abs = std::max(max_abs, mx);
        }
        continue;
      }
      // a merged block: sum_i use_i a_i / den in double, then the spread of its members
      const bool live = tot[B] > 0;
      const double den = live ? tot[B] : static_cast<double>(m1 - m0);
      std::fill(acc.begin(), acc.end(), 0.0);
      double accb = 0.0;
      auto aligned = [&](Eigen::Index i, double& bias) -> const double* {
        // a_i / g_i into r (or W's row itself when the map is the identity); returns the row
        if (ident) {
          bias = L.b ? L.b[i] : 0.0;
          return nullptr;
        }
        bias = merged_row(L, map, i, r.data());
        return r.data();
      };
      for (Eigen::Index p = m0; p < m1; ++p) {
        const Eigen::Index i = members[p];
        const double g = g_of(i), w = (live ? res.masses[i] : 1.0) * g;
        double bias;
        const double* row = aligned(i, bias);
        if (row) {
          for (Eigen::Index q = 0; q < kc; ++q) {
            acc[q] += w * row[q];
            max_abs = std::max(max_abs, std::abs(g * row[q]));
          }
        } else {
          const T* x = L.W + i * L.ld;
          for (Eigen::Index q = 0; q < kc; ++q) {
            const double v = static_cast<double>(x[q]);
            acc[q] += w * v;
            max_abs = std::max(max_abs, std::abs(g * v));
          }
        }
        accb += w * bias;
        max_abs = std::max(max_abs, std::abs(g * bias));
      }
      for (Eigen::Index q = 0; q < kc; ++q) {
        acc[q] /= den;
        o[q] = static_cast<T>(acc[q]);
      }
      accb /= den;
      out_bias[B] = static_cast<T>(accb);
      for (Eigen::Index p = m0; p < m1; ++p) {
        const Eigen::Index i = members[p];
        const double g = g_of(i);
        double bias;
        const double* row = aligned(i, bias);
        double md = std::abs(g * bias - accb);
        if (row) {
          for (Eigen::Index q = 0; q < kc; ++q) md = std::max(md, std::abs(g * row[q] - acc[q]));
        } else {
          const T* x = L.W + i * L.ld;
          for (Eigen::Index q = 0; q < kc; ++q) md = std::max(md, std::abs(g * static_cast<double>(x[q]) - acc[q]));
        }
        max_diff = std::max(max_diff, md);
      }
    }
  }
  res.max_diff = max_diff;
  res.max_abs = max_abs;
  return res;
}

template void merge_columns<float>(const LayerView<float>&, const ColumnMap&, float*, double*, int);
template void merge_columns<double>(const LayerView<double>&, const ColumnMap&, double*, double*, int);
template ExactBlocks exact_blocks<float>(const LayerView<float>&, bool, bool, double, int);
template ExactBlocks exact_blocks<double>(const LayerView<double>&, bool, bool, double, int);
template QuotientLayer quotient_layer<float>(const LayerView<float>&, const ColumnMap&, const std::int64_t*,
                                             Eigen::Index, const std::int64_t*, bool, const double*, float*,
                                             float*, int);
template QuotientLayer quotient_layer<double>(const LayerView<double>&, const ColumnMap&, const std::int64_t*,
                                              Eigen::Index, const std::int64_t*, bool, const double*, double*,
                                              double*, int);

}  // namespace afde
