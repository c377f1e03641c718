"""Write a reduced model as a ``torch.export`` program (``.pt2``) that stock torch loads, and read
one back.

A model that is not one plain Linear stack (a residual MLP, a transformer layer, a CNN) has no
architecture JSON: its forward is the user's own code. ``torch.export`` captures that forward as a
graph of ATen operations together with the weights, so ``torch.export.load(path).module()`` runs
the reduced model without afde-nb and without the user's class. The batch dimension (dim 0 of
every tensor input) stays dynamic; where the model came from a ``torch.export`` program, it keeps
that program's bounds (:func:`batch_bounds`: the same ``Dim(min, max)``, or the same fixed size),
so the reduced program takes exactly the batches the source took.

Reading checks the archive before torch does: ``torch.export.load`` unpickles some members with
``weights_only=False`` (tensor subclasses, custom objects, and, when ``weights_only=True`` fails, the
sample inputs), so a ``.pt2`` from elsewhere could run code, and afde-nb never unpickles objects
(as :mod:`afde_nb.models.serialize`). Only programs whose weights and constants are raw tensors and
whose pickled members load with ``torch.load(weights_only=True)`` are read; anything else is an
:class:`~afde_nb.errors.UnsafeFileError` (a file that is no readable program at all is a
:class:`~afde_nb.errors.CorruptFileError`).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import (CorruptFileError, ExportError, InvalidArgumentError, ShapeMismatchError, UnsafeFileError,
                      UnsupportedLayerError, WriteError)
from .serialize import DYNAMIC_SHAPES, _discard, _fsync, _readable, _short, architecture, check_writable, write_reason
from .serialize import load_model as _load_stack

PROGRAM_SUFFIX = ".pt2"
#: archive folders (below the archive's root folder) of compiled code, which torch.export.load would load
_NATIVE_CODE = ("data/aotinductor/",)
#: the file-name prefix of a constant stored as raw tensor data (others are pickled objects)
_TENSOR_CONSTANT = "tensor_"
#: the way out for a program whose batch size torch fixed
DYNAMIC_BATCH = f"export the original with {DYNAMIC_SHAPES}"
#: torch 2.13 deprecates its pytree class LeafSpec (a FutureWarning on each new instance), yet a
#: program's module keeps its leaf specs as LeafSpec, and copy.deepcopy makes new ones: every copy of
#: such a module warned about torch's internals, which nobody but torch can act on
_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def is_program_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.pt2`` program."""
    return Path(path).suffix == PROGRAM_SUFFIX


def is_plain_stack(model: nn.Module) -> bool:
    """Whether ``model`` is a plain Sequential that the architecture JSON describes
    (:func:`afde_nb.models.serialize.architecture`)."""
    try:
        architecture(model)
    except UnsupportedLayerError:
        return False
    return True


def wants_program(model: nn.Module, path: str | os.PathLike) -> bool:
    """Whether saving ``model`` to ``path`` writes a program: a ``.pt2`` name does; a model that is
    not a plain stack has no architecture JSON, so any other name is an
    :class:`InvalidArgumentError` pointing to ``.pt2``."""
    if is_program_path(path):
        return True
    if not is_plain_stack(model):
        raise InvalidArgumentError(
            f"{type(model).__name__} is not a plain Linear stack, so no architecture JSON describes it: save it "
            f"as a torch.export program with a {PROGRAM_SUFFIX} file name (got {str(path)!r})")
    return False


def _check_suffix(path: Path) -> None:
    if not is_program_path(path):
        raise InvalidArgumentError(f"a torch.export program is a {PROGRAM_SUFFIX} file, got "
                                   f"{path.suffix or '(no suffix)'!r} in {str(path)!r}")


def _default_inputs(model: nn.Module) -> torch.Tensor | None:
    """Zeros for a Sequential that starts with a Linear layer (its input shape is known)."""
    first = next(iter(model), None) if isinstance(model, nn.Sequential) else None
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features, dtype=first.weight.dtype, device=first.weight.device)
    return None


#: the bounds of one input's batch dimension: (symbol, min, max); max None where unbounded; symbol
#: None where the source fixed the batch at min == max. Inputs with one symbol share one ``Dim``
Bound = tuple[str | None, int, int | None]
#: a model not read from a program: every tensor input shares one batch dimension of any size
_FREE: Bound = ("batch", 1, None)


def batch_bounds(model) -> dict[str, Bound] | None:
    """The batch dimension (dim 0) of each tensor input of a ``torch.export`` program (an
    ``ExportedProgram``, or its ``.module()``), by input name: its symbol's ``range_constraints``,
    or its fixed size where the program was exported without a dynamic batch; None for any other
    model. A re-export with these bounds (:func:`to_program`) keeps the source's guards: a program
    exported with ``Dim("batch", min=2, max=64)`` (as Hugging Face's export helpers do) stays so, a
    default ``Dim(min=1)`` would drop the bounds or violate them."""
    if isinstance(model, torch.export.ExportedProgram):
        with quiet_leafspec():
            model = model.module()
    ranges = getattr(model, "range_constraints", None)  # a program's module has them (empty where all fixed)
    if not isinstance(model, torch.fx.GraphModule) or ranges is None:
        return None
    ranges = ranges if isinstance(ranges, dict) else {}
    try:
        names = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None
    out: dict[str, Bound] = {}
    for node in model.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if node.target not in names or not isinstance(val, torch.Tensor) or val.ndim == 0:
            continue
        size = val.shape[0]
        if isinstance(size, int):
            out[node.target] = (None, size, size)
            continue
        vr = ranges.get(size.node.expr)
        if vr is not None and getattr(vr.lower, "is_Integer", False):  # else dim 0 is an expression: not a batch
            out[node.target] = (str(size.node.expr), int(vr.lower),
                                int(vr.upper) if getattr(vr.upper, "is_Integer", False) else None)
    return out or None


def _split(model: nn.Module, example_inputs) -> tuple[tuple, dict]:
    """(args, kwargs) of ``example_inputs``: a tensor (or array), a tuple of them, a dict of keyword
    inputs (or a batch of them with ``.kwargs``, as :class:`~afde_nb.models.surgery.Batch`), or
    ``(args_tuple, kwargs_dict)``."""
    if example_inputs is None:
        example_inputs = _default_inputs(model)
        if example_inputs is None:
            raise InvalidArgumentError(
                f"exporting {type(model).__name__} needs example inputs: pass example_inputs= (a batch the model "
                "takes, e.g. a few calibration rows); a compression made with calibration data keeps two rows")
    kw = getattr(example_inputs, "kwargs", None)
    if isinstance(kw, dict):
        return (), dict(kw)
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2 and isinstance(example_inputs[0], (tuple, list))
            and isinstance(example_inputs[1], Mapping)):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    return (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)), {}


def _inputs(model: nn.Module, example_inputs, bounds: dict[str, Bound] | None, fit: bool) -> tuple[tuple, dict, dict]:
    """(args, kwargs, dynamic_shapes) to export ``model`` on: tensors (arrays made tensors) in the
    model's float dtype and on its device, each with its batch dimension (``bounds`` by input name,
    else one shared free batch); other values as given, with no dynamic shape. A batch outside its
    bounds is fitted into them where ``fit`` (rows repeated or dropped: the compression's own two
    rows), else refused; one row is traced as two, since torch.export fixes a dimension of size 1."""
    args, kwargs = _split(model, example_inputs)
    try:
        sig = inspect.signature(model.forward)
        sig.bind(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{type(model).__name__} does not take the example inputs "
                                   f"({len(args)} positional, keywords {sorted(kwargs)}): {exc}") from exc
    positional = [q.name for q in sig.parameters.values() if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    bounds = bounds or {}
    common = next(iter(bounds.values())) if len(set(bounds.values())) == 1 else _FREE
    ref = next(model.parameters(), None)
    dims: dict[str, torch.export.Dim] = {}

    def dim(b: Bound):
        sym, lo, hi = b
        if sym is None:
            return None
        if sym not in dims:
            dims[sym] = torch.export.Dim("batch" if not dims else f"batch{len(dims)}", min=lo,
                                         **({} if hi is None else {"max": hi}))
        return dims[sym]

    def one(name: str, key: str, x):
        if isinstance(x, (tuple, list)) and any(isinstance(v, (torch.Tensor, np.ndarray)) for v in x):
            got = [one(f"{name}[{k}]", key, v) for k, v in enumerate(x)]
            return type(x)(v for v, _ in got), type(x)(d for _, d in got)
        if isinstance(x, Mapping):
            got = {k: one(k, k, v) for k, v in x.items()}
            return {k: v for k, (v, _) in got.items()}, {k: d for k, (_, d) in got.items()}
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            if key in bounds:
                raise InvalidArgumentError(f"example input {name!r} is a {type(x).__name__}, but the program the model "
                                           "came from takes a tensor there")
            return x, None
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        if t.ndim == 0 or len(t) == 0:
            raise InvalidArgumentError(f"example input {name!r} needs a non-empty batch dimension (dim 0), got shape "
                                       f"{tuple(t.shape)}")
        if ref is not None:
            t = t.to(device=ref.device, dtype=ref.dtype if t.is_floating_point() else t.dtype)
        b = bounds.get(key, common)
        _, lo, hi = b
        inside = lo <= len(t) and (hi is None or len(t) <= hi)
        if not inside and not fit:
            raise ShapeMismatchError(
                f"example input {name!r} has {len(t)} rows, but the program the model came from takes batches of "
                + (f"exactly {lo}" if b[0] is None else f"{lo} to {'any size' if hi is None else hi}")
                + ": give example inputs inside those bounds")
        if not inside or (len(t) == 1 and b[0] is not None and hi != 1):
            n = max(2, lo) if hi is None else min(max(2, lo), hi)  # 2 clamped into [lo, hi]
            t = t[torch.arange(n, device=t.device) % len(t)]
        d = dim(b)
        return t, None if d is None else {0: d}

    # positional inputs stay positional and keywords keywords (a program checks how it is called);
    # dynamic_shapes go by the forward's argument names, as torch binds them
    args = [np.asarray(x) if isinstance(x, list) and not any(isinstance(v, torch.Tensor) for v in x) else x
            for x in args]  # a positional list of numbers is an array of inputs
    got = [one(*((positional[k],) * 2 if k < len(positional) else (f"args[{k}]", "")), x) for k, x in enumerate(args)]
    got_kw = {k: one(k, k, x) for k, x in kwargs.items()}
    shapes = sig.bind(*(d for _, d in got), **{k: d for k, (_, d) in got_kw.items()}).arguments
    return tuple(v for v, _ in got), {k: v for k, (v, _) in got_kw.items()}, dict(shapes)


def _reason(exc: BaseException) -> str:
    """torch's reason in one line: its first line, and the first detail line where torch gives
    one (a constraint violation says what specialized the batch dimension there)."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    text = " ".join(lines[:1] + [l[2:] for l in lines[1:2] if l.startswith("- ")])
    text = text if len(text) <= 400 else text[:397] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _eval(model: nn.Module) -> None:
    try:
        model.eval()
    except NotImplementedError:  # a torch.export program's module is already an inference graph
        pass


@contextlib.contextmanager
def quiet_leafspec():
    """Copies of a torch.export program's module without torch's LeafSpec FutureWarning (see
    :data:`_LEAFSPEC_WARNING`); every other warning is shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LEAFSPEC_WARNING, category=FutureWarning)
        yield


@contextlib.contextmanager
def _quiet_torch():
    """torch logs (and prints to stderr) whole graphs and tracebacks before it raises on a model it
    cannot export or a file it cannot load; the error afde-nb raises gives the reason in one line
    and keeps torch's exception (with its partial graph) as the cause."""
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def to_program(model: nn.Module, example_inputs=None, bounds: dict[str, Bound] | None = None,
               fit: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode copy of ``model`` on ``example_inputs`` with a dynamic
    batch dimension (dim 0 of every tensor input).

    ``example_inputs``: a tensor (or array), a tuple of them (positional inputs), a dict of keyword
    inputs (a Hugging Face model's ``{"input_ids": ..., "attention_mask": ...}``; values that are no
    tensors, such as ``use_cache=False``, pass as given), or ``(args_tuple, kwargs_dict)``.
    ``bounds`` (:func:`batch_bounds` of the program the model came from) keeps that program's batch
    bounds per input, or its fixed batch size (then the export keeps the batch fixed at that size);
    example inputs outside them are a :class:`ShapeMismatchError` naming the input, unless ``fit``.
    A model torch cannot export raises :class:`ExportError` with torch's reason."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"only a torch.nn.Module can be exported, got {type(model).__name__}")
    args, kwargs, shapes = _inputs(model, example_inputs, bounds, fit)
    try:
        with quiet_leafspec():
            frozen = copy.deepcopy(model)
        _eval(frozen)
        with _quiet_torch():
            return torch.export.export(frozen, args, kwargs, dynamic_shapes=shapes)
    except Exception as exc:  # torch raises many kinds (UserError, ConstraintViolation, TypeError, ...)
        given = [(str(k), a) for k, a in enumerate(args)] + list(kwargs.items())
        inputs = ", ".join(f"{k} {tuple(a.shape)}" if isinstance(a, torch.Tensor) else f"{k}={a!r}" for k, a in given)
        hint = ""
        if isinstance(model, torch.fx.GraphModule) and "specialized" in str(exc):
            hint = (f"; a torch.export program exported without dynamic_shapes keeps its batch size fixed: "
                    f"{DYNAMIC_BATCH}")
        elif "Cache" in str(exc) and "use_cache" not in kwargs and _takes(model, "use_cache"):
            hint = "; give use_cache=False with the example inputs (a cache object is no tensor a program returns)"
        raise ExportError(f"torch.export cannot export {type(model).__name__} on inputs {inputs} with a dynamic "
                          f"batch dimension: {_reason(exc)}{hint}") from exc


def _takes(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def export_program(model: nn.Module, example_inputs, path: str | os.PathLike, bounds: dict[str, Bound] | None = None,
                   fit: bool = False) -> Path:
    """Write ``model`` as a ``torch.export`` program to ``path`` (``.pt2``); returns the path.

    ``example_inputs``: a batch the model takes (as :func:`to_program` takes it), only traced,
    never stored as data the program needs; None works for a Sequential that starts with a Linear
    layer. ``bounds`` and ``fit``: the source program's batch bounds, as :func:`to_program`. The
    file is written to a temporary file beside ``path`` and renamed into place, so a failed export
    leaves the old file, or none; a path that cannot be written is a :class:`WriteError` naming it and
    the cause, raised before the trace. Load it with stock torch: ``torch.export.load(path).module()``.
    """
    path = Path(path)
    _check_suffix(path)
    check_writable(path)  # before the trace, which is the slow part
    program = to_program(model, example_inputs, bounds, fit)
    # the temporary name keeps the suffix: torch.export warns about other names
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{PROGRAM_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # opened here, so a failed write is an OSError, whatever torch does
            torch.export.save(program, f)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {write_reason(exc)}", path) from exc
    finally:
        _discard(tmp)
    return path


# --------------------------------------------------------------------------------------------- reading


def _unsafe(path: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"{path} {what}: afde-nb reads .pt2 programs whose weights are plain tensors and never "
                           "unpickles objects")


def _check_archive(path: Path) -> None:
    """Refuse an archive whose loading would unpickle objects or load native code."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {n.split("/", 1)[1]: n for n in z.namelist() if "/" in n}
            if not any(m.startswith("models/") or m.endswith("serialized_exported_program.json") for m in members):
                raise CorruptFileError(f"{path} is a zip archive but holds no torch.export program "
                                       "(written by torch.export.save?)")
            for m, name in members.items():
                if m.startswith(_NATIVE_CODE):
                    raise _unsafe(path, f"holds compiled native code ({m})")
                if m.startswith(("data/weights/", "data/constants/")) and m.endswith("_config.json"):
                    entries = json.loads(z.read(name)).get("config", {})
                    for key, meta in entries.items():
                        if meta.get("use_pickle") is not False or (
                                m.startswith("data/constants/") and not str(meta.get("path_name", "")).startswith(
                                    _TENSOR_CONSTANT)):
                            raise _unsafe(path, f"stores {key!r} as a pickled object")
                elif m.endswith(".pt"):
                    try:
                        torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
                    except Exception as exc:  # noqa: BLE001 - any failure: torch would fall back to unpickling
                        raise _unsafe(path, f"holds {m}, which torch.load(weights_only=True) cannot read "
                                            f"[{_short(exc)}]") from exc
    except (UnsafeFileError, CorruptFileError):
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, TypeError, AttributeError, EOFError) as exc:
        raise CorruptFileError(f"{path} is not a readable torch.export program (corrupt, truncated or of another "
                               f"format) [{_short(exc)}]") from exc


def read_program(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """The ``torch.export`` program in ``path`` (``.pt2``), checked first (see the module docstring).

    A missing file raises :class:`~afde_nb.errors.MissingFileError`; a directory or an unreadable
    file :class:`InvalidArgumentError`; one that would unpickle objects or load native code
    :class:`UnsafeFileError`; a corrupt or truncated file, or one of another format,
    :class:`CorruptFileError`.
    """
    path = Path(path)
    _check_suffix(path)
    path = _readable(path, f"{PROGRAM_SUFFIX} program")
    _check_archive(path)
    try:
        with _quiet_torch():
            return torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - torch's deserializer raises anything
        raise CorruptFileError(f"{path} is not a torch.export program that torch.export.load can read (corrupt, "
                               f"truncated or from an incompatible torch) [{_short(exc)}]") from exc


def load_program(path: str | os.PathLike) -> nn.Module:
    """The module of the ``torch.export`` program in ``path``: ``torch.export.load(path).module()``,
    after the checks of :func:`read_program`."""
    return read_program(path).module()


def load_model(path: str | os.PathLike) -> nn.Module:
    """A saved model, whichever way it was saved: a ``.pt2`` program's module (:func:`load_program`,
    archive checked first), else a state_dict with its JSON architecture
    (:func:`afde_nb.models.serialize.load_model`). One loader, so a user need not know which."""
    if is_program_path(path):
        return load_program(path)
    return _load_stack(path)


def example_inputs_of(program: torch.export.ExportedProgram):
    """The positional inputs a program was exported with (a tensor, or a tuple of them), or None."""
    args, kwargs = program.example_inputs or ((), {})
    if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    return args[0] if len(args) == 1 else tuple(args)


def fixed_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size (dim 0 of its tensor inputs) that ``program`` was exported with when torch fixed
    it (exported without ``dynamic_shapes``), else None."""
    user = set(program.graph_signature.user_inputs)
    sizes = [n.meta["val"].shape[0] for n in program.graph.nodes if n.op == "placeholder" and n.name in user
             and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].ndim]
    if not sizes or not all(isinstance(s, int) for s in sizes):
        return None
    return sizes[0]


def check_batch(program: torch.export.ExportedProgram, rows: int, what: str = "calibration") -> None:
    """Refuse ``rows`` inputs (``what``) to a program whose batch size is fixed at another size: its
    guard would fail, and only a new export lets the program take them (:class:`ShapeMismatchError`)."""
    n = fixed_batch(program)
    if n is not None and rows != n:
        raise ShapeMismatchError(f"this program keeps its batch size fixed to {n} (exported without dynamic_shapes), "
                                 f"so {what} of {rows} rows cannot run through it: {DYNAMIC_BATCH}")


__all__ = ["DYNAMIC_BATCH", "PROGRAM_SUFFIX", "batch_bounds", "check_batch", "example_inputs_of", "export_program",
           "fixed_batch", "is_plain_stack", "is_program_path", "load_model", "load_program", "quiet_leafspec", "read_program",
           "to_program", "wants_program"]
