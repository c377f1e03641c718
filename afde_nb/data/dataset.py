"""A standardised train/validation/test split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Inputs and targets standardised with the training split's mean and std."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_targets(self) -> int:
        return int(self.y_train.shape[1])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.n_features} features -> {self.n_targets} targets, "
                f"train/val/test = {len(self.X_train)}/{len(self.X_val)}/{len(self.X_test)})")


def split_standardise(name: str, X: np.ndarray, y: np.ndarray, seed: int = 0, source: str = "",
                      fractions: tuple[float, float] = (0.7, 0.15), **info) -> Dataset:
    """Shuffle with ``seed``, split 70/15/15, standardise by the training split."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32).reshape(len(X), -1)
    idx = np.random.default_rng(seed).permutation(len(X))
    n_tr, n_va = int(fractions[0] * len(X)), int(fractions[1] * len(X))
    parts = np.split(idx, [n_tr, n_tr + n_va])
    mx, sx = X[parts[0]].mean(0), X[parts[0]].std(0)
    my, sy = y[parts[0]].mean(0), y[parts[0]].std(0)
    sx[sx == 0] = 1
    sy[sy == 0] = 1
    xs = [((X[p] - mx) / sx).astype(np.float32) for p in parts]
    ys = [((y[p] - my) / sy).astype(np.float32) for p in parts]
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], source,
                   dict(info, x_mean=mx, x_std=sx, y_mean=my, y_std=sy, seed=seed))
