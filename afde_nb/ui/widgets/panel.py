"""``Panel``: pick eps and mode with the mouse, watch what ``compress()`` does, export the result.

The panel is an ``ipywidgets.VBox``; show it as the last expression of a cell (or ``display(p)``).
It only wires widgets: the numbers come from :class:`~afde_nb.ui.widgets.state.PanelState`
(``panel.state``, which calls the public API) and the pictures from
:mod:`afde_nb.ui.widgets.render`. Every error is shown in the panel's error area (and kept in
``panel.errors``), never raised into the kernel from a widget callback.

State for scripts and tests:

* ``panel.compression`` the current :class:`~afde_nb.Compression` (``None`` while it fails);
* ``panel.figures``     the numbers shown (params, kept, widths, test MSE and R^2, ...);
* ``panel.merges``      per hidden layer: neurons before/after, block sizes, block label per neuron;
* ``panel.eps_path``    the eps path drawn: [(eps, % kept), ...] (``panel.state.curve()``);
* ``panel.curve``       the trade-off points (``afde_nb.eval.bench.tradeoff`` rows) once drawn;
* ``panel.state``       the :class:`~afde_nb.ui.widgets.state.PanelState` behind it all;
* ``panel.loading``    whether the first results are still being computed (``background``);
* ``panel.set_eps(x)``, ``set_mode(m)``, ``set_method(m)``, ``set_relative(b)``, ``set_data_aware(b)``,
  ``set_repair(b)``, ``set_target_kept(f)``, ``export(path, fmt)``, ``draw_tradeoff()``, ``wait()``, ``close()``.

In a notebook the panel appears at once: the constructor builds and returns the widgets with a
progress indicator, and a background thread (``background``) computes the first compression, the
eps path and the trade-off, filling each in as it comes (measured on a 4.6 k-parameter tanh MLP of
the demo: the trade-off is ~90 % of the 8.8-13 s the constructor used to take, its 33 models at
~0.3 s each; the first compression ~0.1 s, the eps path ~1 ms from the merge path). A thread, not
asyncio: the work is CPU-bound numpy/torch (which releases the GIL), and an asyncio task would run
on the kernel's own event loop, blocking it. The trade-off is computed off the panel's lock, so the
panel answers (a slider move) while it runs; every other step holds it, as every action does.
"""
from __future__ import annotations

import base64
import html
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import ipywidgets as W
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("afde_nb.ui.widgets needs ipywidgets>=8 and matplotlib: pip install '.[notebook]' in the afde-nb checkout") from _exc
if int(W.__version__.split(".")[0]) < 8:  # pragma: no cover
    raise ImportError(f"afde_nb.ui.widgets needs ipywidgets>=8, found {W.__version__}")

import inspect

from ...pipeline.compress import Compression, compress
from ...core.lump import check_eps, check_method, check_mode
from . import render
from .render import PALETTE, SINGLETON, block_sizes, strip_svg  # noqa: F401 - the panel's names, kept
from .state import (DEFAULT_EPS, DEFAULT_EPS_RANGE, FORMATS, METHODS, MODES, PanelState, check_format, format_of,  # noqa: F401
                    merges_of, resolve_data, with_format)

SLOW_S = 1.0  # show progress for anything expected to take longer than this


class Panel(W.VBox):
    """Interactive compression of ``model``: eps (log slider or exact 0), mode, relative eps,
    method, data-aware and repair switches, live figures, the eps path (% kept against eps), per-layer
    merges, size/error trade-off vs magnitude pruning and Wanda, export.

    ``data``: None, inputs ``X`` (calibration only), ``(X, y)`` (test error and calibration) or an
    ``afde_nb.data.Dataset`` (test split for the error, training split for calibration).
    ``tradeoff``: draw the trade-off curve when data are given (``"auto"`` at once, ``True`` on
    the button, ``False`` never). ``eps_range``: the slider's (min, max) for eps > 0.
    ``method``, ``repair``: as in ``compress`` (None: its defaults; each used where ``compress``
    has it; the data-aware switch needs ``method="components"`` and calibration data).
    ``eps_path``: draw the eps path (``False``: never).
    ``background``: compute the first results on a background thread after returning (``True``),
    or in the constructor (``False``: what scripts and tests see is complete when it returns);
    None (default): in the background inside a Jupyter kernel, where the panel is displayed after
    the cell returns. ``wait()`` blocks until that work is done.

    A model that is not one plain Linear stack (a residual MLP, a transformer, a CNN) works the
    same way: each merge row is a group by its module path, and what only plain stacks have (the
    components method, the pruning baselines, the JSON export) is left out with a note; it exports
    as a ``.pt2`` program.
    """

    def __init__(self, model, data=None, *, eps: float = DEFAULT_EPS, mode: str = "backward", relative: bool = True,
                 calibration=None, eps_range: tuple[float, float] = DEFAULT_EPS_RANGE, tradeoff="auto",
                 eps_values=None, baselines=("magnitude", "wanda"), export_path: str = "reduced.pt",
                 title: str | None = None, method: str | None = None, repair=None, eps_path: bool = True,
                 background: bool | None = None):
        self.errors: list[str] = []
        self.last_export: list[Path] | None = None
        self.eps_path: list[tuple[float, float]] = []
        self._tradeoff_opt = tradeoff
        self._eps_path_opt = bool(eps_path)
        self._plot: render.TradeoffPlot | None = None
        self._hold = False
        # JupyterLab may deliver widget messages on a kernel subshell (another thread) while the
        # main thread runs a callback: every action holds this lock, so they run one at a time
        self._lock = threading.RLock()
        self._loading = False  # the first results are computed on a background thread
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()

        problems = []  # bad settings are shown (after the first compression), the default is used
        try:
            mode = check_mode(mode)
        except ValueError as exc:
            problems.append((exc, "showing backward"))
            mode = "backward"
        try:
            eps = check_eps(eps)
        except ValueError as exc:
            problems.append((exc, f"showing eps = {DEFAULT_EPS}"))
            eps = DEFAULT_EPS
        has_method = "method" in inspect.signature(compress).parameters
        default_method = inspect.signature(compress).parameters["method"].default if has_method else None
        try:
            method = default_method if method is None else check_method(method)
        except ValueError as exc:
            problems.append((exc, f"showing {default_method}"))
            method = default_method
        self.state = PanelState(model, eps=eps, method=method, mode=mode, relative=relative, repair=repair,
                                eps_range=eps_range, eps_values=eps_values, baselines=baselines)
        lo, hi = self.state.eps_range

        self.eps_slider = W.FloatLogSlider(value=min(max(eps, lo), hi) if eps > 0 else lo, base=10,
                                           min=math.log10(lo), max=math.log10(hi), step=0.01,
                                           description="eps", continuous_update=False, readout_format=".3g",
                                           tooltip="ward/complete, relative: the model output's relative RMS "
                                           "error you accept (the cut whose estimated error is at most eps); "
                                           "otherwise a per-layer bound (components: the paper's eps)",
                                           layout=W.Layout(width="420px"))
        self.zero_box = W.Checkbox(value=(eps == 0), description="eps = 0 (exact)", indent=False,
                                   layout=W.Layout(width="140px"))
        self.method_dd = W.Dropdown(options=list(self.state.methods) if has_method else ["components"],
                                    value=self.state.method if has_method else "components", disabled=not has_method,
                                    description="method", tooltip="ward/complete: cut a merge path (eps: the estimated "
                                    "output error); components: the paper's eps-graph components",
                                    layout=W.Layout(width="200px"))
        self.mode_toggle = W.ToggleButtons(options=sorted(MODES), value=mode,
                                           tooltips=["eps-BDE: lump neurons with similar incoming weights",
                                                     "eps-FDE: lump neurons with similar outgoing weights"],
                                           style={"button_width": "90px"})
        self.relative_box = W.Checkbox(value=bool(relative), description="relative eps", indent=False,
                                       tooltip="on: eps relative to the output's spread (ward/complete) or to "
                                       "each layer's neuron norm (components); off: an absolute per-layer bound",
                                       layout=W.Layout(width="120px"))
        self.data_box = W.Checkbox(value=False, description="data-aware", indent=False, disabled=True,
                                   tooltip="weight incoming coefficients by the calibration RMS of their source "
                                           "neuron (needs calibration data)", layout=W.Layout(width="110px"))
        self.repair_box = W.Checkbox(value=False, description="repair", indent=False, disabled=True,
                                     tooltip=("re-fit the reduced model's weights on the calibration data "
                                              "(least squares)" if self.state.supports_repair
                                              else "this afde-nb's compress() has no repair"),
                                     layout=W.Layout(width="90px"))
        self.status = W.HTML("")
        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info",
                                      layout=W.Layout(width="180px", visibility="hidden"))
        self.error_area = W.HTML("")
        self.notes_html = W.HTML("")
        self.figures_html = W.HTML("")
        self.eps_path_html = W.HTML("")
        self.merges_html = W.HTML("")
        self.tradeoff_out = W.Output(layout=W.Layout(min_height="40px"))
        self.tradeoff_button = W.Button(description="Draw trade-off", icon="line-chart",
                                        tooltip="size/error trade-off vs magnitude pruning and Wanda")
        export_path, export_fmt = self.state.export_choice(export_path)
        self.path_text = W.Text(value=export_path, description="export to", layout=W.Layout(width="340px"))
        self.format_dd = W.Dropdown(options=list(self.state.formats), value=export_fmt,
                                    layout=W.Layout(width="120px"))
        self.export_button = W.Button(description="Export", icon="download", button_style="primary")
        self.keep_text = W.BoundedFloatText(value=50.0, min=0.1, max=100.0, step=5.0, description="keep %",
                                            layout=W.Layout(width="170px"))
        self.keep_button = W.Button(description="Find eps", icon="search",
                                    tooltip="the smallest eps whose reduced model keeps at most this % of parameters")
        self.export_result = W.HTML("")
        for w, cls in ((self.eps_slider, "afde-eps"), (self.zero_box, "afde-zero"), (self.mode_toggle, "afde-mode"),
                       (self.relative_box, "afde-relative"), (self.data_box, "afde-data-aware"),
                       (self.method_dd, "afde-method"),
                       (self.repair_box, "afde-repair"), (self.status, "afde-status"),
                       (self.progress, "afde-progress"), (self.error_area, "afde-error"),
                       (self.notes_html, "afde-notes"),
                       (self.figures_html, "afde-figures"), (self.eps_path_html, "afde-eps-path"),
                       (self.merges_html, "afde-merges"),
                       (self.tradeoff_out, "afde-tradeoff"), (self.tradeoff_button, "afde-tradeoff-button"),
                       (self.path_text, "afde-path"), (self.format_dd, "afde-format"),
                       (self.export_button, "afde-export"), (self.export_result, "afde-export-result"),
                       (self.keep_text, "afde-keep"), (self.keep_button, "afde-keep-button")):
            w.add_class(cls)

        head = W.HTML(f"<b>afde-nb</b> &mdash; {html.escape(title or type(model).__name__)}: "
                      "lump neurons that behave alike (eps = 0 keeps the function exactly)")
        controls = W.HBox([self.eps_slider, self.zero_box, self.relative_box, self.data_box, self.repair_box])
        status_row = W.HBox([self.mode_toggle, self.method_dd, self.keep_text, self.keep_button, self.progress, self.status])
        numbers_row = W.HBox([self.figures_html, self.eps_path_html])
        merges_box = W.VBox([W.HTML("<b>merges per layer</b>"), self.merges_html])
        curve_box = W.VBox([self.tradeoff_out, self.tradeoff_button])
        export_row = W.HBox([self.path_text, self.format_dd, self.export_button])
        super().__init__(children=[head, controls, status_row, self.error_area, self.notes_html, numbers_row, curve_box,
                                   merges_box, export_row, self.export_result])
        self.add_class("afde-panel")

        self.eps_slider.observe(self._on_eps, names="value")
        for w in (self.zero_box, self.mode_toggle, self.method_dd, self.relative_box, self.data_box, self.repair_box):
            w.observe(self._on_control, names="value")
        self.format_dd.observe(self._on_format, names="value")
        self.export_button.on_click(lambda _b: self.export())
        self.keep_button.on_click(lambda _b: self.set_target_kept(self.keep_text.value / 100.0))
        self.tradeoff_button.on_click(lambda _b: self.draw_tradeoff())

        if in_kernel() if background is None else background:
            self._loading = True
            self.figures_html.value = render.message_html("computing the first compression&hellip;")
            self._show_message("the size/error trade-off follows the first compression")
            self.tradeoff_button.disabled = True
            self.status.value = render.status_html("computing the first compression")
            self.progress.max, self.progress.value = 1, 0
            self.progress.layout.visibility = "visible"
            self._worker = threading.Thread(target=self._fill, args=(data, calibration, problems), daemon=True,
                                            name=f"afde-panel-{id(self):x}")
            self._worker.start()
        else:
            self._fill(data, calibration, problems)

    # ------------------------------------------------------------ read-outs
    model = property(lambda self: self.state.model, doc="The model being compressed (never modified).")
    compression = property(lambda self: self.state.compression,
                           doc="The current Compression (None while it fails).")
    figures = property(lambda self: self.state.figures, doc="The numbers shown.")
    merges = property(lambda self: self.state.merges, doc="Per hidden layer: what merged.")
    curve = property(lambda self: self.state.tradeoff_rows, doc="The trade-off rows once drawn.")
    X = property(lambda self: self.state.X, doc="The test inputs (None without).")
    y = property(lambda self: self.state.y, doc="The test targets (None without).")
    X_cal = property(lambda self: self.state.X_cal, doc="The calibration inputs (None without).")
    data_label = property(lambda self: self.state.data_label, doc="Where the test data come from.")

    @property
    def loading(self) -> bool:
        """Whether the first results (compression, eps path, trade-off) are still being computed."""
        return self._loading

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
        """Data-aware distances in force (the switch, where the method and the data allow them)."""
        return bool(self.data_box.value) and self.state.data_aware_possible

    @property
    def method(self) -> str:
        return self.method_dd.value

    @property
    def repair(self) -> bool:
        """Whether the reduced model is repaired (the repair switch)."""
        return bool(self.repair_box.value)

    # ------------------------------------------------------------- settings
    def set_eps(self, eps: float) -> Compression | None:
        """Move the panel to ``eps`` (0 ticks the exact box; values off the slider widen its range)."""
        with self._lock:
            try:
                e = check_eps(eps)
            except ValueError as exc:
                self._error(exc)
                return None
            self.state.set_eps(e)  # widens the range to whole decades around e
            self._show_eps(e)
            return self.update()

    def set_mode(self, mode: str) -> Compression | None:
        with self._lock:
            try:
                mode = check_mode(mode)
            except ValueError as exc:
                self._error(exc)
                return None
            return self._set(self.mode_toggle, mode)

    def set_relative(self, relative: bool) -> Compression | None:
        with self._lock:
            return self._set(self.relative_box, bool(relative))

    def set_method(self, method: str) -> Compression | None:
        with self._lock:
            try:
                method = check_method(method)
            except ValueError as exc:
                self._error(exc)
                return None
            return self._set(self.method_dd, method)

    def set_data_aware(self, on: bool) -> Compression | None:
        """Data-aware distances on the calibration data (ignored without calibration data)."""
        with self._lock:
            return self._set(self.data_box, bool(on))

    def set_repair(self, on: bool) -> Compression | None:
        """Repair the reduced model (``compress(repair=...)``; ignored where compress has no repair
        or, for ``True``, without calibration data)."""
        with self._lock:
            return self._set(self.repair_box, bool(on) and not self.repair_box.disabled)

    def set_target_kept(self, fraction: float) -> Compression | None:
        """Target mode: move eps to the smallest value whose reduced model keeps at most ``fraction``
        of the parameters (``compress(target_params=...)``), with the current mode and switches."""
        with self._lock:
            def find():
                self._read_widgets()
                with self._busy(f"searching eps for {100 * fraction:.3g}% of the parameters", slow=True):
                    c = self.state.set_target_kept(fraction)
                self._show_eps(c.eps)
                self._render()
                return c
            return self._guard(find) or None

    # --------------------------------------------------------------- actions
    def update(self) -> Compression | None:
        """Compress at the current settings and refresh figures, merges, the eps path and the
        trade-off plot's marker."""
        with self._lock:
            if self._guard(self._refresh) is False and self.state.compression is None:
                self.figures_html.value = render.NO_COMPRESSION
                self.merges_html.value = ""
            return self.compression

    def export(self, path: str | None = None, fmt: str | None = None) -> list[Path] | None:
        """Save the current compression (``Compression.save``): the weights and the JSON architecture, or
        a ``.pt2`` program."""
        return self._guard(self._export, path, fmt) or None

    def draw_tradeoff(self) -> list[dict] | None:
        """Compute (``afde_nb.eval.bench.tradeoff``) and draw the size/error curve for the current mode."""
        res = self._guard(self._draw_tradeoff)
        return None if res is False else self.curve

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the first results computed in the background are in (at most ``timeout``
        seconds); whether they are. True at once for a panel built with ``background=False``."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        return not self._loading

    def close(self) -> None:
        """Close the panel and every widget it made (controls, containers, layouts and styles); work
        still running in the background stops at its next step."""
        self._closed.set()
        with self._lock:
            for w in reversed(self._owned_widgets()):
                if w is not self:
                    w.close()
            super().close()

    # -------------------------------------------------------------- internals
    def _fill(self, data, calibration, problems) -> None:
        """What the constructor shows after building the widgets: the data, the first compression
        (with the eps path), the trade-off and the settings it could not use (``problems``: shown
        last, so that nothing clears them; in the background, where nothing clears them, at once).
        Runs in the constructor or on the background thread; every error is shown, none raised."""
        background = self._loading
        try:
            with self._lock:
                ok = self._guard(self.state.set_data, data, calibration)
                self._sync_switches()
                if ok is not False:
                    self.update()
                else:
                    self.figures_html.value = render.NO_COMPRESSION
                if background:
                    self._show_problems(problems)
            if self.compression is not None and self._tradeoff_opt == "auto" and self.state.y is not None:
                if background:
                    self._tradeoff_in_background()
                else:
                    self.draw_tradeoff()
            else:
                self._loading = False
                self._show_tradeoff()
            if not background:
                self._show_problems(problems)
        except _Closed:
            pass
        except Exception as exc:  # noqa: BLE001 - the panel shows every error, from any thread
            with self._lock:
                self._error(exc)
        finally:
            self._loading = False
            self._busy_end()

    def _show_problems(self, problems) -> None:
        with self._lock:
            for exc, note in problems:
                self._error(exc, note)

    def _tradeoff_in_background(self) -> None:
        """The trade-off computed off the panel's lock (the panel answers meanwhile), then kept and
        drawn under it; computed again where the setting it follows changed meanwhile."""
        try:
            for _ in range(3):
                with self._lock:
                    if self._closed.is_set():
                        raise _Closed
                    self._read_widgets()
                    s = self.state
                    job = s.tradeoff_job()
                    what = f"trade-off curve ({s.mode}) vs {', '.join(s.tradeoff_baselines) or 'nothing'}"
                    self.status.value = render.status_html(what)
                    self.progress.max, self.progress.value = max(s.tradeoff_steps(), 1), 0
                    self.progress.layout.visibility = "visible"
                t0 = time.perf_counter()
                rows = job.run(self._tick)
                with self._lock:
                    s.keep_tradeoff(job, rows)
                    self.progress.value = self.progress.max
                    self.status.value = render.status_html(what, 1000 * (time.perf_counter() - t0))
                    if s.tradeoff_rows is not None and s.tradeoff_key == s.tradeoff_mode():
                        break
        except _Closed:
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            with self._lock:
                self._error(exc)
        with self._lock:
            self._loading = False
            self._show_tradeoff()
            self.tradeoff_button.disabled = self.state.y is None or self._tradeoff_opt is False

    def _owned_widgets(self) -> list:
        """Every widget reachable from the panel through widget-valued traits (children, layout,
        style, ...), the panel first."""
        seen: dict[int, W.Widget] = {}
        todo = [self]
        while todo:
            w = todo.pop()
            if id(w) in seen:
                continue
            seen[id(w)] = w
            for name in w.keys:
                value = getattr(w, name, None)
                for v in (value if isinstance(value, (list, tuple)) else (value,)):
                    if isinstance(v, W.Widget) and id(v) not in seen:
                        todo.append(v)
        return list(seen.values())

    @contextmanager
    def _holding(self):
        """Widget changes made inside do not trigger updates (the caller updates once after)."""
        held, self._hold = self._hold, True
        try:
            yield
        finally:
            self._hold = held

    def _set(self, widget, value) -> Compression | None:
        if widget.value == value:
            return self.update()
        widget.value = value  # the observer updates
        return self.compression

    def _read_widgets(self) -> None:
        """Widgets -> state."""
        s = self.state
        s.eps = self.eps
        if not self.method_dd.disabled:
            s.method = self.method_dd.value
        s.mode = self.mode
        s.relative = self.relative
        s.data_aware = bool(self.data_box.value)
        if self.repair != s.repair_in_force:  # the switch was moved: from now on explicit
            s.repair = self.repair
        self._sync_switches()

    def _sync_switches(self) -> None:
        """Enable the switches the state can use; the repair switch shows whether repair runs."""
        s = self.state
        self.data_box.disabled = not s.data_aware_possible
        with self._holding():
            self.repair_box.value = s.repair_in_force
        self.repair_box.disabled = not s.supports_repair or (s.X_cal is None and s.repair != "pseudo")

    def _show_eps(self, e: float) -> None:
        """Move the slider (or the exact box) to ``e`` without compressing."""
        with self._holding():
            if e == 0:
                self.zero_box.value = True
            else:
                lo, hi = self.state.eps_range
                self.eps_slider.min = min(self.eps_slider.min, math.log10(lo))
                self.eps_slider.max = max(self.eps_slider.max, math.log10(hi))
                self.eps_slider.value = e
                self.zero_box.value = False

    def _refresh(self) -> None:
        self._read_widgets()
        s = self.state
        with self._busy(f"compress {s.mode} eps={s.eps:.3g}", slow=s.compress_s > SLOW_S):
            s.update()
        self._render()

    def _render(self) -> None:
        s = self.state
        self.figures_html.value = render.figures_html(s.figures, s.data_label)
        self.merges_html.value = render.merges_html(s.merges, s.groups_report)
        self.notes_html.value = render.notes_html(s.notes)
        self._show_eps_path()
        self._show_tradeoff()

    def _show_eps_path(self) -> None:
        s = self.state
        if not self._eps_path_opt:
            self.eps_path_html.value = ""
            return
        if not s.curve_cached():
            with self._busy("eps path", slow=s.compress_s * s.path_points > SLOW_S, steps=s.path_points):
                self.eps_path = s.curve(progress=self._tick)
        else:
            self.eps_path = s.curve()
        current = (s.figures["eps"], 100 * s.figures["kept"]) if s.figures else None
        self.eps_path_html.value = render.eps_path_svg(self.eps_path, current, relative=s.relative,
                                                       output_level=s.relative and s.method != "components")

    def _tick(self) -> None:
        if self._closed.is_set():  # a closed panel's background work stops here
            raise _Closed
        self.progress.value = min(self.progress.value + 1, self.progress.max)

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

    def _error(self, exc: BaseException, note: str = "") -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}" + (f"; {note}" if note else ""))
        self.error_area.value = render.error_html(exc, note)
        self._busy_end()

    @contextmanager
    def _busy(self, what: str, slow: bool, steps: int = 0):
        t0 = time.perf_counter()
        if slow and not self._loading:  # while loading, the progress bar is the background work's
            self.status.value = render.status_html(what)
            self.progress.max = max(steps, 1)
            self.progress.value = 0 if steps else 1
            self.progress.layout.visibility = "visible"
        try:
            yield
        finally:
            self._busy_end()
            self.status.value = render.status_html(what, 1000 * (time.perf_counter() - t0))

    def _busy_end(self) -> None:
        if not self._loading:
            self.progress.layout.visibility = "hidden"

    def _export(self, path, fmt):
        if self.state.compression is None:
            raise RuntimeError("nothing to export: the compression failed (see the error above)")
        if path is not None:
            self.path_text.value = str(path)
        if fmt is not None:
            self.format_dd.value = check_format(fmt, self.state.formats)  # the observer puts the suffix on the path
        with self._busy("export", slow=False):
            self.last_export = self.state.export(self.path_text.value, self.format_dd.value)
        self.export_result.value = render.export_html(self.last_export, self.state.compression.params_after)
        return self.last_export

    def _on_format(self, change):
        with self._lock:
            self.path_text.value = with_format(self.path_text.value, change["new"])

    def _on_eps(self, change):
        with self._lock:
            if self._hold:
                return
            if self.zero_box.value:
                self._guard(self._leave_exact)
            self.update()

    def _leave_exact(self) -> None:
        with self._holding():
            self.zero_box.value = False  # moving the slider leaves the exact setting

    def _on_control(self, change):
        with self._lock:
            if self._hold:
                return
            self.update()
            if change["owner"] is not self.zero_box and self.curve is not None and self._tradeoff_opt == "auto" \
                    and self.state.tradeoff_key != self.state.tradeoff_mode():
                self.draw_tradeoff()

    # ------------------------------------------------------------ trade-off
    def _draw_tradeoff(self):
        self._read_widgets()
        s = self.state
        with self._busy(f"trade-off curve ({s.mode}) vs {', '.join(s.tradeoff_baselines) or 'nothing'}",
                        slow=True, steps=s.tradeoff_steps()):
            s.tradeoff(progress=self._tick)
            self.progress.value = self.progress.max
        self._show_tradeoff()
        return self.curve

    def _show_tradeoff(self) -> None:
        """Redraw the trade-off plot (curve, if any, and the current setting's point)."""
        s = self.state
        if s.tradeoff_rows is None:
            if s.y is None:
                msg = "give test data, Panel(model, (X, y)), to draw the size/error trade-off"
            elif self._loading and self._tradeoff_opt == "auto":
                msg = "computing the trade-off curve&hellip;"
            elif self._tradeoff_opt is False:
                msg = "trade-off curve switched off"
            elif s.tradeoff_baselines:
                msg = "press <b>Draw trade-off</b> to compare with magnitude pruning and Wanda"
            else:
                msg = "press <b>Draw trade-off</b> for the size/error curve"
            self._show_message(msg)
            self.tradeoff_button.disabled = s.y is None or self._tradeoff_opt is False or self._loading
            return
        if self._plot is None or self._plot.rows is not s.tradeoff_rows:
            entry, variant, relative = s.tradeoff_key
            self._plot = render.TradeoffPlot(
                s.tradeoff_rows, title=f"size / error trade-off, afde-nb {entry}{variant}"
                                       f"{' (relative eps)' if relative else ''}",
                ylabel=f"test MSE ({s.data_label})" if s.data_label else "test MSE", base_mse=s.base.get("mse"))
        f = s.figures
        png = self._plot.png((f["eps"], f["kept"], f["mse"]) if "mse" in f else None)
        self.tradeoff_out.outputs = ({"output_type": "display_data", "metadata": {},
                                      "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                               "text/plain": f"<size/error trade-off, {len(s.tradeoff_rows)} points>"}},)

    def _show_message(self, msg: str) -> None:
        """A note (HTML) where the trade-off plot goes."""
        self.tradeoff_out.outputs = ({"output_type": "display_data", "metadata": {},
                                      "data": {"text/html": render.message_html(msg), "text/plain": msg}},)


class _Closed(Exception):
    """The panel was closed: its background work stops."""


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (which displays the panel once the cell returns)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipywidgets needs IPython
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
