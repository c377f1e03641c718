"""``Panel``: pick eps and mode with the mouse, watch what ``compress()`` does, export the result.

The panel is an ``ipywidgets.VBox``; show it as the last expression of a cell (or ``display(p)``).
It calls the public API only: :func:`afde_nb.compress`, :func:`afde_nb.bench.tradeoff`,
:func:`afde_nb.train.mse` / :func:`~afde_nb.train.r2` and :meth:`Compression.save`.
Every error is shown in the panel's error area (and kept in ``panel.errors``), never raised into
the kernel from a widget callback.

State for scripts and tests:

* ``panel.compression`` the current :class:`~afde_nb.Compression` (``None`` while it fails);
* ``panel.figures``     the numbers shown (params, kept, widths, test MSE and R^2, ...);
* ``panel.merges``      per hidden layer: neurons before/after, block sizes, block label per neuron;
* ``panel.curve``       the trade-off points (``afde_nb.bench.tradeoff`` rows) once drawn;
* ``panel.set_eps(x)``, ``set_mode(m)``, ``set_relative(b)``, ``export(path, fmt)``,
  ``draw_tradeoff()``.
"""
from __future__ import annotations

import base64
import html
import inspect
import io
import math
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np

try:
    import ipywidgets as W
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("afde_nb.widgets needs ipywidgets>=8 and matplotlib: pip install 'afde-nb[notebook]'") from _exc
if int(W.__version__.split(".")[0]) < 8:  # pragma: no cover
    raise ImportError(f"afde_nb.widgets needs ipywidgets>=8, found {W.__version__}")

from ..compress import Compression, compress
from ..train import mse, r2

MODES = ("backward", "forward")
FORMATS = (".pt", ".safetensors")
#: block colours (matplotlib's tab20, reordered dark/light); singletons are grey
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
           "#dbdb8d", "#9edae5", "#393b79", "#637939")
SINGLETON = "#e6e6e6"
SLOW_S = 1.0  # show progress for anything expected to take longer than this


def _numpy(a, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(a)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{what} must be a numeric array, got {type(a).__name__}")
    return arr


def resolve_data(data, calibration=None):
    """``data`` (None, X, (X,), (X, y) or a Dataset) -> (X_eval, y_eval, X_calibration, label).

    A Dataset is evaluated on its test split and calibrated on (up to 512 rows of) its training
    split; ``(X, y)`` is used for both; ``X`` alone only calibrates."""
    X = y = None
    cal = None
    label = ""
    if data is None:
        pass
    elif hasattr(data, "X_test") and hasattr(data, "y_test"):
        X, y = _numpy(data.X_test, "X_test"), _numpy(data.y_test, "y_test")
        cal = _numpy(data.X_train, "X_train")[:512]
        label = f"{getattr(data, 'name', 'data')} test split"
    elif isinstance(data, (tuple, list)):
        if not 1 <= len(data) <= 2:
            raise ValueError(f"data must be X, (X, y) or a Dataset, got a {type(data).__name__} of {len(data)}")
        X = _numpy(data[0], "X")
        y = _numpy(data[1], "y") if len(data) == 2 and data[1] is not None else None
        label = "given data"
    else:
        X = _numpy(data, "X")
        label = "given inputs"
    if y is not None:
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X and y must be (n, features) and (n, targets); got {X.shape} and {y.shape}")
    if calibration is not None:
        cal = _numpy(calibration, "calibration")
    elif cal is None and X is not None:
        cal = X
    return X, y, cal, label


def block_sizes(labels: np.ndarray) -> list[int]:
    """Size of each block, in block order."""
    return np.bincount(labels).tolist() if labels.size else []


def merges_of(c: Compression) -> list[dict]:
    """Per hidden layer: what merged (the data the merge view draws)."""
    out = []
    for s, lab in zip(c.layers, c.partition):
        sizes = block_sizes(lab)
        out.append({"layer": s.name, "activation": s.activation, "before": s.neurons_before,
                    "after": s.neurons_after, "largest": s.largest_block, "eps": s.eps,
                    "block_sizes": sorted(sizes, reverse=True), "merged_blocks": sum(k > 1 for k in sizes),
                    "labels": lab.tolist()})
    return out


def strip_svg(labels, sizes=None, width: int = 640, height: int = 16) -> str:
    """One row of cells, one per neuron in its original order, coloured by block (grey: alone)."""
    labels = np.asarray(labels)
    n = labels.size
    if n == 0:
        return "<svg width='0' height='0'></svg>"
    sizes = block_sizes(labels) if sizes is None else sizes
    cell = max(3.0, min(14.0, width / n))
    colour, k = {}, 0
    for b in range(len(sizes)):  # merged blocks get palette colours in order of their first neuron
        if sizes[b] > 1:
            colour[b] = PALETTE[k % len(PALETTE)]
            k += 1
    rects = []
    for i, b in enumerate(labels.tolist()):
        fill = colour.get(b, SINGLETON)
        rects.append(f"<rect x='{i * cell:.1f}' y='0' width='{cell - 0.6:.1f}' height='{height}' fill='{fill}'>"
                     f"<title>neuron {i} in block {b} ({sizes[b]} neuron{'s' if sizes[b] > 1 else ''})</title></rect>")
    return (f"<svg class='afde-strip' width='{n * cell:.0f}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(rects)}</svg>")


def _size_summary(sizes: list[int]) -> str:
    counts: dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n}&times;{s}" for s, n in sorted(counts.items(), reverse=True))


def _fmt(x, spec=".4g") -> str:
    return "&ndash;" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class Panel(W.VBox):
    """Interactive compression of ``model``: eps (log slider or exact 0), mode, relative eps, live
    figures, per-layer merges, size/error trade-off vs magnitude pruning and Wanda, export.

    ``data``: None, inputs ``X`` (calibration only), ``(X, y)`` (test error and calibration) or an
    ``afde_nb.data.Dataset`` (test split for the error, training split for calibration).
    ``tradeoff``: draw the trade-off curve when data are given (``"auto"`` at once, ``True`` on
    the button, ``False`` never). ``eps_range``: the slider's (min, max) for eps > 0.
    """

    def __init__(self, model, data=None, *, eps: float = 0.3, mode: str = "backward", relative: bool = True,
                 calibration=None, eps_range: tuple[float, float] = (1e-3, 10.0), tradeoff="auto",
                 eps_values=None, baselines=("magnitude", "wanda"), export_path: str = "reduced.pt",
                 title: str | None = None):
        self.model = model
        self.compression: Compression | None = None
        self.figures: dict = {}
        self.merges: list[dict] = []
        self.curve: list[dict] | None = None
        self.errors: list[str] = []
        self.last_export: list[Path] | None = None
        self._tradeoff_opt = tradeoff
        self._eps_values = eps_values
        self._baselines = tuple(baselines)
        self._curve_key = None
        self._fig = None
        self._hold = False
        # JupyterLab may deliver widget messages on a kernel subshell (another thread) while the
        # main thread runs a callback: every action holds this lock, so they run one at a time
        self._lock = threading.RLock()
        self._last_compress_s = 0.0
        self._base: dict = {}
        self.X = self.y = self.X_cal = None
        self.data_label = ""

        problems = []
        if mode not in MODES:
            problems.append(ValueError(f"mode must be one of {MODES}, got {mode!r}; showing backward"))
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            problems.append(ValueError(f"eps must be a finite number >= 0, got {eps!r}; showing eps = 0.3"))
            eps = 0.3
        lo, hi = eps_range
        if not 0 < lo < hi:
            raise ValueError(f"eps_range must be (min, max) with 0 < min < max, got {eps_range!r}")
        self.eps_slider = W.FloatLogSlider(value=min(max(eps, lo), hi) if eps > 0 else lo, base=10,
                                           min=math.log10(lo), max=math.log10(hi), step=0.01,
                                           description="eps", continuous_update=False, readout_format=".3g",
                                           layout=W.Layout(width="420px"))
        self.zero_box = W.Checkbox(value=(eps == 0), description="eps = 0 (exact)", indent=False,
                                   layout=W.Layout(width="140px"))
        self.mode_toggle = W.ToggleButtons(options=list(MODES), value=mode if mode in MODES else "backward",
                                           tooltips=["eps-BDE: lump neurons with similar incoming weights",
                                                     "eps-FDE: lump neurons with similar outgoing weights"],
                                           style={"button_width": "90px"})
        self.relative_box = W.Checkbox(value=bool(relative), description="relative eps", indent=False,
                                       layout=W.Layout(width="120px"))
        self.data_box = W.Checkbox(value=False, description="data-aware", indent=False, disabled=True,
                                   tooltip="weight incoming coefficients by the calibration RMS of their source "
                                           "neuron (needs calibration data)", layout=W.Layout(width="110px"))
        self.status = W.HTML("")
        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info",
                                      layout=W.Layout(width="180px", visibility="hidden"))
        self.error_area = W.HTML("")
        self.figures_html = W.HTML("")
        self.merges_html = W.HTML("")
        self.tradeoff_out = W.Output(layout=W.Layout(min_height="40px"))
        self.tradeoff_button = W.Button(description="Draw trade-off", icon="line-chart",
                                        tooltip="size/error trade-off vs magnitude pruning and Wanda")
        self.path_text = W.Text(value=export_path, description="export to", layout=W.Layout(width="340px"))
        self.format_dd = W.Dropdown(options=list(FORMATS), value=_suffix(export_path), layout=W.Layout(width="120px"))
        self.export_button = W.Button(description="Export", icon="download", button_style="primary")
        self.keep_text = W.BoundedFloatText(value=50.0, min=0.1, max=100.0, step=5.0, description="keep %",
                                            layout=W.Layout(width="170px"))
        self.keep_button = W.Button(description="Find eps", icon="search",
                                    tooltip="the smallest eps whose reduced model keeps at most this % of parameters")
        self.export_result = W.HTML("")
        for w, cls in ((self.eps_slider, "afde-eps"), (self.zero_box, "afde-zero"), (self.mode_toggle, "afde-mode"),
                       (self.relative_box, "afde-relative"), (self.data_box, "afde-data-aware"),
                       (self.status, "afde-status"),
                       (self.progress, "afde-progress"), (self.error_area, "afde-error"),
                       (self.figures_html, "afde-figures"), (self.merges_html, "afde-merges"),
                       (self.tradeoff_out, "afde-tradeoff"), (self.tradeoff_button, "afde-tradeoff-button"),
                       (self.path_text, "afde-path"), (self.format_dd, "afde-format"),
                       (self.export_button, "afde-export"), (self.export_result, "afde-export-result"),
                       (self.keep_text, "afde-keep"), (self.keep_button, "afde-keep-button")):
            w.add_class(cls)

        head = W.HTML(f"<b>afde-nb</b> &mdash; {html.escape(title or _model_name(model))}: "
                      "lump neurons that behave alike (eps = 0 keeps the function exactly)")
        controls = W.HBox([self.eps_slider, self.zero_box, self.relative_box, self.data_box])
        status_row = W.HBox([self.mode_toggle, self.keep_text, self.keep_button, self.progress, self.status])
        merges_box = W.VBox([W.HTML("<b>merges per layer</b>"), self.merges_html])
        curve_box = W.VBox([self.tradeoff_out, self.tradeoff_button], layout=W.Layout(margin="0 0 0 16px"))
        export_row = W.HBox([self.path_text, self.format_dd, self.export_button])
        super().__init__(children=[head, controls, status_row, self.error_area,
                                   W.HBox([self.figures_html, curve_box]), merges_box, export_row,
                                   self.export_result])
        self.add_class("afde-panel")

        self.eps_slider.observe(self._on_eps, names="value")
        self.zero_box.observe(self._on_control, names="value")
        self.mode_toggle.observe(self._on_control, names="value")
        self.relative_box.observe(self._on_control, names="value")
        self.data_box.observe(self._on_control, names="value")
        self.format_dd.observe(self._on_format, names="value")
        self.export_button.on_click(lambda _b: self.export())
        self.keep_button.on_click(lambda _b: self.set_target_kept(self.keep_text.value / 100.0))
        self.tradeoff_button.on_click(lambda _b: self.draw_tradeoff())

        ok = self._guard(self._prepare, data, calibration)
        if ok is not False:
            self.update()
        else:
            self.figures_html.value = "<i>no compression: see the error above</i>"
        if self.compression is not None and tradeoff == "auto" and self.y is not None:
            self.draw_tradeoff()
        else:
            self._show_curve()
        for exc in problems:  # shown last, so that nothing clears them
            self._error(exc)

    # ----------------------------------------------------------------- state
    @property
    def eps(self) -> float:
        """The eps in force: 0 when the exact box is ticked, else the slider's value."""
        return 0.0 if self.zero_box.value else float(self.eps_slider.value)

    @property
    def mode(self) -> str:
        return self.mode_toggle.value

    @property
    def relative(self) -> bool:
        return bool(self.relative_box.value)

    @property
    def data_aware(self) -> bool:
        return bool(self.data_box.value) and self.X_cal is not None

    def set_data_aware(self, on: bool) -> Compression | None:
        """Data-aware distances on the calibration data (ignored without calibration data)."""
        with self._lock:
            if bool(on) == bool(self.data_box.value):
                return self.update()
            self.data_box.value = bool(on)
            return self.compression

    def set_eps(self, eps: float) -> Compression | None:
        """Move the panel to ``eps`` (0 ticks the exact box; values off the slider widen its range)."""
        with self._lock:
            try:
                e = float(eps)
                if isinstance(eps, bool) or not math.isfinite(e) or e < 0:
                    raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
            except (TypeError, ValueError) as exc:
                self._error(exc)
                return None
            self._hold = True
            try:
                if e == 0:
                    self.zero_box.value = True
                else:
                    lg = math.log10(e)
                    if lg < self.eps_slider.min:
                        self.eps_slider.min = math.floor(lg)
                    if lg > self.eps_slider.max:
                        self.eps_slider.max = math.ceil(lg)
                    self.eps_slider.value = e
                    self.zero_box.value = False
            finally:
                self._hold = False
            return self.update()

    def set_target_kept(self, fraction: float) -> Compression | None:
        """Target mode: move eps to the smallest value whose reduced model keeps at most ``fraction``
        of the parameters (``compress(target_params=...)``), with the current mode and switches."""
        with self._lock:
            def find():
                if not 0 < fraction <= 1:
                    raise ValueError(f"keep must be a fraction in (0, 1], got {fraction!r}")
                full = self.compression.params_before if self.compression else compress(self.model).params_before
                with self._busy(f"searching eps for {100 * fraction:.3g}% of the parameters", slow=True):
                    return compress(self.model, mode=self.mode, relative=self.relative, calibration=self.X_cal,
                                    data_aware=self.data_aware, target_params=int(fraction * full))
            found = self._guard(find)
            if found is False:
                return None
            return self.set_eps(found.eps)

    def set_mode(self, mode: str) -> Compression | None:
        with self._lock:
            if mode not in MODES:
                self._error(ValueError(f"mode must be one of {MODES}, got {mode!r}"))
                return None
            if mode == self.mode:
                return self.update()
            self.mode_toggle.value = mode  # observer updates
            return self.compression

    def set_relative(self, relative: bool) -> Compression | None:
        with self._lock:
            if bool(relative) == self.relative:
                return self.update()
            self.relative_box.value = bool(relative)
            return self.compression

    # --------------------------------------------------------------- actions
    def update(self) -> Compression | None:
        """Compress at the current settings and refresh figures, merges and the curve's marker."""
        result = self._guard(self._update)
        if result is False:
            self.compression = None
            self.figures = {}
            self.merges = []
            self.figures_html.value = "<i>no compression: see the error above</i>"
            self.merges_html.value = ""
        return self.compression

    def export(self, path: str | None = None, fmt: str | None = None) -> list[Path] | None:
        """Save the current compression (``Compression.save``): the weights and the JSON architecture."""
        return self._guard(self._export, path, fmt) or None

    def draw_tradeoff(self) -> list[dict] | None:
        """Compute (``afde_nb.bench.tradeoff``) and draw the size/error curve for the current mode."""
        res = self._guard(self._draw_tradeoff)
        return None if res is False else self.curve

    def close(self):
        for w in self._all_widgets():
            w.close()
        super().close()

    # -------------------------------------------------------------- internals
    def _all_widgets(self):
        return [self.eps_slider, self.zero_box, self.mode_toggle, self.relative_box, self.status, self.progress,
                self.error_area, self.figures_html, self.merges_html, self.tradeoff_out, self.tradeoff_button,
                self.path_text, self.format_dd, self.export_button, self.export_result]

    def _guard(self, fn, *args):
        """Run ``fn`` (under the panel's lock); on an exception show it in the error area and return False."""
        with self._lock:
            try:
                out = fn(*args)
            except Exception as exc:  # noqa: BLE001 - the panel shows every error
                self._error(exc)
                return False
            self.error_area.value = ""
            return out

    def _error(self, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.errors.append(msg)
        tb = html.escape("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]))
        self.error_area.value = (
            "<div style='color:#a00;border:1px solid #e99;background:#fff4f4;padding:4px 8px'>"
            f"<b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc))}"
            f"<details><summary>details</summary><pre style='font-size:11px'>{tb}</pre></details></div>")
        self._busy_end()

    @contextmanager
    def _busy(self, what: str, slow: bool, steps: int = 0):
        t0 = time.perf_counter()
        if slow:
            self.status.value = f"<span style='color:#555'>&#8987; {html.escape(what)}&hellip;</span>"
            self.progress.max = max(steps, 1)
            self.progress.value = 0 if steps else 1
            self.progress.layout.visibility = "visible"
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self._busy_end()
            self.status.value = f"<span style='color:#777'>{html.escape(what)}: {1000 * dt:.0f} ms</span>"

    def _busy_end(self):
        self.progress.layout.visibility = "hidden"

    def _prepare(self, data, calibration):
        self.X, self.y, self.X_cal, self.data_label = resolve_data(data, calibration)
        self._dtype = _model_numpy_dtype(self.model)
        n_in = _in_features(self.model)
        for a, what in ((self.X, "X"), (self.X_cal, "calibration")):
            if a is not None and n_in is not None and (a.ndim != 2 or a.shape[1] != n_in):
                raise ValueError(f"{what} must have shape (n, {n_in}) for this model, got {a.shape}")
        if self.y is not None:
            Xe, ye = self._cast(self.X), self._cast(self.y)
            self._base = {"mse": mse(self.model, Xe, ye), "r2": r2(self.model, Xe, ye)}
        if self.X_cal is not None:
            self.X_cal = self._cast(self.X_cal)
            self.data_box.disabled = False

    def _cast(self, a):
        return np.ascontiguousarray(a, dtype=self._dtype) if a is not None else None

    def _update(self):
        if self._hold:
            return self.compression
        with self._busy(f"compress {self.mode} eps={self.eps:.3g}", slow=self._last_compress_s > SLOW_S):
            t0 = time.perf_counter()
            c = compress(self.model, self.eps, mode=self.mode, relative=self.relative, calibration=self.X_cal,
                         data_aware=self.data_aware)
            self._last_compress_s = time.perf_counter() - t0
            figs = {"eps": c.eps, "mode": c.mode, "relative": c.relative, "data_aware": self.data_aware,
                    "params_before": c.params_before,
                    "params_after": c.params_after, "kept": c.kept,
                    "widths_before": [s.neurons_before for s in c.layers],
                    "widths_after": [s.neurons_after for s in c.layers],
                    "compress_ms": 1000 * self._last_compress_s}
            if self.y is not None:
                Xe, ye = self._cast(self.X), self._cast(self.y)
                figs.update(mse=mse(c.model, Xe, ye), r2=r2(c.model, Xe, ye),
                            mse_before=self._base["mse"], r2_before=self._base["r2"])
            if c.calibration_error:
                figs.update(calib_max_abs=c.calibration_error["max_abs"], calib_rms=c.calibration_error["rms"],
                            calib_n=c.calibration_error["n"])
        self.compression = c
        self.figures = figs
        self.merges = merges_of(c)
        self.figures_html.value = self._figures_html()
        self.merges_html.value = self._merges_html()
        self._show_curve()
        return c

    def _figures_html(self) -> str:
        f = self.figures
        pct = 100 * f["kept"]
        bar = (f"<div style='display:inline-block;width:160px;height:10px;background:#eee;vertical-align:middle'>"
               f"<div style='width:{min(pct, 100):.1f}%;height:10px;background:#1f77b4'></div></div>")
        rows = [("parameters", f"{f['params_before']:,} &rarr; <b class='afde-params-after'>{f['params_after']:,}</b>"),
                ("kept", f"<b class='afde-kept'>{pct:.1f}%</b> {bar}"),
                ("hidden widths", f"{'-'.join(map(str, f['widths_before']))} &rarr; "
                                  f"<b>{'-'.join(map(str, f['widths_after']))}</b>")]
        if "mse" in f:
            rows.append((f"test MSE ({html.escape(self.data_label)})",
                         f"{_fmt(f['mse_before'])} &rarr; <b class='afde-mse'>{_fmt(f['mse'])}</b>"))
            rows.append(("test R&sup2;", f"{_fmt(f['r2_before'], '.4f')} &rarr; <b class='afde-r2'>{_fmt(f['r2'], '.4f')}</b>"))
        if "calib_max_abs" in f:
            rows.append((f"deviation on {f['calib_n']} calibration inputs",
                         f"max {_fmt(f['calib_max_abs'], '.3g')}, rms {_fmt(f['calib_rms'], '.3g')}"))
        rows.append(("setting", f"{f['mode']}, eps = {f['eps']:.4g}{' (relative)' if f['relative'] else ''}"
                                f" &nbsp;<span style='color:#888'>({f['compress_ms']:.0f} ms)</span>"))
        body = "".join(f"<tr><td style='padding:1px 12px 1px 0;color:#555'>{k}</td><td>{v}</td></tr>" for k, v in rows)
        return f"<table class='afde-figures-table'>{body}</table>"

    def _merges_html(self) -> str:
        rows = []
        for m in self.merges:
            rows.append(
                "<tr>"
                f"<td style='padding-right:10px'><code>{html.escape(m['layer'])}</code> {html.escape(m['activation'])}</td>"
                f"<td style='padding-right:10px;white-space:nowrap'>{m['before']} &rarr; <b>{m['after']}</b></td>"
                f"<td style='padding-right:10px'>largest {m['largest']}; {m['merged_blocks']} merged block"
                f"{'s' if m['merged_blocks'] != 1 else ''}<br><span style='color:#777;font-size:11px'>sizes "
                f"{_size_summary(m['block_sizes'])}</span></td>"
                f"<td>{strip_svg(m['labels'])}</td></tr>")
        head = ("<tr style='color:#555'><th align='left'>layer</th><th align='left'>neurons</th>"
                "<th align='left'>blocks</th><th align='left'>neurons in order, coloured by block "
                "(grey: not merged)</th></tr>")
        return f"<table class='afde-merges-table'>{head}{''.join(rows)}</table>"

    def _export(self, path, fmt):
        if self.compression is None:
            raise RuntimeError("nothing to export: the compression failed (see the error above)")
        if path is not None:
            self.path_text.value = str(path)
        if fmt is not None:
            if fmt not in FORMATS:
                raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
            self.format_dd.value = fmt
        raw = self.path_text.value.strip()
        if not raw:
            raise ValueError("give a file name to export to")
        p = Path(raw).expanduser()
        p = p.with_suffix(self.format_dd.value) if p.suffix in (".pt", ".pth", ".safetensors", "") else \
            p.with_name(p.name + self.format_dd.value)
        with self._busy(f"export {p.name}", slow=False):
            written = self.compression.save(p)
        self.last_export = [Path(w).resolve() for w in written]
        self.export_result.value = ("wrote " + ", ".join(f"<code>{html.escape(str(w))}</code>" for w in self.last_export)
                                    + f" <span style='color:#777'>({self.compression.params_after:,} parameters)</span>")
        return self.last_export

    def _on_format(self, change):
        with self._lock:
            raw = self.path_text.value.strip()
            if raw:
                p = Path(raw)
                self.path_text.value = str(p.with_suffix(change["new"])) if p.suffix else raw + change["new"]

    def _on_eps(self, change):
        with self._lock:
            if not self._hold:
                if self.zero_box.value:
                    self._hold = True
                    self.zero_box.value = False  # moving the slider leaves the exact setting
                    self._hold = False
                self.update()

    def _on_control(self, change):
        with self._lock:
            if not self._hold:
                self.update()
                if change["owner"] is not self.zero_box and self.curve is not None and self._tradeoff_opt == "auto" \
                        and self._curve_key != self._curve_mode():
                    self.draw_tradeoff()

    # ------------------------------------------------------------ trade-off
    def _draw_tradeoff(self):
        if self.y is None:
            raise ValueError("the trade-off curve needs test data: Panel(model, (X, y)) or Panel(model, dataset)")
        try:
            from ..bench import tradeoff
        except ImportError as exc:
            raise ImportError(f"afde_nb.bench.tradeoff is not available ({exc})") from exc
        kwargs = {}
        n_afde = len(self._eps_values) if self._eps_values is not None else 9
        steps = n_afde * (1 + len(self._baselines))
        if "progress" in inspect.signature(tradeoff).parameters:
            def tick():
                self.progress.value = min(self.progress.value + 1, self.progress.max)
            kwargs["progress"] = tick
        with self._busy(f"trade-off curve ({self.mode}) vs {', '.join(self._baselines) or 'nothing'}",
                        slow=True, steps=steps if kwargs else 0):
            rows = tradeoff(self.model, self._cast(self.X), self._cast(self.y), calibration=self.X_cal,
                            eps_values=self._eps_values, mode=self._curve_mode()[0], relative=self.relative,
                            baselines=self._baselines, **kwargs)
            self.progress.value = self.progress.max
        self.curve = [dict(r) for r in rows]
        self._curve_key = self._curve_mode()
        self._show_curve()
        return self.curve

    def _curve_mode(self) -> tuple[str, bool]:
        """(tradeoff mode, relative): ``"backward-data"`` is the data-aware backward curve."""
        return (self.mode + ("-data" if self.data_aware else ""), self.relative)

    def _show_curve(self):
        """Redraw the trade-off plot (curve, if any, and the current setting's point)."""
        if self.curve is None:
            if self.y is None:
                msg = "give test data, Panel(model, (X, y)), to draw the size/error trade-off"
            elif self._tradeoff_opt is False:
                msg = "trade-off curve switched off"
            else:
                msg = "press <b>Draw trade-off</b> to compare with magnitude pruning and Wanda"
            self.tradeoff_out.outputs = ({"output_type": "display_data", "metadata": {},
                                          "data": {"text/html": f"<i style='color:#777'>{msg}</i>",
                                                   "text/plain": msg}},)
            self.tradeoff_button.disabled = self.y is None or self._tradeoff_opt is False
            return
        png = self._plot_png()
        self.tradeoff_out.outputs = ({"output_type": "display_data", "metadata": {},
                                      "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                               "text/plain": f"<size/error trade-off, {len(self.curve)} points>"}},)

    def _plot_png(self) -> bytes:
        """The curve is drawn once per computed curve; only the current point moves."""
        if self._fig is None or self._fig[0] is not self.curve:
            self._fig = (self.curve, *self._make_figure())
        _curve, fig, star = self._fig
        if "mse" in self.figures:
            star.set_data([100 * self.figures["kept"]], [max(self.figures["mse"], 1e-12)])
            star.set_label(f"current (eps={self.figures['eps']:.3g})")
            star.set_visible(True)
        else:
            star.set_visible(False)
        fig.axes[0].legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def _make_figure(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 3.4), dpi=80)
        ax = fig.add_subplot(1, 1, 1)
        styles = {"magnitude": ("s", "#7f7f7f"), "wanda": ("^", "#2ca02c")}
        methods = [m for m in dict.fromkeys(r["method"] for r in self.curve) if m != "original"]
        for k, meth in enumerate(methods):
            pts = sorted((r for r in self.curve if r["method"] == meth), key=lambda r: r["kept"])
            marker, col = styles.get(str(meth).lower(), ("o", PALETTE[(2 * k + 4) % len(PALETTE)]))
            if str(meth).lower().startswith("afde"):
                marker, col = "o", "#1f77b4"
            ax.plot([100 * r["kept"] for r in pts], [max(r["mse"], 1e-12) for r in pts], marker=marker,
                    color=col, label=str(meth), lw=1.2, ms=4)
        orig = [r for r in self.curve if r["method"] == "original"]
        base = orig[0]["mse"] if orig else self.figures.get("mse_before")
        if base is not None:
            ax.axhline(max(base, 1e-12), color="#999", ls=":", lw=1, label="original")
        (star,) = ax.plot([], [], marker="*", ms=14, color="#d62728", ls="none", zorder=5, label="current")
        ax.set_yscale("log")
        ax.set_xlabel("% parameters kept")
        ax.set_ylabel(f"test MSE ({self.data_label})" if self.data_label else "test MSE")
        ax.set_title(f"size / error trade-off, afde-nb {self._curve_key[0] if self._curve_key else self.mode}"
                     f"{' (relative eps)' if self._curve_key and self._curve_key[1] else ''}", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig, star


def _suffix(path: str) -> str:
    s = Path(path).suffix
    return s if s in FORMATS else ".pt"


def _in_features(model):
    import torch

    if isinstance(model, torch.nn.Module):
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                return m.in_features
    return None


def _model_name(model) -> str:
    return type(model).__name__


def _model_numpy_dtype(model):
    import torch

    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dt = p.dtype if p is not None else torch.float32
    return torch.empty(0, dtype=dt).numpy().dtype
