"""Typed errors: each says what was wrong and what is accepted.

Every error derives from :class:`AfdeError` and from the matching builtin (``TypeError``,
``ValueError``, ``ImportError`` or ``FileNotFoundError``) so callers can catch either.
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
    """A file that afde-nb cannot or will not read: not a plain tensor state_dict or tensor (afde-nb
    never unpickles objects), corrupt, truncated, a directory, or unreadable."""


class MissingFileError(AfdeError, FileNotFoundError):
    """A file that was named (weights, architecture, calibration data) does not exist."""


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
