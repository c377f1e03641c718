// eps-FDE / eps-BDE partition refinement of the cascade ODE of a feed-forward network.
#pragma once
#include <cstdint>
#include <vector>

#include "polyode.hpp"

namespace afde {

enum class Mode : int { Forward = 0, Backward = 1 };

// Per variable layer (inputs, then each hidden layer), the calibration RMS of every neuron.
using Norms = std::vector<std::vector<double>>;

// Coarsest eps-FDE (Forward) or eps-BDE (Backward) partition refining the layer prepartition
// (inputs and outputs alone, one block per hidden layer). eps[h] is the tolerance of hidden
// layer h; with `relative`, eps[h] is a fraction of the layer's mean distance from the zero
// neuron (mean_norm of its features at the time it is split). Returns one canonical label array
// per hidden layer, and writes the absolute eps used per layer to `eps_used`.
// With `rms` (data-aware, method.md §5) incoming coefficients are weighted by the calibration RMS
// of their source neuron, as Wanda weights |W_ij| by ||X_j||: backward compares weighted rows,
// forward weights the rows in its s'(h) term.
std::vector<std::vector<std::int64_t>> lump(const Net& net, Mode mode, const std::vector<double>& eps,
                                            bool relative, int threads, std::vector<double>* eps_used,
                                            const Norms* rms = nullptr);

}  // namespace afde
