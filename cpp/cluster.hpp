// Single-linkage components under an L1 threshold: the block split at the heart of eps-lumping.
#pragma once
#include <cstdint>
#include <vector>

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
