"""k-means neuron folding (model folding: Wang et al., ICLR 2025, "Forget the Data and
Fine-Tuning! Just Fold the Network to Compress"), data-free, without the paper's variance repair,
on the groups afde-nb lumps (a plain stack's hidden layers; any model's chains of groups, a
convolution's unit a channel with its kernel as its row, a BatchNorm folded).

Hidden layers are folded front to back, chain by chain. In hidden layer l the neurons are clustered by their
incoming rows ``(W_l[i, :], b_l[i])`` -- computed against the already folded layer l-1 -- into
``k = max(1, round((1 - amount) * n))`` clusters by k-means (Lloyd's algorithm, k-means++ init,
numpy, seeded). Each cluster becomes one neuron with the mean incoming row and bias; its
outgoing column is the sum of the members' columns of ``W_{l+1}``. Exact duplicate neurons always
share a cluster, so folding them is lossless. Folded neurons are ordered by their first member.

A gated MLP's units (``h_i = act(g_i x + c_i)(u_i x + d_i)``, outgoing column ``v_i``) are folded by
the same rule applied to both incoming rows: clustered by ``(g_i, c_i, u_i, d_i)``, the gate and up
rows with their biases side by side, raw as an ordinary unit's row (no normalisation: the up row's
scale is part of what a unit computes, as an ordinary row's is), and each cluster becomes one unit
with the mean gate row and bias, the mean up row and bias and the summed down columns. Units with
equal gate and up rows always share a cluster and fold losslessly; units whose up rows are only
proportional (which afde-nb merges exactly) are folded only when k-means puts them together, and
then not exactly (the product of the means is not the mean of the products).

An inverted-residual block's channels (producer row, depthwise kernel, SE fc2 row; consumer and fc1
columns; BatchNorms folded) are folded by the same rule on all three incoming rows: clustered by
``(P_c, p_c, K_c, q_c, F2_c, r_c)`` side by side, raw, and each cluster becomes one channel with the
mean rows and the summed consumer and fc1 columns (the SE's mean then sees the folded channel once
per member). That is the block's quotient by the k-means labels with equal weights,
:func:`afde_nb.core.inverted.quotient`: a channel alone in its cluster is kept bit for bit (its
unfolded BatchNorm entries too), and a silent channel (zero consumer and fc1 columns: nothing reads
it) is left out of its cluster's mean. Channels with equal rows always share a cluster and fold
losslessly.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ...core import inverted as core_inverted
from ...core.gated import GatedNet
from ...core.inverted import InvertedNet
from ...core.network import Network
from ...core.reduce import Block, merged_affine
from ...errors import InvalidArgumentError
from ._common import Pruned, check_amount, dense_counter, finish, n_kept, units


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, (len(x), len(c)), never negative."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _weighted_means(x: np.ndarray, w: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x * w[:, None])
    return sums / np.bincount(labels, weights=w, minlength=k)[:, None]


def _kmeans_distinct(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator,
                     max_iter: int) -> np.ndarray:
    """Weighted Lloyd on distinct points ``x`` (weights ``w``: multiplicities), ``k <= len(x)``;
    labels with no empty cluster."""
    u = len(x)
    # k-means++: first centre by weight, then with probability ~ w * D^2
    chosen = [int(rng.choice(u, p=w / w.sum()))]
    d2 = _sqdist(x, x[chosen])[:, 0]
    for _ in range(1, k):
        p = w * d2
        p[chosen] = 0.0
        s = p.sum()
        if s > 0:
            nxt = int(rng.choice(u, p=p / s))
        else:  # remaining points coincide numerically with centres: take the first free one
            nxt = int(np.setdiff1d(np.arange(u), chosen)[0])
        chosen.append(nxt)
        d2 = np.minimum(d2, _sqdist(x, x[[nxt]])[:, 0])
    centers = x[chosen].copy()
    labels = None
    for _ in range(max_iter):
        d = _sqdist(x, centers)
        new = d.argmin(axis=1)
        # an empty cluster takes the point farthest from its centre among clusters of >= 2 points
        for c in range(k):
            sizes = np.bincount(new, minlength=k)
            if sizes[c] > 0:
                continue
            own = d[np.arange(u), new]
            own = np.where(sizes[new] >= 2, own, -1.0)
            new[int(own.argmax())] = c
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centers = _weighted_means(x, w, labels, k)
    return labels


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """Cluster the rows of ``x`` into exactly ``k`` non-empty clusters (``1 <= k <= len(x)``).

    Lloyd's algorithm with k-means++ initialisation, deterministic for a given ``seed``. Identical
    rows always get the same label, except when ``k`` exceeds the number of distinct rows: then
    every distinct row has its own cluster and the extra clusters take repeated rows. Labels are
    numbered in order of each cluster's first row.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"k must be in [1, {n}], got {k}")
    distinct, first, inverse, counts = np.unique(x, axis=0, return_index=True, return_inverse=True,
                                                 return_counts=True)
    inverse = inverse.reshape(-1)
    # distinct rows in order of first appearance (independent of np.unique's sort)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    distinct, counts, inverse = distinct[order], counts[order], rank[inverse]
    u = len(distinct)
    if k >= u:
        labels = inverse.copy()
        seen = np.zeros(u, dtype=bool)
        extra = u
        for i in range(n):  # repeated rows, in order, open the clusters beyond u
            if extra == k:
                break
            if seen[inverse[i]]:
                labels[i] = extra
                extra += 1
            seen[inverse[i]] = True
    else:
        rng = np.random.default_rng(seed)
        labels = _kmeans_distinct(distinct, counts.astype(np.float64), k, rng, max_iter)[inverse]
    # renumber by first member
    _, first_of = np.unique(labels, return_index=True)
    relabel = np.empty(k, dtype=np.int64)
    relabel[np.argsort(first_of, kind="stable")] = np.arange(k)
    return relabel[labels]


def fold_layer(net: Network, l: int, labels: np.ndarray) -> Network:
    """``net`` with the neurons of hidden layer ``l`` merged by ``labels``: mean incoming row and
    bias, summed outgoing column."""
    k = int(labels.max()) + 1
    layer, nxt = net.layers[l], net.layers[l + 1]
    onehot = np.zeros((k, layer.out_features))
    onehot[labels, np.arange(layer.out_features)] = 1.0
    sizes = onehot.sum(axis=1)
    w = (onehot @ layer.weight) / sizes[:, None]
    b = (onehot @ layer.bias) / sizes
    t = nxt.taps
    w_next = np.einsum("oit,ki->okt", nxt.weight.reshape(len(nxt.weight), -1, t), onehot).reshape(len(nxt.weight), -1)
    layers = list(net.layers)
    layers[l] = layer.with_weights(w, b)
    layers[l + 1] = nxt.with_weights(w_next, nxt.bias.copy())
    meta = dict(net.meta)
    if l in meta.get("post", {}):  # the folded units' affine after the activation, merged as the quotient merges it
        ones = np.ones(layer.out_features)
        meta["post"] = {**meta["post"], l: merged_affine(Block(labels, ones, ones, ones, 0.0), *meta["post"][l])}
    return Network(layers, dtype=net.dtype, meta=meta)


def fold_gated(net: GatedNet, labels: np.ndarray) -> GatedNet:
    """The gated layer ``net`` with its units merged by ``labels``: mean gate and up rows (with
    their biases), summed down columns."""
    k = int(labels.max()) + 1
    n = net.gate.out_features
    onehot = np.zeros((k, n))
    onehot[labels, np.arange(n)] = 1.0
    sizes = onehot.sum(axis=1)
    g, u, d = net.gate, net.up, net.down
    mean = [((onehot @ l.weight) / sizes[:, None], (onehot @ l.bias) / sizes) for l in (g, u)]
    return net.with_units(mean[0], mean[1], (np.asarray(d.weight, dtype=np.float64) @ onehot.T, np.array(d.bias)))


def _incoming(layers) -> np.ndarray:
    """The rows a unit is clustered by: its incoming rows, each with its bias where the layer has one."""
    return np.column_stack([a for l in layers for a in ((l.weight, l.bias) if l.has_bias else (l.weight,))])


def fold_prune(model: nn.Module, amount: float, seed: int = 0, max_iter: int = 300) -> Pruned:
    """Fold every group to ``max(1, round((1 - amount) * n))`` units by k-means on the incoming
    rows (weights + bias; a gated unit's gate and up rows together; an inverted channel's producer,
    depthwise and fc2 rows together), front to back; returns a smaller dense copy."""
    amount = check_amount(amount)
    cap = units(model)
    nets, maps = [], []
    for net in cap.nets:
        if isinstance(net, GatedNet):  # one layer of units, gate and up rows together
            labels = kmeans(_incoming((net.gate, net.up)), n_kept(net.gate.out_features, amount), seed=seed,
                            max_iter=max_iter)
            nets.append(fold_gated(net, labels))
            maps.append([(labels, 1.0 / np.bincount(labels)[labels])])
            continue
        if isinstance(net, InvertedNet):  # one layer of channels, its three incoming rows together
            parts = (net.producer, net.dw) + ((net.fc2,) if net.se else ())
            labels = kmeans(_incoming(parts), n_kept(net.channels, amount), seed=seed, max_iter=max_iter)
            nets.append(core_inverted.quotient(net, labels)[0])
            maps.append([(labels, 1.0 / np.bincount(labels)[labels])])
            continue
        m = []
        for l in range(len(net.layers) - 1):
            layer = net.layers[l]
            labels = kmeans(_incoming((layer,)), n_kept(layer.out_features, amount), seed=seed, max_iter=max_iter)
            m.append((labels, 1.0 / np.bincount(labels)[labels]))  # a folded unit is its cluster's mean
            net = fold_layer(net, l, labels)
        nets.append(net)
        maps.append(m)
    return finish(cap, nets, "folding", amount, True, maps)


def _counter(model: nn.Module, seed: int = 0, max_iter: int = 300):
    return dense_counter(model)
