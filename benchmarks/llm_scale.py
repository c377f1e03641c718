"""LLaMA-style models at scale (issue 29): time and peak memory of afde-nb's compress against one
forward pass of the calibration data, and Wanda-sp's and FLAP's time at the same budget.

Models: ``transformers.LlamaConfig`` with random init (seed 0), ``intermediate_size = 4 * hidden``,
vocabulary 512, heads of 64; calibration 32 x 128 token ids. The budget removes 30 % of the MLP
parameters (``target_params = params - 0.3 * mlp_params``). Every cell runs in a fresh subprocess
(``--cell``) with ``OMP_NUM_THREADS``/``torch.set_num_threads``/``threads=`` set to the thread count,
so its peak resident memory is its own: the growth is ``ru_maxrss`` after the call minus the
resident set before it (model and calibration already built), as a multiple of the model's float32
bytes. Each cell's JSON also has ``cpu_seconds``, the process's CPU time during the call: on a
shared machine it moves less with other jobs' load than the wall time.

Cells (seconds): one forward of the calibration (no grad), data-free ``target_params``, calibrated
``eps=0.1``, calibrated ``target_params``, Wanda-sp (``structured_prune(score="wanda")`` via
``match_params``) and FLAP (``flap_prune``, global structure, via ``match_params``) at the same
budget, without repair.

    python benchmarks/llm_scale.py                       # sizes s4 s17, threads 1 2
    python benchmarks/llm_scale.py --sizes s4 s17 s68 s270 --threads 1
    python benchmarks/llm_scale.py --big                 # adds the 1.07 B model (hours on 2 cores)
    python benchmarks/llm_scale.py --profile             # cProfile of s4's calibrated budget call
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

#: name -> (hidden, layers); parameters with vocabulary 512 and intermediate 4 * hidden
SIZES = {"s4": (256, 4), "s17": (512, 4), "s68": (1024, 4), "s270": (1024, 16), "s1b": (2048, 16)}
WHAT = ("forward", "datafree", "calib_eps", "calib_budget", "wanda_sp", "flap")


def build(hidden: int, layers: int):
    import torch
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=512,
                        max_position_embeddings=256)
    model = T.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 512, (32, 128), generator=torch.Generator().manual_seed(1))
    return model, ids


def budget(model) -> int:
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    return int(total - 0.3 * mlp)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cell(size: str, what: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import afde_nb
    from afde_nb.eval.baselines import flap_prune, match_params, structured_prune

    model, ids = build(*SIZES[size])
    target = budget(model)
    runs = {
        "forward": lambda: model(ids),
        "datafree": lambda: afde_nb.compress(model, target_params=target, threads=threads, progress=False),
        "calib_eps": lambda: afde_nb.compress(model, 0.1, calibration=ids, threads=threads, progress=False),
        "calib_budget": lambda: afde_nb.compress(model, target_params=target, calibration=ids, threads=threads,
                                                 progress=False),
        "wanda_sp": lambda: match_params(structured_prune, model, target, score="wanda", calibration=ids),
        "flap": lambda: match_params(flap_prune, model, target, calibration=ids),
    }
    before = _rss()
    t, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = runs[what]()
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in model.parameters())
    after = getattr(out, "params_after", getattr(out, "params", None))
    return {"size": size, "what": what, "threads": threads, "seconds": seconds, "cpu_seconds": cpu, "params": params,
            "model_bytes": 4 * params, "growth_bytes": max(0, peak - before), "params_after": after,
            "target": target}


def run_cell(size: str, what: str, threads: int, timeout: float) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    try:
        p = subprocess.run([sys.executable, __file__, "--cell", size, what, str(threads)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(sizes, threads_list, timeout: float) -> None:
    print("| model | threads | one forward | data-free budget | calibrated eps=0.1 | calibrated budget | "
          "peak growth, calibrated budget | Wanda-sp | FLAP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for t in threads_list:
            got = {w: run_cell(size, w, t, timeout) for w in WHAT}
            fwd = got["forward"]["seconds"] if got["forward"] else float("nan")

            def fmt(w):
                g = got[w]
                if g is None:
                    return f"> {timeout:.0f} s"
                return f"{g['seconds']:.2f} s" if w == "forward" else f"{g['seconds']:.2f} s ({g['seconds'] / fwd:.1f}x)"

            any_ = next((g for g in got.values() if g), None)
            cb = got["calib_budget"]
            peak = (f"{cb['growth_bytes'] / 2**30:.2f} GiB ({cb['growth_bytes'] / cb['model_bytes']:.1f}x)"
                    if cb else "-")
            h, L = SIZES[size]
            name = f"{any_['params'] / 1e6:.1f} M (hidden {h}, {L} layers)" if any_ else size
            print(f"| {name} | {t} | {fmt('forward')} | {fmt('datafree')} | {fmt('calib_eps')} | "
                  f"{fmt('calib_budget')} | {peak} | {fmt('wanda_sp')} | {fmt('flap')} |", flush=True)


def profile(size: str = "s4", top: int = 25) -> None:
    import cProfile
    import pstats

    import torch

    torch.set_num_threads(1)
    import afde_nb

    model, ids = build(*SIZES[size])
    target = budget(model)
    pr = cProfile.Profile()
    pr.enable()
    afde_nb.compress(model, target_params=target, calibration=ids, threads=1, progress=False)
    pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(top)
    pstats.Stats(pr).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["s4", "s17"], choices=list(SIZES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--big", action="store_true", help="add the 1.07 B-parameter model (s1b)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per cell (default 1800)")
    ap.add_argument("--profile", action="store_true", help="cProfile of s4's calibrated budget call")
    ap.add_argument("--cell", nargs=3, metavar=("SIZE", "WHAT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        size, what, t = args.cell
        print(json.dumps(cell(size, what, int(t))))
        return
    if args.profile:
        profile()
        return
    sizes = list(args.sizes) + (["s1b"] if args.big and "s1b" not in args.sizes else [])
    table(sizes, args.threads, args.timeout)


if __name__ == "__main__":
    main()
