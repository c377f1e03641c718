"""Budgets that say what they did (issue 28): a per-layer floor (``compress(..., floor=)``), the
split between layers shown with its measured errors, and a budget at or above the model's size."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import afde_nb
from afde_nb.core import target as tgt
from afde_nb.errors import BudgetUnreachableError, InvalidArgumentError

from conftest import mlp


def _mlp(seed: int = 3):
    torch.manual_seed(seed)
    return mlp([6, 48, 24, 3], ["tanh", "tanh"]).eval()


def _x(n: int = 64, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, d)), dtype=torch.float32)


def _units(c) -> list[int]:
    return [s.neurons_after for s in c.layers]


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------ the floor on a tiny LLaMA


@pytest.fixture(scope="module")
def llama():
    T = pytest.importorskip("transformers")
    torch.manual_seed(2)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = T.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (64, 16))  # drawn right after the weights, from the same seed
    with torch.no_grad():  # the first MLP's units in 16 near-copies each: a calibrated 70 % budget spends its
        mlp = model.model.layers[0].mlp  # merges there, far below the other MLP (random MLPs split evenly)
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight.copy_(lin.weight[torch.arange(128) % 16] + 0.002 * torch.randn_like(lin.weight))
    return model, ids


def test_a_floor_keeps_every_llama_mlp_above_it(llama):
    model, ids = llama
    budget = int(0.7 * _params(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation chatter under torch.export
        free = afde_nb.compress(model, target_params=budget, calibration=ids)
        floored = afde_nb.compress(model, target_params=budget, calibration=ids, floor=0.25)
    assert [s.neurons_before for s in free.layers] == [128, 128]
    assert min(_units(free)) < 32  # without a floor the split leaves one layer below a quarter
    assert min(_units(floored)) >= 32 and floored.params_after <= budget  # with it no layer is, in budget
    assert floored.target == {"params": budget, "floor": 0.25} and free.target == {"params": budget}
    table = floored.table()
    assert "floor: lossy merges keep at least 0.25 of each hidden layer's units" in table
    # why the split is what it is: the chosen split's measured error beside one eps for all layers, measured
    # on the 16 held-out calibration inputs (the candidates measured; the others ranked by their estimate)
    line = next(l for l in free.table().splitlines() if l.startswith("budget split between layers"))
    assert "relative MSE on 16 held-out calibration inputs" in line and "(chosen)" in line
    measured = [s for s in free.budget_split["split_scores"] if s is not None]
    chosen = free.budget_split["split_scores"][free.budget_split["split_chosen"]]
    assert chosen == min(measured) and f"(chosen) {chosen:.4g}" in line and "one eps for all layers" in line
    # the layer that lost most units is the one of near-copies, whose merges cost least: its eps is the smaller
    lo = int(np.argmin(_units(free)))
    assert lo == 0 and free.layers[lo].eps == min(s.eps for s in free.layers)


# ------------------------------------------------------------------------------------- the floor's walk


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_floor_that_does_not_bind_changes_nothing(calibrated):
    """floor=1 caps each layer at n - 1 merges, as the path itself does: the same partitions as no
    floor, so the floored walk is the path's own walk where the floor does not bind."""
    model = _mlp()
    kw = {"calibration": _x()} if calibrated else {}
    for keep in (0.8, 0.4, 0.1):
        budget = int(keep * _params(model))
        a = afde_nb.compress(model, target_params=budget, **kw)
        b = afde_nb.compress(model, target_params=budget, floor=1, **kw)
        assert all(np.array_equal(x, y) for x, y in zip(a.partition, b.partition)), keep
        assert a.params_after == b.params_after
        assert (a.budget_split is not None) == calibrated  # a split is scored only on calibration data


@pytest.mark.parametrize("floor, least", [(14, [14, 14]), (0.5, [24, 12])])
@pytest.mark.parametrize("calibrated", [False, True])
def test_a_floor_holds_and_the_budget_is_spent_elsewhere(floor, least, calibrated):
    model = _mlp()
    kw = {"calibration": _x()} if calibrated else {}
    budget = int(0.35 * _params(model))
    free = afde_nb.compress(model, target_params=budget, **kw)
    assert any(u < m for u, m in zip(_units(free), least))  # the floor binds here
    c = afde_nb.compress(model, target_params=budget, floor=floor, **kw)
    assert all(u >= m for u, m in zip(_units(c), least)) and c.params_after <= budget


def test_floor_caps_count_the_exact_merges_as_free():
    """Lossless merges are never refused by a floor (they lose nothing); a count above a layer's
    width keeps the whole layer."""
    model = _mlp()
    with torch.no_grad():  # 40 of the first layer's 48 units are copies of unit 0: exact merges
        model[0].weight[8:] = model[0].weight[0]
        model[0].bias[8:] = model[0].bias[0]
    path = afde_nb.compress(model, eps=0.0).path
    assert path.layers[0].exact == 40
    assert tgt.merge_caps(path.layers, 0.5) == [40, 12]  # 48 - 24 < 40 exact ones: those still go
    assert tgt.merge_caps(path.layers, 100) == [40, 0]
    assert tgt.merge_caps(path.layers, None) is None


def test_a_floor_too_high_for_the_budget_says_so():
    model = _mlp()
    with pytest.raises(BudgetUnreachableError, match=r"the smallest size the floor allows \(at least \[24, 12\] "
                                                     r"units per hidden layer\); lower the floor"):
        afde_nb.compress(model, target_params=int(0.1 * _params(model)), floor=0.5)


def test_target_error_keeps_the_floor():
    model = _mlp()
    X = _x(128)
    with torch.no_grad():
        y = model(X) + 0.05 * torch.randn(128, 3, generator=torch.Generator().manual_seed(1))
    c = afde_nb.compress(model, calibration=X, calibration_targets=y, target_error=10.0, floor=0.5)
    assert _units(c)[0] >= 24 and _units(c)[1] >= 12


@pytest.mark.parametrize("floor", [0, -1, 1.5, 0.0, True, "0.5", float("nan")])
def test_bad_floors_are_refused(floor):
    with pytest.raises(InvalidArgumentError, match="floor"):
        afde_nb.compress(_mlp(), target_params=1000, floor=floor)


@pytest.mark.parametrize("kw", [{"eps": 0.1}, {"target_params": 1000, "method": "components"}])
def test_a_floor_is_for_budgets_on_a_merge_path(kw):
    with pytest.raises(InvalidArgumentError, match="floor applies to a budget"):
        afde_nb.compress(_mlp(), floor=4, **kw)


# ----------------------------------------------------------------------- a budget the model already meets


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_budget_at_or_above_the_model_s_size_says_so(calibrated):
    model = _mlp()
    kw = {"calibration": _x()} if calibrated else {}
    n = _params(model)
    for budget in (n, 10 * n):
        c = afde_nb.compress(model, target_params=budget, **kw)
        assert c.params_after == n
        assert (f"target_params={budget} is at or above the model's {n} parameters: nothing lossy was merged"
                in c.table())
    below = afde_nb.compress(model, target_params=n - 1, **kw)
    assert "at or above" not in below.table()
