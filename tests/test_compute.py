"""issue 29: the heavy arithmetic (units' values, activations on rows, repair's Gram matrices and
solves) runs in torch, in the model's dtype on its device (afde_nb.core.compute), and agrees with
the float64 numpy arithmetic it replaced (tests/reference.py) to the model dtype's precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afde_nb
from afde_nb.core import gated as cg
from afde_nb.core.network import ACTIVATIONS, Layer, Network, apply_activation
from afde_nb.core.reduce import quotient
from afde_nb.core.repair import means, products, repair
from afde_nb.models.capture import capture

from reference import gated_repair_numpy, gated_values_numpy, repair_numpy

#: the parameters the activations that need them are tested with
PARAMS = {"threshold": (("threshold", 0.1), ("value", -0.5)), "laplace": (("mu", 0.7), ("sigma", 0.3)),
          "xielu": (("alpha_p", 0.8), ("alpha_n", 0.8), ("beta", 0.5), ("eps", -1e-6))}


class Gated(nn.Module):
    def __init__(self, d: int = 8, n: int = 16, out: int = 5):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, n), nn.Linear(d, n), nn.Linear(n, out)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def planted(dtype: torch.dtype) -> Gated:
    """A gated layer whose unit 9 is an exact copy of unit 2 (gate and up rows)."""
    torch.manual_seed(0)
    m = Gated().to(dtype).eval()
    with torch.no_grad():
        for lin in (m.gate, m.up):
            lin.weight[9], lin.bias[9] = lin.weight[2], lin.bias[2]
    return m


def gated_net(dtype: str, seed: int = 0, d: int = 12, n: int = 20, out: int = 6) -> cg.GatedNet:
    rng = np.random.default_rng(seed)
    return cg.GatedNet([Layer(rng.standard_normal((n, d)) / 3, rng.standard_normal(n) / 3, "silu"),
                        Layer(rng.standard_normal((out, n)) / 3, rng.standard_normal(out))], dtype=dtype,
                       up=Layer(rng.standard_normal((n, d)) / 3, rng.standard_normal(n) / 3))


def rows(dtype: str, n: int = 400, d: int = 12, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_on_tensors_are_the_numpy_definitions(activation):
    z = np.random.default_rng(0).standard_normal(2000) * 4
    p = PARAMS.get(activation, ())
    want = apply_activation(z, activation, 0.02, p)
    got = apply_activation(torch.from_numpy(z), activation, 0.02, p)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    assert apply_activation(torch.from_numpy(z).float(), activation, 0.02, p).dtype == torch.float32


@pytest.mark.parametrize("params", [(("approximate", "tanh"),), (("min", -1.0), ("max", 1.0)), (("beta", 1.702),)])
def test_activation_parameters_on_tensors(params):
    z = np.random.default_rng(0).standard_normal(500) * 4
    act = "silu" if params[0][0] == "beta" else "gelu"
    np.testing.assert_allclose(apply_activation(torch.from_numpy(z), act, params=params).numpy(),
                               apply_activation(z, act, params=params), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-6)])
def test_gated_values_and_repair_agree_with_the_numpy_path(dtype, tol):
    net, X = gated_net(dtype), rows(dtype)
    want = gated_values_numpy(net, X)
    got = net.hidden_values(X)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    lab = np.arange(20)
    lab[[5, 7]], lab[9] = 3, 2  # two lossy blocks: {3, 5, 7}, {2, 9}
    small, blocks = cg.quotient(net, cg._canonical(lab))
    assert blocks.lossy(dtype) and list(small.meta["keep"][:4]) == [0, 1, -1, -1]
    W, b = gated_repair_numpy(net, small, X)
    scale = np.abs(W).max()
    # the first refit on these rows computes every unit's values; the second reads the kept units'
    # values and Gram entries off the original's (kept for later refits on the same rows)
    for again in (False, True):
        fixed = cg.repair(net, small, X)
        assert ("sums1" in net.__dict__.get("_original_values", {})) == again
        np.testing.assert_allclose(fixed.down.weight, W, rtol=0, atol=50 * tol * scale)
        np.testing.assert_allclose(fixed.down.bias, b, rtol=0, atol=50 * tol * max(np.abs(b).max(), 1.0))


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-11), ("float32", 1e-5)])
def test_plain_repair_agrees_with_the_numpy_path(dtype, tol):
    rng = np.random.default_rng(2)
    net = Network([Layer(rng.standard_normal((16, 6)), rng.standard_normal(16), "tanh"),
                   Layer(rng.standard_normal((10, 16)) / 4, rng.standard_normal(10), "gelu"),
                   Layer(rng.standard_normal((3, 10)) / 3, rng.standard_normal(3))], dtype=dtype)
    X = rng.standard_normal((300, 6)).astype(dtype)  # rows in the model's dtype, as capture keeps a traced chain's
    labels = [np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 8, 9, 10, 11, 12, 13]), np.array([0, 1, 2, 3, 4, 5, 0, 6, 7, 8])]
    small, blocks = quotient(net, labels)
    maps = [b.target_map() for b in blocks]
    fixed = repair(net, small, X, maps, start=1)
    for (W, b), layer in zip(repair_numpy(net, small, X, maps, start=1), fixed.layers[1:]):
        np.testing.assert_allclose(layer.weight, W, rtol=0, atol=tol * np.abs(W).max())
        np.testing.assert_allclose(layer.bias, b, rtol=0, atol=tol * max(np.abs(b).max(), 1.0))


def test_the_arithmetic_runs_on_the_chains_device():
    """A chain read from a model on a device computes there: here the ``meta`` device, which has
    shapes and dtypes but no values, so a CPU-only machine can check where each step runs."""
    net, X = gated_net("float32"), rows("float32")
    assert "device" not in capture(Gated().eval()).nets[0].meta  # a CPU model: no device named
    net.meta["device"] = "meta"
    for t in (net.values(X), net.outputs(X), net.values(X, np.array([1, 4]))):
        assert t.device.type == "meta" and t.dtype == torch.float32
    H = net.values(X)
    G = products(H, means(H, True), H, means(H, True))
    assert G.device.type == "meta" and G.dtype == torch.float64 and G.shape == (20, 20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_and_values_follow_the_models_dtype_and_exactness_holds(dtype):
    """A float32 model's calibration rows and units' values stay float32 (half a float64 copy's
    memory), a float64 model's float64; eps = 0 removes exactly the planted duplicate and keeps
    the function to the dtype's precision; a lossy calibrated cut still runs and repairs."""
    m = planted(dtype)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(3)).to(dtype)
    cap = capture(m, calibration=x)
    want = np.float32 if dtype == torch.float32 else np.float64
    (r,) = cap.rows(cap.calibration(x))
    assert all(a.dtype == want for a in r)
    assert cap.nets[0].hidden_values(r[0]).dtype == want
    c = afde_nb.compress(m, 0.0, calibration=x)
    assert c.params_after == c.params_before - (8 + 1) * 2 - 5  # one unit: its gate and up rows, its down column
    with torch.no_grad():
        y, yc = m(x), c.model(x)
    assert yc.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert float((y - yc).abs().max()) <= tol * float(y.abs().max())
    lossy = afde_nb.compress(m, 0.3, calibration=x)
    assert lossy.repaired == "calibration" and lossy.params_after < c.params_after
    with torch.no_grad():
        assert lossy.model(x).dtype == dtype
