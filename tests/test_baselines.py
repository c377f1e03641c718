"""Baselines: hand-computed masks and scores, torch's own pruning masks, widths, lossless folding of
duplicates, untouched inputs, parameter counts, match_params."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from afde_nb.eval.baselines import (Pruned, count_params, fold_prune, kmeans, magnitude_prune, match_params,
                               structured_prune, wanda_prune, wanda_scores)

from conftest import assert_unchanged, mlp, set_weights, snapshot

W0 = np.array([[1.0, -4.0, 2.0], [-3.0, 0.5, 60.0]])


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def masks(model: nn.Module) -> list[np.ndarray]:
    return [(lin.weight.detach() != 0).numpy().astype(int) for lin in linears(model)]


def widths(model: nn.Module) -> list[int]:
    lins = linears(model)
    return [lins[0].in_features] + [l.out_features for l in lins]


def max_diff(a: nn.Module, b: nn.Module, n_in: int) -> float:
    x = torch.randn(256, n_in, generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def two_layer() -> nn.Sequential:
    """3 -> 2 (W0) -> 1 (0.1, 5)."""
    return set_weights(mlp([3, 2, 1], ["relu"]), [W0, np.array([[0.1, 5.0]])], [np.zeros(2), np.zeros(1)])


def random_model(rng, widths_=(5, 8, 6, 2), acts=("relu", "tanh")) -> nn.Sequential:
    model = mlp(list(widths_), list(acts))
    ws = [rng.normal(size=(o, i)) for i, o in zip(widths_[:-1], widths_[1:])]
    return set_weights(model, ws, [rng.normal(size=o) for o in widths_[1:]])


# ---------------------------------------------------------------- magnitude

def test_magnitude_hand_layer_and_global():
    model = two_layer()
    # layer: first layer prunes round(0.25 * 6) = 2 -> |0.5|, |1|; second prunes round(0.5) = 0
    r = magnitude_prune(model, 0.25)
    assert [m.tolist() for m in masks(r.model)] == [[[0, 1, 1], [1, 0, 1]], [[1, 1]]]
    # global: round(0.25 * 8) = 2 smallest of all 8 weights -> 0.1 (layer 2) and 0.5
    r = magnitude_prune(model, 0.25, scope="global")
    assert [m.tolist() for m in masks(r.model)] == [[[1, 1, 1], [1, 0, 1]], [[0, 1]]]
    assert r.params == 6 + 3 and not r.dense and r.method == "magnitude-global"
    # layer 0.5: 3 of 6 -> 0.5, 1, 2; 1 of 2 -> 0.1
    r = magnitude_prune(model, 0.5)
    assert [m.tolist() for m in masks(r.model)] == [[[0, 1, 0], [1, 0, 1]], [[0, 1]]]
    assert r.params == 4 + 3
    # surviving weights are the original values, biases untouched
    assert torch.equal(linears(r.model)[0].weight, torch.tensor(W0 * masks(r.model)[0], dtype=torch.float32))


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.25, 0.3, 0.5, 0.55, 0.7, 0.9, 1.0])
def test_magnitude_masks_equal_torch(amount):
    """Masks identical to prune.l1_unstructured (layer) and prune.global_unstructured (global),
    with many ties: |W| takes only the values 0.5 and 1."""
    g = torch.Generator().manual_seed(3)
    model = mlp([7, 9, 5, 3], ["tanh", "relu"])
    with torch.no_grad():
        for lin in linears(model):
            sign = torch.randint(0, 2, lin.weight.shape, generator=g) * 2 - 1
            lin.weight.copy_(sign * torch.randint(1, 3, lin.weight.shape, generator=g) / 2)

    def copies() -> list[nn.Linear]:
        out = [nn.Linear(l.in_features, l.out_features) for l in linears(model)]
        with torch.no_grad():
            for c, l in zip(out, linears(model)):
                c.weight.copy_(l.weight)
        return out

    layer = copies()
    for c in layer:
        prune.l1_unstructured(c, "weight", amount)
    glob = copies()
    prune.global_unstructured([(c, "weight") for c in glob], pruning_method=prune.L1Unstructured, amount=amount)
    for scope, ref in (("layer", layer), ("global", glob)):
        ours = magnitude_prune(model, amount, scope=scope)
        for c, got in zip(ref, linears(ours.model)):
            assert torch.equal((got.weight != 0).float(), c.weight_mask), scope
            assert torch.equal(got.weight, c.weight), scope


# ---------------------------------------------------------------- wanda

def test_wanda_hand():
    model = set_weights(mlp([3, 2], []), [W0], [np.zeros(2)])
    x = np.array([[3.0, 0, 0], [0, 0.1, 0], [0, 0, 1]], dtype=np.float32)  # column norms 3, 0.1, 1
    np.testing.assert_allclose(wanda_scores(model, x)[0], [[3, 0.4, 2], [9, 0.05, 60]], rtol=1e-7)
    # 1 per row: the middle column in both rows
    assert masks(wanda_prune(model, 1 / 3, x).model)[0].tolist() == [[1, 0, 1], [1, 0, 1]]
    # 2 per row: row 0 keeps column 0 (score 3), row 1 keeps column 2 (score 60)
    r = wanda_prune(model, 2 / 3, torch.from_numpy(x))
    assert masks(r.model)[0].tolist() == [[1, 0, 0], [0, 0, 1]]
    assert r.params == 2 + 2 and r.method == "wanda"
    # magnitude on the same matrix keeps different weights: the input norms matter
    assert masks(magnitude_prune(model, 2 / 3).model)[0].tolist() == [[0, 1, 0], [0, 0, 1]]


def test_wanda_uses_hidden_activations(rng):
    """Reference: inputs of every Linear collected by forward hooks on the original model."""
    model = random_model(rng)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    seen = []
    hooks = [lin.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().double()))
             for lin in linears(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    r = wanda_prune(model, 0.5, x)
    for lin, got, inp in zip(linears(model), linears(r.model), seen):
        score = lin.weight.detach().double().abs() * inp.norm(dim=0)[None, :]
        k = round(0.5 * lin.in_features)
        expect = torch.ones_like(score, dtype=torch.bool)
        expect.scatter_(1, score.argsort(dim=1)[:, :k], False)
        assert torch.equal(got.weight != 0, expect)
        assert torch.equal(got.weight[expect], lin.weight[expect])


def test_wanda_needs_calibration_of_right_shape(rng):
    model = random_model(rng)
    with pytest.raises(ValueError):
        wanda_prune(model, 0.5, np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        wanda_prune(model, 0.5, None)


# ---------------------------------------------------------------- structured

def test_structured_widths_and_dense_count(rng):
    model = random_model(rng)
    r = structured_prune(model, 0.5)
    assert widths(r.model) == [5, 4, 3, 2]
    assert r.dense and r.params == (5 * 4 + 4) + (4 * 3 + 3) + (3 * 2 + 2) == count_params(r.model)
    assert widths(structured_prune(model, 1.0).model) == [5, 1, 1, 2]
    assert widths(structured_prune(model, 0.0).model) == [5, 8, 6, 2]
    assert max_diff(structured_prune(model, 0.0).model, model, 5) == 0.0


def test_structured_norm_hand():
    # incoming norms (with bias) 5, 1, 2, 4 ; outgoing norms 1, 10, 1, 1 -> scores 5, 10, 2, 4
    # (without the bias neuron 0 would score 3 and lose to neuron 3)
    w1 = np.array([[3.0, 0], [0, 1], [2, 0], [0, 4]])
    b1 = np.array([4.0, 0, 0, 0])
    w2 = np.array([[1.0, 6, 1, 1], [0, 8, 0, 0]])
    model = set_weights(mlp([2, 4, 2], ["tanh"]), [w1, w2], [b1, np.zeros(2)])
    r = structured_prune(model, 0.5)
    lin1, lin2 = linears(r.model)
    assert lin1.weight.tolist() == [[3, 0], [0, 1]] and lin1.bias.tolist() == [4, 0]
    assert lin2.weight.tolist() == [[1, 6], [0, 8]]
    r = structured_prune(model, 0.25)  # keep 3: drops neuron 2 (score 2)
    assert linears(r.model)[0].weight.tolist() == [[3, 0], [0, 1], [0, 4]]


def test_structured_removes_silent_neurons_exactly(rng):
    """Neurons with zero outgoing columns (norm) or dead ReLU activations (wanda) go first, losslessly."""
    model = random_model(rng, (4, 6, 5, 3), ("relu", "relu"))
    lins = linears(model)
    with torch.no_grad():
        lins[1].weight[:, [1, 4]] = 0  # hidden-1 neurons 1, 4 are never read
        lins[2].weight[:, [0, 2]] = 0  # hidden-2 neurons 0, 2 are never read
    r = structured_prune(model, 0.4)  # 6 -> 4, 5 -> 3
    assert widths(r.model) == [4, 4, 3, 3]
    assert max_diff(r.model, model, 4) < 1e-5  # float32 sums without the zero terms
    model = random_model(rng, (4, 6, 3), ("relu",))
    with torch.no_grad():
        linears(model)[0].bias[[2, 3]] = -1e3  # dead on the calibration data
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(2))
    r = structured_prune(model, 1 / 3, score="wanda", calibration=x)
    assert widths(r.model) == [4, 4, 3]
    with torch.no_grad():
        assert float((r.model(x) - model(x)).abs().max()) < 1e-5
    with pytest.raises(ValueError):
        structured_prune(model, 0.5, score="wanda")


# ---------------------------------------------------------------- folding

def duplicated_model(rng) -> nn.Sequential:
    """Hidden 1: rows r0 r1 r2 r0 r1 r2 (3 distinct). Hidden 2: rows a, b, c, d that are pairwise
    equal only after hidden 1 is folded (columns j and j+3 summed): a, b -> (1, 2, 0), c, d -> (0, 1, 0)."""
    r = rng.normal(size=(3, 5))
    l1 = r[[0, 1, 2, 0, 1, 2]]
    l2 = np.array([[1.0, 0, 0, 0, 2, 0, 0.5],
                   [0, 2, 0, 1, 0, 0, 0.5],
                   [0, 1, 0, 0, 0, 0, -0.3],
                   [0, 0, 0, 0, 1, 0, -0.3]]) * 3
    out = rng.normal(size=(2, 5))
    model = mlp([4, 6, 4, 2], ["tanh", "sigmoid"])
    return set_weights(model, [l1[:, :4], l2[:, :6], out[:, :4]], [l1[:, 4], l2[:, 6], out[:, 4]])


def test_folding_duplicates_lossless_front_to_back(rng):
    model = duplicated_model(rng)
    snap = snapshot(model)
    r = fold_prune(model, 0.5)
    assert widths(r.model) == [4, 3, 2, 2] and r.dense and r.method == "folding"
    assert r.params == (4 * 3 + 3) + (3 * 2 + 2) + (2 * 2 + 2) == count_params(r.model)
    assert max_diff(r.model, model, 4) < 1e-6
    lin1 = linears(r.model)[0]  # folded neurons are the means of their (identical) members: exact
    assert torch.equal(lin1.weight, linears(model)[0].weight[:3]) and torch.equal(lin1.bias, linears(model)[0].bias[:3])
    assert_unchanged(model, snap)


def test_folding_widths_and_determinism(rng):
    model = random_model(rng, (5, 10, 7, 3))
    a, b = fold_prune(model, 0.3, seed=4), fold_prune(model, 0.3, seed=4)
    assert widths(a.model) == [5, 7, 5, 3]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert widths(fold_prune(model, 1.0).model) == [5, 1, 1, 3]
    assert max_diff(fold_prune(model, 0.0).model, model, 5) < 1e-6


def test_kmeans_clusters():
    g = np.random.default_rng(0)
    centres = np.array([[0.0, 0], [10, 0], [0, 10]])
    x = np.concatenate([c + 0.1 * g.normal(size=(5, 2)) for c in centres])[g.permutation(15)]
    for seed in range(5):
        labels = kmeans(x, 3, seed=seed)
        truth = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        assert all(len(set(labels[truth == t])) == 1 for t in range(3)) and len(set(labels)) == 3
        assert labels[0] == 0  # numbered by first member
    # more clusters than distinct rows: still exactly k non-empty clusters, duplicates split
    dup = np.array([[1.0, 2], [1, 2], [3, 4], [1, 2]])
    assert kmeans(dup, 3).tolist() == [0, 1, 2, 0]
    assert kmeans(dup, 2).tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError):
        kmeans(dup, 5)


# ---------------------------------------------------------------- common

METHODS = [
    (magnitude_prune, {}),
    (magnitude_prune, {"scope": "global"}),
    (wanda_prune, {"calibration": np.random.default_rng(9).normal(size=(50, 5)).astype(np.float32)}),
    (structured_prune, {}),
    (structured_prune, {"score": "wanda", "calibration": np.random.default_rng(9).normal(size=(50, 5))}),
    (fold_prune, {}),
]


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_input_untouched_and_params(rng, method, kwargs):
    model = random_model(rng)
    with torch.no_grad():
        linears(model)[1].weight[0, :3] = 0  # pre-existing zeros count as pruned
    snap = snapshot(model)
    r = method(model, 0.4, **kwargs)
    assert_unchanged(model, snap)
    assert isinstance(r, Pruned) and isinstance(r.model, nn.Sequential) and r.amount == 0.4
    assert r.model is not model and all(p.data_ptr() != q.data_ptr()
                                        for p in r.model.parameters() for q in model.parameters())
    assert r.params == count_params(r.model, nonzero=not r.dense)
    if not r.dense:
        assert widths(r.model) == widths(model)
        nz = sum(int((l.weight != 0).sum()) for l in linears(r.model))
        assert r.params == nz + 8 + 6 + 2
    with pytest.raises(ValueError):
        method(model, 1.5, **kwargs)


def test_count_params(rng):
    model = random_model(rng)  # 5*8+8 + 8*6+6 + 6*2+2
    assert count_params(model) == count_params(model, nonzero=False) == 116
    with torch.no_grad():
        linears(model)[0].weight[:2] = 0
        linears(model)[0].bias[:] = 0  # biases count even when zero
    assert count_params(model, nonzero=True) == 116 - 10
    assert count_params(model) == 116


@pytest.mark.parametrize("method, kwargs", METHODS)
def test_match_params_hits_largest_count_at_most_target(rng, method, kwargs):
    model = random_model(rng)
    with torch.no_grad():
        linears(model)[0].weight[1, :] = 0
    grid = np.linspace(0, 1, 201)
    reachable = sorted({method(model, float(a), **kwargs).params for a in grid})
    for target in [116, 115, 100, 80, 61, 40, reachable[0]]:
        r = match_params(method, model, target, **kwargs)
        assert r.params <= target
        assert r.params == method(model, r.amount, **kwargs).params
        assert not any(r.params < p <= target for p in reachable), (target, r.params, r.amount)
    with pytest.raises(ValueError):
        match_params(method, model, reachable[0] - 1, **kwargs)


def test_match_params_generic_method_by_bisection(rng):
    """A method without a closed-form count is searched by running it."""
    model = random_model(rng)

    def custom(m, amount):
        return magnitude_prune(m, amount, scope="global")

    for target in [90, 57, 30]:
        r = match_params(custom, model, target)
        assert r.params == match_params(magnitude_prune, model, target, scope="global").params
        assert r.params == target  # global magnitude reaches every count between biases and all
