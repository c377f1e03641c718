"""The units of ``afde bench``: one cell is one method at one budget on one trained model.

A cell's key is ``(data set, seed, entry, budget)``: ``entry`` is ``"original"``, an afde-nb entry
(``"afde:backward"``) or a baseline (``"base:kmeans-fold"``), ``budget`` a fraction of the
original's parameters (1.0: the full size). Cells are independent given the model, so any backend
may run them in any order; the journal (``cells.jsonl``, one line per finished cell, appended as
cells finish) makes a run resumable, and :func:`assemble` puts the rows back in the canonical order,
so the points are the same whichever backend ran them.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path

from .tradeoff import afde_cell, baseline_cell, original_row, prepare

Key = tuple  # (dataset, seed, entry, budget fraction)


def cells(profile) -> list[Key]:
    """Every cell of ``profile`` in the canonical order (the order of the rows in points.csv)."""
    fracs = [1.0] + [float(f) for f in profile.kept]
    out: list[Key] = []
    for ds in profile.datasets:
        for seed in profile.seeds:
            out.append((ds, int(seed), "original", 1.0))
            out += [(ds, int(seed), f"afde:{m}", f) for m in profile.modes for f in fracs]
            out += [(ds, int(seed), f"base:{b}", f) for b in profile.baselines for f in fracs]
    return out


def compute(key: Key, data, model, profile) -> list[dict]:
    """The rows of one cell (test data, 512 training inputs as calibration, as the bench defines)."""
    ds, seed, entry, frac = key
    X, y, calib = prepare(data.X_test, data.y_test, data.X_train[:512])
    orig = original_row(model, X, y)
    full = orig["params"]
    budget = full if frac == 1.0 else int(frac * full)
    if entry == "original":
        rows = [orig]
    elif entry.startswith("afde:"):
        rows = afde_cell(model, X, y, calib, entry[5:], budget, profile.variants, full)
    else:
        rows = baseline_cell(model, X, y, calib, entry[5:], budget, profile.variants, full)
    return [dict(r, dataset=ds, seed=seed) for r in rows]


def safe_compute(key: Key, data, model, profile) -> dict:
    """A journal record: the cell's rows, or its error (a failing cell never stops the others)."""
    try:
        return {"key": list(key), "rows": compute(key, data, model, profile), "error": None}
    except Exception as exc:  # noqa: BLE001 - recorded per cell, reported at the end
        return {"key": list(key), "rows": [], "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8)}


class Journal:
    """``cells.jsonl`` in the output folder: one JSON line per finished cell (floats round-trip
    exactly), written and flushed as each cell finishes."""

    def __init__(self, out: Path):
        self.path = Path(out) / "cells.jsonl"
        self.records: dict[Key, dict] = {}
        if self.path.is_file():
            with self.path.open() as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interrupted write: redo that cell
                        continue
                    self.records[tuple(rec["key"])] = rec

    def done(self, key: Key) -> bool:
        rec = self.records.get(tuple(key))
        return rec is not None and rec["error"] is None

    def add(self, rec: dict) -> None:
        self.records[tuple(rec["key"])] = rec
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def failures(self, keys) -> list[dict]:
        return [self.records[k] for k in keys if k in self.records and self.records[k]["error"] is not None]


def assemble(journal: Journal, keys: list[Key]) -> list[dict]:
    """The rows of the finished cells, in the canonical order of ``keys``."""
    rows: list[dict] = []
    for k in keys:
        rec = journal.records.get(tuple(k))
        if rec is not None and rec["error"] is None:
            rows += rec["rows"]
    return rows
