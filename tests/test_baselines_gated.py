"""Baselines on gated MLP groups, ``down(act(gate(x)) * up(x))`` (issue 23): magnitude and Wanda
masks on the gate, up and down projections against torch's own pruning and hand-computed norms,
structured pruning against :func:`afde_nb.core.gated.select`, k-means folding (the identity at as
many clusters as units, exact on planted duplicates, the merge rule by hand), the repair, and
match_params, on a gated MLP, a model mixing an ordinary GELU chain with a gated one, and a tiny
LLaMA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from afde_nb.core import gated as cg
from afde_nb.errors import InvalidArgumentError
from afde_nb.eval.baselines import (count_params, fold_prune, magnitude_prune, match_params, repair_pruned,
                                    structured_prune, wanda_prune, wanda_scores)
from afde_nb.models.capture import capture

from conftest import assert_unchanged, snapshot


class Gated(nn.Module):
    def __init__(self, d: int = 8, n: int = 16, out: int = 5, bias: bool = True):
        super().__init__()
        self.gate, self.up = nn.Linear(d, n, bias=bias), nn.Linear(d, n, bias=bias)
        self.down = nn.Linear(n, out, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class Mixed(nn.Module):
    """An ordinary GELU MLP block, then a gated block, both residual."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 20), nn.Linear(20, d)
        self.ffn = Gated(d, 16, d)

    def forward(self, x):
        x = x + self.fc2(nn.functional.gelu(self.fc1(x)))
        return x + self.ffn(x)


def gated(bias: bool = True, seed: int = 0) -> Gated:
    torch.manual_seed(seed)
    return Gated(bias=bias).eval()


def mixed(seed: int = 0) -> Mixed:
    torch.manual_seed(seed)
    return Mixed().eval()


def calib(n: int = 64, d: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def run(m: nn.Module, x) -> torch.Tensor:
    with torch.no_grad():
        return m(**x).logits if isinstance(x, dict) else m(x)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def ffn(m: nn.Module) -> Gated:
    return m.ffn if isinstance(m, Mixed) else m


def linears(m: nn.Module) -> list[nn.Linear]:
    return [l for l in m.modules() if isinstance(l, nn.Linear)]


def hidden(g: Gated, x: torch.Tensor) -> np.ndarray:
    """h = silu(gate x) * up x by hand, float64."""
    x = x.double().numpy()
    W = {k: getattr(g, k).weight.detach().double().numpy() for k in ("gate", "up")}
    b = {k: getattr(g, k).bias.detach().double().numpy() for k in ("gate", "up")}
    z = x @ W["gate"].T + b["gate"]
    return z / (1 + np.exp(-z)) * (x @ W["up"].T + b["up"])


def duplicate(g: nn.Module, pairs) -> None:
    """Unit j := unit i (equal gate and up rows and biases) of a gated MLP (ours or LLaMA's)."""
    lins = (g.gate, g.up) if isinstance(g, Gated) else (g.gate_proj, g.up_proj)
    with torch.no_grad():
        for i, j in pairs:
            for lin in lins:
                lin.weight[j] = lin.weight[i]
                if lin.bias is not None:
                    lin.bias[j] = lin.bias[i]


# ---- magnitude and Wanda ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [gated, mixed])
def test_magnitude_masks_are_torchs_on_every_projection(make):
    m = make()
    snap = snapshot(m)
    for scope in ("layer", "global"):
        ref = make()
        if scope == "layer":
            for lin in linears(ref):
                prune.l1_unstructured(lin, "weight", amount=0.3)
        else:
            prune.global_unstructured([(l, "weight") for l in linears(ref)], pruning_method=prune.L1Unstructured,
                                      amount=0.3)
        got = magnitude_prune(m, 0.3, scope)
        assert [n for n, _ in got.model.named_parameters()] == [n for n, _ in m.named_parameters()]
        for a, b in zip(linears(got.model), linears(ref)):
            assert torch.equal(a.weight != 0, b.weight_mask.bool()), (scope, a)
            assert torch.equal(a.bias, b.bias)
        if scope == "layer":  # round(0.3 n) zeros in each of gate, up and down
            for lin in linears(got.model):
                assert int((lin.weight == 0).sum()) == round(0.3 * lin.weight.numel())
        assert got.params == count_params(got.model, nonzero=True) < count_params(m)
    assert_unchanged(m, snap)


@pytest.mark.parametrize("make", [gated, mixed])
def test_magnitude_at_amount_zero_changes_nothing(make):
    m, x = make(), calib()
    for scope in ("layer", "global"):
        got = magnitude_prune(m, 0.0, scope)
        assert got.params == count_params(m)
        for a, b in zip(got.model.state_dict().values(), m.state_dict().values()):
            assert torch.equal(a, b)
        assert torch.equal(run(m, x), run(got.model, x))


def test_wanda_norms_are_each_projections_own_input():
    m, x = mixed(), calib()
    with torch.no_grad():
        x2 = x + m.fc2(nn.functional.gelu(m.fc1(x)))  # the gated block's input
    h = hidden(m.ffn, x2)
    s = wanda_scores(m, x)
    assert len(s) == 5  # fc1, fc2; gate, up, down
    for score, lin, inp in ((s[2], m.ffn.gate, x2), (s[3], m.ffn.up, x2), (s[4], m.ffn.down, torch.from_numpy(h))):
        norms = np.linalg.norm(inp.double().numpy(), axis=0)
        np.testing.assert_allclose(score, np.abs(lin.weight.detach().double().numpy()) * norms[None, :], rtol=1e-5)
    # the down projection's norms are ||h_i||: recovered from the scores
    np.testing.assert_allclose(s[4][0] / np.abs(m.ffn.down.weight.detach().double().numpy()[0]),
                               np.linalg.norm(h, axis=0), rtol=1e-5)


@pytest.mark.parametrize("make", [gated, mixed])
def test_wanda_prunes_the_lowest_scores_of_every_row(make):
    m, x = make(), calib()
    s = wanda_scores(m, x)
    got = wanda_prune(m, 0.25, x)
    for score, lin in zip(s, linears(got.model)):
        k = round(0.25 * score.shape[1])
        want = np.ones(score.shape, dtype=bool)
        np.put_along_axis(want, np.argsort(score, axis=1, kind="stable")[:, :k], False, axis=1)
        np.testing.assert_array_equal(lin.weight.detach().numpy() != 0, want)
    assert got.params == count_params(got.model, nonzero=True)
    with pytest.raises(InvalidArgumentError, match="calibration"):  # no data-free Wanda
        wanda_prune(m, 0.25, None)


# ---- structured pruning --------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["norm", "wanda"])
def test_structured_keeps_the_most_important_units_as_select(score):
    m, x = gated(), calib()
    net = capture(m).nets[0]
    G = np.column_stack([net.gate.weight, net.gate.bias])
    U = np.column_stack([net.up.weight, net.up.bias])
    v = np.linalg.norm(net.down.weight, axis=0)
    imp = (np.linalg.norm(G, axis=1) * np.linalg.norm(U, axis=1) if score == "norm"
           else np.linalg.norm(hidden(m, x), axis=0)) * v
    keep = np.sort(np.argsort(-imp)[:6])  # 16 units, amount 0.6 keeps round(6.4) = 6
    got = structured_prune(m, 0.6, score, x if score == "wanda" else None)
    ref = cg.select(net, keep)
    g = got.model
    assert (g.gate.out_features, g.up.out_features, g.down.in_features) == (6, 6, 6)
    for lin, layer in ((g.gate, ref.gate), (g.up, ref.up), (g.down, ref.down)):
        np.testing.assert_array_equal(lin.weight.detach().double().numpy(), layer.weight)
        np.testing.assert_array_equal(lin.bias.detach().double().numpy(), layer.bias)
    assert got.params == count_params(g) == capture(m).num_params_with([6])
    assert list(np.flatnonzero(got.maps[0][0][0] >= 0)) == list(keep)


def test_structured_on_a_mixed_model_prunes_both_chains():
    m, x = mixed(), calib()
    got = structured_prune(m, 0.5, "wanda", x)
    assert (got.model.fc1.out_features, got.model.ffn.gate.out_features) == (10, 8)
    assert got.params == count_params(got.model) == capture(m).num_params_with([10, 8])


# ---- folding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [gated, mixed, lambda: gated(bias=False)])
def test_folding_with_as_many_clusters_as_units_is_the_identity(make):
    m, x = make(), calib()
    got = fold_prune(m, 0.0)
    for a, b in zip(got.model.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(run(m, x), run(got.model, x))


@pytest.mark.parametrize("bias", [True, False])
def test_folding_planted_duplicates_is_exact(bias):
    m, x = gated(bias), calib()
    duplicate(m, [(0, 5), (0, 9), (3, 12), (7, 15)])  # 16 units, 12 distinct
    got = fold_prune(m, 0.25)  # round(0.75 * 16) = 12 clusters
    assert got.model.gate.out_features == 12 and got.params == capture(m).num_params_with([12])
    assert rel(run(m, x), run(got.model, x)) < 1e-6
    mx = mixed()
    duplicate(mx.ffn, [(1, 6), (2, 11), (4, 13), (8, 14)])
    with torch.no_grad():
        for j in range(15, 20):  # 20 fc1 units, 15 distinct
            mx.fc1.weight[j], mx.fc1.bias[j] = mx.fc1.weight[j - 15], mx.fc1.bias[j - 15]
    got = fold_prune(mx, 0.25)
    assert (got.model.fc1.out_features, got.model.ffn.gate.out_features) == (15, 12)
    assert rel(run(mx, x), run(got.model, x)) < 1e-6


def test_folding_merges_to_mean_rows_and_summed_columns():
    m = gated()
    net = capture(m).nets[0]
    got = fold_prune(m, 1.0).model  # one cluster: every unit
    for lin, layer in ((got.gate, net.gate), (got.up, net.up)):
        np.testing.assert_allclose(lin.weight.detach().double().numpy(), layer.weight.mean(axis=0, keepdims=True),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lin.bias.detach().double().numpy(), [layer.bias.mean()], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.down.weight.detach().double().numpy(), net.down.weight.sum(axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(got.down.bias, m.down.bias)


# ---- repair and match_params -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [gated, mixed])
def test_repair_lowers_the_calibration_error(make):
    m, x = make(), calib(256)
    y = run(m, x)
    for p in (magnitude_prune(m, 0.5), magnitude_prune(m, 0.5, "global"), wanda_prune(m, 0.5, x),
              structured_prune(m, 0.5), structured_prune(m, 0.5, "wanda", x), fold_prune(m, 0.5)):
        r = repair_pruned(p, m, x)
        assert r.repaired == "calibration"
        assert rel(y, run(r.model, x)) < 0.9 * rel(y, run(p.model, x)), p.method
        if not p.dense:  # the zeros stay: every layer's mask, the down projection's too
            for a, b in zip(linears(p.model), linears(r.model)):
                assert torch.equal(a.weight == 0, b.weight == 0)
            assert r.params == p.params
        else:
            assert r.params == p.params == count_params(r.model)
    assert repair_pruned(fold_prune(m, 0.5), m, pseudo=True).repaired == "pseudo"


def test_repair_of_a_gated_chain_is_core_gated_repair():
    m, x = gated(), calib(256)
    p = structured_prune(m, 0.5)
    net = capture(m).nets[0]
    want = cg.repair(net, p.nets[0], x.double().numpy())
    r = repair_pruned(p, m, x).model
    np.testing.assert_allclose(r.down.weight.detach().double().numpy(), want.down.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.down.bias.detach().double().numpy(), want.down.bias, rtol=1e-5, atol=1e-6)
    assert torch.equal(r.gate.weight, p.model.gate.weight) and torch.equal(r.up.weight, p.model.up.weight)
    nothing = repair_pruned(structured_prune(m, 0.0), m, x).model  # nothing dropped: nothing refit
    assert torch.equal(nothing.down.weight, m.down.weight)


def test_match_params_reaches_afde_nbs_count():
    import afde_nb

    m, x = gated(), calib()
    c = afde_nb.compress(m, target_params=int(0.6 * count_params(m)))
    target = c.params_after
    for fn, kw in ((structured_prune, {}), (structured_prune, dict(score="wanda", calibration=x)), (fold_prune, {}),
                   (magnitude_prune, dict(scope="global"))):
        got = match_params(fn, m, target, **kw)
        assert got.params == target, got.method
    for fn, kw in ((magnitude_prune, {}), (wanda_prune, dict(calibration=x))):
        got = match_params(fn, m, target, **kw)
        assert got.params <= target and got.params == count_params(got.model, nonzero=True)
    mx = mixed()
    t = int(0.7 * count_params(mx))
    for fn, kw in ((structured_prune, {}), (fold_prune, {}), (magnitude_prune, dict(scope="global")),
                   (wanda_prune, dict(calibration=x))):
        got = match_params(fn, mx, t, **kw)
        assert got.params <= t and (fn is not magnitude_prune or got.params == t)


# ---- a tiny LLaMA -----------------------------------------------------------------------------------


def test_tiny_llama_every_baseline():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=99,
                                         max_position_embeddings=32)).eval()
    for layer in m.model.layers:
        duplicate(layer.mlp, [(i, i + 48) for i in range(16)])  # 64 units, 48 distinct
    ids = torch.randint(3, 99, (8, 8), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    y = run(m, batch)
    folded = fold_prune(m, 0.25)
    assert [l.mlp.gate_proj.out_features for l in folded.model.model.layers] == [48, 48]
    assert rel(y, run(folded.model, batch)) < 1e-6 and folded.params == count_params(folded.model)
    pruned = match_params(structured_prune, m, folded.params, score="wanda", calibration=batch)
    assert pruned.params == folded.params
    assert [l.mlp.down_proj.in_features for l in pruned.model.model.layers] == [48, 48]
    fixed = repair_pruned(pruned, m, batch)
    assert rel(y, run(fixed.model, batch)) < rel(y, run(pruned.model, batch))
    masked = magnitude_prune(m, 0.5)
    for l in masked.model.model.layers:
        for lin in (l.mlp.gate_proj, l.mlp.up_proj, l.mlp.down_proj):
            assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2
    assert wanda_prune(m, 0.5, batch).params == masked.params


def test_repair_reuses_the_originals_values_bit_for_bit():
    """issue 29: the original's outputs on the repair rows are computed once per (net, rows) and
    reused, bit for bit (from the second refit on the same rows on, with the kept units' Gram
    entries, the same to the float32 values' rounding); the units' values are the plain formula's to float32 rounding (they are
    computed in the model's dtype) and numpy's SiLU is bit-identical to it."""
    from afde_nb.core.network import apply_activation
    from scipy.special import expit

    g = gated()
    x = calib().double().numpy()
    net = capture(g).nets[0]
    small = cg.select(net, np.arange(0, 16, 2))
    first, again, third = (cg.repair(net, small, x) for _ in range(3))
    fresh = cg.repair(capture(g).nets[0], small, x.copy())
    for a, b in ((first, fresh), (again, third)):  # a first refit on rows; the later ones (kept sums)
        assert np.array_equal(a.down.weight, b.down.weight) and np.array_equal(a.down.bias, b.down.bias)
    scale = np.abs(first.down.weight).max()  # the later refits read kept units' sums off the original's
    np.testing.assert_allclose(again.down.weight, first.down.weight, rtol=0, atol=1e-5 * scale)  # float32 values
    z = x @ net.gate.weight.T + net.gate.bias
    want, got = apply_activation(z, "silu") * (x @ net.up.weight.T + net.up.bias), net.hidden_values(x)
    assert got.dtype == np.float32  # the float32 model's dtype (issue 29: torch in the model's dtype)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.array_equal(apply_activation(z, "silu"), z * expit(1.0 * z))
    assert np.array_equal(apply_activation(z, "silu", params=(("beta", 1.702),)), z * expit(1.702 * z))
