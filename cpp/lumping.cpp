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

#include <algorithm>
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

// labels == 0, 1, ..., n-1: every neuron its own block
bool all_singletons(const std::vector<std::int64_t>& labels, Eigen::Index n) {
  if (static_cast<Eigen::Index>(labels.size()) != n) return false;
  for (Eigen::Index j = 0; j < n; ++j)
    if (labels[j] != j) return false;
  return true;
}

std::int64_t num_blocks(const std::vector<std::int64_t>& labels) {
  std::int64_t k = 0;
  for (auto v : labels) k = std::max(k, v + 1);
  return k;
}

#ifdef AFDE_HAVE_OPENMP
int nthreads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }
#endif

// Rows are written into one buffer reused across layers: fresh 100 MB matrices per layer cost
// more in page faults than the arithmetic does.
struct Workspace {
  std::vector<double> buf;
  Eigen::Map<RowMat> take(Eigen::Index rows, Eigen::Index cols) {
    const std::size_t need = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
    if (buf.size() < need) buf.resize(need);
    return Eigen::Map<RowMat>(buf.data(), rows, cols);
  }
};

// R(i, B) = coef * sum_{k in B} W_ik c_k, R(i, k) = coef * b_i.
void fill_block_rows(const MapMat& W, const MapVec& b, const std::vector<std::int64_t>& src,
                     const std::vector<double>& scale, double coef, Eigen::Map<RowMat>& R, int threads) {
  const std::int64_t k = R.cols() - 1;
  const bool plain = (k == W.cols()) && all_singletons(src, k) &&
                     std::all_of(scale.begin(), scale.end(), [](double c) { return c == 1.0; });
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads(threads)) if (parallel_worth(static_cast<double>(W.size()), 1 << 16))
#endif
  for (Eigen::Index i = 0; i < W.rows(); ++i) {
    double* r = R.row(i).data();
    const double* w = W.row(i).data();
    if (plain) {
      for (Eigen::Index j = 0; j < k; ++j) r[j] = coef * w[j];
    } else {
      std::fill(r, r + k, 0.0);
      for (Eigen::Index j = 0; j < W.cols(); ++j) r[src[j]] += w[j] * scale[j];
      if (coef != 1.0)
        for (Eigen::Index j = 0; j < k; ++j) r[j] *= coef;
    }
    r[k] = coef * b(i);
  }
  (void)threads;
}

void normalise_rows(Eigen::Map<RowMat>& R, std::vector<double>* norms) {
  if (norms) norms->assign(R.rows(), 0.0);
  for (Eigen::Index i = 0; i < R.rows(); ++i) {
    const double n = R.row(i).norm();
    if (norms) (*norms)[i] = n;
    if (n > 0) R.row(i) /= n;
  }
}

// Data-aware weights of the columns of R: the calibration RMS of each source block's value,
// a_B = mean over members k of rms_k / c_k (a member equals c_k times the block value).
void weight_block_columns(Eigen::Map<RowMat>& R, const std::vector<std::int64_t>& src,
                          const std::vector<double>& scale, const std::vector<double>& rms) {
  const std::int64_t k = R.cols() - 1;
  std::vector<double> a(k, 0.0), cnt(k, 0.0);
  for (std::size_t j = 0; j < src.size(); ++j) {
    a[src[j]] += scale[j] > 0 ? rms[j] / scale[j] : 0.0;
    cnt[src[j]] += 1.0;
  }
  for (std::int64_t B = 0; B < k; ++B) a[B] = cnt[B] > 0 ? a[B] / cnt[B] : 0.0;
  for (Eigen::Index i = 0; i < R.rows(); ++i)
    for (std::int64_t B = 0; B < k; ++B) R(i, B) *= a[B];
}

std::vector<std::vector<std::int64_t>> lump_backward(const Net& net, const std::vector<double>& eps,
                                                     bool relative, const Norms* rms, std::vector<double>& used,
                                                     int threads) {
  std::vector<std::vector<std::int64_t>> out;
  std::vector<std::int64_t> src = singletons(net.width(0));
  std::vector<double> scale(src.size(), 1.0);
  Workspace ws;
  for (std::size_t k = 0; k < net.num_hidden(); ++k) {
    const std::int64_t kb = num_blocks(src);
    auto R = ws.take(net.W[k].rows(), kb + 1);
    const bool hom = is_homogeneous(net.act[k]);
    fill_block_rows(net.W[k], net.b[k], src, scale, (hom || net.act[k] == Act::Identity) ? 1.0 : 2.0, R, threads);
    std::vector<double> next_scale(R.rows(), 1.0);
    if (hom) normalise_rows(R, &next_scale);  // the scales come from the unweighted rows
    if (rms) {
      weight_block_columns(R, src, scale, (*rms)[k]);
      if (hom) normalise_rows(R, nullptr);
    }
    scale.swap(next_scale);
    used[k] = (relative && eps[k] > 0) ? eps[k] * mean_norm(R, nullptr) : eps[k];
    src = cluster(R, nullptr, used[k], threads);
    out.push_back(src);
  }
  return out;
}

// dst(p, off + r) = coef * src(r, cols[p]) for all rows r of src: a gathering transpose in tiles.
void gather_transposed(const Eigen::Ref<const RowMat>& src, const std::vector<std::int64_t>& cols, double coef,
                       Eigen::Map<RowMat>& dst, Eigen::Index off, int threads) {
  constexpr std::int64_t T = 64;
  const std::int64_t m = static_cast<std::int64_t>(cols.size()), rows = src.rows();
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads(threads)) if (parallel_worth(static_cast<double>(m) * static_cast<double>(rows), 1 << 16))
#endif
  for (std::int64_t p0 = 0; p0 < m; p0 += T)
    for (std::int64_t r0 = 0; r0 < rows; r0 += T)
      for (std::int64_t p = p0; p < std::min(m, p0 + T); ++p) {
        double* out = dst.row(p).data() + off;
        const std::int64_t c = cols[p];
        for (std::int64_t r = r0; r < std::min(rows, r0 + T); ++r) out[r] = coef * src(r, c);
      }
  (void)threads;
}

std::vector<std::vector<std::int64_t>> lump_forward(const Net& net, const std::vector<double>& eps,
                                                    bool relative, const Norms* rms, std::vector<double>& used,
                                                    int threads) {
  const std::size_t L = net.num_hidden();
  std::vector<std::vector<std::int64_t>> out(L);
  std::vector<std::int64_t> tgt = singletons(net.width(L + 1));
  Workspace wsF, wsQ, wsX;
  for (std::size_t h = L; h >= 1; --h) {
    const MapMat& Wout = net.W[h];  // n_{h+1} x n_h
    const MapMat& Win = net.W[h - 1];
    const MapVec& bin = net.b[h - 1];
    const Act t = net.act[h], a = net.act[h - 1];
    const Eigen::Index n = Wout.cols(), nt = Wout.rows(), ni = Win.cols();
    const std::int64_t kt = num_blocks(tgt);
    const bool singles = all_singletons(tgt, nt);
    // tanh target over singleton blocks: 3|sum_C D| + 3 sum|D_c| = 6 sum|D_c|, one block of columns
    const bool sums = (t == Act::Identity || (t == Act::Tanh && !singles));
    const bool cols = (t != Act::Identity);
    const bool hom = is_homogeneous(a), self_term = (a == Act::Tanh || a == Act::Sigmoid);
    const double wcol = (t == Act::Sigmoid || (t == Act::Tanh && singles)) ? 6.0 : 3.0;
    const double w_plus = 4.0, w_minus = (a == Act::Tanh) ? 1.0 : 4.0, w_max = 10.0;

    // Column sums over target blocks, kept as rows (Qt: kt x n) so every pass reads rows.
    Eigen::Map<RowMat> Qbuf = wsQ.take(sums && !singles ? kt : 0, n);
    if (sums && !singles) {
      Qbuf.setZero();
      for (Eigen::Index c = 0; c < nt; ++c) Qbuf.row(tgt[c]) += Wout.row(c);
    }
    const Eigen::Ref<const RowMat> Qt = (sums && !singles) ? Eigen::Ref<const RowMat>(Qbuf) : Eigen::Ref<const RowMat>(Wout);

    // Per-neuron norms (distance from the zero neuron), without building the features.
    // data-aware: incoming coefficients weighted by the calibration RMS of their source neuron
    const std::vector<double> aw = rms ? (*rms)[h - 1] : std::vector<double>(ni, 1.0);
    std::vector<double> norm(n, 0.0), xl1(n, 0.0), xl2(n, 0.0);
    const bool need_norm = relative && eps[h - 1] > 0;  // the scale of a relative eps
    if (sums && need_norm)
      for (Eigen::Index C = 0; C < Qt.rows(); ++C)
        for (Eigen::Index i = 0; i < n; ++i) norm[i] += 3.0 * std::abs(Qt(C, i));
    if (cols && need_norm)
      for (Eigen::Index c = 0; c < nt; ++c)
        for (Eigen::Index i = 0; i < n; ++i) norm[i] += wcol * std::abs(Wout(c, i));
    for (Eigen::Index i = 0; i < n; ++i) {
      double s1 = 0.0, s2 = 0.0;
      const double* w = Win.row(i).data();
      for (Eigen::Index j = 0; j < ni; ++j) {
        const double x = w[j] * aw[j];
        s1 += std::abs(x);
        s2 += x * x;
      }
      s1 += std::abs(bin(i));
      s2 += bin(i) * bin(i);
      xl1[i] = s1;
      xl2[i] = std::sqrt(s2);
      if (self_term) norm[i] += (w_plus + w_minus + w_max) * s1;
      if (hom && xl2[i] > 0) norm[i] += s1 / xl2[i];
    }
    double mean = 0.0;
    for (double v : norm) mean += v;
    mean = n ? mean / static_cast<double>(n) : 0.0;
    const double e = used[h - 1] = need_norm ? eps[h - 1] * mean : eps[h - 1];

    // Only neurons whose self term alone stays within eps can join anything: build their rows.
    std::vector<std::int64_t> cand;
    for (Eigen::Index i = 0; i < n; ++i)
      if (!self_term || w_max * xl1[i] <= e) cand.push_back(i);
    const std::int64_t m = static_cast<std::int64_t>(cand.size());
    const Eigen::Index dsum = sums ? Qt.rows() : 0, dcol = cols ? nt : 0, drow = hom ? ni + 1 : 0;
    Eigen::Map<RowMat> F = wsF.take(m, dsum + dcol + drow);
    if (sums) gather_transposed(Qt, cand, 3.0, F, 0, threads);
    if (cols) gather_transposed(Wout, cand, wcol, F, dsum, threads);
    Eigen::Map<RowMat> X = wsX.take((hom || self_term) ? m : 0, ni + 1);
    if (hom || self_term) {
      for (std::int64_t p = 0; p < m; ++p) {
        for (Eigen::Index j = 0; j < ni; ++j) X(p, j) = Win(cand[p], j) * aw[j];
        X(p, ni) = bin(cand[p]);
        if (hom && xl2[cand[p]] > 0) X.row(p) /= xl2[cand[p]];
      }
      if (hom) F.rightCols(drow) = X;
    }
    SelfTerm self{X, w_plus, w_minus, w_max};
    const auto lc = cluster(F, self_term ? &self : nullptr, e, threads);
    std::vector<std::int64_t> lab(n);
    for (Eigen::Index i = 0; i < n; ++i) lab[i] = m + i;  // non-candidates stay alone
    for (std::int64_t p = 0; p < m; ++p) lab[cand[p]] = lc[p];
    out[h - 1] = canonical(lab);
    tgt = out[h - 1];
  }
  return out;
}

}  // namespace

std::vector<std::vector<std::int64_t>> lump(const Net& net, Mode mode, const std::vector<double>& eps,
                                            bool relative, int threads, std::vector<double>* eps_used,
                                            const Norms* rms) {
  std::vector<double> used(eps.size(), 0.0);
  auto out = (mode == Mode::Backward) ? lump_backward(net, eps, relative, rms, used, threads)
                                      : lump_forward(net, eps, relative, rms, used, threads);
  if (eps_used) *eps_used = used;
  return out;
}

}  // namespace afde
