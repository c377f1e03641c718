"""``compress`` for a model that is not one plain stack: lump the hidden units of every group
that :func:`~afde_nb.models.groups.find_groups` finds inside it, and hand back the user's own module (a
copy) with the smaller weights in place.

Each chain of groups is a network (:func:`~afde_nb.models.surgery.chain_network`) with its own merge
path; the paths are joined into one :class:`~afde_nb.core.path.MergePath`, so an eps cuts every chain
at the same relative bound and a parameter budget is spent along one global order, exactly as for
a plain stack. Which equivalences hold: equal incoming rows (+bias) for any element-wise
activation, negation for odd ones (tanh, identity, symmetric hardtanh), h -> 1 - h for sigmoid
(not into a convolution, whose zero padding would not follow), positive scaling for the ReLU
family. Forward mode and the paper's components are defined by the polynomial ODE, so for the
activations it covers only (tanh, sigmoid, identity, ReLU family); elsewhere the backward merge
path applies.

Repair refits a chain's layers on its inputs by least squares where the chain is of Linear
layers (tokens of a sequence are rows); convolution chains are not refit.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError, ShapeMismatchError, UnsupportedLayerError
from ..models.groups import Discovery, find_groups
from ..core.lump import Partition
from ..core.network import ODE_DEFINED, Network
from ..core.path import MergePath, merge_path
from ..core.repair import deviation, reduce_and_repair
from ..models import surgery


@dataclass
class ChainSet:
    """The accounting a joined merge path needs: the model's parameter count as the chains'
    hidden widths change (everything outside the chains stays)."""

    nets: list[Network]
    costs: list[list[tuple[int, int]]]  # per chain layer: (taps, parameters per output unit)
    fixed: int

    @property
    def num_params(self) -> int:
        return self.num_params_with([l.out_features for n in self.nets for l in n.hidden])

    def num_params_with(self, hidden_widths) -> int:
        total, at = self.fixed, 0
        for net, cost in zip(self.nets, self.costs):
            k = len(net.hidden)
            w = [net.widths[0]] + [int(v) for v in hidden_widths[at:at + k]] + [net.widths[-1]]
            at += k
            total += sum(w[i] * t * w[i + 1] + p * w[i + 1] for i, (t, p) in enumerate(cost))
        return total

    def split(self, part: Partition) -> list[Partition]:
        """One partition per chain out of a partition of the joined layers."""
        out, at = [], 0
        for net in self.nets:
            k = len(net.hidden)
            sl = slice(at, at + k)
            at += k
            out.append(Partition(part.labels[sl], part.mode, part.eps, part.relative, part.eps_per_layer[sl],
                                 method=part.method, signs=None if part.signs is None else part.signs[sl],
                                 weights=None if part.weights is None else part.weights[sl]))
        return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_setting(disc: Discovery, nets: list[Network], method: str, mode: str, not_a_stack: str = "") -> None:
    if not disc.chains:
        raise UnsupportedLayerError(
            (f"not one plain stack ({not_a_stack}), " if not_a_stack else "") +
            "and nothing inside it lumps: no hidden units pass through one element-wise activation into "
            "exactly one Linear/convolution.\n" + disc.report())
    if method == "components":
        raise InvalidArgumentError("method='components' (the paper's eps-graph components) applies to plain "
                                   "Linear stacks; use method='ward' or 'complete' for this model")
    if mode == "forward":
        for net in nets:
            for l in net.hidden:
                if l.activation not in ODE_DEFINED:
                    raise InvalidArgumentError(
                        f"mode='forward' is defined by the polynomial ODE, for {', '.join(ODE_DEFINED)}; {l.path} "
                        f"uses {l.activation}: use mode='backward'")


def as_model_input(model: nn.Module, data) -> torch.Tensor:
    """Calibration data as a tensor the model takes (its parameters' dtype and device)."""
    ref = next(model.parameters(), None)
    t = data.detach() if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    if t.is_floating_point() and ref is not None:
        t = t.to(dtype=ref.dtype)
    if t.is_floating_point() and not torch.isfinite(t).all():
        from ..errors import InvalidWeightsError

        raise InvalidWeightsError("calibration data contain NaN or infinite values")
    return t.to(ref.device) if ref is not None else t


def _output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    y = surgery.run(model, x)
    if not isinstance(y, torch.Tensor):
        raise ShapeMismatchError(f"{type(model).__name__} returns {type(y).__name__}; calibration errors need a tensor")
    return y.detach().to("cpu", torch.float64).reshape(len(y), -1).numpy()


def output_error(a: np.ndarray, b: np.ndarray) -> dict:
    """Deviation of the reduced model's outputs ``b`` from the original's ``a``."""
    return deviation(a, b)


class ModelPath(MergePath):
    """The joined merge path of every chain of a model: ``net`` is a :class:`ChainSet`, ``chains``
    the groups and ``ins`` each chain layer's probe rows."""

    chains: list
    ins: list


def model_path(model: nn.Module, disc: Discovery, *, method: str, mode: str, relative: bool, symmetry: bool,
               calib: torch.Tensor | None, threads: int, not_a_stack: str = "") -> ModelPath:
    """The joined merge path of the chains of ``disc`` (checked finite and supported)."""
    nets = [surgery.chain_network(model, c) for c in disc.chains]
    for n in nets:
        n.check_finite(type(model).__name__)
    check_setting(disc, nets, method, mode, not_a_stack)
    captured = None
    if calib is not None:
        captured = surgery.capture(model, [a for c in disc.chains for a in surgery.chain_affines(c)], calib)
    ins = [surgery.chain_inputs(model, c, captured) if captured is not None else surgery.pseudo_inputs(net)
           for c, net in zip(disc.chains, nets)]
    layers = []
    for k, net in enumerate(nets):
        p = merge_path(net, method=method, mode=mode, relative=relative, symmetry=symmetry, threads=threads,
                       inputs=lambda r=ins[k]: r)
        layers += p.layers
    costs = [[surgery.unit_cost(net.layers[k], a, c[k].norm if k < len(c) else None)
              for k, a in enumerate(surgery.chain_affines(c))] for net, c in zip(nets, disc.chains)]
    cs = ChainSet(nets, costs, 0)
    cs.fixed = count_params(model) - cs.num_params
    mp = ModelPath(cs, layers, mode, method, bool(relative), bool(symmetry), calib is not None)
    mp.chains, mp.ins = disc.chains, ins
    return mp


def apply(model: nn.Module, path: ModelPath, part: Partition, repair: str | None) -> tuple[nn.Module, bool]:
    """A copy of ``model`` reduced by ``part``, lossy Linear chains refit (``repair``:
    "calibration" on the path's probe rows, "pseudo" on pseudo-inputs run through each chain);
    whether any chain was refit."""
    out = surgery.copy_model(model)
    ran_any = False
    for net, chain, rows, p in zip(path.net.nets, path.chains, path.ins, path.net.split(part)):
        if repair == "pseudo" and path.calibrated:
            rows = surgery.pseudo_inputs(net)
        probes = rows[0] if repair and all(l.taps == 1 for l in net.layers) else None
        small, _, _, ran = reduce_and_repair(net, p, probes, None)
        ran_any = ran_any or ran
        surgery.write_back(out, chain, small)
    return out, ran_any


def compress_inside(model: nn.Module, eps, *, method, mode, relative, symmetry, calibration, repair,
                    target_params, target_error, calibration_targets, threads, path, not_a_stack: str = ""):
    """:func:`~afde_nb.pipeline.compress.compress` for any model with lumpable groups (see the module docstring)."""
    from .compress import Compression, LayerSummary, _repair_how

    disc = find_groups(model)
    calib = as_model_input(model, calibration) if calibration is not None else None
    how = _repair_how(repair, calib)
    if path is None:
        path = model_path(model, disc, method=method, mode=mode, relative=relative, symmetry=symmetry,
                          calib=calib, threads=threads, not_a_stack=not_a_stack)
    elif not isinstance(path, ModelPath) or [g.name for c in path.chains for g in c] != [g.name for g in disc.groups] \
            or (path.method, path.mode, path.relative, path.symmetry, path.calibrated) != \
            (method, mode, bool(relative), bool(symmetry), calib is not None):
        raise InvalidArgumentError("path was built for another model or setting; build a new one")
    was_training = model.training
    _train(model, False)
    try:
        before = _output(model, calib) if calib is not None else None
        if target_params is not None:
            part = _for_params(model, path, int(target_params), calib, how)
        elif target_error is not None:
            part = _for_error(model, path, calib, calibration_targets, float(target_error), how)
        else:
            part = path.partition(0.0 if eps is None else eps)
        reduced, ran = apply(model, path, part, how)
        err = output_error(before, _output(reduced, calib)) if calib is not None else None
        _train(reduced, was_training)
    finally:
        _train(model, was_training)
    layers, labels = [], []
    for chain, p in zip(path.chains, path.net.split(part)):
        for g, lab, e in zip(chain, p.labels, p.eps_per_layer):
            layers.append(LayerSummary.of(g.name, g.activation, lab, e))
            labels.append(np.array(lab))
    target = {"params": target_params} if target_params is not None else (
        {"error_increase": target_error} if target_error is not None else None)
    return Compression(reduced, labels, count_params(model), count_params(reduced), layers, part.mode, part.eps,
                       part.relative, err, None, target, method, bool(symmetry), how if ran else None, None, path,
                       disc, None if calib is None else calib[:2].clone())


def _train(model: nn.Module, mode: bool) -> None:
    """model.train(mode), where the model allows it (a torch.export program's module does not)."""
    if model.training != mode:
        try:
            model.train(mode)
        except NotImplementedError:
            pass


def _for_params(model: nn.Module, path: ModelPath, target: int, calib, repair: str | None) -> Partition:
    """The partition within ``target`` parameters. Without calibration data (or with fewer than 8
    samples): the path's global order. With it, as for plain stacks (method.md §8.6), the split of
    the budget between layers is chosen by measured error: the global order, each layer's bound
    scaled by 1/4..4 in turn, and the same fraction of every layer, each applied (and repaired on
    3/4 of the calibration samples when repair is on) and scored on the other 1/4."""
    from .compress import _split
    from ..core.target import pick, scale_candidates

    cands = scale_candidates(len(path.layers))
    if calib is None or len(calib) < 8 or len(cands) == 1:
        ms = path.for_params(target)
        return path.partition_at(ms, path.eps_of(ms))
    fit, held = (torch.as_tensor(i) for i in _split(len(calib)))
    fit_path = path
    if repair == "calibration":  # refit on the fit samples only, so the held ones score it fairly
        fit_path = copy.copy(path)
        captured = surgery.capture(model, [a for c in path.chains for a in surgery.chain_affines(c)], calib[fit])
        fit_path.ins = [surgery.chain_inputs(model, c, captured) for c in path.chains]
    x_held = calib[held]
    want = _output(model, x_held)
    options = [path.for_params(target, scale) for scale in cands] + [path.uniform(target)]

    def score(ms) -> float:
        small, _ = apply(model, fit_path, path.partition_at(ms), repair)
        _train(small, False)
        return output_error(want, _output(small, x_held))["relative_mse"]

    best = pick(options, score)
    return path.partition_at(best, path.eps_of(best))


def _for_error(model, path: ModelPath, calib, targets, max_increase: float, repair: str | None) -> Partition:
    """The most merges along the path whose model's MSE against ``targets`` on the calibration
    inputs is within (1 + max_increase) of the original's."""
    if calib is None or targets is None:
        raise InvalidArgumentError("target_error needs calibration inputs and calibration_targets")
    y = torch.as_tensor(np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets),
                        dtype=torch.float64).reshape(len(calib), -1).numpy()

    def mse(m) -> float:
        return float(np.mean((_output(m, calib) - y) ** 2))

    bound = mse(model) * (1.0 + max_increase)
    seq = path.sequence()
    step = max(1, len(seq) // 50)
    best = 0
    for i in list(range(0, len(seq), step)):
        if mse(apply(model, path, path.partition_at(seq[i]), repair)[0]) <= bound:
            best = i
    for i in range(best + 1, min(best + step, len(seq))):
        if mse(apply(model, path, path.partition_at(seq[i]), repair)[0]) <= bound:
            best = i
    return path.partition_at(seq[best], path.eps_of(seq[best]))
