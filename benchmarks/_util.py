"""Timing helpers for the benchmark scripts (best of several runs, tables)."""
from __future__ import annotations

import time
from typing import Callable


def best_time(fn: Callable[[], object], repeat: int = 3, budget_s: float = 60.0) -> float:
    """Best wall time of ``repeat`` calls (fewer when one call is slow)."""
    best = float("inf")
    t_start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - t_start > budget_s:
            break
    return best


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)
