"""Download a data-home data set from its publisher (standard library ``urllib`` and a tqdm bar).

The download goes to a temporary file in the data set's own folder, the member is extracted to
another one there while its SHA-256 is computed, and only a file whose SHA-256 is the one recorded
in :data:`afde_nb.data.home.HOME` is moved into place, with ``os.replace`` (atomic within one file
system). Whatever happens (a wrong checksum, a dropped connection, Ctrl-C), the temporary files are
removed, so a partial download never stays behind as a valid-looking file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from ..errors import ChecksumError, DataNotFoundError, DownloadError
from .home import data_home, read_checked, spec

CHUNK = 1 << 16


def fetch(name: str, home: str | os.PathLike | None = None, *, url: str | None = None,
          progress: bool = True, timeout: float = 60.0) -> Path:
    """Download data set ``name`` (``afde_nb.data.home.HOME``) into the data home
    (:func:`afde_nb.data.home.data_home`) and return the path of its checked file. A copy that is
    already there and passes the checksum is kept and nothing is downloaded.

    ``url``: the publisher's zip (default: UCI's address in ``HOME``); ``progress``: a tqdm bar on
    stderr. Raises :class:`DownloadError` when the transfer fails or stops early and
    :class:`ChecksumError` when what arrived is not the recorded file; in both cases no file is
    left in the data home. A copy there that fails its checksum is a :class:`ChecksumError` too:
    it is the user's file, so it is reported, never overwritten."""
    s = spec(name)
    try:
        return read_checked(name, home)[1]
    except DataNotFoundError:
        pass
    url = url or s.url
    folder = data_home(home) / s.folder
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        archive = _temp(folder, s.filename + ".zip", temps)
        _download(url, archive, timeout, progress, desc=f"{name}: {s.filename}")
        checked = _temp(folder, s.filename, temps)
        got = _extract(archive, s.member, checked, url)
        if got != s.sha256:
            raise ChecksumError(f"the download from {url} is not {s.title} as recorded: SHA-256 of "
                                f"{s.member} is {got}, expected {s.sha256}; nothing was kept in {folder}")
        target = folder / s.filename
        os.chmod(checked, 0o644)  # mkstemp's files are private; the data are not
        os.replace(checked, target)
        return target
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def _temp(folder: Path, name: str, temps: list[Path]) -> Path:
    """A new empty file beside the target (so ``os.replace`` stays on one file system), named so
    that the loader never mistakes it for the data."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    os.close(fd)
    temps.append(Path(path))
    return Path(path)


def _download(url: str, path: Path, timeout: float, progress: bool, desc: str) -> None:
    """Stream ``url`` into ``path``; a body shorter than its Content-Length is an error."""
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, path.open("wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      disable=not progress) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            if total is not None and done != total:
                raise DownloadError(f"the download from {url} stopped after {done} of {total} bytes; "
                                    "nothing was kept")
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise DownloadError(f"downloading {url} failed ({type(exc).__name__}: {exc}); nothing was kept; "
                            "try again, or put the file into the data home yourself") from exc


def _extract(archive: Path, member: str, out: Path, url: str) -> str:
    """Copy the zip member named ``member`` (at any depth) to ``out``; its SHA-256 (hex)."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as z:
            names = [i for i in z.namelist() if i.rsplit("/", 1)[-1] == member]
            if not names:
                raise ChecksumError(f"the zip from {url} holds no {member} (it holds {z.namelist()}); "
                                    "nothing was kept")
            with z.open(names[0]) as src, out.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ChecksumError(f"the download from {url} is not a readable zip ({type(exc).__name__}: {exc}); "
                            "nothing was kept") from exc
    return digest.hexdigest()
