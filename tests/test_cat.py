"""Units through ``torch.cat`` and units that fan out (issue 27): each producer's units are a slice
of a consumer's columns (afde_nb.models.groups: the walk's ``cat`` rule, ``Affine.cols``/``Norm.cols``),
several groups share that consumer, and units read by several consumers are one group with all of
them (``Group.more``: a stacked layer bounds a merge on every consumer). The writing composes
(afde_nb.models.surgery: each slice's columns where it stands, its share of the bias, the rows of a
consumer that is another group's producer merged as the slices left them). Hand-built models in
the shape of SqueezeNet's fire modules, an Inception block and a DenseNet dense block: planted
duplicates go at eps = 0 and nothing else does, a 70 % budget is reached and counted right, the
reduced model round-trips through ``.pt2``, and what is left alone is named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import afde_nb
from afde_nb.models.capture import capture

torch.set_num_threads(1)


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1 -> ReLU, then expand 1x1 and expand 3x3, each ReLU,
    concatenated."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, stride=2)
        self.fire1 = Fire(12, 6, 10, 10)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fire2 = Fire(20, 6, 12, 8)
        self.fire3 = Fire(20, 8, 8, 12)
        self.head = nn.Conv2d(20, 5, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.pool(self.fire1(x))
        x = self.fire3(self.fire2(x))
        return F.adaptive_avg_pool2d(F.relu(self.head(x)), 1).flatten(1)


class Basic(nn.Module):
    """Inception's BasicConv2d: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class InceptionLike(nn.Module):
    """Branches concatenated into one 1x1 conv (``mix``: a consumer of two slices and a producer of
    its own group), then branches concatenated and fanned out to two branch convs (left alone: two
    consumers), then concatenated into a Linear through a pooling and a flatten."""

    def __init__(self):
        super().__init__()
        self.stem = Basic(3, 10, 3)
        self.b1 = Basic(10, 8, 1)
        self.b2a = Basic(10, 6, 1)
        self.b2b = Basic(6, 8, 3, 1)
        self.mix = Basic(16, 12, 1)
        self.c1 = Basic(12, 6, 1)
        self.c2 = Basic(12, 5, 3, 1)
        self.d1 = Basic(11, 8, 1)
        self.d2 = Basic(11, 8, 3, 1)
        self.fc = nn.Linear(16 * 4, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.mix(torch.cat([self.b1(x), self.b2b(self.b2a(x))], 1))
        x = torch.cat([self.c1(x), self.c2(x)], 1)  # read by d1 and d2: fanned out
        x = torch.cat([self.d1(x), self.d2(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: BatchNorm -> ReLU -> 1x1 conv -> BatchNorm -> ReLU -> 3x3 conv on
    the concatenation of every earlier feature map."""

    def __init__(self, cin: int, growth: int, width: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, growth, 3, padding=1, bias=False)

    def forward(self, feats):
        x = self.conv1(F.relu(self.norm1(torch.cat(feats, 1))))
        return self.conv2(F.relu(self.norm2(x)))


class DenseLike(nn.Module):
    """Two dense blocks of three layers (each layer's features read by every later layer: left
    alone), a transition (BatchNorm -> ReLU -> 1x1 conv -> average pool) between them and a head
    (BatchNorm -> ReLU -> pool -> Linear): the last layer of a block feeds only the block's
    concatenation, through a slice of a BatchNorm, into one consumer."""

    def __init__(self, growth: int = 6):
        super().__init__()
        self.conv0, self.norm0 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.block1 = nn.ModuleList([DenseLayer(8 + i * growth, growth, 10) for i in range(3)])
        c = 8 + 3 * growth
        self.tnorm, self.tconv = nn.BatchNorm2d(c), nn.Conv2d(c, 12, 1, bias=False)
        self.block2 = nn.ModuleList([DenseLayer(12 + i * growth, growth, 10) for i in range(3)])
        self.norm5 = nn.BatchNorm2d(12 + 3 * growth)
        self.fc = nn.Linear(12 + 3 * growth, 5)

    @staticmethod
    def _block(layers, x):
        feats = [x]
        for layer in layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)

    def forward(self, x):
        x = F.relu(self.norm0(self.conv0(x)))
        x = self._block(self.block1, x)
        x = F.avg_pool2d(self.tconv(F.relu(self.tnorm(x))), 2)
        x = F.relu(self.norm5(self._block(self.block2, x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, every BatchNorm's statistics and affine random too (none is the identity)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _param(model: nn.Module, path: str) -> torch.Tensor:
    owner, _, leaf = path.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, leaf)


def _plant(model: nn.Module, conv: str, pairs, norm: str | None = None, at: int = 0) -> None:
    """Unit j := unit i of ``conv`` (its weight row, bias, and its entries ``at + i`` of BatchNorm
    ``norm``, which may read a concatenation where the units stand at ``at``)."""
    with torch.no_grad():
        for i, j in pairs:
            m = model.get_submodule(conv)
            m.weight[j] = m.weight[i]
            if m.bias is not None:
                m.bias[j] = m.bias[i]
            if norm:
                for leaf in ("weight", "bias", "running_mean", "running_var"):
                    t = _param(model, f"{norm}.{leaf}")
                    t[at + j] = t[at + i]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / a.norm())


def _reloads(c, x, tmp_path) -> None:
    """The reduced model saved as a .pt2 program loads with stock torch and computes what it did."""
    c.save(tmp_path / "r.pt2", example_inputs=x[:2])
    prog = torch.export.load(str(tmp_path / "r.pt2")).module()
    assert torch.allclose(prog(x[:4]), c.model(x[:4]), atol=1e-6)


def _sizes(c) -> dict[str, tuple[int, int]]:
    return {s.name: (s.neurons_before, s.neurons_after) for s in c.layers}


def _check_budget(model, x, tmp_path, fraction: float = 0.7):
    """A ``fraction`` budget with calibration: reached, counted as the reduced model holds it, the
    model runs and round-trips."""
    n = sum(p.numel() for p in model.parameters())
    target = int(fraction * n)
    c = afde_nb.compress(model, target_params=target, calibration=x)
    held = sum(p.numel() for p in c.model.parameters())
    assert c.params_after <= target and held == c.params_after
    y = c.model(x[:8])
    assert y.shape == model(x[:8]).shape and torch.isfinite(y).all()
    assert np.isfinite(c.calibration_error["relative_mse"])
    _reloads(c, x, tmp_path)
    return c


# ---- SqueezeNet's fire modules ------------------------------------------------------------------


def test_fire_expands_are_slices_of_the_next_squeeze():
    model = _randomised(SqueezeLike())
    x = torch.randn(4, 3, 24, 24)
    disc = capture(model, example_inputs=x[:2]).discovery
    by = {g.producer.name: g.consumer for g in disc.groups}
    assert by["fire1.expand1x1"].name == "fire2.squeeze" and by["fire1.expand1x1"].cols == (0, 10, 20)
    assert by["fire1.expand3x3"].cols == (10, 20, 20)
    assert by["fire2.expand3x3"].name == "fire3.squeeze" and by["fire2.expand3x3"].cols == (12, 20, 20)
    assert by["fire3.expand1x1"].name == "head" and by["fire3.expand1x1"].cols == (0, 8, 20)
    # a squeeze's units fan out to both expands: one group, every column of both
    sq = next(g for g in disc.groups if g.producer.name == "fire2.squeeze")
    assert [(c.name, c.cols) for c in sq.consumers] == [("fire2.expand1x1", (0, 6, 6)), ("fire2.expand3x3", (0, 6, 6))]
    report = disc.report()
    assert "fire2.squeeze (its units 10:20 of 20); passes cat, max_pool" in report
    assert "-> fire1.expand1x1, fire1.expand3x3; passes fan-out to 2 layers" in report
    assert len(disc.groups) == 10 and [n for n, _ in disc.skipped] == ["head"]


def test_fire_planted_duplicates_go_exactly(tmp_path):
    model = _randomised(SqueezeLike())
    _plant(model, "fire1.expand1x1", [(0, 9), (2, 5)])
    _plant(model, "fire1.expand3x3", [(1, 7)])
    _plant(model, "fire2.expand3x3", [(0, 3)])
    _plant(model, "fire3.expand1x1", [(4, 6)])
    _plant(model, "fire2.squeeze", [(0, 5)])
    x = torch.randn(48, 3, 24, 24)
    c = afde_nb.compress(model, 0.0, calibration=x)
    sizes = _sizes(c)
    assert sizes["fire2.squeeze"] == (6, 5) and sizes["fire1.squeeze"] == (6, 6)
    assert c.model.fire2.expand1x1.in_channels == c.model.fire2.expand3x3.in_channels == 5
    assert sizes["fire1.expand1x1"] == (10, 8) and sizes["fire1.expand3x3"] == (10, 9)
    assert sizes["fire2.expand3x3"] == (8, 7) and sizes["fire3.expand1x1"] == (8, 7)
    assert sizes["fire2.expand1x1"] == (12, 12) and sizes["fire3.expand3x3"] == (12, 12)
    assert sizes["stem"] == (12, 12)
    assert c.model.fire2.squeeze.weight.shape[1] == 17 and c.model.head.weight.shape[1] == 19
    assert sum(p.numel() for p in c.model.parameters()) == c.params_after < c.params_before
    assert _rel(model(x), c.model(x)) < 1e-5
    _reloads(c, x, tmp_path)


def test_fire_budget(tmp_path):
    model = _randomised(SqueezeLike())
    c = _check_budget(model, torch.randn(64, 3, 24, 24), tmp_path)
    # every slice shrank inside its consumer, the others' columns kept
    assert c.model.fire2.squeeze.in_channels == c.model.fire1.expand1x1.out_channels + \
        c.model.fire1.expand3x3.out_channels


# ---- an Inception block -------------------------------------------------------------------------


def test_inception_slices_fan_outs_and_consumers_that_produce():
    model = _randomised(InceptionLike())
    x = torch.randn(4, 3, 12, 12)
    disc = capture(model, example_inputs=x[:2]).discovery
    by = {g.producer.name: g for g in disc.groups}
    assert by["b1.conv"].consumer.name == "mix.conv" and by["b1.conv"].consumer.cols == (0, 8, 16)
    assert by["b2b.conv"].consumer.cols == (8, 16, 16)
    assert by["d2.conv"].consumer.name == "fc" and by["d2.conv"].consumer.cols == (8, 16, 16)
    # fanned out: mix into both branches; c2's units through a concatenation into d1 and d2
    assert [c.name for c in by["mix.conv"].consumers] == ["c1.conv", "c2.conv"]
    assert [(c.name, c.cols) for c in by["c2.conv"].consumers] == [("d1.conv", (6, 11, 11)), ("d2.conv", (6, 11, 11))]
    assert [n for n, _ in disc.skipped] == ["fc"]
    # every chain's probe rows are as wide as its layers read (c1's and c2's units: two slices of
    # one consumer's input, captured apart)
    cap = capture(model, calibration=x)
    for rows, net in zip(cap.rows(cap.calibration(torch.randn(8, 3, 12, 12))), cap.nets):
        assert [r.shape[1] for r in rows] == [l.weight.shape[1] for l in net.layers]


class MixChain(nn.Module):
    """Two branches concatenated into ``mix``, whose units lump into ``out`` alone."""

    def __init__(self):
        super().__init__()
        self.stem = Basic(3, 10, 3)
        self.b1, self.b2 = Basic(10, 8, 1), Basic(10, 8, 3, 1)
        self.mix = Basic(16, 12, 1)
        self.out = Basic(12, 10, 3, 1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.out(self.mix(torch.cat([self.b1(x), self.b2(x)], 1)))
        return self.fc(x.mean((2, 3)))


def test_a_consumer_of_slices_that_produces_merges_both_ways(tmp_path):
    model = _randomised(MixChain())
    _plant(model, "b1.conv", [(0, 5)], "b1.bn")
    _plant(model, "b2.conv", [(1, 2), (3, 7)], "b2.bn")
    _plant(model, "mix.conv", [(0, 11), (4, 6)], "mix.bn")
    x = torch.randn(48, 3, 12, 12)
    c = afde_nb.compress(model, 0.0, calibration=x)
    assert _sizes(c)["b1.conv"] == (8, 7) and _sizes(c)["b2.conv"] == (8, 6) and _sizes(c)["mix.conv"] == (12, 10)
    assert tuple(c.model.mix.conv.weight.shape[:2]) == (10, 13) and c.model.mix.bn.num_features == 10
    assert sum(p.numel() for p in c.model.parameters()) == c.params_after
    assert _rel(model(x), c.model(x)) < 1e-5
    _reloads(c, x, tmp_path)
    # a budget: the layer's size is a product of two chains' widths, counted as the model holds it
    for fraction in (0.7, 0.6):
        _check_budget(model, torch.randn(64, 3, 12, 12), tmp_path, fraction)


def test_inception_planted_and_budget(tmp_path):
    model = _randomised(InceptionLike())
    _plant(model, "b1.conv", [(0, 7)], "b1.bn")
    _plant(model, "d2.conv", [(2, 4)], "d2.bn")
    _plant(model, "d1.conv", [(1, 3)], "d1.bn")
    _plant(model, "mix.conv", [(2, 9)], "mix.bn")  # fans out to c1 and c2
    _plant(model, "c2.conv", [(0, 4), (1, 3)], "c2.bn")  # concatenated, then fans out to d1 and d2
    x = torch.randn(48, 3, 12, 12)
    c = afde_nb.compress(model, 0.0, calibration=x)
    sizes = _sizes(c)
    assert sizes["b1.conv"] == (8, 7) and sizes["d1.conv"] == (8, 7) and sizes["d2.conv"] == (8, 7)
    assert sizes["mix.conv"] == (12, 11) and sizes["c2.conv"] == (5, 3)
    assert sizes["b2b.conv"] == (8, 8) and sizes["c1.conv"] == (6, 6) and sizes["stem.conv"] == (10, 10)
    assert c.model.d1.conv.in_channels == c.model.d2.conv.in_channels == 9
    assert sum(p.numel() for p in c.model.parameters()) == c.params_after
    assert c.model.fc.in_features == 14 * 4
    assert _rel(model(x), c.model(x)) < 1e-5
    _reloads(c, x, tmp_path)
    _check_budget(model, torch.randn(64, 3, 12, 12), tmp_path)


# ---- a DenseNet dense block ---------------------------------------------------------------------


def test_dense_block_last_layers_through_a_sliced_batchnorm(tmp_path):
    model = _randomised(DenseLike())
    x = torch.randn(48, 3, 14, 14)
    disc = capture(model, example_inputs=x[:2]).discovery
    by = {g.producer.name: g for g in disc.groups}
    last1 = by["block1.2.conv2"]
    assert last1.consumer.name == "tconv" and last1.consumer.cols == (20, 26, 26)
    assert last1.norm.name == "tnorm" and last1.norm.cols == (20, 26)
    last2 = by["block2.2.conv2"]
    assert last2.consumer.name == "fc" and last2.consumer.cols == (24, 30, 30) and last2.norm.cols == (24, 30)
    report = disc.report()
    # the earlier layers' features are read by every later layer, each through its own BatchNorm:
    # left alone, named
    assert "left alone block1.0.conv2: its outputs fan out, one path into batch_norm" in report
    assert "which not every unit passes alike" in report
    _plant(model, "block1.2.conv2", [(0, 4)])
    _plant(model, "block2.2.conv2", [(1, 5), (2, 3)])
    with torch.no_grad():  # the sliced BatchNorms' entries too
        for norm, at, pairs in (("tnorm", 20, [(0, 4)]), ("norm5", 24, [(1, 5), (2, 3)])):
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                t = _param(model, f"{norm}.{leaf}")
                for i, j in pairs:
                    t[at + j] = t[at + i]
    c = afde_nb.compress(model, 0.0, calibration=x)
    sizes = _sizes(c)
    assert sizes["block1.2.conv2"] == (6, 5) and sizes["block2.2.conv2"] == (6, 4)
    assert c.model.tnorm.num_features == 25 and c.model.fc.in_features == 28
    assert sum(p.numel() for p in c.model.parameters()) == c.params_after
    assert _rel(model(x), c.model(x)) < 1e-5
    _reloads(c, x, tmp_path)


def test_dense_budget(tmp_path):
    model = _randomised(DenseLike())
    n = sum(p.numel() for p in model.parameters())
    cap = capture(model, example_inputs=torch.randn(2, 3, 14, 14))
    lumpable = n - cap.fixed
    # what a budget can reach here: the dense layers' features are left alone
    target = n - lumpable // 2
    c = afde_nb.compress(model, target_params=target, calibration=torch.randn(64, 3, 14, 14))
    assert c.params_after <= target and sum(p.numel() for p in c.model.parameters()) == c.params_after
    _reloads(c, torch.randn(8, 3, 14, 14), tmp_path)


def test_a_cat_along_another_axis_is_left_alone_with_why():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(torch.cat([self.cls.expand(len(x), 1, 8), h], 1))

    disc = capture(Tokens(), example_inputs=torch.randn(2, 5, 6)).discovery
    assert not disc.groups
    assert "a concatenation along axis 1, not the units' axis 2" in disc.report()


class Branches(nn.Module):
    """Linear layers over tokens: ``a``'s units fan out to two heads whose units are concatenated
    (with a third, unlumped, input) into ``out``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.h1, self.h2 = nn.Linear(10, 8), nn.Linear(10, 7)
        self.out = nn.Linear(8 + 6 + 7, 4)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.out(torch.cat([F.gelu(self.h1(h)), x, torch.tanh(self.h2(h))], -1))


def test_linear_fan_out_and_concatenation(tmp_path):
    model = Branches().eval()
    torch.manual_seed(1)
    x = torch.randn(64, 5, 6)
    disc = capture(model, example_inputs=x[:2]).discovery
    by = {g.producer.name: g for g in disc.groups}
    assert [c.name for c in by["a"].consumers] == ["h1", "h2"]
    assert by["h1"].consumer.cols == (0, 8, 21) and by["h2"].consumer.cols == (14, 21, 21)
    _plant(model, "a", [(0, 9)])
    with torch.no_grad():  # tanh's symmetry: unit 3 = -unit 1, merged with a sign
        model.a.weight[3], model.a.bias[3] = -model.a.weight[1], -model.a.bias[1]
    _plant(model, "h2", [(2, 6)])
    c = afde_nb.compress(model, 0.0, calibration=x)
    sizes = _sizes(c)
    assert sizes["a"] == (10, 8) and sizes["h2"] == (7, 6) and sizes["h1"] == (8, 8)
    assert c.model.out.in_features == 20 and c.model.h1.in_features == c.model.h2.in_features == 8
    assert _rel(model(x), c.model(x)) < 1e-5
    _reloads(c, x, tmp_path)
    _check_budget(model, x, tmp_path)


def test_a_baseline_prunes_slices_and_fan_outs_consistently():
    """A structured-pruning baseline (units kept, not merged) writes through the same composition:
    its kept rows are found among the original's where another chain merged the layer's columns."""
    from afde_nb.eval.baselines import structured_prune

    for model, size in ((MixChain(), 12), (SqueezeLike(), 24)):
        model = _randomised(model)
        x = torch.randn(16, 3, size, size)
        p = structured_prune(model, 0.3, calibration=x)
        assert p.params == sum(q.numel() for q in p.model.parameters()) < sum(q.numel() for q in model.parameters())
        assert torch.isfinite(p.model(x)).all()
