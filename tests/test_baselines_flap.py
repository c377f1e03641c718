"""FLAP (issue 29): the fluctuation score by hand, bias compensation exact for units of constant
value, the global structure's parameter budget (longest prefix of the standardised ranking, every
layer keeps a unit), the uniform structure's counts, match_params' closed form, the repair, on a
plain stack, a gated MLP (with and without biases) and a tiny LLaMA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from afde_nb.eval.baselines import (count_params, flap_prune, flap_scores, match_params, repair_pruned,
                                    structured_prune)
from afde_nb.eval.baselines.flap import _Selector, _unit_costs, flap_stats
from afde_nb.eval.baselines._common import units
from afde_nb.errors import UnsupportedLayerError

from conftest import assert_unchanged, mlp, set_weights, snapshot
from test_baselines_gated import Gated, calib, hidden


def linears(m: nn.Module) -> list[nn.Linear]:
    return [l for l in m.modules() if isinstance(l, nn.Linear)]


def stack(rng, const=(2, 5)) -> nn.Sequential:
    """4 -> 7 (relu) -> 6 (tanh) -> 3; hidden-1 units ``const`` have zero rows and positive biases
    (constant values), and so does hidden-2 unit 1."""
    ws = [rng.normal(size=(7, 4)), rng.normal(size=(6, 7)), rng.normal(size=(3, 6))]
    bs = [rng.normal(size=7), rng.normal(size=6), rng.normal(size=3)]
    for j in const:
        ws[0][j] = 0
        bs[0][j] = 1.5 + j
    ws[1][1] = 0
    return set_weights(mlp([4, 7, 6, 3], ["relu", "tanh"]), ws, bs)


def x_of(n=200, d=4, seed=3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_scores_by_hand(rng):
    model = stack(rng)
    x = x_of()
    l1, l2, l3 = linears(model)
    with torch.no_grad():
        h1 = torch.relu(l1(x)).double()
        h2 = torch.tanh(l2(torch.relu(l1(x)))).double()
    got = flap_scores(model, x)
    for s, h, w in zip(got, (h1, h2), (l2.weight, l3.weight)):
        expect = h.var(dim=0, unbiased=False) * (w.detach().double() ** 2).sum(dim=0)
        np.testing.assert_allclose(s, expect.numpy(), rtol=1e-5, atol=1e-12)
    assert got[0][2] == 0 and got[0][5] == 0 and got[1][1] < 1e-20  # constant units do not fluctuate


def one_layer(rng) -> nn.Sequential:
    """4 -> 7 (relu) -> 3; hidden units 2 and 5 have zero rows and positive biases (constant)."""
    ws, bs = [rng.normal(size=(7, 4)), rng.normal(size=(3, 7))], [rng.normal(size=7), rng.normal(size=3)]
    ws[0][[2, 5]] = 0
    bs[0][[2, 5]] = [1.5, 2.5]
    return set_weights(mlp([4, 7, 3], ["relu"]), ws, bs)


@pytest.mark.parametrize("depth, structure, amount, widths", [
    (1, "uniform", 2 / 7, [5]), (1, "global", 2 / 7, [5]),
    (2, "uniform", 0.24, [5, 5]),  # round(7 * 0.76) = 5, round(6 * 0.76) = 5: the three constant units
])
def test_compensation_removes_constant_units_exactly(rng, depth, structure, amount, widths):
    """Units of constant value go first (score 0) and, with their mean in the consumer's bias,
    change nothing on any input; without compensation the output moves."""
    model = one_layer(rng) if depth == 1 else stack(rng)
    snap = snapshot(model)
    x, other = x_of(), x_of(50, seed=11) * 3
    r = flap_prune(model, amount, x, structure=structure)
    assert_unchanged(model, snap)
    assert [l.out_features for l in linears(r.model)[:-1]] == widths
    with torch.no_grad():
        for inp in (x, other):
            assert float((r.model(inp) - model(inp)).abs().max()) < 1e-5
        loose = flap_prune(model, amount, x, structure=structure, compensate=False)
        assert float((loose.model(x) - model(x)).abs().max()) > 0.1
    assert r.params == count_params(r.model) and r.dense and r.method == f"flap-{structure}"


def test_uniform_removes_the_constant_units_exactly(rng):
    model = stack(rng, const=(2, 5))
    x = x_of()
    r = flap_prune(model, 2 / 7, x, structure="uniform")  # hidden 1 keeps 5 of 7, hidden 2 keeps 4 of 6
    l1, l2, _ = linears(r.model)
    assert (l1.out_features, l2.out_features) == (5, 4)
    # hidden 1 lost exactly its two constant units: the kept rows are the others, in order
    np.testing.assert_array_equal(l1.weight.detach().numpy(), linears(model)[0].weight.detach().numpy()[[0, 1, 3, 4, 6]])


def test_global_budget(rng):
    """The kept units' cost is within (1 - amount) of the total, and the next unit of the
    standardised ranking would not fit; every layer keeps a unit; the count is closed-form."""
    model = stack(rng, const=())
    x = x_of()
    cap = units(model)
    costs = _unit_costs(cap)
    assert costs == [4 + 1 + 6, 7 + 1 + 3]  # incoming row + bias + consumer column
    sel = _Selector(cap, flap_stats(cap, x), "global")
    z = np.concatenate([(s - s.mean()) / s.std(ddof=1) for s in flap_scores(model, x)])
    cost = np.repeat(costs, [7, 6])
    order = np.argsort(-z, kind="stable")
    total = 7 * costs[0] + 6 * costs[1]
    for amount in (0.0, 0.1, 0.33, 0.5, 0.8, 0.95, 1.0):
        keep = sel.keep(amount)
        kept_cost = sum(len(k) * c for k, c in zip(keep, costs))
        budget = (1 - amount) * total
        forced = sum(c for k, c, n in zip(keep, costs, (7, 6)) if len(k) == 1)
        assert kept_cost <= budget + 1e-9 or kept_cost <= forced + 1e-9
        m = int(np.searchsorted(np.cumsum(cost[order]), budget + 1e-9, side="right"))
        assert m == len(order) or np.cumsum(cost[order])[m] > budget  # the next one would not fit
        for i, k in enumerate(keep):
            assert 1 <= len(k) and np.all(np.diff(k) > 0)
        r = flap_prune(model, amount, x)
        assert [l.out_features for l in linears(r.model)[:2]] == [len(k) for k in keep]
        assert r.params == cap.num_params_with([len(k) for k in keep]) == count_params(r.model)
    assert [len(k) for k in sel.keep(1.0)] == [1, 1]


def test_gated_constant_unit_and_added_bias():
    """A gated unit of constant value (zero gate and up rows, biases only) goes first and its
    mean lands in the down projection's bias: the output is unchanged. A bias-free down projection
    gets a bias, counted."""
    torch.manual_seed(0)
    g = Gated(bias=True).eval()
    with torch.no_grad():
        for lin in (g.gate, g.up):
            lin.weight[[3, 9]] = 0
        g.gate.bias[[3, 9]] = torch.tensor([0.7, -1.2])
        g.up.bias[[3, 9]] = torch.tensor([2.0, 0.5])
    x = calib()
    s = flap_scores(g, x)[0]
    h = hidden(g, x)
    np.testing.assert_allclose(s, h.var(axis=0) * (g.down.weight.detach().double().numpy() ** 2).sum(axis=0),
                               rtol=1e-5, atol=1e-12)
    r = flap_prune(g, 2 / 16, x, structure="uniform")
    assert r.model.down.in_features == 14
    with torch.no_grad():
        assert float((r.model(x) - g(x)).abs().max()) < 1e-5
    nb = Gated(bias=False).eval()
    r = flap_prune(nb, 0.25, x, structure="uniform")
    assert r.model.down.bias is not None and r.params == count_params(r.model)
    assert r.params == match_params(flap_prune, nb, r.params, calibration=x, structure="uniform").params
    with torch.no_grad():  # the down projection's mean output on the calibration rows is kept
        np.testing.assert_allclose(r.model(x).mean(0).numpy(), nb(x).mean(0).numpy(), atol=1e-5)
    fixed = repair_pruned(r, nb, x)
    assert fixed.model.down.bias is None  # refit as the original's layer: without a bias
    with torch.no_grad():
        assert float((fixed.model(x) - nb(x)).norm()) < float((r.model(x) - nb(x)).norm())


@pytest.mark.parametrize("structure", ["global", "uniform"])
def test_match_params(rng, structure):
    model = stack(rng, const=())
    x = x_of()
    grid = np.linspace(0, 1, 101)
    reachable = sorted({flap_prune(model, float(a), x, structure=structure).params for a in grid})
    for target in [count_params(model), 150, 120, 90, reachable[0]]:
        r = match_params(flap_prune, model, target, calibration=x, structure=structure)
        assert r.params <= target and r.params == count_params(r.model)
        assert not any(r.params < p <= target for p in reachable)
    with pytest.raises(ValueError):
        match_params(flap_prune, model, reachable[0] - 1, calibration=x, structure=structure)


def test_refusals(rng):
    model = stack(rng)
    with pytest.raises(ValueError):
        flap_prune(model, 0.5, None)
    with pytest.raises(ValueError):
        flap_prune(model, 0.5, x_of(), structure="nope")
    with pytest.raises(ValueError):
        flap_prune(model, 1.5, x_of())
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    with pytest.raises(UnsupportedLayerError, match="convolution chain"):
        flap_prune(conv, 0.5, torch.randn(4, 1, 8, 8))


def test_tiny_llama():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=99,
                                         max_position_embeddings=32)).eval()
    ids = torch.randint(3, 99, (8, 8), generator=torch.Generator().manual_seed(1))
    target = structured_prune(m, 0.25).params
    r = match_params(flap_prune, m, target, calibration=ids)
    assert r.params <= target and r.params == count_params(r.model)
    assert all(l.mlp.down_proj.bias is not None for l in r.model.model.layers)
    with torch.no_grad():
        y = m(ids).logits
        e = float((y - r.model(ids).logits).norm() / y.norm())
        fixed = repair_pruned(r, m, ids)
        assert float((y - fixed.model(ids).logits).norm() / y.norm()) < e
