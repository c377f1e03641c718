"""The split of a calibrated budget between layers from the chains' own rows (issue 29,
afde_nb/pipeline/split.py): the budget met as before, the floor kept, and the model runs it costs
counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.core.target import SEGMENTS, merge_caps, scale_candidates
from afde_nb.core.target import for_params as floored_for_params, uniform as floored_uniform
from afde_nb.pipeline.split import TOP, input_rows

from conftest import mlp

RUNS = [0]  # forward calls of every Counted module (the model and every copy compress makes of it)


class Block(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Counted(nn.Module):
    """Residual MLP blocks (one chain each) whose forward calls are counted."""

    def __init__(self, blocks: int = 3, d: int = 8, h: int = 24):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.blocks = nn.ModuleList(Block(d, h) for _ in range(blocks))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        RUNS[0] += 1
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _model(blocks: int = 3, seed: int = 5) -> Counted:
    torch.manual_seed(seed)
    return Counted(blocks).eval()


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _merges(c) -> list[int]:
    return [lp.n - int(l.max()) - 1 for lp, l in zip(c.path.layers, c.partition)]


def _options(c, target: int, floor=None) -> list[list[int]]:
    caps = merge_caps(c.path.layers, floor)
    return [floored_for_params(c.path, target, s, caps) for s in scale_candidates(len(c.path.layers))] + \
        [floored_uniform(c.path, target, caps)]


@pytest.mark.parametrize("repair", [False, True])
@pytest.mark.parametrize("keep", [0.8, 0.55])
def test_the_split_meets_the_budget_as_before(repair, keep):
    """The chosen split is one of the candidates cut at the budget by the same walk as before (the
    fewest merges along the scaled order within the budget, or the same fraction of every layer):
    within the budget, and what ``Compression.budget_split`` says was chosen."""
    m = _model()
    x = torch.randn(128, 5)
    target = int(keep * _params(m))
    c = afde_nb.compress(m, target_params=target, calibration=x, repair=repair)
    assert c.params_after == _params(c.model) <= target
    opts = _options(c, target)
    split = c.budget_split
    assert _merges(c) == opts[split["split_chosen"]]
    assert c.path.params_at(opts[split["split_chosen"]]) == c.params_after
    # one eps for all layers and the same fraction of every layer are always measured; the chosen is the lowest
    scores = split["split_scores"]
    assert scores[0] is not None and scores[-1] is not None
    assert scores[split["split_chosen"]] == min(s for s in scores if s is not None)
    assert len(split["split_estimates"]) == len(opts) == len(split["split_candidates"])


def test_the_split_keeps_the_floor():
    m = _model()
    x = torch.randn(128, 5)
    target = int(0.6 * _params(m))
    free = afde_nb.compress(m, target_params=target, calibration=x)
    c = afde_nb.compress(m, target_params=target, calibration=x, floor=12)
    assert min(s.neurons_after for s in free.layers) < 12  # the floor binds here
    assert min(s.neurons_after for s in c.layers) >= 12 and c.params_after <= target
    assert _merges(c) == _options(c, target, floor=12)[c.budget_split["split_chosen"]]


@pytest.mark.parametrize("blocks", [1, 2, 6])
def test_the_split_costs_few_model_runs(blocks):
    """A calibrated budget runs the model as often as a calibrated eps (the calibration run, the
    reports) plus the split's runs on the held-out quarter: one per part of the chains for their
    gains (none for one chain) and one per measured candidate (at most TOP + 2), where scoring every
    candidate cost one run each and a run for the repair's rows."""
    m = _model(blocks)
    x = torch.randn(64, 5)
    RUNS[0] = 0
    e = afde_nb.compress(m, 0.1, calibration=x)
    eps_runs = RUNS[0]
    RUNS[0] = 0
    c = afde_nb.compress(m, target_params=int(0.6 * _params(m)), calibration=x)
    split = c.budget_split
    if blocks == 1:  # one hidden layer: nothing to split, nothing scored
        assert split is None and RUNS[0] == eps_runs
        return
    measured = sum(s is not None for s in split["split_scores"])
    gains = min(blocks, SEGMENTS)
    assert split["split_model_runs"] == gains + measured <= gains + TOP + 2
    assert RUNS[0] == eps_runs + split["split_model_runs"]
    assert split["split_model_runs"] < len(split["split_candidates"]) + 1  # what scoring every candidate cost
    assert e.budget_split is None


def test_a_plain_stack_splits_without_running_the_model():
    """A plain stack's one chain is the model: its candidates are scored on the chain's own
    held-out rows, the same figure as the model's, with no run of the torch model at all."""
    torch.manual_seed(3)
    m = mlp([6, 32, 16, 3], ["tanh", "tanh"]).eval()
    x = torch.randn(64, 6)
    target = int(0.5 * _params(m))
    c = afde_nb.compress(m, target_params=target, calibration=x)
    assert c.budget_split["split_model_runs"] == 0 and c.budget_split["split_gains"] == [1.0]
    assert c.params_after <= target


def test_rows_belong_to_inputs_in_order():
    """Row r of R rows drawn in input order from n inputs is input r * n // R's: every row of an
    input where each gives as many rows, and a held-out set of inputs selects their rows."""
    assert input_rows(12, 4, np.array([1, 3])).tolist() == [3, 4, 5, 9, 10, 11]
    assert input_rows(4, 4, np.array([0, 2])).tolist() == [0, 2]
    got = input_rows(4096, 64, np.arange(16))
    assert len(got) == 1024 and got.tolist() == list(range(1024))
