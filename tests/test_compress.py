"""compress(): known partitions on hand-built networks, exactness at eps = 0, export, errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.pipeline.estimate import merges_of

from conftest import assert_unchanged, mlp, set_weights, snapshot, teacher_data


def _max_diff(a: nn.Module, b: nn.Module, n_in: int, seed: int = 0) -> float:
    x = torch.randn(512, n_in, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def planted_backward_model(rng) -> nn.Sequential:
    """Layer 1: rows r0 r0 r1 r2 r0 r1 r3 r4 -> 5 blocks. Layer 2: w, w with entries of block
    {0,1,4} swapped, w with entries of block {2,5} swapped, d, e, d -> 3 blocks (BDE compares
    rows summed over source blocks)."""
    r = rng.normal(size=(5, 6))
    l1 = r[[0, 0, 1, 2, 0, 1, 3, 4]]
    w, d, e = rng.normal(size=(3, 9))
    wb, wc = w.copy(), w.copy()
    wb[[0, 1]] = wb[[1, 0]]
    wc[[2, 5]] = wc[[5, 2]]
    l2 = np.stack([w, wb, wc, d, e, d])
    out = rng.normal(size=(2, 7))
    model = mlp([5, 8, 6, 2], ["tanh", "tanh"])
    return set_weights(model, [l1[:, :5], l2[:, :8], out[:, :6]], [l1[:, 5], l2[:, 8], out[:, 6]])


def test_planted_duplicates_backward_exact(rng):
    model = planted_backward_model(rng)
    snap = snapshot(model)
    c = afde_nb.compress(model, eps=0, mode="backward")
    assert [s.neurons_after for s in c.layers] == [5, 3]
    assert [s.largest_block for s in c.layers] == [3, 3]
    np.testing.assert_array_equal(c.partition[0], [0, 0, 1, 2, 0, 1, 3, 4])
    np.testing.assert_array_equal(c.partition[1], [0, 0, 0, 1, 2, 1])
    assert c.params_before == 8 * 6 + 6 * 9 + 2 * 7
    assert c.params_after == 5 * 6 + 3 * 6 + 2 * 4
    assert _max_diff(c.model, model, 5) <= 1e-5
    assert_unchanged(model, snap)


def test_planted_dead_neurons_forward_exact(rng):
    """Exact FDE lumps tanh neurons only when their incoming rows are zero (they stay at 0), and
    then only those with equal outgoing columns (entrywise: the next layer is tanh)."""
    w1, b1 = rng.normal(size=(6, 3)), rng.normal(size=6)
    w1[[1, 3, 4]] = 0
    b1[[1, 3, 4]] = 0
    w2 = rng.normal(size=(4, 6))
    w2[:, 3] = w2[:, 1]  # dead neurons 1 and 3 have equal columns; 4 differs
    model = set_weights(mlp([3, 6, 4, 1], ["tanh", "tanh"]), [w1, w2, rng.normal(size=(1, 4))],
                        [b1, rng.normal(size=4), rng.normal(size=1)])
    c = afde_nb.compress(model, eps=0, mode="forward", method="components")
    np.testing.assert_array_equal(c.partition[0], [0, 1, 2, 1, 3, 4])
    assert [s.neurons_after for s in c.layers] == [5, 4]
    assert _max_diff(c.model, model, 3) <= 1e-5


def test_planted_proportional_relu_rows(rng):
    """ReLU rows that are positive multiples of each other merge exactly (method.md §5); a
    negative multiple does not. Factors are powers of two so that float32 rows stay exactly
    proportional; other factors need eps of the order of float32 rounding (next test)."""
    base = rng.normal(size=(3, 5))
    rows = np.stack([base[0], 2.0 * base[0], base[1], 0.25 * base[1], -1.0 * base[0], base[2]])
    model = set_weights(mlp([4, 6, 3], ["relu"]), [rows[:, :4], rng.normal(size=(3, 6))],
                        [rows[:, 4], rng.normal(size=3)])
    c = afde_nb.compress(model, eps=0, mode="backward")
    np.testing.assert_array_equal(c.partition[0], [0, 0, 1, 1, 2, 3])
    assert _max_diff(c.model, model, 4) <= 1e-5
    with torch.no_grad():
        model[0].weight[1] *= 1.3  # 2.6 x row 0 in float32: proportional up to rounding only
        model[0].bias[1] *= 1.3
    # the paper's setting compares rows exactly: rounding splits them at eps = 0
    assert afde_nb.compress(model, eps=0, mode="backward", method="components").layers[0].neurons_after == 5
    c = afde_nb.compress(model, eps=1e-5, mode="backward", method="components")
    np.testing.assert_array_equal(c.partition[0], [0, 0, 1, 1, 2, 3])
    assert _max_diff(c.model, model, 4) <= 1e-5
    # the merge path counts rows equal to the model's precision (float32 here) as exact
    c = afde_nb.compress(model, eps=0, mode="backward")
    np.testing.assert_array_equal(c.partition[0], [0, 0, 1, 1, 2, 3])
    assert _max_diff(c.model, model, 4) <= 1e-5


ACTS = ["tanh", "sigmoid", "identity", "relu", "leaky_relu"]


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("planted", [False, True])
def test_eps_zero_never_changes_the_function(rng, mode, act, planted):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = mlp([6, 12, 10, 8, 3], [act] * 3, out_act=rng.choice(["identity", "tanh"]))
    if planted:  # duplicates, zero rows, proportional rows and equal columns
        lins = [m for m in model if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin in lins[:-1]:
                lin.weight[1] = lin.weight[0]
                lin.bias[1] = lin.bias[0]
                lin.weight[2] = 3.0 * lin.weight[3]
                lin.bias[2] = 3.0 * lin.bias[3]
                lin.weight[4:6] = 0
                lin.bias[4:6] = 0
            for nxt in lins[1:]:
                nxt.weight[:, 5] = nxt.weight[:, 4]
                nxt.weight[:, 1] = nxt.weight[:, 0]
    c = afde_nb.compress(model, eps=0.0, mode=mode)
    assert _max_diff(c.model, model, 6) <= 1e-5
    if planted and mode == "backward":
        assert c.params_after < c.params_before
    if planted and mode == "forward" and act in ("tanh", "sigmoid"):
        assert c.layers[0].neurons_after < c.layers[0].neurons_before  # the dead pair 4, 5


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_eps_trades_size_for_error(rng, mode):
    torch.manual_seed(0)
    model = mlp([8, 64, 64, 2], ["tanh", "tanh"])
    sizes, errors = [], []
    for eps in [0.0, 0.5, 2.0, 8.0, 1e6]:
        c = afde_nb.compress(model, eps, mode=mode, relative=True)
        sizes.append(c.params_after)
        errors.append(_max_diff(c.model, model, 8))
    assert sizes == sorted(sizes, reverse=True)
    assert errors[0] <= 1e-5
    assert sizes[-1] < sizes[0]
    assert c.layers[0].neurons_after == 1 and c.layers[1].neurons_after == 1  # huge eps: one block each


def test_compression_report_and_calibration(rng):
    model = planted_backward_model(rng)
    x = rng.normal(size=(64, 5))
    c = afde_nb.compress(model, eps=0, mode="backward", calibration=x)
    # a float32 model reduced in float32: exact to float32 rounding of the merged columns
    assert c.calibration_error["n"] == 64 and c.calibration_error["max_abs"] <= 1e-5
    text = c.table()
    assert "before" in text and "5" in text and "% kept" in text
    assert "backward" in repr(c)
    assert isinstance(c.model, nn.Sequential)
    assert all(type(m).__module__.startswith("torch.nn") for m in c.model.modules())
    with pytest.raises(afde_nb.ShapeMismatchError, match=r"\(n, 5\)"):
        afde_nb.compress(model, eps=0, calibration=rng.normal(size=(10, 4)))
    with pytest.raises(afde_nb.InvalidWeightsError):
        afde_nb.compress(model, eps=0, calibration=np.full((3, 5), np.nan))


STOCK_LOADER = r"""
import json, sys, torch
path, arch_path = sys.argv[1], sys.argv[2]
arch = json.load(open(arch_path))
mods = []
for spec in arch["layers"]:
    kw = {k: v for k, v in spec.items() if k != "type"}
    mods.append(getattr(torch.nn, spec["type"])(**kw))
model = torch.nn.Sequential(*mods)
if path.endswith(".safetensors"):
    from safetensors.torch import load_file
    state = load_file(path)
else:
    state = torch.load(path, weights_only=True)
model.load_state_dict(state)
x = torch.load(sys.argv[3], weights_only=True)
torch.save(model(x).detach(), sys.argv[4])
assert "afde_nb" not in sys.modules
"""


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_reloads_in_stock_torch(tmp_path, rng, suffix):
    model = planted_backward_model(rng)
    c = afde_nb.compress(model, eps=0.3, mode="backward", relative=True)
    written = c.save(tmp_path / f"reduced{suffix}")
    assert [p.name for p in written] == [f"reduced{suffix}", "reduced.json"]
    x = torch.randn(32, 5)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(STOCK_LOADER)
    subprocess.run([sys.executable, str(script), str(written[0]), str(written[1]), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path)
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(y, c.model(x))
        assert torch.equal(afde_nb.load_model(written[0])(x), c.model(x))
    arch = json.loads(written[1].read_text())
    assert arch["afde_nb"]["mode"] == "backward"


class TracedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = self.drop(nn.functional.leaky_relu(self.fc2(x), negative_slope=0.2))
        return self.head(x)


def test_module_whose_forward_is_a_stack():
    torch.manual_seed(0)
    model = TracedMLP().eval()
    with torch.no_grad():
        model.fc1.weight[1] = model.fc1.weight[0]
        model.fc1.bias[1] = model.fc1.bias[0]
    net = afde_nb.to_network(model)
    assert [l.activation for l in net.layers] == ["tanh", "leaky_relu", "identity"]
    assert net.layers[1].negative_slope == 0.2 and net.layers[0].path == "fc1"
    c = afde_nb.compress(model, eps=0, mode="backward")
    assert c.layers[0].neurons_after == 5
    assert _max_diff(c.model, model, 4) <= 1e-5


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


@pytest.mark.parametrize("model,pattern", [
    (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Conv1d(1, 1, 1)), r"'2'.*Conv1d"),
    (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 1)), r"'1'.*Softmax"),
    (nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.GELU()), nn.Linear(4, 1)), r"'1\.1'.*GELU"),
    (nn.Sequential(nn.Tanh(), nn.Linear(3, 1)), "on the inputs"),
    (nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Tanh()), "after another activation"),
    (nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 1)), "takes 4 inputs"),
    (Residual(), "single feed-forward chain"),
    (nn.Sequential(), "no Linear"),
])
def test_unsupported_models_are_named(model, pattern):
    snap = snapshot(model)
    with pytest.raises(afde_nb.UnsupportedLayerError, match=pattern):
        afde_nb.compress(model, 0.1)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(bad):
    model = mlp([3, 4, 1], ["tanh"])
    with torch.no_grad():
        model[2].weight[0, 1] = bad
    snap = snapshot(model)
    with pytest.raises(afde_nb.InvalidWeightsError, match=r"2\.weight"):
        afde_nb.compress(model, 0.0)
    for k, v in model.state_dict().items():  # NaN != NaN: compare bit patterns
        assert torch.equal(v.view(torch.int32), snap[k].view(torch.int32))


@pytest.mark.parametrize("eps", [-0.1, float("nan"), "0.1", [0.1], True])
def test_bad_eps_is_refused_without_side_effects(eps):
    model = mlp([3, 4, 1], ["tanh"])
    snap = snapshot(model)
    with pytest.raises(afde_nb.InvalidEpsError):
        afde_nb.compress(model, eps)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_empty_and_single_neuron_layers(mode):
    torch.manual_seed(0)
    for widths in ([3, 0, 2], [3, 1, 2], [3, 1, 0, 2], [3, 2]):
        model = mlp(widths, ["tanh"] * (len(widths) - 2))
        c = afde_nb.compress(model, 0.5, mode=mode)
        assert [s.neurons_before for s in c.layers] == widths[1:-1]
        if all(w > 0 for w in widths[1:-1]):
            assert all(s.neurons_after == s.neurons_before for s in c.layers)
        c0 = afde_nb.compress(model, 0.0, mode=mode)
        assert _max_diff(c0.model, model, 3) <= 1e-5


def test_model_is_never_modified_and_calls_repeat(rng):
    model = planted_backward_model(rng)
    model.train()
    snap = snapshot(model)
    a = afde_nb.compress(model, 0.2, mode="forward", relative=True)
    b = afde_nb.compress(model, 0.2, mode="forward", relative=True)
    afde_nb.encode(model)
    assert_unchanged(model, snap)
    assert model.training
    for x, y in zip(a.partition, b.partition):
        np.testing.assert_array_equal(x, y)


def test_float64_models_stay_float64(rng):
    model = planted_backward_model(rng).double()
    c = afde_nb.compress(model, 0.0, mode="backward")
    assert next(c.model.parameters()).dtype == torch.float64
    x = torch.randn(64, 5, dtype=torch.float64)
    with torch.no_grad():
        assert float((c.model(x) - model(x)).abs().max()) <= 1e-12


@pytest.mark.parametrize("mode", ["backward", "forward"])
def test_target_params_finds_the_smallest_eps_within_budget(mode):
    torch.manual_seed(0)
    model = mlp([6, 40, 30, 2], ["tanh", "tanh"])
    full = afde_nb.compress(model).params_before
    for budget in (full, int(0.6 * full), int(0.2 * full)):
        c = afde_nb.compress(model, mode=mode, relative=True, target_params=budget)
        assert c.params_after <= budget
        assert c.target == {"params": budget}
        if c.eps > 0:  # a slightly smaller eps would break the budget: eps is the smallest
            below = afde_nb.compress(model, c.eps * (1 - 1e-9), mode=mode, relative=True)
            assert below.params_after > budget
    with pytest.raises(ValueError, match="one neuron per hidden layer"):
        afde_nb.compress(model, target_params=10)
    with pytest.raises(ValueError, match="one of"):
        afde_nb.compress(model, eps=0.1, target_params=100)


def test_target_error_keeps_error_within_bound(rng):
    torch.manual_seed(0)
    model = mlp([4, 32, 32, 1], ["tanh", "tanh"])
    X, y = teacher_data(model, rng, 256, 0.1)
    base = float(np.mean((model(torch.from_numpy(X)).detach().numpy() - y) ** 2))
    for bound in (0.01, 0.5):
        c = afde_nb.compress(model, relative=True, calibration=X, calibration_targets=y, target_error=bound)
        got = float(np.mean((c.model(torch.from_numpy(X)).detach().numpy() - y) ** 2))
        assert got <= base * (1 + bound) * (1 + 1e-5)
    loose = afde_nb.compress(model, relative=True, calibration=X, calibration_targets=y, target_error=0.5)
    tight = afde_nb.compress(model, relative=True, calibration=X, calibration_targets=y, target_error=0.01)
    assert loose.params_after <= tight.params_after
    with pytest.raises(ValueError, match="calibration_targets"):
        afde_nb.compress(model, target_error=0.01, calibration=X)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_data_aware_eps_zero_is_exact_on_positive_data(rng, act):
    torch.manual_seed(1)
    model = mlp([4, 16, 12, 2], [act, act])
    X = rng.normal(size=(128, 4)).astype(np.float32)
    c = afde_nb.compress(model, 0.0, calibration=X, data_aware=True, method="components")
    assert _max_diff(c.model, model, 4) <= 1e-5
    with pytest.raises(ValueError, match="calibration"):
        afde_nb.compress(model, 0.1, data_aware=True)


def test_flatten_on_the_inputs_is_kept(tmp_path, rng):
    """MNIST-style MLPs start with nn.Flatten: the reduced model keeps it, takes the same inputs,
    and stock torch rebuilds it from the architecture JSON."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight[3] = model[1].weight[2]
        model[1].bias[3] = model[1].bias[2]
    x = torch.randn(64, 3, 4)
    c = afde_nb.compress(model, 0.0, calibration=x.numpy())
    assert isinstance(c.model[0], nn.Flatten) and c.layers[0].neurons_after == 7
    with torch.no_grad():
        assert float((c.model(x) - model(x)).abs().max()) <= 1e-5
    assert c.calibration_error["max_abs"] <= 1e-6
    path = c.save(tmp_path / "r.pt")[0]
    with torch.no_grad():
        assert torch.equal(afde_nb.load_model(path)(x), c.model(x))
    with pytest.raises(afde_nb.UnsupportedLayerError, match="before the first Linear"):
        afde_nb.compress(nn.Sequential(nn.Linear(4, 4), nn.Flatten(), nn.Linear(4, 1)))


def test_approx_through_compress(rng):
    """compress(approx=r) builds the approximate merge path (recorded on the path), keeps eps = 0
    exact with planted duplicates, is refused where it does not apply, and a path of another
    approx is not reused."""
    model = planted_backward_model(rng)
    n_in = model[0].in_features
    c0 = afde_nb.compress(model, 0.0, approx=32)
    assert c0.path.meta["approx"] == 32 and c0.params_after < c0.params_before
    assert _max_diff(model, c0.model, n_in) < 1e-5
    c = afde_nb.compress(model, 0.2, approx=32)
    assert c.params_after <= c0.params_after
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="approx"):
        afde_nb.compress(model, 0.2, approx=64, path=c.path)
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="approx"):
        afde_nb.compress(model, 0.2, method="components", approx=32)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return x + self.b(torch.tanh(self.a(x)))

    # one pipeline: the approximate path serves a model that is not one plain stack too
    res = Res()
    c = afde_nb.compress(res, 0.0, approx=32)
    assert c.path.meta["approx"] == 32
    x = torch.randn(16, 3)
    assert torch.allclose(c.model(x), res(x), atol=1e-5)


# ------------------------------------------------------------------ few calibration rows, error targets
def _stack_refit(model, X, part):
    """What compress's repair gives on all of ``X``: the pipeline's own pieces, by hand."""
    from afde_nb.models.capture import capture
    from afde_nb.pipeline.compress import _fit_rows, reduce_chains

    cap = capture(model)
    calib = cap.calibration(X)
    _, nets, ran = reduce_chains(cap, part, _fit_rows(cap, "calibration", cap.rows(calib)))
    assert ran
    return cap.write(nets)


def test_few_calibration_rows_warn_and_report_a_held_out_error(rng):
    """16 rows for refit layers of ~40 inputs: the repair fits them exactly (an in-sample error of
    ~1e-10), so compress says it is under-determined, how many rows would do, and reports the error
    of the same refit on 3/4 of the rows scored on the other 1/4; the model is the all-rows refit."""
    torch.manual_seed(3)
    model = mlp([4, 48, 40, 2], ["tanh", "tanh"])
    X = rng.normal(size=(16, 4))
    with pytest.warns(UserWarning, match="under-determined") as caught:
        c = afde_nb.compress(model, eps=0.1, calibration=X)
    (w,) = [w for w in caught if "under-determined" in str(w.message)]
    assert w.filename == __file__  # the warning points at the call of compress
    msg = str(w.message)
    assert "in-sample" in msg and "held_out_error" in msg
    widest = max(s.neurons_after for s in c.layers)  # both hidden layers lose neurons: both after them refit
    assert c.layers[0].neurons_after < 48
    assert f"{2 * (widest + 1)} calibration inputs" in msg
    assert c.repaired == "calibration" and c.calibration_error["relative_mse"] < 1e-6
    ho = c.held_out_error
    assert ho["n"] == 4 and ho["fit_n"] == 12
    assert ho["relative_mse"] > 1e3 * c.calibration_error["relative_mse"]
    assert "held out" in c.table()
    # the returned model is the refit on all the rows, as before (bit for bit)
    part = c.path.partition_at(merges_of(c.path, c.partition))
    want = _stack_refit(model, X, part)
    for a, b in zip(c.model.state_dict().values(), want.state_dict().values()):
        assert torch.equal(a, b)
    # fewer than 8 rows: nothing to hold out, the warning still comes
    with pytest.warns(UserWarning, match="under-determined"):
        assert afde_nb.compress(model, eps=0.1, calibration=X[:7]).held_out_error is None


def test_enough_calibration_rows_do_not_warn(rng):
    import warnings

    torch.manual_seed(3)
    model = mlp([4, 48, 40, 2], ["tanh", "tanh"])
    X = rng.normal(size=(400, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = afde_nb.compress(model, eps=0.1, calibration=X)
        # no repair on calibration data: no held-out refit
        assert afde_nb.compress(model, eps=0.1, calibration=X, repair=False).held_out_error is None
        assert afde_nb.compress(model, eps=0.1, repair="pseudo").held_out_error is None
        assert afde_nb.compress(model, eps=0.0, calibration=X).held_out_error is None  # nothing lossy
    ho = c.held_out_error
    assert ho["n"] == 100 and ho["fit_n"] == 300
    # with this many rows the error out of sample is of the order of the in-sample one
    assert 0.5 * c.calibration_error["relative_mse"] < ho["relative_mse"] < 5 * c.calibration_error["relative_mse"]


def test_target_error_the_original_already_misses_warns(rng):
    """Targets equal to the float64 forward of the model: its own MSE is 0, and its exact merges
    (planted duplicates) already miss the bound 0 x (1 + target_error) by rounding."""
    from afde_nb.models.stack import to_network

    model = planted_backward_model(rng)
    X = rng.normal(size=(64, 5))
    y = to_network(model).forward(X)
    with pytest.warns(UserWarning, match="already exceeds the bound") as caught:
        c = afde_nb.compress(model, calibration=X, calibration_targets=y, target_error=0.0)
    (w,) = [w for w in caught if "already exceeds" in str(w.message)]
    assert w.filename == __file__
    assert re.search(r"own MSE on the calibration data, 0 \(([0-9.e-]+) with its exact merges\), already exceeds "
                     r"the bound 0 ", str(w.message))
    assert c.params_after == afde_nb.compress(model, eps=0).params_after  # the exact merges only


def test_target_error_no_merge_meets_warns(rng):
    """Noise-free targets: the model is the best predictor, no lossy merge stays within +0.01 %."""
    torch.manual_seed(0)
    model = mlp([4, 32, 32, 1], ["tanh", "tanh"])
    X, y = teacher_data(model, rng, 256, 0.0)
    with pytest.warns(UserWarning, match="no merge keeps") as caught:
        c = afde_nb.compress(model, calibration=X, calibration_targets=y, target_error=1e-4)
    (w,) = [w for w in caught if "no merge keeps" in str(w.message)]
    assert w.filename == __file__ and "relative increase" in str(w.message)
    assert c.params_after == c.params_before


def test_budget_split_candidates_bounded_for_deep_models():
    """Up to SEGMENTS layers every layer's eps is scaled in turn (as before); a deeper model's
    layers are scaled in SEGMENTS consecutive parts, so a calibrated budget costs at most
    1 + 4 * SEGMENTS scored candidates whatever the depth, and every layer is in one part."""
    from afde_nb.core.target import SCALES, SEGMENTS, scale_candidates

    for L in range(1, SEGMENTS + 1):
        c = scale_candidates(L)
        assert c[0] is None and len(c) == (1 if L == 1 else 1 + len(SCALES) * L)
        assert all(sum(v != 1.0 for v in x) == 1 for x in c[1:])
    for L in (5, 13, 17, 50):
        c = scale_candidates(L)
        assert len(c) == 1 + len(SCALES) * SEGMENTS
        parts = [tuple(i for i, v in enumerate(x) if v != 1.0) for x in c[1::len(SCALES)]]
        assert sorted(i for p in parts for i in p) == list(range(L))  # a partition into consecutive runs
        assert all(p == tuple(range(p[0], p[-1] + 1)) and max(map(len, parts)) - min(map(len, parts)) <= 1
                   for p in parts)
