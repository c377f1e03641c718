"""A model's parameters and buffers by attribute path: read, and replaced in a copy being written
back (kept trainable as they were). One place for every writer (surgery's chains, gated chains)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InvalidWeightsError


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod, _, leaf = path.rpartition(".")
    return (root.get_submodule(mod) if mod else root), leaf


def get_tensor(root: nn.Module, path: str) -> torch.Tensor:
    owner, leaf = _owner(root, path)
    return getattr(owner, leaf)


def set_tensor(root: nn.Module, path: str, value: torch.Tensor) -> None:
    """Replace a parameter (kept trainable as it was) or buffer of ``root`` by ``value``."""
    owner, leaf = _owner(root, path)
    old = getattr(owner, leaf)
    value = value.to(dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(owner, leaf, value)


def weight(root: nn.Module, a) -> torch.Tensor:
    """Layer ``a``'s weight as (out, in, *kernel): a transposed Linear's (in, out) weight (Conv1D) as a view."""
    w = get_tensor(root, a.weight)
    return w.t() if a.transposed else w


def finite_array(t: torch.Tensor, name: str) -> np.ndarray:
    """``t`` as a float64 array; NaN or infinite values are an error naming ``name``."""
    a = t.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(a).all():
        raise InvalidWeightsError(f"{name} contains NaN or infinite values; afde-nb needs finite weights")
    return a


def device_meta(root: nn.Module, name: str) -> dict:
    """``{"device": ...}`` where tensor ``name`` of ``root`` is not on the CPU (a chain's arithmetic
    then runs there, :mod:`afde_nb.core.compute`), else {}."""
    dev = get_tensor(root, name).device
    return {} if dev.type == "cpu" else {"device": str(dev)}
