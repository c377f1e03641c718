"""Issue 10.4: the default ``afde_nb.compress(model, eps)`` end to end against the float32 memory
floor; where its time goes; its peak resident memory against the model's size; time against width
and depth.

    python benchmarks/end_to_end.py [--widths 512 1024 2048 4096] [--depths 3 6 12] [--limit-s 180]

The default is ``method="ward"``, backward, data-free, no repair, eps relative. Models are float32
``nn.Sequential`` tanh MLPs of ``depth`` Linear layers of ``width`` x ``width`` (Glorot-scaled
random normal weights and biases; no tanh after the last). Every (width, depth, eps) runs in a
fresh subprocess, which first compresses a tiny model (one-time imports and tracing), then:

- **peak memory**: the first ``compress`` of the big model, its peak resident memory VmHWM after
  resetting it (write "5" to ``/proc/self/clear_refs``) minus the resident memory just before, in
  MB and as a multiple of the model's float32 size;
- **time**: best of up to 3 calls of ``compress`` (2 when the first takes over 10 s, 1 over 60 s;
  the first call of a fresh process, which is slower, is also shown), against two floors measured
  in the same process (best of 5 each): the *memory floor*, one numpy ``sum`` over the model's
  float32 weight arrays (as in throughput.py: what eps = 0 cannot skip), and the *arithmetic
  floor* (:func:`arithmetic_floor`: what eps > 0 cannot skip, the 512 probes' float32 forward and
  each hidden layer's Gram of its probe pre-activations);
- **split**: ``to_network`` (torch -> read-only numpy views, ``check=False`` as ``compress`` calls
  it: the finiteness check is the engine's first pass in ``merge_path``); ``merge_path`` (exact blocks only; merge
  paths are lazy) and the agglomeration, forced by touching ``lp.pairs`` for every layer (only at
  eps > 0: ``compress`` at eps = 0 never builds it); the cut and quotient
  (``quotient(net, path.partition(eps))``); ``to_torch``. Each part is timed on its own (best of
  up to 3); "rest" is ``compress`` minus the parts, so it can come out negative.

A width whose configuration takes longer than ``--limit-s`` seconds or fails (e.g. for memory), or
that would need (scaled from the width before) more than 80 % of the free memory, ends the width
series there, which the output says. Ratios are within one run; figures are best-of wall times
on whatever machine runs it (`--widths 1024 4096 --depths 6`: about 2.5 minutes on a 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from _util import best_time, table

EPS = (0.0, 0.05, 0.3, 2.0)
#: probe rows of the default merge path (core.path.PROBES)
PROBES = 512


def _status_kb(key: str) -> int:
    """A field of /proc/self/status, in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))


def _reset_peak() -> None:
    """Reset VmHWM to the current resident memory."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _meminfo_mb(key: str) -> float:
    """A field of /proc/meminfo, in MB (MemTotal, MemAvailable)."""
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024


def _mlp(width: int, depth: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    mods = []
    for k in range(depth):
        lin = torch.nn.utils.skip_init(torch.nn.Linear, width, width)
        with torch.no_grad():
            lin.weight.normal_(0.0, width ** -0.5, generator=g)
            lin.bias.normal_(0.0, width ** -0.5, generator=g)
        mods.append(lin)
        if k < depth - 1:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods).eval()


def arithmetic_floor(model, probes: int = PROBES, repeat: int = 5) -> float:
    """The arithmetic the default cannot skip at eps > 0, in torch float32, best of ``repeat``: on
    ``probes`` standard-normal inputs, for each hidden layer ``z = addmm(b, h, W^T)`` (the probes'
    pre-activations: the masses' slopes and, with fewer probes than inputs, the metric rows),
    ``z^T z`` (their Gram: the agglomeration's inner products) and ``h = tanh(z)``."""
    import torch

    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    h0 = torch.randn(probes, lins[0].in_features, generator=torch.Generator().manual_seed(0))

    def run():
        h = h0
        for lin in lins[:-1]:
            z = torch.addmm(lin.bias, h, lin.weight.T)
            z.T @ z
            h = torch.tanh(z)

    with torch.no_grad():
        return best_time(run, repeat=repeat)


def one(width: int, depth: int, eps: float) -> dict:
    """One configuration, in its own process."""
    import gc

    import afde_nb
    from afde_nb.models.stack import to_network, to_torch
    from afde_nb.core.path import merge_path
    from afde_nb.core.reduce import quotient

    afde_nb.compress(_mlp(16, 3), eps)  # one-time costs (imports, tracing) outside the figures
    model = _mlp(width, depth)
    arrays = [p.detach().numpy() for p in model.parameters()]
    params = sum(a.size for a in arrays)
    model_mb = sum(a.nbytes for a in arrays) / 2**20
    layer_mb = max(a.nbytes for a in arrays) / 2**20  # one layer buffer (issue 10's memory target)
    floor = best_time(lambda: sum(float(a.sum()) for a in arrays), repeat=5)
    arith = arithmetic_floor(model)

    gc.collect()
    _reset_peak()
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    c = afde_nb.compress(model, eps)
    first = time.perf_counter() - t
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    kept, reduced_mb = c.params_after, c.params_after * 4 / 2**20
    del c
    gc.collect()
    more = 2 if first < 10.0 else 1 if first < 60.0 else 0  # best of up to 3 calls, fewer when slow
    t_compress = min(first, best_time(lambda: afde_nb.compress(model, eps), repeat=more, budget_s=20.0)) \
        if more else first

    # the split, each part best of up to 3 (fewer when slow)
    t_net = best_time(lambda: to_network(model, check=False), repeat=3, budget_s=10.0)
    net = to_network(model, check=False)
    t_path, t_agg, path = float("inf"), None, None
    for _ in range(3):
        t = time.perf_counter()
        path = merge_path(net)
        t_path = min(t_path, time.perf_counter() - t)
        if eps > 0:
            t = time.perf_counter()
            for lp in path.layers:  # merge paths are lazy: the agglomeration runs on first use
                lp.pairs
            dt = time.perf_counter() - t
            t_agg = dt if t_agg is None else min(t_agg, dt)
        if t_path + (t_agg or 0.0) > 5.0:
            break
    t_quot = best_time(lambda: quotient(net, path.partition(eps)), repeat=3, budget_s=10.0)
    small = quotient(net, path.partition(eps))[0]
    t_torch = best_time(lambda: to_torch(small), repeat=3, budget_s=10.0)
    return {"width": width, "depth": depth, "eps": eps, "params": params, "model_mb": model_mb,
            "floor": floor, "arith": arith, "compress": t_compress, "compress_first": first, "calls": 1 + more,
            "peak_extra_mb": peak_mb, "kept": kept, "reduced_mb": reduced_mb, "layer_mb": layer_mb, "to_network": t_net, "merge_path": t_path,
            "agglomeration": t_agg, "quotient": t_quot, "to_torch": t_torch}


def run(cfg: dict, limit_s: float) -> dict | str:
    """A configuration in a fresh subprocess: its figures, or why there are none."""
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True,
                             timeout=limit_s)
    except subprocess.TimeoutExpired:
        return f"took more than {limit_s:.0f} s"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed (exit {out.returncode}: {tail})"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall"] = time.perf_counter() - t
    return r


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{1000 * s:.0f}" if s >= 0.1 else f"{1000 * s:.1f}"


def _mb(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _net(r: dict) -> str:
    return f"w{r['width']} x {r['depth']}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--depths", type=int, nargs="+", default=[3, 6, 12])
    ap.add_argument("--depth", type=int, default=6, help="depth of the width series")
    ap.add_argument("--depth-width", type=int, default=1024, help="width of the depth series")
    ap.add_argument("--limit-s", type=float, default=180.0, help="per configuration; beyond it the width series stops")
    ap.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="the first is the memory series' reference")
    args = ap.parse_args()
    eps_list = tuple(args.eps)

    import afde_nb
    import numpy as np
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    mem_gb = _meminfo_mb("MemTotal") / 1024
    print(f"# afde_nb.compress end to end ({time.strftime('%Y-%m-%d')}, commit {commit or '?'})\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem_gb:.0f} GB; "
          f"OpenMP threads {afde_nb._core.openmp_threads()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)

    results: dict[tuple[int, int, float], dict] = {}
    notes, walls = [], []
    t_all = time.perf_counter()
    prev = None
    for w in args.widths:
        if prev is not None:  # the next width needs about (w / w_prev)^2 times the memory of the last
            need = max(r["peak_extra_mb"] + r["model_mb"] for r in prev.values()) * (w / prev[eps_list[0]]["width"]) ** 2
            if need > 0.8 * _meminfo_mb("MemAvailable"):
                notes.append(f"width {w} x {args.depth} not run: it would need about {need / 1024:.1f} GB "
                             f"(scaled from the width before), more than this machine has free")
                break
        res = {eps: run(dict(width=w, depth=args.depth, eps=eps), args.limit_s) for eps in eps_list}
        bad = [f"eps {eps:g}: {r}" for eps, r in res.items() if isinstance(r, str)]
        if bad:
            notes.append(f"width {w} x {args.depth} stopped the width series ({'; '.join(bad)}); "
                         f"the largest width measured is the one before")
            break
        for eps, r in res.items():
            results[(w, args.depth, eps)] = r
        prev = res
        walls.append(f"w{w} x {args.depth} {sum(r['wall'] for r in res.values()):.0f} s")
        print(f"  {walls[-1]}", file=sys.stderr, flush=True)
    for d in args.depths:
        for eps in eps_list:
            if (args.depth_width, d, eps) in results:
                continue
            r = run(dict(width=args.depth_width, depth=d, eps=eps), args.limit_s)
            if isinstance(r, str):
                notes.append(f"w{args.depth_width} x {d}, eps {eps:g}: {r}")
                continue
            results[(args.depth_width, d, eps)] = r
        print(f"  w{args.depth_width} x {d}: done", file=sys.stderr, flush=True)

    width_series = [r for (w, d, e), r in sorted(results.items()) if d == args.depth]
    depth_series = [r for (w, d, e), r in sorted(results.items()) if w == args.depth_width and d in args.depths]

    print("## 1. compress() against the float32 memory floor (width series, depth "
          f"{args.depth})\n")
    rows = []
    for r in width_series:
        rows.append([_net(r), f"{r['params'] / 1e6:.1f}M", f"{r['eps']:g}", _ms(r["compress"]), r["calls"],
                     _ms(r["compress_first"]), _ms(r["floor"]), f"{r['compress'] / r['floor']:.0f}x",
                     _ms(r["arith"]), f"**{r['compress'] / r['arith']:.2f}x**" if r["eps"] > 0 else "-",
                     f"{1000 * r['compress'] / (r['params'] / 1e6):.2f}", f"{r['kept'] / r['params']:.3f}"])
    print(table(["network", "params", "eps", "compress ms (best)", "calls", "first call ms (fresh process)",
                 "numpy sum ms (memory floor)", "vs memory floor", "arithmetic floor ms",
                 "vs arithmetic floor (eps > 0)", "ms / M params", "params kept"], rows))
    lossy = [r for r in width_series if r["eps"] > 0]
    for w in sorted({r["width"] for r in lossy}):
        worst = max((r for r in lossy if r["width"] == w), key=lambda r: r["compress"] / r["arith"])
        print(f"\nw{w} x {args.depth}: worst eps > 0 is {worst['eps']:g}, {worst['compress'] / worst['arith']:.2f}x "
              f"the arithmetic floor ({_ms(worst['compress'])} ms against {_ms(worst['arith'])} ms)")

    print("\n## 2. Where the time goes\n")
    print("merge path: `merge_path()` builds the exact blocks; the agglomeration (touching `lp.pairs`) "
          "is lazy and only built for eps > 0. rest = compress minus the parts.\n")
    rows = []
    for r in width_series + [r for r in depth_series if r["depth"] != args.depth]:
        parts = r["to_network"] + r["merge_path"] + (r["agglomeration"] or 0.0) + r["quotient"] + r["to_torch"]
        share = max(("to_network", "merge_path", "agglomeration", "quotient", "to_torch"),
                    key=lambda k: r[k] or 0.0)
        rows.append([_net(r), f"{r['eps']:g}", _ms(r["compress"]), _ms(r["to_network"]), _ms(r["merge_path"]),
                     _ms(r["agglomeration"]), _ms(r["quotient"]), _ms(r["to_torch"]), _ms(r["compress"] - parts),
                     f"{share} {100 * (r[share] or 0) / r['compress']:.0f}%"])
    print(table(["network", "eps", "compress ms", "to_network ms", "merge_path ms (exact blocks)",
                 "agglomeration ms (lp.pairs)", "cut + quotient ms", "to_torch ms", "rest ms",
                 "largest part (of compress)"], rows))

    print("\n## 3. Peak resident memory of compress() (fresh process per row)\n")
    rows = []
    for r in width_series + [r for r in depth_series if r["depth"] != args.depth]:
        target = r["reduced_mb"] + r["layer_mb"]
        rows.append([_net(r), f"{r['eps']:g}", _mb(r["model_mb"]), _mb(r["reduced_mb"]),
                     _mb(r["peak_extra_mb"]), f"{r['peak_extra_mb'] / r['model_mb']:.2f}x", _mb(target),
                     "yes" if r["peak_extra_mb"] <= target else "no", _ms(r["compress_first"])])
    print(table(["network", "eps", "model MB (float32)", "reduced model MB (float32)", "peak extra MB",
                 "peak extra / model", "target MB (reduced + one layer)", "within target", "this call ms"], rows))

    print(f"\n## 4. Time against depth (width {args.depth_width})\n")
    rows = []
    for r in depth_series:
        rows.append([_net(r), f"{r['params'] / 1e6:.1f}M", f"{r['eps']:g}", _ms(r["compress"]),
                     f"{r['compress'] / r['floor']:.0f}x", f"{1000 * r['compress'] / (r['depth'] - 1):.0f}"])
    print(table(["network", "params", "eps", "compress ms", "vs floor", "ms / hidden layer"], rows))

    for eps in eps_list:  # log-log slope of time against width
        pts = [(r["width"], r["compress"]) for r in width_series if r["eps"] == eps]
        if len(pts) >= 3:
            x, y = np.log([p[0] for p in pts[1:]]), np.log([p[1] for p in pts[1:]])
            print(f"\nslope of log time against log width (from w{pts[1][0]}), eps {eps:g}: "
                  f"{np.polyfit(x, y, 1)[0]:.2f}")
    for n in notes:
        print(f"\nNote: {n}")
    print(f"\nwall time per width (both eps, subprocesses included): {', '.join(walls)}")
    print(f"\nwhole run: {time.perf_counter() - t_all:.0f} s; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(**json.loads(sys.argv[2]))))
    else:
        main()
