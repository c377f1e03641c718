"""Unstructured magnitude pruning: zero the smallest-|W| weights of every layer of the groups
afde-nb lumps (every Linear of a plain stack; the producers and consumers of each chain of any
other model, a BatchNorm folded into its producer; a gated MLP's gate, up and down projections;
an inverted-residual block's producer, depthwise kernels, SE fc1 and fc2 and consumer, its two
BatchNorms folded into producer and depthwise kernels; each a layer of its own).

The weights to zero are chosen exactly as ``torch.nn.utils.prune.l1_unstructured`` (scope
``"layer"``) and ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured)`` (scope
``"global"``) choose them: ``round(amount * n)`` entries, the ``k`` smallest of ``|W|`` by
``torch.topk(..., largest=False)`` on the weights in their own dtype, so ties break the same way.
Biases are not pruned. The input model is not modified. An inverted-residual channel none of whose
rows (producer, depthwise, fc2) lost a weight is written back as it was; one that did is written
folded with identity BatchNorm entries (its zeros are then the model's zeros, so
``count_params(nonzero=True)`` counts what was pruned).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...errors import InvalidArgumentError
from ._common import Pruned, check_amount, count_params, finish, n_pruned, projections, units, with_projections

SCOPES = ("layer", "global")


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 = keep, 0 = prune the ``k`` smallest of ``scores`` (flattened), as L1Unstructured."""
    mask = torch.ones_like(scores, memory_format=torch.contiguous_format)
    if k != 0:
        idx = torch.topk(scores.reshape(-1), k=k, largest=False).indices
        mask.view(-1)[idx] = 0
    return mask


def magnitude_masks(weights: list[torch.Tensor], amount: float, scope: str = "layer") -> list[torch.Tensor]:
    """Keep-masks (same shape and dtype as each weight) of magnitude pruning."""
    if scope not in SCOPES:
        raise InvalidArgumentError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "layer":
        return [_topk_mask(torch.abs(w), n_pruned(w.numel(), amount)) for w in weights]
    flat = torch.cat([torch.abs(w).reshape(-1) for w in weights])
    mask = _topk_mask(flat, n_pruned(flat.numel(), amount))
    out, start = [], 0
    for w in weights:
        out.append(mask[start:start + w.numel()].view_as(w))
        start += w.numel()
    return out


def magnitude_prune(model: nn.Module, amount: float, scope: str = "layer") -> Pruned:
    """Zero the ``amount`` fraction of smallest-|W| weights of every layer of the groups (per
    layer or with one global threshold); returns a masked copy."""
    amount = check_amount(amount)
    if scope not in SCOPES:
        raise InvalidArgumentError(f"scope must be one of {SCOPES}, got {scope!r}")
    cap = units(model)
    weights = [torch.from_numpy(np.array(l.weight)) for n in cap.nets for l in projections(n)]
    masks = iter(magnitude_masks(weights, amount, scope))
    nets = [with_projections(n, [l.with_weights((torch.from_numpy(np.array(l.weight)) * next(masks)).numpy(), l.bias)
                                 for l in projections(n)]) for n in cap.nets]
    return finish(cap, nets, f"magnitude-{scope}", amount, False)


def _counter(model: nn.Module, scope: str = "layer"):
    """params(amount) of :func:`magnitude_prune` without pruning: zeros are the smallest |W|, so
    pruning k of n weights with z non-zero leaves min(n - k, z) non-zero."""
    if scope not in SCOPES:
        raise InvalidArgumentError(f"scope must be one of {SCOPES}, got {scope!r}")
    cap = units(model)
    layers = [l for n in cap.nets for l in projections(n)]
    sizes = [l.weight.size for l in layers]
    nnz = [int((l.weight != 0).sum()) for l in layers]
    as_is = cap.write([with_projections(n, projections(n)) for n in cap.nets])  # as amount 0 writes it
    rest = count_params(as_is, nonzero=True) - sum(nnz)  # biases, norms, the rest of the model
    if scope == "layer":
        return lambda a: rest + sum(min(n - n_pruned(n, a), z) for n, z in zip(sizes, nnz))
    n, z = sum(sizes), sum(nnz)
    return lambda a: rest + min(n - n_pruned(n, a), z)
