"""Calibrated against data-free compression of mobile CNNs at a parameter budget (issue: "calibrated
compression of a conv net costs at most 3x its data-free time").

    python benchmarks/mobile_calibrated.py                 # MobileNetV3-small and EfficientNet-B0
    python benchmarks/mobile_calibrated.py --images 16 --size 64 --keep 0.7 --repeat 2

The models are ``afde_nb.eval.nets.mobilenet_v3_small`` and ``efficientnet_b0`` (torchvision's
definitions in torch.nn; random init, BatchNorm statistics randomised, 10 classes, eval mode);
calibration is ``torch.randn(images, 3, size, size)``. With calibration a parameter budget's split
between layers is chosen by measured error over candidate splits (core/target.py). The table has,
from this one process, best of ``--repeat``, one torch thread (a loaded two-core machine makes
two-thread timings meaningless): the data-free call, the calibrated call as it is, and the
calibrated call as it was before (one candidate per layer and per scale, ``segments`` = the number
of layers, and the budget found by walking the merge order step by step, both restored by
monkeypatching) -- and one forward of the model on the calibration images, which the calibrated
call needs at least twice (the rows and the reduced model's error).
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

import afde_nb
from afde_nb.core import path as core_path
from afde_nb.core import target as core_target
from afde_nb.eval.nets import efficientnet_b0, mobilenet_v3_small
from _util import table


def _random_bn(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.1)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) * 1.5 + 0.5)
    return m.eval()


def _walk(self, target: int, scale=None) -> list[int]:
    """The budget as found before: the first step of the merge order within it, step by step."""
    for ms in self.sequence(scale):
        if self.params_at(ms) <= target:
            return ms
    raise afde_nb.errors.BudgetUnreachableError("unreachable")


@contextmanager
def before():
    """Per-layer candidates and the step-by-step walk, as before this change."""
    seg, walk = core_target.SEGMENTS, core_path.MergePath.for_params
    core_target.SEGMENTS, core_path.MergePath.for_params = 10 ** 6, _walk
    try:
        yield
    finally:
        core_target.SEGMENTS, core_path.MergePath.for_params = seg, walk


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.7)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    X = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rows = []
    for name, make in (("MobileNetV3-small", mobilenet_v3_small), ("EfficientNet-B0", efficientnet_b0)):
        torch.manual_seed(0)
        model = _random_bn(make(num_classes=10), seed=2)
        budget = int(args.keep * sum(p.numel() for p in model.parameters()))
        afde_nb.compress(model, eps=0.0)  # warm-up: torch.fx, the engine, torch's kernels

        def forward():
            with torch.no_grad():
                model(X)

        t_fwd, _ = _best(forward, args.repeat)
        free, c0 = _best(lambda: afde_nb.compress(model, target_params=budget), args.repeat)
        cal, c1 = _best(lambda: afde_nb.compress(model, target_params=budget, calibration=X), args.repeat)
        with before():
            old, c2 = _best(lambda: afde_nb.compress(model, target_params=budget, calibration=X), args.repeat)
        layers = len(c1.path.layers)
        rows.append([name, f"{args.images} x {args.size}^2", layers, f"{free:.2f}", f"{cal:.2f}",
                     f"**{cal / free:.2f}x**", f"{old:.2f}", f"{old / cal:.2f}x", f"{t_fwd:.3f}",
                     f"{c1.calibration_error['relative_mse']:.4g}", f"{c2.calibration_error['relative_mse']:.4g}"])
    print(table(["model", "calibration", "layers", "data-free s", "calibrated s", "calibrated / data-free",
                 "before: calibrated s", "before / now", "one forward s", "rel. MSE now", "rel. MSE before"], rows))


if __name__ == "__main__":
    main()
