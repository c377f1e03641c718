"""Every ```python block of README.md runs as written (issue 28).

A block is run as it stands in the README, after a setup that gives it what a reader brings: a
model, calibration inputs ``X`` and targets ``y``, a CNN and images, a tiny GPT-2 (random weights,
no download), the files an earlier block wrote. Setups are chosen by what a block uses (a
substring of it); a block that needs something no setup provides fails here, and is to be fixed in
the README, not skipped. Blocks with IPython magics (``%load_ext``) run in IPython's in-process
shell. Each block runs in its own empty folder, so the files it writes go there.
"""
from __future__ import annotations

import os
import re
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)

MLP = """
import numpy as np, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 160), torch.nn.Tanh(), torch.nn.Linear(160, 128), torch.nn.Tanh(),
                            torch.nn.Linear(128, 2)).eval()      # 23,586 parameters: 20,000 is a real budget
X = torch.randn(256, 16)
with torch.no_grad():
    y = model(X) + 0.01 * torch.randn(256, 2)
"""

# (what a block uses, the setup it runs after, slow?)
SETUPS = [
    ("afde_nb.compress(model, eps=0.05)", MLP, False),
    ("compress(cnn,", """
import torch
from conftest import small_cnn
cnn = small_cnn()
images = torch.randn(32, 3, 6, 6)
""", False),
    ("gpt2", """
import torch, transformers
torch.manual_seed(0)
gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()   # tiny, random weights, offline
""", False),  # 2.5 s: not slow
    ('json.load(open("reduced.json"))', MLP + """
import afde_nb
afde_nb.compress(model, eps=0.1).save("reduced.pt")      # what the API block wrote
""", False),
    ("torch.export.save(torch.export.export(model, (x,)", MLP + """
x = X[:4]
""", False),
    ("%load_ext afde_nb", MLP + """
data = (X.numpy(), y.numpy())
""", False),
]


def _setup(block: str) -> tuple[str, bool]:
    found = [(code, slow) for key, code, slow in SETUPS if key in block]
    assert len(found) <= 1, f"more than one setup fits this block:\n{block}"
    return found[0] if found else ("", False)


def _params():
    out = []
    for i, block in enumerate(BLOCKS):
        _, slow = _setup(block)
        first = next(line for line in block.splitlines() if line.strip() and not line.startswith("import"))
        out.append(pytest.param(i, id=f"{i}:{first[:40]}", marks=[pytest.mark.slow] if slow else []))
    return out


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 6
    for key, _, _ in SETUPS:  # every setup still has its block (a block edited away leaves none stale)
        assert any(key in b for b in BLOCKS), key


def _shell():
    """IPython's in-process shell (as tests/test_widgets.py), its profile kept out of the home folder."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    if not InteractiveShell.initialized():
        os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="afde-ipython-"))
        cfg = Config()
        cfg.HistoryManager.enabled = False
        return InteractiveShell.instance(config=cfg)
    return InteractiveShell.instance()


@pytest.mark.parametrize("i", _params())
def test_readme_block_runs_as_written(i, tmp_path, monkeypatch, capsys):
    block = BLOCKS[i]
    setup, _ = _setup(block)
    if "gpt2" in block:
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # conftest's models for the setups
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if re.search(r"^%", block, flags=re.M):  # IPython magics: the in-process shell runs the cell
        pytest.importorskip("ipywidgets")
        shell = _shell()
        shell.user_ns.clear()
        shell.init_user_ns()
        for code in (setup, block):
            result = shell.run_cell(textwrap.dedent(code), store_history=False)
            result.raise_error()
        assert "%afde:" not in capsys.readouterr().err  # the magic prints its errors instead of raising
        return
    ns: dict = {"__name__": "__readme__"}
    exec(compile(setup, "<setup>", "exec"), ns)
    exec(compile(block, f"README.md block {i}", "exec"), ns)


def test_the_api_block_s_claims_hold(tmp_path, monkeypatch):
    """What the API block's comments say, checked on the setup's model: curve() is a sample of the
    path (not every size), the size at an eps off the curve comes from a cut of the same path, and
    the saved files load back."""
    import afde_nb

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(MLP, ns)
    model, X = ns["model"], ns["X"]
    c = afde_nb.compress(model, eps=0.05, calibration=X)
    curve = c.curve()
    assert len(curve) == 64 and all(0 < k <= 1 for _, k in curve)
    assert len(c.path.sequence()) > len(curve)  # the path has more sizes than the curve shows
    at = afde_nb.compress(model, eps=0.07, calibration=X, path=c.path)
    fresh = afde_nb.compress(model, eps=0.07, calibration=X)
    assert at.params_after == fresh.params_after  # the cut of the same path is the full call's answer
    assert [a.tolist() for a in at.partition] == [a.tolist() for a in fresh.partition]
