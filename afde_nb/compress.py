"""The one verb: ``compress(model, eps)`` -> :class:`Compression`.

torch model -> :func:`~afde_nb.adapters.to_network` -> :func:`~afde_nb.lump.lump` (partition)
-> :func:`~afde_nb.reduce.reduce` -> :func:`~afde_nb.adapters.to_torch` (plain nn.Sequential).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .adapters import to_network, to_torch
from .errors import InvalidWeightsError, ShapeMismatchError
from .lump import Partition, activation_rms, check_eps, check_mode, lump
from .network import Network, as_inputs
from .reduce import reduce
from .serialize import save_model
from .target import eps_for_error, eps_for_params


@dataclass(frozen=True)
class LayerSummary:
    name: str
    activation: str
    neurons_before: int
    neurons_after: int
    largest_block: int
    eps: float


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
    network: Network | None = field(default=None, repr=False)
    target: dict | None = None

    @property
    def kept(self) -> float:
        """Fraction of parameters kept (dense parameters of the reduced model)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def table(self) -> str:
        """The per-layer table the CLI prints."""
        rows = [f"{'layer':<14}{'act':<11}{'before':>8}{'after':>8}{'largest':>9}{'eps':>12}"]
        for s in self.layers:
            rows.append(f"{s.name:<14}{s.activation:<11}{s.neurons_before:>8}{s.neurons_after:>8}"
                        f"{s.largest_block:>9}{s.eps:>12.4g}")
        rows.append(f"parameters {self.params_before} -> {self.params_after} "
                    f"({100 * self.kept:.1f}% kept), mode={self.mode}, eps={self.eps:g}"
                    f"{' (relative)' if self.relative else ''}")
        if self.calibration_error:
            e = self.calibration_error
            rows.append(f"calibration: max |diff| {e['max_abs']:.3g}, rms {e['rms']:.3g} over {e['n']} inputs")
        return "\n".join(rows)

    def save(self, path: str | Path) -> list[Path]:
        """Write the reduced model's state_dict (.pt/.pth or .safetensors) and its JSON architecture."""
        return save_model(self.model, path, mode=self.mode, eps=self.eps, relative=self.relative,
                          params_before=self.params_before, params_after=self.params_after)

    def __repr__(self) -> str:
        return (f"Compression(mode={self.mode!r}, eps={self.eps:g}, relative={self.relative}, "
                f"params {self.params_before} -> {self.params_after} ({100 * self.kept:.1f}% kept), "
                f"widths {[s.neurons_before for s in self.layers]} -> {[s.neurons_after for s in self.layers]})")


def compress(model: nn.Module, eps: float | None = None, mode: str = "backward", relative: bool = False,
             calibration=None, threads: int = 0, *, target_params: int | None = None,
             target_error: float | None = None, calibration_targets=None, data_aware: bool = False) -> Compression:
    """Lump the hidden neurons of ``model`` by eps-BDE (``mode="backward"``) or eps-FDE (``"forward"``).

    ``eps = 0`` (the default) keeps the function exactly. ``relative=True`` reads eps as a fraction
    of each layer's mean neuron norm. With ``calibration`` (inputs, shape (n, in_features)) the
    result reports the reduced model's deviation from the original on them.

    Target mode, instead of eps: ``target_params=N`` finds the smallest eps whose reduced model has
    at most N parameters; ``target_error=0.01`` the largest eps whose MSE on ``calibration`` against
    ``calibration_targets`` is at most 1% above the original's. The eps found is ``.eps``.

    ``data_aware=True`` (needs ``calibration``) weights each incoming coefficient by the calibration
    RMS of its source neuron (method.md §5). eps = 0 then stays exact wherever no source neuron is
    identically zero on the calibration data.
    ``model`` is never modified.
    """
    net = to_network(model)
    calib = as_inputs(calibration, net.widths[0], "calibration", net.meta.get("flatten")) \
        if calibration is not None else None
    mode = check_mode(mode)
    if data_aware and calib is None:
        raise ValueError("data_aware=True needs calibration inputs")
    rms = activation_rms(net, calib) if data_aware else None
    part = _partition(net, eps, mode, relative, threads, target_params, target_error, calib, calibration_targets, rms)
    small = reduce(net, part.labels)
    device = next((p.device for p in model.parameters()), None)
    reduced = to_torch(small, device=device)
    layers = []
    for h, lab in enumerate(part.labels):
        sizes = np.bincount(lab) if lab.size else np.zeros(1, dtype=int)
        layers.append(LayerSummary(net.layers[h].path or str(h), net.layers[h].activation,
                                   int(lab.size), int(part.num_blocks[h]), int(sizes.max()),
                                   float(part.eps_per_layer[h])))
    err = None
    if calib is not None:
        diff = small.forward(calib) - net.forward(calib)
        err = {"max_abs": float(np.abs(diff).max(initial=0.0)), "rms": float(np.sqrt(np.mean(diff ** 2)))
               if diff.size else 0.0, "n": int(calib.shape[0])}
    target = None
    if target_params is not None or target_error is not None:
        target = {"params": target_params} if target_params is not None else {"error_increase": target_error}
    return Compression(reduced, [np.array(l) for l in part.labels], net.num_params, small.num_params,
                       layers, part.mode, part.eps, part.relative, err, small, target)


def _partition(net: Network, eps, mode, relative, threads, target_params, target_error, calib, calib_y,
               rms) -> Partition:
    given = [name for name, v in (("eps", eps), ("target_params", target_params), ("target_error", target_error))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of eps, target_params, target_error (got {', '.join(given)})")
    if target_params is not None:
        if isinstance(target_params, bool) or not isinstance(target_params, (int, np.integer)) or target_params < 0:
            raise ValueError(f"target_params must be a non-negative integer, got {target_params!r}")
        return eps_for_params(net, int(target_params), mode, relative, threads, rms)
    if target_error is not None:
        check_eps(target_error)  # a finite number >= 0
        if calib is None or calib_y is None:
            raise ValueError("target_error needs calibration inputs and calibration_targets to measure the error on")
        y = as_inputs(calib_y if np.ndim(calib_y) == 2 else np.reshape(calib_y, (-1, 1)), net.widths[-1],
                      "calibration_targets")
        if len(y) != len(calib):
            raise ShapeMismatchError(f"calibration has {len(calib)} rows but calibration_targets {len(y)}")
        return eps_for_error(net, calib, y, float(target_error), mode, relative, threads, rms)
    return lump(net, 0.0 if eps is None else eps, mode, relative, threads, rms)
