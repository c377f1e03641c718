"""Notebook widgets (ipywidgets 8): :class:`Panel`, an interactive view of ``compress()``.

    >>> from afde_nb.ui.widgets import Panel
    >>> Panel(model, data)          # eps slider, mode toggle, figures, merges, trade-off, export

Three layers: :class:`~afde_nb.ui.widgets.state.PanelState` (model, data, settings, compression,
metrics, eps path; plain Python), :mod:`~afde_nb.ui.widgets.render` (HTML/SVG strings from plain
data) and :class:`Panel` (ipywidgets wired to the two). Only ``Panel`` needs the ``notebook`` extra
(ipywidgets, matplotlib); it is imported when first asked for.
"""
from __future__ import annotations

from . import render
from .state import PanelState

__all__ = ["Panel", "PanelState", "render"]


def __getattr__(name: str):
    if name == "Panel":  # needs ipywidgets
        from .panel import Panel

        return Panel
    raise AttributeError(f"module 'afde_nb.ui.widgets' has no attribute {name!r}")
