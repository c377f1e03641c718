"""The output-level error estimate of a cut (issue 30): what ``Compression.estimated_error`` is.

For every cut of a merge path, an estimate of the model output's relative RMS error: the RMS of
the change of the outputs over their centred spread, ``sqrt(relative_mse)`` in the terms of
:func:`afde_nb.core.repair.deviation`, the figure ``calibration_error`` and ``held_out_error``
measure. Two parts (docs/method.md, "What eps means"):

* **first order** (:meth:`~afde_nb.core.path.MergePath.first_order`, data-free and calibrated):
  each layer's Ward bound sqrt(J) over the *centred* RMS of its consumer's outputs on the probes,
  a layer's relative error taken to reach the output unchanged, the layers' errors combined as
  uncorrelated (root of the sum of squares);
* **measured correction along the path** (calibrated, :func:`afde_nb.pipeline.compress.anchors`,
  beside the reduction it runs): at up to 12 anchor cuts of the path's order
  (:func:`anchor_cuts`: 95 % .. 5 % of the lumpable units kept, and first-order estimates 0.003 ..
  0.3) the model is reduced as compress
  reduces it (repaired on a seeded 3/4 of the calibration inputs where the repair is on, as for
  ``held_out_error``) and its output error measured on the other 1/4; the estimate at any cut is
  its first-order figure times the ratio measured / first order, interpolated in log-log between
  the anchors (held constant beyond them). This carries what first order cannot see: what the
  repair takes back, a network's gain between a layer and the output, the coherent sum over a
  convolution's positions, saturation. The anchors are measured once per path and calibration set
  (cached on the path, so a slider's later cuts cost nothing). The measured values are taken as
  their running maximum in order of first-order estimate (a later anchor never measures below an
  earlier one), so the estimate never falls along the path (:func:`within`).

What eps means (issue 30): on a merge path with ``relative=True`` (the default),
``compress(model, eps)`` keeps the most merges along the path's order whose estimate is at most
eps (:func:`within`): eps is the model output's relative RMS error one accepts, the same on every
model. The order is the path's own (its layers' bounds, one global order, as a budget walks it), so
an eps cut and a budget cut are points of the same sequence; the estimate only says where along it
eps stops. The first-order estimate rises with every merge (each layer's bound does), and so does
the corrected one (the anchors' running maximum), so the cut is also the last point before the
estimate first exceeds eps, it grows with eps, and eps = 0 keeps the exact merges only.
:meth:`~afde_nb.core.path.MergePath.partition` keeps its own meaning: one bound per layer, each
layer's own first-order error (the calibrated budget's per-layer scales and ``core.lump`` cut by it); so do
``relative=False`` and the paper's components.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..core.path import MergePath

#: lumpable units kept at the anchor cuts of the measured correction
ANCHORS = (0.95, 0.8, 0.6, 0.4, 0.25, 0.12, 0.05)
#: first-order estimates at the other anchor cuts: the range of eps a user asks for, so the
#: correction at an eps is measured near it, not interpolated across decades (the digits CNN's
#: first 40 % of units are ReLUs dead on every input, merged at first order ~1e-7: its 95 % and
#: 80 % anchors sit there, and the next one at first order 0.075)
LEVELS = (0.003, 0.01, 0.03, 0.1, 0.3)
#: a guard's factor: a calibrated cut whose measured error exceeds this many times its estimate warns
GUARD = 3.0


def merges_of(path: MergePath, labels) -> list[int]:
    """Merges per layer of a partition of ``path``'s layers (each merge removes one block)."""
    return [lp.n - (int(np.max(l)) + 1 if np.size(l) else 0) for lp, l in zip(path.layers, labels)]


def cache_key(calib, how) -> tuple:
    """The anchors' cache key: the repair setting and a digest of the calibration inputs."""
    h = hashlib.sha1()
    for a in _arrays(calib):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return how, h.hexdigest()


def _arrays(x) -> list[np.ndarray]:
    if hasattr(x, "kwargs") and isinstance(x.kwargs, dict):  # a batch of keyword inputs (models/surgery.Batch)
        x = x.kwargs
    if isinstance(x, dict):
        return [a for k in sorted(x) for a in _arrays(x[k])]
    if isinstance(x, (tuple, list)):
        return [a for v in x for a in _arrays(v)]
    if hasattr(x, "detach"):
        return [x.detach().cpu().numpy()]
    try:
        return [np.asarray(x)]
    except (TypeError, ValueError):  # something else: keyed by identity (a new object measures anew)
        return [np.asarray([id(x)])]


def anchor_cuts(path: MergePath, seq: list[list[int]] | None = None) -> list[tuple[int, float]]:
    """(index into ``path.sequence()``, first-order estimate) of the anchor cuts: the first cut
    keeping at most each fraction :data:`ANCHORS` of the lumpable units, and the last whose
    first-order estimate is at most each of :data:`LEVELS`; lossless cuts (estimate 0) and cuts
    within 5 % of another's estimate left out (they would measure the same correction)."""
    seq = path.sequence() if seq is None else seq
    n = np.array([lp.n for lp in path.layers])
    kept = np.array([(n - np.asarray(ms)).sum() for ms in seq])
    first = np.array([path.first_order(ms) for ms in seq])  # rises along the order
    idx = {int(np.argmax(kept <= f * n.sum())) if (kept <= f * n.sum()).any() else len(seq) - 1 for f in ANCHORS}
    idx |= {int(np.searchsorted(first, t, side="right")) - 1 for t in LEVELS if first[-1] > t}
    out = []
    for i in sorted(i for i in idx if i >= 0 and first[i] > 0):
        if not out or first[i] > 1.05 * out[-1][1]:
            out.append((i, float(first[i])))
    return out


def corrected(first: float, marks: list[tuple[float, float]]) -> float:
    """``first`` times the measured / first-order ratio of the anchors ``marks``, interpolated in
    log-log (constant beyond the first and last anchor); ``first`` itself without anchors."""
    if first <= 0 or not marks:
        return float(first)
    marks = sorted(marks)
    lf = np.log([m[0] for m in marks])
    # the running maximum of the measured values: the estimate never falls along the path (where it
    # would, it stays level, exactly: the log of the estimate is interpolated, not the ratio)
    lm = np.log(np.maximum.accumulate([m[1] for m in marks]))
    x = np.log(first)
    if x <= lf[0]:
        return float(first * np.exp(lm[0] - lf[0]))
    if x >= lf[-1]:
        return float(first * np.exp(lm[-1] - lf[-1]))
    return float(np.exp(np.interp(x, lf, lm)))


def estimate(path: MergePath, merges: list[int], marks: list[tuple[float, float]] | None = None) -> float:
    """The output-level estimate at ``merges`` (see the module docstring)."""
    return corrected(path.first_order(merges), marks or [])


def within(path: MergePath, eps: float, marks: list[tuple[float, float]]) -> list[int]:
    """Merges per layer of ``compress(model, eps)``'s cut on a merge path (``relative=True``): the
    most merges along the path's order whose estimate is at most ``eps`` (see the module
    docstring); the exact merges alone for eps = 0 or where even the first lossy merge's estimate
    exceeds eps. The estimate rises along the order, so the cut is found by bisection."""
    exact = np.array([lp.exact for lp in path.layers], dtype=np.int64)
    if eps <= 0 or all(lp.n - 1 <= lp.exact for lp in path.layers):
        return exact.tolist()
    events = np.asarray(path._events(), dtype=np.int64)

    def at(k: int) -> list[int]:
        return (exact + np.bincount(events[:k], minlength=len(exact))).tolist()

    lo, hi = 0, len(events)  # the last k with estimate(at(k)) <= eps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(path, at(mid), marks) <= eps:
            lo = mid
        else:
            hi = mid - 1
    return at(lo)


def curve(path: MergePath, marks: list[tuple[float, float]], points: int = 64) -> list[tuple[float, float]]:
    """(eps, fraction of parameters kept) along the path in ``compress``'s meaning of eps (the
    estimate of each cut, :func:`within`): what a slider moves through. ``MergePath.curve`` gives
    the same cuts against the per-layer bound."""
    seq = path.sequence()
    full = path.net.num_params
    idx = np.unique(np.linspace(0, len(seq) - 1, min(points, len(seq))).round().astype(int))
    pts = [(estimate(path, seq[i], marks), path.params_at(seq[i]) / full) for i in idx]
    # where the estimate is level, an eps reaches only the last cut at it
    return [p for p, q in zip(pts, pts[1:] + [(np.inf, 0.0)]) if q[0] > p[0]]


def meeting(path: MergePath, target: float, marks: list[tuple[float, float]], factor: float = 1.0,
            output_level: bool = True) -> tuple[float, float] | None:
    """(eps, estimate) of the last cut of the path's order whose estimate times ``factor`` is at
    most ``target``; None where not even the first lossy merge is. The eps is in ``compress``'s
    meaning: the cut's estimate (``output_level``, a relative merge path), else its per-layer
    bound (:meth:`~afde_nb.core.path.MergePath.eps_of`)."""
    best = None
    for ms in path.sequence():
        e = estimate(path, ms, marks)
        if e * factor > target:
            break
        if any(m > lp.exact for lp, m in zip(path.layers, ms)):
            best = (e if output_level else path.eps_of(ms), e)
    return best


def guard(path: MergePath, merges: list[int], eps: float | None, relative: bool, est: float | None,
          measured: float | None, marks, what: str) -> str | None:
    """The warning of a calibrated ``compress(model, eps=...)`` whose measured output error exceeds
    :data:`GUARD` times its estimate (and, where eps is the output-level estimate, eps itself: an
    error within eps is what was asked for); None otherwise. It names the eps whose cut's estimate, times
    the ratio measured / estimate seen here, is within the error asked for: eps itself where eps
    is the output-level estimate (``relative``: the cut's estimate is at most eps), else (a
    per-layer bound, ``relative=False``) the estimate of this cut."""
    if est is None or measured is None or eps is None or not np.isfinite(measured):
        return None
    if not any(m > lp.exact for lp, m in zip(path.layers, merges)):
        return None
    if not (est > 0 and measured > GUARD * est) or (relative and measured <= eps):
        return None  # within eps, the error one accepted: the estimate was off, the cut is not
    target = eps if relative and eps > 0 else est
    factor = measured / est
    meet = meeting(path, target, marks, factor, output_level=relative)
    head = (f"eps={eps:g}: the model output's measured relative RMS error ({what}) is {measured:.3g}, "
            f"the estimate was {est:.3g}: more than {GUARD:g}x the estimate")
    tail = (f"; eps={meet[0]:.3g} would meet {target:.3g} (its estimate {meet[1]:.3g} times the measured "
            f"ratio {factor:.3g}: {meet[1] * factor:.3g})" if meet else
            f"; no lossy cut of this path has an estimate within {target:.3g} / {factor:.3g}")
    return head + tail
