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
        t_path = best_time(lambda: merge_path(net), repeat=5)
        path = merge_path(net)
        t_cut = best_time(lambda: path.partition(0.1), repeat=5)
        t_all = best_time(lambda: afde_nb.compress(model, 0.1), repeat=5)
        t_target = best_time(lambda: afde_nb.compress(model, target_params=net.num_params // 2), repeat=5)
        t_rep = best_time(lambda: afde_nb.compress(model, 0.1, calibration=X), repeat=3)
        rows.append(["-".join(map(str, widths)), f"{1e3 * t_path:.1f}", f"{1e3 * t_cut:.2f}", f"{1e3 * t_all:.1f}",
                     f"{1e3 * t_target:.1f}", f"{1e3 * t_rep:.1f}"])
    print(table(["widths", "merge path ms", "cut ms", "compress(eps) ms", "compress(target_params) ms",
                 "compress + calibration + repair ms"], rows))
    print(f"\nOpenMP threads: {afde_nb._core.openmp_threads()}")


if __name__ == "__main__":
    main()
