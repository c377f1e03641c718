"""Issue 5.4: what users gain. Latency of the afde-reduced network vs the original and vs an
unstructured 50%-pruned network, at matched test error (torch CPU, batch 1 and 1024).

    python benchmarks/latency.py [--hidden 256 256] [--dataset glycolysis]

The pruned network is global magnitude pruning at 50% (zeros in dense tensors, as
torch.nn.utils.prune leaves them). The afde-nb network is the smallest (backward, relative eps)
whose test MSE is at most the pruned network's, found with target_error against the original.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import afde_nb  # noqa: E402
from afde_nb.eval.baselines import magnitude_prune  # noqa: E402
from afde_nb.eval.bench.run import trained_model  # noqa: E402
from _util import best_time, table  # noqa: E402


def mse(model, X, y) -> float:
    with torch.no_grad():
        return float(((model(torch.as_tensor(X)) - torch.as_tensor(y)) ** 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--dataset", default="glycolysis")
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data, model = trained_model(args.dataset, 0, tuple(args.hidden), args.epochs, "tanh")
    base = mse(model, data.X_test, data.y_test)
    pruned = magnitude_prune(model, 0.5, scope="global")
    e_pruned = mse(pruned.model, data.X_test, data.y_test)
    # the validation split picks eps; the test split reports
    c = afde_nb.compress(model, relative=True, calibration=data.X_val, calibration_targets=data.y_val,
                         target_error=max(e_pruned / max(mse(model, data.X_val, data.y_val), 1e-12) - 1, 0.0))
    good = afde_nb.compress(model, relative=True, calibration=data.X_val, calibration_targets=data.y_val,
                            target_error=0.05)
    models = {"original": (model, afde_nb.compress(model).params_before),
              "pruned 50% (global magnitude)": (pruned.model, pruned.params),
              f"afde-nb at the pruned MSE (eps={c.eps:.3g})": (c.model, c.params_after),
              f"afde-nb at <= 5% more val MSE (eps={good.eps:.3g})": (good.model, good.params_after)}
    rows = []
    for name, (m, params) in models.items():
        m.eval()
        cells = [name, params, f"{mse(m, data.X_test, data.y_test):.4g}"]
        for batch in (1, 1024):
            x = torch.as_tensor(data.X_test[np.arange(batch) % len(data.X_test)])
            with torch.no_grad():
                for _ in range(20):  # warm-up: first calls pay for allocation and dispatch caches
                    m(x)
                t = best_time(lambda: [m(x) for _ in range(200 if batch == 1 else 20)], repeat=15)
            cells.append(f"{t / (200 if batch == 1 else 20) * 1e6:.1f}")
        rows.append(cells)
    print(f"{args.dataset}, tanh MLP {data.n_features}-{'-'.join(map(str, args.hidden))}-{data.n_targets}, "
          f"original test MSE {base:.4g}; afde-nb widths {[s.neurons_after for s in c.layers]} and "
          f"{[s.neurons_after for s in good.layers]}")
    print(table(["model", "params (non-zero)", "test MSE", "batch 1 us", "batch 1024 us"], rows))


if __name__ == "__main__":
    main()
