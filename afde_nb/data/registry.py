"""Name -> data set."""
from __future__ import annotations

from .dataset import Dataset, split_standardise
from . import odes

_GENERATED = {
    "glycolysis": (odes.glycolysis, "Sel'kov glycolytic oscillator, simulated with scipy (generated)"),
}
NAMES = tuple(_GENERATED)


def load(name: str, n: int | None = None, seed: int = 0) -> Dataset:
    """A standardised split of data set ``name`` (see ``NAMES``); ``n`` samples where generated."""
    if name not in _GENERATED:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(NAMES)}")
    gen, source = _GENERATED[name]
    X, y = gen(seed=seed) if n is None else gen(n=n, seed=seed)
    return split_standardise(name, X, y, seed=seed, source=source)
