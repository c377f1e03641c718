"""The ``afde`` command line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import afde_nb
from afde_nb.cli import main

from conftest import mlp


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = mlp([4, 10, 6, 2], ["tanh", "tanh"])
    with torch.no_grad():
        model[0].weight[3] = model[0].weight[1]
        model[0].bias[3] = model[0].bias[1]
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_compress_infers_an_mlp_and_writes_the_reduced_model(saved_model, tmp_path, capsys):
    model, path = saved_model
    out = tmp_path / "reduced.pt"
    assert main(["compress", str(path), "--eps", "0", "--mode", "backward", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines()]
    assert ["0", "tanh", "10", "9", "2", "0"] in rows  # layer, act, before, after, largest block, eps
    assert "wrote" in text and out.is_file() and out.with_suffix(".json").is_file()
    reduced = afde_nb.load_model(out)
    assert reduced[0].out_features == 9
    x = torch.randn(64, 4)
    with torch.no_grad():
        assert float((reduced(x) - model(x)).abs().max()) <= 1e-5


def test_compress_uses_the_architecture_json(saved_model, tmp_path, capsys):
    model, path = saved_model
    c = afde_nb.compress(model, 0.0)
    c.save(tmp_path / "arch_model.safetensors")
    assert main(["compress", str(tmp_path / "arch_model.safetensors"), "--eps", "0.3", "--relative",
                 "--mode", "backward"]) == 0
    assert "% kept" in capsys.readouterr().out


def test_calibration_file(saved_model, tmp_path, capsys):
    _, path = saved_model
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))
    assert main(["compress", str(path), "--calibration", str(tmp_path / "x.npy")]) == 0
    assert "calibration: max |diff|" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    assert main(["compress", str(path), "--calibration", str(tmp_path / "bad.npy")]) == 2
    assert "(n, 4)" in capsys.readouterr().err


class Pickled(torch.nn.Module):
    pass


def test_refuses_pickled_objects_and_bad_input(saved_model, tmp_path, capsys):
    model, path = saved_model
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)  # a pickled module, not a state_dict
    assert main(["compress", str(whole)]) == 2
    assert "weights_only" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert main(["compress", str(tmp_path / "junk.pt")]) == 2
    assert "not a plain tensor state_dict" in capsys.readouterr().err
    assert main(["compress", str(path), "--eps", "-1"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    conv = tmp_path / "conv.pt"
    torch.save(torch.nn.Conv1d(1, 2, 3).state_dict(), conv)
    assert main(["compress", str(conv)]) == 2
    assert "cannot infer an MLP" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    # outside the source tree, so the installed package (with its compiled engine) is the one run
    out = subprocess.run([sys.executable, "-m", "afde_nb", "--version"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert "afde-nb" in out.stdout


def test_demo_prints_the_trade_off(capsys):
    assert main(["demo", "--epochs", "20"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith(("backward", "forward"))]
    assert len(lines) == 2 * 7
    first = lines[0].split()
    assert first[1] == "0" and first[3] == "100.0%"
    targets = [l.split() for l in out.splitlines() if l.startswith("keep")]
    assert [t[1] for t in targets] == ["90%", "75%", "50%"]
    assert all(float(t[5].rstrip("%")) <= float(t[1].rstrip("%")) for t in targets)  # within each budget


def test_compress_to_a_parameter_budget(saved_model, tmp_path, capsys):
    model, path = saved_model
    full = sum(p.numel() for p in model.parameters())
    assert main(["compress", str(path), "--keep", "0.5", "--relative", "-o", str(tmp_path / "half.pt")]) == 0
    reduced = afde_nb.load_model(tmp_path / "half.pt")
    assert sum(p.numel() for p in reduced.parameters()) <= 0.5 * full
    capsys.readouterr()
    assert main(["compress", str(path), "--keep", "1.5"]) == 2
    assert "--keep" in capsys.readouterr().err
    assert main(["compress", str(path), "--data-aware"]) == 2
    assert "calibration" in capsys.readouterr().err
