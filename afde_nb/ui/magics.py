"""IPython extension: ``%load_ext afde_nb`` then ``%afde model [X [y]]`` opens a :class:`~afde_nb.ui.widgets.Panel`.

    %afde model                      # no data: sizes and merges only
    %afde model X_test y_test        # test error, trade-off curve (X also calibrates)
    %afde model data                 # an afde_nb.data.Dataset: test split, training split calibrates
    %afde model data --eps 0.5 --mode forward --absolute --no-tradeoff
    panel = %afde model data         # keep the panel to read panel.compression, panel.figures

Names are looked up in the notebook's namespace (attribute paths such as ``data.X_test`` work too).
A name that does not exist, or an object that is not a supported model, is reported in one line
instead of a traceback. ``%unload_ext afde_nb`` removes the magic and closes the panels it opened.
"""
from __future__ import annotations

import shlex
import sys
import weakref

_PANELS: "weakref.WeakSet" = weakref.WeakSet()
_MAGIC = "afde"
USAGE = "usage: %afde MODEL [X [Y]] [--eps E] [--mode backward|forward] [--absolute] [--no-tradeoff]"


class AfdeMagicError(Exception):
    """A problem with the ``%afde`` line (reported as one line, not raised)."""


def _lookup(name: str, ns: dict):
    """``name`` or a dotted attribute path (``data.X_test``) or ``name[...]`` from the namespace."""
    head = name.split(".", 1)[0].split("[", 1)[0]
    if not head.isidentifier():
        raise AfdeMagicError(f"{name!r} is not a variable name")
    if head not in ns:
        raise AfdeMagicError(f"no variable named {head!r} in the notebook (define it first, e.g. "
                             f"{head} = ...)")
    if name == head:
        return ns[name]
    try:
        return eval(name, {}, ns)  # attribute paths and indexing of the user's own objects
    except Exception as exc:  # noqa: BLE001 - reported to the user
        raise AfdeMagicError(f"cannot evaluate {name!r}: {type(exc).__name__}: {exc}") from exc


def parse_line(line: str) -> tuple[list[str], dict]:
    """``%afde`` arguments -> (names, options)."""
    try:
        toks = shlex.split(line)
    except ValueError as exc:
        raise AfdeMagicError(f"cannot read the line ({exc}); {USAGE}") from exc
    names, opts = [], {}
    it = iter(toks)
    for t in it:
        if t in ("--eps", "--mode"):
            v = next(it, None)
            if v is None:
                raise AfdeMagicError(f"{t} needs a value; {USAGE}")
            if t == "--eps":
                try:
                    opts["eps"] = float(v)
                except ValueError:
                    raise AfdeMagicError(f"--eps must be a number, got {v!r}") from None
            else:
                if v not in ("backward", "forward"):
                    raise AfdeMagicError(f"--mode must be backward or forward, got {v!r}")
                opts["mode"] = v
        elif t.startswith("--eps="):
            return parse_line(line.replace("--eps=", "--eps ", 1))
        elif t.startswith("--mode="):
            return parse_line(line.replace("--mode=", "--mode ", 1))
        elif t == "--absolute":
            opts["relative"] = False
        elif t == "--relative":
            opts["relative"] = True
        elif t == "--no-tradeoff":
            opts["tradeoff"] = False
        elif t in ("-h", "--help"):
            raise AfdeMagicError(USAGE)
        elif t.startswith("-"):
            raise AfdeMagicError(f"unknown option {t!r}; {USAGE}")
        else:
            names.append(t)
    if not 1 <= len(names) <= 3:
        raise AfdeMagicError(f"expected a model and optionally X and y, got {len(names)} names; {USAGE}")
    return names, opts


def open_panel(line: str, ns: dict):
    """What ``%afde`` does: the Panel, or None after printing why not."""
    try:
        names, opts = parse_line(line)
        model = _lookup(names[0], ns)
        args = [_lookup(n, ns) for n in names[1:]]
        import torch

        if not isinstance(model, torch.nn.Module):
            raise AfdeMagicError(f"{names[0]!r} is a {type(model).__name__}, not a torch model "
                                 "(a torch.nn.Module: a Linear stack, or any model with lumpable groups inside)")
        if not args:
            data = None
        elif len(args) == 1:
            data = args[0] if hasattr(args[0], "X_test") or isinstance(args[0], (tuple, list)) else (args[0],)
        else:
            data = (args[0], args[1])
        from .widgets import Panel

        panel = Panel(model, data, title=names[0], **opts)
    except AfdeMagicError as exc:
        print(f"%afde: {exc}", file=sys.stderr)
        return None
    except ImportError as exc:
        print(f"%afde: the panel needs ipywidgets and matplotlib (pip install \".[notebook]\" in the afde-nb "
              f"checkout): {exc}", file=sys.stderr)
        return None
    if panel.compression is None and not panel.loading:  # in a kernel it fills in (and shows errors) as it runs
        print(f"%afde: cannot compress {names[0]!r}: {panel.errors[-1] if panel.errors else 'unknown error'}",
              file=sys.stderr)
        panel.close()
        return None
    _PANELS.add(panel)
    return panel


def _magic_function(ip):
    def afde(line: str = ""):
        """%afde MODEL [X [Y]]: an interactive afde-nb compression panel (see afde_nb.ui.magics)."""
        return open_panel(line, ip.user_ns)

    afde.__doc__ = (afde.__doc__ or "") + "\n\n" + (__doc__ or "")
    return afde


def load_ipython_extension(ip) -> None:
    """``%load_ext afde_nb``: register the ``%afde`` line magic."""
    ip.register_magic_function(_magic_function(ip), magic_kind="line", magic_name=_MAGIC)


def unload_ipython_extension(ip) -> None:
    """``%unload_ext afde_nb``: remove ``%afde`` and close the panels it opened."""
    ip.magics_manager.magics["line"].pop(_MAGIC, None)
    for panel in list(_PANELS):
        try:
            panel.close()
        except Exception:  # noqa: BLE001 - a panel whose comm is gone already
            pass
    _PANELS.clear()
