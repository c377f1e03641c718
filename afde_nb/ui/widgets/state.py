"""What the panel shows, without the panel: :class:`PanelState`.

A plain Python object (no ipywidgets, no matplotlib) holding the model, the data, the settings
(eps, method, mode, relative, data-aware, repair), the current :class:`~afde_nb.Compression` and the
numbers drawn from it: figures, merges per layer, the eps path (:meth:`PanelState.curve`) and the
size/error trade-off (:meth:`PanelState.tradeoff`). Everything goes through the library:
:func:`afde_nb.compress`, :func:`afde_nb.to_network` / :func:`afde_nb.core.network.as_inputs` (the same
input check ``compress`` makes), :mod:`afde_nb.eval.metrics`, :func:`afde_nb.eval.bench.tradeoff` and
:meth:`Compression.save`; a plain stack's eps moves go through :class:`afde_nb.pipeline.moves.SliderCache`, which does
what ``compress(model, eps, path=...)`` does (the merge path's cut, :func:`afde_nb.core.reduce.quotient`,
:mod:`afde_nb.core.repair`'s refit) with the figures' forwards on cached rows (issue 10: a move in
< 50 ms at width 1024). The test error is measured on at most :data:`EVAL_ROWS` test rows (a fixed
sample of a larger test set). Errors are raised, not shown: showing them is the panel's job.

Every model goes the same way: the state asks the pipeline what the model allows
(:func:`~afde_nb.pipeline.compress.allowed`: methods, export formats, trade-off baselines, whether
a slider can cut one network's merge path) and leaves out the rest with a note in ``notes``; each
merge row names its group by module path.

    >>> s = PanelState(model, (X, y), eps=0.05)
    >>> c = s.update()                  # compress at the current settings
    >>> s.figures["kept"], s.figures["mse"], s.merges[0]["after"]
    >>> s.set_eps(0.8); s.update()
    >>> s.curve()                       # [(eps, % of parameters kept), ...]
"""
from __future__ import annotations

import inspect
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from ...core.lump import METHODS, MODES, check_eps, check_method, check_mode
from ...core.path import LINKAGES, merge_path
from ...errors import InvalidArgumentError, ShapeMismatchError
from ...eval import metrics
from ...models.export import PROGRAM_SUFFIX
from ...models.stack import to_network
from ...pipeline.compress import Compression, _repair_how, allowed, compress, model_inputs
from ...pipeline.moves import SliderCache, _same_weights, _versions

FORMATS = (".pt", ".safetensors", PROGRAM_SUFFIX)
DEFAULT_EPS_RANGE = (1e-3, 10.0)
#: where the slider starts: about a 5 % error estimate per layer (afde_nb.core.path), a moderate cut
DEFAULT_EPS = 0.05
CALIBRATION_ROWS = 512  # rows of a Dataset's training split used for calibration
#: the test error is measured on at most this many test rows: a fixed sample (seed 0, the same rows
#: for the original, every reduced model and the trade-off curve). The reduced model's forward on
#: them is most of a slider move's cost (2,000 rows of a width-1024 net: ~4 GFLOP, more than the
#: 50 ms budget of a move on two cores; docs/performance.md §5)
EVAL_ROWS = 512
PATH_POINTS = 48        # at most this many compress() calls for the eps path
PATH_STEP = 2.0         # refine the eps path where % kept jumps by more than this


def _numpy(a, what: str) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{what} must be a numeric array, got {type(a).__name__}")
    return arr


def resolve_data(data, calibration=None):
    """``data`` (None, X, (X,), (X, y) or a Dataset) -> (X_eval, y_eval, X_calibration, label).

    A Dataset is evaluated on its test split and calibrated on (up to 512 rows of) its training
    split; ``(X, y)`` is used for both; ``X`` alone only calibrates. ``X`` may have any shape the
    model takes (image-shaped rows for a model that starts with ``Flatten``); ``y`` is (n,) or
    (n, targets)."""
    X = y = cal = None
    label = ""
    if data is None:
        pass
    elif hasattr(data, "X_test") and hasattr(data, "y_test"):
        X, y = _numpy(data.X_test, "X_test"), _numpy(data.y_test, "y_test")
        cal = _numpy(data.X_train, "X_train")[:CALIBRATION_ROWS]
        label = f"{getattr(data, 'name', 'data')} test split"
    elif isinstance(data, (tuple, list)):
        if not 1 <= len(data) <= 2:
            raise InvalidArgumentError(f"data must be X, (X, y) or a Dataset, got a {type(data).__name__} "
                                       f"of {len(data)}")
        X = _numpy(data[0], "X")
        y = _numpy(data[1], "y") if len(data) == 2 and data[1] is not None else None
        label = "given data"
    else:
        X = _numpy(data, "X")
        label = "given inputs"
    if y is not None:
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if y.ndim > 2:  # per-token or per-pixel targets: compared entry by entry, as the predictions
            y = y.reshape(len(y), -1)
        if y.ndim != 2 or X.ndim < 1 or len(X) != len(y):
            raise ShapeMismatchError(f"X and y must have the same number of rows, y shaped (n,) or (n, targets); "
                                     f"got {X.shape} and {y.shape}")
    if calibration is not None:
        cal = _numpy(calibration, "calibration")
    elif cal is None and X is not None:
        cal = X
    return X, y, cal, label


def merges_of(c: Compression) -> list[dict]:
    """Per hidden layer: what merged (the data the merge view draws)."""
    out = []
    for s, lab in zip(c.layers, c.partition):
        lab = np.asarray(lab)
        sizes = np.bincount(lab).tolist() if lab.size else []
        out.append({"layer": s.name, "activation": s.activation, "before": s.neurons_before,
                    "after": s.neurons_after, "largest": s.largest_block, "eps": s.eps,
                    "block_sizes": sorted(sizes, reverse=True), "merged_blocks": sum(k > 1 for k in sizes),
                    "labels": lab.tolist()})
    return out


def check_format(fmt, formats: tuple[str, ...] = FORMATS) -> str:
    if fmt not in formats:
        raise InvalidArgumentError(f"format must be one of {formats}, got {fmt!r}")
    return fmt


def format_of(path: str, formats: tuple[str, ...] = FORMATS) -> str:
    """The export format a file name asks for (the first of ``formats`` unless it ends in another)."""
    s = Path(str(path)).suffix
    return s if s in formats else formats[0]


def with_format(raw: str, fmt: str) -> str:
    """The export path text after choosing ``fmt`` in the format menu."""
    raw = str(raw).strip()
    if not raw:
        return raw
    p = Path(raw)
    return str(p.with_suffix(fmt)) if p.suffix else raw + fmt


def export_target(raw, fmt: str) -> Path:
    """The file an export writes: ``raw`` with the format's suffix (a ``.pt``/``.pth``/
    ``.safetensors`` suffix or none is replaced, any other is kept and the format's added)."""
    check_format(fmt)
    raw = str(raw).strip()
    if not raw:
        raise InvalidArgumentError("give a file name to export to")
    p = Path(raw).expanduser()
    return p.with_suffix(fmt) if p.suffix in (".pt", ".pth", ".safetensors", PROGRAM_SUFFIX, "") \
        else p.with_name(p.name + fmt)


def compress_supports(name: str) -> bool:
    """Whether :func:`afde_nb.compress` takes the keyword ``name`` (e.g. ``"repair"``)."""
    return name in inspect.signature(compress).parameters


def reduced_network_of(c: Compression):
    """The reduced :class:`~afde_nb.Network` of a compression of one network (None: several chains)."""
    return c.networks[0] if len(c.networks or ()) == 1 else None


def eval_rows(n: int, rows: int | None = None) -> np.ndarray | None:
    """The test rows the error is measured on: None (all ``n``) or a fixed sorted sample of ``rows``
    (default :data:`EVAL_ROWS`; seed 0), the same for every model and setting."""
    rows = EVAL_ROWS if rows is None else rows
    if n <= rows:
        return None
    return np.sort(np.random.default_rng(0).choice(n, rows, replace=False))


class PanelState:
    """The panel's model, data, settings and results, as plain Python.

    ``data``: None, inputs ``X`` (calibration only), ``(X, y)`` (test error and calibration) or an
    ``afde_nb.data.Dataset`` (test split for the error, up to 512 training rows for calibration);
    ``calibration`` overrides the calibration inputs. Settings are checked as ``compress`` checks
    them (:func:`afde_nb.core.lump.check_eps`, :func:`~afde_nb.core.lump.check_mode`,
    :func:`~afde_nb.core.lump.check_method`) and passed to it by keyword; ``method`` and ``repair``
    (None: compress's defaults) only where its signature has them (:meth:`supports`). A method the
    model does not allow (``allows.methods``) becomes the first it does, with a note.

    Results, refreshed by :meth:`update`: ``compression``, ``figures`` (the numbers shown),
    ``merges`` (per hidden layer); :meth:`curve` the eps path; :meth:`tradeoff` the trade-off rows
    (kept in ``tradeoff_rows``).
    """

    def __init__(self, model, data=None, *, calibration=None, eps: float = DEFAULT_EPS, method: str | None = None,
                 mode: str = "backward", relative: bool = True, data_aware: bool = False, repair=None,
                 eps_range: tuple[float, float] = DEFAULT_EPS_RANGE, eps_values=None,
                 baselines=("magnitude", "wanda"), path_points: int = PATH_POINTS):
        self.model = model
        self.allows = _allowed(model)
        self.notes: list[str] = []
        self.eps = eps
        self.method = method
        self.mode = mode
        self.relative = relative
        self.data_aware_requested = bool(data_aware)
        self.repair = repair
        self.eps_range = eps_range
        if isinstance(path_points, bool) or not isinstance(path_points, numbers.Integral) or path_points < 0:
            raise InvalidArgumentError(f"path_points must be an integer >= 0, got {path_points!r}")
        self.path_points = int(path_points)
        self.eps_values = None if eps_values is None else [check_eps(e) for e in eps_values]
        self.baselines = tuple(baselines)
        self.X = self.y = self.X_cal = None
        self.X_eval = self.y_eval = None  # the test rows the error is measured on (EVAL_ROWS)
        self.data_label = ""
        self._slider: SliderCache | None = None
        self._shown_versions = None
        self.base: dict = {}
        self._flat: dict = {}
        self.compression: Compression | None = None
        self.figures: dict = {}
        self.merges: list[dict] = []
        self.groups_report = ""  # a general model's groups and what was left alone (Discovery.report)
        self.compress_s = 0.0
        self._compression_key = None
        self._curve: list[tuple[float, float]] | None = None
        self._curve_key = None
        self.tradeoff_rows: list[dict] | None = None
        self.tradeoff_key = None
        self.set_data(data, calibration)

    # -------------------------------------------------------------- settings
    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value) -> None:
        self._eps = check_eps(value)

    @property
    def method(self) -> str | None:
        """``compress``'s ``method`` (None: its default; only where compress has ``method=``)."""
        return self._method

    @method.setter
    def method(self, value) -> None:
        value = None if value is None else check_method(value)
        if value not in (None, *self.methods):
            self._note(f"method {value!r} (the paper's eps-graph components) is defined by the polynomial ODE, "
                       f"for plain Linear stacks; showing {self.methods[0]!r}")
            value = self.methods[0]
        self._method = value

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this model allows."""
        return self.allows.methods if self.allows is not None else METHODS

    @property
    def formats(self) -> tuple[str, ...]:
        """The export formats this model allows (a model that is not one plain stack has no JSON
        architecture: it exports as a ``.pt2`` program)."""
        return self.allows.formats if self.allows is not None else FORMATS

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value) -> None:
        self._mode = check_mode(value)

    @property
    def relative(self) -> bool:
        return self._relative

    @relative.setter
    def relative(self, value) -> None:
        self._relative = bool(value)

    @property
    def data_aware_possible(self) -> bool:
        """Data-aware distances need calibration data and (where compress has methods) the
        paper's ``method="components"``."""
        return self.X_cal is not None and "components" in self.methods and (not self.supports("method")
                                                                             or self.method == "components")

    @property
    def data_aware(self) -> bool:
        """Data-aware distances in force: asked for and possible."""
        return self.data_aware_requested and self.data_aware_possible

    @data_aware.setter
    def data_aware(self, value) -> None:
        self.data_aware_requested = bool(value)

    @property
    def repair(self):
        """``compress``'s ``repair``: None (its default: on with calibration data), True, False or
        ``"pseudo"``; passed only where compress has ``repair=``."""
        return self._repair

    @repair.setter
    def repair(self, value) -> None:
        if value not in (None, True, False, "pseudo"):
            raise InvalidArgumentError(f"repair must be None, True, False or 'pseudo', got {value!r}")
        self._repair = value

    @property
    def eps_range(self) -> tuple[float, float]:
        """(min, max) of eps > 0 that the slider and the eps path cover."""
        return self._eps_range

    @eps_range.setter
    def eps_range(self, value) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"eps_range must be (min, max), got {value!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise InvalidArgumentError(f"eps_range must be (min, max) with 0 < min < max, got {value!r}")
        self._eps_range = (lo, hi)

    @staticmethod
    def supports(keyword: str) -> bool:
        """Whether this afde-nb's ``compress`` takes ``keyword`` (``"method"``, ``"repair"``, ...)."""
        return compress_supports(keyword)

    @property
    def supports_repair(self) -> bool:
        return self.supports("repair")

    @property
    def repair_in_force(self) -> bool:
        """Whether compress repairs at the current setting (None repairs when calibration data are there)."""
        if not self.supports_repair:
            return False
        return self.X_cal is not None if self.repair is None else bool(self.repair)

    def set_eps(self, eps) -> float:
        """Set eps (checked); a value outside ``eps_range`` widens it to whole decades."""
        e = check_eps(eps)
        self.eps = e
        if e > 0:
            lo, hi = self.eps_range
            if e < lo:
                lo = 10.0 ** math.floor(math.log10(e))
            if e > hi:
                hi = 10.0 ** math.ceil(math.log10(e))
            self.eps_range = (lo, hi)
        return e

    # ------------------------------------------------------------------ data
    def set_data(self, data, calibration=None) -> None:
        """Read and check ``data`` (see the class): the inputs must fit the model as ``compress``
        reads them (its input ``Flatten`` applies to image-shaped rows)."""
        X, y, cal, label = resolve_data(data, calibration)
        X_eval, y_eval = X, y
        if X is not None and y is not None:
            idx = eval_rows(len(X))
            if idx is not None:
                X_eval, y_eval = X[idx], y[idx]
        flat = {}
        if X is not None:
            flat["X"] = model_inputs(self.model, X, "X")
            flat["X_eval"] = flat["X"] if X_eval is X else model_inputs(self.model, X_eval, "X")
        if cal is not None:
            flat["cal"] = model_inputs(self.model, cal)
        base = {}
        if y is not None:
            base = {"mse": metrics.mse(self.model, X_eval, y_eval), "r2": metrics.r2(self.model, X_eval, y_eval)}
        self.X, self.y, self.X_cal, self.data_label = X, y, cal, label
        self.X_eval, self.y_eval = X_eval, y_eval
        self._flat, self.base = flat, base
        self._base_versions = _versions(self.model) if isinstance(self.model, nn.Module) else None
        self._slider = None
        self._curve_key = self._compression_key = None
        self.tradeoff_rows = self.tradeoff_key = None

    # ----------------------------------------------------------- compression
    def compress_kwargs(self) -> dict:
        """The keyword arguments of ``compress`` at the current settings (eps aside)."""
        kw = {"mode": self.mode, "relative": self.relative, "calibration": self.X_cal}
        if self.data_aware:
            kw["data_aware"] = True
        if self.method is not None and self.supports("method"):
            kw["method"] = self.method
        if self.repair is not None and self.supports_repair:
            kw["repair"] = self.repair
        return kw

    def update(self) -> Compression:
        """``compress`` at the current settings; refreshes ``compression``, ``figures``, ``merges``.
        On an error these are cleared and the error is raised.

        A plain stack with a merge path (Ward's or complete linkage) goes through its
        :class:`SliderCache`: the first update builds the path, every later one at the same setting
        (a slider move) costs the cut, the quotient, the repair and the figures' forwards on cached
        rows, or only the cut where that partition was shown before (its figures are kept); the
        reduced torch model is built when asked for (``compression.model``, export)."""
        t0 = time.perf_counter()
        try:
            if self.y is not None and self._base_versions is not None and self._base_versions != _versions(self.model):
                # the model's weights changed under the panel: the original's figures too
                self.base = {"mse": metrics.mse(self.model, self.X_eval, self.y_eval),
                             "r2": metrics.r2(self.model, self.X_eval, self.y_eval)}
                self._base_versions = _versions(self.model)
            cache = self._slider_cache()
            if cache is not None:
                c, pred = cache.move(self.eps, _repair_how(self.repair, self._flat.get("cal")))
                self.compress_s = time.perf_counter() - t0
                self._show(c, pred)
                return c
            kw = self.compress_kwargs()
            last = self.compression
            if (last is not None and self._compression_key == self.curve_key()
                    and getattr(last, "path", None) is not None and self.supports("path")):
                kw["path"] = last.path  # same setting: only the cut and the quotient change (a slider move)
            c = compress(self.model, eps=self.eps, **kw)
            self.compress_s = time.perf_counter() - t0
            self._show(c)
        except Exception:
            self.compression, self.figures, self.merges, self.groups_report = None, {}, [], ""
            raise
        return c

    def _slider_cache(self) -> SliderCache | None:
        """The :class:`SliderCache` of the current setting (built with its merge path on first use),
        or None where ``compress`` answers instead: a model that is not one plain stack, the paper's
        components, a ``compress`` without ``path=``/``method=``/``repair=``."""
        if self.allows is None or not self.allows.one_network or self.data_aware or \
                not all(self.supports(k) for k in ("path", "method", "repair")):
            return None
        method = self.method if self.method is not None else inspect.signature(compress).parameters["method"].default
        if method not in LINKAGES:
            return None
        calib = self._flat.get("cal")
        key = (method, self.mode, self.relative, calib is not None)
        cache = self._slider
        if cache is not None and cache.key == key and cache.fresh(self.model):
            return cache
        self._slider = None
        net = to_network(self.model)
        if not SliderCache.fits(net):
            return None
        last = self.compression
        path = getattr(last, "path", None) if last is not None else None
        if path is None or (path.method, path.mode, path.relative, path.calibrated) != key or not path.symmetry \
                or self._shown_versions != _versions(self.model) or not _same_weights(path.net, net):
            # compress's own path: merge_path(to_network(model), ...) on its calibration inputs
            path = merge_path(net, method=method, mode=self.mode, relative=self.relative, calibration=calib)
        self._slider = SliderCache(self.model, net, path, calib, self._flat.get("X_eval"))
        return self._slider

    def _show(self, c: Compression, pred: np.ndarray | None = None) -> None:
        figures, merges = self._figures(c, pred), merges_of(c)
        self.compression, self.figures, self.merges = c, figures, merges
        self._shown_versions = _versions(self.model)  # the weights c (and its path) were computed from
        self.groups_report = c.groups.report() if getattr(c, "groups", None) is not None else ""
        self._compression_key = self.curve_key()

    def _figures(self, c: Compression, pred: np.ndarray | None = None) -> dict:
        f = {"eps": c.eps, "method": getattr(c, "method", None), "mode": c.mode, "relative": c.relative,
             "data_aware": self.data_aware,
             "params_before": c.params_before, "params_after": c.params_after, "kept": c.kept,
             "widths_before": [s.neurons_before for s in c.layers],
             "widths_after": [s.neurons_after for s in c.layers],
             "compress_ms": 1000 * self.compress_s}
        if self.supports_repair:
            f["repair"] = getattr(c, "repaired", None)  # what ran: "calibration", "pseudo" or None
        if getattr(c, "target", None):
            f["target"] = dict(c.target)
        if self.y is not None:
            if pred is None:
                pred = metrics.predict(c.model, self.X_eval)  # one forward for both figures
            f.update(mse=metrics.mse_score(pred, self.y_eval), r2=metrics.r2_score(pred, self.y_eval),
                     mse_before=self.base["mse"], r2_before=self.base["r2"], test_n=len(self.y_eval),
                     test_rows=len(self.y))
        before = getattr(c, "calibration_error_before_repair", None)
        if before and before != c.calibration_error:
            f.update(calib_max_abs_before_repair=before["max_abs"], calib_rms_before_repair=before["rms"],
                     calib_n=before["n"])
        if c.calibration_error:
            e = c.calibration_error
            f.update(calib_max_abs=e["max_abs"], calib_rms=e["rms"], calib_n=e["n"],
                     calib_rel_rms=float(np.sqrt(e["relative_mse"])) if "relative_mse" in e else None)
        if getattr(c, "estimated_error", None) is not None:  # the slider's number in output terms (issue 30)
            f["estimated_error"] = float(c.estimated_error)
        return f

    @property
    def reduced_network(self):
        """The current compression's reduced :class:`~afde_nb.Network` (None without one)."""
        return reduced_network_of(self.compression) if self.compression is not None else None

    def set_target_kept(self, fraction) -> Compression:
        """Target mode: the compression ``compress(target_params=...)`` gives for at most
        ``fraction`` of the parameters, with the current mode and switches; it becomes the current
        compression and its eps the current eps."""
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
            raise InvalidArgumentError(f"keep must be a fraction in (0, 1], got {fraction!r}")
        full = self.compression.params_before if self.compression is not None else compress(self.model).params_before
        t0 = time.perf_counter()
        c = compress(self.model, target_params=int(fraction * full), **self.compress_kwargs())
        self.compress_s = time.perf_counter() - t0
        self.set_eps(c.eps)
        self._show(c)
        return c

    # -------------------------------------------------------------- eps path
    def curve_key(self) -> tuple:
        """What the eps path depends on: method, mode, relative, data-aware, the eps range."""
        return (self.method, self.mode, self.relative, self.data_aware, self.eps_range)

    def curve_cached(self) -> bool:
        """Whether :meth:`curve` has the eps path of the current setting already (no compress calls)."""
        return self._curve_key == self.curve_key() or self.path_points == 0

    def curve(self, progress: Callable[[], None] | None = None) -> list[tuple[float, float]]:
        """The eps path: ``[(eps, % of parameters kept), ...]`` in increasing eps, at the current
        method, mode and switches (computed once per setting).

        The merge path's cuts (``Compression.curve()``: eps as ``compress`` reads it) where compress builds one;
        otherwise (``method="components"``) ``compress`` at a log grid of eps over ``eps_range``,
        refined where % kept jumps (at most ``path_points`` calls; ``progress()`` after each)."""
        key = self.curve_key()
        if self._curve_key != key:
            c = self._merge_path()
            if c is not None:  # eps as compress reads it (issue 30: the output-level estimate)
                pts = [(float(e), 100.0 * float(k)) for e, k in c.curve(max(self.path_points, 2))]
            else:
                pts = self._curve_by_grid(progress)
            self._curve, self._curve_key = pts, key
        return list(self._curve)

    def _merge_path(self):
        """A compression of the current setting that has a merge path (None where compress builds
        none): its :meth:`~afde_nb.Compression.curve` is the eps path."""
        if self.path_points == 0:
            return None
        c = self.compression if self._compression_key == self.curve_key() else None
        if c is None:
            c = compress(self.model, eps=0.0, **self.compress_kwargs())
        path = getattr(c, "path", None)
        return c if path is not None and callable(getattr(c, "curve", None)) else None

    def _curve_by_grid(self, progress=None) -> list[tuple[float, float]]:
        if self.path_points == 0:
            return []
        kw = self.compress_kwargs()
        if self.supports_repair:
            kw["repair"] = False  # the sizes do not depend on the repair of the weights
        kept: dict[float, float] = {}

        def at(e: float) -> None:
            if e not in kept and len(kept) < self.path_points:
                kept[e] = 100.0 * compress(self.model, eps=e, **kw).kept
                if progress is not None:
                    progress()

        lo, hi = self.eps_range
        n0 = max(2, min(17, self.path_points - 1))
        for e in [0.0, *np.geomspace(lo, hi, n0).tolist()]:
            at(float(e))
        while len(kept) < self.path_points:  # bisect (in log eps) where the size jumps
            es = sorted(e for e in kept if e > 0)
            gaps = sorted(((abs(kept[a] - kept[b]), a, b) for a, b in zip(es, es[1:])
                           if abs(kept[a] - kept[b]) > PATH_STEP and b / a > 1.0001), reverse=True)
            if not gaps:
                break
            for _, a, b in gaps:
                at(math.sqrt(a * b))
        return sorted(kept.items())  # in increasing eps

    # ------------------------------------------------------------- trade-off
    def tradeoff_mode(self) -> tuple[str, str, bool]:
        """(``bench.tradeoff`` entry, variant, relative) of the current setting: the entry is
        ``[method-]mode[-data]`` (Ward's without prefix), the variant gives every method the panel's
        data access and repair (``"+repair"``, ``"+calib"``, ``"+pseudo"``, or ``""`` data-free)."""
        from ...eval.bench import tradeoff

        entry = self.mode
        if self.method not in (None, "ward") and self.supports("method"):
            entry = f"{self.method}-{entry}"
        if self.data_aware:
            entry += "-data"
        variant = ""
        if "variants" in inspect.signature(tradeoff).parameters:
            if self.repair == "pseudo" and self.supports_repair:
                variant = "+pseudo"
            elif self.X_cal is not None:
                variant = "+repair" if self.repair_in_force else "+calib"
        return (entry, variant, self.relative)

    @staticmethod
    def _variants(variant: str) -> dict:
        if not variant:
            return {}
        # "+calib" (afde-nb on calibration data, no repair) has no baseline rows of its own: the
        # baselines come as they are ("" ; Wanda on the calibration data)
        return {"variants": (variant, "") if variant == "+calib" else (variant,)}

    @property
    def tradeoff_baselines(self) -> tuple[str, ...]:
        """The baselines the trade-off compares with: every one acts on the same groups afde-nb
        lumps, in any model (:mod:`afde_nb.eval.baselines`)."""
        return self.baselines

    def tradeoff_steps(self) -> int:
        """About how many models :meth:`tradeoff` evaluates (for a progress bar)."""
        n_afde = len(self.eps_values) if self.eps_values is not None else 9
        return n_afde * (1 + len(self.tradeoff_baselines))

    def tradeoff(self, progress: Callable[[], None] | None = None) -> list[dict]:
        """The size/error trade-off against the baselines (:func:`afde_nb.eval.bench.tradeoff` rows) on
        the test data, for the current mode and switches; kept in ``tradeoff_rows``."""
        job = self.tradeoff_job()
        self.keep_tradeoff(job, job.run(progress))
        return self.tradeoff_rows

    def tradeoff_job(self) -> "TradeoffJob":
        """:meth:`tradeoff` in two halves, for a caller that computes the rows on another thread
        while this state goes on answering: the settings and data are read now, and
        ``job.run(progress)`` computes the rows from those alone; :meth:`keep_tradeoff` keeps them."""
        if self.y is None:
            raise InvalidArgumentError("the trade-off curve needs test data: Panel(model, (X, y)) or "
                                       "Panel(model, dataset)")
        from ...eval import bench

        key = self.tradeoff_mode()
        entry, variant, relative = key
        model, flat, y_eval = self.model, self._flat, self.y_eval
        kw = dict(calibration=flat.get("cal"), eps_values=self.eps_values, mode=entry, relative=relative,
                  baselines=self.tradeoff_baselines, **self._variants(variant))

        def run(progress: Callable[[], None] | None = None) -> list[dict]:
            return [dict(r) for r in bench.tradeoff(model, flat["X_eval"], y_eval, progress=progress, **kw)]

        return TradeoffJob(key, flat, run)

    def keep_tradeoff(self, job: "TradeoffJob", rows: list[dict]) -> bool:
        """Keep the rows of ``job`` as ``tradeoff_rows`` unless the data changed since it was made
        (then they are dropped: False)."""
        if job.data is not self._flat:
            return False
        self.tradeoff_rows, self.tradeoff_key = rows, job.key
        return True

    # ---------------------------------------------------------------- export
    def export_choice(self, path: str) -> tuple[str, str]:
        """(path, format) to offer for the export: ``path`` with a suffix this model allows."""
        fmt = format_of(path, self.formats)
        return with_format(path, fmt) if Path(str(path)).suffix != fmt else str(path), fmt

    def export(self, path, fmt: str | None = None) -> list[Path]:
        """Save the current compression (``Compression.save``) to ``path`` in format ``fmt``
        (default: from the suffix); returns the files written, resolved. A ``.pt2`` program is
        traced on two calibration rows."""
        if self.compression is None:
            raise RuntimeError("nothing to export: the compression failed (see the error above)")
        fmt = format_of(str(path), self.formats) if fmt is None else check_format(fmt, self.formats)
        target = export_target(path, fmt)
        example = None if self.X_cal is None else self.X_cal[:2]
        return [Path(w).resolve() for w in self.compression.save(target, example_inputs=example)]


@dataclass(frozen=True)
class TradeoffJob:
    """A trade-off to compute (:meth:`PanelState.tradeoff_job`): ``key`` the setting
    (:meth:`PanelState.tradeoff_mode`), ``data`` the state's data it reads (compared by identity),
    ``run(progress)`` the rows."""

    key: tuple
    data: dict = field(repr=False)
    run: Callable[..., list[dict]] = field(repr=False)


def _allowed(model):
    """:func:`~afde_nb.pipeline.compress.allowed`, or None where ``compress`` will refuse the model
    (NaN weights, nothing lumpable): the panel shows compress's error then."""
    try:
        return allowed(model)
    except Exception:  # noqa: BLE001 - compress raises it again, by name, where the panel shows errors
        return None


__all__ = ["FORMATS", "METHODS", "MODES", "PanelState", "TradeoffJob", "export_target",
           "merges_of", "resolve_data"]
