"""Knobs of the C++ engine (``afde_nb._core``) that never change a result, only how it is computed.

The engine's OpenMP loops and its lock-free union-find run in parallel only on inputs above a size
threshold (below it, starting threads costs more than it saves). Tests lower the threshold to 0 so
that the parallel paths run on small networks too::

    with afde_nb.core.engine.parallel_threshold(0):
        afde_nb.lump(net, 0.3, threads=4)       # parallel even on a small network
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from .. import _core
from ..errors import InvalidArgumentError

__all__ = ["openmp_threads", "parallel_threshold", "get_parallel_threshold", "set_parallel_threshold"]


def openmp_threads() -> int:
    """Threads OpenMP uses by default; 0 when the engine was built without OpenMP."""
    return int(_core.openmp_threads())


def get_parallel_threshold() -> float | None:
    """The threshold set by :func:`set_parallel_threshold`, or ``None`` when every loop uses its
    own default."""
    t = float(_core.parallel_threshold())
    return None if t < 0 else t


def set_parallel_threshold(work: float | None) -> None:
    """Run every parallel loop of the engine in parallel from ``work`` (rows x columns of the loop)
    up, instead of at each loop's own default size; ``0``: always (when more than one thread is
    asked for). ``None`` restores the defaults. Process-wide."""
    if work is None:
        _core.set_parallel_threshold(-1.0)
        return
    w = float(work)
    if math.isnan(w) or w < 0:
        raise InvalidArgumentError(f"parallel threshold must be >= 0 or None, got {work!r}")
    _core.set_parallel_threshold(w)


@contextmanager
def parallel_threshold(work: float | None) -> Iterator[None]:
    """Context manager: :func:`set_parallel_threshold` for the ``with`` block, then the previous
    setting back (even on an exception)."""
    old = get_parallel_threshold()
    set_parallel_threshold(work)
    try:
        yield
    finally:
        set_parallel_threshold(old)
