// The one file that knows Python: numpy arrays in, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "agglomerate.hpp"
#include "cluster.hpp"
#include "lumping.hpp"
#include "polyode.hpp"
#include "quotient.hpp"

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

template <class T>
using CArr = py::array_t<T, py::array::c_style | py::array::forcecast>;
using I64 = CArr<std::int64_t>;

py::array_t<double> to_numpy(const std::vector<double>& v) {
  py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// float32 arrays are read as float (in place when C-contiguous); anything else as double.
bool is_float32(const py::array& a) { return a.dtype().equal(py::dtype::of<float>()); }

template <class T>
CArr<T> as_rows(const py::array& W, const char* what) {
  auto a = CArr<T>::ensure(W);
  if (!a) throw std::invalid_argument(std::string(what) + " must be a numeric array");
  if (a.ndim() != 2) throw std::invalid_argument(std::string(what) + " must be 2-D");
  return a;
}

// A layer's weight and bias (bias length = rows), as the engine reads them.
template <class T>
afde::LayerView<T> layer_view(const CArr<T>& W, const CArr<double>& b) {
  if (b.ndim() != 1 || b.shape(0) != W.shape(0)) throw std::invalid_argument("bias must have one value per weight row");
  afde::LayerView<T> L;
  L.W = W.data();
  L.n = W.shape(0);
  L.d = W.shape(1);
  L.ld = W.shape(1);
  L.b = b.data();
  return L;
}

// Optional column map (labels, coef, flip over the weight's columns), checked against d and k.
struct MapArgs {
  std::optional<I64> labels;
  std::optional<CArr<double>> coef;
  std::optional<CArr<std::uint8_t>> flip;
  afde::ColumnMap map(Eigen::Index d, Eigen::Index k) const {
    afde::ColumnMap m;
    m.k = k;
    if (labels) {
      if (labels->ndim() != 1 || labels->shape(0) != d) throw std::invalid_argument("column labels must have one entry per weight column");
      for (py::ssize_t q = 0; q < d; ++q)
        if (labels->data()[q] < 0 || labels->data()[q] >= k) throw std::invalid_argument("column label out of range");
      m.labels = labels->data();
    } else if (k != d) {
      throw std::invalid_argument("without column labels the reduced columns are the weight's columns");
    }
    if (coef) {
      if (coef->ndim() != 1 || coef->shape(0) != d) throw std::invalid_argument("column coefficients must have one entry per weight column");
      m.coef = coef->data();
    }
    if (flip) {
      if (flip->ndim() != 1 || flip->shape(0) != d) throw std::invalid_argument("column flips must have one entry per weight column");
      m.flip = flip->data();
    }
    return m;
  }
};

template <class T>
py::tuple merge_columns_t(const py::array& Wa, const CArr<double>& b, const MapArgs& args, std::int64_t k, int threads) {
  auto W = as_rows<T>(Wa, "W");
  const auto L = layer_view(W, b);
  const auto map = args.map(L.d, k);
  py::array_t<T> R({static_cast<py::ssize_t>(L.n), static_cast<py::ssize_t>(k)});
  py::array_t<double> bo(static_cast<py::ssize_t>(L.n));
  T* r = R.mutable_data();
  double* bp = bo.mutable_data();
  {
    py::gil_scoped_release nogil;
    afde::merge_columns(L, map, r, bp, threads);
  }
  return py::make_tuple(R, bo);
}

template <class T>
py::tuple exact_rows_t(const py::array& Wa, const CArr<double>& b, bool homogeneous, bool signed_, double rel,
                       int threads) {
  auto W = as_rows<T>(Wa, "W");
  const auto L = layer_view(W, b);
  if (!(rel >= 0.0) || !std::isfinite(rel)) throw std::invalid_argument("rel must be a finite number >= 0");
  afde::ExactBlocks eb;
  {
    py::gil_scoped_release nogil;
    eb = afde::exact_blocks(L, homogeneous, signed_, rel, threads);
  }
  return py::make_tuple(to_numpy(std::move(eb.labels)), to_numpy(std::move(eb.signs)), to_numpy(eb.scales),
                        eb.bad_row);
}

template <class T>
py::tuple quotient_layer_t(const py::array& Wa, const CArr<double>& b, const MapArgs& args, std::int64_t kc,
                           const I64& labels, std::int64_t k, const std::optional<I64>& signs, bool homogeneous,
                           const std::optional<CArr<double>>& masses, int threads) {
  auto W = as_rows<T>(Wa, "W");
  const auto L = layer_view(W, b);
  const auto map = args.map(L.d, kc);
  const Eigen::Index n = L.n;
  if (labels.ndim() != 1 || labels.shape(0) != n) throw std::invalid_argument("labels must have one entry per row");
  if (k < 0 || (n > 0 && k < 1) || k > n) throw std::invalid_argument("k must be the number of blocks");
  {
    std::vector<char> seen(static_cast<std::size_t>(k), 0);
    for (Eigen::Index i = 0; i < n; ++i) {
      const auto l = labels.data()[i];
      if (l < 0 || l >= k) throw std::invalid_argument("label out of range");
      seen[l] = 1;
    }
    for (char c : seen)
      if (!c) throw std::invalid_argument("labels must number blocks 0..k-1 with none empty");
  }
  if (signs && (signs->ndim() != 1 || signs->shape(0) != n)) throw std::invalid_argument("signs must have one entry per row");
  if (masses && (masses->ndim() != 1 || masses->shape(0) != n)) throw std::invalid_argument("masses must have one entry per row");
  py::array_t<T> M({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(kc)});
  py::array_t<T> bo(static_cast<py::ssize_t>(k));
  T* mp = M.mutable_data();
  T* bp = bo.mutable_data();
  afde::QuotientLayer q;
  {
    py::gil_scoped_release nogil;
    q = afde::quotient_layer(L, map, labels.data(), k, signs ? signs->data() : nullptr, homogeneous,
                             masses ? masses->data() : nullptr, mp, bp, threads);
  }
  return py::make_tuple(M, bo, to_numpy(q.scales), to_numpy(q.masses), q.max_diff, q.max_abs);
}

template <class T>
py::array_t<std::int64_t> cluster_l1_t(const py::array& Fa, double eps, int threads, bool allpairs) {
  auto F = as_rows<T>(Fa, "F");
  afde::RowSet<T> rs;
  rs.data = F.data();
  rs.n = F.shape(0);
  rs.d = F.shape(1);
  rs.ld = F.shape(1);
  std::vector<std::int64_t> lab;
  {
    py::gil_scoped_release nogil;
    lab = allpairs ? afde::cluster_rows_allpairs(rs, eps) : afde::cluster_rows(rs, eps, threads);
  }
  return to_numpy(std::move(lab));
}

// Ward's k x S work buffer: the caller's (a merge path reuses one across its layers: fresh
// memory costs page faults, 0.2 s for 168 MB on this project's machine) when it is large enough,
// of the dtype and C-contiguous, else a fresh one.
py::array ward_buffer(const py::object& work, const char* dtype, py::ssize_t k, py::ssize_t S) {
  if (!work.is_none()) {
    py::array wk = work.cast<py::array>();
    if (wk.dtype().is(py::dtype(dtype)) && (wk.flags() & py::array::c_style) && wk.writeable() && wk.size() >= k * S)
      return wk.attr("reshape")(-1)[py::slice(0, k * S, 1)].attr("reshape")(k, S).cast<py::array>();
  }
  return py::module_::import("numpy").attr("empty")(py::make_tuple(k, S), dtype).cast<py::array>();
}

// A merge sequence as (pairs[T, 2], signs[T], heights[T]).
py::tuple merges_to_numpy(const std::vector<afde::Merge>& mg) {
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
}

void check_weights(const std::vector<double>& w) {
  for (double wi : w)
    if (!(wi > 0.0) || !std::isfinite(wi)) throw std::invalid_argument("weights must be finite and > 0");
}

// Ward on the k rows C (the blocks' centroids; float32 or float64 as T): their Gram product by
// numpy's BLAS (the floor of the exact costs, several times faster than Eigen's portable kernels)
// straight into the first k columns of the chain's k x ward_stride(k) buffer, then the chain
// without the GIL. C is dropped before the chain (its memory is not needed there).
template <class T>
std::vector<afde::Merge> ward_on_rows(py::object C, const py::object& work, std::vector<double> mass,
                                      const std::vector<std::int64_t>& rep, bool symmetric, int threads) {
  const auto k = static_cast<py::ssize_t>(rep.size());
  const auto S = static_cast<py::ssize_t>(afde::ward_stride(k));
  py::array_t<T, py::array::c_style> G = ward_buffer(work, std::is_same<T, float>::value ? "float32" : "float64", k, S);
  py::module_::import("numpy").attr("matmul")(C, C.attr("T"),
                                             py::arg("out") = G[py::make_tuple(py::slice(0, k, 1), py::slice(0, k, 1))]);
  C = py::object();
  T* g = G.mutable_data();
  py::gil_scoped_release nogil;
  return afde::ward_chain(g, k, S, std::move(mass), rep, symmetric, threads);
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
      [](const py::array& X_in, const std::vector<double>& w, const std::vector<std::int64_t>& labels0,
         const std::vector<int>& signs0, const std::string& linkage, bool symmetric, int threads, bool gram32,
         const py::object& work) {
        if (X_in.ndim() != 2) throw std::invalid_argument("X must be 2-D");
        // an approximate path's float32 rows from singletons go to the float32 Gram as they are
        // (no float64 copy and back)
        using F32 = py::array_t<float, py::array::c_style>;
        const bool f32_rows = gram32 && X_in.dtype().is(py::dtype::of<float>()) && (X_in.flags() & py::array::c_style) &&
                              linkage == "ward";
        bool singletons = labels0.size() == static_cast<std::size_t>(X_in.shape(0)) && w.size() == labels0.size() &&
                          signs0.size() == labels0.size();
        for (std::size_t i = 0; singletons && i < labels0.size(); ++i)
          singletons = labels0[i] == static_cast<std::int64_t>(i) && signs0[i] == 1;
        if (f32_rows && singletons && X_in.shape(0) > 1) {
          F32 X32 = X_in.cast<F32>();
          check_weights(w);
          const float* p = X32.data();
          for (py::ssize_t i = 0; i < X32.size(); ++i)
            if (!std::isfinite(p[i])) throw std::invalid_argument("features must be finite");
          std::vector<std::int64_t> rep(labels0.size());
          std::iota(rep.begin(), rep.end(), std::int64_t{0});
          return merges_to_numpy(ward_on_rows<float>(std::move(X32), work, w, rep, symmetric, threads));
        }
        const Arr X = X_in.cast<Arr>();
        afde::Linkage lk;
        if (linkage == "ward") lk = afde::Linkage::Ward;
        else if (linkage == "complete") lk = afde::Linkage::Complete;
        else throw std::invalid_argument("linkage must be 'ward' or 'complete'");
        afde::MapMat M(X.data(), X.shape(0), X.shape(1));
        std::vector<afde::Merge> mg;
        if (lk == afde::Linkage::Ward) {
          // every row its own block, oriented +1 (a merge path's usual start): the centroids are the
          // rows themselves, so the Gram product reads X without a copy
          afde::Blocks B = singletons ? afde::Blocks{} : afde::block_centroids(M, w, labels0, signs0);
          if (singletons) {
            check_weights(w);
            if (!M.allFinite()) throw std::invalid_argument("features must be finite");
            B.mass = w;
            B.rep.resize(labels0.size());
            std::iota(B.rep.begin(), B.rep.end(), std::int64_t{0});
          }
          if (B.rep.size() > 1) {
            py::object C = X;
            if (!singletons) {
              Arr Cb({static_cast<py::ssize_t>(B.rep.size()), static_cast<py::ssize_t>(B.C.cols())});
              std::copy(B.C.data(), B.C.data() + B.C.size(), Cb.mutable_data());
              B.C.resize(0, 0);
              C = std::move(Cb);
            }
            // approximate paths: the product in float32 and the chain on it (half the memory
            // traffic; costs in double from the float entries)
            if (gram32) {
              py::object C32 = C.attr("astype")("float32");
              C = py::object();
              mg = ward_on_rows<float>(std::move(C32), work, std::move(B.mass), B.rep, symmetric, threads);
            } else {
              mg = ward_on_rows<double>(std::move(C), work, std::move(B.mass), B.rep, symmetric, threads);
            }
          }
        } else {
          py::gil_scoped_release nogil;
          mg = afde::agglomerate(M, w, labels0, signs0, lk, symmetric, threads);
        }
        return merges_to_numpy(mg);
      },
      py::arg("X"), py::arg("weights"), py::arg("labels0"), py::arg("signs0"), py::arg("linkage") = "ward",
      py::arg("symmetric") = true, py::arg("threads") = 0, py::arg("gram32") = false, py::arg("work") = py::none(),
      "Agglomerative merge sequence (pairs[T,2], signs[T], heights[T]) sorted by height; see agglomerate.hpp. "
      "gram32: Ward's centroid Gram product in float32 (approximate paths). work: a C-contiguous writable "
      "float64 (float32 with gram32) array of at least k * ward_stride(k) entries that Ward may use as its "
      "buffer (overwritten), else it allocates one; see ward_stride().");
  m.def("ward_stride", &afde::ward_stride, py::arg("k"),
        "Row stride of Ward's k x stride work buffer for k blocks (agglomerate(work=...)).");

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
      [](const py::array& F, double eps, int threads, bool allpairs) {
        if (F.ndim() != 2) throw std::invalid_argument("F must be 2-D");
        if (!(eps >= 0.0)) throw std::invalid_argument("eps must be >= 0");
        return is_float32(F) ? cluster_l1_t<float>(F, eps, threads, allpairs)
                             : cluster_l1_t<double>(F, eps, threads, allpairs);
      },
      py::arg("F"), py::arg("eps"), py::arg("threads") = 0, py::arg("allpairs") = false,
      "Single-linkage components of the rows of F under L1 at threshold eps (canonical labels); "
      "float32 rows are read in place, sums in double.");

  m.def(
      "merge_columns",
      [](const py::array& W, const CArr<double>& b, const std::optional<I64>& labels,
         const std::optional<CArr<double>>& coef, const std::optional<CArr<std::uint8_t>>& flip, std::int64_t k,
         int threads) {
        const MapArgs args{labels, coef, flip};
        return is_float32(W) ? merge_columns_t<float>(W, b, args, k, threads)
                             : merge_columns_t<double>(W, b, args, k, threads);
      },
      py::arg("W"), py::arg("b"), py::arg("labels"), py::arg("coef"), py::arg("flip"), py::arg("k"),
      py::arg("threads") = 0,
      "(R, b'): W's columns merged (R[:, B] = sum_{q: labels_q = B} coef_q W[:, q]; flipped columns "
      "added to the bias b'), R in W's dtype (float32 stays float32).");

  m.def(
      "exact_rows",
      [](const py::array& W, const CArr<double>& b, bool homogeneous, bool signed_, double rel, int threads) {
        return is_float32(W) ? exact_rows_t<float>(W, b, homogeneous, signed_, rel, threads)
                             : exact_rows_t<double>(W, b, homogeneous, signed_, rel, threads);
      },
      py::arg("W"), py::arg("b"), py::arg("homogeneous"), py::arg("signed"), py::arg("rel"), py::arg("threads") = 0,
      "Exact blocks of the aligned rows (W_i, b_i) / c_i read in place: (labels, signs, scales c, bad_row); "
      "bad_row >= 0 names the first row holding NaN or inf (the rest is then empty).");

  m.def(
      "quotient_layer",
      [](const py::array& W, const CArr<double>& b, const std::optional<I64>& col_labels,
         const std::optional<CArr<double>>& col_coef, const std::optional<CArr<std::uint8_t>>& col_flip,
         std::int64_t kc, const I64& labels, std::int64_t k, const std::optional<I64>& signs, bool homogeneous,
         const std::optional<CArr<double>>& masses, int threads) {
        const MapArgs args{col_labels, col_coef, col_flip};
        return is_float32(W) ? quotient_layer_t<float>(W, b, args, kc, labels, k, signs, homogeneous, masses, threads)
                             : quotient_layer_t<double>(W, b, args, kc, labels, k, signs, homogeneous, masses, threads);
      },
      py::arg("W"), py::arg("b"), py::arg("col_labels"), py::arg("col_coef"), py::arg("col_flip"), py::arg("kc"),
      py::arg("labels"), py::arg("k"), py::arg("signs"), py::arg("homogeneous"), py::arg("masses"),
      py::arg("threads") = 0,
      "One layer of the quotient, written once into fresh arrays of W's dtype: (M, bias, scales c, masses m, "
      "max |a_i - M_B| over merged blocks, max |a_i|); see quotient.hpp.");

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
