"""Nothing lost (issue 27): the same compressions under two installs of afde-nb, compared bit for bit.

    python benchmarks/same_as_before.py --old /tmp/venv_old/bin/python --new python
    python benchmarks/same_as_before.py --old python --new python          # determinism check
    python benchmarks/same_as_before.py ... --only mobilenet_v3_small,gpt2 --out /tmp/same

Each interpreter runs this file as a worker (``--worker``) in its own process, builds every model
below from fixed seeds (the model code lives in ``afde_nb.eval`` and in this file, so both sides
build the same inputs; the worker records a SHA-256 of the input state_dict and the calibration
tensor and the parent checks that they agree), runs the fixed list of compressions and writes one
``.pt`` per (model, setting) under ``OUT/<side>/``: the partition (labels per layer), the reduced
model's state_dict, its output on the calibration inputs, the calibration and held-out errors, the
parameter count, or the error message where ``compress`` refused. The parent process then loads both
sides and prints one row per (model, setting): same partition, same weights (every tensor
``torch.equal``, same keys and shapes), same output on the calibration inputs, same errors, and the
largest absolute difference where the weights differ.

Models: every example of :mod:`afde_nb.eval.zoo` (trained, cached: ``load_example``), torchvision's
MobileNetV3-small and EfficientNet-B0 (:mod:`afde_nb.eval.nets`, random init, BatchNorm statistics
randomised, duplicate channels planted in three inverted groups and the classifier's hidden layer),
the LM bench's GELU (GPT-2-style) and gated (LLaMA-style) character LMs (:mod:`afde_nb.eval.lm`, the
quick profile's shapes, GPT-2 initialisation, duplicates planted), a plain tanh stack, a residual
GELU MLP, a CNN with BatchNorm, and a tiny GPT-2 and LLaMA from transformers (duplicates planted in
each). Settings: eps 0, 0.05, 0.1, data-free and calibrated, and a calibrated ``target_params`` of
70 % of the parameters. Only arguments that both versions accept are passed.

Runs single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1)): about 2-3 minutes per side.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = (  # name -> (eps, calibrated, target fraction of parameters)
    ("eps0", 0.0, False, None),
    ("eps0.05", 0.05, False, None),
    ("eps0.1", 0.1, False, None),
    ("eps0+cal", 0.0, True, None),
    ("eps0.05+cal", 0.05, True, None),
    ("eps0.1+cal", 0.1, True, None),
    ("target70%+cal", None, True, 0.7),
)
PAIRS = ((0, 1), (2, 3), (5, 7))  # planted duplicates: unit j := unit i


# ---- models (built the same way in both interpreters) -------------------------------------------

def _plant_rows(tensors, pairs=PAIRS, dim=0):
    import torch

    with torch.no_grad():
        for t in tensors:
            if t is None:
                continue
            for i, j in pairs:
                t.select(dim, j).copy_(t.select(dim, i))


def _bn_tensors(bn):
    return [bn.weight, bn.bias, bn.running_mean, bn.running_var]


def _random_bn(m, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.1)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) * 1.5 + 0.5)
                b.weight.copy_(1.0 + 0.2 * torch.randn(b.num_features, generator=g))
                b.bias.copy_(0.1 * torch.randn(b.num_features, generator=g))
    return m.eval()


def _plant_inverted(net, blocks=3):
    """Duplicate channels in the first ``blocks`` inverted blocks that expand (expand conv row, both
    BatchNorms, depthwise kernel, squeeze-excitation gate row)."""
    import torch

    done = 0
    for mod in net.modules():
        if done == blocks or not hasattr(mod, "block") or not isinstance(mod.block, torch.nn.Sequential):
            continue
        seq = list(mod.block)
        if len(seq) < 3 or not isinstance(seq[0], torch.nn.Sequential) or seq[0][0].groups != 1 \
                or seq[0][0].kernel_size != (1, 1):
            continue
        expand, dw = seq[0], seq[1]
        tensors = [expand[0].weight, expand[0].bias, dw[0].weight, dw[0].bias] + _bn_tensors(expand[1]) \
            + _bn_tensors(dw[1])
        se = next((s for s in seq if hasattr(s, "fc2")), None)
        if se is not None:
            tensors += [se.fc2.weight, se.fc2.bias]
        _plant_rows(tensors)
        done += 1


def build(name: str):
    """(model in eval mode, calibration inputs) for case ``name``; deterministic."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name.startswith("zoo:"):
        from afde_nb.eval.zoo import load_example

        model, data = load_example(name[4:], seed=0)
        return model.eval(), torch.as_tensor(data.X_train[:128])
    if name in ("mobilenet_v3_small", "efficientnet_b0"):
        from afde_nb.eval import nets

        m = _random_bn(getattr(nets, name)(num_classes=10), seed=2)
        _plant_inverted(m)
        hidden = [l for l in m.classifier if isinstance(l, nn.Linear)]
        if len(hidden) > 1:  # MobileNetV3's 576 -> 1024 hidden layer
            _plant_rows([hidden[0].weight, hidden[0].bias])
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randn(16, 3, 64, 64, generator=g)
    if name in ("lm_gelu", "lm_gated"):
        from afde_nb.eval.bench.lm import PROFILES
        from afde_nb.eval.lm import CharLM, LMConfig, init_weights

        variant = name[3:]
        cfg = LMConfig(vocab=65, **PROFILES["quick"].variants[variant])
        m = CharLM(cfg)
        init_weights(m, seed=0)
        for mlp in m.mlps():
            if variant == "gelu":
                _plant_rows([mlp.fc1.weight, mlp.fc1.bias])
            else:
                _plant_rows([mlp.gate.weight, getattr(mlp.gate, "bias", None), mlp.up.weight,
                             getattr(mlp.up, "bias", None)])
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randint(0, 65, (32, cfg.context), generator=g)
    if name == "tanh_stack":
        m = nn.Sequential(nn.Linear(6, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 32), nn.Tanh(),
                          nn.Linear(32, 3))
        for lin in (m[0], m[2], m[4]):
            _plant_rows([lin.weight, lin.bias])
        with torch.no_grad():  # a sign-flipped twin too (tanh is odd): unit 9 := -unit 8
            for lin in (m[0], m[2], m[4]):
                lin.weight[9], lin.bias[9] = -lin.weight[8], -lin.bias[8]
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randn(256, 6, generator=g)
    if name == "residual_mlp":
        from afde_nb.eval.zoo import ResidualMLP

        m = ResidualMLP(5, 3, d=16, hidden=64, blocks=2)
        for blk in m.blocks:
            _plant_rows([blk.fc1.weight, blk.fc1.bias])
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randn(256, 5, generator=g)
    if name == "bn_cnn":
        m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(24 * 4 * 4, 40), nn.ReLU(), nn.Linear(40, 10))
        _random_bn(m, seed=3)
        _plant_rows([m[0].weight, m[0].bias] + _bn_tensors(m[1]))
        _plant_rows([m[3].weight, m[3].bias] + _bn_tensors(m[4]))
        _plant_rows([m[8].weight, m[8].bias])
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randn(128, 1, 8, 8, generator=g)
    if name in ("gpt2", "llama"):
        import transformers as T

        if name == "gpt2":
            m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=64,
                                               n_positions=32, bos_token_id=0, eos_token_id=0))
            for h in m.transformer.h:  # Conv1D: (in, out), the units are columns
                _plant_rows([h.mlp.c_fc.weight], dim=1)
                _plant_rows([h.mlp.c_fc.bias])
        else:
            m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 num_key_value_heads=2, intermediate_size=64, vocab_size=64,
                                                 max_position_embeddings=32))
            for layer in m.model.layers:
                _plant_rows([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])
        g = torch.Generator().manual_seed(1)
        return m.eval(), torch.randint(0, 64, (16, 16), generator=g)
    raise SystemExit(f"unknown case {name!r}")


MODELS = ("zoo:digits_cnn", "zoo:residual_mlp", "zoo:transformer", "mobilenet_v3_small", "efficientnet_b0",
          "lm_gelu", "lm_gated", "tanh_stack", "residual_mlp", "bn_cnn", "gpt2", "llama")


def _zoo_names():
    from afde_nb.eval.zoo import EXAMPLES

    return tuple(f"zoo:{n}" for n in EXAMPLES)


# ---- the worker ---------------------------------------------------------------------------------

def _sha(tensors) -> str:
    h = hashlib.sha256()
    for k, t in tensors:
        h.update(k.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _plain(x):
    """Errors and the like as plain floats / dicts (no numpy scalars)."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _output(model, X):
    import torch

    with torch.no_grad():
        y = model(X)
    if hasattr(y, "logits"):
        y = y.logits
    elif isinstance(y, (tuple, list)):
        y = y[0]
    return y.detach().clone()


def _git_state(pkg: Path) -> str:
    """The commit of the checkout ``pkg`` lives in and whether afde_nb/ has uncommitted changes
    ("" for an installed copy outside any checkout)."""
    try:
        head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return ""
    dirty = [d for d in dirty if d.strip()]
    return head + (f" + {len(dirty)} uncommitted changes under afde_nb/" if dirty else " (clean)")


def worker(side: str, out: Path, models) -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import afde_nb

    here = out / side
    here.mkdir(parents=True, exist_ok=True)
    print(f"[{side}] afde_nb from {afde_nb.__file__}", flush=True)
    torch.save({"afde_nb": afde_nb.__file__, "python": sys.executable, "torch": torch.__version__,
                "git": _git_state(Path(afde_nb.__file__).parent)}, here / "_info.pt")
    for name in models:
        model, X = build(name)
        n_params = sum(p.numel() for p in model.parameters())
        input_sha = _sha(sorted(model.state_dict().items()) + [("X", X)])
        for setting, eps, calibrated, frac in SETTINGS:
            kw = {}
            if frac is not None:
                kw["target_params"] = int(frac * n_params)
            else:
                kw["eps"] = eps
            if calibrated:
                kw["calibration"] = X
            elif name in ("gpt2", "llama"):
                kw["example_inputs"] = X[:2]
            rec = {"model": name, "setting": setting, "input_sha": input_sha, "params_before": n_params}
            t0 = time.perf_counter()
            try:
                c = afde_nb.compress(model, **kw)
            except Exception as exc:  # recorded: a refusal on one side is a difference too
                rec["error"] = f"{type(exc).__name__}: {exc}"[:400]
            else:
                rec.update(partition=[a.copy() for a in c.partition], params_after=int(c.params_after),
                           state=c.model.state_dict(), output=_output(c.model, X),
                           calibration_error=_plain(getattr(c, "calibration_error", None)),
                           held_out_error=_plain(getattr(c, "held_out_error", None)))
            rec["seconds"] = time.perf_counter() - t0
            torch.save(rec, here / f"{name.replace(':', '_')}__{setting}.pt")
            print(f"[{side}] {name:20s} {setting:14s} {rec.get('params_after', rec.get('error'))} "
                  f"{rec['seconds']:.1f}s", flush=True)


# ---- the comparison -----------------------------------------------------------------------------

def _maxdiff(a, b) -> float:
    import torch

    if a.shape != b.shape:
        return float("inf")
    if not (a.is_floating_point() or a.is_complex()):
        a, b = a.double(), b.double()
    return float((a - b).abs().max()) if a.numel() else 0.0


def _errors_equal(a, b) -> tuple[bool, float]:
    """Equal (nan == nan), and the largest absolute difference of the numbers in them."""
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return False, float("nan")
        pairs = [_errors_equal(a[k], b[k]) for k in a]
        return all(p[0] for p in pairs), max([p[1] for p in pairs], default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return True, 0.0
        return a == b, abs(a - b)
    return a == b, 0.0


def compare(out: Path, models) -> list[dict]:
    import numpy as np
    import torch

    rows = []
    for name in models:
        for setting, *_ in SETTINGS:
            f = f"{name.replace(':', '_')}__{setting}.pt"
            old = torch.load(out / "old" / f, weights_only=False)
            new = torch.load(out / "new" / f, weights_only=False)
            row = {"model": name, "setting": setting, "same_input": old["input_sha"] == new["input_sha"]}
            if "error" in old or "error" in new:
                row.update(partition="-", weights="-", output="-", errors="-", maxdiff="",
                           note=f"old: {old.get('error', 'ok')} | new: {new.get('error', 'ok')}")
                rows.append(row)
                continue
            po, pn = old["partition"], new["partition"]
            same_part = len(po) == len(pn) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(po, pn))
            so, sn = old["state"], new["state"]
            diffs = {}
            for k in sorted(set(so) | set(sn)):
                if k not in so or k not in sn:
                    diffs[k] = "missing on " + ("old" if k not in so else "new")
                elif so[k].shape != sn[k].shape:
                    diffs[k] = f"shape {tuple(so[k].shape)} vs {tuple(sn[k].shape)}"
                elif not torch.equal(so[k], sn[k]):
                    diffs[k] = _maxdiff(so[k], sn[k])
            same_out = old["output"].shape == new["output"].shape and torch.equal(old["output"], new["output"])
            same_err, err_diff = _errors_equal(old["calibration_error"], new["calibration_error"])
            same_ho, ho_diff = _errors_equal(old["held_out_error"], new["held_out_error"])
            num = [v for v in diffs.values() if isinstance(v, float)]
            note = []
            if not same_part:
                layers = [i for i, (a, b) in enumerate(zip(po, pn)) if a.shape != b.shape or not np.array_equal(a, b)]
                note.append(f"layers {len(po)} vs {len(pn)}; differing layers {layers[:8]}; "
                            f"units after {[int(a.max()) + 1 if a.size else 0 for a in po][:8]} vs "
                            f"{[int(a.max()) + 1 if a.size else 0 for a in pn][:8]}")
            if diffs:
                first = list(diffs.items())[:3]
                note.append(f"{len(diffs)} tensors differ, e.g. {first}")
            if not (same_err and same_ho):
                note.append(f"calibration error diff {err_diff:.3g}, held-out diff {ho_diff:.3g}")
            if old["params_after"] != new["params_after"]:
                note.append(f"params {old['params_after']} vs {new['params_after']}")
            row.update(partition="yes" if same_part else "NO", weights="yes" if not diffs else "NO",
                       output="yes" if same_out else "NO", errors="yes" if same_err and same_ho else "NO",
                       maxdiff="" if not diffs else (f"{max(num):.3g}" if num else "shape"),
                       params=f"{new['params_after']}/{new['params_before']}", note="; ".join(note))
            rows.append(row)
    return rows


def render(rows) -> str:
    cols = ("model", "setting", "same_input", "params", "partition", "weights", "output", "errors", "maxdiff")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    same = sum(r["partition"] == "yes" and r["weights"] == "yes" and r["output"] == "yes" and r["errors"] == "yes"
               and r["same_input"] for r in rows)
    lines.append("")
    lines.append(f"identical: {same} of {len(rows)}; differing or refused: {len(rows) - same}")
    for r in rows:
        if r.get("note"):
            lines.append(f"- {r['model']} {r['setting']}: {r['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default=None, help="the old version's python")
    ap.add_argument("--new", default=sys.executable, help="the new version's python (default: this one)")
    ap.add_argument("--out", default="/tmp/same_as_before", help="results folder (OUT/old, OUT/new)")
    ap.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    ap.add_argument("--compare-only", action="store_true", help="compare the files already in OUT")
    ap.add_argument("--serial", action="store_true", help="run the two sides one after the other")
    ap.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    models = tuple(args.only.split(",")) if args.only else MODELS
    if args.worker:
        worker(args.worker, out, models)
        return 0
    if not args.compare_only:
        if args.old is None:
            ap.error("--old is required (or --compare-only)")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # run from this file's folder: the checkout's root must not be first on sys.path (it would
        # shadow the old install's afde_nb)
        cmd = [str(Path(__file__).resolve()), "--worker", "{side}", "--out", str(out), "--only", ",".join(models)]
        procs = []
        for side, py in (("old", args.old), ("new", args.new)):
            c = [py] + [a.replace("{side}", side) for a in cmd]
            p = subprocess.Popen(c, env=env, cwd=str(Path(__file__).resolve().parent))
            if args.serial:
                if p.wait():
                    raise SystemExit(f"{side} worker failed")
            else:
                procs.append((side, p))
        for side, p in procs:
            if p.wait():
                raise SystemExit(f"{side} worker failed")
    import torch

    for side in ("old", "new"):
        info = torch.load(out / side / "_info.pt", weights_only=False)
        git = f", checkout {info['git']}" if info.get("git") else ""
        print(f"{side}: afde_nb {info['afde_nb']} (python {info['python']}, torch {info['torch']}{git})")
    text = render(compare(out, models))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
