"""Shared pieces of the baselines: the groups they act on, the result, counts.

A chain is an ordinary one (a :class:`~afde_nb.core.network.Network` of Linear/convolution
layers), one gated MLP group (a :class:`~afde_nb.core.gated.GatedNet`: gate, up and down
projections) or one inverted-residual block (a :class:`~afde_nb.core.inverted.InvertedNet`:
producer, depthwise kernels, SE fc1/fc2, consumer; BatchNorms folded). The masked methods see each
as a list of weight layers, :func:`projections` (a gated chain's three projections, an inverted
chain's five tensors, each pruned as a layer of its own), with each layer's input norms from
:func:`input_norms` (gate and up read the chain's input x, down reads ``h = act(gate x) * up x``;
an inverted block's from its array forward on the chain's probe maps,
:func:`afde_nb.core.inverted.input_norms`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...core import inverted as core_inverted
from ...core.gated import GatedNet
from ...core.inverted import InvertedNet
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
    and down projections (``net.layers`` holds only gate and down); an inverted block's producer,
    depthwise kernels, SE fc1 and fc2 (with an SE) and consumer, in the order the block runs them;
    an ordinary chain's layers."""
    if isinstance(net, GatedNet):
        return [net.gate, net.up, net.down]
    if isinstance(net, InvertedNet):
        return [net.producer, net.dw] + ([net.fc1, net.fc2] if net.se else []) + [net.consumer]
    return list(net.layers)


def with_projections(net: Network, layers: list[Layer]) -> Network:
    """``net`` (a copy) with its :func:`projections` replaced by ``layers``, of the same kind. An
    inverted block's channels whose producer row, depthwise kernel and fc2 row are unchanged are
    named in ``meta["keep"]`` (written back bit for bit, their BatchNorm entries unfolded); a
    changed channel is written folded (masked zeros stay zeros), with identity BatchNorm entries."""
    if isinstance(net, GatedNet):
        gate, up, down = layers
        return GatedNet([gate, down], dtype=net.dtype, meta=dict(net.meta), up=up)
    if isinstance(net, InvertedNet):
        producer, dw, *se, consumer = layers
        fc1, fc2 = se if net.se else (None, None)
        same = np.ones(net.channels, dtype=bool)
        for a, b in ((net.producer, producer), (net.dw, dw)) + (((net.fc2, fc2),) if net.se else ()):
            same &= np.all(np.asarray(a.weight) == np.asarray(b.weight), axis=1) & (np.asarray(a.bias) == b.bias)
        keep = np.where(same, np.arange(net.channels), -1)
        return InvertedNet([producer, consumer], dtype=net.dtype, meta={**net.meta, "keep": keep}, dw=dw, fc1=fc1,
                           fc2=fc2, pgeo=net.pgeo, dgeo=net.dgeo)
    return Network(list(layers), dtype=net.dtype, meta=dict(net.meta))


def projection_inputs(net: Network, ins: list[np.ndarray]) -> list[np.ndarray]:
    """Each of :func:`projections`' input rows, from the chain's layer inputs ``ins`` (a gated
    chain's: [x, h]; gate and up both read x). An inverted block has none here (its producer's
    and depthwise kernels' inputs are patches of whole maps): see :func:`input_norms`."""
    if isinstance(net, GatedNet):
        x, h = ins
        return [x, x, h]
    if isinstance(net, InvertedNet):
        raise UnsupportedLayerError(f"{net.producer.path}: an inverted-residual block's layer inputs are not rows; "
                                    "use input_norms")
    return list(ins)


def input_norms(net: Network, ins: list) -> list[np.ndarray]:
    """``||X_j||_2`` of every input feature of each of :func:`projections` (Wanda's norms), each
    broadcastable against its weight: an ordinary or gated chain's from the input rows ``ins``
    (a row vector each); an inverted block's from its probe maps ``ins[0]`` by
    :func:`afde_nb.core.inverted.input_norms` (a depthwise kernel's per channel and tap)."""
    if isinstance(net, InvertedNet):
        return core_inverted.input_norms(net, ins[0])
    return [np.linalg.norm(h, axis=0)[None, :] for h in projection_inputs(net, ins)]


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
