// The one file that knows Python: numpy arrays in, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "agglomerate.hpp"
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
      "agglomerate",
      [](const Arr& X, const std::vector<double>& w, const std::vector<std::int64_t>& labels0,
         const std::vector<int>& signs0, const std::string& linkage, bool symmetric, int threads) {
        if (X.ndim() != 2) throw std::invalid_argument("X must be 2-D");
        afde::Linkage lk;
        if (linkage == "ward") lk = afde::Linkage::Ward;
        else if (linkage == "complete") lk = afde::Linkage::Complete;
        else throw std::invalid_argument("linkage must be 'ward' or 'complete'");
        afde::MapMat M(X.data(), X.shape(0), X.shape(1));
        std::vector<afde::Merge> mg;
        {
          py::gil_scoped_release nogil;
          mg = afde::agglomerate(M, w, labels0, signs0, lk, symmetric, threads);
        }
        const auto T = static_cast<py::ssize_t>(mg.size());
        py::array_t<std::int64_t> ab({T, static_cast<py::ssize_t>(2)});
        py::array_t<std::int64_t> sg(T);
        py::array_t<double> ht(T);
        for (py::ssize_t t = 0; t < T; ++t) {
          const auto& g = mg[static_cast<std::size_t>(t)];
          ab.mutable_at(t, 0) = g.a;
          ab.mutable_at(t, 1) = g.b;
          sg.mutable_at(t) = g.sign;
          ht.mutable_at(t) = g.height;
        }
        return py::make_tuple(ab, sg, ht);
      },
      py::arg("X"), py::arg("weights"), py::arg("labels0"), py::arg("signs0"), py::arg("linkage") = "ward",
      py::arg("symmetric") = true, py::arg("threads") = 0,
      "Agglomerative merge sequence (pairs[T,2], signs[T], heights[T]) sorted by height; see agglomerate.hpp.");

  m.def(
      "replay",
      [](std::int64_t n, const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& ab,
         const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& sg, std::int64_t m) {
        if (ab.ndim() != 2 || ab.shape(1) != 2 || sg.ndim() != 1 || sg.shape(0) != ab.shape(0))
          throw std::invalid_argument("pairs must be (T, 2) and signs (T,)");
        std::vector<afde::Merge> mg(static_cast<std::size_t>(ab.shape(0)));
        for (py::ssize_t t = 0; t < ab.shape(0); ++t)
          mg[static_cast<std::size_t>(t)] = {ab.at(t, 0), ab.at(t, 1), static_cast<int>(sg.at(t)), 0.0};
        std::vector<std::int64_t> lab;
        std::vector<int> s;
        afde::replay(n, mg, m, lab, s);
        py::array_t<std::int64_t> sa(static_cast<py::ssize_t>(s.size()));
        std::copy(s.begin(), s.end(), sa.mutable_data());
        return py::make_tuple(to_numpy(std::move(lab)), sa);
      },
      py::arg("n"), py::arg("pairs"), py::arg("signs"), py::arg("m"),
      "Canonical labels and orientations (+1/-1) after the first m merges of a sequence over n elements.");

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

  m.def("set_parallel_threshold", &afde::set_parallel_threshold, py::arg("work"),
        "Work (rows x columns) from which the engine's parallel loops run in parallel, replacing each "
        "loop's default (0: always, for tests); negative restores the defaults. Results never depend on it.");
  m.def("parallel_threshold", &afde::parallel_threshold,
        "The threshold set by set_parallel_threshold, or -1 when each loop uses its default.");
  m.def("last_cluster_threads", &afde::last_cluster_threads,
        "Threads that ran the pair scan of the last clustering in this process (1: serially); for tests.");
}
