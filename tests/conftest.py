from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# load("protein") reads UCI's CASP from the data home, and the repository must never hold a copy:
# tests use the checked one kept beside the checkout (../shared/data, what .ci/run exports), unless
# AFDE_NB_DATA already names a data home. Set at import, before any test reads the variable.
_SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
if not os.environ.get("AFDE_NB_DATA") and _SHARED_DATA.is_dir():
    os.environ["AFDE_NB_DATA"] = str(_SHARED_DATA)

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



# ------------------------------------------------------------------ models that are not one plain stack
class ResidualMLP(nn.Module):
    """in -> z; z + fc2(gelu(fc1(z))) -> out: only fc1's units lump (the others feed the residual add)."""

    def __init__(self, d_in: int = 4, width: int = 8, hidden: int = 16, d_out: int = 2):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.out = nn.Linear(width, d_out)

    def forward(self, x):
        z = self.inp(x)
        return self.out(z + self.fc2(self.act(self.fc1(z))))


def duplicate_units(producer: nn.Module, rows: slice, src: int, norm: nn.Module | None = None) -> None:
    """Plant copies of unit ``src`` of ``producer`` (and of its BatchNorm's statistics) in ``rows``,
    so that eps = 0 merges them."""
    with torch.no_grad():
        producer.weight[rows] = producer.weight[src]
        producer.bias[rows] = producer.bias[src]
        if norm is not None:
            for name in ("running_mean", "running_var", "weight", "bias"):
                getattr(norm, name)[rows] = getattr(norm, name)[src]


def residual_mlp(seed: int = 0) -> nn.Module:
    """A residual GELU MLP with three copies of one fc1 unit."""
    torch.manual_seed(seed)
    m = ResidualMLP()
    duplicate_units(m.fc1, slice(3, 6), 2)
    return m.eval()


def small_cnn(seed: int = 2) -> nn.Sequential:
    """Conv2d-BatchNorm2d-ReLU-Conv2d and a Linear head on (n, 3, 6, 6) images, with three copies
    of one channel (BatchNorm statistics that are not the identity, so its folding counts)."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                      nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.3, 0.3)
        m[1].running_var.uniform_(0.5, 2.0)
    duplicate_units(m[0], slice(4, 7), 1, m[1])
    return m.eval()
