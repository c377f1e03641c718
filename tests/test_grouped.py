"""Units feeding a grouped convolution (issue 27, docs/method.md "Grouped convolutions"): a
1x1 -> BN -> ReLU -> grouped 3x3 -> BN -> ReLU -> [squeeze-excitation] -> 1x1 stack (RegNet's
unit), the producer's channels one block per group, the blocks a tie: found by torch.fx and
torch.export, exact at eps = 0 on duplicates planted in one group, never merged across groups,
equal widths per group after a budget, written back as a valid grouped conv that reloads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.eval.nets import SqueezeExcitation
from afde_nb.models.capture import capture
from afde_nb.core.tie import Tie
from afde_nb.models.grouped import GroupedGroup, GroupedOut

from test_inverted import random_bn, shapes_consistent

CIN, C, G, COUT = 6, 16, 4, 5
CG = C // G


class Stack(nn.Module):
    """a 1x1 -> BN -> ReLU -> b grouped 3x3 (G groups) -> BN -> ReLU -> [SE] -> c 1x1, averaged."""

    def __init__(self, se: bool = False):
        super().__init__()
        self.a, self.bn1, self.act1 = nn.Conv2d(CIN, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU()
        self.b, self.bn2, self.act2 = nn.Conv2d(C, C, 3, padding=1, groups=G, bias=False), nn.BatchNorm2d(C), nn.ReLU()
        self.se = SqueezeExcitation(C, 4) if se else nn.Identity()
        self.c = nn.Conv2d(C, COUT, 1)

    def forward(self, x):
        h = self.act1(self.bn1(self.a(x)))
        return self.c(self.se(self.act2(self.bn2(self.b(h))))).mean((2, 3))


def _model(se: bool = False, dtype=torch.float64, seed: int = 0) -> Stack:
    torch.manual_seed(seed)
    return random_bn(Stack(se), seed=seed).to(dtype)


def _x(n: int = 6, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, CIN, 10, 10, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _copy_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d, pairs) -> None:
    """Output channel j := output channel i of ``conv`` (its row and its BatchNorm entries)."""
    with torch.no_grad():
        for i, j in pairs:
            conv.weight[j] = conv.weight[i]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[j] = t[i]


def _plant(m: Stack, pairs) -> None:
    """Channel j := channel i of ``a`` (its row and its BatchNorm entries)."""
    _copy_channels(m.a, m.bn1, pairs)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def _removed(c) -> dict:
    return {s.name: s.neurons_before - s.neurons_after for s in c.layers if s.neurons_before != s.neurons_after}


def _valid_grouped(m: Stack, width: int, out: int = CG) -> None:
    """A valid grouped conv: ``width`` input and ``out`` output channels per group, its neighbours
    and BatchNorms at those widths."""
    shapes_consistent(m)
    assert (m.a.out_channels, m.b.in_channels, m.b.groups, m.bn1.num_features) == (G * width, G * width, G, G * width)
    assert (m.b.out_channels, m.bn2.num_features, m.c.in_channels) == (G * out, G * out, G * out)
    assert tuple(m.b.weight.shape) == (G * out, width, 3, 3)


@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("export", [False, True])
def test_one_block_per_group_found_and_reported(se, export):
    """Without SE each group is one chain a -> b -> c (its input and its output channels, two ties);
    with SE, b's output channels are left alone (named), each group's chain is a -> b."""
    m = _model(se)
    if export:  # the same reading of a torch.export program's ATen graph
        m = torch.export.export(m, (_x(2),)).module()
    cap = capture(m)
    chains = [c for c in cap.discovery.chains if isinstance(c[0], GroupedGroup)]
    assert [(c[0].block, c[0].producer.rows, c[0].consumer.rows) for c in chains] == \
        [(b, (b * CG, (b + 1) * CG), (b * CG, (b + 1) * CG)) for b in range(G)]
    nets = [n for n, c in zip(cap.nets, cap.discovery.chains) if isinstance(c[0], GroupedGroup)]
    assert [n.widths for n in nets] == [[CIN, CG, CG] + ([] if se else [COUT])] * G
    assert [len(c) for c in chains] == [1 if se else 2] * G
    assert cap.ties == tuple(Tie(tuple(range(G)), CG, 1, h) for h in range(1 if se else 2))
    report = cap.discovery.report()
    assert "-> group 0 of b (each group a chain of its own)" in report
    if se:
        assert "left alone b: its own output channels: its outputs feed 2 operations" in report
    else:
        assert isinstance(chains[1][1], GroupedOut) and chains[1][1].producer.rows == (CG, 2 * CG)
        assert "lumps b (grouped) channels 0..3 -> bn2 (folded) -> relu -> c (each group a chain of its own)" in report
    # the parameter count is the model's: every block charged its own slices
    blocks = G * (CIN * CG + 2 * CG + CG * CG * 9 + (0 if se else 2 * CG + CG * COUT))
    squeeze = (4 * C + 4) + (C * 4 + C) if se else 0  # the SE's fc1 -> fc2 group
    assert cap.num_params == _params(m) and cap.fixed == _params(m) - blocks - squeeze


@pytest.mark.parametrize("se", [False, True])
def test_duplicates_planted_in_one_group_go_exactly_and_the_padding_is_counted(se):
    m = _model(se)
    _plant(m, [(4, 6), (4, 7)])  # group 1: channels 4..7
    x = _x()
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert _removed(c) == {"a[1]": 2}
    labels = c.partition[[s.name for s in c.layers].index("a[1]")]
    assert labels[0] == labels[2] == labels[3] and len(set(labels.tolist())) == 2
    with torch.no_grad():
        assert _rel(m(x), c.model(x)) < 1e-10
    # the other groups keep 4 channels, so the conv does too: group 1 zero-padded, nothing saved
    assert c.params_after == c.params_before == _params(c.model)
    _valid_grouped(c.model, CG)
    assert torch.all(c.model.b.weight[CG:2 * CG, 2:] == 0) and torch.all(c.model.a.weight[CG + 2:2 * CG] == 0)


def test_a_duplicate_across_groups_is_no_merge():
    """Channels 0 and 4 with equal rows feed different groups' outputs: not one unit twice."""
    m = _model()
    _plant(m, [(0, 4)])
    c = afde_nb.compress(m, 0.0, calibration=_x())
    assert _removed(c) == {}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_duplicates_in_every_group_narrow_the_grouped_conv(dtype, tol, tmp_path):
    m = _model(True, dtype)
    _plant(m, [(b * CG, b * CG + 1 + b % 3) for b in range(G)])
    x = _x(dtype=dtype)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert _removed(c) == {f"a[{b}]": 1 for b in range(G)}
    # per channel: a's row (6) and BN scale and shift (2), b's input columns (16 outputs x 9 taps)
    assert c.params_after == _params(c.model) == c.params_before - G * (CIN + 2 + C * 9 // G)
    _valid_grouped(c.model, CG - 1)
    with torch.no_grad():
        y = c.model(x)
        assert _rel(m(x), y) < tol
    c.save(tmp_path / "small.pt2")
    loaded = torch.export.load(tmp_path / "small.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("se", [False, True])
def test_a_budget_cuts_every_group_to_one_width(se):
    m = _model(se)
    x = _x(16)
    per = CIN + 2 + C * 9 // G
    target = _params(m) - 2 * G * per  # two channels less in every group
    for calib in (x, None):
        c = afde_nb.compress(m, target_params=target, calibration=calib)
        widths = {s.neurons_after for s in c.layers if s.name.startswith("a[")}
        outs = {s.neurons_after for s in c.layers if s.name.startswith("b[")} or {CG}
        assert len(widths) == len(outs) == 1
        assert c.params_after == _params(c.model) <= target
        _valid_grouped(c.model, widths.pop(), outs.pop())
        with torch.no_grad():
            assert np.isfinite(_rel(m(x), c.model(x)))


def _plant_out(m: Stack, pairs) -> None:
    """Output channel j := output channel i of the grouped conv ``b`` (its row, its BatchNorm entries)."""
    _copy_channels(m.b, m.bn2, pairs)


def test_the_grouped_convs_own_outputs_go_exactly_within_a_group():
    """b's output channels 9 := 8 and 11 := 8 (group 2): they go at eps = 0 and nothing else; the
    other groups keep 4, so group 2 is zero-padded; a duplicate across groups (4 := 0) stays."""
    m = _model()
    _plant_out(m, [(8, 9), (8, 11), (0, 4)])
    x = _x()
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert _removed(c) == {"b[2]": 2}
    with torch.no_grad():
        assert _rel(m(x), c.model(x)) < 1e-10
    assert c.params_after == c.params_before == _params(c.model)
    _valid_grouped(c.model, CG)
    padded = slice(2 * CG + 2, 3 * CG)
    assert torch.all(c.model.c.weight[:, padded] == 0) and torch.all(c.model.b.weight[padded] == 0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_both_sides_of_the_grouped_conv_narrow_together(dtype, tol, tmp_path):
    """Duplicates among its inputs and among its outputs in every group: both widths drop by one,
    the conv stays grouped (in 12, out 12, groups 4), the function is kept and the program reloads."""
    m = _model(False, dtype)
    _plant(m, [(b * CG, b * CG + 1 + b % 3) for b in range(G)])
    _plant_out(m, [(b * CG + 3, b * CG + b % 3) for b in range(G)])
    x = _x(dtype=dtype)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert _removed(c) == {**{f"a[{b}]": 1 for b in range(G)}, **{f"b[{b}]": 1 for b in range(G)}}
    # per input channel: a's row and BN (6 + 2), b's columns of its group (4 x 9); then per output
    # channel of the narrowed conv: its kernel (3 x 9), BN (2) and c's column (5)
    assert c.params_after == _params(c.model) == c.params_before - G * (CIN + 2 + CG * 9) - G * (3 * 9 + 2 + COUT)
    _valid_grouped(c.model, CG - 1, CG - 1)
    with torch.no_grad():
        y = c.model(x)
        assert _rel(m(x), y) < tol
    c.save(tmp_path / "small.pt2")
    loaded = torch.export.load(tmp_path / "small.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=tol, atol=tol)


def test_a_depthwise_conv_stays_the_inverted_kind():
    """groups = channels: the inverted-residual reading takes it, not a tie of one-channel blocks."""
    from test_inverted import Block

    cap = capture(random_bn(Block(se=None)))
    assert not any(isinstance(c[0], GroupedGroup) for c in cap.discovery.chains)


def test_an_exported_program_is_narrowed_too():
    """A torch.export program (ATen convs on its parameters, no modules): the same blocks, written
    into the program's parameters; the grouped conv call keeps its groups argument."""
    m = _model(True)
    _plant(m, [(b * CG, b * CG + 2) for b in range(G)])
    x = _x()
    prog = torch.export.export(m, (x,)).module()
    c = afde_nb.compress(prog, 0.0, calibration=x)
    assert _removed(c) == {f"a[{b}]": 1 for b in range(G)}
    assert c.params_after == _params(c.model) == c.params_before - G * (CIN + 2 + C * 9 // G)
    with torch.no_grad():
        assert _rel(m(x), c.model(x)) < 1e-10


class Wide(nn.Module):
    """a 3x3 (bias) -> BN -> ReLU -> b grouped 3x3, stride 2, 3 groups of 4 in and 6 out (bias) -> BN ->
    tanh -> c 1x1: other widths per group on each side, a negation symmetry through tanh."""

    def __init__(self):
        super().__init__()
        self.a, self.bn1 = nn.Conv2d(5, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.b, self.bn2 = nn.Conv2d(12, 18, 3, stride=2, padding=1, groups=3), nn.BatchNorm2d(18)
        self.c = nn.Conv2d(18, 7, 1)

    def forward(self, x):
        return self.c(torch.tanh(self.bn2(self.b(torch.relu(self.bn1(self.a(x))))))).mean((2, 3))


def test_other_widths_per_group_and_a_negated_duplicate():
    torch.manual_seed(0)
    m = random_bn(Wide()).double()
    with torch.no_grad():
        m.a.weight[5], m.a.bias[5] = m.a.weight[4], m.a.bias[4]
        for t in (m.bn1.weight, m.bn1.bias, m.bn1.running_mean, m.bn1.running_var):
            t[5] = t[4]
        m.b.weight[13], m.b.bias[13] = m.b.weight[12], m.b.bias[12]
        for t in (m.bn2.weight, m.bn2.bias, m.bn2.running_mean, m.bn2.running_var):
            t[13] = t[12]
        # output channel 16 = -(output channel 15) after BN: tanh is odd, so they merge with a sign
        m.b.weight[16], m.b.bias[16] = -m.b.weight[15], -m.b.bias[15]
        m.bn2.weight[16], m.bn2.running_var[16] = m.bn2.weight[15], m.bn2.running_var[15]
        m.bn2.running_mean[16], m.bn2.bias[16] = -m.bn2.running_mean[15], -m.bn2.bias[15]
    x = torch.randn(6, 5, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert _removed(c) == {"a[1]": 1, "b[2]": 2}
    with torch.no_grad():
        assert _rel(m(x), c.model(x)) < 1e-10
    assert c.params_after == c.params_before == _params(c.model)  # every other group keeps its width
    t = afde_nb.compress(m, target_params=int(0.6 * c.params_before), calibration=x)
    assert len({s.neurons_after for s in t.layers if s.name.startswith("a[")}) == 1
    assert len({s.neurons_after for s in t.layers if s.name.startswith("b[")}) == 1
    assert t.params_after == _params(t.model) <= int(0.6 * c.params_before)
    shapes_consistent(t.model)
    assert t.model.b.groups == 3 and t.model.b.stride == (2, 2)
