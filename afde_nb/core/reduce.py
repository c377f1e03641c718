"""The quotient network of a partition (method.md §4, §5, §8.1, §8.4).

Each block B of a hidden layer becomes one neuron u_B. Neuron i of B has orientation s_i (+1, or
-1 under the activation's symmetry) and scale c_i (its row norm for ReLU-like activations, else
1); its aligned row is a_i = s_i (R_i, b_i) / c_i, where R_i is its incoming row against the
already reduced source layer (:func:`afde_nb.core.path.incoming`). Then

* the merged row is ``sum_B m_i a_i / sum_B m_i`` with masses m_i (``Partition.weights``; by
  default c_i, i.e. the plain mean for polynomial activations, the first release's rule);
* neuron i is read back as ``h_i = s_i c_i u_B`` (tanh, identity, ReLU family) or, for a sigmoid
  with s_i = -1, ``h_i = 1 - u_B``; so the next layer's column of u_B is ``sum s_i c_i v_i`` and a
  flipped sigmoid moves ``v_i`` into the next layer's bias.

Exact for an exact equivalence (symmetries included); for eps > 0 it is the lumped approximation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeMismatchError
from .. import _core
from .network import HOMOGENEOUS, Layer, Network, column_map, engine_layer
from .path import Source


def _check_labels(lab: np.ndarray, h: int, n: int) -> int:
    if lab.shape != (n,):
        raise ShapeMismatchError(f"labels for hidden layer {h} have shape {lab.shape}, expected ({n},)")
    k = int(lab.max()) + 1 if lab.size else 0
    if lab.size and (lab.min() < 0 or np.bincount(lab, minlength=k).min() == 0):
        raise ShapeMismatchError(f"labels for hidden layer {h} must number blocks 0..k-1 with none empty")
    return k


@dataclass
class Block:
    """How one reduced hidden layer stands for the original one: neuron i is in block
    ``labels[i]`` with orientation ``signs[i]``, scale ``scales[i]`` and mass ``weights[i]``;
    ``spread`` is the largest distance of an aligned row from its merged row (0: exact)."""

    labels: np.ndarray
    signs: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    spread: float

    def target_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, coef): the merged neuron's pre-activation stands for sum_i coef_i z_i, the
        mass-weighted mean of its members' aligned pre-activations s_i z_i / c_i (repair's target)."""
        k = int(self.labels.max()) + 1 if self.labels.size else 0
        m = self.weights
        tot = np.bincount(self.labels, weights=m, minlength=k)
        cnt = np.bincount(self.labels, minlength=k)
        m = np.where(tot[self.labels] > 0, m, 1.0)
        tot = np.where(tot > 0, tot, cnt)
        return self.labels, m * self.signs / np.where(self.scales > 0, self.scales, 1.0) / tot[self.labels]


def reduce(net: Network, labels, signs=None, weights=None) -> Network:
    """The network whose hidden neurons are the blocks of ``labels`` (a
    :class:`~afde_nb.lump.Partition`, whose signs and weights are then used, or one label array per
    hidden layer)."""
    return quotient(net, labels, signs, weights)[0]


def quotient(net: Network, labels, signs=None, weights=None, threads: int = 0) -> tuple[Network, list[Block]]:
    """:func:`reduce`, also returning how each reduced hidden layer stands for the original.

    Each layer is written once, by the engine (``_core.quotient_layer``), into fresh arrays of the
    weight's dtype (float32 stays float32; sums in double): the column merge of the reduced source
    layer and the row merge of this layer's blocks in one pass over the weights, read in place. The
    result owns its arrays (``Network.owned``), so ``to_torch`` can take them over uncopied; it
    never aliases ``net``. ``tests/reference.py`` keeps the numpy version this replaced."""
    if hasattr(labels, "labels"):
        part = labels
        labels = part.labels
        signs = part.signs if signs is None else signs
        weights = part.weights if weights is None else weights
    if len(labels) != len(net.hidden):
        raise ShapeMismatchError(f"need one label array per hidden layer ({len(net.hidden)}), got {len(labels)}")
    net.check_finite()
    src = Source.inputs(net.widths[0])
    out: list[Layer] = []
    blocks: list[Block] = []
    for h, layer in enumerate(net.layers):
        W, b = engine_layer(layer)
        cl, cc, cf, kc = column_map(src.labels, src.signs, src.scales, src.activation, layer.taps)
        n = layer.out_features
        if h == len(net.hidden):  # outputs are never merged
            M, bo, *_ = _core.quotient_layer(W, b, cl, cc, cf, kc, np.arange(n), n, None, False, None, threads)
            out.append(layer.with_weights(M, bo))
            break
        lab = np.asarray(labels[h], dtype=np.int64)
        k = _check_labels(lab, h, n)
        s = np.ones(n, dtype=np.int64) if signs is None or signs[h] is None else np.asarray(signs[h], dtype=np.int64)
        if s.shape != (n,) or not np.all(np.abs(s) == 1):
            raise ShapeMismatchError(f"signs for hidden layer {h} must be {n} values of +1 or -1")
        m = None if weights is None or weights[h] is None else np.asarray(weights[h], dtype=np.float64)
        if m is not None and m.shape != (n,):
            raise ShapeMismatchError(f"weights for hidden layer {h} must have shape ({n},)")
        M, bo, c, m, diff, amax = _core.quotient_layer(W, b, cl, cc, cf, kc, lab, k, s,
                                                       layer.activation in HOMOGENEOUS, m, threads)
        out.append(layer.with_weights(M, bo))
        src = Source(lab, s, c, layer.activation)
        blocks.append(Block(lab, s, c, m, float(diff) / (float(amax) or 1.0)))
    meta = dict(net.meta)
    if "post" in meta:
        meta["post"] = {h: merged_affine(blocks[h], *st) for h, st in meta["post"].items()}
    return Network(out, dtype=net.dtype, meta=meta, owned=True), blocks


def merged_affine(block: Block, S: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-unit affine ``y = S a + T`` that a hidden layer's units pass after their activation
    (``Network.meta["post"]``: folded into the next layer, ``W' = W S``), for the merged units of
    ``block``: unit i reads ``a_i = s_i c_i a_B``, so its zero-padded value ``-T_i / S_i`` is
    ``a_B``'s at ``r_i = s_i T_i / (c_i S_i)``; the merged unit gets the mass-weighted mean ratio
    ``r_B`` with ``S_B`` the mean scale (``T_B = S_B r_B``). Exact where the members' ratios are
    equal (a singleton always); the write-back divides the folded column by ``S_B``."""
    k = int(block.labels.max()) + 1 if block.labels.size else 0
    lab, m = block.labels, np.where(block.weights > 0, block.weights, 0.0)
    tot = np.bincount(lab, weights=m, minlength=k)
    m = np.where(tot[lab] > 0, m, 1.0)
    tot = np.bincount(lab, weights=m, minlength=k)
    c = np.where(block.scales > 0, block.scales, 1.0)
    ok = S != 0
    r = np.where(ok, block.signs * T / (c * np.where(ok, S, 1.0)), 0.0)
    S_B = np.bincount(lab, weights=m * S, minlength=k) / tot
    size = np.bincount(lab, weights=m * np.abs(S), minlength=k) / tot
    S_B = np.where(np.abs(S_B) > 1e-3 * size, S_B, size)  # opposite signs cancelling: the mean size
    r_B = np.bincount(lab, weights=m * r, minlength=k) / tot
    plain = (block.signs == 1) & (c == 1.0)
    single = (np.bincount(lab, minlength=k) == 1) & (np.bincount(lab, weights=plain, minlength=k) == 1)
    first = np.full(k, -1)
    first[lab[::-1]] = np.arange(len(lab))[::-1]
    # a unit alone, neither flipped nor rescaled, keeps its own (S, T) bit for bit
    return np.where(single, S[first], S_B), np.where(single, T[first], S_B * r_B)
