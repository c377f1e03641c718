"""The default agglomeration (Ward: one Gram product, then a nearest-neighbour chain on one k x k
matrix) against scipy, scikit-learn and fastcluster: same merges, time in one run.

    python benchmarks/agglomerate_peers.py [n ...] [--limit-s 120]     # default 1024 4096 16384
    python benchmarks/agglomerate_peers.py 4096 --before /tmp/old/afde_nb/_core.cpython-311-x86_64-linux-gnu.so

Rows are random normal (d = 256, distinct distances), unit masses, no sign symmetry, so the
definitions coincide; "same merges" compares the cuts at k = n/2, n/8, n/64 blocks with scipy's
(fcluster) and the merge heights (ours: Ward's cost; scipy's height h: cost = h^2 / 2; rtol 1e-7),
and fastcluster's heights the same way. A peer whose time, scaled from the previous n as n^2,
would exceed ``--limit-s`` is skipped and says so; fastcluster and scikit-learn are skipped where
not installed. Ours and the Gram products are the best of 2 calls, the peers one call. Flop floor:
the Gram product, n^2 d flops as a symmetric product (numpy's dsyrk; 2 n^2 d as a general GEMM),
timed here in float64 (what the engine uses) and float32. "ours, f32" is the approximate paths'
variant (float32 Gram and chain, ``gram32=True``). ``--before`` loads another build of the engine
(e.g. a wheel of an earlier commit, unzipped) and times its agglomerate in the same run, with a
check that its merges equal ours.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from afde_nb import _core
from _util import best_time, table


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def canon(labels):
    seen = {}
    return np.array([seen.setdefault(int(x), len(seen)) for x in labels])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="*", default=[1024, 4096, 16384])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--limit-s", type=float, default=120.0, help="skip a peer whose estimated time is longer")
    ap.add_argument("--before", help="another build's _core extension module (.so) to time against ours")
    args = ap.parse_args()
    before = None
    if args.before:
        import importlib.machinery
        import importlib.util

        loader = importlib.machinery.ExtensionFileLoader("_core", args.before)
        before = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_core", args.before, loader=loader))
        loader.exec_module(before)
    from scipy.cluster.hierarchy import fcluster, linkage

    try:
        import fastcluster
    except ImportError:
        fastcluster = None
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError:
        AgglomerativeClustering = None

    print(f"# Ward agglomeration against peers ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; OpenMP threads "
          f"{_core.openmp_threads()}; numpy {np.__version__}; fastcluster "
          f"{getattr(fastcluster, '__version__', 'not installed')}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)

    last: dict[str, tuple[int, float]] = {}
    notes = []

    def run_peer(name, n, fn):
        """fn's time and result, or None when its time scaled from the last n would pass the limit."""
        if name in last:
            n0, t0 = last[name]
            est = t0 * (n / n0) ** 2
            if est > args.limit_s:
                notes.append(f"{name} at n = {n} skipped: about {est:.0f} s estimated from n = {n0} ({t0:.1f} s)")
                return None, None
        t, out = timed(fn)
        last[name] = (n, t)
        return t, out

    rows = []
    for n in args.n:
        X = np.random.default_rng(0).standard_normal((n, args.d))
        ones = np.ones(n)
        one_sign = np.ones(n, dtype=np.int64)
        t_ours, (pairs, signs, heights) = timed(lambda: _core.agglomerate(X, ones, np.arange(n), one_sign, "ward", False, 0))
        t_ours = min(t_ours, best_time(lambda: _core.agglomerate(X, ones, np.arange(n), one_sign, "ward", False, 0), 1))
        t_signed = best_time(lambda: _core.agglomerate(X, ones, np.arange(n), one_sign, "ward", True, 0), 2)
        t_f32 = best_time(lambda: _core.agglomerate(X, ones, np.arange(n), one_sign, "ward", False, 0, True), 2)
        t_before, same_before = None, "-"
        if before is not None:
            t_before, got = timed(lambda: before.agglomerate(X, ones, np.arange(n), one_sign, "ward", False, 0))
            t_before = min(t_before, best_time(lambda: before.agglomerate(X, ones, np.arange(n), one_sign, "ward", False, 0), 1))
            same_before = "yes" if all(np.array_equal(a, b) for a, b in zip(got[:2], (pairs, signs))) and \
                np.allclose(got[2], heights, rtol=1e-12) else "NO"
            del got
        t_gram = best_time(lambda: X @ X.T, 2)
        X32 = X.astype(np.float32)
        t_gram32 = best_time(lambda: X32 @ X32.T, 2)
        del X32
        t_scipy, Z = run_peer("scipy", n, lambda: linkage(X, method="ward"))
        same = "-"
        if Z is not None:
            ok = np.allclose(heights, Z[:, 2] ** 2 / 2, rtol=1e-7)
            for k in (n // 2, n // 8, n // 64):
                lab, _ = _core.replay(n, pairs, signs, n - k)
                ok &= np.array_equal(lab, canon(fcluster(Z, k, criterion="maxclust")))
            same = "yes" if ok else "NO"
        del Z
        t_fc = t_sk = None
        same_fc = "-"
        if fastcluster is not None:
            t_fc, Zf = run_peer("fastcluster", n, lambda: fastcluster.linkage(X, method="ward", preserve_input=True))
            if Zf is not None:
                same_fc = "yes" if np.allclose(heights, Zf[:, 2] ** 2 / 2, rtol=1e-7) else "NO"
            del Zf
        if AgglomerativeClustering is not None:
            t_sk, _ = run_peer("sklearn", n, lambda: AgglomerativeClustering(n_clusters=n // 8, linkage="ward").fit(X))

        def s(t):
            return "skipped" if t is None else f"{t:.3f}" if t < 10 else f"{t:.1f}"

        def r(t):
            return "-" if t is None else f"{t / t_ours:.1f}x" if t / t_ours < 10 else f"{t / t_ours:.0f}x"

        rows.append([n, s(t_gram32), s(t_gram), s(t_ours), f"{t_ours / t_gram:.1f}x", s(t_signed), s(t_f32),
                     s(t_before), r(t_before), same_before, s(t_scipy), r(t_scipy),
                     s(t_fc), r(t_fc), s(t_sk), r(t_sk), same, same_fc])
        print(f"n = {n} done", flush=True)
    print()
    print(table(["n", "Gram f32 s", "Gram f64 s (floor)", "ours s", "ours / Gram f64", "ours, sign-aware s", "ours, f32 s",
                 "before s", "before / ours", "same merges as before", "scipy ward s", "scipy / ours", "fastcluster s", "fastcluster / ours", "sklearn s", "sklearn / ours",
                 "same merges as scipy", "same heights as fastcluster"], rows))
    for note in notes:
        print(f"\n{note}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
