"""``afde bench --lm``: character-level transformer language models (:mod:`afde_nb.eval.lm`) on Tiny
Shakespeare, their MLPs compressed by afde-nb and by structured pruning and folding peers at the
same parameter counts, scored by validation perplexity.

Two variants are trained once per profile (seeded, cached under the bench cache,
:func:`afde_nb.eval.bench.run.cache_dir`): GPT-2-style GELU MLPs and LLaMA-style gated MLPs. At
each fraction ``kept`` of the MLP parameters every peer keeps the same number ``k`` of hidden units
in every block (the largest ``k`` whose MLP parameters are at most ``kept`` of the original's), and
afde-nb gets the peers' whole-model parameter count as ``target_params`` (attention, embeddings
and LayerNorms are the same in every model, so the budget is the MLPs'; afde-nb may spread it
unevenly over the blocks and ends within one unit of it, never above).

Methods, each with the data it may see:

* ``afde-nb``: :func:`afde_nb.compress` (data-free; ``+calib``: merge bounds and the split between
  blocks measured on the calibration text, no repair; ``+repair``: its least-squares repair);
* ``tp-magnitude``: Torch-Pruning's ``MetaPruner`` with ``MagnitudeImportance(p=2)`` (data-free);
* ``tp-taylor``: the same with ``TaylorImportance``, gradients of the LM loss on the calibration
  text (there is no data-free Taylor score);
* ``wanda-sp``: Wanda-sp / FLAP's structured score ``||W_out[:, j]||_2 * ||h_j||_2`` over the
  calibration tokens (``h``: the output layer's input), pruned by the same ``MetaPruner``; FLAP's
  bias compensation is what the least-squares repair (which refits the bias) does, so it is the
  ``+repair`` row;
* ``folding``: k-means folding of the hidden units (:func:`afde_nb.eval.baselines.fold_prune`,
  data-free; a gated MLP's units clustered by their gate and up rows together).

``+repair`` (every method, the same calibration text): the MLP output layers refit by the same
ridge least squares (:mod:`afde_nb.core.repair`) towards the original block's output on the
original model's block inputs: :func:`~afde_nb.eval.baselines.repair_pruned` for folding,
``compress``'s repair for afde-nb, :func:`refit_mlps` (the same formula, tested equal) for the
pruners' models (for a gated MLP, :func:`~afde_nb.eval.baselines.repair_pruned` refits the down
projection as afde-nb's repair does). afde-nb and folding act on the groups afde-nb finds
(:func:`afde_nb.models.capture.capture`: GELU and gated MLPs alike); where one of them refuses a
model its cells are recorded as not applicable, with the reason, and fill in by themselves once it
accepts the model.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...data.text import load_text
from ...errors import InvalidArgumentError, MissingDependencyError, UnsupportedLayerError
from ...core.repair import fit_weights, refit
from ...models.capture import capture
from ...pipeline.compress import compress
from ..baselines import fold_prune, match_params, repair_pruned
from ..lm import CharLM, LMConfig, lm_loss, mlp_params, mlp_params_with, perplexity, train_lm, windows
from .run import cache_dir

#: (setting, method) of every cell, in table order: the settings are the data each method sees
CELLS = (("data-free", "afde-nb"), ("data-free", "tp-magnitude"), ("data-free", "folding"),
         ("calibrated", "afde-nb"), ("calibrated", "tp-taylor"), ("calibrated", "wanda-sp"),
         ("repaired", "afde-nb"), ("repaired", "tp-magnitude"), ("repaired", "tp-taylor"),
         ("repaired", "wanda-sp"), ("repaired", "folding"))
PRUNERS = ("tp-magnitude", "tp-taylor", "wanda-sp")
SETTINGS = {"data-free": "no data", "calibrated": "calibration text, no repair",
            "repaired": "calibration text, + the same least-squares repair"}


@dataclass(frozen=True)
class LMProfile:
    """Models (``variants``: name -> :class:`LMConfig` fields besides the vocabulary), the
    fractions of MLP parameters kept, the calibration text (``calibration`` windows of the
    context's length from the training text, seeded) and the validation characters scored
    (None: all)."""

    variants: dict = field(default_factory=dict)
    kept: tuple[float, ...] = (0.8, 0.6, 0.4)
    calibration: int = 64
    seed: int = 0
    val_chars: int | None = None
    text: str = "tinyshakespeare"


_FULL = dict(layers=4, d_model=128, heads=4, context=128, steps=500, batch=32, lr=3e-3, warmup=50)
_QUICK = dict(layers=2, d_model=32, heads=2, context=32, steps=600, batch=16, lr=3e-3, warmup=30)
PROFILES = {
    # gated width 344 ~ 2/3 of 512: the same MLP parameters (LLaMA's rule)
    "full": LMProfile({"gelu": dict(_FULL, mlp="gelu", d_ff=512), "gated": dict(_FULL, mlp="gated", d_ff=344)}),
    "quick": LMProfile({"gelu": dict(_QUICK, mlp="gelu", d_ff=128), "gated": dict(_QUICK, mlp="gated", d_ff=88)},
                       calibration=64, val_chars=20_000),
}


# ---- models ------------------------------------------------------------------------------------

def trained_lm(config: LMConfig, train_ids: np.ndarray, data_sha: str, seed: int, log=print) -> CharLM:
    """Train once per (text, configuration, seed); later calls load the cached weights."""
    tag = hashlib.sha256(config.key().encode()).hexdigest()[:12]
    path = cache_dir() / f"lm-{config.mlp}-{tag}-d{data_sha[:8]}-s{seed}.pt"
    model = CharLM(config)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    log(f"training the {config.mlp} char LM ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{config.steps} steps; cached as {path})")
    t0 = time.perf_counter()
    model = train_lm(config, train_ids, seed, log=log)
    log(f"  trained in {time.perf_counter() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


# ---- budgets -----------------------------------------------------------------------------------

def units_within(model: CharLM, kept: float) -> int:
    """The largest number of hidden units per block whose MLP parameters (every block keeping as
    many) are at most ``kept`` of the model's."""
    target = math.floor(kept * mlp_params(model))
    units = model.config.d_ff
    while units > 1 and mlp_params_with(model, units) > target:
        units -= 1
    return units


# ---- the pruners (Torch-Pruning) and their repair ----------------------------------------------

def tp_prune(model: CharLM, units: int, score: str, calib: torch.Tensor) -> tuple[CharLM, list[np.ndarray]]:
    """A copy of ``model`` whose MLPs keep ``units`` hidden units each, chosen by Torch-Pruning's
    ``MetaPruner`` with ``score``: ``"magnitude"`` (``MagnitudeImportance(p=2)``), ``"taylor"``
    (``TaylorImportance``, gradients of the LM loss on ``calib`` windows) or ``"wanda-sp"``
    (``||W_out[:, j]|| * ||h_j||`` on ``calib``). Only the MLP hidden units are pruned: every
    other layer is in ``ignored_layers``. Returns the pruned copy and the kept units of each block."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise MissingDependencyError("Torch-Pruning is not installed: pip install torch-pruning (or \".[bench]\" "
                                     "in the afde-nb checkout)") from exc
    m = copy.deepcopy(model).eval()
    mlps = m.mlps()
    # Torch-Pruning roots a block's group at whichever producer it meets first (a gated MLP's up or gate)
    block_of = {id(p): b for b, mlp in enumerate(mlps) for p in mlp.producers}
    ignored = [mod for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Embedding, nn.LayerNorm))
               and id(mod) not in block_of]
    n = model.config.d_ff
    if score == "magnitude":
        importance = tp.importance.MagnitudeImportance(p=2)
    elif score == "taylor":
        importance = tp.importance.TaylorImportance()
        m.zero_grad()
        lm_loss(m, calib).backward()
    elif score == "wanda-sp":
        norms = _consumer_input_norms(m, calib[:, :-1])
        scores = [torch.linalg.vector_norm(mlp.consumer.weight.detach(), dim=0) * h for mlp, h in zip(mlps, norms)]

        class WandaSp(tp.importance.Importance):
            def __call__(self, group):
                return scores[block_of[id(group[0].dep.target.module)]]

        importance = WandaSp()
    else:
        raise InvalidArgumentError(f"score must be 'magnitude', 'taylor' or 'wanda-sp', got {score!r}")
    pruner = tp.pruner.MetaPruner(
        m, calib[:2, :-1], importance, pruning_ratio=0.0,
        # n - int(n * (1 - r)) units go: r set half a unit past n - units, so float rounding cannot move it
        pruning_ratio_dict={mlp.producers[0]: 1.0 - (units + 0.5) / n for mlp in mlps}, ignored_layers=ignored,
        unwrapped_parameters=[(m.pos, 1)])
    dropped = {}
    for group in pruner.step(interactive=True):
        dropped[block_of[id(group[0].dep.target.module)]] = [int(i) for i in group[0].idxs]
        group.prune()
    m.zero_grad(set_to_none=True)
    kept = [np.setdiff1d(np.arange(n), dropped.get(b, [])) for b in range(len(mlps))]
    if any(len(k) != units for k in kept) or any(mlp.consumer.in_features != units for mlp in mlps):
        raise RuntimeError(f"Torch-Pruning kept {[len(k) for k in kept]} units, asked for {units}")
    return m.eval(), kept


def _mlp_inputs(model: CharLM, x: torch.Tensor) -> list[torch.Tensor]:
    """The input rows of every block's MLP when ``model`` runs on ``x`` (tokens as rows)."""
    got, hooks = [], []
    for mlp in model.mlps():
        hooks.append(mlp.register_forward_pre_hook(lambda mod, inp: got.append(inp[0].detach().flatten(0, -2))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def _consumer_input_norms(model: CharLM, x: torch.Tensor) -> list[torch.Tensor]:
    """``||h_j||_2`` over the tokens of ``x`` of every MLP's output-layer inputs."""
    with torch.no_grad():
        return [torch.linalg.vector_norm(mlp.hidden(inp), dim=0) for mlp, inp in zip(model.mlps(), _mlp_inputs(model, x))]


def refit_mlps(original: CharLM, reduced: CharLM, x: torch.Tensor) -> CharLM:
    """A copy of ``reduced`` with every MLP output layer refit by the repair's ridge least squares
    (:func:`afde_nb.core.repair.refit`, the formula of :func:`afde_nb.core.repair.repair`) so that,
    on the inputs the *original* model's blocks see on ``x``, it reproduces the original blocks'
    outputs from the reduced blocks' hidden units (both in float64): what
    :func:`~afde_nb.eval.baselines.repair_pruned` does to a model whose hidden units were kept or
    dropped, for any MLP (gated ones too)."""
    out = copy.deepcopy(reduced)
    for small, big, inp in zip(out.mlps(), original.mlps(), _mlp_inputs(original, x)):
        X = inp.double()
        with torch.no_grad():
            H, Z = copy.deepcopy(small).double().hidden(X), copy.deepcopy(big).double()(X)
            layer = small.consumer
            W, b = fit_weights(refit(H, Z, layer.bias is not None)[0])
            layer.weight.copy_(torch.from_numpy(W))
            if layer.bias is not None:
                layer.bias.copy_(torch.from_numpy(b))
    return out


# ---- the cells ---------------------------------------------------------------------------------

def reduced_models(model: CharLM, units: int, calib: torch.Tensor, budget: int):
    """``(setting, method, reduced model or None, note)`` for every cell of one amount: every peer
    keeps ``units`` per block, afde-nb at most ``budget`` parameters in the whole model. afde-nb and
    folding run where they accept the model (they act on the groups afde-nb finds); where they
    refuse it their cells are ``None`` with the reason."""
    x = calib[:, :-1]
    runs = {
        "afde-nb": lambda: [(setting, compress(model, target_params=budget, **kw).model) for setting, kw in
                            (("data-free", dict(repair=False)), ("calibrated", dict(calibration=x, repair=False)),
                             ("repaired", dict(calibration=x)))],
        "folding": lambda: _folded(model, budget, x),
    }
    for method in ("afde-nb", "folding") + PRUNERS:
        try:
            if method in runs:
                got = runs[method]()
            else:
                pruned, _ = tp_prune(model, units, method.removeprefix("tp-"), calib)
                got = [("data-free" if method == "tp-magnitude" else "calibrated", pruned),
                       ("repaired", refit_mlps(model, pruned, x))]
        except (UnsupportedLayerError, MissingDependencyError) as exc:
            note = not_applicable(model, exc)
            for setting, m in CELLS:
                if m == method:
                    yield setting, method, None, note
            continue
        for setting, reduced in got:
            yield setting, method, reduced, ""


def _folded(model: CharLM, budget: int, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    folded = match_params(fold_prune, model, budget)
    return [("data-free", folded.model), ("repaired", repair_pruned(folded, model, x).model)]


def not_applicable(model: nn.Module, exc: Exception) -> str:
    """Why a method did not run on ``model``: for a model in whose MLPs afde-nb finds no groups, the
    reason capture gives for the first MLP's units; else the error's first line."""
    if isinstance(exc, UnsupportedLayerError) and not capture(model).nets:
        lines = [l.strip() for l in capture(model).discovery.report().splitlines() if ".mlp." in l]
        reason = re.search(r"\(([^()]*)\)", lines[0]) if lines else None
        return ("not applicable yet: afde-nb finds no lumpable groups in these MLPs"
                + (f" ({reason.group(1)})" if reason else ""))
    return f"not applicable: {str(exc).splitlines()[0]}"


def run_lm(out: Path, profile: str | LMProfile = "full", log=print) -> list[dict]:
    """Train (or load) every variant, compress its MLPs at every amount by every method, score
    validation perplexity; write ``OUT/lm_points.csv``, ``OUT/lm_results.md`` and (with
    matplotlib) ``OUT/lm_tradeoff.png``."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    name = profile if isinstance(profile, str) else "custom"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = load_text(prof.text)
    train_ids, val_ids = text.encode(text.train), text.encode(text.val)
    if prof.val_chars is not None:
        val_ids = val_ids[:prof.val_chars]
    rows: list[dict] = []
    t_start = time.perf_counter()
    for variant, fields in prof.variants.items():
        config = LMConfig(vocab=len(text.vocab), **fields)
        model = trained_lm(config, train_ids, text.sha256, prof.seed, log=log)
        calib = windows(train_ids, config.context, prof.calibration, prof.seed + 1)
        total, mlp_total = sum(p.numel() for p in model.parameters()), mlp_params(model)
        base = {"variant": variant, "profile": name, "mlp_total": mlp_total, "calibration_tokens": calib[:, :-1].numel(),
                "val_chars": len(val_ids)}
        t0 = time.perf_counter()
        ppl0 = perplexity(model, val_ids, config.context)
        rows.append({**base, "kept_target": 1.0, "setting": "original", "method": "original", "mlp_params": mlp_total,
                     "mlp_kept": 1.0, "params": total, "perplexity": ppl0, "seconds": time.perf_counter() - t0, "note": ""})
        log(f"{variant}: {total:,} parameters ({mlp_total:,} in the MLPs), validation perplexity {ppl0:.3f}")
        for kept in prof.kept:
            units = units_within(model, kept)
            budget = total - mlp_total + mlp_params_with(model, units)
            t0 = time.perf_counter()
            for setting, method, reduced, note in reduced_models(model, units, calib, budget):
                row = {**base, "kept_target": kept, "setting": setting, "method": method}
                if reduced is None:
                    rows.append({**row, "mlp_params": "", "mlp_kept": "", "params": "", "perplexity": "",
                                 "seconds": "", "note": note})
                    continue
                params = sum(p.numel() for p in reduced.parameters())
                mlp = params - (total - mlp_total)
                ppl = perplexity(reduced, val_ids, config.context)
                rows.append({**row, "mlp_params": mlp, "mlp_kept": mlp / mlp_total, "params": params, "perplexity": ppl,
                             "seconds": time.perf_counter() - t0, "note": note})
                log(f"  {variant} {kept:.0%} {setting:10s} {method:12s} MLP {mlp / mlp_total:6.1%}  perplexity {ppl:.3f}")
                t0 = time.perf_counter()
    write_csv(rows, out / "lm_points.csv")
    render(rows, out, time.perf_counter() - t_start)
    return rows


def render(rows: list[dict], out: Path, seconds: float) -> None:
    """``OUT/lm_results.md`` and (with matplotlib) ``OUT/lm_tradeoff.png`` from the rows."""
    (Path(out) / "lm_results.md").write_text(markdown(rows, seconds))
    if _can_plot():
        plot(rows, Path(out) / "lm_tradeoff.png")


def _can_plot() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


# ---- output ------------------------------------------------------------------------------------

FIELDS = ("variant", "profile", "kept_target", "setting", "method", "mlp_params", "mlp_total", "mlp_kept", "params",
          "perplexity", "seconds", "calibration_tokens", "val_chars", "note")


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows of an ``lm_points.csv``, numbers as numbers (empty cells: None)."""
    def num(v: str):
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, newline="") as fh:
        return [{k: (v if k in ("variant", "profile", "setting", "method", "note") else num(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]


def _value(r: dict):
    return r["perplexity"] if r["perplexity"] not in ("", None) else None


def markdown(rows: list[dict], seconds: float) -> str:
    """Per variant: validation perplexity by setting and method at every amount (the best of each
    setting in bold), the MLP parameters each reached, and the notes of cells that did not run."""
    kept = sorted({r["kept_target"] for r in rows if r["method"] != "original"}, reverse=True)
    took = f"; {seconds:.0f} s for this run (models cached or trained)" if not math.isnan(seconds) else ""
    lines = ["# Language models: validation perplexity after compressing the MLPs", "",
             f"Tiny Shakespeare, character level{took}. Columns: % of MLP parameters kept (every peer keeps the "
             "same units per block; afde-nb at most as many parameters in all). Lower is better; the best of each "
             "setting in bold.", ""]
    notes: list[str] = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        orig = next(r for r in rs if r["method"] == "original")
        lines += [f"## {variant} MLP", "",
                  f"original: perplexity {orig['perplexity']:.3f}, {orig['params']:,} parameters "
                  f"({orig['mlp_total']:,} in the MLPs); calibration {orig['calibration_tokens']:,} tokens; "
                  f"{orig['val_chars']:,} validation characters.", "",
                  "| data | method | " + " | ".join(f"{k:.0%}" for k in kept) + " |",
                  "|---|---|" + "---|" * len(kept)]
        for setting, method in CELLS:
            cells = []
            for k in kept:
                r = next((r for r in rs if r["kept_target"] == k and r["setting"] == setting and r["method"] == method),
                         None)
                if r is None or _value(r) is None:
                    if r is not None and r["note"] and r["note"] not in notes:
                        notes.append(r["note"])
                    cells.append(f"n/a{_sup(notes.index(r['note']) + 1)}" if r is not None and r["note"] else "")
                    continue
                peers = [_value(p) for p in rs if p["kept_target"] == k and p["setting"] == setting
                         and _value(p) is not None]
                v = f"{_value(r):.3f}"
                cells.append(f"**{v}**" if _value(r) == min(peers) else v)
            suffix = {"data-free": "", "calibrated": "+calib" if method == "afde-nb" else "",
                      "repaired": "+repair"}[setting]
            lines.append(f"| {SETTINGS[setting]} | {method}{suffix} | " + " | ".join(cells) + " |")
        lines += ["", "MLP parameters kept (% of the original's):", "",
                  "| method | " + " | ".join(f"{k:.0%}" for k in kept) + " |", "|---|" + "---|" * len(kept)]
        for method in dict.fromkeys(m for _, m in CELLS):
            got = []
            for k in kept:
                vals = sorted({r["mlp_kept"] for r in rs if r["kept_target"] == k and r["method"] == method
                               and r["mlp_kept"] not in ("", None)})
                got.append(" / ".join(f"{v:.2%}" for v in vals) or "-")
            lines.append(f"| {method} | " + " | ".join(got) + " |")
        lines.append("")
    for i, n in enumerate(notes, 1):
        lines.append(f"{_sup(i)} {n}")
    return "\n".join(lines) + "\n"


def _sup(i: int) -> str:
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(c)] for c in str(i))


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity against % of MLP parameters kept: one row per variant, one column per setting
    (each panel its own scale: the repaired methods differ by far less than the unrepaired ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    settings = list(SETTINGS)
    fig, axes = plt.subplots(len(variants), len(settings), figsize=(4.4 * len(settings), 3.6 * len(variants)),
                             squeeze=False)
    colours = {"afde-nb": "C3", "tp-magnitude": "C0", "tp-taylor": "C1", "wanda-sp": "C2", "folding": "C4"}
    for i, variant in enumerate(variants):
        rs = [r for r in rows if r["variant"] == variant]
        orig = next(r for r in rs if r["method"] == "original")
        for j, setting in enumerate(settings):
            ax = axes[i][j]
            for method in colours:
                pts = sorted((r["mlp_kept"] * 100, r["perplexity"]) for r in rs
                             if r["setting"] == setting and r["method"] == method and _value(r) is not None)[::-1]
                if pts:
                    ax.plot(*zip(*([(100.0, orig["perplexity"])] + pts)), "o-", color=colours[method], label=method,
                            lw=2.2 if method == "afde-nb" else 1.3)
            missing = list(dict.fromkeys(r["method"] for r in rs if r["setting"] == setting and _value(r) is None))
            if missing:
                ax.text(0.98, 0.04, f"not applicable: {', '.join(missing)}", transform=ax.transAxes, ha="right",
                        fontsize=7, color="0.35")
            ax.axhline(orig["perplexity"], color="0.6", lw=0.8, ls=":")
            ax.set_xlim(105, min(r["mlp_kept"] * 100 for r in rs if _value(r) is not None) - 5)
            ax.set_title(f"{variant} MLP: {setting}", fontsize=10)
            ax.set_xlabel("% of MLP parameters kept")
            if j == 0:
                ax.set_ylabel("validation perplexity")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
