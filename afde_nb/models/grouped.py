"""Units around a grouped convolution, read and written back as ties (issue 27).

A grouped convolution (``groups = g``, ``1 < g < channels``: RegNet's 3x3, ResNeXt's; ``groups =
channels`` is the inverted-residual kind's depthwise conv) splits two sets of units into g blocks:

* **its input channels**: a producer (a convolution with ``groups=1``) whose output channels pass
  the one walk's rules (an optional eval BatchNorm, one element-wise activation, no-ops:
  :func:`afde_nb.models.groups.walk`) into the grouped conv as its data input. Output channel o of
  the grouped conv reads only the channels of its own group, so block b (producer rows
  ``b*C/g .. (b+1)*C/g``, their BatchNorm entries, and the grouped conv's output rows of group b,
  whose input columns they are) lumps on its own (:class:`GroupedGroup`);
* **its output channels**: they pass the rules (BatchNorm, activation, no-ops) into one consumer (a
  Linear/convolution reading them as its data input); group b's output channels read the same
  inputs (their group's), so they lump among themselves (:class:`GroupedOut`: the grouped conv's
  rows of group b, BatchNorm entries, and the consumer's columns of those channels).

Units of different blocks never merge (two equal input channels in different groups feed different
output channels; two equal-looking output channels of different groups read different inputs).
Block b of a conv is one chain (one or both groups above: producer rows -> the grouped conv's
group-b kernel -> the consumer's columns), read as a plain network.

**Equal widths.** A grouped convolution has one input width and one output width per group, so the
blocks are *ties* (:mod:`afde_nb.core.tie`, as a mixture-of-experts bank's experts, one per hidden
layer of the blocks): the parameter count charges every block the widest block's width, the merge
path cuts the blocks in rounds (one merge in each), and a block left narrower by exact merges is
zero-padded when written (a padded channel has a zero row and bias, an identity BatchNorm entry and
zero consumer columns: it computes nothing and feeds nothing), so the written conv keeps
``groups = g`` with ``in_channels = g * width_in``, ``out_channels = g * width_out``.

Output channels that reach a squeeze-excitation (RegNetY: ``x * gate(fc2(act(fc1(mean x))))``, fc1
reading every group's channels) are left alone, named in the report: exact merges would read as the
inverted-residual kind reads its SE (:mod:`afde_nb.models.inverted`), lossy ones need the gates
measured on whole maps, which its path does for a depthwise kernel only.

**Rows.** A block's rows are its layers' input patches cut to the block's channels (the producer's
whole input; group b's channels of the grouped conv's input; the block's channels of the consumer's
input), from one run of the model (:func:`slice_rows` cuts them out of what
:func:`afde_nb.models.surgery.chain_inputs` collects).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..core.network import Layer, Network
from ..core.tie import Tie
from ..errors import UnsupportedLayerError
from .inverted import _conv_call, _fold, _set
from .params import finite_array as _np, get_tensor, set_tensor, weight as _weight


class _Block:
    """What both kinds of a grouped conv's block share: the group's units, where they sit among all
    groups' channels, the tie that holds every block of one conv at one width, and what a chain
    asks of a group that no rule of these blocks passes (no pooling, flatten or folded BatchNorm
    after the activation)."""

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
    def feeds(self) -> tuple:
        """(first channel, channels, all channels) of the consumer's input that are these units."""
        return self.block * self.units, self.units, self.blocks * self.units

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
        """A flipped sigmoid (1 - u) does not commute with the consumer's zero padding."""
        return not (self.padded and self.activation == "sigmoid")


@dataclass(frozen=True)
class GroupedGroup(_Block):
    """Block ``block`` of ``blocks`` of a grouped conv's input channels: the producer's rows
    ``producer.rows`` (its Affine, sliced), its BatchNorm's entries there (``norm``, the whole
    module's paths), the activation, and the grouped conv's output rows ``consumer.rows`` (group
    ``block``), whose input columns they are."""

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

    #: the producer's input is read whole
    reads = None

    def describe(self) -> str:
        head = (f"lumps {self.producer.name} channels {self.producer.rows[0]}..{self.producer.rows[1] - 1} "
                f"({self.producer.kind})")
        if self.block:
            return f"{head} -> group {self.block} of {self.consumer.name} (as group 0)"
        rules = f"; passes {'; '.join(self.rules)}" if self.rules else ""
        norm = f" -> {self.norm.name} (folded)" if self.norm else ""
        return (f"{head}{norm} -> {self.activation} -> group 0 of {self.consumer.name} (each group a chain of its "
                f"own){rules}")


@dataclass(frozen=True)
class GroupedOut(_Block):
    """Block ``block`` of ``blocks`` of a grouped conv's output channels: its rows ``producer.rows``
    (group ``block``; its input columns are the group's ``in_units`` channels), its BatchNorm's
    entries there, the activation, and the consumer's columns of those channels."""

    producer: object  # Affine of the grouped conv, rows=(its group's output rows)
    consumer: object  # Affine of the consumer (groups 1), all of it
    block: int
    blocks: int
    in_units: int
    norm: object = None
    activation: str = "identity"
    negative_slope: float = 0.01
    act_params: tuple = ()
    rules: tuple = ()
    align: int = 1

    @property
    def reads(self) -> tuple:
        """(first channel, channels, all channels) of the grouped conv's input that group reads."""
        return self.block * self.in_units, self.in_units, self.blocks * self.in_units

    def describe(self) -> str:
        head = (f"lumps {self.producer.name} (grouped) channels {self.producer.rows[0]}..{self.producer.rows[1] - 1}")
        if self.block:
            return f"{head} -> {self.consumer.name} (as group 0)"
        rules = f"; passes {'; '.join(self.rules)}" if self.rules else ""
        norm = f" -> {self.norm.name} (folded)" if self.norm else ""
        return f"{head}{norm} -> {self.activation} -> {self.consumer.name} (each group a chain of its own){rules}"


def is_grouped(chain) -> bool:
    return bool(chain) and isinstance(chain[0], (GroupedGroup, GroupedOut))


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
    if cur is not None and r.data(node) is not cur:
        return None, f"its outputs are a parameter of {name}, not its input"
    if isinstance(padding, str) or mode != "zeros":
        return None, f"its outputs feed {name}, a grouped convolution with padding {padding!r} ({mode}): not supported"
    if len(shape) != 4 or (channels and shape[1] * groups != channels) or shape[0] % groups:
        return None, f"its outputs feed {name}, a grouped convolution ({groups} groups) of another width"
    return (w, b, module, tuple(stride), tuple(padding), tuple(dilation), groups, shape), ""


def find_grouped(found: list, claimed: dict, skipped: list) -> tuple[list[list], list]:
    """The chains of grouped blocks among the operations of the graphs that ``found`` (``(reader,
    node, affine)`` as :func:`~afde_nb.models.groups.find_groups` collects them) was read from:
    per grouped conv, one chain per group (:class:`GroupedGroup` where its input channels lump,
    then :class:`GroupedOut` where its output channels do). ``claimed``: weight -> the group that
    resizes it already (a block that would resize one too is refused: those lumps stay as they
    were); ``skipped`` updated (the layers lumped here taken out, a refused one given its reason,
    a grouped conv whose outputs are not lumped named with why)."""
    if not found:
        return [], skipped
    uses: dict[str, int] = {}
    for _, node, a in found:
        for p in (a.weight, a.bias):
            if p:
                uses[p] = uses.get(p, 0) + 1
    readers = list({id(r): r for r, _, _ in found}.values())
    conv_uses: dict[str, int] = {}
    for r in readers:
        for node in r.graph.nodes:
            got = _conv_call(r, node)
            if got is not None and got[6] != 1:
                conv_uses[got[0]] = conv_uses.get(got[0], 0) + 1
    why: dict[str, str] = {}
    mine: dict[str, str] = {}  # weights resized here -> by which
    ins: dict[str, list] = {}  # grouped conv weight -> its input blocks
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
        refused = _refused(r, a, w, cname, (a.weight, cw), claimed, mine, module)
        if refused or any(uses.get(p, 0) > 1 for p in (a.weight, a.bias) if p) or conv_uses.get(cw, 0) > 1:
            why[a.name] = refused or f"its grouped consumer {cname} or itself shares parameters with another operation"
            continue
        mine[cw] = mine[a.weight] = a.name
        cg, og = channels // g, shape[0] // g
        cons = replace(a, name=cname, weight=cw, bias=cb, module=module, stride=stride, padding=padding,
                       dilation=dilation, padding_mode="zeros", transposed=False, rows=None)
        name, slope, params = w.act or ("identity", 0.01, ())
        rules = tuple(w.rules) + (f"a grouped convolution ({g} groups of {cg} channels): merges within a group, "
                                  "every group one width (narrower groups zero-padded, counted)",)
        ins[cw] = [GroupedGroup(replace(a, rows=(b * cg, (b + 1) * cg)), replace(cons, rows=(b * og, (b + 1) * og)),
                                b, g, w.norm, name, slope, params, rules) for b in range(g)]
    outs = _outputs(readers, found[0][2], uses, conv_uses, claimed, mine, why)
    chains = []
    for cw in dict.fromkeys(list(ins) + list(outs)):
        a, o = ins.get(cw), outs.get(cw)
        chains += [[x, y] for x, y in zip(a, o)] if a and o else [[x] for x in (a or o)]
    lumped = {g.producer.name for c in chains for g in c}
    kept = [(nm, why.get(nm, y)) for nm, y in skipped if nm not in lumped]
    have = {nm for nm, _ in kept}
    kept += [(nm, y) for nm, y in why.items() if nm not in have and nm not in lumped]
    return chains, kept


def _refused(r, a, w, cname: str, weights: tuple, claimed: dict, mine: dict, module) -> str:
    """Why a block over ``weights`` (producer ``a``, walked as ``w``) is not taken, or ''."""
    if w.post or w.pools or w.flat or w.views or w.pads:
        return (f"its outputs reach {cname} through {', '.join(w.rules) or 'pooling or padding'}: not read with a "
                "grouped convolution")
    if r.source is not None and not (a.module and module):
        return (f"{a.name} or {cname} is computed inside another module's forward, not by a module of its own: its "
                "input cannot be observed")
    hit = [p for p in weights if p in claimed or p in mine]
    if hit:
        return f"{hit[0].rsplit('.', 1)[0]} is resized by another group already ({claimed.get(hit[0]) or mine[hit[0]]})"
    return ""


def _outputs(readers: list, like, uses: dict, conv_uses: dict, claimed: dict, mine: dict, why: dict) -> dict:
    """Grouped conv weight -> its output blocks (:class:`GroupedOut`), for every grouped conv whose
    output channels pass the walk's rules into one consumer; ``why`` gets the others' reasons."""
    out: dict[str, list] = {}
    for r in readers:
        for node in r.graph.nodes:
            got, _ = _grouped_conv(r, node, None, 0)
            if got is None:
                continue
            cw, cb, module, stride, padding, dilation, g, shape = got
            cname = cw.rsplit(".", 1)[0]
            k = replace(like, name=cname, kind="conv2d", weight=cw, bias=cb, module=module, stride=stride,
                        padding=padding, dilation=dilation, padding_mode="zeros", transposed=False, rows=None)
            w, reason = r.walk(node, k)
            prefix = "its own output channels: " if cw in mine else ""
            if w is None:
                why[cname] = prefix + reason
                continue
            c = r.affine(w.nxt)
            if c is None or r.data(w.nxt) is not w.cur or c.kind != "conv2d" or c.transposed:
                why[cname] = prefix + f"its outputs feed {w.nxt.name}, not a convolution reading them as its input"
                continue
            if int(_weight(r.root, c).shape[1]) != shape[0]:
                why[cname] = prefix + f"its outputs feed {c.name}, which reads another width"
                continue
            own = [cw] if cw in mine and mine[cw] != cname else []  # its inputs lumped: the same block's
            refused = _refused(r, k, w, c.name, tuple(p for p in (cw, c.weight) if p not in own), claimed, mine,
                               module and c.module)
            if refused or conv_uses.get(cw, 0) > 1 or any(uses.get(p, 0) > 1 for p in (c.weight, c.bias) if p):
                why[cname] = prefix + (refused or f"its consumer {c.name} or itself shares parameters")
                continue
            mine[c.weight] = mine.setdefault(cw, cname)
            og, cg = shape[0] // g, shape[1]
            name, slope, params = w.act or ("identity", 0.01, ())
            rules = tuple(w.rules) + (f"a grouped convolution's output channels ({g} groups of {og}): merges within "
                                      "a group, every group one width",)
            out[cw] = [GroupedOut(replace(k, rows=(b * og, (b + 1) * og)), c, b, g, cg, w.norm, name, slope, params,
                                  rules) for b in range(g)]
    return out


# ---- reading weights and rows ------------------------------------------------------------------


def _rows(root: nn.Module, a, norm, act: tuple, path: str) -> Layer:
    """Rows ``a.rows`` of ``a`` (all where None) with ``norm`` folded in, as a layer (float64)."""
    w = _weight(root, a)
    W = _np(w, a.weight).reshape(w.shape[0], -1)
    b = _np(get_tensor(root, a.bias), a.bias) if a.bias else np.zeros(len(W))
    W, b = _fold(root, norm, W, b)
    lo, hi = a.rows or (0, len(W))
    return Layer(np.ascontiguousarray(W[lo:hi]), b[lo:hi].copy(), act[0], act[1], has_bias=bool(a.bias or norm),
                 path=path, taps=int(np.prod(w.shape[2:])), act_params=act[2])


def grouped_network(root: nn.Module, chain: list) -> Network:
    """Block ``b`` of a grouped conv (a chain of one or both kinds of block) as a network (float64,
    BatchNorms folded): each group's producer rows of the block with its activation, then the last
    consumer's part: the grouped conv's rows of group b, or the consumer's columns of the block's
    channels (its bias carried by block 0 only: the blocks' outputs add up)."""
    layers = [_rows(root, g.producer, g.norm, (g.activation, g.negative_slope, g.act_params), g.name) for g in chain]
    last = chain[-1]
    if isinstance(last, GroupedGroup):
        layers.append(_rows(root, last.consumer, None, ("identity", 0.01, ()), f"{last.consumer.name}[{last.block}]"))
    else:
        c = last.consumer
        cw = _weight(root, c)
        lo, n, _ = last.feeds
        V = _np(cw, c.weight).reshape(cw.shape[0], cw.shape[1], -1)[:, lo:lo + n].reshape(cw.shape[0], -1)
        vb = _np(get_tensor(root, c.bias), c.bias) if c.bias and last.block == 0 else np.zeros(len(V))
        layers.append(Layer(np.ascontiguousarray(V), vb, "identity", has_bias=bool(c.bias),
                            path=f"{c.name}[{last.block}]", taps=int(np.prod(cw.shape[2:]))))
    for k in range(1, len(layers)):
        if layers[k].in_features != layers[k - 1].out_features:
            raise UnsupportedLayerError(f"{layers[k].path} reads {layers[k].in_features} channels, not the "
                                        f"{layers[k - 1].out_features} of {layers[k - 1].path}")
    dtype = str(get_tensor(root, chain[0].producer.weight).dtype).replace("torch.", "")
    unsigned = tuple(k for k, g in enumerate(chain) if not g.negation_ok)
    return Network(layers, dtype=dtype, meta={"unsigned": unsigned} if unsigned else {})


def unit_costs(net: Network, chain: list) -> list[tuple[int, int]]:
    """Cost rows as capture counts them: each producer's taps and per-channel bias and BatchNorm
    scale and shift; the last consumer's taps (its bias is per output, which no merge changes)."""
    rows = [(net.layers[k].taps, int(bool(g.producer.bias)) + (2 if g.norm is not None and g.norm.weight else 0))
            for k, g in enumerate(chain)]
    return rows + [(net.layers[-1].taps, 0)]


def _slices(chain: list) -> list:
    """Per chain layer, the (first, channels, all) of its input that the block reads (None: all)."""
    return [g.reads for g in chain] + [chain[-1].feeds]


def slice_rows(chains: list, rows: list) -> list:
    """Every chain's rows with a grouped block's layer inputs cut to the block's channels (patches
    are ``(c, kh, kw)``-major: a channel's taps are consecutive)."""
    out = list(rows)
    for k, c in enumerate(chains):
        if not is_grouped(c) or out[k] is None:
            continue
        got = []
        for R, s in zip(out[k], _slices(c)):
            if s is not None:
                lo, n, total = s
                per = R.shape[1] // total
                R = np.ascontiguousarray(R[:, lo * per:(lo + n) * per])
            got.append(R)
        out[k] = got
    return out


def own_channels(g, t: torch.Tensor) -> torch.Tensor:
    """A consumer's input ``t`` (n, C, ...) as group ``g`` reads it: a grouped block's channels;
    any other group's input as it is."""
    if not isinstance(g, (GroupedGroup, GroupedOut)):
        return t
    lo, n, _ = g.feeds
    return t[:, lo:lo + n]


# ---- writing back ------------------------------------------------------------------------------


def write_tied(root: nn.Module, chains: list, nets: list, tie: Tie | None = None) -> None:
    """Put reduced blocks (one network per chain, every group of one grouped conv) into ``root``
    (modified in place: pass a copy), each tied layer at the widest block's width, narrower blocks
    zero-padded: the producer's rows and the grouped conv's input columns; the grouped conv's rows
    and the consumer's columns. BatchNorms are written as identities (the folded bias in the mean,
    negated, where the conv has no bias); the modules' widths set, ``groups`` kept."""
    first, last = chains[0][0], chains[0][-1]
    if len({c[0].tie for c in chains}) != 1 or sorted(c[0].block for c in chains) != list(range(first.blocks)) \
            or len({len(c) for c in chains}) != 1:
        raise UnsupportedLayerError(f"a grouped convolution's blocks are written all at once, got "
                                    f"{[c[0].name for c in chains]}")
    for c, n in zip(chains, nets):
        if not isinstance(n, Network) or len(n.layers) != len(c) + 1:
            raise UnsupportedLayerError(f"{c[0].name} takes a reduced {len(c) + 1}-layer network, got "
                                        f"{type(n).__name__}")
    G = first.blocks
    ins, outs = isinstance(first, GroupedGroup), isinstance(last, GroupedOut)
    kconv = first.consumer if ins else first.producer  # the grouped conv
    ki = 1 if ins else 0  # its layer in the networks
    kw = _weight(root, kconv)
    og, cg = kw.shape[0] // G, kw.shape[1]
    w_in = max(n.layers[ki].in_features for n in nets) if ins else cg
    w_out = max(n.layers[ki].out_features for n in nets) if outs else og
    K = torch.zeros((G * w_out, w_in) + tuple(kw.shape[2:]), dtype=torch.float64)
    kb = torch.zeros(G * w_out, dtype=torch.float64)
    for c, n in zip(chains, nets):
        b, L = c[0].block, n.layers[ki]
        k2, k1 = L.out_features, L.in_features
        K[b * w_out:b * w_out + k2, :k1] = torch.from_numpy(np.asarray(L.weight, dtype=np.float64)).reshape(
            (k2, k1) + K.shape[2:])
        kb[b * w_out:b * w_out + k2] = torch.from_numpy(np.asarray(L.bias, dtype=np.float64))
    if ins:
        p = first.producer
        pw = _weight(root, p)
        P = torch.zeros((G * w_in,) + tuple(pw.shape[1:]), dtype=torch.float64)
        pb = torch.zeros(G * w_in, dtype=torch.float64)
        for c, n in zip(chains, nets):
            L, at = n.layers[0], c[0].block * w_in
            P[at:at + L.out_features] = torch.from_numpy(np.asarray(L.weight, dtype=np.float64)).reshape(
                (L.out_features,) + P.shape[1:])
            pb[at:at + L.out_features] = torch.from_numpy(np.asarray(L.bias, dtype=np.float64))
        set_tensor(root, p.weight, P)
        _bias(root, p, first.norm, pb)
        _set(root, p.module, out_channels=G * w_in)
    set_tensor(root, kconv.weight, K)
    if outs:
        _bias(root, kconv, last.norm, kb)
        c = last.consumer
        cw = _weight(root, c)
        V = torch.zeros((cw.shape[0], G * w_out) + tuple(cw.shape[2:]), dtype=torch.float64)
        vb = torch.zeros(cw.shape[0], dtype=torch.float64)
        for ch, n in zip(chains, nets):
            L, at = n.layers[-1], ch[0].block * w_out
            V[:, at:at + L.in_features] = torch.from_numpy(np.asarray(L.weight, dtype=np.float64)).reshape(
                (cw.shape[0], L.in_features) + V.shape[2:])
            vb += torch.from_numpy(np.asarray(L.bias, dtype=np.float64))  # block 0 holds the bias, the rest 0
        set_tensor(root, c.weight, V)
        if c.bias:
            set_tensor(root, c.bias, vb)
        elif bool(vb.any()):
            raise UnsupportedLayerError(f"{c.name} has no bias to hold a merged one")
        _set(root, c.module, in_channels=G * w_out, in_features=G * w_out)
    elif kconv.bias:
        set_tensor(root, kconv.bias, kb)
    elif bool(kb.any()):
        raise UnsupportedLayerError(f"{kconv.name} has no bias to hold a refit one")
    _set(root, kconv.module, in_channels=G * w_in, out_channels=G * w_out)


def _bias(root: nn.Module, a, norm, b: torch.Tensor) -> None:
    """``a``'s folded bias ``b`` written, its BatchNorm (folded into its rows) set to the identity
    (unit scale, zero shift, variance 1 - eps; the bias in its mean, negated, where ``a`` has none)."""
    if a.bias:
        set_tensor(root, a.bias, b)
    elif norm is None and bool(b.any()):
        raise UnsupportedLayerError(f"{a.name} has no bias or BatchNorm to hold a merged channel's bias")
    if norm is None:
        return
    one = torch.ones(len(b), dtype=torch.float64)
    if norm.weight:
        set_tensor(root, norm.weight, one)
    if norm.bias:
        set_tensor(root, norm.bias, torch.zeros_like(one))
    set_tensor(root, norm.mean, torch.zeros_like(one) if a.bias else -b)
    set_tensor(root, norm.var, one * (1.0 - norm.eps))
    _set(root, norm.name, num_features=len(b))
