"""Gated units (docs/method.md "Gated units"): lumping against structured pruning of the same units.

    python benchmarks/gated_units.py            # both parts, about a minute on two cores
    python benchmarks/gated_units.py --part llama

``llama``: a tiny random-init LLaMA (hidden 32, intermediate 64, 2 layers, seed 0; transformers,
offline): eps = 0 on planted duplicates (the relative change of the logits), then a 70 % budget of
the whole model, data-free, calibrated and repaired (64 x 8 tokens), and structured pruning that
keeps the same number of gated units per MLP (scores ||g|| ||u|| ||v|| and ||h|| ||v||, each with
and without the same refit of the down projection); relative logit error on 64 x 8 other tokens.

``trained``: a gated MLP (in 16, 96 SiLU units, out 4) trained on a teacher's regression, three
seeds; test MSE over the original's at 75 / 50 / 25 % of its parameters, the same methods.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import afde_nb
from afde_nb.core import gated as cg
from afde_nb.models.capture import capture


class GatedMLP(nn.Module):
    def __init__(self, d: int, n: int, out: int):
        super().__init__()
        self.gate, self.up, self.down, self.act = nn.Linear(d, n), nn.Linear(d, n), nn.Linear(n, out), nn.SiLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def pruned(cap, widths, rows, score: str, refit: bool):
    """The model with each gated chain cut to its ``widths`` best units by ``score``."""
    nets = []
    for k, (net, w) in enumerate(zip(cap.nets, widths)):
        if score == "norm":
            G = np.column_stack([net.gate.weight, net.gate.bias])
            U = np.column_stack([net.up.weight, net.up.bias])
            s = np.linalg.norm(G, axis=1) * np.linalg.norm(U, axis=1) * np.linalg.norm(net.down.weight, axis=0)
        else:
            s = np.linalg.norm(net.hidden_values(rows[k][0]), axis=0) * np.linalg.norm(net.down.weight, axis=0)
        small = cg.select(net, np.sort(np.argsort(-s, kind="stable")[:w]))
        nets.append(cg.repair(net, small, rows[k][0]) if refit else small)
    return cap.write(nets)


def methods(model, target, calib, x_calib):
    """{method: reduced model} at ``target`` parameters."""
    out = {}
    for name, kw in (("lumped, data-free", dict(repair=False)), ("lumped, calibrated", dict(calibration=calib, repair=False)),
                     ("lumped, repaired", dict(calibration=calib))):
        c = afde_nb.compress(model, target_params=target, **kw)
        out[name] = c.model
    widths = [s.neurons_after for s in c.layers]
    cap = capture(model, calibration=calib)
    rows = cap.rows(x_calib)
    for score, label in (("norm", "||g|| ||u|| ||v||"), ("wanda", "||h|| ||v||")):
        for refit in (False, True):
            out[f"pruned by {label}{', repaired' if refit else ''}"] = pruned(cap, widths, rows, score, refit)
    return out


def llama_part() -> None:
    import transformers as T

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=99,
                                             max_position_embeddings=32)).eval()
    g = torch.Generator().manual_seed(1)
    calib, test = torch.randint(3, 99, (64, 8), generator=g), torch.randint(3, 99, (64, 8), generator=g)

    def logits(m):
        with torch.no_grad():
            return m(test).logits

    planted = model.__class__(model.config).eval()
    planted.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, pairs in zip(planted.model.layers, [[(3, 5, 0.7), (3, 9, -1.3)], [(7, 2, 2.5)]]):
            for i, j, lam in pairs:
                layer.mlp.gate_proj.weight[j] = layer.mlp.gate_proj.weight[i]
                layer.mlp.up_proj.weight[j] = lam * layer.mlp.up_proj.weight[i]
    c = afde_nb.compress(planted, 0.0, calibration=calib)
    ref = logits(planted)
    print(f"eps = 0, planted: widths {[s.neurons_after for s in c.layers]}, relative logit change "
          f"{float((logits(c.model) - ref).norm() / ref.norm()):.2g}")
    ref = logits(model)
    target = int(0.7 * params(model))
    print(f"70 % budget ({target} of {params(model)} parameters): relative logit error on other tokens")
    for name, m in methods(model, target, calib, calib).items():
        print(f"  {name:34s} {float((logits(m) - ref).norm() / ref.norm()):.4f}  ({params(m)} parameters)")


def trained_part() -> None:
    res: dict = {}
    for seed in range(3):
        torch.manual_seed(seed)
        d, n, o = 16, 96, 4
        teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, o))
        X, Xt = torch.randn(4096, d), torch.randn(2048, d)
        Y, Yt = teacher(X).detach(), teacher(Xt).detach()
        m = GatedMLP(d, n, o)
        opt = torch.optim.Adam(m.parameters(), 3e-3)
        for _ in range(1500):
            idx = torch.randint(0, len(X), (256,))
            loss = ((m(X[idx]) - Y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()

        def mse(mm):
            with torch.no_grad():
                return float(((mm(Xt) - Yt) ** 2).mean())

        base = mse(m)
        for frac in (0.75, 0.5, 0.25):
            for name, mm in methods(m, int(frac * params(m)), X[:512], X[:512]).items():
                res.setdefault(name, {}).setdefault(frac, []).append(mse(mm) / base)
    print("trained gated MLP: test MSE over the original's (geometric mean of 3 seeds) at 75 / 50 / 25 %")
    for name, by in res.items():
        print(f"  {name:34s} " + " / ".join(f"{np.exp(np.mean(np.log(v))):.3g}" for _, v in sorted(by.items(), reverse=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("llama", "trained", "both"), default="both")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.part in ("llama", "both"):
        llama_part()
    if a.part in ("trained", "both"):
        trained_part()


if __name__ == "__main__":
    main()
