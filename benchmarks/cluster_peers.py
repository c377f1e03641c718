"""Issue 5.2: one block's eps-BDE split is single-linkage clustering under L1 at threshold eps.

    python benchmarks/cluster_peers.py [--max-n 16384]

Compares ``afde_nb._core.cluster_l1`` with scipy.cluster.hierarchy (single linkage + fcluster),
sklearn DBSCAN(min_samples=1, metric="manhattan") and the engine's own all-pairs definition, on
clustered rows (centres + noise, as trained layers have) at a threshold between the within- and
between-cluster distances. Checks the partitions are identical; peers are skipped where their
estimated time exceeds the budget.
"""
from __future__ import annotations

import argparse

import numpy as np

from afde_nb import _core
from _util import best_time, table


def canonical(labels) -> np.ndarray:
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(c), len(seen)) for c in labels])


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 16, 2), d))
    X = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, d)) * 0.02
    eps = 0.02 * d * 1.5  # within-cluster L1 ~ 0.02 * sqrt(2/pi) * 2 * d ~ 0.032 d; between ~ 1.13 d
    return X, eps


def scipy_labels(X, eps):
    from scipy.cluster.hierarchy import fcluster, linkage

    return canonical(fcluster(linkage(X, method="single", metric="cityblock"), t=eps, criterion="distance"))


def dbscan_labels(X, eps):
    from sklearn.cluster import DBSCAN

    return canonical(DBSCAN(eps=eps, min_samples=1, metric="manhattan").fit(X).labels_)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-n", type=int, default=16384)
    ap.add_argument("--peer-budget", type=float, default=120.0, help="skip a peer above this many seconds")
    args = ap.parse_args()
    rows = []
    for n in [512, 1024, 2048, 4096, 8192, 16384]:
        if n > args.max_n:
            break
        for d in [64, 256, 1024]:
            X, eps = data(n, d)
            ours = _core.cluster_l1(X, eps)
            t_ours = best_time(lambda: _core.cluster_l1(X, eps), repeat=3)
            t_ours1 = best_time(lambda: _core.cluster_l1(X, eps, threads=1), repeat=3)
            row = [n, d, int(ours.max()) + 1, f"{t_ours * 1000:.1f}", f"{t_ours1 * 1000:.1f}"]
            # pairwise peers are O(n^2 d); estimate from n = 512 scaling before running
            est = 2e-9 * n * n * d
            for name, fn in (("scipy", scipy_labels), ("dbscan", dbscan_labels)):
                if est > args.peer_budget:
                    row += ["skipped", "-"]
                    continue
                t = best_time(lambda: fn(X, eps), repeat=1)
                same = np.array_equal(fn(X, eps), ours)
                row += [f"{t * 1000:.0f} ({t / t_ours:.0f}x)", "yes" if same else "NO"]
            if n <= 2048:
                ref = _core.cluster_l1(X, eps, allpairs=True)
                row.append("yes" if np.array_equal(ref, ours) else "NO")
            else:
                row.append("-")
            rows.append(row)
            print(row, flush=True)
    print(table(["n", "d", "blocks", "engine ms (2 thr)", "engine ms (1 thr)", "scipy ms (x slower)", "same",
                 "DBSCAN ms (x slower)", "same", "all-pairs same"], rows))


if __name__ == "__main__":
    main()
