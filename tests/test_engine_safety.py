"""The engine on hostile inputs, and its parallel paths.

Random shapes (0- and 1-wide layers), weights from 1e-300 to 1e307 (sums overflow), NaN and inf,
eps from the smallest subnormal to 1e308: the engine must return valid partitions, agree with its
definition (``cluster_l1(..., allpairs=True)``), and the boundary must refuse non-finite weights with
``InvalidWeightsError``. ``.ci/run`` also runs this file against the engine built with
AddressSanitizer, UndefinedBehaviorSanitizer and ``_GLIBCXX_ASSERTIONS`` (``AFDE_SANITIZE=ON``),
where any out-of-bounds index or undefined operation aborts the run.

The parallel paths (OpenMP loops, the lock-free union-find) run only above size thresholds that no
other test reaches; here :func:`afde_nb.core.engine.parallel_threshold` sets them to 0, and 1, 2 and 4
threads must give the serial labels exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import afde_nb
from afde_nb import _core
from afde_nb.core.engine import get_parallel_threshold, parallel_threshold, set_parallel_threshold
from afde_nb.errors import InvalidArgumentError, InvalidWeightsError
from afde_nb.core.network import Layer, Network

MODES = ("forward", "backward")
ACTS = ("identity", "tanh", "sigmoid", "relu", "leaky_relu")
SCALES = (0.0, 5e-324, 1e-300, 1e-8, 1.0, 1e8, 1e150, 1e307)
MODERATE = (1e-8, 1.0, 1e8)
EPS = (0.0, 5e-324, 1e-300, 1e-12, 0.1, 1.0, 10.0, 1e150, 1e300, 1.7e308)
HAS_OPENMP = _core.openmp_threads() > 0


def components(net, eps, mode, relative, threads=0, **kw):
    return afde_nb.lump(net, eps, mode=mode, relative=relative, threads=threads, method="components", **kw)


def assert_canonical(lab: np.ndarray, n: int) -> None:
    """n labels numbering blocks 0..k-1 by first appearance."""
    lab = np.asarray(lab)
    assert lab.shape == (n,)
    assert lab.dtype.kind == "i"
    top = -1
    for v in lab:
        assert 0 <= v <= top + 1
        top = max(top, int(v))


def rows(rng: np.random.Generator, n: int, d: int, scale: float, structure: list[str]) -> np.ndarray:
    """n rows of width d: random, zero, exact copies, near copies and integer rows, times scale."""
    M = np.empty((n, d))
    for i in range(n):
        kind = structure[i % len(structure)]
        if kind in ("copy", "near") and i > 0:
            M[i] = M[rng.integers(0, i)]
            if kind == "near":
                M[i] += rng.normal(size=d) * 1e-3 * scale
        elif kind == "zero":
            M[i] = 0.0
        elif kind == "int":
            M[i] = rng.integers(-2, 3, size=d) * scale
        else:
            M[i] = rng.normal(size=d) * scale
    return M


STRUCTURE = st.lists(st.sampled_from(["random", "zero", "copy", "near", "int"]), min_size=1, max_size=4)


@st.composite
def networks(draw, scales=SCALES, max_width=7):
    """Random depth and widths (inputs and hidden layers may be 0 or 1 wide), activations and
    weight scale (one scale per network, so that sums overflow at 1e307)."""
    depth = draw(st.integers(1, 3))
    widths = ([draw(st.integers(0, 4))] + [draw(st.integers(0, max_width)) for _ in range(depth)]
              + [draw(st.integers(1, 3))])
    scale = draw(st.sampled_from(scales))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = []
    for k in range(len(widths) - 1):
        M = rows(rng, widths[k + 1], widths[k] + 1, scale, draw(STRUCTURE))
        act = draw(st.sampled_from(ACTS)) if k < len(widths) - 2 else draw(st.sampled_from(("identity", "tanh")))
        layers.append(Layer(M[:, :-1].copy(), M[:, -1].copy(), act, negative_slope=0.1))
    return Network(layers, dtype="float64"), scale


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=networks(), mode=st.sampled_from(MODES), eps=st.sampled_from(EPS), relative=st.booleans())
def test_lump_gives_valid_partitions_on_any_finite_network(ns, mode, eps, relative):
    net, scale = ns
    part = components(net, eps, mode, relative)
    assert len(part.labels) == len(net.hidden)
    for lab, layer in zip(part.labels, net.hidden):
        assert_canonical(lab, layer.out_features)
    assert len(part.eps_per_layer) == len(net.hidden)
    for e in part.eps_per_layer:
        assert not e < 0  # NaN is allowed where a relative scale overflows (inf / inf)
        if not relative:
            assert e == eps
    # deterministic, and the reduced network has one neuron per block
    again = components(net, eps, mode, relative)
    for a, b in zip(part.labels, again.labels):
        np.testing.assert_array_equal(a, b)
    with np.errstate(all="ignore"):  # merged rows of 1e307-weights overflow: shapes only here
        small = afde_nb.reduce(net, part.labels)
    assert small.widths == [net.widths[0], *part.num_blocks, net.widths[-1]]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=networks(scales=MODERATE), mode=st.sampled_from(MODES))
def test_huge_eps_merges_each_layer_and_tiny_eps_is_exact(ns, mode):
    """eps = 1e300 puts every layer in one block (every distance is finite); a subnormal eps
    gives the partition of eps = 0 (no two distinct neurons are that close at these scales)."""
    net, _ = ns
    big = components(net, 1e300, mode, False)
    assert big.num_blocks == [min(l.out_features, 1) for l in net.hidden]
    exact = components(net, 0.0, mode, False)
    for tiny in (5e-324, 1e-300):
        for a, b in zip(components(net, tiny, mode, False).labels, exact.labels):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=networks(scales=(1.0,)), seed=st.integers(0, 2**16))
def test_reduce_at_eps_zero_keeps_the_output(ns, seed):
    net, _ = ns
    small = afde_nb.reduce(net, components(net, 0.0, "backward", False).labels)
    X = np.random.default_rng(seed).normal(size=(16, net.widths[0]))
    np.testing.assert_allclose(small.forward(X), net.forward(X), rtol=1e-9, atol=1e-9)


@st.composite
def poisoned_networks(draw):
    """A finite network with one NaN or +-inf in a weight or a bias."""
    net, _ = draw(networks(scales=(1.0,)))
    k = draw(st.integers(0, len(net.layers) - 1))
    which = draw(st.sampled_from(["weight", "bias"]))
    a = getattr(net.layers[k], which)
    assume(a.size > 0)
    a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return net


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(net=poisoned_networks(), mode=st.sampled_from(MODES), eps=st.sampled_from((0.0, 0.5, 1e300)),
       relative=st.booleans())
def test_non_finite_weights_raise_at_the_boundary(net, mode, eps, relative):
    with pytest.raises(InvalidWeightsError):
        components(net, eps, mode, relative)
    with pytest.raises(InvalidWeightsError):
        afde_nb.encode(net)
    with pytest.raises(InvalidWeightsError):
        afde_nb.reduce(net, [np.arange(l.out_features) for l in net.hidden])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=networks(scales=(1.0,)), mode=st.sampled_from(MODES), eps=st.sampled_from((0.0, 0.5, 1e300)),
       poison=st.sampled_from([np.nan, np.inf]), relative=st.booleans())
def test_engine_survives_non_finite_rms(ns, mode, eps, poison, relative):
    """Past the boundary (data-aware weights are not weights of the network): NaN or inf reaching
    the engine's sorts and windows still gives valid partitions."""
    net, _ = ns
    assume(net.widths[0] > 0)
    rms = [np.ones(w) for w in net.widths[:-2]]
    rms[0][0] = poison
    labels, used = _core.lump(*net.engine_args(), mode, [eps] * len(net.hidden), relative, 0, rms)
    assert len(labels) == len(net.hidden) == len(used)
    for lab, layer in zip(labels, net.hidden):
        assert_canonical(lab, layer.out_features)


@st.composite
def row_sets(draw, poison=True):
    """(n, d) rows, n in 0..40, d in 0..80 (1 and 2 stripes; the grid needs 3; 64 stripes from
    d = 64), with copies and near copies, at one of SCALES, optionally with NaN/inf entries."""
    n, d = draw(st.integers(0, 40)), draw(st.integers(0, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    F = rows(rng, n, d, draw(st.sampled_from(SCALES)), draw(STRUCTURE))
    if poison and n and d and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            F[rng.integers(0, n), rng.integers(0, d)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        if n > 1 and draw(st.booleans()):
            F[-1] = F[0]  # a copy of a poisoned row
    return F


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(F=row_sets(), eps=st.sampled_from(EPS))
def test_cluster_l1_equals_its_definition_on_any_rows(F, eps):
    want = _core.cluster_l1(F, eps, allpairs=True)
    assert_canonical(want, len(F))
    np.testing.assert_array_equal(_core.cluster_l1(F, eps), want)
    if HAS_OPENMP:
        with parallel_threshold(0):
            for threads in (1, 2):
                np.testing.assert_array_equal(_core.cluster_l1(F, eps, threads=threads), want)


def test_cluster_l1_rejects_bad_eps_and_shapes():
    F = np.zeros((3, 2))
    for bad in (-1.0, np.nan):
        with pytest.raises(ValueError):
            _core.cluster_l1(F, bad)
    with pytest.raises(ValueError):
        _core.cluster_l1(np.zeros(3), 0.1)
    assert _core.cluster_l1(np.zeros((0, 5)), 0.5).shape == (0,)
    np.testing.assert_array_equal(_core.cluster_l1(np.zeros((4, 0)), 0.5), [0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------------
# the parallel paths


def test_parallel_threshold_setting_and_restoring():
    assert get_parallel_threshold() is None
    with parallel_threshold(0):
        assert get_parallel_threshold() == 0
        with pytest.raises(RuntimeError):
            with parallel_threshold(10):
                assert get_parallel_threshold() == 10
                raise RuntimeError
        assert get_parallel_threshold() == 0
    assert get_parallel_threshold() is None
    for bad in (-1, float("nan")):
        with pytest.raises(InvalidArgumentError):
            set_parallel_threshold(bad)
    assert get_parallel_threshold() is None


@pytest.mark.skipif(not HAS_OPENMP, reason="engine built without OpenMP")
def test_threshold_zero_runs_the_pair_scan_in_parallel(rng):
    """Small inputs run serially by default; at threshold 0 the scan runs on the threads asked for."""
    F = rng.normal(size=(500, 8))
    _core.cluster_l1(F, 0.5, threads=4)
    assert _core.last_cluster_threads() == 1
    with parallel_threshold(0):
        for threads in (1, 2, 4):
            _core.cluster_l1(F, 0.5, threads=threads)
            assert _core.last_cluster_threads() == threads
    with parallel_threshold(F.size + 1):
        _core.cluster_l1(F, 0.5, threads=4)
        assert _core.last_cluster_threads() == 1


def _structured_net(rng, widths, act, copies=0.5, linear=0.3):
    """Hidden layers with exact and near-copied rows, a share of near-linear neurons (tiny incoming
    rows: forward-mode candidates) and near-equal outgoing columns, so both modes find blocks."""
    layers = []
    for k in range(len(widths) - 1):
        n_out, n_in = widths[k + 1], widths[k]
        W = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
        b = rng.normal(size=n_out) * 0.1
        for i in range(1, n_out):
            if rng.random() < copies:
                j = rng.integers(0, i)
                W[i], b[i] = W[j] + rng.normal(size=n_in) * 1e-3 * rng.random(), b[j]
        if k > 0:  # near-equal outgoing columns of the previous layer
            for j in range(1, n_in):
                if rng.random() < copies:
                    W[:, j] = W[:, rng.integers(0, j)] + rng.normal(size=n_out) * 1e-3 * rng.random()
        if k < len(widths) - 2:
            quiet = rng.random(n_out) < linear
            W[quiet] *= 1e-4
            b[quiet] *= 1e-4
        layers.append(Layer(W, b, act if k < len(widths) - 2 else "identity"))
    return Network(layers, dtype="float64")


@pytest.mark.skipif(not HAS_OPENMP, reason="engine built without OpenMP")
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("relative,eps", [(False, 0.0), (False, 0.2), (True, 0.05), (True, 1.0)])
def test_threads_at_threshold_zero_equal_the_serial_partition(mode, act, relative, eps):
    """300-neuron layers (the 300 x 300 weight matrix also passes the row-building loops' default
    threshold): 1, 2 and 4 threads at threshold 0 give the serial labels."""
    rng = np.random.default_rng(7)
    net = _structured_net(rng, [24, 300, 300, 6], act)
    serial = components(net, eps, mode, relative, threads=1)
    assert sum(serial.num_blocks) < 600 or eps == 0.0  # something merges: the union-find works
    with parallel_threshold(0):
        for threads in (1, 2, 4):
            got = components(net, eps, mode, relative, threads=threads)
            assert got.eps_per_layer == serial.eps_per_layer
            for a, b in zip(got.labels, serial.labels):
                np.testing.assert_array_equal(a, b)
            if mode == "backward" and got.eps_per_layer[-1] > 0:
                assert _core.last_cluster_threads() == threads


@pytest.mark.skipif(not HAS_OPENMP, reason="engine built without OpenMP")
@pytest.mark.parametrize("d,eps,spread", [(8, 0.3, 3.0), (48, 1.5, 3.0), (6, 0.5, 0.2), (200, 6.0, 0.05)])
def test_cluster_threads_at_threshold_zero_equal_allpairs(d, eps, spread):
    """Many clusters spread widely (the grid index) and few dense ones (the row-sum window), with
    rows near the threshold: every thread count gives the all-pairs components."""
    rng = np.random.default_rng(d)
    centres = rng.normal(size=(300, d)) * spread
    F = centres[rng.integers(0, 300, 1500)] + rng.normal(size=(1500, d)) * (eps / d)
    F[::7] += rng.normal(size=(len(F[::7]), d)) * (eps / 2)
    want = _core.cluster_l1(F, eps, allpairs=True)
    assert 1 < want.max() + 1 < len(F)
    with parallel_threshold(0):
        for threads in (1, 2, 4):
            for _ in range(2):  # interleavings differ from run to run
                np.testing.assert_array_equal(_core.cluster_l1(F, eps, threads=threads), want)


# ------------------------------------------------- float32 end to end (issue 10): the new entry points
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(F=row_sets(poison=False), eps=st.sampled_from(EPS))
def test_cluster_l1_on_float32_rows_equals_its_definition(F, eps):
    """float32 rows read in place: the labels of the same values in float64, and the definition."""
    with np.errstate(over="ignore"):
        F32 = F.astype(np.float32)  # 1e307 overflows to inf: a row at distance NaN, as defined
    want = _core.cluster_l1(F32.astype(np.float64), eps, allpairs=True)
    np.testing.assert_array_equal(_core.cluster_l1(F32, eps, allpairs=True), want)
    np.testing.assert_array_equal(_core.cluster_l1(F32, eps), want)
    if HAS_OPENMP:
        with parallel_threshold(0):
            np.testing.assert_array_equal(_core.cluster_l1(F32, eps, threads=2), want)


def _exact_reference(W, b, homogeneous, signed, rel):
    """path.exact_blocks as numpy computed it before the engine did: aligned rows in float64,
    orientation by the first entry above 1e3 rel scale, cluster at rel * scale (the definition)."""
    from afde_nb.core.path import aligned

    A, c = aligned(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64),
                   "relu" if homogeneous else "tanh")
    n = len(A)
    scale = float(np.abs(A).sum(axis=1).max(initial=0.0))
    s0 = np.ones(n, dtype=np.int64)
    if signed and n:
        big = np.abs(A) > 1e3 * rel * max(scale, 1e-300)
        first = np.where(big.any(axis=1), big.argmax(axis=1), 0)
        s0 = np.where(A[np.arange(n), first] < 0, -1, 1).astype(np.int64)
    return _core.cluster_l1(A * s0[:, None], rel * scale, allpairs=True), s0, c


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(F=row_sets(poison=False), homogeneous=st.booleans(), signed=st.booleans(),
       rel=st.sampled_from((0.0, 1e-12, 1e-6)), f32=st.booleans(), neg=st.booleans())
def test_exact_rows_equal_the_numpy_exact_blocks(F, homogeneous, signed, rel, f32, neg):
    """_core.exact_rows (one pass in place, sums in double) gives the numpy algorithm's blocks,
    orientations and scales on hostile rows (0-wide, zero rows, copies, 1e-300 .. 1e307)."""
    assume(F.shape[1] >= 1 and np.all(np.isfinite(F)))
    # ReLU rows are compared after division by their norm, a rounded value: at rel = 0 two scaled
    # copies are one block or two by an ulp of that rounding, which the engine (x * (1 / c), norms
    # summed in stripes) and numpy (x / c, pairwise sums) may take differently; the merge path
    # never uses rel = 0 (EXACT_REL), and rel = 1e-12 / 1e-6 are checked below
    assume(not (homogeneous and rel == 0.0))
    if f32:
        assume(np.abs(F).max(initial=0.0) < 1e30)  # representable in float32
        F = F.astype(np.float32)
    if neg and len(F) > 1:
        F = F.copy()
        F[-1] = -F[0]  # a negated copy: one block when signed
    W, b = np.ascontiguousarray(F[:, :-1]), F[:, -1].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # norms that overflow: not this test's
        assume(np.abs(F).sum(axis=1, dtype=np.float64).max(initial=0.0) < 1e308)
        assume(np.all(np.isfinite(np.sqrt((F.astype(np.float64) ** 2).sum(axis=1)))))
        lab_ref, s_ref, c_ref = _exact_reference(W, b, homogeneous, signed, rel)
    lab, s, c, bad = _core.exact_rows(W, b, homogeneous, signed, rel)
    assert bad == -1
    assert_canonical(lab, len(F))
    np.testing.assert_array_equal(lab, lab_ref)
    if signed:
        np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(F=row_sets(), f32=st.booleans(), homogeneous=st.booleans())
def test_exact_rows_name_the_first_non_finite_row(F, f32, homogeneous):
    assume(F.shape[1] >= 1)
    with np.errstate(over="ignore"):
        G = F.astype(np.float32) if f32 else F
    W, b = np.ascontiguousarray(G[:, :-1]), G[:, -1].astype(np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(G.astype(np.float64)).all(axis=1))
    lab, s, c, bad = _core.exact_rows(W, b, homogeneous, True, 1e-6)
    assert bad == (bad_rows[0] if bad_rows.size else -1)
    if bad >= 0:
        assert lab.size == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=networks(scales=MODERATE), seed=st.integers(0, 2**16), f32=st.booleans())
def test_engine_quotient_on_any_network_equals_the_numpy_one(ns, seed, f32):
    """reduce.quotient (the engine, in the weights' dtype) against the numpy reference on random
    partitions, orientations and masses, 0- and 1-wide layers included."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from reference import quotient_numpy

    from afde_nb.core.reduce import quotient

    net = ns[0] if isinstance(ns, tuple) else ns
    if f32:
        net = Network([l.with_weights(l.weight.astype(np.float32), l.bias.astype(np.float32)) for l in net.layers])
    rng = np.random.default_rng(seed)
    labels, signs, weights = [], [], []
    for l in net.hidden:
        n = l.out_features
        k = int(rng.integers(1, n + 1)) if n else 0
        lab = np.concatenate([np.arange(k), rng.integers(0, max(k, 1), n - k)]).astype(np.int64) if n else np.zeros(0, np.int64)
        rng.shuffle(lab)
        labels.append(lab)
        signs.append(rng.choice([-1, 1], n).astype(np.int64) if l.activation in ("tanh", "identity", "sigmoid") else None)
        weights.append(rng.uniform(0.0, 2.0, n) if rng.random() < 0.5 else None)
    with np.errstate(all="ignore"):
        small, blocks = quotient(net, labels, signs, weights)
        ref, ref_blocks = quotient_numpy(net, labels, signs, weights)
    tol = 2e-6 if f32 else 1e-12
    for a, r in zip(small.layers, ref.layers):
        assert a.weight.dtype == (np.float32 if f32 else np.float64)
        scale = max(float(np.abs(r.weight).max(initial=0.0)), float(np.abs(r.bias).max(initial=0.0)), 1e-300)
        np.testing.assert_allclose(a.weight, r.weight, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(a.bias, r.bias, rtol=0, atol=tol * scale)
    for blk, (lab, s, c, m, spread) in zip(blocks, ref_blocks):
        np.testing.assert_allclose(blk.scales, c, rtol=1e-12)
        assert blk.spread == pytest.approx(spread, rel=1e-9, abs=1e-12)
