#include "cluster.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace afde {
namespace {


// set_parallel_threshold(): < 0 keeps each loop's own default
std::atomic<double> g_parallel_threshold{-1.0};
// team size of the last scan (last_cluster_threads)
std::atomic<int> g_last_threads{1};

double l1norm(const double* x, Eigen::Index d) {
  double s = 0.0;
  for (Eigen::Index q = 0; q < d; ++q) s += std::abs(x[q]);
  return s;
}

template <class T>
RowSet<T> rowset(const RefMat& F) {
  RowSet<T> r;
  r.data = F.data();
  r.n = F.rows();
  r.d = F.cols();
  r.ld = F.outerStride();
  return r;
}

// L1 norm of row i of F (factor and bias column included).
template <class T>
double l1row(const RowSet<T>& F, Eigen::Index i) {
  return std::abs(F.f(i)) * sum_abs8(F.row(i), F.d) + std::abs(F.extra(i));
}

// L1 distance plus self term; returns early with a value > eps once the partial sum passes it.
template <class T>
double distance(const RowSet<T>& F, const SelfTerm* self, Eigen::Index i, Eigen::Index j, double eps) {
  const T* a = F.row(i);
  const T* b = F.row(j);
  const Eigen::Index d = F.d;
  double s = 0.0;
  Eigen::Index k = 0;
  constexpr Eigen::Index kChunk = 32;
  if (F.factor == nullptr) {
    for (; k + kChunk <= d; k += kChunk) {
      for (Eigen::Index q = k; q < k + kChunk; ++q) s += std::abs(static_cast<double>(a[q]) - static_cast<double>(b[q]));
      if (s > eps) return s;
    }
    for (; k < d; ++k) s += std::abs(static_cast<double>(a[k]) - static_cast<double>(b[k]));
  } else {
    const double fi = F.factor[i], fj = F.factor[j];
    for (; k + kChunk <= d; k += kChunk) {
      for (Eigen::Index q = k; q < k + kChunk; ++q) s += std::abs(fi * a[q] - fj * b[q]);
      if (s > eps) return s;
    }
    for (; k < d; ++k) s += std::abs(fi * a[k] - fj * b[k]);
  }
  if (F.bias) s += std::abs(F.extra(i) - F.extra(j));
  if (s > eps || self == nullptr) return s;
  const RefMat& X = self->X;
  const double* x = X.row(i).data();
  const double* y = X.row(j).data();
  double plus = 0, minus = 0;
  for (Eigen::Index q = 0; q < X.cols(); ++q) {
    plus += std::abs(x[q] + y[q]);
    minus += std::abs(x[q] - y[q]);
  }
  const double nx = l1norm(x, X.cols()), ny = l1norm(y, X.cols());
  return s + self->w_plus * plus + self->w_minus * minus + self->w_max * std::max(nx, ny);
}

struct UnionFind {
  std::vector<std::int64_t> parent;
  explicit UnionFind(std::int64_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0); }
  std::int64_t find(std::int64_t x) {
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];
      x = parent[x];
    }
    return x;
  }
  bool unite(std::int64_t a, std::int64_t b) {
    a = find(a);
    b = find(b);
    if (a == b) return false;
    if (a < b) std::swap(a, b);
    parent[a] = b;  // smaller index is the root: deterministic
    return true;
  }
  std::vector<std::int64_t> labels() {
    std::vector<std::int64_t> out(parent.size());
    for (std::size_t i = 0; i < parent.size(); ++i) out[i] = find(static_cast<std::int64_t>(i));
    return canonical(out);
  }
};

// Union-find safe under concurrent find/unite: path halving and linking by compare-and-swap,
// a root always linked under a smaller index.
struct ConcurrentUnionFind {
  std::vector<std::atomic<std::int64_t>> parent;
  explicit ConcurrentUnionFind(std::int64_t n) : parent(n) {
    for (std::int64_t i = 0; i < n; ++i) parent[i].store(i, std::memory_order_relaxed);
  }
  std::int64_t find(std::int64_t x) {
    while (true) {
      std::int64_t p = parent[x].load(std::memory_order_acquire);
      if (p == x) return x;
      const std::int64_t g = parent[p].load(std::memory_order_acquire);
      if (g != p) parent[x].compare_exchange_weak(p, g, std::memory_order_acq_rel);
      x = g;
    }
  }
  bool unite(std::int64_t a, std::int64_t b) {
    while (true) {
      a = find(a);
      b = find(b);
      if (a == b) return false;
      if (a < b) std::swap(a, b);
      std::int64_t expected = a;
      if (parent[a].compare_exchange_strong(expected, b, std::memory_order_acq_rel)) return true;
    }
  }
  std::vector<std::int64_t> labels() {
    std::vector<std::int64_t> out(parent.size());
    for (std::size_t i = 0; i < parent.size(); ++i) out[i] = find(static_cast<std::int64_t>(i));
    return canonical(out);
  }
};

// Rows whose self term alone exceeds eps can join nothing (self >= w_max * |x_i|_1).
template <class T>
std::vector<char> candidates(const RowSet<T>& F, const SelfTerm* self, double eps) {
  std::vector<char> ok(F.rows(), 1);
  if (self == nullptr) return ok;
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    const double n = l1norm(self->X.row(i).data(), self->X.cols());
    ok[i] = (self->w_max * n <= eps) ? 1 : 0;
  }
  return ok;
}

// Every neuron its own block.
std::vector<std::int64_t> singletons(Eigen::Index n) {
  std::vector<std::int64_t> lab(static_cast<std::size_t>(n));
  std::iota(lab.begin(), lab.end(), 0);
  return lab;
}

template <class T>
std::vector<std::int64_t> cluster_exact(const RowSet<T>& F, const SelfTerm* self) {
  const Eigen::Index n = F.rows();
  const auto ok = candidates(F, self, 0.0);
  std::vector<std::int64_t> order;
  for (Eigen::Index i = 0; i < n; ++i)
    if (ok[i]) order.push_back(i);
  const Eigen::Index d = F.cols();
  auto at = [&](Eigen::Index i, Eigen::Index k) {
    return k < F.d ? F.f(i) * static_cast<double>(F.row(i)[k]) : F.extra(i);
  };
  // Lexicographic with NaN after every number: a strict weak order even on NaN rows (plain `<`
  // is not, and std::sort may then run off the range). NaN == NaN is false below, so a row with a
  // NaN joins nothing, as in the definition (d = NaN <= 0 is false).
  auto less = [&](std::int64_t i, std::int64_t j) {
    for (Eigen::Index k = 0; k < d; ++k) {
      const double a = at(i, k), b = at(j, k);
      if (a < b) return true;
      if (a > b) return false;
      const bool na = std::isnan(a), nb = std::isnan(b);
      if (na != nb) return nb;
    }
    return i < j;
  };
  std::sort(order.begin(), order.end(), less);
  std::vector<std::int64_t> lab = singletons(n);
  for (std::size_t p = 1; p < order.size(); ++p) {
    const std::int64_t i = order[p - 1], j = order[p];
    bool same = true;  // inf - inf is NaN: rows holding an inf are at distance NaN, as in cluster_allpairs
    for (Eigen::Index k = 0; k < d && same; ++k) {
      const double a = at(i, k);
      same = (a == at(j, k)) && std::isfinite(a);
    }
    if (same) lab[order[p]] = lab[order[p - 1]];
  }
  // Candidates at eps = 0 have x == 0, so the self term of two of them is exactly 0.
  return canonical(lab);
}

}  // namespace

void set_parallel_threshold(double work) {
  g_parallel_threshold.store(std::isnan(work) ? -1.0 : work, std::memory_order_relaxed);
}

double parallel_threshold() {
  const double t = g_parallel_threshold.load(std::memory_order_relaxed);
  return t < 0 ? -1.0 : t;
}

int last_cluster_threads() { return g_last_threads.load(std::memory_order_relaxed); }

bool parallel_worth(double work, double default_threshold) {
  const double t = g_parallel_threshold.load(std::memory_order_relaxed);
  return t < 0 ? work > default_threshold : work >= t;
}

std::vector<std::int64_t> canonical(const std::vector<std::int64_t>& labels) {
  std::int64_t top = 0;
  for (auto v : labels) top = std::max(top, v);
  std::vector<std::int64_t> map(static_cast<std::size_t>(top) + 1, -1), out(labels.size());
  std::int64_t next = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    auto& m = map[labels[i]];
    if (m < 0) m = next++;
    out[i] = m;
  }
  return out;
}

namespace {

template <class T>
std::vector<std::int64_t> cluster_impl(const RowSet<T>& F, const SelfTerm* self, double eps, int threads) {
  const Eigen::Index n = F.rows(), d = F.cols();
  g_last_threads.store(1, std::memory_order_relaxed);
  if (n == 0) return {};
  if (std::isnan(eps)) return singletons(n);  // d <= NaN holds for no pair
  if (eps == 0.0) return cluster_exact(F, self);

  // Candidates, sorted by row sum. Two lower bounds of the L1 distance prune the pairs:
  //   |sum(F_i) - sum(F_j)|                      (the window of the sorted order)
  //   sum_p |pool_p(F_i) - pool_p(F_j)|          (pool_p = sum over the p-th stripe of columns)
  // Both are exact bounds; `slack` covers rounding in the sums, so no pair within eps is lost.
  const auto ok = candidates(F, self, eps);
  std::vector<std::int64_t> order;
  for (Eigen::Index i = 0; i < n; ++i)
    if (ok[i]) order.push_back(i);
  const std::int64_t m = static_cast<std::int64_t>(order.size());
  const Eigen::Index P = pool_stripes(d);
  std::vector<double> pool(static_cast<std::size_t>(m) * P, 0.0), key(m), absrow(m);
  const std::vector<Eigen::Index> lo = pool_bounds(d);  // stripe q: columns c with floor(c P / d) == q
  // Parallel only above a size threshold (set_parallel_threshold() overrides it, for tests).
  const bool par = parallel_worth(static_cast<double>(m) * static_cast<double>(d), 4e6);
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : omp_get_max_threads()) if (par && !F.raw_pools)
#endif
  for (std::int64_t p = 0; p < m; ++p) {
    const T* a = F.row(order[p]);
    const double fi = F.f(order[p]);
    double* out = pool.data() + static_cast<std::size_t>(p) * P;
    const double* raw = F.raw_pools ? F.raw_pools + static_cast<std::size_t>(order[p]) * P : nullptr;
    for (Eigen::Index q = 0; q < P; ++q) {
      const Eigen::Index hi = std::min<Eigen::Index>(lo[q + 1], F.d);
      double sq = raw ? raw[q] : hi > lo[q] ? sum8(a + lo[q], hi - lo[q]) : 0.0;
      sq *= fi;  // exact when there is no factor (fi = 1)
      if (F.bias && lo[q] <= F.d && F.d < lo[q + 1]) sq += F.extra(order[p]);  // the bias column
      out[q] = sq;
    }
    absrow[p] = F.raw_abs ? std::abs(fi) * F.raw_abs[order[p]] + std::abs(F.extra(order[p])) : l1row(F, order[p]);
    double k = 0.0;
    for (Eigen::Index q = 0; q < P; ++q) k += out[q];
    key[p] = k;
  }
  double amax = 0.0;
  bool finite = true;  // every row's L1 norm finite, hence every stripe sum and key too
  for (double a : absrow) {
    finite = finite && std::isfinite(a);
    amax = std::max(amax, a);
  }
  const double ulp_d = 4.0 * static_cast<double>(d + 1) * std::numeric_limits<double>::epsilon();
  // A row with NaN or inf (or whose L1 norm overflows) has no usable row sum: keys could be NaN,
  // which no sort comparator may see. Then every pair is a candidate (one window over all rows)
  // and only the exact distance decides, as in cluster_allpairs.
  const double window = finite ? eps + ulp_d * 2.0 * amax : std::numeric_limits<double>::infinity();
  if (!finite) std::fill(key.begin(), key.end(), 0.0);

  // Grid on three coordinates, the sums over the first, second and last third of the stripes: a
  // linked pair differs by at most `window` in each (a partial sum of differences is at most their
  // L1 norm), so it lies in the same or an adjacent cell of width > window in each of them. Used
  // when the coordinates spread over many cells (many clusters: close to n log n); otherwise the
  // rows are scanned in row-sum order within the window.
  const double cellw = window * (1.0 + 1e-9);  // floor() of a division never jumps two cells
  std::size_t K = (P >= 3 && finite) ? 3 : 0;
  std::vector<double> coord(static_cast<std::size_t>(m) * K, 0.0);
  for (std::int64_t p = 0; p < m; ++p)
    for (std::size_t t = 0; t < K; ++t)
      for (Eigen::Index q = static_cast<Eigen::Index>(t) * P / 3; q < static_cast<Eigen::Index>(t + 1) * P / 3; ++q)
        coord[static_cast<std::size_t>(p) * K + t] += pool[static_cast<std::size_t>(p) * P + q];
  double scan_share = 1.0;  // the share of the rows a row's window holds
  {  // the grid pays when its neighbourhood (3 cells per coordinate) holds fewer rows than the window
    auto range_of = [&](const std::vector<double>& v, std::size_t stride, std::size_t t) {
      double lo_v = std::numeric_limits<double>::infinity(), hi_v = -lo_v;
      for (std::int64_t p = 0; p < m; ++p) {
        lo_v = std::min(lo_v, v[static_cast<std::size_t>(p) * stride + t]);
        hi_v = std::max(hi_v, v[static_cast<std::size_t>(p) * stride + t]);
      }
      return hi_v - lo_v;
    };
    auto absmax_of = [&](const std::vector<double>& v) {
      double a = 0.0;
      for (double x : v) a = std::max(a, std::abs(x));
      return a;
    };
    double grid_share = 1.0;
    // cell numbers must fit an int64 (the conversion of a larger double is undefined)
    if (K > 0 && !(absmax_of(coord) / cellw < 1e15)) grid_share = 2.0;
    for (std::size_t t = 0; t < K; ++t) {
      const double cells = range_of(coord, 3, t) / cellw;
      if (!(cells < 1e15)) grid_share = 2.0;  // too many cells to index
      grid_share *= std::min(1.0, 3.0 / std::max(cells, 1.0));
    }
    const double key_range = (m && finite) ? range_of(key, 1, 0) : 0.0;
    const double window_share = key_range > 0 ? std::min(1.0, 2.0 * window / key_range) : 1.0;
    scan_share = window_share;
    // ... and when the window holds more than a few rows at all: else one comparison per row ends
    // the window scan, cheaper than the grid's 27 binary searches per row
    if (K > 0 && !(grid_share < 0.5 * window_share && window_share * static_cast<double>(m) > 4.0)) K = 0;
  }
  std::vector<std::int64_t> cell(static_cast<std::size_t>(m) * K);
  for (std::int64_t p = 0; p < m; ++p)
    for (std::size_t t = 0; t < K; ++t)
      cell[static_cast<std::size_t>(p) * K + t] =
          static_cast<std::int64_t>(std::floor(coord[static_cast<std::size_t>(p) * 3 + t] / cellw));

  std::vector<std::int64_t> perm(m);
  std::iota(perm.begin(), perm.end(), 0);
  auto cell_less = [&](std::int64_t a, std::int64_t b) {
    for (std::size_t t = 0; t < K; ++t) {
      const auto ca = cell[static_cast<std::size_t>(a) * K + t], cb = cell[static_cast<std::size_t>(b) * K + t];
      if (ca != cb) return ca < cb;
    }
    return false;
  };
  std::sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) {
    if (cell_less(a, b)) return true;
    if (cell_less(b, a)) return false;
    return key[a] < key[b] || (key[a] == key[b] && order[a] < order[b]);
  });
  {  // apply the permutation so the scan walks memory in order
    std::vector<std::int64_t> o2(m), c2(cell.size());
    std::vector<double> p2(pool.size()), k2(m), a2(m);
    for (std::int64_t r = 0; r < m; ++r) {
      o2[r] = order[perm[r]];
      k2[r] = key[perm[r]];
      a2[r] = absrow[perm[r]];
      // .data() + offset, not &v[offset]: with K == 0 the cell arrays are empty and v[0] is undefined
      std::copy_n(pool.data() + static_cast<std::size_t>(perm[r]) * P, P, p2.data() + static_cast<std::size_t>(r) * P);
      std::copy_n(cell.data() + static_cast<std::size_t>(perm[r]) * K, K, c2.data() + static_cast<std::size_t>(r) * K);
    }
    order.swap(o2);
    pool.swap(p2);
    key.swap(k2);
    absrow.swap(a2);
    cell.swap(c2);
  }

  // One parallel scan; joins go into a lock-free union-find (roots link to the smaller index by
  // compare-and-swap, so no cycles and the same components in any interleaving). A pair already
  // joined is skipped; a stale root only costs a distance.
  ConcurrentUnionFind uf(n);
  auto consider = [&](std::int64_t p, std::int64_t q, std::int64_t& ri) {
    const std::int64_t i = order[p], j = order[q];
    if (std::abs(key[q] - key[p]) > window) return;
    if (uf.find(j) == ri) return;
    const double* pi = pool.data() + static_cast<std::size_t>(p) * P;
    const double* pj = pool.data() + static_cast<std::size_t>(q) * P;
    const double lim = eps + ulp_d * (absrow[p] + absrow[q]);
    double lb = 0.0;
    Eigen::Index r = 0;
    while (r < P && lb <= lim) {
      const Eigen::Index r1 = std::min<Eigen::Index>(P, r + 16);
      for (; r < r1; ++r) lb += std::abs(pi[r] - pj[r]);
    }
    if (lb > lim) return;
    if (distance(F, self, i, j, eps) <= eps) {
      uf.unite(i, j);
      ri = uf.find(i);
    }
  };
  // neighbour cells: all offsets in {-1, 0, 1}^K
  std::vector<std::vector<std::int64_t>> offsets(1);
  for (std::size_t t = 0; t < K; ++t) {
    std::vector<std::vector<std::int64_t>> next;
    for (const auto& o : offsets)
      for (std::int64_t delta = -1; delta <= 1; ++delta) {
        next.push_back(o);
        next.back().push_back(delta);
      }
    offsets.swap(next);
  }
#ifdef AFDE_HAVE_OPENMP
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  // a window of a few rows is done before a second thread has started (under load, a parallel
  // region whose thread gets no core costs a scheduler tick, milliseconds): then serially
  const bool par_scan = par && (K > 0 || scan_share * static_cast<double>(m) > 8.0 || parallel_threshold() >= 0);
#pragma omp parallel for schedule(dynamic, 8) num_threads(nt) if (nt > 1 && par_scan)
#else
  (void)threads;
  (void)par;
#endif
  for (std::int64_t p = 0; p < m; ++p) {
#ifdef AFDE_HAVE_OPENMP
    if (p == 0) g_last_threads.store(omp_get_num_threads(), std::memory_order_relaxed);
#endif
    std::int64_t ri = uf.find(order[p]);
    if (K == 0) {  // one cell: the row-sum window. Written out rather than calling `consider`:
                   // through the closure this loop ran 15 % slower at n = 16384, d = 1024.
      const std::int64_t i = order[p];
      const double* pi = pool.data() + static_cast<std::size_t>(p) * P;
      for (std::int64_t q = p + 1; q < m; ++q) {
        if (key[q] - key[p] > window) break;
        if (((q - p) & 63) == 0) ri = uf.find(i);
        const std::int64_t j = order[q];
        if (uf.find(j) == ri) continue;
        const double* pj = pool.data() + static_cast<std::size_t>(q) * P;
        const double lim = eps + ulp_d * (absrow[p] + absrow[q]);
        double lb = 0.0;
        Eigen::Index r = 0;
        while (r < P && lb <= lim) {
          const Eigen::Index r1 = std::min<Eigen::Index>(P, r + 16);
          for (; r < r1; ++r) lb += std::abs(pi[r] - pj[r]);
        }
        if (lb > lim) continue;
        if (distance(F, self, i, j, eps) <= eps) {
          uf.unite(i, j);
          ri = uf.find(i);
        }
      }
      continue;
    }
    std::vector<std::int64_t> target(K);
    for (const auto& o : offsets) {
      for (std::size_t t = 0; t < K; ++t) target[t] = cell[static_cast<std::size_t>(p) * K + t] + o[t];
      // rows of cell `target`: a contiguous range of the cell-sorted order
      auto cmp_row_cell = [&](std::int64_t row, const std::vector<std::int64_t>& c) {
        for (std::size_t t = 0; t < K; ++t) {
          const auto v = cell[static_cast<std::size_t>(row) * K + t];
          if (v != c[t]) return v < c[t];
        }
        return false;
      };
      std::int64_t lo = 0, hi = m;
      while (lo < hi) {  // first row not below the target cell
        const std::int64_t mid = (lo + hi) / 2;
        if (cmp_row_cell(mid, target)) lo = mid + 1; else hi = mid;
      }
      for (std::int64_t q = std::max(lo, p + 1); q < m; ++q) {
        bool same = true;
        for (std::size_t t = 0; t < K && same; ++t) same = cell[static_cast<std::size_t>(q) * K + t] == target[t];
        if (!same) break;
        if (((q - p) & 63) == 0) ri = uf.find(order[p]);
        consider(p, q, ri);
      }
    }
  }
  return uf.labels();
}

template <class T>
std::vector<std::int64_t> allpairs_impl(const RowSet<T>& F, const SelfTerm* self, double eps) {
  const Eigen::Index n = F.rows();
  UnionFind uf(n);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = i + 1; j < n; ++j)
      if (distance(F, self, i, j, std::numeric_limits<double>::infinity()) <= eps) uf.unite(i, j);
  return uf.labels();
}

}  // namespace

std::vector<std::int64_t> cluster(const RefMat& F, const SelfTerm* self, double eps, int threads) {
  return cluster_impl(rowset<double>(F), self, eps, threads);
}

template <class T>
std::vector<std::int64_t> cluster_rows(const RowSet<T>& F, double eps, int threads) {
  return cluster_impl(F, nullptr, eps, threads);
}

template <class T>
std::vector<std::int64_t> cluster_rows_allpairs(const RowSet<T>& F, double eps) {
  return allpairs_impl(F, nullptr, eps);
}

template std::vector<std::int64_t> cluster_rows<float>(const RowSet<float>&, double, int);
template std::vector<std::int64_t> cluster_rows<double>(const RowSet<double>&, double, int);
template std::vector<std::int64_t> cluster_rows_allpairs<float>(const RowSet<float>&, double);
template std::vector<std::int64_t> cluster_rows_allpairs<double>(const RowSet<double>&, double);

double mean_norm(const RefMat& F, const SelfTerm* self) {
  if (F.rows() == 0) return 0.0;
  double total = 0.0;
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    total += l1norm(F.row(i).data(), F.cols());
    if (self) {  // x_j = 0: |x_i + 0| = |x_i - 0| = max(|x_i|, 0) = |x_i|
      const double n = l1norm(self->X.row(i).data(), self->X.cols());
      total += (self->w_plus + self->w_minus + self->w_max) * n;
    }
  }
  return total / static_cast<double>(F.rows());
}

std::vector<std::int64_t> cluster_allpairs(const RefMat& F, const SelfTerm* self, double eps) {
  return allpairs_impl(rowset<double>(F), self, eps);
}

}  // namespace afde
