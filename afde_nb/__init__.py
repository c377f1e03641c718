"""afde-nb: compress trained networks by approximate differential equivalence (eps-lumping).

    >>> import afde_nb
    >>> c = afde_nb.compress(model, eps=0.05, mode="backward")
    >>> c.model          # a plain torch.nn.Sequential, smaller and dense
    >>> c.save("reduced.pt")
"""
from __future__ import annotations

__version__ = "0.1.0"  # the one definition: pyproject.toml reads it from here

try:
    from . import _core  # noqa: F401  the compiled C++ engine
except ImportError as _exc:
    import glob as _glob
    import os as _os

    _here = __path__[0]
    _what = (f"the engine in {_here} failed to load ({_exc})" if _glob.glob(_os.path.join(_here, "_core*"))
             else f"{_here} has no built engine (a source checkout?)")
    raise ImportError(
        f"afde_nb cannot import its compiled C++ engine (afde_nb._core): {_what}. Install the package "
        "(pip install .) and run from another directory, so that the installed copy is imported, or make an "
        "editable install of the checkout (pip install -e .); both build the engine (needs a C++17 compiler)."
    ) from None

from .models.stack import to_network, to_torch
from .pipeline.compress import Compression, LayerSummary, compress
from .core.encode import PolyODE
from .pipeline.ode import encode
from .errors import (AfdeError, CorruptFileError, DataNotFoundError, InvalidEpsError, InvalidWeightsError,
                     ShapeMismatchError, UnsafeFileError, UnsupportedLayerError)
from .core.lump import Partition, lump
from .ui.magics import load_ipython_extension, unload_ipython_extension
from .core.network import Layer, Network
from .core.reduce import reduce
from .models.export import load_model
from .models.serialize import load_state_dict, save_model

__all__ = [
    "AfdeError", "Compression", "CorruptFileError", "DataNotFoundError", "InvalidEpsError", "InvalidWeightsError", "Layer", "LayerSummary", "Network",
    "Partition", "PolyODE", "ShapeMismatchError", "UnsafeFileError", "UnsupportedLayerError", "compress",
    "encode", "load_ipython_extension", "load_model", "load_state_dict", "lump", "reduce", "save_model",
    "to_network", "to_torch", "unload_ipython_extension", "Panel",
]


def __getattr__(name: str):
    # the panel needs ipywidgets (the "notebook" extra); import it only when asked for
    if name == "Panel":
        from .ui.widgets import Panel

        return Panel
    raise AttributeError(f"module 'afde_nb' has no attribute {name!r}")
