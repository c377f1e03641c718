"""afde_nb.pipeline.moves: a slider move with repair against the repair's own arithmetic and compress().

The refit of a move whose first refit layer's inputs are mostly the original's columns updates the
original's Gram (SliderCache._first_refit); a partition answered before is not answered again
(SliderCache's memo). Both must show the figures of a move that does neither, and compress()'s.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
import afde_nb.pipeline.moves as moves
from afde_nb.eval import metrics
from afde_nb.ui.widgets.state import PanelState

EPS = (0.05, 0.3, 0.1, 0.6, 0.0)


def _net(act, width: int, seed: int = 5) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, width), act(), nn.Linear(width, 24), act(), nn.Linear(24, 2)).eval()
    with torch.no_grad():  # duplicated and negated neurons: small eps already merges, flipped too
        m[0].weight[5:8], m[0].bias[5:8] = m[0].weight[4], m[0].bias[4]
        m[0].weight[9], m[0].bias[9] = -m[0].weight[3], -m[0].bias[3]
    return m


def _data(n: int = 150, seed: int = 2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, np.stack([np.sin(X[:, 0]) + X[:, 1], np.tanh(X[:, 2] * X[:, 3])], 1).astype(np.float32)


def _cache(m, X, y, cal, repair=None):
    s = PanelState(m, (X, y), calibration=X[:cal], eps=0.05, repair=repair)
    s.update()
    return s, s._slider


def _dev_close(a, b, rel):
    assert (a is None) == (b is None)
    if a is not None:
        for k in ("max_abs", "rms", "relative_mse"):
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-12), k


@pytest.mark.parametrize("act,eps_values", [(nn.Tanh, EPS), (nn.Sigmoid, (0.01, 0.002, 0.02, 0.0)), (nn.ReLU, EPS)])
def test_low_rank_refit_is_the_direct_refit(act, eps_values, monkeypatch):
    """With fewer calibration rows than the first refit layer's inputs (the dual form), the refit
    from the original's Gram shows the figures of the refit from the full inputs, to rounding."""
    X, y = _data()
    m = _net(act, 64)
    used = []
    first = moves.SliderCache._first_refit
    monkeypatch.setattr(moves.SliderCache, "_first_refit",
                        lambda self, *a: used.append(first(self, *a)) or used[-1])
    s, cache = _cache(m, X, y, cal=40)
    _, direct = _cache(m, X, y, cal=40)
    for eps in eps_values:
        c, pred = cache.move(eps, "calibration")
        monkeypatch.setattr(moves, "LOW_RANK", False)
        cd, pred_d = direct.move(eps, "calibration")
        monkeypatch.setattr(moves, "LOW_RANK", True)
        assert c.repaired == cd.repaired and c.params_after == cd.params_after
        _dev_close(c.calibration_error, cd.calibration_error, 1e-6)
        # before repair: the original's pre-activations (float64) against the model's dtype
        _dev_close(c.calibration_error_before_repair, cd.calibration_error_before_repair, 1e-4)
        np.testing.assert_allclose(pred, pred_d, rtol=1e-6, atol=1e-7)
        with torch.no_grad():
            xt = torch.as_tensor(X)
            np.testing.assert_allclose(c.model(xt).numpy(), cd.model(xt).numpy(), rtol=1e-4, atol=1e-5)
    if act is nn.ReLU:  # rows read by their norms: no column is the original's, every refit is direct
        assert all(u is None for u in used)
    else:  # and where an earlier layer merged (sigmoid at 0.002), it is direct too
        assert sum(u is not None for u in used) >= 2


def test_low_rank_move_shows_compress(monkeypatch):
    """The low-rank refit's figures and reduced model are compress()'s, to float rounding."""
    X, y = _data()
    m = _net(nn.Tanh, 64)
    s = PanelState(m, (X, y), calibration=X[:40], eps=0.05)
    s.update()
    assert s._slider is not None
    for eps in (0.1, 0.3):
        s.set_eps(eps)
        c = s.update()
        assert ("calibration", 0) in s._slider._bases, "the Gram update ran"
        want = afde_nb.compress(m, eps=eps, calibration=X[:40])
        assert c.repaired == want.repaired == "calibration"
        f = s.figures
        assert f["calib_rms"] == pytest.approx(want.calibration_error["rms"], rel=1e-5, abs=1e-9)
        assert f["calib_rms_before_repair"] == pytest.approx(want.calibration_error_before_repair["rms"], rel=1e-5)
        assert f["mse"] == pytest.approx(metrics.mse(want.model, s.X_eval, s.y_eval), rel=1e-5, abs=1e-7)
        with torch.no_grad():
            xt = torch.as_tensor(X)
            np.testing.assert_allclose(c.model(xt).numpy(), want.model(xt).numpy(), rtol=1e-4, atol=1e-5)


def test_pseudo_probes_low_rank(monkeypatch):
    """Pseudo-probes (512 rows) on a wider first layer: the fits applied to the calibration and test
    rows through the cross-Gram, as from the full inputs."""
    X, y = _data(80)
    m = _net(nn.Tanh, 600)
    s, cache = _cache(m, X, y, cal=40, repair="pseudo")
    _, direct = _cache(m, X, y, cal=40, repair="pseudo")
    for eps in (0.01, 0.05):  # output-level eps (issue 30): 0.01 keeps 539 of the 600, mostly the original's
        c, pred = cache.move(eps, "pseudo")
        monkeypatch.setattr(moves, "LOW_RANK", False)
        cd, pred_d = direct.move(eps, "pseudo")
        monkeypatch.setattr(moves, "LOW_RANK", True)
        assert c.repaired == cd.repaired == "pseudo"
        _dev_close(c.calibration_error, cd.calibration_error, 1e-6)
        np.testing.assert_allclose(pred, pred_d, rtol=1e-6, atol=1e-7)
    assert any(k[0] == "pseudo" for k in cache._bases)


def test_a_partition_seen_before_is_not_answered_again(monkeypatch):
    """Back to a partition answered before: the same figures without a new answer, and a reduced
    model built on demand that is compress()'s; another partition gets a new answer."""
    X, y = _data()
    m = _net(nn.Tanh, 64)
    s, cache = _cache(m, X, y, cal=40)
    calls = []
    answer = moves.SliderCache._answer
    monkeypatch.setattr(moves.SliderCache, "_answer", lambda self, *a: calls.append(1) or answer(self, *a))
    first, pred = cache.move(0.3, "calibration")
    assert len(calls) == 1
    cache.move(0.6, "calibration")
    again, pred2 = cache.move(0.3, "calibration")
    assert len(calls) == 2, "the revisit is the memo's"
    assert again.calibration_error == first.calibration_error
    assert again.calibration_error is not first.calibration_error
    assert again.calibration_error_before_repair == first.calibration_error_before_repair
    np.testing.assert_array_equal(pred, pred2)
    want = afde_nb.compress(m, eps=0.3, calibration=X[:40])
    with torch.no_grad():
        xt = torch.as_tensor(X)
        np.testing.assert_allclose(again.model(xt).numpy(), want.model(xt).numpy(), rtol=1e-4, atol=1e-5)
    assert len(calls) == 3, "the model of a revisit is rebuilt"
    c, _ = cache.move(0.3, None)  # another repair: another answer
    assert len(calls) == 4 and c.repaired is None


def test_memo_is_bounded(monkeypatch):
    X, y = _data()
    s, cache = _cache(_net(nn.Tanh, 64), X, y, cal=40)
    monkeypatch.setattr(moves, "MEMO", 2)
    for eps in EPS:
        cache.move(eps, "calibration")
    assert len(cache._memo) == 2
