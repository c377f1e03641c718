"""The one verb: ``compress(model, eps)`` -> :class:`~afde_nb.pipeline.result.Compression`.

One pipeline for every model: capture (:func:`~afde_nb.models.capture.capture`: the model as
chains of groups, each a network; a plain stack is a model with one chain) -> one merge path over
every chain's hidden layers (or the paper's eps-graph components, where the polynomial ODE is
defined) -> cut (eps, a parameter budget or an error target) -> the quotient of each chain (+ the
least-squares repair of its layers after a lossy merge) -> written back
(:meth:`~afde_nb.models.capture.Captured.write`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..core.lump import activation_rms, check_eps, check_method, check_mode, lump
from ..core.network import Network, as_inputs
from ..core.partition import Partition
from ..core.path import MergePath
from ..core.repair import deviation
from ..core.target import SEGMENTS, check_floor, eps_for_error, eps_for_params, merge_caps, scale_candidates
from ..core.target import for_params as floored_for_params, sequence as floored_sequence, uniform as floored_uniform
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..models.capture import Captured, capture
from ..models.export import batch_bounds
from .estimate import anchor_cuts, cache_key
from .result import Compression, LayerSummary, layer_summaries
from .split import choose, split_inputs as _split

__all__ = ["Compression", "LayerSummary", "compress", "layer_summaries"]


def compress(model: nn.Module, eps: float | None = None, *, method: str = "ward", mode: str = "backward",
             relative: bool = True, symmetry: bool = True, calibration=None, repair: bool | str | None = None,
             target_params: int | None = None, target_error: float | None = None, calibration_targets=None,
             floor: int | float | None = None,
             data_aware: bool = False, threads: int = 0, path: MergePath | None = None,
             approx: int | None = None, example_inputs=None, progress: bool | None = None) -> Compression:
    """Lump the hidden units of ``model`` that behave alike; return the smaller dense model.

    ``method="ward"`` (default) cuts a Ward merge path of aligned neurons, symmetries included
    (``symmetry``); ``"complete"`` uses complete linkage; ``"components"`` is the paper's eps-graph
    components (eps-BDE for ``mode="backward"``, eps-FDE for ``"forward"``), as in the first release,
    for plain stacks (where the polynomial ODE is defined). On a merge path with
    ``relative=True`` (the default) eps is the model output's relative RMS error one accepts (issue
    30): the cut is the most merges along the path's order whose estimate
    (``Compression.estimated_error``: first order data-free, corrected by errors measured along the
    path where calibrated) is at most eps, so eps = 0.1 means about 10 % of the outputs' spread on
    every model (:mod:`afde_nb.pipeline.estimate`). With ``relative=False`` eps is the path's
    per-layer bound on the next layer's pre-activations, as ``MergePath.partition(eps)`` cuts (see
    :mod:`afde_nb.core.path`), and for the components the paper's eps. ``eps = 0`` (the default)
    keeps the function exactly.

    ``calibration`` (inputs as the model takes them): the bounds are measured on it, the reduced
    model's deviation is reported, and ``repair`` (default: on when calibration is given) refits
    the layers after each lossy merge by least squares so their pre-activations match the
    original's (:mod:`afde_nb.core.repair`); ``repair="pseudo"`` does so data-free on
    standard-normal pseudo-inputs; ``repair=False`` never. A model that torch.fx cannot trace whole (a
    Hugging Face model) is read through ``torch.export`` on ``example_inputs`` (else two calibration
    rows, else its ``dummy_inputs``); inputs may be a dict of keyword tensors batched on their first
    axis (``{"input_ids": ..., "attention_mask": ...}``, :mod:`afde_nb.models.hf`).

    Target mode, instead of eps: ``target_params=N`` keeps at most N parameters (with calibration,
    the split between layers is chosen among candidate splits, each cut exactly at N, by measured
    error: from each chain's own calibration rows, reduced and repaired chain by chain and held out
    by input, with each chain's gain to the output measured once per part of the chains and only
    the plain splits and the best two by that estimate scored on the model's outputs; a plain
    stack's candidates all on its own rows, with no run of the torch model: docs/method.md, "The
    split of a calibrated budget", :mod:`afde_nb.pipeline.split`); ``target_error=0.01`` the smallest model
    whose MSE on ``calibration`` against ``calibration_targets`` is at most 1 % above the original's.
    ``floor`` (budgets on a merge path): no hidden layer goes below this many units (an int) or this
    fraction of its units (a float in (0, 1]) by lossy merges; None (default): no floor, a layer may
    keep one unit. A budget at or above the model's size merges nothing lossy, which
    ``Compression.table()`` says.

    ``data_aware=True`` (components only) weights each incoming coefficient by the calibration RMS
    of its source neuron. ``path``: the :class:`~afde_nb.core.path.MergePath` of an earlier call
    with the same model and setting (``Compression.path``), reused so a new eps or budget costs only
    the cut and the quotient (a slider). ``approx=r`` (merge paths): an approximate merge path from
    r probe rows in float32 (:func:`~afde_nb.core.path.merge_path`), for speed at scale; eps = 0
    stays exact. ``model`` is never modified.

    Where a repair ran on calibration data its reported error is in-sample. ``held_out_error``
    estimates it out of sample (:func:`held_out_error`; the returned model is still the refit on
    every row), and a repair with fewer rows than it has coefficients to fit warns
    (:func:`underdetermined`), saying how many rows would be enough.

    ``progress``: a tqdm bar on stderr over the chains' merge paths, the budget split (one step)
    and the chains' reductions (issue 29); ``None`` (default) shows it for a model with more than
    one chain when stderr is a terminal, ``False`` never, ``True`` always.
    """
    mode, method = check_mode(mode), check_method(method)
    given = [name for name, v in (("eps", eps), ("target_params", target_params), ("target_error", target_error))
             if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"give one of eps, target_params, target_error (got {', '.join(given)})")
    if eps is not None:
        check_eps(eps)
    if target_params is not None and (isinstance(target_params, bool) or not isinstance(target_params, (int, np.integer))
                                      or target_params < 0):
        raise InvalidArgumentError(f"target_params must be a non-negative integer, got {target_params!r}")
    if target_error is not None:
        check_eps(target_error)  # a finite number >= 0
    floor = check_floor(floor)
    if floor is not None and (target_params is None and target_error is None or method == "components"):
        raise InvalidArgumentError("floor applies to a budget (target_params or target_error) cut from a merge path "
                                   f"(method 'ward' or 'complete'), got {'eps' if eps is not None else 'no budget'} "
                                   f"with method {method!r}")
    if data_aware and method != "components":
        raise InvalidArgumentError("data_aware=True applies to method='components'; the merge paths "
                                   "measure their bounds on the calibration inputs already")
    cap = capture(model, example_inputs, calibration)
    cap.check(method, mode, approx)
    bar = progress_bar(progress, len(cap.nets) * (1 if path is not None or method == "components" else 2)
                       + (target_params is not None and calibration is not None), len(cap.nets))
    calib = cap.calibration(calibration) if calibration is not None else None
    how = _repair_how(repair, calib)
    if data_aware and calib is None:
        raise InvalidArgumentError("data_aware=True needs calibration inputs")
    # one run of the model gives the chains' rows and its outputs (the deviations' reference)
    rows, want = cap.rows_and_output(calib) if calib is not None else (None, None)
    if path is not None:
        _check_path(path, cap, method, mode, relative, symmetry, calib, approx)
    elif method != "components":
        path = build_path(cap, rows, method=method, mode=mode, relative=relative, symmetry=symmetry,
                          threads=threads, approx=approx, bar=bar)
    fit = _fit_rows(cap, how, rows)
    split = {}  # how a calibrated target_params was split between layers (Compression.budget_split)
    if target_params is not None:
        part, split = _for_params(cap, path, int(target_params), calib, how, mode, relative, threads, bar=bar,
                                  floor=floor, rows=rows, want=want)
    elif target_error is not None:
        part = _for_error(cap, path, calib, calibration_targets, float(target_error), fit, mode, relative, threads,
                          floor=floor)
    elif path is not None:
        part = eps_cut(cap, path, 0.0 if eps is None else eps, calib, how)
    else:
        rms = activation_rms(cap.nets[0], rows[0][0]) if data_aware else None
        part = lump(cap.nets[0], 0.0 if eps is None else eps, mode, relative, threads, rms, method="components")

    quotients, nets, starts = _reduce(cap, part, fit, bar=bar)
    ran = any(s is not None for s in starts)
    reduced = cap.write(nets)
    before = after = held = None
    if calib is not None:
        after = deviation(want, cap.output(calib, nets, reduced))
        before = deviation(want, cap.output(calib, quotients)) if ran else None
    if ran and how == "calibration":
        short = underdetermined(nets, starts, fit, len(calib))
        if short:
            warnings.warn(short, UserWarning, stacklevel=2)
        held = held_out_error(cap, part, calib, want)
    target = None
    if target_params is not None or target_error is not None:
        target = {"params": target_params} if target_params is not None else {"error_increase": target_error}
        target.update({"floor": floor} if floor is not None else {})
    layers = [s for net, p in zip(cap.nets, cap.split(part)) for s in layer_summaries(net, p)]
    estimated, marks = _estimated(cap, path, part, calib, how, eps if target is None else None, relative,
                                  held or after)
    bar.close()
    return Compression(
        model=reduced, partition=[np.array(l) for l in part.labels], params_before=cap.num_params,
        params_after=cap.num_params_with([int(l.max()) + 1 if l.size else 0 for l in part.labels]), layers=layers,
        mode=part.mode, eps=_eps_reported(part, path, target, estimated), relative=part.relative, method=method,
        symmetry=bool(symmetry), target=target,
        repaired=how if ran else None, calibration_error=after, calibration_error_before_repair=before,
        held_out_error=held, path=path, budget_split=split or None, estimated_error=estimated,
        estimate_anchors=tuple(marks),
        groups=cap.discovery, networks=tuple(nets),
        example_inputs=cap.example(calibration if example_inputs is None else example_inputs),
        batch_bounds=batch_bounds(model),
        methods=cap.methods, formats=cap.formats)


def eps_cut(cap: Captured, path: MergePath, eps: float, calib, how: str | None) -> Partition:
    """``compress(model, eps)``'s cut of a merge path (issue 30): with ``relative=True`` the most
    merges along the path's order whose output-level estimate (:mod:`afde_nb.pipeline.estimate`,
    corrected by the anchors measured on ``calib`` with repair ``how`` where given) is at most eps
    (:func:`~afde_nb.pipeline.estimate.within`); with ``relative=False`` and for eps = 0 the path's
    own per-layer cut (:meth:`~afde_nb.core.path.MergePath.partition`: exact merges only at 0)."""
    from .estimate import within

    if eps <= 0 or not path.relative:
        return path.partition(eps)
    marks = anchors(cap, path, calib, how) if calib is not None else []
    return path.partition_at(within(path, eps, marks), eps)


def _eps_reported(part: Partition, path, target, estimated: float | None) -> float:
    """``Compression.eps``: the eps given, or for a budget the eps of its cut in ``compress``'s
    meaning: on a relative merge path its estimate (issue 30), else its per-layer bound."""
    if target is not None and path is not None and path.relative and estimated is not None:
        return float(estimated)
    return part.eps


def _estimated(cap: Captured, path, part: Partition, calib, how, eps, relative: bool, measured: dict | None
               ) -> tuple[float | None, list]:
    """``Compression.estimated_error`` of ``part`` (issue 30, :mod:`afde_nb.pipeline.estimate`; None
    for the paper's components) and the anchors it was corrected by, and the guard: a calibrated
    ``eps`` whose measured output error (held out where measured, else on the calibration inputs)
    exceeds 3x the estimate warns with both numbers and the eps that would meet it."""
    from .estimate import estimate, guard, merges_of

    if path is None:
        return None, []
    ms = merges_of(path, part.labels)
    marks = anchors(cap, path, calib, how) if calib is not None else []
    est = estimate(path, ms, marks)
    if calib is not None and eps is not None and measured is not None:
        what = "held out" if "fit_n" in measured else "on the calibration inputs"
        msg = guard(path, ms, eps, relative, est, float(np.sqrt(measured["relative_mse"])), marks, what)
        if msg:
            warnings.warn(msg, UserWarning, stacklevel=3)
    return est, marks


def build_path(cap: Captured, rows, *, method: str, mode: str, relative: bool, symmetry: bool, threads: int = 0,
               approx: int | None = None, bar=None) -> MergePath:
    """One merge path over every chain's hidden layers: each chain's path on its own probe rows
    (``rows``: the chains' layer inputs on calibration data; None: pseudo-inputs), joined so that
    an eps cuts every chain at the same bound and a parameter budget is spent along one global
    order of bounds, counted on the whole model. A plain stack's path is its chain's own."""
    paths = [_step(bar, cap.kind(k).path(net, method=method, mode=mode, relative=relative, symmetry=symmetry,
                                         threads=threads, approx=approx, **cap.probes(rows, k)))
             for k, net in enumerate(cap.nets)]
    if cap.stack:
        return paths[0]
    return MergePath(cap, [lp for p in paths for lp in p.layers], mode, method, bool(relative), bool(symmetry),
                     rows is not None, {"approx": int(approx)} if approx else {})


def reduce_chains(cap: Captured, part: Partition, fit: list) -> tuple[list[Network], list[Network], bool]:
    """Each chain's quotient by its share of ``part``, and the same refit where a merge was lossy
    (:func:`~afde_nb.core.repair.repair` on the chain's input rows ``fit[k]``, None: no repair);
    whether any refit ran."""
    quotients, nets, starts = _reduce(cap, part, fit)
    return quotients, nets, any(s is not None for s in starts)


def progress_bar(progress: bool | None, total: int, chains: int):
    """compress's tqdm bar (stderr) of ``total`` steps: ``progress`` None shows it for more than
    one chain when stderr is a terminal (tqdm's ``disable=None``), True always, False never."""
    from tqdm.auto import tqdm

    disable = (None if chains > 1 else True) if progress is None else not progress
    return tqdm(total=total, desc="afde compress", unit="step", disable=disable, leave=False)


def _step(bar, value):
    """``value``, one step of ``bar`` done (None: no bar)."""
    if bar is not None:
        bar.update(1)
    return value


def _reduce(cap: Captured, part: Partition, fit: list, bar=None
            ) -> tuple[list[Network], list[Network], list[int | None]]:
    """:func:`reduce_chains`, with each chain's first refit layer (layers ``start..L`` are refit;
    None: the chain was not refit)."""
    quotients, nets, starts = [], [], []
    for k, (net, p, rows) in enumerate(zip(cap.nets, cap.split(part), fit)):
        # the chain's kind (models/chains.py): the quotient, and the refit where a merge was lossy
        small, fixed, start = _step(bar, cap.kind(k).reduce(net, p, rows))
        quotients.append(small)
        starts.append(start)
        nets.append(fixed)
    return quotients, nets, starts


#: rows per coefficient that make a repair "enough": ``ENOUGH * (inputs + 1)`` rows (see underdetermined)
ENOUGH = 2
#: the fewest calibration inputs worth splitting into a fit and a held-out part (as for the budget split)
HOLD_OUT_MIN = 8


def underdetermined(nets: list[Network], starts: list, fit: list, n_inputs: int) -> str | None:
    """What to warn when a chain's repair has fewer rows than coefficients, else None.

    Layer k's refit (:func:`~afde_nb.core.repair.repair`) solves for ``in_k + 1`` coefficients
    per output (the weights and the bias); with n <= in_k rows the centred inputs have rank at
    most n - 1 < in_k, the ridge's minimum-norm answer fits the rows exactly, and the calibration
    error it reports (in-sample) says nothing about other inputs. So a chain is under-determined
    when its fit rows ``fit[k]`` number fewer than ``in + 1`` for the widest layer it refits
    (``nets[k].layers[starts[k]:]``, the reduced widths).

    The rows suggested are ``ENOUGH * (in + 1)``, twice the minimum, because the minimum is not
    enough in practice. Measured (trained tanh MLPs 64-64 on glycolysis, rlc and
    random_mass_action, eps = 0.1, three draws of rows each; test MSE over that of a repair on 512
    rows): n = in + 1 rows gave 2.0-6.0x (median), 1.5 (in + 1) rows 1.1-2.2x, 2 (in + 1) rows
    1.04-1.32x, 4 (in + 1) rows 1.0-1.09x. Where rows are tokens of a sequence (several rows per
    calibration input) the count is converted to calibration inputs."""
    worst = None
    for net, start, rows in zip(nets, starts, fit):
        if start is None or rows is None or not len(rows):
            continue
        width = max(l.in_features for l in net.layers[start:])
        if len(rows) < width + 1:
            per = len(rows) / max(n_inputs, 1)  # rows per calibration input
            need = math.ceil(ENOUGH * (width + 1) / per)
            if worst is None or need > worst[0]:
                worst = (need, width, len(rows))
    if worst is None:
        return None
    need, width, rows = worst
    return (f"the repair is under-determined: it refits a layer with {width} inputs on {rows} rows (fewer than "
            f"{width} + 1), so it fits them exactly and the calibration error it reports is in-sample; give about "
            f"{need} calibration inputs ({ENOUGH} x ({width} + 1) rows: {width} + 1 only just determine the fit). "
            "Compression.held_out_error is the error of the same refit on 3/4 of the rows, measured on the other 1/4")


def held_out_error(cap: Captured, part: Partition, calib, want: np.ndarray | None = None) -> dict | None:
    """The repair's error out of sample: ``part`` reduced and refit on a seeded 3/4 of the
    calibration inputs (:func:`_split`), its outputs' deviation from the original's on the other
    1/4 (:func:`~afde_nb.core.repair.deviation`, plus ``fit_n``: the inputs it was fit on). None
    with fewer than :data:`HOLD_OUT_MIN` inputs; ``want``: the original's outputs on ``calib``, where
    known (its rows on the held-out inputs are the reference: no second run of the original, unless
    their width differs from the held-out run's, as for outputs whose width depends on the batch:
    CLIP's (n, n) logits are left out of the comparison, :func:`~afde_nb.models.surgery.output_rows`). The returned model is not this one: it is refit on
    every row, so this errs on the high side where rows are few (measured, a trained 64-64 tanh MLP
    on glycolysis, eps = 0.1, relative MSE on 16 / 48 / 512 rows: in-sample 3e-10 / 3e-4 / 2e-3,
    held out 0.42 / 0.11 / 3.1e-3, on 2,000 test inputs 0.15 / 0.029 / 2.7e-3)."""
    if len(calib) < HOLD_OUT_MIN:
        return None
    fit, held = _split(len(calib))
    _, nets, _ = _reduce(cap, part, _fit_rows(cap, "calibration", cap.rows(calib[fit])))
    x = calib[held]
    got = cap.output(x, nets)
    ref = want[held] if want is not None else None
    if ref is None or ref.shape[1] != got.shape[1]:
        # an output's width per row depends on the batch (an (n, n) one output_rows does not know
        # by name): the original run on the held-out rows, compared at their batch size
        ref = cap.output(x)
    return {**deviation(ref, got), "fit_n": int(len(fit))}


def _fit_rows(cap: Captured, how: str | None, rows) -> list:
    """Per chain, the rows its repair refits on: the chain's inputs on the calibration data
    (``how="calibration"``) or on pseudo-inputs (``"pseudo"``); None where no repair runs."""
    if how is None:
        return [None] * len(cap.nets)
    src = rows if how == "calibration" else cap.rows(None, first=True)
    return [r[0] if cap.repairable(k) else None for k, r in enumerate(src)]


def _check_path(path: MergePath, cap: Captured, method, mode, relative, symmetry, calib, approx) -> None:
    """A reused path must be of this model (its chains' widths and weights) and of this setting."""
    if not isinstance(path, MergePath):
        raise InvalidArgumentError(f"path must be a MergePath (Compression.path), got {type(path).__name__}")
    want = {"method": method, "mode": mode, "relative": bool(relative), "symmetry": bool(symmetry),
            "calibrated": calib is not None}
    got = {k: getattr(path, k) for k in want}
    if got != want:
        raise InvalidArgumentError(f"path was built for {got}, this call asks for {want}")
    if approx is not None and path.meta.get("approx") != approx:
        raise InvalidArgumentError(f"path was built with approx={path.meta.get('approx')}, this call asks for "
                                   f"approx={approx}")
    nets = path.net.nets if isinstance(path.net, Captured) else [path.net]
    if len(nets) != len(cap.nets) or not all(_same(a, b) for a, b in zip(nets, cap.nets)):
        raise InvalidArgumentError("path was built for another model (its weights differ); build a new one")


def _same(a: Network, b: Network) -> bool:
    # to_network's arrays are views of the model: equal arrays can be the same memory written since
    if a.meta.get("versions") != b.meta.get("versions") or b.meta.get("versions", ()) is None:
        return False
    return a.widths == b.widths and all(np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
                                        for x, y in zip(a.layers, b.layers))


def _repair_how(repair, calib) -> str | None:
    """None (no repair), "calibration" or "pseudo"."""
    if repair is None:
        return "calibration" if calib is not None else None
    if repair is False:
        return None
    if repair is True:
        if calib is None:
            raise InvalidArgumentError("repair=True needs calibration inputs; use repair='pseudo' to repair "
                                       "data-free on standard-normal pseudo-inputs")
        return "calibration"
    if repair == "pseudo":
        return "pseudo"
    raise InvalidArgumentError(f"repair must be True, False, None or 'pseudo', got {repair!r}")


def _for_params(cap: Captured, path, target: int, calib, how, mode, relative, threads, bar=None, floor=None,
                rows=None, want=None) -> tuple[Partition, dict]:
    """The partition within ``target`` parameters. Without calibration data (or with fewer than 8
    samples): the path's global order. With it (method.md §8.6) the split of the budget between
    layers is chosen among the global order, each part's bound scaled by 1/4..4, and the same
    fraction of every layer, each cut exactly at the budget, by errors measured on the chains' own
    calibration rows (``rows``: the chains' rows of compress's one calibration run), with no run of
    the model (:mod:`afde_nb.pipeline.split`). ``floor``: no layer's lossy merges below it
    (:func:`~afde_nb.core.target.merge_caps`). Also returns what the split was chosen on
    (``Compression.budget_split``; {} where none was scored), which ``Compression.table()`` shows."""
    if path is None:
        return eps_for_params(cap.nets[0], target, mode, relative, threads), {}
    caps = merge_caps(path.layers, floor)
    exact = [lp.exact for lp in path.layers]
    if path.params_at(exact) <= target:  # every split gives the exact merges alone: nothing to score
        return path.partition_at(exact, 0.0), {}
    cands = scale_candidates(len(path.layers))
    if calib is None or len(calib) < HOLD_OUT_MIN or len(cands) == 1:
        ms = floored_for_params(path, target, None, caps)
        return path.partition_at(ms, path.eps_of(ms)), {}
    if rows is None:
        rows, want = cap.rows_and_output(calib)
    options = [floored_for_params(path, target, scale, caps) for scale in cands] + [floored_uniform(path, target, caps)]
    best, split = choose(cap, path, options, rows, _fit_rows(cap, how, rows), calib, want, SEGMENTS)
    measured = split.pop("split_measured")
    split = {"split_candidates": cands + ["uniform"], "split_scores": [measured.get(i) for i in range(len(options))],
             **split}
    _step(bar, None)
    return path.partition_at(options[best], path.eps_of(options[best])), split


def _for_error(cap: Captured, path, X, targets, max_increase: float, fit: list, mode, relative, threads,
               floor=None) -> Partition:
    """The most merges along the path whose model's MSE against ``targets`` on the calibration
    inputs is within (1 + max_increase) of the original's (each candidate repaired as the result
    will be). Where none is, the original model comes back (with its exact merges) and a
    ``UserWarning`` says why, with the numbers (:func:`_missed_target`). ``floor``: no layer's lossy
    merges below it."""
    if X is None or targets is None:
        raise InvalidArgumentError("target_error needs calibration inputs and calibration_targets")
    want = cap.output(X)
    y = np.asarray(targets.detach().cpu().double() if hasattr(targets, "detach") else targets, dtype=np.float64)
    y = as_inputs(y if y.ndim == 2 else y.reshape(len(y), -1), want.shape[1], "calibration_targets")
    if len(y) != len(X):
        raise ShapeMismatchError(f"calibration has {len(X)} rows but calibration_targets {len(y)}")
    base = float(np.mean((want - y) ** 2))
    bound = base * (1.0 + max_increase)

    def mse_of(part: Partition, rows: list) -> float:
        _, nets, _ = reduce_chains(cap, part, rows)
        return float(np.mean((cap.output(X, nets) - y) ** 2))

    if path is None:
        part = eps_for_error(cap.nets[0], X, y, max_increase, mode, relative, threads)
        exact = lump(cap.nets[0], 0.0, mode, relative, threads, method="components")
        if _sizes(part) == _sizes(exact):  # not one lossy merge within the bound
            warnings.warn(_missed_target(max_increase, base, bound, mse_of(exact, [None]), None), UserWarning,
                          stacklevel=3)
        return part
    seq = floored_sequence(path, merge_caps(path.layers, floor))
    seen: dict[int, float] = {}

    def ok(i: int) -> bool:
        if i not in seen:
            seen[i] = mse_of(path.partition_at(seq[i]), fit)
        return seen[i] <= bound

    step = max(1, len(seq) // 50)
    best = 0
    for i in range(0, len(seq), step):
        if ok(i):
            best = i
    for i in range(best + 1, min(best + step, len(seq))):  # refine one neuron at a time
        if ok(i):
            best = i
    if best == 0 and (len(seq) > 1 or not ok(0)):
        warnings.warn(_missed_target(max_increase, base, bound, seen[0], seen.get(1)), UserWarning, stacklevel=3)
    return path.partition_at(seq[best], path.eps_of(seq[best]))


def _sizes(part: Partition) -> list[int]:
    return [len(np.unique(l)) for l in part.labels]


def _missed_target(max_increase: float, base: float, bound: float, exact: float, lossy: float | None) -> str:
    """Why ``target_error`` gave the original model back: its own MSE ``base`` (``exact``: with its
    exact merges, as it comes back) already exceeds the bound, or no lossy merge (the least lossy:
    ``lossy``) stays within it."""
    head = f"target_error={max_increase:g}: "
    if exact > bound:
        own = f"{base:.6g}" + (f" ({exact:.6g} with its exact merges)" if exact != base else "")
        return (head + f"the original model's own MSE on the calibration data, {own}, already exceeds the bound "
                f"{bound:.6g} ({base:.6g} x (1 + target_error)); returning it with its exact merges only")
    least = f"; the least lossy merge gives {lossy:.6g}" if lossy is not None else ""
    return (head + f"no merge keeps the MSE on the calibration data within the bound {bound:.6g} (the original "
            f"model's own MSE {base:.6g} x (1 + target_error)){least}; returning the original model with its exact "
            "merges only. target_error is the allowed relative increase of the original's MSE, not an MSE")


@dataclass(frozen=True)
class Allowed:
    """What ``compress`` allows for one model, asked before compressing (a panel's choices):
    ``methods`` and ``formats`` as on :class:`~afde_nb.pipeline.result.Compression`;
    ``one_network``: the model is one network (a plain stack), whose merge path a slider can cut
    without rebuilding the model (:mod:`afde_nb.pipeline.moves`)."""

    methods: tuple[str, ...]
    formats: tuple[str, ...]
    one_network: bool


def allowed(model: nn.Module) -> Allowed:
    """What ``compress`` allows for ``model`` (see :class:`Allowed`); nothing lumpable is an
    :class:`~afde_nb.errors.UnsupportedLayerError` with capture's report."""
    cap = capture(model)
    cap.check("ward", "backward")
    return Allowed(cap.methods, cap.formats, cap.stack)


def model_inputs(model: nn.Module, X, what: str = "calibration"):
    """``X`` as ``compress`` reads inputs of ``model``: a plain stack's as an (n, in) float64
    array (its input Flatten applied), any other model's unchanged once the model runs on two of
    its rows; a shape the model does not take is a :class:`~afde_nb.errors.ShapeMismatchError`."""
    cap = capture(model)
    cap.check("ward", "backward")
    return cap.inputs(X, what)


def anchors(cap, path: MergePath, calib, how: str | None) -> list[tuple[float, float]]:
    """(first-order estimate, measured held-out relative RMS error) at the anchor cuts of ``path``
    (:func:`~afde_nb.pipeline.estimate.anchor_cuts`), measured once per calibration set and repair
    setting and cached on the path; [] with fewer than 8 calibration inputs."""
    if calib is None or len(calib) < HOLD_OUT_MIN:
        return []
    cache = path.__dict__.setdefault("_anchors", {})
    key = cache_key(calib, how)
    if key in cache:
        return cache[key]
    seq = path.sequence()
    fit, held = _split(len(calib))
    rows = _fit_rows(cap, how, cap.rows(calib[fit]) if how == "calibration" else None)
    x = calib[held]
    want = cap.output(x)
    out = []
    for i, first in anchor_cuts(path, seq):
        _, nets, _ = reduce_chains(cap, path.partition_at(seq[i]), rows)
        got = cap.output(x, nets)
        if got.shape != want.shape:
            continue
        measured = float(np.sqrt(deviation(want, got)["relative_mse"]))
        if measured > 0 and np.isfinite(measured):
            out.append((first, measured))
    out.sort()
    cache[key] = out
    return out
