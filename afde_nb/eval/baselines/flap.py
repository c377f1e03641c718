"""FLAP (An, Zhao, Yu, Tang, Wang 2024, "Fluctuation-based Adaptive Structured Pruning for Large
Language Models", arXiv:2312.11983): retraining-free structured pruning of whole units of the groups
afde-nb lumps (a plain stack's hidden neurons, a transformer's feed-forward units, a gated MLP's
units: gate row, up row and down column together), with the removed units' mean contribution put
into the consumer's bias.

**Fluctuation metric.** Unit j of a hidden layer, read by the consumer layer W (its input column
j), scores

    S_j = Var_t(h_j) * ||W[:, j]||_2^2

with ``h_j`` the unit's value (a gated unit's ``act(gate x) * up x``) over the calibration rows t
(every token of a sequence is a row; the population variance, ``ddof = 0``), from a float64 forward
of the original model (a transformer's rows: the layer inputs afde-nb's capture draws, at most
:data:`afde_nb.models.surgery.MAX_ROWS` tokens). A unit whose value hardly moves around its mean can
be replaced by that mean.

**Structure** (which units go):

* ``"global"`` (FLAP's adaptive structure search, AL-AM restricted to the groups afde-nb lumps):
  each hidden layer's scores are standardised, ``(S - mean S) / std S`` (``std`` with ``ddof = 1``
  as the reference's ``torch.std``; a layer whose scores are all equal standardises to 0), every
  unit of every group is ranked on one list (highest first; ties: chain, layer, unit index in
  order), and the longest prefix of that list whose parameter cost fits ``(1 - amount)`` of the
  groups' unit parameters is kept (a unit's cost: what removing it alone from the full model
  saves: its incoming row(s) with biases and its consumer column). Every hidden layer keeps at
  least its best unit. So ``amount`` is the fraction of the groups' unit parameters removed, and
  layers lose different numbers of units;
* ``"uniform"``: every group of ``n`` units keeps its ``max(1, round((1 - amount) * n))``
  highest-scoring units (as :func:`~afde_nb.eval.baselines.structured_prune` counts).

**Bias compensation** (``compensate=True``): the consumer's bias gains ``W[:, R] @ mean_t(h_R)``
for the removed units R, so on the calibration rows the consumer's output keeps its mean; a unit
whose value is constant on the calibration rows is removed without changing the output there. A
consumer without a bias (LLaMA's ``down_proj``) gets one in the returned copy (as the reference
implementation does); the parameter count includes it. :func:`~afde_nb.eval.baselines.repair_pruned`
refits the result as it refits every method (a least-squares refit of the consumer; one that had no
bias in the original model is refit without one, so the repaired copy has none).

Kept units stay in their original order; the result is a smaller dense model. Convolution chains
and inverted-residual blocks are refused (their consumers read patches, not rows).

Differences from the reference implementation, on purpose: inputs come from the original model
(the reference feeds each block the output of the already pruned blocks before it), the budget is
the longest prefix within it (the reference takes the nearest cumulative count), attention heads are
not pruned (afde-nb lumps feed-forward units only; the comparison is at equal groups), and a layer
is never emptied.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ...core.gated import GatedNet
from ...core.inverted import InvertedNet
from ...errors import InvalidArgumentError, UnsupportedLayerError
from ._common import Pruned, as_calibration, check_amount, count_params, maps_of, n_kept, units
from .structured import keep_indices, select_neurons

STRUCTURES = ("global", "uniform")


def _check(net, k: int) -> None:
    if isinstance(net, InvertedNet) or any(l.taps != 1 for l in net.layers):
        raise UnsupportedLayerError(f"flap_prune acts on Linear groups (plain stacks, feed-forward and gated MLPs); "
                                    f"chain {k} ({net.layers[0].path or 'layer 0'}) is a convolution chain")


def flap_stats(cap, calibration) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per chain, per hidden layer: (fluctuation score ``Var(h_j) ||W[:, j]||^2``, mean of ``h_j``)
    over the calibration rows, float64."""
    for k, net in enumerate(cap.nets):
        _check(net, k)
    ins = cap.layer_inputs(as_calibration(cap, calibration))
    out = []
    for net, x in zip(cap.nets, ins):
        per = []
        for h in range(len(net.hidden)):
            H, W = x[h + 1], np.asarray(net.layers[h + 1].weight, dtype=np.float64)
            mean = H.mean(axis=0)
            var = ((H - mean) ** 2).mean(axis=0)
            per.append((var * np.einsum("ij,ij->j", W, W), mean))
        out.append(per)
    return out


def flap_scores(model: nn.Module, calibration) -> list[np.ndarray]:
    """FLAP's fluctuation score of every unit of every hidden layer of every chain of ``model``
    (flat, in chain and layer order)."""
    cap = units(model)
    return [s for c in flap_stats(cap, calibration) for s, _ in c]


def _standardised(s: np.ndarray) -> np.ndarray:
    if s.size < 2:
        return np.zeros_like(s)
    sd = float(s.std(ddof=1))
    return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)


def _unit_costs(cap) -> list[int]:
    """Per hidden layer (flat): parameters saved by removing one of its units from the full model."""
    full = [l.out_features for n in cap.nets for l in n.hidden]
    total = cap.num_params_with(full)
    return [total - cap.num_params_with(full[:i] + [w - 1] + full[i + 1:]) for i, w in enumerate(full)]


class _Selector:
    """The kept units of every hidden layer at any ``amount`` (scores taken once)."""

    def __init__(self, cap, stats, structure: str):
        if structure not in STRUCTURES:
            raise InvalidArgumentError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.structure = structure
        self.scores = [s for c in stats for s, _ in c]
        self.sizes = [len(s) for s in self.scores]
        if structure == "global":
            z = np.concatenate([_standardised(s) for s in self.scores]) if self.scores else np.zeros(0)
            self.layer = np.repeat(np.arange(len(self.sizes)), self.sizes)
            self.index = np.concatenate([np.arange(n) for n in self.sizes]) if self.sizes else np.zeros(0, int)
            self.order = np.argsort(-z, kind="stable")
            cost = np.asarray(_unit_costs(cap), dtype=np.int64)[self.layer]
            self.cum = np.cumsum(cost[self.order])
            self.total = int(self.cum[-1]) if self.cum.size else 0
            self.best = [int(np.argmax(s)) if s.size else 0 for s in self.scores]

    def keep(self, amount: float) -> list[np.ndarray]:
        if self.structure == "uniform":
            return [keep_indices(s, n_kept(len(s), amount)) for s in self.scores]
        budget = math.floor((1.0 - amount) * self.total + 1e-9 * max(self.total, 1))
        take = self.order[: int(np.searchsorted(self.cum, budget, side="right"))]
        out = []
        for i, n in enumerate(self.sizes):
            mine = self.index[take[self.layer[take] == i]]
            out.append(np.sort(mine) if mine.size else np.array([self.best[i]], dtype=np.int64))
        return out


def _split(flat: list, cap) -> list[list]:
    out, at = [], 0
    for net in cap.nets:
        out.append(flat[at:at + len(net.hidden)])
        at += len(net.hidden)
    return out


def flap_prune(model: nn.Module, amount: float, calibration, structure: str = "global",
               compensate: bool = True) -> Pruned:
    """Remove units of the groups by FLAP's fluctuation score (``structure``: ``"global"``
    standardised scores ranked across every layer, ``amount`` the fraction of the units' parameters
    removed; ``"uniform"`` the same fraction of units in every layer), with bias compensation."""
    amount = check_amount(amount)
    if structure not in STRUCTURES:
        raise InvalidArgumentError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    cap = units(model)
    stats = flap_stats(cap, calibration)
    keep = _split(_Selector(cap, stats, structure).keep(amount), cap)
    nets, maps, added = [], [], []
    for k, (net, kk, st) in enumerate(zip(cap.nets, keep, stats)):
        small = select_neurons(net, kk)
        if compensate:
            layers = list(small.layers)
            for h, (rows, (_, mean)) in enumerate(zip(kk, st)):
                n = net.hidden[h].out_features
                gone = np.setdiff1d(np.arange(n), rows)
                if not gone.size:
                    continue
                cons_orig = net.layers[h + 1]
                shift = np.asarray(cons_orig.weight, dtype=np.float64)[:, gone] @ mean[gone]
                if h + 1 < len(kk):  # the consumer is a hidden layer too: its kept units' rows
                    shift = shift[kk[h + 1]]
                cons = layers[h + 1]
                if not cons.has_bias:
                    added.append((k, cons.path, shift))
                    if cap.stack:  # a new nn.Sequential: the layer's own flag makes the bias
                        layers[h + 1] = replace(cons, bias=shift, has_bias=True)
                    continue
                layers[h + 1] = cons.with_weights(cons.weight, np.asarray(cons.bias, dtype=np.float64) + shift)
            small = _relayered(small, layers)
        nets.append(small)
        maps.append(maps_of(kk, [l.out_features for l in net.hidden]))
    out = cap.write(nets)
    if not cap.stack:
        for k, path, shift in added:
            _add_bias(out, path, shift)
    return Pruned(out, count_params(out), f"flap-{structure}", amount, True, cap.written(nets, out), maps)


def _relayered(net, layers):
    if isinstance(net, GatedNet):
        return GatedNet(list(layers), dtype=net.dtype, meta=dict(net.meta), up=net.up)
    return type(net)(list(layers), dtype=net.dtype, meta=dict(net.meta))


def _add_bias(model: nn.Module, path: str, b: np.ndarray) -> None:
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        mod = None
    if not isinstance(mod, nn.Linear) or mod.bias is not None:
        raise UnsupportedLayerError(f"flap_prune: cannot give {path!r} a bias for the compensation; "
                                    "use compensate=False")
    w = mod.weight
    mod.bias = nn.Parameter(torch.as_tensor(b, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)


def _counter(model: nn.Module, calibration=None, structure: str = "global", compensate: bool = True):
    """params(amount) of :func:`flap_prune` in closed form (scores taken once)."""
    cap = units(model)
    sel = _Selector(cap, flap_stats(cap, calibration), structure)
    consumers = [(net.layers[h + 1], net.hidden[h].out_features) for net in cap.nets for h in range(len(net.hidden))]

    def count(amount: float) -> int:
        keep = sel.keep(amount)
        extra = sum(c.out_features for (c, n), k in zip(consumers, keep) if not c.has_bias and len(k) < n)
        return cap.num_params_with([len(k) for k in keep]) + (extra if compensate else 0)

    return count
