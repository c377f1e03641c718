"""Target mode: a parameter budget or an error budget instead of eps (method.md §8.6).

For merge paths (Ward, complete) no search over eps is needed: the path lists every partition in
eps order, one merge at a time, so the budget is met by walking it. With calibration data the
split of a parameter budget between layers is chosen by measured error: besides one eps for all
layers, each layer's eps (in a model of more than :data:`SEGMENTS` layers, each of that many
consecutive parts') is scaled by 1/4, 1/2, 2 and 4 in turn, each candidate is reduced (and
repaired on 3/4 of the calibration inputs when repair is on) and measured on the other 1/4, and so
is the split that keeps the same fraction of every layer.

For the paper's setting (components) the partitions coarsen monotonically with eps (tested), so
bisection over eps finds the smallest eps meeting a budget, as in the first release.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import BudgetUnreachableError
from .lump import Partition, lump
from .network import Network
from .reduce import reduce

_ITERS = 48
SCALES = (0.25, 0.5, 2.0, 4.0)


def reduced_params(net: Network, labels) -> int:
    """Dense parameter count of ``reduce(net, labels)`` without building it."""
    return net.num_params_with([int(l.max()) + 1 if l.size else 0 for l in labels])


#: at most this many parts of a deep model's layers are scaled in turn (each candidate costs a
#: reduce, a repair and a model run on the held-out inputs)
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


def pick(candidates: list, score: Callable[[object], float]):
    """The candidate with the lowest score (first one on ties)."""
    best, best_s = None, np.inf
    for c in candidates:
        s = score(c)
        if s < best_s:
            best, best_s = c, s
    return best


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
