"""Wanda (Sun, Liu, Bair, Kolter 2023, arXiv:2306.11695): prune by |W| times input norm, in every
layer of the groups afde-nb lumps (every Linear of a plain stack; a gated MLP's gate, up and down
projections; an inverted-residual block's producer, depthwise kernels, SE fc1 and fc2 and consumer;
each a layer of its own).

For every layer, ``S_ij = |W_ij| * ||X_j||_2`` where ``X_j`` is its j-th input feature over the
calibration inputs (from a float64 forward of the original, unpruned model; a convolution's
inputs are its patches; a gated MLP's gate and up projections read its input x, its down
projection ``h = act(gate x) * up x``; an inverted-residual block's tensors their own inputs on
every position of the chain's probe maps (at most 16 calibration images), from the block's float64
array forward, BatchNorms folded: the producer its patches, depthwise kernel c the taps of its own
channel ``u_c`` (so its norms differ row by row), fc1 the channels' spatial means, fc2 fc1's
activations, the consumer the gated channels); in each output row the ``round(amount * in_features)``
lowest scores are zeroed (stable sort: among equal scores the lower column index goes first). No
weight update. The input model is not modified. Wanda needs calibration inputs: there is no
data-free variant (without them it stops with an error).

Differences from the reference implementation, on purpose: inputs come from the original model
(the reference feeds each block the output of the already pruned blocks before it), and the
per-row count is ``round`` like :mod:`torch.nn.utils.prune` (the reference truncates).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ._common import (Pruned, as_calibration, check_amount, count_params, finish, input_norms, n_pruned, projections,
                      units, with_projections)


def wanda_scores(model: nn.Module, calibration) -> list[np.ndarray]:
    """``|W| * ||X_j||_2`` for every layer of every chain of ``model`` (a gated chain's gate, up and
    down projections; an inverted block's producer, depthwise, fc1, fc2, consumer; in that order),
    float64, shaped like the weights."""
    cap = units(model)
    return [s for c in _scores(cap, calibration) for s in c]


def _scores(cap, calibration) -> list[list[np.ndarray]]:
    ins = cap.layer_inputs(as_calibration(cap, calibration))
    return [[np.abs(l.weight) * n for l, n in zip(projections(net), input_norms(net, x))]
            for net, x in zip(cap.nets, ins)]


def _orders(scores: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Per row, the columns from lowest to highest score (the order in which they get pruned)."""
    return [[np.argsort(s, axis=1, kind="stable") for s in c] for c in scores]


def wanda_prune(model: nn.Module, amount: float, calibration) -> Pruned:
    """Zero, in every output row of every layer of the groups, the ``amount`` fraction of lowest
    Wanda scores; returns a masked copy."""
    amount = check_amount(amount)
    cap = units(model)
    nets = []
    for net, orders in zip(cap.nets, _orders(_scores(cap, calibration))):
        layers = []
        for l, order in zip(projections(net), orders):
            mask = np.ones(order.shape, dtype=bool)
            np.put_along_axis(mask, order[:, :n_pruned(order.shape[1], amount)], False, axis=1)
            layers.append(l.with_weights(l.weight * mask.astype(l.weight.dtype), l.bias))
        nets.append(with_projections(net, layers))
    return finish(cap, nets, "wanda", amount, False)


def _counter(model: nn.Module, calibration=None):
    """params(amount) of :func:`wanda_prune` without pruning: per layer and k, the non-zero
    weights left after the first k columns of every row's pruning order are zeroed."""
    cap = units(model)
    layers = [l for n in cap.nets for l in projections(n)]
    orders = [o for c in _orders(_scores(cap, calibration)) for o in c]
    left = []  # left[l][k] = non-zero weights of layer l after pruning k per row
    for layer, order in zip(layers, orders):
        nz = np.take_along_axis(layer.weight != 0, order, axis=1).sum(axis=0)  # per pruning position
        left.append(np.concatenate([np.cumsum(nz[::-1])[::-1], [0]]).astype(np.int64))
    as_is = cap.write([with_projections(n, projections(n)) for n in cap.nets])  # as amount 0 writes it
    rest = count_params(as_is, nonzero=True) - sum(int(c[0]) for c in left)
    return lambda a: rest + sum(int(c[n_pruned(len(c) - 1, a)]) for c in left)
