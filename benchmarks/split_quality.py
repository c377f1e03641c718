"""The calibrated budget split's quality, cell by cell against the committed figures (issue 29).

    AFDE_NB_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/split_quality.py --full --out /tmp/sq-full
    AFDE_NB_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/split_quality.py --lm --out /tmp/sq-lm
    python benchmarks/split_quality.py --compare /tmp/split-full/points.csv     # a whole ``afde bench --full`` run
    python benchmarks/split_quality.py --compare-lm /tmp/split-lm/lm_points.csv  # a whole ``afde bench --lm`` run

Runs only the cells the split decides (afde-nb with calibration and a parameter budget: ``afde
bench --full``'s ``afde-backward``/``afde-forward`` ``+calib``/``+repair`` rows, every data set,
seed and budget; ``afde bench --lm``'s ``calibrated`` and ``repaired`` afde-nb rows, both variants,
every amount) with the bench's own functions (same models, calibration, budgets, test metric), and
prints each cell's figure (test MSE; validation perplexity) beside the committed one
(docs/results/points.csv, docs/results/lm_points.csv): ratio new / committed, how many cells are
within 1 % or better, the worst. Lower is better for both figures.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_ENTRIES = ("backward", "forward")
FULL_VARIANTS = ("+calib", "+repair")


def full_rows(out: Path, datasets=None, seeds=None) -> list[dict]:
    from afde_nb.eval.bench.cells import compute
    from afde_nb.eval.bench.run import PROFILES, trained_model
    import dataclasses

    p = dataclasses.replace(PROFILES["full"], variants=FULL_VARIANTS, modes=FULL_ENTRIES)
    p = dataclasses.replace(p, datasets=tuple(datasets or p.datasets), seeds=tuple(seeds or p.seeds))
    rows = []
    for ds in p.datasets:
        for seed in p.seeds:
            data, model = trained_model(ds, seed, p.hidden, p.epochs, p.activation, p.max_samples)
            t = time.perf_counter()
            rows += compute((ds, seed, "original", 1.0), data, model, p)
            for m in p.modes:
                for f in (1.0,) + tuple(p.kept):
                    rows += compute((ds, seed, f"afde:{m}", f), data, model, p)
            print(f"{ds} seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
    _write(rows, out / "points.csv")
    return rows


def lm_rows(out: Path, variants=None) -> list[dict]:
    import torch
    from afde_nb import compress
    from afde_nb.data import load_text
    from afde_nb.eval.lm import LMConfig, perplexity
    from afde_nb.eval.bench.lm import PROFILES, mlp_params, mlp_params_with, trained_lm, units_within, windows

    prof = PROFILES["full"]
    text = load_text(prof.text)
    train_ids, val_ids = text.encode(text.train), text.encode(text.val)
    rows = []
    for variant, fields in prof.variants.items():
        if variants and variant not in variants:
            continue
        config = LMConfig(vocab=len(text.vocab), **fields)
        model = trained_lm(config, train_ids, text.sha256, prof.seed)
        calib = windows(train_ids, config.context, prof.calibration, prof.seed + 1)
        x = calib[:, :-1]
        total, mlp_total = sum(p.numel() for p in model.parameters()), mlp_params(model)
        rows.append({"variant": variant, "kept_target": 1.0, "setting": "original", "method": "original",
                     "perplexity": perplexity(model, val_ids, config.context), "seconds": 0.0})
        for kept in prof.kept:
            budget = total - mlp_total + mlp_params_with(model, units_within(model, kept))
            for setting, kw in (("calibrated", dict(calibration=x, repair=False)), ("repaired", dict(calibration=x))):
                t = time.perf_counter()
                c = compress(model, target_params=budget, **kw)
                s = time.perf_counter() - t
                ppl = perplexity(c.model, val_ids, config.context)
                rows.append({"variant": variant, "kept_target": kept, "setting": setting, "method": "afde-nb",
                             "perplexity": ppl, "seconds": s, "params": c.params_after})
                b = {k: v for k, v in (c.budget_split or {}).items() if k not in ("split_candidates", "split_estimates")}
                print(f"{variant} {kept:.0%} {setting:10s} perplexity {ppl:.4f} ({s:.1f} s compress) {b}", flush=True)
    _write(rows, out / "lm_points.csv")
    return rows


def _write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def _read(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def compare(new: list[dict], old: list[dict], key, value: str, keep) -> list[tuple]:
    """(key, new, old, new / old) for every cell of ``new`` that ``keep`` selects and ``old`` has."""
    ref = {key(r): float(r[value]) for r in old if keep(r) and r[value] not in ("", None)}
    out = []
    for r in new:
        if keep(r) and key(r) in ref and r[value] not in ("", None):
            a, b = float(r[value]), ref[key(r)]
            out.append((key(r), a, b, a / b if b > 0 else float("inf") if a > 0 else 1.0))
    return out


def report(pairs: list[tuple], what: str, worst: int = 10) -> None:
    import numpy as np

    if not pairs:
        print(f"{what}: no cells to compare")
        return
    r = np.array([p[3] for p in pairs])
    print(f"{what}: {len(pairs)} cells; within 1 % or better: {(r <= 1.01).sum()}; better by > 1 %: "
          f"{(r < 0.99).sum()}; worse by > 1 %: {(r > 1.01).sum()}; median ratio {np.median(r):.4f}, "
          f"geometric mean {np.exp(np.mean(np.log(np.clip(r, 1e-12, None)))):.4f}")
    for k, a, b, q in sorted(pairs, key=lambda p: -p[3])[:worst]:
        if q > 1.01:
            print(f"  worse: {k}: {a:.6g} vs {b:.6g} ({q:.4f}x)")


def full_compare(new: list[dict]) -> None:
    old = _read(ROOT / "docs/results/points.csv")
    key = lambda r: (r["dataset"], int(r["seed"]), r["method"], int(float(r["budget"])))  # noqa: E731
    orig = compare(new, old, key, "mse", lambda r: r["method"] == "original")
    report(orig, "full bench, original models (same training?)", worst=3)
    for m in FULL_ENTRIES:
        for v in FULL_VARIANTS:
            name = f"afde-{m}{v}"
            report(compare(new, old, key, "mse", lambda r, n=name: r["method"] == n), f"full bench {name}, test MSE")
    report(compare(new, old, key, "mse", lambda r: r["method"].startswith("afde-") and r["access"] == "calibration"
                   and "components" not in r["method"]), "full bench, every calibrated afde-nb cell")


def lm_compare(new: list[dict]) -> None:
    old = _read(ROOT / "docs/results/lm_points.csv")
    key = lambda r: (r["variant"], float(r["kept_target"]), r["setting"], r["method"])  # noqa: E731
    report(compare(new, old, key, "perplexity", lambda r: r["method"] == "original"), "LM originals", worst=2)
    pairs = compare(new, old, key, "perplexity", lambda r: r["method"] == "afde-nb" and r["setting"] != "data-free")
    for k, a, b, q in pairs:
        print(f"  {k}: {a:.4f} vs {b:.4f} ({q:.4f}x)")
    report(pairs, "LM bench, afde-nb calibrated and repaired, validation perplexity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--lm", action="store_true")
    ap.add_argument("--out", default="/tmp/split-quality")
    ap.add_argument("--datasets", nargs="+", help="--full: these data sets only")
    ap.add_argument("--seeds", nargs="+", type=int, help="--full: these seeds only")
    ap.add_argument("--variants", nargs="+", help="--lm: these variants only (gelu, gated)")
    ap.add_argument("--compare", help="a points.csv of afde bench --full to compare")
    ap.add_argument("--compare-lm", help="an lm_points.csv of afde bench --lm to compare")
    a = ap.parse_args()
    out = Path(a.out)
    if a.full:
        full_compare(full_rows(out, a.datasets, a.seeds))
    if a.lm:
        lm_compare(lm_rows(out, a.variants))
    if a.compare:
        full_compare(_read(Path(a.compare)))
    if a.compare_lm:
        lm_compare(_read(Path(a.compare_lm)))


if __name__ == "__main__":
    main()
