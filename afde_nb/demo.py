"""``afde demo``: train a small tanh MLP on a bundled data set and compress it over eps."""
from __future__ import annotations

import time

from .compress import compress
from .data import load
from .train import mse, r2, train_mlp

DEMO_EPS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def run_demo(dataset: str = "glycolysis", hidden: tuple[int, ...] = (64, 64), epochs: int = 200, seed: int = 0,
             eps_values: tuple[float, ...] = DEMO_EPS, print_fn=print) -> list[dict]:
    """Prints and returns one row per (mode, eps): % parameters kept, test MSE and R^2."""
    t0 = time.perf_counter()
    data = load(dataset, seed=seed)
    model = train_mlp(data, hidden=hidden, epochs=epochs, seed=seed)
    base_mse, base_r2 = mse(model, data.X_test, data.y_test), r2(model, data.X_test, data.y_test)
    print_fn(f"{data}\ntrained tanh MLP {data.n_features}-{'-'.join(map(str, hidden))}-{data.n_targets} "
             f"in {time.perf_counter() - t0:.1f}s: test MSE {base_mse:.4g}, R^2 {base_r2:.4f}")
    print_fn("eps is relative: a fraction of each layer's mean neuron norm (see afde_nb.lump)\n")
    print_fn(f"{'mode':<9}{'eps':>6}{'widths':>14}{'% params':>10}{'test MSE':>11}{'R^2':>8}{'time ms':>9}")
    rows = []
    for mode in ("backward", "forward"):
        for eps in eps_values:
            t = time.perf_counter()
            c = compress(model, eps, mode=mode, relative=True, calibration=data.X_train[:256])
            ms = 1000 * (time.perf_counter() - t)
            row = {"mode": mode, "eps": eps, "widths": [s.neurons_after for s in c.layers],
                   "kept": c.kept, "mse": mse(c.model, data.X_test, data.y_test),
                   "r2": r2(c.model, data.X_test, data.y_test), "ms": ms}
            rows.append(row)
            print_fn(f"{mode:<9}{eps:>6g}{'-'.join(map(str, row['widths'])):>14}{100 * c.kept:>9.1f}%"
                     f"{row['mse']:>11.4g}{row['r2']:>8.4f}{ms:>9.1f}")
    print_fn("\ntarget mode (backward): the smallest eps that keeps at most a share of the parameters")
    full = compress(model).params_before
    for share in (0.9, 0.75, 0.5):
        c = compress(model, mode="backward", relative=True, target_params=int(share * full))
        print_fn(f"keep {100 * share:>3.0f}%  eps {c.eps:<8.4g}{'-'.join(str(s.neurons_after) for s in c.layers):>10}"
                 f"{100 * c.kept:>9.1f}%{mse(c.model, data.X_test, data.y_test):>11.4g}"
                 f"{r2(c.model, data.X_test, data.y_test):>8.4f}")
    return rows
