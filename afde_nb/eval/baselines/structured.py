"""Structured pruning: delete whole hidden neurons (never inputs or outputs).

Every hidden layer of ``n`` neurons keeps the ``max(1, round((1 - amount) * n))`` neurons with the
highest score, all scores taken on the original model:

* ``"norm"``:  ``||(W_l[i, :], b_l[i])||_2 * ||W_{l+1}[:, i]||_2`` (incoming row with its bias,
  times the outgoing column);
* ``"wanda"``: ``||W_{l+1}[:, i]||_2 * ||h_l[:, i]||_2`` with ``h_l`` the neuron's activation over
  the calibration inputs (float64 forward of the original model).

Equal scores keep the lower index. The kept neurons stay in their original order; the result is
a smaller dense ``nn.Sequential`` (rows of ``W_l``/``b_l`` and columns of ``W_{l+1}`` deleted).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ...core.network import Network, unit_columns, unit_norms
from ...errors import InvalidArgumentError
from ._common import Pruned, as_calibration, build, check_amount, count_params, dense_counter, layer_inputs, n_kept, read

SCORES = ("norm", "wanda")


def neuron_scores(net: Network, score: str = "norm", calibration=None) -> list[np.ndarray]:
    """Score of every neuron of every hidden layer of ``net``."""
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    outgoing = [unit_norms(nxt.weight, nxt.taps) for nxt in net.layers[1:]]
    if score == "norm":
        incoming = [np.linalg.norm(np.column_stack([l.weight, l.bias if l.has_bias else np.zeros(l.out_features)]),
                                   axis=1) for l in net.hidden]
        return [i * o for i, o in zip(incoming, outgoing)]
    x = as_calibration(calibration, net)
    acts = layer_inputs(net, x)[1:]  # activations of hidden layers 0..L-2
    return [np.linalg.norm(h, axis=0) * o for h, o in zip(acts, outgoing)]


def keep_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties: lower index first), in increasing order."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def select_neurons(net: Network, keep: list[np.ndarray]) -> Network:
    """``net`` with hidden layer l reduced to the neurons ``keep[l]``."""
    layers = []
    prev = None  # kept indices of the layer before
    for i, l in enumerate(net.layers):
        rows = keep[i] if i < len(keep) else np.arange(l.out_features)
        w = l.weight[rows]
        if prev is not None:
            w = w[:, unit_columns(prev, l.taps)]
        layers.append(l.with_weights(np.ascontiguousarray(w), l.bias[rows].copy()))
        prev = rows
    return Network(layers, dtype=net.dtype, meta=dict(net.meta))


def structured_prune_stack(model: nn.Module, amount: float, score: str = "norm", calibration=None) -> Pruned:
    """Remove the lowest-scoring ``amount`` fraction of neurons of every hidden layer of a plain stack."""
    amount = check_amount(amount)
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    net, device = read(model)
    scores = neuron_scores(net, score, calibration)
    keep = [keep_indices(s, n_kept(len(s), amount)) for s in scores]
    new = build(select_neurons(net, keep), device)
    maps = []
    for k, s in zip(keep, scores):
        lab = np.full(len(s), -1, dtype=np.int64)
        lab[k] = np.arange(len(k))
        maps.append((lab, np.ones(len(s))))
    start = min([l + 1 for l, (k, s) in enumerate(zip(keep, scores)) if len(k) < len(s)], default=len(net.layers))
    return Pruned(new, count_params(new), f"structured-{score}", amount, True, maps, start)


def _counter(model: nn.Module, score: str = "norm", calibration=None):
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    if score == "wanda":
        as_calibration(calibration, read(model)[0])  # fail early, not after the search
    return dense_counter(model)
