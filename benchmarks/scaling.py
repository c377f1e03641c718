"""Issue 5.3: time and peak memory of eps-lumping against width and depth, 1 vs 2 threads.

    python benchmarks/scaling.py

Each configuration runs in a fresh subprocess; its peak resident memory during the lumping is
VmHWM after resetting it (``/proc/self/clear_refs``) minus the resident memory just before. Small eps on unstructured (random) layers and large eps on clustered layers, both modes.
The fitted log-log slope of time against width is printed per series (2 = quadratic in width,
i.e. linear in the number of parameters of a width x width layer).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from _util import table


def one(width: int, depth: int, mode: str, eps: float, clustered: bool, threads: int) -> dict:
    import afde_nb
    from _nets import random_mlp

    net = random_mlp(width, depth, seed=3, clusters=32 if clustered else None)

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key))

    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = status("VmRSS")
    t = time.perf_counter()
    p = afde_nb.lump(net, eps, mode, relative=True, threads=threads, method="components")
    dt = time.perf_counter() - t
    return {"seconds": dt, "peak_extra_mb": (status("VmHWM") - before) / 1024, "blocks": p.size,
            "weights_mb": sum(l.weight.nbytes for l in net.layers) / 2**20}


def run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    series = [("small eps 0.01, random", 0.01, False), ("large eps 2.0, clustered", 2.0, True)]
    rows = []
    for label, eps, clustered in series:
        for mode in ("backward", "forward"):
            for threads in (1, 2):
                widths = [256, 512, 1024, 2048, 4096]
                times = []
                for w in widths:
                    r = run(dict(width=w, depth=4, mode=mode, eps=eps, clustered=clustered, threads=threads))
                    times.append(r["seconds"])
                    rows.append([label, mode, threads, f"w{w} x 4", f"{r['weights_mb']:.0f}", f"{r['seconds'] * 1000:.1f}",
                                 f"{r['peak_extra_mb']:.0f}", r["blocks"]])
                slope = np.polyfit(np.log(widths[1:]), np.log(times[1:]), 1)[0]
                rows.append([label, mode, threads, "slope vs width", "", f"{slope:.2f}", "", ""])
                if threads == 1:
                    for depth in (2, 8, 16):
                        r = run(dict(width=1024, depth=depth, mode=mode, eps=eps, clustered=clustered, threads=1))
                        rows.append([label, mode, 1, f"w1024 x {depth}", f"{r['weights_mb']:.0f}",
                                     f"{r['seconds'] * 1000:.1f}", f"{r['peak_extra_mb']:.0f}", r["blocks"]])
                print(rows[-1], flush=True)
    print(table(["series", "mode", "threads", "network", "weights MB (f64)", "time ms", "peak extra MB",
                 "hidden blocks"], rows))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(**json.loads(sys.argv[2]))))
    else:
        main()
