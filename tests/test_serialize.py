"""Saving, loading and rebuilding models (``afde_nb.models.serialize``): round trips, the inferred
architecture, bad architecture JSON, atomic saves and unreadable files."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb import errors
from afde_nb.models import serialize
from afde_nb.errors import (AfdeError, CorruptFileError, InvalidArchitectureError, InvalidArgumentError,
                            MissingFileError, ShapeMismatchError, UnsafeFileError, UnsupportedLayerError, WriteError)
from afde_nb.models.serialize import load_model, load_state_dict, load_tensor, model_from_state_dict, save_model

try:
    import safetensors.torch  # noqa: F401

    HAVE_SAFETENSORS = True
except ImportError:
    HAVE_SAFETENSORS = False
SUFFIXES = [".pt", ".pth", pytest.param(".safetensors", marks=pytest.mark.skipif(
    not HAVE_SAFETENSORS, reason="safetensors is not installed"))]
needs_safetensors = pytest.mark.skipif(not HAVE_SAFETENSORS, reason="safetensors is not installed")


def _same(a: nn.Module, b: nn.Module, n_in: int, dtype=torch.float32) -> bool:
    x = torch.randn(16, n_in, dtype=dtype)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _deep_mlp(depth: int = 7, bias=True) -> nn.Sequential:
    """``depth`` Linear layers: state_dict keys 0, 2, ..., 12, so text order puts 10 and 12 before 2."""
    torch.manual_seed(0)
    widths = [3, 5, 4, 6, 3, 5, 4, 2, 3, 2][: depth + 1]
    mods: list[nn.Module] = []
    for k in range(depth):
        mods.append(nn.Linear(widths[k], widths[k + 1], bias=bias if isinstance(bias, bool) else bias[k]))
        if k < depth - 1:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_save_load_round_trip(tmp_path, suffix):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.Sigmoid(), nn.Linear(5, 4),
                          nn.LeakyReLU(0.3), nn.Linear(4, 2, bias=False))
    written = save_model(model, tmp_path / f"m{suffix}", note="x")
    assert written == [tmp_path / f"m{suffix}", tmp_path / "m.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporaries left
    back = load_model(written[0])
    assert [type(m) for m in back] == [type(m) for m in model]
    assert back[1].bias is None and back[5].bias is None and back[4].negative_slope == 0.3
    x = torch.randn(8, 2, 3)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert json.loads(written[1].read_text())["afde_nb"] == {"note": "x"}


def test_round_trip_keeps_float64(tmp_path):
    model = _deep_mlp(3).double()
    back = load_model(save_model(model, tmp_path / "m.pt")[0])
    assert next(back.parameters()).dtype == torch.float64 and _same(back, model, 3, torch.float64)


def test_compression_save_round_trip(tmp_path):
    model = _deep_mlp(3)
    c = afde_nb.compress(model, eps=0.0)
    path = c.save(tmp_path / "r.pt")[0]
    assert _same(load_model(path), c.model, 3)


def test_save_refuses_unknown_file_types_and_modules(tmp_path):
    with pytest.raises(InvalidArgumentError, match="unknown weights file type"):
        save_model(_deep_mlp(2), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedLayerError, match="Conv1d"):
        save_model(nn.Sequential(nn.Conv1d(1, 1, 2)), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- model_from_state_dict


def test_inferred_layers_follow_numeric_module_order():
    """safetensors (and any text sort) put '10.weight' before '2.weight': the inferred network must
    still be the original one."""
    model = _deep_mlp(7)
    state = dict(sorted(model.state_dict().items()))  # text order, as safetensors returns it
    assert list(state)[:4] == ["0.bias", "0.weight", "10.bias", "10.weight"]
    rebuilt = model_from_state_dict(state, activation="tanh")
    assert _same(rebuilt, model, 3)
    assert [m.out_features for m in rebuilt if isinstance(m, nn.Linear)] == [5, 4, 6, 3, 5, 4, 2]


def test_inferred_order_for_named_layers():
    torch.manual_seed(2)
    fc = {f"fc{i}": nn.Linear(a, b) for i, (a, b) in zip([1, 2, 10], [(3, 4), (4, 5), (5, 2)])}
    state = {f"{n}.{p}": v for n in sorted(fc) for p, v in fc[n].state_dict().items()}  # fc1, fc10, fc2
    rebuilt = model_from_state_dict(state, activation="relu")
    want = nn.Sequential(fc["fc1"], nn.ReLU(), fc["fc2"], nn.ReLU(), fc["fc10"])
    assert _same(rebuilt, want, 3)


@needs_safetensors
def test_safetensors_without_architecture_is_read_in_numeric_order(tmp_path):
    from safetensors.torch import save_file

    model = _deep_mlp(7)
    save_file(dict(model.state_dict()), str(tmp_path / "bare.safetensors"))  # no metadata, no JSON
    assert serialize.find_architecture(tmp_path / "bare.safetensors") is None
    assert _same(model_from_state_dict(load_state_dict(tmp_path / "bare.safetensors"), activation="tanh"), model, 3)


def test_bias_free_linear_layers_are_inferred():
    model = _deep_mlp(3, bias=[False, True, False])
    rebuilt = model_from_state_dict(dict(model.state_dict()), activation="tanh")
    assert [m.bias is None for m in rebuilt if isinstance(m, nn.Linear)] == [True, False, True]
    assert _same(rebuilt, model, 3)


def test_single_linear_without_prefix():
    lin = nn.Linear(3, 2, bias=False)
    assert _same(model_from_state_dict(dict(lin.state_dict()), activation="identity"), lin, 3)


def test_inconsistent_state_dicts_are_explicit_errors():
    model = _deep_mlp(3)
    state = dict(model.state_dict())
    with pytest.raises(ShapeMismatchError, match=r"2.weight takes 7 inputs but the layer before it .*\(0.weight\) "
                                                  "gives 5"):
        model_from_state_dict({**state, "2.weight": torch.zeros(4, 7)})
    with pytest.raises(ShapeMismatchError, match="bias"):
        model_from_state_dict({**state, "0.bias": torch.zeros(9)})
    with pytest.raises(UnsupportedLayerError, match=r"cannot infer an MLP.*running_mean.*torch\.export.*\.pt2"):
        model_from_state_dict({**state, "1.running_mean": torch.zeros(5)})
    with pytest.raises(UnsupportedLayerError, match="no 7.weight"):
        model_from_state_dict({**state, "7.bias": torch.zeros(2)})
    with pytest.raises(UnsupportedLayerError, match=r"2-D.*dynamic_shapes.*\.pt2") as info:
        model_from_state_dict(dict(nn.Conv1d(1, 2, 3).state_dict()))
    assert "arch" not in str(info.value)  # the architecture JSON describes Linear stacks only
    with pytest.raises(UnsupportedLayerError, match="empty"):
        model_from_state_dict({})
    with pytest.raises(InvalidArgumentError, match="activation"):
        model_from_state_dict(state, activation="gelu")
    with pytest.raises(InvalidArgumentError, match="state_dict"):
        model_from_state_dict(model)


def test_a_bare_state_dict_needs_its_activation():
    """A state_dict carries no activation: between two Linear layers it is given, never assumed."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(InvalidArgumentError, match=r"activation=.*leaky_relu.*arch=") as info:
        model_from_state_dict(dict(model.state_dict()))
    assert not isinstance(info.value, UnsupportedLayerError)
    assert _same(model_from_state_dict(dict(model.state_dict()), activation="relu"), model, 3)
    leaky = nn.Sequential(nn.Linear(3, 6), nn.LeakyReLU(), nn.Linear(6, 2))
    rebuilt = model_from_state_dict(dict(leaky.state_dict()), activation="leaky_relu")
    assert rebuilt[1].negative_slope == nn.LeakyReLU().negative_slope and _same(rebuilt, leaky, 3)
    assert serialize.architecture(rebuilt)["layers"][1] == {"type": "LeakyReLU", "negative_slope": 0.01}


def test_an_architecture_of_other_modules_points_to_programs():
    arch = {"format": serialize.FORMAT, "layers": [{"type": "Conv2d", "in_channels": 3}]}
    with pytest.raises(UnsupportedLayerError, match=r"'Conv2d'.*torch\.export.*\.pt2"):
        serialize.build(arch)


def test_the_architecture_wins_over_inference(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))
    arch = serialize.architecture(model)
    assert _same(model_from_state_dict(dict(model.state_dict()), arch), model, 3)
    with pytest.raises(InvalidArgumentError, match="activation"):  # never guessed
        model_from_state_dict(dict(model.state_dict()))
    (tmp_path / "a.json").write_text(json.dumps(arch))
    assert _same(model_from_state_dict(dict(model.state_dict()), tmp_path / "a.json"), model, 3)
    with pytest.raises(MissingFileError, match="no such file"):
        model_from_state_dict(dict(model.state_dict()), tmp_path / "missing.json")


# ------------------------------------------------------------------------------ bad architecture JSON

GOOD = {"format": serialize.FORMAT, "dtype": "float32",
        "layers": [{"type": "Linear", "in_features": 3, "out_features": 4, "bias": True}, {"type": "Tanh"},
                   {"type": "Linear", "in_features": 4, "out_features": 2, "bias": True}]}


def _with(**changes):
    arch = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("layer") and key != "layers":
            arch["layers"][int(key[5:])] = value
        else:
            arch[key] = value
    return arch


@pytest.mark.parametrize("arch,error,match", [
    (_with(format="keras/2"), InvalidArchitectureError, "format"),
    ([1, 2], InvalidArchitectureError, "JSON object"),
    (_with(layers={"0": {}}), InvalidArchitectureError, "'layers', a list"),
    (_with(dtype="int64"), InvalidArchitectureError, "dtype"),
    (_with(dtype="no_such_type"), InvalidArchitectureError, "dtype"),
    (_with(layer1={"type": "GELU"}), UnsupportedLayerError, "GELU"),
    (_with(layer1="Tanh"), InvalidArchitectureError, "layer 1"),
    (_with(layer1={"type": "Tanh", "inplace": True}), InvalidArchitectureError, "unknown field"),
    (_with(layer0={"type": "Linear", "in_features": "3", "out_features": 4}), InvalidArchitectureError,
     "in_features"),
    (_with(layer0={"type": "Linear", "in_features": 3, "out_features": -4}), InvalidArchitectureError,
     "out_features"),
    (_with(layer0={"type": "Linear", "in_features": 3, "out_features": 4, "bias": "yes"}),
     InvalidArchitectureError, "bias"),
    (_with(layer2={"type": "Linear", "in_features": 5, "out_features": 2}), ShapeMismatchError,
     "takes 5 inputs but layer 0 gives 4"),
])
def test_bad_architectures_are_refused(arch, error, match):
    with pytest.raises(error, match=match):
        serialize.build(arch)


def test_architecture_and_weights_must_match(tmp_path):
    torch.manual_seed(4)
    model = serialize.build(GOOD)
    state = dict(model.state_dict())
    with pytest.raises(InvalidArchitectureError, match=r"missing \['2.bias'\]"):
        model_from_state_dict({k: v for k, v in state.items() if k != "2.bias"}, GOOD)
    with pytest.raises(InvalidArchitectureError, match=r"unexpected \['fc.weight'\]"):
        model_from_state_dict({**state, "fc.weight": torch.zeros(1, 1)}, GOOD)
    with pytest.raises(ShapeMismatchError, match=r"0.weight has shape \(4, 5\)"):
        model_from_state_dict({**state, "0.weight": torch.zeros(4, 5)}, GOOD)


def test_bad_architecture_files(tmp_path):
    state = dict(serialize.build(GOOD).state_dict())
    torch.save(state, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(InvalidArchitectureError, match="not valid JSON"):
        load_model(tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(_with(format="other/1")))
    with pytest.raises(InvalidArchitectureError, match="format") as info:
        load_model(tmp_path / "m.pt")
    assert not isinstance(info.value, UnsafeFileError)  # a wrong format is not an unsafe file
    (tmp_path / "m.json").unlink()
    with pytest.raises(MissingFileError, match="no architecture file"):
        load_model(tmp_path / "m.pt")


# ---------------------------------------------------------------------------------------- atomic saves


def _pair(tmp_path, suffix=".pt"):
    old = _deep_mlp(2)
    save_model(old, tmp_path / f"m{suffix}")
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    return old, files


def _assert_old_pair(tmp_path, old, files, suffix=".pt"):
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # same files, no temporaries
    assert _same(load_model(tmp_path / f"m{suffix}"), old, 3)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_failed_weights_write_keeps_the_old_pair(tmp_path, monkeypatch, suffix):
    old, files = _pair(tmp_path, suffix)

    def half_write(state, f, *args, **kwargs):  # writes part of a file, then the disk "fills up"
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    if suffix == ".safetensors":
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    else:
        monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="No space left"):
        save_model(_deep_mlp(3), tmp_path / f"m{suffix}")
    monkeypatch.undo()
    _assert_old_pair(tmp_path, old, files, suffix)


def test_a_failed_architecture_write_keeps_the_old_pair(tmp_path, monkeypatch):
    old, files = _pair(tmp_path)
    real = json.dumps

    def failing_dumps(obj, *args, **kwargs):
        if kwargs.get("indent"):  # the .json file, written after the weights
            raise KeyboardInterrupt
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(serialize.json, "dumps", failing_dumps)
    with pytest.raises(KeyboardInterrupt):
        save_model(_deep_mlp(3), tmp_path / "m.pt")
    monkeypatch.undo()
    _assert_old_pair(tmp_path, old, files)


def test_a_failed_second_rename_restores_the_old_weights(tmp_path, monkeypatch):
    old, files = _pair(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(str(dst))
        if str(dst).endswith(".json"):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(serialize.os, "replace", replace)
    with pytest.raises(WriteError, match="Permission denied"):
        save_model(_deep_mlp(3), tmp_path / "m.pt")
    monkeypatch.undo()
    assert calls[:2] == [str(tmp_path / "m.pt"), str(tmp_path / "m.json")]  # the weights went in first
    _assert_old_pair(tmp_path, old, files)


def test_a_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        save_model(_deep_mlp(2), tmp_path / "new" / "m.pt")
    assert list((tmp_path / "new").iterdir()) == []


# a file that cannot be written (issue 28): one WriteError (an AfdeError and an OSError) naming the path
# and the cause, nothing left behind. Two ways to make a folder unwritable: a path under a regular file
# (works as root too) and a read-only folder (chmod does not stop root, so that variant skips there)
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SAVE_SUFFIXES = [".pt", pytest.param(".safetensors", marks=needs_safetensors)]


def _compressed():
    return afde_nb.compress(_deep_mlp(3), eps=0.1)


def _check_write_error(info, path, cause):
    exc = info.value
    assert isinstance(exc, AfdeError) and isinstance(exc, OSError)
    assert str(path) in str(exc) and cause in str(exc) and "\n" not in str(exc)
    assert exc.path == path


@pytest.mark.parametrize("suffix", SAVE_SUFFIXES)
@pytest.mark.parametrize("deeper", [False, True])
def test_saving_under_a_regular_file_is_a_write_error(tmp_path, suffix, deeper):
    (tmp_path / "blocker").write_text("a file, not a folder")
    target = tmp_path / "blocker" / ("sub" if deeper else "") / f"m{suffix}"
    with pytest.raises(WriteError) as info:
        _compressed().save(target)
    _check_write_error(info, target, f"{tmp_path / 'blocker'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.skipif(AS_ROOT, reason="as root, chmod does not stop writes (the regular-file variant covers it)")
@pytest.mark.parametrize("suffix", SAVE_SUFFIXES)
def test_saving_into_a_read_only_folder_is_a_write_error(tmp_path, suffix):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / f"m{suffix}").write_bytes(b"earlier")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError) as info:
            _compressed().save(folder / f"m{suffix}")
        _check_write_error(info, folder / f"m{suffix}", "is not writable (Permission denied)")
        assert sorted(p.name for p in folder.iterdir()) == [f"m{suffix}"]
        assert (folder / f"m{suffix}").read_bytes() == b"earlier"
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("suffix", SAVE_SUFFIXES)
def test_the_writers_own_failures_are_write_errors(tmp_path, monkeypatch, suffix):
    """A write that fails after the check (the folder changed, the disk filled): torch raises a
    RuntimeError, safetensors a SafetensorError; both come back as a WriteError with the cause."""
    (tmp_path / "blocker").write_text("x")
    real, calls = serialize._temp_beside, []

    def temp_beside(path):  # the weights' temporary lands under a regular file: the writer itself fails
        calls.append(path)
        return tmp_path / "blocker" / "w.tmp" if len(calls) == 1 else real(path)

    monkeypatch.setattr(serialize, "_temp_beside", temp_beside)
    with pytest.raises(WriteError) as info:
        save_model(_deep_mlp(3), tmp_path / f"m{suffix}")
    assert isinstance(info.value.__cause__, RuntimeError if suffix == ".pt" else safetensors.SafetensorError)
    assert str(tmp_path / f"m{suffix}") in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_save_replaces_a_pair(tmp_path):
    _pair(tmp_path)
    new = _deep_mlp(3)
    save_model(new, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
    assert _same(load_model(tmp_path / "m.pt"), new, 3)


# ------------------------------------------------------------------------------------ unreadable files


def _valid_pt(tmp_path) -> bytes:
    torch.save(_deep_mlp(2).state_dict(), tmp_path / "valid.pt")
    return (tmp_path / "valid.pt").read_bytes()


def _valid_st(tmp_path) -> bytes:
    from safetensors.torch import save_file

    save_file(dict(_deep_mlp(2).state_dict()), str(tmp_path / "valid.safetensors"))
    return (tmp_path / "valid.safetensors").read_bytes()


def _fuzz(seed: int) -> bytes:
    r = np.random.default_rng(seed)
    data = r.bytes(int(r.integers(1, 5000)))
    return b"\x80\x02" + data if seed % 2 else data  # odd seeds start like a pickle


# torch's unpickler fails on these with IndexError, UnicodeDecodeError, KeyError, EOFError, UnpicklingError
FUZZ = {64: IndexError, 17: UnicodeDecodeError, 299: KeyError, 343: EOFError, 0: pickle.UnpicklingError}
BAD_FILES = {
    **{f"random{seed}.pt": (lambda tmp, seed=seed: _fuzz(seed)) for seed in FUZZ},
    "empty.pt": lambda tmp: b"",
    "truncated.pt": lambda tmp: _valid_pt(tmp)[: len(_valid_pt(tmp)) // 2],
    "text.pth": lambda tmp: b"not a torch file",
    "list.pt": lambda tmp: (torch.save([torch.zeros(2)], tmp / "_l.pt"), (tmp / "_l.pt").read_bytes())[1],
    "nested.pt": lambda tmp: (torch.save({"a": {"b": torch.zeros(1)}}, tmp / "_n.pt"),
                              (tmp / "_n.pt").read_bytes())[1],
    "pickled-module.pt": lambda tmp: (torch.save(nn.Linear(2, 2), tmp / "_m.pt"), (tmp / "_m.pt").read_bytes())[1],
}
ST_FILES = {
    "random.safetensors": lambda tmp: np.random.default_rng(0).bytes(3000),
    "empty.safetensors": lambda tmp: b"",
    "truncated.safetensors": lambda tmp: _valid_st(tmp)[:-10],
}


@pytest.mark.parametrize("name", list(BAD_FILES) + [pytest.param(n, marks=needs_safetensors) for n in ST_FILES])
def test_unreadable_weights_are_corrupt_or_unsafe(tmp_path, name):
    """Pickled objects are unsafe; anything else that is not a state_dict of tensors is corrupt (or
    of another format), which is no security matter."""
    path = tmp_path / name
    path.write_bytes({**BAD_FILES, **ST_FILES}[name](tmp_path))
    unsafe = name == "pickled-module.pt"
    with pytest.raises(UnsafeFileError if unsafe else CorruptFileError) as info:
        load_state_dict(path)
    assert isinstance(info.value, UnsafeFileError) == unsafe and isinstance(info.value, CorruptFileError) != unsafe
    assert str(path) in str(info.value)
    if name.startswith("random") and name.endswith(".pt"):
        assert isinstance(info.value.__cause__, FUZZ[int(name[6:-3])])
    if name == "pickled-module.pt":
        assert "pickled Python objects" in str(info.value) and "weights_only" in str(info.value)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(MissingFileError, match="no such file") as info:
        load_state_dict(tmp_path / "missing.pt")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        load_state_dict(tmp_path)
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        load_model(tmp_path / "d.pt")
    with pytest.raises(MissingFileError):
        load_tensor(tmp_path / "missing.npy")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        save_model(_deep_mlp(2), tmp_path / "d.pt")


def test_unreadable_tensor_files(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    torch.save({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "two.pt")
    for name, error, match in [("junk.npy", CorruptFileError, "numeric .npy"),
                               ("objects.npy", UnsafeFileError, "pickled Python objects"),
                               ("text.npy", CorruptFileError, "numeric"),
                               ("two.pt", CorruptFileError, "single tensor")]:
        with pytest.raises(error, match=match):
            load_tensor(tmp_path / name)
    np.save(tmp_path / "ok.npy", np.ones((2, 3), dtype=np.float32))
    assert load_tensor(tmp_path / "ok.npy").shape == (2, 3)


def test_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(UnsafeFileError):
        load_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------ the errors


def test_every_error_is_an_afde_error_and_a_builtin():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, AfdeError)
        if cls is not AfdeError:
            assert issubclass(cls, (ValueError, TypeError, ImportError, OSError)), cls
    assert issubclass(InvalidArchitectureError, InvalidArgumentError)
    assert issubclass(MissingFileError, FileNotFoundError)
    assert not issubclass(InvalidArchitectureError, UnsafeFileError)
    assert not issubclass(CorruptFileError, UnsafeFileError) and not issubclass(UnsafeFileError, CorruptFileError)
