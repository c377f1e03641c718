"""The size/error trade-off of one model: afde-nb and the baselines at matched parameter counts.

afde-nb is run at a grid of parameter budgets (target mode: the smallest eps within each budget)
or at given eps values; every baseline is then matched to the parameter count afde-nb reached
(non-zeros for masks, dense parameters for smaller networks), so each row compares methods at
equal size.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..compress import compress
from ..train import r2_score

#: name -> (function name in afde_nb.baselines, keyword arguments, needs calibration)
BASELINES = {
    "magnitude": ("magnitude_prune", {"scope": "layer"}, False),
    "magnitude-global": ("magnitude_prune", {"scope": "global"}, False),
    "wanda": ("wanda_prune", {}, True),
    "structured-norm": ("structured_prune", {"score": "norm"}, False),
    "structured-wanda": ("structured_prune", {"score": "wanda"}, True),
    "kmeans-fold": ("fold_prune", {}, False),
}
DEFAULT_KEPT = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _metrics(model: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        pred = model(torch.as_tensor(X, dtype=next(model.parameters()).dtype)).double().numpy()
    return float(np.mean((pred - y) ** 2)), r2_score(pred, y)


def _row(method: str, setting: float, params: int, full: int, model: nn.Module, X, y, seconds: float, **extra) -> dict:
    mse, r2 = _metrics(model, X, y)
    return {"method": method, "setting": float(setting), "params": int(params), "kept": params / full,
            "mse": mse, "r2": r2, "seconds": seconds, **extra}


def tradeoff(model: nn.Module, X: np.ndarray, y: np.ndarray, calibration: np.ndarray | None = None,
             eps_values: Sequence[float] | None = None, mode: str | Iterable[str] = "backward",
             relative: bool = True, baselines: Iterable[str] = ("magnitude", "wanda"),
             kept: Sequence[float] = DEFAULT_KEPT, progress=None) -> list[dict]:
    """Rows ``{method, setting, params, kept, mse, r2, seconds, budget}`` for the original model,
    afde-nb (``method`` = ``"afde-<mode>"``, ``setting`` = eps) and each baseline (``setting`` = its
    amount), evaluated on ``(X, y)``. ``eps_values=None``: every method runs at the parameter budgets
    ``kept`` (fractions of the original) and the full size, keeping at most ``budget`` parameters
    (non-zeros for masks, dense for smaller networks). With ``eps_values`` the baselines are matched
    to the sizes afde-nb reached. Baselines needing data use ``calibration`` (default: ``X``)."""
    from .. import baselines as bl

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
    calib = X if calibration is None else np.asarray(calibration, dtype=np.float32)
    modes = [mode] if isinstance(mode, str) else list(mode)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; available: {sorted(BASELINES)}")
    full = compress(model).params_before
    rows = [_row("original", 0.0, full, full, model, X, y, 0.0, budget=full)]
    if eps_values is None:
        budgets = [full] + [int(f * full) for f in kept]
        runs = [(m, "params", b) for m in modes for b in budgets]
    else:
        budgets = None
        runs = [(m, "eps", float(e)) for m in modes for e in eps_values]
    for m, kind, value in runs:
        t = time.perf_counter()
        base, data_aware = m.removesuffix("-data"), m.endswith("-data")
        opts = dict(mode=base, relative=relative, data_aware=data_aware, calibration=calib if data_aware else None)
        try:
            c = compress(model, value, **opts) if kind == "eps" else compress(model, target_params=value, **opts)
        except ValueError:  # budget below one neuron per layer
            continue
        rows.append(_row(f"afde-{m}", c.eps, c.params_after, full, c.model, X, y, time.perf_counter() - t,
                         budget=value if kind == "params" else c.params_after))
        if progress:
            progress()
    if budgets is None:  # match the baselines to what afde-nb reached with the first mode
        budgets = sorted({r["params"] for r in rows if r["method"] == f"afde-{modes[0]}"}, reverse=True)
    for name in baselines:
        fn_name, kwargs, needs_data = BASELINES[name]
        fn = getattr(bl, fn_name)
        if needs_data:
            kwargs = dict(kwargs, calibration=calib)
        for target in budgets:
            t = time.perf_counter()
            try:
                p = bl.match_params(fn, model, target, **kwargs)
            except ValueError:
                continue
            rows.append(_row(name, p.amount, p.params, full, p.model, X, y, time.perf_counter() - t, budget=target))
            if progress:
                progress()
    return rows
