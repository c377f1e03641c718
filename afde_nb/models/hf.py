"""Hugging Face ``transformers`` models: what afde-nb needs to know of them, without importing them.

* Activation classes (``transformers.activations``, the classes of ``ACT2FN``) as the element-wise
  functions they compute (:data:`ACTIVATIONS`: class name -> (name, parameters), the definitions
  in :func:`~afde_nb.core.network.apply_activation`). :mod:`~afde_nb.models.groups` checks each
  instance on a few values before it trusts the name.
* ``Conv1D`` (GPT-2, GPT, ...): a Linear whose weight is stored transposed, (in, out):
  ``y = x @ W + b`` (:func:`is_conv1d`).
* :func:`load_reduced`: a reduced model saved with ``save_pretrained`` has narrower feed-forward
  layers than its config says (``intermediate_size`` is one number for every layer), which
  ``from_pretrained`` refuses; this loader builds the model from its config, reads the saved
  tensors under the model's own names (converted as ``from_pretrained`` converts them), gives each
  module the saved shapes (Linear/Conv1D/convolution, BatchNorm, GroupNorm, PReLU, ...), then
  loads the weights.

Calibration for such models (:func:`afde_nb.compress`): a ``LongTensor`` of ``input_ids``
``(n, seq)`` (the forward's first argument), or a dict of keyword inputs batched on their first
axis (``{"input_ids": ..., "attention_mask": ...}``; values that are not tensors, such as
``use_cache=False``, are passed as they are).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidArgumentError, ShapeMismatchError

_GELU_TANH = lambda m: ("gelu", {"approximate": "tanh"})  # noqa: E731

#: class name in ``transformers.activations`` -> instance -> (activation name, parameters)
ACTIVATIONS = {
    "GELUActivation": lambda m: ("gelu", {"approximate": "none"}),
    "NewGELUActivation": _GELU_TANH,
    "GELUTanh": _GELU_TANH,
    "PytorchGELUTanh": _GELU_TANH,
    "FastGELUActivation": _GELU_TANH,
    "AccurateGELUActivation": _GELU_TANH,
    "ClippedGELUActivation": lambda m: ("gelu", {"approximate": "none", "min": float(m.min), "max": float(m.max)}),
    "QuickGELUActivation": lambda m: ("silu", {"beta": 1.702}),
    "SiLUActivation": lambda m: ("silu", {}),
    "MishActivation": lambda m: ("mish", {}),
    "LinearActivation": lambda m: ("identity", {}),
    "LaplaceActivation": lambda m: ("laplace", {"mu": 0.707107, "sigma": 0.282095}),
    "ReLUSquaredActivation": lambda m: ("relu2", {}),
    "SqrtSoftplusActivation": lambda m: ("sqrt_softplus", {}),
    "XIELUActivation": lambda m: ("xielu", _xielu(m)),
}


def _xielu(m: nn.Module) -> dict:
    # the forward's own arithmetic (in the parameters' dtype), so the values match it exactly
    with torch.no_grad():
        sp = nn.functional.softplus
        return {"alpha_p": float(sp(m.alpha_p).reshape(-1)[0]), "alpha_n": float((m.beta + sp(m.alpha_n)).reshape(-1)[0]),
                "beta": float(m.beta), "eps": float(m.eps)}


def from_transformers(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "transformers"


def activation(m: nn.Module):
    """(name, parameters) for an activation module of ``transformers``, else None."""
    if not from_transformers(m):
        return None
    read = ACTIVATIONS.get(type(m).__name__)
    return read(m) if read is not None else None


def is_conv1d(m: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D``: y = x @ weight + bias, weight (in, out)."""
    return type(m).__name__ == "Conv1D" and from_transformers(m) and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


# ---------------------------------------------------------------------------------------------
# reloading a reduced model


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights ``save_pretrained`` wrote in ``path`` (safetensors or a torch file, sharded or not)."""
    for index, load in (("model.safetensors.index.json", _safetensors), ("pytorch_model.bin.index.json", _torch_file)):
        if (path / index).is_file():
            files = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for f in files:
                out.update(load(path / f))
            return out
    if (path / "model.safetensors").is_file():
        return _safetensors(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        return _torch_file(path / "pytorch_model.bin")
    raise InvalidArgumentError(f"{path} holds no model.safetensors or pytorch_model.bin (save_pretrained's files)")


def _safetensors(f: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(f))


def _torch_file(f: Path) -> dict:
    return torch.load(f, map_location="cpu", weights_only=True)


#: module attribute that records a per-unit width -> which axis of which saved tensor gives it
_WIDTHS = {
    "out_features": ("weight", 0), "in_features": ("weight", 1),  # Linear
    "num_features": ("weight", 0),  # BatchNorm, InstanceNorm (affine)
    "num_channels": ("weight", 0),  # GroupNorm
    "num_parameters": ("weight", 0),  # PReLU
}


def _resize(m: nn.Module, shapes: dict[str, tuple]) -> None:
    """Give module ``m`` the saved shapes ``shapes`` (its own parameter/buffer name -> shape; values
    follow on load): every tensor listed is replaced by an empty one of that shape, and the
    attributes that record the widths follow (a Linear's ``in/out_features``, a Conv1D's ``nx/nf``,
    a convolution's ``in/out_channels`` and, when depthwise, ``groups``; BatchNorm's
    ``num_features``, GroupNorm's ``num_channels``, PReLU's ``num_parameters``). A LayerNorm
    normalises across units and so is never narrowed by a merge: its shape is left as configured."""
    if isinstance(m, nn.LayerNorm):
        raise ShapeMismatchError(f"saved {shapes} do not fit LayerNorm {tuple(m.normalized_shape)}; "
                                 "a LayerNorm is not resized")
    own = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
    if m.__class__.__name__ == "GroupNorm" and isinstance(m, nn.GroupNorm) and "weight" in shapes:
        m.num_channels = int(shapes["weight"][0])
    if "weight" in shapes:
        shape = shapes["weight"]
        if is_conv1d(m):
            m.nx, m.nf = int(shape[0]), int(shape[1])
        elif isinstance(m, nn.modules.conv._ConvNd):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels and shape[1] == 1
            if depthwise:
                m.groups = m.in_channels = m.out_channels = int(shape[0])
            elif m.groups == 1 or int(shape[0]) % m.groups == 0:
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    m.in_channels, m.out_channels = int(shape[0]), int(shape[1]) * m.groups
                else:
                    m.out_channels, m.in_channels = int(shape[0]), int(shape[1]) * m.groups
            else:
                raise ShapeMismatchError(f"saved weight of shape {tuple(shape)} does not fit "
                                         f"{type(m).__name__} with groups={m.groups}")
        else:
            for attr, (_, axis) in _WIDTHS.items():
                if hasattr(m, attr) and isinstance(getattr(m, attr), int) and len(shape) > axis:
                    setattr(m, attr, int(shape[axis]))
    elif "running_mean" in shapes and hasattr(m, "num_features"):  # a BatchNorm without affine
        m.num_features = int(shapes["running_mean"][0])
    for name, shape in shapes.items():
        t = own.get(name)
        if t is None:
            raise ShapeMismatchError(f"{type(m).__name__} has no tensor {name!r} of shape {tuple(shape)}")
        empty = torch.empty(shape, dtype=t.dtype, device=t.device)
        if isinstance(t, nn.Parameter):
            setattr(m, name, nn.Parameter(empty, requires_grad=t.requires_grad))
        else:
            m.register_buffer(name, empty, persistent=name not in getattr(m, "_non_persistent_buffers_set", ()))


def _to_model_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The saved tensors under the model's own parameter names, converted as ``from_pretrained``
    converts a checkpoint (transformers >= 5 renames keys and fuses tensors when it loads:
    ViT's ``attention.attention.query`` is ``attention.q_proj``, Mixtral's per-expert ``w1``/``w3``
    are one 3-D ``gate_up_proj``, GPT-NeoX's ``embed_out`` is ``lm_head``; ``save_pretrained``
    writes the checkpoint's names). Transformers without that machinery: the keys as saved."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (WeightConverter, WeightRenaming, dot_natural_key,
                                                     rename_source_key)
    except ImportError:  # transformers 4: save_pretrained writes the module names
        return state
    import copy

    mapping = get_model_conversion_mapping(model)
    renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
    converters = [t for t in mapping if isinstance(t, WeightConverter)]
    by_pattern = {k: c for c in converters for k in c.source_patterns}
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None) or None
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, object] = {}
    for key, t in sorted(state.items(), key=lambda kv: dot_natural_key(kv[0])):
        new, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if new not in meta and key in meta:
            new, pattern = key, None
        if pattern is None:
            out[new] = t
        else:
            pending.setdefault(new, copy.deepcopy(by_pattern[pattern])).add_tensor(new, key, pattern, t)
    for name, conv in pending.items():
        for target, t in conv.convert(name, model=model, config=model.config).items():
            out[target] = t[0] if isinstance(t, list) else t
    return out


def load_reduced(cls_or_config, path: str | os.PathLike, **config_kwargs) -> nn.Module:
    """A model that :func:`afde_nb.compress` reduced and ``save_pretrained`` wrote to ``path``.

    ``cls_or_config``: the model class (``GPT2LMHeadModel``; its config is read from ``path``) or a
    config (its ``architectures[0]`` names the class, as ``save_pretrained`` records it). The
    model is built from the config (random weights); the saved tensors are read under the model's
    own parameter names, converted as ``from_pretrained`` converts them (transformers 5 saves
    under the checkpoint's names, which can differ from the modules': ViT, Swin, GPT-NeoX, and the
    per-expert tensors of Mixtral/Qwen2-MoE fused into 3-D parameters); every module whose saved
    tensors have other shapes is resized to them (a Linear, Conv1D or convolution of a lumped
    layer, and the per-unit modules at its width: BatchNorm, GroupNorm, PReLU, a depthwise
    convolution, fused expert tensors); then the weights are loaded (``strict``: only weights tied
    to a loaded one, such as GPT-2's ``lm_head``, may be missing). Returned in eval mode.

    >>> c.model.save_pretrained("reduced")                       # doctest: +SKIP
    >>> m = load_reduced(transformers.GPT2LMHeadModel, "reduced")  # doctest: +SKIP
    """
    import transformers

    path = Path(path)
    if isinstance(cls_or_config, type):
        cls = cls_or_config
        config = cls.config_class.from_pretrained(str(path), **config_kwargs)
    elif isinstance(cls_or_config, transformers.PretrainedConfig):
        config = cls_or_config
        names = getattr(config, "architectures", None) or []
        cls = getattr(transformers, names[0], None) if names else None
        if cls is None:
            raise InvalidArgumentError(f"the config names no model class transformers has ({names}); pass the class")
    else:
        raise InvalidArgumentError(f"expected a transformers model class or config, got {type(cls_or_config).__name__}")
    model = cls(config)
    state = _to_model_keys(model, _state_dict(path))
    mods = dict(model.named_modules())
    own = model.state_dict(keep_vars=True)
    changed: dict[str, dict[str, tuple]] = {}
    for key, t in state.items():
        mine = own.get(key)
        if mine is None or tuple(mine.shape) == tuple(t.shape):
            continue
        owner, _, leaf = key.rpartition(".")
        if owner not in mods:
            continue
        changed.setdefault(owner, {})[leaf] = tuple(t.shape)
    for owner, shapes in changed.items():
        _resize(mods[owner], shapes)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(p) for k, p in model.state_dict(keep_vars=True).items() if k in state}
    params = model.state_dict(keep_vars=True)
    import re

    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_save", None) or [])]
    # tied to a loaded weight, or never saved (Marian's sinusoidal positions: built from the config)
    untied = [k for k in missing if id(params[k]) not in loaded and not any(p.search(k) for p in ignored)]
    if untied or unexpected:
        raise ShapeMismatchError(f"{path} does not fit {cls.__name__}: missing {untied[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
