"""Merge paths (method.md §8): the engine's agglomeration against scipy and a slow reference,
exact symmetries against the generic ODE reference, nested cuts, budgets, eps's meaning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage

import afde_nb
from afde_nb import _core
from afde_nb.models.stack import to_network
from afde_nb.core.path import merge_path

from conftest import mlp, set_weights
from reference import symmetric_bde_distance


def canon(labels) -> np.ndarray:
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(x), len(seen)) for x in labels])


def cut(X, w, linkage_name, symmetric, m):
    n = len(X)
    pairs, signs, heights = _core.agglomerate(X, w, np.arange(n), np.ones(n, dtype=np.int64), linkage_name,
                                              symmetric, 0)
    return _core.replay(n, pairs, signs, m), heights


@pytest.mark.parametrize("method", ["ward", "complete"])
@pytest.mark.parametrize("seed", range(5))
def test_unsigned_unweighted_equals_scipy(method, seed):
    """Without symmetry, with unit masses and distinct distances, every cut equals scipy's."""
    X = np.random.default_rng(seed).normal(size=(40, 6))
    Z = linkage(X, method=method)
    for k in (1, 2, 3, 5, 10, 25, 40):
        (lab, signs), heights = cut(X, np.ones(40), method, False, 40 - k)
        want = canon(fcluster(Z, k, criterion="maxclust"))
        np.testing.assert_array_equal(lab, want, err_msg=f"k={k}")
        assert np.all(signs == 1)
    # heights: scipy's Ward height is sqrt(2 * cost); complete's is the diameter
    _, heights = cut(X, np.ones(40), method, False, 0)
    want = Z[:, 2] ** 2 / 2 if method == "ward" else Z[:, 2]
    np.testing.assert_allclose(heights, want, rtol=1e-9)


def slow_signed_ward(X, w):
    """Greedy Ward on oriented blocks from scratch: the definition, O(n^4)."""
    blocks = [([i], [1]) for i in range(len(X))]
    heights = []
    parts = [canon(range(len(X)))]

    def centroid(members, signs):
        ws = w[members]
        return (ws[:, None] * X[members] * np.array(signs)[:, None]).sum(0) / ws.sum(), ws.sum()

    while len(blocks) > 1:
        best = None
        for a in range(len(blocks)):
            for b in range(a + 1, len(blocks)):
                ca, ma = centroid(*blocks[a])
                cb, mb = centroid(*blocks[b])
                for s in (1, -1):
                    cost = ma * mb / (ma + mb) * np.sum((ca - s * cb) ** 2)
                    if best is None or cost < best[0]:
                        best = (cost, a, b, s)
        cost, a, b, s = best
        ma, sa = blocks[a]
        mb, sb = blocks[b]
        blocks[a] = (ma + mb, sa + [s * x for x in sb])
        del blocks[b]
        heights.append(cost)
        lab = np.empty(len(X), dtype=int)
        for k, (members, _) in enumerate(blocks):
            lab[members] = k
        parts.append(canon(lab))
    return np.array(heights), parts


@pytest.mark.parametrize("seed", range(4))
def test_signed_weighted_ward_equals_slow_reference(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(14, 4))
    X[5] = -X[2] + 0.01 * rng.normal(size=4)  # nearly negated pairs make the sign matter
    X[9] = -X[0] + 0.02 * rng.normal(size=4)
    w = rng.uniform(0.2, 3.0, size=14)
    want_h, want_parts = slow_signed_ward(X, w)
    pairs, signs, heights = _core.agglomerate(X, w, np.arange(14), np.ones(14, dtype=np.int64), "ward", True, 0)
    np.testing.assert_allclose(heights, want_h, rtol=1e-9, atol=1e-12)
    for m, want in enumerate(want_parts):
        lab, s = _core.replay(14, pairs, signs, m)
        np.testing.assert_array_equal(lab, want, err_msg=f"after {m} merges")
    lab, s = _core.replay(14, pairs, signs, 2)
    assert lab[5] == lab[2] and s[5] == -s[2] and lab[9] == lab[0] and s[9] == -s[0]


def test_engine_errors_are_clear():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        _core.agglomerate(X, [1.0, 0.0, 1.0], [0, 1, 2], [1, 1, 1], "ward", True, 0)
    with pytest.raises(ValueError, match="canonical"):
        _core.agglomerate(X, [1.0] * 3, [1, 0, 2], [1, 1, 1], "ward", True, 0)
    with pytest.raises(ValueError, match="linkage"):
        _core.agglomerate(X, [1.0] * 3, [0, 1, 2], [1, 1, 1], "single", True, 0)
    with pytest.raises(ValueError, match="features must be finite"):
        _core.agglomerate(np.array([[np.nan, 0], [0, 0], [1, 1]]), [1.0] * 3, [0, 1, 2], [1, 1, 1], "ward", True, 0)
    with pytest.raises(ValueError, match="cut outside"):
        _core.replay(3, np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64), 1)
    assert _core.agglomerate(np.zeros((0, 2)), [], [], [], "ward", True, 0)[0].shape == (0, 2)


def planted(rng, act: str, widths=(4, 9, 7, 2)):
    """A network whose hidden layers hold symmetric copies: neuron 3 is neuron 1 under the
    activation's symmetry (tanh/identity: negated row and bias; sigmoid: the same, h -> 1 - h;
    ReLU: a positive multiple), and layer 2's neuron 5 likewise of neuron 2."""
    Ws = [rng.normal(size=(widths[k + 1], widths[k])) for k in range(len(widths) - 1)]
    bs = [rng.normal(size=widths[k + 1]) for k in range(len(widths) - 1)]
    f = 2.5 if act in ("relu", "leaky_relu") else -1.0
    for l, (i, j) in ((0, (1, 3)), (1, (2, 5))):
        Ws[l][j], bs[l][j] = f * Ws[l][i], f * bs[l][i]
    return set_weights(mlp(list(widths), [act, act]), Ws, bs)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "identity", "relu", "leaky_relu"])
@pytest.mark.parametrize("mode", ["backward", "forward"])
@pytest.mark.parametrize("method", ["ward", "complete"])
def test_symmetric_copies_merge_exactly_at_eps_zero(act, mode, method, rng):
    model = planted(rng, act)
    c = afde_nb.compress(model, 0.0, method=method, mode=mode)
    assert c.partition[0][1] == c.partition[0][3] and c.partition[1][2] == c.partition[1][5]
    assert [s.neurons_after for s in c.layers] == [8, 6]  # nothing else is exact
    x = torch.randn(500, 4)
    with torch.no_grad():  # float32: 1e-5 relative to the output's scale
        y = model(x)
        assert (c.model(x) - y).abs().max().item() <= 1e-5 * max(1.0, y.abs().max().item())
    # without the symmetry only positive multiples (ReLU family) are exact
    c = afde_nb.compress(model, 0.0, method=method, mode=mode, symmetry=False)
    want = [8, 6] if act in ("relu", "leaky_relu") else [9, 7]
    assert [s.neurons_after for s in c.layers] == want


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "identity"])
def test_symmetry_is_bde_in_the_slow_reference(act, rng):
    """The partition and orientations at eps = 0 are an exact BDE of the polynomial ODE after the
    change of variables h -> -h (tanh, identity) or h -> 1 - h (sigmoid); wrong orientations are not."""
    model = planted(rng, act)
    net = to_network(model)
    part = afde_nb.lump(net, 0.0)
    ode = afde_nb.encode(net)
    labels = np.arange(ode.num_vars)
    alpha, beta = np.zeros(ode.num_vars), np.ones(ode.num_vars)
    for h, (lab, s) in enumerate(zip(part.labels, part.signs)):
        idx = np.flatnonzero(ode.layer == h + 1)
        labels[idx] = ode.num_vars + 100 * h + lab
        beta[idx] = s
        if act == "sigmoid":
            alpha[idx] = np.where(s < 0, 1.0, 0.0)
    assert any(np.any(s < 0) for s in part.signs)
    assert symmetric_bde_distance(ode, labels, alpha, beta) <= 1e-9
    assert symmetric_bde_distance(ode, labels, np.zeros_like(alpha), np.ones_like(beta)) > 0.1


@pytest.mark.parametrize("mode", ["backward", "forward"])
@pytest.mark.parametrize("method", ["ward", "complete"])
def test_cuts_are_nested_in_eps(mode, method, rng):
    torch.manual_seed(0)
    net = to_network(mlp([6, 40, 30, 3], ["tanh", "tanh"]))
    path = merge_path(net, method=method, mode=mode)
    eps = [0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 2.0, 10.0]
    parts = [path.partition(e) for e in eps]
    for a, b in zip(parts, parts[1:]):
        for la, lb in zip(a.labels, b.labels):
            for blk in range(la.max() + 1):  # every block at smaller eps sits inside one block at larger eps
                assert len(set(lb[la == blk])) == 1
        assert a.size >= b.size
    assert parts[-1].size < parts[0].size


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_every_budget_is_reachable_within_two_points(act):
    torch.manual_seed(0)
    model = mlp([8, 128, 128, 2], [act, act])
    full = afde_nb.compress(model).params_before
    X = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    for f in np.arange(0.95, 0.04, -0.05):
        for calib in (None, X):
            c = afde_nb.compress(model, target_params=int(f * full), calibration=calib, repair=False)
            assert f - 0.02 <= c.kept <= f + 1e-9, (f, c.kept)


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_eps_is_the_first_order_error_estimate(act):
    """eps (relative) tracks the measured RMS change of the next layer's pre-activations: within a
    factor of a few on a smooth network, and the cut at eps never reports more than eps. (The slope
    is in the masses: a Lipschitz factor on top made sigmoid's eps 4x too small.)"""
    torch.manual_seed(1)
    model = mlp([6, 64, 3], [act])
    net = to_network(model)
    X = np.random.default_rng(0).normal(size=(2000, 6))
    path = merge_path(net, calibration=X)
    z = net.forward(X)
    scale = np.sqrt(np.mean(np.sum(z ** 2, axis=1)))
    checked = 0
    for e in (0.01, 0.03, 0.1, 0.3):
        part = path.partition(e)
        est = max(part.eps_per_layer)  # the estimate at the cut actually taken
        assert est <= e
        if est == 0:  # no merge fits under this eps
            continue
        checked += 1
        small = afde_nb.reduce(net, part)
        measured = np.sqrt(np.mean(np.sum((small.forward(X) - z) ** 2, axis=1))) / scale
        assert 0.2 * est <= measured <= 3 * est, (e, est, measured)
    assert checked >= 2


def test_repair_lowers_the_calibration_error_and_is_reported(rng):
    torch.manual_seed(0)
    model = mlp([5, 48, 32, 2], ["tanh", "tanh"])
    X = rng.normal(size=(400, 5)).astype(np.float32)
    c = afde_nb.compress(model, 0.2, calibration=X)
    assert c.repaired == "calibration"
    assert c.calibration_error["rms"] < 0.7 * c.calibration_error_before_repair["rms"]
    off = afde_nb.compress(model, 0.2, calibration=X, repair=False)
    # eps is the output error accepted (issue 30): the cut without repair is its own (its estimate
    # measured without the repair), so compare the same cut: a budget of the same path, unrepaired
    assert off.repaired is None and off.calibration_error_before_repair is None
    same = afde_nb.compress(model, target_params=c.params_after, calibration=X, repair=False, path=c.path)
    assert [a.tolist() for a in same.partition] == [a.tolist() for a in c.partition]
    assert same.calibration_error == c.calibration_error_before_repair
    pseudo = afde_nb.compress(model, 0.2, repair="pseudo")
    assert pseudo.repaired == "pseudo"
    free = afde_nb.compress(model, 0.2)
    with torch.no_grad():
        x = torch.as_tensor(X)
        err = lambda m: (m(x) - model(x)).pow(2).mean().item()  # noqa: E731
        assert err(pseudo.model) < err(free.model)
    # eps = 0 is exact: nothing is lossy, so repair leaves the reduced network alone
    exact = afde_nb.compress(model, 0.0, calibration=X)
    assert exact.repaired is None
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="pseudo"):
        afde_nb.compress(model, 0.2, repair=True)
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="repair"):
        afde_nb.compress(model, 0.2, repair="sometimes")


def test_repaired_masks_keep_their_zeros(rng):
    from afde_nb.eval import baselines as bl

    torch.manual_seed(0)
    model = mlp([5, 32, 32, 2], ["tanh", "tanh"])
    X = rng.normal(size=(300, 5)).astype(np.float32)
    p = bl.magnitude_prune(model, 0.5, scope="global")
    r = bl.repair_pruned(p, model, X)
    for a, b in zip(p.model.parameters(), r.model.parameters()):
        if a.ndim == 2:
            assert torch.equal(a == 0, b == 0)
    assert r.params == p.params and r.repaired == "calibration"
    x = torch.as_tensor(X)
    with torch.no_grad():
        assert (r.model(x) - model(x)).pow(2).mean() < (p.model(x) - model(x)).pow(2).mean()


def test_target_error_walks_the_path(rng):
    torch.manual_seed(0)
    model = mlp([5, 48, 2], ["tanh"])
    X = rng.normal(size=(400, 5)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.as_tensor(X)).numpy() + 0.1 * rng.normal(size=(400, 2))
    base = np.mean((model(torch.as_tensor(X)).detach().numpy() - y) ** 2)
    loose = afde_nb.compress(model, target_error=0.5, calibration=X, calibration_targets=y)
    tight = afde_nb.compress(model, target_error=0.01, calibration=X, calibration_targets=y)
    assert loose.params_after <= tight.params_after < loose.params_before
    for c in (loose, tight):
        got = np.mean((c.model(torch.as_tensor(X)).detach().numpy() - y) ** 2)
        assert got <= base * (1 + c.target["error_increase"]) + 1e-9


def test_curve_spans_the_sizes():
    torch.manual_seed(0)
    c = afde_nb.compress(mlp([4, 30, 20, 2], ["tanh", "tanh"]), 0.1)
    pts = c.path.curve()
    eps = [e for e, _ in pts]
    kept = [k for _, k in pts]
    assert eps == sorted(eps) and kept == sorted(kept, reverse=True)
    assert kept[0] == 1.0 and kept[-1] < 0.1


@pytest.mark.parametrize("method", ["ward", "complete"])
def test_threads_never_change_the_merge_path(method):
    """The parallel distance fill (threshold 0: parallel even here) gives the serial merges."""
    from afde_nb.core.engine import parallel_threshold

    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 7))
    X[40] = -X[3]
    w = rng.uniform(0.5, 2.0, size=90)
    args = (X, w, np.arange(90), np.ones(90, dtype=np.int64), method, True)
    serial = _core.agglomerate(*args, 1)
    with parallel_threshold(0):
        for t in (1, 2, 4):
            got = _core.agglomerate(*args, t)
            for a, b in zip(serial, got):
                np.testing.assert_array_equal(a, b)


def test_reduce_at_eps_zero_keeps_the_output():
    """reduce() on the eps = 0 partition of a network with planted copies is the same function."""
    rng = np.random.default_rng(5)
    model = planted(rng, "tanh")
    net = to_network(model)
    small = afde_nb.reduce(net, afde_nb.lump(net, 0.0))
    assert small.widths == [4, 8, 6, 2]
    x = rng.normal(size=(200, 4))
    # float32 model, float32 quotient (issue 10): equal to float32 rounding of the merged columns
    np.testing.assert_allclose(small.forward(x), net.forward(x), rtol=1e-6, atol=1e-6)


def test_a_reused_path_gives_the_same_compression_and_is_checked(rng):
    torch.manual_seed(0)
    model = mlp([5, 40, 30, 2], ["tanh", "tanh"])
    X = rng.normal(size=(200, 5)).astype(np.float32)
    first = afde_nb.compress(model, 0.05, calibration=X)
    for eps in (0.0, 0.02, 0.1):
        again = afde_nb.compress(model, eps, calibration=X, path=first.path)
        fresh = afde_nb.compress(model, eps, calibration=X)
        assert again.path is first.path
        for a, b in zip(again.partition, fresh.partition):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(again.model.parameters(), fresh.model.parameters()):
            assert torch.equal(a, b)
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="built for"):
        afde_nb.compress(model, 0.05, path=first.path)  # built with calibration, asked without
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="built for"):
        afde_nb.compress(model, 0.05, calibration=X, mode="forward", path=first.path)
    other = mlp([5, 40, 30, 2], ["tanh", "tanh"])
    with pytest.raises(afde_nb.errors.InvalidArgumentError, match="another model"):
        afde_nb.compress(other, 0.05, calibration=X, path=first.path)


def test_a_dead_relu_source_keeps_later_exact_merges_exact():
    """Found by hypothesis: a ReLU neuron with a zero row is constant 0, so the neurons it feeds lump
    by their biases alone; reduce must keep reading it with scale 0 (not as itself) for that merge to
    stay exact."""
    from afde_nb.core.network import Layer, Network

    net = Network([Layer(np.zeros((1, 0)), np.array([0.0]), "relu", 0.1),
                   Layer(np.array([[0.12573022], [0.64042265], [-0.53566937]]),
                         np.array([-0.13210486, 0.10490012, 0.36159505]), "relu", 0.1),
                   Layer(np.array([[1.30400005, 0.94708096, -0.70373524]]), np.array([-1.26542147]), "identity")],
                  dtype="float64")
    for method in ("components", "ward"):
        part = afde_nb.lump(net, 0.0, method=method)
        np.testing.assert_array_equal(part.labels[1], [0, 1, 1])
        small = afde_nb.reduce(net, part)
        np.testing.assert_allclose(small.forward(np.zeros((3, 0))), net.forward(np.zeros((3, 0))), atol=1e-12)


def greedy_signed_ward(X, w):
    """Ward by the definition, vectorised: every step merges the globally cheapest pair of blocks
    (centroids, masses, the cheaper sign). Without ties this is the nearest-neighbour chain's
    merge set; returned as the sorted heights and the cut labels after each merge."""
    C, m = X.astype(float).copy(), w.astype(float).copy()
    members = [[i] for i in range(len(X))]
    alive = np.ones(len(X), dtype=bool)
    heights, parts = [], []
    for _ in range(len(X) - 1):
        idx = np.flatnonzero(alive)
        Ca, ma = C[idx], m[idx]
        nrm = (Ca ** 2).sum(1)
        g = Ca @ Ca.T
        f = ma[:, None] * ma[None, :] / (ma[:, None] + ma[None, :])
        cp = f * np.maximum(0.0, nrm[:, None] + nrm[None, :] - 2 * g)
        cm = f * np.maximum(0.0, nrm[:, None] + nrm[None, :] + 2 * g)
        cost = np.minimum(cp, cm)
        np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        s = -1.0 if cm[i, j] < cp[i, j] else 1.0
        a, b = idx[min(i, j)], idx[max(i, j)]
        heights.append(cost[i, j])
        C[a] = (m[a] * C[a] + s * m[b] * C[b]) / (m[a] + m[b])
        m[a] += m[b]
        alive[b] = False
        members[a] += members[b]
        lab = np.empty(len(X), dtype=int)
        for k, blk in enumerate(np.flatnonzero(alive)):
            lab[members[blk]] = k
        parts.append(canon(lab))
    return np.array(heights), parts


def test_signed_ward_on_a_shrinking_matrix_equals_the_definition():
    """n = 300: the chain compacts its Gram matrix to the active blocks once half are merged
    (from 256 blocks up); merges, signs and heights stay those of the definition."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 5))
    X[150:170] = -X[:20] + 0.05 * rng.normal(size=(20, 5))  # negated near-copies: the sign matters
    w = rng.uniform(0.3, 3.0, size=300)
    want_h, want_parts = greedy_signed_ward(X, w)
    pairs, signs, heights = _core.agglomerate(X, w, np.arange(300), np.ones(300, dtype=np.int64), "ward", True, 0)
    np.testing.assert_allclose(heights, np.maximum.accumulate(np.sort(want_h)), rtol=1e-9, atol=1e-12)
    for m in (1, 20, 100, 150, 151, 200, 280, 299):
        lab, _ = _core.replay(300, pairs, signs, m)
        np.testing.assert_array_equal(lab, want_parts[m - 1], err_msg=f"after {m} merges")
    assert np.sum(signs < 0) >= 20


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_metric_rows_are_the_probes_pre_activations(act):
    """With fewer probes than inputs and no merged source, the merge path takes its metric rows
    from the probes' forward (pre-activations, / scale, / sqrt(N)) instead of the n x d x N product
    A Ua^T / sqrt(N): the same rows to rounding."""
    from afde_nb.core.path import Source, _metric_rows, _reduced_values, aligned, incoming

    torch.manual_seed(0)
    net = to_network(mlp([40, 30, 20, 2], [act, act]))
    X = np.random.default_rng(0).normal(size=(16, 40))
    H = net.layer_inputs(X)
    for h in (0, 1):
        layer = net.layers[h]
        # a source with scales (ReLU family) and no merges: still the pre-activations
        src = Source(np.arange(layer.in_features), np.ones(layer.in_features, dtype=np.int64),
                     np.linspace(0.5, 2.0, layer.in_features) if h and act == "relu" else np.ones(layer.in_features),
                     net.layers[h - 1].activation if h else "identity")
        R, b = incoming(layer.weight, layer.bias, src)
        A, c = aligned(R, b, act)
        U = _reduced_values(H[h], src)
        want = A @ np.column_stack([U, np.ones(len(U))]).T / np.sqrt(len(U))
        z = H[h] @ layer.weight.T + layer.bias
        got = _metric_rows(H[h], z, layer, src, act, c)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("merged", [False, True])
def test_patch_rows_carry_the_metric_through_the_probes(merged):
    """A convolution layer (taps > 1, n << d) with more probe rows than inputs takes its metric rows
    through the probes, A Ua^T / sqrt(N) (from the forward's pre-activations where no source
    merged), instead of the Cholesky route: the same metric, M M^T = A C A^T up to the Cholesky
    route's ridge, and the same merges."""
    from afde_nb.core.network import Layer
    from afde_nb.core.path import RIDGE, Source, _metric_rows, _reduced_values, aligned, incoming

    rng = np.random.default_rng(3)
    taps, units, n, N = 9, 6, 5, 400  # d = 6 * 9 + 1 = 55 < N
    layer = Layer(rng.normal(size=(n, units * taps)), rng.normal(size=n), "relu", taps=taps)
    H = np.maximum(rng.normal(size=(N, units * taps)), 0.0)
    labels = np.array([0, 1, 1, 2, 3, 4]) if merged else np.arange(units)
    src = Source(labels, np.ones(units, dtype=np.int64), np.linspace(0.5, 2.0, units), "relu")
    if merged:  # the source's blocks are equal units: their columns of H agree
        H.reshape(N, units, taps)[:, 2] = H.reshape(N, units, taps)[:, 1] * (src.scales[2] / src.scales[1])
    R, b = incoming(layer.weight, layer.bias, src, taps)
    A, c = aligned(R, b, "relu")
    z = H @ layer.weight.T + layer.bias
    got = _metric_rows(H, z, layer, src, "relu", c)
    assert got.shape == (n, N)  # through the probes, not d columns
    U = _reduced_values(H, src.expand(taps))
    Ua = np.column_stack([U, np.ones(N)])
    C = Ua.T @ Ua / N
    C[np.diag_indices_from(C)] += RIDGE * np.trace(C) / len(C)
    want = A @ C @ A.T
    np.testing.assert_allclose(got @ got.T, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    L = A @ np.linalg.cholesky(C)  # the route it replaces
    w = np.ones(n)
    for X in (got, L):
        assert _core.agglomerate(np.ascontiguousarray(X), w, np.arange(n), np.ones(n, dtype=np.int64), "ward",
                                 False, 0)[0].tolist() == \
            _core.agglomerate(np.ascontiguousarray(L), w, np.arange(n), np.ones(n, dtype=np.int64), "ward",
                              False, 0)[0].tolist()


def test_approximate_path_is_explicit_and_keeps_eps_zero_exact(rng):
    """approx=r: r probe rows in float32, recorded in meta; the exact merges (eps = 0) are those of
    the exact path; with every calibration row it only rounds, so the partitions agree."""
    model = planted(rng, "tanh", widths=(6, 24, 24, 2))
    net = to_network(model)
    X = rng.normal(size=(64, 6))
    exact = merge_path(net, calibration=X)
    for r in (8, 64):
        p = merge_path(net, calibration=X, approx=r)
        assert p.meta["approx"] == r and "approx" not in exact.meta
        for a, b in zip(exact.partition(0.0).labels, p.partition(0.0).labels):
            np.testing.assert_array_equal(a, b)
        assert all(len(lp.pairs) == lp.n - 1 for lp in p.layers)
    p = merge_path(net, calibration=X, approx=64)
    for m in ([5, 5], [12, 12], [20, 18]):
        for a, b in zip(exact.partition_at(m).labels, p.partition_at(m).labels):
            np.testing.assert_array_equal(a, b)
    for bad in (0, 1, True, 2.5, "64"):
        with pytest.raises(ValueError, match="approx"):
            merge_path(net, approx=bad)
    c = afde_nb.compress(model, target_params=300, calibration=X, path=p)
    assert c.params_after <= 300


@pytest.mark.parametrize("calibrated", [False, True])
def test_layers_built_in_parallel_give_the_same_path(rng, calibrated):
    """MergePath.build(workers=2) builds the layers two at a time (threads): the same merges, signs, heights,
    bounds and masses as building them one by one, for a deep net where the cached pre-activations
    are shared between neighbouring layers."""
    widths = [6, 40, 40, 40, 40, 2]
    Ws = [rng.normal(size=(widths[k + 1], widths[k])) / np.sqrt(widths[k]) for k in range(5)]
    bs = [rng.normal(size=widths[k + 1]) for k in range(5)]
    Ws[1][7], bs[1][7] = -Ws[1][3], -bs[1][3]  # one exact (negated) copy
    net = to_network(set_weights(mlp(widths, ["tanh"] * 4), Ws, bs))
    X = rng.normal(size=(32, 6)) if calibrated else None
    serial = merge_path(net, calibration=X)
    for lp in reversed(serial.layers):  # one by one, out of order
        lp.pairs
    par = merge_path(net, calibration=X).build(workers=2)
    for a, b in zip(serial.layers, par.layers):
        for f in ("pairs", "signs", "heights", "bounds", "weights"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.mark.parametrize("seed", range(2))
def test_ward_with_delayed_column_writes_equals_scipy_at_scale(seed):
    """n = 1500: the chain writes merged blocks' columns 16 merges at a time, fills its scratch
    columns (k / 4) and compacts several times; every cut and height is still scipy's."""
    n = 1500
    X = np.random.default_rng(seed).normal(size=(n, 12))
    Z = linkage(X, method="ward")
    pairs, signs, heights = _core.agglomerate(X, np.ones(n), np.arange(n), np.ones(n, dtype=np.int64), "ward", False, 0)
    np.testing.assert_allclose(heights, Z[:, 2] ** 2 / 2, rtol=1e-9, atol=1e-12)
    for k in (1000, 700, 371, 100, 17, 3):
        lab, _ = _core.replay(n, pairs, signs, n - k)
        np.testing.assert_array_equal(lab, canon(fcluster(Z, k, criterion="maxclust")), err_msg=f"k={k}")


@pytest.mark.parametrize("gram32", [False, True])
def test_ward_work_buffer_changes_nothing(gram32):
    """A caller's work buffer (reused across a merge path's layers) gives the merges of a fresh
    one; a buffer of the wrong dtype or too small is not used (and not written)."""
    rng = np.random.default_rng(4)
    n = 400
    X = rng.normal(size=(n, 9))
    X[200:230] = -X[:30] + 0.05 * rng.normal(size=(30, 9))
    w = rng.uniform(0.3, 3.0, size=n)
    args = (X, w, np.arange(n), np.ones(n, dtype=np.int64), "ward", True, 0, gram32)
    want = _core.agglomerate(*args)
    dt = np.float32 if gram32 else np.float64
    need = n * _core.ward_stride(n)
    assert _core.ward_stride(n) >= n + 64
    for work in (np.full(need, np.nan, dtype=dt), np.full(need + 1000, np.nan, dtype=dt)):
        got = _core.agglomerate(*args, work)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        assert np.isfinite(work[:need]).all()  # it was the buffer
    for unused in (np.full(need - 1, np.nan, dtype=dt), np.full(need, np.nan, dtype=np.float64 if gram32 else np.float32)):
        got = _core.agglomerate(*args, unused)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        assert np.isnan(unused).all()


def test_float32_gram_gives_the_float64_merges_without_near_ties():
    """The approximate paths' float32 Gram and chain (updates rounded to float): the same merges
    as float64 where no two costs are within float rounding, heights to float precision."""
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(30, 6)) * 10.0
    X = np.repeat(centres, 10, axis=0) + rng.normal(size=(300, 6))  # clear clusters, then within
    w = rng.uniform(0.5, 2.0, size=300)
    a = _core.agglomerate(X, w, np.arange(300), np.ones(300, dtype=np.int64), "ward", True, 0, False)
    b = _core.agglomerate(X, w, np.arange(300), np.ones(300, dtype=np.int64), "ward", True, 0, True)
    np.testing.assert_allclose(b[2], a[2], rtol=1e-4, atol=1e-4 * a[2].max())
    for m in (270, 290, 295, 299):  # the cluster level and above: far from ties
        np.testing.assert_array_equal(_core.replay(300, *b[:2], m)[0], _core.replay(300, *a[:2], m)[0])


def test_float32_rows_go_to_the_float32_gram_as_they_are():
    """An approximate path's float32 rows (singletons, gram32) skip the float64 copy: the same
    merges as the same values passed as float64; NaN and bad weights are still refused."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(500, 7)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=500)
    args = (w, np.arange(500), np.ones(500, dtype=np.int64), "ward", True, 0, True)
    a = _core.agglomerate(X, *args)
    b = _core.agglomerate(X.astype(np.float64), *args)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    X[17, 3] = np.nan
    with pytest.raises(ValueError, match="features must be finite"):
        _core.agglomerate(X, *args)
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        _core.agglomerate(np.zeros((3, 2), dtype=np.float32), [1.0, -1.0, 1.0], [0, 1, 2], [1, 1, 1], "ward", True, 0, True)


def test_merge_path_keeps_no_buffers_or_probes_once_built(rng):
    """Ward's work buffers are shared between the layers only while MergePath.build runs, and a
    built path holds no probe activations (a kept Compression.path must not hold 100s of MB)."""
    widths = [5, 70, 70, 70, 2]
    torch.manual_seed(1)
    net = to_network(mlp(widths, ["tanh"] * 3))
    p = merge_path(net)
    p.layers[1].pairs  # one layer alone, on first use
    assert p.probes._work == [] and not p.probes.pooling
    assert p.probes._pre  # the other layers still need theirs
    p.build()
    assert p.probes._work == [] and not p.probes.pooling
    assert p.probes._pre == {} and p.probes._ins == {}
    q = merge_path(net).build()
    for a, b in zip(p.layers, q.layers):  # built in another order: the same path
        np.testing.assert_array_equal(a.pairs, b.pairs)
        np.testing.assert_array_equal(a.heights, b.heights)


def test_merge_path_memory_a_few_probe_arrays_beside_the_work_buffer():
    """Built layer by layer with more inputs than probes (the metric rows are the probes'
    pre-activations), a merge path holds at its peak Ward's work buffer and about five probe-sized
    arrays: a layer's own probes go before its chain's buffer is taken, the forward's float64 copy
    of a float32 layer goes into that buffer while it is idle, and the slopes come from the
    forward's phi(z). (Before: six to seven; at width 1024 each is a float32 layer's size, so
    these arrays decide compress()'s peak memory there, docs/performance.md §10.)"""
    import tracemalloc

    from afde_nb.core.path import PROBES

    w = 600
    torch.manual_seed(0)
    net = to_network(mlp([w] * 5, ["tanh"] * 3))
    tracemalloc.start()
    try:
        merge_path(net).build()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    probe, ward = PROBES * w * 8, w * _core.ward_stride(w) * 8
    assert (peak - ward) / probe < 5.5


def test_for_params_is_the_first_step_of_the_order_within_the_budget():
    """for_params bisects the global order; it must pick what walking the order does: the first
    step (fewest merges) whose parameter count is within the target, for every scale."""
    torch.manual_seed(3)
    net = to_network(mlp([5, 17, 11, 9, 3], ["tanh"] * 3))
    path = merge_path(net, method="ward").build()
    seq = path.sequence()
    counts = [path.params_at(ms) for ms in seq]
    for scale in (None, [1.0, 4.0, 0.25]):
        seq = path.sequence(scale)
        for target in sorted({path.params_at(ms) for ms in seq}) + [net.num_params - 1, net.num_params + 5]:
            want = next((ms for ms in seq if path.params_at(ms) <= target), None)
            assert path.for_params(target, scale) == want
            if want and sum(want) > sum(lp.exact for lp in path.layers):
                assert path.params_at(path.for_params(target, scale)) <= target
    assert counts == sorted(counts, reverse=True)  # every merge removes parameters
    with pytest.raises(afde_nb.errors.BudgetUnreachableError):
        path.for_params(min(counts) - 1)
