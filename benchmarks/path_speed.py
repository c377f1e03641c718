"""How long the default compression takes (method.md §8; issue 8's target: widths of 128 in < 20 ms
without repair), split into building the merge path and cutting it, and what repair adds.

    python benchmarks/path_speed.py            # both tables
    python benchmarks/path_speed.py slider     # the slider table only

Prints Markdown tables; the first's figures are the best of 5 runs on this machine, in one run. The
second times the panel's slider (issue 10: < 50 ms at width 1024): the first update of a fresh
state, then 15 moves, each from the new eps to the figures the panel shows (:func:`slider_moves`);
the 15 moves visit 5 eps three times, so 10 of them find their figures kept (``SliderCache``'s
memo), and the same 15 moves are timed again with nothing kept (every move answered).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

import afde_nb
from afde_nb.models.stack import to_network
from afde_nb.core.path import merge_path
from _util import best_time, table


def mlp(widths, act=torch.nn.Tanh):
    torch.manual_seed(0)
    mods = []
    for k in range(len(widths) - 1):
        mods.append(torch.nn.Linear(widths[k], widths[k + 1]))
        if k < len(widths) - 2:
            mods.append(act())
    return torch.nn.Sequential(*mods)


def main() -> None:
    rows = []
    X = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    for widths in ([8, 64, 64, 2], [8, 128, 128, 2], [8, 256, 256, 2], [8, 512, 512, 2], [8, 1024, 1024, 2]):
        model = mlp(widths)
        net = to_network(model)
        def build():
            p = merge_path(net)
            for lp in p.layers:  # the agglomeration runs on first use beyond the exact merges
                lp.pairs
            return p

        t_path = best_time(build, repeat=5)
        path = build()
        t_cut = best_time(lambda: path.partition(0.1), repeat=5)
        t_all = best_time(lambda: afde_nb.compress(model, 0.1), repeat=5)
        t_target = best_time(lambda: afde_nb.compress(model, target_params=net.num_params // 2), repeat=5)
        t_rep = best_time(lambda: afde_nb.compress(model, 0.1, calibration=X), repeat=3)
        rows.append(["-".join(map(str, widths)), f"{1e3 * t_path:.1f}", f"{1e3 * t_cut:.2f}", f"{1e3 * t_all:.1f}",
                     f"{1e3 * t_target:.1f}", f"{1e3 * t_rep:.1f}"])
    print(table(["widths", "merge path ms", "cut ms", "compress(eps) ms", "compress(target_params) ms",
                 "compress + calibration + repair ms"], rows))
    print(f"\nOpenMP threads: {afde_nb._core.openmp_threads()}")
    print()
    print(slider_table())


#: the slider moves timed after the first update (eps; repeated ROUNDS times)
MOVES = (0.02, 0.1, 0.03, 0.2, 0.05)
ROUNDS = 3


def panel_render(s, plot, render) -> None:
    """What the panel's ``_render`` computes after ``s.update()``: the figures table, the merges
    per layer, the notes, the eps path with the current point, and the trade-off plot's PNG with
    the current star (``plot``: a :class:`~afde_nb.ui.widgets.render.TradeoffPlot`, or None)."""
    f = s.figures
    render.figures_html(f, s.data_label)
    render.merges_html(s.merges, s.groups_report)
    render.notes_html(s.notes)
    render.eps_path_svg(s.curve(), (f["eps"], 100 * f["kept"]), relative=s.relative)
    if plot is not None:
        plot.png((f["eps"], f["kept"], f["mse"]) if "mse" in f else None)


def slider_moves(width: int, repair, state_cls=None, render=None, rows: int = 2000):
    """(first update s, [slider move s, ...], [the same moves with nothing kept, s]) on an
    8-width-width-2 tanh MLP with ``rows`` test rows and 512 calibration rows: each time is value ->
    updated figures, i.e. ``state.update()`` plus :func:`panel_render`. The trade-off plot is drawn
    once (not timed) from a small ``state.tradeoff()`` so that every move re-paints its star, as
    the panel does. The second list times the moves again with no partition's figures kept
    (``afde_nb.pipeline.moves.MEMO = 0``): every move answered."""
    import afde_nb.pipeline.moves

    if state_cls is None:
        from afde_nb.ui.widgets.state import PanelState as state_cls
    if render is None:
        from afde_nb.ui.widgets import render
    model = mlp([8, width, width, 2])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 8)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(X)).numpy() + 0.01 * rng.standard_normal((rows, 2)).astype(np.float32)
    s = state_cls(model, (X, y), calibration=X[:512], eps=0.05, repair=repair, eps_values=(0.05, 0.2),
                  baselines=("magnitude",))
    t = time.perf_counter()
    s.update()
    panel_render(s, None, render)
    first = time.perf_counter() - t
    s.tradeoff()
    plot = render.TradeoffPlot(s.tradeoff_rows, title="trade-off", base_mse=s.base.get("mse"))
    moves = _time_moves(s, plot, render)
    keep = afde_nb.pipeline.moves.MEMO
    afde_nb.pipeline.moves.MEMO = 0
    try:
        getattr(getattr(s, "_slider", None), "_memo", {}).clear()
        answered = _time_moves(s, plot, render)
    finally:
        afde_nb.pipeline.moves.MEMO = keep
    return first, moves, answered


def _time_moves(s, plot, render) -> list[float]:
    moves = []
    for _ in range(ROUNDS):
        for e in MOVES:
            s.eps = e
            t = time.perf_counter()
            s.update()
            panel_render(s, plot, render)
            moves.append(time.perf_counter() - t)
    return moves


def slider_table() -> str:
    """Issue 10's target: a slider move on a width-1024 net in < 50 ms, value -> updated figures."""
    rows, load = [], ", ".join(f"{x:.2f}" for x in os.getloadavg())
    for width in (128, 1024):
        for repair in (False, None):
            first, moves, answered = slider_moves(width, repair)
            rows.append([f"8-{width}-{width}-2", "on" if repair is None else "off", f"{1e3 * first:.0f}",
                         f"{1e3 * float(np.median(moves)):.0f}", f"{1e3 * max(moves):.0f}",
                         f"{1e3 * float(np.median(answered)):.0f}", f"{1e3 * max(answered):.0f}"])
    n = len(MOVES) * ROUNDS
    return (table(["widths", "repair", "first update ms (builds the path)", f"slider move ms (median of {n})",
                   "slider move ms (max)", "nothing kept: median ms", "nothing kept: max ms"], rows)
            + f"\n\nvalue -> updated figures (state.update() + what the panel renders); load average before: {load}, "
            + "after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    if sys.argv[1:] == ["slider"]:
        print(slider_table())
    else:
        main()
