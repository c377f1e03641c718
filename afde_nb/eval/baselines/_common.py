"""Shared pieces of the baselines: a fresh copy of the model, calibration handling, counts."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...models.stack import to_network, to_torch
from ...errors import InvalidArgumentError, ShapeMismatchError, UnsupportedLayerError
from ...models.capture import capture
from ...core.network import Network, as_inputs


@dataclass
class Pruned:
    """A compressed copy of a model.

    ``params`` is the count used for comparisons: non-zero weights plus all biases when
    ``dense`` is False (masked, same shapes as the input), the dense count (weights + biases)
    when ``dense`` is True (hidden layers got smaller).
    """

    model: nn.Sequential
    params: int
    method: str
    amount: float
    dense: bool
    #: for dense methods, how each hidden layer stands for the original one: (labels, coef) per
    #: hidden layer (labels -1: neuron dropped), and the first layer whose inputs changed; what
    #: :func:`afde_nb.eval.baselines.repair_pruned` needs
    maps: list | None = None
    start: int = 0
    repaired: str | None = None
    #: for a model that is not a plain stack: ``refit(calibration, pseudo)`` reruns the method
    #: with the repair of its groups (:mod:`afde_nb.eval.baselines.groups`)
    refit: object = field(default=None, repr=False)


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
    """Neurons a hidden layer of ``n`` keeps: ``max(1, round((1 - amount) * n))``."""
    return max(1, round((1.0 - amount) * n))


def read(model: nn.Module) -> tuple[Network, torch.device]:
    """Float64 copy of ``model`` (never touched afterwards) and the device to return it on."""
    net = to_network(model)
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - to_network needs a Linear
        device = torch.device("cpu")
    return net, device


def is_stack(model: nn.Module) -> bool:
    """Whether ``model`` is one plain stack the Network-level algorithms read directly."""
    try:
        to_network(model)
    except UnsupportedLayerError:
        return not isinstance(model, nn.Module)  # a non-module fails later with the stack's message
    return True


def build(net: Network, device: torch.device) -> nn.Sequential:
    return to_torch(net, device=device)


def as_calibration(calibration, net: Network) -> np.ndarray:
    """Calibration inputs as a float64 (n, in_features) array (the model's input Flatten applied)."""
    if calibration is None:
        raise InvalidArgumentError("this method needs calibration inputs: an (n, in_features) array or tensor")
    x = as_inputs(calibration, net.layers[0].in_features, "calibration", net.meta.get("flatten"))
    if len(x) < 1:
        raise ShapeMismatchError("calibration inputs must have at least one row")
    return x


def layer_inputs(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """Input of every layer of ``net`` on ``x`` (float64 forward of the original model)."""
    return net.layer_inputs(x)


def dense_count(net: Network, hidden_widths: list[int]) -> int:
    """Dense parameter count of ``net`` with its hidden layers resized to ``hidden_widths``."""
    return net.num_params_with(hidden_widths)


def bias_count(net: Network) -> int:
    return sum(l.out_features for l in net.layers if l.has_bias)


def dense_counter(model: nn.Module):
    """params(amount) of a method that keeps ``n_kept(n, amount)`` units of every group (every
    hidden layer of a plain stack), in closed form from capture's count of the model."""
    cap = capture(model)
    if not cap.discovery.chains:
        raise UnsupportedLayerError("no lumpable groups to prune or fold:\n" + cap.discovery.report())
    sizes = [l.out_features for n in cap.nets for l in n.hidden]
    return lambda amount: cap.num_params_with([n_kept(n, amount) for n in sizes])
