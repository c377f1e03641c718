"""afde_nb.eval.metrics: the one module of error measures (trainer, demo, bench, panel)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from afde_nb.eval import metrics, train


def test_trainer_names_are_the_metrics():
    assert train.mse is metrics.mse and train.r2 is metrics.r2 and train.r2_score is metrics.r2_score


def test_scores_on_predictions():
    y = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert metrics.mse_score(y, y) == 0.0 and metrics.r2_score(y, y) == 1.0
    pred = y + np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert metrics.mse_score(pred, y) == pytest.approx(2 / 6)
    # R^2 per target, averaged; the constant target counts its residuals against 1
    assert metrics.r2_score(pred, y) == pytest.approx(np.mean([1 - 2 / 2, 1 - 0]))
    assert metrics.mse_score(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 2.0  # 1-d: one target
    with pytest.raises(ValueError, match="shape"):
        metrics.mse_score(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError):
        metrics.r2_score(np.zeros((3, 1)), np.zeros((4, 1)))


def test_accuracy():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert metrics.accuracy_score(logits, np.array([0, 1, 2, 2])) == 0.75
    assert metrics.accuracy_score(logits, np.eye(3)[[0, 1, 2, 2]]) == 0.75  # one-hot labels
    assert metrics.accuracy_score(np.array([[0.9], [0.2], [0.7]]), np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_model_metrics_in_float64_whatever_the_dtype():
    torch.manual_seed(0)
    m32 = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    m64 = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    y = rng.normal(size=(50, 2))
    pred = metrics.predict(m32, X)
    assert pred.dtype == np.float64 and pred.shape == (50, 2)
    assert metrics.mse(m32, X, y) == metrics.mse_score(pred, y)
    assert metrics.r2(m32, X, y) == metrics.r2_score(pred, y)
    assert metrics.mse(m64, X, y) == pytest.approx(metrics.mse(m32, X, y), rel=1e-5)
    assert metrics.mse(m32, torch.as_tensor(X), torch.as_tensor(y)) == metrics.mse(m32, X, y)
    # image-shaped inputs go through the model's own Flatten
    mf = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).eval()
    Xi = rng.normal(size=(10, 1, 2, 2)).astype(np.float32)
    assert metrics.mse(mf, Xi, np.zeros(10)) == metrics.mse(mf, Xi.reshape(10, 4), np.zeros((10, 1)))
