#include "agglomerate.hpp"

#include "cluster.hpp"  // parallel_worth

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace afde {
namespace {

// Union-find with the orientation of each element relative to its parent.
struct SignedUF {
  std::vector<std::int64_t> parent;
  std::vector<int> rel;
  explicit SignedUF(std::int64_t n) : parent(static_cast<std::size_t>(n)), rel(static_cast<std::size_t>(n), 1) {
    std::iota(parent.begin(), parent.end(), 0);
  }
  std::pair<std::int64_t, int> find(std::int64_t x) {
    int s = 1;
    std::int64_t r = x;
    while (parent[static_cast<std::size_t>(r)] != r) {
      s *= rel[static_cast<std::size_t>(r)];
      r = parent[static_cast<std::size_t>(r)];
    }
    // path compression, keeping each element's sign relative to the root
    std::int64_t y = x;
    int sy = s;
    while (parent[static_cast<std::size_t>(y)] != r) {
      std::int64_t next = parent[static_cast<std::size_t>(y)];
      int snext = sy * rel[static_cast<std::size_t>(y)];
      parent[static_cast<std::size_t>(y)] = r;
      rel[static_cast<std::size_t>(y)] = sy;
      y = next;
      sy = snext;
    }
    return {r, s};
  }
  // orientation(b) = sign * orientation(a)
  void unite(std::int64_t a, std::int64_t b, int sign) {
    auto [ra, sa] = find(a);
    auto [rb, sb] = find(b);
    if (ra == rb) return;
    if (rb < ra) {  // keep the smaller root
      std::swap(ra, rb);
      std::swap(sa, sb);
    }
    parent[static_cast<std::size_t>(rb)] = ra;
    rel[static_cast<std::size_t>(rb)] = sa * sign * sb;  // s(rb rel ra): s_b = sign*s_a, s_b = sb*s(rb)
  }
};

}  // namespace

void replay(std::int64_t n, const std::vector<Merge>& merges, std::int64_t m, std::vector<std::int64_t>& labels,
            std::vector<int>& signs) {
  if (m < 0 || m > static_cast<std::int64_t>(merges.size())) throw std::invalid_argument("cut outside the merge sequence");
  SignedUF uf(n);
  for (std::int64_t t = 0; t < m; ++t) {
    const Merge& g = merges[static_cast<std::size_t>(t)];
    if (g.a < 0 || g.a >= n || g.b < 0 || g.b >= n) throw std::invalid_argument("merge refers to no element");
    uf.unite(g.a, g.b, g.sign);
  }
  labels.assign(static_cast<std::size_t>(n), -1);
  signs.assign(static_cast<std::size_t>(n), 1);
  std::vector<std::int64_t> id(static_cast<std::size_t>(n), -1);
  std::vector<int> root_sign(static_cast<std::size_t>(n), 0);
  std::int64_t next = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    auto [r, s] = uf.find(i);
    auto ri = static_cast<std::size_t>(r);
    if (id[ri] < 0) {
      id[ri] = next++;
      root_sign[ri] = s;  // the first member of a block is oriented +1
    }
    labels[static_cast<std::size_t>(i)] = id[ri];
    signs[static_cast<std::size_t>(i)] = s * root_sign[ri];
  }
}

std::vector<Merge> agglomerate(const Eigen::Ref<const RowMat>& X, const std::vector<double>& w,
                               const std::vector<std::int64_t>& labels0, const std::vector<int>& signs0,
                               Linkage linkage, bool symmetric, int threads) {
  const Eigen::Index n = X.rows();
  const auto un = static_cast<std::size_t>(n);
  if (w.size() != un || labels0.size() != un || signs0.size() != un)
    throw std::invalid_argument("weights, labels and signs need one entry per row");
  std::int64_t k = 0;
  for (std::size_t i = 0; i < un; ++i) {
    if (labels0[i] < 0 || labels0[i] > k) throw std::invalid_argument("initial labels must be canonical (0..k-1, by first member)");
    if (labels0[i] == k) ++k;
    if (!(w[i] > 0.0) || !std::isfinite(w[i])) throw std::invalid_argument("weights must be finite and > 0");
    if (signs0[i] != 1 && signs0[i] != -1) throw std::invalid_argument("signs must be +1 or -1");
  }
  if (!X.allFinite()) throw std::invalid_argument("features must be finite");
  std::vector<Merge> out;
  if (k <= 1) return out;
  const auto uk = static_cast<std::size_t>(k);
  const Eigen::Index d = X.cols();

  // blocks: representative (first member), mass, oriented centroid
  std::vector<std::int64_t> rep(uk, -1);
  std::vector<double> mass(uk, 0.0);
  RowMat C = RowMat::Zero(k, d);
  for (std::size_t i = 0; i < un; ++i) {
    auto b = static_cast<std::size_t>(labels0[i]);
    if (rep[b] < 0) rep[b] = static_cast<std::int64_t>(i);
    mass[b] += w[i];
    C.row(static_cast<Eigen::Index>(b)) += (w[i] * signs0[i]) * X.row(static_cast<Eigen::Index>(i));
  }
  for (std::size_t b = 0; b < uk; ++b) C.row(static_cast<Eigen::Index>(b)) /= mass[b];

  // Dp[a][b] = cost with s = +1, Dm = with s = -1 (k x k, row-major). Pairwise squared distances
  // come from one Gram product (Eigen's blocked GEMM, 2 k^2 d flops: the floor of exact pairwise
  // costs): ||x -+ y||^2 = ||x||^2 + ||y||^2 -+ 2 x.y, clamped at 0 against rounding.
  std::vector<double> Dp(uk * uk, 0.0), Dm(symmetric ? uk * uk : 0, 0.0);
  const bool ward = linkage == Linkage::Ward;
  const bool par = parallel_worth(static_cast<double>(k) * static_cast<double>(k), 1 << 16);
  // Eigen's GEMM threads: only where the product is big enough to pay for them (small products
  // interleaved with numpy's BLAS otherwise wait on each other's spinning threads)
  const bool par_gemm = parallel_worth(static_cast<double>(k) * static_cast<double>(k) * static_cast<double>(d), 1 << 24);
#ifdef AFDE_HAVE_OPENMP
  Eigen::setNbThreads(par_gemm ? (threads > 0 ? threads : omp_get_max_threads()) : 1);
#else
  (void)par, (void)par_gemm, (void)threads;  // the serial engine has no threads to size
#endif
  if (ward) {
    Eigen::Map<RowMat> G(Dp.data(), k, k);
    G.noalias() = C * C.transpose();
    Eigen::VectorXd nrm = C.rowwise().squaredNorm();
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads > 0 ? threads : omp_get_max_threads()) if (par)
#endif
    for (std::int64_t a = 0; a < k; ++a)
      for (std::int64_t b = a + 1; b < k; ++b) {
        auto ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
        const double f = mass[ua] * mass[ub] / (mass[ua] + mass[ub]);
        const double g = Dp[ua * uk + ub], nn = nrm(a) + nrm(b);
        Dp[ua * uk + ub] = Dp[ub * uk + ua] = f * std::max(0.0, nn - 2.0 * g);
        if (symmetric) Dm[ua * uk + ub] = Dm[ub * uk + ua] = f * std::max(0.0, nn + 2.0 * g);
      }
    for (std::size_t a = 0; a < uk; ++a) Dp[a * uk + a] = 0.0;
  } else {
    // element distances (oriented rows), then the maximum over block pairs
    const std::vector<std::int64_t>& lab = labels0;
    RowMat Y(n, d);
    for (Eigen::Index i = 0; i < n; ++i) Y.row(i) = static_cast<double>(signs0[static_cast<std::size_t>(i)]) * X.row(i);
    RowMat G = Y * Y.transpose();
    const Eigen::VectorXd nrm = Y.rowwise().squaredNorm();
    Y.resize(0, 0);  // only G and the norms are needed from here
    for (Eigen::Index i = 0; i < n; ++i) {
      auto ba = static_cast<std::size_t>(lab[static_cast<std::size_t>(i)]);
      for (Eigen::Index j = i + 1; j < n; ++j) {
        auto bb = static_cast<std::size_t>(lab[static_cast<std::size_t>(j)]);
        if (ba == bb) continue;
        const double g = G(i, j), nn = nrm(i) + nrm(j);
        const double dp = std::sqrt(std::max(0.0, nn - 2.0 * g));
        Dp[ba * uk + bb] = Dp[bb * uk + ba] = std::max(Dp[ba * uk + bb], dp);
        if (symmetric) {
          const double dm = std::sqrt(std::max(0.0, nn + 2.0 * g));
          Dm[ba * uk + bb] = Dm[bb * uk + ba] = std::max(Dm[ba * uk + bb], dm);
        }
      }
    }
  }

#ifdef AFDE_HAVE_OPENMP
  Eigen::setNbThreads(0);  // back to Eigen's default
#endif

  auto cost = [&](std::size_t a, std::size_t b, int* s) {
    double p = Dp[a * uk + b];
    if (symmetric) {
      double q = Dm[a * uk + b];
      if (q < p) {
        if (s) *s = -1;
        return q;
      }
    }
    if (s) *s = 1;
    return p;
  };

  std::vector<char> active(uk, 1);
  std::vector<std::size_t> chain;
  chain.reserve(uk);
  out.reserve(uk - 1);
  std::size_t left = uk;
  while (left > 1) {
    if (chain.empty()) {
      for (std::size_t a = 0; a < uk; ++a)
        if (active[a]) {
          chain.push_back(a);
          break;
        }
    }
    const std::size_t a = chain.back();
    const std::size_t prev = chain.size() >= 2 ? chain[chain.size() - 2] : uk;
    // nearest neighbour of a; ties go to the previous chain element (keeps the chain finite),
    // then to the smallest index
    std::size_t best = uk;
    double bd = std::numeric_limits<double>::infinity();
    if (prev < uk) {
      best = prev;
      bd = cost(a, prev, nullptr);
    }
    for (std::size_t c = 0; c < uk; ++c) {
      if (!active[c] || c == a) continue;
      double dc = cost(a, c, nullptr);
      if (dc < bd) {
        bd = dc;
        best = c;
      }
    }
    if (best != prev) {
      chain.push_back(best);
      continue;
    }
    // a and prev are reciprocal nearest neighbours: merge them into the smaller slot
    chain.pop_back();
    chain.pop_back();
    std::size_t x = std::min(a, prev), y = std::max(a, prev);
    int s = 1;
    double h = cost(x, y, &s);
    out.push_back({rep[x], rep[y], s, h});
    const double mx = mass[x], my = mass[y];
    for (std::size_t c = 0; c < uk; ++c) {
      if (!active[c] || c == x || c == y) continue;
      const double mc = mass[c];
      for (int t : {1, -1}) {
        if (t == -1 && !symmetric) break;
        std::vector<double>& Dt = t == 1 ? Dp : Dm;
        std::vector<double>& Dts = t * s == 1 ? Dp : Dm;
        double dxc = Dt[x * uk + c], dyc = Dts[y * uk + c];
        double v = ward ? ((mx + mc) * dxc + (my + mc) * dyc - mc * h) / (mx + my + mc) : std::max(dxc, dyc);
        if (v < 0.0) v = 0.0;
        Dt[x * uk + c] = v;  // written after both reads of this t
      }
      for (int t : {1, -1}) {
        if (t == -1 && !symmetric) break;
        std::vector<double>& Dt = t == 1 ? Dp : Dm;
        Dt[c * uk + x] = Dt[x * uk + c];
      }
    }
    mass[x] = mx + my;
    active[y] = 0;
    --left;
  }
  std::stable_sort(out.begin(), out.end(), [](const Merge& p, const Merge& q) { return p.height < q.height; });
  for (std::size_t t = 1; t < out.size(); ++t) out[t].height = std::max(out[t].height, out[t - 1].height);
  return out;
}

}  // namespace afde
