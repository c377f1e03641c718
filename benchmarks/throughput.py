"""Issue 5.1: eps-lumping throughput against a plain pass over the weights.

    python benchmarks/throughput.py [--big-width 4096] [--threads 1 2]

For each network, mode and eps (relative: 0, small 0.01, medium 0.1, large 2.0): best wall time of
``afde_nb.core.lump`` (the engine on float64 arrays), time per million parameters, and the ratio to one
numpy ``sum`` over all weight arrays (the memory-bound floor).
"""
from __future__ import annotations

import argparse

import numpy as np

import afde_nb
from _nets import random_mlp
from _util import best_time, table

EPS = {"0": 0.0, "small": 0.01, "medium": 0.1, "large": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-width", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    nets = {"2-layer w256 (3 Linear)": random_mlp(256, 3, seed=1),
            f"6-layer w{args.big_width}": random_mlp(args.big_width, 6, seed=2)}
    rows = []
    for name, net in nets.items():
        weights = net.engine_args()[0]
        params = net.num_params
        floor = best_time(lambda: sum(float(w.sum()) for w in weights), repeat=5)
        for mode in ("backward", "forward"):
            for label, eps in EPS.items():
                for th in args.threads:
                    t = best_time(lambda: afde_nb.lump(net, eps, mode, relative=True, threads=th, method="components"),
                                  repeat=5 if params < 1e6 else 2)
                    p = afde_nb.lump(net, eps, mode, relative=True, threads=th, method="components")
                    rows.append([name, f"{params / 1e6:.1f}M", mode, f"{label} ({eps:g})", th,
                                 f"{t * 1000:.2f}", f"{t * 1000 / (params / 1e6):.2f}", f"{floor * 1000:.2f}",
                                 f"{t / floor:.1f}x", p.size])
    print(table(["network", "params", "mode", "eps (relative)", "threads", "time ms", "ms / M params",
                 "numpy sum ms", "vs floor", "hidden blocks"], rows))


if __name__ == "__main__":
    main()
