"""torchvision and timm architectures through afde-nb (issue 27): one row each, and what was left alone.

torchvision's and timm's wheels do not import beside every torch build (this project's own
``afde_nb.eval.nets`` rewrites two of them with torch.nn for that reason), so this script runs in a
separate environment that has them, with afde-nb installed into it, e.g.::

    python -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch torchvision timm numpy scipy tqdm safetensors scikit-build-core pybind11
    git archive HEAD | tar -x -C /tmp/afde_src && /tmp/tvenv/bin/pip install --no-deps --no-build-isolation /tmp/afde_src
    OMP_NUM_THREADS=1 /tmp/tvenv/bin/python benchmarks/torchvision_zoo.py [NAME ...] [--timeout 420]

Where torchvision is missing it says so and exits 0 (timm rows are skipped where timm is missing).

Every model is built with random weights (``weights=None``/``pretrained=False``, nothing
downloaded), ``num_classes=10``, in eval mode, every BatchNorm's running statistics and affine
randomised (so no BatchNorm is the identity); inputs are small random images (64x64, 80x80 for
Inception-v3, 32x32 for the small ViT/Swin/Mixer configurations). Columns:

* params: the model's parameters (with a 10-class head);
* groups / units found: ``afde_nb.compress(model, 0.0, calibration=x)``, the lumpable groups and
  ``sum(s.neurons_before for s in c.layers)``;
* left alone: the units (output channels / features) of every Linear/convolution that
  ``c.groups.report()`` lists as left alone (its outputs are not lumped; an
  ``nn.MultiheadAttention`` counts its q, k, v projections, 3 x embed_dim);
* exact eps=0: two duplicate units planted in the first group (``tests/wild_models.py``'s
  ``plant``: producer rows, BatchNorm entries, depthwise kernel, SE gate row), then eps = 0 must
  remove exactly those and keep the output within 1e-5 relative on held-out images;
* 70 % budget: ``compress(model, target_params=int(0.7 * n), calibration=x)`` reaches it
  (``params_after <= target`` and the reduced model has that many parameters);
* .pt2 reload: ``c.save(path, example_inputs=x[:2])`` of the budget's compression (else the planted
  one's), ``torch.export.load(path).module()(x)`` equal to ``c.model(x)`` (1e-5 relative) on the
  held-out batch (a batch size other than the export's);
* seconds: the whole row (four compressions and the export) on one thread.

Then the distinct reasons for leaving units alone, condensed (node names, module paths and source
lines replaced by the operation and the module class), with how many producers and units each
costs over the zoo, most units first. Each model runs in a child process with a time limit.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


# ---------------------------------------------------------------------------------------------
# the zoo: name -> (build, image size, batch)


def _tv(name: str, **kw):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=10, **kw)
    return build


def _tv_vit():
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


def _tv_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           stochastic_depth_prob=0.0, num_classes=10)


def _tv_maxvit():
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)


def _timm(name: str, **kw):
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kw)
    return build


def _timm_mixer():
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32, mlp_ratio=(0.5, 4.0))


ZOO = {
    # torchvision
    "tv/resnet18": (_tv("resnet18"), 64),
    "tv/resnet50": (_tv("resnet50"), 64),
    "tv/vgg11_bn": (_tv("vgg11_bn"), 64),
    "tv/mobilenet_v2": (_tv("mobilenet_v2"), 64),
    "tv/mobilenet_v3_small": (_tv("mobilenet_v3_small"), 64),
    "tv/efficientnet_b0": (_tv("efficientnet_b0"), 64),
    "tv/squeezenet1_1": (_tv("squeezenet1_1"), 64),
    "tv/densenet121": (_tv("densenet121"), 64),
    "tv/googlenet": (_tv("googlenet", aux_logits=False, init_weights=False), 64),
    "tv/inception_v3": (_tv("inception_v3", aux_logits=False, init_weights=False), 80),
    "tv/shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 64),
    "tv/regnet_y_400mf": (_tv("regnet_y_400mf"), 64),
    "tv/mnasnet0_5": (_tv("mnasnet0_5"), 64),
    "tv/convnext_tiny": (_tv("convnext_tiny"), 64),
    "tv/vit (2 layers, d 32)": (_tv_vit, 32),
    "tv/swin (2 stages, d 24)": (_tv_swin, 32),
    "tv/maxvit (2 stages, d 16)": (_tv_maxvit, 64),
    # timm
    "timm/resnet18": (_timm("resnet18"), 64),
    "timm/efficientnet_b0": (_timm("efficientnet_b0"), 64),
    "timm/mobilenetv3_small_100": (_timm("mobilenetv3_small_100"), 64),
    "timm/convnext_atto": (_timm("convnext_atto"), 64),
    "timm/vit_tiny_patch16_224 (32 px)": (_timm("vit_tiny_patch16_224", img_size=32), 32),
    "timm/deit_tiny_patch16_224 (32 px)": (_timm("deit_tiny_patch16_224", img_size=32), 32),
    "timm/mixer (2 blocks, d 32)": (_timm_mixer, 32),
    "timm/regnety_002": (_timm("regnety_002"), 64),
    "timm/ghostnet_100": (_timm("ghostnet_100"), 64),
}

N_CALIB, N_HELD = 8, 4


def images(n: int, size: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def build(name: str):
    """The model of ``name``, seeded, eval mode, its BatchNorms' statistics and affine random."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = ZOO[name][0]()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# what was left alone


def width(model, name: str) -> int:
    """Output units of the Linear/convolution at ``name`` (0 if it is none)."""
    from torch import nn

    try:
        m = model.get_submodule(name)
    except AttributeError:
        m = None
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.MultiheadAttention):  # its q, k, v projections' units
        return 3 * m.embed_dim
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if m is not None and hasattr(m, "weight") and getattr(m, "weight", None) is not None and m.weight.dim() >= 2:
        return int(m.weight.shape[0])
    return 0


_FILE_LINE = re.compile(r" \([\w.\-]+\.py:\d+\)")
_NODE = re.compile(r"\b[A-Za-z_][\w]* \((call_module|call_function|call_method|get_attr|placeholder) ([^()]*?)"
                   r"( in [\w.]+ \((\w+)\))?\)")
_ADD = re.compile(r"\b[A-Za-z_][\w]* \(an add, e\.g\. a residual connection( in [\w.]+ \((\w+)\))?\)")
_MUL = re.compile(r"\b[A-Za-z_][\w]* \(a product of two tensors( in [\w.]+ \((\w+)\))?, not a gated unit afde-nb lumps\)")
_PATH = re.compile(r"\b[A-Za-z_][\w-]*(?:\.[\w-]+)+\b")


def condense(model, why: str) -> str:
    """``why`` with node names, module paths and source lines replaced by the operation and the
    module's class (``layer1.0.conv2`` -> ``<Conv2d>``, ``add_3 (an add, ...)`` -> ``add``)."""
    def cls(path: str) -> str:
        try:
            return f"<{type(model.get_submodule(path)).__name__}>"
        except AttributeError:
            return path

    s = _FILE_LINE.sub("", why)
    s = re.sub(r"\((\w+ \(\d+(, \d+)*\)(, )?)+; ", "(<params>; ", s)
    s = re.sub(r"\(\d+ groups of \d+ channels\)", "(G groups of n channels)", s)
    s = _ADD.sub(lambda m: "add" + (f" in <{m.group(2)}>" if m.group(2) else ""), s)
    s = _MUL.sub(lambda m: "mul of two tensors" + (f" in <{m.group(2)}>" if m.group(2) else ""), s)

    def node(m):
        op, target, inside = m.group(1), m.group(2).strip(), m.group(4)
        what = cls(target) if op == "call_module" else target
        return what + (f" in <{inside}>" if inside else "")
    s = _NODE.sub(node, s)
    s = re.sub(r"feed [A-Za-z_]\w* \(<?(\w+)>?\), not", r"feed <\1>, not", s)  # "feed blocks_5_1_bn2_act (SiLU), not"
    # "feeds 17 operations (cat, cat, cat)" -> "feeds k operations (cat)": the distinct operations
    s = re.sub(r"feed (\d+) operations \((.*)\)$",
               lambda m: f"feed 2 operations ({', '.join(sorted(t.strip() for t in m.group(2).split(', ')))})"
               if m.group(1) == "2" else
               f"feed k > 2 operations ({', '.join(sorted(set(t.strip() for t in m.group(2).split(', '))))})", s)
    s = _PATH.sub(lambda m: cls(m.group(0)) if m.group(0).count(".") and not m.group(0)[0].isupper() else m.group(0), s)
    # single-word module names ("fc", "head", "classifier") where the report names a module
    s = re.sub(r"\b(reach|into|feed|consumer|of) ([A-Za-z_]\w*)\b",
               lambda m: f"{m.group(1)} {cls(m.group(2)) if _is_module(model, m.group(2)) else m.group(2)}", s)
    s = re.sub(r"^([A-Za-z_]\w*) (is resized|is computed)", lambda m: f"{cls(m.group(1))} {m.group(2)}", s)
    return s


def _is_module(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return name != ""
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------
# one row (in a child process)


def measure(name: str) -> dict:
    import copy

    import torch

    import afde_nb
    import wild_models as W

    size = ZOO[name][1]
    row = {"name": name, "params": 0, "groups": 0, "found": 0, "alone": 0, "exact": None, "budget": None,
           "reload": None, "why": "", "skipped": [], "report_head": "", "seconds": 0.0}
    t0 = time.time()

    def note(what, e):
        msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        if not row["why"]:
            row["why"] = f"{what}: {' '.join(str(msg).split())[:200]}"

    try:
        model = build(name)
        row["params"] = n = W.params(model)
        x, held = images(N_CALIB, size, 1), images(N_HELD, size, 2)
        c0 = afde_nb.compress(model, 0.0, calibration=x)
        row["found"] = sum(s.neurons_before for s in c0.layers)
        lumped = {s.name for s in c0.layers}
        groups = c0.groups.groups if c0.groups is not None else []
        row["groups"] = len(groups)
        rep = c0.groups.report().splitlines()
        row["report_head"] = "\n".join([rep[0]] + [l for l in rep if "left alone" in l][:3])
        for mod, why in c0.groups.skipped:
            w = 0 if mod in lumped else width(model, mod)
            row["skipped"].append([mod, condense(model, why), w])
        row["alone"] = sum(w for _, _, w in row["skipped"])
    except Exception as e:  # noqa: BLE001 - recorded per model
        note("compress eps=0", e)
        try:  # what find_groups reads, without compressing: the groups' producers' widths
            from afde_nb.models.groups import find_groups

            d = find_groups(model, ((x[:2],), {}))
            row["groups"] = len(d.groups)
            row["found"] = sum(width(model, g.producer.name) for g in d.groups if hasattr(g, "producer"))
            row["found_from"] = "find_groups"
            rep = d.report().splitlines()
            row["report_head"] = "\n".join([rep[0]] + [l for l in rep if "left alone" in l][:3])
            producers = {g.producer.name for g in d.groups if hasattr(g, "producer")}
            row["skipped"] = [[mod, condense(model, why), 0 if mod in producers else width(model, mod)]
                              for mod, why in d.skipped]
            row["alone"] = sum(w for _, _, w in row["skipped"])
        except Exception as e2:  # noqa: BLE001
            note("find_groups", e2)
        row["seconds"] = time.time() - t0
        return row

    reduced = None
    if groups:
        try:
            planted = copy.deepcopy(model)
            layer = c0.layers[0]
            pairs = W._pairs(layer.neurons_before)
            W.plant(planted, groups[0], pairs)
            c1 = afde_nb.compress(planted, 0.0, calibration=x)
            removed = {s.name: s.neurons_before - s.neurons_after for s in c1.layers
                       if s.neurons_before != s.neurons_after}
            with torch.no_grad():
                err = W._rel(planted(held), c1.model(held))
            want = {layer.name: len({j for _, j in pairs})}
            row["exact"] = removed == want and err < 1e-5
            if not row["exact"]:
                note("exact", f"removed {removed} (planted {want}), output change {err:.2g}")
            reduced = c1
        except Exception as e:  # noqa: BLE001
            row["exact"] = False
            note("exact", e)
    target = int(0.7 * n)
    try:
        c2 = afde_nb.compress(model, target_params=target, calibration=x)
        row["budget"] = c2.params_after <= target and W.params(c2.model) == c2.params_after
        row["budget_kept"] = c2.params_after / n
        if not row["budget"]:
            note("budget", f"{c2.params_after:,} > {target:,} params ({c2.params_after / n:.0%})")
        reduced = c2
    except Exception as e:  # noqa: BLE001
        row["budget"] = False
        note("budget", e)
    if reduced is None:
        note("reload", "nothing reduced to reload")
    else:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "reduced.pt2"
                reduced.save(path, example_inputs=x[:2])
                back = torch.export.load(str(path)).module()
                with torch.no_grad():
                    err = W._rel(reduced.model(held), back(held))
            row["reload"] = err < 1e-5
            if not row["reload"]:
                note("reload", f"outputs differ by {err:.2g}")
        except Exception as e:  # noqa: BLE001
            row["reload"] = False
            note("reload", e)
    row["seconds"] = time.time() - t0
    return row


# ---------------------------------------------------------------------------------------------
# tables


def table(rows: list[dict]) -> str:
    def yes(b):
        return "-" if b is None else ("yes" if b else "no")

    out = ["| model | params | groups | units found | left alone | exact eps=0 | 70 % budget | .pt2 reload | s | "
           "first failure |", "|---|---:|---:|---:|---:|:-:|:-:|:-:|---:|---|"]
    for r in rows:
        budget = yes(r["budget"])
        if r.get("budget_kept") is not None and not r["budget"]:
            budget += f" ({r['budget_kept']:.0%})"
        found = f"{r['found']:,}" + ("*" if r.get("found_from") else "")
        out.append(f"| {r['name']} | {r['params']:,} | {r['groups']} | {found} | {r['alone']:,} | "
                   f"{yes(r['exact'])} | {budget} | {yes(r['reload'])} | {r['seconds']:.0f} | "
                   f"{r['why'].replace('|', '/')} |")
    out.append(f"| **{len(rows)} models** | | {sum(r['groups'] for r in rows)} | {sum(r['found'] for r in rows):,} | "
               f"{sum(r['alone'] for r in rows):,} | {sum(bool(r['exact']) for r in rows)} | "
               f"{sum(bool(r['budget']) for r in rows)} | {sum(bool(r['reload']) for r in rows)} | | |")
    if any(r.get("found_from") for r in rows):
        out.append("")
        out.append("\\* compress failed; groups, units and what was left alone as ``find_groups`` reads the model")
    return "\n".join(out)


def reasons(rows: list[dict]) -> str:
    """The distinct reasons, with producers, units and models, most units first."""
    agg: dict[str, list] = {}
    for r in rows:
        for mod, why, w in r["skipped"]:
            a = agg.setdefault(why, [0, 0, {}, mod, r["name"]])
            a[0] += 1
            a[1] += w
            a[2][r["name"]] = a[2].get(r["name"], 0) + w
    out = ["| # | units left alone | producers | models | reason (condensed) | e.g. | models (units) |",
           "|---:|---:|---:|---:|---|---|---|"]
    for i, (why, (cnt, units, models, mod, first)) in enumerate(sorted(agg.items(), key=lambda t: (-t[1][1], -t[1][0])), 1):
        top = sorted(models.items(), key=lambda t: -t[1])
        most = ", ".join(f"{k} ({v:,})" for k, v in top[:4]) + (f", +{len(top) - 4}" if len(top) > 4 else "")
        out.append(f"| {i} | {units:,} | {cnt} | {len(models)} | {why.replace('|', '/')} | {first}: {mod} | {most} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models to run (default: all; a prefix such as tv/ or timm/ selects)")
    ap.add_argument("--timeout", type=int, default=420, help="seconds per model")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a wheel built for another torch fails in many ways
        print(f"torchvision is not importable here ({type(e).__name__}: {e}); run this in an environment that "
              "has torch, torchvision and afde-nb (see the docstring)", file=sys.stderr)
        return
    if args.one:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        warnings.filterwarnings("ignore")
        print("ROW " + json.dumps(measure(args.one)), flush=True)
        return
    try:
        import timm  # noqa: F401
        have_timm = True
    except Exception:  # noqa: BLE001
        have_timm = False
    names = [k for k in ZOO if not args.names or any(k == a or k.startswith(a) for a in args.names)]
    if not have_timm:
        skipped = [k for k in names if k.startswith("timm/")]
        names = [k for k in names if not k.startswith("timm/")]
        if skipped:
            print(f"timm is not importable: {len(skipped)} rows skipped", file=sys.stderr)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name in names:
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                               timeout=args.timeout, env=env)
            got = [l for l in p.stdout.splitlines() if l.startswith("ROW ")]
            if got:
                row = json.loads(got[-1][4:])
            else:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"name": name, "params": 0, "groups": 0, "found": 0, "alone": 0, "exact": None, "budget": None,
                       "reload": None, "why": f"crashed (rc {p.returncode}): {tail[:200]}", "skipped": [],
                       "seconds": time.time() - t0}
        except subprocess.TimeoutExpired:
            row = {"name": name, "params": 0, "groups": 0, "found": 0, "alone": 0, "exact": None, "budget": None,
                   "reload": None, "why": f"timeout: over {args.timeout} s", "skipped": [], "seconds": time.time() - t0}
        rows.append(row)
        print(f"{name}: params {row['params']:,} groups {row['groups']} found {row['found']} alone {row['alone']} "
              f"exact {row['exact']} budget {row['budget']} reload {row['reload']} ({row['seconds']:.0f} s) "
              f"{row['why']}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print()
    print("Left alone, by reason (units: output units of the Linear/convolution layers whose outputs the report "
          "leaves alone; over all models):")
    print()
    print(reasons(rows))


if __name__ == "__main__":
    main()
