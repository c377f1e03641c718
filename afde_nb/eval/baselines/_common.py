"""Shared pieces of the baselines: the groups they act on, the result, counts.

A chain is either an ordinary one (a :class:`~afde_nb.core.network.Network` of Linear/convolution
layers) or one gated MLP group (a :class:`~afde_nb.core.gated.GatedNet`: gate, up and down
projections). The masked methods see both as a list of weight layers, :func:`projections`
(a gated chain's three projections, each pruned as a Linear layer of its own), with each layer's
input rows from :func:`projection_inputs` (gate and up read the chain's input x, down reads
``h = act(gate x) * up x``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...core.gated import GatedNet
from ...core.network import Layer, Network
from ...errors import InvalidArgumentError, ShapeMismatchError, UnsupportedLayerError
from ...models.capture import Captured, capture


@dataclass
class Pruned:
    """A compressed copy of a model.

    ``params`` is the count used for comparisons: non-zero weights plus all biases when
    ``dense`` is False (masked, same shapes as the input), the dense count (weights + biases)
    when ``dense`` is True (units removed or folded). ``nets`` are the model's chains of groups
    as the result holds them, and for dense methods ``maps`` how each hidden layer of each chain
    stands for the original one ((labels, coef) per hidden layer, labels -1: unit dropped): what
    :func:`afde_nb.eval.baselines.repair_pruned` refits from.
    """

    model: nn.Module
    params: int
    method: str
    amount: float
    dense: bool
    nets: list | None = None
    maps: list | None = None
    repaired: str | None = None


def units(model: nn.Module) -> Captured:
    """The groups every baseline acts on: the chains afde-nb lumps (a plain stack's hidden layers)."""
    cap = capture(model)
    if not cap.nets:
        raise UnsupportedLayerError("no lumpable groups to prune or fold:\n" + cap.discovery.report())
    return cap


def finish(cap: Captured, nets: list[Network], method: str, amount: float, dense: bool, maps=None,
           repaired: str | None = None) -> Pruned:
    """The model with its chains replaced by ``nets`` (a copy), counted as the comparisons count."""
    model = cap.write(nets)
    return Pruned(model, count_params(model, nonzero=not dense), method, amount, dense, cap.written(nets, model),
                  maps, repaired)


def projections(net: Network) -> list[Layer]:
    """The weight layers of a chain as the masked methods prune them: a gated chain's gate, up
    and down projections (``net.layers`` holds only gate and down); an ordinary chain's layers."""
    return [net.gate, net.up, net.down] if isinstance(net, GatedNet) else list(net.layers)


def with_projections(net: Network, layers: list[Layer]) -> Network:
    """``net`` (a copy) with its :func:`projections` replaced by ``layers``, of the same kind."""
    if isinstance(net, GatedNet):
        gate, up, down = layers
        return GatedNet([gate, down], dtype=net.dtype, meta=dict(net.meta), up=up)
    return Network(list(layers), dtype=net.dtype, meta=dict(net.meta))


def projection_inputs(net: Network, ins: list[np.ndarray]) -> list[np.ndarray]:
    """Each of :func:`projections`' input rows, from the chain's layer inputs ``ins`` (a gated
    chain's: [x, h]; gate and up both read x)."""
    if isinstance(net, GatedNet):
        x, h = ins
        return [x, x, h]
    return list(ins)


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameters of ``model``; with ``nonzero`` only the non-zero entries of weights count
    (biases, i.e. parameters whose name ends in ``bias``, always count in full)."""
    total = 0
    for name, p in model.named_parameters():
        if nonzero and not name.split(".")[-1] == "bias":
            total += int(torch.count_nonzero(p.detach()))
        else:
            total += p.numel()
    return total


def check_amount(amount) -> float:
    """``amount`` as a float fraction in [0, 1] (an int is a fraction too, never a count)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"amount must be a number in [0, 1], got {type(amount).__name__}")
    a = float(amount)
    if not (0.0 <= a <= 1.0):
        raise InvalidArgumentError(f"amount must be a fraction in [0, 1], got {amount!r}")
    return a


def n_pruned(n: int, amount: float) -> int:
    """How many of ``n`` entries a fraction ``amount`` prunes (as torch.nn.utils.prune counts)."""
    return round(amount * n)


def n_kept(n: int, amount: float) -> int:
    """Units a group of ``n`` keeps: ``max(1, round((1 - amount) * n))``."""
    return max(1, round((1.0 - amount) * n))


def as_calibration(cap: Captured, calibration):
    """Calibration inputs as the model takes them (:meth:`Captured.calibration`), at least one row."""
    if calibration is None:
        raise InvalidArgumentError("this method needs calibration inputs, shaped as the model's input")
    x = cap.calibration(calibration)
    if len(x) < 1:
        raise ShapeMismatchError("calibration inputs must have at least one row")
    return x


def dense_counter(model: nn.Module):
    """params(amount) of a method that keeps ``n_kept(n, amount)`` units of every group, in
    closed form from capture's count of the model."""
    cap = units(model)
    sizes = [l.out_features for n in cap.nets for l in n.hidden]
    return lambda amount: cap.num_params_with([n_kept(n, amount) for n in sizes])


def maps_of(keep: list[np.ndarray], sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Target maps of kept units: unit ``keep[h][j]`` of hidden layer h becomes unit j, the rest go."""
    out = []
    for k, n in zip(keep, sizes):
        lab = np.full(n, -1, dtype=np.int64)
        lab[k] = np.arange(len(k))
        out.append((lab, np.ones(n)))
    return out


def first_changed(maps: list[tuple[np.ndarray, np.ndarray]] | None, layers: int) -> int:
    """The first layer whose inputs a dense method changed: after the first hidden layer with a
    unit dropped or merged (``layers``: none changed)."""
    for h, (lab, _) in enumerate(maps or []):
        if lab.size and (lab.max() + 1 < lab.size or (lab < 0).any()):
            return h + 1
    return layers
