"""What eps means on different models (issue 30): ``compress(model, eps)`` at a log grid of eps,
against the measured output error and the output-level estimate.

    python benchmarks/eps_meaning.py                       # every model below, 12 eps values
    python benchmarks/eps_meaning.py --models digits_cnn plain_tanh --grid 0.01 0.1
    python benchmarks/eps_meaning.py --by units            # cuts at 95 % .. 10 % of the units instead

Models: every example of ``afde_nb.eval.zoo`` (digits_cnn, residual_mlp, transformer; cached
weights), a plain tanh 64-64 stack trained on the bench's glycolysis data (seed 0, 150 epochs),
the LM bench's two quick models (GELU and gated MLPs, ``afde bench --lm --quick``'s, trained once
and cached) and MobileNetV3-small (``afde_nb.eval.nets``, 10 classes, trained for 4 epochs on the digits
example's images upsampled to 32 x 32, about a minute).

For each model two merge paths: data-free (pseudo-inputs) and calibrated (512 training rows; the LM
64 windows). ``--by eps`` (default): ``compress(model, eps=e, path=...)`` at each ``e`` of the grid
(0.003 .. 1, log spaced), eps being the output-level error one accepts (the cut: the most merges
whose ``Compression.estimated_error`` is at most eps). ``--by units``: the cuts keeping 95 % .. 10 %
of the lumpable units, each asked for by its own estimate as eps. Calibrated: with the calibration
rows, so repaired as by default. On held-out test rows (never calibration rows) the output's
relative RMS error, ``sqrt(relative_mse)`` of :func:`afde_nb.core.repair.deviation` (the RMS of the
output's change over its centred spread; the LM's logits per token, every position a row).
Columns: units and parameters kept, eps, the measured error, ``measured / eps``,
``Compression.estimated_error`` and ``measured / estimate``; then per model and setting the ranges
of both ratios over the lossy cuts keeping 10 % .. 100 % of the lumpable units (cuts measuring
below 1e-5 against eps or estimate, rounding, left out), and any guard warnings seen.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import afde_nb
from afde_nb.core.repair import deviation
from _util import table

MODELS = ("digits_cnn", "residual_mlp", "transformer", "plain_tanh", "lm_gelu", "lm_gated", "mobilenet_v3_small")
FRACTIONS = (0.95, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1)


def _zoo(name):
    from afde_nb.eval.zoo import load_example

    model, data = load_example(name)
    return model, torch.as_tensor(data.X_train[:512]), torch.as_tensor(data.X_test)


def _plain_tanh():
    from afde_nb.data import load
    from afde_nb.eval.train import train_mlp

    data = load("glycolysis", seed=0)
    model = train_mlp(data, (64, 64), "tanh", epochs=150, seed=0)
    return model, torch.as_tensor(data.X_train[:512]), torch.as_tensor(data.X_test[:1000])


def _lm(mlp: str):
    from afde_nb.data.text import load_text
    from afde_nb.eval.bench.lm import PROFILES, trained_lm
    from afde_nb.eval.lm import LMConfig, windows

    prof = PROFILES["quick"]
    text = load_text(prof.text)
    train_ids, val_ids = text.encode(text.train), text.encode(text.val)
    config = LMConfig(vocab=len(text.vocab), **prof.variants[mlp])
    model = trained_lm(config, train_ids, text.sha256, prof.seed, log=lambda *a: None)
    calib = windows(train_ids, config.context, prof.calibration, prof.seed + 1)[:, :-1]
    test = windows(val_ids, config.context, 64, prof.seed + 2)[:, :-1]
    return model.eval(), calib, test


def _mobilenet(epochs: int = 4):
    """MobileNetV3-small (10 classes) trained briefly on the digits example's images, upsampled to
    32 x 32 and repeated over 3 channels (Adam, ``epochs`` epochs, seed 0): a random-init one has
    an output that hardly depends on its input (spread 7e-10 on standard-normal images), so its
    relative error says nothing."""
    from afde_nb.eval.nets import mobilenet_v3_small
    from afde_nb.eval.zoo import digits

    d = digits(0)

    def big(x):
        x = torch.nn.functional.interpolate(torch.as_tensor(x), size=32, mode="bilinear", align_corners=False)
        return ((x - 0.3) / 0.4).repeat(1, 3, 1, 1)

    X, y = big(d.X_train), torch.as_tensor(d.y_train)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = mobilenet_v3_small(num_classes=10)
        opt = torch.optim.Adam(m.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            m.train()
            perm = torch.randperm(len(X), generator=gen)
            for k in range(0, len(X), 64):
                idx = perm[k:k + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(X[idx]), y[idx]).backward()
                opt.step()
        # torchvision's BatchNorm momentum (0.01) leaves the running statistics near their initial
        # values after so few steps: recompute them as plain averages over the training images
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.reset_running_stats()
                b.momentum = None
        m.train()
        with torch.no_grad():
            for k in range(0, len(X), 256):
                m(X[k:k + 256])
    m.eval()
    with torch.no_grad():
        acc = float((m(big(d.X_test)).argmax(1) == torch.as_tensor(d.y_test)).float().mean())
    print(f"# mobilenet_v3_small: test accuracy {acc:.3f} after {epochs} epochs", flush=True)
    return m, X[:512], big(d.X_test)


def load_model(name: str):
    if name in ("digits_cnn", "residual_mlp", "transformer"):
        return _zoo(name)
    if name == "plain_tanh":
        return _plain_tanh()
    if name.startswith("lm_"):
        return _lm(name[3:])
    if name == "mobilenet_v3_small":
        return _mobilenet()
    raise SystemExit(f"unknown model {name!r}; one of {MODELS}")


def outputs(model, x) -> np.ndarray:
    with torch.no_grad():
        y = model(x)
    y = y.detach().double().numpy()
    return y.reshape(-1, y.shape[-1]) if y.ndim > 2 else y.reshape(len(y), -1)


GRID = tuple(float(x) for x in np.geomspace(0.003, 1.0, 12))
NOISE = 1e-5


def cut_points(path, fractions) -> list[tuple[float, list[int]]]:
    """(units kept / lumpable units, merges per layer) at each fraction, along the path's order."""
    seq = path.sequence()
    n = np.array([lp.n for lp in path.layers])
    out = []
    for f in fractions:
        want = f * n.sum()
        i = next((i for i, ms in enumerate(seq) if (n - np.array(ms)).sum() <= want), len(seq) - 1)
        out.append(((n - np.array(seq[i])).sum() / n.sum(), seq[i]))
    return out


def _units(path, c) -> float:
    n = np.array([lp.n for lp in path.layers])
    return sum(int(np.max(l)) + 1 if np.size(l) else 0 for l in c.partition) / n.sum()


def run(name: str, by: str, fractions, grid, log=print) -> tuple[list[list], list[list]]:
    """(rows, summary rows) of one model."""
    import warnings

    model, calib, test = load_model(name)
    want = outputs(model, test)
    rows, summary = [], []
    for setting in ("data-free", "calibrated"):
        kw = {"calibration": calib} if setting == "calibrated" else {}
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c0 = afde_nb.compress(model, eps=0.0, **kw)
        path = c0.path
        if by == "eps":
            asks = list(grid)
        else:
            from afde_nb.pipeline.estimate import estimate
            asks = [estimate(path, ms, list(c0.estimate_anchors)) for _, ms in cut_points(path, fractions)]
        r_eps, r_est, warned = [], [], 0
        for eps in asks:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                c = afde_nb.compress(model, eps=eps, path=path, **kw)
            guard = [x for x in w if "measured relative RMS error" in str(x.message)]
            warned += bool(guard)
            got = float(np.sqrt(deviation(want, outputs(c.model, test))["relative_mse"]))
            est = c.estimated_error
            units = _units(path, c)
            if 0.1 <= units < 1.0 and est and max(got, est) >= NOISE:
                r_eps.append(got / eps)
                r_est.append(got / est)
            rows.append([name, setting, f"{100 * units:.0f}", f"{100 * c.kept:.1f}", f"{eps:.3g}", f"{got:.3g}",
                         f"{got / eps:.3g}" if eps > 0 else "-",
                         "-" if est is None else f"{est:.3g}",
                         "-" if not est else f"{got / est:.3g}", "warns" if guard else ""])
        rng = (lambda r: f"{min(r):.2g}-{max(r):.2g}" if r else "-")
        summary.append([name, setting, len(r_eps), rng(r_eps), rng(r_est), warned])
        log(f"# {name} {setting}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--by", choices=("eps", "units"), default="eps")
    ap.add_argument("--grid", nargs="+", type=float, default=list(GRID), help="the eps values (--by eps)")
    ap.add_argument("--cuts", type=int, default=len(FRACTIONS), help="the number of cuts (--by units)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    fr = FRACTIONS if a.cuts == len(FRACTIONS) else tuple(np.linspace(0.95, 0.1, a.cuts))
    rows, summary = [], []
    for name in a.models:
        r, s = run(name, a.by, fr, a.grid)
        rows += r
        summary += s
    print(table(["model", "setting", "units kept %", "params kept %", "eps", "measured rel. RMS", "measured / eps",
                 "estimate", "measured / estimate", "guard"], rows))
    print()
    print(table(["model", "setting", "cuts (10-100 % units, lossy)", "measured / eps", "measured / estimate",
                 "guard warnings"], summary))


if __name__ == "__main__":
    main()
