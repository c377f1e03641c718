"""One rule per operation between a producer and its consumer (afde_nb.models.groups._follow,
afde_nb.models.indexmap): index maps proved on the index arithmetic, a BatchNorm after the
activation, zero padding, a pooling's (values, indices) pair, string padding, and a model as
users bring them (CREPE's layout: pad -> conv -> ReLU -> BatchNorm -> max-pool, a permute + reshape
into the classifier read from a module attribute, a Python branch on a keyword flag)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import afde_nb
from afde_nb.models import indexmap
from afde_nb.models.groups import export_graph, find_groups


def _reloads(c, x, tmp_path) -> None:
    """The reduced model saved as a .pt2 program loads with stock torch and computes what it did."""
    c.save(tmp_path / "r.pt2", example_inputs=x[:2])
    prog = torch.export.load(str(tmp_path / "r.pt2")).module()
    assert torch.allclose(prog(x[:4]), c.model(x[:4]), atol=1e-6)


def _ids_through(x: torch.Tensor, fn, channels_first: bool = True):
    """Ids of ``x``'s elements carried through the view ops of ``fn`` in its exported graph."""
    class M(nn.Module):
        def forward(self, t):
            return fn(t)
    gm = export_graph(M(), (x,), {})
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and indexmap.is_view(n)]
    start = next(n for n in gm.graph.nodes if n.op == "placeholder")
    ids = indexmap.Ids.start(start, channels_first)
    for n in nodes:
        assert ids.apply(n), n.target
    return ids


@pytest.mark.parametrize("fn, inner", [
    (lambda t: t.flatten(1), 6),                                       # channel-major: c * T + t
    (lambda t: t.permute(0, 2, 1, 3).reshape(t.shape[0], -1), 2),      # CREPE's (W = 1 there: t * C + c)
    (lambda t: t.permute(0, 2, 3, 1).flatten(1), 1),                   # channels last
    (lambda t: t.reshape(t.shape[0], t.shape[1], 6).transpose(1, 2).reshape(t.shape[0], -1), 1),
])
@pytest.mark.parametrize("C", [4, 9])
def test_product_layouts_are_found_and_proved_on_the_indices(fn, inner, C):
    x = torch.randn(2, C, 3, 2)
    ids = _ids_through(x, fn)
    got = ids.columns()
    T = 6
    assert got == (inner, T)
    # on the real tensor: channel c's columns (the layout's) hold channel c's values, and every
    # channel's t-th column reads the same position as channel 0's
    y = fn(x)
    flat = x.reshape(2, C, -1)
    for c in range(C):
        assert sorted(y[0, indexmap.layout(C, T, inner)[c]].tolist()) == sorted(flat[0, c].tolist())
    perm = indexmap.channel_major(C, T, inner)
    yy = y if perm is None else y[:, perm]
    positions = [torch.nonzero(flat[0, 0] == v).item() for v in yy[0, :T]]
    for c in range(1, C):
        assert [torch.nonzero(flat[0, c] == v).item() for v in yy[0, c * T:(c + 1) * T]] == positions


@pytest.mark.parametrize("fn, why", [
    (lambda t: t.transpose(0, 1).reshape(4, -1), "mixes samples"),
    (lambda t: t.reshape(t.shape[0], 2, 2, 6).permute(0, 2, 1, 3).reshape(t.shape[0], -1), "product layout"),
])
def test_layouts_that_would_merge_the_wrong_columns_are_refused(fn, why):
    ids = _ids_through(torch.randn(2, 4, 3, 2), fn)
    got = ids.columns()
    assert isinstance(got, str) and why in got


class CrepeLike(nn.Module):
    """CREPE's block (torchcrepe.model.Crepe) at a small size: F.pad -> conv -> ReLU -> BatchNorm ->
    max-pool per layer, the last conv's channels read by the classifier through
    ``permute(0, 2, 1, 3).reshape(-1, self.in_features)``, a Python branch on ``embed``."""

    def __init__(self, ch=(8, 6, 5)):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, ch[0], (8, 1), (2, 1)), nn.BatchNorm2d(ch[0], eps=1e-3)
        self.c2, self.b2 = nn.Conv2d(ch[0], ch[1], (4, 1)), nn.BatchNorm2d(ch[1], eps=1e-3)
        self.c3, self.b3 = nn.Conv2d(ch[1], ch[2], (4, 1)), nn.BatchNorm2d(ch[2], eps=1e-3)
        self.in_features = ch[2] * 8
        self.classifier = nn.Linear(self.in_features, 10)
        g = torch.Generator().manual_seed(1)
        for b in (self.b1, self.b2, self.b3):
            n = b.num_features
            b.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            b.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            b.weight.data.copy_(torch.rand(n, generator=g) * 2 - 0.5)  # some negative scales
            b.bias.data.copy_(torch.rand(n, generator=g) - 0.5)

    def layer(self, x, conv, bn, padding=(0, 0, 1, 2)):
        x = F.pad(x, padding)
        return F.max_pool2d(bn(F.relu(conv(x))), (2, 1), (2, 1))

    def forward(self, x, embed=False):
        x = x[:, None, :, None]
        x = self.layer(x, self.c1, self.b1, (0, 0, 3, 4))
        x = self.layer(x, self.c2, self.b2)
        if embed:
            return x
        x = self.layer(x, self.c3, self.b3)
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def _plant(model: CrepeLike, pairs) -> CrepeLike:
    """Channel j a copy of channel i (conv row, bias, BatchNorm entries) in each (conv, bn, i, j)."""
    with torch.no_grad():
        for conv, bn, i, j in pairs:
            conv.weight[j] = conv.weight[i]
            conv.bias[j] = conv.bias[i]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[j] = t[i]
    return model


def _crepe(seed=0) -> CrepeLike:
    torch.manual_seed(seed)
    m = CrepeLike().eval()
    return _plant(m, [(m.c1, m.b1, 0, 5), (m.c2, m.b2, 1, 4), (m.c3, m.b3, 2, 3)])


def test_a_crepe_like_network_is_read_whole_and_its_planted_duplicates_go_exactly():
    m = _crepe()
    x = torch.randn(48, 128)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    report = c.groups.report()
    assert "3 lumpable group(s)" in report
    assert "lumps c3 (conv2d) -> relu -> b3 (folded into classifier) -> classifier" in report
    assert "permute, reshape" in report and "zero padding" in report
    widths = [(s.neurons_before, s.neurons_after) for s in c.layers]
    assert widths == [(8, 7), (6, 5), (5, 4)]
    y0, y1 = m(x), c.model(x)
    assert (y1 - y0).abs().max().item() < 1e-5 * y0.abs().max().item()
    # the reduced model's forward reads its own width: the attribute was rewritten, not the user's
    assert c.model.in_features == 4 * 8 and m.in_features == 5 * 8
    assert c.model.b3.num_features == 4 and c.model.classifier.in_features == 32
    assert m(x, embed=True).shape[1] == 6 and c.model(x, embed=True).shape[1] == 5


def test_the_strided_classifier_columns_are_the_ones_merged():
    """The classifier reads channel c at position t from column t * C + c: a merge of channels 2
    and 3 must add columns t * 5 + 2 and t * 5 + 3, not a consecutive run."""
    m = _crepe()
    x = torch.randn(48, 128)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    W0 = m.classifier.weight.detach().reshape(10, 8, 5)      # (out, t, c)
    W1 = c.model.classifier.weight.detach().reshape(10, 8, 4)
    # b3's unit 2 after the merge stands for channels 2 and 3: S-weighted sum of their columns
    s0 = (m.b3.weight / torch.sqrt(m.b3.running_var + m.b3.eps)).detach()
    s1 = (c.model.b3.weight / torch.sqrt(c.model.b3.running_var + c.model.b3.eps)).detach()
    kept = [k for k in range(5) if k != 3]
    for new, old in enumerate(kept):
        # up to the positive factor a ReLU unit is rescaled by (its row norm)
        want = W0[:, :, old] * s0[old] + (W0[:, :, 3] * s0[3] if old == 2 else 0)
        got = W1[:, :, new] * s1[new]
        k = (got * want).sum() / (want * want).sum()
        assert k > 0 and torch.allclose(got, k * want, atol=1e-5 * float(want.abs().max()))


def test_the_reduced_crepe_exports_and_reloads_with_stock_torch(tmp_path):
    m = _crepe()
    x = torch.randn(32, 128)
    c = afde_nb.compress(m, eps=0.3, calibration=x)
    assert c.params_after < c.params_before
    _reloads(c, x, tmp_path)


def test_without_shapes_the_index_map_is_named_and_export_is_suggested():
    m = _crepe()
    c = afde_nb.compress(m, eps=0.0)  # data-free: no inputs to export on
    report = c.groups.report()
    assert "left alone c3: its outputs feed permute" in report and "torch.export" in report
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(8, 7), (6, 5)]


def test_a_reshape_to_a_literal_width_is_left_alone_with_its_line():
    class Literal(CrepeLike):
        def __init__(self):
            super().__init__()
            self.in_features = None  # the width is a literal below, in no attribute

        def forward(self, x, embed=False):
            x = x[:, None, :, None]
            x = self.layer(x, self.c1, self.b1, (0, 0, 3, 4))
            x = self.layer(x, self.c2, self.b2)
            x = self.layer(x, self.c3, self.b3)
            return self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 40))
    torch.manual_seed(0)
    m = Literal().eval()
    d = find_groups(m, ((torch.randn(2, 128),), {}))
    why = dict(d.skipped)["c3"]
    assert "fixed width 40" in why and "test_rules.py:" in why


def test_a_batchnorm_after_the_activation_into_a_linear_is_exact_and_lossy_merges_are_measured():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.BatchNorm1d(12), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        bn = m[2]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-1, 2), bn.bias.uniform_(-1, 1)
        m[0].weight[7] = m[0].weight[2]
        m[0].bias[7] = m[0].bias[2]
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[7] = t[2]
    x = torch.randn(256, 6)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    assert c.layers[0].neurons_before == 12 and c.layers[0].neurons_after == 11
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    c = afde_nb.compress(m, eps=0.2, calibration=x, repair=False)
    assert c.layers[0].neurons_after < 11
    y0 = m(x).detach().double()
    err = float(((c.model(x).detach().double() - y0) ** 2).mean() / ((y0 - y0.mean(0)) ** 2).mean())
    assert err > 1e-8 and abs(err - c.calibration_error["relative_mse"]) < 1e-4 * err


@pytest.mark.parametrize("pool_indices", [False, True])
def test_string_padding_and_a_pool_returning_indices_pass(pool_indices):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding="same")
            self.b = nn.Conv2d(8, 6, 3, padding="same")
            self.fc = nn.Linear(6 * 4 * 4, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            h = F.max_pool2d(h, 2, return_indices=True)[0] if pool_indices else F.max_pool2d(h, 2)
            return self.fc(torch.relu(self.b(h)).flatten(1))
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.a.weight[5] = m.a.weight[1]
        m.a.bias[5] = m.a.bias[1]
    x = torch.randn(16, 3, 8, 8)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    assert [(s.neurons_before, s.neurons_after) for s in c.layers][:1] == [(8, 7)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5


class InlineGelu(nn.Module):
    """BLOOM's BloomGelu: the tanh GELU written as multiplies, a class no table names."""

    def forward(self, x):
        return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


def test_an_activation_module_of_an_unknown_class_is_recognised_by_its_values():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 10), InlineGelu(), nn.Linear(10, 2)).eval()
    with torch.no_grad():
        m[0].weight[6], m[0].bias[6] = m[0].weight[3], m[0].bias[3]
    x = torch.randn(64, 5)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    assert "-> gelu -> 2" in c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(10, 9)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    # a parameter-free module computing something else is not taken for an activation
    class Cube(nn.Module):
        def forward(self, x):
            return x * x * x
    d = find_groups(nn.Sequential(nn.Linear(5, 10), Cube(), nn.Linear(10, 2)))
    assert not d.groups


class FusedMLP(nn.Module):
    """Phi-3's MLP: one gate_up_proj cut by chunk, up * silu(gate), down_proj."""

    def __init__(self, d=6, inner=10):
        super().__init__()
        self.gate_up_proj = nn.Linear(d, 2 * inner, bias=False)
        self.down_proj = nn.Linear(inner, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return x + self.down_proj(up * F.silu(gate))


def test_a_fused_gate_up_projection_cut_by_chunk_is_a_gated_group(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(FusedMLP(), FusedMLP()).eval()
    with torch.no_grad():
        w = m[0].gate_up_proj.weight
        w[7], w[10 + 7] = w[2], 2.5 * w[10 + 2]    # gate rows equal, up rows proportional: exact
    x = torch.randn(64, 6)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    report = c.groups.report()
    assert "silu(0.gate_up_proj) * 0.gate_up_proj (linear, fused: rows 0:10 and 10:20) -> 0.down_proj" in report
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(10, 9), (10, 10)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    assert c.model[0].gate_up_proj.weight.shape == (18, 6) and c.model[0].gate_up_proj.out_features == 18
    c = afde_nb.compress(m, eps=0.5, calibration=x)
    assert c.params_after < c.params_before
    _reloads(c, x, tmp_path)


def test_experts_stored_fused_in_three_axes_are_named_not_passed_over():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(4, 16, 6))
            self.down_proj = nn.Parameter(torch.randn(4, 6, 8))

        def forward(self, x):
            gate, up = torch.einsum("nd,eod->neo", x, self.gate_up_proj).chunk(2, dim=-1)
            return torch.einsum("neo,edo->nd", F.silu(gate) * up, self.down_proj)
    d = find_groups(nn.Sequential(nn.Linear(6, 6), Experts()))
    why = dict(d.skipped)["1"]
    assert "fused in three axes" in why and "gate_up_proj (4, 16, 6)" in why


class TFPadBlock(nn.Module):
    """Hugging Face's MobileNetV2 block: expand 1x1 -> BN -> ReLU6 -> TensorFlow's asymmetric
    "same" pad -> depthwise 3x3 stride 2 -> BN -> ReLU6 -> a pad of nothing -> reduce 1x1 -> BN."""

    def __init__(self, cin=4, hidden=12, cout=5):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.dw, self.bn2 = nn.Conv2d(hidden, hidden, 3, stride=2, groups=hidden, bias=False), nn.BatchNorm2d(hidden)
        self.reduce, self.bn3 = nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(F.pad(h, (0, 1, 0, 1)))))
        return self.bn3(self.reduce(F.pad(h, (0, 0, 0, 0))))


def test_tensorflow_padding_before_a_depthwise_conv_keeps_the_channel_one_unit():
    torch.manual_seed(0)
    m = TFPadBlock().eval()
    with torch.no_grad():
        for t in (m.bn1.running_mean, m.bn1.running_var, m.bn2.running_mean, m.bn2.running_var):
            t.uniform_(0.5, 1.5)
        m.expand.weight[9] = m.expand.weight[3]
        m.dw.weight[9] = m.dw.weight[3]
        for bn in (m.bn1, m.bn2):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[9] = t[3]
    x = torch.randn(8, 4, 9, 9)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    assert "lumps expand (conv2d) -> hardtanh -> zero padding -> depthwise dw -> hardtanh -> reduce" in c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(12, 11)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5


class SharedFFN(nn.Module):
    """ALBERT's sharing: one feed-forward block applied at every depth (its parameters serve three
    calls, each reading another input)."""

    def __init__(self):
        super().__init__()
        self.ffn, self.ffn_output = nn.Linear(6, 12), nn.Linear(12, 6)

    def forward(self, x):
        for _ in range(3):
            x = x + self.ffn_output(torch.tanh(self.ffn(x)))
        return x


def test_a_layer_shared_by_several_calls_lumps_for_all_of_them():
    torch.manual_seed(0)
    m = SharedFFN().eval()
    with torch.no_grad():
        m.ffn.weight[8], m.ffn.bias[8] = -m.ffn.weight[2], -m.ffn.bias[2]  # tanh: a negated twin
    x = torch.randn(128, 6)
    c = afde_nb.compress(m, eps=0.0, calibration=x)
    assert "lumps ffn (linear) -> tanh -> ffn_output; passes shared by 3 calls" in c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(12, 11)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    # the merge path sees every call's rows: 3 x 128 of them
    from afde_nb.models.capture import capture
    cap = capture(m, calibration=x)
    rows = cap.rows(cap.calibration(x))
    assert rows[0][0].shape == (3 * 128, 6)
    c = afde_nb.compress(m, eps=0.3, calibration=x)
    assert c.params_after < c.params_before and c.model.ffn.out_features == c.model.ffn_output.in_features


def test_a_model_that_cannot_be_traced_is_refused_naming_its_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            if h.sum() > 0:  # a branch on the data's values: no trace can follow it
                h = h * 2
            return self.b(h)
    with pytest.raises(afde_nb.errors.UnsupportedLayerError) as err:
        afde_nb.compress(Branchy(), 0.0, calibration=torch.randn(8, 4))
    assert "test_rules.py:" in str(err.value) and "(if h.sum() > 0:" in str(err.value)


def test_structured_pruning_through_a_post_activation_batchnorm_removes_whole_units():
    """A baseline's pruned CREPE-like model is the original minus whole channels: zeroing the
    pruned channels' consumer columns in the original gives the same outputs, borders included
    (the kept channels keep their BatchNorm's scale and shift; none is folded into a bias)."""
    from afde_nb.eval.baselines import structured_prune

    m = _crepe()
    x = torch.randn(16, 128)
    p = structured_prune(m, 0.0)
    assert (p.model(x) - m(x)).abs().max() < 1e-5
    p = structured_prune(m, 0.4)
    ref = CrepeLike().eval()
    ref.load_state_dict(m.state_dict())
    (maps,) = p.maps
    with torch.no_grad():
        for (labels, _), nxt in zip(maps, (ref.c2, ref.c3, None)):
            gone = torch.from_numpy(np.where(np.asarray(labels) < 0)[0])
            assert len(gone) > 0
            if nxt is not None:
                nxt.weight[:, gone] = 0.0
            else:  # the classifier reads channel c at position t from column t * 5 + c
                cols = (torch.arange(8)[:, None] * 5 + gone[None, :]).reshape(-1)
                ref.classifier.weight[:, cols] = 0.0
    assert (p.model(x) - ref(x)).abs().max() < 1e-5


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: ``F.batch_norm`` called with keyword arguments, then an activation."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, weight=self.weight, bias=self.bias,
                         training=False, momentum=0.1, eps=self.eps)
        return F.relu(x)


def test_a_batchnorm_called_with_keyword_arguments_is_read_whole():
    """Its weight and bias were read as absent: the fold left out gamma and beta and a lossy
    merge left the BatchNorm's weight at its old width (timm's MobileNetV3 then did not run)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, bias=False), BNAct(8), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(self.bn(self.a(x)))
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 2), m.bn.bias.uniform_(-1, 1), m.bn.running_var.uniform_(0.5, 2)
        m.a.weight[6] = m.a.weight[1]
        for t in (m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var):
            t[6] = t[1]
    x = torch.randn(16, 3, 10, 10)
    (g,) = afde_nb.compress(m, 0.0, calibration=x).groups.groups
    assert (g.norm.weight, g.norm.bias) == ("bn.weight", "bn.bias")
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert c.model.bn.weight.shape == (7,) and (c.model(x) - m(x)).abs().max() < 1e-5
    c = afde_nb.compress(m, target_params=int(0.7 * sum(p.numel() for p in m.parameters())), calibration=x)
    assert c.model.bn.weight.shape == c.model.bn.running_mean.shape == (c.model.a.out_channels,)
    assert c.model(x).shape == m(x).shape


class BNDropAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d as it is built: batch_norm, a drop (nn.Identity in eval), an activation."""

    def __init__(self, c):
        super().__init__(c)
        self.drop, self.act = nn.Identity(), nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, weight=self.weight, bias=self.bias,
                         training=False, momentum=0.1, eps=self.eps)
        return self.act(self.drop(x))


def test_an_inverted_block_of_timm_style_norm_act_modules_is_one_group():
    """The Identity before the activation was taken for an identity activation after the depthwise
    conv, and the real one then stopped the channel: 0 groups on timm's MobileNets."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 16, 1), BNDropAct(16), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                      BNDropAct(16), nn.Conv2d(16, 8, 1)).eval()
    with torch.no_grad():
        for t in (m[0].weight, m[0].bias, m[2].weight, m[2].bias):
            t[9] = t[2]
    x = torch.randn(8, 4, 8, 8)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert "lumps 0 (conv2d) -> relu -> depthwise 2 -> relu -> 4" in c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(16, 15)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5


@pytest.mark.parametrize("keepdim", [False, True])
def test_a_mean_over_positions_is_a_global_average_pool(keepdim):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2) if not keepdim else nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean([2, 3], keepdim=keepdim))
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.conv.weight[5], m.conv.bias[5] = 0.5 * m.conv.weight[1], 0.5 * m.conv.bias[1]  # ReLU: positive scaling
    x = torch.randn(16, 3, 8, 8)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert "passes mean over positions" in c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(8, 7)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5


def test_widening_casts_pass_and_narrowing_ones_stop_a_group():
    class Net(nn.Module):
        def __init__(self, narrow=False):
            super().__init__()
            self.a, self.b, self.narrow = nn.Linear(4, 8), nn.Linear(8, 2), narrow

        def forward(self, x):
            h = torch.tanh(self.a(x)).to(torch.float32).float()
            return self.b(h.to(torch.bfloat16).to(torch.float32) if self.narrow else h)
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.a.weight[5], m.a.bias[5] = m.a.weight[1], m.a.bias[1]
    x = torch.randn(32, 4)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(8, 7)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    d = find_groups(Net(narrow=True), ((x[:2],), {}))
    assert not d.groups  # a cast to bfloat16 rounds the units: not a no-op


class MixFFN(nn.Module):
    """SegFormer's Mix-FFN: dense1 -> its tokens laid out as maps -> depthwise 3x3 -> back to tokens
    -> GELU -> dense2, the units' way through ``transpose(1, 2).view(B, C, H, W)`` and back."""

    def __init__(self, d=8, hidden=16, side=4):
        super().__init__()
        self.side = side
        self.dense1, self.dense2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x):
        h = self.dense1(x)
        B, N, C = h.shape
        h = self.dwconv(h.transpose(1, 2).view(B, C, self.side, self.side)).flatten(2).transpose(1, 2)
        return x + self.dense2(F.gelu(h))


def test_a_linear_over_tokens_laid_out_as_maps_for_a_depthwise_conv_is_one_group(tmp_path):
    torch.manual_seed(0)
    m = MixFFN().eval()
    with torch.no_grad():
        for t in (m.dense1.weight, m.dense1.bias, m.dwconv.weight, m.dwconv.bias):
            t[11] = t[3]
    x = torch.randn(12, 16, 8)
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert "lumps dense1 (linear) -> identity -> tokens as 4x4 maps -> depthwise dwconv -> gelu -> dense2" in \
        c.groups.report()
    assert [(s.neurons_before, s.neurons_after) for s in c.layers] == [(16, 15)]
    assert (c.model(x) - m(x)).abs().max() < 1e-5
    c = afde_nb.compress(m, target_params=300, calibration=x)
    assert c.params_after <= 300 and c.model.dense1.out_features == c.model.dwconv.out_channels
    _reloads(c, x, tmp_path)
    # tokens read back in another order are not the maps' channels: no group
    class Shuffled(MixFFN):
        def forward(self, x):
            h = self.dense1(x)
            B, N, C = h.shape
            h = self.dwconv(h.transpose(1, 2).view(B, C, self.side, self.side)).transpose(2, 3).flatten(2)
            return x + self.dense2(F.gelu(h.transpose(1, 2)))
    assert not find_groups(Shuffled().eval(), ((x[:2],), {})).groups
