"""float32 end to end (issue 10): a float32 model is read in place, reduced in float32 by the engine
and handed back as float32 tensors; the input stays bit-identical and shares no storage with the
result; float64 models stay float64; the engine's quotient agrees with the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb import _core
from afde_nb.models.stack import to_network, to_torch
from afde_nb.errors import InvalidWeightsError
from afde_nb.core.network import Layer, Network
from afde_nb.core.reduce import quotient

from conftest import mlp
from reference import quotient_numpy


def planted(dtype=torch.float32, act="tanh", seed=0) -> nn.Sequential:
    """A 6-12-10-3 net whose hidden layers hold exact copies and (odd activations) negated copies."""
    torch.manual_seed(seed)
    model = mlp([6, 12, 10, 3], [act, act], dtype=dtype)
    with torch.no_grad():
        for k, lin in ((0, model[0]), (1, model[2])):
            lin.weight[3] = lin.weight[1]
            lin.bias[3] = lin.bias[1]
            lin.weight[5] = lin.weight[1]
            lin.bias[5] = lin.bias[1]
            if act in ("tanh", "identity"):
                lin.weight[7] = -lin.weight[2]
                lin.bias[7] = -lin.bias[2]
    return model


def bits(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor's bit pattern, copied (NaN-safe comparison)."""
    return {k: v.detach().clone().view(torch.int32 if v.dtype == torch.float32 else torch.int64)
            for k, v in model.state_dict().items()}


def storage_ranges(model: nn.Module) -> list[tuple[int, int]]:
    out = []
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        out.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
    return out


def assert_disjoint(a: nn.Module, b: nn.Module) -> None:
    for lo, hi in storage_ranges(a):
        for lo2, hi2 in storage_ranges(b):
            assert hi <= lo2 or hi2 <= lo or lo == hi or lo2 == hi2, "the models share storage"


@pytest.mark.parametrize("eps,calibrated", [(0.0, False), (0.5, False), (0.5, True)])
def test_float32_in_float32_out_input_untouched_and_unshared(eps, calibrated):
    model = planted()
    before = bits(model)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    c = afde_nb.compress(model, eps, calibration=x if calibrated else None)
    assert all(p.dtype == torch.float32 for p in c.model.parameters())
    assert c.reduced_network.dtype == "float32"
    after = bits(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert_disjoint(model, c.model)
    with torch.no_grad():  # writing into the result leaves the input alone
        for p in c.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in bits(model).items())


def test_eps_zero_keeps_the_function_to_float32_precision():
    model = planted()
    c = afde_nb.compress(model, 0.0)
    assert [s.neurons_after for s in c.layers] == [9, 7]  # copies and the negated copy merged
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(500, 6)), dtype=torch.float32)
    with torch.no_grad():
        y, z = model(x), c.model(x)
        y64 = model.double()(x.double())
    scale = float(y64.abs().max())
    assert float((z.double() - y64).abs().max()) <= 1e-6 * scale * 10
    assert float((z - y).abs().max()) <= 1e-5 * scale
    # and it is float32 rounding, not a lossy merge: the same partition in float64 is exact
    c64 = afde_nb.compress(planted(torch.float64), 0.0)
    with torch.no_grad():
        assert float((c64.model(x.double()) - y64).abs().max()) <= 1e-12 * scale


def test_float64_models_stay_float64():
    model = planted(torch.float64, act="sigmoid")
    before = bits(model)
    c = afde_nb.compress(model, 0.0)
    assert all(p.dtype == torch.float64 for p in c.model.parameters())
    assert c.params_after < c.params_before
    x = torch.as_tensor(np.random.default_rng(2).normal(size=(100, 6)))
    with torch.no_grad():
        np.testing.assert_allclose(c.model(x).numpy(), model(x).numpy(), rtol=0, atol=1e-12)
    assert all(torch.equal(before[k], v) for k, v in bits(model).items())
    assert_disjoint(model, c.model)


def test_to_network_reads_in_place_and_read_only():
    model = planted()
    net = to_network(model)
    w = net.layers[0].weight
    assert w.dtype == np.float32 and not w.flags.writeable
    assert np.shares_memory(w, model[0].weight.detach().numpy())
    with pytest.raises(ValueError):
        w[0, 0] = 1.0
    half = to_network(planted().half())  # other dtypes: a float64 copy, read-only too
    assert half.layers[0].weight.dtype == np.float64 and not half.layers[0].weight.flags.writeable
    assert half.dtype == "float16"
    assert afde_nb.compress(planted().half(), 0.0).model[0].weight.dtype == torch.float16


def test_to_torch_hands_over_the_quotient_once_and_copies_otherwise():
    model = planted()
    net = to_network(model)
    small = quotient(net, afde_nb.lump(net, 0.0))[0]
    assert small.owned
    a, b = to_torch(small), to_torch(small)
    assert np.shares_memory(a[0].weight.detach().numpy(), small.layers[0].weight)  # adopted: no copy
    assert not small.layers[0].weight.flags.writeable  # the Network may not write into the model
    assert_disjoint(a, b)  # the second call copies
    assert_disjoint(model, to_torch(net))  # never the user's tensors


@pytest.mark.parametrize("where,bad", [("2.weight", float("nan")), ("0.bias", float("inf")),
                                       ("4.weight", float("-inf"))])
@pytest.mark.parametrize("method", ["ward", "components"])
def test_non_finite_weights_name_the_tensor(where, bad, method):
    model = planted()
    mod, name = where.split(".")
    with torch.no_grad():
        getattr(model[int(mod)], name).view(-1)[3] = bad
    before = bits(model)
    with pytest.raises(InvalidWeightsError, match=where.replace(".", r"\.")):
        afde_nb.compress(model, 0.0, method=method)  # the engine's first pass finds it
    with pytest.raises(InvalidWeightsError, match=where.replace(".", r"\.")):
        to_network(model)
    assert all(torch.equal(before[k], v) for k, v in bits(model).items())


def test_a_reused_path_is_refused_after_an_in_place_write():
    model = planted()
    c = afde_nb.compress(model, 0.5)
    with torch.no_grad():
        model[2].weight.mul_(0.5)  # the path's network is a view: equal arrays, other weights
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="another model"):
        afde_nb.compress(model, 0.5, path=c.path)


def _random_partition(rng, n, signed):
    k = int(rng.integers(1, n + 1))
    lab = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(lab)
    _, lab = np.unique(lab, return_inverse=True)
    s = rng.choice([-1, 1], n) if signed else np.ones(n, dtype=np.int64)
    return lab.astype(np.int64), s.astype(np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "leaky_relu", "identity"])
@pytest.mark.parametrize("seed", range(4))
def test_engine_quotient_agrees_with_the_numpy_reference(dtype, act, seed):
    rng = np.random.default_rng(seed)
    widths = [5, 9, 7, 8, 3]
    taps = [1, 1, 2 if seed % 2 else 1, 1]  # a layer reading 2 columns per source neuron
    layers = []
    for k in range(4):
        d = widths[k] * taps[k]
        W = rng.normal(size=(widths[k + 1], d)).astype(dtype)
        if k == 1 and act in ("relu", "leaky_relu"):
            W[2] = 0.0  # a dead neuron: scale 0
        b = rng.normal(size=widths[k + 1]).astype(dtype)
        layers.append(Layer(W, b, act if k < 3 else "identity", taps=taps[k]))
    net = Network(layers, dtype=np.dtype(dtype).name)
    labels, signs, weights = [], [], []
    for h in range(3):
        lab, s = _random_partition(rng, widths[h + 1], act in ("tanh", "sigmoid", "identity"))
        labels.append(lab)
        signs.append(s)
        weights.append(rng.uniform(0.0, 2.0, widths[h + 1]) if h == 1 else None)
    weights[1][:2] = 0.0  # possibly a block of zero mass: the plain mean
    small, blocks = quotient(net, labels, signs, weights)
    ref, ref_blocks = quotient_numpy(net, labels, signs, weights)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for a, b in zip(small.layers, ref.layers):
        assert a.weight.dtype == dtype and a.bias.dtype == dtype
        scale = max(float(np.abs(b.weight).max(initial=0)), float(np.abs(b.bias).max(initial=0)), 1.0)
        np.testing.assert_allclose(a.weight, b.weight, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(a.bias, b.bias, rtol=0, atol=tol * scale)
    for blk, (lab, s, c, m, spread) in zip(blocks, ref_blocks):
        np.testing.assert_array_equal(blk.labels, lab)
        np.testing.assert_array_equal(blk.signs, s)
        np.testing.assert_allclose(blk.scales, c, rtol=1e-12)
        np.testing.assert_allclose(blk.weights, m, rtol=1e-12)
        assert blk.spread == pytest.approx(spread, rel=1e-9, abs=1e-15)
    # none of the result aliases the input
    for a in small.layers:
        for l in net.layers:
            assert not np.shares_memory(a.weight, l.weight) and not np.shares_memory(a.bias, l.bias)


def test_exact_rows_in_float32_match_float64():
    rng = np.random.default_rng(7)
    W = rng.normal(size=(40, 11)).astype(np.float32)
    b = rng.normal(size=40)
    W[10], b[10] = W[3], b[3]
    W[20], b[20] = -W[3], -b[3]
    W[30] = 0.0
    for homogeneous, signed in ((False, True), (False, False), (True, False)):
        got = _core.exact_rows(W, b, homogeneous, signed, 1e-6)
        want = _core.exact_rows(W.astype(np.float64), b, homogeneous, signed, 1e-6)
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(g, w)
        assert got[3] == -1
    lab, s, _, _ = _core.exact_rows(W, b, False, True, 1e-6)
    assert lab[10] == lab[3] == lab[20] and s[20] == -s[3] and len(set(lab)) == 38
    W[5, 2] = np.nan
    assert _core.exact_rows(W, b, False, True, 1e-6)[3] == 5


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.3, 2.0])
def test_cluster_l1_reads_float32_as_its_float64_values(eps):
    rng = np.random.default_rng(3)
    F = rng.normal(size=(60, 9)).astype(np.float32)
    F[7] = F[2]
    want = _core.cluster_l1(F.astype(np.float64), eps)
    np.testing.assert_array_equal(_core.cluster_l1(F, eps), want)
    np.testing.assert_array_equal(_core.cluster_l1(F, eps, allpairs=True), want)


def test_engine_quotient_refuses_bad_labels():
    W = np.ones((4, 3), dtype=np.float32)
    b = np.zeros(4)
    for lab, k in (([0, 1, 2, 5], 3), ([0, 0, 1, 1], 3), ([-1, 0, 1, 1], 2)):
        with pytest.raises(ValueError):
            _core.quotient_layer(W, b, None, None, None, 3, np.array(lab), k, None, False, None)
    with pytest.raises(ValueError):  # column labels out of range
        _core.quotient_layer(W, b, np.array([0, 1, 4]), None, None, 2, np.arange(4), 4, None, False, None)
