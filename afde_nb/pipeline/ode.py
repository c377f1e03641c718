"""The polynomial ODE of a torch model: the method's definition (method.md §2), for export in
ERODE's syntax and for the reference tests."""
from __future__ import annotations

from torch import nn

from ..core.encode import PolyODE, encode_network
from ..core.network import Network
from ..models.stack import to_network


def encode(model: nn.Module | Network, kind: str = "cascade", max_terms: int = 200_000) -> PolyODE:
    """Encode ``model`` (a plain stack, or its :class:`~afde_nb.core.network.Network`) as a
    polynomial ODE; ``kind`` is ``"cascade"`` or ``"homotopy"``."""
    return encode_network(model if isinstance(model, Network) else to_network(model), kind, max_terms)
