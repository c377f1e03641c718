"""Chains of groups (:mod:`afde_nb.models.groups`) as plain networks, and back into the user's model.

A chain ``P0 -> act0 -> P1 -> act1 -> ... -> Pk`` reads as a :class:`~afde_nb.core.network.Network`
whose layer i is producer P_i with its BatchNorm folded in (eval statistics) and the last layer
the final consumer, every weight held as (out, in * taps) -- a convolution's kernel positions are
its taps. The engine lumps it like any MLP; :func:`write_back` then puts the smaller weights into
the model's own parameters (a copy's), so the model keeps its class, its forward and every other
layer. A folded BatchNorm is left in place as an identity (unit scale, zero shift, variance
1 - eps) that carries the merged bias in its running mean when the producer has no bias. A Linear
stored transposed (Hugging Face's ``Conv1D``, weight (in, out)) is read and written through its
transpose, its ``nf``/``nx`` kept in step.

Layer inputs on probe data come from the model itself (forward hooks, or an fx Interpreter for a
``torch.export`` program): a Linear's input rows, a convolution's patches (``unfold``). Inputs are
a tensor (the first argument) or a :class:`Batch` of keyword tensors.
"""
from __future__ import annotations

import copy
import heapq
import math
import weakref
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
import torch.fx as fx
import torch.fx._pytree as fx_pytree
from torch import nn

from ..errors import ShapeMismatchError, UnsupportedLayerError
from .export import quiet_leafspec
from . import indexmap
from .groups import Affine, Group, Norm
from .params import finite_array as _np, get_tensor, set_tensor, weight
from ..core.network import Layer, Network

#: probe rows kept per layer input (patches of a convolution are subsampled to this many)
MAX_ROWS = 4096
PSEUDO = 512


def taps(root: nn.Module, a: Affine) -> int:
    w = weight(root, a)
    return int(math.prod(w.shape[2:])) if w.dim() > 2 else 1


def _affine_layer(root: nn.Module, a: Affine, norm: Norm | None, group: Group | None, units_in: int | None,
                  feed: Group | None = None) -> Layer:
    """Layer view of ``a``; ``units_in``: the units feeding it (the previous chain layer's outputs),
    which fix its taps: a convolution's kernel size, or the positions per channel of a Linear
    reading flattened channels; ``feed``: the group whose units it reads (their column layout and a
    per-unit affine after their activation, folded in: :func:`feed_map`)."""
    w = weight(root, a)
    W = _np(w, a.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, a.bias), a.bias) if a.bias else np.zeros(w.shape[0])
    if a.cols is not None:
        # a slice of a concatenation's consumer: its columns, and no bias (the consumer's own, shared
        # by every slice; a refit's shift of it is what the slice's bias becomes, :func:`write_back`)
        W, b = slice_rows(W, a), np.zeros(w.shape[0])
    if norm is not None:
        mean, scale, beta = _norm_parts(root, norm)
        W, b = W * scale[:, None], (b - mean) * scale + beta
    act = group.activation if group else "identity"
    t = taps(root, a)
    if units_in is not None:
        if W.shape[1] % units_in:
            raise UnsupportedLayerError(f"{a.name} takes {W.shape[1]} inputs, not a multiple of the {units_in} units feeding it")
        t = W.shape[1] // units_in
    if feed is not None:
        perm, S, T = feed_map(root, feed, units_in, t)
        if perm is not None:
            W = W[:, perm]
        if S is not None:
            Wc = W.reshape(len(W), units_in, t)
            b = b + np.einsum("ict,c->i", Wc, T)
            W = (Wc * S[None, :, None]).reshape(len(W), -1)
    return Layer(W, b, act, group.negative_slope if group else 0.01,
                 has_bias=bool(a.bias or norm or (feed is not None and feed.post is not None)), path=a.name,
                 taps=t, act_params=group.act_params if group else ())


def _norm_parts(root: nn.Module, norm: Norm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale gamma / sqrt(var + eps), beta) of an eval BatchNorm (float64)."""
    mean, var = _np(get_tensor(root, norm.mean), norm.mean), _np(get_tensor(root, norm.var), norm.var)
    gamma = _np(get_tensor(root, norm.weight), norm.weight) if norm.weight else np.ones_like(mean)
    beta = _np(get_tensor(root, norm.bias), norm.bias) if norm.bias else np.zeros_like(mean)
    if norm.cols is not None:  # the units' entries of a BatchNorm over a concatenation
        mean, var, gamma, beta = (v[norm.cols[0]:norm.cols[1]] for v in (mean, var, gamma, beta))
    return mean, gamma / np.sqrt(var + norm.eps), beta


def norm_affine(root: nn.Module, norm: Norm) -> tuple[np.ndarray, np.ndarray]:
    """(S, T) of an eval BatchNorm read as y = S x + T (float64)."""
    mean, scale, beta = _norm_parts(root, norm)
    return scale, beta - mean * scale


def feed_map(root: nn.Module, g: Group, units: int, t: int) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                       np.ndarray | None]:
    """How a consumer reads group ``g``'s ``units`` (``t`` columns each): the permutation to
    channel-major columns (None: they are), and the per-unit affine after the activation (S, T;
    None: none). The network folds it in, ``W' = W S``, ``b' = b + W T``, so the units' values are
    their activations ``a`` and the consumer's input rows are read back as ``(y - T) / S``: the same
    consumer output for every row, a zero-padded one too (where ``a`` reads ``-T / S``)."""
    perm = indexmap.channel_major(units, t, g.inner)
    if g.post is None:
        return perm, None, None
    S, T = norm_affine(root, g.post)
    return perm, S, T


def unit_rows(root: nn.Module, g: Group, R: np.ndarray, units: int) -> np.ndarray:
    """A consumer's input rows ``R`` (model layout, ``units`` units) as the chain's network reads
    them (:func:`feed_map`): channel-major, the post-activation affine undone."""
    t = R.shape[1] // units
    perm, S, T = feed_map(root, g, units, t)
    if perm is not None:
        R = R[:, perm]
    if S is not None:
        safe = np.where(S != 0, S, 1.0)
        R = ((R.reshape(len(R), units, t) - T[None, :, None]) / safe[None, :, None]).reshape(len(R), -1)
    return np.ascontiguousarray(R)


def chain_network(root: nn.Module, chain: list[Group]) -> Network:
    """The chain as a network: producers (norms folded) with their activations, then the last
    consumer (a per-unit affine after an activation folded into the layer reading it; its (S, T)
    per hidden layer in ``meta["post"]``, which :func:`~afde_nb.core.reduce.quotient` merges and
    :func:`write_back` writes)."""
    layers: list[Layer] = []
    post = {}
    for k, a in enumerate(chain_affines(chain)):
        g = chain[k] if k < len(chain) else None
        prev = chain[k - 1] if k else None
        units = int(weight(root, prev.producer).shape[0]) if prev else None
        if prev is not None and not prev.flatten and prev.producer.kind == a.kind:
            have = int(weight(root, a).shape[1]) if a.cols is None else a.cols[1] - a.cols[0]
            if have != units:
                raise UnsupportedLayerError(f"{a.name} takes {have} inputs but {prev.producer.name} gives {units}")
        if g is None and fanned(prev):
            layer, stacked = _stacked_layer(root, prev)
            layers.append(layer)
            continue
        layers.append(_affine_layer(root, a, g.norm if g else None, g, units, feed=prev))
        if prev is not None and prev.post is not None:
            post[k - 1] = norm_affine(root, prev.post)
    dtype = str(get_tensor(root, chain[0].producer.weight).dtype).replace("torch.", "")
    # a max-pool between a layer and its consumer does not commute with negation
    unsigned = tuple(k for k, g in enumerate(chain) if not g.negation_ok)
    meta = {"unsigned": unsigned} if unsigned else {}
    if fanned(chain[-1]):
        meta["stacked"] = stacked
    if post:
        meta["post"] = post
    return Network(layers, dtype=dtype, meta=meta)


def chain_affines(chain: list[Group]) -> list[Affine]:
    return [g.producer for g in chain] + [chain[-1].consumer]


def fanned(g) -> bool:
    """Whether group ``g``'s units fan out to several consumers (``Group.more``)."""
    return bool(getattr(g, "more", ()))


def _stacked_layer(root: nn.Module, g: Group) -> tuple[Layer, list[tuple[int, int]]]:
    """The consumers of units that fan out as one layer: each consumer's slice of columns, every
    kernel tap (or flattened position) of it a row of its own reading the units' values at one
    position, stacked; so a merge's error is bounded on every consumer at once, and the quotient
    merges every consumer's columns alike. Also (rows, columns per unit) of each consumer, which
    :func:`_write_fanned` splits the reduced layer by (``meta["stacked"]``)."""
    blocks, shapes = [], []
    for c in g.consumers:
        w = weight(root, c)
        W = slice_rows(_np(w, c.weight).reshape(w.shape[0], -1), c)
        units = c.cols[1] - c.cols[0]
        per = W.shape[1] // units
        blocks.append(W.reshape(len(W), units, per).transpose(0, 2, 1).reshape(-1, units))
        shapes.append((int(len(W)), int(per)))
    W = np.concatenate(blocks)
    return Layer(W, np.zeros(len(W)), "identity", has_bias=False, path=g.consumer.name), shapes


#: the suffix of the key under which a fanned group's units are captured (their values, not patches)
UNITS = "#units"


def unit_values(t: torch.Tensor, a: Affine, seed: int = 0) -> np.ndarray:
    """Units' values at single positions, one row each (at most :data:`MAX_ROWS`, drawn with
    ``seed``), from consumer ``a``'s input ``t``: a fanned group's stacked layer reads them
    (:func:`_stacked_layer`)."""
    t = slice_input(t.detach().cpu(), a)
    units = a.cols[1] - a.cols[0]
    if a.kind == "linear":
        R = t.reshape(len(t), units, -1).transpose(1, 2).reshape(-1, units) if t.dim() == 2 else t.reshape(-1, units)
    else:
        R = t.transpose(0, 1).reshape(units, -1).T
    if len(R) > MAX_ROWS:
        R = R[torch.from_numpy(_drawn(len(R), seed))]
    return np.ascontiguousarray(R.to(torch.float64).numpy())


def slice_rows(R, a: Affine):
    """The columns of a layer's input rows ``R`` (or of its weight as (out, in * taps)) that layer
    ``a`` reads as one slice of a concatenation (``a.cols``: units start..stop of total, each a run
    of ``R.shape[1] / total`` columns); ``R`` itself where ``a`` reads all of them."""
    if a.cols is None:
        return R
    start, stop, total = a.cols
    if R.shape[1] % total:
        raise UnsupportedLayerError(f"{a.name} takes {R.shape[1]} inputs, not a multiple of the {total} units "
                                    "concatenated into it")
    per = R.shape[1] // total
    return R[:, start * per:stop * per]


def slice_input(t: torch.Tensor, a: Affine) -> torch.Tensor:
    """Layer ``a``'s input tensor ``t`` cut to the units it reads as a slice of a concatenation (a
    convolution's channels, a Linear's last axis in runs of ``in / total``)."""
    if a.cols is None:
        return t
    start, stop, total = a.cols
    if a.kind != "linear":
        return t[:, start:stop]
    return t.reshape(*t.shape[:-1], total, -1)[..., start:stop, :].flatten(-2)


def write_order(chains: list) -> list[int]:
    """Chain indices in the order their writing composes (:func:`write_back`): a chain that writes
    a slice of a layer's columns (its last consumer reads a concatenation) before the chain whose
    producer that layer is (which merges the layer's rows as the slices left them), and the slices
    of one layer in any order (:func:`_live` finds where each now stands). Otherwise the chains'
    own order."""
    first = {c[0].producer.weight: k for k, c in enumerate(chains)}
    after: dict[int, set] = {k: set() for k in range(len(chains))}
    for k, c in enumerate(chains):
        for a in getattr(c[-1], "consumers", (c[-1].consumer,)):
            if a.cols is not None and a.weight in first and first[a.weight] != k:
                after[first[a.weight]].add(k)
    if not any(after.values()):
        return list(range(len(chains)))
    waiting = {k: len(v) for k, v in after.items()}
    before: dict[int, list] = {}
    for k, v in after.items():
        for j in v:
            before.setdefault(j, []).append(k)
    ready = [k for k, n in waiting.items() if not n]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:  # the lowest-numbered chain whose slices are all written (Kahn's order)
        k = heapq.heappop(ready)
        order.append(k)
        for j in before.get(k, ()):
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, j)
    # a cycle (which a model's graph does not make) keeps the chains' own order for what is left
    return order + [k for k in range(len(chains)) if waiting[k]]


def unit_cost(layer: Layer, a: Affine, norm: Norm | None, post: Norm | None = None) -> tuple[int, int]:
    """(parameters per (input unit x output unit), parameters per output unit) of a chain layer:
    its taps; its bias and its norms' scales and shifts (before and after the activation)."""
    per_out = (1 if a.bias else 0) + (2 if norm is not None and norm.weight else 0) + \
        (2 if post is not None and post.weight else 0)
    return layer.taps, per_out


# ---------------------------------------------------------------------------------------------
# writing back


def write_back(root: nn.Module, chain: list[Group], small: Network) -> None:
    """Put the reduced chain ``small`` into ``root`` (modified in place: pass a copy)."""
    affines = chain_affines(chain)
    for k, (a, layer) in enumerate(zip(affines, small.layers)):
        norm = chain[k].norm if k < len(chain) else None
        old = get_tensor(root, a.weight)
        if k and fanned(chain[k - 1]):
            _write_fanned(root, chain[k - 1], layer, small.meta["stacked"])
            continue
        if k and a.cols is not None:
            _write_slice(root, a, _unfed(root, chain[k - 1], small, k, layer), _unfed_bias(root, chain[k - 1], small,
                                                                                          k, layer), layer.taps)
            continue
        if not k and _rewritten(root, a):
            W2, b2 = _merged_rows(root, a, norm, small)
        else:
            W2 = _unfed(root, chain[k - 1], small, k, layer) if k else layer.weight
            b2 = _unfed_bias(root, chain[k - 1], small, k, layer) if k else layer.bias.copy()
        W = torch.from_numpy(np.ascontiguousarray(W2))
        if old.dim() > 2:
            W = W.reshape(layer.out_features, -1, *old.shape[2:])
        set_tensor(root, a.weight, W.t().contiguous() if a.transposed else W)
        b = torch.from_numpy(b2)
        if a.bias:
            set_tensor(root, a.bias, b)
        if norm is not None:
            n = layer.out_features
            one = torch.ones(n, dtype=torch.float64)
            put = set_tensor if norm.cols is None else lambda r, path, v: _splice(r, norm, path, v)
            if norm.weight:
                put(root, norm.weight, one)
            if norm.bias:
                put(root, norm.bias, torch.zeros(n, dtype=torch.float64))
            # identity normalisation: (x - mean) / sqrt(var + eps) with var + eps = 1; the bias,
            # when the producer has none to hold it, rides in the mean as its negative
            put(root, norm.mean, torch.zeros(n, dtype=torch.float64) if a.bias else -b)
            put(root, norm.var, one * (1.0 - norm.eps))
            _set_width(root, norm.name, "num_features", len(get_tensor(root, norm.mean)))
        if a.module:
            m = root.get_submodule(a.module)
            if isinstance(m, nn.Linear):
                m.in_features, m.out_features = int(W.shape[1]), layer.out_features
            elif a.transposed:  # Hugging Face's Conv1D: its forward shapes its output by nf
                m.nx, m.nf = int(W.shape[1]), layer.out_features
            else:
                m.in_channels, m.out_channels = int(W.shape[1]), layer.out_features


def _splice(root: nn.Module, norm: Norm, path: str, value: torch.Tensor) -> None:
    """A BatchNorm's entries ``norm.cols`` (start, stop; as the model was) replaced by ``value``,
    where they stand now (:func:`_live`)."""
    start, stop = norm.cols
    at = _live(root, f"{norm.name}:{path}", start, stop, len(value))
    live = get_tensor(root, path).detach()
    set_tensor(root, path, torch.cat([live[:at], value.to(live.dtype), live[at + stop - start:]]))


def _rewritten(root: nn.Module, a: Affine) -> bool:
    """Whether chain layer ``a``'s columns in ``root`` were written by another chain (a slice of
    them: units concatenated into ``a``, or fanning out to it), which came first (:func:`write_order`)."""
    return bool(_WRITTEN.get(root, {}).get(a.weight))


def with_rows(small: Network, net: Network) -> Network:
    """``small`` (a reduction of ``net``) saying how its first layer's rows came of ``net``'s
    (``meta["rows0"]``, which :func:`_merged_rows` needs where other chains wrote that layer's
    columns): as recorded by the quotient, else where each of its rows is one of ``net``'s as it was
    (a network written unreduced, or pruned by keeping units), that one with coefficient 1."""
    if type(small) is not Network or "rows0" in small.meta or not small.layers or not net.layers:
        return small
    A, B = (np.ascontiguousarray(np.c_[n.layers[0].weight, n.layers[0].bias], dtype=np.float64) for n in (net, small))
    if A.shape[1] != B.shape[1]:
        return small
    first: dict[bytes, int] = {}
    for i, row in enumerate(A):
        first.setdefault(row.tobytes(), i)
    hit = [first.get(row.tobytes()) for row in B]
    if any(h is None for h in hit):
        return small
    labels = np.full(len(A), -1)
    for k, h in enumerate(hit):
        labels[h] = k
    keep = labels >= 0
    # rows no reduced row is: coefficient 0 (their units are gone)
    return Network(small.layers, dtype=small.dtype, meta={**small.meta, "rows0": (np.where(keep, labels, 0),
                                                                                     keep.astype(np.float64))},
                   owned=getattr(small, "owned", False))


def _merged_rows(root: nn.Module, a: Affine, norm: Norm | None, small: Network) -> tuple[np.ndarray, np.ndarray]:
    """A chain's first layer reduced as ``small``'s was (its merged rows: ``meta["rows0"]``, each the
    sum of ``coef_i`` times row i of the layer with its BatchNorm folded), applied to the weight as
    ``root`` holds it now: other chains merged some of its columns (slices of a concatenation)."""
    got = small.meta.get("rows0")
    if got is None:
        raise UnsupportedLayerError(f"{a.name}'s columns were merged by another chain (units concatenated into it) and "
                                    "its rows are reduced by a network that does not say how they merged "
                                    "(meta['rows0'], as LayerChain.reduce records it)")
    labels, coef = got
    w = weight(root, a)
    W = _np(w, a.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, a.bias), a.bias) if a.bias else np.zeros(w.shape[0])
    if norm is not None:
        mean, scale, beta = _norm_parts(root, norm)
        W, b = W * scale[:, None], (b - mean) * scale + beta
    k = int(labels.max()) + 1 if len(labels) else 0
    Wm, bm = np.zeros((k, W.shape[1])), np.zeros(k)
    np.add.at(Wm, labels, coef[:, None] * W)
    np.add.at(bm, labels, coef * b)
    return Wm, bm


#: per model being written: per layer (weight path, or a BatchNorm's), the slices written so far as
#: (start, stop, units now): where a slice stands in the layer as it is now (:func:`_live`)
_WRITTEN: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _live(root: nn.Module, key: str, start: int, stop: int, units: int) -> int:
    """Where units ``start..stop`` of layer ``key`` (as the model was) start in ``root`` now, the
    slices written before shrunk to their widths; records this one's new width ``units``."""
    done = _WRITTEN.setdefault(root, {}).setdefault(key, [])
    at = start - sum((e - s) - n for s, e, n in done if s < start)
    done.append((start, stop, units))
    return at


def _write_fanned(root: nn.Module, g: Group, layer: Layer, shapes: list[tuple[int, int]]) -> None:
    """The reduced stacked layer of units that fan out (:func:`_stacked_layer`) written back as
    each consumer's slice of columns (no bias of its own: the layer has none)."""
    at = 0
    for c, (out, per) in zip(g.consumers, shapes):
        block = layer.weight[at:at + out * per]
        at += out * per
        W = block.reshape(out, per, -1).transpose(0, 2, 1).reshape(out, -1)
        _write_slice(root, c, W, np.zeros(out), per)


def _write_slice(root: nn.Module, a: Affine, W: np.ndarray, shift: np.ndarray, per: int) -> None:
    """Chain layer ``a``, one slice of a concatenation's consumer, written into ``root``: its columns
    ``W`` (out, units * per) in place of the slice's where it stands now (:func:`_live`), and its
    bias ``shift`` (a refit's, the slice's share of the consumer's bias: 0 without one) added to the
    consumer's."""
    start, stop, _ = a.cols
    at = _live(root, a.weight, start, stop, W.shape[1] // per)
    live = weight(root, a)
    L = live.detach().reshape(live.shape[0], -1)
    new = torch.from_numpy(np.ascontiguousarray(W)).to(L.dtype)
    out = torch.cat([L[:, :at * per], new, L[:, (at + stop - start) * per:]], dim=1)
    if live.dim() > 2:
        out = out.reshape(live.shape[0], -1, *live.shape[2:])
    set_tensor(root, a.weight, out.t().contiguous() if a.transposed else out)
    if a.bias and np.any(shift):
        b = get_tensor(root, a.bias).detach().to(torch.float64) + torch.from_numpy(shift)
        set_tensor(root, a.bias, b)
    if a.module:
        m = root.get_submodule(a.module)
        if isinstance(m, nn.Linear):
            m.in_features = int(out.shape[1])
        elif a.transposed:
            m.nx = int(out.shape[1])
        else:
            m.in_channels = int(out.shape[1])


def _post_of(g: Group, small: Network, h: int, root: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(S, T) of group ``g``'s post-activation affine for the reduced layer ``h``: the quotient's
    merged ones (``meta["post"]``, :func:`~afde_nb.core.reduce.merged_affine`); a network reduced
    without them keeps the original's where no unit went, else the identity (S = 1, T = 0: the
    shift then rides in the consumer's bias, exact away from zero padding)."""
    n = small.layers[h].out_features
    got = small.meta.get("post", {}).get(h)
    if got is not None and len(got[0]) == n:
        return got
    S, T = norm_affine(root, g.post)
    return (S, T) if len(S) == n else (np.ones(n), np.zeros(n))


def _unfed(root: nn.Module, g: Group, small: Network, k: int, layer: Layer) -> np.ndarray:
    """Chain layer ``k``'s weight as the model holds it: the post-activation affine of the group it
    reads unfolded (``W = W' / S``) and its columns back in the model's layout; the post's module
    written with the reduced (S, T), and module attributes holding the flattened width updated."""
    W = layer.weight
    units, t = layer.in_features, layer.taps
    if g.post is not None:
        S, T = _post_of(g, small, k - 1, root)
        W = W.reshape(len(W), units, t) / np.where(S != 0, S, 1.0)[None, :, None]
        W = W.reshape(len(W), -1)
        _write_post(root, g.post, S, T)
    if g.inner is not None and g.inner != t:
        out = np.empty_like(W)
        out[:, indexmap.layout(units, t, g.inner).reshape(-1)] = W
        W = out
    for path, attr in g.width_attrs:
        setattr(root.get_submodule(path) if path else root, attr, units * t)
    return W


def _unfed_bias(root: nn.Module, g: Group, small: Network, k: int, layer: Layer) -> np.ndarray:
    """Chain layer ``k``'s bias with the post-activation shift it read folded in taken out again."""
    if g.post is None:
        return layer.bias.copy()
    S, T = _post_of(g, small, k - 1, root)
    W = layer.weight.reshape(layer.out_features, layer.in_features, layer.taps) / np.where(S != 0, S, 1.0)[None, :, None]
    return layer.bias - np.einsum("ict,c->i", W, T)


def _write_post(root: nn.Module, norm: Norm, S: np.ndarray, T: np.ndarray) -> None:
    """An eval BatchNorm set to compute ``S x + T``: unit variance, zero mean, S and T as its
    affine weight and bias (one without them: 1 / S in its variance, -T / S in its mean)."""
    n = len(S)
    if norm.weight and norm.bias:
        set_tensor(root, norm.weight, torch.from_numpy(np.asarray(S, dtype=np.float64)))
        set_tensor(root, norm.bias, torch.from_numpy(np.asarray(T, dtype=np.float64)))
        set_tensor(root, norm.mean, torch.zeros(n, dtype=torch.float64))
        set_tensor(root, norm.var, torch.ones(n, dtype=torch.float64) * (1.0 - norm.eps))
    else:
        if norm.weight:
            set_tensor(root, norm.weight, torch.ones(n, dtype=torch.float64))
        if norm.bias:
            set_tensor(root, norm.bias, torch.zeros(n, dtype=torch.float64))
        set_tensor(root, norm.mean, torch.from_numpy(-T / S))
        set_tensor(root, norm.var, torch.from_numpy(1.0 / S ** 2 - norm.eps))
    _set_width(root, norm.name, "num_features", n)


def _set_width(root: nn.Module, path: str, attr: str, n: int) -> None:
    try:
        m = root.get_submodule(path)
    except AttributeError:
        return
    if hasattr(m, attr):
        setattr(m, attr, n)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy: the user's model is never modified (a torch.export program's module copies
    without torch's LeafSpec deprecation warning, which is torch's own and says nothing to a user)."""
    with quiet_leafspec():
        return copy.deepcopy(model)


# ---------------------------------------------------------------------------------------------
# layer inputs on probe data


class Batch:
    """Keyword inputs batched on their first axis (a Hugging Face model's ``input_ids``,
    ``attention_mask``, ...), taken row by row together; values that are not tensors (``use_cache=False``)
    pass as they are. A model runs on it as ``model(**batch.kwargs)``."""

    def __init__(self, kwargs: dict):
        self.kwargs = dict(kwargs)
        sizes = {k: int(v.shape[0]) for k, v in self.kwargs.items() if isinstance(v, torch.Tensor) and v.dim()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ShapeMismatchError("keyword inputs need tensors with one batch size on their first axis, got "
                                     f"{ {k: tuple(v.shape) for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)} }")
        self.rows = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, idx) -> "Batch":
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        return Batch({k: v[idx] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in self.kwargs.items()})

    def __array__(self, *args, **kwargs):
        raise TypeError(f"keyword inputs {self.shape} are no array: a model takes them as model(**batch.kwargs)")

    def clone(self) -> "Batch":
        return Batch({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()})

    @property
    def shape(self) -> dict:
        return {k: tuple(v.shape) for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)}

    def __repr__(self) -> str:
        return f"Batch({self.shape})"


def call(fn, x):
    """``fn`` on model inputs ``x``: a tensor (the first argument) or a :class:`Batch` (keywords)."""
    return fn(**x.kwargs) if isinstance(x, Batch) else fn(x)


def run(fn, x: torch.Tensor | Batch, name: str | None = None):
    """``fn(x)`` without gradients; a model that does not run on ``x`` (a shape it does not take, a
    batch size an exported program is fixed to) is a :class:`ShapeMismatchError` naming both."""
    try:
        with torch.no_grad():
            return call(fn, x)
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        shape = x.shape if isinstance(x, Batch) else tuple(x.shape)
        raise ShapeMismatchError(f"{name or type(fn).__name__} does not run on calibration shaped "
                                 f"{shape}: {first}") from exc


def output_rows(y, n: int, name: str = "the model") -> torch.Tensor:
    """A model's outputs on ``n`` rows as one (n, outputs) tensor: a tensor as it is; a
    ``ModelOutput``, dict, tuple or list by its tensors with ``n`` rows (``logits`` first), each
    flattened per row and side by side (a cache or a scalar loss is left out).

    Left out too, while another tensor remains: the scores of each row against every row of the
    batch, (n, n) tensors named ``logits_per_*`` (CLIP's ``logits_per_image``/``logits_per_text``,
    and SigLIP's, CLAP's, ALIGN's, ...). Their width per row depends on the batch, so a row's outputs
    in one batch would not compare with the same row's in another (the held-out error splits the
    calibration rows: :func:`afde_nb.pipeline.compress.held_out_error`, which also reruns the
    original on the held-out rows when any other output's width changes with the batch). They
    are chosen by name, not by shape: a fixed width equal to ``n`` (CLIP's 512-wide embeddings on
    512 rows) would otherwise be dropped in some batches and not in others. A plain tensor output
    is kept whatever its shape."""
    if isinstance(y, torch.Tensor):
        return y.reshape(len(y), -1)
    parts = [(k, t) for k, t in tensors(y, named=True) if t.dim() and len(t) == n]
    fixed = [(k, t) for k, t in parts if not (k.rpartition(".")[2].startswith("logits_per_") and t.dim() >= 2
                                             and t.shape[1] == n)]
    parts = [t.reshape(n, -1) for _, t in (fixed or parts)]
    if not parts:
        raise ShapeMismatchError(f"{name} returns {type(y).__name__} without a tensor of {n} rows; calibration "
                                 "errors need one")
    return torch.cat([t.to(parts[0].dtype) for t in parts], dim=1) if len(parts) > 1 else parts[0]


def tensors(y, named: bool = False, _key: str = "") -> list:
    """The tensors in a model's output, in order, ``logits`` first (a ``past_key_values`` cache is
    state for the next call, not an output); ``named``: as (key path, tensor) pairs, the path of
    keys and positions joined by dots (``"text_model_output.last_hidden_state"``, ``"0"``)."""
    if isinstance(y, torch.Tensor):
        return [(_key, y)] if named else [y]
    if isinstance(y, Mapping):
        keys = sorted((k for k in y.keys() if k != "past_key_values"), key=lambda k: k != "logits")
        return [t for k in keys for t in tensors(y[k], named, f"{_key}.{k}" if _key else str(k))]
    if isinstance(y, (tuple, list)):
        return [t for i, v in enumerate(y) for t in tensors(v, named, f"{_key}.{i}" if _key else str(i))]
    return []


def capture(model: nn.Module, affines: list[Affine], x, keep=None) -> dict[str, torch.Tensor]:
    """The input of each layer in ``affines`` (by weight path) when ``model`` runs on ``x``
    (``keep``: what to keep of it, as :func:`capture_run`)."""
    return capture_run(model, affines, x, keep)[0]


def capture_run(model: nn.Module, affines: list[Affine], x, keep=None, many: set | None = None) -> tuple[dict, object]:
    """(:func:`capture`'s inputs, the model's output) of one run of ``model`` on ``x``.

    ``keep(a, t)``: what to keep of layer ``a``'s input ``t`` (default: ``t``), taken while the
    model runs, so a layer's whole input (a convolution's feature maps) need not outlive its use.
    A layer is read at its first call, or at every call for the weight paths in ``many`` (a layer
    whose parameters serve several calls: its kept rows stacked, in call order)."""
    seen: dict[str, object] = {}
    want = {a.weight: a for a in affines}
    many = many or set()

    def put(key: str, t: torch.Tensor) -> None:
        if key in many:
            seen.setdefault(key, []).append(t.detach() if keep is None else keep(want[key], t.detach()))
        elif key not in seen:
            t = t.detach()
            seen[key] = t if keep is None else keep(want[key], t)

    if all(a.module for a in affines):
        handles = []
        for a in affines:
            def hook(mod, args, key=a.weight):
                put(key, args[0])
            handles.append(model.get_submodule(a.module).register_forward_pre_hook(hook))
        try:
            y = run(model, x)
        finally:
            for h in handles:
                h.remove()
    else:
        if not isinstance(model, fx.GraphModule):
            raise ShapeMismatchError("layers without a module need a torch.export program to be traced")
        prefix_free = {a.weight for a in affines}

        class _Recorder(fx.Interpreter):
            def run_node(self, n):
                if n.op == "call_function" and len(n.args) > 1 and isinstance(n.args[1], fx.Node) \
                        and n.args[1].op == "get_attr" and str(n.args[1].target) in prefix_free:
                    put(str(n.args[1].target), self.env[n.args[0]])
                return super().run_node(n)

        def interpret(*args, **kwargs):
            """The program's graph on the model's inputs: keyword inputs (a Hugging Face program
            called with ``input_ids=``) flattened by the program's own input spec, as its forward
            does, since an interpreter takes positional inputs only."""
            rec, info = _Recorder(model), getattr(model.graph._codegen, "pytree_info", None)
            if not kwargs or info is None or info.in_spec is None:
                return rec.run(*args, **kwargs)
            flat = fx_pytree.tree_flatten_spec((args, kwargs), info.in_spec)
            return model.graph.process_outputs(rec.run(*flat, enable_io_processing=False))

        y = run(interpret, x, type(model).__name__)
    missing = [k for k in want if k not in seen]
    if missing:
        raise ShapeMismatchError(f"the calibration run did not reach {', '.join(missing)}")
    for key in many & set(seen):
        parts = seen[key]
        seen[key] = np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts)
    return seen, y


def rows(t: torch.Tensor, a: Affine, weight: torch.Tensor, seed: int = 0) -> np.ndarray:
    """A layer's input as rows of ``in * taps`` values (a convolution's patches), at most
    :data:`MAX_ROWS` of them drawn with ``seed`` (float64).

    The rows are those of the whole unfolded input (row ``n * L + l``: image n, output position
    l), subsampled by ``rng.choice(N * L, MAX_ROWS, replace=False)``, sorted; only the drawn
    positions' patches are gathered (in the input's dtype, then widened: the same values), so the
    cost is MAX_ROWS patches, not every position's."""
    t = t.detach().cpu()
    if a.kind == "linear":
        R = t.reshape(-1, t.shape[-1])
        if len(R) > MAX_ROWS:
            R = R[torch.from_numpy(_drawn(len(R), seed))]
        return np.ascontiguousarray(R.to(torch.float64).numpy())
    kernel = tuple(weight.shape[2:])
    stride, padding, dilation = a.stride, a.padding, a.dilation
    if a.kind == "conv1d":
        t, kernel = t.unsqueeze(2), (1,) + kernel
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
    pad = [p for p in reversed(padding) for _ in (0, 1)]
    if any(pad):
        t = nn.functional.pad(t, pad, mode="constant" if a.padding_mode == "zeros" else a.padding_mode)
    n, c, hp, wp = t.shape
    out = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip((hp, wp), kernel, stride, dilation)]
    positions = out[0] * out[1]
    total = n * positions
    idx = _drawn(total, seed) if total > MAX_ROWS else np.arange(total)
    img, pos = np.divmod(idx, positions)
    oy, ox = np.divmod(pos, out[1])
    iy = oy[:, None] * stride[0] + np.arange(kernel[0]) * dilation[0]  # (S, kh)
    ix = ox[:, None] * stride[1] + np.arange(kernel[1]) * dilation[1]  # (S, kw)
    pixel = ((img[:, None, None] * hp + iy[:, :, None]) * wp + ix[:, None, :]).reshape(-1)
    # channels last, so each gathered pixel is one run of c values
    last = t.permute(0, 2, 3, 1).reshape(n * hp * wp, c)
    P = last.index_select(0, torch.from_numpy(pixel)).view(len(idx), kernel[0], kernel[1], c)
    R = torch.empty((len(idx), c, kernel[0], kernel[1]), dtype=torch.float64)
    R.copy_(P.permute(0, 3, 1, 2))  # unfold's order (c, kh, kw), widened
    return R.view(len(idx), -1).numpy()


def _drawn(total: int, seed: int) -> np.ndarray:
    """The MAX_ROWS row indices of ``total`` that :func:`rows` keeps, in order."""
    return np.sort(np.random.default_rng(seed).choice(total, MAX_ROWS, replace=False))


def unit_norms(t: torch.Tensor, kind: str, units: int, root: nn.Module | None = None,
               feed: Group | None = None) -> np.ndarray:
    """``||h_i||_2`` of each of ``units`` units over a layer input ``t``: a Linear's last axis (a
    run of columns per unit after a Flatten), a convolution's channels; read as the chain's
    network reads them where ``feed`` (the group feeding the layer, in ``root``) says how
    (:func:`unit_rows`)."""
    t = t.detach().to("cpu", torch.float64)
    if kind == "linear":
        R = t.reshape(-1, t.shape[-1]).numpy()
    else:
        R = t.transpose(0, 1).reshape(units, -1).T.numpy()
    if feed is not None and _reads_through(feed):
        R = unit_rows(root, feed, R, units)
    a = R.reshape(len(R), units, -1)
    return np.sqrt((a ** 2).sum(axis=(0, 2)))


def _reads_through(g) -> bool:
    """Whether group ``g``'s consumer reads its units other than as they are (a permuted layout,
    a post-activation affine)."""
    return getattr(g, "post", None) is not None or getattr(g, "inner", None) is not None


def chain_inputs(model: nn.Module, chains: list[list[Group]], x) -> tuple[list[list[np.ndarray]], object]:
    """(every chain layer's input rows (:func:`rows`) when ``model`` runs on ``x``, the model's
    output on ``x``): one run, each layer's rows drawn as the run reaches it."""
    feeds = {c[k].consumer.weight: c[k] for c in chains for k in range(len(c)) if _reads_through(c[k])}

    def keep(a: Affine, t: torch.Tensor) -> np.ndarray:
        if UNITS in a.weight:
            return unit_values(t, a)
        R = rows(t, a, get_tensor(model, a.weight))
        g = feeds.get(a.weight)
        return R if g is None else unit_rows(model, g, R, int(get_tensor(model, g.producer.weight).shape[0]))

    many = {a.weight for c in chains if any(getattr(g, "uses", 1) > 1 for g in c) for a in chain_affines(c)}
    got, y = capture_run(model, [a for c in chains for a in _read(c)], x, keep, many)
    return [[got[a.weight] if UNITS in a.weight else slice_rows(got[a.weight], a) for a in _read(c)]
            for c in chains], y


def _read(chain: list) -> list[Affine]:
    """The layers whose inputs are a chain's rows: :func:`chain_affines`, where the units fan out
    the first consumer read for the units' values (:func:`unit_values`, under its own key)."""
    affs = chain_affines(chain)
    if fanned(chain[-1]):
        a = affs[-1]  # one key per slice: other chains' units may be other slices of the same input
        affs[-1] = replace(a, weight=f"{a.weight}{UNITS}{a.cols[0]}:{a.cols[1]}")
    return affs


def pseudo_inputs(net: Network, seed: int = 0, first: bool = False) -> list[np.ndarray]:
    """Every chain layer's input rows without data (``first``: the first layer's only):
    standard-normal rows (the distribution of standardised inputs) into the first layer, run
    through the chain; where a layer reads several positions per unit (taps), each position is an
    independent row of the layer before, so the rows have the units' real marginals (a ReLU's are
    non-negative) without spatial correlation."""
    rng = np.random.default_rng(seed)
    head = net.layers[0]
    out = [rng.standard_normal((PSEUDO, head.in_features * head.taps))]
    for k in range(1, 1 if first else len(net.layers)):
        prev = net.layers[k - 1]
        h = prev.apply(out[-1] @ prev.weight.T + prev.bias)  # (PSEUDO, units)
        t = net.layers[k].taps
        if t > 1:
            h = np.stack([h[rng.permutation(len(h))] if j else h for j in range(t)], axis=2).reshape(len(h), -1)
        out.append(h)
    return out
