"""The C++ eps-lumping against the literal definitions (tests/reference.py) and its invariants."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afde_nb
from afde_nb import _core
from afde_nb.core.lump import activation_rms
from afde_nb.core.network import Layer, Network


def plump(net, eps=0.0, mode="backward", relative=False, **kw):
    """The paper's setting (components, absolute eps), which these tests pin down."""
    return afde_nb.lump(net, eps, mode, relative, method="components", **kw)

import reference

POLY_ACTS = ["identity", "tanh", "sigmoid"]


@st.composite
def integer_networks(draw, acts=POLY_ACTS):
    """Small networks with integer weights: every distance is an exact integer in floating point,
    so C++ and the reference agree bit for bit. Zero rows and repeated rows plant structure."""
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 3))] + [draw(st.integers(1, 5)) for _ in range(depth)] + [draw(st.integers(1, 2))]
    layers = []
    for k in range(len(widths) - 1):
        n_out, n_in = widths[k + 1], widths[k]
        rows = []
        for i in range(n_out):
            kind = draw(st.sampled_from(["random", "zero", "copy"]))
            if kind == "copy" and rows:
                rows.append(rows[draw(st.integers(0, len(rows) - 1))].copy())
            elif kind == "zero":
                rows.append(np.zeros(n_in + 1))
            else:
                rows.append(np.array(draw(st.lists(st.integers(-2, 2), min_size=n_in + 1, max_size=n_in + 1)), float))
        M = np.array(rows)
        act = draw(st.sampled_from(acts)) if k < len(widths) - 2 else draw(st.sampled_from(["identity", "tanh"]))
        layers.append(Layer(M[:, :-1].copy(), M[:, -1].copy(), act))
    return Network(layers, dtype="float64")


EPS = [0.0, 0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 40.5]


# all distances are integers here, so half-integer thresholds never tie
HALF_INTEGER_EPS = st.one_of(st.just(0.0), st.integers(0, 60).map(lambda k: k + 0.5))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=integer_networks(), mode=st.sampled_from(["forward", "backward"]), eps=HALF_INTEGER_EPS)
def test_engine_equals_reference(net, mode, eps):
    ode = afde_nb.encode(net)
    want = reference.hidden_labels(ode, reference.refine(ode, eps, mode))
    got = plump(net, eps, mode).labels
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@settings(max_examples=60, deadline=None)
@given(net=integer_networks(acts=POLY_ACTS + ["relu", "leaky_relu"]), mode=st.sampled_from(["forward", "backward"]))
def test_partition_monotone_in_eps(net, mode):
    sizes = [plump(net, e, mode).size for e in EPS]
    assert sizes == sorted(sizes, reverse=True)


def _refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    return all(len(set(coarse[fine == b])) == 1 for b in np.unique(fine))


@settings(max_examples=60, deadline=None)
@given(net=integer_networks(), mode=st.sampled_from(["forward", "backward"]))
def test_larger_eps_coarsens(net, mode):
    parts = [plump(net, e, mode).labels for e in EPS]
    for fine, coarse in zip(parts, parts[1:]):
        assert all(_refines(f, c) for f, c in zip(fine, coarse))


def _random_net(rng, widths, act, out_act="identity", scale=1.0):
    layers = []
    for k in range(len(widths) - 1):
        w = rng.normal(size=(widths[k + 1], widths[k])) * scale
        layers.append(Layer(w, rng.normal(size=widths[k + 1]) * scale,
                            act if k < len(widths) - 2 else out_act))
    return Network(layers)


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("eps", [0.0, 0.3, 3.0])
def test_threads_and_repeats_give_identical_partitions(rng, mode, eps):
    net = _random_net(rng, [20, 300, 200, 5], "tanh", scale=0.05)
    runs = [plump(net, eps, mode, relative=True, threads=t).labels for t in (1, 2, 1, 2)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            np.testing.assert_array_equal(a, b)


def test_relative_eps_is_a_fraction_of_the_mean_neuron_norm(rng):
    """Relative eps scales by the mean distance of a layer's neurons from the zero neuron."""
    net = _random_net(rng, [4, 6, 3], "tanh")
    hidden = np.flatnonzero(afde_nb.encode(net).layer == 1)  # same indices in ode0: the zero neuron is last
    zero_row = Network([Layer(np.vstack([net.layers[0].weight, np.zeros((1, 4))]),
                              np.append(net.layers[0].bias, 0.0), "tanh"),
                        Layer(np.hstack([net.layers[1].weight, np.zeros((3, 1))]), net.layers[1].bias)])
    ode0 = afde_nb.encode(zero_row)
    f0, lab0 = reference.drifts(ode0), reference.prepartition(ode0)
    z = int(np.flatnonzero(ode0.layer == 1)[-1])
    for mode, dist in (("backward", reference.bde_distance), ("forward", reference.fde_distance)):
        # the zero neuron has a zero outgoing column too, so d(i, zero) is the neuron's norm
        want = np.mean([dist(f0, lab0, int(i), z) for i in hidden])
        assert plump(net, 0.5, mode, relative=True).eps_per_layer[0] == pytest.approx(0.5 * want)


def _proportional_relu_reference(net: Network, eps: float) -> list[np.ndarray]:
    """eps-BDE of a ReLU stack by the definition of method.md §5: link two neurons when their
    L2-normalised incoming rows (source blocks summed with member scales) are within eps in L1."""
    out = []
    src, scale = np.arange(net.widths[0]), np.ones(net.widths[0])
    for layer in net.hidden:
        k = src.max() + 1
        R = np.zeros((layer.out_features, k + 1))
        for j in range(layer.in_features):
            R[:, src[j]] += layer.weight[:, j] * scale[j]
        R[:, k] = layer.bias
        norms = np.linalg.norm(R, axis=1)
        U = R / np.where(norms > 0, norms, 1)[:, None]
        n = len(U)
        lab = list(range(n))

        def find(v):
            while lab[v] != v:
                v = lab[v]
            return v

        for i in range(n):
            for j in range(i + 1, n):
                if np.abs(U[i] - U[j]).sum() <= eps:
                    a, b = sorted((find(i), find(j)))
                    lab[b] = a
        roots = [find(i) for i in range(n)]
        seen: dict[int, int] = {}
        src = np.array([seen.setdefault(r, len(seen)) for r in roots])
        scale = norms
        out.append(src)
    return out


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 1.0])
def test_relu_backward_equals_proportional_rows_definition(rng, eps):
    base = rng.normal(size=(4, 6))
    w1 = np.concatenate([base, 2.0 * base[:2], 0.5 * base[1:3] + 0.01 * rng.normal(size=(2, 6))])
    net = Network([Layer(w1[:, :5], w1[:, 5], "relu"), Layer(rng.normal(size=(5, 8)), rng.normal(size=5), "relu"),
                   Layer(rng.normal(size=(2, 5)), rng.normal(size=2))])
    got = plump(net, eps, "backward").labels
    for g, w in zip(got, _proportional_relu_reference(net, eps)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("n,d", [(1, 3), (50, 4), (400, 16)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 8.0])
def test_cluster_fast_equals_allpairs_and_scipy(rng, n, d, eps):
    from scipy.cluster.hierarchy import fcluster, linkage

    centers = rng.normal(size=(max(n // 10, 1), d)) * 5
    F = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, d)) * 0.3
    F[: n // 5] = F[0]  # exact duplicates
    fast = _core.cluster_l1(F, eps)
    np.testing.assert_array_equal(fast, _core.cluster_l1(F, eps, allpairs=True))
    np.testing.assert_array_equal(fast, _core.cluster_l1(F, eps, threads=1))
    if n > 1:
        z = linkage(F, method="single", metric="cityblock")
        sc = fcluster(z, t=eps, criterion="distance")
        seen: dict[int, int] = {}
        np.testing.assert_array_equal(fast, [seen.setdefault(int(c), len(seen)) for c in sc])


def test_lump_rejects_bad_eps():
    net = Network([Layer(np.ones((2, 2)), np.zeros(2), "tanh"), Layer(np.ones((1, 2)), np.zeros(1))])
    for bad in (-1e-9, float("nan"), float("inf"), "0.1", None, True):
        with pytest.raises(afde_nb.InvalidEpsError):
            plump(net, bad)
    with pytest.raises(ValueError, match="mode"):
        plump(net, 0.1, mode="sideways")


@st.composite
def pair_networks(draw):
    """A first hidden layer of two neurons (the pair under test), optionally an identity layer of
    two neurons with equal outgoing columns (one block at every eps), then the outputs."""
    ints = lambda n: np.array(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), float)
    n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    act1 = draw(st.sampled_from(POLY_ACTS))
    layers = [Layer(ints(2 * n_in).reshape(2, n_in), ints(2), act1)]
    if draw(st.booleans()):
        layers.append(Layer(ints(4).reshape(2, 2), ints(2), "identity"))
        col = ints(n_out)[:, None]
        layers.append(Layer(np.hstack([col, col]), ints(n_out), draw(st.sampled_from(POLY_ACTS))))
    else:
        layers.append(Layer(ints(2 * n_out).reshape(n_out, 2), ints(n_out), draw(st.sampled_from(POLY_ACTS))))
    return Network(layers, dtype="float64")


@settings(max_examples=300, deadline=None)
@given(net=pair_networks(), mode=st.sampled_from(["forward", "backward"]))
def test_pair_merges_exactly_at_its_reference_distance(net, mode):
    """The engine's closed forms give the definition's distance itself, not just the same
    partitions: the pair merges at eps = d and not at eps = d - 1/2."""
    ode = afde_nb.encode(net)
    f = reference.drifts(ode)
    i, j = np.flatnonzero(ode.layer == 1)
    dist = reference.fde_distance if mode == "forward" else reference.bde_distance
    d = dist(f, reference.prepartition(ode), int(i), int(j))
    assert plump(net, d, mode).num_blocks[0] == 1
    if d >= 0.5:
        assert plump(net, d - 0.5, mode).num_blocks[0] == 2


@settings(max_examples=150, deadline=None)
@given(net=integer_networks(), mode=st.sampled_from(["forward", "backward"]), eps=HALF_INTEGER_EPS,
       seed=st.integers(0, 2**16))
def test_data_aware_equals_plain_lumping_of_the_column_scaled_network(net, mode, eps, seed):
    """Data-aware distances weight each incoming coefficient by its source neuron's calibration
    RMS: on the first hidden layer that is plain lumping of the network with W_1 diag(rms)."""
    net = Network(net.layers[:1] + [Layer(net.layers[1].weight, net.layers[1].bias, "identity")], dtype="float64")
    rms = np.random.default_rng(seed).uniform(0.1, 3.0, size=net.widths[0])
    scaled = Network([Layer(net.layers[0].weight * rms, net.layers[0].bias, net.layers[0].activation),
                      net.layers[1]], dtype="float64")
    got = plump(net, eps, mode, rms=[rms]).labels
    want = plump(scaled, eps, mode).labels
    np.testing.assert_array_equal(got[0], want[0])


def test_data_aware_ignores_inputs_that_are_silent_on_the_data(rng):
    """Two neurons differing only in the weight from an input that is always 0 on the calibration
    data merge data-aware at eps = 0, and the reduced model is exact on that data."""
    w = rng.normal(size=(3, 4))
    w[1] = w[0]
    w[1, 3] += 1.0  # differs only on input 3
    net = Network([Layer(w, np.zeros(3), "tanh"), Layer(rng.normal(size=(2, 3)), np.zeros(2))])
    X = rng.normal(size=(50, 4))
    X[:, 3] = 0.0
    rms = activation_rms(net, X)
    assert plump(net, 0.0, "backward").num_blocks == [3]
    assert plump(net, 0.0, "backward", rms=rms).num_blocks == [2]
    small = afde_nb.reduce(net, plump(net, 0.0, "backward", rms=rms).labels)
    np.testing.assert_allclose(small.forward(X), net.forward(X), atol=1e-12)


@pytest.mark.parametrize("d,eps", [(8, 0.3), (48, 1.5), (200, 6.0)])
def test_cluster_many_clusters_equals_allpairs(rng, d, eps):
    """Many small clusters spread widely: the engine indexes rows on a grid of partial stripe
    sums; the partition must still be the all-pairs one, for any thread count."""
    centres = rng.normal(size=(600, d)) * 3
    F = centres[rng.integers(0, 600, 3000)] + rng.normal(size=(3000, d)) * (eps / d)
    F[::7] += rng.normal(size=(len(F[::7]), d)) * (eps / 2)  # some rows near the threshold
    want = _core.cluster_l1(F, eps, allpairs=True)
    for threads in (1, 2):
        np.testing.assert_array_equal(_core.cluster_l1(F, eps, threads=threads), want)
    assert 300 < want.max() + 1 < 3000
