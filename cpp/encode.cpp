#include "polyode.hpp"

#include <algorithm>
#include <array>

namespace afde {
namespace {

struct Factor {  // one term of s'(h): coef * h^power
  double coef;
  int power;
};

std::vector<Factor> derivative_terms(Act a) {
  switch (a) {
    case Act::Tanh: return {{1.0, 0}, {-1.0, 2}};     // 1 - h^2
    case Act::Sigmoid: return {{1.0, 1}, {-1.0, 2}};  // h - h^2
    default: return {{1.0, 0}};                        // identity; ReLU family on its active region
  }
}

void push(Terms& t, std::int64_t var, double coef, std::array<std::int64_t, 3> m) {
  std::sort(m.begin(), m.end(), [](std::int64_t a, std::int64_t b) {
    if (a < 0) return false;  // -1 padding goes last
    if (b < 0) return true;
    return a < b;
  });
  t.var.push_back(var);
  t.coef.push_back(coef);
  t.mono.insert(t.mono.end(), m.begin(), m.end());
}

}  // namespace

Terms encode_cascade(const Net& net) {
  Terms t;
  std::int64_t in_off = 0;
  for (std::size_t k = 0; k < net.num_layers(); ++k) {
    const auto& W = net.W[k];
    const auto& b = net.b[k];
    const std::int64_t out_off = in_off + W.cols();
    for (Eigen::Index i = 0; i < W.rows(); ++i) {
      const std::int64_t v = out_off + i;
      for (const Factor& f : derivative_terms(net.act[k])) {
        std::array<std::int64_t, 3> base{-1, -1, -1};
        for (int p = 0; p < f.power; ++p) base[p] = v;
        for (Eigen::Index j = 0; j < W.cols(); ++j) {
          if (W(i, j) == 0.0) continue;
          auto m = base;
          m[f.power] = in_off + j;
          push(t, v, f.coef * W(i, j), m);
        }
        if (b(i) != 0.0) push(t, v, f.coef * b(i), base);
      }
    }
    in_off = out_off;
  }
  return t;
}

}  // namespace afde
