"""The same repair for every baseline (method.md §8.5): a least-squares refit of the layers a method
changed, towards the original model's pre-activations on probe inputs, chain by chain.

Masked methods (magnitude, Wanda) keep their zero pattern: each row is refit on its kept inputs
(as SparseGPT does), from the first pruned layer on. Dense methods (folding, structured) refit
the layers after the first one they shrank, with each kept or folded unit standing for what it
replaced (``Pruned.maps``). Chains of Linear layers are refit (tokens of a sequence are rows); a
convolution chain is not, by any method. afde-nb's own repair (``compress(..., repair=...)``) is
the same function, :func:`afde_nb.core.repair.repair`, on the same rows.

A gated MLP chain is repaired as afde-nb repairs it (:func:`afde_nb.core.gated.repair`): one
least-squares refit of the down projection towards the original MLP's outputs, from the reduced
units' values ``act(gate x) * up x`` on the chain's input rows (gate and up keep what the method
made of them: their products are not linear in the rows). A masked method's down projection keeps
its zeros; the refit runs where the method changed the chain (a weight zeroed, a unit dropped or
folded).

An inverted-residual block is repaired the same way, as afde-nb repairs it
(:func:`afde_nb.core.inverted.repair`): its 1x1 consumer refit at the sampled positions of the
chain's probe maps, from the reduced channels' gated values towards the original consumer's
output; producer, depthwise kernels and SE keep what the method made of them, and a masked
consumer keeps its zeros.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from ...core import gated as core_gated
from ...core import inverted as core_inverted
from ...core.gated import GatedNet
from ...core.inverted import InvertedNet
from ...core.repair import repair
from ...errors import InvalidArgumentError
from ._common import Pruned, as_calibration, count_params, first_changed, projections, units


def repair_pruned(pruned: Pruned, model: nn.Module, calibration=None, pseudo: bool = False) -> Pruned:
    """``pruned`` (made from ``model``) refit on ``calibration`` inputs, or data-free on
    standard-normal pseudo-inputs with ``pseudo=True``; a new :class:`Pruned`."""
    if pseudo == (calibration is not None):
        raise InvalidArgumentError("give calibration inputs or pseudo=True (not both)")
    if pruned.dense and pruned.maps is None:
        raise InvalidArgumentError(f"{pruned.method}: a dense result needs its target maps to be repaired")
    cap = units(model)
    rows = cap.rows(None if pseudo else as_calibration(cap, calibration), first=True)
    nets, ran = [], False
    for k, (net, small) in enumerate(zip(cap.nets, pruned.nets)):
        if not cap.repairable(k):
            nets.append(small)
            continue
        if isinstance(net, (GatedNet, InvertedNet)):  # one layer of units: refit the layer reading them
            out = small.down if isinstance(net, GatedNet) else small.consumer
            if pruned.dense:
                changed, mask = first_changed(pruned.maps[k], 2) == 1, None  # 2: no unit changed
            else:
                changed = any(not np.array_equal(a.weight, b.weight) for a, b in zip(projections(net), projections(small)))
                mask = out.weight != 0
            fix = core_gated.repair if isinstance(net, GatedNet) else core_inverted.repair
            nets.append(fix(net, small, rows[k][0], mask=mask) if changed else small)
            ran = True
            continue
        if pruned.dense:
            maps, masks = list(pruned.maps[k]), None
            start = first_changed(maps, len(small.layers))
        else:
            maps, masks = [None] * len(small.hidden), [l.weight != 0 for l in small.layers]
            changed = [i for i, (a, b) in enumerate(zip(net.layers, small.layers)) if not np.array_equal(a.weight, b.weight)]
            start = changed[0] if changed else len(small.layers)
        nets.append(repair(net, small, rows[k][0], maps, start=start, masks=masks))
        ran = True
    new = cap.write(nets)
    return replace(pruned, model=new, params=count_params(new, nonzero=not pruned.dense),
                   nets=cap.written(nets, new), repaired=("pseudo" if pseudo else "calibration") if ran else None)
