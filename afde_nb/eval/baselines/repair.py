"""The same repair for every baseline (method.md §8.5): a least-squares refit of the layers a method
changed, towards the original network's pre-activations on probe inputs.

Masked methods (magnitude, Wanda) keep their zero pattern: each row is refit on its kept inputs
(as SparseGPT does), from the first pruned layer on. Dense methods (folding, structured) refit
the layers after the first one they shrank, with each kept or folded neuron standing for what it
replaced (``Pruned.maps``). afde-nb's own repair (``compress(..., repair=...)``) is the same
function, :func:`afde_nb.core.repair.repair`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from ...errors import InvalidArgumentError
from ...core.path import probe_inputs
from ...core.repair import repair
from ._common import Pruned, as_calibration, build, count_params, read


def repair_pruned(pruned: Pruned, model: nn.Module, calibration=None, pseudo: bool = False) -> Pruned:
    """``pruned`` (made from ``model``) refit on ``calibration`` inputs, or data-free on
    standard-normal pseudo-inputs with ``pseudo=True``; a new :class:`Pruned`."""
    if pruned.refit is not None:  # made inside a model that is not a plain stack
        if pseudo == (calibration is not None):
            raise InvalidArgumentError("give calibration inputs or pseudo=True (not both)")
        return pruned.refit(calibration, pseudo)
    original, device = read(model)
    small, _ = read(pruned.model)
    if pseudo == (calibration is not None):
        raise InvalidArgumentError("give calibration inputs or pseudo=True (not both)")
    X = probe_inputs(original, None) if pseudo else as_calibration(calibration, original)
    if pruned.dense:
        if pruned.maps is None:
            raise InvalidArgumentError(f"{pruned.method}: a dense result needs its target maps to be repaired")
        fixed = repair(original, small, X, list(pruned.maps), start=pruned.start)
        new = build(fixed, device)
        params = count_params(new)
    else:
        masks = [l.weight != 0 for l in small.layers]
        changed = [k for k, (a, b) in enumerate(zip(original.layers, small.layers)) if not np.array_equal(a.weight, b.weight)]
        fixed = repair(original, small, X, [None] * len(small.hidden), start=changed[0] if changed else len(small.layers),
                       masks=masks)
        new = build(fixed, device)
        params = count_params(new, nonzero=True)
    return replace(pruned, model=new, params=params, repaired="pseudo" if pseudo else "calibration")
