"""Write a reduced model as a ``torch.export`` program (``.pt2``) that stock torch loads, and read
one back.

A model that is not one plain Linear stack (a residual MLP, a transformer layer, a CNN) has no
architecture JSON: its forward is the user's own code. ``torch.export`` captures that forward as a
graph of ATen operations together with the weights, so ``torch.export.load(path).module()`` runs
the reduced model without afde-nb and without the user's class. The batch dimension (dim 0 of
every input) stays dynamic.

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
import io
import json
import logging
import os
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import (CorruptFileError, ExportError, InvalidArgumentError, ShapeMismatchError, UnsafeFileError,
                      UnsupportedLayerError)
from .serialize import DYNAMIC_SHAPES, _fsync, _readable, _short, architecture

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


def _as_args(model: nn.Module, example_inputs) -> tuple[torch.Tensor, ...]:
    """The positional inputs to trace with: a tensor (or array), or a tuple of them."""
    if example_inputs is None:
        example_inputs = _default_inputs(model)
        if example_inputs is None:
            raise InvalidArgumentError(
                f"exporting {type(model).__name__} needs example inputs: pass example_inputs= (a batch the model "
                "takes, e.g. a few calibration rows); a compression made with calibration data keeps two rows")
    items = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    ref = next(model.parameters(), None)
    args = []
    for k, x in enumerate(items):
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if t.ndim == 0 or len(t) == 0:
            raise InvalidArgumentError(f"example input {k} needs a non-empty batch dimension (dim 0), got shape "
                                       f"{tuple(t.shape)}")
        if ref is not None:
            t = t.to(device=ref.device, dtype=ref.dtype if t.is_floating_point() else t.dtype)
        if len(t) == 1:  # torch.export fixes a dimension of size 1, so trace with two rows
            t = t.repeat(2, *([1] * (t.ndim - 1)))
        args.append(t)
    return tuple(args)


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


def to_program(model: nn.Module, example_inputs=None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode copy of ``model`` on ``example_inputs`` with a dynamic
    batch dimension. A model torch cannot export raises :class:`ExportError` with torch's reason."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"only a torch.nn.Module can be exported, got {type(model).__name__}")
    args = _as_args(model, example_inputs)
    batch = torch.export.Dim("batch", min=1)
    try:
        with quiet_leafspec():
            frozen = copy.deepcopy(model)
        _eval(frozen)
        with _quiet_torch():
            return torch.export.export(frozen, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as exc:  # torch raises many kinds (UserError, ConstraintViolation, TypeError, ...)
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        hint = (f"; a torch.export program exported without dynamic_shapes keeps its batch size fixed: {DYNAMIC_BATCH}"
                if isinstance(model, torch.fx.GraphModule) and "specialized" in str(exc) else "")
        raise ExportError(f"torch.export cannot export {type(model).__name__} on inputs shaped {shapes} with a "
                          f"dynamic batch dimension: {_reason(exc)}{hint}") from exc


def export_program(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """Write ``model`` as a ``torch.export`` program to ``path`` (``.pt2``); returns the path.

    ``example_inputs``: a batch the model takes (a tensor or array; a tuple for several positional
    inputs), only traced, never stored as data the program needs; None works for a Sequential
    that starts with a Linear layer. The file is written to a temporary file beside ``path`` and
    renamed into place, so a failed export leaves the old file, or none. Load it with stock torch:
    ``torch.export.load(path).module()``.
    """
    path = Path(path)
    _check_suffix(path)
    if path.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: it is a directory")
    program = to_program(model, example_inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix: torch.export warns about other names
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{PROGRAM_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            torch.export.save(program, f)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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


__all__ = ["DYNAMIC_BATCH", "PROGRAM_SUFFIX", "check_batch", "example_inputs_of", "export_program", "fixed_batch",
           "is_plain_stack", "is_program_path", "load_program", "quiet_leafspec", "read_program", "to_program",
           "wants_program"]
