"""afde-nb: compress trained networks by approximate differential equivalence (eps-lumping).

    >>> import afde_nb
    >>> c = afde_nb.compress(model, eps=0.05, mode="backward")
    >>> c.model          # a plain torch.nn.Sequential, smaller and dense
    >>> c.save("reduced.pt")
"""
from __future__ import annotations

from .adapters import to_network, to_torch
from .compress import Compression, LayerSummary, compress
from .encode import PolyODE, encode
from .errors import (AfdeError, InvalidEpsError, InvalidWeightsError, ShapeMismatchError, UnsafeFileError,
                     UnsupportedLayerError)
from .lump import Partition, lump
from .magics import load_ipython_extension, unload_ipython_extension
from .network import Layer, Network
from .reduce import reduce
from .serialize import load_model, load_state_dict, save_model

__version__ = "0.1.0"

__all__ = [
    "AfdeError", "Compression", "InvalidEpsError", "InvalidWeightsError", "Layer", "LayerSummary", "Network",
    "Partition", "PolyODE", "ShapeMismatchError", "UnsafeFileError", "UnsupportedLayerError", "compress",
    "encode", "load_ipython_extension", "load_model", "load_state_dict", "lump", "reduce", "save_model",
    "to_network", "to_torch", "unload_ipython_extension", "Panel",
]


def __getattr__(name: str):
    # the panel needs ipywidgets (the "notebook" extra); import it only when asked for
    if name == "Panel":
        from .widgets import Panel

        return Panel
    raise AttributeError(f"module 'afde_nb' has no attribute {name!r}")
