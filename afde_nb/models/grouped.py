"""Units that feed a grouped convolution, read and written back as a tie (issue 27).

A producer (a convolution with ``groups=1``) whose output channels pass the one walk's rules (an
optional eval BatchNorm, one element-wise activation, no-ops: :func:`afde_nb.models.groups.walk`)
into a *grouped* convolution (``groups = g``, ``1 < g < channels``: RegNet's 3x3, ResNeXt's) has
its channels in g blocks: output channel o of the grouped conv reads only the channels of its own
group. So block b (producer rows ``b*C/g .. (b+1)*C/g``, their BatchNorm entries, and the grouped
conv's output rows of group b, whose input columns they are) is a plain two-layer chain of its own
(:class:`GroupedGroup`), lumped like any conv group: units of different blocks never merge (their
consumer columns are in different output rows, so a merge across blocks is no merge at all).

**Equal widths.** A grouped convolution has one input width per group, so the blocks are a *tie*
(:mod:`afde_nb.core.tie`, as a mixture-of-experts bank's experts): the parameter count charges
every block the widest block's width, the merge path cuts the blocks in rounds (one merge in each),
and a block left narrower by exact merges is zero-padded when written (a padded channel has a zero
producer row and bias, an identity BatchNorm entry and zero consumer columns: it computes nothing
and feeds nothing), so the written conv keeps ``groups = g`` with ``in_channels = g * width``.

The grouped conv's own output channels are not lumped here (they would be a second hidden layer of
each block; with RegNetY's squeeze-excitation after them, the reading the inverted-residual kind
gives its SE: :mod:`afde_nb.models.inverted`): the report names them.

**Rows.** A block's rows are the producer's input patches (the same for every block) and its
slice of the grouped conv's input patches (group b's channels), from one run of the model
(:func:`slice_rows` cuts them out of what :func:`afde_nb.models.surgery.chain_inputs` collects).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..core.network import Layer, Network
from ..core.tie import Tie
from ..errors import UnsupportedLayerError
from .inverted import _conv_call, _fold
from .params import finite_array as _np, get_tensor, set_tensor, weight as _weight


@dataclass(frozen=True)
class GroupedGroup:
    """Block ``block`` of ``blocks``: the producer's rows ``producer.rows`` (its Affine, sliced),
    its BatchNorm's entries there (``norm``, the whole module's paths), the activation, and the
    grouped conv's output rows ``consumer.rows`` (group ``block``), whose input columns they are."""

    producer: object  # Affine with rows=(lo, hi)
    consumer: object  # Affine of the grouped conv, rows=(its group's output rows)
    block: int
    blocks: int
    norm: object = None
    activation: str = "identity"
    negative_slope: float = 0.01
    act_params: tuple = ()
    rules: tuple = ()
    align: int = 1

    pools = ()
    flatten = False
    post = None
    inner = None
    width_attrs = ()
    uses = 1

    @property
    def units(self) -> int:
        return self.producer.rows[1] - self.producer.rows[0]

    @property
    def name(self) -> str:
        return f"{self.producer.name}[{self.block}]"

    @property
    def tie(self) -> str:
        return f"{self.producer.weight}|{self.consumer.weight}"

    @property
    def padded(self) -> bool:
        return any(self.consumer.padding)

    @property
    def negation_ok(self) -> bool:
        """A flipped sigmoid (1 - u) does not commute with the grouped conv's zero padding."""
        return not (self.padded and self.activation == "sigmoid")

    def describe(self) -> str:
        head = (f"lumps {self.producer.name} channels {self.producer.rows[0]}..{self.producer.rows[1] - 1} "
                f"({self.producer.kind})")
        if self.block:
            return f"{head} -> group {self.block} of {self.consumer.name} (as group 0)"
        rules = f"; passes {'; '.join(self.rules)}" if self.rules else ""
        norm = f" -> {self.norm.name} (folded)" if self.norm else ""
        return (f"{head}{norm} -> {self.activation} -> group 0 of {self.consumer.name} (each group a chain of its "
                f"own){rules}")


def is_grouped(chain) -> bool:
    return len(chain) == 1 and isinstance(chain[0], GroupedGroup)


# ---- finding them ------------------------------------------------------------------------------


def _grouped_conv(r, node, cur, channels: int):
    """(Affine-like fields of the grouped convolution ``node`` reading ``cur``, groups), or (None, why)
    (why empty: not a grouped conv; a depthwise one is the inverted-residual kind's)."""
    got = _conv_call(r, node)
    if got is None or got[6] == 1:
        return None, ""
    w, b, module, stride, padding, dilation, groups, mode = got
    shape = tuple(get_tensor(r.root, w).shape)
    name = w.rsplit(".", 1)[0]
    if shape[1] == 1:
        return None, ""  # depthwise: the inverted-residual reading's
    if r.data(node) is not cur:
        return None, f"its outputs are a parameter of {name}, not its input"
    if isinstance(padding, str) or mode != "zeros":
        return None, f"its outputs feed {name}, a grouped convolution with padding {padding!r} ({mode}): not supported"
    if len(shape) != 4 or shape[1] * groups != channels or shape[0] % groups:
        return None, f"its outputs feed {name}, a grouped convolution ({groups} groups) of another width"
    return (w, b, module, tuple(stride), tuple(padding), tuple(dilation), groups, shape), ""


def find_grouped(found: list, claimed: set, skipped: list) -> tuple[list[GroupedGroup], list]:
    """The grouped blocks among the affine operations ``found`` (``(reader, node, affine)`` as
    :func:`~afde_nb.models.groups.find_groups` collects them), one :class:`GroupedGroup` per group
    of each grouped consumer; ``claimed``: weights another group already resizes (a block that
    would resize one too is refused: those lumps stay as they were); ``skipped`` updated (the
    producers lumped here taken out, a refused one given its reason, each grouped conv's own
    outputs named as left alone)."""
    uses: dict[str, int] = {}
    for _, node, a in found:
        for p in (a.weight, a.bias):
            if p:
                uses[p] = uses.get(p, 0) + 1
    conv_uses: dict[str, int] = {}
    for r in {id(r): r for r, _, _ in found}.values():
        for node in r.graph.nodes:
            got = _conv_call(r, node)
            if got is not None and got[6] != 1:
                conv_uses[got[0]] = conv_uses.get(got[0], 0) + 1
    out: list[GroupedGroup] = []
    why: dict[str, str] = {}
    mine: dict[str, str] = {}  # grouped conv weight -> its producer
    for r, node, a in found:
        if a.kind != "conv2d":
            continue
        channels = int(_weight(r.root, a).shape[0])
        w, _ = r.walk(node, a)
        if w is None or w.nxt is None:
            continue
        got, reason = _grouped_conv(r, w.nxt, w.cur, channels)
        if got is None:
            if reason:
                why[a.name] = reason
            continue
        cw, cb, module, stride, padding, dilation, g, shape = got
        cname = cw.rsplit(".", 1)[0]
        if w.post or w.pools or w.flat or w.views or w.pads:
            why[a.name] = (f"its outputs reach the grouped convolution {cname} through "
                           f"{', '.join(w.rules) or 'pooling or padding'}: not read here")
            continue
        if any(uses.get(p, 0) > 1 for p in (a.weight, a.bias) if p) or conv_uses.get(cw, 0) > 1:
            why[a.name] = f"its grouped consumer {cname} or itself shares parameters with another operation"
            continue
        if r.source is not None and not (a.module and module):
            why[a.name] = (f"{a.name} or {cname} is computed inside another module's forward, not by a convolution "
                           "module of its own: its input cannot be observed")
            continue
        hit = [p for p in (a.weight, cw) if p in claimed or p in mine]
        if hit:
            why[a.name] = f"{hit[0].rsplit('.', 1)[0]} is resized by another group already ({claimed.get(hit[0]) or mine[hit[0]]})"
            continue
        mine[cw] = mine[a.weight] = a.name
        cg, og = channels // g, shape[0] // g
        cons = replace(a, name=cname, weight=cw, bias=cb, module=module, stride=stride, padding=padding,
                       dilation=dilation, padding_mode="zeros", transposed=False, rows=None)
        name, slope, params = w.act or ("identity", 0.01, ())
        rules = tuple(w.rules) + (f"a grouped convolution ({g} groups of {cg} channels): merges within a group, "
                                  "every group one width (narrower groups zero-padded, counted)",)
        for b in range(g):
            out.append(GroupedGroup(replace(a, rows=(b * cg, (b + 1) * cg)), replace(cons, rows=(b * og, (b + 1) * og)),
                                    b, g, w.norm, name, slope, params, rules))
        why[cname] = (f"a grouped convolution: its input channels are lumped with {a.name}, its own output "
                      "channels are not read here")
    lumped = {g.producer.name for g in out}
    kept = [(nm, why.get(nm, y)) for nm, y in skipped if nm not in lumped]
    have = {nm for nm, _ in kept}
    kept += [(nm, y) for nm, y in why.items() if nm not in have and nm not in lumped]
    return out, kept


# ---- reading weights and rows ------------------------------------------------------------------


def grouped_network(root: nn.Module, chain: list) -> Network:
    """Block ``g.block`` of a one-group chain as a two-layer network (float64, BatchNorm folded):
    the producer's rows of the block, then the grouped conv's rows of its group."""
    (g,) = chain
    p, c = g.producer, g.consumer
    lo, hi = p.rows
    w = _weight(root, p)
    W = _np(w, p.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, p.bias), p.bias) if p.bias else np.zeros(len(W))
    W, b = _fold(root, g.norm, W, b)
    prod = Layer(np.ascontiguousarray(W[lo:hi]), b[lo:hi].copy(), g.activation, g.negative_slope,
                 has_bias=bool(p.bias or g.norm), path=g.name, taps=int(np.prod(w.shape[2:])), act_params=g.act_params)
    olo, ohi = c.rows
    cw = _weight(root, c)
    if cw.shape[1] != hi - lo:
        raise UnsupportedLayerError(f"{c.name} reads {cw.shape[1]} channels per group, not the {hi - lo} of {g.name}")
    K = _np(cw, c.weight)[olo:ohi].reshape(ohi - olo, -1)
    kb = _np(get_tensor(root, c.bias), c.bias)[olo:ohi] if c.bias else np.zeros(ohi - olo)
    cons = Layer(np.ascontiguousarray(K), kb, "identity", has_bias=bool(c.bias), path=f"{c.name}[{g.block}]",
                 taps=int(np.prod(cw.shape[2:])))
    dtype = str(get_tensor(root, p.weight).dtype).replace("torch.", "")
    return Network([prod, cons], dtype=dtype, meta={} if g.negation_ok else {"unsigned": (0,)})


def unit_costs(net: Network, chain: list) -> list[tuple[int, int]]:
    """Cost rows as capture counts them: producer taps and per-channel bias and BatchNorm scale and
    shift; the grouped conv's kernel per (channel, output) and its bias."""
    (g,) = chain
    per = int(bool(g.producer.bias)) + (2 if g.norm is not None and g.norm.weight else 0)
    return [(net.layers[0].taps, per), (net.layers[1].taps, int(bool(g.consumer.bias)))]


def slice_rows(chains: list, rows: list) -> list:
    """Every chain's rows with a grouped block's consumer rows cut to its group's channels (the
    grouped conv's input patches hold every group's, ``(c, kh, kw)``-major)."""
    out = list(rows)
    for k, c in enumerate(chains):
        if not is_grouped(c) or out[k] is None:
            continue
        (g,) = c
        R = out[k][1]
        per = R.shape[1] // (g.units * g.blocks)  # taps
        lo = g.block * g.units * per
        out[k] = [out[k][0], np.ascontiguousarray(R[:, lo:lo + g.units * per])]
    return out


def own_channels(g, t: torch.Tensor) -> torch.Tensor:
    """A consumer's input ``t`` (n, C, ...) as group ``g`` reads it: a grouped block's channels of
    the grouped conv's input; any other group's input as it is."""
    if not isinstance(g, GroupedGroup):
        return t
    lo = g.block * g.units
    return t[:, lo:lo + g.units]


# ---- writing back ------------------------------------------------------------------------------


def write_tied(root: nn.Module, chains: list, nets: list, tie: Tie | None = None) -> None:
    """Put reduced blocks (one network per chain, every group of one grouped conv) into ``root``
    (modified in place: pass a copy): the producer's rows and the grouped conv's input columns at
    the tie's width (the widest block's), narrower blocks zero-padded; the BatchNorm written as an
    identity (the folded bias in its mean, negated, where the producer has no bias); the modules'
    ``out_channels``/``in_channels`` (and BatchNorm's ``num_features``) set, ``groups`` kept."""
    groups = [c[0] for c in chains]
    g0 = groups[0]
    if len({g.tie for g in groups}) != 1 or sorted(g.block for g in groups) != list(range(g0.blocks)):
        raise UnsupportedLayerError(f"a grouped convolution's blocks are written all at once, got "
                                    f"{[g.name for g in groups]}")
    for g, n in zip(groups, nets):
        if not isinstance(n, Network) or len(n.layers) != 2:
            raise UnsupportedLayerError(f"{g.name} takes a reduced two-layer network, got {type(n).__name__}")
    tie = tie or Tie(tuple(range(len(nets))), g0.units)
    width = tie.width({k: n.layers[0].out_features for k, n in zip(tie.members, nets)})
    p, c = g0.producer, g0.consumer
    pw, cw = _weight(root, p), _weight(root, c)
    G = g0.blocks
    P = torch.zeros((G * width,) + tuple(pw.shape[1:]), dtype=torch.float64)
    pb = torch.zeros(G * width, dtype=torch.float64)
    K = torch.zeros((cw.shape[0], width) + tuple(cw.shape[2:]), dtype=torch.float64)
    kb = torch.zeros(cw.shape[0], dtype=torch.float64)
    for g, n in zip(groups, nets):
        k, at = n.layers[0].out_features, g.block * width
        P[at:at + k] = torch.from_numpy(np.asarray(n.layers[0].weight, dtype=np.float64)).reshape((k,) + P.shape[1:])
        pb[at:at + k] = torch.from_numpy(np.asarray(n.layers[0].bias, dtype=np.float64))
        lo, hi = g.consumer.rows
        K[lo:hi, :k] = torch.from_numpy(np.asarray(n.layers[1].weight, dtype=np.float64)).reshape(
            (hi - lo, k) + K.shape[2:])
        kb[lo:hi] = torch.from_numpy(np.asarray(n.layers[1].bias, dtype=np.float64))
    set_tensor(root, p.weight, P)
    if p.bias:
        set_tensor(root, p.bias, pb)
    elif g0.norm is None and bool(pb.any()):
        raise UnsupportedLayerError(f"{p.name} has no bias or BatchNorm to hold a merged channel's bias")
    norm = g0.norm
    if norm is not None:
        one = torch.ones(G * width, dtype=torch.float64)
        if norm.weight:
            set_tensor(root, norm.weight, one)
        if norm.bias:
            set_tensor(root, norm.bias, torch.zeros_like(one))
        set_tensor(root, norm.mean, torch.zeros_like(one) if p.bias else -pb)
        set_tensor(root, norm.var, one * (1.0 - norm.eps))
        _set(root, norm.name, num_features=G * width)
    set_tensor(root, c.weight, K)
    if c.bias:
        set_tensor(root, c.bias, kb)
    elif bool(kb.any()):
        raise UnsupportedLayerError(f"{c.name} has no bias to hold a refit one")
    _set(root, p.module, out_channels=G * width)
    _set(root, c.module, in_channels=G * width)


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
