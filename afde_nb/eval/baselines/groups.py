"""Structured pruning and k-means folding on the same groups afde-nb lumps inside any model
(:func:`afde_nb.models.groups.find_groups`), so a comparison on a residual MLP, a transformer or a CNN
removes the same kind of units from the same layers.

Each chain of groups is read as a network (:func:`afde_nb.models.surgery.chain_network`), the plain-stack
algorithm runs on it unchanged (:func:`~afde_nb.eval.baselines.structured.select_neurons` with
:func:`~afde_nb.eval.baselines.structured.neuron_scores`; :func:`~afde_nb.eval.baselines.folding.kmeans` with
:func:`~afde_nb.eval.baselines.folding.fold_layer`: a convolution's unit is a channel, its row the
kernel), and the result is written into a copy of the model. ``repair=True`` refits Linear chains
on their calibration inputs exactly as :func:`afde_nb.compress` does (``"pseudo"``: on pseudo-inputs
run through each chain); convolution chains are not refit by any method.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...core.network import Network, unit_norms
from ...core.repair import repair as refit
from ...errors import InvalidArgumentError, UnsupportedLayerError
from ...models import surgery
from ...models.capture import Captured, capture
from ...models.groups import Discovery
from ._common import Pruned, check_amount, count_params, is_stack, n_kept
from .folding import fold_layer, fold_prune_stack, kmeans
from .structured import SCORES, keep_indices, neuron_scores, select_neurons, structured_prune_stack


def _captured(model: nn.Module) -> Captured:
    cap = capture(model)
    if not cap.discovery.chains:
        raise UnsupportedLayerError("no lumpable groups to prune or fold:\n" + cap.discovery.report())
    return cap


def _setup(model: nn.Module, calibration) -> tuple[Discovery, list[Network], list[list[np.ndarray]] | None, dict | None]:
    cap = _captured(model)
    disc, captured, rows = cap.discovery, None, None
    if calibration is not None:
        x = cap.calibration(calibration)
        captured = surgery.capture(model, [a for c in disc.chains for a in surgery.chain_affines(c)], x)
        rows = [surgery.chain_inputs(model, c, captured) for c in disc.chains]
    return disc, cap.nets, rows, captured


def _unit_norms(t: torch.Tensor, kind: str, units: int) -> np.ndarray:
    """||h_i|| of each of ``units`` units over a layer input: a Linear's last axis (a run of
    columns per unit after a Flatten), a convolution's channels."""
    t = t.detach().to("cpu", torch.float64)
    if kind == "linear":
        a = t.reshape(-1, units, t.shape[-1] // units)
    else:
        a = t.transpose(0, 1).reshape(units, -1).T[:, :, None]
    return np.sqrt((a.numpy() ** 2).sum(axis=(0, 2)))


def _finish(model, disc, nets, smalls, maps, rows, repair, method: str, amount: float, again) -> Pruned:
    """The pruned copy; ``repair`` (True: on the calibration rows, "pseudo": on pseudo-inputs run
    through each chain) refits lossy Linear chains; ``again(calibration, repair)`` reruns the method."""
    out = surgery.copy_model(model)
    ran = False
    for chain, net, small, m, r in zip(disc.chains, nets, smalls, maps, rows or [None] * len(nets)):
        if repair:
            if repair == "pseudo":
                r = surgery.pseudo_inputs(net)
            elif r is None:
                raise InvalidArgumentError("repair=True needs calibration inputs")
            lossy = [h for h, (lab, _) in enumerate(m) if lab.size and (lab.max() + 1 < lab.size or (lab < 0).any())]
            if lossy and all(l.taps == 1 for l in net.layers):
                small, ran = refit(net, small, r[0], m, start=lossy[0] + 1), True
        surgery.write_back(out, chain, small)
    how = ("pseudo" if repair == "pseudo" else "calibration") if ran else None
    return Pruned(out, count_params(out), method, amount, True, None, 0, how,
                  lambda calibration, pseudo: again(calibration, "pseudo" if pseudo else True))


def structured_prune(model: nn.Module, amount: float, score: str = "norm", calibration=None) -> Pruned:
    """Remove the lowest-scoring ``amount`` fraction of the units of every group (every hidden
    layer of a plain stack, where the result keeps the maps :func:`repair_pruned` refits with)."""
    if is_stack(model):
        return structured_prune_stack(model, amount, score, calibration)
    return structured_prune_groups(model, amount, score, calibration)


def fold_prune(model: nn.Module, amount: float, seed: int = 0, max_iter: int = 300) -> Pruned:
    """Fold every group (every hidden layer of a plain stack) to ``max(1, round((1 - amount) * n))``
    units by k-means on the incoming rows, front to back."""
    if is_stack(model):
        return fold_prune_stack(model, amount, seed, max_iter)
    return fold_groups(model, amount, seed, max_iter=max_iter)


def structured_prune_groups(model: nn.Module, amount: float, score: str = "norm", calibration=None,
                            repair: bool | str = False) -> Pruned:
    """Remove the lowest-scoring ``amount`` of the units of every group (scores as
    :func:`~afde_nb.eval.baselines.structured.neuron_scores`; ``"wanda"`` measures ||h_i|| on ``calibration``)."""
    amount = check_amount(amount)
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    if score == "wanda" and calibration is None:
        raise InvalidArgumentError("score='wanda' needs calibration inputs")
    disc, nets, rows, captured = _setup(model, calibration)
    smalls, maps = [], []
    for chain, net in zip(disc.chains, nets):
        if score == "wanda":  # ||outgoing|| x ||h_i|| on the calibration inputs, as for a plain stack
            scores = [unit_norms(nxt.weight, nxt.taps) * _unit_norms(captured[g.consumer.weight], g.consumer.kind, nxt.in_features)
                      for nxt, g in zip(net.layers[1:], chain)]
        else:
            scores = neuron_scores(net, "norm")
        keep = [keep_indices(s, n_kept(len(s), amount)) for s in scores]
        smalls.append(select_neurons(net, keep))
        m = []
        for k, s in zip(keep, scores):
            lab = np.full(len(s), -1, dtype=np.int64)
            lab[k] = np.arange(len(k))
            m.append((lab, np.ones(len(s))))
        maps.append(m)
    return _finish(model, disc, nets, smalls, maps, rows, repair, f"structured-{score}", amount,
                   lambda cal, rep: structured_prune_groups(model, amount, score, cal if cal is not None else calibration, rep))


def fold_groups(model: nn.Module, amount: float, seed: int = 0, calibration=None, repair: bool | str = False,
                max_iter: int = 300) -> Pruned:
    """Fold every group to ``n_kept(n, amount)`` units by k-means on the incoming rows (kernels of
    a convolution, norms folded), front to back within each chain."""
    amount = check_amount(amount)
    disc, nets, rows, _ = _setup(model, calibration)
    smalls, maps = [], []
    for net in nets:
        m = []
        for l in range(len(net.hidden)):
            layer = net.layers[l]
            X = np.column_stack([layer.weight, layer.bias]) if layer.has_bias else layer.weight
            labels = kmeans(X, n_kept(layer.out_features, amount), seed=seed, max_iter=max_iter)
            m.append((labels, 1.0 / np.bincount(labels)[labels]))
            net = fold_layer(net, l, labels)
        smalls.append(net)
        maps.append(m)
    return _finish(model, disc, nets, smalls, maps, rows, repair, "folding", amount,
                   lambda cal, rep: fold_groups(model, amount, seed, cal, rep, max_iter))
