"""Structured pruning: delete whole units of the groups afde-nb lumps (hidden neurons of a plain
stack; a group's features or channels in any model), never inputs or outputs.

Every group of ``n`` units keeps the ``max(1, round((1 - amount) * n))`` units with the highest
score, all scores taken on the original model:

* ``"norm"``:  ``||(W_l[i, :], b_l[i])||_2 * ||W_{l+1}[:, i]||_2`` (incoming row with its bias,
  times the outgoing column; a convolution's kernels, a BatchNorm folded);
* ``"wanda"``: ``||W_{l+1}[:, i]||_2 * ||h_l[:, i]||_2`` with ``h_l`` the unit's activation over
  the calibration inputs (:meth:`~afde_nb.models.capture.Captured.unit_norms`).

A gated MLP's unit i (gate row i, up row i, down column i; ``h_i = act(g_i x + c_i)(u_i x + d_i)``)
is scored the same way with both incoming rows: ``"norm"``
``||(g_i, c_i)||_2 * ||(u_i, d_i)||_2 * ||v_i||_2`` (|h_i| grows with each row's norm, so the
product of the three stands for the unit's size as ``||row|| * ||column||`` does for an ordinary
unit), ``"wanda"`` ``||v_i||_2 * ||h_i||_2`` on the calibration inputs; the kept units are cut
out by :func:`afde_nb.core.gated.select`.

An inverted-residual block's channel c (producer row, depthwise kernel and fc2 row; consumer and
fc1 columns; ``o_c = act2(K_c (*) act1(P_c x + p_c) + q_c) g_c``) is scored with both of its
incoming rows, BatchNorms folded: ``"norm"`` ``||(P_c, p_c)||_2 * ||(K_c, q_c)||_2 * ||V_c||_2``
(the producer row and the depthwise kernel each scale the channel, as a gated unit's two rows do;
the SE's fc2 row does not: its gate is bounded, ``gate(0)`` is not 0), ``"wanda"``
``||V_c||_2 * ||o_c||_2`` with ``o_c`` the gated channel the consumer reads, over every position of
the calibration inputs; the kept channels are cut out by :func:`afde_nb.core.inverted.select`
(written back with their unfolded BatchNorm entries).

Equal scores keep the lower index. The kept units stay in their original order; the result is a
smaller dense model (rows of ``W_l``/``b_l`` and columns of ``W_{l+1}`` deleted).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ...core import gated as core_gated
from ...core import inverted as core_inverted
from ...core.gated import GatedNet
from ...core.inverted import InvertedNet
from ...core.network import Network, unit_columns, unit_norms
from ...errors import InvalidArgumentError
from ._common import Pruned, as_calibration, check_amount, dense_counter, finish, maps_of, n_kept, units

SCORES = ("norm", "wanda")


def neuron_scores(net: Network, score: str = "norm", norms: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Score of every unit of every hidden layer of ``net`` (``norms``: the units' ||h_i|| on the
    calibration inputs, for ``"wanda"``)."""
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    outgoing = [unit_norms(nxt.weight, nxt.taps) for nxt in net.layers[1:]]
    if isinstance(net, GatedNet):
        if score == "norm":
            g, u = (np.linalg.norm(np.column_stack([l.weight, l.bias]), axis=1) for l in (net.gate, net.up))
            return [g * u * outgoing[0]]
        return [norms[0] * outgoing[0]]
    if isinstance(net, InvertedNet) and score == "norm":
        p, k = (np.linalg.norm(np.column_stack([l.weight, l.bias]), axis=1) for l in (net.producer, net.dw))
        return [p * k * outgoing[0]]
    if score == "norm":
        incoming = [np.linalg.norm(np.column_stack([l.weight, l.bias if l.has_bias else np.zeros(l.out_features)]),
                                   axis=1) for l in net.hidden]
        return [i * o for i, o in zip(incoming, outgoing)]
    return [h * o for h, o in zip(norms, outgoing)]


def keep_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties: lower index first), in increasing order."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def select_neurons(net: Network, keep: list[np.ndarray]) -> Network:
    """``net`` with hidden layer l reduced to the units ``keep[l]`` (a gated chain: its units
    ``keep[0]``; an inverted block: its channels ``keep[0]``)."""
    if isinstance(net, GatedNet):
        (rows,) = keep
        return core_gated.select(net, rows)
    if isinstance(net, InvertedNet):
        (rows,) = keep
        return core_inverted.select(net, rows)
    layers = []
    prev = None  # kept indices of the layer before
    for i, l in enumerate(net.layers):
        rows = keep[i] if i < len(keep) else np.arange(l.out_features)
        w = l.weight[rows]
        b = l.bias[rows].copy()
        if prev is not None:
            w = w[:, unit_columns(prev, l.taps)]
            if i - 1 in net.meta.get("post", {}):
                b -= _shift_of_removed(l, prev, *net.meta["post"][i - 1])[rows]
        layers.append(l.with_weights(np.ascontiguousarray(w), b))
        prev = rows
    meta = dict(net.meta)
    if "post" in meta:  # a kept unit keeps its affine after the activation (models.surgery.feed_map)
        meta["post"] = {h: (S[keep[h]], T[keep[h]]) for h, (S, T) in meta["post"].items()}
    return Network(layers, dtype=net.dtype, meta=meta)


def _shift_of_removed(layer, kept: np.ndarray, S: np.ndarray, T: np.ndarray) -> np.ndarray:
    """What the units not in ``kept`` add to ``layer``'s bias through their affine after the
    activation (folded: ``b' = b + W T``, ``W' = W S``): taken out with them, so a pruned model is
    the original minus whole units, zero-padded borders included."""
    gone = np.setdiff1d(np.arange(len(S)), kept)
    W = layer.weight.reshape(layer.out_features, len(S), layer.taps)[:, gone]
    return np.einsum("oct,c->o", W / np.where(S[gone] != 0, S[gone], 1.0)[None, :, None], T[gone])


def structured_prune(model: nn.Module, amount: float, score: str = "norm", calibration=None) -> Pruned:
    """Remove the lowest-scoring ``amount`` fraction of the units of every group."""
    amount = check_amount(amount)
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    cap = units(model)
    norms = cap.unit_norms(as_calibration(cap, calibration)) if score == "wanda" else [None] * len(cap.nets)
    nets, maps = [], []
    for net, h in zip(cap.nets, norms):
        scores = neuron_scores(net, score, h)
        keep = [keep_indices(s, n_kept(len(s), amount)) for s in scores]
        nets.append(select_neurons(net, keep))
        maps.append(maps_of(keep, [len(s) for s in scores]))
    return finish(cap, nets, f"structured-{score}", amount, True, maps)


def _counter(model: nn.Module, score: str = "norm", calibration=None):
    if score not in SCORES:
        raise InvalidArgumentError(f"score must be one of {SCORES}, got {score!r}")
    if score == "wanda":
        as_calibration(units(model), calibration)  # fail early, not after the search
    return dense_counter(model)
