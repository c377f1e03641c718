// The one file that knows Python: numpy arrays in, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "cluster.hpp"
#include "lumping.hpp"
#include "polyode.hpp"

#ifdef AFDE_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using Arr = py::array_t<double, py::array::c_style | py::array::forcecast>;

namespace {

using afde::Act;

// Views the caller's arrays without copying; `keep` holds the (possibly converted) arrays alive.
afde::Net make_net(const std::vector<Arr>& Ws, const std::vector<Arr>& bs, const std::vector<int>& acts,
                   std::vector<Arr>& keep) {
  if (Ws.size() != bs.size() || Ws.size() != acts.size())
    throw std::invalid_argument("weights, biases and activations must have the same length");
  if (Ws.empty()) throw std::invalid_argument("the network has no layers");
  afde::Net net;
  for (std::size_t k = 0; k < Ws.size(); ++k) {
    const Arr& W = Ws[k];
    const Arr& b = bs[k];
    if (W.ndim() != 2) throw std::invalid_argument("weight " + std::to_string(k) + " is not 2-D");
    if (b.ndim() != 1 || b.shape(0) != W.shape(0))
      throw std::invalid_argument("bias " + std::to_string(k) + " does not match its weight rows");
    if (k > 0 && W.shape(1) != Ws[k - 1].shape(0))
      throw std::invalid_argument("weight " + std::to_string(k) + " does not chain with the previous layer");
    if (acts[k] < 0 || acts[k] > 4) throw std::invalid_argument("unknown activation code");
    keep.push_back(W);
    keep.push_back(b);
    net.W.emplace_back(W.data(), W.shape(0), W.shape(1));
    net.b.emplace_back(b.data(), b.shape(0));
    net.act.push_back(static_cast<Act>(acts[k]));
  }
  return net;
}

py::array_t<std::int64_t> to_numpy(std::vector<std::int64_t> v) {
  py::array_t<std::int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "afde-nb engine: cascade polynomial ODE encoding and eps-lumping (C++17, Eigen, OpenMP)";

  m.def(
      "encode_cascade",
      [](const std::vector<Arr>& Ws, const std::vector<Arr>& bs, const std::vector<int>& acts) {
        std::vector<Arr> keep;
        auto net = make_net(Ws, bs, acts, keep);
        afde::Terms t;
        {
          py::gil_scoped_release nogil;
          t = afde::encode_cascade(net);
        }
        const auto T = static_cast<py::ssize_t>(t.var.size());
        py::array_t<std::int64_t> mono({T, static_cast<py::ssize_t>(3)});
        std::copy(t.mono.begin(), t.mono.end(), mono.mutable_data());
        py::array_t<double> coef(T);
        std::copy(t.coef.begin(), t.coef.end(), coef.mutable_data());
        return py::make_tuple(to_numpy(t.var), coef, mono);
      },
      py::arg("weights"), py::arg("biases"), py::arg("activations"),
      "Cascade polynomial ODE terms (var, coef, mono[T,3]) of a layered network.");

  m.def(
      "lump",
      [](const std::vector<Arr>& Ws, const std::vector<Arr>& bs, const std::vector<int>& acts,
         const std::string& mode, const std::vector<double>& eps, bool relative, int threads,
         const std::optional<afde::Norms>& rms) {
        std::vector<Arr> keep;
        auto net = make_net(Ws, bs, acts, keep);
        if (eps.size() != net.num_hidden())
          throw std::invalid_argument("need one eps per hidden layer");
        for (double e : eps)
          if (!(e >= 0.0)) throw std::invalid_argument("eps must be >= 0");
        if (rms) {
          if (rms->size() != net.num_hidden())
            throw std::invalid_argument("need one rms array per source layer (inputs and each hidden layer but the last)");
          for (std::size_t v = 0; v < rms->size(); ++v)
            if (static_cast<Eigen::Index>((*rms)[v].size()) != net.width(v))
              throw std::invalid_argument("rms array " + std::to_string(v) + " does not match its layer width");
        }
        afde::Mode md;
        if (mode == "forward") md = afde::Mode::Forward;
        else if (mode == "backward") md = afde::Mode::Backward;
        else throw std::invalid_argument("mode must be 'forward' or 'backward'");
        std::vector<std::vector<std::int64_t>> labels;
        std::vector<double> used;
        {
          py::gil_scoped_release nogil;
          labels = afde::lump(net, md, eps, relative, threads, &used, rms ? &*rms : nullptr);
        }
        py::list out;
        for (auto& l : labels) out.append(to_numpy(std::move(l)));
        return py::make_tuple(out, used);
      },
      py::arg("weights"), py::arg("biases"), py::arg("activations"), py::arg("mode"), py::arg("eps"),
      py::arg("relative") = false, py::arg("threads") = 0, py::arg("rms") = std::nullopt,
      "Coarsest eps-FDE/eps-BDE partition: (one canonical label array per hidden layer, absolute eps per layer).");

  m.def(
      "cluster_l1",
      [](const Arr& F, double eps, int threads, bool allpairs) {
        if (F.ndim() != 2) throw std::invalid_argument("F must be 2-D");
        if (!(eps >= 0.0)) throw std::invalid_argument("eps must be >= 0");
        afde::MapMat M(F.data(), F.shape(0), F.shape(1));
        std::vector<std::int64_t> lab;
        {
          py::gil_scoped_release nogil;
          lab = allpairs ? afde::cluster_allpairs(M, nullptr, eps) : afde::cluster(M, nullptr, eps, threads);
        }
        return to_numpy(std::move(lab));
      },
      py::arg("F"), py::arg("eps"), py::arg("threads") = 0, py::arg("allpairs") = false,
      "Single-linkage components of the rows of F under L1 at threshold eps (canonical labels).");

  m.def("openmp_threads", []() {
#ifdef AFDE_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
  }, "Threads OpenMP would use by default; 0 when built without OpenMP.");
}
