"""How long the default compression takes (method.md §8; issue 8's target: widths of 128 in < 20 ms
without repair), split into building the merge path and cutting it, and what repair adds.

    python benchmarks/path_speed.py

Prints a Markdown table; figures are the best of 5 runs on this machine, in one run.
"""
from __future__ import annotations

import numpy as np
import torch

import afde_nb
from afde_nb.adapters import to_network
from afde_nb.path import merge_path
from _util import best_time, table


def mlp(widths, act=torch.nn.Tanh):
    torch.manual_seed(0)
    mods = []
    for k in range(len(widths) - 1):
        mods.append(torch.nn.Linear(widths[k], widths[k + 1]))
        if k < len(widths) - 2:
            mods.append(act())
    return torch.nn.Sequential(*mods)


def main() -> None:
    rows = []
    X = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    for widths in ([8, 64, 64, 2], [8, 128, 128, 2], [8, 256, 256, 2], [8, 512, 512, 2], [8, 1024, 1024, 2]):
        model = mlp(widths)
        net = to_network(model)
        def build():
            p = merge_path(net)
            for lp in p.layers:  # the agglomeration runs on first use beyond the exact merges
                lp.pairs
            return p

        t_path = best_time(build, repeat=5)
        path = build()
        t_cut = best_time(lambda: path.partition(0.1), repeat=5)
        t_all = best_time(lambda: afde_nb.compress(model, 0.1), repeat=5)
        t_target = best_time(lambda: afde_nb.compress(model, target_params=net.num_params // 2), repeat=5)
        t_rep = best_time(lambda: afde_nb.compress(model, 0.1, calibration=X), repeat=3)
        rows.append(["-".join(map(str, widths)), f"{1e3 * t_path:.1f}", f"{1e3 * t_cut:.2f}", f"{1e3 * t_all:.1f}",
                     f"{1e3 * t_target:.1f}", f"{1e3 * t_rep:.1f}"])
    print(table(["widths", "merge path ms", "cut ms", "compress(eps) ms", "compress(target_params) ms",
                 "compress + calibration + repair ms"], rows))
    print(f"\nOpenMP threads: {afde_nb._core.openmp_threads()}")
    # a slider move in the panel's state: the first compression builds the merge path, later moves
    # at the same setting reuse it (only the cut, the quotient and the figures)
    from afde_nb.widgets.state import PanelState

    rows = []
    rng = np.random.default_rng(0)
    for width in (128, 1024):
        model = mlp([8, width, width, 2])
        X = rng.standard_normal((2000, 8)).astype(np.float32)
        with torch.no_grad():
            y = model(torch.as_tensor(X)).numpy()
        for repair in (False, None):
            s = PanelState(model, (X, y), calibration=X[:512], eps=0.05, repair=repair, path_points=0)
            first = best_time(s.update, repeat=1)
            moves = []
            for e in (0.02, 0.1, 0.03, 0.2, 0.05):
                s.eps = e
                moves.append(best_time(s.update, repeat=1))
            rows.append([f"8-{width}-{width}-2", "on" if repair is None else "off", f"{1e3 * first:.0f}",
                         f"{1e3 * float(np.median(moves)):.0f}", f"{1e3 * max(moves):.0f}"])
    print()
    print(table(["widths", "repair", "first update ms (builds the path)", "slider move ms (median)",
                 "slider move ms (max)"], rows))


if __name__ == "__main__":
    main()
