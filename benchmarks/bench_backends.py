"""``afde bench --quick``: wall time of the serial backend against Ray on this machine.

    python benchmarks/bench_backends.py [--workers 2]

Each backend runs the quick profile into a fresh output folder, once with a fresh model cache
(the run trains its model) and once with the cache warm (cells only). Ray's start-up (a local
cluster) is inside its time, as a user sees it. Prints a Markdown table; one run, this machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from afde_nb.eval.bench.cells import cells
from afde_nb.eval.bench.run import PROFILES, run
from _util import table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    profile = PROFILES["quick"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("serial", "ray"):
            os.environ["AFDE_NB_CACHE"] = str(Path(tmp) / f"cache-{backend}")
            for cache in ("cold", "warm"):
                t = time.perf_counter()
                run(profile, Path(tmp) / f"{backend}-{cache}", log=lambda *_: None, backend=backend,
                    workers=args.workers if backend == "ray" else None)
                rows.append([backend, cache, f"{time.perf_counter() - t:.1f}"])
    base = {c: float(r[2]) for r in rows if r[0] == "serial" for c in [r[1]]}
    for r in rows:
        r.append(f"{base[r[1]] / float(r[2]):.2f}x")
    print(f"quick profile: {len(cells(profile))} cells; {os.cpu_count()} CPUs; Ray workers: {args.workers}\n")
    print(table(["backend", "model cache", "wall s", "speed-up over serial"], rows))


if __name__ == "__main__":
    main()
