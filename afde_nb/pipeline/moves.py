"""Answering one eps of a built merge path fast: what a slider move needs (issue 10).

``compress(model, eps, path=path)`` rebuilds the figures from scratch; :class:`SliderCache` keeps,
per setting of a plain stack, the network, its merge path, the original model's outputs on the
calibration rows and its pre-activations on the repair's probes, and the calibration and test
rows as one torch batch, so a move costs the cut, :func:`~afde_nb.core.reduce.quotient`, the refit of
:mod:`afde_nb.core.repair` (in torch, :func:`~afde_nb.core.repair.refit`) when a merge was lossy, and the
forwards of the reduced layers on the cached rows; where the first refit layer's inputs are mostly
the original's neurons, its Gram is updated from the original's instead of recomputed, and a
partition shown before shows its kept figures. The torch model is built on first use
(:class:`LazyCompression`). Used by the panel (:mod:`afde_nb.ui.widgets.state`); tested against
``compress`` (tests/test_widgets.py, tests/test_moves.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from ..models.stack import to_torch
from .result import Compression, layer_summaries
from ..core.network import Network
from ..core.path import probe_inputs
from ..core.reduce import quotient
from ..core.repair import LOSSY, RIDGE, apply_fit, deviation, fit_weights, refit, targets


#: activations of a plain stack, as torch functions on the reduced layers' pre-activations
_TORCH_ACT = {"identity": lambda z, l: z, "tanh": lambda z, l: torch.tanh(z), "sigmoid": lambda z, l: torch.sigmoid(z),
              "relu": lambda z, l: torch.relu(z),
              "leaky_relu": lambda z, l: torch.nn.functional.leaky_relu(z, l.negative_slope)}


def _estimate(cap, path, part, calib, how) -> tuple[float | None, list]:
    """``Compression.estimated_error`` of a slider move, as ``compress`` gives it, and the anchors
    it was corrected by: the path's first-order estimate times the correction measured along the
    path on the calibration inputs (:func:`~afde_nb.pipeline.compress.anchors`: measured once per
    path and repair setting, cached on the path, so later moves cost nothing); None for the
    paper's components."""
    from .compress import anchors
    from .estimate import estimate, merges_of

    if path.method == "components":
        return None, []
    marks = anchors(cap, path, calib, how) if calib is not None else []
    return estimate(path, merges_of(path, part.labels), marks), marks


def _versions(model) -> tuple:
    """What changes when a parameter of ``model`` is replaced or written in place."""
    params = getattr(model, "parameters", None)
    return tuple((id(p), p._version) for p in params()) if callable(params) else ()


def _same_weights(a: Network, b: Network) -> bool:
    return a.widths == b.widths and all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
                                        for x, y in zip(a.layers, b.layers))


class LazyCompression(Compression):
    """A :class:`~afde_nb.Compression` whose reduced network and torch model are built on first use
    (``.model``, ``.networks``, ``save``): a slider move shows figures computed without them."""

    def __init__(self, build: Callable[[], tuple], **fields):
        self.__dict__["_build"] = build
        super().__init__(model=None, networks=None, **fields)

    def _built(self, name: str):
        if self.__dict__.get("_build") is not None:
            net, model = self.__dict__["_build"]()
            self.__dict__.update(_build=None, _networks=(net,), _model=model)
        return self.__dict__.get(name)

    @property
    def model(self):
        return self._built("_model")

    @model.setter
    def model(self, value):
        self.__dict__["_model"] = value

    @property
    def networks(self):
        return self._built("_networks")

    @networks.setter
    def networks(self, value):
        self.__dict__["_networks"] = value


#: activations with phi(-z) = -phi(z): a neuron flipped into its own block reads as the original negated
_ODD = ("tanh", "identity")
#: how many answered partitions a :class:`SliderCache` keeps the figures of (a slider goes back and forth)
MEMO = 64
#: the low-rank Gram update of :meth:`SliderCache._first_refit` (False: every refit from its full inputs)
LOW_RANK = True


def _t(a, dtype) -> torch.Tensor:
    a = np.asarray(a)
    if not a.flags.writeable:  # a read-only view of the model's weights, which a tensor sharing it
        return torch.tensor(a, dtype=dtype)  # could write into (torch.from_numpy warns): a copy
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _act(z: torch.Tensor, layer) -> torch.Tensor:
    return _TORCH_ACT[layer.activation](z, layer)


def _memo_key(part, how) -> tuple:
    """What a move's figures depend on besides the cache: the repair, the blocks, signs and masses."""
    arrays = [*part.labels, *(part.signs or ()), *(part.weights or ())]
    return (how, len(part.labels), part.signs is None, part.weights is None) + tuple(
        b"" if a is None else np.asarray(a).tobytes() for a in arrays)


def matched(net: Network, small: Network, blocks: list, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(i, j, s): the neurons i of hidden layer h whose reduced neuron j is the original's column
    (s = +1) or its negation (s = -1, odd activations) on every input: a block of one whose
    incoming row is the original's, unscaled, on the original's inputs (layers before h
    unchanged). None where those inputs differ."""
    if any(not (np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias))
           for a, b in zip(net.layers[:h], small.layers[:h])):
        return None
    blk, orig, red = blocks[h], net.layers[h], small.layers[h]
    i = np.flatnonzero(np.bincount(blk.labels)[blk.labels] == 1)
    j, s = blk.labels[i], blk.signs[i]
    ok = (blk.scales[i] == 1) & ((s == 1) | (orig.activation in _ODD))
    ok &= np.all(np.asarray(red.weight)[j] == s[:, None] * np.asarray(orig.weight)[i], axis=1)
    ok &= np.asarray(red.bias)[j] == s * np.asarray(orig.bias)[i]
    return i[ok], j[ok], s[ok]


class _Base:
    """The original's hidden layer h on a repair's rows, kept per repair and layer: the Gram and
    cross-Gram that a refit of layer h + 1 updates when most of its inputs are the original's
    columns (:meth:`SliderCache._first_refit`). Float64 (the other rows' activations are the model
    dtype's, as the reduced model's there); activations are held one neuron a row (``*T``), so
    taking out the unmatched neurons is a copy of rows."""

    def __init__(self, cache: "SliderCache", how: str, h: int):
        net, lay = cache.net, cache.net.layers[h]
        ins = cache.probes(how)[2]
        self.ins = torch.from_numpy(ins[h])
        A = torch.from_numpy(ins[h + 1])
        self.mean = A.mean(dim=0)
        self.AcT = (A - self.mean).T.contiguous()
        self.sq = (self.AcT * self.AcT).sum(dim=1)
        self.K = self.AcT.T @ self.AcT
        rows = cache.other_rows(how)
        self.o_ins = self.OcT = self.C = None
        if rows is not None:
            wt = [(_t(l.weight, cache.dtype), _t(l.bias, cache.dtype)) for l in net.layers[:h + 1]]
            for k in range(h):
                rows = _act(torch.nn.functional.linear(rows, *wt[k]), net.layers[k])
            self.o_ins = rows
            self.OcT = (_act(torch.nn.functional.linear(rows, *wt[h]), lay).double() - self.mean).T.contiguous()
            self.C = self.OcT.T @ self.AcT
        self.c_ins = self.c_AT = self.c_ZT = None
        if cache.calib is not None:
            cins = ins if how == "calibration" else net.layer_inputs(cache.calib)
            self.c_ins = torch.from_numpy(cins[h])
            self.c_AT = torch.from_numpy(cins[h + 1]).T.contiguous()
            self.WT = torch.from_numpy(np.asarray(net.layers[h + 1].weight, dtype=np.float64)).T.contiguous()
            self.c_ZT = self.WT.T @ self.c_AT  # the original's next pre-activations, bias aside, one a row


class SliderCache:
    """What every slider move at one setting of a plain stack reuses: the network, its merge path,
    the original model's outputs on the calibration rows and its pre-activations on the repair's
    probes, and the calibration and test rows as one torch batch (the model's dtype, on the CPU).

    :meth:`move` answers one eps as ``compress(model, eps, path=path, ...)`` does (the path's cut,
    :func:`~afde_nb.core.reduce.quotient`, the repair of :mod:`afde_nb.core.repair` when a merge was lossy),
    with the figures' forwards on the cached rows instead of the torch model's: the test rows and the
    calibration deviations run in the model's dtype (float32 for a float32 model: the deviations then
    carry its rounding, ~1e-7, where ``compress`` reports float64), the refit layers in float64
    (the repair's own arithmetic). The reduced torch model is built only when asked for
    (:class:`LazyCompression`).

    Two things make a move with repair cheaper than the repair's own arithmetic, with the same
    figures to rounding: the first refit layer's Gram is the original's (kept, :class:`_Base`)
    with the columns of the merged neurons taken out and those of their merged neurons put in
    (:meth:`_first_refit`; there the deviation before repair takes that layer's unrepaired
    pre-activations from the original's, in float64, and the layers after it in the model's
    dtype), and a partition answered before (the last :data:`MEMO`) is not answered again: its
    figures are kept, its reduced model is rebuilt when asked for. A move to a partition not seen
    before still costs the refit's products: on 512 calibration rows and a width-1024 layer, a
    512 x 512 Cholesky solve with ~1,000 right-hand sides, its product with the test rows'
    cross-Gram and the next layer's Gram, ~1.5 GFLOP in float64."""

    def __init__(self, model, net: Network, path, calib: np.ndarray | None, X_eval: np.ndarray | None):
        self.key = (path.method, path.mode, path.relative, path.calibrated)
        self.net, self.path, self.model = net, path, model
        self.versions = _versions(model)
        p = next(iter(model.parameters()), None)
        self.device = p.device if p is not None else None
        self.dtype = getattr(torch, net.dtype)
        self.calib = calib
        self.n_cal = 0 if calib is None else len(calib)
        rows = [r for r in (calib, X_eval) if r is not None]
        # on the CPU, with the quotient and the refit (a model on another device gets its copy on export)
        self.rows = torch.as_tensor(np.concatenate(rows), dtype=self.dtype) if rows else None
        self.orig_cal = net.forward(calib) if calib is not None else None
        self._probes: dict = {}
        self._bases: dict = {}
        self._memo: OrderedDict = OrderedDict()
        self._cap = None  # the model captured (compress's view of it), on the first move

    @staticmethod
    def fits(net: Network) -> bool:
        return all(l.activation in _TORCH_ACT and l.taps == 1 for l in net.layers)

    def fresh(self, model) -> bool:
        """Whether ``model``'s parameters are still the ones this cache was built from."""
        return model is self.model and _versions(model) == self.versions

    def probes(self, how: str | None):
        """(probes, the original's pre-activations on them per layer, its layer inputs on them) of a
        repair ``how``: float64 tensors (the pre-activations column-major: :func:`targets` gathers
        neurons, the solves take them as they are), and numpy arrays for the inputs."""
        if how is None:
            return None, None, None
        if how not in self._probes:
            X = self.calib if how == "calibration" else probe_inputs(self.net, None)
            ins = self.net.layer_inputs(X)
            self._probes[how] = (torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64)),
                                 [torch.from_numpy(np.asfortranarray(h @ l.weight.T + l.bias))
                                  for h, l in zip(ins, self.net.layers)],
                                 ins)
        return self._probes[how]

    def other_rows(self, how: str) -> torch.Tensor | None:
        """The rows a repair ``how`` applies its fits to: the test rows (the calibration rows are its
        probes), or the calibration and test rows (pseudo-probes)."""
        if self.rows is None:
            return None
        return self.rows[self.n_cal:] if how == "calibration" else self.rows

    def move(self, eps: float, how: str | None) -> tuple[LazyCompression, np.ndarray | None]:
        """The compression at ``eps`` (repair ``how``: None, "calibration" or "pseudo") and the
        predictions on the test rows (None without)."""
        from ..models.capture import capture
        from .compress import eps_cut

        net, path = self.net, self.path
        if self._cap is None:
            self._cap = capture(self.model)
        part = eps_cut(self._cap, path, eps, self.calib, how)  # compress's cut at eps (issue 30)
        key = _memo_key(part, how)
        got = self._memo.get(key)
        if got is None:
            got = self._answer(part, how)
            self._memo[key] = got[:-1] + (None,)
            while len(self._memo) > MEMO:
                self._memo.popitem(last=False)
        else:  # the figures kept, the reduced model rebuilt when asked for
            self._memo.move_to_end(key)
            got = got[:-1] + (lambda: self._answer(part, how)[-1](),)
        before, after, pred, params_after, ran, build = got
        estimated, marks = _estimate(self._cap, path, part, self.calib, how)
        before, after = (None if d is None else dict(d) for d in (before, after))
        c = LazyCompression(build, partition=[np.array(l) for l in part.labels], params_before=net.num_params,
                            params_after=params_after, layers=layer_summaries(net, part), mode=part.mode, eps=part.eps,
                            relative=part.relative, calibration_error=after, target=None, method=path.method,
                            symmetry=bool(path.symmetry), repaired=how if ran else None,
                            calibration_error_before_repair=before, path=path,
                            estimated_error=estimated, estimate_anchors=tuple(marks))
        return c, None if pred is None else pred.copy()

    def _answer(self, part, how: str | None) -> tuple:
        """(before, after, pred, params_after, repaired, build) of ``part``: the calibration deviation
        before repair (None: no repair ran) and after, the test rows' predictions, the reduced size,
        whether repair ran, and the function building (reduced network, torch model)."""
        net = self.net
        small, blocks = quotient(net, part)
        probes = self.probes(how)[0]
        lossy = [h for h, b in enumerate(blocks) if b.spread > LOSSY]
        layers, n, fits = small.layers, self.n_cal, []
        before = after = pred = None
        with torch.no_grad():
            if probes is None or not lossy:
                H = self._forward(small, self.rows, range(len(layers)))
                if n:
                    after = deviation(self.orig_cal, H[:n].double().numpy())
                if H is not None and len(H) > n:
                    pred = H[n:].double().numpy()
            else:
                before, after, pred, fits = self._repaired(small, blocks, lossy[0] + 1, how)
        if pred is not None:
            pred = pred.reshape(len(pred), -1)
        device, start = self.device, len(layers) - len(fits)

        def build():
            out = list(layers)
            for k, fit in zip(range(start, len(layers)), fits):
                out[k] = out[k].with_weights(*fit_weights(fit() if callable(fit) else fit))
            fixed = Network(out, dtype=small.dtype, meta=dict(small.meta)) if fits else small
            return fixed, to_torch(fixed, device=device)

        return before, after, pred, small.num_params, bool(fits), build

    def _forward(self, small: Network, H: torch.Tensor | None, ks) -> torch.Tensor | None:
        """``small``'s layers ``ks`` on ``H``, in the model's dtype."""
        for k in ks if H is not None else ():
            l = small.layers[k]
            H = _act(torch.nn.functional.linear(H, _t(l.weight, self.dtype), _t(l.bias, self.dtype)), l)
        return H

    def _repaired(self, small: Network, blocks: list, start: int, how: str) -> tuple:
        """(before, after, pred, fits) of a repair that refits layers ``start..L`` (as
        afde_nb.core.repair.repair: float64 on the probes), the fits applied to the other rows."""
        layers, L, n = small.layers, len(small.layers), self.n_cal
        Zp = self.probes(how)[1]
        Z = targets(Zp[start], blocks[start]) if start < len(blocks) else Zp[start]
        first = self._first_refit(small, blocks, start, Z, how) if LOW_RANK else None
        if first is None:
            first = self._first_refit_direct(small, start, Z, how)
        fit, fitted, other, pre_before = first
        fits, Hp = [fit], _act(fitted, layers[start])
        Ho = None if other is None else _act(other, layers[start])
        for k in range(start + 1, L):
            Z = targets(Zp[k], blocks[k]) if k < len(blocks) else Zp[k]
            fit, fitted = refit(Hp, Z, layers[k].has_bias)
            fits.append(fit)
            Hp = _act(fitted, layers[k])
            Ho = None if Ho is None else _act(apply_fit(fit, Ho), layers[k])
        before = after = pred = None
        if n:
            Hb = _act(pre_before.to(self.dtype), layers[start])
            before = deviation(self.orig_cal, self._forward(small, Hb, range(start + 1, L)).double().numpy())
            after = deviation(self.orig_cal, Hp.numpy() if how == "calibration" else Ho[:n].numpy())
        if Ho is not None:
            test = Ho if how == "calibration" else Ho[n:]
            pred = test.numpy() if len(test) else None
        return before, after, pred, fits

    def _first_refit_direct(self, small: Network, k: int, Z: torch.Tensor, how: str) -> tuple:
        """(fit, fitted on the probes, pre-activations on the other rows, unrepaired pre-activations
        on the calibration rows) of the first refit layer ``k``, from its full inputs."""
        layers, n = small.layers, self.n_cal
        Hp = self.probes(how)[0]
        for j in range(k):
            l = layers[j]
            Hp = _act(torch.nn.functional.linear(Hp, _t(l.weight, torch.float64), _t(l.bias, torch.float64)), l)
        fit, fitted = refit(Hp, Z, layers[k].has_bias)
        H = self._forward(small, self.rows, range(k))
        other = None if H is None else apply_fit(fit, (H if how == "pseudo" else H[n:]).double())
        pre_before = None
        if n:
            l = layers[k]
            pre_before = torch.nn.functional.linear(H[:n], _t(l.weight, self.dtype), _t(l.bias, self.dtype))
        return fit, fitted, other, pre_before

    def _first_refit(self, small: Network, blocks: list, k: int, Z: torch.Tensor, how: str) -> tuple | None:
        """:meth:`_first_refit_direct` where its inputs (hidden layer h = k - 1) are mostly the
        original's columns (:func:`matched`), in the dual form of :func:`~afde_nb.core.repair.refit`
        (probes fewer than inputs): its Gram ``H~ H~^T``, the other rows' cross-Gram and the
        unrepaired pre-activations on the calibration rows are the original's (:class:`_Base`)
        less the unmatched original columns' part plus the new columns' part, so a move costs
        O(rows^2 x changed columns) there instead of O(rows^2 x width). The same ridge problem as
        ``refit``; the fitted values to rounding. None where it does not pay (or apply)."""
        h, Hp = k - 1, self.probes(how)[0]
        lay, nh = small.layers[h], small.layers[h].out_features
        if not small.layers[k].has_bias or len(Hp) >= nh:
            return None
        m = matched(self.net, small, blocks, h)
        if m is None:
            return None
        i, j, s = m
        U = np.setdiff1d(np.arange(self.net.layers[h].out_features), i)
        N = np.setdiff1d(np.arange(nh), j)
        if len(U) + len(N) >= nh:
            return None
        base = self._bases.get((how, h))
        if base is None:
            base = self._bases[(how, h)] = _Base(self, how, h)
        W64, b64 = _t(np.asarray(lay.weight)[N], torch.float64), _t(np.asarray(lay.bias)[N], torch.float64)
        HN = _act(torch.addmm(b64[:, None], W64, base.ins.T), lay)  # the new neurons on the probes, one a row
        mN = HN.mean(dim=1)
        HcN, tU = HN - mN[:, None], torch.from_numpy(U)
        AU = base.AcT[tU]
        G = torch.addmm(base.K, AU.T, AU, alpha=-1).addmm_(HcN.T, HcN)
        lam = RIDGE * float(base.sq.sum() - base.sq[tU].sum() + (HcN * HcN).sum()) / nh
        lam = lam if lam > 0 else RIDGE
        G.diagonal().add_(lam)
        zm = Z.mean(dim=0)
        S = torch.cholesky_solve(Z - zm, torch.linalg.cholesky(G))
        other = None
        if base.OcT is not None:
            ON = _act(torch.addmm(b64.to(self.dtype)[:, None], W64.to(self.dtype), base.o_ins.T), lay).double()
            C = torch.addmm(base.C, base.OcT[tU].T, AU, alpha=-1).addmm_((ON - mN[:, None]).T, HcN)
            other = torch.addmm(zm, C, S)
        pre_before = None
        if base.c_ZT is not None:
            cN = HN if how == "calibration" else _act(torch.addmm(b64[:, None], W64, base.c_ins.T), lay)
            Zo = torch.addmm(base.c_ZT, base.WT[tU].T, base.c_AT[tU], alpha=-1).T  # the matched neurons' part
            pre_before = targets(Zo, blocks[k]) if k < len(blocks) else Zo
            Wk = np.asarray(small.layers[k].weight)
            pre_before.addmm_(cN.T, _t(Wk[:, N].T, torch.float64)).add_(_t(small.layers[k].bias, torch.float64))
            B = np.flatnonzero(np.bincount(blocks[k].labels) > 1) if k < len(blocks) else np.zeros(0, dtype=np.int64)
            if B.size:  # merged rows with the quotient's own (rounded) weights, as compress's forward
                # one merged row a row (W @ A): torch's product of two transposed operands is 10-20x
                # slower than its plain or one-transposed products at these shapes
                rows = torch.mm(_t(Wk[B][:, j] * s, torch.float64), base.c_AT[torch.from_numpy(i)])
                rows.addmm_(_t(Wk[B][:, N], torch.float64), cN)
                rows.add_(_t(np.asarray(small.layers[k].bias)[B], torch.float64)[:, None])
                pre_before[:, torch.from_numpy(B)] = rows.T
        tj, ts, tN = torch.from_numpy(j), torch.from_numpy(s).to(torch.float64), torch.from_numpy(N)
        hm = torch.empty(nh, dtype=torch.float64)
        hm[tj], hm[tN] = ts * base.mean[torch.from_numpy(i)], mN

        def fit():  # refit's dual fit, its H~ put together when the weights are asked for
            HcT = torch.empty((nh, len(Hp)), dtype=torch.float64)
            HcT[tj], HcT[tN] = base.AcT[torch.from_numpy(i)] * ts[:, None], HcN
            return "dual", HcT.T, S, hm, zm, True

        return fit, torch.add(Z, S, alpha=-lam), other, pre_before
