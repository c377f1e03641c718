"""Answering one eps of a built merge path fast: what a slider move needs (issue 10).

``compress(model, eps, path=path)`` rebuilds the figures from scratch; :class:`SliderCache` keeps,
per setting of a plain stack, the network, its merge path, the original model's outputs on the
calibration rows and its pre-activations on the repair's probes, and the calibration and test
rows as one torch batch, so a move costs the cut, :func:`~afde_nb.reduce.quotient`, the refit of
:mod:`afde_nb.repair` (in torch, :func:`~afde_nb.repair.refit`) when a merge was lossy, and the
forwards of the reduced layers on the cached rows. The torch model is built on first use
(:class:`LazyCompression`). Used by the panel (:mod:`afde_nb.widgets.state`); tested against
``compress`` (tests/test_widgets.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .adapters import to_torch
from .compress import Compression, layer_summaries
from .network import Network
from .path import probe_inputs
from .reduce import quotient
from .repair import LOSSY, apply_fit, deviation, fit_weights, refit, targets


#: activations of a plain stack, as torch functions on the reduced layers' pre-activations
_TORCH_ACT = {"identity": lambda z, l: z, "tanh": lambda z, l: torch.tanh(z), "sigmoid": lambda z, l: torch.sigmoid(z),
              "relu": lambda z, l: torch.relu(z),
              "leaky_relu": lambda z, l: torch.nn.functional.leaky_relu(z, l.negative_slope)}


def _versions(model) -> tuple:
    """What changes when a parameter of ``model`` is replaced or written in place."""
    params = getattr(model, "parameters", None)
    return tuple((id(p), p._version) for p in params()) if callable(params) else ()


def _same_weights(a: Network, b: Network) -> bool:
    return a.widths == b.widths and all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
                                        for x, y in zip(a.layers, b.layers))


class LazyCompression(Compression):
    """A :class:`~afde_nb.Compression` whose reduced network and torch model are built on first use
    (``.model``, ``.reduced_network``, ``save``): a slider move shows figures computed without them."""

    def __init__(self, build: Callable[[], tuple], **fields):
        self.__dict__["_build"] = build
        super().__init__(model=None, reduced_network=None, **fields)

    def _built(self, name: str):
        if self.__dict__.get("_build") is not None:
            net, model = self.__dict__["_build"]()
            self.__dict__.update(_build=None, _reduced_network=net, _model=model)
        return self.__dict__.get(name)

    @property
    def model(self):
        return self._built("_model")

    @model.setter
    def model(self, value):
        self.__dict__["_model"] = value

    @property
    def reduced_network(self):
        return self._built("_reduced_network")

    @reduced_network.setter
    def reduced_network(self, value):
        self.__dict__["_reduced_network"] = value


class SliderCache:
    """What every slider move at one setting of a plain stack reuses: the network, its merge path,
    the original model's outputs on the calibration rows and its pre-activations on the repair's
    probes, and the calibration and test rows as one torch batch (the model's dtype, on the CPU).

    :meth:`move` answers one eps as ``compress(model, eps, path=path, ...)`` does (the path's cut,
    :func:`~afde_nb.reduce.quotient`, the repair of :mod:`afde_nb.repair` when a merge was lossy),
    with the figures' forwards on the cached rows instead of the torch model's: the test rows and the
    calibration deviations run in the model's dtype (float32 for a float32 model: the deviations then
    carry its rounding, ~1e-7, where ``compress`` reports float64), the refit layers in float64
    (the repair's own arithmetic). The reduced torch model is built only when asked for
    (:class:`LazyCompression`)."""

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

    @staticmethod
    def fits(net: Network) -> bool:
        return all(l.activation in _TORCH_ACT and l.taps == 1 for l in net.layers)

    def fresh(self, model) -> bool:
        """Whether ``model``'s parameters are still the ones this cache was built from."""
        return model is self.model and _versions(model) == self.versions

    def probes(self, how: str | None):
        """(probes, the original's pre-activations on them per layer) of a repair ``how``, as float64
        tensors."""
        if how is None:
            return None, None
        if how not in self._probes:
            X = self.calib if how == "calibration" else probe_inputs(self.net, None)
            ins = self.net.layer_inputs(X)
            self._probes[how] = (torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64)),
                                 [torch.from_numpy(h @ l.weight.T + l.bias) for h, l in zip(ins, self.net.layers)])
        return self._probes[how]

    def move(self, eps: float, how: str | None) -> tuple[LazyCompression, np.ndarray | None]:
        """The compression at ``eps`` (repair ``how``: None, "calibration" or "pseudo") and the
        predictions on the test rows (None without)."""
        net, path = self.net, self.path
        part = path.partition(eps)
        small, blocks = quotient(net, part)
        probes, Zp = self.probes(how)
        lossy = [h for h, b in enumerate(blocks) if b.spread > LOSSY]
        ran = probes is not None and bool(lossy)
        layers = small.layers
        L = len(layers)
        start = lossy[0] + 1 if ran else L
        wt = [(torch.from_numpy(np.asarray(l.weight)).to(self.dtype), torch.from_numpy(np.asarray(l.bias)).to(self.dtype))
              for l in layers]

        def act(z, layer):
            return _TORCH_ACT[layer.activation](z, layer)

        def run(H, ks):
            for k in ks:
                H = act(torch.nn.functional.linear(H, *wt[k]), layers[k])
            return H

        def w64(k):
            return (torch.from_numpy(np.asarray(layers[k].weight)).to(torch.float64),
                    torch.from_numpy(np.asarray(layers[k].bias)).to(torch.float64))

        n = self.n_cal
        before = after = pred = None
        fits: list[tuple] = []
        with torch.no_grad():
            H = run(self.rows, range(start)) if self.rows is not None else None
            if not ran:
                if n:
                    after = deviation(self.orig_cal, H[:n].double().cpu().numpy())
                if H is not None and len(H) > n:
                    pred = H[n:].double().cpu().numpy()
            else:
                if n:
                    before = deviation(self.orig_cal, run(H[:n], range(start, L)).double().cpu().numpy())
                Hp = probes  # the repair, as afde_nb.repair.repair: float64 on the probes
                for k in range(start):
                    Hp = act(torch.nn.functional.linear(Hp, *w64(k)), layers[k])
                for k in range(start, L):
                    Z = targets(Zp[k], blocks[k]) if k < len(blocks) else Zp[k]
                    fit, fitted = refit(Hp, Z, layers[k].has_bias)
                    fits.append(fit)
                    Hp = act(fitted, layers[k])

                def rerun(Hr):
                    Hr = Hr.to(torch.float64)
                    for k, fit in zip(range(start, L), fits):
                        Hr = act(apply_fit(fit, Hr), layers[k])
                    return Hr.cpu().numpy()

                if n:
                    after = deviation(self.orig_cal, Hp.numpy() if how == "calibration" else rerun(H[:n]))
                if H is not None and len(H) > n:
                    pred = rerun(H[n:])
        if pred is not None:
            pred = pred.reshape(len(pred), -1)

        device, fixed_layers = self.device, list(layers)

        def build():
            out = list(fixed_layers)
            for k, fit in zip(range(start, L), fits):
                out[k] = out[k].with_weights(*fit_weights(fit))
            fixed = Network(out, dtype=small.dtype, meta=dict(small.meta)) if fits else small
            return fixed, to_torch(fixed, device=device)

        summaries = layer_summaries(net, part)
        c = LazyCompression(build, partition=[np.array(l) for l in part.labels], params_before=net.num_params,
                            params_after=small.num_params, layers=summaries, mode=part.mode, eps=part.eps,
                            relative=part.relative, calibration_error=after, target=None, method=path.method,
                            symmetry=bool(path.symmetry), repaired=how if ran else None,
                            calibration_error_before_repair=before, path=path)
        return c, pred
