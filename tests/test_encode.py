"""The cascade and homotopy polynomial ODE encodings (method.md §2)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import afde_nb
from afde_nb.errors import InvalidArgumentError, ShapeMismatchError

from conftest import mlp


def _cascade_drift_by_formula(net, state):
    """dh_i/dt = s'(h_i) (W_i h_prev + b_i) written out layer by layer."""
    widths = net.widths
    offs = np.cumsum([0] + widths)
    out = np.zeros_like(state)
    for k, l in enumerate(net.layers):
        prev = state[offs[k]:offs[k + 1]]
        h = state[offs[k + 1]:offs[k + 2]]
        z = l.weight @ prev + l.bias
        sp = {"identity": np.ones_like(h), "tanh": 1 - h ** 2, "sigmoid": h - h ** 2,
              "relu": np.ones_like(h), "leaky_relu": np.ones_like(h)}[l.activation]
        out[offs[k + 1]:offs[k + 2]] = sp * z
    return out


@pytest.mark.parametrize("acts,out_act", [(["tanh", "sigmoid"], "identity"), (["identity", "tanh"], "tanh"),
                                          (["relu", "leaky_relu"], "sigmoid")])
def test_cascade_drift_matches_formula(rng, acts, out_act):
    torch.manual_seed(0)
    model = mlp([3, 5, 4, 2], acts, out_act)
    ode = afde_nb.encode(model)
    net = afde_nb.to_network(model)
    assert ode.num_vars == sum(net.widths)
    assert ode.degree <= 3
    for _ in range(3):
        x = rng.normal(size=ode.num_vars)
        np.testing.assert_allclose(ode.drift(x), _cascade_drift_by_formula(net, x), rtol=1e-12, atol=1e-12)
    # ReLU-family neurons are flagged: their encoding holds on the active region only
    assert ode.piecewise.sum() == (9 if acts[0] == "relu" else 0)
    assert np.all(ode.drift(x)[ode.layer == 0] == 0)  # inputs are constant


def test_cascade_single_layer_solution_is_the_layer(rng):
    """With constant inputs, one tanh layer's cascade solution at t = 1 is tanh(W x + b)."""
    torch.manual_seed(1)
    model = mlp([3, 4], [], "tanh")
    ode = afde_nb.encode(model)
    x = rng.normal(size=3)
    sol = solve_ivp(lambda t, s: ode.drift(s), (0, 1), ode.initial_state(x), rtol=1e-10, atol=1e-12)
    want = model(torch.tensor(x, dtype=torch.float32)[None]).detach().numpy()[0]
    np.testing.assert_allclose(sol.y[ode.layer == 1, -1], want, atol=1e-5)


@pytest.mark.parametrize("acts,out_act", [(["tanh", "tanh"], "identity"), (["sigmoid", "identity"], "tanh"),
                                          (["tanh"], "sigmoid")])
def test_homotopy_integrates_to_the_forward_pass(rng, acts, out_act):
    torch.manual_seed(2)
    widths = [2] + [3] * len(acts) + [2]
    model = mlp(widths, acts, out_act, dtype=torch.float64)
    ode = afde_nb.encode(model, kind="homotopy")
    out = ode.layer == ode.layer.max()
    for _ in range(3):
        x = rng.normal(size=2)
        sol = solve_ivp(lambda t, s: ode.drift(s), (0, 1), ode.initial_state(x), rtol=1e-10, atol=1e-12,
                        method="DOP853")
        want = model(torch.tensor(x)[None]).detach().numpy()[0]
        np.testing.assert_allclose(sol.y[out, -1], want, atol=1e-4)


def test_homotopy_refuses_relu_and_size_blowup():
    model = mlp([2, 3, 1], ["relu"])
    with pytest.raises(afde_nb.UnsupportedLayerError, match="polynomial"):
        afde_nb.encode(model, kind="homotopy")
    with pytest.raises(InvalidArgumentError, match="max_terms"):
        afde_nb.encode(mlp([4, 8, 8, 8, 2], ["tanh"] * 3), kind="homotopy", max_terms=500)
    with pytest.raises(InvalidArgumentError, match="kind"):
        afde_nb.encode(model, kind="spline")


def test_erode_export_round_trips_the_drift(rng):
    """Parse the .ode text back (it is plain arithmetic) and compare drifts."""
    torch.manual_seed(3)
    model = mlp([2, 3, 1], ["tanh"])
    ode = afde_nb.encode(model)
    text = ode.to_ode(name="net", inputs=np.array([0.5, -1.0]))
    assert text.startswith("begin model net") and text.rstrip().endswith("end model")
    init = dict(line.strip().split(" = ") for line in text.split("begin init")[1].split("end init")[0].strip().splitlines())
    assert float(init["x0"]) == 0.5 and float(init["x1"]) == -1.0
    rhs = {}
    for line in text.split("begin ODE")[1].split("end ODE")[0].strip().splitlines():
        lhs, expr = line.strip().split(" = ")
        rhs[lhs[2:-1]] = expr
    x = rng.normal(size=ode.num_vars)
    env = dict(zip(ode.names, x))
    parsed = np.array([eval(rhs[n], {}, env) for n in ode.names])  # noqa: S307 - our own output
    np.testing.assert_allclose(parsed, ode.drift(x), rtol=1e-12)


def _erode_partition(text: str) -> list[list[str]]:
    """The blocks of the ``begin partition ... end partition`` section (ERODE: ``{a, b}, {c}``)."""
    body = text.split(" begin partition\n")[1].split(" end partition\n")[0]
    blocks = re.findall(r"\{([^{}]*)\}", body)
    assert re.fullmatch(r"\s*(\{[^{}]*\}\s*,\s*)*\{[^{}]*\}\s*", body), body  # comma-separated blocks
    return [[v.strip() for v in b.split(",")] for b in blocks]


@pytest.mark.parametrize("kind", ["cascade", "homotopy"])
def test_erode_export_declares_the_layer_prepartition(kind):
    """Inputs and outputs alone, one block per hidden layer: afde-nb's initial partition, so ERODE
    does not start from one block that lumps inputs together."""
    torch.manual_seed(4)
    ode = afde_nb.encode(mlp([3, 4, 5, 2], ["tanh", "sigmoid"]), kind=kind)
    text = ode.to_ode(name="net_1")
    sections = [l.strip() for l in text.splitlines() if l.strip().startswith(("begin", "end"))]
    assert sections == ["begin model net_1", "begin init", "end init", "begin partition", "end partition",
                        "begin ODE", "end ODE", "end model"]  # ERODE's order: init, partition, ODE
    blocks = _erode_partition(text)
    assert blocks == [["x0"], ["x1"], ["x2"], [f"h1_{i}" for i in range(4)], [f"h2_{i}" for i in range(5)],
                      ["y0"], ["y1"]]
    assert sorted(v for b in blocks for v in b) == sorted(ode.names)  # every variable exactly once
    assert [[ode.names[v] for v in b] for b in ode.prepartition()] == blocks


def test_erode_prepartition_without_hidden_layers():
    ode = afde_nb.encode(mlp([2, 3], [], "tanh"))
    assert _erode_partition(ode.to_ode()) == [["x0"], ["x1"], ["y0"], ["y1"], ["y2"]]


@pytest.mark.parametrize("name", ["", "1net", "my-net", "net.ode", "a b", "_x", "model", "end", "d", None, 3])
def test_erode_model_name_must_be_an_identifier(name):
    ode = afde_nb.encode(mlp([2, 2, 1], ["tanh"]))
    with pytest.raises(InvalidArgumentError, match="ERODE identifier"):
        ode.to_ode(name=name)


def test_erode_export_checks_its_inputs():
    ode = afde_nb.encode(mlp([2, 2, 1], ["tanh"]))
    assert ode.to_ode(name="Net_2").startswith("begin model Net_2\n")
    with pytest.raises(ShapeMismatchError, match=r"\(2,\)"):
        ode.to_ode(inputs=np.zeros(3))
    with pytest.raises(InvalidArgumentError, match="finite"):
        ode.to_ode(inputs=np.array([0.0, np.nan]))
    with pytest.raises(ShapeMismatchError):
        ode.drift(np.zeros(4))
