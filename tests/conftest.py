from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

ACT = {"identity": None, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU,
       "leaky_relu": lambda: nn.LeakyReLU(0.1)}


def mlp(widths: list[int], acts: list[str], out_act: str = "identity", dtype=torch.float32) -> nn.Sequential:
    """Linear layers of the given widths; acts[h] follows hidden layer h."""
    mods: list[nn.Module] = []
    for k in range(len(widths) - 1):
        mods.append(nn.Linear(widths[k], widths[k + 1]))
        act = acts[k] if k < len(widths) - 2 else out_act
        if ACT[act] is not None:
            mods.append(ACT[act]())
    return nn.Sequential(*mods).to(dtype)


def set_weights(model: nn.Sequential, weights: list[np.ndarray], biases: list[np.ndarray]) -> nn.Sequential:
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(lins, weights, biases):
            lin.weight.copy_(torch.as_tensor(w))
            lin.bias.copy_(torch.as_tensor(b))
    return model


def teacher_data(model: nn.Module, rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Regression data labelled by ``model`` itself plus Gaussian noise."""
    X = rng.normal(size=(n, model[0].in_features)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(X)).numpy()
    return X, y + noise * rng.normal(size=y.shape)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k in snap:
        assert torch.equal(now[k], snap[k]), f"{k} was modified"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

