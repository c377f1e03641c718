"""The data home: data sets the package does not ship, read from a folder outside it.

``data_home()`` is ``$AFDE_NB_DATA`` if set, else ``~/.cache/afde-nb``; a ``data_home`` argument
overrides both. Each data set has its own sub-folder (``<data home>/casp/CASP.csv``, or the same
file gzipped as ``CASP.csv.gz``), and its file is checked against the SHA-256 of the uncompressed
file recorded here before a single row is used, the way scikit-learn's ``fetch_*`` and torchvision's
data sets find theirs. Nothing is ever substituted: a missing file is a
:class:`~afde_nb.errors.DataNotFoundError` that says where it was looked for and how to get it
(``afde data fetch NAME``, :func:`afde_nb.data.fetch.fetch`).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, DataNotFoundError, InvalidArgumentError
from .public import _subsample  # one subsampling rule for every public set

ENV = "AFDE_NB_DATA"


@dataclass(frozen=True)
class HomeData:
    """A data set read from the data home: ``<home>/folder/filename`` (or ``filename + ".gz"``),
    whose uncompressed bytes have SHA-256 ``sha256``; the publisher distributes it as member
    ``member`` of the zip at ``url``."""

    folder: str
    filename: str
    sha256: str
    url: str
    member: str
    title: str
    credit: str


HOME = {
    "protein": HomeData(
        folder="casp", filename="CASP.csv",
        sha256="712d2759f8113622a3ba93a47e451397147df946111f6ffdd8c655385d564aef",
        url="https://archive.ics.uci.edu/static/public/265/"
            "physicochemical+properties+of+protein+tertiary+structure.zip",
        member="CASP.csv",
        title="Physicochemical Properties of Protein Tertiary Structure",
        credit="Rana, P. (2013). Physicochemical Properties of Protein Tertiary Structure [Dataset]. "
               "UCI Machine Learning Repository. https://doi.org/10.24432/C5QW3H"),
}

FEATURES = {"protein": tuple(f"F{k}" for k in range(1, 10))}
TARGETS = {"protein": ("RMSD",)}


def data_home(home: str | os.PathLike | None = None) -> Path:
    """The folder data sets are read from and fetched into: ``home`` if given, else
    ``$AFDE_NB_DATA`` if set (and not empty), else ``~/.cache/afde-nb``; ``~`` is expanded, the
    folder need not exist."""
    chosen = home if home is not None else os.environ.get(ENV) or Path.home() / ".cache" / "afde-nb"
    return Path(chosen).expanduser()


def spec(name: str) -> HomeData:
    """The data-home entry of ``name``."""
    if name not in HOME:
        raise InvalidArgumentError(f"{name!r} is not read from the data home; those that are: {', '.join(HOME)}")
    return HOME[name]


def candidates(name: str, home: str | os.PathLike | None = None) -> list[Path]:
    """Where ``name``'s file is looked for, in order: the gzipped file, then the plain one."""
    s = spec(name)
    folder = data_home(home) / s.folder
    return [folder / (s.filename + ".gz"), folder / s.filename]


def _where_from(home: str | os.PathLike | None) -> str:
    if home is not None:
        return "the data_home argument"
    return f"${ENV}" if os.environ.get(ENV) else f"the default; ${ENV} is not set"


def locate(name: str, home: str | os.PathLike | None = None) -> Path:
    """The first of :func:`candidates` that exists, else a :class:`DataNotFoundError` naming the
    data home, ``AFDE_NB_DATA`` and the fetch command."""
    paths = candidates(name, home)
    for p in paths:
        if p.is_file():
            return p
    s = spec(name)
    raise DataNotFoundError(
        f"data set {name!r} ({s.title}) is not in the data home {data_home(home)} ({_where_from(home)}): "
        f"looked for {' and '.join(map(str, paths))}. Point {ENV} (or data_home=) at a folder holding "
        f"{s.folder}/{s.filename} or {s.folder}/{s.filename}.gz, or download it from UCI with "
        f"`afde data fetch {name}` (Python: afde_nb.data.load({name!r}, download=True))")


def read_checked(name: str, home: str | os.PathLike | None = None) -> tuple[bytes, Path]:
    """The uncompressed bytes of ``name``'s file in the data home and its path, after checking
    their SHA-256 against the one recorded in ``HOME`` (:class:`ChecksumError` if it differs)."""
    s = spec(name)
    path = locate(name, home)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ChecksumError(f"{path} is not a readable gzip file ({exc}); replace it with UCI's "
                            f"{s.filename}, gzipped, or delete it and run `afde data fetch {name}`") from exc
    got = hashlib.sha256(raw).hexdigest()
    if got != s.sha256:
        raise ChecksumError(f"{path}: SHA-256 of the uncompressed file is {got}, expected {s.sha256} "
                            f"({s.title} as UCI distributes it); replace it with UCI's {s.filename}, or "
                            f"delete it and run `afde data fetch {name}`")
    return raw, path


def protein(n: int | None = None, seed: int = 0, home: str | os.PathLike | None = None
            ) -> tuple[np.ndarray, np.ndarray, Path]:
    """UCI Physicochemical Properties of Protein Tertiary Structure (P. Rana, 2013; 45,730 decoys
    from CASP 5-9): the target ``RMSD`` (angstrom) from nine physicochemical features ``F1`` ..
    ``F9``, the file's columns in its order, read from the data home and checked. Returns
    ``(X, y, path)``; ``n`` draws a uniform subsample as for the shipped sets."""
    raw, path = read_checked("protein", home)
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, ndmin=2)
    X, y = _subsample(table[:, 1:], table[:, 0], n, seed)
    return X, y, path
