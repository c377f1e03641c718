"""torch <-> :class:`~afde_nb.network.Network`.

``to_network`` reads a feed-forward stack of ``Linear`` layers and element-wise activations out
of an ``nn.Sequential`` or of any ``nn.Module`` whose forward is such a stack (traced with
``torch.fx``); ``to_torch`` builds the plain ``nn.Sequential`` that stock torch loads.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import InvalidWeightsError, UnsupportedLayerError
from .network import Layer, Network

_ACT_MODULES = {
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
}
_ACT_FUNCTIONS = {
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    torch.relu: "relu",
    nn.functional.tanh: "tanh",
    nn.functional.sigmoid: "sigmoid",
    nn.functional.relu: "relu",
    nn.functional.leaky_relu: "leaky_relu",
}
_ACT_METHODS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu"}
#: no-ops at inference time
_PASS_MODULES = (nn.Identity, nn.Dropout)
SUPPORTED = "Linear, Tanh, Sigmoid, ReLU, LeakyReLU, Identity, Dropout, and Flatten before the first Linear"


def _ops_sequential(model: nn.Sequential) -> list[tuple[str, object]]:
    """Leaves of nested Sequentials in order: the fallback when fx cannot trace a Sequential."""
    ops: list[tuple[str, object]] = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.Sequential):
            ops += [(f"{name}.{p}", m) for p, m in _ops_sequential(mod)]
        else:
            ops.append((name, mod))
    return ops


def _ops_traced(model: nn.Module) -> list[tuple[str, object]]:
    """The forward of ``model`` as a chain of (path, op); refuses branches and unknown ops."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedLayerError(
            f"cannot read the forward of {type(model).__name__} as a feed-forward stack "
            f"(torch.fx tracing failed: {exc}); pass an nn.Sequential of {SUPPORTED}"
        ) from exc
    modules = dict(gm.named_modules())
    ops: list[tuple[str, object]] = []
    prev = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise UnsupportedLayerError(f"{type(model).__name__}.forward takes more than one input")
            prev = node
            continue
        if node.op == "output":
            if node.args[0] is not prev:
                raise UnsupportedLayerError(f"{type(model).__name__}.forward does not return its last layer")
            break
        if node.op == "get_attr" or len(node.args) < 1 or node.args[0] is not prev:
            raise UnsupportedLayerError(
                f"operation {node.name!r} in {type(model).__name__}.forward is not part of a single "
                f"feed-forward chain; supported: {SUPPORTED}"
            )
        if node.op == "call_module":
            ops.append((str(node.target), modules[node.target]))
        elif node.op == "call_function" and node.target in _ACT_FUNCTIONS:
            act = _ACT_FUNCTIONS[node.target]
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            ops.append((node.name, ("act", act, float(slope))))
        elif node.op == "call_method" and node.target in _ACT_METHODS:
            ops.append((node.name, ("act", _ACT_METHODS[node.target], 0.01)))
        else:
            raise UnsupportedLayerError(
                f"unsupported operation {node.target!r} (node {node.name!r}) in "
                f"{type(model).__name__}.forward; supported: {SUPPORTED}"
            )
        prev = node
    return ops


def _finite(name: str, t: torch.Tensor) -> np.ndarray:
    a = t.detach().to("cpu", torch.float64).numpy().copy()
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "infinite"
        raise InvalidWeightsError(f"{name} contains {bad} values; afde-nb needs finite weights")
    return a


def to_network(model: nn.Module) -> Network:
    """Read ``model`` into float64 arrays; the model itself is not modified."""
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        ops = _ops_traced(model)
    except UnsupportedLayerError:
        if not isinstance(model, nn.Sequential):
            raise
        ops = _ops_sequential(model)
    layers: list[Layer] = []
    dtype = None
    flatten = None  # (start_dim, end_dim) of a Flatten on the inputs
    open_linear = False  # the last layer has no activation yet
    for path, op in ops:
        if isinstance(op, nn.Flatten):
            if layers or flatten is not None:
                raise UnsupportedLayerError(f"Flatten {path!r} must stand once, before the first Linear")
            flatten = (int(op.start_dim), int(op.end_dim))
            continue
        if isinstance(op, nn.Linear):
            w = _finite(f"{path}.weight", op.weight)
            b = _finite(f"{path}.bias", op.bias) if op.bias is not None else np.zeros(w.shape[0])
            if layers and layers[-1].out_features != w.shape[1]:
                raise UnsupportedLayerError(
                    f"Linear {path!r} takes {w.shape[1]} inputs but the layer before gives "
                    f"{layers[-1].out_features}"
                )
            dtype = dtype or str(op.weight.dtype).replace("torch.", "")
            layers.append(Layer(w, b, "identity", has_bias=op.bias is not None, path=path))
            open_linear = True
            continue
        if isinstance(op, _PASS_MODULES):
            continue
        if isinstance(op, nn.Module) and type(op) in _ACT_MODULES:
            act, slope = _ACT_MODULES[type(op)], float(getattr(op, "negative_slope", 0.01))
        elif isinstance(op, tuple) and op[0] == "act":
            act, slope = op[1], op[2]
        else:
            raise UnsupportedLayerError(
                f"unsupported module {path!r} ({type(op).__name__}); supported: {SUPPORTED}"
            )
        if not open_linear:
            where = "on the inputs" if not layers else "right after another activation"
            raise UnsupportedLayerError(f"activation {path!r} stands {where}; each activation must follow a Linear")
        layers[-1].activation, layers[-1].negative_slope = act, slope
        open_linear = False
    if not layers:
        raise UnsupportedLayerError(f"{type(model).__name__} has no Linear layer")
    return Network(layers, dtype=dtype or "float32", meta={"flatten": flatten} if flatten else {})


_ACT_CLASS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def to_torch(net: Network, device: torch.device | str | None = None) -> nn.Sequential:
    """A plain ``nn.Sequential`` of stock torch modules computing ``net``."""
    dtype = getattr(torch, net.dtype)
    mods: list[nn.Module] = []
    for l in net.layers:
        # skip_init: no random initialisation of weights that are overwritten next (seconds at 100M)
        lin = torch.nn.utils.skip_init(nn.Linear, l.in_features, l.out_features, bias=l.has_bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(l.weight))
            if l.has_bias:
                lin.bias.copy_(torch.from_numpy(l.bias))
        mods.append(lin)
        if l.activation == "leaky_relu":
            mods.append(nn.LeakyReLU(l.negative_slope))
        elif l.activation != "identity":
            mods.append(_ACT_CLASS[l.activation]())
    if net.meta.get("flatten"):
        mods.insert(0, nn.Flatten(*net.meta["flatten"]))
    model = nn.Sequential(*mods)
    if device is not None:
        model = model.to(device)
    return model.eval()
