"""``afde bench``: data sets x seeds -> trained (cached) MLPs -> trade-off rows -> CSV, Markdown, plots."""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from typing import Sequence
from pathlib import Path

import numpy as np

from ...data import PAPER_NAMES, load
from ...models.serialize import load_model, save_model
from ..train import train_mlp
from ...errors import InvalidArgumentError
from .tradeoff import BASELINES, VARIANTS


@dataclass(frozen=True)
class Profile:
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    hidden: tuple[int, ...]
    epochs: int
    kept: tuple[float, ...]
    baselines: tuple[str, ...] = tuple(BASELINES)
    #: afde-nb entries (:func:`afde_nb.eval.bench.tradeoff.afde_options`): Ward backward is the default
    modes: tuple[str, ...] = ("backward", "forward", "components-backward")
    #: every method with and without repair, data-free and calibrated (tradeoff.VARIANTS)
    variants: tuple[str, ...] = VARIANTS
    activation: str = "tanh"
    max_samples: int = 20_000


PROFILES = {
    "quick": Profile(("glycolysis",), (0,), (64, 64), 120, (0.97, 0.9, 0.8, 0.6, 0.4, 0.2),
                     modes=("backward", "components-backward"), variants=("", "+repair")),
    "full": Profile(PAPER_NAMES, (0, 1, 2), (128, 128), 300,
                    (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)),
}
TOLERANCES = (0.01, 0.05)


def cache_dir() -> Path:
    return Path(os.environ.get("AFDE_NB_CACHE", Path.home() / ".cache" / "afde-nb")) / "models"


def trained_model(dataset: str, seed: int, hidden: tuple[int, ...], epochs: int, activation: str,
                  max_samples: int = 20_000):
    """Train once per (data set, seed, shape); later runs load the cached state_dict. Public data
    sets larger than ``max_samples`` rows are subsampled (seeded) to bound training time."""
    data = load(dataset, seed=seed)
    if sum(len(a) for a in (data.X_train, data.X_val, data.X_test)) > max_samples:
        data = load(dataset, n=max_samples, seed=seed)
    # A data set read from the data home carries its file's SHA-256: the name then says which data the
    # model was trained on (a cached "protein" model from before was trained on the Concrete substitute).
    data_id = f"-d{data.info['sha256'][:8]}" if "sha256" in data.info else ""
    path = cache_dir() / (f"{dataset}-{activation}-{'x'.join(map(str, hidden))}-e{epochs}-n{max_samples}"
                          f"{data_id}-s{seed}.pt")
    if path.is_file():
        return data, load_model(path)
    model = train_mlp(data, hidden=hidden, activation=activation, epochs=epochs, seed=seed)
    save_model(model, path, dataset=dataset, seed=seed)
    return data, model


def can_plot() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def run(profile: Profile, out: Path, log=print, backend: str = "serial", address: str | None = None,
        workers: int | None = None) -> list[dict]:
    """Run the profile cell by cell (:mod:`afde_nb.eval.bench.cells`) on ``backend`` (``"serial"``, or
    ``"ray"``: local, or the cluster at ``address``); write points.csv, results.md and (with
    matplotlib) tradeoff.png. Finished cells are journalled in ``out/cells.jsonl``: running again
    with the same ``out`` computes only the missing (or failed) cells. A failing cell is recorded
    with its error and does not stop the others. Without matplotlib this says so *before* the long
    run and skips only the plot."""
    from tqdm.auto import tqdm

    from .backends import BACKENDS, run_ray, run_serial
    from .cells import Journal, assemble, cells

    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not can_plot():
        log("warning: matplotlib is not installed, so tradeoff.png will be skipped "
            "(pip install \".[bench]\" in the afde-nb checkout to get it); the CSV and results.md are written")
    out.mkdir(parents=True, exist_ok=True)
    keys = cells(profile)
    journal = Journal(out)
    todo = [k for k in keys if not journal.done(k)]
    if len(todo) < len(keys):
        log(f"resuming: {len(keys) - len(todo)} of {len(keys)} cells already in {journal.path}")
    bar = tqdm(total=len(todo), desc=f"afde bench ({backend})", unit="cell")

    def on_done(rec: dict) -> None:
        bar.update(1)
        if rec["error"] is not None:
            bar.write(f"cell {tuple(rec['key'])} failed: {rec['error']}")

    def train(ds: str, seed: int):
        return trained_model(ds, seed, profile.hidden, profile.epochs, profile.activation, profile.max_samples)

    t0 = time.perf_counter()
    if backend == "serial":
        run_serial(todo, profile, journal, train, on_done)
    else:
        run_ray(todo, profile, journal, train, on_done, address=address, workers=workers)
    bar.close()
    rows = assemble(journal, keys)
    write_csv(rows, out / "points.csv")
    render(rows, profile, out, time.perf_counter() - t0)
    failed = journal.failures(keys)
    if failed:
        log(f"{len(failed)} of {len(keys)} cells failed (errors in {journal.path}); re-run with the same "
            f"--out to retry them")
    log(f"wrote {out / 'points.csv'}, {out / 'results.md'}"
        + (f", {out / 'tradeoff.png'}" if can_plot() and rows else
           " (no plot: matplotlib missing)" if rows else " (no plot: no finished cell)"))
    return rows


def read_csv(path: Path) -> list[dict]:
    """Rows as ``write_csv`` wrote them, with their types back."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["params"] = int(r["seed"]), int(r["params"])
        r["budget"] = int(r["budget"]) if r["budget"] not in ("", "None") else None
        for k in ("setting", "kept", "mse", "r2", "seconds"):
            r[k] = float(r[k])
    return rows


#: the comparisons of docs/results.md: (title, our variant, peers with the same data access)
COMPARISONS = (
    ("Data-free, no repair", "", ("kmeans-fold", "magnitude-global", "magnitude", "structured-norm")),
    ("Data-free, repaired on standard-normal pseudo-inputs", "+pseudo",
     ("kmeans-fold+pseudo", "magnitude-global+pseudo", "magnitude+pseudo", "structured-norm+pseudo")),
    ("Calibrated (512 inputs), no repair", "+calib",
     ("wanda", "structured-wanda", "kmeans-fold", "magnitude-global", "magnitude", "structured-norm")),
    ("Calibrated (512 inputs), every method repaired", "+repair",
     ("kmeans-fold+repair", "magnitude-global+repair", "magnitude+repair", "structured-norm+repair",
      "wanda+repair", "structured-wanda+repair")),
)
SUMMARY_KEPT = (0.8, 0.6, 0.4, 0.2)
#: the curves of tradeoff.png (all rows are in points.csv): the default, the paper's setting and the
#: strongest peers, as they come (solid) and repaired on the calibration inputs (dashed)
PLOTTED = ("afde-backward", "afde-components-backward", "kmeans-fold", "magnitude-global", "wanda",
           "afde-backward+repair", "kmeans-fold+repair", "magnitude-global+repair", "wanda+repair")


def ratios(rows: list[dict], ours: str, peers: Sequence[str], kept: Sequence[float] = SUMMARY_KEPT
           ) -> dict[str, list[float | None]]:
    """Geometric mean over (data set, seed) of test MSE(ours) / MSE(peer) at each budget fraction,
    per peer and against the best peer of each cell ("best"); None where a method has no row."""
    out: dict[str, list[float | None]] = {}
    cells: dict[str, list[list[float]]] = {p: [[] for _ in kept] for p in (*peers, "best")}
    for (ds, seed) in sorted({(r["dataset"], r["seed"]) for r in rows}):
        sub = [r for r in rows if r["dataset"] == ds and r["seed"] == seed]
        full = next(r["params"] for r in sub if r["method"] == "original")
        for j, f in enumerate(kept):
            b = int(f * full)
            mse = {r["method"]: r["mse"] for r in sub if r.get("budget") == b}
            if ours not in mse:
                continue
            have = [p for p in peers if p in mse]
            for p in have:
                cells[p][j].append(np.log(mse[ours] / mse[p]))
            if have:
                cells["best"][j].append(np.log(mse[ours] / min(mse[p] for p in have)))
    for p, cols in cells.items():
        out[p] = [float(np.exp(np.mean(c))) if c else None for c in cols]
    return out


def summary(rows: list[dict], profile: Profile) -> list[str]:
    """The ratio tables: each afde-nb entry against the peers with the same data access."""
    present = {r["method"] for r in rows}
    lines = ["### Test MSE ratio to the peers with the same data access (geometric mean over data sets and "
             "seeds; < 1: afde-nb better)", ""]
    for title, variant, peers in COMPARISONS:
        peers = tuple(p for p in peers if p in present)
        entries = [f"afde-{m}{variant}" for m in profile.modes if f"afde-{m}{variant}" in present]
        if not entries or not peers:
            continue
        lines += [f"**{title}**", "", "| afde-nb entry | vs | " + " | ".join(f"{100 * f:.0f}%" for f in SUMMARY_KEPT)
                  + " |", "|---|---" + "|---" * len(SUMMARY_KEPT) + "|"]
        for e in entries:
            r = ratios(rows, e, peers)
            for p in ("best", *peers):
                cells = ["-" if v is None else f"{v:.2f}" for v in r[p]]
                lines.append(f"| {e} | {'best peer' if p == 'best' else p} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render(rows: list[dict], profile: Profile, out: Path, seconds: float) -> None:
    """results.md and tradeoff.png from the rows."""
    (out / "results.md").write_text(markdown(rows, profile, seconds))
    if can_plot() and rows:
        plot(rows, out / "tradeoff.png")


def write_csv(rows: list[dict], path: Path) -> None:
    keys = ["dataset", "seed", "method", "setting", "params", "kept", "mse", "r2", "seconds", "budget",
            "access", "repair"]
    rows = [dict(r, seconds=round(r["seconds"], 4)) for r in rows]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def kept_at_tolerance(rows: list[dict], tol: float) -> dict[tuple[str, str], float]:
    """(dataset, method) -> mean over seeds of the smallest % kept whose test MSE is within
    (1 + tol) x the original's."""
    out: dict[tuple[str, str], list[float]] = {}
    for (ds, seed) in {(r["dataset"], r["seed"]) for r in rows}:
        sub = [r for r in rows if r["dataset"] == ds and r["seed"] == seed]
        base = next(r["mse"] for r in sub if r["method"] == "original")
        for m in {r["method"] for r in sub if r["method"] != "original"}:
            ok = [r["kept"] for r in sub if r["method"] == m and r["mse"] <= base * (1 + tol)]
            out.setdefault((ds, m), []).append(min(ok) if ok else 1.0)
    return {k: float(np.mean(v)) for k, v in out.items()}


def markdown(rows: list[dict], profile: Profile, seconds: float) -> str:
    methods = sorted({r["method"] for r in rows if r["method"] != "original"})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = [f"Profile: data sets {', '.join(profile.datasets)}; seeds {profile.seeds}; "
             f"{profile.activation} MLP hidden {profile.hidden}, {profile.epochs} epochs max, at most "
             f"{profile.max_samples} samples per data set"
             + (f"; wall time {seconds:.0f} s." if seconds == seconds else "."), ""]
    lines += summary(rows, profile)
    for tol in TOLERANCES:
        k = kept_at_tolerance(rows, tol)
        lines += [f"### % of parameters kept at test MSE <= {1 + tol:g} x original (lower is better)", "",
                  "| data set | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for ds in datasets:
            shown = {m: round(100 * k[(ds, m)]) for m in methods if (ds, m) in k}
            best = min(shown.values())
            cells = [("-" if m not in shown else f"**{shown[m]}**" if shown[m] == best else str(shown[m]))
                     for m in methods]
            lines.append(f"| {ds} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Test MSE (standardised targets) at each parameter budget, mean over seeds", ""]
    for ds in datasets:
        sub = [r for r in rows if r["dataset"] == ds]
        base = np.mean([r["mse"] for r in sub if r["method"] == "original"])
        budgets = sorted({r["budget"] for r in sub if r["method"] != "original"}, reverse=True)
        lines += [f"**{ds}** (original MSE {base:.4g})", "",
                  "| method | " + " | ".join(f"{100 * b / sub[0]['params']:.0f}%" for b in budgets) + " |",
                  "|---" * (len(budgets) + 1) + "|"]
        for m in methods:
            cells = []
            for b in budgets:
                v = [r["mse"] for r in sub if r["method"] == m and r.get("budget") == b]
                cells.append(f"{np.mean(v):.3g}" if v else "-")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    ncols = min(4, len(datasets))
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    for ax, ds in zip(axes.flat, datasets):
        sub = [r for r in rows if r["dataset"] == ds and r["seed"] == min(x["seed"] for x in rows)]
        shown = [m for m in PLOTTED if any(r["method"] == m for r in sub)] or sorted({r["method"] for r in sub})
        for m in ["original"] + [m for m in shown if m != "original"]:
            pts = sorted((r["kept"], r["mse"]) for r in sub if r["method"] == m)
            style = dict(marker="o", lw=2) if m.startswith("afde") else dict(marker=".", lw=1, alpha=0.8)
            if m.endswith("+repair"):
                style["ls"] = "--"
            if m == "original":
                ax.axhline(pts[0][1], color="k", ls=":", lw=1, label="original")
                continue
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], label=m, **style)
        ax.set_yscale("log")
        ax.set_xlabel("% parameters kept")
        ax.set_ylabel("test MSE (standardised)")
        ax.set_title(ds)
        ax.invert_xaxis()
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
