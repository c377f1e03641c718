"""Gated units on arrays: ``y = down(act(gate(x)) * up(x))`` (LLaMA, Mistral, Qwen, Gemma MLPs).

A gated layer has ``n`` units; unit i is row i of the gate projection (g_i, bias c_i), row i of the
up projection (u_i, bias d_i) and column i of the down projection (v_i):

    h_i = act(g_i . x + c_i) * (u_i . x + d_i),      y = sum_i v_i h_i + b

(docs/method.md, "Gated units"). The product is linear in the up branch, so a unit is read as
``h_i = lam_i * act(gate_i . xa) * (a_i . xa)`` with ``xa = [x; 1]``, its normalised up row
``a_i = (u_i, d_i) / ||(u_i, d_i)||`` and ``lam_i = ||(u_i, d_i)||`` carried into the outgoing
column. What follows:

* **Exact blocks** (eps = 0 keeps the function): units with equal gate rows (+bias) and up rows
  (+bias) proportional by any real factor (a_j = +-a_i) merge into one with outgoing column
  ``sum_i s_i lam_i v_i`` (s_i the sign of the factor). For an odd activation (identity, tanh,
  softsign, a symmetric hardtanh, ...) and ``symmetry=True`` a negated gate row is the same unit
  negated: act(-z) = -act(z). A *silent* unit (zero up row, zero outgoing column, or a zero gate
  row where act(0) = 0) computes 0: it joins the first other unit's block with coefficient 0,
  i.e. it is removed. SiLU and GELU are not odd: equal gate rows only.
* **The merge path** (eps > 0): Ward agglomeration by the engine (``_core.agglomerate``) of the
  aligned units, each seen through the probes as its values ``t_i = act(gate_i . xa)(s0_i a_i . xa)
  / sqrt(N)`` on the N probe rows (the calibration rows, else standard-normal pseudo-inputs), with
  masses ``mu_i = lam_i^2 ||v_i||^2`` (so each unit weighs ``||v_i||^2 E[h_i^2]`` in all), up to
  the sign of the up row (the engine's sign: t -> -t is a_i -> -a_i, exact for every activation).
  Ward's cost ``J = sum_B sum_{i in B} mu_i ||s_i t_i - t_B||^2`` is, to first order in the
  spread of the members' pre-activations, the mean squared change of the down projection's
  output when each block's members are replaced by their merged unit (errors of different units
  taken as uncorrelated, as for the other groups: :mod:`afde_nb.core.path`); ``eps = sqrt(J)``,
  with ``relative=True`` divided by the RMS norm of that output on the same probes.
* **The quotient**: a block's merged unit has the mass-weighted mean gate row and mean (oriented)
  normalised up row and the outgoing column ``sum_i s_i lam_i v_i``; a block with one (non-silent)
  member keeps that unit's own rows untouched.
* **Repair**: the down projection refit by the ridge least squares of :mod:`afde_nb.core.repair`
  (its :func:`~afde_nb.core.repair.fit`, in torch) so its outputs on the probe rows, from the reduced units, match the original's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _core
from ..errors import InvalidArgumentError, ShapeMismatchError
from .network import ODD, Layer, Network, apply_activation, finite, non_finite_error
from .path import EXACT_REL, LINKAGES, PROBES, LayerPath, MergePath, block_sums, units_path
from .compute import array, tensor, where
from .repair import LOSSY, RIDGE, fit, means, original_values, products, seen_before, solve, sums

#: odd activations without parameters (hardtanh: only where min_val = -max_val, see :func:`odd`)
ODD_GATES = ("identity", "tanh") + ODD


def odd(layer: Layer) -> bool:
    """Whether the gate's activation is odd, act(-z) = -act(z): a negated gate row is then the
    same unit negated (sigmoid's h -> 1 - h is no such symmetry of a product)."""
    if layer.activation == "hardtanh":
        p = dict(layer.act_params)
        return p.get("min_val", -1.0) == -p.get("max_val", 1.0)
    return layer.activation in ODD_GATES


@dataclass
class GatedNet(Network):
    """A gated layer as a network: ``layers[0]`` the gate projection with the activation (its
    hidden units are the gated units), ``layers[1]`` the down projection, ``up`` the up projection
    (identity). Shapes, parameter counts and the forward pass are those of the gated layer, so the
    pipeline reads it like any chain (widths ``[in, units, out]``, one hidden layer)."""

    up: Layer | None = None

    def __post_init__(self):
        if self.up is None or len(self.layers) != 2:
            raise ShapeMismatchError("a gated layer needs a gate and a down projection, and an up projection")
        g, d, u = self.layers[0], self.layers[1], self.up
        if u.weight.shape != g.weight.shape or d.weight.shape[1] != g.weight.shape[0] or g.taps != 1 or u.taps != 1:
            raise ShapeMismatchError(
                f"gated layer {g.path}: gate {tuple(g.weight.shape)}, up {tuple(u.weight.shape)} and down "
                f"{tuple(d.weight.shape)} do not fit (gate and up (units, in), down (out, units))")

    @property
    def gate(self) -> Layer:
        return self.layers[0]

    @property
    def down(self) -> Layer:
        return self.layers[1]

    @property
    def num_params(self) -> int:
        return sum(l.num_params for l in (self.gate, self.up, self.down))

    def num_params_with(self, hidden_widths) -> int:
        (k,) = [int(w) for w in hidden_widths]
        d, out = self.gate.in_features, self.down.out_features
        return (2 * d * k + k * (int(self.gate.has_bias) + int(self.up.has_bias)) + k * out
                + (out if self.down.has_bias else 0))

    def check_finite(self, what: str = "network", layers=None) -> "GatedNet":
        if self.finite_checked and self.readonly():
            return self
        for k, l in ((0, self.gate), (0, self.up), (1, self.down)):
            for name, a in (("weight", l.weight), ("bias", l.bias)):
                if not finite(a):
                    raise non_finite_error(what, k, l, name)
        self.finite_checked = self.readonly()
        return self

    def readonly(self) -> bool:
        return all(not (isinstance(a, np.ndarray) and a.flags.writeable)
                   for l in (self.gate, self.up, self.down) for a in (l.weight, l.bias))

    def engine_args(self):
        raise InvalidArgumentError("a gated layer has no polynomial ODE encoding (method.md): use the merge path")

    def values(self, x, units: np.ndarray | None = None) -> torch.Tensor:
        """The units' values h = act(gate x) * (up x) on rows ``x`` (an array or a tensor), as a
        tensor in the model's dtype on its device (:mod:`afde_nb.core.compute`); ``units``: only
        these units' (None: all)."""
        at = where(self)
        x = tensor(x, **at)
        g, u = self.gate, self.up

        def part(a):
            return tensor(a if units is None else np.asarray(a)[units], **at)

        h = g.apply(torch.addmm(part(g.bias), x, part(g.weight).T))
        return h.mul_(torch.addmm(part(u.bias), x, part(u.weight).T))

    def outputs(self, x) -> torch.Tensor:
        """The down projection's outputs on rows ``x``, as :meth:`values` computes them."""
        at, d = where(self), self.down
        return torch.addmm(tensor(d.bias, **at), self.values(x), tensor(d.weight, **at).T)

    def hidden_values(self, x: np.ndarray) -> np.ndarray:
        """The units' values h = act(gate x) * (up x) on rows ``x`` (:meth:`values` as an array:
        float32 for a float32 model, float64 for a float64 one)."""
        return array(self.values(x))

    def layer_inputs(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(x), self.hidden_values(x)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return array(self.outputs(x))

    def with_units(self, gate: tuple, up: tuple, down: tuple) -> "GatedNet":
        """This layer with other (weight, bias) of the gate, up and down projections."""
        return GatedNet([self.gate.with_weights(*gate), self.down.with_weights(*down)], dtype=self.dtype,
                        meta=dict(self.meta), up=self.up.with_weights(*up))


# ---- alignment ---------------------------------------------------------------------------------


@dataclass
class Aligned:
    """Every unit of a gated layer aligned (see the module docstring): ``gate`` (n, in + 1) the
    gate rows with their bias, ``up`` (n, in + 1) the up rows with their bias over their norm
    ``scale`` (0 for a zero row), ``first`` the sign of the first non-zero entry of each up row
    (+1 for a zero row), ``flip`` the sign of the first non-zero entry of each gate row where the
    activation's oddness is used (else +1), ``silent`` the units that compute 0, ``coef`` each
    unit's outgoing coefficient (``scale``, 0 for a silent unit)."""

    gate: np.ndarray
    up: np.ndarray
    scale: np.ndarray
    first: np.ndarray
    flip: np.ndarray
    silent: np.ndarray

    @property
    def coef(self) -> np.ndarray:
        return np.where(self.silent, 0.0, self.scale)

    @property
    def orient(self) -> np.ndarray:
        """Each unit's orientation in the merge path: its values are taken as
        ``first * flip * act(gate . xa)(a . xa)`` (the canonical up sign, and the canonical gate
        sign of an odd activation)."""
        return (self.first * self.flip).astype(np.int64)


def _first_sign(A: np.ndarray) -> np.ndarray:
    """+1 / -1: the sign of each row's first non-zero entry (+1 for a zero row)."""
    nz = A != 0
    idx = np.argmax(nz, axis=1)
    v = A[np.arange(len(A)), idx]
    return np.where(v < 0, -1, 1).astype(np.int64)


def aligned(net: GatedNet, symmetry: bool = True) -> Aligned:
    g, u, d = net.gate, net.up, net.down
    G = np.column_stack([np.asarray(g.weight, dtype=np.float64), np.asarray(g.bias, dtype=np.float64)])
    U = np.column_stack([np.asarray(u.weight, dtype=np.float64), np.asarray(u.bias, dtype=np.float64)])
    scale = np.linalg.norm(U, axis=1)
    A = U / np.where(scale > 0, scale, 1.0)[:, None]
    vnorm = _column_norms(d.weight)
    zero_act = float(np.abs(apply_activation(np.zeros(1), g.activation, g.negative_slope, g.act_params))[0]) == 0.0
    silent = (scale == 0) | (vnorm == 0) | (zero_act & ~np.any(G != 0, axis=1))
    flip = _first_sign(G) if symmetry and odd(g) else np.ones(len(G), dtype=np.int64)
    return Aligned(G, A, scale, _first_sign(A), flip, silent)


def _column_norms(W) -> np.ndarray:
    W = np.asarray(W)
    return np.sqrt(np.square(W, dtype=np.float64).sum(axis=0))


def exact_blocks(net: GatedNet, symmetry: bool = True, threads: int = 0, al: Aligned | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(canonical labels, orientations) of the exact blocks: units whose canonical rows
    ``(flip_i gate_i, first_i a_i)`` agree to the model dtype's rounding (:data:`EXACT_REL` of the
    largest row, as the other groups), decided on the weights alone; a silent unit joins the
    block of the first non-silent unit (orientation +1). Orientations are relative to each unit's
    raw values (``act(gate_i . xa)(a_i . xa)``), as the merge path's signs."""
    al = aligned(net, symmetry) if al is None else al
    n = len(al.gate)
    o = al.orient
    lab = np.zeros(n, dtype=np.int64)
    live = np.flatnonzero(~al.silent)
    if live.size:
        R = np.column_stack([al.gate * al.flip[:, None], al.up * al.first[:, None]])[live]
        sub, _, _, bad = _core.exact_rows(np.ascontiguousarray(R[:, :-1]), np.ascontiguousarray(R[:, -1]), False,
                                          False, EXACT_REL.get(net.dtype, 1e-12), threads)
        if bad >= 0:
            net.check_finite()
            raise non_finite_error("gated layer", 0, net.gate, "weight or bias")
        lab[live] = np.asarray(sub, dtype=np.int64)
        lab[al.silent] = lab[live[0]]
        o = np.where(al.silent, o[live[0]], o)  # a silent unit sits in its block as its representative
    return _canonical(lab), o


def _canonical(lab: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 by each block's first member."""
    if lab.size == 0:
        return lab.astype(np.int64)
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.reshape(-1)]


def _exact_merges(lab: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merges joining each member of an exact block to its first member, with the relative
    orientation (as :mod:`afde_nb.core.path` builds them)."""
    first = np.full(int(lab.max()) + 1 if lab.size else 0, lab.size, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(lab.size))
    rest = np.flatnonzero(first[lab] != np.arange(lab.size))
    p = np.column_stack([first[lab[rest]], rest]).astype(np.int64).reshape(-1, 2)
    return p, (o[p[:, 0]] * o[p[:, 1]]).astype(np.int64)


# ---- the merge path ----------------------------------------------------------------------------


def probe_rows(net: GatedNet, calibration=None, seed: int = 0) -> np.ndarray:
    """The rows the bounds are measured on: calibration rows (the gated layer's inputs), else
    :data:`~afde_nb.core.path.PROBES` standard-normal pseudo-inputs."""
    if calibration is not None and len(calibration):
        return np.asarray(calibration)  # in its own dtype: the values are computed in the model's
    return np.random.default_rng(seed).standard_normal((PROBES, net.gate.in_features))


def _fewer(x: np.ndarray, r: int | None, first: bool) -> np.ndarray:
    """r of the rows (an approximate path), as :mod:`afde_nb.core.path` draws them."""
    if r is None:
        return x
    if r < len(x):
        x = x[:r] if first else x[np.sort(np.random.default_rng(0).choice(len(x), r, replace=False))]
    return x


def unit_values(net: GatedNet, X: np.ndarray, al: Aligned, orient: np.ndarray) -> np.ndarray:
    """(n, N): each unit's aligned values on the probe rows, ``orient_i act(gate_i . xa)(a_i . xa)``,
    over sqrt(N) (so squared norms are means over the rows). Computed in the model's dtype on its
    device (:mod:`afde_nb.core.compute`), handed to the engine as float64."""
    at = where(net)
    X = tensor(X, **at)
    N = max(len(X), 1)
    G, A = tensor(al.gate, **at), tensor(al.up, **at)
    T = net.gate.apply(torch.addmm(G[:, -1], X, G[:, :-1].T)).mul_(torch.addmm(A[:, -1], X, A[:, :-1].T))
    T = T.T.to(torch.float64) * tensor(orient / np.sqrt(N), torch.float64, T.device)[:, None]
    return np.ascontiguousarray(array(T))


def masses(net: GatedNet, al: Aligned) -> np.ndarray:
    """Ward's masses ``mu_i = lam_i^2 ||v_i||^2`` (0 for a silent unit)."""
    return al.coef ** 2 * _column_norms(net.down.weight) ** 2


def merge_path(net: GatedNet, *, method: str = "ward", mode: str = "backward", relative: bool = True,
               symmetry: bool = True, calibration=None, threads: int = 0, inputs=None,
               approx: int | None = None) -> MergePath:
    """The gated layer's merge path (see the module docstring), as a
    :class:`~afde_nb.core.path.MergePath` with one :class:`~afde_nb.core.path.LayerPath`, so a
    model's path joins it with its other chains' layers. The exact merges are known at once; the
    agglomeration runs on first use beyond them.

    ``inputs``: a callable returning the layer's input rows first (the chain's probe rows, as
    :meth:`~afde_nb.models.capture.Captured.probes` gives them); else ``calibration`` rows, else
    pseudo-inputs. ``approx=r``: r of the rows, in float32 (Ward's Gram in float32 too)."""
    if method not in LINKAGES:
        raise InvalidArgumentError(f"merge paths are built by {LINKAGES}, got method={method!r}")
    if mode != "backward":
        raise InvalidArgumentError("mode='forward' is defined by the polynomial ODE; a gated layer "
                                   f"({net.gate.path or 'gate'} * {net.up.path or 'up'}) takes mode='backward'")
    if approx is not None and (isinstance(approx, bool) or not isinstance(approx, (int, np.integer)) or approx < 2):
        raise InvalidArgumentError(f"approx must be None or a number of probe rows >= 2, got {approx!r}")
    net.check_finite()
    al = aligned(net, symmetry)
    lab0, o0 = exact_blocks(net, symmetry, threads, al)
    e_pairs, e_signs = _exact_merges(lab0, o0)
    n = net.gate.out_features

    def rows() -> np.ndarray:
        if inputs is not None:
            return _fewer(np.asarray(inputs()[0]), approx, False)
        return _fewer(probe_rows(net, calibration), approx, calibration is None)

    def build():
        X = rows()
        T = unit_values(net, X, al, o0)
        # a silent unit sits on the first live unit, whose block it joined (it carries no mass)
        live = np.flatnonzero(~al.silent)
        if live.size:
            T[al.silent] = T[live[0]]
        return units_path(T, masses(net, al), net.forward(X), lab0, e_pairs, e_signs, method=method,
                          relative=relative, signed=True, threads=threads, approx=approx, orient=o0)

    lp = LayerPath(n, e_pairs, e_signs, net.gate.activation, build)
    meta = {"approx": int(approx)} if approx else {}
    return MergePath(net, [lp], mode, method, bool(relative), bool(symmetry), calibration is not None, meta)


# ---- quotient and repair -----------------------------------------------------------------------


@dataclass
class GatedBlocks:
    """How a reduced gated layer stands for the original: unit i is in block ``labels[i]`` with
    orientation ``signs[i]`` (its values negated by -1: its up row taken negated, or for an odd
    activation its gate row) and mass ``weights[i]``; ``spread`` the largest distance of a member's
    aligned rows from its merged unit's, relative to the largest aligned entry (0: exact)."""

    labels: np.ndarray
    signs: np.ndarray
    weights: np.ndarray
    spread: float

    def lossy(self, dtype: str) -> bool:
        """A merge beyond the rounding the exact blocks allow (the dtype's :data:`EXACT_REL`)."""
        return self.spread > max(LOSSY, 10 * EXACT_REL.get(dtype, 1e-12))


def quotient(net: GatedNet, labels, signs=None, weights=None) -> tuple[GatedNet, GatedBlocks]:
    """The reduced gated layer of a partition of its units (``labels`` canonical 0..k-1, or a
    :class:`~afde_nb.core.partition.Partition` of this one layer); ``signs``: each unit's
    orientation (None: all +1); ``weights``: the masses of the mean rows (None: equal weights over
    the non-silent members, for exact blocks). See the module docstring."""
    if hasattr(labels, "labels"):
        part = labels
        labels = part.labels[0]
        signs = part.signs[0] if signs is None and part.signs is not None else signs
        weights = part.weights[0] if weights is None and part.weights is not None else weights
    n = net.gate.out_features
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (n,):
        raise ShapeMismatchError(f"labels for the gated layer {net.gate.path} have shape {lab.shape}, expected ({n},)")
    k = int(lab.max()) + 1 if n else 0
    if n and (lab.min() < 0 or np.bincount(lab, minlength=k).min() == 0):
        raise ShapeMismatchError("labels for a gated layer must number blocks 0..k-1 with none empty")
    s = np.ones(n, dtype=np.int64) if signs is None else np.asarray(signs, dtype=np.int64)
    if s.shape != (n,) or not np.all(np.abs(s) == 1):
        raise ShapeMismatchError(f"signs for the gated layer must be {n} values of +1 or -1")
    net.check_finite()
    al = aligned(net, symmetry=False)  # raw gate rows: the orientation and its realisation decide
    live = ~al.silent
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ShapeMismatchError(f"weights for the gated layer must have shape ({n},)")
    w = np.where(live, w, 0.0)
    cnt_live = np.bincount(lab, weights=live.astype(float), minlength=k)
    tot = np.bincount(lab, weights=w, minlength=k)
    # a block whose live members all have weight 0 (or that has none): equal weights
    w = np.where((tot[lab] > 0) | ~live, w, np.where(live, 1.0, 0.0))
    tot = np.bincount(lab, weights=w, minlength=k)
    G = al.gate
    A = al.up * s[:, None]  # the oriented up rows: s_i a_i
    if odd(net.gate):  # either realisation of a negated unit: the one nearer its block's heaviest member
        ref = _heaviest(lab, w, k)
        Gr, Ar = G[ref[lab]], A[ref[lab]]
        keep = np.sum((G - Gr) ** 2 + (A - Ar) ** 2, axis=1)
        other = np.sum((-G - Gr) ** 2 + (-A - Ar) ** 2, axis=1)
        neg = other < keep
        G = np.where(neg[:, None], -G, G)
        A = np.where(neg[:, None], -A, A)
    safe = np.where(tot > 0, tot, 1.0)
    Gm = block_sums(G * w[:, None], lab, k, axis=0) / safe[:, None]
    Am = block_sums(A * w[:, None], lab, k, axis=0) / safe[:, None]
    rho = block_sums(al.scale * w, lab, k, axis=0) / safe
    rho = np.where(rho > 0, rho, 1.0)
    V = np.asarray(net.down.weight, dtype=np.float64)
    D = block_sums(V * (s * al.coef)[None, :], lab, k, axis=1) / rho[None, :]
    Um = Am * rho[:, None]
    # spread: the members' aligned rows against their merged unit's (live members of merged blocks)
    merged = cnt_live[lab] > 1
    dev = np.abs(np.column_stack([G - Gm[lab], A - Am[lab]]))[merged & live]
    amax = float(np.abs(np.column_stack([G, A])).max(initial=0.0))
    spread = float(dev.max(initial=0.0)) / (amax or 1.0)
    # a block with one live member keeps that unit as it was (bit for bit); one with none: the
    # first member's rows, with a zero column (it computes 0)
    own = np.zeros(k, dtype=np.int64)
    own[lab[::-1]] = np.arange(n)[::-1]
    one = np.flatnonzero(cnt_live <= 1)
    if one.size:
        livefirst = own.copy()
        li = np.flatnonzero(live)
        livefirst[lab[li[::-1]]] = li[::-1]
        src = livefirst[one]
        Graw = np.column_stack([net.gate.weight, net.gate.bias]).astype(np.float64)
        Uraw = np.column_stack([net.up.weight, net.up.bias]).astype(np.float64)
        Gm[one], Um[one] = Graw[src], Uraw[src]
        D[:, one] = np.where(live[src][None, :], V[:, src], 0.0)
    dt = np.asarray(net.gate.weight).dtype if np.asarray(net.gate.weight).dtype in (np.float32, np.float64) \
        else np.float64
    small = net.with_units(
        (Gm[:, :-1].astype(dt), Gm[:, -1].copy()), (Um[:, :-1].astype(dt), Um[:, -1].copy()),
        (D.astype(dt), np.asarray(net.down.bias, dtype=np.float64).copy()))
    keep = np.full(k, -1, dtype=np.int64)  # the units kept as they were (repair reads their values off the original's)
    if one.size:
        keep[one] = src
    small.meta["keep"] = keep
    return small, GatedBlocks(lab, s, w, spread)


def _heaviest(lab: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Each block's member of largest weight (the first such)."""
    order = np.lexsort((np.arange(len(lab)), -w, lab))  # by block, then weight descending, then index
    ref = np.zeros(k, dtype=np.int64)
    starts = np.searchsorted(lab[order], np.arange(k))
    ref[:] = order[starts]
    return ref


def repair(original: GatedNet, reduced: GatedNet, X: np.ndarray, ridge: float = RIDGE,
           mask: np.ndarray | None = None) -> GatedNet:
    """``reduced`` with its down projection refit by ridge least squares (the formula of
    :func:`~afde_nb.core.repair.repair`): on the input rows ``X``, the reduced units' values are
    fit to the original layer's outputs (its down projection's output, bias included). ``mask``:
    the boolean (out, units) pattern of down weights the refit may use (a masked pruning's zeros
    stay zero), None: dense."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != np.shape(reduced.down.weight):
            raise ShapeMismatchError(f"mask of shape {mask.shape} for the down projection {reduced.down.path}, "
                                     f"expected {np.shape(reduced.down.weight)}")
    bias = reduced.down.has_bias
    keep = _kept(original, reduced) if seen_before(original, X) else None
    if keep is None:
        Z = original_values(original, "out", X, lambda: original.outputs(X))
        W, b = fit(reduced.values(X), Z, bias, mask, ridge)
    else:
        W, b = solve(*_reduced_sums(original, reduced, X, keep, bias), bias, mask, ridge)
    dt = np.asarray(reduced.down.weight).dtype
    return GatedNet([reduced.gate, reduced.down.with_weights(array(W).astype(dt), array(b))], dtype=reduced.dtype,
                    meta=dict(reduced.meta), up=reduced.up)


def _kept(original: GatedNet, reduced: GatedNet) -> np.ndarray | None:
    """``reduced.meta["keep"]`` (per reduced unit, the original unit it is bit for bit, -1 for a
    merged one: :func:`quotient`, :func:`select`) where it holds for ``original``, else None."""
    keep = reduced.meta.get("keep")
    k, n = reduced.gate.out_features, original.gate.out_features
    if keep is None or len(keep) != k or (len(keep) and int(np.max(keep)) >= n):
        return None
    own = np.flatnonzero(keep >= 0)
    src = keep[own]
    same = all(np.array_equal(np.asarray(a)[own], np.asarray(b)[src])
               for a, b in ((reduced.gate.weight, original.gate.weight), (reduced.gate.bias, original.gate.bias),
                            (reduced.up.weight, original.up.weight), (reduced.up.bias, original.up.bias)))
    return keep if same else None


def _original_sums(original: GatedNet, X, bias: bool) -> tuple:
    """(the original units' values H0 on ``X``, the down projection's outputs Z, the centred Gram
    of H0, H0~^T Z~, mean(H0), mean(Z)): what every refit of a reduction of ``original`` on ``X``
    shares (:func:`_reduced_sums`)."""
    H0 = original.values(X)
    at, d = where(original), original.down
    Z = torch.addmm(tensor(d.bias, **at), H0, tensor(d.weight, **at).T)
    return (H0, Z) + sums(H0, Z, bias)


def _reduced_sums(original: GatedNet, reduced: GatedNet, X, keep: np.ndarray, bias: bool) -> tuple:
    """:func:`~afde_nb.core.repair.sums` of the reduced units' values against the original's
    outputs on ``X``, from the original's (computed once per (layer, rows) and kept,
    :func:`~afde_nb.core.repair.original_values`): a unit kept as it was (``keep[i] >= 0``) has
    the original unit's values, so its Gram entries and its row of ``H~^T Z~`` are read off the
    original's; only the merged units' values and their products are computed (issue 29: the
    budget split refits many reductions of one layer on the same rows; :func:`repair` takes this
    way from the second refit on the same rows on, as the original's Gram over all its units costs
    more than one reduced layer's). The same sums as computing all of them, to the rounding of the
    units' values (float32 for a float32 model: a kept unit's come from the original layer's products)."""
    H0, Z, G0, B0, hm0, zm = original_values(original, f"sums{int(bool(bias))}", X,
                                             lambda: list(_original_sums(original, X, bias)))
    dev = G0.device
    own, new = np.flatnonzero(keep >= 0), np.flatnonzero(keep < 0)
    o, src, nw = (torch.from_numpy(a).to(dev) for a in (own, keep[own], new))
    k = len(keep)
    G = torch.empty((k, k), dtype=G0.dtype, device=dev)
    B = torch.empty((k, B0.shape[1]), dtype=B0.dtype, device=dev)
    hm = torch.empty(k, dtype=hm0.dtype, device=dev)
    G[o[:, None], o[None, :]] = G0[src[:, None], src[None, :]]
    B[o], hm[o] = B0[src], hm0[src]
    if new.size:
        Hn = reduced.values(X, new)
        hn = means(Hn, bias)
        C = products(Hn, hn, H0[:, src], hm0[src])
        G[nw[:, None], nw[None, :]] = products(Hn, hn, Hn, hn)
        G[nw[:, None], o[None, :]] = C
        G[o[:, None], nw[None, :]] = C.T
        B[nw], hm[nw] = products(Hn, hn, Z, zm), hn
    return G, B, hm, zm


def reduce_and_repair(net: GatedNet, part, rows) -> tuple[GatedNet, GatedNet, int | None]:
    """(the quotient, the same refit where a merge was lossy and ``rows`` are given, the first
    refit layer: 1, or None where none ran), the pipeline's per-chain step."""
    small, blocks = quotient(net, part)
    if rows is None or not blocks.lossy(net.dtype):
        return small, small, None
    return small, repair(net, small, rows), 1


def select(net: GatedNet, keep: np.ndarray) -> GatedNet:
    """The gated layer with only the units ``keep`` (structured pruning of whole units)."""
    keep = np.asarray(keep, dtype=np.int64)
    g, u, d = net.gate, net.up, net.down
    small = net.with_units((np.ascontiguousarray(g.weight[keep]), np.asarray(g.bias)[keep].copy()),
                           (np.ascontiguousarray(u.weight[keep]), np.asarray(u.bias)[keep].copy()),
                           (np.ascontiguousarray(d.weight[:, keep]), np.asarray(d.bias).copy()))
    small.meta["keep"] = keep.copy()  # every unit kept as it was (see quotient)
    return small


__all__ = ["GatedNet", "Aligned", "GatedBlocks", "aligned", "exact_blocks", "merge_path", "quotient", "repair",
           "reduce_and_repair", "select", "unit_values", "masses", "odd"]
