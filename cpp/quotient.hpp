// The exact blocks and the quotient of one layer, read in place in the model's dtype (float or
// double) and written once into buffers of that dtype: a float32 model is never copied to float64
// (issue 10). Every sum is accumulated in double.
#pragma once
#include <cstdint>
#include <vector>

#include "cluster.hpp"

namespace afde {

// How a layer's weight columns map onto the reduced source neurons (path.py, Source): column q
// adds coef[q] * W_iq to reduced column labels[q] and, where flip[q] (a sigmoid source read as
// 1 - u), W_iq to the bias. labels == nullptr: column q stays column q; coef == nullptr: 1.
struct ColumnMap {
  const std::int64_t* labels = nullptr;
  const double* coef = nullptr;
  const std::uint8_t* flip = nullptr;
  Eigen::Index k = 0;  // reduced columns
  bool identity() const { return labels == nullptr && coef == nullptr && flip == nullptr; }
};

// A layer's weight (n x d, row stride ld) and bias (n), in the model's dtype.
template <class T>
struct LayerView {
  const T* W = nullptr;
  Eigen::Index n = 0, d = 0, ld = 0;
  const double* b = nullptr;
};

// The layer's rows merged over the columns (R_iB = sum_{q in B} coef_q W_iq), bias with the
// flipped columns added: out (n x map.k, row-major) and out_bias (n).
template <class T>
void merge_columns(const LayerView<T>& L, const ColumnMap& map, T* out, double* out_bias, int threads);

struct ExactBlocks {
  std::vector<std::int64_t> labels;  // canonical
  std::vector<std::int64_t> signs;   // orientation of each row (+1 / -1)
  std::vector<double> scales;        // row norm for homogeneous activations, else 1
  std::int64_t bad_row = -1;         // first row holding a NaN or inf (then nothing else is set)
};

// path.exact_blocks on the aligned rows a_i = (W_i, b_i) / c_i in place: the first pass computes
// each row's L1 norm (and L2 norm c_i when `homogeneous`), which is also the finiteness check; the
// orientation flips a row whose first entry above 1e3 * rel * scale is negative (`signed_`); then
// cluster_rows at L1 threshold rel * scale, scale the largest aligned L1 norm.
template <class T>
ExactBlocks exact_blocks(const LayerView<T>& L, bool homogeneous, bool signed_, double rel, int threads);

struct QuotientLayer {
  std::vector<double> scales;  // c_i
  std::vector<double> masses;  // m_i used
  double max_diff = 0.0;       // largest |a_i - M_B| entry over merged blocks
  double max_abs = 0.0;        // largest |a_i| entry
};

// reduce.quotient for one layer: block B of `labels` (0..k-1, none empty) becomes the row
//   M_B = sum_{i in B} u_i a_i,   a_i = s_i (R_i, b'_i) / c_i,   u_i = m_i / sum_B m  (plain mean
// when sum_B m = 0), R_i, b'_i the row merged over the columns by `map`, c_i the row norm of
// (R_i, b'_i) for homogeneous activations (else 1), m_i = masses[i] (default c_i). Writes M
// (k x map.k) into `out` and its bias into `out_bias` (type T), once; returns c, m and the spread.
template <class T>
QuotientLayer quotient_layer(const LayerView<T>& L, const ColumnMap& map, const std::int64_t* labels,
                             Eigen::Index k, const std::int64_t* signs, bool homogeneous, const double* masses,
                             T* out, T* out_bias, int threads);

}  // namespace afde
