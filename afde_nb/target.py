"""Target mode: find eps for "keep at most N parameters" or "at most X% more error" (method.md §5).

Partitions coarsen monotonically as eps grows (tested), so the parameter count of the reduced
network is monotone non-increasing in eps and bisection finds the smallest eps meeting a budget.
The error is not guaranteed monotone; the error search returns an eps whose measured error meets
the bound (the largest such eps bisection reaches).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .lump import Partition, lump
from .network import Network
from .reduce import reduce

_ITERS = 48


def reduced_params(net: Network, labels) -> int:
    """Dense parameter count of ``reduce(net, labels)`` without building it."""
    widths = [net.widths[0]] + [int(l.max()) + 1 if l.size else 0 for l in labels] + [net.widths[-1]]
    return sum(widths[k] * widths[k + 1] + (widths[k + 1] if l.has_bias else 0) for k, l in enumerate(net.layers))


def _grow(ok: Callable[[float], bool], want: bool, start: float = 1.0, limit: float = 1e15) -> float:
    """Double eps from ``start`` until ``ok(eps) == want``."""
    hi = start
    while ok(hi) != want:
        hi *= 2.0
        if hi > limit:
            raise ValueError("eps search did not reach the target")
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
    """The partition at the smallest eps whose reduced network has at most ``target_params``."""
    floor = reduced_params(net, [np.zeros(l.out_features, dtype=np.int64) for l in net.hidden])
    if target_params < floor:
        raise ValueError(f"target_params={target_params} is below {floor}, the size with one neuron per hidden layer")

    def ok(e: float) -> bool:
        return reduced_params(net, lump(net, e, mode, relative, threads, rms).labels) <= target_params

    if ok(0.0):
        return lump(net, 0.0, mode, relative, threads, rms)
    _, hi = _bisect(ok, 0.0, _grow(ok, True))
    return lump(net, hi, mode, relative, threads, rms)


def eps_for_error(net: Network, X: np.ndarray, y: np.ndarray, max_increase: float, mode: str, relative: bool,
                  threads: int = 0, rms=None) -> Partition:
    """The partition at the largest eps (found by bisection) whose reduced network's MSE on (X, y)
    is at most ``(1 + max_increase)`` times the original's."""
    base = float(np.mean((net.forward(X) - y) ** 2))
    bound = base * (1.0 + max_increase)

    def ok(e: float) -> bool:
        small = reduce(net, lump(net, e, mode, relative, threads, rms).labels)
        return float(np.mean((small.forward(X) - y) ** 2)) <= bound

    collapsed = [np.zeros(l.out_features, dtype=np.int64) for l in net.hidden]
    if float(np.mean((reduce(net, collapsed).forward(X) - y) ** 2)) <= bound:
        return lump(net, _grow(lambda e: lump(net, e, mode, relative, threads, rms).size == len(collapsed), True),
                    mode, relative, threads, rms)
    lo, _ = _bisect(ok, 0.0, _grow(ok, False))
    return lump(net, lo, mode, relative, threads, rms)
