"""``afde``: the command line. A thin shell over the public API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import __version__
from .compress import compress
from .errors import AfdeError, ShapeMismatchError, UnsafeFileError
from .serialize import FORMAT, arch_path, build, load_state_dict, load_tensor
from .train import make_mlp


def _model_from_state(state: dict[str, torch.Tensor], arch_file: Path | None, activation: str) -> torch.nn.Module:
    """Rebuild a Sequential from its architecture JSON, or infer Linear layers from the keys."""
    if arch_file is not None and arch_file.is_file():
        arch = json.loads(arch_file.read_text())
        model = build(arch)
    else:
        weights = [(k, v) for k, v in state.items() if k.endswith("weight")]
        if not weights or any(v.ndim != 2 for _, v in weights):
            raise UnsafeFileError("cannot infer an MLP from this state_dict: expected only Linear "
                                  "'<name>.weight' (2-D) and '<name>.bias' entries; pass --arch")
        biases = {k[: -len("weight")] + "bias" for k, _ in weights}
        extra = sorted(set(state) - {k for k, _ in weights} - biases)
        if extra or not biases <= set(state):
            raise UnsafeFileError("cannot infer an MLP from this state_dict: every Linear needs '<name>.weight' "
                                  f"and '<name>.bias' and nothing else (unexpected: {extra[:5]}); pass --arch")
        sizes = [weights[0][1].shape[1]] + [v.shape[0] for _, v in weights]
        model = make_mlp(sizes[0], tuple(sizes[1:-1]), sizes[-1], activation)
        lin_keys = [k for k, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        state = {f"{new}.{part}": state[k[: -len("weight")] + part]
                 for (k, _), new in zip(weights, lin_keys) for part in ("weight", "bias")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ShapeMismatchError(f"the weights do not fit the architecture: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def cmd_compress(args: argparse.Namespace) -> int:
    path = Path(args.model)
    state = load_state_dict(path)
    arch = Path(args.arch) if args.arch else arch_path(path)
    model = _model_from_state(state, arch if arch.is_file() or args.arch else None, args.activation)
    calib = load_tensor(Path(args.calibration)) if args.calibration else None
    target = None
    if args.keep is not None:
        if not 0 < args.keep <= 1:
            raise ValueError(f"--keep must be a fraction in (0, 1], got {args.keep}")
        target = int(args.keep * sum(p.numel() for p in model.parameters()))
    if args.target_params is not None:
        target = args.target_params
    eps = None if target is not None else args.eps
    c = compress(model, eps, mode=args.mode, relative=args.relative, calibration=calib, threads=args.threads,
                 target_params=target, data_aware=args.data_aware)
    print(c.table())
    if args.output:
        for p in c.save(args.output):
            print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(dataset=args.dataset, epochs=args.epochs, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .bench.run import PROFILES, run

    profile = PROFILES["full" if args.full else "quick"]
    if args.datasets:
        profile = replace(profile, datasets=tuple(args.datasets))
    if args.seeds:
        profile = replace(profile, seeds=tuple(args.seeds))
    if args.from_points:  # re-render the tables and the plot from an earlier run's points.csv
        from .bench.run import read_csv, render

        out = Path(args.out)
        render(read_csv(out / "points.csv"), profile, out, float("nan"))
        print(f"wrote {out / 'results.md'}, {out / 'tradeoff.png'}")
        return 0
    run(profile, Path(args.out))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afde", description="Compress neural networks by eps-lumping of neurons.")
    p.add_argument("--version", action="version", version=f"afde-nb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress a saved MLP state_dict (.pt/.pth/.safetensors)")
    c.add_argument("model", help="state_dict file; its architecture is read from MODEL.json if present "
                   f"({FORMAT}), else inferred from the Linear weights")
    c.add_argument("--arch", help="architecture JSON (as written by afde compress -o)")
    c.add_argument("--activation", default="tanh", choices=["tanh", "sigmoid", "relu"],
                   help="hidden activation when the architecture is inferred (default tanh)")
    c.add_argument("--eps", type=float, default=0.0, help="tolerance (default 0: exact)")
    t = c.add_mutually_exclusive_group()
    t.add_argument("--keep", type=float, help="instead of --eps: keep at most this fraction of the parameters "
                   "(finds the smallest eps)")
    t.add_argument("--target-params", type=int, help="instead of --eps: keep at most this many parameters")
    c.add_argument("--data-aware", action="store_true", help="weight coefficients by calibration RMS "
                   "(needs --calibration)")
    c.add_argument("--mode", default="backward", choices=["forward", "backward"])
    c.add_argument("--relative", action="store_true", help="eps as a fraction of each layer's mean neuron norm")
    c.add_argument("--calibration", help="tensor file of calibration inputs (n, in_features)")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("-o", "--output", help="write the reduced model (.pt/.pth/.safetensors + .json)")
    c.set_defaults(func=cmd_compress)
    d = sub.add_parser("demo", help="train a small tanh MLP on a bundled data set and compress it over eps")
    d.add_argument("--dataset", default="glycolysis")
    d.add_argument("--epochs", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    b = sub.add_parser("bench", help="size/error trade-off against pruning and folding: CSV, Markdown, plots")
    b.add_argument("--out", default="afde-out", help="output folder (default afde-out)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one data set, one seed (default; a few minutes)")
    g.add_argument("--full", action="store_true", help="every data set, three seeds, wider networks")
    b.add_argument("--datasets", nargs="+", help="override the profile's data sets")
    b.add_argument("--seeds", nargs="+", type=int, help="override the profile's seeds")
    b.add_argument("--from-points", action="store_true", help="only re-render OUT/results.md and the plot "
                   "from OUT/points.csv")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (AfdeError, FileNotFoundError, ValueError) as exc:
        print(f"afde: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
