"""Polynomial ODE encodings of a network (method.md §2).

*Cascade* (engine, C++): one variable per input, hidden neuron and output;
``dh_i/dt = s'(h_i) (sum_j W_ij h_j + b_i)`` with ``s'`` written in ``s`` itself
(tanh: ``1 - h^2``, sigmoid: ``h - h^2``, identity: ``1``), inputs constant, O(#weights) terms.

*Homotopy* (small networks, Python): ``h^0(t) = t x``, ``h^l(t) = s(W^l h^{l-1}(t) + t b^l)``, so
``dh^l/dt = s'(h^l) (W^l dh^{l-1}/dt + b^l)`` with ``dh^0/dt = x``; at ``t = 1`` the outputs equal
the network's outputs for any depth. Its size grows multiplicatively with depth.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .. import _core
from ..errors import InvalidArgumentError, ShapeMismatchError, UnsupportedLayerError
from .network import HOMOGENEOUS, Network, apply_activation

Poly = dict  # {sorted tuple of variable indices: coefficient}

_ERODE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# words of ERODE's grammar that the lexer reads as keywords, not names (those of the blocks we write)
_ERODE_RESERVED = {"begin", "end", "model", "init", "partition", "ODE", "d", "parameters", "reactions",
                   "views", "algebraic", "true", "false"}


@dataclass(frozen=True)
class PolyODE:
    """``dx/dt = f(x)``, ``f_v = sum_{t: var[t] = v} coef[t] * prod_k x[mono[t, k]]`` (-1 = no factor).

    ``layer[v]`` is 0 for inputs, 1..L for hidden layers, L+1 for outputs. ``piecewise[v]`` marks
    ReLU-family neurons, whose cascade drift holds on the active region only.
    """

    names: tuple[str, ...]
    layer: np.ndarray
    init: np.ndarray
    var: np.ndarray
    coef: np.ndarray
    mono: np.ndarray
    piecewise: np.ndarray
    kind: str = "cascade"

    @property
    def num_vars(self) -> int:
        return len(self.names)

    @property
    def num_terms(self) -> int:
        return int(self.var.size)

    @property
    def degree(self) -> int:
        return int((self.mono >= 0).sum(axis=1).max()) if self.num_terms else 0

    def monomials(self) -> list[tuple[int, ...]]:
        return [tuple(int(v) for v in row if v >= 0) for row in self.mono]

    def drift(self, x: np.ndarray) -> np.ndarray:
        """f(x) for one state (n,) or a batch (n, B)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[0] != self.num_vars:
            raise ShapeMismatchError(f"a state has shape ({self.num_vars},) or ({self.num_vars}, B), got {x.shape}")
        xp = np.concatenate([x, np.ones((1,) + x.shape[1:])], axis=0)  # index -1 -> 1.0
        vals = self.coef.reshape((-1,) + (1,) * (x.ndim - 1)) * np.prod(xp[self.mono], axis=1)
        out = np.zeros_like(x)
        np.add.at(out, self.var, vals)
        return out

    def initial_state(self, inputs: np.ndarray) -> np.ndarray:
        n_in = int((self.layer == 0).sum())
        inputs = np.asarray(inputs, dtype=np.float64)
        if inputs.shape != (n_in,):
            raise ShapeMismatchError(f"inputs must have shape ({n_in},), got {inputs.shape}")
        x0 = self.init.copy()
        x0[self.layer == 0] = inputs
        return x0

    def prepartition(self) -> list[list[int]]:
        """afde-nb's initial partition: every input and every output alone, one block per hidden
        layer (the partition that lumping refines)."""
        last = int(self.layer.max()) if self.num_vars else 0
        blocks: list[list[int]] = []
        for l in range(last + 1):
            members = [int(v) for v in np.flatnonzero(self.layer == l)]
            if l == 0 or (l == last and last > 0):
                blocks += [[v] for v in members]
            elif members:
                blocks.append(members)
        return blocks

    def to_ode(self, name: str = "afde", inputs: np.ndarray | None = None) -> str:
        """The system in ERODE's ``.ode`` syntax (inputs start at ``inputs``, default 0), with the
        layer prepartition (:meth:`prepartition`) as its initial partition, so that ERODE's
        reductions of the file start from afde-nb's setting. ``name`` must be an ERODE identifier
        (a letter, then letters, digits or underscores)."""
        if not isinstance(name, str) or not _ERODE_ID.fullmatch(name) or name in _ERODE_RESERVED:
            raise InvalidArgumentError(f"the model name must be an ERODE identifier (a letter, then letters, digits "
                                       f"or '_', not a keyword such as 'model'), got {name!r}")
        x0 = self.initial_state(np.zeros((self.layer == 0).sum()) if inputs is None else inputs)
        if not np.isfinite(x0).all():
            raise InvalidArgumentError("the inputs of an ERODE export must be finite")
        terms: dict[int, list[str]] = defaultdict(list)
        for v, c, m in zip(self.var, self.coef, self.monomials()):
            factors = "*".join(self.names[k] for k in m)
            terms[int(v)].append(f"{float(c)!r}" + (f"*{factors}" if factors else ""))
        lines = [f"begin model {name}", " begin init"]
        lines += [f"  {n} = {float(x0[i])!r}" for i, n in enumerate(self.names)]
        blocks = ["{" + ", ".join(self.names[v] for v in b) + "}" for b in self.prepartition()]
        lines += [" end init", " begin partition"]
        lines += [f"  {b}," for b in blocks[:-1]] + [f"  {b}" for b in blocks[-1:]]
        lines += [" end partition", " begin ODE"]
        for i, n in enumerate(self.names):
            rhs = " + ".join(terms.get(i, [])) or "0"
            lines.append(f"  d({n}) = {rhs.replace('+ -', '- ')}")
        lines += [" end ODE", "end model", ""]
        if self.piecewise.any():
            lines.insert(0, "// ReLU-family neurons are encoded by their active-region drift (s' = 1)")
        return "\n".join(lines)


def _names(net: Network) -> tuple[list[str], np.ndarray]:
    widths = net.widths
    names, layer = [], []
    for v, w in enumerate(widths):
        prefix = "x" if v == 0 else ("y" if v == len(widths) - 1 else f"h{v}_")
        names += [f"{prefix}{i}" for i in range(w)]
        layer += [v] * w
    return names, np.array(layer, dtype=np.int64)


def encode_network(net: Network, kind: str = "cascade", max_terms: int = 200_000) -> PolyODE:
    """Encode ``net`` as a polynomial ODE; ``kind`` is ``"cascade"`` or ``"homotopy"``."""
    net.check_finite()
    if kind == "cascade":
        return _cascade(net)
    if kind == "homotopy":
        return _homotopy(net, max_terms)
    raise InvalidArgumentError(f"kind must be 'cascade' or 'homotopy', got {kind!r}")


def _cascade(net: Network) -> PolyODE:
    names, layer = _names(net)
    var, coef, mono = _core.encode_cascade(*net.engine_args())
    init = np.zeros(len(names))
    piecewise = np.zeros(len(names), dtype=bool)
    for v, l in enumerate(net.layers, start=1):
        init[layer == v] = apply_activation(np.zeros(1), l.activation, l.negative_slope)[0]
        piecewise[layer == v] = l.activation in HOMOGENEOUS
    return PolyODE(tuple(names), layer, init, var, coef, mono, piecewise, "cascade")


def _mul(p: Poly, q: Poly) -> Poly:
    out: Poly = defaultdict(float)
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            out[tuple(sorted(m1 + m2))] += c1 * c2
    return {m: c for m, c in out.items() if c != 0.0}


def _add(p: Poly, q: Poly, scale: float = 1.0) -> Poly:
    out: Poly = defaultdict(float, p)
    for m, c in q.items():
        out[m] += scale * c
    return {m: c for m, c in out.items() if c != 0.0}


def _derivative(act: str, v: int) -> Poly:
    return {"identity": {(): 1.0}, "tanh": {(): 1.0, (v, v): -1.0}, "sigmoid": {(v,): 1.0, (v, v): -1.0}}[act]


def _homotopy(net: Network, max_terms: int) -> PolyODE:
    for l in net.layers:
        if l.activation in HOMOGENEOUS:
            raise UnsupportedLayerError(
                f"the homotopy encoding needs polynomial activations; {l.path!r} is {l.activation}"
            )
    names, layer = _names(net)
    n0 = net.widths[0]
    prev: list[Poly] = [{(k,): 1.0} for k in range(n0)]  # dh^0/dt = x
    drifts: list[Poly] = [{} for _ in range(n0)]
    init = np.zeros(len(names))
    h0 = np.zeros(n0)
    off = n0
    total = 0
    for l in net.layers:
        cur = []
        for i in range(l.out_features):
            inner: Poly = {(): l.bias[i]} if l.bias[i] != 0.0 else {}
            for j in range(l.in_features):
                if l.weight[i, j] != 0.0:
                    inner = _add(inner, prev[j], l.weight[i, j])
            d = _mul(_derivative(l.activation, off + i), inner)
            total += len(d)
            if total > max_terms:
                raise InvalidArgumentError(f"the homotopy encoding exceeds max_terms={max_terms} terms; use "
                                           "kind='cascade' or a larger max_terms")
            cur.append(d)
        h0 = apply_activation(h0 @ l.weight.T, l.activation, l.negative_slope)
        init[off:off + l.out_features] = h0
        drifts += cur
        prev = cur
        off += l.out_features
    var, coef, monos = [], [], []
    width = max([len(m) for d in drifts for m in d] + [1])
    for v, d in enumerate(drifts):
        for m, c in sorted(d.items()):
            var.append(v)
            coef.append(c)
            monos.append(list(m) + [-1] * (width - len(m)))
    mono = np.array(monos, dtype=np.int64).reshape(-1, width)
    return PolyODE(tuple(names), layer, init, np.array(var, dtype=np.int64), np.array(coef), mono,
                   np.zeros(len(names), dtype=bool), "homotopy")
