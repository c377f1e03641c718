"""What ``compress`` returns: :class:`Compression`, the same fields for every model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..core.network import Network
from ..core.partition import Partition
from ..core.path import MergePath
from ..models.export import export_program, wants_program
from ..models.groups import Discovery
from ..models.serialize import save_model


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


def layer_summaries(net: Network, part: Partition) -> list[LayerSummary]:
    """One :class:`LayerSummary` per hidden layer of ``net`` cut by ``part``."""
    return [LayerSummary.of(net.layers[h].path or str(h), net.layers[h].activation, lab, part.eps_per_layer[h])
            for h, lab in enumerate(part.labels)]


@dataclass(frozen=True)
class Compression:
    """What ``compress`` did: the reduced model, the partition and per-layer figures.

    ``groups`` is what capture found (the chains of groups lumped, and what was left alone, with
    why: ``groups.report()``); ``networks`` the reduced chains, one :class:`Network` each;
    ``methods`` and ``formats`` what this model allows (the paper's eps-graph components only
    where the polynomial ODE is defined; a JSON architecture only for a plain stack)."""

    model: nn.Module
    partition: list[np.ndarray]
    params_before: int
    params_after: int
    layers: list[LayerSummary]
    mode: str
    eps: float
    relative: bool
    method: str = "ward"
    symmetry: bool = True
    target: dict | None = None
    #: "calibration" or "pseudo" where a lossy merge was refit, else None
    repaired: str | None = None
    #: the deviation of the model's outputs from the original's on the calibration inputs (None
    #: without calibration); before repair where one ran
    calibration_error: dict | None = None
    calibration_error_before_repair: dict | None = None
    #: where a repair ran on calibration data: its error out of sample, the same refit on a seeded
    #: 3/4 of the calibration inputs measured on the other 1/4 (the deviation's keys, ``n`` the
    #: inputs held out, and ``fit_n`` those fit on); None with fewer than 8 inputs or no such repair.
    #: The model itself is refit on every input, so ``calibration_error`` is in-sample
    held_out_error: dict | None = None
    path: MergePath | None = field(default=None, repr=False)
    #: where a calibrated ``target_params`` chose the split between layers by measured error
    #: (:mod:`afde_nb.pipeline.split`): the candidates (``split_candidates``: None for one eps for
    #: all layers, a per-layer eps scale, or "uniform" for the same fraction of every layer), the
    #: measured ones' relative MSE of the model's outputs on the held-out calibration inputs
    #: (``split_scores``, None where not measured), each one's estimate of it from the chains' own
    #: rows (``split_estimates``; None for a plain stack, whose candidates are all measured), the
    #: index chosen (``split_chosen``: the lowest measured), the inputs held out
    #: (``split_held_out``), each chain's gain to the output (``split_gains``), and what the choice
    #: cost: runs of the model (``split_model_runs``) and reductions of one chain
    #: (``split_chain_reductions``); None where no split was scored. ``table()`` shows it
    budget_split: dict | None = field(default=None, repr=False)
    #: the estimate of the model output's relative RMS error at this cut (issue 30): the RMS of the
    #: outputs' change over their centred spread, the figure ``sqrt(calibration_error["relative_mse"])``
    #: measures; first order data-free, with the path's measured correction where calibrated
    #: (:mod:`afde_nb.pipeline.estimate`); None for the paper's components
    estimated_error: float | None = None
    #: the (first-order estimate, measured error) pairs the estimate was corrected by (``()``
    #: data-free): :meth:`curve` reads eps along the path with them
    estimate_anchors: tuple = field(default=(), repr=False)
    groups: Discovery | None = field(default=None, repr=False)
    networks: tuple = field(default=(), repr=False)
    #: two calibration inputs as the model takes them, to trace a ``.pt2`` export on
    example_inputs: object = field(default=None, repr=False)
    #: where the model came from a ``torch.export`` program: the batch bounds of its inputs
    #: (:func:`~afde_nb.models.export.batch_bounds`), which a ``.pt2`` export keeps
    batch_bounds: dict | None = field(default=None, repr=False)
    methods: tuple = ("ward", "complete", "components")
    formats: tuple = (".pt", ".pth", ".safetensors", ".pt2")

    @property
    def kept(self) -> float:
        """Fraction of parameters kept (dense parameters of the reduced model)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def reduced_network(self) -> Network:
        """The reduced network of a model with one chain (a plain stack's whole model)."""
        if len(self.networks) != 1:
            raise AttributeError(f"this model has {len(self.networks)} chains; their reduced networks are "
                                 "Compression.networks")
        return self.networks[0]

    def curve(self, points: int = 64) -> list[tuple[float, float]]:
        """(eps, fraction of parameters kept) at ``points`` cuts along the merge path, eps in
        ``compress``'s meaning for this setting (issue 30): the cut's output-level estimate on a
        relative path (:func:`~afde_nb.pipeline.estimate.curve`), else the path's per-layer bound
        (:meth:`~afde_nb.core.path.MergePath.curve`); [] without a merge path (the components)."""
        from .estimate import curve

        if self.path is None:
            return []
        if not self.path.relative:
            return self.path.curve(points)
        return curve(self.path, list(self.estimate_anchors), points)

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
        rows.extend(self._budget_lines())
        if self.estimated_error is not None:
            rows.append(f"estimated output error (relative RMS): {self.estimated_error:.3g}"
                        + self._measured_beside())
        if self.calibration_error_before_repair and self.repaired:
            e = self.calibration_error_before_repair
            rows.append(f"calibration before repair: max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g}")
        if self.calibration_error:
            e = self.calibration_error
            how = {"calibration": " after repair", "pseudo": " after repair on pseudo-inputs"}.get(self.repaired, "")
            rows.append(f"calibration{how}: "
                        f"max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g} over {e['n']} inputs")
        if self.held_out_error:
            e = self.held_out_error
            rows.append(f"held out (refit on {e['fit_n']}, scored on the other {e['n']}): "
                        f"max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g}")
        return "\n".join(rows)

    def _measured_beside(self) -> str:
        """The measured relative RMS error beside the estimate (held out where measured)."""
        e, what = (self.held_out_error, "held out") if self.held_out_error else (self.calibration_error, "calibration")
        if not e:
            return ""
        return f", measured {np.sqrt(e['relative_mse']):.3g} ({what})"

    def _budget_lines(self) -> list[str]:
        """What a budget did that the figures alone do not say: a budget at or above the model's size
        (nothing lossy merged), the floor, and how the split between layers was chosen (the measured
        error of the chosen split beside the plain ones: why one layer lost more than another)."""
        t = self.target or {}
        out = []
        split = self.budget_split or {}
        if t.get("params") is not None and t["params"] >= self.params_before:
            out.append(f"target_params={t['params']} is at or above the model's {self.params_before} parameters: "
                       "nothing lossy was merged" + (" (exact merges only)" if self.params_after < self.params_before
                                                     else ""))
        if t.get("floor") is not None:
            f = t["floor"]
            out.append(f"floor: lossy merges keep at least {f} units of each hidden layer" if isinstance(f, int) else
                       f"floor: lossy merges keep at least {f:g} of each hidden layer's units")
        scores = split.get("split_scores")
        if scores:
            cands, chosen = split["split_candidates"], split["split_chosen"]
            seen = {chosen}
            parts = [f"{self._split_name(cands[chosen])} (chosen) {scores[chosen]:.4g}"]
            for i in (0, len(cands) - 1):  # one eps for all layers, the same fraction of every layer
                if i not in seen and scores[i] is not None:
                    seen.add(i)
                    parts.append(f"{self._split_name(cands[i])} {scores[i]:.4g}")
            measured = sum(x is not None for x in scores)
            out.append(f"budget split between layers, by relative MSE on {split['split_held_out']} held-out calibration "
                       f"inputs ({measured} of {len(cands)} splits measured, the others ranked by their estimate from "
                       "each chain's own rows): " + "; ".join(parts))
        return out

    def _split_name(self, cand) -> str:
        """A candidate split of a budget in words (see :func:`afde_nb.core.target.scale_candidates`)."""
        if cand is None:
            return "one eps for all layers"
        if cand == "uniform":
            return "the same fraction of every layer"
        scaled = [h for h, c in enumerate(cand) if c != 1.0]
        names = [self.layers[h].name if h < len(self.layers) else str(h) for h in scaled]
        where = ", ".join(names) if len(names) <= 2 else f"{names[0]} .. {names[-1]} ({len(names)} layers)"
        return f"eps x{cand[scaled[0]]:g} in {where}" if scaled else "one eps for all layers"

    def save(self, path: str | Path, example_inputs=None) -> list[Path]:
        """Write the reduced model; returns the files written.

        A plain stack: its state_dict (.pt/.pth or .safetensors) and its JSON architecture. A
        ``.pt2`` name: a ``torch.export`` program with a dynamic batch dimension that stock torch
        loads with ``torch.export.load(path).module()`` (:mod:`afde_nb.models.export`), traced on
        ``example_inputs`` (a batch the model takes: a tensor, a tuple, a dict of keyword inputs or
        ``(args, kwargs)``), else on ``self.example_inputs`` (two rows kept when compressed with
        calibration data, fitted into the batch bounds). A model compressed from a ``torch.export``
        program keeps that program's batch bounds (``batch_bounds``), or its fixed batch size. A
        model that is not a plain stack has no JSON architecture, so it is saved as ``.pt2`` only
        (another suffix is an error).
        """
        if wants_program(self.model, path):
            mine = example_inputs is None
            return [export_program(self.model, self.example_inputs if mine else example_inputs, path,
                                   bounds=self.batch_bounds, fit=mine)]
        return save_model(self.model, path, method=self.method, mode=self.mode, eps=self.eps, relative=self.relative,
                          params_before=self.params_before, params_after=self.params_after)

    def __repr__(self) -> str:
        return (f"Compression(method={self.method!r}, mode={self.mode!r}, eps={self.eps:g}, relative={self.relative}, "
                f"params {self.params_before} -> {self.params_after} ({100 * self.kept:.1f}% kept), "
                f"widths {[s.neurons_before for s in self.layers]} -> {[s.neurons_after for s in self.layers]})")
