"""The one verb: ``compress(model, eps)`` -> :class:`Compression`.

torch model -> :func:`~afde_nb.models.stack.to_network` -> :func:`~afde_nb.core.path.merge_path` (or the
paper's components) -> partition -> :func:`~afde_nb.core.reduce.quotient` (+ :func:`~afde_nb.core.repair.repair`)
-> :func:`~afde_nb.models.stack.to_torch` (plain nn.Sequential).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..models.stack import to_network, to_torch
from ..errors import InvalidArgumentError, ShapeMismatchError, UnsupportedLayerError
from ..models.groups import Discovery
from .inside import compress_inside
from ..core.lump import Partition, activation_rms, check_eps, check_method, check_mode, lump
from ..core.network import Network, as_inputs
from ..core.path import MergePath, merge_path, probe_inputs
from ..core.reduce import quotient
from ..core.repair import probe_error, reduce_and_repair
from ..models.serialize import save_model
from ..core.target import eps_for_error, eps_for_params, pick, scale_candidates


@dataclass(frozen=True)
class LayerSummary:
    name: str
    activation: str
    neurons_before: int
    neurons_after: int
    largest_block: int
    eps: float

    @classmethod
    def of(cls, name: str, activation: str, labels: np.ndarray, eps: float) -> "LayerSummary":
        """The figures of one layer's partition (canonical block labels 0..k-1)."""
        sizes = np.bincount(labels) if labels.size else np.zeros(1, dtype=int)
        return cls(name, activation, int(labels.size), int(labels.max()) + 1 if labels.size else 0,
                   int(sizes.max()), float(eps))


@dataclass
class Compression:
    """What ``compress`` did: the reduced model, the partition and per-layer figures."""

    model: nn.Sequential
    partition: list[np.ndarray]
    params_before: int
    params_after: int
    layers: list[LayerSummary]
    mode: str
    eps: float
    relative: bool
    calibration_error: dict | None = None
    reduced_network: Network | None = field(default=None, repr=False)
    target: dict | None = None
    method: str = "ward"
    symmetry: bool = True
    repaired: str | None = None
    calibration_error_before_repair: dict | None = None
    path: MergePath | None = field(default=None, repr=False)
    #: for a model that is not one plain stack: the groups lumped and the layers left alone
    groups: "Discovery | None" = field(default=None, repr=False)
    #: a few calibration inputs (model-shaped), for exporting a model that is not a plain stack
    example_inputs: object = field(default=None, repr=False)

    @property
    def kept(self) -> float:
        """Fraction of parameters kept (dense parameters of the reduced model)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def table(self) -> str:
        """The per-layer table the CLI prints."""
        w = max([14] + [len(s.name) + 2 for s in self.layers])
        rows = [f"{'layer':<{w}}{'act':<11}{'before':>8}{'after':>8}{'largest':>9}{'eps':>12}"]
        for s in self.layers:
            rows.append(f"{s.name:<{w}}{s.activation:<11}{s.neurons_before:>8}{s.neurons_after:>8}"
                        f"{s.largest_block:>9}{s.eps:>12.4g}")
        rows.append(f"parameters {self.params_before} -> {self.params_after} "
                    f"({100 * self.kept:.1f}% kept), method={self.method}, mode={self.mode}, eps={self.eps:g}"
                    f"{' (relative)' if self.relative else ''}")
        if self.calibration_error_before_repair and self.repaired:
            e = self.calibration_error_before_repair
            rows.append(f"calibration before repair: max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g}")
        if self.calibration_error:
            e = self.calibration_error
            rows.append(f"calibration{' after repair (' + self.repaired + ')' if self.repaired else ''}: "
                        f"max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g} over {e['n']} inputs")
        return "\n".join(rows)

    def save(self, path: str | Path, example_inputs=None) -> list[Path]:
        """Write the reduced model; returns the files written.

        A plain stack: its state_dict (.pt/.pth or .safetensors) and its JSON architecture. A
        ``.pt2`` name: a ``torch.export`` program with a dynamic batch dimension that stock torch
        loads with ``torch.export.load(path).module()`` (:mod:`afde_nb.models.export`), traced on
        ``example_inputs`` (a batch the model takes), else on ``self.example_inputs`` (two rows
        kept when compressed with calibration data). A model that is not a plain stack has no
        JSON architecture, so it is saved as ``.pt2`` only (another suffix is an error).
        """
        from ..models.export import export_program, wants_program

        if wants_program(self.model, path):
            return [export_program(self.model, self.example_inputs if example_inputs is None else example_inputs,
                                   path)]
        return save_model(self.model, path, method=self.method, mode=self.mode, eps=self.eps, relative=self.relative,
                          params_before=self.params_before, params_after=self.params_after)

    def __repr__(self) -> str:
        return (f"Compression(method={self.method!r}, mode={self.mode!r}, eps={self.eps:g}, relative={self.relative}, "
                f"params {self.params_before} -> {self.params_after} ({100 * self.kept:.1f}% kept), "
                f"widths {[s.neurons_before for s in self.layers]} -> {[s.neurons_after for s in self.layers]})")


def compress(model: nn.Module, eps: float | None = None, *, method: str = "ward", mode: str = "backward",
             relative: bool = True, symmetry: bool = True, calibration=None, repair: bool | str | None = None,
             target_params: int | None = None, target_error: float | None = None, calibration_targets=None,
             data_aware: bool = False, threads: int = 0, path: MergePath | None = None,
             approx: int | None = None) -> Compression:
    """Lump the hidden neurons of ``model`` that behave alike; return the smaller dense model.

    ``method="ward"`` (default) cuts a Ward merge path of aligned neurons, symmetries included
    (``symmetry``); ``"complete"`` uses complete linkage; ``"components"`` is the paper's eps-graph
    components (eps-BDE for ``mode="backward"``, eps-FDE for ``"forward"``), as in the first release.
    For the merge paths eps is an error bound on the next layer's pre-activations, with
    ``relative=True`` a fraction of their RMS (see :mod:`afde_nb.core.path`). ``eps = 0`` (the default)
    keeps the function exactly.

    ``calibration`` (inputs, shape (n, in_features), or image-shaped for a model with an input
    Flatten): the bounds are measured on it, the reduced model's deviation is reported, and
    ``repair`` (default: on when calibration is given) refits the layers after each lossy merge by
    least squares so their pre-activations match the original's (:mod:`afde_nb.core.repair`);
    ``repair="pseudo"`` does so data-free on standard-normal pseudo-inputs; ``repair=False`` never.

    Target mode, instead of eps: ``target_params=N`` keeps at most N parameters (with calibration,
    the split between layers is chosen by measured error); ``target_error=0.01`` the smallest model
    whose MSE on ``calibration`` against ``calibration_targets`` is at most 1 % above the original's.

    ``data_aware=True`` (components only) weights each incoming coefficient by the calibration RMS
    of its source neuron. ``path``: the :class:`~afde_nb.core.path.MergePath` of an earlier call with the
    same model and setting (``Compression.path``), reused so a new eps or budget costs only the cut
    and the quotient (a slider). ``approx=r`` (plain stacks, merge paths): an approximate merge
    path from r probe rows in float32 (:func:`~afde_nb.core.path.merge_path`), for speed at scale;
    eps = 0 stays exact. ``model`` is never modified.
    """
    mode = check_mode(mode)
    method = check_method(method)
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
    if data_aware and method != "components":
        raise InvalidArgumentError("data_aware=True applies to method='components'; the merge paths "
                                   "measure their bounds on the calibration inputs already")
    if approx is not None and method == "components":
        raise InvalidArgumentError("approx applies to the merge paths (method='ward' or 'complete')")
    try:
        net = to_network(model, check=False)  # finiteness: merge_path's first pass (else quotient/lump)
    except UnsupportedLayerError as exc:
        if not isinstance(model, nn.Module):
            raise
        if approx is not None:
            raise InvalidArgumentError(f"approx applies to plain Linear stacks; {type(model).__name__} is not one "
                                       f"({exc})") from exc
        # not one plain stack: lump the groups found inside it (afde_nb.pipeline.inside)
        return compress_inside(model, eps, method=method, mode=mode, relative=relative, symmetry=symmetry,
                               calibration=calibration, repair=repair, target_params=target_params,
                               target_error=target_error, calibration_targets=calibration_targets,
                               threads=threads, path=path, not_a_stack=str(exc))
    calib = as_inputs(calibration, net.widths[0], "calibration", net.meta.get("flatten")) \
        if calibration is not None else None
    how = _repair_how(repair, calib)
    if data_aware and calib is None:
        raise InvalidArgumentError("data_aware=True needs calibration inputs")
    probes = None if how is None else (calib if how == "calibration" else probe_inputs(net, None))
    if path is not None:
        _check_path(path, net, method, mode, relative, symmetry, calib)
        if approx is not None and path.meta.get("approx") != approx:
            raise InvalidArgumentError(f"path was built with approx={path.meta.get('approx')}, this call asks for "
                                       f"approx={approx}")
    elif method != "components":
        path = merge_path(net, method=method, mode=mode, relative=relative, symmetry=symmetry,
                          calibration=calib, threads=threads, approx=approx)
    if target_params is not None:
        part = _for_params(net, path, int(target_params), calib, probes, mode, relative, threads)
    elif target_error is not None:
        if calib is None or calibration_targets is None:
            raise InvalidArgumentError("target_error needs calibration inputs and calibration_targets")
        y = as_inputs(calibration_targets if np.ndim(calibration_targets) == 2
                      else np.reshape(np.asarray(calibration_targets, dtype=np.float64), (-1, 1)),
                      net.widths[-1], "calibration_targets")
        if len(y) != len(calib):
            raise ShapeMismatchError(f"calibration has {len(calib)} rows but calibration_targets {len(y)}")
        part = _for_error(net, path, calib, y, float(target_error), probes, mode, relative, threads)
    elif path is not None:
        part = path.partition(0.0 if eps is None else eps)
    else:
        rms = activation_rms(net, calib) if data_aware else None
        part = lump(net, 0.0 if eps is None else eps, mode, relative, threads, rms, method="components")

    small, before, after, ran = reduce_and_repair(net, part, probes, calib)
    device = next((p.device for p in model.parameters()), None)
    reduced = to_torch(small, device=device)
    layers = layer_summaries(net, part)
    target = None
    if target_params is not None or target_error is not None:
        target = {"params": target_params} if target_params is not None else {"error_increase": target_error}
    return Compression(reduced, [np.array(l) for l in part.labels], net.num_params, small.num_params,
                       layers, part.mode, part.eps, part.relative, after, small, target, method, bool(symmetry),
                       how if ran else None, before, path)


def layer_summaries(net: Network, part: Partition) -> list[LayerSummary]:
    """One :class:`LayerSummary` per hidden layer of ``net`` cut by ``part``."""
    return [LayerSummary.of(net.layers[h].path or str(h), net.layers[h].activation, lab, part.eps_per_layer[h])
            for h, lab in enumerate(part.labels)]


def _check_path(path: MergePath, net: Network, method, mode, relative, symmetry, calib) -> None:
    """A reused path must be of this network (widths, weights) and of this setting."""
    if not isinstance(path, MergePath):
        raise InvalidArgumentError(f"path must be a MergePath (Compression.path), got {type(path).__name__}")
    want = {"method": method, "mode": mode, "relative": bool(relative), "symmetry": bool(symmetry),
            "calibrated": calib is not None}
    got = {k: getattr(path, k) for k in want}
    if got != want:
        raise InvalidArgumentError(f"path was built for {got}, this call asks for {want}")
    # to_network's arrays are views of the model: equal arrays can be the same memory written since
    stale = path.net.meta.get("versions") != net.meta.get("versions") or net.meta.get("versions", ()) is None
    same = not stale and path.net.widths == net.widths and all(
        np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias) for a, b in zip(path.net.layers, net.layers))
    if not same:
        raise InvalidArgumentError("path was built for another model (its weights differ); build a new one")


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


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(0).permutation(n)
    cut = (3 * n) // 4
    return idx[:cut], idx[cut:]


def _for_params(net, path, target, calib, probes, mode, relative, threads) -> Partition:
    if path is None:
        return eps_for_params(net, target, mode, relative, threads)
    cands = scale_candidates(len(path.layers))
    if calib is None or len(calib) < 8 or len(cands) == 1:
        ms = path.for_params(target)
        return path.partition_at(ms, path.eps_of(ms))
    fit, held = _split(len(calib))
    fit_probes = None if probes is None else (calib[fit] if probes is calib else probes)

    options = [path.for_params(target, scale) for scale in cands] + [path.uniform(target)]

    def score(ms) -> float:
        small, *_ = reduce_and_repair(net, path.partition_at(ms), fit_probes, None)
        return probe_error(net, small, calib[held])["relative_mse"]

    best = pick(options, score)
    return path.partition_at(best, path.eps_of(best))


def _for_error(net, path, X, y, max_increase, probes, mode, relative, threads) -> Partition:
    if path is None:
        return eps_for_error(net, X, y, max_increase, mode, relative, threads)
    bound = float(np.mean((net.forward(X) - y) ** 2)) * (1.0 + max_increase)
    seq = path.sequence()

    def ok(i: int) -> bool:
        small, *_ = reduce_and_repair(net, path.partition_at(seq[i]), probes, None)
        return float(np.mean((small.forward(X) - y) ** 2)) <= bound

    step = max(1, len(seq) // 50)
    grid = list(range(0, len(seq), step))
    best = 0
    for i in grid:
        if ok(i):
            best = i
    for i in range(best + 1, min(best + step, len(seq))):  # refine one neuron at a time
        if ok(i):
            best = i
    return path.partition_at(seq[best], path.eps_of(seq[best]))
