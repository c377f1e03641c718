"""The evaluation: trade-off rows at matched sizes, and the quick profile end to end."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from afde_nb.eval.bench import tradeoff
from afde_nb.eval.bench.run import PROFILES, kept_at_tolerance, run
from afde_nb.ui.cli import main

from conftest import mlp, teacher_data


@pytest.fixture
def small_problem(rng):
    torch.manual_seed(0)
    model = mlp([5, 24, 16, 2], ["tanh", "tanh"])
    return (model, *teacher_data(model, rng, 200, 0.05))


def test_every_method_stays_within_each_budget(small_problem):
    model, X, y = small_problem
    rows = tradeoff(model, X, y, mode=("backward", "forward"), kept=(0.8, 0.5), variants=("", "+repair"),
                    baselines=("magnitude", "wanda", "structured-norm", "kmeans-fold"))
    full = rows[0]["params"]
    assert rows[0]["method"] == "original"
    methods = {r["method"] for r in rows}
    plain = {"afde-backward", "afde-forward", "magnitude", "wanda", "structured-norm", "kmeans-fold"}
    assert methods == {"original"} | plain | {m + "+repair" for m in plain}
    # repair keeps the size: a repaired baseline has exactly the parameters of its unrepaired run
    for m in ("magnitude", "wanda", "structured-norm", "kmeans-fold"):
        a = sorted((r["budget"], r["params"]) for r in rows if r["method"] == m)
        b = sorted((r["budget"], r["params"]) for r in rows if r["method"] == m + "+repair")
        assert a == b, m
    for r in rows:
        assert r["params"] <= r["budget"], r
        assert r["budget"] in (full, int(0.8 * full), int(0.5 * full))
    # at the full budget afde-nb is eps = 0, which is lossless
    exact = [r for r in rows if r["method"] == "afde-backward" and r["budget"] == full][0]
    assert exact["setting"] == 0.0 and exact["mse"] == pytest.approx(rows[0]["mse"], rel=1e-5)


def test_eps_values_match_baselines_to_afde_sizes(small_problem):
    model, X, y = small_problem
    rows = tradeoff(model, X, y, eps_values=[0.0, 0.4], baselines=("magnitude",))
    afde = sorted({r["params"] for r in rows if r["method"] == "afde-backward"})
    mag = sorted(r["budget"] for r in rows if r["method"] == "magnitude")
    assert afde == mag


def test_kept_at_tolerance_picks_the_smallest_passing_point():
    rows = [{"dataset": "d", "seed": 0, "method": "original", "kept": 1.0, "mse": 1.0},
            {"dataset": "d", "seed": 0, "method": "m", "kept": 0.9, "mse": 1.005},
            {"dataset": "d", "seed": 0, "method": "m", "kept": 0.5, "mse": 1.04},
            {"dataset": "d", "seed": 0, "method": "m", "kept": 0.3, "mse": 2.0}]
    assert kept_at_tolerance(rows, 0.01) == {("d", "m"): 0.9}
    assert kept_at_tolerance(rows, 0.05) == {("d", "m"): 0.5}


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path, monkeypatch):
    """`afde bench --quick` writes the CSV, the Markdown table and the plot."""
    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    assert main(["bench", "--quick", "--out", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "points.csv").open() as f:
        rows = list(csv.DictReader(f))
    profile = PROFILES["quick"]
    assert {r["method"] for r in rows} >= {"original", "afde-backward", "afde-components-backward", "magnitude",
                                           "wanda", "afde-backward+repair", "wanda+repair"}
    assert len(rows) == 1 + (len(profile.kept) + 1) * len(profile.variants) * (len(profile.modes) + len(profile.baselines))
    text = (tmp_path / "out" / "results.md").read_text()
    assert "MSE <= 1.05 x original" in text and "afde-backward" in text
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 10_000
    # the second run loads the cached model instead of training again
    assert any((tmp_path / "cache" / "models").glob("*.pt"))
    run(profile, tmp_path / "out2", log=lambda *_: None)
    with (tmp_path / "out2" / "points.csv").open() as f:
        again = list(csv.DictReader(f))
    assert [r["mse"] for r in again] == [r["mse"] for r in rows]


def test_without_matplotlib_the_bench_says_so_first_and_skips_only_the_plot(tmp_path, monkeypatch):
    """The missing extra is reported before any model is trained; the CSV and Markdown still come."""
    import afde_nb.eval.bench.run as bench_run

    monkeypatch.setattr(bench_run, "can_plot", lambda: False)
    said = []

    def no_training(*a, **k):
        said.append("training")
        raise RuntimeError("no training in this test")

    monkeypatch.setattr(bench_run, "trained_model", no_training)
    bench_run.run(PROFILES["quick"], tmp_path / "run", log=said.append)  # every cell fails, recorded
    assert "matplotlib" in said[0] and 'pip install ".[bench]"' in said[0] and said[1] == "training"
    assert any("cells failed" in s for s in said)
    rows = [{"dataset": "d", "seed": 0, "method": "original", "setting": 0.0, "params": 10, "kept": 1.0,
             "mse": 1.0, "r2": 0.0, "seconds": 0.0, "budget": 10},
            {"dataset": "d", "seed": 0, "method": "afde-backward", "setting": 0.1, "params": 8, "kept": 0.8,
             "mse": 1.1, "r2": 0.0, "seconds": 0.0, "budget": 8}]
    bench_run.render(rows, PROFILES["quick"], tmp_path, 1.0)
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "tradeoff.png").exists()


def test_only_an_unreachable_budget_drops_a_row(small_problem, monkeypatch):
    """A budget below one neuron per layer is skipped; any other error (a regression) propagates
    instead of silently dropping rows from results.md."""
    import sys

    from afde_nb.errors import BudgetUnreachableError, InvalidArgumentError

    model, X, y = small_problem
    tr = sys.modules["afde_nb.eval.bench.tradeoff"]  # the module (afde_nb.eval.bench.tradeoff is the function)
    real = tr.compress

    def fails(kind):
        def fake(*a, target_params=None, **k):
            if target_params is not None and target_params < 400:  # the full size is 578
                raise kind("boom")
            return real(*a, target_params=target_params, **k)
        return fake

    monkeypatch.setattr(tr, "compress", fails(BudgetUnreachableError))
    rows = tradeoff(model, X, y, kept=(0.5,), baselines=())
    assert [r["method"] for r in rows].count("afde-backward") == 1  # the full budget only
    monkeypatch.setattr(tr, "compress", fails(InvalidArgumentError))
    with pytest.raises(InvalidArgumentError):
        tradeoff(model, X, y, kept=(0.5,), baselines=())


def _points(path):
    """points.csv without the timing column (the only one that may differ between runs)."""
    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


SMALL = dict(kept=(0.8, 0.4), baselines=("magnitude-global", "kmeans-fold", "wanda"))


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_points(tmp_path, monkeypatch):
    from dataclasses import replace

    import afde_nb.eval.bench.backends as backends

    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    profile = replace(PROFILES["quick"], **SMALL)
    run(profile, tmp_path / "whole", log=lambda *_: None)
    real, calls = backends.safe_compute, []

    def stops_at_the_seventh(*a, **k):
        calls.append(a[0])
        if len(calls) == 7:
            raise KeyboardInterrupt  # the run is stopped mid-way
        return real(*a, **k)

    monkeypatch.setattr(backends, "safe_compute", stops_at_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        run(profile, tmp_path / "cut", log=lambda *_: None)
    monkeypatch.setattr(backends, "safe_compute", real)
    said = []
    run(profile, tmp_path / "cut", log=said.append)
    assert any("resuming: 6 of" in s for s in said)
    assert _points(tmp_path / "cut" / "points.csv") == _points(tmp_path / "whole" / "points.csv")


@pytest.mark.slow
def test_ray_local_gives_the_serial_points_bit_for_bit(tmp_path, monkeypatch):
    """Fresh model caches for each backend, so training runs in a Ray worker too."""
    from dataclasses import replace

    profile = replace(PROFILES["quick"], **SMALL)
    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache-serial"))
    run(profile, tmp_path / "serial", log=lambda *_: None)
    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache-ray"))
    run(profile, tmp_path / "ray", log=lambda *_: None, backend="ray", workers=2)
    assert any((tmp_path / "cache-ray" / "models").glob("*.pt"))  # trained by the Ray task
    serial, ray_pts = _points(tmp_path / "serial" / "points.csv"), _points(tmp_path / "ray" / "points.csv")
    assert len(serial) > 20 and ray_pts == serial


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    """One cell raises: its error is journalled, every other cell's rows are written, and a re-run
    into the same folder retries just that cell."""
    from dataclasses import replace

    import afde_nb.eval.bench.cells as cells_mod

    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    profile = replace(PROFILES["quick"], kept=(0.5,), baselines=("magnitude",), modes=("backward",),
                      variants=("",), epochs=3)
    real = cells_mod.compute

    def one_fails(key, *a, **k):
        if key[2] == "base:magnitude" and key[3] == 0.5:
            raise ValueError("planted failure")
        return real(key, *a, **k)

    monkeypatch.setattr(cells_mod, "compute", one_fails)
    said = []
    rows = run(profile, tmp_path / "out", log=said.append)
    assert any("1 of 5 cells failed" in s for s in said)
    journal = [json.loads(l) for l in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    failed = [r for r in journal if r["error"]]
    assert len(journal) == 5 and len(failed) == 1 and "planted failure" in failed[0]["error"]
    assert {r["method"] for r in rows} == {"original", "afde-backward", "magnitude"}
    monkeypatch.setattr(cells_mod, "compute", real)
    said.clear()
    rows = run(profile, tmp_path / "out", log=said.append)
    assert any("resuming: 4 of 5" in s for s in said)
    assert sum(r["method"] == "magnitude" for r in rows) == 2


def test_examples_bench_at_equal_size(tmp_path, monkeypatch):
    """The models that are not plain stacks: every method at most the baselines' parameters, the
    same setting pairs, latency ratios, and the Markdown table."""
    from afde_nb.eval.bench.examples import run_examples

    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    rows = run_examples(tmp_path / "out", seeds=(0,), amounts=(0.5,), names=("residual_mlp",), reps=3)
    by = {(r["setting"], r["method"]): r for r in rows}
    assert set(by) == {("original", "original"), ("data-free", "structured-norm"), ("data-free", "folding"),
                       ("data-free", "afde-nb"), ("calibrated", "afde-nb"), ("calibrated", "structured-wanda"),
                       ("repaired", "afde-nb"), ("repaired", "structured-norm"), ("repaired", "structured-wanda"),
                       ("repaired", "folding")}
    budget = by[("data-free", "folding")]["params"]
    assert budget < by[("original", "original")]["params"]
    for (setting, method), r in by.items():
        if setting != "original":
            assert r["params"] <= budget, (setting, method)
            assert r["latency_1"] > 0 and r["latency_256"] > 0
    text = (tmp_path / "out" / "examples.md").read_text()
    assert "## residual_mlp" in text and "| 0.50 | repaired | folding |" in text


@pytest.mark.slow
def test_examples_bench_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path / "cache"))
    assert main(["bench", "--examples", "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "examples.md").read_text()
    assert all(f"## {name}" in text for name in ("digits_cnn", "residual_mlp", "transformer"))
    assert "examples.md" in capsys.readouterr().out
