"""Slow, obviously-correct eps-FDE / eps-BDE on a generic polynomial ODE (method.md §3).

Nothing here knows about layers, weights or closed forms: it reads the drifts of a
:class:`~afde_nb.PolyODE` as polynomials and applies the definitions literally.
Used only by the tests, on small systems.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

Poly = dict  # {sorted tuple of variable indices: coefficient}


def drifts(ode) -> list[Poly]:
    out: list[Poly] = [defaultdict(float) for _ in range(ode.num_vars)]
    for v, c, m in zip(ode.var, ode.coef, ode.monomials()):
        out[int(v)][m] += float(c)
    return [dict(p) for p in out]


def prepartition(ode) -> np.ndarray:
    """Inputs and outputs alone, one block per hidden layer."""
    last = int(ode.layer.max())
    lab = np.empty(ode.num_vars, dtype=np.int64)
    for v in range(ode.num_vars):
        l = int(ode.layer[v])
        lab[v] = v if l in (0, last) else ode.num_vars + l
    return lab


def _add(p: Poly, q: Poly, scale: float = 1.0) -> Poly:
    out = defaultdict(float, p)
    for m, c in q.items():
        out[m] += scale * c
    return dict(out)


def _mul(p: Poly, q: Poly) -> Poly:
    out: Poly = defaultdict(float)
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            out[tuple(sorted(m1 + m2))] += c1 * c2
    return dict(out)


def _l1(p: Poly) -> float:
    return sum(abs(c) for c in p.values())


def substitute(p: Poly, a: int, b: int, s: int) -> Poly:
    """x_a -> s (x_a + x_b), x_b -> (1 - s)(x_a + x_b)."""
    xa = {(min(s, a), max(s, a)): 1.0, tuple(sorted((s, b))): 1.0}
    xb = {(a,): 1.0, (b,): 1.0, tuple(sorted((s, a))): -1.0, tuple(sorted((s, b))): -1.0}
    out: Poly = {}
    for m, c in p.items():
        term: Poly = {(): c}
        for v in m:
            term = _mul(term, xa if v == a else xb if v == b else {(v,): 1.0})
        out = _add(out, term)
    return out


def fde_distance(f: list[Poly], labels: np.ndarray, i: int, j: int) -> float:
    """Sum over blocks of the coefficient L1 of (block drift after substitution - before),
    the larger of the two orientations of the substitution."""
    s = len(f)
    blocks = defaultdict(list)
    for v, l in enumerate(labels):
        blocks[int(l)].append(v)
    best = 0.0
    for a, b in ((i, j), (j, i)):
        total = 0.0
        for members in blocks.values():
            P: Poly = {}
            for v in members:
                P = _add(P, f[v])
            if not any(a in m or b in m for m in P):
                continue
            total += _l1(_add(substitute(P, a, b, s), P, -1.0))
        best = max(best, total)
    return best


def bde_distance(f: list[Poly], labels: np.ndarray, i: int, j: int) -> float:
    """Coefficient L1 of f_i - f_j after mapping every variable to its block representative."""
    rep = {}
    for v, l in enumerate(labels):
        rep.setdefault(int(l), v)

    def mapped(p: Poly) -> Poly:
        out = defaultdict(float)
        for m, c in p.items():
            out[tuple(sorted(rep[int(labels[v])] for v in m))] += c
        return dict(out)

    return _l1(_add(mapped(f[i]), mapped(f[j]), -1.0))


def _components(members: list[int], linked) -> list[list[int]]:
    parent = {v: v for v in members}

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for x in range(len(members)):
        for y in range(x + 1, len(members)):
            if linked(members[x], members[y]):
                parent[find(members[x])] = find(members[y])
    comps = defaultdict(list)
    for v in members:
        comps[find(v)].append(v)
    return list(comps.values())


def refine(ode, eps: float, mode: str) -> np.ndarray:
    """Coarsest eps-partition from the prepartition: split every block into the connected
    components of its eps-links against the current partition, until nothing splits."""
    f = drifts(ode)
    dist = fde_distance if mode == "forward" else bde_distance
    labels = prepartition(ode)
    while True:
        blocks = defaultdict(list)
        for v, l in enumerate(labels):
            blocks[int(l)].append(v)
        new = labels.copy()
        nxt = int(labels.max()) + 1
        split = False
        for members in blocks.values():
            if len(members) < 2:
                continue
            comps = _components(members, lambda a, b: dist(f, labels, a, b) <= eps)
            if len(comps) > 1:
                split = True
                for comp in comps[1:]:
                    new[comp] = nxt
                    nxt += 1
        labels = new
        if not split:
            return labels


def hidden_labels(ode, labels: np.ndarray) -> list[np.ndarray]:
    """Per hidden layer canonical labels (blocks numbered by first member)."""
    out = []
    for l in range(1, int(ode.layer.max())):
        raw = labels[ode.layer == l]
        seen: dict[int, int] = {}
        out.append(np.array([seen.setdefault(int(x), len(seen)) for x in raw], dtype=np.int64))
    return out


def affine(f: list[Poly], alpha: np.ndarray, beta: np.ndarray) -> list[Poly]:
    """The drifts in the coordinates y with x_v = alpha_v + beta_v y_v: g_v(y) = f_v(alpha + beta y) / beta_v.
    Lumping up to a symmetry (tanh: h -> -h; sigmoid: h -> 1 - h) is plain BDE in such coordinates."""
    lin = [{(): float(a), (v,): float(b)} if a else {(v,): float(b)} for v, (a, b) in enumerate(zip(alpha, beta))]
    out = []
    for v, p in enumerate(f):
        g: Poly = {}
        for m, c in p.items():
            term: Poly = {(): c / float(beta[v])}
            for u in m:
                term = _mul(term, lin[u])
            g = _add(g, term)
        out.append(g)
    return out


def symmetric_bde_distance(ode, labels: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> float:
    """Largest BDE distance inside any block, in the coordinates of :func:`affine`: 0 iff the
    partition (with its orientations) is an exact BDE up to the symmetry."""
    g = affine(drifts(ode), alpha, beta)
    blocks = defaultdict(list)
    for v, l in enumerate(labels):
        blocks[int(l)].append(v)
    worst = 0.0
    for members in blocks.values():
        for j in members[1:]:
            worst = max(worst, bde_distance(g, labels, members[0], j))
    return worst


# --------------------------------------------------------------------------------------------
# The quotient as the numpy code computed it before the engine did (issue 10): the slow reference
# for afde_nb.core.reduce.quotient (tests/test_float32.py). Everything in float64.

def quotient_numpy(net, labels, signs=None, weights=None):
    """(reduced Network in float64, [(labels, signs, scales, masses, spread)] per hidden layer)."""
    from afde_nb.core.network import Network
    from afde_nb.core.path import Source, aligned, block_sums, incoming

    src = Source.inputs(net.widths[0])
    out, blocks = [], []
    for h, layer in enumerate(net.layers):
        R, b = incoming(np.asarray(layer.weight, dtype=np.float64), np.asarray(layer.bias, dtype=np.float64),
                        src, layer.taps)
        if h == len(net.hidden):
            out.append(layer.with_weights(R, b))
            break
        n = layer.out_features
        lab = np.asarray(labels[h], dtype=np.int64)
        k = int(lab.max()) + 1 if lab.size else 0
        s = np.ones(n, dtype=np.int64) if signs is None or signs[h] is None else np.asarray(signs[h], dtype=np.int64)
        A, c = aligned(R, b, layer.activation, s)
        m = c.copy() if weights is None or weights[h] is None else np.asarray(weights[h], dtype=np.float64)
        tot = np.bincount(lab, weights=m, minlength=k)
        cnt = np.bincount(lab, minlength=k)
        use = np.where(tot[lab] > 0, m, 1.0)
        den = np.where(tot > 0, tot, cnt)
        M = block_sums(A * use[:, None], lab, k, axis=0) / den[:, None]
        out.append(layer.with_weights(M[:, :-1], M[:, -1].copy()))
        src = Source(lab, s, c, layer.activation)
        scale = float(np.abs(A).max(initial=0.0)) or 1.0
        blocks.append((lab, s, c, m, float(np.abs(A - M[lab]).max(initial=0.0)) / scale))
    return Network(out, dtype=net.dtype, meta=dict(net.meta)), blocks


# ---- the float64 numpy arithmetic that torch replaced (issue 29) ----------------------------------

def fit_numpy(H, Z, bias, mask=None, ridge=1e-6):
    """The former ``afde_nb.core.repair._fit``: ridge least squares in float64 numpy."""
    H, Z = np.asarray(H, dtype=np.float64), np.asarray(Z, dtype=np.float64)
    if bias:
        hm, zm = H.mean(axis=0), Z.mean(axis=0)
        Hc, Zc = H - hm, Z - zm
    else:
        hm, zm = np.zeros(H.shape[1]), np.zeros(Z.shape[1])
        Hc, Zc = H, Z
    G = Hc.T @ Hc
    k = G.shape[0]
    lam = ridge * float(np.trace(G)) / max(k, 1)
    lam = lam if lam > 0 else ridge
    B = Hc.T @ Zc
    if mask is None:
        W = np.linalg.solve(G + lam * np.eye(k), B).T
    else:
        W = np.zeros((Z.shape[1], k))
        for j in range(Z.shape[1]):
            keep = np.flatnonzero(mask[j])
            if keep.size:
                W[j, keep] = np.linalg.solve(G[np.ix_(keep, keep)] + lam * np.eye(keep.size), B[keep, j])
    return W, (zm - W @ hm if bias else np.zeros(Z.shape[1]))


def gated_values_numpy(net, x):
    """The former ``GatedNet.hidden_values``: act(gate x) * (up x) in float64 numpy."""
    x = np.asarray(x, dtype=np.float64)
    g, u = net.gate, net.up
    return g.apply(x @ np.asarray(g.weight, np.float64).T + g.bias) * (x @ np.asarray(u.weight, np.float64).T + u.bias)


def gated_repair_numpy(original, reduced, X):
    """The former ``afde_nb.core.gated.repair`` (dense): (W, b) of the refit down projection."""
    Z = gated_values_numpy(original, X) @ np.asarray(original.down.weight, np.float64).T + original.down.bias
    return fit_numpy(gated_values_numpy(reduced, X), Z, reduced.down.has_bias)


def repair_numpy(original, reduced, X, maps, start=0):
    """The former ``afde_nb.core.repair.repair`` (dense): the refit layers' (W, b), float64 numpy."""
    X = np.asarray(X, dtype=np.float64)
    ins = original.layer_inputs(X)
    Z_orig = [h @ np.asarray(l.weight, np.float64).T + l.bias for h, l in zip(ins, original.layers)]
    H, out = X, []
    for k, layer in enumerate(reduced.layers):
        W, b = np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64)
        if k >= start:
            Z = Z_orig[k]
            if k < len(maps) and maps[k] is not None:
                lab, coef = maps[k]
                keep = lab >= 0
                T = np.zeros((len(X), layer.out_features))
                np.add.at(T.T, lab[keep], (Z[:, keep] * coef[keep]).T)
                Z = T
            W, b = fit_numpy(H, Z, layer.has_bias)
            out.append((W, b))
        H = layer.apply(H @ W.T + b)
    return out
