"""``afde bench --examples``: the models that are not plain stacks (:mod:`afde_nb.eval.zoo`: a digits
CNN, a residual GELU MLP, a transformer encoder) compressed by afde-nb and by the baselines on the
same groups, at equal parameters.

For each example, seed and amount a, structured pruning (norm score) and k-means folding remove
the fraction a of every group's units; afde-nb then gets the same parameter budget
(``target_params`` = the baselines' count: never more parameters than they keep). Fair pairs:

* data-free: afde-nb (no data) vs structured-norm vs folding, no repair for anyone;
* calibrated (512 training inputs): afde-nb vs structured-Wanda, no repair;
* repaired (the same 512 inputs): every method refit by the same least squares (Linear chains;
  convolution chains are refit by none).

Reported: test score (accuracy, or MSE on standardised targets), parameters, and latency of the
reduced model against the original at batch 1 and 256 (median of repeats, one process).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from .. import zoo
from ..baselines import fold_prune, repair_pruned, structured_prune
from ...pipeline.compress import compress
from ...errors import BudgetUnreachableError

AMOUNTS = (0.25, 0.5, 0.75)
CALIBRATION = 512


def latency(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward on ``x`` (no grad, after two warm-up calls)."""
    times = []
    with torch.no_grad():
        for _ in range(2):
            model(x)
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _methods(model, calib, amount: float):
    """(setting, method, reduced model, params) of every method at ``amount``."""
    s = structured_prune(model, amount)
    f = fold_prune(model, amount)
    budget = min(s.params, f.params)
    out = [("data-free", "structured-norm", s.model, s.params), ("data-free", "folding", f.model, f.params)]
    try:
        a = compress(model, target_params=budget, repair=False)
        out.append(("data-free", "afde-nb", a.model, a.params_after))
        c = compress(model, target_params=budget, calibration=calib, repair=False)
        out.append(("calibrated", "afde-nb", c.model, c.params_after))
        r = compress(model, target_params=budget, calibration=calib)
        out.append(("repaired", "afde-nb", r.model, r.params_after))
    except BudgetUnreachableError:
        pass
    w = structured_prune(model, amount, "wanda", calib)
    out.append(("calibrated", "structured-wanda", w.model, w.params))
    for name, p in (("structured-norm", s), ("structured-wanda", w), ("folding", f)):
        p = repair_pruned(p, model, calib)
        out.append(("repaired", name, p.model, p.params))
    return out


def run_examples(out: Path, seeds=(0, 1, 2), amounts=AMOUNTS, names=zoo.EXAMPLES, reps: int = 50) -> list[dict]:
    """Every example x seed x amount x method; writes OUT/examples.csv and OUT/examples.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in names:
        for seed in seeds:
            model, data = zoo.load_example(name, seed)
            model.eval()
            calib = torch.as_tensor(data.X_train[:CALIBRATION])
            x1, x256 = torch.as_tensor(data.X_test[:1]), torch.as_tensor(data.X_test[:256])
            base = {"example": name, "seed": seed, "task": data.task}
            t1, t256 = latency(model, x1, reps), latency(model, x256, max(5, reps // 5))
            full = sum(p.numel() for p in model.parameters())
            rows.append({**base, "amount": 0.0, "setting": "original", "method": "original", "params": full,
                         "score": zoo.score(model, data), "latency_1": 1.0, "latency_256": 1.0})
            for amount in amounts:
                for setting, method, m, params in _methods(model, calib, amount):
                    m.eval()
                    rows.append({**base, "amount": amount, "setting": setting, "method": method, "params": params,
                                 "score": zoo.score(m, data), "latency_1": latency(m, x1, reps) / t1,
                                 "latency_256": latency(m, x256, max(5, reps // 5)) / t256})
    with open(out / "examples.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "examples.md").write_text(render(rows))
    return rows


def render(rows: list[dict]) -> str:
    """Mean over seeds per example, amount, setting and method; the best of each setting in bold
    (highest accuracy, lowest MSE)."""
    lines = ["# Beyond plain stacks: afde-nb vs the baselines on the same groups", "",
             "Mean over seeds; score = test accuracy (digits_cnn, higher is better) or test MSE on "
             "standardised targets (lower is better); params = parameters of the whole model; latency = "
             "reduced / original at batch 1 and 256.", ""]
    for name in dict.fromkeys(r["example"] for r in rows):
        rs = [r for r in rows if r["example"] == name]
        higher = rs[0]["task"] == "classification"
        orig = [r for r in rs if r["method"] == "original"]
        lines += [f"## {name}", "",
                  f"original: score {np.mean([r['score'] for r in orig]):.4g}, {int(np.mean([r['params'] for r in orig]))} "
                  f"parameters ({len(orig)} seeds)", "",
                  "| amount | setting | method | params | score | latency b1 | latency b256 |",
                  "|---|---|---|---|---|---|---|"]
        for amount in sorted({r["amount"] for r in rs if r["method"] != "original"}):
            for setting in ("data-free", "calibrated", "repaired"):
                group = [r for r in rs if r["amount"] == amount and r["setting"] == setting]
                methods = list(dict.fromkeys(r["method"] for r in group))
                means = {m: np.mean([r["score"] for r in group if r["method"] == m]) for m in methods}
                best = (max if higher else min)(means.values()) if means else None
                for m in methods:
                    g = [r for r in group if r["method"] == m]
                    sc = f"{means[m]:.4g}"
                    lines.append(f"| {amount:.2f} | {setting} | {m} | {int(np.mean([r['params'] for r in g]))} | "
                                 f"{'**' + sc + '**' if means[m] == best else sc} | "
                                 f"{np.mean([r['latency_1'] for r in g]):.2f} | {np.mean([r['latency_256'] for r in g]):.2f} |")
        lines.append("")
    return "\n".join(lines)
