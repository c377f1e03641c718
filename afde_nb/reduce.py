"""The quotient network of a partition (method.md §4, §5).

Each block B of a hidden layer becomes one neuron. With ``c_k`` the scale of source neuron k
(1 for polynomial activations), let ``R_iB' = sum_{k in B'} W_ik c_k`` be neuron i's incoming
row against the (already reduced) source layer. Then

* polynomial activation: the merged row is the mean of ``R_i`` (and of ``b_i``) over B, ``c_i = 1``;
  the merged neuron is the block mean, so its outgoing column is the block's column sum;
* ReLU family: ``c_i = ||(R_i, b_i)||_2`` and the merged row is ``sum_{i in B} (R_i, b_i) / sum c_i``,
  so ``h_i = c_i v_B`` exactly when the rows are proportional, and the outgoing column is
  ``sum_i c_i W'_{:,i}``.

Both are exact for an exact equivalence; for eps > 0 they are the lumped approximation.
"""
from __future__ import annotations

import numpy as np

from .errors import ShapeMismatchError
from .network import HOMOGENEOUS, Layer, Network


def _singletons(labels: np.ndarray) -> bool:
    return bool(np.array_equal(labels, np.arange(labels.size)))


def _block_sums(A: np.ndarray, labels: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """Sums of ``scale``-weighted slices of ``A`` along ``axis``, one per block (blocks 0..k-1,
    none empty): O(A.size), where a dense one-hot product would cost O(A.size * k)."""
    k = int(labels.max()) + 1 if labels.size else 0
    if _singletons(labels) and np.all(scale == 1.0):
        return np.asarray(A, dtype=np.float64)  # nothing to sum: A itself (callers never write to it)
    shape = [1, 1]
    shape[axis] = -1
    W = A * scale.reshape(shape)
    if k == 0:
        out_shape = list(A.shape)
        out_shape[axis] = 0
        return np.zeros(out_shape)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(k))
    return np.add.reduceat(np.take(W, order, axis=axis), starts, axis=axis)


def reduce(net: Network, labels: list[np.ndarray] | tuple[np.ndarray, ...]) -> Network:
    """The network whose hidden neurons are the blocks of ``labels`` (one array per hidden layer)."""
    if len(labels) != len(net.hidden):
        raise ShapeMismatchError(f"need one label array per hidden layer ({len(net.hidden)}), got {len(labels)}")
    net.check_finite()
    n0 = net.widths[0]
    src_labels, src_scale = np.arange(n0), np.ones(n0)
    out: list[Layer] = []
    for h, layer in enumerate(net.layers):
        R = _block_sums(layer.weight, src_labels, src_scale, axis=1)
        b = layer.bias
        if h == len(net.hidden):  # outputs are never merged
            out.append(Layer(R, b, layer.activation, layer.negative_slope, layer.has_bias, layer.path))
            break
        lab = np.asarray(labels[h], dtype=np.int64)
        if lab.shape != (layer.out_features,):
            raise ShapeMismatchError(
                f"labels for hidden layer {h} have shape {lab.shape}, expected ({layer.out_features},)")
        k = int(lab.max()) + 1 if lab.size else 0
        if lab.size and (lab.min() < 0 or np.bincount(lab, minlength=k).min() == 0):
            raise ShapeMismatchError(f"labels for hidden layer {h} must number blocks 0..k-1 with none empty")
        ones = np.ones(lab.size)
        if layer.activation in HOMOGENEOUS:
            scale = np.sqrt(np.einsum("ij,ij->i", R, R) + b * b)  # norm of the row (R_i, b_i)
            total = np.bincount(lab, weights=scale, minlength=k)
            denom = np.where(total > 0, total, 1.0)
        else:
            scale = ones
            denom = np.bincount(lab, minlength=k).astype(float)
        if layer.activation not in HOMOGENEOUS and _singletons(lab):  # nothing merged, nothing to do
            W_new, b_new = R, b
        else:
            W_new = _block_sums(R, lab, ones, axis=0) / denom[:, None]
            b_new = np.bincount(lab, weights=b, minlength=k) / denom
        out.append(Layer(W_new, b_new, layer.activation, layer.negative_slope, layer.has_bias, layer.path))
        src_labels, src_scale = lab, scale
    return Network(out, dtype=net.dtype, meta=dict(net.meta))
