"""Save and load reduced models so that stock torch can rebuild them.

A model is written as its ``state_dict`` (``.pt``/``.pth`` via ``torch.save``, or ``.safetensors``)
plus a JSON architecture (``<stem>.json`` beside it; safetensors also carry it in their metadata).
Both files are written to temporary files in the target directory and renamed into place, so an
interrupted save leaves the previous pair whole. Loading uses ``torch.load(weights_only=True)``:
afde-nb never unpickles arbitrary objects (:class:`~afde_nb.errors.UnsafeFileError`); a file that is
not what was asked for is a :class:`~afde_nb.errors.CorruptFileError`; a file that cannot be written
a :class:`~afde_nb.errors.WriteError` (also an ``OSError``). Every failure raises an
:mod:`afde_nb.errors` type.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import (AfdeError, CorruptFileError, InvalidArchitectureError, InvalidArgumentError,
                      MissingDependencyError, MissingFileError, ShapeMismatchError, UnsafeFileError,
                      UnsupportedLayerError, WriteError)

FORMAT = "afde-nb.sequential/1"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
_META_KEY = "afde_nb_architecture"
# the modules an architecture may name, with the constructor arguments each may carry
_ARCH_MODULES = {"Linear": {"in_features", "out_features", "bias"}, "Tanh": set(), "Sigmoid": set(),
                 "ReLU": set(), "LeakyReLU": {"negative_slope"}, "Identity": set(),
                 "Flatten": {"start_dim", "end_dim"}}
# --activation / activation= of an inferred MLP -> the module between its Linear layers (its spec)
ACTIVATIONS = {"tanh": {"type": "Tanh"}, "sigmoid": {"type": "Sigmoid"}, "relu": {"type": "ReLU"},
               "leaky_relu": {"type": "LeakyReLU", "negative_slope": 0.01}, "identity": None}
# a torch.export program's batch dimension left free (else torch fixes it at the traced batch size)
DYNAMIC_SHAPES = "dynamic_shapes=({0: torch.export.Dim('batch')},)"
# where a model that is no Linear stack goes instead: its own forward, captured by torch.export
PROGRAM_ROUTE = (f"save the model as a torch.export program and compress the .pt2: torch.export.save(torch.export."
                 f"export(model, (x,), {DYNAMIC_SHAPES}), 'model.pt2')")


def architecture(model: nn.Sequential, **info) -> dict:
    """JSON-able description of a plain Sequential of Linear and activation modules."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(f"only a plain torch.nn.Sequential can be described as an architecture, "
                                    f"got {type(model).__name__}")
    layers = []
    for m in model:
        if isinstance(m, nn.Linear):
            layers.append({"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                           "bias": m.bias is not None})
        elif isinstance(m, nn.LeakyReLU):
            layers.append({"type": "LeakyReLU", "negative_slope": m.negative_slope})
        elif isinstance(m, nn.Flatten):
            layers.append({"type": "Flatten", "start_dim": m.start_dim, "end_dim": m.end_dim})
        elif type(m).__name__ in _ARCH_MODULES and type(m) is getattr(nn, type(m).__name__):
            layers.append({"type": type(m).__name__})
        else:
            raise UnsupportedLayerError(f"cannot describe module {type(m).__name__} in the architecture JSON")
    dtype = next((str(p.dtype).replace("torch.", "") for p in model.parameters()), "float32")
    return {"format": FORMAT, "dtype": dtype, "layers": layers, "afde_nb": info}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_spec(i: int, spec: object) -> tuple[str, dict]:
    where = f"architecture layer {i}"
    if not isinstance(spec, Mapping):
        raise InvalidArchitectureError(f"{where} must be an object with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _ARCH_MODULES:
        raise UnsupportedLayerError(f"{where} names unsupported module {kind!r}; accepted: {sorted(_ARCH_MODULES)}; "
                                    f"for any other model, {PROGRAM_ROUTE}")
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(kwargs) - _ARCH_MODULES[kind])
    if unknown:
        raise InvalidArchitectureError(f"{where} ({kind}) has unknown field(s) {unknown}; accepted: "
                                       f"{sorted(_ARCH_MODULES[kind])}")
    if kind == "Linear":
        for k in ("in_features", "out_features"):
            if not _is_int(kwargs.get(k)) or kwargs[k] < 0:
                raise InvalidArchitectureError(f"{where} (Linear) needs '{k}', an integer >= 0, got {kwargs.get(k)!r}")
        if not isinstance(kwargs.get("bias", True), bool):
            raise InvalidArchitectureError(f"{where} (Linear): 'bias' must be true or false, got {kwargs['bias']!r}")
    elif kind == "LeakyReLU" and "negative_slope" in kwargs:
        s = kwargs["negative_slope"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise InvalidArchitectureError(f"{where} (LeakyReLU): 'negative_slope' must be a finite number, got {s!r}")
    elif kind == "Flatten":
        for k, v in kwargs.items():
            if not _is_int(v):
                raise InvalidArchitectureError(f"{where} (Flatten): '{k}' must be an integer, got {v!r}")
    return kind, kwargs


def build(arch: Mapping) -> nn.Sequential:
    """The empty Sequential an architecture describes (the same few lines work with stock torch).

    Raises :class:`InvalidArchitectureError` for anything but a well-formed ``afde-nb.sequential/1``
    description, :class:`UnsupportedLayerError` for modules outside it and
    :class:`ShapeMismatchError` when consecutive Linear layers do not chain.
    """
    if not isinstance(arch, Mapping):
        raise InvalidArchitectureError(f"an architecture is a JSON object, got {type(arch).__name__}")
    if arch.get("format") != FORMAT:
        raise InvalidArchitectureError(f"architecture format {arch.get('format')!r} is not {FORMAT!r}")
    layers = arch.get("layers")
    if not isinstance(layers, list):
        raise InvalidArchitectureError(f"the architecture needs 'layers', a list, got {layers!r}")
    name = arch.get("dtype", "float32")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArchitectureError(f"architecture dtype {arch.get('dtype')!r} is not a torch floating-point type")
    mods, prev = [], None
    for i, spec in enumerate(layers):
        kind, kwargs = _check_spec(i, spec)
        if kind == "Linear":
            if prev is not None and kwargs["in_features"] != prev[1]:
                raise ShapeMismatchError(f"architecture layer {i} (Linear) takes {kwargs['in_features']} inputs but "
                                         f"layer {prev[0]} gives {prev[1]}")
            prev = (i, kwargs["out_features"])
        mods.append(getattr(nn, kind)(**kwargs))
    return nn.Sequential(*mods).to(dtype)


def arch_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def weights_format(path: str | Path) -> str:
    """``"safetensors"`` or ``"torch"`` from the file name; anything else is an
    :class:`InvalidArgumentError`."""
    suffix = Path(path).suffix
    if suffix not in WEIGHT_SUFFIXES:
        raise InvalidArgumentError(f"unknown weights file type {suffix or '(none)'!r} in {str(path)!r}; "
                                   f"use one of {', '.join(WEIGHT_SUFFIXES)}")
    return "safetensors" if suffix == ".safetensors" else "torch"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as exc:
        raise MissingDependencyError(
            ".safetensors files need the 'safetensors' package: pip install \".[safetensors]\" in the afde-nb "
            "checkout") from exc
    return safetensors


# ---------------------------------------------------------------------------------------------- saving


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _discard(*paths: Path | None) -> None:
    """Remove temporaries; never raises (under a path that is a regular file, even unlink fails with
    NotADirectoryError, which would hide the error being reported)."""
    for p in paths:
        if p is not None:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


def write_reason(exc: BaseException) -> str:
    """The cause of a failed write in a few words: the OS's own text where there is one (torch's
    and safetensors' errors carry theirs inside a longer message)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _short(exc)


def check_writable(path: str | Path, sidecar: bool = False) -> Path:
    """Refuse, before any work is done, a ``path`` that cannot be written: a directory
    (:class:`InvalidArgumentError`), or a file whose folder is under a regular file or cannot be
    written (:class:`WriteError`). ``sidecar``: also the ``<stem>.json`` written beside it.

    The folder need not exist (saving creates it): the nearest existing folder above it is probed
    by creating and removing a temporary file there, which sees what ``os.access`` does not (a
    read-only file system, ACLs; as root, permission bits do not stop writes, and the probe agrees).
    """
    path = Path(path)
    for p in (path, arch_path(path)) if sidecar else (path,):
        if p.is_dir():
            raise InvalidArgumentError(f"cannot write {p}: it is a directory")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:  # exists() is False under a regular file too
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write {path}: {existing} is a file, not a folder", path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".afde-write-check-", dir=existing)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: the folder {existing} is not writable "
                         f"({write_reason(exc)})", path) from exc
    os.close(fd)
    _discard(Path(probe))
    return path


def save_model(model: nn.Sequential, path: str | Path, **info) -> list[Path]:
    """Write ``model``'s state_dict to ``path`` (.pt/.pth or .safetensors) and its JSON architecture
    (``<stem>.json``); returns both paths.

    Atomic as a pair: both files are first written in full to temporary files in the same folder,
    then renamed over the old ones (the weights first; if the second rename fails the old weights
    are put back). An interrupted or failed save leaves the previous pair (or nothing) in place,
    never a truncated file or weights next to another model's architecture. A path that cannot be
    written raises :class:`WriteError` naming it and the cause, checked before anything is
    serialised (:func:`check_writable`).
    """
    path = Path(path)
    fmt = weights_format(path)
    arch = architecture(model, **info)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    st = _safetensors() if fmt == "safetensors" else None
    ap = arch_path(path)
    check_writable(path, sidecar=True)
    # what a failed write raises: torch's writer reports an unwritable file as a RuntimeError
    # ("open file failed"), safetensors as its own SafetensorError; both become a WriteError
    failures = (OSError, RuntimeError) + ((st.SafetensorError,) if st is not None else ())
    tmp_w, tmp_a, backup = _temp_beside(path), _temp_beside(ap), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if st is not None:
            st.torch.save_file(state, str(tmp_w), metadata={_META_KEY: json.dumps(arch)})
        else:
            torch.save(state, tmp_w)
        _fsync(tmp_w)
        tmp_a.write_text(json.dumps(arch, indent=2))
        _fsync(tmp_a)
        if path.is_file():  # kept until the pair is complete, to restore if the second rename fails
            backup = _temp_beside(path)
            try:
                os.link(path, backup)
            except OSError:
                shutil.copy2(path, backup)
        os.replace(tmp_w, path)
        try:
            os.replace(tmp_a, ap)
        except BaseException:
            if backup is not None:
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)
            raise
    except failures as exc:
        if isinstance(exc, AfdeError):
            raise
        raise WriteError(f"cannot write {path}: {write_reason(exc)}", path) from exc
    finally:
        _discard(tmp_w, tmp_a, backup)
    try:  # make the renames durable where the platform allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return [path, ap]


# --------------------------------------------------------------------------------------------- loading


def _readable(path: str | Path, what: str = "file") -> Path:
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a directory, not a {what}")
    if not path.exists():
        raise MissingFileError(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise InvalidArgumentError(f"{path} is not readable (permission denied)")
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text, re.S)  # torch's own explanation, minus its advice
    line = next((l.strip() for l in (m.group(1) if m else text).splitlines() if l.strip()), "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    line = line if len(line) <= 200 else line[:197] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _names_objects(path: Path) -> bool:
    """Whether ``path`` is a whole pickle (read to its STOP, nothing run) that imports Python objects:
    torch's unpickler can refuse such a file on an earlier opcode (protocol 4's FRAME) without
    saying why, and a file that would run code is unsafe, not corrupt."""
    import pickletools

    names = False
    try:
        with open(path, "rb") as f:
            for op, _, _ in pickletools.genops(f):
                names = names or op.name in ("GLOBAL", "STACK_GLOBAL", "INST")
    except Exception:  # noqa: BLE001 - not a whole pickle: corrupt, or another format
        return False
    return names


def _torch_load(path: Path, what: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises anything (IndexError, KeyError, UnicodeDecodeError, ...)
        text = str(exc)
        if "Unsupported global" in text or _names_objects(path):
            raise UnsafeFileError(
                f"{path} holds pickled Python objects, not a plain tensor {what}: afde-nb loads with "
                f"torch.load(weights_only=True) and never unpickles objects (save model.state_dict(), not the "
                f"model) [{_short(exc)}]") from exc
        raise CorruptFileError(f"{path} is not a plain tensor {what} that torch.load(weights_only=True) can read "
                               f"(corrupt, truncated or not a torch file) [{_short(exc)}]") from exc


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    st = _safetensors()
    try:
        return dict(st.torch.load_file(str(path)))
    except Exception as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file (corrupt, truncated or of another "
                               f"format) [{_short(exc)}]") from exc


def _check_state(obj: object, path: object) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in obj.items()):
        raise CorruptFileError(f"{path} does not hold a state_dict (a dict of name -> tensor)")
    return dict(obj)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` from ``.pt``/``.pth`` (weights_only) or ``.safetensors``.

    A missing file raises :class:`MissingFileError`; a directory or an unreadable file
    :class:`InvalidArgumentError`; one that holds pickled objects :class:`UnsafeFileError`; a
    corrupt or truncated file, or one holding anything but tensors, :class:`CorruptFileError`.
    """
    path = _readable(path, "weights file")
    if path.suffix == ".safetensors":
        return _safetensors_load(path)
    obj = _torch_load(path, "state_dict")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return _check_state(obj, path)


def load_tensor(path: str | Path) -> torch.Tensor:
    """One tensor from ``.npy`` (no pickles), or ``.pt``/``.safetensors`` holding a tensor or a
    one-entry dict (calibration inputs)."""
    path = _readable(path, "tensor file")
    if path.suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, OSError, EOFError, ... on bad files
            if "allow_pickle" in str(exc):  # an object array: its items are pickles
                raise UnsafeFileError(f"{path} holds pickled Python objects, not a plain numeric .npy array: "
                                      f"afde-nb never unpickles objects [{_short(exc)}]") from exc
            raise CorruptFileError(f"{path} is not a plain numeric .npy array [{_short(exc)}]") from exc
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise CorruptFileError(f"{path} is not a plain numeric .npy array (it holds "
                                   f"{getattr(arr, 'dtype', type(arr).__name__)})")
        return torch.from_numpy(arr)
    obj = _safetensors_load(path) if path.suffix == ".safetensors" else _torch_load(path, "tensor")
    if isinstance(obj, Mapping) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise CorruptFileError(f"{path} does not hold a single tensor (or a dict of exactly one)")
    return obj


def read_architecture(path: str | Path) -> dict:
    """The architecture JSON at ``path`` (checked by :func:`build` when used)."""
    path = _readable(path, "architecture JSON")
    try:
        arch = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArchitectureError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(arch, dict):
        raise InvalidArchitectureError(f"{path} does not hold an architecture (a JSON object)")
    return arch


def find_architecture(path: str | Path) -> dict | None:
    """The architecture saved with the weights file ``path``: the safetensors metadata, else the
    ``<stem>.json`` beside it; ``None`` when there is neither."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        st = _safetensors()
        try:
            with st.safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:
            raise CorruptFileError(f"{path} is not a readable safetensors file [{_short(exc)}]") from exc
        if _META_KEY in meta:
            try:
                return json.loads(meta[_META_KEY])
            except ValueError as exc:
                raise InvalidArchitectureError(f"the architecture in {path}'s metadata is not valid JSON: "
                                               f"{exc}") from exc
    ap = arch_path(path)
    return read_architecture(ap) if ap.exists() else None


# ------------------------------------------------------------------------------ state_dict -> model


def _natural_key(name: str) -> tuple:
    """Module names in numeric order: ``2`` before ``10``, ``fc2`` before ``fc10``."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def infer_architecture(state: Mapping[str, torch.Tensor], activation: str | None = None) -> tuple[dict, dict]:
    """An MLP architecture read off a state_dict of Linear layers, and the state_dict renamed to it.

    Every entry must be ``<name>.weight`` (2-D) with an optional ``<name>.bias`` (1-D). Layers are
    taken in *numeric* order of their names (``2.weight`` before ``10.weight``, whatever the order
    of the file), with ``activation`` between consecutive layers and none after the last. A
    state_dict does not record its activations, so with two layers or more ``activation`` is
    required (an :class:`InvalidArgumentError` without it), never assumed.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    hint = "; pass the architecture JSON (--arch / arch=)"
    other = f"; only a stack of Linear layers is rebuilt from a state_dict: for any other model, {PROGRAM_ROUTE}"
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        prefix, _, part = key.rpartition(".")
        if part not in ("weight", "bias"):
            raise UnsupportedLayerError(f"cannot infer an MLP from this state_dict: {key!r} is not a Linear "
                                        f"layer's '<name>.weight' or '<name>.bias'{other}")
        layers.setdefault(prefix, {})[part] = value
    if not layers:
        raise UnsupportedLayerError(f"cannot infer an MLP from an empty state_dict{hint}")
    names = sorted(layers, key=_natural_key)
    specs, renamed, prev = [], {}, None
    act = ACTIVATIONS.get(activation)
    for k, name in enumerate(names):
        dot = f"{name}." if name else ""
        w, b = layers[name].get("weight"), layers[name].get("bias")
        if w is None:
            raise UnsupportedLayerError(f"cannot infer an MLP from this state_dict: {dot}bias has no {dot}weight{hint}")
        if w.ndim != 2 or not w.is_floating_point():
            raise UnsupportedLayerError(f"cannot infer an MLP from this state_dict: {dot}weight has shape "
                                        f"{tuple(w.shape)} ({w.dtype}); a Linear weight is 2-D floating point{other}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ShapeMismatchError(f"{dot}bias has shape {tuple(b.shape)} but {dot}weight has {w.shape[0]} rows")
        if prev is not None and w.shape[1] != prev[1]:
            raise ShapeMismatchError(
                f"{dot}weight takes {w.shape[1]} inputs but the layer before it in numeric order "
                f"({prev[0]}) gives {prev[1]}{hint}")
        if k and act is not None:
            specs.append(dict(act))
        renamed[f"{len(specs)}.weight"] = w
        if b is not None:
            renamed[f"{len(specs)}.bias"] = b
        specs.append({"type": "Linear", "in_features": int(w.shape[1]), "out_features": int(w.shape[0]),
                      "bias": b is not None})
        prev = (f"{dot}weight", int(w.shape[0]))
    if activation is None and len(names) > 1:
        raise InvalidArgumentError(
            f"this state_dict's {len(names)} Linear layers come without an architecture, and a state_dict does not "
            f"record the activation between them: give it (activation= / --activation: "
            f"{', '.join(sorted(ACTIVATIONS))}) or the architecture JSON (arch= / --arch)")
    dtype = str(layers[names[0]]["weight"].dtype).replace("torch.", "")
    return {"format": FORMAT, "dtype": dtype, "layers": specs, "afde_nb": {"inferred": True}}, renamed


def model_from_state_dict(state: Mapping[str, torch.Tensor], arch: Mapping | str | Path | None = None, *,
                          activation: str | None = None) -> nn.Sequential:
    """Rebuild a model (in eval mode) from its weights.

    ``arch`` is an architecture (a dict, or the path of its JSON file, which must exist). Without
    it the model is inferred: Linear layers in numeric order of their names, bias optional,
    ``activation`` (``tanh``, ``sigmoid``, ``relu``, ``leaky_relu`` (slope 0.01, torch's default)
    or ``identity``; required with two layers or more) between them (see
    :func:`infer_architecture`). Keys or shapes that do not match raise
    :class:`InvalidArchitectureError` / :class:`ShapeMismatchError`.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise InvalidArgumentError(f"state must be a state_dict (a dict of name -> tensor), got {type(state).__name__}")
    state = dict(state)
    if isinstance(arch, (str, os.PathLike)):
        arch = read_architecture(arch)
    if arch is None:
        arch, state = infer_architecture(state, activation)
    model = build(arch)
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise InvalidArchitectureError(
            f"the weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ShapeMismatchError(f"the weights do not fit the architecture: {k} has shape "
                                     f"{tuple(state[k].shape)}, the architecture needs {tuple(v.shape)}")
    model.load_state_dict(state)
    return model.eval()


def load_model(path: str | Path) -> nn.Sequential:
    """Rebuild a model written by :func:`save_model` (architecture JSON beside it, or in safetensors)."""
    path = Path(path)
    state = load_state_dict(path)
    arch = find_architecture(path)
    if arch is None:
        raise MissingFileError(f"no architecture file {arch_path(path)} beside {path}")
    return model_from_state_dict(state, arch)
