"""Gated groups in a traced or exported graph, read and written back: ``down(act(gate(x)) * up(x))``.

A *gated group* is a ``mul`` of two tensors, one the output of a Linear (the gate projection)
through one element-wise activation, the other the output of another Linear (the up projection)
reading the same input, whose product passes only through no-ops into exactly one Linear (the
down projection) as its data input. Its units are the rows of gate and up and the columns of down:
a group kind of its own (two producers, one consumer), lumped by :mod:`afde_nb.core.gated`. The
layers may be ``nn.Linear`` or a transposed Linear (Hugging Face's ``Conv1D``, an ``addmm``), with
or without biases; LLaMA, Mistral, Qwen and Gemma MLPs are such groups.

:func:`find_gated` is called by :func:`afde_nb.models.groups.find_groups` with the graph reader
it uses (duck-typed: this module imports neither ``groups`` nor ``surgery``, which import it or its
importers), :func:`gated_network` reads a group's three weights into a
:class:`~afde_nb.core.gated.GatedNet`, and :func:`write_back` puts a reduced one into a copy of the
model, updating ``in_features``/``out_features`` (``nx``/``nf``). A Hugging Face config's
``intermediate_size`` is left as it was: :func:`afde_nb.models.hf.load_reduced` reloads a saved
model from its weights' shapes.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..core.gated import GatedNet
from ..core.path import PROBES
from ..core.network import Layer
from ..errors import UnsupportedLayerError
from .params import device_meta, finite_array as _np, get_tensor, set_tensor, weight as _weight

aten = torch.ops.aten
_MUL_FUNCS = (operator.mul, torch.mul, aten.mul.Tensor)


@dataclass(frozen=True)
class GatedGroup:
    """gate -> activation, times up, -> down: the units (rows of gate and up, columns of down)
    lump. ``gate``, ``up`` and ``down`` are :class:`~afde_nb.models.groups.Affine`. Read like a
    :class:`~afde_nb.models.groups.Group` where a group's fields are asked for (producer: gate,
    consumer: down, no norm, pooling or flatten)."""

    gate: object
    up: object
    down: object
    activation: str = "identity"
    negative_slope: float = 0.01
    act_params: tuple = ()

    norm = None
    pools = ()
    flatten = False
    negation_ok = True

    @property
    def producer(self):
        return self.gate

    @property
    def consumer(self):
        return self.down

    @property
    def name(self) -> str:
        return self.gate.name

    @property
    def fused(self) -> bool:
        """Gate and up are two halves of one projection (``gate_up_proj``, cut by ``chunk``)."""
        return self.gate.weight == self.up.weight

    def describe(self) -> str:
        kind = f"{self.gate.kind}, weights stored (in, out)" if self.gate.transposed else self.gate.kind
        if self.fused:
            kind += f", fused: rows {self.gate.rows[0]}:{self.gate.rows[1]} and {self.up.rows[0]}:{self.up.rows[1]}"
        return (f"lumps gated units {self.activation}({self.gate.name}) * {self.up.name} ({kind}) -> "
                f"{self.down.name}")


def is_gated(chain) -> bool:
    """Whether a chain of groups is one gated group."""
    return len(chain) == 1 and isinstance(chain[0], GatedGroup)


# ---- finding them ------------------------------------------------------------------------------


def _is_mul(node: fx.Node) -> bool:
    """A product of two tensors (both arguments graph nodes, no keywords)."""
    if node.op == "call_function" and node.target in _MUL_FUNCS:
        pass
    elif not (node.op == "call_method" and node.target == "mul"):
        return False
    return len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs


def _to_product(r, node: fx.Node, a):
    """Where a Linear's output goes: through the rules of the one walk (``r.walk``,
    :func:`afde_nb.models.groups.walk`), passing at most one element-wise activation, no-ops and
    views that keep its units, into a product of two tensors. (product node, activation or None,
    the product's operand) or None."""
    w, _ = r.walk(node, a)
    if w is None or not w.plain or not _is_mul(w.nxt):
        return None
    return w.nxt, w.act, w.cur


def _consumer(r, mul: fx.Node):
    """The one Linear the product feeds as its data input: (node, affine) and "", or None and why."""
    cur = mul
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None, (f"the product {mul.name} feeds {len(users)} operations" if users
                          else f"the product {mul.name} is not used")
        nxt = users[0]
        if r.passthrough(nxt) or r.keeps_units(nxt, cur):
            cur = nxt
            continue
        c = r.affine(nxt)
        if c is None:
            t = getattr(nxt.target, "__name__", None) or str(nxt.target)
            return None, f"the product {mul.name} feeds {nxt.name} ({nxt.op} {t}), not a Linear"
        if c.kind != "linear":
            return None, f"the product {mul.name} feeds {c.name}, a {c.kind}"
        if r.data(nxt) is not cur:
            return None, f"the product {mul.name} is a parameter of {c.name}, not its input"
        return (nxt, c), ""


_CHUNK_FUNCS = (torch.chunk, aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, torch.split)


def _halves(r, node: fx.Node, a) -> list[tuple[fx.Node, object]]:
    """Where a Linear's output is cut in two equal halves along its units (``chunk(2, dim=-1)``,
    ``split(n, dim=-1)``, each half taken by ``getitem``): [(getitem node, the affine of that half's
    rows)], else []. A fused projection, Phi-3's ``gate_up_proj``, is then two producers."""
    users = list(node.users)
    if len(users) != 1:
        return []
    cut = users[0]
    method = cut.op == "call_method" and cut.target in ("chunk", "split")
    if not (method or (cut.op == "call_function" and cut.target in _CHUNK_FUNCS)):
        return []
    args = list(cut.args) + [None, None]
    rows = int(get_tensor(r.root, a.weight).shape[1 if a.transposed else 0])
    dim = cut.kwargs.get("dim", args[2] if args[2] is not None else 0)
    if dim not in (-1, _ndim(node) - 1):
        return []
    size = cut.kwargs.get("chunks", cut.kwargs.get("split_size", cut.kwargs.get("split_size_or_sections", args[1])))
    chunked = "chunk" in str(cut.target)
    if (chunked and size != 2) or (not chunked and size not in (rows // 2, [rows // 2] * 2)) or rows % 2:
        return []
    takes = {u.args[1]: u for u in cut.users if u.target is operator.getitem}
    if set(takes) != {0, 1} or len(cut.users) != 2:
        return []
    half = rows // 2
    return [(takes[k], replace(a, rows=(k * half, (k + 1) * half))) for k in (0, 1)]


def _ndim(node: fx.Node) -> int:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else -1


def find_gated(found: list, uses: dict, groups: list, skipped: list) -> tuple[list[GatedGroup], list]:
    """The gated groups among the affine operations ``found`` (``(reader, node, affine)`` as
    :func:`~afde_nb.models.groups.find_groups` collects them; ``uses``: parameter path -> number of
    operations reading it), and ``skipped`` with the gate and up layers of each found group taken
    out and those of a refused gated unit given the reason. ``groups``: the ordinary groups found
    (a down projection that also produces one is left to it)."""
    sides: dict[tuple, list] = {}
    for r, node, a in found:
        if a.kind != "linear":
            continue
        for start, part in _halves(r, node, a) or [(node, a)]:
            got = _to_product(r, start, part)
            if got is not None:
                mul, act, operand = got
                sides.setdefault((id(r), mul), []).append((r, node, part, act, operand))
    producers = {g.producer.weight for g in groups}
    out: list[GatedGroup] = []
    lumped: set[str] = set()
    why: dict[str, str] = {}
    for (_, mul), parts in sides.items():
        if len(parts) != 2 or {p[4] for p in parts} != set(mul.args):
            continue  # not two Linear branches (the generic reason stands)
        r = parts[0][0]
        acted = [p for p in parts if p[3] is not None]
        names = [p[2].name for p in parts]
        if len(acted) == 2:
            for nm in names:
                why[nm] = f"its outputs feed {mul.name}, a product of two activated branches (not a gated unit)"
            continue
        if names[0] == names[1] and parts[0][2].rows is None:
            continue  # one Linear read twice, not a fused projection cut in two
        if acted:
            gate = acted[0]
            up = next(p for p in parts if p is not gate)
            act = gate[3]
        else:  # a bilinear unit: (gate x)(up x), the identity as its activation
            gate, up = sorted(parts, key=lambda p: list(mul.args).index(p[4]))
            act = ("identity", 0.01, ())
        g_a, u_a = gate[2], up[2]
        reason = ""
        if r.data(gate[1]) is not r.data(up[1]):
            reason = f"its gated unit ({g_a.name} * {u_a.name}) reads two different inputs"
        got, text = _consumer(r, mul)
        if not reason and got is None:
            reason = f"its gated unit ({g_a.name} * {u_a.name}): {text}"
        if not reason:
            d_node, d_a = got
            params = [p for a in (g_a, u_a, d_a) for p in (a.weight, a.bias) if p]
            if any(uses.get(p, 0) > 1 for p in params):
                reason = f"its gated unit ({g_a.name} * {u_a.name} -> {d_a.name}) shares parameters with another operation"
            elif r.source is not None and not (g_a.module and d_a.module):
                hidden = g_a.name if not g_a.module else d_a.name
                reason = (f"its gated unit's {hidden} is computed inside another module's forward, not by a Linear/"
                          "Conv1D module of its own: its input cannot be observed")
            elif d_a.weight in producers:
                reason = f"its gated unit's down projection {d_a.name} also produces a lumped group"
        if reason:
            for nm in names:
                why[nm] = reason
            continue
        name, slope, params = act
        out.append(GatedGroup(g_a, u_a, d_a, name, slope, params))
        lumped.update(names)
    kept = [(nm, why.get(nm, w)) for nm, w in skipped if nm not in lumped]
    return out, kept


# ---- reading and writing weights ---------------------------------------------------------------


def _layer(root: nn.Module, a, act: str = "identity", slope: float = 0.01, params: tuple = ()) -> Layer:
    w = _weight(root, a)
    if w.dim() != 2:
        raise UnsupportedLayerError(f"{a.name}: a gated unit's layers are Linear, got a weight of shape {tuple(w.shape)}")
    W = _np(w, a.weight)
    b = _np(get_tensor(root, a.bias), a.bias) if a.bias else np.zeros(len(W))
    if a.rows is not None:  # one half of a fused projection
        W, b = W[a.rows[0]:a.rows[1]], b[a.rows[0]:a.rows[1]]
    return Layer(W, b, act, slope, has_bias=bool(a.bias), path=a.name, act_params=params)


def gated_network(root: nn.Module, chain: list) -> GatedNet:
    """The gated group of a one-group chain as a :class:`~afde_nb.core.gated.GatedNet` (float64
    weights; its arithmetic on rows runs in the model's dtype, on its device)."""
    (g,) = chain
    gate = _layer(root, g.gate, g.activation, g.negative_slope, g.act_params)
    dtype = str(get_tensor(root, g.gate.weight).dtype).replace("torch.", "")
    return GatedNet([gate, _layer(root, g.down)], dtype=dtype, up=_layer(root, g.up),
                    meta=device_meta(root, g.gate.weight))


def unit_costs(net: GatedNet, chain: list) -> list[tuple[int, int]]:
    """The chain's cost rows as capture counts them (``in * taps * units + per_unit * units`` per
    layer): the gate and up projections as one layer of two weights per (input, unit) and their
    biases, then the down projection."""
    (g,) = chain
    return [(2, int(bool(g.gate.bias)) + int(bool(g.up.bias))), (1, int(bool(g.down.bias)))]


def write_back(root: nn.Module, chain: list, small) -> None:
    """Put the reduced gated layer ``small`` (a :class:`~afde_nb.core.gated.GatedNet`) into ``root``
    (modified in place: pass a copy)."""
    (g,) = chain
    if not isinstance(small, GatedNet):
        raise UnsupportedLayerError(
            f"{g.gate.name} * {g.up.name} -> {g.down.name} is a gated group: it takes a reduced gated layer "
            f"(afde_nb.core.gated.GatedNet, gate, up and down together), got a {type(small).__name__}")
    parts = [(g.gate, small.gate.weight, small.gate.bias), (g.up, small.up.weight, small.up.bias),
             (g.down, small.down.weight, small.down.bias)]
    if g.fused:  # the two halves back into one projection, in the order its rows had
        first, second = sorted(parts[:2], key=lambda p: p[0].rows[0])
        parts = [(first[0], np.concatenate([first[1], second[1]]), np.concatenate([first[2], second[2]])), parts[2]]
    for a, weight, bias in parts:
        W = torch.from_numpy(np.ascontiguousarray(weight))
        set_tensor(root, a.weight, W.t().contiguous() if a.transposed else W)
        if a.bias:
            set_tensor(root, a.bias, torch.from_numpy(np.array(bias, dtype=np.float64)))
        path = a.module or a.name
        try:
            m = root.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = int(W.shape[1]), int(W.shape[0])
        elif a.transposed and hasattr(m, "nf"):  # Hugging Face's Conv1D: its forward shapes its output by nf
            m.nx, m.nf = int(W.shape[1]), int(W.shape[0])


def pseudo_rows(net: GatedNet, seed: int = 0, first: bool = False, rows: int = PROBES) -> list[np.ndarray]:
    """The chain's input rows without data: standard-normal rows into the gate and up projections
    (the draw of :func:`~afde_nb.models.surgery.pseudo_inputs`), and (unless ``first``) the units'
    values on them, the down projection's input."""
    x = np.random.default_rng(seed).standard_normal((rows, net.gate.in_features))
    return [x] if first else [x, net.hidden_values(x)]
