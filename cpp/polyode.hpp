// The layered network the engine works on, and its cascade polynomial ODE encoding.
// Plain arrays only: no Python, no torch.
#pragma once
#include <Eigen/Dense>
#include <cstdint>
#include <vector>

namespace afde {

// Element-wise activations. Polynomial ones have s' polynomial in s (method.md §2);
// the homogeneous ones (ReLU family) are lumped by proportional rows (method.md §5).
enum class Act : int { Identity = 0, Tanh = 1, Sigmoid = 2, ReLU = 3, LeakyReLU = 4 };

inline bool is_homogeneous(Act a) { return a == Act::ReLU || a == Act::LeakyReLU; }

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapMat = Eigen::Map<const RowMat>;
using MapVec = Eigen::Map<const Eigen::VectorXd>;

// A feed-forward stack: layer k maps n_k -> n_{k+1} by W[k] (n_{k+1} x n_k), b[k], then act[k].
// Layers 0..L-1 produce hidden neurons; the last layer produces the outputs.
struct Net {
  std::vector<MapMat> W;
  std::vector<MapVec> b;
  std::vector<Act> act;

  std::size_t num_layers() const { return W.size(); }
  std::size_t num_hidden() const { return W.empty() ? 0 : W.size() - 1; }
  // width of variable layer v (0 = inputs, num_layers() = outputs)
  Eigen::Index width(std::size_t v) const {
    return v == 0 ? W[0].cols() : W[v - 1].rows();
  }
};

// Polynomial ODE as a list of terms: term t adds coef[t] * prod(mono[t][0..2]) to d(var[t])/dt.
// Monomials hold up to three variable indices, sorted ascending, padded with -1.
struct Terms {
  std::vector<std::int64_t> var;
  std::vector<double> coef;
  std::vector<std::int64_t> mono;  // 3 per term
};

// Cascade encoding (method.md §2): dh_i/dt = s'(h_i) (sum_j W_ij h_j + b_i), inputs constant.
// Variables: inputs first, then each layer in order. ReLU-family layers are encoded by their
// active-region drift (s' = 1); they are not polynomial and are flagged on the Python side.
Terms encode_cascade(const Net& net);

}  // namespace afde
