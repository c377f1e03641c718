"""The result of lumping: which hidden neurons of each layer share a block, and how."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Partition:
    """One canonical label array per hidden layer (block ids numbered by first member), with each
    neuron's orientation in its block (``signs``, +1/-1; None: all +1) and the masses of the merged
    rows (``weights``; None: the first release's rule, see :mod:`afde_nb.reduce`)."""

    labels: tuple[np.ndarray, ...]
    mode: str
    eps: float
    relative: bool
    eps_per_layer: tuple[float, ...]
    method: str = "components"
    signs: tuple[np.ndarray, ...] | None = None
    weights: tuple[np.ndarray, ...] | None = None

    @property
    def num_blocks(self) -> list[int]:
        return [int(l.max()) + 1 if l.size else 0 for l in self.labels]

    @property
    def size(self) -> int:
        """Total number of hidden blocks (lumped hidden neurons)."""
        return sum(self.num_blocks)
