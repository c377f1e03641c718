"""Typed errors: each says what was wrong and what is accepted.

Every error derives from :class:`AfdeError` and from the matching builtin (``TypeError``,
``ValueError``, ``ImportError``, ``FileNotFoundError`` or ``OSError``) so callers can catch either.
"""
from __future__ import annotations


class AfdeError(Exception):
    """Base class of all afde-nb errors."""


class UnsupportedLayerError(AfdeError, TypeError):
    """The model contains a module or operation the encoding does not cover."""


class InvalidWeightsError(AfdeError, ValueError):
    """A weight or bias is NaN or infinite."""


class InvalidEpsError(AfdeError, ValueError):
    """eps is negative, not finite, or not a number."""


class ShapeMismatchError(AfdeError, ValueError):
    """Arrays whose shapes do not fit together (layers, calibration data, labels)."""


class UnsafeFileError(AfdeError, ValueError):
    """A file that afde-nb will not read because reading it would unpickle Python objects or load
    native code (afde-nb never does either)."""


class CorruptFileError(AfdeError, ValueError):
    """A file whose bytes are not what was asked for: corrupt, truncated, of another format, or
    holding other data (not a state_dict of tensors, not one numeric tensor, not a program)."""


class MissingFileError(AfdeError, FileNotFoundError):
    """A file that was named (weights, architecture, calibration data) does not exist."""


class DataNotFoundError(AfdeError, FileNotFoundError):
    """A data set that is read from the data home (``afde_nb.data.data_home``) is not there; the
    message names the data home, ``AFDE_NB_DATA`` and the fetch command."""


class ChecksumError(AfdeError, ValueError):
    """A data file (found in the data home, or downloaded) whose SHA-256 is not the one recorded in
    the package: corrupt, truncated or another file."""


class WriteError(AfdeError, OSError):
    """A file that could not be written (a folder without write permission, a path under a regular
    file, a full disk). The message names the path and the cause; ``path`` is the file asked for.
    Nothing partial is left behind: an earlier file at that path stays as it was."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class DownloadError(AfdeError, OSError):
    """A download that failed or stopped before its end (nothing of it is kept)."""


class InvalidArgumentError(AfdeError, ValueError):
    """An option outside the accepted values (mode, method, budget, target, file format)."""


class InvalidArchitectureError(InvalidArgumentError):
    """An architecture (JSON) that is malformed, of another format, or does not match its weights."""


class BudgetUnreachableError(AfdeError, ValueError):
    """A size or error budget that no partition (or pruning amount) can meet."""


class MissingDependencyError(AfdeError, ImportError):
    """An optional dependency (an extra) is needed for this call and is not installed."""


class ExportError(AfdeError, ValueError):
    """torch.export cannot capture the model with the given example inputs (its reason is in the
    message)."""
