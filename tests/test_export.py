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
from afde_nb.errors import (AfdeError, CorruptFileError, ExportError, InvalidArgumentError, MissingFileError,
                            ShapeMismatchError, UnsafeFileError, WriteError)
from afde_nb.models.export import (batch_bounds, check_batch, export_program, fixed_batch, load_program, read_program,
                                   to_program)

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


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _no_trace(monkeypatch):
    """A path that cannot be written is refused before the trace (the slow part)."""
    import afde_nb.models.export as export

    monkeypatch.setattr(export, "to_program", lambda *a, **k: pytest.fail("traced before the path was checked"))


@pytest.mark.parametrize("deeper", [False, True])
def test_a_program_under_a_regular_file_is_a_write_error(tmp_path, monkeypatch, deeper):
    model, X = residual_mlp_case()
    c = afde_nb.compress(model, 0.0, calibration=X)
    (tmp_path / "blocker").write_text("a file, not a folder")
    target = tmp_path / "blocker" / ("sub" if deeper else "") / "out.pt2"
    _no_trace(monkeypatch)
    with pytest.raises(WriteError) as info:
        c.save(target)
    assert isinstance(info.value, AfdeError) and isinstance(info.value, OSError) and info.value.path == target
    assert f"cannot write {target}: {tmp_path / 'blocker'} is a file, not a folder" == str(info.value)
    assert _leftovers(tmp_path) == ["blocker"]


@pytest.mark.skipif(AS_ROOT, reason="as root, chmod does not stop writes (the regular-file variant covers it)")
def test_a_program_in_a_read_only_folder_is_a_write_error(tmp_path, monkeypatch):
    model, X = residual_mlp_case()
    c = afde_nb.compress(model, 0.0, calibration=X)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    _no_trace(monkeypatch)
    try:
        with pytest.raises(WriteError, match=rf"cannot write .*out\.pt2: the folder .*ro is not writable "
                                             r"\(Permission denied\)"):
            c.save(folder / "out.pt2")
        assert _leftovers(folder) == []
    finally:
        folder.chmod(0o755)


def test_a_failed_program_write_is_a_write_error(tmp_path, monkeypatch):
    """A write that fails after the check (the disk filled) is a WriteError with the OS's cause,
    and leaves no temporary."""
    model, X = residual_mlp_case()

    def broken_save(program, f, **kw):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(WriteError, match=r"cannot write .*out\.pt2: No space left on device$"):
        export_program(model, X, tmp_path / "out.pt2")
    assert _leftovers(tmp_path) == []


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


# ------------------------------------------- what the source program fixed: batch bounds, keyword inputs (issue 23)
def _mlp():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    duplicate_units(m[0], slice(5, 8), 2)
    return m, torch.randn(16, 4)


def _cnn():
    return small_cnn(), torch.randn(16, 3, 6, 6)


def _accepts(module: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            module(x)
    except Exception:  # noqa: BLE001 - torch's guard raises AssertionError/RuntimeError
        return False
    return True


def _symbol_range(program) -> list[tuple[int, int]]:
    return [(int(vr.lower), int(vr.upper)) for vr in program.range_constraints.values()]


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("make,lo,hi", [(_mlp, 2, 16), (_cnn, 2, 16), (_mlp, 3, 12)])
def test_a_program_s_batch_bounds_are_kept(tmp_path, make, lo, hi, eps):
    """A source exported with Dim("batch", min, max) was re-saved with Dim(min=1): its bounds lost,
    or 'Constraints violated (batch)'. Now the reduced program has the source's range and guards."""
    model, X = make()
    src = torch.export.export(model, (X[:4],), dynamic_shapes=({0: torch.export.Dim("batch", min=lo, max=hi)},))
    c = afde_nb.compress(src.module(), eps, calibration=X[:hi])
    assert c.batch_bounds == {"input": (str(next(iter(src.range_constraints))), lo, hi)}
    assert c.params_after < c.params_before
    c.save(tmp_path / "r.pt2")
    loaded = torch.export.load(tmp_path / "r.pt2")  # stock torch
    assert _symbol_range(loaded) == [(lo, hi)]
    module, source = loaded.module(), src.module()
    for n in (lo, hi):
        x = torch.randn(n, *X.shape[1:])
        with torch.no_grad():
            assert torch.allclose(module(x), c.model(x), atol=1e-6, rtol=0), f"batch {n}"
    for n in (lo - 1, hi + 1, 1):
        x = torch.randn(n, *X.shape[1:])
        assert _accepts(module, x) == _accepts(source, x), f"batch {n}: the reduced program's guard is not the source's"
    assert not _accepts(module, torch.randn(hi + 1, *X.shape[1:]))
    if lo > 2:
        assert not _accepts(module, torch.randn(lo - 1, *X.shape[1:]))
    # the user's own example inputs must lie inside the bounds; the compression's two rows are fitted in
    for n in (lo - 1, hi + 1):
        with pytest.raises(ShapeMismatchError, match=rf"'input' has {n} rows.*{lo} to {hi}"):
            c.save(tmp_path / "bad.pt2", example_inputs=torch.randn(n, *X.shape[1:]))
    assert not (tmp_path / "bad.pt2").exists()
    c.save(tmp_path / "own.pt2", example_inputs=X[:hi])
    assert _symbol_range(torch.export.load(tmp_path / "own.pt2")) == [(lo, hi)]


def test_a_source_with_a_fixed_batch_stays_fixed(tmp_path):
    """Exported without dynamic_shapes the source runs at one batch size; so does the reduced program
    (a dynamic re-export failed on the specialized batch)."""
    model, X = _cnn()
    src = torch.export.export(model, (X[:4],))
    c = afde_nb.compress(src.module(), 0.0, calibration=X[:4])
    assert c.batch_bounds == {"input": (None, 4, 4)}
    c.save(tmp_path / "r.pt2")  # traced on the two rows kept, repeated to four
    loaded = torch.export.load(tmp_path / "r.pt2")
    assert fixed_batch(loaded) == 4 and not loaded.range_constraints
    with torch.no_grad():
        assert torch.allclose(loaded.module()(X[4:8]), c.model(X[4:8]), atol=1e-6, rtol=0)
    assert not _accepts(loaded.module(), X[:5])
    with pytest.raises(ShapeMismatchError, match=r"'input' has 2 rows.*exactly 4"):
        c.save(tmp_path / "bad.pt2", example_inputs=X[:2])


def test_only_programs_have_batch_bounds():
    model, X = _mlp()
    assert batch_bounds(model) is None and batch_bounds(torch.fx.symbolic_trace(model)) is None
    assert afde_nb.compress(model, 0.0).batch_bounds is None
    both = torch.export.export(model, (X[:4],), dynamic_shapes=({0: torch.export.Dim("b", min=2, max=9)},))
    assert batch_bounds(both) == batch_bounds(both.module()) == {"input": (str(next(iter(both.range_constraints))), 2, 9)}


class Masked(nn.Module):
    """Positional and keyword tensors and a keyword that is no tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.fc, self.out = nn.Linear(5, 8), nn.Linear(8, 2)

    def forward(self, x, mask=None, scale: float = 1.0):
        h = torch.tanh(self.fc(x)) * scale
        return self.out(h * mask if mask is not None else h)


def test_keyword_inputs_and_args_kwargs_export_with_a_dynamic_batch(tmp_path):
    m = Masked().eval()
    x, mask = torch.randn(6, 5), (torch.rand(6, 8) > 0.3).float()
    forms = {"dict": {"x": x, "mask": mask, "scale": 2.0}, "args_kwargs": ((x,), {"mask": mask, "scale": 2.0})}
    for name, example in forms.items():
        path = export_program(m, example, tmp_path / f"{name}.pt2")
        loaded = torch.export.load(path)
        assert len(loaded.range_constraints) == 1, f"{name}: x and mask share one batch dimension"
        module = loaded.module()
        for n in (3, 11):
            xs, ms = torch.randn(n, 5), (torch.rand(n, 8) > 0.3).float()
            with torch.no_grad():
                got = module(xs, mask=ms, scale=2.0) if name == "args_kwargs" else module(x=xs, mask=ms, scale=2.0)
                assert torch.allclose(got, m(xs, mask=ms, scale=2.0), atol=1e-6, rtol=0), f"{name} at batch {n}"
    with pytest.raises(InvalidArgumentError, match=r"does not take the example inputs.*'bogus'"):
        to_program(m, {"x": x, "bogus": mask})
    # a keyword the source program took as a tensor, given as something else
    src = torch.export.export(m, (), {"x": x, "mask": mask}, dynamic_shapes={"x": {0: torch.export.Dim("batch")},
                                                                             "mask": {0: torch.export.Dim("batch")}})
    with pytest.raises(InvalidArgumentError, match=r"'mask' is a list.*takes a tensor"):
        to_program(src.module(), {"x": x, "mask": mask.tolist()}, batch_bounds(src))


def test_a_hugging_face_model_saves_with_dict_calibration(tmp_path):
    """A BERT compressed with {"input_ids", "attention_mask"} calibration: the .pt2 is traced on those
    keywords (a bare TypeError before), and runs at any batch size."""
    from test_transformers import logits, plant, rel, tiny, tokens

    m = tiny("bert")
    plant(m, "bert")
    c = afde_nb.compress(m, 0.0, calibration=tokens(16))
    assert c.params_after < c.params_before and c.batch_bounds is None
    c.save(tmp_path / "bert.pt2")
    module = torch.export.load(tmp_path / "bert.pt2").module()
    for n in (3, 9):
        batch = tokens(n, seed=5)
        with torch.no_grad():
            got = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert rel(logits(c.model, batch), got) < 1e-5, f"batch {n}"
    # a bounded Hugging Face export (keywords, Dim(min=2, max=16)) exported again keeps its bounds; one
    # row of the compression's own is fitted into them
    b = torch.export.Dim("batch", min=2, max=16)
    src = torch.export.export(m, (), tokens(4), dynamic_shapes={"input_ids": {0: b}, "attention_mask": {0: b}})
    bounds = batch_bounds(src)
    assert set(bounds) == {"input_ids", "attention_mask"} and {v[1:] for v in bounds.values()} == {(2, 16)}
    again = to_program(src.module(), tokens(1), bounds, fit=True)
    assert _symbol_range(again) == [(2, 16)]
    assert rel(logits(src.module(), tokens(16, seed=5)), logits(again.module(), tokens(16, seed=5))) < 1e-6
    assert not _accepts(lambda x: again.module()(**x), tokens(17))
    with pytest.raises(ShapeMismatchError, match=r"'input_ids' has 1 rows"):
        to_program(src.module(), tokens(1), bounds)


def test_a_hugging_face_model_that_cannot_export_says_why(tmp_path):
    """GPT-2 returns a cache object unless use_cache=False: torch's reason, and the way out; the
    keyword passes through as given (no dynamic shape) when it is in the calibration dict."""
    from test_transformers import logits, plant, rel, tiny, tokens

    m = tiny("gpt2")
    plant(m, "gpt2")
    c = afde_nb.compress(m, 0.0, calibration=tokens(16))
    with pytest.raises(ExportError, match=r"GPT2LMHeadModel on inputs input_ids \(2, 8\).*DynamicCache.*use_cache=False"):
        c.save(tmp_path / "gpt2.pt2")
    assert not (tmp_path / "gpt2.pt2").exists()
    c.save(tmp_path / "gpt2.pt2", example_inputs={**tokens(2), "use_cache": False})
    module = torch.export.load(tmp_path / "gpt2.pt2").module()
    for n in (3, 9):
        batch = tokens(n, seed=5)
        with torch.no_grad():
            assert rel(logits(c.model, batch), module(**batch, use_cache=False).logits) < 1e-5, f"batch {n}"
