"""``afde demo``: train a small tanh MLP on a bundled data set, compress it along eps, and compare it
at equal size with k-means folding and global magnitude pruning (the same repair for all)."""
from __future__ import annotations

import time

from ..pipeline.compress import compress
from ..data import load
from ..eval.metrics import mse, r2
from ..eval.train import train_mlp

DEMO_EPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
DEMO_KEEP = (0.75, 0.5, 0.25)


def run_demo(dataset: str = "glycolysis", hidden: tuple[int, ...] = (64, 64), epochs: int = 200, seed: int = 0,
             eps_values: tuple[float, ...] = DEMO_EPS, print_fn=print) -> list[dict]:
    """Prints and returns one row per eps (the default method: Ward, backward, relative eps: the
    output error accepted): widths, % parameters kept, test MSE and R^2 data-free, and % kept, test
    MSE and R^2 repaired on 256 training inputs (with them the estimate is corrected by measured
    errors and the repair takes error back, so the same eps cuts further: ``kept_repaired``); then
    a table at fixed budgets against the baselines."""
    from ..eval import baselines as bl

    t0 = time.perf_counter()
    data = load(dataset, seed=seed)
    model = train_mlp(data, hidden=hidden, epochs=epochs, seed=seed)
    calib = data.X_train[:256]
    X, y = data.X_test, data.y_test
    print_fn(f"{data}\ntrained tanh MLP {data.n_features}-{'-'.join(map(str, hidden))}-{data.n_targets} "
             f"in {time.perf_counter() - t0:.1f}s: test MSE {mse(model, X, y):.4g}, R^2 {r2(model, X, y):.4f}")
    print_fn("eps: the output error accepted, the model output's relative RMS error (over its spread) that "
             "compress estimates for the cut (afde_nb.pipeline.estimate); 0 is exact\n"
             "  widths: hidden neurons per layer after lumping; % params: the share of parameters kept\n"
             "  MSE free: test MSE of the compressed model as it comes, data-free (no repair)\n"
             "  % rep.: the share kept at the same eps with 256 training inputs (the estimate corrected by errors "
             "measured on them, and repaired)\n"
             "  MSE repaired: test MSE of that model after the least-squares repair on them (afde_nb.core.repair)\n"
             "  ms: time of the data-free compress() call, in milliseconds\n")
    print_fn(f"{'eps':>6}{'widths':>10}{'% params':>10}{'MSE free':>11}{'R^2':>8}{'% rep.':>8}{'MSE repaired':>14}"
             f"{'R^2':>8}{'ms':>7}")
    rows = []
    for eps in eps_values:
        t = time.perf_counter()
        c = compress(model, eps)
        ms = 1000 * (time.perf_counter() - t)
        rep = compress(model, eps, calibration=calib)
        row = {"eps": eps, "widths": [s.neurons_after for s in c.layers], "kept": c.kept,
               "mse": mse(c.model, X, y), "r2": r2(c.model, X, y), "mse_repaired": mse(rep.model, X, y),
               "r2_repaired": r2(rep.model, X, y), "kept_repaired": rep.kept, "ms": ms}
        rows.append(row)
        print_fn(f"{eps:>6g}{'-'.join(map(str, row['widths'])):>10}{100 * c.kept:>9.1f}%{row['mse']:>11.4g}"
                 f"{row['r2']:>8.4f}{100 * rep.kept:>7.1f}%{row['mse_repaired']:>14.4g}{row['r2_repaired']:>8.4f}"
                 f"{ms:>7.1f}")
    full = compress(model).params_before
    print_fn("\nat a parameter budget (test MSE; data-free | repaired on the same 256 inputs)\n"
             "  k-means fold: each layer's neurons clustered by k-means on their incoming weights, a cluster "
             "folded into one neuron (smaller and dense, as afde-nb)\n"
             "  magnitude: the smallest |weights| of all layers zeroed (sparse: the non-zeros are counted)")
    print_fn(f"{'keep':>5}{'afde-nb':>10}{'k-means fold':>14}{'magnitude':>11}  |{'afde-nb':>9}{'fold':>9}"
             f"{'magnitude':>11}")
    for share in DEMO_KEEP:
        target = int(share * full)
        ours = compress(model, target_params=target)
        ours_r = compress(model, target_params=target, calibration=calib)
        fold = bl.match_params(bl.fold_prune, model, target)
        mag = bl.match_params(bl.magnitude_prune, model, target, scope="global")
        m = [mse(k, X, y) for k in (ours.model, fold.model, mag.model, ours_r.model,
                                    bl.repair_pruned(fold, model, calib).model,
                                    bl.repair_pruned(mag, model, calib).model)]
        print_fn(f"{100 * share:>4.0f}%{m[0]:>10.4g}{m[1]:>14.4g}{m[2]:>11.4g}  |{m[3]:>9.4g}{m[4]:>9.4g}{m[5]:>11.4g}")
    return rows
