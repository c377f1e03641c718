"""``afde_nb.models.export``: reduced models of any kind as ``torch.export`` programs that stock torch loads."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.errors import (CorruptFileError, ExportError, InvalidArgumentError, MissingFileError, ShapeMismatchError,
                            UnsafeFileError)
from afde_nb.models.export import check_batch, export_program, fixed_batch, load_program, read_program, to_program

from conftest import duplicate_units, residual_mlp, small_cnn

BATCHES = (3, 11)  # two batch sizes, neither the one traced with


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.enc(x))


def residual_mlp_case():
    torch.manual_seed(10)
    return residual_mlp(), torch.randn(32, 4)


def encoder_case():
    torch.manual_seed(1)
    m = Encoder()
    duplicate_units(m.enc.linear1, slice(3, 6), 2)
    return m.eval(), torch.randn(16, 5, 8)


def cnn_case():
    torch.manual_seed(12)
    return small_cnn(), torch.randn(16, 3, 6, 6)


def exported_cnn_case():
    """The CNN as a torch.export program's module: compressing it works on ATen graphs."""
    m, X = cnn_case()
    program = torch.export.export(m, (X,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.module(), X


MODELS = {"residual_mlp": residual_mlp_case, "encoder": encoder_case, "cnn": cnn_case, "exported_cnn": exported_cnn_case}

STOCK_TORCH = textwrap.dedent("""
    import sys
    sys.modules["afde_nb"] = None  # import afde_nb -> ImportError: stock torch only
    import torch
    cases = torch.load(sys.argv[1], weights_only=True)
    outputs = {}
    for name, inputs in cases.items():
        program = torch.export.load(f"{name}.pt2").module()
        with torch.no_grad():
            outputs[name] = [program(x) for x in inputs]
        outputs[name + ".params"] = sum(p.numel() for p in program.parameters())
    assert not any(k.startswith("afde_nb") and v is not None for k, v in sys.modules.items())
    torch.save(outputs, sys.argv[2])
""")


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Each model compressed at eps = 0 with calibration, saved as .pt2, then loaded and run by a
    fresh Python with stock torch only: {name: (original, compression, inputs, stock outputs, params)}."""
    folder = tmp_path_factory.mktemp("programs")
    made, cases = {}, {}
    for name, make in MODELS.items():
        model, X = make()
        c = afde_nb.compress(model, 0.0, calibration=X)
        written = c.save(folder / f"{name}.pt2")
        assert written == [folder / f"{name}.pt2"], name
        inputs = [torch.randn(n, *X.shape[1:]) for n in BATCHES]
        made[name] = (model, c, inputs)
        cases[name] = inputs
    torch.save(cases, folder / "inputs.pt")
    run = subprocess.run([sys.executable, "-c", STOCK_TORCH, "inputs.pt", "outputs.pt"], cwd=folder,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return {name: (*made[name], outputs[name], outputs[name + ".params"]) for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_in_stock_torch(round_trip, name):
    model, c, inputs, outputs, params = round_trip[name]
    assert c.formats == (".pt2",), f"{name}: saved as a plain stack"
    assert c.params_after < c.params_before, f"{name}: eps = 0 merged nothing"
    assert params == c.params_after, f"{name}: the program holds {params} parameters, the reduced model {c.params_after}"
    for x, got in zip(inputs, outputs):
        with torch.no_grad():
            want, orig = c.model(x), model(x)
        assert got.shape == want.shape, f"{name} at batch {len(x)}: {tuple(got.shape)} != {tuple(want.shape)}"
        diff = float((got - want).abs().max())
        assert diff <= 1e-5, f"{name} at batch {len(x)}: the loaded program differs from the reduced model by {diff:g}"
        assert float((got - orig).abs().max()) <= 1e-4, f"{name} at batch {len(x)}: eps = 0 changed the function"


def test_load_program_matches(round_trip, tmp_path):
    model, c, inputs, *_ = round_trip["residual_mlp"]
    path = c.save(tmp_path / "m.pt2", example_inputs=inputs[0][:1])  # one row: traced with two, batch stays free
    loaded = load_program(path[0])
    with torch.no_grad():
        for x in inputs:
            assert torch.allclose(loaded(x), c.model(x), atol=1e-6)


class DataDependent(nn.Module):
    """Branches on a value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        return h if h.sum() > 0 else -h


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_model_that_does_not_export_leaves_no_file(tmp_path, capfd):
    target = tmp_path / "out.pt2"
    with pytest.raises(ExportError, match=r"cannot export DataDependent .*data-dependent") as info:
        export_program(DataDependent(), torch.randn(5, 4), target)
    assert "\n" not in str(info.value) and info.value.__cause__ is not None  # one line, torch's error kept
    assert _leftovers(tmp_path) == []
    assert "def forward" not in capfd.readouterr().err  # torch's partial graph is not dumped on stderr
    # an earlier file stays as it was
    target.write_bytes(b"earlier")
    with pytest.raises(ExportError):
        export_program(DataDependent(), torch.randn(5, 4), target)
    assert _leftovers(tmp_path) == ["out.pt2"] and target.read_bytes() == b"earlier"


def test_a_failing_write_leaves_the_old_file(tmp_path, monkeypatch):
    model, X = residual_mlp_case()
    target = tmp_path / "out.pt2"
    target.write_bytes(b"earlier")

    def broken_save(program, f, **kw):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_program(model, X, target)
    assert _leftovers(tmp_path) == ["out.pt2"] and target.read_bytes() == b"earlier"


def test_save_chooses_the_format(tmp_path):
    model, X = residual_mlp_case()
    c = afde_nb.compress(model, 0.0, calibration=X)
    with pytest.raises(InvalidArgumentError, match=r"ResidualMLP is not a plain Linear stack.*\.pt2"):
        c.save(tmp_path / "m.pt")
    with pytest.raises(InvalidArgumentError, match=r"\.pt2 file, got '\.onnx'"):
        export_program(c.model, X, tmp_path / "m.onnx")
    free = afde_nb.compress(model, 0.0)  # data-free: no example inputs kept
    assert free.example_inputs is None
    with pytest.raises(InvalidArgumentError, match="example_inputs"):
        free.save(tmp_path / "m.pt2")
    assert free.save(tmp_path / "m.pt2", example_inputs=X.numpy())[0].is_file()  # an array works too
    assert _leftovers(tmp_path) == ["m.pt2"]
    # a plain stack: the state_dict + JSON as before, or a program (its input width is known)
    plain = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    cp = afde_nb.compress(plain, 0.0)
    assert [p.name for p in cp.save(tmp_path / "p.pt")] == ["p.pt", "p.json"]
    (path,) = cp.save(tmp_path / "p.pt2")
    x = torch.randn(7, 3)
    with torch.no_grad():
        assert torch.allclose(load_program(path)(x), cp.model(x), atol=1e-6)


# ------------------------------------------------------------------------------------ bad files
@pytest.fixture(scope="module")
def good_program(tmp_path_factory) -> Path:
    model, X = residual_mlp_case()
    return export_program(model, X, tmp_path_factory.mktemp("good") / "good.pt2")


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the archive ``src`` with ``change(member name, bytes) -> bytes`` applied."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name, zin.read(name)))
    return dst


class Exploit:
    def __reduce__(self):
        return (exec, ("open('EXPLOITED', 'w').close()",))


def test_unreadable_programs(good_program, tmp_path):
    good = good_program.read_bytes()
    (tmp_path / "garbage.pt2").write_bytes(os.urandom(3000))
    (tmp_path / "truncated.pt2").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt2").write_bytes(b"")
    (tmp_path / "folder.pt2").mkdir()
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as z:
        z.writestr("archive/readme.txt", "not a program")
    for name in ("garbage", "truncated", "empty", "other"):  # corrupt, not unsafe
        with pytest.raises(CorruptFileError, match=str(tmp_path / f"{name}.pt2")) as info:
            load_program(tmp_path / f"{name}.pt2")
        assert not isinstance(info.value, UnsafeFileError)
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        load_program(tmp_path / "folder.pt2")
    with pytest.raises(MissingFileError, match="no such file"):
        load_program(tmp_path / "missing.pt2")
    with pytest.raises(InvalidArgumentError, match=r"\.pt2 file"):
        load_program(good_program.with_suffix(".pt"))


def test_programs_that_would_unpickle_objects_are_refused(good_program, tmp_path, monkeypatch):
    """torch.export.load falls back to weights_only=False for the sample inputs and unpickles
    weights marked use_pickle: afde-nb reads neither, and nothing runs."""
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save(((Exploit(),), {}), buf)
    evil = _rewrite(good_program, tmp_path / "inputs.pt2",
                    lambda n, b: buf.getvalue() if n.endswith("sample_inputs/model.pt") else b)
    with pytest.raises(UnsafeFileError, match=r"sample_inputs/model\.pt.*weights_only=True.*never unpickles"):
        read_program(evil)

    def pickled(n, b):
        if not n.endswith("_weights_config.json"):
            return b
        cfg = json.loads(b)
        next(iter(cfg["config"].values()))["use_pickle"] = True
        return json.dumps(cfg).encode()

    with pytest.raises(UnsafeFileError, match="as a pickled object"):
        read_program(_rewrite(good_program, tmp_path / "weights.pt2", pickled))
    assert not (tmp_path / "EXPLOITED").exists()


def test_a_loaded_program_copies_without_torch_s_warning(good_program):
    """torch 2.13 deprecates its LeafSpec class, yet a loaded program's module holds one, and every
    copy.deepcopy of the module (exporting it again copies it) warned with a FutureWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_program(load_program(good_program), torch.randn(3, 4))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_a_fixed_batch_is_found_and_says_how_to_export():
    x = torch.randn(4, 3, 6, 6)
    static = torch.export.export(small_cnn(), (x,))
    dynamic = torch.export.export(small_cnn(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert fixed_batch(static) == 4 and fixed_batch(dynamic) is None
    check_batch(static, 4)
    check_batch(dynamic, 16)
    with pytest.raises(ShapeMismatchError, match=r"batch size fixed to 4.*16 rows.*dynamic_shapes"):
        check_batch(static, 16)
