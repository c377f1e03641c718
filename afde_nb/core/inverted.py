"""Inverted-residual channels on arrays: MobileNetV2/V3 and EfficientNet blocks.

A block ``producer conv -> act1 -> depthwise conv -> act2 -> [squeeze-excitation] -> 1x1 consumer``
has C channels; channel c is row c of the producer (its BatchNorm folded, bias ``p_c``), the
depthwise kernel c (BatchNorm folded, bias ``q_c``), row c of the SE's second layer fc2 (bias
``r_c``, its gate) and column c of the consumer and of the SE's first layer fc1 (both read it):

    u_c = act1(P_c * x + p_c),   h_c = act2(K_c (*) u_c + q_c),   s = mean_{H,W} h,
    g_c = gate(F2_c . act_se(F1 s + f1) + r_c),   o_c = h_c g_c,   y = V o + b

(``*``: a convolution over every input channel, ``(*)``: channel c's own k x k kernel; no SE:
``g_c = 1``). What follows (docs/method.md, "Inverted-residual channels"):

* **Exact blocks** (eps = 0 keeps the function): channels with equal producer rows (+bias), equal
  depthwise kernels (+bias) and equal fc2 rows (+bias) compute the same values ``o_c`` everywhere;
  they merge into one channel whose consumer and fc1 columns are the members' sums (the SE's mean
  sees the merged channel once per member, so ``F1 s`` is unchanged). A *silent* channel (zero
  consumer column and zero fc1 column) computes nothing anyone reads: it joins the first live
  channel's block with weight 0, i.e. it is removed.
* **The merge path** (eps > 0): Ward agglomeration by the engine (``_core.agglomerate``) of each
  channel's values ``o_c / sqrt(P)`` at P sampled output positions of the probe images (computed
  with the original gates), masses ``mu_c = ||V_c||^2``. Ward's cost is, to first order and with
  the channels' errors taken as uncorrelated (as for the other groups), the mean squared change
  of the consumer's output; ``eps = sqrt(J)``, with ``relative=True`` over that output's RMS. The
  SE path (a merged channel's changed values moving the mean ``s`` and so every gate) is
  neglected at first order.
* **The quotient**: a block's channel has the mass-weighted mean producer row, depthwise kernel and
  fc2 row (biases included) and the summed consumer and fc1 columns; a block with one live member
  keeps that channel bit for bit.
* **Repair**: the consumer (1x1) refit by :func:`afde_nb.core.repair._fit` on the sampled
  positions, reduced channel values -> the original consumer output, where a merge was lossy.

Everything is numpy: convolutions as sums of shifted, padded slices (one per kernel tap).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import _core
from ..errors import InvalidArgumentError, ShapeMismatchError
from .network import Layer, Network, finite, non_finite_error
from .path import EXACT_REL, LINKAGES, LayerPath, MergePath, block_sums, units_path
from .repair import LOSSY, RIDGE, _fit

#: output positions sampled from the probe images for the values, the bounds and the repair
POSITIONS = 4096
#: pseudo images (standard-normal maps) when there are no data, and their output side
PSEUDO_IMAGES, PSEUDO_SIDE = 8, 8


@dataclass(frozen=True)
class Geometry:
    """A convolution's (kernel, stride, padding, dilation), each (rows, columns)."""

    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    #: explicit zero padding before the convolution (top, bottom, left, right): TensorFlow's
    #: asymmetric "same" padding written as an ``F.pad`` (Hugging Face's MobileNetV2)
    pre: tuple = (0, 0, 0, 0)

    def _sides(self) -> tuple[int, int]:
        return self.pre[0] + self.pre[1], self.pre[2] + self.pre[3]

    def out(self, h: int, w: int) -> tuple[int, int]:
        return tuple((s + e + 2 * p - d * (k - 1) - 1) // st + 1 for s, e, k, st, p, d in zip(
            (h, w), self._sides(), self.kernel, self.stride, self.padding, self.dilation))

    def size_in(self, h: int, w: int) -> tuple[int, int]:
        """An input size whose output is (h, w)."""
        return tuple((o - 1) * st + d * (k - 1) + 1 - 2 * p - e for o, e, k, st, p, d in zip(
            (h, w), self._sides(), self.kernel, self.stride, self.padding, self.dilation))


def _taps(x: np.ndarray, g: Geometry):
    """(i, j, the input slice tap (i, j) reads at every output position) of a zero-padded conv."""
    ph, pw = g.padding
    t, b, l, r = g.pre
    h0, w0 = x.shape[2], x.shape[3]
    if ph or pw or any(g.pre):
        x = np.pad(x, ((0, 0), (0, 0), (ph + t, ph + b), (pw + l, pw + r)))
    ho, wo = g.out(h0, w0)
    if ho < 1 or wo < 1:
        raise ShapeMismatchError(f"maps of {h0}x{w0} are too small for a "
                                 f"{g.kernel} kernel with padding {g.padding}")
    for i in range(g.kernel[0]):
        for j in range(g.kernel[1]):
            r0, c0 = i * g.dilation[0], j * g.dilation[1]
            yield i, j, x[:, :, r0:r0 + g.stride[0] * (ho - 1) + 1:g.stride[0], c0:c0 + g.stride[1] * (wo - 1) + 1:g.stride[1]]


def conv(x: np.ndarray, W: np.ndarray, b: np.ndarray, g: Geometry) -> np.ndarray:
    """A dense convolution (groups 1): ``x`` (n, in, H, W), ``W`` (out, in, kh, kw) -> (n, out, H', W')."""
    out = None
    for i, j, xs in _taps(x, g):
        t = np.einsum("nchw,oc->nohw", xs, W[:, :, i, j], optimize=True)
        out = t if out is None else out + t
    return out + b[None, :, None, None]


def depthwise(x: np.ndarray, K: np.ndarray, b: np.ndarray, g: Geometry) -> np.ndarray:
    """A depthwise convolution: channel c by its own kernel ``K[c]`` (C, kh, kw)."""
    out = None
    for i, j, xs in _taps(x, g):
        t = xs * K[None, :, i, j, None, None]
        out = t if out is None else out + t
    return out + b[None, :, None, None]


class Maps:
    """A chain's probe images: the producer's input maps ``x`` (n, in, H, W); its length is the
    number of output positions the path and the repair use (what the pipeline counts as rows)."""

    def __init__(self, x: np.ndarray, rows: int):
        self.x = np.asarray(x, dtype=np.float64)
        self.rows = int(rows)
        #: the original block's values on these maps (:func:`_original`), kept for the many repairs
        #: a parameter budget's candidates run on the same rows
        self.cache: dict = {}

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        return f"Maps({self.x.shape}, rows={self.rows})"


@dataclass
class InvertedNet(Network):
    """An inverted-residual block as a network: ``layers[0]`` the producer (BatchNorm folded, the
    activation act1, its kernel positions as taps), ``layers[1]`` the 1x1 consumer; ``dw`` the
    depthwise kernels (C, kh * kw) with act2 (identity where none), ``fc1``/``fc2`` the SE layers
    (fc1's activation act_se, fc2's the gate) or None; ``pgeo``/``dgeo`` the producer's and the
    depthwise conv's geometry. Widths ``[in, C, out]``: the pipeline reads it like a chain with one
    hidden layer, the channels."""

    dw: Layer | None = None
    fc1: Layer | None = None
    fc2: Layer | None = None
    pgeo: Geometry = field(default_factory=Geometry)
    dgeo: Geometry = field(default_factory=Geometry)

    def __post_init__(self):
        if self.dw is None or len(self.layers) != 2:
            raise ShapeMismatchError("an inverted-residual block needs a producer, a depthwise conv and a consumer")
        p, v, k = self.layers[0], self.layers[1], self.dw
        C = p.out_features
        bad = k.weight.shape != (C, int(np.prod(self.dgeo.kernel))) or v.weight.shape[1] != C or v.taps != 1 \
            or p.taps != int(np.prod(self.pgeo.kernel))
        if self.se:
            bad = bad or self.fc1.weight.shape[1] != C or self.fc2.weight.shape != (C, self.fc1.weight.shape[0])
        if bad:
            raise ShapeMismatchError(
                f"inverted-residual block {p.path}: producer {tuple(p.weight.shape)}, depthwise "
                f"{tuple(k.weight.shape)}, consumer {tuple(v.weight.shape)}"
                + (f", SE {tuple(self.fc1.weight.shape)} / {tuple(self.fc2.weight.shape)}" if self.se else "")
                + " do not fit")

    @property
    def se(self) -> bool:
        return self.fc1 is not None

    @property
    def producer(self) -> Layer:
        return self.layers[0]

    @property
    def consumer(self) -> Layer:
        return self.layers[1]

    @property
    def channels(self) -> int:
        return self.producer.out_features

    def _arrays(self):
        out = [(0, self.producer), (0, self.dw), (1, self.consumer)]
        return out + ([(0, self.fc1), (0, self.fc2)] if self.se else [])

    @property
    def num_params(self) -> int:
        return self.num_params_with([self.channels])

    def num_params_with(self, hidden_widths) -> int:
        """Parameters of the arrays held (biases as held: folded BatchNorms give every channel one)."""
        (k,) = [int(w) for w in hidden_widths]
        p, d, v = self.producer, self.dw, self.consumer
        per = p.weight.shape[1] + int(p.has_bias) + d.weight.shape[1] + int(d.has_bias)
        if self.se:
            cse = self.fc1.weight.shape[0]
            per += 2 * cse + int(self.fc2.has_bias)
        fixed = (cse if self.se and self.fc1.has_bias else 0) + (v.out_features if v.has_bias else 0)
        return k * per + k * v.out_features + fixed

    def check_finite(self, what: str = "network", layers=None) -> "InvertedNet":
        if self.finite_checked and self.readonly():
            return self
        for k, l in self._arrays():
            for name, a in (("weight", l.weight), ("bias", l.bias)):
                if not finite(a):
                    raise non_finite_error(what, k, l, name)
        self.finite_checked = self.readonly()
        return self

    def readonly(self) -> bool:
        return all(not (isinstance(a, np.ndarray) and a.flags.writeable) for _, l in self._arrays()
                   for a in (l.weight, l.bias))

    def engine_args(self):
        raise InvalidArgumentError("an inverted-residual block has no polynomial ODE encoding (method.md): use the "
                                   "merge path")

    # ---- values ------------------------------------------------------------------------------

    def expanded(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """act2(depthwise(act1(producer x))): the channels before the SE gate, (n, C, H', W');
        ``rows``: only these channels."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 4 or x.shape[1] != self.producer.in_features:
            raise ShapeMismatchError(f"{self.producer.path} takes maps (n, {self.producer.in_features}, H, W), got "
                                     f"{x.shape}")
        p, d = self.producer, self.dw
        sel = slice(None) if rows is None else rows
        W = np.asarray(p.weight, dtype=np.float64)[sel].reshape(-1, p.in_features, *self.pgeo.kernel)
        u = p.apply(conv(x, W, np.asarray(p.bias, dtype=np.float64)[sel], self.pgeo))
        K = np.asarray(d.weight, dtype=np.float64)[sel].reshape(-1, *self.dgeo.kernel)
        return d.apply(depthwise(u, K, np.asarray(d.bias, dtype=np.float64)[sel], self.dgeo))

    def gates(self, h: np.ndarray) -> np.ndarray | None:
        """The SE gates (n, C) of the channels ``h`` (None without SE)."""
        if not self.se:
            return None
        s = h.mean(axis=(2, 3))
        z = self.fc1.apply(s @ np.asarray(self.fc1.weight, dtype=np.float64).T + self.fc1.bias)
        return self.fc2.apply(z @ np.asarray(self.fc2.weight, dtype=np.float64).T + self.fc2.bias)

    def channel_maps(self, x: np.ndarray, gates: np.ndarray | None = None) -> np.ndarray:
        """The channels' outputs o = h g (n, C, H', W'); ``gates``: use these instead of their own."""
        h = self.expanded(x)
        g = self.gates(h) if gates is None else gates
        return h if g is None else h * g[:, :, None, None]

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.dgeo.out(*self.pgeo.out(h, w))

    def positions(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """The sampled output positions (flat indices over (image, row, column)), sorted."""
        n = len(x)
        total = n * int(np.prod(self.out_hw(x.shape[2], x.shape[3])))
        if total <= POSITIONS:
            return np.arange(total)
        return np.sort(np.random.default_rng(seed).choice(total, POSITIONS, replace=False))

    def rows_of(self, maps: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(P, C): channel maps (n, C, H', W') at flat positions ``idx``."""
        return maps.transpose(0, 2, 3, 1).reshape(-1, maps.shape[1])[idx]

    def hidden_values(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """The consumer's input rows (P, C) at the positions ``idx`` (None: the sampled ones)."""
        x = _maps(x)
        idx = self.positions(x) if idx is None else idx
        return self.rows_of(self.channel_maps(x), idx)

    def forward(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """The consumer's output rows (P, out) at the positions ``idx`` (None: the sampled ones)."""
        v = self.consumer
        return self.hidden_values(x, idx) @ np.asarray(v.weight, dtype=np.float64).T + v.bias

    def layer_inputs(self, x) -> list[np.ndarray]:
        return [_maps(x), self.hidden_values(x)]

    def with_parts(self, producer: tuple, dw: tuple, consumer: tuple, fc1=None, fc2=None, meta=None) -> "InvertedNet":
        """This block with other (weight, bias) of its parts."""
        return InvertedNet([self.producer.with_weights(*producer), self.consumer.with_weights(*consumer)],
                           dtype=self.dtype, meta=dict(self.meta if meta is None else meta),
                           dw=self.dw.with_weights(*dw), fc1=self.fc1.with_weights(*fc1) if self.se else None,
                           fc2=self.fc2.with_weights(*fc2) if self.se else None, pgeo=self.pgeo, dgeo=self.dgeo)


def _maps(x) -> np.ndarray:
    return x.x if isinstance(x, Maps) else np.asarray(x, dtype=np.float64)


# ---- exact blocks ------------------------------------------------------------------------------


def _rows(net: InvertedNet) -> np.ndarray:
    """Each channel's defining rows side by side: producer row + bias, kernel + bias, fc2 row + bias."""
    parts = [(net.producer.weight, net.producer.bias), (net.dw.weight, net.dw.bias)]
    if net.se:
        parts.append((net.fc2.weight, net.fc2.bias))
    return np.column_stack([np.column_stack([np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)])
                            for W, b in parts])


def silent(net: InvertedNet) -> np.ndarray:
    """Channels nothing reads: zero consumer column and zero fc1 column."""
    off = ~np.any(np.asarray(net.consumer.weight) != 0, axis=0)
    if net.se:
        off &= ~np.any(np.asarray(net.fc1.weight) != 0, axis=0)
    return off


def exact_blocks(net: InvertedNet, threads: int = 0) -> np.ndarray:
    """Canonical labels of the exact blocks (see the module docstring): equal defining rows to the
    model dtype's rounding (:data:`~afde_nb.core.path.EXACT_REL` of each part's largest entry);
    silent channels join the first live channel's block."""
    C = net.channels
    lab = np.zeros(C, dtype=np.int64)
    off = silent(net)
    live = np.flatnonzero(~off)
    if live.size:
        R = _rows(net)
        # each part scaled by its largest entry, so the tolerance is relative to each
        cuts = np.cumsum([0, net.producer.weight.shape[1] + 1, net.dw.weight.shape[1] + 1]
                         + ([net.fc2.weight.shape[1] + 1] if net.se else []))
        for a, b in zip(cuts[:-1], cuts[1:]):
            m = float(np.abs(R[:, a:b]).max(initial=0.0))
            if m > 0:
                R[:, a:b] /= m
        R = np.ascontiguousarray(R[live])
        sub, _, _, bad = _core.exact_rows(np.ascontiguousarray(R[:, :-1]), np.ascontiguousarray(R[:, -1]), False,
                                          False, EXACT_REL.get(net.dtype, 1e-12), threads)
        if bad >= 0:
            net.check_finite()
        lab[live] = np.asarray(sub, dtype=np.int64)
        lab[off] = lab[live[0]]
    return _canonical(lab)


def _canonical(lab: np.ndarray) -> np.ndarray:
    if lab.size == 0:
        return lab.astype(np.int64)
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.reshape(-1)]


def _exact_merges(lab: np.ndarray) -> np.ndarray:
    """Merges joining each member of an exact block to its first member."""
    first = np.full(int(lab.max()) + 1 if lab.size else 0, lab.size, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(lab.size))
    rest = np.flatnonzero(first[lab] != np.arange(lab.size))
    return np.column_stack([first[lab[rest]], rest]).astype(np.int64).reshape(-1, 2)


# ---- the merge path ----------------------------------------------------------------------------


def pseudo_maps(net: InvertedNet, seed: int = 0, size: tuple | None = None, images: int = PSEUDO_IMAGES) -> Maps:
    """Standard-normal producer inputs (no data): ``images`` maps of ``size`` (H, W) (None: the size
    whose depthwise output is PSEUDO_SIDE x PSEUDO_SIDE)."""
    if size is None:
        size = net.pgeo.size_in(*net.dgeo.size_in(PSEUDO_SIDE, PSEUDO_SIDE))
    x = np.random.default_rng(seed).standard_normal((images, net.producer.in_features, *size))
    return Maps(x, min(POSITIONS, images * int(np.prod(net.out_hw(*size)))))


def masses(net: InvertedNet) -> np.ndarray:
    """Ward's masses: each channel's squared consumer column (0 for a silent channel)."""
    V = np.asarray(net.consumer.weight, dtype=np.float64)
    return np.where(silent(net), 0.0, (V ** 2).sum(axis=0))


def unit_values(net: InvertedNet, x) -> tuple[np.ndarray, np.ndarray]:
    """((C, P) each channel's values o_c at the sampled positions over sqrt(P), (P, out) the
    consumer's output there)."""
    x = _maps(x)
    idx = net.positions(x)
    O = net.rows_of(net.channel_maps(x), idx)
    v = net.consumer
    y = O @ np.asarray(v.weight, dtype=np.float64).T + v.bias
    return np.ascontiguousarray(O.T / np.sqrt(max(len(idx), 1))), y


def merge_path(net: InvertedNet, *, method: str = "ward", mode: str = "backward", relative: bool = True,
               symmetry: bool = True, calibration=None, threads: int = 0, inputs=None,
               approx: int | None = None) -> MergePath:
    """The block's merge path over its channels (see the module docstring) as a
    :class:`~afde_nb.core.path.MergePath` with one :class:`~afde_nb.core.path.LayerPath`. The
    exact merges are known at once; the values and the agglomeration are computed on first use.

    ``inputs``: a callable returning the chain's rows, the first a :class:`Maps` (or an array of
    producer input maps); else ``calibration`` maps; else :func:`pseudo_maps`. ``symmetry`` has no
    effect (no channel is another's negation); ``approx``: Ward's Gram in float32."""
    if method not in LINKAGES:
        raise InvalidArgumentError(f"merge paths are built by {LINKAGES}, got method={method!r}")
    if mode != "backward":
        raise InvalidArgumentError("mode='forward' is defined by the polynomial ODE; an inverted-residual block "
                                   f"({net.producer.path}) takes mode='backward'")
    if approx is not None and (isinstance(approx, bool) or not isinstance(approx, (int, np.integer)) or approx < 2):
        raise InvalidArgumentError(f"approx must be None or a number of probe rows >= 2, got {approx!r}")
    net.check_finite()
    lab0 = exact_blocks(net, threads)
    e_pairs = _exact_merges(lab0)
    e_signs = np.ones(len(e_pairs), dtype=np.int64)
    C = net.channels

    def build():
        if inputs is not None:
            x = inputs()[0]
        elif calibration is not None:
            x = calibration
        else:
            x = pseudo_maps(net)
        T, y = unit_values(net, x)
        off = silent(net)
        live = np.flatnonzero(~off)
        if live.size:
            T[off] = T[live[0]]  # a silent channel sits on the block it joined (it carries no mass)
        return units_path(T, masses(net), y, lab0, e_pairs, e_signs, method=method, relative=relative,
                          signed=False, threads=threads, approx=approx)

    lp = LayerPath(C, e_pairs, e_signs, net.producer.activation, build)
    meta = {"approx": int(approx)} if approx else {}
    return MergePath(net, [lp], mode, method, bool(relative), bool(symmetry), calibration is not None, meta)


# ---- quotient and repair -----------------------------------------------------------------------


@dataclass
class InvertedBlocks:
    """How a reduced block stands for the original: channel i is in block ``labels[i]`` with mass
    ``weights[i]``; ``keep[b]`` the one live member of block b where it has one (else -1: a merged
    channel); ``spread`` the largest distance of a member's rows from its merged channel's,
    relative to the largest entry of each part (0: exact)."""

    labels: np.ndarray
    weights: np.ndarray
    keep: np.ndarray
    spread: float

    def lossy(self, dtype: str) -> bool:
        return self.spread > max(LOSSY, 10 * EXACT_REL.get(dtype, 1e-12))


def quotient(net: InvertedNet, labels, weights=None) -> tuple[InvertedNet, InvertedBlocks]:
    """The reduced block of a partition of its channels (``labels`` canonical 0..k-1, or a
    :class:`~afde_nb.core.partition.Partition` of this one layer); ``weights``: the masses of the
    mean rows (None: equal over the live members). See the module docstring. The reduced net's
    ``meta["keep"]`` says which channels are kept as they were (the write-back keeps their
    unfolded BatchNorm entries)."""
    if hasattr(labels, "labels"):
        part = labels
        labels = part.labels[0]
        weights = part.weights[0] if weights is None and part.weights is not None else weights
    C = net.channels
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (C,):
        raise ShapeMismatchError(f"labels for the inverted-residual block {net.producer.path} have shape "
                                 f"{lab.shape}, expected ({C},)")
    k = int(lab.max()) + 1 if C else 0
    if C and (lab.min() < 0 or np.bincount(lab, minlength=k).min() == 0):
        raise ShapeMismatchError("labels for an inverted-residual block must number blocks 0..k-1 with none empty")
    net.check_finite()
    live = ~silent(net)
    w = np.ones(C) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (C,):
        raise ShapeMismatchError(f"weights for the inverted-residual block must have shape ({C},)")
    w = np.where(live, w, 0.0)
    tot = np.bincount(lab, weights=w, minlength=k)
    w = np.where((tot[lab] > 0) | ~live, w, live.astype(float))  # a block of zero-weight members: equal weights
    tot = np.bincount(lab, weights=w, minlength=k)
    cnt_live = np.bincount(lab, weights=live.astype(float), minlength=k)
    safe = np.where(tot > 0, tot, 1.0)

    def mean_rows(W, b):
        R = np.column_stack([np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)])
        return R, block_sums(R * w[:, None], lab, k, axis=0) / safe[:, None]

    def sum_cols(W):
        return block_sums(np.asarray(W, dtype=np.float64), lab, k, axis=1)

    parts = [(net.producer.weight, net.producer.bias), (net.dw.weight, net.dw.bias)]
    if net.se:
        parts.append((net.fc2.weight, net.fc2.bias))
    raw, means = zip(*[mean_rows(W, b) for W, b in parts])
    means = list(means)
    V = sum_cols(net.consumer.weight)
    F1 = sum_cols(net.fc1.weight) if net.se else None
    merged = (cnt_live[lab] > 1) & live
    spread = 0.0
    for R, M in zip(raw, means):
        scale = float(np.abs(R).max(initial=0.0)) or 1.0
        spread = max(spread, float(np.abs(R - M[lab])[merged].max(initial=0.0)) / scale)
    # a block with one live member keeps it bit for bit; one with none (all silent) keeps its first
    # member's rows, with zero columns
    keep = np.full(k, -1, dtype=np.int64)
    first = np.zeros(k, dtype=np.int64)
    first[lab[::-1]] = np.arange(C)[::-1]
    li = np.flatnonzero(live)
    firstlive = first.copy()
    firstlive[lab[li[::-1]]] = li[::-1]
    one = np.flatnonzero(cnt_live <= 1)
    src = firstlive[one]
    for R, M in zip(raw, means):
        M[one] = R[src]
    keep[one] = np.where(cnt_live[one] == 1, src, -1)
    dt = np.asarray(net.producer.weight).dtype if np.asarray(net.producer.weight).dtype in (np.float32, np.float64) \
        else np.float64
    (P, K) = means[:2]
    small = net.with_parts(
        (P[:, :-1].astype(dt), P[:, -1].copy()), (K[:, :-1].astype(dt), K[:, -1].copy()),
        (V.astype(dt), np.asarray(net.consumer.bias, dtype=np.float64).copy()),
        (F1.astype(dt), np.asarray(net.fc1.bias, dtype=np.float64).copy()) if net.se else None,
        (means[2][:, :-1].astype(dt), means[2][:, -1].copy()) if net.se else None,
        meta={**net.meta, "keep": keep})
    return small, InvertedBlocks(lab, w, keep, spread)


def _original(net: InvertedNet, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sampled positions, the channels before the gate (n, C, H', W'), the consumer's output at
    the positions) of ``net`` on maps ``x``, cached on a :class:`Maps`."""
    hit = x.cache.get(id(net)) if isinstance(x, Maps) else None
    if hit is not None and hit[0] is net:
        return hit[1:]
    X = _maps(x)
    idx = net.positions(X)
    h = net.expanded(X)
    g = net.gates(h)
    O = net.rows_of(h if g is None else h * g[:, :, None, None], idx)
    v = net.consumer
    Z = O @ np.asarray(v.weight, dtype=np.float64).T + v.bias
    if isinstance(x, Maps):
        x.cache[id(net)] = (net, idx, h, Z)
    return idx, h, Z


def reduced_values(original: InvertedNet, reduced: InvertedNet, x, idx=None) -> np.ndarray:
    """The reduced block's consumer input rows at the sampled positions: channels kept as they
    were (``meta["keep"]``) are read off the original's values (their rows are the original's bit
    for bit), merged ones computed; the gates from the reduced SE."""
    pos, h0, _ = _original(original, x)
    idx = pos if idx is None else idx
    keep = reduced.meta.get("keep")
    if keep is None or len(keep) != reduced.channels:
        return reduced.hidden_values(x, idx)
    keep = np.asarray(keep, dtype=np.int64)
    h = np.empty((h0.shape[0], reduced.channels) + h0.shape[2:])
    own = np.flatnonzero(keep >= 0)
    h[:, own] = h0[:, keep[own]]
    new = np.flatnonzero(keep < 0)
    if new.size:
        h[:, new] = reduced.expanded(_maps(x), new)
    g = reduced.gates(h)
    return reduced.rows_of(h if g is None else h * g[:, :, None, None], idx)


def repair(original: InvertedNet, reduced: InvertedNet, x, ridge: float = RIDGE,
           mask: np.ndarray | None = None) -> InvertedNet:
    """``reduced`` with its consumer refit by ridge least squares (:func:`~afde_nb.core.repair._fit`):
    at the sampled positions of the maps ``x``, the reduced channels' values are fit to the
    original consumer's outputs (bias included where the consumer has one). ``mask``: the boolean
    (out, channels) pattern of consumer weights the refit may use (a masked pruning's zeros stay
    zero), None: dense."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != np.shape(reduced.consumer.weight):
            raise ShapeMismatchError(f"mask of shape {mask.shape} for the consumer {reduced.consumer.path}, "
                                     f"expected {np.shape(reduced.consumer.weight)}")
    _, _, Z = _original(original, x)
    H = reduced_values(original, reduced, x)
    W, b = _fit(H, Z, reduced.consumer.has_bias, mask, ridge)
    dt = np.asarray(reduced.consumer.weight).dtype
    v = reduced.consumer
    return InvertedNet([reduced.producer, v.with_weights(W.astype(dt), b if v.has_bias else np.zeros_like(b))],
                       dtype=reduced.dtype, meta=dict(reduced.meta), dw=reduced.dw, fc1=reduced.fc1, fc2=reduced.fc2,
                       pgeo=reduced.pgeo, dgeo=reduced.dgeo)


def select(net: InvertedNet, keep) -> InvertedNet:
    """The block with only the channels ``keep`` (increasing indices; structured pruning of whole
    channels): their producer rows, depthwise kernels and fc2 rows, the consumer's and fc1's
    columns. ``meta["keep"]`` names them, so the write-back keeps their unfolded entries bit for bit."""
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    C = net.channels
    if keep.size == 0 or keep.min() < 0 or keep.max() >= C or np.any(np.diff(keep) <= 0):
        raise InvalidArgumentError(f"channels to keep of the inverted-residual block {net.producer.path} must be "
                                   f"increasing indices in [0, {C}), at least one; got {keep.tolist()}")

    def rows(l):
        return np.ascontiguousarray(np.asarray(l.weight)[keep]), np.asarray(l.bias)[keep].copy()

    def cols(l):
        return np.ascontiguousarray(np.asarray(l.weight)[:, keep]), np.asarray(l.bias).copy()

    return net.with_parts(rows(net.producer), rows(net.dw), cols(net.consumer),
                          cols(net.fc1) if net.se else None, rows(net.fc2) if net.se else None,
                          meta={**net.meta, "keep": keep})


def input_norms(net: InvertedNet, x) -> list[np.ndarray]:
    """``||X_j||_2`` of every input feature of each weight tensor of the block (producer,
    depthwise, then fc1 and fc2 with an SE, consumer) over every position of the maps ``x``
    (Wanda's norms), each shaped to broadcast against its weight: the producer's patches (1, in *
    taps); the depthwise kernel's, per channel and tap (C, taps: channel c reads only its own
    ``u_c``); the SE's (1, C) means ``s`` and (1, C_se) ``act_se(F1 s + f1)``; the consumer's (1, C)
    gated channels ``o``."""
    X = _maps(x)
    if X.ndim != 4 or X.shape[1] != net.producer.in_features:
        raise ShapeMismatchError(f"{net.producer.path} takes maps (n, {net.producer.in_features}, H, W), got "
                                 f"{X.shape}")

    def tap_norms(a, g):  # (channels, taps), taps in kernel order (rows, then columns)
        return np.stack([np.sqrt((xs ** 2).sum(axis=(0, 2, 3))) for _, _, xs in _taps(a, g)], axis=1)

    p, d = net.producer, net.dw
    out = [tap_norms(X, net.pgeo).reshape(1, -1)]
    W = np.asarray(p.weight, dtype=np.float64).reshape(-1, p.in_features, *net.pgeo.kernel)
    u = p.apply(conv(X, W, np.asarray(p.bias, dtype=np.float64), net.pgeo))
    out.append(tap_norms(u, net.dgeo))
    K = np.asarray(d.weight, dtype=np.float64).reshape(-1, *net.dgeo.kernel)
    h = d.apply(depthwise(u, K, np.asarray(d.bias, dtype=np.float64), net.dgeo))
    if net.se:
        s = h.mean(axis=(2, 3))
        z = net.fc1.apply(s @ np.asarray(net.fc1.weight, dtype=np.float64).T + net.fc1.bias)
        out += [np.linalg.norm(s, axis=0)[None, :], np.linalg.norm(z, axis=0)[None, :]]
        h = h * net.fc2.apply(z @ np.asarray(net.fc2.weight, dtype=np.float64).T + net.fc2.bias)[:, :, None, None]
    out.append(np.sqrt((h ** 2).sum(axis=(0, 2, 3)))[None, :])
    return out


def reduce_and_repair(net: InvertedNet, part, rows) -> tuple[InvertedNet, InvertedNet, int | None]:
    """(the quotient, the same with its consumer refit where a merge was lossy and ``rows`` (the
    producer's input maps) are given, 1 where the refit ran else None): the pipeline's step."""
    small, blocks = quotient(net, part)
    if rows is None or not blocks.lossy(net.dtype):
        return small, small, None
    return small, repair(net, small, rows), 1


__all__ = ["Geometry", "InvertedNet", "InvertedBlocks", "Maps", "conv", "depthwise", "exact_blocks", "merge_path",
           "quotient", "repair", "reduce_and_repair", "reduced_values", "pseudo_maps", "masses", "unit_values", "silent",
           "select", "input_norms"]
