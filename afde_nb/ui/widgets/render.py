"""Pure renderers of the panel: HTML and SVG strings (and the trade-off PNG) from plain data.

Nothing here knows about widgets or calls ``compress()``: each function takes numbers, lists and
dicts (what :class:`~afde_nb.ui.widgets.state.PanelState` holds) and returns a string, so every view
can be tested on its own. matplotlib is imported only by :class:`TradeoffPlot`.
"""
from __future__ import annotations

import html
import io
import math
import traceback
from typing import Sequence

#: block colours (matplotlib's tab20, reordered dark/light); singletons are grey
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
           "#dbdb8d", "#9edae5", "#393b79", "#637939")
SINGLETON = "#e6e6e6"
CURRENT = "#d62728"


def fmt(x, spec: str = ".4g") -> str:
    """A number for HTML; None and NaN read as a dash."""
    return "&ndash;" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def block_sizes(labels: Sequence[int]) -> list[int]:
    """Size of each block, in block order (labels are 0..K-1)."""
    sizes: list[int] = []
    for b in labels:
        b = int(b)
        if b >= len(sizes):
            sizes.extend([0] * (b + 1 - len(sizes)))
        sizes[b] += 1
    return sizes


def size_summary(sizes: Sequence[int]) -> str:
    """``[3, 3, 1]`` -> ``"2&times;3, 1&times;1"``."""
    counts: dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n}&times;{s}" for s, n in sorted(counts.items(), reverse=True))


def strip_svg(labels: Sequence[int], sizes: Sequence[int] | None = None, width: int = 640, height: int = 16) -> str:
    """One row of cells, one per neuron in its original order, coloured by block (grey: alone)."""
    labels = [int(b) for b in labels]
    n = len(labels)
    if n == 0:
        return "<svg width='0' height='0'></svg>"
    sizes = block_sizes(labels) if sizes is None else list(sizes)
    cell = max(3.0, min(14.0, width / n))
    colour, k = {}, 0
    for b in range(len(sizes)):  # merged blocks get palette colours in order of their first neuron
        if sizes[b] > 1:
            colour[b] = PALETTE[k % len(PALETTE)]
            k += 1
    rects = []
    for i, b in enumerate(labels):
        fill = colour.get(b, SINGLETON)
        rects.append(f"<rect x='{i * cell:.1f}' y='0' width='{cell - 0.6:.1f}' height='{height}' fill='{fill}'>"
                     f"<title>neuron {i} in block {b} ({sizes[b]} neuron{'s' if sizes[b] > 1 else ''})</title></rect>")
    return (f"<svg class='afde-strip' width='{n * cell:.0f}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(rects)}</svg>")


def figures_html(f: dict, data_label: str = "") -> str:
    """The figures table: parameters, % kept, widths, test error, calibration deviation, setting."""
    pct = 100 * f["kept"]
    bar = (f"<div style='display:inline-block;width:160px;height:10px;background:#eee;vertical-align:middle'>"
           f"<div style='width:{min(pct, 100):.1f}%;height:10px;background:#1f77b4'></div></div>")
    rows = [("parameters", f"{f['params_before']:,} &rarr; <b class='afde-params-after'>{f['params_after']:,}</b>"),
            ("kept", f"<b class='afde-kept'>{pct:.1f}%</b> {bar}"),
            ("hidden widths", f"{'-'.join(map(str, f['widths_before']))} &rarr; "
                              f"<b>{'-'.join(map(str, f['widths_after']))}</b>")]
    if "mse" in f:
        where = [html.escape(data_label)] if data_label else []
        if f.get("test_n") is not None and f.get("test_rows") is not None and f["test_n"] < f["test_rows"]:
            where.append(f"a fixed sample of {f['test_n']:,} of {f['test_rows']:,} rows")  # state.EVAL_ROWS
        rows.append((f"test MSE ({', '.join(where)})" if where else "test MSE",
                     f"{fmt(f.get('mse_before'))} &rarr; <b class='afde-mse'>{fmt(f['mse'])}</b>"))
        rows.append(("test R&sup2;", f"{fmt(f.get('r2_before'), '.4f')} &rarr; <b class='afde-r2'>{fmt(f['r2'], '.4f')}</b>"))
    if "calib_max_abs_before_repair" in f:
        rows.append((f"deviation on {f['calib_n']} calibration inputs, before repair",
                     f"max {fmt(f['calib_max_abs_before_repair'], '.3g')}, "
                     f"rms {fmt(f['calib_rms_before_repair'], '.3g')}"))
    if "calib_max_abs" in f:
        rows.append((f"deviation on {f['calib_n']} calibration inputs",
                     f"max {fmt(f['calib_max_abs'], '.3g')}, rms {fmt(f['calib_rms'], '.3g')}"))
    if f.get("estimated_error") is not None:
        rows.append(("estimated output error (relative RMS)",
                     f"<b class='afde-estimate'>{fmt(f['estimated_error'], '.3g')}</b>"
                     + (f", measured {fmt(f['calib_rel_rms'], '.3g')}" if f.get("calib_rel_rms") is not None else "")))
    setting = f"{f['mode']}, eps = {f['eps']:.4g}{' (relative)' if f['relative'] else ''}"
    if f.get("method"):
        setting += f", {html.escape(str(f['method']))}"
    if f.get("data_aware"):
        setting += ", data-aware"
    if f.get("repair"):
        setting += f", repaired ({html.escape(str(f['repair']))})"
    if f.get("target"):
        setting += ", target " + ", ".join(f"{html.escape(str(k))} {v:,}" if isinstance(v, int) else
                                           f"{html.escape(str(k))} {v}" for k, v in f["target"].items())
    if "compress_ms" in f:
        setting += f" &nbsp;<span style='color:#888'>({f['compress_ms']:.0f} ms)</span>"
    rows.append(("setting", setting))
    body = "".join(f"<tr><td style='padding:1px 12px 1px 0;color:#555'>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='afde-figures-table'>{body}</table>"


def merges_html(merges: Sequence[dict], report: str = "") -> str:
    """Per hidden layer (for a model that is not one plain stack: per group, by module path):
    neurons before/after, blocks, and the strip of which neurons merged; ``report`` (what was
    found and left alone) folded below."""
    rows = []
    for m in merges:
        rows.append(
            "<tr>"
            f"<td style='padding-right:10px'><code>{html.escape(str(m['layer']))}</code> "
            f"{html.escape(str(m['activation']))}</td>"
            f"<td style='padding-right:10px;white-space:nowrap'>{m['before']} &rarr; <b>{m['after']}</b></td>"
            f"<td style='padding-right:10px'>largest {m['largest']}; {m['merged_blocks']} merged block"
            f"{'s' if m['merged_blocks'] != 1 else ''}<br><span style='color:#777;font-size:11px'>sizes "
            f"{size_summary(m['block_sizes'])}</span></td>"
            f"<td>{strip_svg(m['labels'])}</td></tr>")
    head = ("<tr style='color:#555'><th align='left'>layer</th><th align='left'>neurons</th>"
            "<th align='left'>blocks</th><th align='left'>neurons in order, coloured by block "
            "(grey: not merged)</th></tr>")
    found = (f"<details class='afde-groups-report'><summary style='color:#555'>groups found, and what was left "
             f"alone</summary><pre style='font-size:11px'>{html.escape(report)}</pre></details>") if report else ""
    return f"<table class='afde-merges-table'>{head}{''.join(rows)}</table>{found}"


def message_html(msg: str) -> str:
    """A grey italic note (``msg`` is HTML)."""
    return f"<i style='color:#777'>{msg}</i>"


NO_COMPRESSION = message_html("no compression: see the error above")


def notes_html(notes: Sequence[str]) -> str:
    """What the panel leaves out for this model, one grey line each (``notes`` are plain text)."""
    return "".join(f"<div class='afde-note'>{message_html('note: ' + html.escape(n))}</div>" for n in notes)


def error_html(exc: BaseException, note: str = "") -> str:
    """The error box: type and message (and ``note``), the last frames of the traceback folded away."""
    tb = html.escape("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]))
    return ("<div style='color:#a00;border:1px solid #e99;background:#fff4f4;padding:4px 8px'>"
            f"<b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc))}"
            f"{'; ' + html.escape(note) if note else ''}<details><summary>details</summary><pre style='font-size:11px'>{tb}</pre></details></div>")


def status_html(what: str, ms: float | None = None) -> str:
    """The status line: ``what`` in progress (``ms`` None) or done in ``ms`` milliseconds."""
    if ms is None:
        return f"<span style='color:#555'>&#8987; {html.escape(what)}&hellip;</span>"
    return f"<span style='color:#777'>{html.escape(what)}: {ms:.0f} ms</span>"


def export_html(paths: Sequence, params_after: int) -> str:
    """What the export wrote."""
    return ("wrote " + ", ".join(f"<code>{html.escape(str(w))}</code>" for w in paths)
            + f" <span style='color:#777'>({params_after:,} parameters)</span>")


def eps_path_svg(points: Sequence[tuple[float, float]], current: tuple[float, float] | None = None, *,
                 relative: bool = False, output_level: bool = False, width: int = 360, height: int = 190) -> str:
    """The eps path: % of parameters kept against eps (log axis; eps = 0 at the left edge), drawn
    as a step line through ``points`` = [(eps, % kept), ...], with ``current`` = (eps, % kept) as a
    red dot. Empty ``points`` give an empty plot with a note. ``output_level``: eps is the
    estimated output error (a relative merge path, issue 30), which the title says."""
    pts = sorted((float(e), float(k)) for e, k in points)
    ml, mr, mt, mb = 44, 10, 18, 34  # margins: axis labels left and below
    pw, ph = width - ml - mr, height - mt - mb
    title = ("% parameters kept against eps (est. output error)" if output_level else
             f"% parameters kept against {'relative ' if relative else ''}eps")
    out = [f"<svg class='afde-eps-path-svg' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg' "
           "font-family='sans-serif' font-size='10'>",
           f"<text x='{ml}' y='12' font-size='11' fill='#333'>{html.escape(title)}</text>",
           f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#bbb'/>"]
    positive = [e for e, _ in pts if e > 0]
    if current is not None and current[0] > 0:
        positive.append(float(current[0]))
    if not pts or not positive:
        out.append(f"<text x='{ml + 8}' y='{mt + ph / 2:.0f}' fill='#777'>no eps path</text></svg>")
        return "".join(out)
    lo, hi = math.log10(min(positive)), math.log10(max(positive))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    zero_w = 14.0  # eps = 0 sits in its own slot at the left edge
    has_zero = any(e <= 0 for e, _ in pts) or (current is not None and current[0] <= 0)

    def x_of(e: float) -> float:
        if e <= 0:
            return ml + 2.0
        x0 = ml + (zero_w if has_zero else 0.0)
        return x0 + (math.log10(e) - lo) / (hi - lo) * (ml + pw - x0)

    def y_of(k: float) -> float:
        return mt + ph * (1 - min(max(k, 0.0), 100.0) / 100.0)

    for k in (0, 25, 50, 75, 100):  # horizontal grid and y labels
        y = y_of(k)
        out.append(f"<line x1='{ml}' y1='{y:.1f}' x2='{ml + pw}' y2='{y:.1f}' stroke='#eee'/>"
                   f"<text x='{ml - 4}' y='{y + 3:.1f}' text-anchor='end' fill='#555'>{k}%</text>")
    ticks = [10.0 ** p for p in range(math.floor(lo) - 1, math.ceil(hi) + 1)]  # decades on the x axis,
    if sum(lo - 1e-9 <= math.log10(t) <= hi + 1e-9 for t in ticks) < 3:  # and 2, 5 between when few
        ticks = sorted(k * t for t in ticks for k in (1, 2, 5))
    for t in ticks:
        if lo - 1e-9 <= math.log10(t) <= hi + 1e-9:
            x = x_of(t)
            out.append(f"<line x1='{x:.1f}' y1='{mt}' x2='{x:.1f}' y2='{mt + ph}' stroke='#eee'/>"
                       f"<text x='{x:.1f}' y='{mt + ph + 12}' text-anchor='middle' fill='#555'>{t:g}</text>")
    if has_zero:
        out.append(f"<text x='{x_of(0.0):.1f}' y='{mt + ph + 12}' text-anchor='start' fill='#555'>0</text>")
    out.append(f"<text x='{ml + pw / 2:.0f}' y='{height - 4}' text-anchor='middle' fill='#333'>eps</text>")
    # a step line: each eps keeps its size until the next point
    xy: list[tuple[float, float]] = []
    for i, (e, k) in enumerate(pts):
        x, y = x_of(e), y_of(k)
        if xy:
            xy.append((x, xy[-1][1]))
        xy.append((x, y))
    out.append("<polyline class='afde-eps-path-line' fill='none' stroke='#1f77b4' stroke-width='1.5' points='"
               + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + "'/>")
    for e, k in pts:
        out.append(f"<circle class='afde-eps-path-point' cx='{x_of(e):.1f}' cy='{y_of(k):.1f}' r='1.8' "
                   f"fill='#1f77b4'><title>eps {e:.4g}: {k:.1f}% kept</title></circle>")
    if current is not None:
        e, k = float(current[0]), float(current[1])
        out.append(f"<circle class='afde-eps-path-current' cx='{x_of(e):.1f}' cy='{y_of(k):.1f}' r='5' "
                   f"fill='{CURRENT}'><title>current: eps {e:.4g}, {k:.1f}% kept</title></circle>")
    out.append("</svg>")
    return "".join(out)


class TradeoffPlot:
    """The size/error trade-off (``afde_nb.eval.bench.tradeoff`` rows) as a PNG; the curve is drawn once
    per list of rows, only the current point moves: the drawn curve is kept as a bitmap and each
    :meth:`png` paints the star and its eps over it (matplotlib's blitting) and encodes the PNG,
    instead of redrawing the figure. Needs matplotlib (and Pillow, which it requires)."""

    def __init__(self, rows: Sequence[dict], *, title: str, ylabel: str = "test MSE", base_mse: float | None = None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.rows = rows
        fig = Figure(figsize=(6.4, 3.4), dpi=80)
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        styles = {"magnitude": ("s", "#7f7f7f"), "wanda": ("^", "#2ca02c")}
        methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "original"]
        for k, meth in enumerate(methods):
            pts = sorted((r for r in rows if r["method"] == meth), key=lambda r: r["kept"])
            base = str(meth).lower().split("+")[0]  # "magnitude+repair": magnitude, repaired
            marker, col = styles.get(base, ("o", PALETTE[(2 * k + 4) % len(PALETTE)]))
            if str(meth).lower().startswith("afde"):
                marker, col = "o", "#1f77b4"
            ax.plot([100 * r["kept"] for r in pts], [max(r["mse"], 1e-12) for r in pts], marker=marker,
                    color=col, label=str(meth), lw=1.2, ms=4)
        orig = [r for r in rows if r["method"] == "original"]
        base = orig[0]["mse"] if orig else base_mse
        if base is not None:
            ax.axhline(max(base, 1e-12), color="#999", ls=":", lw=1, label="original")
        (self._star,) = ax.plot([], [], marker="*", ms=14, color=CURRENT, ls="none", zorder=5, label="current",
                                animated=True)
        ax.set_yscale("log")
        ax.set_xlabel("% parameters kept")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        ax.set_autoscale_on(False)  # the limits the curve gave stay (the star is painted over a bitmap of them)
        self.figure = fig
        # the curve with and without the star's legend entry, drawn once each: a move paints the
        # star and its eps label over one of them
        self._note = ax.annotate("", (0.0, 0.0), xytext=(7, 5), textcoords="offset points", fontsize=8,
                                 color=CURRENT, animated=True)
        self._draw_backgrounds()

    def _draw_backgrounds(self) -> None:
        ax = self.figure.axes[0]
        self._background = {}
        for with_star in (False, True):
            handles, labels = ax.get_legend_handles_labels()
            keep = [(h, l) for h, l in zip(handles, labels) if with_star or h is not self._star]
            if keep:
                ax.legend([h for h, _ in keep], [l for _, l in keep], fontsize=8)
            self.canvas.draw()
            self._background[with_star] = self.canvas.copy_from_bbox(self.figure.bbox)

    def png(self, current: tuple[float, float, float] | None = None) -> bytes:
        """The figure with ``current`` = (eps, fraction kept, test MSE) as a star labelled with its
        eps (None: no star)."""
        import numpy as np
        from PIL import Image

        ax = self.figure.axes[0]
        if current is not None:
            eps, kept, err = current
            x, y = 100 * kept, max(err, 1e-12)
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            if not (x0 <= x <= x1 and y0 <= y <= y1):  # off the drawn axes: widen them, draw the curve again
                ax.set_xlim(min(x0, x - 2), max(x1, x + 2))
                ax.set_ylim(min(y0, y / 2), max(y1, y * 2))
                self._draw_backgrounds()
        self.canvas.restore_region(self._background[current is not None])
        if current is not None:
            self._star.set_data([x], [y])
            self._note.xy = (x, y)
            self._note.set_text(f"eps={eps:.3g}")
            ax.draw_artist(self._star)
            ax.draw_artist(self._note)
        img = Image.fromarray(np.asarray(self.canvas.buffer_rgba()))
        buf = io.BytesIO()
        img.save(buf, format="png", compress_level=1)
        return buf.getvalue()
