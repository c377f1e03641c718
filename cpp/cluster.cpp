#include "cluster.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace afde {
namespace {

double l1norm(const double* x, Eigen::Index d) {
  double s = 0.0;
  for (Eigen::Index q = 0; q < d; ++q) s += std::abs(x[q]);
  return s;
}

// L1 distance plus self term; returns early with a value > eps once the partial sum passes it.
double distance(const RefMat& F, const SelfTerm* self, Eigen::Index i, Eigen::Index j, double eps) {
  const double* a = F.row(i).data();
  const double* b = F.row(j).data();
  const Eigen::Index d = F.cols();
  double s = 0.0;
  Eigen::Index k = 0;
  constexpr Eigen::Index kChunk = 32;
  for (; k + kChunk <= d; k += kChunk) {
    for (Eigen::Index q = k; q < k + kChunk; ++q) s += std::abs(a[q] - b[q]);
    if (s > eps) return s;
  }
  for (; k < d; ++k) s += std::abs(a[k] - b[k]);
  if (s > eps || self == nullptr) return s;
  const RowMat& X = *self->X;
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

// Rows whose self term alone exceeds eps can join nothing (self >= w_max * |x_i|_1).
std::vector<char> candidates(const RefMat& F, const SelfTerm* self, double eps) {
  std::vector<char> ok(F.rows(), 1);
  if (self == nullptr) return ok;
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    const double n = l1norm(self->X->row(i).data(), self->X->cols());
    ok[i] = (self->w_max * n <= eps) ? 1 : 0;
  }
  return ok;
}

std::vector<std::int64_t> cluster_exact(const RefMat& F, const SelfTerm* self) {
  const Eigen::Index n = F.rows();
  const auto ok = candidates(F, self, 0.0);
  std::vector<std::int64_t> order;
  for (Eigen::Index i = 0; i < n; ++i)
    if (ok[i]) order.push_back(i);
  const Eigen::Index d = F.cols();
  auto less = [&](std::int64_t i, std::int64_t j) {
    const double* a = F.row(i).data();
    const double* b = F.row(j).data();
    for (Eigen::Index k = 0; k < d; ++k) {
      if (a[k] < b[k]) return true;
      if (a[k] > b[k]) return false;
    }
    return i < j;
  };
  std::sort(order.begin(), order.end(), less);
  std::vector<std::int64_t> lab(n);
  std::iota(lab.begin(), lab.end(), 0);
  for (std::size_t p = 1; p < order.size(); ++p) {
    const double* a = F.row(order[p - 1]).data();
    const double* b = F.row(order[p]).data();
    bool same = true;
    for (Eigen::Index k = 0; k < d && same; ++k) same = (a[k] == b[k]);
    if (same) lab[order[p]] = lab[order[p - 1]];
  }
  // Candidates at eps = 0 have x == 0, so the self term of two of them is exactly 0.
  return canonical(lab);
}

}  // namespace

std::vector<std::int64_t> canonical(const std::vector<std::int64_t>& labels) {
  std::vector<std::int64_t> map(labels.size() + 1, -1), out(labels.size());
  std::int64_t next = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    auto& m = map[labels[i]];
    if (m < 0) m = next++;
    out[i] = m;
  }
  return out;
}

std::vector<std::int64_t> cluster(const RefMat& F, const SelfTerm* self, double eps, int threads) {
  const Eigen::Index n = F.rows();
  if (n == 0) return {};
  if (eps == 0.0) return cluster_exact(F, self);

  const auto ok = candidates(F, self, eps);
  std::vector<std::int64_t> order;
  std::vector<double> key(n, 0.0);
  double keyabs = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (!ok[i]) continue;
    order.push_back(i);
    key[i] = F.row(i).sum();
    keyabs = std::max(keyabs, F.row(i).cwiseAbs().sum());
  }
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return key[a] < key[b] || (key[a] == key[b] && a < b);
  });
  // |key_i - key_j| <= ||F_i - F_j||_1 exactly; the slack covers rounding in the row sums.
  const double window = eps + 1e-12 * static_cast<double>(F.cols() + 1) * keyabs;

  UnionFind uf(n);
  std::vector<std::int64_t> snap(n);
  std::iota(snap.begin(), snap.end(), 0);
  const std::int64_t m = static_cast<std::int64_t>(order.size());
  constexpr std::int64_t kChunk = 256;
  int nt = threads > 0 ? threads : 1;
#ifdef AFDE_HAVE_OPENMP
  if (threads <= 0) nt = omp_get_max_threads();
#else
  nt = 1;
#endif
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> edges(nt);
  for (std::int64_t c0 = 0; c0 < m; c0 += kChunk) {
    const std::int64_t c1 = std::min(m, c0 + kChunk);
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
#endif
    for (std::int64_t p = c0; p < c1; ++p) {
      int tid = 0;
#ifdef AFDE_HAVE_OPENMP
      tid = omp_get_thread_num();
#endif
      const std::int64_t i = order[p];
      for (std::int64_t q = p + 1; q < m; ++q) {
        const std::int64_t j = order[q];
        if (key[j] - key[i] > window) break;
        if (snap[i] == snap[j]) continue;
        if (distance(F, self, i, j, eps) <= eps) edges[tid].emplace_back(i, j);
      }
    }
    bool joined = false;
    for (auto& e : edges) {
      for (auto [i, j] : e) joined |= uf.unite(i, j);
      e.clear();
    }
    if (joined)
      for (Eigen::Index i = 0; i < n; ++i) snap[i] = uf.find(i);
  }
  return uf.labels();
}

double mean_norm(const RefMat& F, const SelfTerm* self) {
  if (F.rows() == 0) return 0.0;
  double total = 0.0;
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    total += l1norm(F.row(i).data(), F.cols());
    if (self) {  // x_j = 0: |x_i + 0| = |x_i - 0| = max(|x_i|, 0) = |x_i|
      const double n = l1norm(self->X->row(i).data(), self->X->cols());
      total += (self->w_plus + self->w_minus + self->w_max) * n;
    }
  }
  return total / static_cast<double>(F.rows());
}

std::vector<std::int64_t> cluster_allpairs(const RefMat& F, const SelfTerm* self, double eps) {
  const Eigen::Index n = F.rows();
  UnionFind uf(n);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = i + 1; j < n; ++j)
      if (distance(F, self, i, j, std::numeric_limits<double>::infinity()) <= eps) uf.unite(i, j);
  return uf.labels();
}

}  // namespace afde
