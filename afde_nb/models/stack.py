"""torch <-> :class:`~afde_nb.core.network.Network`.

``to_network`` reads a feed-forward stack of ``Linear`` layers and element-wise activations out
of an ``nn.Sequential`` or of any ``nn.Module`` whose forward is such a stack (traced with
``torch.fx``); ``to_torch`` builds the plain ``nn.Sequential`` that stock torch loads.

float32 end to end (issue 10): a CPU float32 or float64 model is read as read-only numpy views of
its tensors (no copy); the quotient writes the reduced layers once into fresh arrays of the
model's dtype, which ``to_torch`` wraps with ``torch.from_numpy`` instead of copying again. numpy
allocates them (with transparent huge pages where the kernel allows: several times fewer page
faults than torch's allocator on a fresh 100M-parameter model).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InvalidWeightsError, UnsupportedLayerError
from ..core.network import Layer, Network, finite

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


def _plain_sequential(model: nn.Module) -> bool:
    """An ``nn.Sequential`` (no subclass) of nested ``nn.Sequential``s and torch's own leaf modules:
    fx would trace exactly its leaves in order, so the trace (~10 ms) is skipped."""
    if type(model) is not nn.Sequential:
        return False
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            if type(m) is not nn.Sequential:
                return False
        elif not type(m).__module__.startswith("torch.nn.modules."):
            return False
    return True


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


#: dtypes read in place (as numpy views); others are copied to float64
_IN_PLACE = (torch.float32, torch.float64)


def _array(name: str, t: torch.Tensor, check: bool) -> np.ndarray:
    """A read-only array of ``t``: a view for a CPU float32/float64 tensor, else a float64 copy
    (float16, bfloat16) or a copy in the same dtype (another device)."""
    t = t.detach()
    if t.dtype in _IN_PLACE:
        a = t.cpu().numpy() if t.device.type != "cpu" else t.resolve_conj().resolve_neg().numpy()
    else:
        a = t.to("cpu", torch.float64).numpy()
    a = a.view()
    a.flags.writeable = False  # nothing in afde-nb may write into the user's tensors
    if check and not finite(a):
        bad = "NaN" if np.isnan(a).any() else "infinite"
        raise InvalidWeightsError(f"{name} contains {bad} values; afde-nb needs finite weights")
    return a


def to_network(model: nn.Module, *, check: bool = True) -> Network:
    """Read ``model`` into a Network of read-only arrays in its dtype (views of CPU float32/float64
    tensors, see the module docstring); the model itself is not modified. ``check=False`` leaves
    the finiteness check to the first pass of :func:`~afde_nb.core.path.merge_path` (or of the
    quotient), which names the tensor the same way; ``compress`` uses it so the weights are read
    once fewer."""
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if _plain_sequential(model):  # its forward is the chain of its leaves: what fx would trace
        ops = _ops_sequential(model)
    else:
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
            w = _array(f"{path}.weight", op.weight, check)
            if op.bias is not None:
                b = _array(f"{path}.bias", op.bias, check)
            else:
                b = np.zeros(w.shape[0], dtype=w.dtype)
                b.flags.writeable = False
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
    meta = {"flatten": flatten} if flatten else {}
    meta["versions"] = versions(model)
    return Network(layers, dtype=dtype or "float32", meta=meta, finite_checked=check)


def versions(model: nn.Module) -> tuple | None:
    """What changes when a parameter of ``model`` is replaced or written in place by torch (its
    storage and version counter): the Network holds views, not a snapshot, so a merge path reused
    with ``path=`` must have been built from the same versions (compress checks it)."""
    try:
        return tuple((p.data_ptr(), p._version) for p in model.parameters())
    except RuntimeError:  # inference tensors keep no version counter
        return None


_ACT_CLASS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def _tensor(a: np.ndarray, dtype: torch.dtype, adopt: bool) -> torch.Tensor:
    """``a`` as a CPU tensor of ``dtype`` that shares nothing with anything but ``a`` when
    ``adopt`` (a fresh buffer handed over), else with nothing: wrapped without a copy when adopted
    and already of ``dtype``, else one copy made by numpy (huge pages) and wrapped."""
    want = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    if want is None:  # float16 / bfloat16: torch converts
        return torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)
    if adopt and isinstance(a, np.ndarray) and a.dtype == want and a.flags.c_contiguous and a.flags.owndata \
            and a.flags.writeable:
        t = torch.from_numpy(a)
        a.flags.writeable = False  # the Network still holds it: it may no longer write into the model
        return t
    return torch.from_numpy(np.array(a, dtype=want, order="C", copy=True))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A stock ``nn.Linear`` holding these tensors, built without ``Linear.__init__``: it would
    allocate and randomly initialise weights that are replaced next (even on the meta device its
    initialisation costs ~1.5 ms a layer)."""
    lin = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(lin)
    lin.out_features, lin.in_features = int(weight.shape[0]), int(weight.shape[1])
    lin.weight = nn.Parameter(weight)
    lin.register_parameter("bias", None if bias is None else nn.Parameter(bias))
    return lin


def to_torch(net: Network, device: torch.device | str | None = None) -> nn.Sequential:
    """A plain ``nn.Sequential`` of stock torch modules computing ``net``, in ``net.dtype``.

    The model never shares storage with the arrays of a Network that does not own them (one copy
    each, e.g. of :func:`to_network`'s views of the user's model). The quotient's own output
    (``net.owned``) is handed over instead: its arrays become the tensors, with no copy, and the
    Network keeps them as read-only views of the new model (``owned`` is cleared, so a second
    call copies)."""
    dtype = getattr(torch, net.dtype)
    adopt, net.owned = net.owned, False
    mods: list[nn.Module] = []
    for l in net.layers:
        mods.append(_linear(_tensor(l.weight, dtype, adopt), _tensor(l.bias, dtype, adopt) if l.has_bias else None))
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
