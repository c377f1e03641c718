"""afde_nb.data: generators against independent solutions, shipped files against their sources,
and the standardised splits."""
from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from afde_nb.data import NAMES, load, odes, public
from afde_nb.data.registry import SUBSTITUTES

GENERATORS = {"glycolysis": odes.glycolysis, "polymerization": odes.polymerization,
              "rlc": odes.rlc_ladder, "random_mass_action": odes.random_mass_action}
SHAPES = {"glycolysis": (4, 2), "polymerization": (5, 9), "rlc": (8, 6),
          "random_mass_action": (5, 5)}
PUBLIC = ("abalone", "hepc", "metro", "protein")


def _solve(rhs, y0, t_end, method="Radau"):
    """One trajectory, by default with an implicit solver, unlike the generators' batched
    explicit ones."""
    sol = solve_ivp(lambda t, s: rhs(s), (0.0, t_end), np.asarray(y0, float), method=method,
                    rtol=1e-10, atol=1e-12)
    assert sol.success
    return sol.y[:, -1]


def test_names():
    assert set(NAMES) == set(GENERATORS) | set(PUBLIC)
    assert "glycolysis" in NAMES
    with pytest.raises(ValueError, match="unknown data set"):
        load("no_such_set")


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_deterministic_shapes_finite(name):
    gen = GENERATORS[name]
    X, y = gen(n=300, seed=3)
    X2, y2 = gen(n=300, seed=3)
    X3, y3 = gen(n=300, seed=4)
    assert X.shape == (300, SHAPES[name][0]) and y.shape == (300, SHAPES[name][1])
    assert np.isfinite(X).all() and np.isfinite(y).all()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.allclose(X, X3)


def test_glycolysis_matches_single_integration():
    X, y = odes.glycolysis(n=5, seed=7)
    for (x0, y0, a, b), target in zip(X, y):
        def rhs(s, a=a, b=b):
            u, v = s
            return [-u + a * v + u * u * v, b - a * v - u * u * v]
        np.testing.assert_allclose(_solve(rhs, [x0, y0], 5.0), target, rtol=1e-5, atol=1e-7)


def test_rlc_matches_matrix_exponential():
    """Kirchhoff's laws written as a matrix, solved exactly with expm of the system augmented by
    the constant source (dV_s/dt = 0)."""
    t_end = 2.0
    X, y = odes.rlc_ladder(n=40, seed=5, t_end=t_end)
    R, L, C = map(np.asarray, (odes.RLC_R, odes.RLC_L, odes.RLC_C))
    # Branch k (inductor k) runs from node k-1 to node k; node 0 is the source.
    inc = np.eye(3) - np.eye(3, k=1)           # inc[node, branch]: +1 enters, -1 leaves
    for row, target in zip(X, y):
        r_load = row[7]
        M = np.zeros((7, 7))                    # state (i_1..i_3, v_1..v_3, V_s)
        M[:3, :3] = -np.diag(R / L)
        M[:3, 3:6] = -inc.T / L[:, None]        # L di/dt = v_from - v_to - R i
        M[0, 6] = 1.0 / L[0]
        M[3:6, :3] = inc / C[:, None]           # C dv/dt = current in - current out
        M[5, 5] = -1.0 / (r_load * C[2])        # the load
        exact = expm(t_end * M) @ row[:7]
        np.testing.assert_allclose(target, exact[:6], rtol=1e-6, atol=1e-8)


def test_polymerization_moments_match_chain_population():
    """The moment equations against the chain-length population balance they summarise, with
    P_1..P_N living and D_2..D_2N dead chains; N is large enough that P_N is negligible."""
    t_end, N = 5.0, 400
    X, y = odes.polymerization(n=2, seed=11, t_end=t_end)
    f, ki = odes.POLYMER_F, odes.POLYMER_KI
    lengths = np.arange(1, N + 1.0)
    dead_lengths = np.arange(2, 2 * N + 1.0)
    for (i0, m0, kd, kp, kt), target in zip(X, y):
        def rhs(s, kd=kd, kp=kp, kt=kt):
            i, r, m = s[:3]
            p = s[3:3 + N]
            lam0 = p.sum()
            dp = -kp * m * p - kt * lam0 * p
            dp[0] += ki * r * m
            dp[1:] += kp * m * p[:-1]
            return np.concatenate([[-kd * i, 2 * f * kd * i - ki * r * m,
                                    -ki * r * m - kp * m * lam0], dp,
                                   0.5 * kt * np.convolve(p, p)])
        s0 = np.zeros(3 + N + 2 * N - 1)
        s0[0], s0[2] = i0, m0
        s = _solve(rhs, s0, t_end, method="LSODA")  # 1,200 states: no dense Radau Jacobian
        p, d = s[3:3 + N], s[3 + N:]
        assert p[-1] < 1e-12 * p.max()
        moments = [s[0], s[1], s[2]] + [(lengths ** k * p).sum() for k in range(3)] \
            + [(dead_lengths ** k * d).sum() for k in range(3)]
        np.testing.assert_allclose(target, moments, rtol=1e-5, atol=1e-8)


def test_polymerization_conserves_monomer_units():
    X, y = odes.polymerization(n=200, seed=2)
    states = dict(zip(odes.POLYMER_STATES, y.T))
    np.testing.assert_allclose(states["M"] + states["lambda1"] + states["mu1"], X[:, 1], rtol=1e-6)
    assert (y > 0).all()


def test_random_network_is_fixed_and_valid():
    net = odes.random_reaction_network()
    assert net == odes.random_reaction_network()
    assert net != odes.random_reaction_network(seed=odes.RANDOM_NETWORK_SEED + 1)
    assert sum(len(r) == 1 for r, _, _ in net) == 4 and sum(len(r) == 2 for r, _, _ in net) == 6
    for reac, prod, k in net:
        assert len(reac) == len(prod) and sorted(reac) != sorted(prod) and 0.2 <= k <= 1.0
    assert len({(r, p) for r, p, _ in net}) == len(net)


def test_random_mass_action_matches_reaction_by_reaction_integration():
    net = odes.random_reaction_network()
    X, y = odes.random_mass_action(n=3, seed=9, t_end=3.0)

    def rhs(s):
        ds = np.zeros(5)
        for reac, prod, k in net:
            rate = k * np.prod([s[j] for j in reac])
            for j in reac:
                ds[j] -= rate
            for j in prod:
                ds[j] += rate
        return ds

    for x0, target in zip(X, y):
        np.testing.assert_allclose(_solve(rhs, x0, 3.0), target, rtol=1e-5, atol=1e-7)
    Xb, yb = odes.random_mass_action(n=300, seed=1)
    np.testing.assert_allclose(yb.sum(1), Xb.sum(1), rtol=1e-6)  # molecule count is conserved
    assert (yb >= 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_load_standardised_split(name):
    n = 600 if name in GENERATORS else None
    d = load(name, n=n, seed=1)
    again = load(name, n=n, seed=1)
    np.testing.assert_array_equal(d.X_train, again.X_train)
    np.testing.assert_array_equal(d.y_test, again.y_test)
    parts = [(d.X_train, d.y_train), (d.X_val, d.y_val), (d.X_test, d.y_test)]
    total = sum(len(a) for a, _ in parts)
    if n is not None:
        assert total == n
    for Xp, yp in parts:
        assert Xp.dtype == np.float32 and yp.dtype == np.float32
        assert np.isfinite(Xp).all() and np.isfinite(yp).all()
        assert Xp.shape[1] == d.n_features and yp.shape[1] == d.n_targets
    assert len(d.X_train) == int(0.7 * total)
    varying = d.info["x_std"] != 1  # constant columns get std 1 and stay 0
    # float32 arithmetic: a column like Voltage (mean 241, std 3) keeps ~1e-4 of its mean
    np.testing.assert_allclose(d.X_train.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(d.X_train.std(0)[varying], 1, rtol=1e-3)
    np.testing.assert_allclose(d.y_train.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(d.y_train.std(0), 1, rtol=1e-3)
    assert d.source
    if name in PUBLIC:
        assert d.n_features == len(public.FEATURES[name]) == len(d.info["features"])


def test_split_undoes_to_the_raw_data():
    X, y = odes.rlc_ladder(n=500, seed=2)
    d = load("rlc", n=500, seed=2)
    perm = np.random.default_rng(2).permutation(500)
    back = np.vstack([d.X_train, d.X_val, d.X_test]) * d.info["x_std"] + d.info["x_mean"]
    np.testing.assert_allclose(back, X[perm], rtol=1e-5, atol=1e-5)
    yback = np.vstack([d.y_train, d.y_val, d.y_test]) * d.info["y_std"] + d.info["y_mean"]
    np.testing.assert_allclose(yback, y[perm], rtol=1e-5, atol=1e-5)


def test_public_subsample():
    d = load("abalone", n=500, seed=3)
    assert len(d.X_train) + len(d.X_val) + len(d.X_test) == 500
    with pytest.raises(ValueError, match="rows requested"):
        load("abalone", n=5000)


def test_protein_substitution_is_stated():
    d = load("protein")
    assert SUBSTITUTES == {"protein": "concrete"}
    assert d.info["substitute"] == "concrete"
    assert d.source.startswith("SUBSTITUTE") and "Concrete" in d.source
    for name in ("abalone", "hepc", "metro"):
        assert "SUBSTITUTE" not in load(name, n=300).source


# --- shipped files against their documented sources (files/README.md) ---------------------------

SHA256 = {
    "abalone.csv.gz": "7b21ed0fe41518f4ec3c135404b0c8bac0a29490ccec9ffa29bc4a5a83d02363",
    "concrete.csv.gz": "6f0beeda386dc0c77d77e24eeafff2ffd657fcf1a60ba752560b4ee3609fb743",
    "hepc.csv.gz": "b3e862639e3be2ca3ef7c547b95dd34521a8bcca4c063b8aaf341fd38e9e8def",
    "metro_traffic.csv.gz": "9f0f74ef4de81e0c254c3207a37b154759972bb62831d20a560b13d4477a0d21",
}


def _header_and_rows(filename):
    with gzip.open(os.path.join(public.FILES, filename), "rt") as f:
        lines = f.read().splitlines()
    return lines[0].split(","), [ln.split(",") for ln in lines[1:]]


@pytest.mark.parametrize("filename", sorted(SHA256))
def test_shipped_file_is_documented_and_small(filename):
    path = os.path.join(public.FILES, filename)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SHA256[filename]
    assert os.path.getsize(path) < 2_000_000
    with open(os.path.join(public.FILES, "README.md")) as f:
        readme = f.read()
    assert f"{SHA256[filename]}  {filename}" in readme


def test_abalone_file_matches_uci():
    header, rows = _header_and_rows("abalone.csv.gz")
    assert header == ["sex", "length", "diameter", "height", "whole_weight", "shucked_weight",
                      "viscera_weight", "shell_weight", "rings"]
    assert len(rows) == 4177                       # UCI: 4,177 instances
    sex = [r[0] for r in rows]
    assert (sex.count("M"), sex.count("F"), sex.count("I")) == (1528, 1307, 1342)
    rings = np.array([int(r[8]) for r in rows])
    assert rings.min() == 1 and rings.max() == 29
    assert rows[0] == ["M", "0.455", "0.365", "0.095", "0.514", "0.2245", "0.101", "0.15", "15"]


def test_hepc_file_matches_uci():
    header, rows = _header_and_rows("hepc.csv.gz")
    assert header == ["date", "time", "Global_active_power", "Global_reactive_power", "Voltage",
                      "Global_intensity", "Sub_metering_1", "Sub_metering_2", "Sub_metering_3"]
    assert len(rows) == 100_000
    stamps = np.array([f"{r[0]}T{r[1]}" for r in rows], dtype="datetime64[m]")
    assert (np.diff(stamps).astype(int) > 0).all()  # distinct minutes in time order
    assert stamps[0] >= np.datetime64("2006-12-16T17:24")
    assert stamps[-1] <= np.datetime64("2010-11-26T21:02")
    v = np.array([r[2:] for r in rows], dtype=float)
    assert np.isfinite(v).all() and (v[:, [0, 1, 3, 4, 5, 6]] >= 0).all()
    assert 200 < v[:, 2].min() and v[:, 2].max() < 260          # mains voltage
    # Active power is at most the apparent power V*I (kW): a check of column order and units.
    assert (v[:, 0] <= v[:, 2] * v[:, 3] / 1000 * 1.05 + 0.05).all()


def test_metro_file_matches_uci():
    header, rows = _header_and_rows("metro_traffic.csv.gz")
    assert header == ["date_time", "temp", "rain_1h", "snow_1h", "clouds_all", "weather_main",
                      "traffic_volume"]
    assert len(rows) == 17_416
    stamps = np.array([r[0].replace(" ", "T") for r in rows], dtype="datetime64[h]")
    assert stamps[0] == np.datetime64("2016-10-01T00")
    assert stamps[-1] == np.datetime64("2018-09-30T23")
    assert (np.diff(stamps).astype(int) >= 1).all()
    assert {r[5] for r in rows} <= set(public.METRO_WEATHER)
    volume = np.array([int(r[6]) for r in rows])
    assert 0 <= volume.min() and volume.max() < 8000
    X, _ = public.metro()
    weather = slice(3, 3 + len(public.METRO_WEATHER))
    np.testing.assert_array_equal(X[:, weather].sum(1), 1)
    np.testing.assert_array_equal(X[:, -9:-2].sum(1), 1)         # weekday one-hot
    assert X[0, -9 + 5] == 1                                       # 2016-10-01 was a Saturday


def test_concrete_file_matches_uci():
    header, rows = _header_and_rows("concrete.csv.gz")
    assert header == ["cement", "blast_furnace_slag", "fly_ash", "water", "superplasticizer",
                      "coarse_aggregate", "fine_aggregate", "age", "compressive_strength"]
    assert len(rows) == 1030                       # UCI: 1,030 instances
    v = np.array(rows, dtype=float)
    assert rows[0] == ["540", "0", "0", "162", "2.5", "1040", "676", "28", "79.99"]
    assert v[:, 7].min() == 1 and v[:, 7].max() == 365
