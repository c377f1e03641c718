"""The error measures afde-nb reports, in one place: the trainer, the demo, the bench and the panel.

Two kinds of function:

* on predictions (numpy arrays): :func:`mse_score`, :func:`r2_score`, :func:`accuracy_score`;
* on a model and data: :func:`predict`, then :func:`mse`, :func:`r2`, :func:`accuracy`.

Every figure is computed in float64 from the model's predictions, whatever the model's dtype, so
that a float32 and a float64 model of the same function report the same numbers and a comparison
between two models (original and reduced) is not blurred by float32 rounding of the mean.
"""
from __future__ import annotations

import numpy as np
from ..errors import ShapeMismatchError

__all__ = ["accuracy", "accuracy_score", "mse", "mse_score", "predict", "r2", "r2_score"]


def _targets(y, n: int) -> np.ndarray:
    """``y`` as a float64 (n, targets) array (a 1-d y is one target)."""
    if hasattr(y, "detach"):  # a torch tensor
        y = y.detach().cpu().numpy()
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or len(y) != n:
        raise ShapeMismatchError(f"targets must be (n, targets) with n = {n}, got shape {y.shape}")
    return y


def predict(model, X) -> np.ndarray:
    """``model(X)`` without gradients, as a float64 (n, outputs) array.

    ``X`` (array or tensor) is cast to the model's parameter dtype and device; it may have any shape
    the model accepts (image-shaped inputs of a model starting with ``Flatten``)."""
    import torch

    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else None
    if hasattr(X, "detach"):
        x = X.detach().to(dtype=dtype, device=device)
    else:
        x = torch.as_tensor(np.asarray(X), dtype=dtype, device=device)
    with torch.no_grad():
        out = model(x)
    out = out.detach().cpu().double().numpy()
    return out.reshape(len(out), -1)


def mse_score(pred, y) -> float:
    """Mean squared error of predictions ``pred`` against ``y``, over all entries."""
    pred = np.asarray(pred, dtype=np.float64)
    pred = pred.reshape(len(pred), -1)
    y = _targets(y, len(pred))
    if pred.shape != y.shape:
        raise ShapeMismatchError(f"predictions {pred.shape} and targets {y.shape} differ in shape")
    return float(np.mean((pred - y) ** 2)) if pred.size else float("nan")


def r2_score(pred, y) -> float:
    """Coefficient of determination of predictions ``pred``, averaged over targets (a constant
    target counts its residual sum of squares against 1)."""
    pred = np.asarray(pred, dtype=np.float64)
    pred = pred.reshape(len(pred), -1)
    y = _targets(y, len(pred))
    if pred.shape != y.shape:
        raise ShapeMismatchError(f"predictions {pred.shape} and targets {y.shape} differ in shape")
    ss_res = ((pred - y) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, 1)))


def accuracy_score(pred, y) -> float:
    """Fraction of rows classified right: the arg-max of ``pred`` (one column: ``pred > 0.5``)
    against integer labels ``y`` (or one-hot rows, read by their arg-max)."""
    pred = np.asarray(pred, dtype=np.float64)
    pred = pred.reshape(len(pred), -1)
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if len(y) != len(pred):
        raise ShapeMismatchError(f"{len(pred)} predictions but {len(y)} labels")
    if not len(pred):
        return float("nan")
    guess = (pred[:, 0] > 0.5).astype(np.int64) if pred.shape[1] == 1 else pred.argmax(1)
    labels = y.argmax(1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(len(y))
    return float(np.mean(guess == labels))


def mse(model, X, y) -> float:
    """Mean squared error of ``model`` on ``(X, y)``."""
    return mse_score(predict(model, X), y)


def r2(model, X, y) -> float:
    """Coefficient of determination of ``model`` on ``(X, y)``, averaged over targets."""
    return r2_score(predict(model, X), y)


def accuracy(model, X, y) -> float:
    """Classification accuracy of ``model`` on ``(X, labels)`` (see :func:`accuracy_score`)."""
    return accuracy_score(predict(model, X), y)
