"""The notebook panel and the %afde magic, without a browser: widget state against compress()."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ipywidgets", minversion="8")
pytest.importorskip("matplotlib")

import afde_nb  # noqa: E402
from afde_nb import magics  # noqa: E402
from afde_nb.train import mse, r2  # noqa: E402
from afde_nb.widgets import Panel  # noqa: E402
from afde_nb.widgets.panel import PALETTE, SINGLETON  # noqa: E402

from conftest import assert_unchanged, snapshot  # noqa: E402

EPS = (0.0, 0.2, 0.5, 0.8, 1.0, 1.5, 3.0)


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(4, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():  # a few duplicated neurons, so that small eps already merges something
        m[0].weight[5:8] = m[0].weight[4]
        m[0].bias[5:8] = m[0].bias[4]
    return m.eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], np.tanh(X[:, 3])], 1).astype(np.float32)
    return X, y


def _check_matches(p: Panel, model, X, y, eps, mode, relative=True, data_aware=False):
    c = afde_nb.compress(model, eps, mode=mode, relative=relative, calibration=X, data_aware=data_aware)
    pc = p.compression
    assert pc is not None, p.errors
    assert (pc.eps, pc.mode, pc.relative) == (c.eps, c.mode, c.relative)
    assert len(pc.partition) == len(c.partition)
    for a, b in zip(pc.partition, c.partition):
        np.testing.assert_array_equal(a, b)
    f = p.figures
    assert (f["eps"], f["mode"], f["relative"], f["data_aware"]) == (eps, mode, relative, data_aware)
    assert f["params_before"] == c.params_before and f["params_after"] == c.params_after
    assert f["kept"] == c.kept
    assert f["widths_before"] == [s.neurons_before for s in c.layers]
    assert f["widths_after"] == [s.neurons_after for s in c.layers]
    assert f["mse"] == mse(c.model, X, y) and f["r2"] == r2(c.model, X, y)
    assert f["mse_before"] == mse(model, X, y)
    assert f["calib_max_abs"] == c.calibration_error["max_abs"]
    # the merge view: numbers and the strip of each layer
    assert [m["after"] for m in p.merges] == [s.neurons_after for s in c.layers]
    assert [m["largest"] for m in p.merges] == [s.largest_block for s in c.layers]
    for m, lab in zip(p.merges, c.partition):
        assert m["labels"] == lab.tolist()
        assert m["block_sizes"] == sorted(np.bincount(lab).tolist(), reverse=True)
    html = p.merges_html.value
    for s in c.layers:
        assert f"{s.neurons_before} &rarr; <b>{s.neurons_after}</b>" in html
    strips = re.findall(r"<svg class='afde-strip'.*?</svg>", html)
    assert len(strips) == len(c.partition)
    for svg, lab in zip(strips, c.partition):
        fills = re.findall(r"fill='(#[0-9a-f]{6})'", svg)
        assert len(fills) == lab.size
        sizes = np.bincount(lab)
        colour_of: dict[int, str] = {}
        for i, b in enumerate(lab.tolist()):
            if sizes[b] == 1:
                assert fills[i] == SINGLETON
            else:  # one colour per merged block
                assert fills[i] != SINGLETON and colour_of.setdefault(b, fills[i]) == fills[i]
        if len(colour_of) <= len(PALETTE):
            assert len(set(colour_of.values())) == len(colour_of)
    assert f"{c.params_after:,}" in p.figures_html.value
    return c


@pytest.mark.parametrize("mode", ["backward", "forward"])
def test_set_eps_matches_compress(model, data, mode):
    X, y = data
    snap = snapshot(model)
    p = Panel(model, (X, y), mode=mode, tradeoff=False)
    seen = set()
    for eps in EPS:
        p.set_eps(eps)
        c = _check_matches(p, model, X, y, eps, mode)
        seen.add(c.params_after)
    assert len(seen) > 2, "the eps grid should reach several sizes"
    assert p.errors == []
    assert_unchanged(model, snap)


def test_widgets_drive_the_compression(model, data):
    X, y = data
    p = Panel(model, (X, y), eps=0.5, tradeoff=False)
    _check_matches(p, model, X, y, 0.5, "backward")
    p.eps_slider.value = 1.5  # what the browser sends when the slider moves
    _check_matches(p, model, X, y, 1.5, "backward")
    p.mode_toggle.value = "forward"
    _check_matches(p, model, X, y, 1.5, "forward")
    p.relative_box.value = False
    _check_matches(p, model, X, y, 1.5, "forward", relative=False)
    p.zero_box.value = True  # exact: nothing lost
    c = _check_matches(p, model, X, y, 0.0, "forward", relative=False)
    assert p.figures["calib_max_abs"] <= 1e-5 and c.params_after <= c.params_before
    p.eps_slider.value = 0.8  # moving the slider leaves the exact setting
    assert not p.zero_box.value
    _check_matches(p, model, X, y, 0.8, "forward", relative=False)
    p.set_eps(50.0)  # off the slider: the range widens
    assert p.eps_slider.max >= np.log10(50)
    _check_matches(p, model, X, y, 50.0, "forward", relative=False)
    p.relative_box.value = True
    p.mode_toggle.value = "backward"
    p.set_eps(0.8)
    assert not p.data_box.disabled  # calibration data (here X) are there
    p.data_box.value = True
    _check_matches(p, model, X, y, 0.8, "backward", data_aware=True)
    assert p.errors == []


def test_data_aware_needs_calibration(model):
    p = Panel(model, None, eps=0.5, tradeoff=False)
    assert p.data_box.disabled
    p.set_data_aware(True)
    assert p.figures["data_aware"] is False and p.errors == []


def _plain_torch(arch_path, weights):
    arch = json.loads(arch_path.read_text())
    m = torch.nn.Sequential(*[getattr(torch.nn, s["type"])(**{k: v for k, v in s.items() if k != "type"})
                              for s in arch["layers"]])
    m.load_state_dict(weights)
    return m.eval()


def test_export_reloads_in_plain_torch(model, data, tmp_path):
    X, y = data
    p = Panel(model, (X, y), eps=1.0, tradeoff=False)
    ref = afde_nb.compress(model, 1.0, mode="backward", relative=True, calibration=X).model
    x = torch.as_tensor(X)
    # through the widgets, as a person would: path, format, button
    p.path_text.value = str(tmp_path / "button" / "small.pt")
    p.export_button.click()
    assert p.errors == []
    pt = tmp_path / "button" / "small.pt"
    assert pt.is_file() and str(pt.resolve()) in p.export_result.value
    plain = _plain_torch(pt.with_suffix(".json"), torch.load(pt, weights_only=True))
    with torch.no_grad():
        assert torch.equal(plain(x), ref(x))
        assert torch.equal(plain(x), p.compression.model(x))
    assert sum(t.numel() for t in plain.state_dict().values()) == p.figures["params_after"]
    # the format dropdown switches the suffix
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    p.format_dd.value = ".safetensors"
    assert p.path_text.value.endswith("small.safetensors")
    written = p.export()
    st = tmp_path / "button" / "small.safetensors"
    assert written[0] == st.resolve() and st.is_file()
    plain = _plain_torch(st.with_suffix(".json"), load_file(str(st)))
    with torch.no_grad():
        assert torch.equal(plain(x), ref(x))


def test_errors_are_shown_not_raised(model, data, tmp_path):
    X, y = data
    for bad in ("not a model", nn.Sequential(nn.Conv1d(1, 1, 1)), nn.Sequential(nn.Linear(4, 3), nn.GELU(),
                                                                                 nn.Linear(3, 1))):
        p = Panel(bad, tradeoff=False)
        assert p.compression is None
        assert p.errors and "UnsupportedLayerError" in p.errors[-1]
        assert "UnsupportedLayerError" in p.error_area.value
        p.set_eps(0.4)  # still no exception
        assert p.export(tmp_path / "x.pt") is None and not (tmp_path / "x.pt").exists()
        assert "nothing to export" in p.error_area.value
    p = Panel(model, (X[:, :3], y), tradeoff=False)  # wrong number of features
    assert p.compression is None and "shape (n, 4)" in p.errors[-1]
    p = Panel(model, (X, y[:10]), tradeoff=False)
    assert p.compression is None and "ValueError" in p.errors[-1]
    p = Panel(model, (X, y), eps=0.5, tradeoff=False)
    before = p.compression
    assert p.set_eps(-1.0) is None and "eps must be" in p.error_area.value
    assert p.compression is before
    p.set_eps(0.7)  # a good value clears the error
    assert p.error_area.value == "" and p.compression.eps == 0.7
    (tmp_path / "afile").write_text("")
    assert p.export(tmp_path / "afile" / "m.pt") is None  # a folder that cannot be made
    assert p.error_area.value and "Error" in p.errors[-1]
    assert p.export(tmp_path / "m.pt", fmt=".onnx") is None and "format must be" in p.errors[-1]
    p = Panel(model, (X, y), mode="sideways", tradeoff=False)
    assert p.compression is not None and p.compression.mode == "backward" and "mode must be" in p.errors[0]
    assert "mode must be" in p.error_area.value
    for bad_eps in (-1, float("nan"), "0.3", None):
        p = Panel(model, (X, y), eps=bad_eps, tradeoff=False)
        assert p.compression is not None and p.compression.eps == 0.3 and "eps must be" in p.error_area.value


def test_float64_model_and_dataset(model):
    from afde_nb.data import Dataset

    m64 = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 1)).double()
    rng = np.random.default_rng(0)
    arr = lambda n, d: rng.normal(size=(n, d)).astype(np.float32)  # noqa: E731
    ds = Dataset("toy", arr(50, 4), arr(50, 1), arr(20, 4), arr(20, 1), arr(30, 4), arr(30, 1))
    p = Panel(m64, ds, eps=0.0, tradeoff=False)
    assert p.errors == [] and p.compression.params_after == p.compression.params_before
    assert p.figures["calib_n"] == 50 and "toy test split" in p.figures_html.value
    p = Panel(model, None, tradeoff=False)  # no data: sizes and merges only
    assert p.errors == [] and "mse" not in p.figures and p.tradeoff_button.disabled


def test_tradeoff_curve(model, data):
    pytest.importorskip("afde_nb.bench")
    X, y = data
    p = Panel(model, (X, y), eps=0.5, tradeoff="auto")
    assert p.errors == []
    methods = {r["method"] for r in p.curve}
    assert {"afde-backward", "magnitude", "wanda"} <= methods
    for r in p.curve:
        assert {"method", "setting", "params", "kept", "mse", "r2"} <= set(r)
    (out,) = p.tradeoff_out.outputs
    assert "image/png" in out["data"]
    assert p.progress.value == p.progress.max and "trade-off curve" in p.status.value
    first_png = out["data"]["image/png"]
    p.set_eps(1.5)  # the current point moves, the curve stays
    assert p.tradeoff_out.outputs[0]["data"]["image/png"] != first_png
    p.mode_toggle.value = "forward"  # auto: the curve follows the mode
    assert {"afde-forward"} <= {r["method"] for r in p.curve}
    assert p.errors == []


# ----------------------------------------------------------------------------- the magic
def _shell():
    """IPython's in-process shell, with its profile and history kept out of the home folder."""
    import os
    import tempfile

    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if not InteractiveShell.initialized():
        os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="afde-ipython-"))
        cfg = Config()
        cfg.HistoryManager.enabled = False
        return InteractiveShell.instance(config=cfg)
    return InteractiveShell.instance()


@pytest.fixture
def ip():
    shell = _shell()
    magics.load_ipython_extension(shell)
    yield shell
    magics.unload_ipython_extension(shell)


def test_magic_opens_panel(ip, model, data, capsys):
    X, y = data
    ip.user_ns.update(net=model, X_t=X, y_t=y, pair=(X, y))
    p = ip.run_line_magic("afde", "net X_t y_t --eps 0.8 --mode forward --no-tradeoff")
    assert isinstance(p, Panel) and p.errors == []
    _check_matches(p, model, X, y, 0.8, "forward")
    p = ip.run_line_magic("afde", "net pair --eps=1.5 --no-tradeoff")
    _check_matches(p, model, X, y, 1.5, "backward")
    p = ip.run_line_magic("afde", "net X_t[:100] --absolute --no-tradeoff")
    assert p.compression.relative is False and "mse" not in p.figures and p.figures["calib_n"] == 100
    p = ip.run_line_magic("afde", "net")
    assert p.compression is not None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("line, message", [
    ("missing", "no variable named 'missing'"),
    ("text", "'text' is a str, not a torch model"),
    ("conv", "cannot compress 'conv': UnsupportedLayerError"),
    ("net X_t nope", "no variable named 'nope'"),
    ("net X_t.nope", "cannot evaluate 'X_t.nope'"),
    ("", "expected a model"),
    ("net --eps", "--eps needs a value"),
    ("net --eps abc", "--eps must be a number"),
    ("net --mode sideways", "--mode must be backward or forward"),
    ("net --frobnicate", "unknown option"),
])
def test_magic_reports_errors(ip, model, data, capsys, line, message):
    ip.user_ns.update(net=model, X_t=data[0], text="hello", conv=nn.Sequential(nn.Conv1d(1, 1, 1)))
    assert ip.run_line_magic("afde", line) is None
    err = capsys.readouterr().err
    assert err.startswith("%afde: ") and message in err and "Traceback" not in err


def test_unload_removes_magic_and_closes_panels(model):
    shell = _shell()
    magics.load_ipython_extension(shell)
    shell.user_ns["net"] = model
    p = shell.run_line_magic("afde", "net --no-tradeoff")
    assert "afde" in shell.magics_manager.magics["line"]
    magics.unload_ipython_extension(shell)
    assert "afde" not in shell.magics_manager.magics["line"]
    assert p.comm is None and p.eps_slider.comm is None  # closed
    magics.load_ipython_extension(shell)  # and loads again
    assert "afde" in shell.magics_manager.magics["line"]
    magics.unload_ipython_extension(shell)


def test_extension_entry_points():
    import afde_nb as pkg

    if hasattr(pkg, "load_ipython_extension"):  # re-exported so that %load_ext afde_nb works
        assert pkg.load_ipython_extension is magics.load_ipython_extension
        assert pkg.unload_ipython_extension is magics.unload_ipython_extension


def test_target_kept_finds_the_eps_compress_finds(model, data):
    X, y = data
    p = Panel(model, (X, y), eps=0.1, tradeoff=False)
    full = p.compression.params_before
    p.set_target_kept(0.6)
    want = afde_nb.compress(model, mode="backward", relative=True, calibration=X, target_params=int(0.6 * full))
    assert p.compression.params_after == want.params_after <= 0.6 * full
    assert p.figures["eps"] == want.eps
    _check_matches(p, model, X, y, want.eps, "backward")
    p.keep_text.value = 30.0
    p.keep_button.click()  # what the browser does
    assert p.compression.params_after <= 0.3 * full
    p.set_target_kept(1.5)
    assert p.errors and "fraction" in p.errors[-1]
