"""Wanda (Sun, Liu, Bair, Kolter 2023, arXiv:2306.11695): prune by |W| times input norm.

For every Linear, ``S_ij = |W_ij| * ||X_j||_2`` where ``X_j`` is its j-th input feature over the
calibration inputs (from a float64 forward of the original, unpruned model); in each output row
the ``round(amount * in_features)`` lowest scores are zeroed (stable sort: among equal scores the
lower column index goes first). No weight update. The input model is not modified.

Differences from the reference implementation, on purpose: inputs come from the original model
(the reference feeds each block the output of the already pruned blocks before it), and the
per-row count is ``round`` like :mod:`torch.nn.utils.prune` (the reference truncates).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import (Pruned, as_calibration, bias_count, build, check_amount, count_params, layer_inputs,
                      n_pruned, read)


def wanda_scores(model: nn.Module, calibration) -> list[np.ndarray]:
    """``|W| * ||X_j||_2`` for every Linear of ``model``, float64, shaped like the weights."""
    net, _ = read(model)
    return _scores(net, calibration)


def _scores(net, calibration) -> list[np.ndarray]:
    x = as_calibration(calibration, net)
    ins = layer_inputs(net, x)
    return [np.abs(l.weight) * np.linalg.norm(h, axis=0)[None, :] for l, h in zip(net.layers, ins)]


def _orders(scores: list[np.ndarray]) -> list[np.ndarray]:
    """Per row, the columns from lowest to highest score (the order in which they get pruned)."""
    return [np.argsort(s, axis=1, kind="stable") for s in scores]


def wanda_prune(model: nn.Module, amount: float, calibration) -> Pruned:
    """Zero, in every output row of every Linear, the ``amount`` fraction of lowest Wanda scores;
    returns a new masked ``nn.Sequential``."""
    amount = check_amount(amount)
    net, device = read(model)
    orders = _orders(_scores(net, calibration))
    new = build(net, device)
    linears = [m for m in new if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, order in zip(linears, orders):
            k = n_pruned(order.shape[1], amount)
            if k == 0:
                continue
            mask = np.ones(order.shape, dtype=bool)
            np.put_along_axis(mask, order[:, :k], False, axis=1)
            lin.weight.mul_(torch.as_tensor(mask, device=lin.weight.device).to(lin.weight.dtype))
    return Pruned(new, count_params(new, nonzero=True), "wanda", amount, False)


def _counter(model: nn.Module, calibration=None):
    """params(amount) of :func:`wanda_prune` without pruning: per layer and k, the non-zero
    weights left after the first k columns of every row's pruning order are zeroed."""
    net, _ = read(model)
    orders = _orders(_scores(net, calibration))
    left = []  # left[l][k] = non-zero weights of layer l after pruning k per row
    for layer, order in zip(net.layers, orders):
        nz = np.take_along_axis(layer.weight != 0, order, axis=1).sum(axis=0)  # per pruning position
        left.append(np.concatenate([np.cumsum(nz[::-1])[::-1], [0]]).astype(np.int64))
    biases = bias_count(net)
    return lambda a: biases + sum(int(c[n_pruned(len(c) - 1, a)]) for c in left)
