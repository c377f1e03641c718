"""Public regression data sets, read offline from the gzipped CSV files in ``files/``.

Each loader returns ``(X, y)`` as float64 arrays with the columns named in ``FEATURES[name]`` and
``TARGETS[name]``; where the file holds text, it is encoded numerically here (one-hot for
categories; sin/cos pairs for times of day and year, which are periodic). ``files/README.md``
states where every file comes from, its licence and how it was made.

``n``: all rows when None, else a uniform random subsample of ``n`` rows drawn without
replacement with ``np.random.default_rng(seed)`` (n larger than the file is an error).
"""
from __future__ import annotations

import gzip
import os

import numpy as np
from ..errors import InvalidArgumentError

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")

ABALONE_SEX = ("M", "F", "I")
METRO_WEATHER = ("Clear", "Clouds", "Drizzle", "Fog", "Haze", "Mist", "Rain", "Smoke", "Snow",
                 "Thunderstorm")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CONCRETE = ("cement", "blast_furnace_slag", "fly_ash", "water", "superplasticizer",
             "coarse_aggregate", "fine_aggregate", "age")

FEATURES = {
    "abalone": tuple(f"sex_{s}" for s in ABALONE_SEX) + (
        "length", "diameter", "height", "whole_weight", "shucked_weight", "viscera_weight",
        "shell_weight"),
    "hepc": ("Global_reactive_power", "Voltage", "Global_intensity", "Sub_metering_1",
             "Sub_metering_2", "Sub_metering_3", "time_sin", "time_cos", "weekday_sin",
             "weekday_cos", "yearday_sin", "yearday_cos"),
    "metro": ("temp", "rain_1h", "clouds_all") + tuple(f"weather_{w}" for w in METRO_WEATHER)
             + ("hour_sin", "hour_cos") + tuple(f"day_{d}" for d in WEEKDAYS)
             + ("yearday_sin", "yearday_cos"),
    "concrete": _CONCRETE,
}
TARGETS = {"abalone": ("rings",), "hepc": ("Global_active_power",),
           "metro": ("traffic_volume",), "concrete": ("compressive_strength",)}


def read_csv(filename: str, text: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Columns of ``files/filename``, a gzipped CSV with a header line: those named in ``text`` as
    strings, all others as float64."""
    path = os.path.join(FILES, filename)
    with gzip.open(path, "rt") as f:
        header = f.readline().strip().split(",")
    cols = {}
    for as_text in (False, True):
        idx = [j for j, h in enumerate(header) if (h in text) == as_text]
        if idx:
            with gzip.open(path, "rt") as f:
                block = np.loadtxt(f, delimiter=",", skiprows=1, usecols=idx, ndmin=2,
                                   dtype=str if as_text else np.float64)
            cols.update({header[j]: block[:, k] for k, j in enumerate(idx)})
    return {h: cols[h] for h in header}


def _one_hot(col: np.ndarray, levels: tuple[str, ...]) -> np.ndarray:
    unknown = set(col) - set(levels)
    if unknown:
        raise InvalidArgumentError(f"unexpected categories {sorted(unknown)}; expected one of {levels}")
    return (col[:, None] == np.array(levels)[None, :]).astype(np.float64)


def _cycle(value: np.ndarray, period: float) -> list[np.ndarray]:
    angle = 2 * np.pi * value / period
    return [np.sin(angle), np.cos(angle)]


def _calendar(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weekday (Monday = 0) and day of the year (0-based) of ``datetime64[D]`` dates."""
    n_days = days.astype(np.int64)
    weekday = (n_days + 3) % 7  # 1970-01-01 was a Thursday
    yearday = (days - days.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    return weekday, yearday


def _subsample(X: np.ndarray, y: np.ndarray, n: int | None, seed: int):
    if n is None:
        return X, y
    if not 0 < n <= len(X):
        raise InvalidArgumentError(f"n={n} rows requested; this data set has 1..{len(X)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(X), n, replace=False))
    return X[idx], y[idx]


def abalone(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UCI Abalone (W. J. Nash et al., "The Population Biology of Abalone (Haliotis species) in
    Tasmania", Sea Fisheries Division Tech. Rep. 48, 1994): 4,177 abalone, 7 physical
    measurements and the sex (M, F, I = infant; one-hot) -> number of shell rings (age - 1.5 y)."""
    c = read_csv("abalone.csv.gz", text=("sex",))
    X = np.column_stack([_one_hot(c["sex"], ABALONE_SEX)] + [c[f] for f in FEATURES["abalone"][3:]])
    return _subsample(X, c["rings"], n, seed)


def hepc(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UCI Individual Household Electric Power Consumption (G. Hébrail and A. Bérard, 2012; one
    house in Sceaux, France, one-minute readings 2006-12-16 .. 2010-11-26), as the 100,000-minute
    subsample shipped in ``files/hepc.csv.gz``: global active power (kW) from the other six
    readings and the time of day, weekday and day of the year (sin/cos pairs)."""
    c = read_csv("hepc.csv.gz", text=("date", "time"))
    stamp = np.char.add(np.char.add(c["date"], "T"), c["time"]).astype("datetime64[m]")
    days = stamp.astype("datetime64[D]")
    weekday, yearday = _calendar(days)
    minute = (stamp - days).astype(np.int64)
    X = np.column_stack([c[f] for f in FEATURES["hepc"][:6]]
                        + _cycle(minute, 1440) + _cycle(weekday, 7) + _cycle(yearday, 365.25))
    return _subsample(X, c["Global_active_power"], n, seed)


def metro(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UCI Metro Interstate Traffic Volume (J. Hogue, 2019; westbound I-94, Minneapolis-St Paul,
    hourly, with OpenWeatherMap weather), as the 17,416 hourly records 2016-10-01 .. 2018-09-30
    shipped in ``files/metro_traffic.csv.gz``: traffic volume (vehicles/hour) from temperature (K),
    rain (mm/h), cloud cover (%), the main weather (one-hot), hour of day (sin/cos), weekday
    (one-hot) and day of the year (sin/cos). ``snow_1h`` is dropped: it is 0 in every record of
    these two years."""
    c = read_csv("metro_traffic.csv.gz", text=("date_time", "weather_main"))
    stamp = np.char.replace(c["date_time"], " ", "T").astype("datetime64[h]")
    days = stamp.astype("datetime64[D]")
    weekday, yearday = _calendar(days)
    hour = (stamp - days).astype(np.int64)
    X = np.column_stack([c["temp"], c["rain_1h"], c["clouds_all"],
                         _one_hot(c["weather_main"], METRO_WEATHER)] + _cycle(hour, 24)
                        + [np.eye(7)[weekday]] + _cycle(yearday, 365.25))
    return _subsample(X, c["traffic_volume"], n, seed)


def concrete(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UCI Concrete Compressive Strength (I.-C. Yeh, "Modeling of strength of high-performance
    concrete using artificial neural networks", Cement and Concrete Research 28 (1998) 1797-1808),
    all 1,030 mixtures: compressive strength (MPa) from 7 ingredient amounts (kg/m^3) and the age
    (days)."""
    c = read_csv("concrete.csv.gz")
    X = np.column_stack([c[f] for f in _CONCRETE])
    return _subsample(X, c["compressive_strength"], n, seed)
