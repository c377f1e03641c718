"""Issue 10: the default merge path (Ward, backward, eps > 0) at width 4096 against its BLAS floor,
and the approximate path (``merge_path(net, approx=r)``), in one run.

    python benchmarks/merge_path_scale.py [--width 4096] [--depth 6] [--approx 64 128 256]

The model is benchmarks/end_to_end.py's: a float32 ``nn.Sequential`` tanh MLP of ``depth`` Linear
layers of ``width`` x ``width`` (w4096 x 6: 100.7 M parameters). Printed, all from this one run:

- ``compress(model, eps=0.05)`` (the default: data-free, no repair, eps relative), first call and
  a second call;
- the merge path alone: ``merge_path(net)`` (the exact blocks) and the agglomeration of every
  hidden layer (``MergePath.build()``, one layer after the other, as compress does; and
  ``build(workers=2)``, two layers at a time), its parts measured separately: the probes' forward
  (512 pseudo-inputs through every layer, float64, pre-activations kept), and per layer the Gram
  product of the metric rows (numpy, float64) and ``_core.agglomerate`` (that Gram + the chain);
- the floors: one float32 Gram product per hidden layer (numpy ``F @ F.T``, dsyrk/ssyrk) of (a)
  the rows the path agglomerates (n x 512: each neuron's pre-activations on the probes) and (b)
  the layer's weight rows [W b] (n x (d + 1)); best of 2 each; and the ratios;
- the approximate paths: ``merge_path(net, approx=r)`` + agglomeration, and ``compress`` on it
  (``path=``), with the fraction of parameters kept at eps = 0.05.

Flop counts per hidden layer: the metric rows (the probes' forward) 2 n d N, their Gram n^2 N
(symmetric product; 2 n^2 N as a general GEMM), the chain O(n^2) memory passes.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from _util import best_time, table
from end_to_end import _mlp


def _t(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--approx", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--no-row-floor", action="store_true", help="skip floor (b), the n x (d+1) Gram products")
    args = ap.parse_args()

    import torch

    import afde_nb
    from afde_nb import _core
    from afde_nb.models.stack import to_network
    from afde_nb.core.path import _Probes, merge_path, probe_inputs

    print(f"# merge path at width {args.width} x {args.depth} ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; OpenMP threads "
          f"{afde_nb._core.openmp_threads()}, torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
          f"{np.__version__}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n", flush=True)

    afde_nb.compress(_mlp(16, 3), args.eps)  # one-time costs (imports, tracing) outside the figures
    model = _mlp(args.width, args.depth)
    t_c1, c = _t(lambda: afde_nb.compress(model, args.eps))
    kept = c.params_after / c.params_before
    del c
    t_c2, _ = _t(lambda: afde_nb.compress(model, args.eps))

    net = to_network(model)
    t_blocks, mp = _t(lambda: merge_path(net))
    t_agg, _ = _t(mp.build)  # what compress does: one layer after the other
    exact_pairs = [lp.pairs.copy() for lp in mp.layers]
    del mp
    mp = merge_path(net)
    t_serial, _ = _t(lambda: mp.build(workers=2))  # two layers at a time
    del mp

    # the parts, measured on their own
    x = probe_inputs(net, None)
    probes = _Probes(net, lambda: x, None)  # the merge path's forward, every layer's pre-activations kept
    t_fwd, pre = _t(lambda: {h: probes.pre(h) for h in range(len(net.layers))})
    rows = []
    sums = dict(gram64=0.0, agg=0.0, floor_a=0.0, floor_b=0.0)
    work = None
    for h, layer in enumerate(net.hidden):
        F = np.ascontiguousarray(pre[h].T) / np.sqrt(len(x))
        n = len(F)
        t_g64 = best_time(lambda: F @ F.T, repeat=2)
        mass = np.ones(n)
        if work is None or work.size < n * _core.ward_stride(n):  # one buffer for every layer, as the path
            work = np.zeros(n * _core.ward_stride(n))
        t_ag, _ = _t(lambda: _core.agglomerate(F, mass, np.arange(n), np.ones(n, dtype=np.int64), "ward", True, 0,
                                               False, work))
        F32 = F.astype(np.float32)
        fa = best_time(lambda: F32 @ F32.T, repeat=2)
        del F32
        if args.no_row_floor:
            fb = float("nan")
        else:
            R32 = np.column_stack([layer.weight, layer.bias]).astype(np.float32)
            fb = best_time(lambda: R32 @ R32.T, repeat=2)
            del R32
        sums["gram64"] += t_g64
        sums["agg"] += t_ag
        sums["floor_a"] += fa
        sums["floor_b"] += fb
        rows.append([h, f"{n} x {F.shape[1]}", f"{1000 * fa:.0f}", "-" if np.isnan(fb) else f"{1000 * fb:.0f}",
                     f"{1000 * t_g64:.0f}", f"{1000 * t_ag:.0f}", f"{1000 * (t_ag - t_g64):.0f}"])
    del pre, probes, work
    print(table(["hidden layer", "metric rows", "floor (a): f32 Gram of the metric rows ms",
                 "floor (b): f32 Gram of [W b] ms", "f64 Gram (numpy) ms", "_core.agglomerate ms",
                 "of it beyond the Gram ms"], rows))
    print()
    full = t_blocks + t_agg
    print(table(["figure", "s", "/ floor (a)", "/ floor (b)"], [
        [f"compress(eps={args.eps:g}), first call", f"{t_c1:.2f}", f"{t_c1 / sums['floor_a']:.1f}x",
         f"{t_c1 / sums['floor_b']:.2f}x"],
        [f"compress(eps={args.eps:g}), second call", f"{t_c2:.2f}", f"{t_c2 / sums['floor_a']:.1f}x",
         f"{t_c2 / sums['floor_b']:.2f}x"],
        ["merge path: exact blocks + agglomeration", f"{full:.2f}", f"{full / sums['floor_a']:.1f}x",
         f"{full / sums['floor_b']:.2f}x"],
        ["  merge_path() (exact blocks)", f"{t_blocks:.2f}", "", ""],
        ["  agglomeration of every layer (MergePath.build, one layer after the other)", f"{t_agg:.2f}",
         f"{t_agg / sums['floor_a']:.1f}x", ""],
        ["  the same, two layers at a time (build(workers=2))", f"{t_serial:.2f}", f"{t_serial / sums['floor_a']:.1f}x", ""],
        ["  of it: the probes' forward (float64)", f"{t_fwd:.2f}", "", ""],
        ["  of it: Gram products (float64)", f"{sums['gram64']:.2f}", "", ""],
        ["  of it: the chains (agglomerate - Gram)", f"{sums['agg'] - sums['gram64']:.2f}", "", ""],
        ["floor (a): f32 Gram of each layer's metric rows", f"{sums['floor_a']:.2f}", "1x", ""],
        ["floor (b): f32 Gram of each layer's [W b] rows", f"{sums['floor_b']:.2f}", "", "1x"],
    ]))
    print(f"\nparams kept at eps = {args.eps:g}: {kept:.4f}\n", flush=True)

    arows = []
    for r in args.approx:
        t_b, ap_path = _t(lambda: merge_path(net, approx=r))
        t_a, _ = _t(ap_path.build)
        t_cc, c = _t(lambda: afde_nb.compress(model, args.eps, path=ap_path))
        del c
        t_one, c = _t(lambda: afde_nb.compress(model, args.eps, approx=r))  # the one call a user makes
        same = sum(int(np.array_equal(p, lp.pairs)) for p, lp in zip(exact_pairs, ap_path.layers))
        arows.append([r, f"{t_b + t_a:.2f}", f"{(t_b + t_a) / sums['floor_a']:.1f}x", f"{t_cc:.2f}",
                      f"{t_b + t_a + t_cc:.2f}", f"{t_one:.2f}", f"{c.params_after / c.params_before:.4f}",
                      f"{same} of {len(exact_pairs)}"])
        del c, ap_path
    if arows:
        print(table(["approx (probe rows)", "merge path s", "/ floor (a)", "compress(path=) s",
                     "merge path + compress s", f"compress(model, {args.eps:g}, approx=r) s", f"params kept at eps {args.eps:g}",
                     "layers with the exact path's merges"], arows))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
