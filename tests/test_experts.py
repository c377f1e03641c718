"""Mixture-of-experts banks stored fused (issue 27): each expert's units lump within the expert, a
bank keeps one width (zero-padded, counted), rows are the tokens routed to each expert, and the
written bank computes the reduced experts' function."""
import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.core import gated as core_gated
from afde_nb.core.tie import Tie, tie_widths
from afde_nb.models import experts
from afde_nb.models.capture import capture

E, I, H, K = 4, 16, 8, 2


class TinyExperts(nn.Module):
    """transformers 5's fused layout and its eager loop over the experts hit."""

    def __init__(self, dtype=torch.float64, act=None):
        super().__init__()
        self.num_experts, self.intermediate_dim = E, I
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * I, H, dtype=dtype) / H ** 0.5)
        self.down_proj = nn.Parameter(torch.randn(E, H, I, dtype=dtype) / I ** 0.5)
        self.act_fn = act or nn.SiLU()

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            e = e[0]
            pos, tok = torch.where(mask[e])
            gate, up = nn.functional.linear(hidden_states[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
            h = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[e])
            out.index_add_(0, tok, h * top_k_weights[tok, pos, None])
        return out


class TinyMoE(nn.Module):
    """x -> router (top-2 of 4, softmax weights) -> experts -> head."""

    def __init__(self, dtype=torch.float64, experts_module=None):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(6, H).to(dtype)
        self.router = nn.Linear(H, E, bias=False).to(dtype)
        self.experts = experts_module or TinyExperts(dtype)
        self.head = nn.Linear(H, 3).to(dtype)

    #: experts the router never picks (their logits set to -inf)
    unused: tuple = ()

    def forward(self, x):
        h = self.inp(x)
        logits = self.router(h)
        if self.unused:
            logits = logits.clone()
            logits[:, list(self.unused)] = -torch.inf
        w, idx = torch.topk(torch.softmax(logits, dim=-1), K, dim=-1)
        return self.head(h + self.experts(h, idx, w / w.sum(-1, keepdim=True)))


def _x(n=64, seed=1, dtype=torch.float64):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / a.norm())


def _plant(model, expert, pairs):
    with torch.no_grad():
        w = model.experts.gate_up_proj[expert]
        for i, j in pairs:
            w[j], w[I + j] = w[i], w[I + i]


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_a_bank_is_found_one_chain_per_expert_and_reported():
    cap = capture(TinyMoE())
    chains = cap.discovery.chains
    banks = [c for c in chains if experts.is_expert(c)]
    assert [c[0].expert for c in banks] == list(range(E))
    assert cap.ties == (Tie(tuple(chains.index(c) for c in banks), I, 2),)  # float64: 16-byte rows, 2 units
    report = cap.discovery.report()
    assert "expert 0 of experts" in report and "checked against" in report and "one width for its 4 experts" in report
    assert "expert 3 of experts (as expert 0)" in report


def test_planted_duplicates_in_one_expert_go_exactly_and_the_padding_is_counted():
    model = TinyMoE()
    _plant(model, 1, [(0, 5), (0, 9)])
    x = _x()
    c = afde_nb.compress(model, 0.0, calibration=x)
    removed = {s.name: s.neurons_before - s.neurons_after for s in c.layers if s.neurons_before != s.neurons_after}
    assert removed == {"experts[1]": 2}
    assert _rel(model(x), c.model(x)) < 1e-10
    # the other experts keep 16 units, so the fused parameter does too: expert 1 is zero-padded
    assert c.params_after == c.params_before == _params(c.model)
    assert tuple(c.model.experts.gate_up_proj.shape) == (E, 2 * I, H)
    assert torch.all(c.model.experts.down_proj[1][:, I - 2:] == 0)


def test_duplicates_in_every_expert_narrow_the_bank():
    model = TinyMoE()
    for e in range(E):
        _plant(model, e, [(1, 3), (2, 7)])
    x = _x()
    c = afde_nb.compress(model, 0.0, calibration=x)
    assert [s.neurons_after for s in c.layers] == [I - 2] * E
    assert c.params_after == _params(c.model) == c.params_before - E * 3 * H * 2
    assert c.model.experts.intermediate_dim == I - 2
    assert _rel(model(x), c.model(x)) < 1e-10


def test_float32_widths_round_up_to_16_byte_rows():
    model = TinyMoE(torch.float32)
    for e in range(E):
        _plant(model, e, [(1, 3), (2, 7)])
    c = afde_nb.compress(model, 0.0, calibration=_x(dtype=torch.float32))
    assert [s.neurons_after for s in c.layers] == [I - 2] * E
    # 14 units of float32 are 56-byte rows: written (and counted) at 16
    assert tuple(c.model.experts.down_proj.shape) == (E, H, I)
    assert c.params_after == c.params_before == _params(c.model)


def test_rows_are_the_tokens_routed_to_each_expert():
    model = TinyMoE()
    x = _x(40)
    chains = [c for c in capture(model).discovery.chains if experts.is_expert(c)]
    with experts.record(model, chains) as seen:
        with torch.no_grad():
            model(x)
    with torch.no_grad():
        h = model.inp(x)
        _, idx = torch.topk(torch.softmax(model.router(h), dim=-1), K, dim=-1)
    for (g,) in chains:
        X, Hv = seen[g]
        want = h[(idx == g.expert).any(dim=1)].numpy()
        np.testing.assert_array_equal(X, want)
        net = experts.expert_network(model, [g])
        np.testing.assert_allclose(Hv, net.hidden_values(want), rtol=1e-12, atol=1e-12)


def test_an_expert_no_token_reaches_is_read_on_pseudo_inputs():
    model = TinyMoE()
    model.unused = (3,)
    x = _x(48)
    cap = capture(model, calibration=x)
    rows = cap.rows(cap.calibration(x))
    k = next(k for k, c in enumerate(cap.discovery.chains) if experts.is_expert(c) and c[0].expert == 3)
    np.testing.assert_array_equal(rows[k][0], cap.kind(k).pseudo_rows(cap.nets[k])[0])
    c = afde_nb.compress(model, target_params=_params(model) - 3 * E * H * 4, calibration=x)
    assert {s.neurons_after for s in c.layers} == {I - 4} and c.params_after == _params(c.model)


def test_a_budget_cuts_every_expert_of_a_bank_to_one_width():
    model = TinyMoE()
    x = _x(64)
    target = _params(model) - 3 * E * H * 6  # six units less in every expert
    for calib in (x, None):
        c = afde_nb.compress(model, target_params=target, calibration=calib)
        widths = {s.neurons_after for s in c.layers}
        assert len(widths) == 1 and widths.pop() <= I - 6
        assert c.params_after == _params(c.model) <= target
        assert _rel(model(x), c.model(x)) < 0.5


def test_the_path_drops_merges_the_padding_would_waste():
    model = TinyMoE()
    c = afde_nb.compress(model, 0.0, calibration=_x())
    path = c.path
    (tie,) = path.ties
    ms = [0] * len(path.layers)
    ms[tie.members[0]], ms[tie.members[1]] = 5, 3  # the others keep 16 units: nothing is saved
    assert path.tied(ms) == [0] * len(path.layers)
    ms = [4] * len(path.layers)
    ms[tie.members[2]] = 9  # common width 12: expert 2's five extra merges save nothing
    assert path.tied(ms) == [4] * len(path.layers)
    assert tie_widths([10, 13, 7], [Tie((0, 1, 2), 16, 4)]) == [16, 16, 16]
    assert tie_widths([10, 11, 7, 5], [Tie((0, 2), 16, 4)]) == [12, 11, 12, 5]


def test_write_back_computes_the_reduced_experts():
    """Experts reduced to different widths (12, 10, 16, 9 units) and written: the bank's forward is
    the sum of the reduced experts' outputs, weighted by the routing, narrower ones zero-padded."""
    model = TinyMoE()
    chains = [c for c in capture(model).discovery.chains if experts.is_expert(c)]
    rng = np.random.default_rng(0)
    nets = [core_gated.select(experts.expert_network(model, c), np.sort(rng.choice(I, k, replace=False)))
            for c, k in zip(chains, (12, 10, 16, 9))]
    out = TinyMoE()
    experts.write_tied(out, chains, nets)
    assert tuple(out.experts.gate_up_proj.shape) == (E, 2 * I, H) and out.experts.intermediate_dim == I
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, H, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(30)])
    w = torch.rand(30, K, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = out.experts(x, idx, w).numpy()
    want = np.zeros_like(got)
    for k in range(K):
        for e in range(E):
            rows = (idx[:, k] == e).numpy()
            want[rows] += w[rows, k].numpy()[:, None] * nets[e].forward(x[rows].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # a bank written without all its experts is refused
    with pytest.raises(afde_nb.errors.UnsupportedLayerError, match="all its experts"):
        experts.write_tied(TinyMoE(), chains[:2], nets[:2])


class NotWhatItSays(TinyExperts):
    """The fused layout, but each expert's output doubled: not the bank's function."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return 2 * super().forward(hidden_states, top_k_index, top_k_weights)


def test_a_bank_whose_forward_differs_is_left_alone_with_why():
    model = TinyMoE(experts_module=NotWhatItSays())
    disc = capture(model).discovery
    assert not any(experts.is_expert(c) for c in disc.chains)
    why = dict(disc.skipped)["experts"]
    assert "differs from sum_k w_k down_e(act(gate_e x) * up_e x)" in why


def test_an_untraceable_moe_names_the_line():
    """Mixtral with the eager experts loop: torch.export stops at the loop over the experts hit, and
    the report names that line; its banks are still found (by module) and compress."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                          max_position_embeddings=32)
    m = T.MixtralForCausalLM(cfg).eval()
    m.config._experts_implementation = "eager"
    ids = torch.randint(0, 50, (8, 6), generator=torch.Generator().manual_seed(0))
    disc = capture(m, calibration=ids).discovery
    assert "torch.export failed" in disc.note and "modeling_mixtral.py:" in disc.note
    assert sum(experts.is_expert(c) for c in disc.chains) == 4


class ReadsItsExperts(TinyMoE):
    """The bank's parameters also read outside its forward (a penalty added to the output)."""

    def forward(self, x):
        return super().forward(x) + self.experts.down_proj.sum()


def test_a_bank_read_outside_its_forward_is_left_alone():
    disc = capture(ReadsItsExperts(), calibration=_x()).discovery
    assert not any(experts.is_expert(c) for c in disc.chains)
    assert "reads outside its forward" in dict(disc.skipped)["experts"]


def test_the_budget_split_repairs_an_expert_on_the_fit_inputs_tokens_only():
    """An expert's rows are the tokens routed to it, another number per input, so they cannot be
    cut by input (row r of R is input r * n // R only where every input gives as many): the split's
    repair rows for an expert are those a capture of the fit inputs gives, never a held-out
    input's token."""
    from afde_nb.pipeline.compress import _fit_rows
    from afde_nb.pipeline.split import ChainErrors, split_inputs

    model = TinyMoE()
    x = _x(48)
    cap = capture(model, calibration=x)
    calib = cap.calibration(x)
    rows = cap.rows(calib)
    c = afde_nb.compress(model, target_params=_params(model) - 3 * E * H * 4, calibration=x)
    errs = ChainErrors(cap, c.path, rows, _fit_rows(cap, "calibration", rows), calib, None)
    fit, _ = split_inputs(len(calib))
    want = cap.rows(calib[fit])
    ks = [k for k, ch in enumerate(cap.discovery.chains) if experts.is_expert(ch)]
    assert ks and errs.runs == 1
    for k in ks:
        np.testing.assert_array_equal(errs.fit[k], want[k][0])
