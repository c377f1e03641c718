// Agglomerative merge sequences (Ward, complete linkage), optionally up to a sign symmetry:
// the bounded-block partitions of method.md §8.2. One pass yields every cut, so every budget.
#pragma once
#include <cstdint>
#include <vector>

#include "polyode.hpp"

namespace afde {

enum class Linkage : int { Ward = 0, Complete = 1 };

// One merge: the blocks holding elements a and b join, with b's orientation `sign` relative to
// a's (sign = -1 means block(b) is negated before it joins). `height` is the merge cost.
struct Merge {
  std::int64_t a, b;
  int sign;
  double height;
};

// Agglomerate the rows of X (n x d) with masses w (> 0), starting from the blocks `labels0`
// (canonical, 0..k0-1) whose members carry orientations `signs0` (+1 / -1).
//   Ward:     cost(A, B) = W_A W_B / (W_A + W_B) * min_s ||c_A - s c_B||^2, c = mass-weighted centroid
//             of the oriented rows; the total within-block scatter grows by exactly this cost.
//   Complete: cost(A, B) = min_s max_{i in A, j in B} ||s_i x_i - s s_j x_j||_2 (block diameter).
// With `symmetric` false only s = +1 is allowed. Nearest-neighbour chain (both linkages are
// reducible, also with the sign minimum), O(k^2) memory (Ward: one k x k matrix) and O(n^2 d + k^2)
// time. Returns the k0 - 1 merges between block representatives (smallest member), sorted by
// height (stable) and made monotone (running maximum against rounding).
std::vector<Merge> agglomerate(const Eigen::Ref<const RowMat>& X, const std::vector<double>& w,
                               const std::vector<std::int64_t>& labels0, const std::vector<int>& signs0,
                               Linkage linkage, bool symmetric, int threads);

// The initial blocks of agglomerate(): validated inputs, each block's representative (first
// member), mass and mass-weighted centroid of the oriented rows (k x d).
struct Blocks {
  std::vector<std::int64_t> rep;
  std::vector<double> mass;
  RowMat C;
};
Blocks block_centroids(const Eigen::Ref<const RowMat>& X, const std::vector<double>& w,
                       const std::vector<std::int64_t>& labels0, const std::vector<int>& signs0);

// Ward's nearest-neighbour chain on the centroids' Gram matrix G (k x k in the first k columns of
// a k x stride row-major buffer, stride >= ward_stride(k) for speed; all of it overwritten): one
// matrix for both signs (cost f (n_a + n_b -+ 2 g_ab), f = W_a W_b / (W_a + W_b)); a merged block's
// inner products are one linear combination of two rows, written into the other rows B merges at
// a time into the scratch columns [k, stride) (agglomerate.cpp). The Gram product itself is the
// caller's (the Python binding uses numpy's BLAS, several times faster than Eigen's portable
// kernels), so this is O(k^2) after it. Same merges as the Lance-Williams form, to rounding.
// T = float (approximate paths: a float32 Gram, half the memory traffic; updates rounded to float,
// costs in double) or double.
template <class T>
std::vector<Merge> ward_chain(T* G, std::int64_t k, std::int64_t stride, std::vector<double> mass,
                              const std::vector<std::int64_t>& rep, bool symmetric, int threads);
// The row stride ward_chain works best with for k blocks (k plus room for k / 8 merged columns).
std::int64_t ward_stride(std::int64_t k);

// Complete linkage from element distances (agglomerate() with Linkage::Complete).
std::vector<Merge> complete_linkage(const Eigen::Ref<const RowMat>& X, const std::vector<std::int64_t>& labels0,
                                    const std::vector<int>& signs0, const std::vector<std::int64_t>& rep,
                                    bool symmetric, int threads);

// Canonical labels and orientations after the first m merges of a sequence over n elements.
void replay(std::int64_t n, const std::vector<Merge>& merges, std::int64_t m,
            std::vector<std::int64_t>& labels, std::vector<int>& signs);

}  // namespace afde
