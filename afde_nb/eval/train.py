"""Train the small regression MLPs afde-nb compresses (fixed seeds, early stopping).

The error measures live in :mod:`afde_nb.eval.metrics`; ``train.mse``, ``train.r2`` and
``train.r2_score`` are the same functions, kept importable here.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..data import Dataset
from .metrics import mse, r2, r2_score  # noqa: F401 - re-exported: train.mse/r2/r2_score stay importable
from ..errors import InvalidArgumentError

_ACTS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def make_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, activation: str = "tanh") -> nn.Sequential:
    if activation not in _ACTS:
        raise InvalidArgumentError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
    mods: list[nn.Module] = []
    prev = n_in
    for w in hidden:
        mods += [nn.Linear(prev, w), _ACTS[activation]()]
        prev = w
    mods.append(nn.Linear(prev, n_out))
    return nn.Sequential(*mods)


def train_mlp(data: Dataset, hidden: tuple[int, ...] = (64, 64), activation: str = "tanh", epochs: int = 300,
              lr: float = 3e-3, batch_size: int = 128, patience: int = 30, seed: int = 0) -> nn.Sequential:
    """Adam on MSE; keeps the weights with the best validation loss, stops after ``patience``
    epochs without improvement."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_mlp(data.n_features, tuple(hidden), data.n_targets, activation)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience // 3)
    X, y = torch.as_tensor(data.X_train), torch.as_tensor(data.y_train)
    best, best_state, waited = float("inf"), None, 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(X), generator=gen)
            for k in range(0, len(X), batch_size):
                idx = perm[k:k + batch_size]
                opt.zero_grad()
                loss = ((model(X[idx]) - y[idx]) ** 2).mean()
                loss.backward()
                opt.step()
            model.eval()
            val = mse(model, data.X_val, data.y_val)
            sched.step(val)
            if val < best - 1e-7:
                best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= patience:
                    break
    model.load_state_dict(best_state)
    return model.eval()
