"""The output-level error estimate of a cut (issue 30): what ``Compression.estimated_error`` is.

For every cut of a merge path, an estimate of the model output's relative RMS error: the RMS of
the change of the outputs over their centred spread, ``sqrt(relative_mse)`` in the terms of
:func:`afde_nb.core.repair.deviation`, the figure ``calibration_error`` and ``held_out_error``
measure. Two parts (docs/method.md, "What the estimate is"):

* **first order** (:meth:`~afde_nb.core.path.MergePath.first_order`, data-free and calibrated):
  each layer's Ward bound sqrt(J) over the *centred* RMS of its consumer's outputs on the probes,
  a layer's relative error taken to reach the output unchanged, the layers' errors combined as
  uncorrelated (root of the sum of squares);
* **measured correction along the path** (calibrated, :func:`afde_nb.pipeline.compress.anchors`,
  beside the reduction it runs): at :data:`ANCHORS` cuts of
  the path's eps order (95 % .. 5 % of the lumpable units kept) the model is reduced as compress
  reduces it (repaired on a seeded 3/4 of the calibration inputs where the repair is on, as for
  ``held_out_error``) and its output error measured on the other 1/4; the estimate at any cut is
  its first-order figure times the ratio measured / first order, interpolated in log-log between
  the anchors (held constant beyond them). This carries what first order cannot see: what the
  repair takes back, a network's gain between a layer and the output, the coherent sum over a
  convolution's positions, saturation. The anchors are measured once per path and calibration set
  (cached on the path, so a slider's later cuts cost nothing).
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..core.path import MergePath

#: lumpable units kept at the anchor cuts of the measured correction
ANCHORS = (0.95, 0.8, 0.6, 0.4, 0.25, 0.12, 0.05)
#: a guard's factor: a calibrated cut whose measured error exceeds this many times its estimate (or
#: its relative eps) warns
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


def corrected(first: float, marks: list[tuple[float, float]]) -> float:
    """``first`` times the measured / first-order ratio of the anchors ``marks``, interpolated in
    log-log (constant beyond the first and last anchor); ``first`` itself without anchors."""
    if first <= 0 or not marks:
        return float(first)
    lf = np.log([m[0] for m in marks])
    lr = np.log([m[1] / m[0] for m in marks])
    return float(first * np.exp(np.interp(np.log(first), lf, lr)))


def estimate(path: MergePath, merges: list[int], marks: list[tuple[float, float]] | None = None) -> float:
    """The output-level estimate at ``merges`` (see the module docstring)."""
    return corrected(path.first_order(merges), marks or [])


def meeting(path: MergePath, target: float, marks: list[tuple[float, float]], factor: float = 1.0
            ) -> tuple[float, float] | None:
    """(eps, estimate) of the last cut of the path's eps order whose estimate times ``factor`` is at
    most ``target``; None where not even the first lossy merge is."""
    best = None
    for ms in path.sequence():
        e = estimate(path, ms, marks)
        if e * factor > target:
            break
        if any(m > lp.exact for lp, m in zip(path.layers, ms)):
            best = (path.eps_of(ms), e)
    return best


def guard(path: MergePath, merges: list[int], eps: float | None, relative: bool, est: float | None,
          measured: float | None, marks, what: str) -> str | None:
    """The warning of a calibrated ``compress(model, eps=...)`` whose measured output error exceeds
    :data:`GUARD` times its estimate, or (``relative``) :data:`GUARD` times eps; None otherwise."""
    if est is None or measured is None or eps is None or not np.isfinite(measured):
        return None
    if not any(m > lp.exact for lp, m in zip(path.layers, merges)):
        return None
    over_est = est > 0 and measured > GUARD * est
    over_eps = relative and eps > 0 and measured > GUARD * eps
    if not (over_est or over_eps):
        return None
    target = min(est if over_est else np.inf, eps if over_eps else np.inf)
    factor = measured / est if over_est and est > 0 else 1.0
    meet = meeting(path, target, marks, factor)
    head = (f"eps={eps:g}: the model output's measured relative RMS error ({what}) is {measured:.3g}, "
            f"the estimate was {est:.3g}")
    why = []
    if over_est:
        why.append(f"more than {GUARD:g}x the estimate")
    if over_eps:
        why.append(f"more than {GUARD:g}x eps, which bounds each layer's own error, not the output's")
    tail = (f"; eps={meet[0]:.3g} would meet {target:.3g} (its estimate {meet[1] * factor:.3g})" if meet else
            f"; no lossy cut of this path has an estimate within {target:.3g}")
    return head + ": " + " and ".join(why) + tail
