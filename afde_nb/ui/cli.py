"""``afde``: the command line. A thin shell over the public API."""
from __future__ import annotations

import argparse
from importlib.metadata import version
import sys
from pathlib import Path

from ..pipeline.compress import compress
from ..errors import AfdeError, InvalidArgumentError
from ..models.export import (PROGRAM_SUFFIX, check_batch, example_inputs_of, is_program_path, quiet_leafspec,
                              read_program)
from ..models.serialize import (ACTIVATIONS, FORMAT, check_writable, find_architecture, load_state_dict,
                                load_tensor, model_from_state_dict, read_architecture, weights_format)


def cmd_compress(args: argparse.Namespace) -> int:
    path = Path(args.model)
    program = is_program_path(path)
    if args.output:  # a wrong file type fails now, not after the compression
        if program and not is_program_path(args.output):
            raise InvalidArgumentError(f"a {PROGRAM_SUFFIX} program compresses to a {PROGRAM_SUFFIX} program: give "
                                       f"-o OUT{PROGRAM_SUFFIX}, got {args.output!r}")
        if not is_program_path(args.output):
            weights_format(args.output)
        # an output that cannot be written fails now too (a read-only folder, a path under a file)
        check_writable(args.output, sidecar=not is_program_path(args.output))
    if args.keep is not None and not 0 < args.keep <= 1:
        raise InvalidArgumentError(f"--keep must be a fraction in (0, 1], got {args.keep}")
    budget = "--keep" if args.keep is not None else "--target-params" if args.target_params is not None else None
    if args.eps is not None and budget:
        raise InvalidArgumentError(f"give one of --eps, --keep, --target-params (got --eps and {budget})")
    if args.data_aware and not args.calibration:
        raise InvalidArgumentError("--data-aware needs calibration inputs (--calibration FILE)")
    example = None
    if program:
        for flag in ("--arch", "--activation"):
            if getattr(args, flag[2:]):
                raise InvalidArgumentError(f"{flag} describes a state_dict; a {PROGRAM_SUFFIX} program carries its "
                                           "own graph")
        exported = read_program(path)
        model, example = exported.module(), example_inputs_of(exported)
    else:
        state = load_state_dict(path)
        # an explicit --arch must exist; else the architecture saved with the model; else inferred
        arch = read_architecture(args.arch) if args.arch else find_architecture(path)
        if arch is not None and args.activation:  # it could only contradict the architecture
            raise InvalidArgumentError(f"--activation is for a bare state_dict; {path} comes with its architecture "
                                       f"({'--arch' if args.arch else 'saved with it'}), activations included")
        model = model_from_state_dict(state, arch, activation=args.activation)
    calib = load_tensor(Path(args.calibration)) if args.calibration else None
    if program and calib is not None:
        check_batch(exported, len(calib), "--calibration")
    target = args.target_params
    if args.keep is not None:
        target = int(args.keep * sum(p.numel() for p in model.parameters()))
    repair = {"auto": None, "on": True, "off": False, "pseudo": "pseudo"}[args.repair]
    eps = None if target is not None else args.eps or 0.0
    with quiet_leafspec():  # torch's own deprecation warning on each copy of a program's module
        c = compress(model, eps=eps, method=args.method, mode=args.mode, relative=args.relative,
                     symmetry=args.symmetry, calibration=calib, repair=repair, threads=args.threads,
                     floor=args.floor,
                     target_params=target, data_aware=args.data_aware, progress=False if args.quiet else None)
        print(c.table())
        if c.groups is not None:
            print(c.groups.report())
        if args.output:
            for p in c.save(args.output, example_inputs=example):
                print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(dataset=args.dataset, epochs=args.epochs, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..eval.bench.run import PROFILES, run

    check_writable(Path(args.out) / "results.md")  # an unwritable --out fails now, not after the first cells
    if args.lm:  # character-level transformer LMs on Tiny Shakespeare, MLPs compressed (afde_nb.eval.bench.lm)
        from ..eval.bench.lm import read_csv, render, run_lm

        if args.examples:
            raise InvalidArgumentError("give one of --lm and --examples")
        out = Path(args.out)
        if args.from_points:
            render(read_csv(out / "lm_points.csv"), out, float("nan"))
            print(f"wrote {out / 'lm_results.md'}, {out / 'lm_tradeoff.png'}")
            return 0
        run_lm(out, "quick" if args.quick else "full")
        print(f"wrote {out / 'lm_results.md'}, {out / 'lm_points.csv'}")
        return 0
    if args.examples:  # the models that are not plain stacks (afde_nb.eval.zoo), baselines on the same groups
        from ..eval.bench.examples import run_examples

        out = Path(args.out)
        run_examples(out, seeds=tuple(args.seeds) if args.seeds else ((0, 1, 2) if args.full else (0,)))
        print(f"wrote {out / 'examples.md'}, {out / 'examples.csv'}")
        return 0
    profile = PROFILES["full" if args.full else "quick"]
    if args.datasets:
        profile = replace(profile, datasets=tuple(args.datasets))
    if args.seeds:
        profile = replace(profile, seeds=tuple(args.seeds))
    if args.from_points:  # re-render the tables and the plot from an earlier run's points.csv
        from ..eval.bench.run import read_csv, render

        out = Path(args.out)
        render(read_csv(out / "points.csv"), profile, out, float("nan"))
        print(f"wrote {out / 'results.md'}, {out / 'tradeoff.png'}")
        return 0
    run(profile, Path(args.out), backend=args.backend, address=args.address, workers=args.workers)
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import fetch

    print(f"{args.name}: {fetch(args.name, args.data_home, url=args.url)} (SHA-256 checked)")
    return 0


def _floor(text: str) -> int | float:
    """--floor: an integer is a count of units, anything else a fraction (checked by compress)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count of units (e.g. 8) or a fraction (e.g. 0.25), "
                                             f"got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # --debug before or after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the full traceback instead of one line")
    p = argparse.ArgumentParser(prog="afde", description="Compress neural networks by eps-lumping of neurons.",
                                parents=[debug])
    p.add_argument("--version", action="version", version=f"afde-nb {version('afde-nb')}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress a saved MLP state_dict (.pt/.pth/.safetensors) or any model "
                       "saved as a torch.export program (.pt2)", parents=[debug])
    c.add_argument("model", help="a torch.export program (.pt2: any model with lumpable groups inside), or a "
                   "state_dict file; its architecture is --arch if given, else the one saved with "
                   f"it (safetensors metadata or MODEL.json, {FORMAT}), else inferred: its Linear layers in "
                   "numeric order of their names (bias optional) with --activation between them")
    c.add_argument("--arch", help="architecture JSON (as written by afde compress -o); must exist")
    c.add_argument("--activation", choices=sorted(ACTIVATIONS),
                   help="the activation between the Linear layers of a bare state_dict (one with no architecture: "
                   "no --arch, none saved with it), which does not record it: required there; leaky_relu is "
                   "nn.LeakyReLU() (slope 0.01; another slope: --arch)")
    c.add_argument("--eps", type=float, help="the output error you accept (default 0: exact): with ward/complete "
                   "and --relative, the model output's relative RMS error, the cut whose estimated error is at "
                   "most eps (0.1: about 10%% of the outputs' spread, on any model); --no-relative: an absolute "
                   "per-layer bound; components: the paper's eps. Or --keep or --target-params")
    t = c.add_mutually_exclusive_group()
    t.add_argument("--keep", type=float, help="instead of --eps: keep at most this fraction of the parameters "
                   "(finds the smallest eps)")
    t.add_argument("--target-params", type=int, help="instead of --eps: keep at most this many parameters")
    c.add_argument("--floor", type=_floor, help="with --keep or --target-params: lossy merges keep at least this "
                   "many units of each hidden layer (an integer, e.g. 8) or this fraction of them (e.g. 0.25); "
                   "default: none, a layer may keep one unit")
    c.add_argument("--method", default="ward", choices=["ward", "complete", "components"],
                   help="ward (default): bounded blocks from a Ward merge path; complete: complete linkage; "
                   "components: the paper's eps-graph components")
    c.add_argument("--mode", default="backward", choices=["forward", "backward"],
                   help="backward (default): merge neurons whose incoming rows agree; forward: whose outgoing "
                   "columns agree (measured worse)")
    c.add_argument("--relative", action=argparse.BooleanOptionalAction, default=True,
                   help="eps relative to the outputs' spread, the estimated output error (ward/complete), or to "
                   "each layer's mean neuron norm (components); default on. Off: ward/complete read eps as an "
                   "absolute bound on each layer's next pre-activations")
    c.add_argument("--symmetry", action=argparse.BooleanOptionalAction, default=True,
                   help="lump neurons equal up to the activation's symmetry (tanh: -h, sigmoid: 1 - h); default on")
    c.add_argument("--repair", default="auto", choices=["auto", "on", "off", "pseudo"],
                   help="least-squares refit after lossy merges: auto (default) = on with --calibration; "
                   "pseudo = data-free on standard-normal pseudo-inputs")
    c.add_argument("--data-aware", action="store_true", help="components only: weight coefficients by "
                   "calibration RMS (needs --calibration)")
    c.add_argument("--calibration", help="tensor file (.npy/.pt/.safetensors) of calibration inputs: (n, in_features), "
                   "or for a .pt2 program a batch shaped as the model's input")
    c.add_argument("--quiet", action="store_true", help="no progress bar on stderr (default: shown for a model "
                   "with several chains when stderr is a terminal)")
    c.add_argument("--threads", type=int, default=0,
                   help="engine threads (default 0: OpenMP's default); the result is the same for any number")
    c.add_argument("-o", "--output", help="write the reduced model (.pt/.pth/.safetensors + .json, or a .pt2 "
                   "program; a .pt2 input needs a .pt2 output)")
    c.set_defaults(func=cmd_compress)
    d = sub.add_parser("demo", help="train a small tanh MLP on a bundled data set and compress it over eps",
                       parents=[debug])
    d.add_argument("--dataset", default="glycolysis",
                   help="the data set to train on, a name afde_nb.data.load takes (default glycolysis)")
    d.add_argument("--epochs", type=int, default=200, help="training epochs of the MLP (default 200)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, the initial weights and the training (default 0)")
    d.set_defaults(func=cmd_demo)
    b = sub.add_parser("bench", help="size/error trade-off against pruning and folding: CSV, Markdown, plots",
                       parents=[debug])
    b.add_argument("--out", default="afde-out", help="output folder (default afde-out); a run into a folder "
                   "that holds an earlier run's cells.jsonl computes only the missing cells")
    b.add_argument("--backend", default="serial", choices=["serial", "ray"],
                   help="serial (default): this process; ray: one Ray task per cell (needs Ray: pip install "
                   "\".[ray]\" in the afde-nb checkout)")
    b.add_argument("--address", help="with --backend ray: join the Ray cluster at ADDR (default: start Ray here)")
    b.add_argument("--workers", type=int, help="with --backend ray and no --address: CPUs of the local Ray")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one data set, one seed (default; a few minutes)")
    g.add_argument("--full", action="store_true", help="every data set, three seeds, wider networks")
    b.add_argument("--datasets", nargs="+", help="override the profile's data sets")
    b.add_argument("--seeds", nargs="+", type=int, help="override the profile's seeds")
    b.add_argument("--examples", action="store_true", help="instead: the digits CNN, residual GELU MLP and "
                   "transformer encoder (afde_nb.eval.zoo) against structured pruning and folding of the same groups "
                   "(--quick: seed 0; --full: seeds 0-2); writes OUT/examples.md and OUT/examples.csv")
    b.add_argument("--lm", action="store_true", help="instead: character-level transformer language models (GELU "
                   "and gated MLPs) trained on Tiny Shakespeare from the data home, their MLPs cut to 80/60/40 %% of "
                   "their parameters by afde-nb, Torch-Pruning (magnitude, Taylor), Wanda-sp and folding; validation "
                   "perplexity (without --quick: the documented models, about 5 CPU minutes of training each, "
                   "cached; --quick: tiny ones); writes OUT/lm_results.md, OUT/lm_points.csv, OUT/lm_tradeoff.png "
                   "(with --from-points: only re-renders them from OUT/lm_points.csv)")
    b.add_argument("--from-points", action="store_true", help="only re-render OUT/results.md and the plot "
                   "from OUT/points.csv")
    b.set_defaults(func=cmd_bench)
    dt = sub.add_parser("data", help="data sets read from the data home ($AFDE_NB_DATA, else ~/.cache/afde-nb)",
                        parents=[debug])
    f = dt.add_subparsers(dest="data_command", required=True).add_parser(
        "fetch", help="download a data set (protein: UCI's CASP) into the data home and check its SHA-256; "
        "a checked copy already there is kept", parents=[debug])
    f.add_argument("name", help="the data set (protein)")
    f.add_argument("--data-home", help="instead of $AFDE_NB_DATA, else ~/.cache/afde-nb")
    f.add_argument("--url", help="download from this address instead of the publisher's (a mirror)")
    f.set_defaults(func=cmd_data_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; an afde-nb error or a file-system error prints one line on stderr and
    returns 2 (``--debug``: raises it with its traceback). Anything else is a bug and propagates."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (AfdeError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"afde: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
