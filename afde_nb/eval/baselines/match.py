"""Compare methods at equal size: the ``amount`` that gives the most parameters <= a target."""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from . import flap, folding, magnitude, structured, wanda
from ...errors import BudgetUnreachableError, InvalidArgumentError
from ._common import Pruned

#: method -> factory of a closed-form params(amount) (no pruning run); others are searched by running
_COUNTERS: dict[Callable, Callable] = {
    magnitude.magnitude_prune: magnitude._counter,
    wanda.wanda_prune: wanda._counter,
    structured.structured_prune: structured._counter,
    folding.fold_prune: folding._counter,
    flap.flap_prune: flap._counter,
}


def _first_at_most(count: Callable[[float], int], target: int, lo: float, hi: float) -> float:
    """Smallest float ``a`` in (lo, hi] with count(a) <= target, given count(lo) > target >= count(hi)
    and count non-increasing."""
    while True:
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            return hi
        if count(mid) <= target:
            hi = mid
        else:
            lo = mid


def _tidy(count: Callable[[float], int], a: float, value: int) -> float:
    """The shortest decimal >= ``a`` that still gives ``value`` (e.g. 0.5 rather than 0.4999...)."""
    for digits in range(1, 18):
        scale = 10.0 ** digits
        b = min(1.0, math.ceil(a * scale) / scale)
        if count(b) == value:
            return b
    return a


def match_params(method_fn: Callable[..., Pruned], model: nn.Module, target_params: int, **kwargs) -> Pruned:
    """Run ``method_fn(model, amount, **kwargs)`` at the ``amount`` whose ``params`` is the largest
    one <= ``target_params``.

    For the methods of this package params(amount) is evaluated in closed form from the weights
    (and calibration) without pruning, and searched by bisection over ``amount``; any other
    ``method_fn`` (non-increasing params in amount) is bisected by running it. The smallest such
    amount is used, rounded to the shortest decimal that gives the same count. Raises BudgetUnreachableError
    when even ``amount = 1`` exceeds the target.
    """
    if isinstance(target_params, bool) or not float(target_params).is_integer():
        raise InvalidArgumentError(f"target_params must be an integer, got {target_params!r}")
    target = int(target_params)
    if method_fn in _COUNTERS:
        count = _COUNTERS[method_fn](model, **kwargs)
    else:
        cache: dict[float, int] = {}

        def count(a: float) -> int:
            if a not in cache:
                cache[a] = method_fn(model, a, **kwargs).params
            return cache[a]

    if count(0.0) <= target:
        amount = 0.0
    elif count(1.0) > target:
        raise BudgetUnreachableError(
            f"{getattr(method_fn, '__name__', method_fn)} cannot go down to {target} parameters: "
            f"amount = 1 leaves {count(1.0)}")
    else:
        amount = _first_at_most(count, target, 0.0, 1.0)
        amount = _tidy(count, amount, count(amount))
    result = method_fn(model, amount, **kwargs)
    if result.params != count(amount):  # the closed form and the method disagree: a bug, not a user error
        raise RuntimeError(f"{result.method}: predicted {count(amount)} parameters at amount={amount}, "
                           f"got {result.params}")
    return result
