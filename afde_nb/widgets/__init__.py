"""Notebook widgets (ipywidgets 8): :class:`Panel`, an interactive view of ``compress()``.

    >>> from afde_nb.widgets import Panel
    >>> Panel(model, data)          # eps slider, mode toggle, figures, merges, trade-off, export

Needs the ``notebook`` extra (ipywidgets, matplotlib). The panel calls the public API only.
"""
from __future__ import annotations

from .panel import Panel

__all__ = ["Panel"]
