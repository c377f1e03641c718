"""Hugging Face ``transformers`` models: what afde-nb needs to know of them, without importing them.

* Activation classes (``transformers.activations``, the classes of ``ACT2FN``) as the element-wise
  functions they compute (:data:`ACTIVATIONS`: class name -> (name, parameters), the definitions
  in :func:`~afde_nb.core.network.apply_activation`). :mod:`~afde_nb.models.groups` checks each
  instance on a few values before it trusts the name.
* ``Conv1D`` (GPT-2, GPT, ...): a Linear whose weight is stored transposed, (in, out):
  ``y = x @ W + b`` (:func:`is_conv1d`).
* :func:`load_reduced`: a reduced model saved with ``save_pretrained`` has narrower feed-forward
  layers than its config says (``intermediate_size`` is one number for every layer), which
  ``from_pretrained`` refuses; this loader builds the model from its config, gives each
  Linear/Conv1D the saved shape, then loads the weights.

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


def _resize(m: nn.Module, shape: tuple, bias: tuple | None) -> None:
    """Give a Linear, Conv1D or convolution the weight shape ``shape`` (values follow on load)."""
    if is_conv1d(m):
        m.nx, m.nf = int(shape[0]), int(shape[1])
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = int(shape[0]), int(shape[1])
    elif isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1:
        m.out_channels, m.in_channels = int(shape[0]), int(shape[1])
    else:
        raise ShapeMismatchError(f"saved weight of shape {tuple(shape)} does not fit {type(m).__name__} "
                                 f"({tuple(m.weight.shape)}); only Linear, Conv1D and convolution widths change")
    m.weight = nn.Parameter(torch.empty(shape, dtype=m.weight.dtype, device=m.weight.device),
                            requires_grad=m.weight.requires_grad)
    if bias is not None and getattr(m, "bias", None) is not None:
        m.bias = nn.Parameter(torch.empty(bias, dtype=m.bias.dtype, device=m.bias.device),
                              requires_grad=m.bias.requires_grad)


def load_reduced(cls_or_config, path: str | os.PathLike, **config_kwargs) -> nn.Module:
    """A model that :func:`afde_nb.compress` reduced and ``save_pretrained`` wrote to ``path``.

    ``cls_or_config``: the model class (``GPT2LMHeadModel``; its config is read from ``path``) or a
    config (its ``architectures[0]`` names the class, as ``save_pretrained`` records it). The
    model is built from the config (random weights), each Linear/Conv1D/convolution whose saved
    weight has another shape is resized to it (a lumped feed-forward layer: its width is no longer
    ``intermediate_size``), and the saved weights are loaded (``strict``: only weights tied to a
    loaded one, such as GPT-2's ``lm_head``, may be missing). Returned in eval mode.

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
    state = _state_dict(path)
    mods = dict(model.named_modules())
    for key, t in state.items():
        owner, _, leaf = key.rpartition(".")
        m = mods.get(owner)
        if leaf != "weight" or m is None or getattr(m, "weight", None) is None or tuple(m.weight.shape) == tuple(t.shape):
            continue
        b = state.get(f"{owner}.bias")
        _resize(m, tuple(t.shape), tuple(b.shape) if b is not None else None)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(p) for k, p in model.state_dict(keep_vars=True).items() if k in state}
    params = model.state_dict(keep_vars=True)
    untied = [k for k in missing if id(params[k]) not in loaded]
    if untied or unexpected:
        raise ShapeMismatchError(f"{path} does not fit {cls.__name__}: missing {untied[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
