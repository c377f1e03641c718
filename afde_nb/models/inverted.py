"""Inverted-residual channels in a traced or exported graph, read and written back.

An *inverted-residual group* (MobileNetV2/V3's ``InvertedResidual``, EfficientNet's ``MBConv``,
timm's equivalents) is a producer convolution (groups 1) whose output passes an optional eval
BatchNorm and one element-wise activation into a depthwise convolution (groups = in = out
channels), then an optional BatchNorm, an optional activation, an optional squeeze-excitation
(``x * gate(fc2(act(fc1(mean_HW x))))``, fc1/fc2 1x1 convolutions or Linear layers) and no-ops
into exactly one 1x1 convolution of stride 1 (the consumer, the block's projection). Its units are
the expanded channels: producer rows, depthwise kernels, fc2 rows and the consumer's and fc1's
columns, lumped by :mod:`afde_nb.core.inverted`.

:func:`find_inverted` is called by :func:`afde_nb.models.groups.find_groups` (duck-typed on its
graph reader; this module imports neither ``groups`` nor ``surgery``). A conv that an inverted group
resizes is taken out of every ordinary group that would resize it along its other axis (the SE's
squeeze channels fc1 -> fc2, a projection feeding the next block's expansion directly): the two
would count and write the same weights twice. :func:`inverted_network` reads a group into an
:class:`~afde_nb.core.inverted.InvertedNet`, :func:`unit_costs` counts every per-channel
parameter, :func:`write_back` writes a reduced one into the user's own modules (BatchNorm entries,
the depthwise conv's ``groups``, the SE's sizes), and :func:`record` collects the producers' input
maps (the chains' probe images) with forward pre-hooks during the run that collects every other
chain's rows.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..core.inverted import POSITIONS, Geometry, InvertedNet, Maps, pseudo_maps
from ..core.network import Layer
from ..errors import UnsupportedLayerError
from .gated import _is_mul
from .indexmap import Ids, is_view, reads_shape
from .params import finite_array as _np, get_tensor, set_tensor, weight as _weight

F = nn.functional
aten = torch.ops.aten
_CONV2D_FUNCS = (F.conv2d, aten.conv2d.default)
_MEAN_FUNCS = (torch.mean, aten.mean.dim)
_POOL1_FUNCS = (F.adaptive_avg_pool2d, aten.adaptive_avg_pool2d.default)
#: shape-only ops between the SE's mean and fc1 or between its gate and the product
_VIEWS = (torch.flatten, aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
          aten.unsqueeze.default, aten.squeeze.dims, aten.squeeze.dim, torch.reshape, torch.unsqueeze, torch.squeeze)
_VIEW_METHODS = ("view", "reshape", "flatten", "unsqueeze", "squeeze", "expand_as")
#: calibration images kept per chain as its probe maps
IMAGES = 16

@dataclass(frozen=True)
class Depthwise:
    """A depthwise convolution: where its parameters live, its geometry."""

    name: str
    weight: str
    bias: str | None
    module: str | None
    stride: tuple
    padding: tuple
    dilation: tuple
    #: an explicit zero pad before it (top, bottom, left, right; ``Geometry.pre``)
    pre: tuple = (0, 0, 0, 0)


@dataclass(frozen=True)
class InvertedGroup:
    """producer -> [norm1] -> act1 -> depthwise -> [norm2] -> [act2] -> [SE] -> 1x1 consumer. Read
    like a :class:`~afde_nb.models.groups.Group` where a group's fields are asked for (producer,
    consumer; no pooling or flatten)."""

    producer: object
    norm1: object
    act1: tuple
    dw: Depthwise
    norm2: object
    act2: tuple
    consumer: object
    fc1: object = None
    act_se: tuple = ("identity", 0.01, ())
    fc2: object = None
    gate: tuple = ("identity", 0.01, ())
    #: (H, W) where producer and consumer are Linear layers over tokens that the forward lays out as
    #: maps around the depthwise conv (SegFormer's Mix-FFN: ``transpose(1, 2).view(B, C, H, W)``, then
    #: ``flatten(2).transpose(1, 2)``); None for 1x1 convolutions
    grid: tuple | None = None

    pools = ()
    flatten = False
    negation_ok = False

    @property
    def norm(self):
        return self.norm1

    @property
    def activation(self) -> str:
        return self.act1[0]

    @property
    def name(self) -> str:
        return self.producer.name

    @property
    def convs(self) -> tuple[str, ...]:
        """The weights this group resizes."""
        return tuple(a.weight for a in (self.producer, self.consumer, self.fc1, self.fc2) if a is not None) + (
            self.dw.weight,)

    def describe(self) -> str:
        parts = [f"lumps {self.producer.name} ({self.producer.kind})", self.act1[0]] + \
            ([f"tokens as {self.grid[0]}x{self.grid[1]} maps"] if self.grid else []) + \
            (["zero padding"] if any(self.dw.pre) else []) + [f"depthwise {self.dw.name}"]
        if self.act2[0] != "identity":
            parts.append(self.act2[0])
        if self.fc1 is not None:
            parts.append("SE")
        return " -> ".join(parts + [self.consumer.name])


def is_inverted(chain) -> bool:
    return len(chain) == 1 and isinstance(chain[0], InvertedGroup)


# ---- finding them ------------------------------------------------------------------------------


def _target(node: fx.Node) -> str:
    return getattr(node.target, "__name__", None) or str(node.target)


def _conv_call(r, node: fx.Node):
    """(weight path, bias path, module path, stride, padding, dilation, groups, padding_mode) of a
    2-d convolution call (module or function), else None."""
    m = r.module(node)
    if m is not None:
        if type(m) is not nn.Conv2d:
            return None
        path = r_join(r.prefix, node.target)
        return (f"{path}.weight", f"{path}.bias" if m.bias is not None else None, path, tuple(m.stride),
                m.padding, tuple(m.dilation), m.groups, m.padding_mode)
    if node.op != "call_function" or node.target not in _CONV2D_FUNCS or node.kwargs:
        return None
    a = list(node.args) + [None] * 7
    w, b = r.attr(a[1]), r.attr(a[2]) if a[2] is not None else None
    if w is None or (a[2] is not None and b is None):
        return None
    pair = lambda v, d: tuple(v) if isinstance(v, (tuple, list)) else (v if v is not None else d,) * 2  # noqa: E731
    return w, b, r.owner(node, w), pair(a[3], 1), a[4] if isinstance(a[4], str) else pair(a[4], 0), \
        pair(a[5], 1), a[6] or 1, "zeros"


def r_join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pre(node: fx.Node) -> tuple | None:
    """(top, bottom, left, right) of a zero pad's list (``F.pad`` order: last axis first), or
    None for one that pads more than the two spatial axes."""
    pad = list(node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else ()))
    if len(pad) == 2:
        return (0, 0, pad[0], pad[1])
    if len(pad) == 4:
        return (pad[2], pad[3], pad[0], pad[1])
    return None


def _depthwise(r, node: fx.Node, cur: fx.Node, channels: int) -> tuple[Depthwise | None, str]:
    """The depthwise convolution ``node`` reading ``cur``, or None and why (empty: not a grouped conv)."""
    got = _conv_call(r, node)
    if got is None or got[6] == 1:
        return None, ""
    w, b, module, stride, padding, dilation, groups, mode = got
    name = w.rsplit(".", 1)[0]
    shape = tuple(get_tensor(r.root, w).shape)
    if r.data(node) is not cur:
        return None, f"its outputs are a parameter of {name}, not its input"
    if isinstance(padding, str) or mode != "zeros":
        return None, f"its outputs feed {name}, a grouped convolution with padding {padding!r} ({mode}): not supported"
    if groups != channels or shape[0] != channels or shape[1] != 1 or len(shape) != 4:
        what = (f"a depthwise convolution with channel multiplier {shape[0] // max(groups, 1)} (out = "
                f"{shape[0]}, groups = {groups})") if groups == channels and shape[1] == 1 else \
            f"a grouped convolution ({groups} groups of {shape[1]} channels)"
        return None, f"its outputs feed {name}, {what}: not an inverted-residual channel afde-nb lumps"
    return Depthwise(name, w, b, module, tuple(stride), tuple(padding), tuple(dilation)), ""


def _users(cur: fx.Node) -> list[fx.Node]:
    """The operations reading ``cur``'s values (shape reads left out)."""
    return [u for u in cur.users if not reads_shape(u)]


def _single(cur: fx.Node) -> fx.Node | None:
    users = _users(cur)
    return users[0] if len(users) == 1 else None


def _view(node: fx.Node, prev: fx.Node) -> bool:
    if not node.args or node.args[0] is not prev:
        return False
    if node.op == "call_function" and node.target in _VIEWS:
        return True
    return node.op == "call_method" and node.target in _VIEW_METHODS


def _fixed_shape(node: fx.Node, channels: int) -> bool:
    """A view or reshape whose target shape spells the channel count as a constant (a torch.export
    program's, or code's ``view(-1, 96, 1, 1)``): it would not follow a change of width. (A graph
    exported from a model read through torch.export holds every shape as a constant; there the
    model's own forward runs after the write-back, so it is not asked.)"""
    if not any(k in _target(node) for k in ("view", "reshape", "expand")):
        return False
    flat = []
    for a in list(node.args[1:]) + list(node.kwargs.values()):
        flat += list(a) if isinstance(a, (tuple, list)) else [a]
    return any(isinstance(a, int) and not isinstance(a, bool) and a == channels for a in flat)


def _act(r, cur: fx.Node):
    """(activation, its output node) where ``cur``'s one use is an element-wise activation, else None."""
    region = r.act_region(cur)
    if isinstance(region, tuple):
        return region
    if region is not None:
        return None
    nxt = _single(cur)
    # a no-op (timm's BatchNormAct2d's drop: nn.Identity) is passed, not taken for the identity activation
    while nxt is not None and r.passthrough(nxt):
        nxt = _single(nxt)
    if nxt is not None and (ac := r.activation(nxt)) is not None:  # in-place ones too (relu_, hardswish_)
        return ac, nxt
    return None


def _mean(r, node: fx.Node, cur: fx.Node) -> bool:
    """A mean of ``cur`` over its two spatial axes (a global average pool)."""
    if not node.args or node.args[0] is not cur:
        return False
    m = r.module(node)
    if m is not None:
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1), [1, 1])
    if node.op == "call_function" and node.target in _POOL1_FUNCS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op == "call_function" and node.target in _MEAN_FUNCS) or (node.op == "call_method" and node.target == "mean"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return {d % 4 for d in dims} == {2, 3} and node.kwargs.get("dtype") is None
    return False


def _se(r, cur: fx.Node, channels: int) -> tuple[tuple | None, str]:
    """``cur`` (the channels) read by a squeeze-excitation: ((fc1, act_se, fc2, gate, product), "")
    or None and why (empty: not an SE at all)."""
    users = _users(cur)
    if len(users) != 2:
        return None, ""
    mul = next((u for u in users if _is_mul(u) and cur in u.args), None)
    pool = next((u for u in users if u is not mul), None)
    if mul is None or pool is None or not _mean(r, pool, cur):
        return None, ""
    node = pool
    while (nxt := _single(node)) is not None and _view(nxt, node):
        if r.source is None and _fixed_shape(nxt, channels):
            return None, f"its squeeze-excitation reshapes its channels to a fixed shape ({nxt.name}): not resizable"
        node = nxt
    nxt = _single(node)
    fc1 = r.affine(nxt) if nxt is not None else None
    if fc1 is None or r.data(nxt) is not node:
        return None, f"its channels' squeeze-excitation ({pool.name}) does not feed one Linear/1x1 convolution"
    got = _act(r, nxt)
    act_se, node = (got if got else (("identity", 0.01, ()), nxt))
    nxt = _single(node)
    fc2 = r.affine(nxt) if nxt is not None else None
    if fc2 is None or r.data(nxt) is not node or fc2.kind != fc1.kind:
        return None, f"its squeeze-excitation's {fc1.name} does not feed one second layer of its kind"
    got = _act(r, nxt)
    gate, node = (got if got else (("identity", 0.01, ()), nxt))
    while (nxt := _single(node)) is not None and nxt is not mul and _view(nxt, node):
        if r.source is None and _fixed_shape(nxt, channels):
            return None, f"its squeeze-excitation reshapes its gates to a fixed shape ({nxt.name}): not resizable"
        node = nxt
    if _single(node) is not mul or node not in mul.args:
        return None, f"its squeeze-excitation's gate ({fc2.name}) does not feed the product {mul.name} alone"
    for a in (fc1, fc2):
        if a.kind == "conv2d":
            shape = tuple(get_tensor(r.root, a.weight).shape[2:])
            if shape != (1, 1) or any(a.padding) or any(s != 1 for s in a.stride):
                return None, f"its squeeze-excitation's {a.name} is not a 1x1 convolution"
        elif a.kind != "linear" or a.transposed:
            return None, f"its squeeze-excitation's {a.name} is a {a.kind}"
    return (fc1, act_se, fc2, gate, mul), ""


def _follow(r, node: fx.Node, a) -> tuple[InvertedGroup | None, str]:
    """The inverted-residual group ``node``'s outputs form, or None and why (empty: no depthwise conv
    follows, so the ordinary reason stands)."""
    channels = int(_weight(r.root, a).shape[0])
    w, _ = r.walk(node, a)  # the one walk's rules, up to the operation they do not take
    grid = None
    if w is not None and a.kind == "linear" and w.views:  # tokens laid out as maps (SegFormer)
        grid = w.ids.maps() if w.ids is not None else None
        if grid is None or w.post or w.norm or w.pads or w.pools or w.cat:
            return None, ""
    elif w is None or w.post or w.pools or w.flat or w.views or w.cat or len(w.pads) > 1:
        return None, ""
    pre = _pre(w.pads[0]) if w.pads else (0, 0, 0, 0)
    if pre is None:
        return None, ""
    cur, nxt, norm1, act1 = w.cur, w.nxt, w.norm, w.act
    dw, why = _depthwise(r, nxt, cur, channels)
    if dw is None:
        return None, why
    dw = replace(dw, pre=pre)
    cur, norm2, act2 = nxt, None, None
    se = None
    back = Ids.start(cur, True) if grid is not None else None  # maps back into tokens
    while True:
        if act2 is None and se is None and (got := _act(r, cur)) is not None:
            act2, cur = got
            continue
        if back is not None and (nxt := _single(cur)) is not None and is_view(nxt):
            if not back.apply(nxt):
                return None, f"its channels' maps are read back through {nxt.name}, which this reading cannot follow"
            cur = nxt
            continue
        users = _users(cur)
        if len(users) == 2 and se is None:
            se, why = _se(r, cur, channels)
            if se is None:
                return None, why or (f"its depthwise conv {dw.name}'s outputs feed 2 operations "
                                     f"({', '.join(u.name for u in users)}), not a squeeze-excitation")
            cur = se[4]
            continue
        if len(users) != 1:
            return None, f"its depthwise conv {dw.name}'s outputs feed {len(users)} operations"
        nxt = users[0]
        if se is None and norm2 is None and act2 is None and (n := r.norm(nxt, "conv2d")) is not None:
            norm2, cur = n, nxt
            continue
        if r.passthrough(nxt):
            cur = nxt
            continue
        break
    c = r.affine(nxt)
    if grid is not None:  # a Linear over the tokens, read back from the maps one token per row
        if c is None or c.kind != "linear" or c.transposed or not back.tokens() or r.data(nxt) is not cur \
                or se is not None or not (a.module and c.module):
            return None, (f"its depthwise conv {dw.name}'s channels feed {nxt.name} ({_target(nxt)}), not a Linear "
                          "reading them back as tokens")
        ident = ("identity", 0.01, ())
        return InvertedGroup(a, norm1, act1 or ident, dw, norm2, act2 or ident, c, grid=grid), ""
    if c is None or c.kind != "conv2d":
        return None, f"its depthwise conv {dw.name}'s channels feed {nxt.name} ({_target(nxt)}), not a 1x1 convolution"
    if r.data(nxt) is not cur:
        return None, f"its channels are a parameter of {c.name}, not its input"
    if tuple(get_tensor(r.root, c.weight).shape[2:]) != (1, 1) or any(c.padding) or any(s != 1 for s in c.stride):
        return None, f"its channels feed {c.name}, not a 1x1 convolution of stride 1 without padding"
    ident = ("identity", 0.01, ())
    if se is None:
        return InvertedGroup(a, norm1, act1 or ident, dw, norm2, act2 or ident, c), ""
    fc1, act_se, fc2, gate, _ = se
    return InvertedGroup(a, norm1, act1 or ident, dw, norm2, act2 or ident, c, fc1, act_se, fc2, gate), ""


def find_inverted(found: list, uses: dict, groups: list, skipped: list) -> tuple[list[InvertedGroup], list, list]:
    """The inverted-residual groups among the affine operations ``found`` (``(reader, node,
    affine)`` as :func:`~afde_nb.models.groups.find_groups` collects them; ``uses``: parameter path
    -> operations reading it), the ordinary ``groups`` without those that resize a conv an inverted
    group resizes, and ``skipped`` updated: the layers an inverted group lumps taken out, a refused
    one's producer given its reason, the dropped groups' producers given theirs."""
    out: list[InvertedGroup] = []
    why: dict[str, str] = {}
    claimed: dict[str, str] = {}  # weight -> the producer of the inverted group that resizes it
    dw_uses: dict[str, int] = {}
    for r in {id(r): r for r, _, _ in found}.values():
        for node in r.graph.nodes:
            got = _conv_call(r, node)
            if got is not None and got[6] != 1:
                dw_uses[got[0]] = dw_uses.get(got[0], 0) + 1
    for r, node, a in found:
        if a.kind != "conv2d" and (a.kind != "linear" or a.transposed):  # a Linear: over tokens laid out as maps
            continue
        g, reason = _follow(r, node, a)
        if g is None:
            if reason:
                why[a.name] = reason
            continue
        params = [p for x in (g.producer, g.consumer, g.fc1, g.fc2) if x is not None for p in (x.weight, x.bias) if p]
        if any(uses.get(p, 0) > 1 for p in params) or dw_uses.get(g.dw.weight, 0) > 1:
            why[a.name] = f"its inverted-residual channels ({g.dw.name}) share parameters with another operation"
            continue
        if r.source is not None and not a.module:
            why[a.name] = (f"{a.name} is computed inside another module's forward, not by a convolution module of "
                           "its own: its input cannot be observed")
            continue
        if any(w in claimed for w in g.convs):
            other = next(claimed[w] for w in g.convs if w in claimed)
            why[a.name] = f"its inverted-residual block shares a layer with the one of {other}"
            continue
        for w in g.convs:
            claimed[w] = a.name
        out.append(g)
    lumped = {n for g in out for n in (g.producer.name, g.dw.name) + ((g.fc2.name,) if g.fc2 is not None else ())}
    kept_groups = []
    for g in groups:
        hit = [w for w in (g.producer.weight, g.consumer.weight) if w in claimed]
        if hit:
            layer = hit[0].rsplit(".", 1)[0]
            why[g.producer.name] = (f"its units feed {g.consumer.name}, " if hit[0] == g.consumer.weight else "") + \
                f"{layer} is resized by the inverted-residual channels of {claimed[hit[0]]} (lumped there)"
            continue
        kept_groups.append(g)
    dropped = {g.producer.name for g in groups} - {g.producer.name for g in kept_groups}
    kept = [(nm, why.get(nm, w)) for nm, w in skipped if nm not in lumped]
    kept += [(nm, why[nm]) for nm in sorted(dropped)]
    return out, kept_groups, kept


# ---- reading and writing weights ---------------------------------------------------------------


def _fold(root: nn.Module, norm, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if norm is None:
        return W, b
    mean, var = _np(get_tensor(root, norm.mean), norm.mean), _np(get_tensor(root, norm.var), norm.var)
    gamma = _np(get_tensor(root, norm.weight), norm.weight) if norm.weight else np.ones_like(mean)
    beta = _np(get_tensor(root, norm.bias), norm.bias) if norm.bias else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + norm.eps)
    return W * scale[:, None], (b - mean) * scale + beta


def _pgeo(root: nn.Module, g: InvertedGroup) -> Geometry:
    """The producer's geometry: a Linear over tokens laid out as maps is a 1x1 convolution."""
    p = g.producer
    if g.grid is not None:
        return Geometry((1, 1))
    return _geometry(root, p.weight, p.stride, p.padding, p.dilation)


def _geometry(root: nn.Module, weight: str, stride, padding, dilation, pre=(0, 0, 0, 0)) -> Geometry:
    k = tuple(int(s) for s in get_tensor(root, weight).shape[2:])
    return Geometry(k, tuple(stride), tuple(padding), tuple(dilation), tuple(pre))


def _plain(root: nn.Module, a, act=("identity", 0.01, ())) -> Layer:
    w = _weight(root, a)
    W = _np(w, a.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, a.bias), a.bias) if a.bias else np.zeros(len(W))
    return Layer(W, b, act[0], act[1], has_bias=bool(a.bias), path=a.name, act_params=act[2])


def inverted_network(root: nn.Module, chain: list) -> InvertedNet:
    """An inverted group (a one-group chain) as an :class:`~afde_nb.core.inverted.InvertedNet`
    (float64, BatchNorms folded)."""
    (g,) = chain
    p = g.producer
    w = _weight(root, p)
    if w.dim() != 4 and not (g.grid is not None and w.dim() == 2):
        raise UnsupportedLayerError(f"{p.name}: an inverted-residual producer is a 2-d convolution, got a weight of "
                                    f"shape {tuple(w.shape)}")
    pgeo = _pgeo(root, g)
    W = _np(w, p.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, p.bias), p.bias) if p.bias else np.zeros(len(W))
    W, b = _fold(root, g.norm1, W, b)
    prod = Layer(W, b, g.act1[0], g.act1[1], has_bias=True, path=p.name, taps=int(np.prod(pgeo.kernel)),
                 act_params=g.act1[2])
    d = g.dw
    dgeo = _geometry(root, d.weight, d.stride, d.padding, d.dilation, d.pre)
    K = _np(get_tensor(root, d.weight), d.weight).reshape(len(W), -1)
    kb = _np(get_tensor(root, d.bias), d.bias) if d.bias else np.zeros(len(W))
    K, kb = _fold(root, g.norm2, K, kb)
    dw = Layer(K, kb, g.act2[0], g.act2[1], has_bias=True, path=d.name, taps=K.shape[1], act_params=g.act2[2])
    cons = _plain(root, g.consumer)
    fc1 = fc2 = None
    if g.fc1 is not None:
        fc1, fc2 = _plain(root, g.fc1, g.act_se), _plain(root, g.fc2, g.gate)
    dtype = str(get_tensor(root, p.weight).dtype).replace("torch.", "")
    return InvertedNet([prod, cons], dtype=dtype, dw=dw, fc1=fc1, fc2=fc2, pgeo=pgeo, dgeo=dgeo)


def unit_costs(net: InvertedNet, chain: list) -> list[tuple[int, int]]:
    """The chain's cost rows as capture counts them (``in * taps * C + per_channel * C``, then the
    consumer ``C * out + bias * out``): per channel its producer row, bias and BatchNorm scale and
    shift, depthwise kernel, bias and BatchNorm, fc2 row and bias and fc1 column."""
    (g,) = chain
    per = int(bool(g.producer.bias)) + (2 if g.norm1 is not None and g.norm1.weight else 0)
    per += int(net.dw.weight.shape[1]) + int(bool(g.dw.bias)) + (2 if g.norm2 is not None and g.norm2.weight else 0)
    if g.fc1 is not None:
        per += 2 * int(net.fc1.weight.shape[0]) + int(bool(g.fc2.bias))
    return [(net.producer.taps, per), (1, int(bool(g.consumer.bias)))]


def _channels(root: nn.Module, path: str | None, keep: np.ndarray, merged: np.ndarray | None,
              shape: tuple | None = None) -> None:
    """Entry/row c of the tensor at ``path``: the original's row ``keep[c]`` where >= 0, else row c
    of ``merged`` (float64)."""
    if not path:
        return
    old = get_tensor(root, path).detach()
    k = len(keep)
    rows = torch.empty((k,) + tuple(old.shape[1:]), dtype=old.dtype, device=old.device)
    own = torch.from_numpy(np.flatnonzero(keep >= 0))
    if len(own):
        rows[own] = old[torch.from_numpy(keep[keep >= 0])]
    new = np.flatnonzero(keep < 0)
    if len(new):
        m = torch.from_numpy(np.asarray(merged, dtype=np.float64)[new]).reshape((len(new),) + tuple(old.shape[1:]))
        rows[torch.from_numpy(new)] = m.to(old.dtype)
    set_tensor(root, path, rows)


def _norm_entries(root: nn.Module, norm, keep: np.ndarray, bias: np.ndarray, has_bias: bool) -> None:
    """A folded BatchNorm: the original entries for kept channels, an identity for merged ones (unit
    scale, zero shift, variance 1 - eps; the folded bias in the mean, negated, where the conv has no
    bias to hold it)."""
    if norm is None:
        return
    k = len(keep)
    one, zero = np.ones(k), np.zeros(k)
    _channels(root, norm.weight, keep, one)
    _channels(root, norm.bias, keep, zero)
    _channels(root, norm.mean, keep, zero if has_bias else -np.asarray(bias, dtype=np.float64))
    _channels(root, norm.var, keep, one * (1.0 - norm.eps))
    _set(root, norm.name, num_features=k)


def _set(root: nn.Module, path: str | None, **attrs) -> None:
    if not path:
        return
    try:
        m = root.get_submodule(path)
    except AttributeError:
        return
    for k, v in attrs.items():
        if hasattr(m, k):
            setattr(m, k, v)


def _columns(root: nn.Module, a, W: np.ndarray) -> None:
    """A consumer (or fc1) with new input columns ``W`` (out, k)."""
    old = get_tensor(root, a.weight)
    t = torch.from_numpy(np.ascontiguousarray(W))
    set_tensor(root, a.weight, t.reshape((W.shape[0], W.shape[1]) + tuple(old.shape[2:])))
    if isinstance(_module(root, a), nn.Linear):
        _set(root, a.module, in_features=int(W.shape[1]))
    else:
        _set(root, a.module, in_channels=int(W.shape[1]))


def _module(root, a):
    try:
        return root.get_submodule(a.module) if a.module else None
    except AttributeError:
        return None


def write_back(root: nn.Module, chain: list, small) -> None:
    """Put the reduced block ``small`` (an :class:`~afde_nb.core.inverted.InvertedNet`) into
    ``root`` (modified in place: pass a copy): channels kept as they were keep their original
    (unfolded) entries bit for bit, merged ones are written folded with identity BatchNorm entries."""
    (g,) = chain
    if not isinstance(small, InvertedNet):
        raise UnsupportedLayerError(
            f"{g.producer.name} -> {g.dw.name} -> {g.consumer.name} is an inverted-residual group: it takes a "
            f"reduced block (afde_nb.core.inverted.InvertedNet), got a {type(small).__name__}")
    k = small.channels
    keep = np.asarray(small.meta.get("keep", np.full(k, -1)), dtype=np.int64)
    if keep.shape != (k,):
        raise UnsupportedLayerError(f"{g.producer.name}: the reduced block's keep map has shape {keep.shape}, expected ({k},)")
    # producer rows and depthwise kernels (+bias), each with its BatchNorm
    for a, layer, norm in ((g.producer, small.producer, g.norm1), (g.dw, small.dw, g.norm2)):
        b = np.asarray(layer.bias, dtype=np.float64)
        _channels(root, a.weight, keep, layer.weight)
        if a.bias:
            _channels(root, a.bias, keep, b)
        elif norm is None and np.any(b[keep < 0] != 0):
            raise UnsupportedLayerError(f"{a.name} has no bias or BatchNorm to hold a merged channel's bias")
        _norm_entries(root, norm, keep, b, bool(a.bias))
    _set(root, g.producer.module, out_channels=k, out_features=k)
    if g.dw.module:
        _set(root, g.dw.module, in_channels=k, out_channels=k, groups=k)
    else:
        _graph_groups(root, g.dw.weight, k)
    # the SE: fc1's columns, fc2's rows (+bias)
    if g.fc1 is not None:
        _columns(root, g.fc1, np.asarray(small.fc1.weight))
        _channels(root, g.fc2.weight, keep, small.fc2.weight)
        if g.fc2.bias:
            _channels(root, g.fc2.bias, keep, small.fc2.bias)
        if isinstance(_module(root, g.fc2), nn.Linear):
            _set(root, g.fc2.module, out_features=k)
        else:
            _set(root, g.fc2.module, out_channels=k)
    # the consumer's columns (and its bias, refit by a repair)
    _columns(root, g.consumer, np.asarray(small.consumer.weight))
    if g.consumer.bias:
        set_tensor(root, g.consumer.bias, torch.from_numpy(np.array(small.consumer.bias, dtype=np.float64)))


def _graph_groups(root: nn.Module, weight: str, k: int) -> None:
    """In a graph module (a torch.export program's), the depthwise conv call reading ``weight``
    gets ``groups = k`` (its constant argument)."""
    if not isinstance(root, fx.GraphModule):
        return
    changed = False
    for node in root.graph.nodes:
        if node.op == "call_function" and node.target in _CONV2D_FUNCS and len(node.args) > 6 \
                and isinstance(node.args[1], fx.Node) and node.args[1].op == "get_attr" \
                and str(node.args[1].target) == weight:
            node.args = node.args[:6] + (k,) + node.args[7:]
            changed = True
    if changed:
        root.recompile()


def pseudo_rows(net: InvertedNet, seed: int = 0, first: bool = False) -> list:
    """The chain's rows without data: standard-normal producer input maps
    (:func:`~afde_nb.core.inverted.pseudo_maps`), and (unless ``first``) the channels' values at
    the sampled positions, the consumer's input."""
    x = pseudo_maps(net, seed)
    return [x] if first else [x, net.hidden_values(x)]


# ---- collecting the probe maps ------------------------------------------------------------------


def _picked(n: int) -> torch.Tensor:
    """The calibration images kept (at most :data:`IMAGES`, evenly spread)."""
    return torch.from_numpy(np.unique(np.linspace(0, n - 1, min(n, IMAGES)).round().astype(np.int64)))


def maps_of(root: nn.Module, g: InvertedGroup, t: torch.Tensor) -> Maps:
    """A producer's input ``t`` (n, in, H, W) as the chain's probe maps: at most :data:`IMAGES` images."""
    t = t.detach()
    if g.grid is not None:  # tokens (B, N, in) as the maps (B, in, H, W) the forward lays them out as
        t = t.transpose(1, 2).reshape(len(t), t.shape[2], *g.grid)
    x = t[_picked(len(t)).to(t.device)].to("cpu", torch.float64).numpy()
    pgeo = _pgeo(root, g)
    dgeo = _geometry(root, g.dw.weight, g.dw.stride, g.dw.padding, g.dw.dilation, g.dw.pre)
    h, w = dgeo.out(*pgeo.out(x.shape[2], x.shape[3]))
    return Maps(np.ascontiguousarray(x), min(POSITIONS, len(x) * h * w))


@contextlib.contextmanager
def record(model: nn.Module, chains: list):
    """Forward pre-hooks on the producers of the inverted ``chains`` while the ``with`` body runs the
    model: yields a dict (producer weight -> :class:`~afde_nb.core.inverted.Maps`) filled by the
    run. Producers without a module of their own (a torch.export program's) are not hooked: the
    caller reads them with :func:`missing`."""
    seen: dict[str, Maps] = {}
    handles = []
    for (g,) in chains:
        if not g.producer.module:
            continue

        def hook(mod, args, g=g):
            if g.producer.weight not in seen:
                seen[g.producer.weight] = maps_of(model, g, args[0])
        handles.append(model.get_submodule(g.producer.module).register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def missing(chains: list, seen: dict) -> list:
    """The producers of ``chains`` :func:`record` did not see."""
    return [g.producer for (g,) in chains if g.producer.weight not in seen]
