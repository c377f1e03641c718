"""Baselines on inverted-residual groups (issue 23): producer conv -> BN -> act -> depthwise -> BN ->
act -> squeeze-excitation -> 1x1 consumer. Magnitude and Wanda masks on the five tensors (BatchNorms
folded) against torch's own pruning of a hand-folded copy and hand-computed input norms, structured
pruning against hand-computed scores (the kept channels bit for bit), k-means folding (the
identity at as many clusters as channels, exact on planted duplicates, the merge rule by hand), the
repair and match_params, on a hand-built block, a block with an ordinary MLP head (mixed) and
MobileNetV3-small."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from afde_nb.core import inverted as ci
from afde_nb.eval.baselines import (count_params, fold_prune, magnitude_prune, match_params, repair_pruned,
                                    structured_prune, wanda_prune, wanda_scores)
from afde_nb.eval.baselines._common import n_kept, projections
from afde_nb.eval.nets import SqueezeExcitation, mobilenet_v3_small
from afde_nb.models.capture import capture

from conftest import assert_unchanged, snapshot

C = 12


class Block(nn.Module):
    """expand k x k -> BN -> hardswish -> depthwise 3x3 -> BN -> hardswish -> SE -> project 1x1 ->
    mean -> head (a Linear, or with ``mlp`` an ordinary Linear-ReLU-Linear chain of 16 units)."""

    def __init__(self, cin: int = 4, cout: int = 6, pk: int = 1, mlp: bool = False):
        super().__init__()
        self.expand = nn.Conv2d(cin, C, pk, padding=pk // 2, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(C), nn.Hardswish()
        self.dw = nn.Conv2d(C, C, 3, 1, 1, groups=C, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(C), nn.Hardswish()
        self.se = SqueezeExcitation(C, 4, scale_activation=nn.Hardsigmoid)
        self.project = nn.Conv2d(C, cout, 1)
        self.head = nn.Sequential(nn.Linear(cout, 16), nn.ReLU(), nn.Linear(16, 3)) if mlp else nn.Linear(cout, 3)

    def forward(self, x):
        h = self.se(self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x)))))))
        return self.head(self.project(h).mean((2, 3)))


def random_bn(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d):
                n = b.num_features
                b.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                b.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                b.weight.copy_(torch.rand(n, generator=g) + 0.5)
                b.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return m.eval()


def block(pk: int = 1, mlp: bool = False, seed: int = 0) -> Block:
    torch.manual_seed(seed)
    return random_bn(Block(pk=pk, mlp=mlp), seed).double()


def mixed() -> Block:
    return block(mlp=True)


def calib(n: int = 12, seed: int = 1) -> torch.Tensor:  # <= 16 images: the probe maps hold them all
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(x)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def folded(m: Block) -> Block:
    """A copy computing the same function with both BatchNorms folded into expand and dw by hand
    (identity BatchNorms holding the folded biases)."""
    f = copy.deepcopy(m)
    with torch.no_grad():
        for conv, bn in ((f.expand, f.bn1), (f.dw, f.bn2)):
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(s.view(-1, 1, 1, 1))
            bn.bias.copy_(bn.bias - bn.running_mean * s)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return f


def tensors(m: Block) -> list[nn.Module]:
    """The modules holding the weights the masked methods prune, in their order."""
    mods = [m.expand, m.dw, m.se.fc1, m.se.fc2, m.project]
    return mods + ([m.head[0], m.head[2]] if isinstance(m.head, nn.Sequential) else [])


def inputs(m: Block, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor's input on ``x`` by forward pre-hooks."""
    got, hs = {}, []
    for name in ("expand", "dw", "se.fc1", "se.fc2", "project"):
        hs.append(m.get_submodule(name).register_forward_pre_hook(lambda mod, a, n=name: got.__setitem__(n, a[0])))
    run(m, x)
    for h in hs:
        h.remove()
    return got


def plant(m: Block, pairs) -> None:
    """Channel j := channel i (producer row, both BatchNorms' entries, depthwise kernel, SE gate row)."""
    with torch.no_grad():
        for i, j in pairs:
            m.expand.weight[j] = m.expand.weight[i]
            m.dw.weight[j] = m.dw.weight[i]
            for bn in (m.bn1, m.bn2):
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t[j] = t[i]
            m.se.fc2.weight[j] = m.se.fc2.weight[i]
            m.se.fc2.bias[j] = m.se.fc2.bias[i]


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- magnitude and Wanda ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [block, mixed])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_masks_are_torchs_on_the_folded_tensors(make, scope):
    m, x = make(), calib()
    snap = snapshot(m)
    ref = folded(m)
    if scope == "layer":
        for mod in tensors(ref):
            prune.l1_unstructured(mod, "weight", amount=0.3)
    else:
        prune.global_unstructured([(mod, "weight") for mod in tensors(ref)], pruning_method=prune.L1Unstructured,
                                  amount=0.3)
    got = magnitude_prune(m, 0.3, scope)
    assert [n for n, _ in got.model.named_parameters()] == [n for n, _ in m.named_parameters()]
    for a, b in zip(tensors(got.model), tensors(ref)):
        assert torch.equal(a.weight != 0, b.weight_mask.bool()), (scope, a)
        if scope == "layer":  # round(0.3 n) zeros in each of the five tensors
            assert int((a.weight == 0).sum()) == round(0.3 * a.weight.numel())
    assert rel(run(ref, x), run(got.model, x)) < 1e-12  # the masked folded weights, nothing else changed
    assert got.params == count_params(got.model, nonzero=True) < count_params(m)
    assert_unchanged(m, snap)


@pytest.mark.parametrize("make", [block, mixed])
def test_masked_methods_at_amount_zero_change_nothing(make):
    m, x = make(), calib()
    for got in (magnitude_prune(m, 0.0), magnitude_prune(m, 0.0, "global"), wanda_prune(m, 0.0, x)):
        assert got.params == count_params(m)
        assert_same_state(got.model, m)
        assert torch.equal(run(m, x), run(got.model, x))


def test_wanda_norms_are_each_tensors_own_input():
    m, x = block(pk=3), calib()  # a 3x3 producer: its inputs are patches
    ins = inputs(m, x)
    f = folded(m)
    norms = [
        F.unfold(ins["expand"], 3, padding=1).transpose(0, 1).reshape(4 * 9, -1).norm(dim=1)[None, :],
        F.unfold(ins["dw"], 3, padding=1).reshape(len(x), C, 9, -1).permute(1, 2, 0, 3).reshape(C, 9, -1).norm(dim=2),
        ins["se.fc1"].flatten(1).norm(dim=0)[None, :],
        ins["se.fc2"].flatten(1).norm(dim=0)[None, :],
        ins["project"].transpose(0, 1).reshape(C, -1).norm(dim=1)[None, :],
    ]
    s = wanda_scores(m, x)
    assert len(s) == 5
    for score, mod, n in zip(s, tensors(f), norms):
        W = mod.weight.detach().reshape(len(mod.weight), -1)
        np.testing.assert_allclose(score, (W.abs() * n).numpy(), rtol=1e-9, atol=1e-12)
    # the depthwise norms differ row by row (each channel reads its own map)
    assert not np.allclose(norms[1][0].numpy(), norms[1][1].numpy())


@pytest.mark.parametrize("make", [block, mixed])
def test_wanda_prunes_the_lowest_scores_of_every_row(make):
    m, x = make(), calib()
    s = wanda_scores(m, x)
    got = wanda_prune(m, 0.25, x)
    assert len(s) == len(tensors(m))
    for score, mod in zip(s, tensors(got.model)):
        k = round(0.25 * score.shape[1])
        want = np.ones(score.shape, dtype=bool)
        np.put_along_axis(want, np.argsort(score, axis=1, kind="stable")[:, :k], False, axis=1)
        np.testing.assert_array_equal(mod.weight.detach().reshape(len(mod.weight), -1).numpy() != 0, want)
    assert got.params == count_params(got.model, nonzero=True)


# ---- structured pruning --------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["norm", "wanda"])
def test_structured_keeps_the_top_scored_channels_bit_for_bit(score):
    m, x = block(), calib()
    f = folded(m)
    V = m.project.weight.detach().reshape(-1, C).norm(dim=0).numpy()
    if score == "norm":
        P = torch.cat([f.expand.weight.reshape(C, -1), f.bn1.bias[:, None]], 1).norm(dim=1)
        K = torch.cat([f.dw.weight.reshape(C, -1), f.bn2.bias[:, None]], 1).norm(dim=1)
        imp = (P * K).detach().numpy() * V
    else:
        imp = inputs(m, x)["project"].transpose(0, 1).reshape(C, -1).norm(dim=1).numpy() * V
    keep = np.sort(np.argsort(-imp)[:6])  # 12 channels, amount 0.5 keeps 6
    drop = np.setdiff1d(np.arange(C), keep)
    got = structured_prune(m, 0.5, score, x if score == "wanda" else None)
    g = got.model
    assert g.expand.out_channels == g.dw.groups == g.project.in_channels == g.se.fc1.in_channels == 6
    t = torch.from_numpy(keep)
    for a, b in ((g.expand.weight, m.expand.weight), (g.dw.weight, m.dw.weight), (g.se.fc2.weight, m.se.fc2.weight),
                 (g.se.fc2.bias, m.se.fc2.bias), (g.bn1.running_var, m.bn1.running_var),
                 (g.bn2.weight, m.bn2.weight), (g.bn2.running_mean, m.bn2.running_mean)):
        assert torch.equal(a, b[t])  # kept as they were: unfolded BatchNorm entries
    assert torch.equal(g.project.weight, m.project.weight[:, t]) and torch.equal(g.se.fc1.weight, m.se.fc1.weight[:, t])
    assert got.params == count_params(g) == capture(m).num_params_with([6])
    assert list(np.flatnonzero(got.maps[0][0][0] >= 0)) == list(keep)
    # dropping a channel is zeroing its consumer and fc1 columns (the SE's mean loses it too)
    z = copy.deepcopy(m)
    with torch.no_grad():
        z.project.weight[:, drop] = 0
        z.se.fc1.weight[:, drop] = 0
    assert rel(run(z, x), run(g, x)) < 1e-12


def test_structured_on_a_mixed_model_prunes_both_chains():
    m, x = mixed(), calib()
    got = structured_prune(m, 0.5, "wanda", x)
    assert (got.model.expand.out_channels, got.model.head[0].out_features) == (6, 8)
    assert got.params == count_params(got.model) == capture(m).num_params_with([6, 8])
    nothing = structured_prune(m, 0.0)
    assert_same_state(nothing.model, m)


# ---- folding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [block, mixed])
def test_folding_with_as_many_clusters_as_channels_is_the_identity(make):
    m, x = make(), calib()
    got = fold_prune(m, 0.0)
    assert_same_state(got.model, m)
    assert torch.equal(run(m, x), run(got.model, x))


def test_folding_planted_duplicates_is_exact():
    m, x = block(), calib()
    plant(m, [(0, 3), (0, 7), (2, 9)])  # 12 channels, 9 distinct
    got = fold_prune(m, 0.25)  # round(0.75 * 12) = 9 clusters
    assert got.model.dw.groups == 9 and got.params == capture(m).num_params_with([9]) == count_params(got.model)
    assert rel(run(m, x), run(got.model, x)) < 1e-6
    mx = mixed()
    plant(mx, [(1, 5), (4, 10), (4, 11)])
    with torch.no_grad():
        for j in range(12, 16):  # 16 head units, 12 distinct
            mx.head[0].weight[j], mx.head[0].bias[j] = mx.head[0].weight[j - 12], mx.head[0].bias[j - 12]
    got = fold_prune(mx, 0.25)
    assert (got.model.expand.out_channels, got.model.head[0].out_features) == (9, 12)
    assert rel(run(mx, x), run(got.model, x)) < 1e-6


def test_folding_merges_to_mean_rows_and_summed_columns():
    m, x = block(), calib()
    net = capture(m).nets[0]
    p = fold_prune(m, 1.0)  # one cluster: every channel
    small = p.nets[0]
    assert small.channels == 1 and list(small.meta["keep"]) == [-1]  # a merged channel
    for a, b in ((small.producer, net.producer), (small.dw, net.dw), (small.fc2, net.fc2)):
        np.testing.assert_allclose(a.weight, b.weight.mean(axis=0, keepdims=True), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.bias, [b.bias.mean()], rtol=1e-12, atol=1e-14)
    for a, b in ((small.consumer, net.consumer), (small.fc1, net.fc1)):
        np.testing.assert_allclose(a.weight, b.weight.sum(axis=1, keepdims=True), rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(a.bias, b.bias)
    # written folded, with identity BatchNorms: the model computes the folded block
    g = p.model
    np.testing.assert_array_equal(g.expand.weight.detach().reshape(1, -1).numpy(), small.producer.weight)
    assert torch.equal(g.bn1.weight, torch.ones(1, dtype=torch.float64))
    h = torch.from_numpy(small.channel_maps(x.numpy()))  # the array forward of the folded block
    with torch.no_grad():
        want = g.head(g.project(h).mean((2, 3)))
    assert rel(want, run(g, x)) < 1e-12


# ---- repair and match_params -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [block, mixed])
def test_repair_lowers_the_calibration_error(make):
    m, x = make(), calib(16)
    y = run(m, x)
    for p in (magnitude_prune(m, 0.5), magnitude_prune(m, 0.5, "global"), wanda_prune(m, 0.5, x),
              structured_prune(m, 0.5), structured_prune(m, 0.5, "wanda", x), fold_prune(m, 0.5)):
        r = repair_pruned(p, m, x)
        assert r.repaired == "calibration"
        assert rel(y, run(r.model, x)) < 0.9 * rel(y, run(p.model, x)), p.method
        if not p.dense:  # the zeros stay, the consumer's too (a refit may add some: a ReLU unit dead on x)
            for a, b in zip(tensors(p.model), tensors(r.model)):
                assert bool((b.weight[a.weight == 0] == 0).all())
            assert torch.equal(r.model.project.weight == 0, p.model.project.weight == 0)
            assert r.params == count_params(r.model, nonzero=True) <= p.params
        else:
            assert r.params == p.params == count_params(r.model)
    assert repair_pruned(fold_prune(m, 0.5), m, pseudo=True).repaired == "pseudo"


def test_repair_of_an_inverted_chain_is_core_inverted_repair():
    m, x = block(), calib(16)
    cap = capture(m)
    maps = cap.rows(x, first=True)[0][0]
    for p in (structured_prune(m, 0.5), magnitude_prune(m, 0.5)):
        mask = None if p.dense else p.nets[0].consumer.weight != 0
        want = ci.repair(cap.nets[0], p.nets[0], maps, mask=mask)
        r = repair_pruned(p, m, x)
        np.testing.assert_allclose(r.nets[0].consumer.weight, want.consumer.weight, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r.model.project.bias.detach().numpy(), want.consumer.bias, rtol=1e-10, atol=1e-12)
        assert torch.equal(r.model.expand.weight, p.model.expand.weight)
        assert torch.equal(r.model.se.fc1.weight, p.model.se.fc1.weight)
    nothing = repair_pruned(structured_prune(m, 0.0), m, x).model  # nothing dropped: nothing refit
    assert torch.equal(nothing.project.weight, m.project.weight)


@pytest.mark.parametrize("make", [block, mixed])
def test_match_params_reaches_the_count(make):
    m, x = make(), calib()
    target = int(0.6 * count_params(m))
    for fn, kw in ((structured_prune, {}), (structured_prune, dict(score="wanda", calibration=x)), (fold_prune, {}),
                   (magnitude_prune, dict(scope="global")), (magnitude_prune, {}), (wanda_prune, dict(calibration=x))):
        got = match_params(fn, m, target, **kw)
        assert got.params <= target, got.method
        assert got.params == count_params(got.model, nonzero=not got.dense)
        if fn is magnitude_prune and kw:
            assert got.params == target
        if got.dense:  # every group at n_kept(n, amount), and a smaller amount would pass the target
            cap = capture(m)
            widths = [l.out_features for n in cap.nets for l in n.hidden]
            assert got.params == cap.num_params_with([n_kept(n, got.amount) for n in widths])
            assert fn(m, got.amount - 0.05, **kw).params > target


# ---- MobileNetV3-small ---------------------------------------------------------------------------


def test_mobilenet_v3_small_every_baseline():
    torch.manual_seed(0)
    m = random_bn(mobilenet_v3_small(num_classes=10))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = run(m, x)
    cap = capture(m)
    kinds = [type(n).__name__ for n in cap.nets]
    assert kinds.count("InvertedNet") == 11 and kinds[-1] == "Network"  # the classifier: an ordinary chain
    total = count_params(m)
    sizes = [l.weight.size for n in cap.nets for l in projections(n)]
    for p in (magnitude_prune(m, 0.3), wanda_prune(m, 0.3, x)):  # round(0.3 n) per layer, per row
        zeros = sum(int((t == 0).sum()) for n in p.nets for t in (l.weight for l in projections(n)))
        want = sum(round(0.3 * s) for s in sizes) if p.method.startswith("magnitude") else \
            sum(l.out_features * round(0.3 * l.weight.shape[1]) for n in cap.nets for l in projections(n))
        assert zeros == want and p.params == count_params(p.model, nonzero=True) == total - want
        assert torch.isfinite(run(p.model, x)).all()
    widths = [n_kept(l.out_features, 0.3) for n in cap.nets for l in n.hidden]
    dense = {}
    for p in (structured_prune(m, 0.3), structured_prune(m, 0.3, "wanda", x), fold_prune(m, 0.3)):
        assert p.params == count_params(p.model) == cap.num_params_with(widths)
        assert p.model.features[5].block[1][0].groups == n_kept(240, 0.3)
        dense[p.method] = rel(y, run(p.model, x))
    assert dense["structured-wanda"] < dense["structured-norm"]  # calibrated scores keep more of the function
    fixed = repair_pruned(fold_prune(m, 0.3), m, x)
    assert rel(y, run(fixed.model, x)) < dense["folding"]
    for p in (magnitude_prune(m, 0.0), structured_prune(m, 0.0), fold_prune(m, 0.0)):
        assert p.params == total and rel(y, run(p.model, x)) < 1e-5
        got, want = p.model.state_dict(), m.state_dict()
        blocks = [k for k in got if k.startswith("features.") and int(k.split(".")[1]) < 12]
        assert all(torch.equal(got[k], want[k]) for k in blocks)  # the inverted blocks written as they were
    target = int(0.5 * total)
    assert match_params(structured_prune, m, target).params <= target
    assert match_params(magnitude_prune, m, target, scope="global").params == target
