"""afde_nb.data: generators against independent solutions, shipped files against their sources,
the data home (CASP, found, checked, fetched from a local HTTP server) and the standardised splits."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import threading
import zipfile

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from afde_nb.data import NAMES, PAPER_NAMES, data_home, home, load, odes, public
from afde_nb.data.fetch import fetch
from afde_nb.errors import AfdeError, ChecksumError, DataNotFoundError, DownloadError

GENERATORS = {"glycolysis": odes.glycolysis, "polymerization": odes.polymerization,
              "rlc": odes.rlc_ladder, "random_mass_action": odes.random_mass_action}
SHAPES = {"glycolysis": (4, 2), "polymerization": (5, 9), "rlc": (8, 6),
          "random_mass_action": (5, 5)}
PUBLIC = ("abalone", "hepc", "metro", "concrete")
HOME = ("protein",)
CASP_SHA256 = "712d2759f8113622a3ba93a47e451397147df946111f6ffdd8c655385d564aef"  # ../shared/data/casp/README.md


def casp_or_skip() -> None:
    """The data home must hold CASP (tests/conftest.py points it at ../shared/data). Where it does
    not, the test fails under CI (the data are part of its set-up) and is skipped elsewhere."""
    try:
        home.locate("protein")
    except DataNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide CASP: {exc}")
        pytest.skip(f"CASP is not available here: {exc}")


@pytest.fixture
def casp_csv() -> bytes:
    """The uncompressed CASP.csv of the data home (checked)."""
    casp_or_skip()
    return home.read_checked("protein")[0]


def _solve(rhs, y0, t_end, method="Radau"):
    """One trajectory, by default with an implicit solver, unlike the generators' batched
    explicit ones."""
    sol = solve_ivp(lambda t, s: rhs(s), (0.0, t_end), np.asarray(y0, float), method=method,
                    rtol=1e-10, atol=1e-12)
    assert sol.success
    return sol.y[:, -1]


def test_names():
    assert set(NAMES) == set(GENERATORS) | set(PUBLIC) | set(HOME)
    assert PAPER_NAMES == tuple(GENERATORS) + ("abalone", "hepc", "metro", "protein")
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
    if name in HOME:
        casp_or_skip()
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
    if name in PUBLIC or name in HOME:
        features = (public.FEATURES if name in PUBLIC else home.FEATURES)[name]
        assert d.n_features == len(features) == len(d.info["features"])


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


def test_concrete_is_its_own_name():
    d = load("concrete")
    assert len(d.X_train) + len(d.X_val) + len(d.X_test) == 1030 and d.n_features == 8
    assert "Concrete Compressive Strength" in d.source
    for name in PUBLIC:
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


# --- the data home: CASP (load("protein")), found, checked and fetched -------------------------

def test_recorded_checksum_is_the_shared_readmes():
    assert home.HOME["protein"].sha256 == CASP_SHA256


def test_data_home_argument_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("AFDE_NB_DATA", raising=False)
    assert data_home() == tmp_path / "user" / ".cache" / "afde-nb"
    monkeypatch.setenv("AFDE_NB_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data_home("~/d") == tmp_path / "user" / "d"


def test_protein_is_casp(casp_csv):
    d = load("protein")
    assert len(d.X_train) + len(d.X_val) + len(d.X_test) == 45_730
    assert d.info["features"] == tuple(f"F{k}" for k in range(1, 10))
    assert d.info["targets"] == ("RMSD",)
    assert "substitute" not in d.info and "SUBSTITUTE" not in d.source
    assert "Rana" in d.source and "10.24432/C5QW3H" in d.source and "CC BY 4.0" in d.source
    X, y, _ = home.protein()
    assert X.shape == (45_730, 9)
    assert round(float(y.mean()), 3) == 7.749 and round(float(y.std()), 3) == 6.118  # the shared README
    assert list(X[0]) == [13558.3, 4305.35, 0.31754, 162.173, 1872790.507, 215.359, 4287.87, 102, 27.0302]
    assert y[0] == 17.284


def test_protein_reads_the_plain_csv_as_well(casp_csv, tmp_path):
    (tmp_path / "casp").mkdir()
    (tmp_path / "casp" / "CASP.csv").write_bytes(casp_csv)
    d, ref = load("protein", n=2000, seed=4, data_home=tmp_path), load("protein", n=2000, seed=4)
    assert d.info["path"] == str(tmp_path / "casp" / "CASP.csv")
    np.testing.assert_array_equal(d.X_train, ref.X_train)
    np.testing.assert_array_equal(d.y_test, ref.y_test)


@pytest.mark.parametrize("via_env", [False, True])
def test_absent_casp_is_one_clear_error(monkeypatch, tmp_path, via_env):
    if via_env:
        monkeypatch.setenv("AFDE_NB_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as err:
        load("protein", data_home=None if via_env else tmp_path)
    assert isinstance(err.value, AfdeError) and isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    for needed in (str(tmp_path), "AFDE_NB_DATA", "afde data fetch protein", "CASP.csv"):
        assert needed in msg
    assert list(tmp_path.iterdir()) == []  # looking creates nothing


def test_a_file_that_fails_its_checksum_is_refused(casp_csv, tmp_path):
    folder = tmp_path / "casp"
    folder.mkdir()
    (folder / "CASP.csv").write_bytes(casp_csv.replace(b"17.284", b"17.285", 1))
    with pytest.raises(ChecksumError, match="SHA-256") as err:
        load("protein", data_home=tmp_path)
    assert str(folder / "CASP.csv") in str(err.value)
    (folder / "CASP.csv.gz").write_bytes(gzip.compress(casp_csv)[:5000])  # truncated: searched first
    with pytest.raises(ChecksumError, match="gzip"):
        load("protein", data_home=tmp_path)


class _Server:
    """A loopback HTTP server in a thread; ``routes[path] = (body, declared length or None)``: a
    declared length larger than the body sends the body and closes the connection (an interrupted
    download)."""

    def __init__(self):
        routes = self.routes = {}
        self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.server.hits.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.hits = self.hits
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _zip(csv: bytes, member: str = "CASP.csv") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, csv)
    return buf.getvalue()


@pytest.fixture
def server(casp_csv):
    """Serves, built at test time from the shared copy: /casp.zip (as UCI's zip), /corrupt.zip
    (one digit changed), /garbage.zip (not a zip), /cut.zip (half of the zip, then the connection
    closes); anything else is a 404."""
    s = _Server()
    good = _zip(casp_csv)
    s.routes.update({"/casp.zip": (good, None),
                     "/corrupt.zip": (_zip(casp_csv.replace(b"17.284", b"17.285", 1)), None),
                     "/garbage.zip": (os.urandom(4096), None),
                     "/cut.zip": (good[:len(good) // 2], len(good))})
    yield s
    s.close()


def _left_in(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_fetch_downloads_checks_and_replaces_atomically(server, tmp_path, casp_csv, capsys):
    path = fetch("protein", tmp_path, url=server.url("/casp.zip"))
    assert path == tmp_path / "casp" / "CASP.csv"
    assert _left_in(tmp_path) == ["CASP.csv", "casp"]  # no temporary file stays behind
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CASP_SHA256
    assert "CASP.csv" in capsys.readouterr().err  # the progress bar
    d, ref = load("protein", n=1000, data_home=tmp_path), load("protein", n=1000)
    np.testing.assert_array_equal(d.X_train, ref.X_train)
    assert fetch("protein", tmp_path, url=server.url("/casp.zip")) == path
    assert server.hits == ["/casp.zip"]  # a checked copy is kept, not downloaded again


def test_load_download_true_fetches_from_the_recorded_url(server, tmp_path, monkeypatch):
    spec = dataclasses.replace(home.HOME["protein"], url=server.url("/casp.zip"))
    monkeypatch.setitem(home.HOME, "protein", spec)
    d = load("protein", n=500, data_home=tmp_path, download=True)
    assert d.info["path"] == str(tmp_path / "casp" / "CASP.csv") and server.hits == ["/casp.zip"]


@pytest.mark.parametrize("route, error, match", [
    ("/corrupt.zip", ChecksumError, "SHA-256"),
    ("/garbage.zip", ChecksumError, "not a readable zip"),
    ("/cut.zip", DownloadError, "IncompleteRead|stopped after"),
    ("/missing.zip", DownloadError, "404"),
])
def test_a_bad_download_leaves_nothing(server, tmp_path, route, error, match):
    with pytest.raises(error, match=match) as err:
        fetch("protein", tmp_path, url=server.url(route), progress=False)
    assert "nothing was kept" in str(err.value)
    assert _left_in(tmp_path) in ([], ["casp"])
    with pytest.raises(DataNotFoundError):
        load("protein", data_home=tmp_path)


def test_fetch_reports_a_bad_copy_instead_of_overwriting_it(server, tmp_path, casp_csv):
    (tmp_path / "casp").mkdir()
    bad = casp_csv[:1000]
    (tmp_path / "casp" / "CASP.csv").write_bytes(bad)
    with pytest.raises(ChecksumError, match="delete it"):
        fetch("protein", tmp_path, url=server.url("/casp.zip"), progress=False)
    assert server.hits == [] and (tmp_path / "casp" / "CASP.csv").read_bytes() == bad


def test_cli_data_fetch(server, tmp_path, capsys):
    import argparse

    from afde_nb.ui.cli import main, parser

    data = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    fetch_cmd = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction)).choices["fetch"]
    assert all(a.help for a in fetch_cmd._actions)

    assert main(["data", "fetch", "protein", "--data-home", str(tmp_path), "--url", server.url("/casp.zip")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "casp" / "CASP.csv") in out and "SHA-256 checked" in out
    assert main(["data", "fetch", "protein", "--data-home", str(tmp_path / "other"),
                 "--url", server.url("/corrupt.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("afde: error:") and "SHA-256" in err
    assert main(["data", "fetch", "concrete", "--data-home", str(tmp_path)]) == 2
    assert "protein" in capsys.readouterr().err


def test_the_bench_caches_protein_models_by_data_file(casp_csv, tmp_path, monkeypatch):
    """A "protein" model cached before the data home was trained on the Concrete substitute: the
    cache name carries the file's checksum, so such a model is never reused."""
    from afde_nb.eval.bench import run as bench_run
    from afde_nb.eval.train import make_mlp

    monkeypatch.setenv("AFDE_NB_CACHE", str(tmp_path))
    monkeypatch.setattr(bench_run, "train_mlp", lambda data, hidden, activation, epochs, seed:
                        make_mlp(data.n_features, hidden, data.n_targets, activation))
    data, _ = bench_run.trained_model("protein", 0, (4,), 1, "tanh", max_samples=2000)
    assert len(data.X_train) + len(data.X_val) + len(data.X_test) == 2000
    cached = [p.name for p in (tmp_path / "models").glob("*.pt")]
    assert cached == [f"protein-tanh-4-e1-n2000-d{CASP_SHA256[:8]}-s0.pt"]
    assert bench_run.PROFILES["full"].datasets == PAPER_NAMES
