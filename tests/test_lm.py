"""afde_nb.data.text (Tiny Shakespeare from the data home), afde_nb.eval.lm (the char transformer,
perplexity) and afde_nb.eval.bench.lm (``afde bench --lm``: cells, the shared repair, output)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from afde_nb.data import data_home, load_text
from afde_nb.data.text import TEXTS
from afde_nb.errors import ChecksumError, DataNotFoundError
from afde_nb.eval.baselines import repair_pruned, structured_prune
from afde_nb.eval.bench import lm as bench
from afde_nb.eval.lm import CharLM, LMConfig, init_weights, mlp_params, mlp_params_with, perplexity, windows
from afde_nb.models.capture import capture

TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # ../shared/data/tinyshakespeare/README.md


@pytest.fixture(scope="module")
def shakespeare():
    try:
        return load_text("tinyshakespeare")
    except DataNotFoundError:
        if os.environ.get("CI"):  # CI points AFDE_NB_DATA at the shared copy: a missing one is a failure there
            raise
        pytest.skip(f"Tiny Shakespeare is not in the data home {data_home()} (AFDE_NB_DATA)")


def tiny(mlp: str = "gelu", seed: int = 0) -> CharLM:
    """An untrained two-block model with 16 hidden units per MLP."""
    torch.manual_seed(seed)
    m = CharLM(LMConfig(vocab=65, mlp=mlp, layers=2, d_model=16, heads=2, d_ff=16, context=16))
    init_weights(m, seed)
    with torch.no_grad():  # spread the scores, so no two methods tie by accident
        for p in m.parameters():
            p.mul_(1 + torch.rand_like(p) * 20)
    return m.eval()


# ---- the loader --------------------------------------------------------------------------------

def test_tinyshakespeare_is_the_recorded_file(shakespeare):
    assert TEXTS["tinyshakespeare"].sha256 == TINY_SHA256 == shakespeare.sha256
    assert len(shakespeare.text) == 1_115_394 and len(shakespeare.vocab) == 65
    assert len(shakespeare.train) == int(0.9 * 1_115_394) and shakespeare.text.startswith("First Citizen:")
    ids = shakespeare.encode(shakespeare.val)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 65
    assert shakespeare.decode(ids) == shakespeare.val


def test_a_plain_copy_reads_the_same_and_another_file_is_refused(shakespeare, tmp_path):
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    raw = shakespeare.text.encode()
    (folder / "input.txt").write_bytes(raw)
    assert load_text("tinyshakespeare", data_home=tmp_path).val == shakespeare.val
    (folder / "input.txt").write_bytes(raw[:-1])
    with pytest.raises(ChecksumError, match="SHA-256"):
        load_text("tinyshakespeare", data_home=tmp_path)
    (folder / "input.txt.gz").write_bytes(b"not gzip")  # the gzipped file is looked at first
    with pytest.raises(ChecksumError, match="gzip"):
        load_text("tinyshakespeare", data_home=tmp_path)


@pytest.mark.parametrize("via_env", [False, True])
def test_a_missing_text_names_the_data_home_and_the_variable(tmp_path, monkeypatch, via_env):
    if via_env:
        monkeypatch.setenv("AFDE_NB_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as err:
        load_text("tinyshakespeare", data_home=None if via_env else tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    for needed in (str(tmp_path), "AFDE_NB_DATA", "tinyshakespeare/input.txt", "karpathy/char-rnn"):
        assert needed in str(err.value)


# ---- the model ---------------------------------------------------------------------------------

def test_gelu_and_gated_mlps_are_groups():
    gelu, gated = capture(tiny("gelu")), capture(tiny("gated"))
    assert [g[0].producer.name for g in gelu.discovery.chains] == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert len(gated.nets) == 2 and "gated" in gated.discovery.report()


def test_perplexity_of_uniform_predictions_is_the_vocabulary_size():
    m = tiny()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    assert perplexity(m, np.arange(100) % 65, context=16, batch=3) == pytest.approx(65.0, rel=1e-6)


def test_mlp_budget_counts():
    for mlp in ("gelu", "gated"):
        m = tiny(mlp)
        assert mlp_params_with(m, 16) == mlp_params(m)
        k = bench.units_within(m, 0.6)
        assert mlp_params_with(m, k) <= 0.6 * mlp_params(m) < mlp_params_with(m, k + 1)


# ---- one cell on an untrained model: the same units, the same repair ---------------------------

def test_wanda_sp_through_torch_pruning_keeps_structured_wandas_units_and_the_repairs_agree():
    pytest.importorskip("torch_pruning")
    m = tiny()
    calib = windows(np.arange(4000) * 7 % 65, 16, 24, seed=1)
    x = calib[:, :-1]
    pruned, kept = bench.tp_prune(m, 10, "wanda-sp", calib)
    ref = structured_prune(m, 1 - 10 / 16, "wanda", x)
    assert [list(k) for k in kept] == [list(np.flatnonzero(lab >= 0)) for (lab, _), in ref.maps]
    assert sum(p.numel() for p in pruned.parameters()) == ref.params
    ours, theirs = bench.refit_mlps(m, pruned, x), repair_pruned(ref, m, x).model
    for a, b in zip(ours.mlps(), theirs.mlps()):
        torch.testing.assert_close(a.fc2.weight, b.fc2.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.fc2.bias, b.fc2.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mlp", ["gelu", "gated"])
def test_one_amount_every_cell(mlp):
    pytest.importorskip("torch_pruning")
    m = tiny(mlp)
    calib = windows(np.arange(4000) * 7 % 65, 16, 24, seed=1)
    units = bench.units_within(m, 0.6)
    total = sum(p.numel() for p in m.parameters())
    budget = total - mlp_params(m) + mlp_params_with(m, units)
    cells = {(s, meth): (red, note) for s, meth, red, note in bench.reduced_models(m, units, calib, budget)}
    assert set(cells) == set(bench.CELLS)
    for (setting, method), (red, note) in cells.items():
        assert red is not None, f"{setting} {method}: {note}"  # every method acts on both MLP kinds
        params = sum(p.numel() for p in red.parameters())
        assert params == budget if method != "afde-nb" else budget - 2 * 33 < params <= budget
        assert math.isfinite(perplexity(red, np.arange(300) % 65, 16))
    # the pruners' +repair is the repair: it leaves a model at its refit point
    for method in bench.PRUNERS:
        red = cells[("repaired", method)][0]
        again = bench.refit_mlps(m, red, calib[:, :-1])
        for a, b in zip(red.mlps(), again.mlps()):
            torch.testing.assert_close(a.consumer.weight, b.consumer.weight, rtol=1e-4, atol=1e-5)


def test_markdown_marks_the_best_and_explains_what_did_not_run(tmp_path):
    rows = []
    for variant, na in (("gelu", False), ("gated", True)):
        base = dict(variant=variant, profile="t", mlp_total=100, calibration_tokens=10, val_chars=50)
        rows.append(dict(base, kept_target=1.0, setting="original", method="original", mlp_params=100, mlp_kept=1.0,
                         params=200, perplexity=5.0, seconds=0.1, note=""))
        for i, (setting, method) in enumerate(bench.CELLS):
            if na and method == "afde-nb":
                rows.append(dict(base, kept_target=0.6, setting=setting, method=method, mlp_params="", mlp_kept="",
                                 params="", perplexity="", seconds="", note="not applicable yet: gated"))
            else:
                rows.append(dict(base, kept_target=0.6, setting=setting, method=method, mlp_params=59, mlp_kept=0.59,
                                 params=159, perplexity=6.0 + i, seconds=0.1, note=""))
    bench.write_csv(rows, tmp_path / "lm_points.csv")
    back = bench.read_csv(tmp_path / "lm_points.csv")
    assert back[1]["perplexity"] == 6.0 and back[-1]["method"] == "folding"
    md = bench.markdown(back, float("nan"))
    assert "| no data | afde-nb | **6.000** |" in md and "| no data | afde-nb | n/a¹ |" in md
    assert "¹ not applicable yet: gated" in md


# ---- the command ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_afde_bench_lm_quick(shakespeare, tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    from afde_nb.ui.cli import main

    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    assert main(["bench", "--lm", "--quick", "--out", str(tmp_path / "out")]) == 0
    rows = bench.read_csv(tmp_path / "out" / "lm_points.csv")
    gelu = {(r["kept_target"], r["setting"], r["method"]): r for r in rows if r["variant"] == "gelu"}
    orig = gelu[(1.0, "original", "original")]["perplexity"]
    assert orig < 12  # trained: a uniform guess is 65
    for kept in bench.PROFILES["quick"].kept:
        for setting, method in bench.CELLS:
            r = gelu[(kept, setting, method)]
            assert r["mlp_kept"] <= kept and r["perplexity"] >= orig * 0.97
    gated = [r for r in rows if r["variant"] == "gated" and r["method"] == "afde-nb"]
    assert gated and all((r["perplexity"] is None) == r["note"].startswith("not applicable") for r in gated)
    md = (tmp_path / "out" / "lm_results.md").read_text()
    assert "## gelu MLP" in md and "## gated MLP" in md
    if bench._can_plot():
        assert (tmp_path / "out" / "lm_tradeoff.png").stat().st_size > 10_000
    # re-rendering from the points changes no number
    assert main(["bench", "--lm", "--from-points", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "lm_results.md").read_text().split("\n", 3)[3] == md.split("\n", 3)[3]
