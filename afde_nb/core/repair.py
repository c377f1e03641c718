"""Repair: refit layers by ridge least squares so the reduced network's pre-activations match the
original's on probe inputs (method.md §8.5).

Layer k of the reduced network sees inputs H (the probe inputs run through the *already repaired*
reduced layers) and should produce targets Z: the original network's pre-activations, mapped to
the reduced neurons (a merged neuron stands for a weighted mean of its members, a kept neuron for
itself, see :meth:`afde_nb.reduce.Block.target_map`). The refit is

    W = Z~^T H~ (H~^T H~ + lambda I)^-1,   b = mean(Z) - W mean(H),   lambda = ridge * tr(H~^T H~) / k

with ~ the centred arrays (no centring for a layer without bias). A sparse layer keeps its zero
pattern: each row is refit on its own kept inputs only (as SparseGPT does). Targets are the
original network's values, never labels. The same function repairs every method, so comparisons
stay fair.
"""
from __future__ import annotations

import numpy as np
import torch

from .compute import array, tensor, where
from .lump import Partition
from .network import Network
from .reduce import quotient

RIDGE = 1e-6


#: rows per block of repair's float64 Gram sums (a block's float64 copy is the only one made)
GRAM_ROWS = 2048


def fit(H, Z, bias: bool, mask: np.ndarray | None, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge least squares of the module docstring: (W, b), float64 tensors on ``H``'s device.

    ``H`` (rows, k) and ``Z`` (rows, out) are tensors (or arrays) in the model's dtype (float32 for
    a float32 model, :mod:`afde_nb.core.compute`); the sums are :func:`sums`', the solve
    :func:`solve`'s, both in float64."""
    H = tensor(H)
    Z = tensor(Z, device=H.device)
    return solve(*sums(H, Z, bias), bias, mask, ridge)


def means(H: torch.Tensor, bias: bool) -> torch.Tensor:
    """The column means of ``H`` in float64 (zeros without a bias: no centring)."""
    if bias and len(H):
        return H.mean(dim=0, dtype=torch.float64)
    return torch.zeros(H.shape[1], dtype=torch.float64, device=H.device)


def products(A: torch.Tensor, am: torch.Tensor, B: torch.Tensor, bm: torch.Tensor) -> torch.Tensor:
    """``(A - am)^T (B - bm)`` in float64, one block of :data:`GRAM_ROWS` rows at a time widened
    (a block's float64 copy is the only one made). Why float64: a product of two float32 values is
    exact in float64, so this is the exact sum of the float32 rows' products to float64 rounding;
    summed in float32 each entry of a Gram matrix would carry a relative error of about
    1e-7 sqrt(rows), which the solve amplifies by the ridged Gram's condition number, up to about
    1 / ridge = 1e6 for the nearly collinear units a merge leaves: the refit weights could change
    at order one."""
    f64 = torch.float64
    out = torch.zeros((A.shape[1], B.shape[1]), dtype=f64, device=A.device)
    for i in range(0, len(A), GRAM_ROWS):
        Ac = A[i:i + GRAM_ROWS].to(f64) - am
        out.addmm_(Ac.T, Ac if B is A else B[i:i + GRAM_ROWS].to(f64) - bm)
    return out


def sums(H: torch.Tensor, Z: torch.Tensor, bias: bool) -> tuple:
    """(G, B, mean(H), mean(Z)): the centred Gram ``H~^T H~`` and ``H~^T Z~`` (float64,
    :func:`products`) and the float64 means (zeros without a bias)."""
    hm, zm = means(H, bias), means(Z, bias)
    return products(H, hm, H, hm), products(H, hm, Z, zm), hm, zm


def solve(G: torch.Tensor, B: torch.Tensor, hm: torch.Tensor, zm: torch.Tensor, bias: bool,
          mask: np.ndarray | None, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) from :func:`sums`' (G is written into): ``W = B^T (G + lambda I)^-1`` by a float64
    Cholesky (LU where the ridged Gram is not positive definite), ``b = mean(Z) - W mean(H)``; a
    ``mask`` row refits only its kept inputs."""
    f64, dev = torch.float64, G.device
    k, m = B.shape
    lam = ridge * float(torch.trace(G)) / max(k, 1)
    lam = lam if lam > 0 else ridge
    if mask is None:
        G.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(G)
        W = (torch.cholesky_solve(B, L) if int(info) == 0 else torch.linalg.solve(G, B)).T
    else:
        W = torch.zeros((m, k), dtype=f64, device=dev)
        for j in range(m):
            keep = torch.from_numpy(np.flatnonzero(mask[j])).to(dev)
            if keep.numel():
                Gj = G[keep][:, keep]
                Gj.diagonal().add_(lam)
                W[j, keep] = torch.linalg.solve(Gj, B[keep, j])
    b = zm - W @ hm if bias else torch.zeros(m, dtype=f64, device=dev)
    return W, b


def _fit(H: np.ndarray, Z: np.ndarray, bias: bool, mask: np.ndarray | None, ridge: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit` of arrays, as float64 arrays."""
    W, b = fit(H, Z, bias, mask, ridge)
    return array(W), array(b)


def original_values(net: Network, key: str, X: np.ndarray, compute):
    """``compute()`` (arrays of the *original* network ``net`` on rows ``X``), computed once per
    (``net``, ``X``) object pair and kept on ``net``: a budget split repairs many candidate
    reductions of one original chain on the same rows, and the original's values on them do not
    change (issue 29's profile: half of the gated repair's time). Arrays come back read-only (tensors
are never written into by their users);
    a network whose layers were replaced is another object and computes its own. The original's
    arrays are never modified in place (compress never modifies the model)."""
    cache = net.__dict__.setdefault("_original_values", {})
    hit = cache.get(key)
    layers = list(net.layers) + [l for l in (getattr(net, "up", None),) if l is not None]
    ids = tuple(id(a) for l in layers for a in (l.weight, l.bias))
    if hit is not None and hit[0] is X and hit[1] == ids:
        return hit[2]
    value = compute()
    for a in value if isinstance(value, list) else [value]:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    cache[key] = (X, ids, value)
    return value


def seen_before(net: Network, X) -> bool:
    """Whether a reduction of ``net`` was refit on the rows ``X`` (the same object) before, since
    the last call on other rows; records this one. What :func:`original_values` would keep for
    many refits is not worth computing for one."""
    cache = net.__dict__.setdefault("_original_values", {})
    hit = cache.get("seen")
    cache["seen"] = (X, None, None)
    return hit is not None and hit[0] is X


def forget_original_values(nets) -> None:
    """Drop what :func:`original_values` kept on ``nets`` (at the end of a compress call: the
    chains live on in its result's merge path, their rows' values and Gram matrices need not)."""
    for net in nets:
        net.__dict__.pop("_original_values", None)


def repair(original: Network, reduced: Network, X: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray] | None],
           start: int = 0, masks: list[np.ndarray | None] | None = None, ridge: float = RIDGE) -> Network:
    """Refit layers ``start..L`` of ``reduced`` (a new Network; the inputs are untouched). The rows
    run through the layers on the model's device in the model's dtype, or the rows' where that is
    wider (:mod:`afde_nb.core.compute`: a traced chain's rows are the model's dtype; a plain
    stack's calibration is float64, and its refit stays the slider's, :mod:`afde_nb.pipeline.moves`);
    each refit is :func:`fit`'s, float64 where its sums need it.

    ``maps[h]`` = (labels, coef) for hidden layer h: reduced neuron B's target is
    ``sum_{i: labels_i = B} coef_i z_i`` (labels -1: neuron dropped); None: the identity.
    ``masks[k]``: boolean (out, in) pattern of weights layer k may use (None: dense).
    """
    at, Xt = where(reduced), tensor(X)
    if Xt.is_floating_point():  # a plain stack's float64 calibration rows keep float64 (the slider's refit, moves.py)
        at["dtype"] = torch.promote_types(at["dtype"], Xt.dtype)

    def pre() -> list[torch.Tensor]:  # the original's pre-activations on X, in the model's dtype
        out, H = [], tensor(X, **at)
        for layer in original.layers:
            out.append(torch.addmm(tensor(layer.bias, **at), H, tensor(layer.weight, **at).T))
            H = layer.apply(out[-1])
        return out

    Z_orig = original_values(original, "pre", X, pre)
    layers = list(reduced.layers)
    H = tensor(X, **at)
    for k, layer in enumerate(layers):
        if k >= start:
            Z = Z_orig[k]
            if k < len(maps) and maps[k] is not None:
                lab, coef = maps[k]
                keep = np.flatnonzero(lab >= 0)
                idx = torch.from_numpy(keep).to(Z.device)
                T = torch.zeros((len(Z), layer.out_features), dtype=Z.dtype, device=Z.device)
                T.index_add_(1, torch.from_numpy(lab[keep]).to(Z.device), Z[:, idx] * tensor(coef[keep], **at))
                Z = T
            mask = None if masks is None else masks[k]
            W, b = fit(H, Z, layer.has_bias, mask, ridge)
            layers[k] = layer = layer.with_weights(array(W), array(b))
        if k + 1 < len(layers):
            H = layer.apply(torch.addmm(tensor(layer.bias, **at), H, tensor(layer.weight, **at).T))
    return Network(layers, dtype=reduced.dtype, meta=dict(reduced.meta))


def probe_error(original: Network, reduced: Network, X: np.ndarray) -> dict:
    """Deviation of ``reduced`` from ``original`` on ``X``: max |diff|, RMS and relative MSE."""
    return deviation(original.forward(X), reduced.forward(X))


def deviation(a: np.ndarray, b: np.ndarray) -> dict:
    """Deviation of outputs ``b`` from the original's ``a`` on the same rows: max |diff|, RMS and
    relative MSE (MSE over the variance of ``a``)."""
    a = np.asarray(a, dtype=np.float64)
    d = np.asarray(b, dtype=np.float64) - a
    ref = float(np.mean((a - a.mean(axis=0)) ** 2)) if a.size else 0.0
    mse = float(np.mean(d ** 2)) if d.size else 0.0
    return {"max_abs": float(np.abs(d).max(initial=0.0)), "rms": float(np.sqrt(mse)),
            "relative_mse": mse / ref if ref > 0 else mse, "n": int(len(a))}


#: an aligned row farther than this (relative) from its merged row makes the layer lossy
LOSSY = 1e-9


def reduce_and_repair(net: Network, part: Partition, probes, calib
                       ) -> tuple[Network, dict | None, dict | None, bool]:
    """The quotient of ``part``, refit on ``probes`` (None: no repair) when a merge was lossy; its
    error on ``calib`` before repair (None: no repair ran) and after; whether repair ran."""
    small, blocks = quotient(net, part)
    err = probe_error(net, small, calib) if calib is not None else None
    lossy = [h for h, b in enumerate(blocks) if b.spread > LOSSY]
    if probes is None or not lossy:
        return small, None, err, False
    fixed = repair(net, small, probes, [b.target_map() for b in blocks], start=lossy[0] + 1)
    return fixed, err, probe_error(net, fixed, calib) if calib is not None else None, True


# ---- the same refit in torch, for answering many cuts of one merge path (afde_nb.pipeline.moves) ----

def refit(H: torch.Tensor, Z: torch.Tensor, bias: bool, ridge: float = RIDGE) -> tuple[tuple, torch.Tensor]:
    """The least-squares refit of :func:`repair` (its ``_fit``, dense, in torch;
    float64 tensors) and its fitted values ``H W^T + b``. With fewer rows n than inputs k it solves the same
    ridge problem in its dual form, ``W^T = H~^T (H~ H~^T + lambda I)^-1 Z~`` (an n x n Cholesky
    instead of a k x k solve; the same W to rounding), and keeps W implicit:
    ``("dual", H~, S, mean(H), mean(Z), bias)`` with ``S = (H~ H~^T + lambda I)^-1 Z~``, whose
    fitted values are ``Z - lambda S``. Torch, not numpy: the float32 forwards around it run on
    torch's threads, and handing two cores back and forth between two thread pools costs more than
    the products."""
    n, k = H.shape
    if bias:
        hm, zm = H.mean(dim=0), Z.mean(dim=0)
        Hc, Zc = H - hm, Z - zm
    else:
        hm, zm = torch.zeros(k, dtype=H.dtype), torch.zeros(Z.shape[1], dtype=H.dtype)
        Hc, Zc = H, Z
    if n >= k:  # _fit itself (in torch)
        G = Hc.T @ Hc
        lam = ridge * float(torch.trace(G)) / max(k, 1)
        G.diagonal().add_(lam if lam > 0 else ridge)
        W = torch.linalg.solve(G, Hc.T @ Zc).T
        b = zm - W @ hm if bias else torch.zeros(Z.shape[1], dtype=H.dtype)
        return ("primal", W, b), torch.nn.functional.linear(H, W, b)
    K = Hc @ Hc.T
    lam = ridge * float(torch.trace(K)) / max(k, 1)
    lam = lam if lam > 0 else ridge
    K.diagonal().add_(lam)
    S = torch.cholesky_solve(Zc, torch.linalg.cholesky(K))
    return ("dual", Hc, S, hm, zm, bias), Z - lam * S


def apply_fit(fit: tuple, H: torch.Tensor) -> torch.Tensor:
    """A refit layer's pre-activations on other rows ``H`` (float64)."""
    if fit[0] == "primal":
        return torch.nn.functional.linear(H, fit[1], fit[2])
    _, Hc, S, hm, zm, _ = fit
    (n, k_in), k_out = Hc.shape, S.shape[1]
    if k_out * n * k_in + len(H) * k_in * k_out < len(H) * n * (k_in + k_out):  # W itself is cheaper (few outputs)
        return torch.nn.functional.linear(H, *(torch.from_numpy(a) for a in fit_weights(fit)))
    return ((H - hm) @ Hc.T) @ S + zm


def fit_weights(fit: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a refit layer, as float64 arrays."""
    if fit[0] == "primal":
        return fit[1].numpy(), fit[2].numpy()
    _, Hc, S, hm, zm, bias = fit
    W = S.T @ Hc
    return W.numpy(), (zm - W @ hm if bias else torch.zeros(S.shape[1], dtype=S.dtype)).numpy()


def targets(Z: torch.Tensor, block) -> torch.Tensor:
    """Repair's targets of a reduced hidden layer: the original pre-activations ``Z`` mapped to the
    reduced neurons (:meth:`afde_nb.reduce.Block.target_map`). Each block's first member is
    gathered and the other members added, one neuron a row of ``Z.T`` (contiguous where ``Z`` is
    column-major, as the slider keeps it); the result is column-major too."""
    lab, coef = block.target_map()
    keep = np.flatnonzero(lab >= 0)
    k = int(lab.max()) + 1 if lab.size else 0
    first = np.zeros(k, dtype=np.int64)
    first[lab[keep][::-1]] = keep[::-1]  # the smallest member of each block
    ZT, c = Z.T, torch.from_numpy(coef)
    T = ZT[torch.from_numpy(first)].mul_(c[first, None])
    rest = keep[first[lab[keep]] != keep]
    if rest.size:
        T.index_add_(0, torch.from_numpy(lab[rest]), ZT[torch.from_numpy(rest)] * c[rest, None])
    return T.T
