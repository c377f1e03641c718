"""Target mode: a parameter budget or an error budget instead of eps (method.md §8.6).

For merge paths (Ward, complete) no search over eps is needed: the path lists every partition in
eps order, one merge at a time, so the budget is met by walking it. With calibration data the
split of a parameter budget between layers is chosen by measured error among candidates: one eps
for all layers, each layer's eps (in a model of more than :data:`SEGMENTS` layers, each of that
many consecutive parts') scaled by 1/4, 1/2, 2 and 4 in turn (:func:`scale_candidates`), and the
same fraction of every layer, each cut exactly at the budget here; how they are told apart, from
the chains' own calibration rows, is :mod:`afde_nb.pipeline.split`.

For the paper's setting (components) the partitions coarsen monotonically with eps (tested), so
bisection over eps finds the smallest eps meeting a budget, as in the first release.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import BudgetUnreachableError, InvalidArgumentError
from .lump import Partition, lump
from .network import Network
from .reduce import reduce

_ITERS = 48
SCALES = (0.25, 0.5, 2.0, 4.0)


def reduced_params(net: Network, labels) -> int:
    """Dense parameter count of ``reduce(net, labels)`` without building it."""
    return net.num_params_with([int(l.max()) + 1 if l.size else 0 for l in labels])


#: at most this many parts of a deep model's layers are scaled in turn (and, in
#: :mod:`afde_nb.pipeline.split`, at most this many model runs measure the chains' gains)
SEGMENTS = 4


def scale_candidates(layers: int, segments: int | None = None) -> list[list[float] | None]:
    """One eps for all layers (None), then each layer's eps scaled in turn; a model with more than
    ``segments`` (default :data:`SEGMENTS`) layers has them in that many consecutive parts (as even
    as can be), each part's eps scaled together. So the search costs at most ``1 + 4 * segments`` candidates whatever the
    depth: one per layer made a MobileNetV3's calibrated budget 54 reduced-and-repaired model runs,
    each on 1/4 of the calibration inputs (a few images, whose noise more candidates only fit)."""
    segments = SEGMENTS if segments is None else segments
    out: list[list[float] | None] = [None]
    if layers > 1:
        parts = np.array_split(np.arange(layers), min(layers, max(int(segments), 1)))
        for part in parts:
            for s in SCALES:
                c = [1.0] * layers
                for h in part:
                    c[h] = s
                out.append(c)
    return out


# ---- a floor per layer for budgets -------------------------------------------------------------
#
# A budget spends merges where the (scaled) bounds are lowest, so one layer can lose nearly all its
# units while another keeps most (on a tiny LLaMA, a calibrated 70 % budget: 86 and 15 units of
# 128). Where that is unwanted, ``floor`` keeps at least so many units of each layer: the merges
# that would go below it are left out of the walk, so the budget is spent on the other layers.


def check_floor(floor) -> int | float | None:
    """``floor``: None (no floor), an int >= 1 (units per layer) or a float in (0, 1] (a fraction
    of each layer's units); anything else is an :class:`InvalidArgumentError`."""
    if floor is None:
        return None
    if isinstance(floor, (bool, np.bool_)) or not isinstance(floor, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"floor must be an int >= 1 (units kept per hidden layer) or a float in (0, 1] "
                                   f"(a fraction of each hidden layer's units), got {floor!r}")
    if isinstance(floor, (int, np.integer)):
        if floor < 1:
            raise InvalidArgumentError(f"floor as a count must be >= 1 unit per hidden layer, got {floor}")
        return int(floor)
    if not 0.0 < float(floor) <= 1.0:
        raise InvalidArgumentError(f"floor as a fraction must be in (0, 1], got {floor!r}; for a count of units "
                                   f"give an int")
    return float(floor)


def floor_units(n: int, floor: int | float) -> int:
    """The units of an ``n``-unit layer that a budget keeps at least: ``floor`` units (all of a
    smaller layer), or ``ceil(floor * n)`` (at least 1) for a fraction."""
    if isinstance(floor, int):
        return min(int(floor), n)
    return min(n, max(1, int(np.ceil(float(floor) * n - 1e-9))))


def merge_caps(layers, floor) -> list[int] | None:
    """Per hidden layer of a merge path, the most merges a budget may make under ``floor``; the
    exact merges (lossless) are always allowed, even below it. None without a floor."""
    if floor is None:
        return None
    return [max(lp.exact, lp.n - floor_units(lp.n, floor)) for lp in layers]


def _floored_events(path, caps: list[int], scale=None) -> np.ndarray:
    """The path's global merge order (layer of each merge beyond the exact ones), each layer's
    merges past its cap left out (a layer's merges come in its own order, so they are its last)."""
    events = np.asarray(path._events(scale), dtype=np.int64)
    keep = np.zeros(len(events), dtype=bool)
    for h, (c, lp) in enumerate(zip(caps, path.layers)):
        keep[np.flatnonzero(events == h)[:max(c - lp.exact, 0)]] = True
    return events[keep]


def for_params(path, target: int, scale=None, caps: list[int] | None = None) -> list[int]:
    """``path.for_params`` (the fewest merges along the (scaled) eps order within ``target``
    parameters) with at most ``caps[h]`` merges in layer h; exactly ``path.for_params`` without caps."""
    if caps is None:
        return path.for_params(target, scale)
    events = _floored_events(path, caps, scale)
    got = path.first_within(events, target)
    if got is None:
        exact = np.array([lp.exact for lp in path.layers], dtype=np.int64)
        smallest = path.params_at((exact + np.bincount(events, minlength=len(exact))).tolist())
        raise BudgetUnreachableError(
            f"target_params={target} is below {smallest}, the smallest size the floor allows "
            f"(at least {[lp.n - c for lp, c in zip(path.layers, caps)]} units per hidden layer); lower the floor "
            f"or raise the budget")
    return got


def uniform(path, target: int, caps: list[int] | None = None) -> list[int]:
    """``path.uniform`` (the same fraction of every layer, the most units within ``target``) with
    at most ``caps[h]`` merges in layer h; exactly ``path.uniform`` without caps."""
    if caps is None:
        return path.uniform(target)
    n = [lp.n for lp in path.layers]
    lo = [lp.exact for lp in path.layers]
    for keep in np.linspace(1.0, 0.0, 1001):
        ms = [min(max(nn - max(1, int(round(keep * nn))), e), nn - 1, c) for nn, e, c in zip(n, lo, caps)]
        if path.params_at(ms) <= target:
            return ms
    return for_params(path, target, None, caps)


def sequence(path, caps: list[int] | None = None) -> list[list[int]]:
    """``path.sequence()`` (every partition in eps order, one merge at a time) with no layer past
    ``caps[h]`` merges; exactly ``path.sequence()`` without caps."""
    if caps is None:
        return path.sequence()
    cur = [lp.exact for lp in path.layers]
    out = [list(cur)]
    for h in _floored_events(path, caps):
        cur[h] += 1
        out.append(list(cur))
    return out


# ---- the paper's setting: bisection over eps -------------------------------------------------

def _grow(ok: Callable[[float], bool], want: bool, start: float = 1.0, limit: float = 1e15) -> float:
    """Double eps from ``start`` until ``ok(eps) == want``."""
    hi = start
    while ok(hi) != want:
        hi *= 2.0
        if hi > limit:
            raise BudgetUnreachableError("eps search did not reach the target")
    return hi


def _bisect(ok: Callable[[float], bool], lo: float, hi: float) -> tuple[float, float]:
    """ok(lo) != ok(hi); shrink to the boundary."""
    want_lo = ok(lo)
    for _ in range(_ITERS):
        mid = 0.5 * (lo + hi)
        if ok(mid) == want_lo:
            lo = mid
        else:
            hi = mid
    return lo, hi


def eps_for_params(net: Network, target_params: int, mode: str, relative: bool, threads: int = 0,
                   rms=None) -> Partition:
    """Components: the partition at the smallest eps whose reduced network has at most ``target_params``."""
    floor = reduced_params(net, [np.zeros(l.out_features, dtype=np.int64) for l in net.hidden])
    if target_params < floor:
        raise BudgetUnreachableError(
            f"target_params={target_params} is below {floor}, the size with one neuron per hidden layer")

    def part(e: float) -> Partition:
        return lump(net, e, mode, relative, threads, rms, method="components")

    def ok(e: float) -> bool:
        return reduced_params(net, part(e).labels) <= target_params

    if ok(0.0):
        return part(0.0)
    _, hi = _bisect(ok, 0.0, _grow(ok, True))
    return part(hi)


def eps_for_error(net: Network, X: np.ndarray, y: np.ndarray, max_increase: float, mode: str, relative: bool,
                  threads: int = 0, rms=None) -> Partition:
    """Components: the partition at the largest eps (found by bisection) whose reduced network's
    MSE on (X, y) is at most ``(1 + max_increase)`` times the original's."""
    base = float(np.mean((net.forward(X) - y) ** 2))
    bound = base * (1.0 + max_increase)

    def part(e: float) -> Partition:
        return lump(net, e, mode, relative, threads, rms, method="components")

    def ok(e: float) -> bool:
        return float(np.mean((reduce(net, part(e).labels).forward(X) - y) ** 2)) <= bound

    collapsed = [np.zeros(l.out_features, dtype=np.int64) for l in net.hidden]
    if float(np.mean((reduce(net, collapsed).forward(X) - y) ** 2)) <= bound:
        return part(_grow(lambda e: part(e).size == len(collapsed), True))
    lo, _ = _bisect(ok, 0.0, _grow(ok, False))
    return part(lo)
