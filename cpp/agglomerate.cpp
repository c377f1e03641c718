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

Blocks block_centroids(const Eigen::Ref<const RowMat>& X, const std::vector<double>& w,
                       const std::vector<std::int64_t>& labels0, const std::vector<int>& signs0) {
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
  Blocks B;
  const auto uk = static_cast<std::size_t>(k);
  B.rep.assign(uk, -1);
  B.mass.assign(uk, 0.0);
  B.C = RowMat::Zero(k, X.cols());
  for (std::size_t i = 0; i < un; ++i) {
    auto b = static_cast<std::size_t>(labels0[i]);
    if (B.rep[b] < 0) B.rep[b] = static_cast<std::int64_t>(i);
    B.mass[b] += w[i];
    B.C.row(static_cast<Eigen::Index>(b)) += (w[i] * signs0[i]) * X.row(static_cast<Eigen::Index>(i));
  }
  for (std::size_t b = 0; b < uk; ++b) B.C.row(static_cast<Eigen::Index>(b)) /= B.mass[b];
  return B;
}

namespace {

// Sort by height (stable) and make the heights monotone (running maximum against rounding).
void finish(std::vector<Merge>& out) {
  std::stable_sort(out.begin(), out.end(), [](const Merge& p, const Merge& q) { return p.height < q.height; });
  for (std::size_t t = 1; t < out.size(); ++t) out[t].height = std::max(out[t].height, out[t - 1].height);
}

}  // namespace

// The chain's scan: d[j] = f_j max(0, (n_a + n_j) - 2 |g_j|) (or 2 g_j without the symmetry),
// f_j = m_a m_j / (m_a + m_j), for the column slots j < n. Most of a chain step; its division is
// the bottleneck, so x86-64 gets an AVX2 clone chosen at load time (4 divisions a vector instead
// of 2). No FMA in either clone (and no contraction in this file): both give the same bits as the
// scalar cost of two blocks, which the chain compares against the scan's minimum.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define AFDE_SCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define AFDE_SCAN_CLONES
#endif
template <class T>
AFDE_SCAN_CLONES void scan_costs(const T* g, const double* ms, const double* ns, double ma, double na, std::size_t n,
                                 bool symmetric, double* d) {
  if (symmetric) {
    for (std::size_t j = 0; j < n; ++j)
      d[j] = ma * ms[j] / (ma + ms[j]) * std::max(0.0, (na + ns[j]) - 2.0 * std::abs(static_cast<double>(g[j])));
  } else {
    for (std::size_t j = 0; j < n; ++j) d[j] = ma * ms[j] / (ma + ms[j]) * std::max(0.0, (na + ns[j]) - 2.0 * static_cast<double>(g[j]));
  }
}

std::int64_t ward_stride(std::int64_t k) {
  // room for k / 4 (at least 64) merged blocks' columns before the matrix is compacted, rounded to
  // a cache line of floats: fewer compactions (a quarter fewer entries moved than with k / 8)
  const std::int64_t s = k + std::max<std::int64_t>(64, k / 4);
  return (s + 15) / 16 * 16;
}

template <class T>
std::vector<Merge> ward_chain(T* G, std::int64_t k, std::int64_t stride, std::vector<double> mass,
                              const std::vector<std::int64_t>& rep0, bool symmetric, int threads) {
  std::vector<Merge> out;
  if (k <= 1) return out;
  std::size_t uk = static_cast<std::size_t>(k);  // row slots in use (shrinks at compaction)
  const std::size_t S = static_cast<std::size_t>(stride);
  if (stride < k) throw std::invalid_argument("ward_chain: the row stride must be at least k");
  if (mass.size() != uk || rep0.size() != uk) throw std::invalid_argument("masses and representatives need one entry per block");
  // One matrix of centroid inner products serves both signs: their costs come from the same
  // g = c_a . c_b (f (n_a + n_b -+ 2 g)), and a merge's new inner products are the same linear
  // combination of two rows. The chain itself is serial: a step is O(k) (microseconds at k = 4096),
  // too short for a parallel region, which on a loaded machine waits for descheduled threads.
  //
  // Layout: block a owns row slot a (a merged block reuses the smaller of its two rows) and a
  // *column* slot col[a]; a merged block gets a fresh column slot at the end (the scratch columns
  // [k, S)). Writing a merged block's inner products into every other row (one entry per row, a
  // cache line each) was most of the chain's time; they are now written for up to B merged blocks
  // at once, whose fresh column slots are adjacent (one or two cache lines per row per B merges).
  // Until then such a block is "pending": its own row holds the inner products with every block
  // older than it, and a scan of another row takes that entry from the pending block's row.
#ifdef AFDE_HAVE_OPENMP
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const bool par = parallel_worth(static_cast<double>(k) * static_cast<double>(k), 1 << 20);
#else
  (void)threads;
#endif
  // exact symmetry (the chain's reciprocity test relies on it): the upper triangle wins, tile by tile
  constexpr std::size_t tile = 64;
#ifdef AFDE_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (par)
#endif
  for (std::int64_t ib = 0; ib < static_cast<std::int64_t>((uk + tile - 1) / tile); ++ib) {
    for (std::size_t jb = static_cast<std::size_t>(ib); jb * tile < uk; ++jb)
      for (std::size_t a = static_cast<std::size_t>(ib) * tile; a < std::min(uk, (static_cast<std::size_t>(ib) + 1) * tile); ++a)
        for (std::size_t b = std::max(a + 1, jb * tile); b < std::min(uk, (jb + 1) * tile); ++b) G[b * S + a] = G[a * S + b];
    for (std::size_t a = static_cast<std::size_t>(ib) * tile; a < std::min(uk, (static_cast<std::size_t>(ib) + 1) * tile); ++a)
      std::fill(G + a * S + uk, G + a * S + S, T(0));  // scratch columns: finite until written
  }
  const double inf = std::numeric_limits<double>::infinity();
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<double> norm(uk);
  for (std::size_t a = 0; a < uk; ++a) {
    norm[a] = G[a * S + a];
    if (!std::isfinite(norm[a])) throw std::invalid_argument("features must be finite");
  }
  std::vector<std::int64_t> rep = rep0;
  // per column slot: the block's mass and squared norm (norm +inf: no block, so cost +inf) and row
  std::vector<double> cm(S, 1.0), cn(S, inf);
  std::vector<std::size_t> rowof(S, none), col(uk);
  for (std::size_t a = 0; a < uk; ++a) col[a] = a, cm[a] = mass[a], cn[a] = norm[a], rowof[a] = a;
  std::size_t ncol = uk;  // column slots in use
  const std::size_t B = 16;  // pending blocks: one or two cache lines of entries per row
  std::vector<std::uint64_t> stamp(uk, 0);        // when each row was last written
  std::uint64_t now = 0;
  std::vector<std::size_t> pend;  // row slots of pending blocks, oldest first
  std::vector<char> pending(uk, 0), active(uk, 1);

  // g = c_a . c_c: a's row, unless c is pending and newer than a (then c's row)
  auto value = [&](std::size_t a, std::size_t c) -> double {
    return pending[c] && stamp[c] > stamp[a] ? static_cast<double>(G[c * S + col[a]]) : static_cast<double>(G[a * S + col[c]]);
  };
  // the merge cost of blocks a and b and its sign: f max(0, n_a + n_b -+ 2 g), the negated one only
  // where strictly smaller (the same expression as the scan's, so ties compare equal)
  auto cost = [&](std::size_t a, std::size_t b, int* s) {
    const double f = mass[a] * mass[b] / (mass[a] + mass[b]);
    const double g = value(a, b), nn = norm[a] + norm[b];
    const double p = f * std::max(0.0, nn - 2.0 * g);
    if (symmetric) {
      const double q = f * std::max(0.0, nn + 2.0 * g);
      if (q < p) {
        if (s) *s = -1;
        return q;
      }
    }
    if (s) *s = 1;
    return p;
  };
  // nearest neighbour of a among the others, ties to the smallest column slot. The costs go to a
  // buffer in a branch-free loop over the column slots (vectorised; dead slots cost +inf), the
  // pending blocks newer than a are then costed from their rows, then the argmin.
  std::vector<double> buf(S);
  auto nearest = [&](std::size_t a, double& bd) {
    double* d = buf.data();
    scan_costs(G + a * S, cm.data(), cn.data(), mass[a], norm[a], ncol, symmetric, d);
    for (std::size_t p : pend)
      if (p != a && stamp[p] > stamp[a]) d[col[p]] = cost(a, p, nullptr);
    d[col[a]] = inf;
    std::size_t best = ncol;
    bd = inf;
    for (std::size_t j = 0; j < ncol; ++j)
      if (d[j] < bd) bd = d[j], best = j;
    return best < ncol ? rowof[best] : none;
  };
  // write the pending blocks' columns into every older row
  auto flush = [&]() {
    if (pend.empty()) return;
    for (std::size_t r = 0; r < uk; ++r) {
      if (!active[r]) continue;
      T* Gr = G + r * S;
      for (std::size_t p : pend)
        if (stamp[r] < stamp[p]) Gr[col[p]] = G[p * S + col[r]];
    }
    for (std::size_t p : pend) pending[p] = 0;
    pend.clear();
  };

  std::vector<std::size_t> chain;
  chain.reserve(uk);
  out.reserve(uk - 1);
  std::size_t left = uk, first_active = 0;
  std::vector<std::size_t> keep;
  std::vector<double> vx, vy;
  while (left > 1) {
    if (ncol == S || (left * 2 <= ncol && ncol >= 256)) {
      // compaction: the active blocks move to the front in their row order (so ties by index
      // keep their order), each getting the column slot of its row; G shrinks in place (row i
      // comes from row keep[i] >= i). The columns beyond keep old finite entries: a column slot
      // is read only once its block's entries are written (or, pending, replaced in the scan).
      flush();
      keep.clear();
      for (std::size_t a = 0; a < uk; ++a)
        if (active[a]) keep.push_back(a);
      const std::size_t m = keep.size();
      std::vector<std::size_t> to(uk, none);
      for (std::size_t i = 0; i < m; ++i) to[keep[i]] = i;
      std::vector<std::size_t> from(m);
      for (std::size_t j = 0; j < m; ++j) from[j] = col[keep[j]];
      for (std::size_t i = 0; i < m; ++i) {
        // straight into row i: a different row unless keep[i] == i, and then every entry read
        // (column from[j] >= j: a block's column slot is never below its row) is at or after
        // the entry written
        const T* src = G + keep[i] * S;
        T* dst = G + i * S;
        for (std::size_t j = 0; j < m; ++j) dst[j] = src[from[j]];
      }
      for (std::size_t i = 0; i < m; ++i) {
        mass[i] = mass[keep[i]];
        norm[i] = norm[keep[i]];
        rep[i] = rep[keep[i]];
        stamp[i] = stamp[keep[i]];
      }
      for (auto& c : chain) c = to[c];
      uk = m;
      mass.resize(m), norm.resize(m), rep.resize(m), stamp.resize(m), col.resize(m);
      std::fill(cm.begin(), cm.end(), 1.0);
      std::fill(cn.begin(), cn.end(), inf);
      std::fill(rowof.begin(), rowof.end(), none);
      for (std::size_t i = 0; i < m; ++i) col[i] = i, cm[i] = mass[i], cn[i] = norm[i], rowof[i] = i;
      ncol = m;
      active.assign(m, 1);
      pending.assign(m, 0);
      first_active = 0;
    } else if (pend.size() >= B) {
      flush();
    }
    if (chain.empty()) {
      while (!active[first_active]) ++first_active;
      chain.push_back(first_active);
    }
    const std::size_t a = chain.back();
    const std::size_t prev = chain.size() >= 2 ? chain[chain.size() - 2] : none;
    // nearest neighbour of a; ties go to the previous chain element (keeps the chain finite),
    // then to the smallest column slot
    double bd = inf;
    std::size_t best = nearest(a, bd);
    if (prev != none && !(cost(a, prev, nullptr) > bd)) best = prev;
    if (best != prev) {
      chain.push_back(best);
      continue;
    }
    // a and prev are reciprocal nearest neighbours: merge them into the smaller row slot
    chain.pop_back();
    chain.pop_back();
    const std::size_t x = std::min(a, prev), y = std::max(a, prev);
    int s = 1;
    const double h = cost(x, y, &s);
    out.push_back({rep[x], rep[y], s, h});
    const double mx = mass[x], my = mass[y], M = mx + my;
    const double gxy = value(x, y);
    // c_new = (m_x c_x + s m_y c_y) / M, so c_new . c_c is the same combination of the rows x, y;
    // the pending blocks' entries first (some live in their own rows), then every column at once
    vx.clear(), vy.clear();
    for (std::size_t p : pend) vx.push_back(value(x, p)), vy.push_back(value(y, p));
    T* Gx = G + x * S;
    const T* Gy = G + y * S;
    const double ax = mx / M, ay = s * my / M;
    for (std::size_t j = 0; j < ncol; ++j) Gx[j] = static_cast<T>(ax * Gx[j] + ay * Gy[j]);
    for (std::size_t i = 0; i < pend.size(); ++i) Gx[col[pend[i]]] = static_cast<T>(ax * vx[i] + ay * vy[i]);
    const double nx = (mx * mx * norm[x] + my * my * norm[y] + 2.0 * s * mx * my * gxy) / (M * M);
    cn[col[x]] = inf, cn[col[y]] = inf, rowof[col[x]] = none, rowof[col[y]] = none;
    const std::size_t nc = ncol++;
    col[x] = nc, cm[nc] = M, cn[nc] = nx, rowof[nc] = x;
    Gx[nc] = static_cast<T>(nx);
    mass[x] = M, norm[x] = nx;
    active[y] = 0;
    stamp[x] = ++now;
    for (std::size_t i = 0; i < pend.size();)
      if (pend[i] == x || pend[i] == y) pend.erase(pend.begin() + static_cast<std::ptrdiff_t>(i));
      else ++i;
    pending[y] = 0;
    pending[x] = 1;
    pend.push_back(x);
    --left;
  }
  finish(out);
  return out;
}

template std::vector<Merge> ward_chain<float>(float*, std::int64_t, std::int64_t, std::vector<double>,
                                             const std::vector<std::int64_t>&, bool, int);
template std::vector<Merge> ward_chain<double>(double*, std::int64_t, std::int64_t, std::vector<double>,
                                               const std::vector<std::int64_t>&, bool, int);

std::vector<Merge> agglomerate(const Eigen::Ref<const RowMat>& X, const std::vector<double>& w,
                               const std::vector<std::int64_t>& labels0, const std::vector<int>& signs0,
                               Linkage linkage, bool symmetric, int threads) {
  Blocks B = block_centroids(X, w, labels0, signs0);
  const std::int64_t k = static_cast<std::int64_t>(B.rep.size());
  if (k <= 1) return {};
  if (linkage == Linkage::Ward) {
    // Eigen's GEMM here; the Python binding passes numpy's (BLAS) Gram to ward_chain instead
    const bool par_gemm = parallel_worth(static_cast<double>(k) * static_cast<double>(k) * static_cast<double>(X.cols()), 1 << 24);
#ifdef AFDE_HAVE_OPENMP
    Eigen::setNbThreads(par_gemm ? (threads > 0 ? threads : omp_get_max_threads()) : 1);
#else
    (void)par_gemm;
#endif
    const std::int64_t S = ward_stride(k);
    RowMat G(k, S);
    G.leftCols(k).noalias() = B.C * B.C.transpose();
#ifdef AFDE_HAVE_OPENMP
    Eigen::setNbThreads(0);
#endif
    B.C.resize(0, 0);
    return ward_chain(G.data(), k, S, std::move(B.mass), B.rep, symmetric, threads);
  }
  return complete_linkage(X, labels0, signs0, B.rep, symmetric, threads);
}

std::vector<Merge> complete_linkage(const Eigen::Ref<const RowMat>& X, const std::vector<std::int64_t>& labels0,
                                    const std::vector<int>& signs0, const std::vector<std::int64_t>& rep,
                                    bool symmetric, int threads) {
  const Eigen::Index n = X.rows();
  std::vector<Merge> out;
  const std::int64_t k = static_cast<std::int64_t>(rep.size());
  if (k <= 1) return out;
  const auto uk = static_cast<std::size_t>(k);
  const Eigen::Index d = X.cols();
  // Dp[a][b] = diameter with s = +1, Dm = with s = -1 (k x k, row-major), from element distances
  // (one Gram product of the oriented rows, ||x -+ y||^2 = ||x||^2 + ||y||^2 -+ 2 x.y, clamped at 0)
  // and the maximum over block pairs
  std::vector<double> Dp(uk * uk, 0.0), Dm(symmetric ? uk * uk : 0, 0.0);
  const bool par_gemm = parallel_worth(static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d), 1 << 24);
#ifdef AFDE_HAVE_OPENMP
  Eigen::setNbThreads(par_gemm ? (threads > 0 ? threads : omp_get_max_threads()) : 1);
#else
  (void)par_gemm, (void)threads;  // the serial engine has no threads to size
#endif
  {
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
    const double h = cost(x, y, &s);
    out.push_back({rep[x], rep[y], s, h});
    for (std::size_t c = 0; c < uk; ++c) {
      if (!active[c] || c == x || c == y) continue;
      for (int t : {1, -1}) {
        if (t == -1 && !symmetric) break;
        std::vector<double>& Dt = t == 1 ? Dp : Dm;
        std::vector<double>& Dts = t * s == 1 ? Dp : Dm;
        double dxc = Dt[x * uk + c], dyc = Dts[y * uk + c];
        Dt[x * uk + c] = std::max(dxc, dyc);  // written after both reads of this t
      }
      for (int t : {1, -1}) {
        if (t == -1 && !symmetric) break;
        std::vector<double>& Dt = t == 1 ? Dp : Dm;
        Dt[c * uk + x] = Dt[x * uk + c];
      }
    }
    active[y] = 0;
    --left;
  }
  finish(out);
  return out;
}

}  // namespace afde
