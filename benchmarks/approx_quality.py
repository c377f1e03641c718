"""Issue 10: what the approximate merge path (``compress(..., approx=r)``) costs in partition
quality on trained models, against the exact path (docs/performance.md §8.3's table).

    python benchmarks/approx_quality.py [--approx 128 256 384 512]

The models are the bench's tanh 128-128 MLPs (``afde_nb.eval.bench.run.trained_model(dataset, seed=0,
hidden=(128, 128), epochs=300, activation="tanh")``, cached under ``$AFDE_NB_CACHE`` or
``~/.cache/afde-nb/models``; trained on first use) of glycolysis, polymerization and rlc.
Each is compressed to 80/60/40/20 % of its parameters (``target_params=int(frac * n_params)``,
``repair=False``) in two settings:

- "calibrated": ``calibration=data.X_val`` (the 450 validation rows; r >= 450 means all of them,
  in float32);
- "data-free": no calibration (the path's 512 pseudo-inputs; r >= 512 means all of them, in
  float32).

Error = MSE of the reduced model's outputs against the original model's on the 450 validation
rows, relative to the mean square of the original's outputs. Printed, all from this one run:

- per setting and r, the figure error(approx r) / error(exact path) per budget as the geometric
  mean over the 3 models, and the geometric mean and max over all 12 cells;
- the number of cells (per budget of 3, overall of 12) whose ratio exceeds 1.01 (issue 10's
  target: at most 1 % more calibration error);
- for r = 512 data-free (all probe rows, float32 throughout: the probes, Ward's Gram and chain),
  in how many cells the partition (``Compression.partition``, every hidden layer) is identical to
  the exact path's, label for label and up to a renumbering of the blocks.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from _util import table

DATASETS = ("glycolysis", "polymerization", "rlc")
FRACS = (0.8, 0.6, 0.4, 0.2)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Block labels renumbered by first occurrence (the same partition -> the same array)."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--approx", type=int, nargs="*", default=[128, 256, 384, 512])
    args = ap.parse_args()

    import torch

    import afde_nb
    from afde_nb.eval.bench.run import cache_dir, trained_model

    t0 = time.perf_counter()
    print(f"# approximate merge path: partition quality ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; OpenMP threads "
          f"{afde_nb._core.openmp_threads()}, torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
          f"{np.__version__}; load average before: {_load()}\n", flush=True)

    models = {}
    for ds in DATASETS:
        cached = any(cache_dir().glob(f"{ds}-tanh-128x128-e300-*-s0.pt"))
        if not cached:
            print(f"(training {ds}: not cached in {cache_dir()})", flush=True)
        data, model = trained_model(ds, seed=0, hidden=(128, 128), epochs=300, activation="tanh")
        model.eval()
        X_val = np.asarray(data.X_val, dtype=np.float32)
        with torch.no_grad():
            y0 = model(torch.from_numpy(X_val)).double().numpy()
        n_params = sum(p.numel() for p in model.parameters())
        models[ds] = (model, X_val, y0, n_params)

    def error(c, X_val, y0) -> float:
        with torch.no_grad():
            y = c.model(torch.from_numpy(X_val)).double().numpy()
        return float(np.mean((y - y0) ** 2) / np.mean(y0 ** 2))

    settings = ("calibrated", "data-free")
    # err[setting][r][(ds, frac)], r = None for the exact path; parts likewise (the partitions)
    err: dict = {s: {} for s in settings}
    parts: dict = {s: {} for s in settings}
    for s in settings:
        for r in [None, *args.approx]:
            err[s][r], parts[s][r] = {}, {}
            for ds in DATASETS:
                model, X_val, y0, n_params = models[ds]
                calib = X_val if s == "calibrated" else None
                for f in FRACS:
                    c = afde_nb.compress(model, target_params=int(f * n_params), calibration=calib, repair=False,
                                         approx=r)
                    if r is not None:
                        assert c.path.meta.get("approx") == r
                    err[s][r][ds, f] = error(c, X_val, y0)
                    parts[s][r][ds, f] = [np.asarray(l) for l in c.partition]

    gm = lambda v: float(np.exp(np.mean(np.log(v))))  # noqa: E731
    rows, over = [], []
    for s in settings:
        n_rows = len(models[DATASETS[0]][1])
        for r in args.approx:
            ratio = {k: err[s][r][k] / err[s][None][k] for k in err[s][None]}
            label = str(r)
            if s == "calibrated" and r >= n_rows:
                label = f"{r} (all {n_rows})"
            per = [gm([ratio[ds, f] for ds in DATASETS]) for f in FRACS]
            allv = list(ratio.values())
            rows.append([s, label, *[f"{v:.3f}" for v in per], f"{gm(allv):.3f}", f"{max(allv):.3f}"])
            cnt = [sum(ratio[ds, f] > 1.01 for ds in DATASETS) for f in FRACS]
            over.append([s, label, *[f"{k}/3" for k in cnt], f"{sum(cnt)}/12 ({sum(cnt) / 12:.2f})"])

    heads = [f"{int(f * 100)} %" for f in FRACS]
    print("error with approx r / error with the exact path (geometric mean over the 3 models; last two "
          "columns over all 12 cells)\n")
    print(table(["setting", "r", *heads, "geomean", "max"], rows))
    print("\ncells with ratio > 1.01 (of 3 models per budget; of 12 overall)\n")
    print(table(["setting", "r", *heads, "all"], over))

    print("\nper cell (ratio error(approx r) / error(exact); exact path's relative error)\n")
    cell_rows = []
    for s in settings:
        for ds in DATASETS:
            for f in FRACS:
                cell_rows.append([s, ds, f"{int(f * 100)} %", f"{err[s][None][ds, f]:.3e}",
                                  *[f"{err[s][r][ds, f] / err[s][None][ds, f]:.4f}" for r in args.approx]])
    print(table(["setting", "data set", "budget", "exact error", *[f"r={r}" for r in args.approx]], cell_rows))

    if 512 in args.approx:
        s = "data-free"
        same = sum(all(np.array_equal(a, b) for a, b in zip(parts[s][512][k], parts[s][None][k])) for k in parts[s][None])
        same_c = sum(all(np.array_equal(_canonical(a), _canonical(b)) for a, b in zip(parts[s][512][k], parts[s][None][k]))
                     for k in parts[s][None])
        worst = max(abs(err[s][512][k] / err[s][None][k] - 1.0) for k in err[s][None])
        print(f"\nr = 512, data-free (all 512 pseudo-inputs, float32): partitions identical to the exact path's in "
              f"{same} of 12 cells label for label, {same_c} of 12 up to renumbering; max |ratio - 1| = {worst:.2e}")

    print(f"\nload average after: {_load()}; total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
