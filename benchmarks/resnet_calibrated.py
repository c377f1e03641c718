"""Calibrated against data-free compression of a ResNet-18 (issue: "calibrated compress of a
ResNet-18 within 3x its data-free time").

    python benchmarks/resnet_calibrated.py                  # 64 images, eps 0.1, best of 3
    python benchmarks/resnet_calibrated.py --images 64 --eps 0.1 0.3 --repeat 3

The model is torchvision's ``resnet18()`` (random init, seeded; defined in ``_nets.py`` from
torch.nn modules, same modules and parameter count), in eval mode; calibration is
``torch.randn(images, 3, 224, 224)``. Every figure comes from this one process, data-free and
calibrated calls alternating, best of ``--repeat``; the ratios are what to compare across machines
and loads. The second table splits one calibrated call into its parts: one forward of the model
with the hooks that draw each chain layer's probe rows (its outputs are the calibration error's
reference), the merge path, the reduced model's forward (the calibration error), and the rest;
next to them one plain forward of the model (``torch.no_grad``), the floor below which no
calibrated call can go (it needs the original's outputs and the reduced model's): one forward over
the data-free time is the lowest calibrated / data-free ratio any implementation could reach.
"""
from __future__ import annotations

import argparse
import time

import torch

import afde_nb
from _nets import resnet18
from _util import table


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def parts(model, X, eps: float) -> dict:
    """One calibrated call's stages, timed one by one (the pipeline of ``compress``)."""
    from afde_nb.models.capture import capture
    from afde_nb.pipeline.compress import _fit_rows, _reduce, build_path

    out = {}
    t0 = time.perf_counter()
    cap = capture(model, None, X)
    calib = cap.calibration(X)
    out["capture (trace, read chains)"] = time.perf_counter() - t0
    out["forward with row hooks"], (rows, want) = _timed(lambda: cap.rows_and_output(calib))
    out["merge path"], path = _timed(lambda: build_path(cap, rows, method="ward", mode="backward", relative=True,
                                                        symmetry=True).build())
    t = time.perf_counter()
    part = path.partition(eps)
    _, nets, _ = _reduce(cap, part, _fit_rows(cap, "calibration", rows))
    reduced = cap.write(nets)
    out["cut, quotient, write back"] = time.perf_counter() - t
    out["reduced model's forward"], _ = _timed(lambda: cap.output(calib, nets, reduced))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    model = resnet18()
    X = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    afde_nb.compress(model, eps=args.eps[0])  # warm-up: torch.fx, first-touch of the engine

    def forward():
        with torch.no_grad():
            model(X)

    rows = []
    t_fwd = min(_timed(forward)[0] for _ in range(args.repeat))
    for eps in args.eps:
        free, calib = float("inf"), float("inf")
        for _ in range(args.repeat):
            t, c0 = _timed(lambda: afde_nb.compress(model, eps=eps))
            free = min(free, t)
            t, c1 = _timed(lambda: afde_nb.compress(model, eps=eps, calibration=X))
            calib = min(calib, t)
        rows.append([f"ResNet-18, {args.images} images", f"{eps:g}", f"{free:.2f}", f"{calib:.2f}",
                     f"**{calib / free:.2f}x**", f"{t_fwd:.2f}", f"{t_fwd / free:.2f}x", f"{calib / t_fwd:.2f}x",
                     f"{c0.params_after / c0.params_before:.3f}", f"{c1.params_after / c1.params_before:.3f}"])
    print(table(["model", "eps", "data-free s", "calibrated s", "calibrated / data-free", "one forward s",
                 "one forward / data-free (the ratio's floor)", "calibrated / forward", "kept (data-free)", "kept (calibrated)"], rows))

    try:
        split = parts(model, X, args.eps[0])
    except (ImportError, AttributeError):  # an older afde_nb without Captured.rows_and_output
        return
    total = sum(split.values())
    print()
    print(table(["stage of one calibrated call (eps %g)" % args.eps[0], "s", "/ one forward"],
                [[k, f"{v:.2f}", f"{v / t_fwd:.2f}x"] for k, v in split.items()]
                + [["sum", f"{total:.2f}", f"{total / t_fwd:.2f}x"]]))


if __name__ == "__main__":
    main()
