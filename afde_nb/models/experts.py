"""Mixture-of-experts banks stored as fused 3-D parameters, read and written back (issue 27).

transformers 5 keeps a sparse MoE layer's experts in one module (``MixtralExperts``,
``Qwen2MoeExperts``, ...): ``gate_up_proj`` (E, 2I, H), rows ``[gate; up]`` per expert, and
``down_proj`` (E, H, I), called as ``experts(hidden_states, top_k_index, top_k_weights)``:

    y_t = sum_k  w_tk * down_e (act(gate_e x_t) * up_e x_t),   e = top_k_index[t, k]

Expert e is a gated layer (:mod:`afde_nb.core.gated`): unit i is gate row i, up row i and down
column i of that expert, so each expert is one gated chain of its own (:class:`ExpertGroup`) and
units of different experts never merge. A bank is recognised by its parameters' layout and
*trusted only once checked*: its forward, on random hidden states and random routing, must give
the sum above to float rounding (the rule an activation module passes in
:mod:`afde_nb.models.groups`), whatever implementation computes it (the eager loop over the hit
experts, ``grouped_mm``, ``batched_mm``); the units live inside that forward and reach nothing else.

**Equal widths.** The fused parameters hold one width I' for every expert, so a bank is a *tie*
(:mod:`afde_nb.core.tie`): blocks (its experts' chains) that keep one width
(:attr:`ExpertGroup.tie`). The parameter count gives every block of a tie the tie's width (the
widest expert's, rounded up to 16-byte rows, which ``grouped_mm`` needs), which is what the written
model holds: an expert left with fewer units is zero-padded (a unit with zero gate and up rows and
a zero down column computes act(0) * 0 = 0: exact), the padding counted as parameters. The merge
path cuts a tie in rounds (:meth:`afde_nb.core.path.MergePath.tied`): each round takes one merge in
every block, so a budget lands on equal widths and merges that would only be padded away are not
made. Grouped convolutions (each group a block, :mod:`afde_nb.models.grouped`) are ties too.

**Rows.** An expert's calibration rows are the tokens routed to it (:func:`record`: a forward
pre-hook on the bank reading ``hidden_states`` and ``top_k_index``), the down projection's input
computed from them; its units' masses are not weighted by the routing weights (an expert's output
error reaches the layer output times ``w_tk`` <= 1: the bounds err on the high side). An expert no
calibration token reached is read on pseudo-inputs (standard-normal rows), as data-free.

**Writing back** (:func:`write_tied`): every expert of a bank at once, into new ``gate_up_proj``
(E, 2I', H) and ``down_proj`` (E, H, I'), and the module's ``intermediate_dim`` (or
``intermediate_size``) set to I'. ``save_pretrained`` writes the checkpoint's per-expert tensors and
:func:`afde_nb.models.hf.load_reduced` fuses and resizes them back from their shapes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.gated import GatedNet
from ..core.network import Layer, apply_activation
from ..core.tie import Tie
from ..errors import UnsupportedLayerError
from .params import finite_array as _np, get_tensor, set_tensor

#: rows kept per expert (the tokens routed to it), as surgery keeps a Linear's
MAX_ROWS = 4096
#: relative error the bank's forward may differ from the reference by (float32 rounding, summed)
_CHECK_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
_CHECK_TOKENS = 24


@dataclass(frozen=True)
class Slice:
    """Where one expert's projection lives: ``weight`` the fused parameter's path, ``expert`` its
    index on the leading axis, ``rows`` (start, stop) of the expert's rows (gate or up half). Read
    like an :class:`~afde_nb.models.groups.Affine` where code asks a group for its producer or
    consumer (model order, the report); no module of its own, so no hook sees its input."""

    name: str
    weight: str
    expert: int
    rows: tuple | None = None
    kind: str = "linear"
    bias: str | None = None
    module: str | None = None
    transposed: bool = False
    cols: tuple | None = None  # never a slice of a concatenation's columns (Affine.cols)


@dataclass(frozen=True)
class ExpertGroup:
    """Expert ``expert`` of the bank module ``bank``: gated units ``act(gate) * up -> down``, its
    rows of ``gate_up_proj`` and its slice of ``down_proj``; ``tie``: the bank (its experts keep equal
    widths); ``rules``: what the bank passed, for the report."""

    bank: str
    expert: int
    experts: int
    units: int
    gate_up: str
    down_proj: str
    activation: str = "identity"
    negative_slope: float = 0.01
    act_params: tuple = ()
    rules: tuple = ()
    #: the written width is a multiple of this many units (16-byte rows: the grouped matrix
    #: products transformers runs the bank with, ``torch.nn.functional.grouped_mm``, need them)
    align: int = 1

    norm = None
    pools = ()
    flatten = False
    negation_ok = True

    @property
    def name(self) -> str:
        return f"{self.bank}[{self.expert}]"

    @property
    def tie(self) -> str:
        return self.bank

    @property
    def gate(self) -> Slice:
        return Slice(f"{self.name}.gate", self.gate_up, self.expert, (0, self.units))

    @property
    def up(self) -> Slice:
        return Slice(f"{self.name}.up", self.gate_up, self.expert, (self.units, 2 * self.units))

    @property
    def down(self) -> Slice:
        return Slice(f"{self.name}.down", self.down_proj, self.expert)

    producer = gate
    consumer = down

    def describe(self) -> str:
        """The report's line: the bank's rules on its first expert's line, the others' in short."""
        head = f"lumps gated units {self.activation}(gate) * up -> down of expert {self.expert} of {self.bank}"
        if self.expert:
            return f"{head} (as expert 0)"
        rules = f"; passes {'; '.join(self.rules)}" if self.rules else ""
        return (f"{head} ({self.gate_up}[e, :{self.units}] and [e, {self.units}:], {self.down_proj}[e]; each expert "
                f"of the bank a chain of its own, merges within it only){rules}")


def is_expert(chain) -> bool:
    return len(chain) == 1 and isinstance(chain[0], ExpertGroup)


# ---- finding them ------------------------------------------------------------------------------


def _layout(m: nn.Module) -> tuple[int, int, int] | str | None:
    """(E, I, H) of a module holding an expert bank's fused parameters, a string saying why one is
    not taken, or None: no bank."""
    gu, dn = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    if not (isinstance(gu, nn.Parameter) and isinstance(dn, nn.Parameter)) or gu.dim() != 3 or dn.dim() != 3:
        return None
    flags = {"is_transposed": False, "has_bias": False, "is_concatenated": True, "has_gate": True}
    off = [k for k, want in flags.items() if getattr(m, k, want) != want]
    if off:  # GPT-OSS: transposed, interleaved gate/up rows, biases
        return f"an expert bank stored as {', '.join(f'{k}={getattr(m, k)}' for k in off)}, a layout not read here"
    E, two_i, H = gu.shape
    if dn.shape[0] != E or two_i % 2 or tuple(dn.shape[1:]) != (H, two_i // 2):
        return "not (E, 2I, H) and (E, H, I)"
    if any(getattr(m, k, None) is not None for k in ("gate_up_proj_bias", "down_proj_bias", "post_expert_norm")):
        return "an expert bank with biases or a norm after each expert, not read here"
    return int(E), int(two_i // 2), int(H)


def _reference(gu: torch.Tensor, dn: torch.Tensor, act, x, idx, w) -> torch.Tensor:
    """The bank's function, written out: sum_k w_tk down_e(act(gate_e x_t) * up_e x_t)."""
    I = dn.shape[-1]
    y = torch.zeros_like(x)
    for k in range(idx.shape[1]):
        W, D = gu[idx[:, k]], dn[idx[:, k]]  # (T, 2I, H), (T, H, I)
        z = torch.einsum("toh,th->to", W, x)
        h = act(z[:, :I]) * z[:, I:]
        y = y + w[:, k:k + 1] * torch.einsum("thi,ti->th", D, h)
    return y


def _check(m: nn.Module, E: int, H: int) -> str:
    """'' where ``m``'s forward computes the bank's function on random hidden states and routing
    (two experts per token, distinct), else why not."""
    p = m.gate_up_proj
    g = torch.Generator().manual_seed(0)
    x = torch.randn(_CHECK_TOKENS, H, generator=g, dtype=torch.float64).to(p.dtype)
    k = min(2, E)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(_CHECK_TOKENS)])
    w = torch.rand(_CHECK_TOKENS, k, generator=g, dtype=torch.float64).to(p.dtype)
    try:
        with torch.no_grad():
            got = m(x.to(p.device), idx.to(p.device), w.to(p.device))
            want = _reference(p, m.down_proj, m.act_fn, x.to(p.device), idx.to(p.device), w.to(p.device))
    except Exception as exc:  # noqa: BLE001 - a bank that does not run so is not trusted
        return f"its forward does not run as experts(hidden_states, top_k_index, top_k_weights) ({type(exc).__name__})"
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return "its forward does not return one (tokens, hidden) tensor"
    err = float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))
    if not err <= _CHECK_TOL.get(p.dtype, 1e-2):
        return (f"its forward differs from sum_k w_k down_e(act(gate_e x) * up_e x) by {err:.2g} (relative) on "
                "random routing: not the function its parameters' layout says")
    return ""


def _read_outside(graphs, exported: bool, bank: str, params: tuple[str, ...]) -> str:
    """Where a graph reads a bank's parameters outside the bank's own forward (an auxiliary term, a
    tied use), that operation, else ''. A torch.fx graph keeps the bank opaque, so any read of them
    is outside; an exported graph's operations carry the modules that made them."""
    for prefix, g in graphs:
        for node in g.nodes:
            if node.op != "get_attr" or (f"{prefix}.{node.target}" if prefix else str(node.target)) not in params:
                continue
            for u in node.users:
                made = (u.meta.get("nn_module_stack") or {}).values()
                stack = [v[0] if isinstance(v, tuple) else str(v) for v in made]
                if not exported or not any(p == bank or p.startswith(f"{bank}.") for p in stack):
                    return f"{u.name} ({getattr(u.target, '__name__', u.target)})"
    return ""


def find_banks(model: nn.Module, recognise, graphs=(), exported: bool = False
               ) -> tuple[list[ExpertGroup], list[tuple[str, str]]]:
    """The expert banks of ``model`` (one :class:`ExpertGroup` per expert) and those refused, with
    why. ``recognise(module)``: (name, slope, params) of an activation module once checked on
    values, else why not (:func:`afde_nb.models.groups._recognise`); ``graphs``: the (prefix, graph)
    pairs the model was read as (``exported``: one ``torch.export`` graph of it), where no operation
    outside a bank may read its parameters."""
    out: list[ExpertGroup] = []
    refused: list[tuple[str, str]] = []
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    for path, m in model.named_modules():
        got = _layout(m)
        if got is None:
            continue
        shapes = f"gate_up_proj {tuple(m.gate_up_proj.shape)}, down_proj {tuple(m.down_proj.shape)}"
        refuse = lambda why: refused.append(  # noqa: E731
            (path or "(model)", f"parameters stored fused in three axes ({shapes}), not lumped: {why}"))
        if isinstance(got, str):
            refuse(got)
            continue
        E, I, H = got
        act = recognise(m.act_fn) if isinstance(getattr(m, "act_fn", None), nn.Module) else None
        if not isinstance(act, tuple):
            refuse(f"an expert bank whose act_fn is {act or 'not an element-wise activation module'}")
            continue
        if counts[id(m.gate_up_proj)] > 1 or counts[id(m.down_proj)] > 1:
            refuse("an expert bank whose parameters another module shares")
            continue
        prefix = f"{path}." if path else ""
        where = _read_outside(graphs, exported, path, (f"{prefix}gate_up_proj", f"{prefix}down_proj"))
        if where:
            refuse(f"an expert bank whose parameters {where} reads outside its forward")
            continue
        why = _check(m, E, H)  # called as the model calls it: a forward that takes other inputs fails here
        if why:
            refuse(f"an expert bank: {why}")
            continue
        name, slope, ap = act
        rules = (f"layout gate_up_proj (E={E}, 2I={2 * I}, H={H}) as [gate; up] and down_proj (E, H, I), no biases",
                 f"act_fn checked as {name}",
                 "its forward checked against sum_k w_k down_e(act(gate_e x) * up_e x) on random routing")
        align = max(1, 16 // m.gate_up_proj.element_size())
        rules += (f"one width for its {E} experts, a multiple of {align} (16-byte rows for grouped_mm); narrower "
                  "experts zero-padded, counted",)
        for e in range(E):
            out.append(ExpertGroup(path, e, E, I, f"{prefix}gate_up_proj", f"{prefix}down_proj", name, slope, ap,
                                   rules, align))
    return out, refused


# ---- reading weights and rows ------------------------------------------------------------------


def expert_network(root: nn.Module, chain: list) -> GatedNet:
    """Expert ``g.expert`` of a one-group chain as a :class:`~afde_nb.core.gated.GatedNet` (float64)."""
    (g,) = chain
    gu = get_tensor(root, g.gate_up)
    W = _np(gu[g.expert], g.gate_up)
    D = _np(get_tensor(root, g.down_proj)[g.expert], g.down_proj)
    I = W.shape[0] // 2
    zeros = np.zeros(I)
    gate = Layer(W[:I], zeros, g.activation, g.negative_slope, has_bias=False, path=g.name, act_params=g.act_params)
    up = Layer(W[I:], zeros.copy(), "identity", has_bias=False, path=f"{g.name}.up")
    down = Layer(D, np.zeros(len(D)), "identity", has_bias=False, path=f"{g.name}.down")
    dtype = str(gu.dtype).replace("torch.", "")
    return GatedNet([gate, down], dtype=dtype, up=up)


def unit_costs(net: GatedNet, chain: list) -> list[tuple[int, int]]:
    """Cost rows as capture counts them: gate and up (two weights per (input, unit)), then down."""
    return [(2, 0), (1, 0)]


def _hidden(root: nn.Module, g: ExpertGroup, X: np.ndarray) -> np.ndarray:
    """The expert's units' values on its input rows ``X``: the down projection's input (float64)."""
    W = _np(get_tensor(root, g.gate_up)[g.expert], g.gate_up)
    I = W.shape[0] // 2
    z = X @ W.T
    return apply_activation(z[:, :I], g.activation, g.negative_slope, g.act_params) * z[:, I:]


@contextlib.contextmanager
def record(model: nn.Module, chains: list):
    """While the model runs: each expert's input rows, the tokens routed to it (a forward pre-hook
    on every bank reading ``hidden_states`` and ``top_k_index``). Yields a dict filled after the
    block: expert group -> [its input rows, its units' values] (float64, at most
    :data:`MAX_ROWS` tokens, drawn with a fixed seed); an expert no token reached has none."""
    banks: dict[str, list[ExpertGroup]] = {}
    for (g,) in chains:
        banks.setdefault(g.bank, []).append(g)
    seen: dict[str, list] = {b: [] for b in banks}

    def hook(bank):
        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            seen[bank].append((x.detach().to("cpu", torch.float64), idx.detach().to("cpu")))
        return pre

    handles = [model.get_submodule(b).register_forward_pre_hook(hook(b), with_kwargs=True) for b in banks]
    out: dict = {}
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
    for b, groups in banks.items():
        if not seen[b]:
            continue
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in seen[b]])
        idx = torch.cat([i.reshape(-1, i.shape[-1]) for _, i in seen[b]])
        for g in groups:
            R = X[(idx == g.expert).any(dim=1)].numpy()
            if len(R) > MAX_ROWS:
                R = R[np.sort(np.random.default_rng(0).choice(len(R), MAX_ROWS, replace=False))]
            if len(R):
                R = np.ascontiguousarray(R)
                out[g] = [R, _hidden(model, g, R)]


# ---- writing back ------------------------------------------------------------------------------


def write_tied(root: nn.Module, chains: list, nets: list, tie: Tie | None = None) -> None:
    """Put reduced experts (one :class:`~afde_nb.core.gated.GatedNet` per chain, one chain per
    expert of one bank) into ``root`` (modified in place: pass a copy): the fused parameters at the
    tie's width (the widest expert's, aligned: :class:`~afde_nb.core.tie.Tie`), narrower experts
    zero-padded, and the module's width attribute set."""
    groups = [c[0] for c in chains]
    banks = {g.bank for g in groups}
    if len(banks) != 1 or sorted(g.expert for g in groups) != list(range(groups[0].experts)):
        raise UnsupportedLayerError(f"an expert bank is written with all its experts at once, got "
                                    f"{[g.name for g in groups]}")
    for g, small in zip(groups, nets):
        if not isinstance(small, GatedNet):
            raise UnsupportedLayerError(f"{g.name} is an expert of a fused bank: it takes a reduced gated layer "
                                        f"(afde_nb.core.gated.GatedNet), got a {type(small).__name__}")
    g0 = groups[0]
    old = get_tensor(root, g0.gate_up)
    E, _, H = old.shape
    tie = tie or Tie(tuple(range(len(nets))), int(old.shape[1]) // 2, groups[0].align)
    width = tie.width({k: n.gate.out_features for k, n in zip(tie.members, nets)})
    GU = torch.zeros(E, 2 * width, H, dtype=torch.float64)
    DN = torch.zeros(E, H, width, dtype=torch.float64)
    for g, n in zip(groups, nets):
        k = n.gate.out_features
        GU[g.expert, :k] = torch.from_numpy(np.asarray(n.gate.weight, dtype=np.float64))
        GU[g.expert, width:width + k] = torch.from_numpy(np.asarray(n.up.weight, dtype=np.float64))
        DN[g.expert, :, :k] = torch.from_numpy(np.asarray(n.down.weight, dtype=np.float64))
    set_tensor(root, g0.gate_up, GU)
    set_tensor(root, g0.down_proj, DN)
    m = root.get_submodule(g0.bank)
    for attr in ("intermediate_dim", "intermediate_size", "expert_dim"):
        if type(getattr(m, attr, None)) is int:
            setattr(m, attr, width)
