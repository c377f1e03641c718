// Closed forms of the eps-FDE and eps-BDE tests on the cascade encoding (method.md §3).
//
// Cascade drift of hidden neuron i with activation s:  f_i = s'(h_i) z_i,  z_i = W_i h^{prev} + b_i,
// s' = 1 - h^2 (tanh), h - h^2 (sigmoid), 1 (identity). The distances below are the L1 norms of
// coefficient differences of method.md §3, expanded by hand and checked term by term against
// a generic polynomial implementation in tests/reference.py.
//
// BDE (i, j in one block; variables mapped to block representatives):
//   d = c_s * ( sum_B |R_iB - R_jB| + |b_i - b_j| ),  R_iB = sum_{k in B} W_ik,
//   c_s = 2 for tanh and sigmoid (both monomials of s' carry the difference), 1 for identity.
// ReLU family (positively homogeneous): rows proportional with a positive factor give exactly
//   proportional neurons, so the test is the L1 distance of L2-normalised rows (R_i, b_i), and a
//   source block contributes with each member's row norm as scale c_k (method.md §5).
//
// FDE (substitution h_i -> s (h_i + h_j), h_j -> (1 - s)(h_i + h_j)), with D_c = W'_ci - W'_cj
// the outgoing-column difference into target neuron c, and C the target blocks:
//   target term:  identity  3 sum_C |sum_{c in C} D_c|
//                 tanh      3 sum_C |sum_{c in C} D_c| + 3 sum_c |D_c|
//                 sigmoid   6 sum_c |D_c|
//                 ReLU fam. 3 sum_c |D_c|      (ours: entrywise, as for any non-linear target)
//   self term (the s'(h_i), s'(h_j) factors of the block's own drift), per incoming coefficient
//   pair (a, b) = (x_i, x_j) over weights and bias, orientation i -> s:
//                 tanh      4|a + b| + 10|b| + |a - b|
//                 sigmoid   4|a + b| + 10|b| + 4|a - b|
//                 identity  0
//                 ReLU fam. L1 of the L2-normalised raw rows (proportional rows, ours)
//   The coefficient L1 of the substitution is not symmetric in (i, j); a pair is one pair, so we
//   take the larger of the two orientations, which turns 10|b| into 10 max(|x_i|_1, |x_j|_1).
//   Exact FDE therefore lumps tanh/sigmoid neurons only when their incoming rows are all zero.
#include "lumping.hpp"

#include <cmath>
#include <numeric>

#include "cluster.hpp"

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace afde {
namespace {

std::vector<std::int64_t> singletons(Eigen::Index n) {
  std::vector<std::int64_t> l(n);
  std::iota(l.begin(), l.end(), 0);
  return l;
}

std::int64_t num_blocks(const std::vector<std::int64_t>& labels) {
  std::int64_t k = 0;
  for (auto v : labels) k = std::max(k, v + 1);
  return k;
}

void normalise_rows(RowMat& R, std::vector<double>* norms) {
  if (norms) norms->assign(R.rows(), 0.0);
  for (Eigen::Index i = 0; i < R.rows(); ++i) {
    const double n = R.row(i).norm();
    if (norms) (*norms)[i] = n;
    if (n > 0) R.row(i) /= n;
  }
}

struct Tolerance {
  const std::vector<double>& eps;
  bool relative;
  std::vector<double>& used;
  double at(std::size_t h, const RefMat& F, const SelfTerm* self) {
    used[h] = relative ? eps[h] * mean_norm(F, self) : eps[h];
    return used[h];
  }
};

std::vector<std::vector<std::int64_t>> lump_backward(const Net& net, Tolerance tol, int threads) {
  std::vector<std::vector<std::int64_t>> out;
  std::vector<std::int64_t> src = singletons(net.width(0));
  std::vector<double> scale(src.size(), 1.0);
  for (std::size_t k = 0; k < net.num_hidden(); ++k) {
    RowMat R = block_rows(net.W[k], net.b[k], src, scale, threads);
    if (is_homogeneous(net.act[k])) {
      normalise_rows(R, &scale);
    } else {
      if (net.act[k] != Act::Identity) R *= 2.0;
      scale.assign(R.rows(), 1.0);
    }
    src = cluster(R, nullptr, tol.at(k, R, nullptr), threads);
    out.push_back(src);
  }
  return out;
}

std::vector<std::vector<std::int64_t>> lump_forward(const Net& net, Tolerance tol, int threads) {
  const std::size_t L = net.num_hidden();
  std::vector<std::vector<std::int64_t>> out(L);
  std::vector<std::int64_t> tgt = singletons(net.width(L + 1));
  for (std::size_t h = L; h >= 1; --h) {
    const MapMat& Wout = net.W[h];      // n_{h+1} x n_h
    const MapMat& Win = net.W[h - 1];   // n_h x n_{h-1}
    const Act t = net.act[h], a = net.act[h - 1];
    const Eigen::Index n = Wout.cols(), nt = Wout.rows();
    (void)threads;
    const std::int64_t kt = num_blocks(tgt);

    const bool sums = (t == Act::Identity || t == Act::Tanh);
    const bool cols = (t != Act::Identity);
    const double wcol = (t == Act::Sigmoid) ? 6.0 : 3.0;
    const Eigen::Index dsum = sums ? kt : 0, dcol = cols ? nt : 0;
    const Eigen::Index drow = is_homogeneous(a) ? Win.cols() + 1 : 0;
    RowMat F = RowMat::Zero(n, dsum + dcol + drow);
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : omp_get_max_threads())
#endif
    for (Eigen::Index i = 0; i < n; ++i) {
      for (Eigen::Index c = 0; c < nt; ++c) {
        const double w = Wout(c, i);
        if (sums) F(i, tgt[c]) += 3.0 * w;
        if (cols) F(i, dsum + c) = wcol * w;
      }
    }
    RowMat X(n, Win.cols() + 1);
    X.leftCols(Win.cols()) = Win;
    X.col(Win.cols()) = net.b[h - 1];
    SelfTerm self;
    const SelfTerm* selfp = nullptr;
    if (is_homogeneous(a)) {
      normalise_rows(X, nullptr);
      F.rightCols(drow) = X;
    } else if (a == Act::Tanh || a == Act::Sigmoid) {
      self.X = &X;
      self.w_plus = 4.0;
      self.w_minus = (a == Act::Tanh) ? 1.0 : 4.0;
      self.w_max = 10.0;
      selfp = &self;
    }
    out[h - 1] = cluster(F, selfp, tol.at(h - 1, F, selfp), threads);
    tgt = out[h - 1];
  }
  return out;
}

}  // namespace

RowMat block_rows(const MapMat& W, const MapVec& b, const std::vector<std::int64_t>& src_labels,
                  const std::vector<double>& src_scale, int threads) {
  const std::int64_t k = num_blocks(src_labels);
  RowMat R = RowMat::Zero(W.rows(), k + 1);
  (void)threads;
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : omp_get_max_threads())
#endif
  for (Eigen::Index i = 0; i < W.rows(); ++i) {
    for (Eigen::Index j = 0; j < W.cols(); ++j) R(i, src_labels[j]) += W(i, j) * src_scale[j];
    R(i, k) = b(i);
  }
  return R;
}

std::vector<std::vector<std::int64_t>> lump(const Net& net, Mode mode, const std::vector<double>& eps,
                                            bool relative, int threads, std::vector<double>* eps_used) {
  std::vector<double> used(eps.size(), 0.0);
  Tolerance tol{eps, relative, used};
  auto out = (mode == Mode::Backward) ? lump_backward(net, tol, threads) : lump_forward(net, tol, threads);
  if (eps_used) *eps_used = used;
  return out;
}

}  // namespace afde
