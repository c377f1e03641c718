"""compress() inside models that are not one plain stack: residual MLPs, transformer encoder
layers, CNNs, MLP heads after a frozen backbone, torch.export programs. eps = 0 keeps the
function (float32, <= 1e-5) with planted duplicates found exactly; which equivalences hold depends
on the activation."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.errors import InvalidArgumentError, UnsupportedLayerError

TOL = 1e-5


class Block(nn.Module):
    def __init__(self, d, h, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), act, nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class ResidualMLP(nn.Module):
    def __init__(self, act=None, d=8, h=16):
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.b1, self.b2 = Block(d, h, act or nn.GELU()), Block(d, h, copy.deepcopy(act) or nn.GELU())
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.inp(x))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1, self.r1 = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.ReLU()
        self.c3 = nn.Conv2d(6, 4, 3)
        self.flat, self.fc = nn.Flatten(), nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.fc(self.flat(self.c3(self.r2(self.c2(self.r1(self.bn1(self.c1(x))))))))


class Encoder(nn.Module):
    def __init__(self, act="gelu"):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True,
                                                                    activation=act), 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.enc(self.embed(x)).mean(1))


class Backbone(nn.Module):
    """A frozen feature extractor (its channels pooled and flattened into the head) and an MLP head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
        for p in self.features.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.head(self.features(x))


def copy_unit(w, b, i, j, factor=1.0):
    """Unit j := factor * unit i (rows of a Linear/conv weight and bias)."""
    with torch.no_grad():
        w[j] = factor * w[i]
        if b is not None:
            b[j] = factor * b[i]


def max_diff(a, b, x) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def unchanged(m, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


def test_residual_mlp_planted_duplicates_exact():
    torch.manual_seed(0)
    m = ResidualMLP().eval()
    for i, j in [(0, 1), (2, 3), (2, 7)]:
        copy_unit(m.b1.fc1.weight, m.b1.fc1.bias, i, j)
    copy_unit(m.b2.fc1.weight, m.b2.fc1.bias, 4, 9)
    snap = snapshot(m)
    c = afde_nb.compress(m, 0.0)
    assert unchanged(m, snap)
    assert type(c.model) is ResidualMLP and c.model is not m
    assert [(s.name, s.neurons_after) for s in c.layers] == [("b1.fc1", 13), ("b2.fc1", 15)]
    assert c.model.b1.fc1.out_features == 13 and c.model.b1.fc2.in_features == 13
    assert max_diff(c.model, m, torch.randn(64, 5)) <= TOL
    assert c.params_after == params(c.model) == params(m) - 3 * (8 + 1 + 8) - (8 + 1 + 8)
    # the residual stream and the head are reported, not lumped
    left = dict(c.groups.skipped)
    assert "residual" in left["b1.fc2"] and "inp" in left and "output" in left["head"]


@pytest.mark.parametrize("act,factor,merges", [
    (nn.Tanh(), -1.0, True),        # odd: a negated copy is the same unit
    (nn.Hardtanh(), -1.0, True),    # symmetric hardtanh is odd
    (nn.Hardtanh(-1.0, 2.0), -1.0, False),
    (nn.Identity(), -1.0, True),
    (nn.Identity(), -2.5, False),   # exact too (linear), but only negation is used
    (nn.ReLU(), 2.0, True),         # positively homogeneous: a scaled copy
    (nn.LeakyReLU(0.1), 0.5, True),
    (nn.ReLU(), -1.0, False),
    (nn.GELU(), -1.0, False),       # neither: only equal rows
    (nn.GELU(), 2.0, False),
    (nn.SiLU(), 1.0, True),
    (nn.ELU(), 1.0, True),
    (nn.Softplus(), 1.0, True),
    (nn.Sigmoid(), -1.0, True),     # h -> 1 - h, into the next Linear's bias
])
def test_which_equivalences_hold(act, factor, merges):
    torch.manual_seed(1)
    m = ResidualMLP(act).eval()
    copy_unit(m.b1.fc1.weight, m.b1.fc1.bias, 0, 1, factor)
    c = afde_nb.compress(m, 0.0)
    assert (c.layers[0].neurons_after == 15) is merges
    assert max_diff(c.model, m, 3 * torch.randn(128, 5)) <= TOL


def test_transformer_encoder_feed_forward(tmp_path):
    torch.manual_seed(2)
    m = Encoder().eval()
    layers = m.enc.layers
    copy_unit(layers[0].linear1.weight, layers[0].linear1.bias, 0, 1)
    for j in (5, 7):
        copy_unit(layers[1].linear1.weight, layers[1].linear1.bias, 4, j)
    x = torch.randn(8, 6, 3)
    c = afde_nb.compress(m, 0.0)
    names = [s.name for s in c.layers]
    assert names == ["enc.layers.0.linear1", "enc.layers.1.linear1"]
    assert [s.neurons_after for s in c.layers] == [31, 30]
    assert c.model.enc.layers[1].linear2.in_features == 30
    assert max_diff(c.model, m, x) <= TOL  # eval + no_grad: torch's fused encoder fast path
    with torch.enable_grad():  # the plain path
        assert float((c.model(x) - m(x)).detach().abs().max()) <= TOL
    left = dict(c.groups.skipped)
    assert "attention" in left["enc.layers.0.self_attn"] and "not traceable" in left["enc"]


def test_cnn_channels_with_batchnorm():
    torch.manual_seed(3)
    m = CNN()
    bn = m.bn1
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    copy_unit(m.c1.weight, m.c1.bias, 0, 1)
    for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
        with torch.no_grad():
            t[1] = t[0]
    # channel 3 = 2 x channel 2 after the folded norm (ReLU: a positive scaling)
    copy_unit(m.c1.weight, m.c1.bias, 2, 3)
    with torch.no_grad():
        bn.running_mean[3], bn.running_var[3] = bn.running_mean[2], bn.running_var[2]
        bn.weight[3], bn.bias[3] = 2 * bn.weight[2], 2 * bn.bias[2]
    copy_unit(m.c2.weight, None, 0, 5)  # a conv without bias
    m.eval()
    x = torch.randn(16, 2, 8, 8)
    c = afde_nb.compress(m, 0.0)
    # c3 has no activation (identity) and is flattened into fc: its channels lump too
    assert [(s.name, s.neurons_after) for s in c.layers] == [("c1", 6), ("c2", 5), ("c3", 4)]
    assert c.model.bn1.num_features == 6 and c.model.c2.in_channels == 6 and c.model.c3.in_channels == 5
    assert max_diff(c.model, m, x) <= TOL
    assert "fc" in dict(c.groups.skipped)  # the output


def test_cnn_lossy_with_calibration_reports_error():
    torch.manual_seed(4)
    m = CNN().eval()
    x = torch.randn(32, 2, 8, 8)
    c = afde_nb.compress(m, 0.3, calibration=x)
    assert c.params_after < c.params_before
    assert c.calibration_error["n"] == 32
    assert c.calibration_error["max_abs"] == pytest.approx(max_diff(c.model, m, x), rel=1e-4)
    assert c.repaired is None  # convolution chains are not refit


def test_frozen_backbone_mlp_head():
    torch.manual_seed(5)
    m = Backbone().eval()
    copy_unit(m.head[0].weight, m.head[0].bias, 0, 1, -1.0)  # tanh: negated copy
    copy_unit(m.head[2].weight, m.head[2].bias, 3, 4, 3.0)  # relu: scaled copy
    c = afde_nb.compress(m, 0.0)
    # the backbone's channels are pooled and flattened into the head: they lump too
    assert [(s.name, s.neurons_after) for s in c.layers] == [("features.0", 4), ("head.0", 11), ("head.2", 9)]
    assert max_diff(c.model, m, torch.randn(8, 1, 6, 6)) <= TOL
    assert not c.model.features[0].weight.requires_grad  # frozen stays frozen
    assert c.model.head[0].weight.requires_grad


def test_export_program_module_compresses():
    torch.manual_seed(6)
    m = CNN().eval()
    copy_unit(m.c2.weight, None, 1, 2)
    x = torch.randn(4, 2, 8, 8)
    gm = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    c = afde_nb.compress(gm, 0.0)
    assert [s.neurons_after for s in c.layers] == [8, 5, 4]
    assert max_diff(c.model, m, torch.randn(7, 2, 8, 8)) <= TOL


def test_target_params_and_eps_order():
    torch.manual_seed(7)
    m = ResidualMLP().eval()
    x = torch.randn(256, 5)
    full = params(m)
    prev = full + 1
    for eps in (0.0, 0.05, 0.2, 0.5):
        c = afde_nb.compress(m, eps, calibration=x)
        assert c.params_after <= prev
        prev = c.params_after
    c = afde_nb.compress(m, target_params=int(0.8 * full), calibration=x)
    assert c.params_after == params(c.model) <= int(0.8 * full)
    again = afde_nb.compress(m, 0.2, calibration=x, path=c.path)
    assert again.params_after == afde_nb.compress(m, 0.2, calibration=x).params_after


def test_repair_lowers_error_on_linear_chains():
    torch.manual_seed(8)
    m = ResidualMLP().eval()
    x = torch.randn(512, 5)
    raw = afde_nb.compress(m, 0.4, calibration=x, repair=False)
    fixed = afde_nb.compress(m, 0.4, calibration=x)
    assert fixed.repaired == "calibration" and raw.repaired is None
    assert fixed.params_after == raw.params_after
    assert fixed.calibration_error["rms"] < raw.calibration_error["rms"]


def test_target_error():
    torch.manual_seed(9)
    m = ResidualMLP().eval()
    x = torch.randn(256, 5)
    with torch.no_grad():
        y = m(x) + 0.1 * torch.randn(256, 2)
    c = afde_nb.compress(m, target_error=0.05, calibration=x, calibration_targets=y)
    with torch.no_grad():
        base = float(((m(x) - y) ** 2).mean())
        got = float(((c.model(x) - y) ** 2).mean())
    assert got <= base * 1.05 + 1e-9 and c.params_after < c.params_before


def test_settings_the_ode_does_not_define_are_refused():
    m = ResidualMLP().eval()
    with pytest.raises(InvalidArgumentError, match="forward.*gelu"):
        afde_nb.compress(m, 0.1, mode="forward")
    with pytest.raises(InvalidArgumentError, match="components"):
        afde_nb.compress(m, 0.1, method="components")
    tanh = ResidualMLP(nn.Tanh()).eval()
    c = afde_nb.compress(tanh, 0.0, mode="forward")  # defined for tanh
    assert max_diff(c.model, tanh, torch.randn(16, 5)) <= TOL


def test_nothing_lumpable_lists_what_was_found():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return x + torch.tanh(self.fc(x))

    with pytest.raises(UnsupportedLayerError, match=r"(?s)nothing inside it lumps.*left alone fc: its outputs feed"):
        afde_nb.compress(Res(), 0.1)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))) + self.b(x)

    with pytest.raises(UnsupportedLayerError, match="shares its parameters"):
        afde_nb.compress(Shared(), 0.1)


def test_bad_input_named():
    m = ResidualMLP().eval()
    with torch.no_grad():
        m.b1.fc1.weight[0, 0] = float("nan")
    with pytest.raises(afde_nb.InvalidWeightsError, match="NaN"):
        afde_nb.compress(m, 0.1)
    with pytest.raises(afde_nb.InvalidEpsError):
        afde_nb.compress(ResidualMLP(), -1.0)
    with pytest.raises(afde_nb.InvalidWeightsError, match="calibration"):
        afde_nb.compress(ResidualMLP(), 0.1, calibration=torch.full((4, 5), float("nan")))


def test_training_mode_and_model_untouched():
    m = ResidualMLP()
    m.train()
    snap = snapshot(m)
    c = afde_nb.compress(m, 0.1, calibration=torch.randn(64, 5))
    assert m.training and c.model.training
    assert unchanged(m, snap)


def test_baselines_on_the_same_groups():
    from afde_nb.eval.baselines import fold_prune, structured_prune

    torch.manual_seed(10)
    for m, x in ((ResidualMLP().eval(), torch.randn(64, 5)), (CNN().eval(), torch.randn(8, 2, 8, 8))):
        full = params(m)
        snap = snapshot(m)
        s = structured_prune(m, 0.5)
        f = fold_prune(m, 0.5)
        w = structured_prune(m, 0.5, score="wanda", calibration=x)
        assert unchanged(m, snap)
        for p in (s, f, w):
            assert type(p.model) is type(m) and p.params == params(p.model) < full
            p.model(x)  # runs
        assert s.params == f.params == w.params
        # the groups lose half their units (a chain's last consumer keeps its outputs)
        assert [g.out_features for g in (s.model.b1.fc1, s.model.b2.fc1)] == [8, 8] if isinstance(m, ResidualMLP) \
            else [s.model.c1.out_channels, s.model.c2.out_channels] == [4, 3]
    # folding keeps exact duplicates exact: a model with every unit doubled folds losslessly at 50 %
    m = ResidualMLP().eval()
    for i in range(8):
        copy_unit(m.b1.fc1.weight, m.b1.fc1.bias, i, i + 8)
        copy_unit(m.b2.fc1.weight, m.b2.fc1.bias, i, i + 8)
    f = fold_prune(m, 0.5)
    assert max_diff(f.model, m, torch.randn(32, 5)) <= TOL


def test_unstructured_baselines_on_the_same_groups():
    """Magnitude pruning and Wanda act on the groups' layers of any model too (one pipeline for the
    baselines): only those layers' weights get zeros, the count is the model's non-zero count,
    match_params hits a budget, and the same repair applies (masks kept)."""
    from afde_nb.eval.baselines import count_params, magnitude_prune, match_params, repair_pruned, wanda_prune

    torch.manual_seed(12)
    m, x = ResidualMLP().eval(), torch.randn(64, 5)
    snap = snapshot(m)
    for p in (magnitude_prune(m, 0.5), magnitude_prune(m, 0.5, "global"), wanda_prune(m, 0.5, x)):
        assert unchanged(m, snap) and type(p.model) is type(m) and not p.dense
        assert p.params == count_params(p.model, nonzero=True) < count_params(m, nonzero=True)
        zeros = {n for n, t in p.model.named_parameters() if (t == 0).any()}
        assert zeros and zeros <= {"b1.fc1.weight", "b1.fc2.weight", "b2.fc1.weight", "b2.fc2.weight"}
        fixed = repair_pruned(p, m, x)
        assert fixed.repaired == "calibration" and fixed.params <= p.params
        assert max_diff(fixed.model, m, x) < max_diff(p.model, m, x)
        for name in zeros:  # the zero pattern stays
            assert (dict(fixed.model.named_parameters())[name][dict(p.model.named_parameters())[name] == 0] == 0).all()
    target = int(0.8 * count_params(m))
    for fn, kw in ((magnitude_prune, {}), (wanda_prune, {"calibration": x})):
        p = match_params(fn, m, target, **kw)
        assert p.params <= target
    c = CNN().eval()
    w = wanda_prune(c, 0.3, torch.randn(8, 2, 8, 8))
    assert w.params < count_params(c, nonzero=True)


def test_baseline_repair_on_linear_chains():
    from afde_nb.eval.baselines import fold_prune, repair_pruned

    torch.manual_seed(11)
    m = ResidualMLP().eval()
    x = torch.randn(256, 5)
    raw = fold_prune(m, 0.6)
    fixed = repair_pruned(raw, m, x)
    assert fixed.repaired == "calibration" and raw.repaired is None
    assert max_diff(fixed.model, m, x) < max_diff(raw.model, m, x)


class PoolNet(nn.Module):
    """conv -> act -> pool -> flatten -> Linear: each channel owns a run of the Linear's columns."""

    def __init__(self, act, pool):
        super().__init__()
        self.c1, self.act, self.pool = nn.Conv2d(1, 6, 3, padding=1), act, pool
        self.flat, self.fc1, self.r, self.fc2 = nn.Flatten(), nn.Linear(6 * 16, 10), nn.ReLU(), nn.Linear(10, 2)

    def forward(self, x):
        return self.fc2(self.r(self.fc1(self.flat(self.pool(self.act(self.c1(x)))))))


@pytest.mark.parametrize("act,pool,factor,merges", [
    (nn.ReLU(), nn.MaxPool2d(2), 3.0, True),      # max-pool commutes with positive scaling
    (nn.Tanh(), nn.MaxPool2d(2), -1.0, False),    # but not with negation
    (nn.Tanh(), nn.AvgPool2d(2), -1.0, True),     # an average does
    (nn.Tanh(), nn.AdaptiveAvgPool2d(4), 1.0, True),
])
def test_channels_through_pooling_into_a_linear(act, pool, factor, merges):
    torch.manual_seed(12)
    m = PoolNet(act, pool).eval()
    copy_unit(m.c1.weight, m.c1.bias, 0, 3, factor)
    c = afde_nb.compress(m, 0.0)
    assert c.layers[0].name == "c1" and (c.layers[0].neurons_after == 5) is merges
    assert c.model.fc1.in_features == c.model.c1.out_channels * 16 == c.model.fc1.weight.shape[1]
    assert max_diff(c.model, m, torch.randn(16, 1, 8, 8)) <= TOL
    # lossy, calibrated and data-free: the model runs and shrinks
    x = torch.randn(64, 1, 8, 8)
    for calib in (x, None):
        small = afde_nb.compress(m, 0.5, calibration=calib)
        assert small.params_after < small.params_before
        small.model(x)


def _plant_everywhere(model: nn.Module) -> dict[str, int]:
    """In every lumpable group of ``model``, make unit 1 a copy of unit 0 (and units 3, 4 copies of
    unit 2); returns the number of units each group should lose at eps = 0."""
    from afde_nb.models.groups import find_groups
    from afde_nb.models.surgery import get_tensor

    want = {}
    for g in find_groups(model).groups:
        w = get_tensor(model, g.producer.weight)
        b = get_tensor(model, g.producer.bias) if g.producer.bias else None
        for i, j in ((0, 1), (2, 3), (2, 4)):
            copy_unit(w, b, i, j)
            if g.norm is not None:
                for path in (g.norm.weight, g.norm.bias, g.norm.mean, g.norm.var):
                    t = get_tensor(model, path)
                    with torch.no_grad():
                        t[j] = t[i]
        want[g.name] = 3
    return want


@pytest.mark.parametrize("name", ["digits_cnn", "residual_mlp", "transformer"])
def test_zoo_examples_planted_duplicates_exact(name):
    """The real example architectures (random weights, running statistics drawn): every group's
    planted duplicates are found and eps = 0 keeps the function to 1e-5."""
    from afde_nb.eval import zoo

    torch.manual_seed(13)
    model, x = {
        "digits_cnn": lambda: (zoo.DigitsCNN(), torch.rand(32, 1, 8, 8)),
        "residual_mlp": lambda: (zoo.ResidualMLP(6, 2), torch.randn(32, 6)),
        "transformer": lambda: (zoo.TinySequenceTransformer(3, 2), torch.randn(8, 16, 3)),
    }[name]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    model.eval()
    want = _plant_everywhere(model)
    c = afde_nb.compress(model, 0.0)
    got = {s.name: s.neurons_before - s.neurons_after for s in c.layers}
    assert got == want and len(got) == {"digits_cnn": 3, "residual_mlp": 2, "transformer": 2}[name]
    assert max_diff(c.model, model, x) <= TOL


def test_calibration_the_model_does_not_take_is_named():
    with pytest.raises(afde_nb.ShapeMismatchError, match=r"ResidualMLP does not run on calibration shaped \(8, 3\)"):
        afde_nb.compress(ResidualMLP().eval(), 0.1, calibration=torch.randn(8, 3))
    m = CNN().eval()
    gm = torch.export.export(m, (torch.randn(4, 2, 8, 8),)).module()  # batch fixed to 4
    with pytest.raises(afde_nb.ShapeMismatchError, match=r"does not run on calibration shaped \(16, 2, 8, 8\)"):
        afde_nb.compress(gm, 0.1, calibration=torch.randn(16, 2, 8, 8))


def test_pseudo_repair_and_baseline_repair_through_repair_pruned():
    from afde_nb.eval.baselines import match_params, repair_pruned, structured_prune

    torch.manual_seed(14)
    m = ResidualMLP().eval()
    x = torch.randn(256, 5)
    c = afde_nb.compress(m, 0.4, repair="pseudo")
    assert c.repaired == "pseudo"
    p = match_params(structured_prune, m, c.params_after)
    assert p.params == params(p.model) <= c.params_after
    fixed = repair_pruned(p, m, x)
    assert fixed.repaired == "calibration" and fixed.params == p.params
    assert max_diff(fixed.model, m, x) < max_diff(p.model, m, x)
    assert repair_pruned(p, m, pseudo=True).repaired == "pseudo"


@pytest.mark.parametrize("repair", [False, True])
def test_budget_split_by_measured_error(repair):
    """With calibration data a parameter budget is split between layers by held-out error (as for
    plain stacks): the chosen split is never worse on the held-out quarter than the global order
    or the same fraction of every layer, and stays within the budget."""
    from afde_nb.models.capture import capture
    from afde_nb.core.repair import deviation
    from afde_nb.pipeline.compress import _fit_rows, _split, reduce_chains

    torch.manual_seed(11)
    m = ResidualMLP(d=8, h=24).eval()
    x = torch.randn(256, 5)
    target = int(0.7 * params(m))
    c = afde_nb.compress(m, target_params=target, calibration=x, repair=repair)
    assert c.params_after == params(c.model) <= target
    fit, held = _split(len(x))
    cap = capture(m)
    how = "calibration" if repair else None
    rows = _fit_rows(cap, how, cap.rows(x[fit]) if repair else None)
    want = cap.output(x[held])

    def held_error(part):
        _, nets, _ = reduce_chains(cap, part, rows)
        return deviation(want, cap.output(x[held], nets))["relative_mse"]

    chosen = c.path.partition_at([lp.n - int(l.max()) - 1 for lp, l in zip(c.path.layers, c.partition)])
    others = [c.path.partition_at(c.path.for_params(target)), c.path.partition_at(c.path.uniform(target))]
    assert held_error(chosen) <= min(held_error(p) for p in others) + 1e-12


def _unfolded_rows(t, a, weight, max_rows, seed=0):
    """The definition surgery.rows implements: every position's patch (unfold), row n * L + l,
    then a seeded draw of max_rows of them, in order."""
    t = t.detach().to(torch.float64)
    if a.kind == "linear":
        R = t.reshape(-1, t.shape[-1])
    else:
        kernel, stride, padding, dilation = tuple(weight.shape[2:]), a.stride, a.padding, a.dilation
        if a.kind == "conv1d":
            t, kernel = t.unsqueeze(2), (1,) + kernel
            stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
        if a.padding_mode != "zeros":
            t = nn.functional.pad(t, [p for p in reversed(padding) for _ in (0, 1)], mode=a.padding_mode)
            padding = (0,) * len(padding)
        P = nn.functional.unfold(t, kernel, dilation=dilation, padding=padding, stride=stride)
        R = P.transpose(1, 2).reshape(-1, P.shape[1])
    R = R.numpy()
    if len(R) > max_rows:
        R = R[np.sort(np.random.default_rng(seed).choice(len(R), max_rows, replace=False))]
    return R


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_rows_gather_only_the_drawn_patches(kind, monkeypatch):
    """surgery.rows gathers the drawn positions' patches only, and they are bit for bit the rows
    of the whole unfolded input subsampled as before (so partitions do not move): strides,
    dilations, every padding mode, channels-last inputs, token rows, above and below MAX_ROWS; in
    the model's dtype (float32 here; a float64 input's stay float64)."""
    from afde_nb.models import surgery
    from afde_nb.models.groups import Affine

    monkeypatch.setattr(surgery, "MAX_ROWS", 300)
    rng = np.random.default_rng(1)
    for trial in range(24):
        n, c = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        if kind == "linear":
            t = torch.randn((n, int(rng.integers(1, 90)), c) if trial % 2 else (n * 60, c))
            a, w = Affine("l", "linear", "l.weight", None), torch.zeros(3, c)
        else:
            d = 1 if kind == "conv1d" else 2
            k, s, dl = (tuple(int(v) for v in rng.integers(1, 4, d)) for _ in range(3))
            mode = ("zeros", "reflect", "replicate", "circular")[trial % 4]
            p = tuple(int(v) for v in rng.integers(0, 2 if mode == "reflect" else 3, d))
            t = torch.randn((n, c) + tuple(int(v) for v in rng.integers(9, 20, d)))
            if kind == "conv2d" and trial % 3 == 0:
                t = t.contiguous(memory_format=torch.channels_last)
            a, w = Affine("c", kind, "c.weight", None, None, s, p, dl, mode), torch.zeros((3, c) + k)
        want = _unfolded_rows(t, a, w, 300)
        got = surgery.rows(t, a, w)
        assert got.dtype == np.float32 and got.flags.c_contiguous  # the model's dtype (issue 29)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}: {a}")
        assert surgery.rows(t.double(), a, w.double()).dtype == np.float64


def test_one_run_gives_the_rows_and_the_outputs():
    """Captured.rows_and_output: the calibration run that draws the rows also gives the model's
    outputs (compress's reference for the calibration error), the same as two separate runs; the
    rows are drawn as the run reaches each layer, so an in-place activation after it changes
    nothing."""
    from afde_nb.models.capture import capture

    class InPlace(CNN):
        def forward(self, x):
            h = self.r1(self.bn1(self.c1(x)))
            y = self.c2(h)
            h.mul_(0.0)  # c2's input, overwritten after c2 ran
            return self.fc(self.flat(self.c3(self.r2(y))))

    from afde_nb.models.surgery import chain_affines

    torch.manual_seed(5)
    for m in (CNN().eval(), InPlace().eval()):
        x = torch.randn(40, 2, 8, 8)
        cap = capture(m)
        rows, y = cap.rows_and_output(x)
        with torch.no_grad():
            np.testing.assert_array_equal(y, m(x).double().numpy())
            h = m.r1(m.bn1(m.c1(x)))
        (chain,), (got,) = cap.discovery.chains, rows
        at = [a.name for a in chain_affines(chain)].index("c2")  # InPlace: c1 feeds two nodes, so not a group
        assert np.abs(got[at]).max() > 0
        np.testing.assert_array_equal(got[at], _unfolded_rows(h, chain_affines(chain)[at], m.c2.weight, 4096))
