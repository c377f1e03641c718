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
from torch import nn

from ...pipeline.compress import compress
from ...errors import BudgetUnreachableError, InvalidArgumentError
from ..metrics import mse_score, predict, r2_score

#: name -> (function name in afde_nb.eval.baselines, keyword arguments, needs calibration)
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
    pred = predict(model, X)
    return mse_score(pred, y), r2_score(pred, y)


def _row(method: str, setting: float, params: int, full: int, model: nn.Module, X, y, seconds: float, **extra) -> dict:
    mse, r2 = _metrics(model, X, y)
    return {"method": method, "setting": float(setting), "params": int(params), "kept": params / full,
            "mse": mse, "r2": r2, "seconds": seconds, **extra}


VARIANTS = ("", "+pseudo", "+calib", "+repair")


def afde_options(item: str) -> dict:
    """``compress`` options of an afde-nb entry: ``[method-]mode[-data]``, e.g. ``backward`` (Ward),
    ``complete-backward``, ``components-forward``, ``components-backward-data`` (data-aware)."""
    method, _, rest = item.partition("-") if item.split("-")[0] in ("ward", "complete", "components") \
        else ("ward", "", item)
    data_aware = rest.endswith("-data")
    mode = rest.removesuffix("-data")
    if mode not in ("backward", "forward") or (data_aware and method != "components"):
        raise InvalidArgumentError(f"unknown afde-nb entry {item!r}: use [ward-|complete-|components-]"
                                   "(backward|forward)[-data], -data with components only")
    return {"method": method, "mode": mode, "data_aware": data_aware}


def check_options(modes: Iterable[str], baselines: Iterable[str], variants: Iterable[str]) -> None:
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise InvalidArgumentError(f"unknown variants {bad}; available: {VARIANTS}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InvalidArgumentError(f"unknown baselines {unknown}; available: {sorted(BASELINES)}")
    for m in modes:
        afde_options(m)


def original_row(model: nn.Module, X, y) -> dict:
    full = compress(model).params_before
    return _row("original", 0.0, full, full, model, X, y, 0.0, budget=full, access="-", repair="-")


def afde_cell(model: nn.Module, X, y, calib, entry: str, value: float, variants: Sequence[str], full: int,
              relative: bool = True, kind: str = "params", progress=None) -> list[dict]:
    """afde-nb entry ``entry`` at one budget (``kind="params"``) or eps (``"eps"``): a row per
    variant (none where the budget is below one neuron per layer)."""
    spec = afde_options(entry)
    rows = []
    for v in variants:
        if spec["data_aware"] and v in ("", "+pseudo"):
            v_opts = {"calibration": calib, "repair": "pseudo" if v == "+pseudo" else False}
        else:
            v_opts = {"": {"repair": False}, "+pseudo": {"repair": "pseudo"},
                      "+calib": {"calibration": calib, "repair": False}, "+repair": {"calibration": calib}}[v]
        t = time.perf_counter()
        opts = dict(spec, relative=relative, **v_opts)
        try:
            c = compress(model, value, **opts) if kind == "eps" else compress(model, target_params=int(value), **opts)
        except BudgetUnreachableError:  # budget below one neuron per layer
            continue
        access = "calibration" if "calibration" in opts else "data-free"
        rows.append(_row(f"afde-{entry}{v}", c.eps, c.params_after, full, c.model, X, y, time.perf_counter() - t,
                         budget=int(value) if kind == "params" else c.params_after, access=access,
                         repair=c.repaired or "none"))
        if progress:
            progress()
    return rows


def baseline_cell(model: nn.Module, X, y, calib, name: str, target: int, variants: Sequence[str], full: int,
                  progress=None) -> list[dict]:
    """Baseline ``name`` matched to ``target`` parameters: a row per variant it has (``+calib`` is
    afde-nb's only; ``+pseudo`` is for the data-free baselines)."""
    from .. import baselines as bl

    fn_name, kwargs, needs_data = BASELINES[name]
    fn = getattr(bl, fn_name)
    if needs_data:
        kwargs = dict(kwargs, calibration=calib)
    t = time.perf_counter()
    try:
        p = bl.match_params(fn, model, target, **kwargs)
    except BudgetUnreachableError:
        return []
    base_s = time.perf_counter() - t
    rows = []
    for v in variants:
        if v == "+calib" or (v == "+pseudo" and needs_data):
            continue  # no such access for this method
        t = time.perf_counter()
        q = p if v == "" else bl.repair_pruned(p, model, calib) if v == "+repair" \
            else bl.repair_pruned(p, model, pseudo=True)
        access = "calibration" if needs_data or v == "+repair" else "data-free"
        rows.append(_row(f"{name}{v}", p.amount, q.params, full, q.model, X, y, base_s + time.perf_counter() - t,
                         budget=target, access=access, repair=q.repaired or "none"))
        if progress:
            progress()
    return rows


def prepare(X, y, calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
    calib = X if calibration is None else np.asarray(calibration, dtype=np.float32)
    return X, y, calib


def tradeoff(model: nn.Module, X: np.ndarray, y: np.ndarray, calibration: np.ndarray | None = None,
             eps_values: Sequence[float] | None = None, mode: str | Iterable[str] = "backward",
             relative: bool = True, baselines: Iterable[str] = ("magnitude", "wanda"),
             kept: Sequence[float] = DEFAULT_KEPT, progress=None, *, variants: Iterable[str] = ("",)) -> list[dict]:
    """Rows ``{method, setting, params, kept, mse, r2, seconds, budget, access, repair}`` for the
    original model, afde-nb (``method`` = ``"afde-<entry><variant>"``, ``setting`` = eps; entries as
    :func:`afde_options` reads them) and each baseline (``setting`` = its amount), on ``(X, y)``.

    ``variants`` give every method the same data access and post-processing: ``""`` as it comes
    (data-free, or with calibration for the methods that need it), ``"+pseudo"`` repaired on
    standard-normal pseudo-inputs (data-free), ``"+calib"`` afde-nb with calibration but no repair,
    ``"+repair"`` repaired on ``calibration`` (:mod:`afde_nb.core.repair`, the same function for all).
    ``eps_values=None``: every method runs at the parameter budgets ``kept`` (fractions of the
    original) and the full size, keeping at most ``budget`` parameters (non-zeros for masks, dense
    for smaller networks). With ``eps_values`` the baselines are matched to the sizes afde-nb
    reached. Calibration defaults to ``X``. Rows come cell by cell (:func:`afde_cell`,
    :func:`baseline_cell`: an entry at a budget), in the order ``afde bench`` writes them."""
    X, y, calib = prepare(X, y, calibration)
    modes = [mode] if isinstance(mode, str) else list(mode)
    baselines, variants = list(baselines), list(variants)
    check_options(modes, baselines, variants)
    rows = [original_row(model, X, y)]
    full = rows[0]["params"]
    if eps_values is None:
        budgets = [full] + [int(f * full) for f in kept]
        for m in modes:
            for b in budgets:
                rows += afde_cell(model, X, y, calib, m, b, variants, full, relative, "params", progress)
    else:
        for m in modes:
            for e in eps_values:
                rows += afde_cell(model, X, y, calib, m, float(e), variants, full, relative, "eps", progress)
        # match the baselines to what afde-nb reached with the first entry
        budgets = sorted({r["params"] for r in rows if r["method"] == f"afde-{modes[0]}{variants[0]}"}, reverse=True)
    for name in baselines:
        for target in budgets:
            rows += baseline_cell(model, X, y, calib, name, target, variants, full, progress)
    return rows
