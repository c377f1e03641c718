"""Save and load reduced models so that stock torch can rebuild them.

A model is written as its ``state_dict`` (``.pt`` via ``torch.save``, or ``.safetensors``) plus a
JSON architecture (``<stem>.json`` beside it; safetensors also carry it in their metadata).
Loading uses ``torch.load(weights_only=True)``: afde-nb never unpickles arbitrary objects.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import UnsafeFileError, UnsupportedLayerError

FORMAT = "afde-nb.sequential/1"
_ARCH_MODULES = {"Linear", "Tanh", "Sigmoid", "ReLU", "LeakyReLU", "Identity", "Flatten"}


def architecture(model: nn.Sequential, **info) -> dict:
    """JSON-able description of a plain Sequential of Linear and activation modules."""
    layers = []
    for m in model:
        if isinstance(m, nn.Linear):
            layers.append({"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                           "bias": m.bias is not None})
        elif isinstance(m, nn.LeakyReLU):
            layers.append({"type": "LeakyReLU", "negative_slope": m.negative_slope})
        elif isinstance(m, nn.Flatten):
            layers.append({"type": "Flatten", "start_dim": m.start_dim, "end_dim": m.end_dim})
        elif type(m).__name__ in _ARCH_MODULES:
            layers.append({"type": type(m).__name__})
        else:
            raise UnsupportedLayerError(f"cannot describe module {type(m).__name__} in the architecture JSON")
    dtype = next((str(p.dtype).replace("torch.", "") for p in model.parameters()), "float32")
    return {"format": FORMAT, "dtype": dtype, "layers": layers, "afde_nb": info}


def build(arch: dict) -> nn.Sequential:
    """The empty Sequential an architecture describes (the same few lines work with stock torch)."""
    if arch.get("format") != FORMAT:
        raise UnsafeFileError(f"architecture format {arch.get('format')!r} is not {FORMAT!r}")
    mods = []
    for spec in arch["layers"]:
        kind = spec.get("type")
        if kind not in _ARCH_MODULES:
            raise UnsupportedLayerError(f"architecture names unsupported module {kind!r}")
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        mods.append(getattr(nn, kind)(**kwargs))
    return nn.Sequential(*mods).to(getattr(torch, arch.get("dtype", "float32")))


def arch_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_model(model: nn.Sequential, path: str | Path, **info) -> list[Path]:
    """Write ``model``'s state_dict to ``path`` (.pt/.pth or .safetensors) and its JSON architecture."""
    path = Path(path)
    arch = architecture(model, **info)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"afde_nb_architecture": json.dumps(arch)})
    elif path.suffix in (".pt", ".pth"):
        torch.save(state, path)
    else:
        raise ValueError(f"unknown file type {path.suffix!r}; use .pt, .pth or .safetensors")
    ap = arch_path(path)
    ap.write_text(json.dumps(arch, indent=2))
    return [path, ap]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` from ``.pt``/``.pth`` (weights_only) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UnsafeFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise UnsafeFileError(
            f"{path} is not a plain tensor state_dict (loaded with weights_only=True, which refuses "
            f"pickled objects such as whole models): {str(exc).splitlines()[0]}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise UnsafeFileError(f"{path} does not hold a state_dict (a dict of name -> tensor)")
    return dict(obj)


def load_tensor(path: str | Path) -> torch.Tensor:
    """One tensor from ``.npy`` (no pickles), or ``.pt``/``.safetensors`` holding a tensor or a
    one-entry dict (calibration inputs)."""
    path = Path(path)
    if path.suffix == ".npy":
        import numpy as np

        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise UnsafeFileError(f"{path} is not a plain numeric .npy array: {exc}") from exc
    if path.suffix == ".safetensors":
        obj = load_state_dict(path)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise UnsafeFileError(f"{path} is not a plain tensor file (weights_only=True): "
                                  f"{str(exc).splitlines()[0]}") from exc
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise UnsafeFileError(f"{path} does not hold a single tensor")
    return obj


def load_model(path: str | Path) -> nn.Sequential:
    """Rebuild a model written by :func:`save_model` (architecture JSON beside it, or in safetensors)."""
    path = Path(path)
    state = load_state_dict(path)
    arch = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "afde_nb_architecture" in meta:
            arch = json.loads(meta["afde_nb_architecture"])
    if arch is None:
        ap = arch_path(path)
        if not ap.is_file():
            raise FileNotFoundError(f"no architecture file {ap} beside {path}")
        arch = json.loads(ap.read_text())
    model = build(arch)
    model.load_state_dict(state)
    return model.eval()
