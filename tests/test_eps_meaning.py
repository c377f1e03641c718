"""Issue 30: ``Compression.estimated_error`` predicts the model output's relative RMS error at every
cut (calibrated within 3x of the held-out measurement, data-free within 10x); ``compress(model,
eps)`` on a merge path cuts where that estimate reaches eps (monotone in eps, exact at 0; the
per-layer meaning kept for ``relative=False``, ``MergePath.partition`` and the components); and a
calibrated ``compress(model, eps=...)`` whose measured error is far above its estimate warns."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import afde_nb
from afde_nb.pipeline import compress as compress_mod
from afde_nb.core.repair import deviation
from afde_nb.pipeline import estimate as est_mod

FRACTIONS = (0.8, 0.5, 0.3, 0.1)
#: below this both the measurement and the estimate are rounding (exact merges only)
NOISE = 1e-5


def _out(model, x) -> np.ndarray:
    with torch.no_grad():
        y = model(x).double().numpy()
    return y.reshape(len(y), -1)


def _ratios(model, calib, test, fractions=FRACTIONS) -> dict[str, list[tuple[float, float, float]]]:
    """Per setting, (units kept, measured held-out relative RMS on ``test``, estimate) at each cut."""
    want = _out(model, test)
    got = {}
    for setting in ("data-free", "calibrated"):
        kw = {"calibration": calib} if setting == "calibrated" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c0 = afde_nb.compress(model, eps=0.0, **kw)
            path = c0.path
            seq = path.sequence()
            n = np.array([lp.n for lp in path.layers])
            rows = []
            for f in fractions:
                ms = next((ms for ms in seq if (n - np.array(ms)).sum() <= f * n.sum()), seq[-1])
                # eps is the output-level estimate: the cut's own estimate asks for (at least) this cut
                e = est_mod.estimate(path, ms, list(c0.estimate_anchors))
                c = afde_nb.compress(model, eps=e, path=path, **kw)
                ms = est_mod.merges_of(path, c.partition)
                e = float(np.sqrt(deviation(want, _out(c.model, test))["relative_mse"]))
                rows.append(((n - np.array(ms)).sum() / n.sum(), e, c.estimated_error))
        got[setting] = rows
    return got


def _check(got, calibrated=3.0, data_free=10.0):
    for setting, bound in (("calibrated", calibrated), ("data-free", data_free)):
        for kept, measured, estimate in got[setting]:
            assert estimate is not None
            if measured < NOISE and estimate < NOISE:
                continue
            r = measured / estimate
            assert 1 / bound <= r <= bound, (setting, kept, measured, estimate, r)


@pytest.fixture(scope="module")
def tanh_stack():
    from afde_nb.data import load
    from afde_nb.eval.train import train_mlp

    data = load("glycolysis", n=1200, seed=0)
    model = train_mlp(data, (32, 32), "tanh", epochs=60, seed=0)
    return model, torch.as_tensor(data.X_train[:256]), torch.as_tensor(data.X_test)


@pytest.fixture(scope="module")
def digits_cnn():
    from afde_nb.eval.zoo import load_example

    model, data = load_example("digits_cnn")
    return model, data


def test_estimate_tracks_the_measurement_on_a_trained_tanh_stack(tanh_stack):
    _check(_ratios(*tanh_stack))


def test_estimate_tracks_the_measurement_on_the_digits_cnn(digits_cnn):
    """The model of the issue: eps's ratio to the measured error was 8-13 here, 0.003-0.5 on the
    residual MLP; the estimate's is within the bounds on both settings."""
    model, data = digits_cnn
    _check(_ratios(model, torch.as_tensor(data.X_train[:512]), torch.as_tensor(data.X_test)))


def test_calibrated_eps_0_1_keeps_a_usable_digits_cnn_or_warns(digits_cnn):
    """The issue's table: calibrated eps = 0.1 kept 1.1 % of the digits CNN at accuracy 0.078, silently."""
    model, data = digits_cnn
    X = torch.as_tensor(data.X_train[:512])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = afde_nb.compress(model, eps=0.1, calibration=X)
    with torch.no_grad():
        acc = float((c.model(torch.as_tensor(data.X_test)).argmax(1).numpy() == data.y_test).mean())
    guard = [str(x.message) for x in w if "measured relative RMS error" in str(x.message)]
    assert acc >= 0.9 or guard, acc
    if guard:
        msg = guard[0]
        assert "eps=0.1" in msg and "estimate" in msg and "would meet" in msg
        suggested = float(msg.split("would meet")[0].rsplit("eps=", 1)[1].strip())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            better = afde_nb.compress(model, eps=suggested, calibration=X, path=c.path)
        with torch.no_grad():
            acc2 = float((better.model(torch.as_tensor(data.X_test)).argmax(1).numpy() == data.y_test).mean())
        assert better.kept > c.kept and acc2 >= 0.9, (suggested, better.kept, acc2)


def test_guard_message_has_both_numbers_and_an_eps(tanh_stack):
    model, calib, _ = tanh_stack
    path = afde_nb.compress(model, eps=0.0, calibration=calib).path
    seq = path.sequence()
    ms = seq[int(0.9 * (len(seq) - 1))]
    marks = compress_mod.anchors(None, path, None, None)  # no calibration: no anchors
    assert marks == []
    e = est_mod.estimate(path, ms)
    msg = est_mod.guard(path, ms, 0.01, True, e, 10 * e + 1.0, [], "held out")
    assert msg is not None and f"{10 * e + 1.0:.3g}" in msg and f"{e:.3g}" in msg and "eps=" in msg
    # within 3x of both the estimate and eps: no warning
    assert est_mod.guard(path, ms, 10.0, True, e, 2 * e, [], "held out") is None
    # exact merges only: nothing to warn about
    assert est_mod.guard(path, [lp.exact for lp in path.layers], 0.01, True, 0.0, 1.0, [], "held out") is None


def test_estimated_error_in_the_result_and_table(tanh_stack):
    model, calib, _ = tanh_stack
    c0 = afde_nb.compress(model, eps=0.0)
    assert c0.estimated_error == 0.0
    c = afde_nb.compress(model, eps=0.05)
    assert c.estimated_error > 0
    assert "estimated output error (relative RMS)" in c.table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cc = afde_nb.compress(model, eps=0.05, calibration=calib)
    line = next(r for r in cc.table().splitlines() if r.startswith("estimated output error"))
    assert cc.estimated_error > 0 and "measured" in line and "(held out)" in line
    # the anchors are measured once per path and calibration set
    assert len(cc.path._anchors) == 1
    afde_nb.compress(model, eps=0.02, calibration=calib, path=cc.path)
    assert len(cc.path._anchors) == 1
    # a budget reports the estimate of its cut too
    cb = afde_nb.compress(model, target_params=c.params_after)
    assert cb.estimated_error is not None and cb.estimated_error > 0


def test_paper_setting_has_no_estimate_and_is_unchanged(tanh_stack):
    model = tanh_stack[0]
    c = afde_nb.compress(model, 0.3, method="components", relative=False)
    assert c.estimated_error is None
    assert "estimated output error" not in c.table()


def test_first_order_is_the_centred_root_sum_of_squares(tanh_stack):
    model = tanh_stack[0]
    path = afde_nb.compress(model, eps=0.0).path
    ms = path.sequence()[len(path.sequence()) // 2]
    parts = [lp.bound(m) * lp.to_centred if m > lp.exact else 0.0 for lp, m in zip(path.layers, ms)]
    assert path.first_order(ms) == pytest.approx(float(np.sqrt(np.sum(np.square(parts)))))
    # the centred spread is below the uncentred RMS the bounds are relative to
    assert all(lp.to_centred >= 1.0 - 1e-12 for lp in path.layers)


def test_corrected_interpolates_in_log_log():
    marks = [(0.01, 0.001), (0.1, 0.05)]  # ratios 0.1 and 0.5
    assert est_mod.corrected(0.01, marks) == pytest.approx(0.001)
    assert est_mod.corrected(0.1, marks) == pytest.approx(0.05)
    assert est_mod.corrected(0.001, marks) == pytest.approx(0.0001)  # constant ratio beyond
    assert est_mod.corrected(1.0, marks) == pytest.approx(0.5)
    mid = est_mod.corrected(np.sqrt(0.001), marks)
    assert mid == pytest.approx(np.sqrt(0.001) * np.sqrt(0.05), rel=1e-9)
    assert est_mod.corrected(0.0, marks) == 0.0 and est_mod.corrected(0.3, []) == 0.3


def _units(c) -> int:
    return sum(int(np.max(l)) + 1 if np.size(l) else 0 for l in c.partition)


@pytest.mark.parametrize("calibrated,setting", [(False, {}), (True, {}), (False, {"method": "complete"}),
                                                (True, {"mode": "forward"})])
def test_eps_cut_is_the_last_within_the_estimate_and_monotone(tanh_stack, calibrated, setting):
    """compress(eps) keeps the most merges along the path's order whose estimate is at most eps:
    the estimate rises along the order, the next merge's exceeds eps, and a larger eps never keeps
    more units (Ward and complete linkage, backward and forward)."""
    model, calib, _ = tanh_stack
    kw = dict(setting, **({"calibration": calib} if calibrated else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c0 = afde_nb.compress(model, eps=0.0, **kw)
        path, marks = c0.path, list(c0.estimate_anchors)
        assert bool(marks) == calibrated
        seq = path.sequence()
        ests = [est_mod.estimate(path, ms, marks) for ms in seq]
        assert all(b >= a for a, b in zip(ests, ests[1:]))  # rises along the order
        units = []
        for eps in np.geomspace(1e-4, 3.0, 15):
            c = afde_nb.compress(model, eps=float(eps), path=path, **kw)
            ms = est_mod.merges_of(path, c.partition)
            i = seq.index(ms)  # a point of the path's order, as a budget's cut is
            assert c.estimated_error == pytest.approx(ests[i]) and ests[i] <= eps
            assert i == len(seq) - 1 or ests[i + 1] > eps
            assert c.eps == eps
            units.append(_units(c))
    assert units == sorted(units, reverse=True) and units[0] > units[-1]
    # the table's and the slider's curve is the same cuts against the same eps
    for e, kept in c0.curve(16):
        c = afde_nb.compress(model, eps=e, path=path, **kw) if e > 0 else c0
        assert c.kept <= kept + 1e-12


def test_eps_zero_is_exact_on_a_merge_path(tanh_stack):
    """eps = 0 keeps the exact merges only (none in a trained net: the function to rounding), and
    a planted duplicate is merged exactly."""
    model, calib, test = tanh_stack
    for kw in ({}, {"calibration": calib}):
        c = afde_nb.compress(model, eps=0.0, **kw)
        assert c.estimated_error == 0.0
        assert all(m == lp.exact for m, lp in zip(est_mod.merges_of(c.path, c.partition), c.path.layers))
        assert np.max(np.abs(_out(c.model, test) - _out(model, test))) < 1e-5
    dup = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    with torch.no_grad():
        dup[0].weight[1] = dup[0].weight[0]
        dup[0].bias[1] = dup[0].bias[0]
    c = afde_nb.compress(dup, eps=0.0)
    x = torch.randn(64, 3, dtype=torch.float64)
    assert c.params_after < c.params_before
    assert torch.allclose(c.model(x), dup(x), atol=1e-12, rtol=0)


def test_relative_false_and_the_path_keep_the_per_layer_eps(tanh_stack):
    """relative=False keeps eps as the path's per-layer bound (MergePath.partition); so does
    MergePath.partition itself; a budget reports the estimate of its cut as its eps."""
    model = tanh_stack[0]
    c = afde_nb.compress(model, eps=0.05, relative=False)
    part = c.path.partition(0.05)
    assert [a.tolist() for a in c.partition] == [a.tolist() for a in part.labels]
    rel = afde_nb.compress(model, eps=0.05)
    want = est_mod.within(rel.path, 0.05, [])
    assert est_mod.merges_of(rel.path, rel.partition) == want
    b = afde_nb.compress(model, target_params=rel.params_after)
    assert b.eps == pytest.approx(b.estimated_error)
    again = afde_nb.compress(model, eps=b.eps, path=b.path)
    assert again.params_after <= b.params_after


def test_same_eps_means_the_same_output_error_on_two_models(digits_cnn):
    """The issue's table: eps = 0.1 calibrated kept 1.1 % of the digits CNN (accuracy 0.078) and 54 %
    of the residual MLP. Now the measured held-out error stays within 3x of eps on both."""
    from afde_nb.eval.zoo import load_example

    cases = [digits_cnn, load_example("residual_mlp")]
    for model, data in cases:
        X, T = torch.as_tensor(data.X_train[:512]), torch.as_tensor(data.X_test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = afde_nb.compress(model, eps=0.1, calibration=X)
        got = float(np.sqrt(deviation(_out(model, T), _out(c.model, T))["relative_mse"]))
        assert got <= 3 * 0.1 and c.estimated_error <= 0.1, (type(model).__name__, got, c.kept)


def test_measured_error_over_eps_on_a_trained_tanh_stack(tanh_stack):
    """Acceptance (a) on a small trained model: at a log grid of eps, the held-out output error of
    compress(model, eps) over eps is within [1/3, 3] calibrated and [1/10, 10] data-free at every
    lossy cut keeping 10 % of the units or more (measured 0.81-1.73 and 0.28-2.43)."""
    model, calib, test = tanh_stack
    want = _out(model, test)
    for kw, bound in (({"calibration": calib}, 3.0), ({}, 10.0)):
        path, seen = None, 0
        for eps in np.geomspace(0.005, 0.5, 8):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c = afde_nb.compress(model, eps=float(eps), path=path, **kw)
            path = c.path
            n = sum(lp.n for lp in path.layers)
            got = float(np.sqrt(deviation(want, _out(c.model, test))["relative_mse"]))
            if c.estimated_error == 0 or _units(c) < 0.1 * n:
                continue
            seen += 1
            assert 1 / bound <= got / eps <= bound, (kw.keys(), eps, got, c.kept)
        assert seen >= 5
