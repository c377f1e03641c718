"""The merge path: one agglomerative merge sequence per hidden layer (method.md §8.2-8.3).

Blocks are built by Ward (default) or complete-linkage agglomeration of *aligned* incoming rows,
up to the activation's exact symmetry (tanh, identity: negation; sigmoid: h -> 1 - h; ReLU family:
positive scaling). Merges are nested, so one pass gives every partition: a cut by eps, by
widths or by a parameter budget costs a replay of the first merges, never a new clustering.

What eps means (backward mode). A hidden layer's neuron i has aligned row a_i (its incoming row
and bias, times its orientation s_i, divided by its scale c_i: the row norm for ReLU-like
activations, else 1) and mass m_i = (c_i ||v_i||)^2 E[phi'(z_i)^2] (v_i its outgoing column, phi' the
activation's slope at the neuron's pre-activations on the probes). Replacing every row
of a block by the mass-weighted mean row changes the next layer's pre-activations by

    dz' = sum_i v_i s_i c_i (phi(a_B . x) - phi(a_i . x)),   x = [layer inputs; 1]

and, to first order (phi(a_B . x) - phi(a_i . x) ~ phi'(z_i) (a_B - a_i) . x) with the neurons' errors
uncorrelated, E||dz'||^2 = J with

    J = sum_i m_i (a_i - a_B)^T C (a_i - a_B),   C = E[x x^T]

on the probe inputs (calibration data, else 512 standard-normal pseudo-inputs). Ward
agglomeration of the rows in the metric of C with masses m_i minimises exactly this J, and its
merge costs add up to it. ``eps`` is ``sqrt(J)`` (the slope is in the masses already, so no
Lipschitz factor on top); with ``relative=True`` divided by the RMS norm of the next layer's
pre-activations on the same inputs (eps = 0.1: about 10 %). It is an estimate; the worst case
(correlated errors, by Cauchy-Schwarz) is at most sqrt(width) times larger.
:class:`~afde_nb.compress.Compression` reports the measured error next to it. Complete linkage:
eps = sum_i sqrt(m_i) * the largest block diameter (in the metric of C), the same first-order
estimate with every error at the diameter. eps = 0 cuts only merges of cost zero: exact
equivalences, symmetries included.

Forward mode clusters the neurons by their effect downstream: aligned outgoing columns s_i c_i v_i
with masses rms(h_i), starting from the exact (backward) blocks so eps = 0 stays exact. Its eps is
the matching bound on the column part alone: RMS ||sum_i (f_i - f_B) h_i|| <= sqrt(R * J).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import _core
from .partition import Partition
from .network import (HOMOGENEOUS, ODD, SELU_ALPHA, SELU_SCALE, Network, apply_activation, column_map,
                      engine_layer, non_finite_error, unit_norms)

LINKAGES = ("ward", "complete")
#: symmetries the exact step may use, per activation (ReLU family: positive scaling only)
SIGNED = ("identity", "tanh", "sigmoid")
PROBES = 512
#: rows equal to this relative precision are exact equivalents: a few ulps of the model's dtype
#: (float64 models: 1e-12)
EXACT_REL = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}
RIDGE = 1e-8


def slope(z: np.ndarray, activation: str, negative_slope: float = 0.01, params: tuple = ()) -> np.ndarray:
    """phi'(z), element-wise (phi: :func:`~afde_nb.core.network.apply_activation`; 0 where phi is flat)."""
    p = dict(params)
    if activation == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if activation == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if activation == "relu":
        return (z > 0).astype(float)
    if activation == "leaky_relu":
        return np.where(z >= 0, 1.0, negative_slope)
    f = _SLOPES.get(activation)
    if f is None:
        return np.ones_like(z)
    with np.errstate(over="ignore", under="ignore"):
        return f(np.asarray(z), p)


def _expit(z):
    from scipy.special import expit

    return expit(z)


def _gelu_slope(z, p):
    """The exact form's slope also for the tanh approximation (a weight, not a value); 0 where clipped."""
    from scipy.special import erf

    d = 0.5 * (1.0 + erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z ** 2) / np.sqrt(2.0 * np.pi)
    if "min" in p:
        h = apply_activation(z, "gelu", params=tuple(p.items()))
        d = np.where((h > p["min"]) & (h < p["max"]), d, 0.0)
    return d


def _mish_slope(z, p):
    t = np.tanh(np.where(z > 20.0, z, np.logaddexp(0.0, z)))
    return t + z * (1.0 - t ** 2) * _expit(z)


def _silu_slope(z, p):
    beta = p.get("beta", 1.0)
    s = _expit(beta * z)
    return s * (1.0 + beta * z * (1.0 - s))


def _inside(z, lo, hi):
    return ((z > lo) & (z < hi)).astype(float)


#: name -> phi'(z, params) for the activations beyond the polynomial ODE's
_SLOPES = {
    "gelu": _gelu_slope,
    "silu": _silu_slope,
    "elu": lambda z, p: np.where(z > 0, 1.0, p.get("alpha", 1.0) * np.exp(np.minimum(z, 0.0))),
    "softplus": lambda z, p: np.where(p.get("beta", 1.0) * z > p.get("threshold", 20.0), 1.0,
                                      _expit(p.get("beta", 1.0) * z)),
    "hardtanh": lambda z, p: _inside(z, p.get("min_val", -1.0), p.get("max_val", 1.0)),
    "hardswish": lambda z, p: np.where(z >= 3.0, 1.0, np.where(z > -3.0, (2.0 * z + 3.0) / 6.0, 0.0)),
    "hardsigmoid": lambda z, p: _inside(z, -3.0, 3.0) / 6.0,
    "mish": _mish_slope,
    "selu": lambda z, p: SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0.0))),
    "celu": lambda z, p: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0) / p.get("alpha", 1.0))),
    "logsigmoid": lambda z, p: _expit(-z),
    "softsign": lambda z, p: 1.0 / (1.0 + np.abs(z)) ** 2,
    "tanhshrink": lambda z, p: np.tanh(z) ** 2,
    "hardshrink": lambda z, p: (np.abs(z) > p.get("lambd", 0.5)).astype(float),
    "softshrink": lambda z, p: (np.abs(z) > p.get("lambd", 0.5)).astype(float),
    "threshold": lambda z, p: (z > p["threshold"]).astype(float),
    "relu2": lambda z, p: 2.0 * np.maximum(z, 0.0),
    "laplace": lambda z, p: np.exp(-0.5 * ((z - p["mu"]) / p["sigma"]) ** 2) / (p["sigma"] * np.sqrt(2.0 * np.pi)),
    "sqrt_softplus": lambda z, p: _expit(z) / (2.0 * np.sqrt(np.maximum(apply_activation(z, "softplus"), 1e-300))),
    "xielu": lambda z, p: np.where(z > 0, 2.0 * p["alpha_p"] * z + p["beta"],
                                   p["alpha_n"] * (np.where(z < p["eps"], np.exp(np.minimum(z, p["eps"])), 0.0) - 1.0)
                                   + p["beta"]),
}


@dataclass
class Source:
    """How a layer's inputs relate to the original source neurons: neuron k of the source layer
    equals ``signs[k] * scales[k] * u_{labels[k]}`` (sigmoid with sign -1: ``1 - u``), u the
    reduced neurons."""

    labels: np.ndarray
    signs: np.ndarray
    scales: np.ndarray
    activation: str = "identity"

    @staticmethod
    def inputs(n: int) -> "Source":
        return Source(np.arange(n), np.ones(n, dtype=np.int64), np.ones(n))

    def expand(self, taps: int) -> "Source":
        """The same relation per weight column of a layer with ``taps`` columns per unit
        (a convolution's kernel positions): column (k, t) belongs to block (labels[k], t)."""
        if taps == 1:
            return self
        lab = (self.labels[:, None] * taps + np.arange(taps)).reshape(-1)
        return Source(lab, np.repeat(self.signs, taps), np.repeat(self.scales, taps), self.activation)


def incoming(weight: np.ndarray, bias: np.ndarray, src: Source, taps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A layer's (row, bias) against the reduced source neurons: R_iB = sum_{k in B} W_ik s_k c_k;
    a sigmoid source with s_k = -1 (h_k = 1 - u_B) also moves W_ik into the bias. ``taps``:
    weight columns per source neuron (see :attr:`~afde_nb.core.network.Layer.taps`)."""
    src = src.expand(taps)
    k = int(src.labels.max()) + 1 if src.labels.size else 0
    coef = src.signs * src.scales
    if k == src.labels.size and np.array_equal(src.labels, np.arange(k)) and np.all(coef == 1.0):
        R = np.asarray(weight, dtype=np.float64)
    else:
        R = block_sums(weight * coef, src.labels, k, axis=1)
    b = np.asarray(bias, dtype=np.float64)
    if src.activation == "sigmoid" and np.any(src.signs < 0):
        b = b + weight[:, src.signs < 0].sum(axis=1)
    return R, b


def block_sums(A: np.ndarray, labels: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of the slices of ``A`` along ``axis`` per block 0..k-1 (none empty): one stable sort and
    ``np.add.reduceat``, O(A.size) (``np.add.at`` is several times slower)."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(k))
    return np.add.reduceat(np.take(A, order, axis=axis), starts, axis=axis)


def aligned(R: np.ndarray, b: np.ndarray, activation: str, signs: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Aligned rows a_i = s_i (R_i, b_i) / c_i and scales c_i (row norm for ReLU-like, else 1;
    a zero row keeps c_i = 0 and a_i = 0: the neuron is constant zero)."""
    A = np.column_stack([R, b])
    if activation in HOMOGENEOUS:
        c = np.linalg.norm(A, axis=1)
        A = A / np.where(c > 0, c, 1.0)[:, None]
    else:
        c = np.ones(len(A))
    if signs is not None:
        A = A * signs[:, None]
    return A, c


def symmetric(layer) -> bool:
    """Whether the activation has the exact symmetry the merge path may use: odd (tanh, identity,
    a hardtanh with min_val = -max_val, softsign, tanhshrink, hard- and softshrink) or sigmoid's
    h -> 1 - h. Positive scaling (ReLU family) is handled by the scales instead. None of the others
    has one (GELU, SiLU, Mish, Hardswish, ... are not odd; hardsigmoid's h -> 1 - h is not used)."""
    if layer.activation == "hardtanh":
        p = dict(layer.act_params)
        return p.get("min_val", -1.0) == -p.get("max_val", 1.0)
    return layer.activation in SIGNED or layer.activation in ODD


def probe_inputs(net: Network, calibration: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """The inputs the bounds and the data-free repair use: calibration data, else standard-normal
    pseudo-inputs (the distribution of standardised inputs)."""
    if calibration is not None and len(calibration):
        return np.asarray(calibration, dtype=np.float64)
    return np.random.default_rng(seed).standard_normal((PROBES, net.widths[0]))


class LayerPath:
    """One hidden layer's merge sequence: ``pairs[t]`` joins the blocks of two neurons, the second
    oriented by ``signs[t]``; ``bounds[m]`` is eps's bound after the first m merges (0 for the
    ``exact`` first merges of cost zero); ``weights`` are the masses of the merged rows.

    The exact merges are known at once; the rest (probes, metric, agglomeration) is built on first
    use, so ``eps = 0`` never pays for the agglomeration."""

    def __init__(self, n: int, exact_pairs: np.ndarray, exact_signs: np.ndarray, activation: str, build=None):
        self.n, self.activation = n, activation
        self.exact = len(exact_pairs)
        self._exact = (np.asarray(exact_pairs, dtype=np.int64).reshape(-1, 2), np.asarray(exact_signs, dtype=np.int64))
        self._build = build
        self._full: tuple | None = None

    @property
    def built(self) -> bool:
        return self._full is not None

    def _get(self) -> tuple:
        if self._full is None:
            self._full = self._build()
            self._build = None  # drop what it captured
        return self._full

    pairs = property(lambda self: self._get()[0])
    signs = property(lambda self: self._get()[1])
    heights = property(lambda self: self._get()[2])
    bounds = property(lambda self: self._get()[3])
    weights = property(lambda self: self._get()[4])

    @property
    def to_centred(self) -> float:
        """What turns this layer's bounds into its output-level first-order error (issue 30):
        ``bound * to_centred`` is sqrt(J) over the *centred* RMS of the consumer's outputs on the
        probes (the bounds' own denominator, with ``relative=True``, is their uncentred RMS, which
        a large mean inflates: 2.84x on the digits CNN's fc1). 1 where the build did not record
        the spreads (a builder of another kind)."""
        full = self._get()
        if len(full) < 6:
            return 1.0
        denom, spread = full[5].get("denom", 1.0), full[5].get("spread", 0.0)
        return denom / spread if spread > 0 else 1.0

    def centred(self, m: int) -> float:
        """The bound after m merges over the consumer's centred spread (see :attr:`to_centred`)."""
        return 0.0 if m <= self.exact else self.bound(m) * self.to_centred

    def bound(self, m: int) -> float:
        return 0.0 if m <= self.exact else float(self.bounds[min(int(m), self.n - 1)])

    def cut(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, orientations) after the first m merges: n - m blocks."""
        m = int(min(max(m, 0), max(self.n - 1, 0)))
        if m <= self.exact:
            return _core.replay(self.n, *self._exact, m)
        return _core.replay(self.n, self.pairs, self.signs, m)

    def merges_within(self, eps: float) -> int:
        """How many merges keep the bound <= eps (eps = 0: the exact ones)."""
        if eps <= 0:
            return self.exact
        return max(self.exact, int(np.searchsorted(self.bounds, eps, side="right")) - 1)


@dataclass
class MergePath:
    """The merge sequences of every hidden layer of ``net`` (see the module docstring)."""

    net: Network
    layers: list[LayerPath]
    mode: str
    method: str
    relative: bool
    symmetry: bool
    calibrated: bool = False
    meta: dict = field(default_factory=dict)
    probes: "_Probes | None" = field(default=None, repr=False, compare=False)

    def build(self, workers: int = 1) -> "MergePath":
        """Build every layer's agglomeration now. ``workers=2`` builds two layers at a time in
        threads (each chain is serial, so a second layer's Gram product and chain can overlap the
        first's; the result is the same). The default is one at a time: a Ward layer's work buffer
        is ~2.6 layer buffers (float64, width 4096: 168 MB), so two at once take the peak memory of
        ``compress`` from the reduced model + 32 MB to + 290 MB (w4096 x 6), and on this
        project's two loaded cores they were not faster (docs/performance.md §8.6)."""
        todo = [lp for lp in self.layers if not lp.built]
        workers = min(len(todo), max(1, min(int(workers), os.cpu_count() or 1)))
        pool = self.probes is not None and len(todo) > 1
        if pool:
            self.probes.pooling = True  # the layers share Ward's work buffers while this runs
        try:
            if workers <= 1:
                for lp in todo:
                    lp._get()
            else:
                with ThreadPoolExecutor(workers) as ex:
                    list(ex.map(LayerPath._get, todo))
        finally:
            if pool:
                self.probes.release()
        return self

    def partition(self, eps: float, scale: list[float] | None = None):
        """The per-layer cut at eps: every layer keeps the merges whose own bound is at most eps
        (eps * scale[h] when ``scale`` is given). Not ``compress(model, eps)``'s cut, where eps is
        the output-level estimate (issue 30, :func:`afde_nb.pipeline.estimate.within`) on a relative
        path; the same with ``relative=False``."""
        if eps > 0:
            self.build()
        ms = [lp.merges_within(eps * (1.0 if scale is None else scale[h])) for h, lp in enumerate(self.layers)]
        return self.partition_at(ms, eps)

    @property
    def ties(self) -> tuple:
        """Hidden layers that keep one width (:class:`~afde_nb.core.tie.Tie` over layer indices: the
        net's ``tied_layers``, the experts of a bank stored fused); () for most nets."""
        return tuple(getattr(self.net, "tied_layers", ()) or ())

    def tied(self, merges: list[int]) -> list[int]:
        """``merges`` with each tie's lossy merges below the tie's width left out: a tie is held at
        its widest layer's width (aligned; :class:`~afde_nb.core.tie.Tie`), its narrower layers
        zero-padded and counted so, so such a merge saves nothing and only adds error. Exact merges
        stay (they cost nothing). Unchanged without ties."""
        out = [int(m) for m in merges]
        for t in self.ties:
            width = t.width({h: self.layers[h].n - out[h] for h in t.members})
            for h in t.members:
                out[h] = min(out[h], max(self.layers[h].exact, self.layers[h].n - width))
        return out

    def _rounds(self, tie, scale: list[float] | None) -> list[tuple[float, int]]:
        """A tie's merges as (bound, layer) events in rounds: each round narrows the tie's largest
        width by one, one merge in every layer at that width, all at the round's bound (the largest
        of its layers' (scaled) bounds), so the global order reaches equal widths together."""
        tie = tie.members
        m = {h: self.layers[h].exact for h in tie}
        width = max(self.layers[h].n - m[h] for h in tie)
        out = []
        while width > 1:
            width -= 1
            step = [h for h in tie if self.layers[h].n - m[h] > width]
            for h in step:
                m[h] += 1
            key = max(self.layers[h].bound(m[h]) / (1.0 if scale is None else scale[h]) for h in tie)
            out += [(key, h) for h in step]
        return out

    def partition_at(self, merges: list[int], eps: float | None = None):
        merges = self.tied(merges)
        labels, signs, used = [], [], []
        for lp, m in zip(self.layers, merges):
            lab, s = lp.cut(m)
            labels.append(np.asarray(lab))
            signs.append(np.asarray(s))
            used.append(lp.bound(m))
        e = max(used, default=0.0) if eps is None else float(eps)
        # exact blocks hold equal rows: their masses do not matter (None: reduce's default), and
        # the result must not depend on whether the layer was built already
        weights = tuple(lp.weights if m > lp.exact else None for lp, m in zip(self.layers, merges))
        return Partition(tuple(labels), self.mode, e, self.relative, tuple(used), method=self.method,
                         signs=tuple(signs), weights=weights)

    def _events(self, scale: list[float] | None = None) -> list[int]:
        """The layer of each merge beyond the exact ones, in the global order of (scaled) bounds."""
        self.build()
        if not self.layers:
            return []
        # one stable sort of every (scaled) bound, ties in insertion order (the ties' rounds, then
        # each free layer in order): the order a stable sort of (bound, layer) pairs by bound gives,
        # without a Python tuple per merge (a calibrated budget asks for it once per candidate
        # split: 0.2 s each on a 4-layer LLaMA's 4,096 units)
        tied = {h for t in self.ties for h in t.members}
        rounds = [ev for t in self.ties for ev in self._rounds(t, scale)]
        values = [np.array([b for b, _ in rounds], dtype=np.float64)]
        layer = [np.array([h for _, h in rounds], dtype=np.int64)]
        for h, lp in enumerate(self.layers):
            if h not in tied:
                values.append(np.asarray(lp.bounds)[lp.exact + 1:lp.n] / (1.0 if scale is None else scale[h]))
                layer.append(np.full(len(values[-1]), h, dtype=np.int64))
        return np.concatenate(layer)[np.argsort(np.concatenate(values), kind="stable")].tolist()

    def sequence(self, scale: list[float] | None = None) -> list[list[int]]:
        """All partitions ordered by eps, one merge at a time: the merge counts per layer after
        each step of the global order of (scaled) bounds. Every budget lies on it."""
        cur = [lp.exact for lp in self.layers]
        out = [list(cur)]
        for h in self._events(scale):
            cur[h] += 1
            out.append(list(cur))
        return out

    def first_order(self, merges: list[int]) -> float:
        """The first-order estimate of the model output's relative RMS error after these merges
        (issue 30; docs/method.md, "What eps means"): each layer's bound over the centred
        spread of its consumer's outputs (:meth:`LayerPath.centred`), a layer's relative error
        taken to reach the output unchanged, and the layers' errors combined as uncorrelated
        (root of the sum of squares). 0 with exact merges only."""
        merges = self.tied(merges)
        if any(m > lp.exact for lp, m in zip(self.layers, merges)):
            self.build()
        return float(np.sqrt(sum(lp.centred(m) ** 2 for lp, m in zip(self.layers, merges))))

    def eps_of(self, merges: list[int], scale: list[float] | None = None) -> float:
        """The smallest eps whose cut has at least these merges in every layer."""
        merges = self.tied(merges)
        return max((lp.bound(m) / (1.0 if scale is None else scale[h])
                    for h, (lp, m) in enumerate(zip(self.layers, merges))), default=0.0)

    def params_at(self, merges: list[int]) -> int:
        return self.net.num_params_with([lp.n - m for lp, m in zip(self.layers, merges)])

    def for_params(self, target: int, scale: list[float] | None = None) -> list[int]:
        """Fewest merges along the (scaled) eps order whose network has at most ``target`` params.
        Every merge removes a unit, so the count falls along the order: the first step within the
        budget is found by bisection (a deep model's order has thousands of steps, and a calibrated
        budget asks for it once per candidate split)."""
        got = self.first_within(np.asarray(self._events(scale), dtype=np.int64), target)
        if got is not None:
            return got
        from ..errors import BudgetUnreachableError

        raise BudgetUnreachableError(
            f"target_params={target} is below {self.params_at([lp.n - 1 for lp in self.layers])}, "
            "the size with one neuron per hidden layer")

    def first_within(self, events: np.ndarray, target: int) -> list[int] | None:
        """Merges per layer after the fewest of ``events`` (layer indices, in merge order, after
        the exact merges) whose network has at most ``target`` parameters, by bisection (the count
        falls with every merge); None where even all of them leave more."""
        exact = np.array([lp.exact for lp in self.layers], dtype=np.int64)

        def at(k: int) -> list[int]:
            return (exact + np.bincount(events[:k], minlength=len(exact))).tolist()

        lo, hi = 0, len(events)
        if self.params_at(at(hi)) > target:
            return None
        while lo < hi:  # the first k within the budget: params_at(at(k)) <= target
            mid = (lo + hi) // 2
            if self.params_at(at(mid)) <= target:
                hi = mid
            else:
                lo = mid + 1
        return at(lo)

    def uniform(self, target: int) -> list[int]:
        """Merge counts keeping the same fraction of every hidden layer (as folding does), the
        most neurons within ``target`` parameters."""
        n = [lp.n for lp in self.layers]
        lo = [lp.exact for lp in self.layers]
        for keep in np.linspace(1.0, 0.0, 1001):
            ms = [min(max(nn - max(1, int(round(keep * nn))), e), nn - 1) for nn, e in zip(n, lo)]
            if self.params_at(ms) <= target:
                return ms
        return self.for_params(target)

    def curve(self, points: int = 64) -> list[tuple[float, float]]:
        """(per-layer eps, fraction of parameters kept) along the path; ``Compression.curve`` gives
        the same cuts against eps as ``compress`` reads it (what the panel's slider moves through)."""
        seq = self.sequence()
        full = self.net.num_params
        idx = np.unique(np.linspace(0, len(seq) - 1, min(points, len(seq))).round().astype(int))
        return [(float(self.eps_of(seq[i])), self.params_at(seq[i]) / full) for i in idx]


def merge_path(net: Network, *, method: str = "ward", mode: str = "backward", relative: bool = True,
               symmetry: bool = True, calibration: np.ndarray | None = None, threads: int = 0,
               inputs=None, approx: int | None = None) -> MergePath:
    """The merge path of ``net`` (checked finite): exact blocks at once, one pass over the hidden
    layers; each layer's agglomeration on first use beyond its exact merges.

    ``inputs``: a callable returning every layer's inputs on the probes (the original network's;
    a convolution's as patch rows of ``in * taps`` values), for a network that is part of a larger
    model; default: ``net`` run on the calibration (else pseudo-) inputs.

    ``approx``: None (default) builds the path above. An int r builds an *approximate* path for
    speed at scale: the masses, the metric and the relative denominator come from r probe rows (a
    seeded subsample of the calibration rows or of each layer's ``inputs``, else the first r of
    the pseudo-inputs), computed in float32; the probes' forward and the Gram products then take
    about r / 512 of their time (the chain does not shrink). Fewer probes estimate the metric
    worse: partitions can cost more error. The exact blocks (eps = 0) are decided on the rows as
    always.
    Recorded in ``MergePath.meta["approx"]``; docs/performance.md §8 measures what it costs."""
    from ..errors import InvalidArgumentError

    if method not in LINKAGES:
        raise InvalidArgumentError(f"merge paths are built by {LINKAGES}, got method={method!r}")
    if approx is not None and (isinstance(approx, bool) or not isinstance(approx, (int, np.integer)) or approx < 2):
        raise InvalidArgumentError(f"approx must be None or a number of probe rows >= 2, got {approx!r}")
    if inputs is not None:
        ins = _Probes(net, lambda: [_fewer(x, approx) for x in inputs()] if approx else inputs(), approx, given=True)
    else:
        ins = _Probes(net, lambda: (_fewer(probe_inputs(net, calibration), approx, calibration is None) if approx
                                    else probe_inputs(net, calibration)), approx)
    src = Source.inputs(net.widths[0])
    layers: list[LayerPath] = []
    for h, layer in enumerate(net.hidden):
        n = layer.out_features
        act = layer.activation
        # a flipped sigmoid moves its column into the next layer's bias, which must exist; not into
        # a convolution's: its zero padding would not see the flipped 1 - u
        nxt = net.layers[h + 1]
        signed = symmetry and symmetric(layer) and (act != "sigmoid" or (nxt.has_bias and nxt.taps == 1)) \
            and h not in net.meta.get("unsigned", ())
        lab0, s0, c = _exact_layer(net, h, src, signed, threads)
        e_pairs, e_signs = _exact_merges(lab0, s0)
        build = _builder(net, h, src, c, lab0, s0, e_pairs, e_signs, signed, ins, method, mode, relative, threads)
        layers.append(LayerPath(n, e_pairs, e_signs, act, build))
        lab, s = _core.replay(n, e_pairs, e_signs, len(e_pairs))
        src = Source(np.asarray(lab), np.asarray(s) if signed else np.ones(n, dtype=np.int64), c, act)
    # the engine's first pass checked every hidden layer; the output layer is checked here
    net.check_finite(layers=[len(net.layers) - 1])
    net.finite_checked = net.readonly()
    meta = {"approx": int(approx)} if approx else {}
    return MergePath(net, layers, mode, method, bool(relative), bool(symmetry), calibration is not None, meta, ins)


def merge_bounds(ht: np.ndarray, mass: np.ndarray, exact: int, method: str) -> np.ndarray:
    """The (unscaled) bound after each merge of a backward path from the agglomeration's heights
    ``ht`` (after ``exact`` free merges): Ward's sqrt of the cumulated cost J, complete linkage's
    sum of sqrt(masses) times the diameter (see the module docstring). Every group kind's path
    (gated and inverted-residual units too) turns its heights into bounds this one way."""
    if method == "ward":
        return np.sqrt(np.maximum(np.concatenate([[0.0], np.zeros(exact), np.cumsum(ht)]), 0.0))
    return np.sqrt(mass).sum() * np.concatenate([[0.0], np.zeros(exact), ht])


def units_path(T: np.ndarray, mu: np.ndarray, y: np.ndarray, lab0: np.ndarray, e_pairs: np.ndarray,
               e_signs: np.ndarray, *, method: str, relative: bool, signed: bool, threads: int, approx,
               orient: np.ndarray | None = None) -> tuple:
    """A one-layer path of units seen as their values ``T`` (units x probes, over sqrt(N)) with
    Ward masses ``mu``, after the exact blocks ``lab0`` (merges ``e_pairs``, ``e_signs``): the
    engine's agglomeration, its bounds (:func:`merge_bounds`) relative to the RMS norm of the
    layer's outputs ``y`` on the same probes where ``relative``; ``orient``: each unit's orientation
    in ``T`` (the merge signs are returned relative to the raw units). The gated and the
    inverted-residual kinds share it; returns what a :class:`LayerPath` builds."""
    mu = np.maximum(mu, 1e-12 * max(float(mu.max(initial=0.0)), 1e-300))
    denom = float(np.sqrt(np.mean(np.sum(y ** 2, axis=1)))) if relative and len(y) else 1.0
    denom = denom if denom > 0 else 1.0
    spread = centred_rms(y)
    exact = len(e_pairs)
    if approx:
        T = T.astype(np.float32)
    p2, s2, ht = _core.agglomerate(T, mu, lab0, np.ones(len(lab0), dtype=np.int64), method, signed, threads,
                                   bool(approx), None)
    ht = np.asarray(ht, dtype=np.float64)
    bounds = merge_bounds(ht, mu, exact, method) / denom
    p2 = np.asarray(p2, dtype=np.int64).reshape(-1, 2)
    s2 = np.asarray(s2, dtype=np.int64)
    if orient is not None:
        s2 = s2 * orient[p2[:, 0]] * orient[p2[:, 1]]
    pairs = np.concatenate([e_pairs, p2]).astype(np.int64).reshape(-1, 2)
    sg = np.concatenate([e_signs, s2]).astype(np.int64)
    bounds[: exact + 1] = 0.0
    return (pairs, sg, np.concatenate([np.zeros(exact), ht]), np.maximum.accumulate(bounds), mu,
            {"denom": denom, "spread": spread})


def centred_rms(y: np.ndarray) -> float:
    """sqrt(mean over rows of ||y - mean(y)||^2): the RMS norm of a layer's outputs about their
    mean over the probe rows (0 without rows)."""
    if not len(y):
        return 0.0
    y = np.asarray(y)
    return float(np.sqrt(max(float(np.sum(np.var(y, axis=0, dtype=np.float64))), 0.0)))


def _builder(net, h, src, c, lab0, s0, e_pairs, e_signs, signed, ins, method, mode, relative, threads):
    """The rest of hidden layer h's path, built on first use (see :class:`LayerPath`)."""

    def build():
        layer, nxt = net.layers[h], net.layers[h + 1]
        n, act = layer.out_features, layer.activation
        mass = (c * unit_norms(nxt.weight, nxt.taps)) ** 2
        z = ins.pre(h)  # the original network's pre-activations on the probes
        N = len(z)
        route = _metric_route(N, n, layer, src) if mode == "backward" else None
        if route not in (None, "pre"):  # rows that read the layer's inputs: before the next forward step
            A = _metric_rows(ins.input(h), z, layer, src, act, c)
        znext = ins.pre(h + 1)  # (the forward's step to it also gives phi(z), below)
        if route == "pre":
            ins.consumed(h, inputs_only=True)  # its metric rows do not read them: they go first
        denom = float(np.sqrt(np.mean(np.sum(znext ** 2, axis=1)))) if relative else 1.0
        denom = denom if denom > 0 else 1.0
        spread = centred_rms(znext)  # the output-level estimate's denominator (issue 30)
        del znext
        if route == "pre":
            A = _metric_rows(None, z, layer, src, act, c)
        # a saturated neuron's row matters less: weight by its mean squared slope on the probes,
        # from phi(z) where the forward holds it (tanh, sigmoid): then z goes before it, so no
        # more than one probe-sized temporary lives beside the probes that later layers need and
        # the chains' work buffer (at width 1024 each is a layer's size)
        values = ins.values(h) if N and act in _FROM_VALUES else None
        early = mode == "backward" and (values is not None or not N)
        if early:
            z = None
            ins.consumed(h)
        if N:
            mass = mass * _mean_square_slope(z, layer, values)
        values = None
        mass = np.maximum(mass, 1e-12 * max(float(mass.max(initial=0.0)), 1e-300))
        if mode == "backward" and not early:
            z = None
            ins.consumed(h)  # layer h's own probes go before its chain's work buffer comes
        exact = len(e_pairs)
        ones = np.ones(n, dtype=np.int64)
        if mode == "backward":
            work = ins.take(int(lab0.max()) + 1) if method == "ward" and len(lab0) else None
            A *= s0[:, None].astype(A.dtype)  # oriented rows, in place (A is this build's own)
            p2, s2, ht = _core.agglomerate(A, mass, lab0, ones, method, signed, threads,
                                           ins.approx, work)
            ins.give(work)
            del A
            bounds = merge_bounds(ht, mass, exact, method)
        else:
            hvals = layer.apply(z)
            u = (hvals * s0 if act != "sigmoid" else np.where(s0 < 0, 1.0 - hvals, hvals)) / np.where(c > 0, c, 1.0)
            rms = np.sqrt(np.mean(u ** 2, axis=0)) if len(u) else np.ones(n)
            rms = np.maximum(rms, 1e-12 * max(float(rms.max(initial=0.0)), 1e-300))
            # oriented outgoing columns (all taps of a unit) as rows
            F = nxt.weight.reshape(len(nxt.weight), n, nxt.taps).transpose(1, 0, 2).reshape(n, len(nxt.weight) * nxt.taps)
            F = F * (s0 * c)[:, None]
            p2, s2, ht = _core.agglomerate(F, rms, lab0, ones, method, signed, threads)
            if method == "ward":
                bounds = np.sqrt(np.maximum(rms.sum() * np.concatenate([[0.0], np.zeros(exact), np.cumsum(ht)]), 0.0))
            else:
                bounds = rms.sum() * np.concatenate([[0.0], np.zeros(exact), ht])
        bounds = bounds / denom
        p2 = p2.reshape(-1, 2)
        s2 = s2 * s0[p2[:, 0]] * s0[p2[:, 1]]  # block orientations -> the representatives' own
        pairs = np.concatenate([e_pairs, p2]).astype(np.int64).reshape(-1, 2)
        sg = np.concatenate([e_signs, s2]).astype(np.int64)
        ht = np.concatenate([np.zeros(exact), ht])
        bounds[: exact + 1] = 0.0
        ins.done(h)
        return pairs, sg, ht, np.maximum.accumulate(bounds), mass, {"denom": denom, "spread": spread}

    return build


def _metric_route(N: int, n: int, layer, src: Source) -> str:
    """How :func:`_metric_rows` makes hidden layer ``layer``'s rows (n units, N probe rows):
    ``"pre"``, ``"through"`` or ``"cholesky"``.

    The rows seen through the probes, A Ua^T / sqrt(N) (n x N), carry the metric exactly
    (e^T C e = ||Ua e||^2 / N; no ridge needed: nothing is factorised). They are the route with
    fewer probes than inputs d, and for a convolution's patch rows wherever they cost less than the
    Cholesky route (N d^2 / 2 + d^3 / 3 + n d^2 multiply-adds, then the chain's Gram n^2 d): there
    n << d (a 3 x 3 kernel: d = 9 in + 1), so the chain's Gram n^2 N costs little. Where no source
    merged they are the pre-activations themselves (``"pre"``: R u = W h, bias included, to
    rounding), which the probes' forward computed already: no n x d x N product, and the layer's
    inputs are not read."""
    N = max(N, 1)
    d = (int(src.labels.max()) + 1 if src.labels.size else 0) * layer.taps + 1
    cholesky = N * d * d / 2 + d ** 3 / 3 + n * d * d + n * n * d
    plain = np.array_equal(src.labels, np.arange(src.labels.size))
    if N < d or (layer.taps > 1 and n * n * N + (0 if plain else n * d * N) < cholesky):
        return "pre" if plain else "through"
    return "cholesky"


def _metric_rows(Hh: np.ndarray | None, z: np.ndarray, layer, src: Source, act: str, c: np.ndarray) -> np.ndarray:
    """The aligned rows in the metric of the layer's inputs: ||e||_C^2 = e^T C e, C the second
    moment of the (reduced-exact) augmented inputs, with a tiny ridge on the Cholesky route
    (exactness is decided on the raw rows); the route is :func:`_metric_route`'s. ``Hh``: the
    layer's inputs on the probes (N x in; not read on the route ``"pre"``, may be None there)."""
    N = max(len(z), 1)
    route = _metric_route(len(z), z.shape[1], layer, src)
    if route == "pre":
        scale = 1.0 / (np.where(c > 0, c, 1.0) * np.sqrt(N))
        return np.multiply(z.T, scale[:, None], out=np.empty(z.T.shape, dtype=np.result_type(z, scale)))
    R, b = incoming(layer.weight, layer.bias, src, layer.taps)
    A, _ = aligned(R, b, act)
    del R, b
    U = _reduced_values(Hh, src.expand(layer.taps))
    Ua = np.column_stack([U, np.ones(len(U))])
    if route == "through":
        return (A @ Ua.T) / np.sqrt(N)
    Cm = Ua.T @ Ua / N
    Cm[np.diag_indices_from(Cm)] += RIDGE * max(float(np.trace(Cm)) / max(len(Cm), 1), 1e-300)
    return A @ np.linalg.cholesky(Cm)  # e^T C e = ||e L||^2 with C = L L^T


#: activations whose slope :func:`_mean_square_slope` takes from phi(z): 1 - phi^2, phi (1 - phi)
_FROM_VALUES = ("tanh", "sigmoid")


def _mean_square_slope(z: np.ndarray | None, layer, values: np.ndarray | None = None) -> np.ndarray:
    """E[phi'(z)^2] over the probes, per unit. ``values``: phi(z) where the forward computed it
    already (then ``z`` may be None); tanh's and sigmoid's slopes are then 1 - phi^2 and
    phi (1 - phi), the same numbers as :func:`slope` gives, without a second pass of tanh or exp
    (and in place)."""
    if values is not None and layer.activation in _FROM_VALUES:
        if layer.activation == "tanh":
            d = np.square(values)
            np.subtract(1.0, d, out=d)
        else:
            d = np.subtract(1.0, values)
            d *= values
    else:
        d = slope(z, layer.activation, layer.negative_slope, layer.act_params)
    return np.mean(np.square(d, out=d if d is not z else None), axis=0)


def _fewer(x: np.ndarray, r: int, first: bool = False) -> np.ndarray:
    """r of the probe rows (approximate paths), in float32: the first r (pseudo-inputs: the same
    draw as the first r of the full set) or a seeded subsample in the original order."""
    if r < len(x):
        x = x[:r] if first else x[np.sort(np.random.default_rng(0).choice(len(x), r, replace=False))]
    return np.asarray(x, dtype=np.float32)


class _Probes:
    """The original network on the probes, one layer at a time on demand: layer h's build needs
    the inputs and pre-activations of layers h and h + 1 only. With two builds in flight
    (:meth:`MergePath.build`) one layer's Gram product and chain run while the next forward step
    runs, instead of every build waiting for the whole forward. Each pre-activation is computed
    once (layer h's own build and layer h - 1's relative denominator share it), and what no later
    build needs is dropped (:meth:`done`). An approximate path computes in float32.

    ``make``: the probe rows (x), or with ``given`` every layer's inputs at once (a network that is
    part of a larger model)."""

    def __init__(self, net: Network, make, approx: int | None, given: bool = False):
        self.net, self._make, self.given, self.approx = net, make, given, bool(approx)
        self._lock = threading.Lock()  # builds run in parallel threads; the forward is sequential
        self._ins: dict[int, np.ndarray] = {}
        self._pre: dict[int, np.ndarray] = {}
        self._built: set[int] = set()
        self._used: set[int] = set()  # hidden layers whose builds have read their own probes
        self._started = False
        self._next = 0  # the next layer whose input the forward computes
        self._work: list[np.ndarray] = []  # Ward's buffers, reused across layers (see take)
        self.pooling = False  # set by MergePath.build while it builds several layers

    def _dtype(self, H: np.ndarray, l) -> np.dtype:
        return np.dtype(np.float32) if self.approx else np.result_type(H.dtype, l.weight.dtype)

    def _ensure(self, h: int) -> None:
        """Layer h's input and pre-activations exist (caller holds the lock)."""
        if not self._started:
            self._started = True
            if self.given:
                self._ins.update(enumerate(self._make()))
                self._next = len(self.net.layers)
            else:
                self._ins[0] = np.asarray(self._make(), dtype=np.float32 if self.approx else np.float64)
                self._next = 1
        while not self.given and self._next <= h:  # forward steps up to layer h's input
            k = self._next - 1
            self._compute_pre(k)
            self._ins[k + 1] = self.net.layers[k].apply(self._pre[k])
            self._next += 1
        if h not in self._pre:
            self._compute_pre(h)

    def _compute_pre(self, k: int) -> None:
        if k not in self._pre:
            l, H = self.net.layers[k], self._ins[k]
            dt = self._dtype(H, l)
            W, buf = l.weight, None
            fits = [i for i, b in enumerate(self._work) if b.dtype == dt and b.size >= W.size]
            if W.dtype != dt and fits:
                # a float32 layer's float64 copy, in the idle work buffer of the layers' chains
                # (see take): no fresh memory for it beside that buffer
                buf = self._work.pop(fits[0])
                W = buf[:W.size].reshape(W.shape)
                np.copyto(W, l.weight)
            self._pre[k] = np.asarray(H, dtype=dt) @ np.asarray(W, dtype=dt).T + np.asarray(l.bias, dtype=dt)
            if buf is not None:
                self._work.append(buf)

    def input(self, h: int) -> np.ndarray:
        """Layer h's inputs on the probes (N x in)."""
        with self._lock:
            self._ensure(h)
            return self._ins[h]

    def values(self, h: int) -> np.ndarray | None:
        """phi(z) of hidden layer h on the probes where the forward holds it (layer h + 1's inputs;
        not with ``given`` inputs, which are other rows), else None."""
        with self._lock:
            return None if self.given else self._ins.get(h + 1)

    def pre(self, h: int) -> np.ndarray:
        """Layer h's pre-activations on the probes (N x out)."""
        with self._lock:
            self._ensure(h)
            return self._pre[h]

    def take(self, k: int) -> np.ndarray:
        """A work buffer for Ward's chain on k blocks (``_core.agglomerate(work=...)``), reused across
        this path's layers: a fresh one costs a page fault per page on first touch (0.2 s for the
        168 MB of a 4096-neuron layer on this project's machine), a reused one nothing."""
        need = k * _core.ward_stride(k)
        with self._lock:
            for i, b in enumerate(self._work):
                if b.size >= need:
                    return self._work.pop(i)
        return np.empty(need, dtype=np.float32 if self.approx else np.float64)

    def give(self, work: np.ndarray | None) -> None:
        """Keep a work buffer for the next layer, only while :meth:`MergePath.build` builds several
        (a layer built alone on first use must not leave 168 MB behind)."""
        with self._lock:
            if work is not None and self.pooling:
                self._work.append(work)

    def release(self) -> None:
        with self._lock:
            self.pooling = False
            self._work.clear()

    def consumed(self, h: int, inputs_only: bool = False) -> None:
        """Hidden layer h's build has read its own inputs and pre-activations (its masses and metric
        rows are made; ``inputs_only``: its inputs, which its metric rows do not need): drop them
        where no other build needs them, before its chain's work buffer, the largest, is taken (at
        width 1024 the probes' arrays are a layer's size each)."""
        with self._lock:
            if inputs_only:
                if h + 1 in self._ins or self.given:
                    self._ins.pop(h, None)
                return
            self._used.add(h)
            self._drop(h)

    def done(self, h: int) -> None:
        """Hidden layer h is built: drop its inputs, and each pre-activation once both its users
        (its own layer's build, hidden layers only, and layer k - 1's denominator) are done."""
        with self._lock:
            self._built.add(h)
            self._used.add(h)
            self._drop(h)
            if len(self._built) == len(self.net.hidden):  # the path is built: it keeps no probes
                self._ins.clear()
                self._pre.clear()

    def _drop(self, h: int) -> None:
        if h + 1 in self._ins or self.given:
            self._ins.pop(h, None)
        for k in (h, h + 1):
            own = k >= len(self.net.hidden) or k in self._used
            if own and (k == 0 or k - 1 in self._built):
                self._pre.pop(k, None)


def exact_blocks(A: np.ndarray, signed: bool, rel: float, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of rows equal up to the symmetry, to relative precision ``rel`` of the largest row
    (the model dtype's rounding), and each row's orientation: rows are flipped so their first
    significant entry is positive (``signed``), then grouped by the engine at L1 threshold
    ``rel * max ||a||_1``. Decided on the rows alone, never on probe data, so eps = 0 stays exact.
    ``A``: aligned rows, bias last (float32 or float64); the engine (``_core.exact_rows``) reads them
    in place, sums in double. ``merge_path`` calls it on the layer's own weight and bias instead."""
    A = np.asarray(A)
    if len(A) == 0:
        return np.zeros(0, dtype=np.int64), np.ones(0, dtype=np.int64)
    lab, s0, _, bad = _core.exact_rows(A[:, :-1], A[:, -1], False, signed, rel, threads)
    if bad >= 0:
        from ..errors import InvalidWeightsError

        raise InvalidWeightsError(f"row {bad} holds NaN or infinite values")
    return lab, s0


def _exact_layer(net: Network, h: int, src: Source, signed: bool, threads: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, orientations, scales c) of hidden layer h's exact blocks (:func:`exact_blocks` on
    its aligned rows against the reduced source ``src``), computed by the engine on the weights in
    place (float32 stays float32; the rows are merged over the columns first, into one buffer of
    the layer's dtype, only when ``src`` merged or scaled something). The engine's first pass is
    also the finiteness check: a NaN or inf raises InvalidWeightsError naming the tensor."""
    layer = net.layers[h]
    W, b = engine_layer(layer)
    cl, cc, cf, k = column_map(src.labels, src.signs, src.scales, src.activation, layer.taps)
    if cl is not None or cc is not None or cf is not None:
        W, b = _core.merge_columns(W, b, cl, cc, cf, k, threads)
    lab, s0, c, bad = _core.exact_rows(W, b, layer.activation in HOMOGENEOUS, signed,
                                       EXACT_REL.get(net.dtype, 1e-12), threads)
    if bad >= 0:
        net.check_finite(layers=[h])  # names the tensor
        raise non_finite_error("network", h, layer, "weight or bias")  # merged rows overflowed
    return lab, s0, c


def _exact_merges(lab: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merges joining each member of an exact block to its first member (relative orientation)."""
    lab = np.asarray(lab, dtype=np.int64)
    first = np.full(int(lab.max()) + 1 if lab.size else 0, lab.size, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(lab.size))  # each block's first member (vectorised: n ~ 4096)
    rest = np.flatnonzero(first[lab] != np.arange(lab.size))  # the others, in index order
    p = np.column_stack([first[lab[rest]], rest]).astype(np.int64).reshape(-1, 2)
    return p, (s0[p[:, 0]] * s0[p[:, 1]]).astype(np.int64)


def _reduced_values(H: np.ndarray, src: Source) -> np.ndarray:
    """The reduced source neurons' values u_B (from each block's first member)."""
    k = int(src.labels.max()) + 1 if src.labels.size else 0
    first = np.zeros(k, dtype=np.int64)
    first[src.labels[::-1]] = np.arange(src.labels.size)[::-1]
    s = src.signs[first]
    c = np.where(src.scales[first] > 0, src.scales[first], 1.0)
    if k == src.labels.size and np.array_equal(first, np.arange(k)) and np.all(s == 1) and np.all(c == 1.0) \
            and src.activation != "sigmoid":
        return np.asarray(H, dtype=np.float64)  # the inputs themselves (h * 1 / 1 = h): no copy
    h = H[:, first]
    if src.activation == "sigmoid":
        return np.where(s < 0, 1.0 - h, h)
    return h * s / c
