"""compress's progress bar (issue 29): one tqdm bar over the chains' merge paths, the budget split's
candidates and the chains' reductions; shown with progress=True, never with progress=False, by
default only on a terminal and for more than one chain; the CLI's --quiet turns it off. The result
is the same with and without it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.pipeline import compress as pipeline


class TwoBlocks(nn.Module):
    """Two residual GELU MLP blocks: two chains."""

    def __init__(self, d: int = 6, n: int = 12):
        super().__init__()
        self.a1, self.a2 = nn.Linear(d, n), nn.Linear(n, d)
        self.b1, self.b2 = nn.Linear(d, n), nn.Linear(n, d)

    def forward(self, x):
        x = x + self.a2(nn.functional.gelu(self.a1(x)))
        return x + self.b2(nn.functional.gelu(self.b1(x)))


@pytest.fixture
def bars(monkeypatch):
    """Every bar compress makes, writing to a string instead of stderr."""
    made = []
    real = pipeline.progress_bar

    def spy(progress, total, chains):
        bar = real(progress, total, chains)
        bar.shown = not bar.disable  # close() disables it
        made.append(bar)
        return bar

    monkeypatch.setattr(pipeline, "progress_bar", spy)
    return made


def model_and_x():
    torch.manual_seed(0)
    return TwoBlocks().eval(), torch.randn(64, 6, generator=torch.Generator().manual_seed(1))


def test_progress_true_counts_every_step(bars):
    m, x = model_and_x()
    c = afde_nb.compress(m, target_params=150, calibration=x, progress=True)
    (bar,) = bars
    assert bar.shown
    # 2 merge paths + the budget split + 2 reductions, and nothing else
    assert bar.n > 4 and bar.n == bar.total
    ref = afde_nb.compress(m, target_params=150, calibration=x, progress=False)
    assert [p.tolist() for p in c.partition] == [p.tolist() for p in ref.partition]
    assert not bars[1].shown


def test_default_is_off_without_a_terminal_and_for_one_step(bars, capsys):
    m, x = model_and_x()
    afde_nb.compress(m, 0.1, calibration=x)  # pytest's stderr is no terminal
    assert not bars[-1].shown
    stack = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    afde_nb.compress(stack, 0.1)
    assert not bars[-1].shown  # one chain, and no terminal
    assert pipeline.progress_bar(None, 5, 1).disable is True  # one chain: never by default
    assert pipeline.progress_bar(None, 5, 2).disable is not False  # several: tqdm decides (no terminal here)
    assert "afde compress" not in capsys.readouterr().err


def test_progress_bar_text(monkeypatch):
    """The bar writes to stderr only when asked (tqdm's own output, captured here)."""
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    m, x = model_and_x()
    afde_nb.compress(m, 0.1, calibration=x, progress=True)
    assert "afde compress" in buf.getvalue()
    buf.truncate(0)
    buf.seek(0)
    afde_nb.compress(m, 0.1, calibration=x, progress=False)
    assert buf.getvalue() == ""


def test_cli_quiet(tmp_path, monkeypatch):
    from afde_nb.ui import cli

    args = cli.parser().parse_args(["compress", "m.pt", "--quiet"])
    assert args.quiet
    assert not cli.parser().parse_args(["compress", "m.pt"]).quiet
    seen = {}

    def fake(model, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "compress", fake)
    stack = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    c = afde_nb.compress(stack, 0.0, progress=False)
    c.save(tmp_path / "m.pt")
    for flags, want in (([], None), (["--quiet"], False)):
        seen.clear()
        with pytest.raises(SystemExit):
            cli.main(["compress", str(tmp_path / "m.pt"), *flags])
        assert seen["progress"] is want
