"""Text corpora for character-level language models, read from the data home and never shipped.

``load_text("tinyshakespeare")`` reads ``<data home>/tinyshakespeare/input.txt`` (or the same file
gzipped, ``input.txt.gz``; the data home is :func:`afde_nb.data.data_home`: ``data_home=``, else
``$AFDE_NB_DATA``, else ``~/.cache/afde-nb``) and checks the SHA-256 of the uncompressed bytes
against the one recorded here before a character is used, as ``load("protein")`` does for CASP.
Nothing is substituted: a missing file is a :class:`~afde_nb.errors.DataNotFoundError` naming the
data home, the variable and where to get the file; a different file is a
:class:`~afde_nb.errors.ChecksumError`.

The split is the usual one for Tiny Shakespeare: the first 90 % of the characters train, the last
10 % validate (no shuffling: the validation text is a contiguous stretch of plays the model never
saw). The vocabulary is the sorted set of characters of the whole text, so both splits encode.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, DataNotFoundError, InvalidArgumentError
from .home import ENV, HomeData, data_home

TEXTS = {
    "tinyshakespeare": HomeData(
        folder="tinyshakespeare", filename="input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a/data/tinyshakespeare/input.txt",
        member="input.txt",
        title="Tiny Shakespeare (1,115,394 characters of Shakespeare's plays)",
        credit="data/tinyshakespeare/input.txt of karpathy/char-rnn (commit 6f9487a, MIT licence); "
               "the plays are in the public domain"),
}
#: fraction of the characters, from the start, in the training split
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class Text:
    """A corpus split into a training and a validation text, with its character vocabulary.

    ``encode(s)`` maps characters to their indices in ``vocab`` (int64); ``decode`` maps back."""

    name: str
    train: str
    val: str
    vocab: str
    path: str
    sha256: str
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The whole corpus (training text, then validation text)."""
        return self.train + self.val

    def encode(self, s: str) -> np.ndarray:
        keys = _code_points(self.vocab)  # sorted: the vocabulary is in code-point order
        codes = _code_points(s)
        ids = np.searchsorted(keys, codes)
        if ids.size and (ids.max() >= len(keys) or (keys[np.minimum(ids, len(keys) - 1)] != codes).any()):
            raise InvalidArgumentError(f"characters {sorted(set(s) - set(self.vocab))!r} are not in "
                                       f"{self.name}'s vocabulary")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel())

    def __repr__(self) -> str:
        return (f"Text({self.name!r}, {len(self.vocab)} characters, train/val = {len(self.train):,}/"
                f"{len(self.val):,})")


def candidates(name: str, home: str | os.PathLike | None = None) -> list[Path]:
    """Where corpus ``name`` is looked for, in order: the gzipped file, then the plain one."""
    s = _spec(name)
    folder = data_home(home) / s.folder
    return [folder / (s.filename + ".gz"), folder / s.filename]


def read_checked(name: str, home: str | os.PathLike | None = None) -> tuple[bytes, Path]:
    """The uncompressed bytes of corpus ``name`` in the data home and its path, after checking
    their SHA-256 against :data:`TEXTS` (:class:`ChecksumError` if it differs,
    :class:`DataNotFoundError` if neither file is there)."""
    s = _spec(name)
    paths = candidates(name, home)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        where = "the data_home argument" if home is not None else (
            f"${ENV}" if os.environ.get(ENV) else f"the default; ${ENV} is not set")
        raise DataNotFoundError(
            f"text {name!r} ({s.title}) is not in the data home {data_home(home)} ({where}): looked for "
            f"{' and '.join(map(str, paths))}. Point {ENV} (or data_home=) at a folder holding "
            f"{s.folder}/{s.filename} or {s.folder}/{s.filename}.gz; the file is {s.url}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ChecksumError(f"{path} is not a readable gzip file ({exc}); replace it with {s.url}, "
                            "gzipped or not") from exc
    got = hashlib.sha256(raw).hexdigest()
    if got != s.sha256:
        raise ChecksumError(f"{path}: SHA-256 of the uncompressed file is {got}, expected {s.sha256} "
                            f"({s.title}); replace it with {s.url}")
    return raw, path


def load_text(name: str = "tinyshakespeare", *, data_home: str | os.PathLike | None = None) -> Text:
    """Corpus ``name`` (see :data:`TEXTS`) from the data home, checked, split 90/10 by position."""
    raw, path = read_checked(name, data_home)
    text = raw.decode("utf-8")
    cut = int(TRAIN_FRACTION * len(text))
    s = TEXTS[name]
    return Text(name, text[:cut], text[cut:], "".join(sorted(set(text))), str(path), s.sha256,
                source=f"{s.title}, read from the data home, SHA-256 checked. Credit: {s.credit}")


def _code_points(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)


def _spec(name: str) -> HomeData:
    if name not in TEXTS:
        raise InvalidArgumentError(f"unknown text {name!r}; available: {', '.join(TEXTS)}")
    return TEXTS[name]
