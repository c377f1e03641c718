"""Find the lumpable groups of hidden units inside any torch model (torch.fx).

A *group* is a producer (``Linear``, ``Conv1d``/``Conv2d`` with ``groups=1``) whose outputs pass
only through an optional ``BatchNorm`` (eval statistics, folded), one element-wise activation and
no-ops (``Dropout``, ``Identity``) into exactly one consuming layer of the same kind, as its data
input; a convolution's channels may also pass channel-wise pooling (max: up to positive scaling
only) and a ``Flatten`` into a ``Linear``, where each channel owns a run of its input columns. Its units (features, or channels) can be merged: the producer loses rows, the consumer the
matching input columns, and nothing else in the model sees them. Units concatenated with others
(``torch.cat`` along their axis) are a slice of the one consumer's columns (``Affine.cols``),
several groups sharing that consumer; units read by several consumers (a fan-out) are one group
whose consumers are all of them; reshapes, permutes and flattens are followed by their index maps
(:mod:`afde_nb.models.indexmap`). Units that feed anything else (a residual add, a layout no index
map proves, the model's output) are left alone and reported with why.

Modules are traced from the root; a module whose forward torch.fx cannot trace (data-dependent
control flow, like ``nn.TransformerEncoder``) is looked into child by child, so the layers inside
it still count. ``nn.MultiheadAttention`` stays opaque. A ``torch.export`` program's module (ATen
operations on parameters) is read the same way. Where torch.fx cannot trace the whole forward (a
Hugging Face model) and example inputs are given, the model is also exported
(:func:`export_graph`) and its ATen graph read, each operation mapped back to the model's own
modules by parameter path and ``nn_module_stack``: a Linear stored transposed (``addmm``,
Hugging Face's ``Conv1D``), views that only regroup the token axes, and an activation module's
operations (GPT-2's ``NewGELUActivation`` is a few ATen ops) count as what they are. Activation
modules (every element-wise one of torch and of Hugging Face's ``ACT2FN``) are recognised by class
and trusted only once checked on a few values. Consecutive groups (one's consumer the next one's
producer, as in an MLP) form a *chain*, which is compressed as one network. A gated unit
(``down(act(gate(x)) * up(x))``, LLaMA's MLP) is a group kind of its own (two producers, one
consumer), found by :func:`afde_nb.models.gated.find_gated`, and a chain of its own; so is each
expert of a mixture-of-experts bank stored fused (:mod:`afde_nb.models.experts`: found by module,
checked by value; a bank's experts keep equal widths).
"""
from __future__ import annotations

import contextlib
import operator
import inspect
import itertools
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..core.network import apply_activation
from ..errors import UnsupportedLayerError
from . import hf
from .experts import ExpertGroup, find_banks
from .gated import GatedGroup, find_gated
from .grouped import GroupedGroup, GroupedOut, find_grouped
from .indexmap import SHAPED, Ids, concrete, followable, is_view, reads_shape
from .inverted import InvertedGroup, find_inverted
from .params import get_tensor

F = nn.functional
aten = torch.ops.aten

#: activation module class -> instance -> (name, parameters) (None: not element-wise with fixed
#: parameters, e.g. a PReLU with one slope per channel); every element-wise activation of torch.nn
#: (GLU, Softmax and attention are not element-wise); Hugging Face's are in :mod:`.hf`
_ACT_MODULES = {
    nn.Identity: lambda m: ("identity", {}), nn.Tanh: lambda m: ("tanh", {}), nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.ReLU: lambda m: ("relu", {}), nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}), nn.SiLU: lambda m: ("silu", {}),
    nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
    nn.Softplus: lambda m: ("softplus", {"beta": m.beta, "threshold": m.threshold}),
    nn.Hardtanh: lambda m: ("hardtanh", {"min_val": m.min_val, "max_val": m.max_val}),
    nn.ReLU6: lambda m: ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
    nn.Hardswish: lambda m: ("hardswish", {}), nn.Hardsigmoid: lambda m: ("hardsigmoid", {}),
    nn.Mish: lambda m: ("mish", {}), nn.SELU: lambda m: ("selu", {}), nn.CELU: lambda m: ("celu", {"alpha": m.alpha}),
    nn.LogSigmoid: lambda m: ("logsigmoid", {}), nn.Softsign: lambda m: ("softsign", {}),
    nn.Tanhshrink: lambda m: ("tanhshrink", {}), nn.Hardshrink: lambda m: ("hardshrink", {"lambd": m.lambd}),
    nn.Softshrink: lambda m: ("softshrink", {"lambd": m.lambd}),
    nn.Threshold: lambda m: ("threshold", {"threshold": m.threshold, "value": m.value}),
    # one shared slope: a leaky ReLU; one per channel: the units' activations differ
    nn.PReLU: lambda m: ("leaky_relu", {"negative_slope": float(m.weight.detach().reshape(-1)[0])})
    if m.weight.numel() == 1 else None,
    # eval: the mean slope; training: random slopes
    nn.RReLU: lambda m: None if m.training else ("leaky_relu", {"negative_slope": (m.lower + m.upper) / 2}),
}
def _inplace(name: str) -> tuple:
    """An in-place ATen activation (``relu_``, ``hardswish_``: what an exported ``inplace=True``
    module runs), where this torch has it."""
    op = getattr(aten, name, None)
    return (op.default,) if op is not None else ()


#: function -> (name, positional names after the input, defaults)
_ACT_FUNCS = {}
for _name, _fns, _pos, _dflt in [
    ("tanh", (torch.tanh, F.tanh, aten.tanh.default) + _inplace("tanh_"), (), {}),
    ("sigmoid", (torch.sigmoid, F.sigmoid, aten.sigmoid.default) + _inplace("sigmoid_"), (), {}),
    ("relu", (torch.relu, F.relu, aten.relu.default, aten.relu_.default), (), {}),
    ("leaky_relu", (F.leaky_relu, aten.leaky_relu.default), ("negative_slope",), {"negative_slope": 0.01}),
    ("gelu", (F.gelu, aten.gelu.default), (), {"approximate": "none"}),
    ("silu", (F.silu, aten.silu.default) + _inplace("silu_"), (), {}),
    ("elu", (F.elu, aten.elu.default), ("alpha",), {"alpha": 1.0}),
    ("softplus", (F.softplus, aten.softplus.default), ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
    ("hardtanh", (F.hardtanh, aten.hardtanh.default), ("min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}),
    ("hardtanh", (F.relu6, aten.relu6.default), (), {"min_val": 0.0, "max_val": 6.0}),
    ("hardswish", (F.hardswish, aten.hardswish.default) + _inplace("hardswish_"), (), {}),
    ("hardsigmoid", (F.hardsigmoid, aten.hardsigmoid.default) + _inplace("hardsigmoid_"), (), {}),
    ("mish", (F.mish, aten.mish.default), (), {}),
    ("selu", (F.selu, aten.selu.default), (), {}),
    ("celu", (F.celu, aten.celu.default), ("alpha",), {"alpha": 1.0}),
    ("logsigmoid", (F.logsigmoid, aten.log_sigmoid.default), (), {}),
    ("softsign", (F.softsign,), (), {}),
    ("tanhshrink", (F.tanhshrink,), (), {}),
    ("hardshrink", (F.hardshrink, aten.hardshrink.default), ("lambd",), {"lambd": 0.5}),
    ("softshrink", (F.softshrink, aten.softshrink.default), ("lambd",), {"lambd": 0.5}),
    ("threshold", (F.threshold, aten.threshold.default), ("threshold", "value"), {}),
]:
    for _fn in _fns:
        _ACT_FUNCS[_fn] = (_name, _pos, _dflt)
_ACT_METHODS = {"tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu"}
#: values an activation module is checked on before it is trusted to compute what its class says
_PROBE = torch.cat([torch.linspace(-12.0, 12.0, 241, dtype=torch.float64),
                    torch.tensor([-60.0, -30.0, 30.0, 60.0], dtype=torch.float64)]).reshape(5, 49)
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_DROPOUT_FUNCS = (F.dropout, aten.dropout.default)
_LINEAR_FUNCS = (F.linear, aten.linear.default)
#: addmm(bias, x, weight): a Linear with its weight stored (in, out), as Hugging Face's Conv1D
_ADDMM_FUNCS = (torch.addmm, aten.addmm.default)
#: ATen ops that only regroup the leading axes (or copy) of a Linear's output in an exported graph
_VIEW_FUNCS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default,
               aten.alias.default, aten.contiguous.default)
_CONV_FUNCS = {F.conv1d: "conv1d", aten.conv1d.default: "conv1d", F.conv2d: "conv2d", aten.conv2d.default: "conv2d",
               aten.conv1d.padding: "conv1d", aten.conv2d.padding: "conv2d"}
_BN_FUNCS = (aten.batch_norm.default, F.batch_norm)
#: channel-wise pooling: commutes with merging channels (max: up to positive scaling only)
_POOL_MODULES = {nn.MaxPool1d: "max_pool", nn.MaxPool2d: "max_pool", nn.AvgPool1d: "avg_pool", nn.AvgPool2d: "avg_pool",
                 nn.AdaptiveAvgPool1d: "avg_pool", nn.AdaptiveAvgPool2d: "avg_pool",
                 nn.AdaptiveMaxPool1d: "max_pool", nn.AdaptiveMaxPool2d: "max_pool"}
_POOL_FUNCS = {F.max_pool1d: "max_pool", F.max_pool2d: "max_pool", F.avg_pool1d: "avg_pool", F.avg_pool2d: "avg_pool",
               F.adaptive_avg_pool1d: "avg_pool", F.adaptive_avg_pool2d: "avg_pool",
               aten.max_pool2d.default: "max_pool", aten.max_pool1d.default: "max_pool",
               aten.avg_pool2d.default: "avg_pool", aten.avg_pool1d.default: "avg_pool",
               aten.adaptive_avg_pool2d.default: "avg_pool", aten.adaptive_avg_pool1d.default: "avg_pool"}
#: poolings that return (values, indices) in an exported graph, followed by getitem 0
_POOL_PAIRS = {aten.max_pool2d_with_indices.default: "max_pool", aten.max_pool1d_with_indices.default: "max_pool",
               F.max_pool2d_with_indices: "max_pool", F.max_pool1d_with_indices: "max_pool"}
_POOL_FUNCS.update(_POOL_PAIRS)
_PAD_FUNCS = (F.pad, aten.pad.default, aten.constant_pad_nd.default)
#: concatenations: a unit becomes a slice of the result's units (:meth:`_Reader.cat`)
_CAT_FUNCS = (torch.cat, torch.concat, torch.concatenate, aten.cat.default, aten.concat.default)
_NEEDS_SHAPES = "give example inputs to read the model through torch.export"
#: modules fx must not trace into
_OPAQUE = (nn.MultiheadAttention,)
ACTIVATIONS = tuple(sorted(set(n for n, _, _ in _ACT_FUNCS.values()) | {"identity"}))


@dataclass(frozen=True)
class Affine:
    """A Linear or convolution: where its parameters live in the model (attribute paths from the
    root) and, for a convolution, its geometry."""

    name: str  # module path (for a torch.export program: the path the parameters carry)
    kind: str  # "linear", "conv1d", "conv2d"
    weight: str
    bias: str | None
    module: str | None = None  # module path when called as a module (hooks can see its input)
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    padding_mode: str = "zeros"
    #: a Linear whose weight is stored (in, out): y = x @ W + b (Hugging Face's Conv1D, an addmm)
    transposed: bool = False
    #: (start, stop): this layer is those output rows of its parameters, a fused projection cut by
    #: ``chunk``/``split`` (Phi-3's ``gate_up_proj``); None: all of them
    rows: tuple | None = None
    #: (start, stop, total): this layer as a consumer reads units start..stop of the ``total`` units
    #: its input holds (a ``torch.cat`` of several producers' outputs: each group owns its slice of
    #: the consumer's columns, every unit ``in / total`` of them); None: all of them
    cols: tuple | None = None


@dataclass(frozen=True)
class Norm:
    """A BatchNorm in eval mode: y = weight (x - mean) / sqrt(var + eps) + bias."""

    name: str
    weight: str | None
    bias: str | None
    mean: str
    var: str
    eps: float
    #: (start, stop): the entries that are the units', where the BatchNorm reads a concatenation
    #: of several producers' outputs (DenseNet's transition); None: all of them
    cols: tuple | None = None


@dataclass(frozen=True)
class Group:
    """producer -> [norm] -> activation -> [post] -> consumer: the producer's output units lump.

    Everything between producer and consumer was passed by one rule per operation
    (:func:`_follow`); ``rules`` names them in order, for the report."""

    producer: Affine
    consumer: Affine
    activation: str = "identity"
    negative_slope: float = 0.01
    act_params: tuple = ()
    norm: Norm | None = None
    #: channel-wise pooling between the activation and the consumer (names), and whether a
    #: Flatten turns the channels into a Linear's inputs (each channel then owns a run of columns)
    pools: tuple = ()
    flatten: bool = False
    #: a per-unit affine after the activation (an eval BatchNorm: y = S act + T), folded into the
    #: consumer's columns and bias; ``padded``: zero padding between it and the consumer (an
    #: explicit pad or the consumer's own), where a merge is exact only for equal T/S
    post: Norm | None = None
    padded: bool = False
    #: a Linear consumer reading flattened channels in another order than channel-major: its
    #: column of channel c, position t is ``(t // inner) * C * inner + c * inner + t % inner``
    #: (``inner``; None: channel-major, ``c * T + t``), as ``permute``/``reshape`` made it
    inner: int | None = None
    #: module attributes holding the flattened width the forward reshapes to (module path,
    #: attribute): rewritten with the reduced width (``Crepe.in_features``)
    width_attrs: tuple = ()
    rules: tuple = ()
    #: calls of producer and consumer (their parameters shared: ALBERT): the rows are every call's
    uses: int = 1
    #: the other consumers where the units fan out (each with its ``cols``); the first is ``consumer``
    more: tuple = ()

    @property
    def name(self) -> str:
        return self.producer.name

    @property
    def consumers(self) -> tuple:
        """Every layer reading the units (one, or several where they fan out)."""
        return (self.consumer,) + self.more

    @property
    def negation_ok(self) -> bool:
        """A max-pool commutes with positive scaling, not with negation (max(-u) = -min(u)); a
        flipped sigmoid (1 - u) does not commute with zero padding."""
        return not any("max" in p for p in self.pools) and not (self.padded and self.activation == "sigmoid")


@dataclass
class Discovery:
    """What :func:`find_groups` found: the groups, chained, and every layer it left alone with why."""

    chains: list[list[Group]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    #: how the model was read, where not by torch.fx alone (e.g. through torch.export)
    note: str = ""

    @property
    def groups(self) -> list[Group]:
        return [g for c in self.chains for g in c]

    def report(self) -> str:
        how = f" ({self.note})" if self.note else ""
        rows = [f"{self.model}{how}: {len(self.groups)} lumpable group(s) in {len(self.chains)} chain(s)"]
        for c in self.chains:
            for g in c:
                if isinstance(g, (GatedGroup, InvertedGroup, ExpertGroup, GroupedGroup, GroupedOut)):
                    rows.append(f"  {g.describe()}")
                    continue
                norm = f" -> {g.norm.name} (folded)" if g.norm else ""
                post = f" -> {g.post.name} (folded into {g.consumer.name})" if g.post else ""
                kind = f"{g.producer.kind}, weight stored (in, out)" if g.producer.transposed else g.producer.kind
                via = f"; passes {', '.join(g.rules)}" if g.rules else ""
                inexact = ("; inexact where padding meets the shift of " + g.post.name + " (merges exact for equal "
                           "shift/scale)") if g.post and g.padded else ""
                reads = ", ".join(c.name + (f" (its units {c.cols[0]}:{c.cols[1]} of {c.cols[2]})"
                                            if c.cols and c.cols[1] - c.cols[0] != c.cols[2] else "")
                                  for c in g.consumers)
                rows.append(f"  lumps {g.producer.name} ({kind}){norm} -> {g.activation}{post} -> {reads}"
                            f"{via}{inexact}")
        for name, why in self.skipped:
            rows.append(f"  left alone {name}: {why}")
        return "\n".join(rows)


class _Tracer(fx.Tracer):
    """Leaves: modules without children, attention, and modules found untraceable."""

    def __init__(self, opaque: set[int]):
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _OPAQUE) or id(m) in self.opaque or next(m.children(), None) is None


@contextlib.contextmanager
def _no_mha_fastpath():
    """TransformerEncoderLayer's fused fast path branches on tensor properties; off while tracing."""
    get = getattr(torch.backends.mha, "get_fastpath_enabled", None)
    if get is None:
        yield
        return
    before = get()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _concrete_defaults(m: nn.Module) -> dict:
    """Optional forward arguments take their defaults (masks None, flags False) while tracing."""
    try:
        sig = inspect.signature(m.forward)
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}


def traced_graphs(model: nn.Module) -> tuple[list[tuple[str, fx.Graph]], list[tuple[str, str]]]:
    """(prefix, graph) for the root and for the traceable children of every module whose forward
    cannot be traced (which is kept as one opaque call), and notes on what stayed unexamined."""
    if isinstance(model, fx.GraphModule):
        return [("", model.graph)], []
    opaque: set[int] = set()
    why: dict[int, str] = {}

    def trace(m: nn.Module) -> fx.Graph:
        with _no_mha_fastpath():
            return _Tracer(opaque).trace(m, concrete_args=_concrete_defaults(m) or None)

    def settle(m: nn.Module) -> None:
        """Make ``m`` traceable by turning its untraceable descendants into opaque calls, or
        make ``m`` itself opaque."""
        if isinstance(m, _OPAQUE) or next(m.children(), None) is None:
            return
        for attempt in (0, 1):
            try:
                trace(m)
                return
            except Exception as exc:  # noqa: BLE001 - any tracing failure: look inside instead
                text = str(exc).strip()
                why[id(m)] = (text.splitlines()[0][:120] if text else type(exc).__name__) + failing_line(exc)
            if attempt == 0:
                for child in m.children():
                    settle(child)
        opaque.add(id(m))

    settle(model)
    graphs: list[tuple[str, fx.Graph]] = []
    notes: list[tuple[str, str]] = []

    def collect(m: nn.Module, prefix: str) -> None:
        if id(m) not in opaque:
            g = trace(m)
            graphs.append((prefix, g))
            for node in g.nodes:
                if node.op == "call_module":
                    sub = m.get_submodule(node.target)
                    if id(sub) in opaque:
                        collect(sub, _join(prefix, node.target))
            return
        notes.append((prefix or "(model)", f"forward not traceable by torch.fx ({why[id(m)]}); "
                                           "its children were examined one by one"))
        for name, child in m.named_children():
            path = _join(prefix, name)
            if id(child) in opaque or next(child.children(), None) is not None:
                collect(child, path)
            elif isinstance(child, (nn.Linear, nn.Conv1d, nn.Conv2d)) or hf.is_conv1d(child):
                notes.append((path, "called from a forward torch.fx cannot trace: its use is unknown"))

    collect(model, "")
    return graphs, notes


def _padding(padding, kernel: tuple, dilation: tuple, stride: tuple) -> tuple | None:
    """A convolution's padding as ints per side-pair: ``"valid"`` is none, ``"same"`` (stride 1)
    pads ``dilation * (kernel - 1) / 2`` on each side where that is a whole number (an even kernel
    pads one side more, which the patch reader does not take: None)."""
    if not isinstance(padding, str):
        return tuple(padding)
    if padding == "valid":
        return (0,) * len(kernel)
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if padding != "same" or any(t % 2 for t in total) or any(s != 1 for s in stride):
        return None
    return tuple(t // 2 for t in total)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _Reader:
    """Recognises the operations of one graph (module calls, functions, ATen ops).

    ``source``: for a graph that ``torch.export`` made of a model (ATen operations on its
    parameters), that model: the modules each operation came from (``nn_module_stack``) are looked
    up in it, so an activation module's operations read as that activation and a Linear's input
    can be observed with a hook on the model's own module."""

    def __init__(self, root: nn.Module, prefix: str, graph: fx.Graph, source: nn.Module | None = None):
        self.root, self.prefix, self.graph, self.source = root, prefix, graph, source
        self.modules = dict(root.get_submodule(prefix).named_modules()) if prefix else dict(root.named_modules())
        self.acts: dict[int, tuple | str | None] = {}
        self.regions: dict[str, set] = {}
        if source is not None:
            self.source_modules = dict(source.named_modules())
            for node in graph.nodes:
                for key in (node.meta.get("nn_module_stack") or {}):
                    self.regions.setdefault(key, set()).add(node)

    def module(self, node: fx.Node):
        return self.modules.get(node.target) if node.op == "call_module" else None

    def attr(self, node) -> str | None:
        """The root attribute path of a get_attr argument (None: not a parameter read)."""
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return _join(self.prefix, str(node.target))
        return None

    def origin(self, node: fx.Node) -> tuple[str, str, nn.Module | None] | None:
        """(stack key, module path, the source model's module) of the innermost module whose
        forward made ``node`` (exported graphs only)."""
        stack = node.meta.get("nn_module_stack") if self.source is not None else None
        if not stack:
            return None
        key, val = list(stack.items())[-1]
        path = val[0] if isinstance(val, tuple) else str(val)
        return key, path, self.source_modules.get(path)

    def owner(self, node: fx.Node, weight: str) -> str | None:
        """In an exported graph, the path of the source model's Linear/Conv1D/convolution that
        ``node`` is the forward of (a hook on it sees the node's input), else None."""
        o = self.origin(node)
        path = weight.rsplit(".", 1)[0]
        if o is None or o[1] != path or o[2] is None:
            return None
        m = o[2]
        return path if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or hf.is_conv1d(m) else None

    def data(self, node: fx.Node):
        """The input an affine operation transforms (addmm's second argument)."""
        if node.op == "call_function" and node.target in _ADDMM_FUNCS:
            return node.args[1]
        return node.args[0] if node.args else None

    def affine(self, node: fx.Node) -> Affine | None:
        m = self.module(node)
        if isinstance(m, nn.Linear) or (m is not None and hf.is_conv1d(m)):
            path = _join(self.prefix, node.target)
            return Affine(path, "linear", f"{path}.weight", f"{path}.bias" if m.bias is not None else None, path,
                          transposed=not isinstance(m, nn.Linear))
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and type(m) in (nn.Conv1d, nn.Conv2d):
            padding = _padding(m.padding, tuple(m.weight.shape[2:]), tuple(m.dilation), tuple(m.stride))
            if m.groups != 1 or padding is None:
                return None
            path = _join(self.prefix, node.target)
            kind = "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"
            return Affine(path, kind, f"{path}.weight", f"{path}.bias" if m.bias is not None else None, path,
                          tuple(m.stride), padding, tuple(m.dilation), m.padding_mode)
        if node.op != "call_function":
            return None
        if node.target in _ADDMM_FUNCS:  # addmm(bias, x, weight), beta = alpha = 1
            if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
                return None
            b, w = self.attr(node.args[0]), self.attr(node.args[2])
            if w is None or b is None:
                return None
            name = w.rsplit(".", 1)[0] if w.endswith(".weight") else w
            return Affine(name, "linear", w, b, self.owner(node, w), transposed=True)
        if node.target in _LINEAR_FUNCS or node.target in _CONV_FUNCS:
            args = list(node.args) + [None] * 7
            w, b = self.attr(args[1]), self.attr(args[2]) if args[2] is not None else None
            if w is None or (args[2] is not None and b is None) or node.kwargs:
                return None
            name = w.rsplit(".", 1)[0] if w.endswith(".weight") else w
            if node.target in _LINEAR_FUNCS:
                return Affine(name, "linear", w, b, self.owner(node, w))
            kind = _CONV_FUNCS[node.target]
            d = 1 if kind == "conv1d" else 2
            stride, padding, dilation, groups = (args[3] or 1), (args[4] or 0), (args[5] or 1), (args[6] or 1)
            wv = args[1].meta.get("val") if isinstance(args[1], fx.Node) else None
            kernel = tuple(wv.shape[2:]) if isinstance(wv, torch.Tensor) else None
            if isinstance(padding, str):
                padding = _padding(padding, kernel, _tuple(dilation, d), _tuple(stride, d)) if kernel else None
            if groups != 1 or padding is None:
                return None
            return Affine(name, kind, w, b, self.owner(node, w), _tuple(stride, d), _tuple(padding, d),
                          _tuple(dilation, d))
        return None

    def norm(self, node: fx.Node, kind: str) -> Norm | None:
        m = self.module(node)
        want = nn.BatchNorm2d if kind == "conv2d" else nn.BatchNorm1d
        if isinstance(m, want) and m.running_mean is not None and not m.training:
            path = _join(self.prefix, node.target)
            return Norm(path, f"{path}.weight" if m.affine else None, f"{path}.bias" if m.affine else None,
                        f"{path}.running_mean", f"{path}.running_var", float(m.eps))
        if node.op == "call_function" and node.target in _BN_FUNCS:
            names = (("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
                     if node.target is F.batch_norm else  # aten: (x, weight, bias, mean, var, training, momentum, eps, cudnn)
                     ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"))
            # by position or by keyword (timm's BatchNormAct2d passes weight=, bias=, training=, eps=)
            got = {**dict(zip(names, node.args)), **node.kwargs}
            mean, var, w, b = (got.get(k) for k in ("running_mean", "running_var", "weight", "bias"))
            training, eps = got.get("training", False), got.get("eps")
            if training or self.attr(mean) is None or self.attr(var) is None:
                return None
            wn, bn = self.attr(w), self.attr(b)
            if (w is not None and wn is None) or (b is not None and bn is None):
                return None
            name = self.attr(mean).rsplit(".", 1)[0]
            return Norm(name, wn, bn, self.attr(mean), self.attr(var), float(eps if eps is not None else 1e-5))
        return None

    def activation(self, node: fx.Node) -> tuple[str, float, tuple] | None:
        m = self.module(node)
        if m is not None:
            got = self.act_module(m)
            return got if isinstance(got, tuple) else None
        if node.op == "call_function" and node.target in _ACT_FUNCS:
            name, pos, dflt = _ACT_FUNCS[node.target]
            vals = dict(dflt)
            vals.update(zip(pos, node.args[1:]))
            vals.update({k: v for k, v in node.kwargs.items() if k in dflt or k in pos})
            if any(isinstance(v, fx.Node) for v in vals.values()) or set(vals) != set(pos) | set(dflt):
                return None
            if node.target is aten.elu.default and any(v != 1 for v in node.args[2:]):
                return None  # scale, input_scale: a SELU or CELU written as an elu
            params = tuple(sorted(vals.items()))
        elif node.op == "call_method" and node.target in _ACT_METHODS and len(node.args) == 1:
            name, params = _ACT_METHODS[node.target], ()
        else:
            return None
        p = dict(params)
        slope = float(p.pop("negative_slope", 0.01))
        return name, slope, tuple(sorted(p.items()))

    def act_module(self, m: nn.Module) -> tuple[str, float, tuple] | str | None:
        """(name, negative slope, parameters) of an activation module of torch or Hugging Face
        once checked on :data:`_PROBE` to compute that function; a string saying why not for a
        known class it does not fit (a PReLU with a slope per channel, a module whose values
        differ); None for anything else."""
        if id(m) not in self.acts:
            self.acts[id(m)] = _recognise(m)
        return self.acts[id(m)]

    def act_region(self, cur: fx.Node) -> tuple[tuple, fx.Node] | str | None:
        """In an exported graph, where every user of ``cur`` is an operation of one activation
        module of the source model (GPT-2's ``NewGELUActivation`` is a few ATen operations): the
        activation and the region's one output. A string says why the module does not count."""
        users = list(cur.users)
        if not users or self.source is None:
            return None
        origins = {o[:2] if o else None for o in map(self.origin, users)}
        if len(origins) != 1 or None in origins:
            return None
        key, path = origins.pop()
        m = self.source_modules.get(path)
        if m is None:
            return None
        act = self.act_module(m)
        if not isinstance(act, tuple):
            return act
        region = self.regions.get(key, set())
        ins = {a for n in region for a in n.all_input_nodes if a not in region and a.op != "get_attr"}
        outs = [n for n in region if any(u not in region for u in n.users)]
        if ins != {cur} or len(outs) != 1:
            return f"{path} ({type(m).__name__}) does not read one tensor into one"
        return act, outs[0]

    def pool(self, node: fx.Node) -> str | None:
        """'max_pool' or 'avg_pool' for a channel-wise pooling (no indices returned), else None."""
        m = self.module(node)
        if m is not None:
            if type(m) in _POOL_MODULES and not getattr(m, "return_indices", False):
                if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)) and m.padding not in (0, (0,), (0, 0)):
                    return None  # zero padding counted in the mean: a flipped sigmoid would not follow; keep it simple
                return _POOL_MODULES[type(m)]
            return None
        if node.op == "call_function" and node.target in _POOL_FUNCS and (
                node.target in _POOL_PAIRS or not node.kwargs.get("return_indices")):
            return _POOL_FUNCS[node.target]
        return None

    @staticmethod
    def spatial_mean(node: fx.Node, ndim: int) -> bool | None:
        """For ``x.mean([2, 3])`` (a global average pool written as a mean over every axis after the
        channels of an ``ndim``-axis tensor): whether it keeps those axes (``keepdim``); None for
        anything else."""
        if node.op == "call_method" and node.target == "mean":
            args = list(node.args[1:])
        elif node.op == "call_function" and node.target in (torch.mean, aten.mean.dim):
            args = list(node.args[1:])
        else:
            return None
        dims = node.kwargs.get("dim", args[0] if args else None)
        keep = node.kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        if isinstance(dims, int):
            dims = [dims]
        if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims) or ndim < 3:
            return None
        if sorted(d % ndim for d in dims) != list(range(2, ndim)):
            return None
        return bool(keep)

    def walk(self, node: fx.Node, a: Affine) -> tuple["Walk | None", str]:
        """:func:`walk` in this graph (the gated and inverted readings ask the reader for it)."""
        return walk(self, node, a)

    def first_of(self, node: fx.Node) -> fx.Node | None:
        """The ``getitem(node, 0)`` that takes a pooling's values from its (values, indices) pair,
        where ``node`` returns one (``max_pool2d_with_indices`` in an exported graph)."""
        if node.op != "call_function" or node.target not in _POOL_PAIRS:
            return None
        used = [u for u in node.users if u.users or u.target is not operator.getitem]  # an unused getitem(1)
        if len(used) == 1 and used[0].target is operator.getitem and used[0].args[1] == 0:
            return used[0]
        return None

    def zero_pad(self, node: fx.Node, prev: fx.Node) -> bool:
        """A constant zero pad of ``prev``'s positions only (``F.pad``, ``aten.pad``,
        ``constant_pad_nd``), never of its batch or channel axes: merged channels see the same
        zeros, so padding keeps equal channels equal (a shift folded from a later BatchNorm does
        not: see :class:`Group`)."""
        m = self.module(node)
        if m is not None:
            if isinstance(m, (nn.ZeroPad1d, nn.ZeroPad2d)) or (
                    isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d)) and float(m.value) == 0.0):
                pad, ndim = tuple(m.padding), 3 if isinstance(m, (nn.ZeroPad1d, nn.ConstantPad1d)) else 4
                return len(pad) <= 2 * (ndim - 2)
            return False
        if node.op != "call_function" or node.target not in _PAD_FUNCS or not node.args or node.args[0] is not prev:
            return False
        a = list(node.args) + [None, None, None]
        pad = node.kwargs.get("pad", a[1])
        if node.target is aten.constant_pad_nd.default:
            mode, value = "constant", node.kwargs.get("value", a[2])
        else:
            mode, value = node.kwargs.get("mode", a[2] or "constant"), node.kwargs.get("value", a[3])
        if mode != "constant" or (value not in (None, 0, 0.0)) or not isinstance(pad, (list, tuple)):
            return False
        if any(not isinstance(v, int) for v in pad):
            return False
        shape = (prev.meta.get("val").dim() if isinstance(prev.meta.get("val"), torch.Tensor) else None)
        return shape is None or len(pad) <= 2 * (shape - 2)

    def cat(self, node: fx.Node, prev: fx.Node, conv: bool) -> tuple[int, int, int] | str | None:
        """For a concatenation of ``prev`` with other tensors along the units' axis (a convolution's
        channels, a Linear's last axis): (offset, width, total), ``prev``'s ``width`` units standing
        at ``offset`` of the result's ``total``; a string where it is a concatenation this rule does
        not follow (along another axis: other rows would meet the units' columns; ``prev`` in it
        twice; no shapes recorded); None for any other operation."""
        if node.op != "call_function" or node.target not in _CAT_FUNCS:
            return None
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(parts, (list, tuple)) or not isinstance(dim, int):
            return "a concatenation this reading cannot follow"
        if sum(p is prev for p in parts) != 1:
            return "a concatenation holding its units twice"
        shapes = [concrete(p.meta.get("val")) if isinstance(p, fx.Node) else None for p in parts]
        out = concrete(node.meta.get("val"))
        if out is None or any(sh is None for sh in shapes):
            return f"a concatenation whose widths torch.fx does not record ({_NEEDS_SHAPES})"
        axis = 1 if conv else len(out) - 1
        if dim % len(out) != axis:
            return f"a concatenation along axis {dim}, not the units' axis {axis}: other rows meet their columns"
        at = [p is prev for p in parts].index(True)
        return sum(sh[axis] for sh in shapes[:at]), shapes[at][axis], out[axis]

    def width_attrs(self, views: list[fx.Node], width: int) -> tuple | str:
        """Module attributes holding ``width``, where a view's shape is that literal (a forward's
        ``x.reshape(-1, self.in_features)``): the reduced model's forward must read its own width
        there. A literal with no attribute is a width the reduced model cannot run with."""
        found = []
        for v in views:
            if v.target not in SHAPED:
                continue
            shape = v.args[1] if len(v.args) > 1 else v.kwargs.get("size", v.kwargs.get("shape"))
            if not isinstance(shape, (list, tuple)) or width not in [d for d in shape if isinstance(d, int)]:
                continue
            o = self.origin(v)
            mods = [(o[1], o[2])] if o and o[2] is not None else []
            if self.source is None:
                mods = [(self.prefix, self.root.get_submodule(self.prefix) if self.prefix else self.root)]
            hit = [(path, k) for path, m in mods for k, val in sorted(vars(m).items())
                   if type(val) is int and val == width and not k.startswith("_")]
            if not hit:
                return (f"its units are reshaped to the fixed width {width}{_where(v)}, not read from a module "
                        "attribute: a reduced model would not run")
            found.append(hit[0])
        return tuple(dict.fromkeys(found))

    def flatten(self, node: fx.Node) -> bool:
        """A flatten of everything after the channel axis: (n, C, ...) -> (n, C * ...)."""
        m = self.module(node)
        if m is not None:
            return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
        if node.op == "call_function" and node.target in (torch.flatten, aten.flatten.using_ints):
            a = list(node.args) + [None, None]
            start = node.kwargs.get("start_dim", a[1] if a[1] is not None else 0)
            end = node.kwargs.get("end_dim", a[2] if a[2] is not None else -1)
            return start == 1 and end == -1
        if node.op == "call_method" and node.target == "flatten":
            a = list(node.args) + [None, None]
            return node.kwargs.get("start_dim", a[1] if a[1] is not None else 0) == 1 and \
                node.kwargs.get("end_dim", a[2] if a[2] is not None else -1) == -1
        return False

    def keeps_units(self, node: fx.Node, prev: fx.Node) -> bool:
        """An exported graph's view, reshape or copy of ``prev`` that keeps its last axis (a
        Linear's units) and regroups only the axes before it (Conv1D's flattening of tokens)."""
        if node.op != "call_function" or node.target not in _VIEW_FUNCS or not node.args or node.args[0] is not prev:
            return False
        a, b = prev.meta.get("val"), node.meta.get("val")
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() == 0 or b.dim() == 0:
            return False
        return a.shape[-1] == b.shape[-1] and a.numel() == b.numel()

    def passthrough(self, node: fx.Node) -> bool:
        m = self.module(node)
        if m is not None:
            return isinstance(m, _PASS_MODULES) and not (isinstance(m, nn.Dropout) and m.training)
        if node.op == "call_function" and node.target in _PAD_FUNCS and node.args:
            pad = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
            return isinstance(pad, (list, tuple)) and all(v == 0 for v in pad)  # a pad of nothing
        if node.op == "call_function" and node.target in _DROPOUT_FUNCS:
            train = node.kwargs.get("training", node.kwargs.get("train", node.args[2] if len(node.args) > 2 else True))
            return train is False
        return _widening_cast(node)


#: floating dtypes by precision: a cast to one at least as wide keeps every value
_WIDTH = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_CASTS = (aten.to.dtype, aten._to_copy.default)


def _widening_cast(node: fx.Node) -> bool:
    """A dtype cast that keeps every value (float32 -> float32 or float64: Mixtral's router and
    mixed-precision code write ``x.to(torch.float32)``): a no-op for the units. A narrowing cast
    (to bfloat16) rounds them and is not passed."""
    if node.op == "call_method" and node.target in ("float", "double") and len(node.args) == 1:
        want = torch.float32 if node.target == "float" else torch.float64
    elif (node.op == "call_method" and node.target == "to") or (node.op == "call_function" and node.target in _CASTS):
        extra = [a for a in node.args[1:] if isinstance(a, torch.dtype)]
        want = node.kwargs.get("dtype", extra[0] if extra else None)
    else:
        return False
    src = node.args[0].meta.get("val") if node.args and isinstance(node.args[0], fx.Node) else None
    have = getattr(src, "dtype", None)
    if want not in _WIDTH:
        return False
    if have is None:  # a torch.fx trace records no dtypes: a cast to float32 or wider (models run in float32)
        return _WIDTH[want] >= _WIDTH[torch.float32]
    return have in _WIDTH and _WIDTH[want] >= _WIDTH[have]


def _describe(node: fx.Node, r: _Reader | None = None) -> str:
    t = node.target
    name = getattr(t, "__name__", None) or str(t)
    if node.op == "output":
        return "the model's output"
    o = r.origin(node) if r is not None else None
    inside = f" in {o[1]} ({type(o[2]).__name__})" if o and o[1] and o[2] is not None else ""
    if "add" in name and "addmm" not in name:
        return f"{node.name} (an add, e.g. a residual connection{inside})"
    if name.split(".")[0] in ("mul", "mul_") and sum(isinstance(a, fx.Node) for a in node.args) == 2:
        return f"{node.name} (a product of two tensors{inside}, not a gated unit afde-nb lumps)"
    return f"{node.name} ({node.op} {name}{inside})"


def _recognise(m: nn.Module) -> tuple[str, float, tuple] | str | None:
    """See :meth:`_Reader.act_module`."""
    read = _ACT_MODULES.get(type(m))
    got = read(m) if read is not None else hf.activation(m)
    if got is None:
        if read is not None or (hf.from_transformers(m) and type(m).__name__ in hf.ACTIVATIONS):
            return (f"a {type(m).__name__} that is not one element-wise function (a slope per channel, or random "
                    "slopes in training)")
        return _by_values(m)
    name, p = got
    p = dict(p)
    slope = float(p.pop("negative_slope", 0.01))
    params = tuple(sorted(p.items()))
    ref = next((t for t in itertools.chain(m.parameters(), m.buffers()) if t.is_floating_point()), None)
    # float64 values, else (a PReLU's kernel wants its weight's dtype) the module's own dtype
    y, why = None, ""
    for dtype in dict.fromkeys((torch.float64, ref.dtype if ref is not None else torch.float64)):
        try:
            with torch.no_grad():
                y = m(_PROBE.to(device=ref.device if ref is not None else "cpu", dtype=dtype, copy=True))  # in-place ones
            break
        except Exception as exc:  # noqa: BLE001 - a module that does not run on the probe is not trusted
            why = type(exc).__name__
    if not isinstance(y, torch.Tensor):
        return f"a {type(m).__name__} that does not run on float values ({why or type(y).__name__})"
    tol = max(1e-6, 50 * torch.finfo(y.dtype).eps)
    y = y.detach().to("cpu", torch.float64).numpy()
    want = apply_activation(_PROBE.numpy(), name, slope, params)
    if y.shape != want.shape or not np.allclose(y, want, rtol=tol, atol=tol):
        return f"a {type(m).__name__} whose values are not those of {name}{dict(params) or ''}"
    return name, slope, params


#: what a module of a class nobody registered may compute, tried on :data:`_PROBE` (BLOOM's
#: ``BloomGelu`` writes the tanh GELU as multiplies): the first one whose values it gives
_BY_VALUES = (("gelu", 0.01, (("approximate", "tanh"),)), ("gelu", 0.01, (("approximate", "none"),)),
              ("silu", 0.01, ()), ("relu", 0.01, ()), ("tanh", 0.01, ()), ("sigmoid", 0.01, ()),
              ("mish", 0.01, ()), ("hardswish", 0.01, ()), ("elu", 0.01, (("alpha", 1.0),)),
              ("softplus", 0.01, (("beta", 1.0), ("threshold", 20.0))))


def _by_values(m: nn.Module) -> tuple[str, float, tuple] | None:
    """(name, slope, parameters) of a parameter-free module whose values on :data:`_PROBE` are one
    known activation's (to float32 rounding), else None: a rule on what an element-wise module
    computes rather than on its class name."""
    if next(itertools.chain(m.parameters(), m.buffers()), None) is not None:
        return None
    try:
        with torch.no_grad():
            y = m(_PROBE.clone())
    except Exception:  # noqa: BLE001 - not a function of one tensor
        return None
    if not isinstance(y, torch.Tensor) or y.shape != _PROBE.shape or not torch.isfinite(y).all():
        return None
    y = y.detach().to(torch.float64).numpy()
    for name, slope, params in _BY_VALUES:
        want = apply_activation(_PROBE.numpy(), name, slope, params)
        if np.allclose(y, want, rtol=1e-5, atol=1e-5):
            return name, slope, params
    return None


def export_graph(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> fx.GraphModule:
    """``torch.export`` of ``model`` (eval mode) on example inputs: the graph module of its ATen
    operations, which reads each parameter by its path in ``model`` and keeps, for every operation,
    the module whose forward made it (``nn_module_stack``). A forward with a ``use_cache`` keyword
    gets ``use_cache=False`` unless given (a cache object is no tensor an export can return)."""
    kwargs = dict(kwargs or {})
    try:
        if "use_cache" not in kwargs and "use_cache" in inspect.signature(model.forward).parameters:
            kwargs["use_cache"] = False
    except (TypeError, ValueError):
        pass
    was = model.training
    model.train(False)
    try:
        with _no_mha_fastpath(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, tuple(args), kwargs, strict=False)
    finally:
        model.train(was)
    return program.module()


def find_groups(model: nn.Module, example=None) -> Discovery:
    """The lumpable groups of ``model`` (see the module docstring); the model is not modified.

    Where torch.fx cannot trace the whole forward and ``example`` (positional and keyword inputs,
    ``(args, kwargs)``, or a function returning them or None) is given, the model is also read
    through :func:`export_graph`, and that reading is kept when it finds more groups; its layers
    are the model's own modules (by parameter path)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"expected a torch.nn.Module, got {type(model).__name__}")
    graphs, notes = traced_graphs(model)
    disc = _discover(model, model, graphs, notes)
    # torch.fx graphs carry no shapes: index maps (permute, reshape) are followed in an exported one
    shapes = any(_NEEDS_SHAPES in why for _, why in disc.skipped)
    if not notes and not shapes:
        return disc
    if callable(example):
        example = example()
    if example is None:
        if notes:
            disc.note = ("torch.fx cannot trace its whole forward; give example inputs (calibration= or "
                         "example_inputs=) to read it through torch.export")
        return disc
    try:
        gm = export_graph(model, *example)
    except Exception as exc:  # noqa: BLE001 - keep what torch.fx found, and say why
        text = str(exc).strip()
        disc.note = ("torch.fx cannot trace its whole forward, and torch.export failed on the example inputs: "
                     f"{text.splitlines()[0][:160] if text else type(exc).__name__}{failing_line(exc)}")
        return disc
    ex = _discover(model, gm, [("", gm.graph)], [], source=model)
    if len(ex.groups) < len(disc.groups) or (not notes and len(ex.groups) == len(disc.groups)):
        if notes:
            disc.note = f"torch.fx in parts; torch.export found fewer groups ({len(ex.groups)})"
        # what the exported graph said of the layers torch.fx could not follow without shapes
        said = dict(ex.skipped)
        disc.skipped = [(n, said.get(n, why) if _NEEDS_SHAPES in why else why) for n, why in disc.skipped]
        return disc
    ex.note = ("read through torch.export: torch.fx cannot trace its whole forward" if notes else
               "read through torch.export: its index maps or concatenations need the shapes torch.fx does not record")
    return ex


def _discover(model: nn.Module, root: nn.Module, graphs, notes, source: nn.Module | None = None) -> Discovery:
    """Groups in ``graphs`` (read with ``root``'s modules and parameters; ``source``: the model an
    exported graph was made of)."""
    skipped: list[tuple[str, str]] = list(notes)
    groups: list[Group] = []
    uses: dict[str, int] = {}  # parameter path -> number of operations reading it
    found: list[tuple[_Reader, fx.Node, Affine]] = []
    for prefix, g in graphs:
        r = _Reader(root, prefix, g, source)
        for node in g.nodes:
            if node.op == "call_module" and isinstance(r.module(node), _OPAQUE):
                skipped.append((_join(prefix, node.target), "attention (nn.MultiheadAttention): its units are not lumped"))
            a = r.affine(node)
            if a is not None:
                found.append((r, node, a))
                for p in (a.weight, a.bias):
                    if p:
                        uses[p] = uses.get(p, 0) + 1
            elif node.op in ("call_module", "call_function") and isinstance(r.module(node), (nn.Linear, nn.Conv1d, nn.Conv2d)):
                skipped.append((_join(prefix, node.target), "grouped, depthwise or string-padded convolution"))
    shared = _shared_groups(found, uses)
    done: set[str] = set()
    for r, node, a in found:
        if a.weight in done:
            continue
        if uses[a.weight] > 1 or (a.bias and uses[a.bias] > 1):
            done.add(a.weight)
            got = shared.get(a.weight)
            if isinstance(got, str):
                skipped.append((a.name, got))
                continue
            group = got
        else:
            group, why = _follow(r, node, a)
            if group is None:
                skipped.append((a.name, why))
                continue
        busy = [c for c in group.consumers if uses[c.weight] > 1 or (c.bias and uses[c.bias] > 1)]
        if group.uses == 1 and busy:
            skipped.append((a.name, f"its consumer {busy[0].name} shares its parameters with another operation"))
            continue
        hidden = [x.name for x in (a,) + group.consumers if not x.module]
        if source is not None and hidden:
            hidden = hidden[0]
            skipped.append((a.name, f"{hidden} is computed inside another module's forward, not by a Linear/Conv1D/"
                                    "convolution module of its own: its input cannot be observed"))
            continue
        groups.append(group)
    order = {k: i for i, k in enumerate(model.state_dict(keep_vars=True))}
    banks, refused = find_banks(model, _recognise, graphs, source is not None)  # fused experts: checked by value
    taken = {g.bank for g in banks} | {p for p, _ in refused}
    skipped += refused + [s for s in _fused(model, {a.weight for _, _, a in found}) if s[0] not in taken]
    gated, skipped = find_gated(found, uses, groups, skipped)
    inverted, groups, skipped = find_inverted(found, uses, groups, skipped)
    groups, skipped = _sliced_whole(groups, gated + inverted, skipped)
    claimed = {a.weight: g.producer.name for g in groups for a in (g.producer,) + g.consumers}
    claimed.update({w: g.producer.name for g in inverted for w in g.convs})
    grouped, skipped = find_grouped(found, claimed, skipped)  # each group of a grouped conv a block of a tie
    chains = sorted(_chains(groups) + [[g] for g in gated] + [[g] for g in inverted] + [[g] for g in banks] + grouped,
                    key=lambda c: order.get(c[0].producer.weight, len(order)))
    skipped.sort(key=lambda t: order.get(f"{t[0]}.weight", -1))
    return Discovery(chains, skipped, type(model).__name__)


def failing_line(exc: BaseException) -> str:
    """`` at file:line (code)``: the last line of the user's own code in ``exc``'s traceback (the
    line a trace stopped at: a branch on a tensor's value, an unsupported call), else the last of a
    Hugging Face model's (Mixtral's eager loop over the experts hit), or ''."""
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(k in f.filename.replace("\\", "/") for k in ("/torch/", "/afde_nb/", "<"))]
    own = [f for f in frames if "/transformers/" not in f.filename.replace("\\", "/")]
    if not (own or frames):
        return ""
    f = (own or frames)[-1]
    return f" at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} ({(f.line or '').strip()[:80]})"


def _where(node: fx.Node) -> str:
    """`` (file:line)`` of the user's source line that made ``node``, where the graph recorded it."""
    trace = node.meta.get("stack_trace") or ""
    lines = [l.strip() for l in trace.splitlines() if l.strip().startswith("File ")]
    if not lines:
        return ""
    last = lines[-1].split(",")
    try:
        return f" ({last[0].split('File ', 1)[1].strip().strip(chr(34)).rsplit('/', 1)[-1]}:{last[1].split()[-1]})"
    except IndexError:
        return ""


def _shared_groups(found: list, uses: dict) -> dict[str, Group | str]:
    """Producers called more than once with the same parameters (ALBERT's one layer applied at
    every depth): a group when each call forms the same group with one consumer that is called as
    often (``Group.uses``; its rows are every call's inputs, so a merge is judged, and exact, for
    all calls at once), else why not. By producer weight path."""
    calls: dict[str, list] = {}
    for r, node, a in found:
        if uses[a.weight] > 1 or (a.bias and uses[a.bias] > 1):
            calls.setdefault(a.weight, []).append((r, node, a))
    out: dict[str, Group | str] = {}
    for w, got in calls.items():
        k = uses[w]
        if len(got) != k or (got[0][2].bias and uses[got[0][2].bias] != k):
            out[w] = "its parameters are used by more than one operation, not all as this layer (shared weights)"
            continue
        follows = [_follow(r, node, a) for r, node, a in got]
        groups = {g for g, _ in follows}
        if None in groups or len(groups) != 1:
            why = next((y for g, y in follows if g is None), "its calls form different groups")
            out[w] = f"its parameters are shared by {k} calls, and not every call lumps: {why}"
            continue
        g = groups.pop()
        c = g.consumer
        if uses[c.weight] != k or (c.bias and uses[c.bias] != k):
            out[w] = f"its parameters are shared by {k} calls, its consumer {c.name}'s by {uses[c.weight]}"
            continue
        out[w] = replace(g, uses=k, rules=g.rules + (f"shared by {k} calls",))
    return out


def _fused(model: nn.Module, read: set[str]) -> list[tuple[str, str]]:
    """Modules holding parameters of three or more axes that no convolution reads: a mixture of
    experts stored fused (transformers 5's ``MixtralExperts``: ``gate_up_proj`` (experts, 2 I, H),
    ``down_proj`` (experts, H, I)), batched matrix products whose units no rule here follows. Named,
    so a report never passes them over in silence."""
    banks: dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.dim() == 3 and name not in read and ".parametrizations." not in name:
            path, _, attr = name.rpartition(".")
            banks.setdefault(path or "(model)", []).append((attr, tuple(p.shape)))
    # a bank: two or more such parameters of one module sharing a leading (expert) axis of size > 1;
    # a class token, a position table or a layer scale is no bank
    return [(path, f"parameters stored fused in three axes ({', '.join(f'{a} {sh}' for a, sh in v)}; a mixture "
                   "of experts' batched weights): their units are not lumped")
            for path, v in banks.items() if len(v) >= 2 and len({sh[0] for _, sh in v}) == 1 and v[0][1][0] > 1]


@dataclass
class Walk:
    """Where :func:`walk` stopped: ``cur`` the last node the rules took, ``nxt`` the operation no
    rule takes (the consumer, a product, a depthwise convolution: the caller's to judge), and what
    was passed on the way."""

    cur: fx.Node
    nxt: fx.Node | None = None
    norm: Norm | None = None
    act: tuple | None = None
    post: Norm | None = None
    pools: list = field(default_factory=list)
    pads: list = field(default_factory=list)
    flat: bool = False
    ids: Ids | None = None
    views: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    #: (start, stop, total): the units stand at start..stop of ``total`` after a concatenation
    cat: tuple | None = None

    @property
    def plain(self) -> bool:
        """Only an activation and no-ops on the way (what a gated unit's branch may pass)."""
        return not (self.norm or self.post or self.pools or self.pads or self.flat or self.views or self.cat)


def walk(r: _Reader, node: fx.Node, a: Affine, fan: bool = False) -> tuple[Walk | None, str]:
    """Follow ``node``'s units (producer ``a``) through the graph, one rule per operation, tried in
    this order: an activation module's operations (an exported graph); a BatchNorm before the
    activation (folded into the producer); no-ops (dropout, identity, copies, a pad of nothing);
    the activation (by class, by value, in place); a per-unit affine after it (an eval BatchNorm:
    folded into the consumer); channel-wise pooling; zero padding; index maps (flatten, and where
    the graph has shapes, permute/transpose/reshape/view/unsqueeze/squeeze, followed on the
    indices: :mod:`.indexmap`); a concatenation along the units' axis (:meth:`_Reader.cat`: the
    units become a slice of what follows, ``Walk.cat``). The one walk of every reading: a plain
    group (:func:`_follow`), a gated unit's branches (:func:`afde_nb.models.gated.find_gated`) and an inverted-residual
    channel up to its depthwise convolution (:mod:`afde_nb.models.inverted`). (Walk, "") where it
    reaches an operation no rule takes, else (None, why); ``fan``: where the units reach several
    operations, the Walk so far with ``nxt`` None (:func:`_fanned` follows each)."""
    w = Walk(node)
    conv = a.kind != "linear"
    while True:
        cur = w.cur
        if w.act is None and not w.pools and (region := r.act_region(cur)) is not None:
            if isinstance(region, str):
                return None, f"its outputs feed {region}"
            w.act, w.cur = region
            continue
        users = [u for u in cur.users if not reads_shape(u)]
        if len(users) != 1:
            if not users:
                return None, "its output is not used"
            if fan and w.post is None and w.ids is None:
                return w, ""
            return None, f"its outputs feed {len(users)} operations ({', '.join(_describe(u, r) for u in users[:3])})"
        nxt = users[0]
        if w.norm is None and w.act is None and (n := r.norm(nxt, a.kind)) is not None:
            w.norm, w.cur = (n if w.cat is None else replace(n, cols=w.cat[:2])), nxt
            continue
        if r.passthrough(nxt) or (not conv and w.ids is None and r.keeps_units(nxt, cur)):
            w.cur = nxt
            continue
        if w.act is None and not w.pools:
            m = r.module(nxt)
            known = r.act_module(m) if m is not None else None
            if isinstance(known, str):
                return None, f"its outputs feed {nxt.target}, {known}"
            if (ac := r.activation(nxt)) is not None:
                w.act, w.cur = ac, nxt
                continue
        if w.act is not None and w.post is None and w.ids is None and w.cat is None and \
                (n := r.norm(nxt, a.kind)) is not None:
            w.post, w.cur = n, nxt
            w.rules.append("a BatchNorm after the activation")
            continue
        if conv and not w.flat and w.ids is None and (pool := r.pool(nxt)) is not None:
            w.pools.append(pool)
            w.cur = nxt
            if nxt.target in _POOL_PAIRS:  # (values, indices), then getitem 0
                if (got := r.first_of(nxt)) is None:
                    return None, f"its outputs feed {_describe(nxt, r)}{_where(nxt)}, whose indices are used"
                w.cur = got
            w.rules.append(pool)
            continue
        if conv and not w.flat and w.ids is None and \
                (keep := r.spatial_mean(nxt, 3 if a.kind == "conv1d" else 4)) is not None:
            w.pools.append("avg_pool")
            w.flat = not keep  # (n, C): the channels are a Linear's inputs, one column each
            w.cur = nxt
            w.rules.append("mean over positions")
            continue
        if conv and not w.flat and w.ids is None and r.zero_pad(nxt, cur):
            w.pads.append(nxt)
            w.cur = nxt
            w.rules.append("zero padding")
            continue
        if not w.flat and w.ids is None and (got := r.cat(nxt, cur, conv)) is not None:
            if isinstance(got, str):
                return None, f"its outputs feed {_describe(nxt, r)}{_where(nxt)}, {got}"
            w.cat, w.cur = _concatenated(w.cat, got), nxt
            w.rules.append("cat")
            continue
        if not w.flat and w.ids is None and r.flatten(nxt) and conv and not followable(nxt):
            w.flat, w.cur = True, nxt
            continue
        if is_view(nxt) and not w.flat:
            if w.ids is None:
                w.ids = Ids.start(cur, conv)
            if w.ids is None or not w.ids.apply(nxt):
                return None, (f"its outputs feed {_describe(nxt, r)}{_where(nxt)}, an index map this reading cannot "
                              f"follow ({_NEEDS_SHAPES})")
            w.views.append(nxt)
            w.cur = nxt
            w.rules.append(str(getattr(nxt.target, "__name__", nxt.target)).split(".")[0])
            continue
        w.nxt = nxt
        return w, ""


def _concatenated(had: tuple | None, got: tuple) -> tuple:
    """The units' (start, stop, total) after a concatenation that puts the ``width`` units of its
    input at ``offset`` of ``total`` (``got``), where they stood at ``had`` (None: all of them)."""
    offset, width, total = got
    start, stop = (0, width) if had is None else had[:2]
    return offset + start, offset + stop, total


def _follow(r: _Reader, node: fx.Node, a: Affine) -> tuple[Group | None, str]:
    """The group that ``node``'s outputs form (:func:`walk`, then the consumer: a Linear or
    convolution reading the units as its data input), or None and why not."""
    w, why = walk(r, node, a, fan=True)
    if w is None:
        return None, why
    if w.nxt is None:
        return _fanned(r, w, a)
    nxt, cur, act, flat, ids, views, rules = w.nxt, w.cur, w.act, w.flat, w.ids, w.views, w.rules
    conv = a.kind != "linear"
    c = r.affine(nxt)
    if c is None and isinstance(r.module(nxt), (nn.Conv1d, nn.Conv2d)):
        return None, f"its outputs feed {nxt.target}, a grouped, depthwise or string-padded convolution"
    if c is None:
        where = "" if act else " before any activation"
        return None, f"its outputs feed {_describe(nxt, r)}{_where(nxt)}{where}, not a Linear/convolution"
    if r.data(nxt) is not cur:
        return None, f"its outputs are a parameter of {c.name}, not its input"
    inner, attrs = None, ()
    if ids is not None and not ids.identity():
        if c.kind != "linear":
            return None, f"its units reach {c.name}, a {c.kind}, through {', '.join(rules[-len(views):])}"
        got = ids.columns()
        if isinstance(got, str):
            return None, f"its units reach {c.name} through {', '.join(rules[-len(views):])}: {got}"
        inner, T = got
        if w.cat is not None and inner != T:
            return None, (f"its units are concatenated, then reach {c.name} in another order than channel-major "
                          f"({', '.join(rules[-len(views):])})")
        if conv:
            flat = True
        elif T != 1 or inner != 1:
            return None, f"its units reach {c.name} in another order ({', '.join(rules[-len(views):])})"
        attrs = r.width_attrs(views, int(ids.ids.shape[-1]))
        if isinstance(attrs, str):
            return None, attrs
        if inner == T:
            inner = None  # channel-major: a Flatten's layout
    if flat and c.kind != "linear":
        return None, f"its channels are flattened into {c.name}, a {c.kind}"
    if not flat and c.kind != a.kind:
        return None, f"its outputs ({a.kind}) feed a {c.kind} ({c.name}) without a Flatten"
    if w.pads and flat:
        return None, f"its channels are zero-padded, then flattened into {c.name}"
    if w.cat is not None:
        if w.post is not None:
            return None, (f"its units pass {w.post.name} (a BatchNorm after the activation), then a concatenation "
                          f"into {c.name}: not followed together")
        c = replace(c, cols=w.cat)
    padded = bool(w.pads) or (c.kind != "linear" and any(c.padding))
    name, slope, params = act or ("identity", 0.01, ())
    return Group(a, c, name, slope, params, w.norm, tuple(w.pools), flat, w.post, padded, inner,
                 attrs, tuple(rules)), ""


def _fanned(r: _Reader, w: Walk, a: Affine) -> tuple[Group | None, str]:
    """The group of units that fan out after walk ``w`` (at ``w.cur``, its activation passed): every
    path from there passes only rules that treat every unit alike (no-ops, pooling, zero padding,
    concatenations, a flatten) into a Linear/convolution reading them as its data input, each such
    consumer a slice of its columns (``Affine.cols``); else None and why."""
    units = int(_weight_rows(r, a))
    start = w.cat if w.cat is not None else (0, units, units)
    got, pools, pads = [], set(w.pools), bool(w.pads)
    todo = [(w.cur, u, start, w.flat) for u in w.cur.users if not reads_shape(u)]
    while todo:
        prev, node, cat, flat = todo.pop(0)
        users = [u for u in node.users if not reads_shape(u)]
        c = r.affine(node)
        if c is not None:
            if r.data(node) is not prev:
                return None, f"its outputs fan out, and are a parameter of {c.name}, not its input"
            if (c.kind == "linear") != (flat or a.kind == "linear") or (not flat and c.kind != a.kind):
                return None, f"its outputs ({a.kind}) fan out, one path into a {c.kind} ({c.name})"
            if c.module is None:
                return None, (f"its outputs fan out into {c.name}, which is no module of its own: its input cannot "
                              "be observed")
            got.append(replace(c, cols=cat))
            pads = pads or (c.kind != "linear" and any(c.padding))
            continue
        step = None
        if r.passthrough(node) or (a.kind == "linear" and r.keeps_units(node, prev)):
            step = (cat, flat)
        elif a.kind != "linear" and not flat and (pool := r.pool(node)) is not None and node.target not in _POOL_PAIRS:
            pools.add(pool)
            step = (cat, flat)
        elif a.kind != "linear" and not flat and r.zero_pad(node, prev):
            pads, step = True, (cat, flat)
        elif not flat and (more := r.cat(node, prev, a.kind != "linear")) is not None:
            if isinstance(more, str):
                return None, f"its outputs fan out into {_describe(node, r)}{_where(node)}, {more}"
            step = (_concatenated(cat, more), flat)
        elif a.kind != "linear" and not flat and r.flatten(node):
            step = (cat, True)
        if step is None:
            return None, (f"its outputs fan out, one path into {_describe(node, r)}{_where(node)}, which not every "
                          "unit passes alike")
        if not users:
            return None, f"its outputs fan out, one path into {_describe(node, r)}, which is not used"
        todo += [(node, u, *step) for u in users]
    if len({c.weight for c in got}) != len(got):
        return None, "its outputs fan out and reach one layer twice"
    name, slope, params = w.act or ("identity", 0.01, ())
    rules = tuple(w.rules) + (f"fan-out to {len(got)} layers",)
    return Group(a, got[0], name, slope, params, w.norm, tuple(sorted(pools)), False, None, pads, None, (), rules,
                 more=tuple(got[1:])), ""


def _weight_rows(r: _Reader, a: Affine) -> int:
    """Layer ``a``'s output units (its fused rows where it is one part of a projection)."""
    if a.rows is not None:
        return a.rows[1] - a.rows[0]
    w = get_tensor(r.root, a.weight)
    return int(w.shape[1] if a.transposed else w.shape[0])


def _sliced_whole(groups: list[Group], whole: list, skipped: list) -> tuple[list[Group], list]:
    """Groups reading a slice of a concatenation whose consumer also produces a gated or
    inverted-residual group, left alone: that group's writing replaces the layer's whole weight,
    the slice's would be lost (an ordinary group's producer rows compose with slices,
    :func:`afde_nb.models.surgery.write_back`)."""
    taken = {g.producer.weight: type(g).__name__ for g in whole}
    keep = []
    for g in groups:
        hit = [(c, taken[c.weight]) for c in g.consumers if c.cols is not None and c.weight in taken]
        if not hit:
            keep.append(g)
            continue
        c, kind = hit[0]
        skipped.append((g.producer.name, f"its units are a slice of {c.name}'s columns, and {c.name} produces a "
                                         f"{'gated' if kind == 'GatedGroup' else 'inverted-residual'} group"))
    return keep, skipped


def _chains(groups: list[Group]) -> list[list[Group]]:
    """Groups linked where one's consumer is the next one's producer, in model order."""
    by_producer = {g.producer.weight: g for g in groups}
    # a consumer that reads a slice of a concatenation (several groups' units) ends its chains: its
    # outputs are not one group's function; as a producer it heads a chain of its own
    consumers = {g.consumer.weight for g in groups if g.consumer.cols is None}
    chains = []
    for g in groups:
        if g.producer.weight in consumers:
            continue  # not a chain's head
        chain = [g]
        while chain[-1].consumer.cols is None and chain[-1].consumer.weight in by_producer:
            chain.append(by_producer[chain[-1].consumer.weight])
        chains.append(chain)
    return chains
