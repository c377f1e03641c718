"""Example models beyond MLP stacks, trained offline with fixed seeds and cached, for the API, CLI,
panel and benchmark.

afde-nb began with plain ``Linear``/activation stacks; these three are real networks of the other
shapes it merges hidden units in:

* ``digits_cnn``: :class:`DigitsCNN`, conv channels with BatchNorm and an MLP head, classifying
  scikit-learn's bundled 8x8 digits (:func:`digits`);
* ``residual_mlp``: :class:`ResidualMLP`, residual GELU blocks, regressing the generated
  ``random_mass_action`` data set of :mod:`afde_nb.data`;
* ``transformer``: :class:`TinySequenceTransformer`, transformer encoder layers with their
  feed-forward blocks, forecasting a simulated oscillator from a window of it (:func:`sequences`).

Everything is offline and deterministic given ``seed``: the data are regenerated on each call
(cheap); the weights are trained once and cached (:func:`load_example`).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import nn

from ..data import Dataset, load
from ..errors import InvalidArgumentError, MissingDependencyError
from .metrics import accuracy, mse

EXAMPLES = ("digits_cnn", "residual_mlp", "transformer")
SPLITS = ("train", "val", "test")


class DigitsCNN(nn.Module):
    """Two 3x3 conv/BatchNorm/ReLU stages (32 and 64 channels), a 2x2 max-pool to 64x4x4 and a
    1024-128-10 head: conv channels and a hidden layer to merge, on (n, 1, 8, 8) images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(1024, 128)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.act2(x)
        x = self.pool(x)
        x = self.flatten(x)
        x = self.fc1(x)
        x = self.act3(x)
        return self.fc2(x)


class ResidualBlock(nn.Module):
    """``x + fc2(gelu(fc1(x)))``: the hidden units of ``fc1`` merge; the residual stream does not."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class ResidualMLP(nn.Module):
    """``inp`` to a ``d``-wide residual stream, then ``blocks`` residual blocks, then ``head``."""

    def __init__(self, n_in: int, n_out: int, d: int = 32, hidden: int = 128, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, d)
        self.blocks = nn.Sequential(*(ResidualBlock(d, hidden) for _ in range(blocks)))
        self.head = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


class TinySequenceTransformer(nn.Module):
    """(n, steps, n_features) -> ``embed`` -> ``layers`` post-norm transformer encoder layers
    (ReLU feed-forward blocks of ``dim_feedforward`` units, no dropout) -> mean over steps -> ``head``.

    ``encoder`` is a ``ModuleList`` of the stock layers, not an ``nn.TransformerEncoder``: the same
    function, but torch.fx can trace into a layer (with the MHA fast path disabled and a tracer
    that does not take the layer as a leaf) and so see ``linear1``/``linear2``, while
    ``nn.TransformerEncoder.forward`` branches on its input (``src.is_nested``) and cannot be
    traced into at all. No positional encoding: order reaches the model only through its inputs
    (:func:`sequences` carries a time stamp)."""

    def __init__(self, n_features: int, n_out: int, d_model: int = 32, nhead: int = 4,
                 dim_feedforward: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, d_model)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True)
            for _ in range(layers))
        self.head = nn.Linear(d_model, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.encoder:
            x = layer(x)
        x = x.mean(dim=1)
        return self.head(x)


@dataclass(frozen=True)
class ExampleData:
    """An example's 70/15/15 split. ``task`` "classification": int64 labels; "regression": float32
    (n, targets) arrays standardised with the training split's mean and std (in ``info``)."""

    name: str
    task: str
    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_val: np.ndarray = field(repr=False)
    y_val: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    source: str = ""
    info: dict = field(default_factory=dict, repr=False)


def _split(n: int, seed: int) -> list[np.ndarray]:
    """Train/validation/test indices, shuffled with ``seed`` as in :func:`afde_nb.data.split_standardise`."""
    idx = np.random.default_rng(seed).permutation(n)
    n_tr, n_va = int(0.7 * n), int(0.15 * n)
    return np.split(idx, [n_tr, n_tr + n_va])


def digits(seed: int = 0) -> ExampleData:
    """scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes) as (n, 1, 8, 8) float32
    pixels / 16 in [0, 1], not standardised (the CNN's BatchNorm does that), and int64 labels;
    ``seed`` shuffles the split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError("the digits example needs scikit-learn: "
                                     "pip install \".[bench]\" in the afde-nb checkout") from exc
    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    parts = [a[p] for p in _split(len(X), seed) for a in (X, y)]
    return ExampleData("digits", "classification", *parts,
                       source="UCI optical recognition of handwritten digits, the 1,797 images "
                       "bundled with scikit-learn (real data)", info=dict(seed=seed))


SEQ_LEN, HORIZON, DT = 16, 4, 0.25


def sequences(seed: int = 0, n: int = 2000) -> ExampleData:
    """Forecasting Sel'kov's glycolytic oscillator (the system of :func:`afde_nb.data.odes.glycolysis`)

        dx/dt = -x + a y + x^2 y,      dy/dt = b - a y - x^2 y,

    from a window of it. ``n`` trajectories, each with x(0), y(0) uniform in [0, 2], a in
    [0.05, 0.12], b in [0.4, 0.8] (the boxes of ``glycolysis``), drawn with ``seed``, sampled at
    t_k = k * DT (DT = 0.25) by ``scipy.integrate.solve_ivp``.

    Input (n, SEQ_LEN, 3): rows (x(t_k), y(t_k), t_k) for k = 0..15; target (n, 2): x, y at
    t_15 + HORIZON * DT = t_19. a and b are not given: the window implies them. The time stamp is
    there because the encoder has no positional encoding, and its mean over the steps would
    otherwise not know which state is the latest. Inputs are standardised per feature (over
    samples and steps), targets per column, with the training split's mean and std; ``seed``
    also shuffles the split."""
    rng = np.random.default_rng(seed)
    s0 = rng.uniform(0.0, 2.0, (n, 2))
    a = rng.uniform(0.05, 0.12, n)
    b = rng.uniform(0.4, 0.8, n)

    def rhs(_t, s):
        x, y = s.reshape(n, 2).T
        return np.stack([-x + a * y + x * x * y, b - a * y - x * x * y], axis=1).ravel()

    t = DT * np.arange(SEQ_LEN + HORIZON)
    sol = solve_ivp(rhs, (0.0, t[-1]), s0.ravel(), method="DOP853", rtol=1e-7, atol=1e-9, t_eval=t)
    if not sol.success:
        raise RuntimeError(f"ODE integration failed: {sol.message}")
    traj = sol.y.reshape(n, 2, len(t)).transpose(0, 2, 1)  # (n, steps, 2)
    X = np.concatenate([traj[:, :SEQ_LEN], np.broadcast_to(t[:SEQ_LEN, None], (n, SEQ_LEN, 1))], axis=2)
    y = traj[:, -1]
    parts = _split(n, seed)
    mx, sx = X[parts[0]].mean((0, 1)), X[parts[0]].std((0, 1))
    my, sy = y[parts[0]].mean(0), y[parts[0]].std(0)
    arrays = [((v[p] - m) / s).astype(np.float32) for p in parts for v, m, s in ((X, mx, sx), (y, my, sy))]
    return ExampleData("selkov_windows", "regression", *arrays,
                       source="windows of Sel'kov's glycolytic oscillator, simulated with scipy (generated)",
                       info=dict(x_mean=mx, x_std=sx, y_mean=my, y_std=sy, seed=seed))


def _regression(data: Dataset) -> ExampleData:
    """A data set of :mod:`afde_nb.data` (already standardised) as an example's data."""
    return ExampleData(data.name, "regression", data.X_train, data.y_train, data.X_val, data.y_val,
                       data.X_test, data.y_test, data.source, data.info)


@dataclass(frozen=True)
class _Spec:
    data: Callable[[int], ExampleData]
    build: Callable[[ExampleData], nn.Module]
    epochs: int
    lr: float
    batch_size: int
    patience: int


_SPECS = {
    "digits_cnn": _Spec(digits, lambda d: DigitsCNN(), 30, 2e-3, 64, 5),
    "residual_mlp": _Spec(lambda seed: _regression(load("random_mass_action", seed=seed)),
                          lambda d: ResidualMLP(d.X_train.shape[1], d.y_train.shape[1]), 100, 2e-3, 128, 15),
    "transformer": _Spec(sequences, lambda d: TinySequenceTransformer(d.X_train.shape[2], d.y_train.shape[1]),
                         80, 2e-3, 64, 10),
}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise InvalidArgumentError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    return _SPECS[name]


def example_data(name: str, seed: int = 0) -> ExampleData:
    """The data example ``name`` is trained and scored on, regenerated deterministically from ``seed``."""
    return _spec(name).data(seed)


def train_example(name: str, seed: int = 0, epochs: int | None = None) -> tuple[nn.Module, ExampleData]:
    """Train example ``name`` (see ``EXAMPLES``) from scratch with ``seed``; returns it in eval mode.

    Adam on cross-entropy (classification) or MSE (regression), mini-batches shuffled by a seeded
    generator; keeps the weights with the best validation loss and stops after the example's
    patience without improvement. ``epochs`` caps the epochs (each example's own default trains in
    well under a minute on two CPU cores). The caller's global torch RNG is left as it was."""
    spec = _spec(name)
    epochs = spec.epochs if epochs is None else epochs
    if epochs < 1:
        raise InvalidArgumentError(f"epochs must be at least 1, got {epochs}")
    data = spec.data(seed)
    loss_fn = nn.functional.cross_entropy if data.task == "classification" else nn.functional.mse_loss
    X, y = torch.as_tensor(data.X_train), torch.as_tensor(data.y_train)
    X_val, y_val = torch.as_tensor(data.X_val), torch.as_tensor(data.y_val)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, waited = float("inf"), None, 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = spec.build(data)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(X), generator=gen)
            for k in range(0, len(X), spec.batch_size):
                idx = perm[k:k + spec.batch_size]
                opt.zero_grad()
                loss_fn(model(X[idx]), y[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val = loss_fn(model(X_val), y_val).item()
            if val < best - 1e-7:
                best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= spec.patience:
                    break
    model.load_state_dict(best_state)
    return model.eval(), data


def load_example(name: str, seed: int = 0) -> tuple[nn.Module, ExampleData]:
    """Example ``name`` trained with ``seed``, in eval mode, and its data.

    Trained once (:func:`train_example`); the state_dict is cached as ``example-{name}-s{seed}.pt``
    in the bench's model cache (:func:`afde_nb.eval.bench.run.cache_dir`, ``$AFDE_NB_CACHE``), written
    atomically. Later calls rebuild the model, load the weights (tensors only) and regenerate the
    data."""
    from .bench.run import cache_dir  # here, not at the top: the bench is heavier and may import this module

    spec = _spec(name)
    path = cache_dir() / f"example-{name}-s{seed}.pt"
    if not path.is_file():
        model, data = train_example(name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return model, data
    data = spec.data(seed)
    with torch.random.fork_rng():  # the initial weights are overwritten; keep the caller's RNG as it was
        model = spec.build(data)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), data


def score(model: nn.Module, data: ExampleData, split: str = "test") -> float:
    """``model`` on a split of ``data``: for classification the accuracy (fraction of labels
    predicted right, higher is better); for regression the mean squared error on the standardised
    targets (lower is better; predicting the training mean scores about 1)."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
    return accuracy(model, X, y) if data.task == "classification" else mse(model, X, y)
