"""The ``afde`` command line."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import afde_nb
from afde_nb import errors
from afde_nb.errors import CorruptFileError
from afde_nb.ui.cli import main

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
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0", "--mode", "backward",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines()]
    assert ["0", "tanh", "10", "9", "2", "0"] in rows  # layer, act, before, after, largest block, eps
    assert "wrote" in text and out.is_file() and out.with_suffix(".json").is_file()
    reduced = afde_nb.load_model(out)
    assert reduced[0].out_features == 9
    x = torch.randn(64, 4)
    with torch.no_grad():
        assert float((reduced(x) - model(x)).abs().max()) <= 1e-5


def _sigmoid_model():
    """A model that inference (tanh by default) gets wrong: the architecture must be read."""
    torch.manual_seed(1)
    model = mlp([4, 8, 3], ["sigmoid"])
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[2]
        model[0].bias[5] = model[0].bias[2]
    return model


def _assert_same_function(path, model):
    reduced = afde_nb.load_model(path)
    x = torch.randn(64, model[0].in_features)
    with torch.no_grad():
        assert float((reduced(x) - model(x)).abs().max()) <= 1e-5


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_compress_uses_the_architecture_json(tmp_path, capsys, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model = _sigmoid_model()
    afde_nb.save_model(model, tmp_path / f"arch_model{suffix}")
    out = tmp_path / "reduced.pt"
    assert main(["compress", str(tmp_path / f"arch_model{suffix}"), "--eps", "0", "-o", str(out)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["0", "sigmoid", "8", "7", "2", "0"] in rows  # not the tanh that inference would assume
    assert isinstance(afde_nb.load_model(out)[1], torch.nn.Sigmoid)
    _assert_same_function(out, model)


def test_an_explicit_arch_file_is_used_and_must_exist(tmp_path, capsys):
    model = _sigmoid_model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "elsewhere").mkdir()
    afde_nb.save_model(model, tmp_path / "elsewhere" / "described.pt")
    out = tmp_path / "reduced.pt"
    assert main(["compress", str(tmp_path / "weights.pt"), "--arch", str(tmp_path / "elsewhere" / "described.json"),
                 "-o", str(out)]) == 0
    _assert_same_function(out, model)
    capsys.readouterr()
    # a given --arch that does not exist is an error, never a silent fallback to guessing
    assert main(["compress", str(tmp_path / "weights.pt"), "--arch", str(tmp_path / "typo.json")]) == 2
    assert f"no such file: {tmp_path / 'typo.json'}" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"format": "afde-nb.sequential/1", "layers": [')
    assert main(["compress", str(tmp_path / "weights.pt"), "--arch", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"format": "keras", "layers": []}))
    assert main(["compress", str(tmp_path / "weights.pt"), "--arch", str(tmp_path / "other.json")]) == 2
    assert "architecture format 'keras'" in capsys.readouterr().err


def test_inferred_layers_in_numeric_order_and_without_bias(tmp_path, capsys):
    """Seven Linear layers (keys 0..12: text order puts '10.weight' before '2.weight'), two of them
    without bias, in a safetensors file with no architecture."""
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    widths = [3, 5, 4, 6, 3, 5, 4, 2]
    mods = []
    for k in range(7):
        mods += [torch.nn.Linear(widths[k], widths[k + 1], bias=k not in (1, 6)), torch.nn.Tanh()]
    model = torch.nn.Sequential(*mods[:-1])
    safetensors.save_file(dict(model.state_dict()), str(tmp_path / "deep.safetensors"))
    out = tmp_path / "reduced.pt"
    assert main(["compress", str(tmp_path / "deep.safetensors"), "--activation", "tanh", "-o", str(out)]) == 0
    _assert_same_function(out, model)
    assert [m.bias is None for m in afde_nb.load_model(out) if isinstance(m, torch.nn.Linear)] == \
        [k in (1, 6) for k in range(7)]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("afde: error: ") and captured.out == "", captured
    return err[0]


@pytest.mark.parametrize("act,module", [("relu", torch.nn.ReLU), ("leaky_relu", torch.nn.LeakyReLU),
                                        ("sigmoid", torch.nn.Sigmoid)])
def test_a_bare_state_dict_needs_its_activation(tmp_path, capsys, act, module):
    """The issue's case: a ReLU MLP's bare state_dict was read as tanh, and the 'exact' eps = 0
    result differed from the original by 18 on outputs of scale 16."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), module(), torch.nn.Linear(16, 16), module(),
                                torch.nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[0].weight[7], model[0].bias[7] = model[0].weight[2], model[0].bias[2]
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    out = tmp_path / "out.pt"
    assert main(["compress", str(tmp_path / "bare.pt"), "--eps", "0", "-o", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "--activation" in err and "--arch" in err and "leaky_relu" in err
    assert not out.exists()
    assert main(["compress", str(tmp_path / "bare.pt"), "--activation", act, "--eps", "0", "-o", str(out)]) == 0
    assert ["0", act, "16", "15", "2", "0"] in [line.split() for line in capsys.readouterr().out.splitlines()]
    assert json.loads(out.with_suffix(".json").read_text())["layers"][1]["type"] == module.__name__
    _assert_same_function(out, model)


def test_activation_is_only_for_a_bare_state_dict(tmp_path, capsys):
    """With the architecture at hand, --activation could only disagree with it: refused, not ignored."""
    model = _sigmoid_model()
    afde_nb.save_model(model, tmp_path / "described.pt")
    assert main(["compress", str(tmp_path / "described.pt"), "--activation", "relu"]) == 2
    assert "--activation" in _one_error_line(capsys)
    from conftest import small_cnn

    torch.export.save(torch.export.export(small_cnn(), (torch.randn(4, 3, 6, 6),)), tmp_path / "cnn.pt2")
    assert main(["compress", str(tmp_path / "cnn.pt2"), "--activation", "relu"]) == 2
    assert "--activation" in _one_error_line(capsys)


@pytest.mark.parametrize("budget", [["--keep", "0.5"], ["--target-params", "40"]])
def test_eps_and_a_budget_together_are_refused(saved_model, tmp_path, capsys, budget):
    """--eps 0.1 --keep 0.5 used only --keep; compress() refuses the same combination."""
    _, path = saved_model
    out = tmp_path / "out.pt"
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.1", *budget, "-o", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "--eps" in err and budget[0] in err
    assert not out.exists()


def test_a_cnn_state_dict_points_to_the_program_route(tmp_path, capsys):
    """Not to --arch, whose JSON describes Linear stacks only: to a torch.export program."""
    from conftest import small_cnn

    torch.save(small_cnn().state_dict(), tmp_path / "cnn.pt")
    for extra in ([], ["--activation", "relu"]):
        assert main(["compress", str(tmp_path / "cnn.pt"), *extra]) == 2
        err = _one_error_line(capsys)
        assert ".pt2" in err and "torch.export" in err and "dynamic_shapes" in err and "--arch" not in err
    arch = {"format": "afde-nb.sequential/1", "layers": [{"type": "Conv2d", "in_channels": 3}]}
    (tmp_path / "cnn.json").write_text(json.dumps(arch))
    assert main(["compress", str(tmp_path / "cnn.pt"), "--arch", str(tmp_path / "cnn.json")]) == 2
    err = _one_error_line(capsys)
    assert "'Conv2d'" in err and ".pt2" in err


def test_calibration_file(saved_model, tmp_path, capsys):
    _, path = saved_model
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))
    assert main(["compress", str(path), "--activation", "tanh", "--calibration", str(tmp_path / "x.npy")]) == 0
    assert "calibration: max |diff|" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    assert main(["compress", str(path), "--activation", "tanh", "--calibration", str(tmp_path / "bad.npy")]) == 2
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
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "-1"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    conv = tmp_path / "conv.pt"
    torch.save(torch.nn.Conv1d(1, 2, 3).state_dict(), conv)
    assert main(["compress", str(conv)]) == 2
    assert "cannot infer an MLP" in capsys.readouterr().err


def _bad_files(tmp_path):
    rng = np.random.default_rng(64)
    valid = tmp_path / "valid.pt"
    torch.save(mlp([2, 3, 1], ["tanh"]).state_dict(), valid)
    files = {"garbage.pt": rng.bytes(4000), "truncated.pt": valid.read_bytes()[:300], "empty.pt": b"",
             "garbage.safetensors": rng.bytes(4000), "weights.bin": b"not torch"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.pt").mkdir()
    return [tmp_path / n for n in [*files, "folder.pt", "missing.pt"]]


def test_unreadable_files_give_one_line_and_exit_code_2(tmp_path, capsys):
    for path in _bad_files(tmp_path):
        if path.suffix == ".safetensors" and importlib.util.find_spec("safetensors") is None:
            continue
        assert main(["compress", str(path)]) == 2, path
        captured = capsys.readouterr()
        err = captured.err.splitlines()
        assert len(err) == 1 and err[0].startswith("afde: error: ") and str(path) in err[0], captured.err
        assert captured.out == ""


def test_debug_re_raises(tmp_path, capsys):
    garbage, *_ = _bad_files(tmp_path)
    with pytest.raises(CorruptFileError, match="not a plain tensor state_dict") as info:
        main(["compress", str(garbage), "--debug"])
    assert info.value.__cause__ is not None  # torch's own error is kept for the traceback
    with pytest.raises(FileNotFoundError):
        main(["--debug", "compress", str(tmp_path / "missing.pt")])


def test_garbage_through_the_console_script(tmp_path):
    """The issue's case: random bytes used to end in a raw IndexError traceback."""
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(64).bytes(4000))
    run = subprocess.run([sys.executable, "-m", "afde_nb", "compress", "garbage.pt"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("afde: error: garbage.pt is not a plain tensor")
    assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "afde_nb", "compress", "garbage.pt", "--debug"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" in run.stderr and "CorruptFileError" in run.stderr


def test_bad_output_type_fails_before_compressing(saved_model, tmp_path, capsys):
    _, path = saved_model
    assert main(["compress", str(path), "-o", str(tmp_path / "reduced.onnx")]) == 2
    captured = capsys.readouterr()
    assert "unknown weights file type '.onnx'" in captured.err and captured.out == ""
    assert not list(tmp_path.glob("reduced*"))


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _cli_input(tmp_path, suffix):
    """A model file to compress to ``suffix``: a .pt2 output needs a .pt2 program as input."""
    torch.manual_seed(0)
    model = mlp([4, 10, 6, 2], ["tanh", "tanh"])
    if suffix == ".pt2":
        return [str(_export(model, torch.randn(3, 4), tmp_path / "model.pt2"))]
    torch.save(model.state_dict(), tmp_path / "model.pt")
    return [str(tmp_path / "model.pt"), "--activation", "tanh"]


def _one_line_exit_2(capsys, argv, *needles):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before the compression: no table printed
    assert err.count("\n") == 1 and err.startswith("afde: error: cannot write ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pt2"])
@pytest.mark.parametrize("deeper", [False, True])
def test_an_output_under_a_regular_file_fails_first_in_one_line(tmp_path, capsys, suffix, deeper):
    """Issue 28: works as root, where chmod does not stop writes."""
    argv = ["compress", *_cli_input(tmp_path, suffix), "--eps", "0.1"]
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = tmp_path / "blocker" / ("sub" if deeper else "") / f"small{suffix}"
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_line_exit_2(capsys, argv + ["-o", str(out)], str(out), f"{tmp_path / 'blocker'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing partial
    with pytest.raises(errors.WriteError):  # --debug: the typed error with its traceback
        main(argv + ["-o", str(out), "--debug"])


@pytest.mark.skipif(AS_ROOT, reason="as root, chmod does not stop writes (the regular-file variant covers it)")
@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pt2"])
def test_an_output_in_a_read_only_folder_fails_first_in_one_line(tmp_path, capsys, suffix):
    argv = ["compress", *_cli_input(tmp_path, suffix), "--eps", "0.1"]
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _one_line_exit_2(capsys, argv + ["-o", str(folder / f"small{suffix}")], "is not writable (Permission denied)")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_write_that_fails_after_the_compression_is_one_line(saved_model, tmp_path, capsys, monkeypatch, suffix):
    """The folder was writable when checked, the write itself fails (the disk filled): torch's and
    safetensors' own errors come back as one line and exit code 2, and no file is left."""
    from afde_nb.models import serialize

    _, path = saved_model
    (tmp_path / "blocker").write_text("x")
    monkeypatch.setattr(serialize, "_temp_beside", lambda p: tmp_path / "blocker" / "w.tmp")
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.1", "-o",
                 str(tmp_path / f"small{suffix}")]) == 2
    out, err = capsys.readouterr()
    assert "parameters" in out and err.count("\n") == 1 and f"cannot write {tmp_path / f'small{suffix}'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "model.pt"]


def test_an_unwritable_bench_folder_fails_before_any_cell(tmp_path, capsys):
    (tmp_path / "blocker").write_text("x")
    assert main(["bench", "--quick", "--out", str(tmp_path / "blocker" / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "is a file, not a folder" in err


def test_console_script_runs(tmp_path):
    # outside the source tree, so the installed package (with its compiled engine) is the one run
    out = subprocess.run([sys.executable, "-m", "afde_nb", "--version"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert "afde-nb" in out.stdout


def test_demo_prints_the_trade_off(capsys):
    assert main(["demo", "--epochs", "20"]) == 0
    out = capsys.readouterr().out
    from afde_nb.ui.demo import DEMO_EPS, DEMO_KEEP

    rows = [l.split() for l in out.splitlines() if l.split() and l.split()[0].replace(".", "").isdigit()]
    assert [float(r[0]) for r in rows] == list(DEMO_EPS)
    assert rows[0][2] == "100.0%"  # eps = 0 is exact: nothing merges in a trained net
    kept = [float(r[2].rstrip("%")) for r in rows]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 100
    budgets = [l.split() for l in out.splitlines() if l.strip().endswith(tuple("0123456789")) and "%" in l
               and l.strip().split()[0].rstrip("%").isdigit() and "|" in l]
    assert [b[0] for b in budgets] == [f"{100 * k:.0f}%" for k in DEMO_KEEP]
    # every column header that is not self-explanatory is explained in one line
    for term in ("MSE free:", "% rep.:", "MSE repaired:", "ms:", "k-means fold:", "magnitude:"):
        assert sum(line.lstrip().startswith(term) for line in out.splitlines()) == 1, term


@pytest.mark.parametrize("command", ["compress", "demo"])
def test_every_option_has_help(command):
    from afde_nb.ui.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        assert action.help, action.option_strings or action.dest
    if command == "compress":
        activation = next(a for a in sub._actions if "--activation" in a.option_strings)
        assert "leaky_relu" in activation.choices


def test_compress_options_reach_compress(saved_model, tmp_path, capsys):
    """--method, --repair, --no-relative and --no-symmetry end up in the Compression."""
    model, path = saved_model
    calib = tmp_path / "x.pt"
    torch.save(torch.randn(64, model[0].in_features), calib)
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.3", "--calibration", str(calib),
                 "--repair", "off"]) == 0
    out = capsys.readouterr().out
    assert "method=ward" in out and "(relative)" in out and "before repair" not in out
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.3", "--calibration", str(calib)]) == 0
    out = capsys.readouterr().out
    assert "calibration after repair: max" in out and "(calibration)" not in out  # said once, not twice
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.3", "--method", "components",
                 "--no-relative", "--no-symmetry"]) == 0
    out = capsys.readouterr().out
    assert "method=components" in out and "(relative)" not in out
    # --repair on needs --calibration
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.3", "--repair", "on"]) == 2
    assert "pseudo" in capsys.readouterr().err


def test_compress_to_a_parameter_budget(saved_model, tmp_path, capsys):
    model, path = saved_model
    full = sum(p.numel() for p in model.parameters())
    assert main(["compress", str(path), "--activation", "tanh", "--keep", "0.5", "--relative",
                 "-o", str(tmp_path / "half.pt")]) == 0
    reduced = afde_nb.load_model(tmp_path / "half.pt")
    assert sum(p.numel() for p in reduced.parameters()) <= 0.5 * full
    capsys.readouterr()
    assert main(["compress", str(path), "--keep", "1.5"]) == 2
    assert "--keep" in capsys.readouterr().err
    assert main(["compress", str(path), "--data-aware"]) == 2
    assert "calibration" in capsys.readouterr().err


def test_a_budget_the_model_meets_says_so_and_a_floor_holds(saved_model, tmp_path, capsys):
    model, path = saved_model
    full = sum(p.numel() for p in model.parameters())
    for budget in (["--target-params", str(full)], ["--keep", "1"]):
        assert main(["compress", str(path), "--activation", "tanh", *budget]) == 0
        out = capsys.readouterr().out
        assert f"target_params={full} is at or above the model's {full} parameters: nothing lossy was merged" in out
    assert main(["compress", str(path), "--activation", "tanh", "--keep", "0.6", "--floor", "4",
                 "-o", str(tmp_path / "floored.pt")]) == 0
    assert "floor: lossy merges keep at least 4 units of each hidden layer" in capsys.readouterr().out
    reduced = afde_nb.load_model(tmp_path / "floored.pt")
    assert reduced[0].out_features >= 4 and reduced[2].out_features >= 4
    assert main(["compress", str(path), "--activation", "tanh", "--keep", "0.6", "--floor", "0.5"]) == 0
    assert "0.5 of each hidden layer's units" in capsys.readouterr().out
    assert main(["compress", str(path), "--activation", "tanh", "--eps", "0.1", "--floor", "3"]) == 2
    assert "floor applies to a budget" in capsys.readouterr().err


# ------------------------------------------------------------------ torch.export programs (.pt2)
def _export(model, x, path):
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_compress_a_program(tmp_path, capsys):
    from conftest import small_cnn

    model = small_cnn()
    torch.manual_seed(3)
    x = torch.randn(16, 3, 6, 6)
    src = _export(model, x, tmp_path / "cnn.pt2")
    np.save(tmp_path / "calib.npy", x.numpy())
    out = tmp_path / "reduced.pt2"
    assert main(["compress", str(src), "--eps", "0", "--calibration", str(tmp_path / "calib.npy"),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines()]
    assert ["0", "relu", "8", "5", "4", "0"] in rows  # the group by its parameter path: 4 copies of a channel
    assert "lumpable group(s)" in text and "lumps 0 (conv2d) -> 1 (folded) -> relu -> 3" in text  # the report
    assert f"wrote {out}" in text and out.is_file()
    reduced = torch.export.load(out).module()
    assert _params(reduced) < _params(model)
    for n in (2, 9):
        xs = torch.randn(n, 3, 6, 6)
        with torch.no_grad():
            assert float((reduced(xs) - model(xs)).abs().max()) <= 1e-5
    # data-free: the program's own example inputs trace the reduced one
    assert main(["compress", str(src), "--keep", "0.8", "-o", str(tmp_path / "small.pt2")]) == 0
    assert _params(torch.export.load(tmp_path / "small.pt2").module()) <= 0.8 * _params(model)


def test_a_program_with_nothing_to_lump(tmp_path, capsys):
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Softmax(dim=1), torch.nn.Linear(6, 2)).eval()
    src = _export(model, torch.randn(8, 4), tmp_path / "softmax.pt2")
    assert main(["compress", str(src), "--eps", "0.1", "-o", str(tmp_path / "out.pt2")]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("afde: error: ") and captured.out == ""
    assert "0 lumpable group(s)" in err[0] and "left alone" in err[0]  # what was found, and why not
    assert not (tmp_path / "out.pt2").exists()


def test_program_files_fail_early_and_in_one_line(tmp_path, capsys):
    from conftest import small_cnn

    src = _export(small_cnn(), torch.randn(4, 3, 6, 6), tmp_path / "cnn.pt2")
    assert main(["compress", str(src), "-o", str(tmp_path / "out.pt")]) == 2
    captured = capsys.readouterr()
    assert "compresses to a .pt2 program" in captured.err and captured.out == ""  # before compressing
    assert main(["compress", str(src), "--arch", str(tmp_path / "a.json")]) == 2
    assert "--arch describes a state_dict" in capsys.readouterr().err
    (tmp_path / "garbage.pt2").write_bytes(np.random.default_rng(0).bytes(2000))
    assert main(["compress", str(tmp_path / "garbage.pt2")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is not a readable torch.export program" in err[0]


def test_a_program_with_a_fixed_batch_keeps_it_and_says_how_to_export_it(tmp_path, capsys):
    from conftest import small_cnn

    program = torch.export.export(small_cnn(), (torch.randn(4, 3, 6, 6),))  # no dynamic_shapes
    torch.export.save(program, tmp_path / "static.pt2")
    # the reduced program keeps the source's fixed batch of 4 (as a bounded batch keeps its bounds)
    assert main(["compress", str(tmp_path / "static.pt2"), "--eps", "0", "-o", str(tmp_path / "out.pt2")]) == 0
    out = torch.export.load(tmp_path / "out.pt2").module()
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(out(x), program.module()(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception):
        out(torch.randn(5, 3, 6, 6))
    capsys.readouterr()
    # with calibration inputs of another batch size it failed on the program's guard, with no way out
    np.save(tmp_path / "calib.npy", torch.randn(16, 3, 6, 6).numpy())
    assert main(["compress", str(tmp_path / "static.pt2"), "--eps", "0", "--calibration",
                 str(tmp_path / "calib.npy")]) == 2
    err = _one_error_line(capsys)
    assert "batch size fixed" in err and "dynamic_shapes" in err and "16" in err


# ------------------------------------------------------------- what a new user reads and sees
ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_notebook_extra_and_the_readme_open_jupyterlab():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~ \[]", req, maxsplit=1)[0] for req in extras["notebook"]}
    assert {"jupyterlab", "ipykernel", "ipywidgets"} <= names
    readme = _readme()
    assert '    pip install ".[notebook]"\n    jupyter lab notebooks/quickstart.ipynb\n' in readme  # the two lines


def test_the_readme_gives_the_fast_test_subset():
    assert 'pytest -q -m "not slow and not browser"' in _readme()


def test_the_readme_names_every_error_s_builtin():
    """MissingFileError is a FileNotFoundError, not a ValueError or TypeError."""
    from afde_nb import errors

    sentence = next(line for line in _readme().split(". ") if "afde_nb.errors.AfdeError" in line)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.AfdeError) and cls is not errors.AfdeError:
            builtin = next(b for b in cls.__mro__ if b.__module__ == "builtins" and b is not Exception)
            assert builtin.__name__ in sentence, (cls.__name__, builtin.__name__)


def test_install_hints_work_from_a_checkout():
    """No index has afde-nb, so 'pip install afde-nb[bench]' fails: a hint names the checkout's extra."""
    files = [ROOT / "README.md", *sorted((ROOT / "afde_nb").rglob("*.py"))]
    bad = [f"{f.relative_to(ROOT)}:{n}" for f in files
           for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if "afde-nb[" in line]
    assert not bad


def test_a_program_compresses_without_torch_s_treespec_warning(tmp_path):
    """torch 2.13 warns (FutureWarning, LeafSpec) on every copy of a loaded program's module."""
    from conftest import small_cnn

    _export(small_cnn(), torch.randn(4, 3, 6, 6), tmp_path / "cnn.pt2")
    run = subprocess.run([sys.executable, "-m", "afde_nb", "compress", "cnn.pt2", "--keep", "0.8", "-o",
                          "small.pt2"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr


def test_slider_moves_hand_torch_no_read_only_arrays():
    """The network's arrays are read-only views of the model; torch.from_numpy warns on them (once
    a process, hence a fresh one)."""
    code = """if True:
        import warnings
        warnings.simplefilter("error", UserWarning)
        import numpy as np, torch
        from torch import nn
        from afde_nb.ui.widgets.state import PanelState
        torch.manual_seed(5)
        m = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 2)).eval()
        X = np.random.default_rng(2).normal(size=(150, 4)).astype(np.float32)
        s = PanelState(m, (X, X[:, :2] ** 2), calibration=X[:40], eps=0.05)
        s.update()
        for eps in (0.3, 0.1):
            s.set_eps(eps)
            s.update()
    """
    pytest.importorskip("ipywidgets")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert run.returncode == 0, run.stderr
