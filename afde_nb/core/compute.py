"""Where and in what the heavy arithmetic runs (issue 29): torch, on the model's device, in its dtype.

The chains' weights are held as numpy arrays (:class:`~afde_nb.core.network.Network`) and the C++
engine takes arrays; the arithmetic over calibration rows (the units' values, their activations,
repair's Gram matrices and solves) is what costs, and it runs in torch: on the device the model's
weights sit on (``Network.meta["device"]``, set at capture; CPU when absent) and in the model's
dtype (float32 for float32, float16 and bfloat16 models: half-precision products on rows are too
coarse for the bounds and, on a CPU, slow; float64 for a float64 model). Where a float64 sum
would change a result (repair's Gram matrix) the caller widens explicitly and says why.
Nothing here needs a GPU: the same code runs wherever the tensors are.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def dtype_of(dtype: str) -> torch.dtype:
    """The dtype the arithmetic of a model of ``dtype`` (a name: "float32", "float64", ...) runs in."""
    return torch.float64 if str(dtype).replace("torch.", "") == "float64" else torch.float32


def device_of(net) -> torch.device:
    """The device of the model a chain was read from (``net.meta["device"]``; CPU when not given)."""
    return torch.device(getattr(net, "meta", {}).get("device") or "cpu")


def where(net) -> dict:
    """``{"dtype": ..., "device": ...}`` of ``net``'s arithmetic, as :func:`tensor` takes them."""
    return {"dtype": dtype_of(net.dtype), "device": device_of(net)}


def tensor(a, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """``a`` (an array or a tensor) as a tensor of ``dtype`` on ``device`` (None: its own; an
    array's is the CPU): a CPU array of that dtype is shared, not copied. Read-only arrays (the model's own views) are shared too: nothing
    here writes into an input tensor (torch's warning about them is silenced for that reason)."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device or a.device, dtype=dtype or a.dtype)
    a = np.asarray(a)
    if any(s < 0 for s in a.strides) or a.dtype.kind not in "fiub":
        a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t.to(device=device or "cpu", dtype=dtype or t.dtype)


def array(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the CPU (shared where the tensor is there already)."""
    return t.detach().cpu().numpy()


__all__ = ["dtype_of", "device_of", "where", "tensor", "array"]
