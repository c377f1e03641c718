"""The default agglomeration (Ward, nearest-neighbour chain on one Gram product) against scipy,
scikit-learn and fastcluster: same merges, time in one run.

    python benchmarks/agglomerate_peers.py [n ...]      # default 1024 4096

Rows are random normal (d = 256, distinct distances), unit masses, no sign symmetry, so the
definitions coincide; "same merges" compares the cuts at k = n/2, n/8, n/64 blocks and the merge
heights (ours: Ward's cost; scipy's height h: cost = h^2 / 2). sklearn and fastcluster are skipped
where not installed, sklearn above n = 4096 (its ward_tree is the slowest). Flop floor: the Gram
product, 2 n^2 d flops.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from afde_nb import _core
from _util import table


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def canon(labels):
    seen = {}
    return np.array([seen.setdefault(int(x), len(seen)) for x in labels])


def main(ns) -> None:
    from scipy.cluster.hierarchy import fcluster, linkage

    rows = []
    for n in ns:
        X = np.random.default_rng(0).standard_normal((n, 256))
        ones = np.ones(n)
        t_ours, (pairs, signs, heights) = timed(lambda: _core.agglomerate(X, ones, np.arange(n), np.ones(n, dtype=np.int64),
                                                                      "ward", False, 0))
        t_signed, _ = timed(lambda: _core.agglomerate(X, ones, np.arange(n), np.ones(n, dtype=np.int64), "ward", True, 0))
        t_gram, _ = timed(lambda: X @ X.T)
        t_scipy, Z = timed(lambda: linkage(X, method="ward"))
        same = np.allclose(heights, Z[:, 2] ** 2 / 2, rtol=1e-7)
        for k in (n // 2, n // 8, n // 64):
            lab, _ = _core.replay(n, pairs, signs, n - k)
            same &= np.array_equal(lab, canon(fcluster(Z, k, criterion="maxclust")))
        t_fc = t_sk = float("nan")
        try:
            import fastcluster

            t_fc, Zf = timed(lambda: fastcluster.linkage_vector(X, method="ward"))
        except ImportError:
            pass
        if n <= 4096:
            try:
                from sklearn.cluster import AgglomerativeClustering

                t_sk, _ = timed(lambda: AgglomerativeClustering(n_clusters=n // 8, linkage="ward").fit(X))
            except ImportError:
                pass
        rows.append([n, f"{t_gram:.3f}", f"{t_ours:.3f}", f"{t_signed:.3f}", f"{t_scipy:.2f}", f"{t_fc:.2f}",
                     f"{t_sk:.2f}", f"{t_scipy / t_ours:.1f}x", "yes" if same else "NO"])
    print(table(["n", "Gram X X^T s", "ours s", "ours, sign-aware s", "scipy ward s", "fastcluster s",
                 "sklearn s", "scipy / ours", "same merges"], rows))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1024, 4096])
