"""The plain-array view of a feed-forward network that the engine works on.

A :class:`Network` is a list of :class:`Layer` (Linear + element-wise activation). Layers
``0..L-1`` produce hidden neurons; the last layer produces the outputs. Arrays are float64 copies:
the user's model is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

#: activation name -> engine code (cpp/polyode.hpp, enum Act)
ACTIVATION_CODES = {"identity": 0, "tanh": 1, "sigmoid": 2, "relu": 3, "leaky_relu": 4}
POLYNOMIAL = ("identity", "tanh", "sigmoid")
#: positively homogeneous: phi(c z) = c phi(z) for c > 0, so rows equal up to a positive factor merge exactly
HOMOGENEOUS = ("relu", "leaky_relu")
#: the activations the polynomial ODE (encode), the paper's components and the forward mode are
#: defined for (method.md); the others (below) get the backward merge path only
ODE_DEFINED = tuple(ACTIVATION_CODES)
#: element-wise activations without an ODE encoding: equal rows (+bias) are still exact equivalents
GENERAL = ("gelu", "silu", "elu", "softplus", "hardtanh")
ACTIVATIONS = ODE_DEFINED + GENERAL


@dataclass
class Layer:
    """``activation(weight @ x + bias)``; ``path`` names the Linear module in the source model."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "identity"
    negative_slope: float = 0.01
    has_bias: bool = True
    path: str = ""
    #: weight columns per input unit: 1 for Linear, the kernel size for a convolution, whose
    #: (out, in, *kernel) weight is held as (out, in * taps), input-unit major
    taps: int = 1
    #: the activation's other parameters, as (name, value) pairs: gelu's approximate, elu's alpha,
    #: softplus's beta and threshold, hardtanh's min_val and max_val
    act_params: tuple = ()

    def with_weights(self, weight: np.ndarray, bias: np.ndarray) -> "Layer":
        """This layer (activation, taps, name) with other weights."""
        return replace(self, weight=weight, bias=bias)

    def apply(self, z: np.ndarray) -> np.ndarray:
        return apply_activation(z, self.activation, self.negative_slope, self.act_params)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1]) // self.taps

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_params(self) -> int:
        return int(self.weight.size + (self.bias.size if self.has_bias else 0))


@dataclass
class Network:
    layers: list[Layer]
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)

    @property
    def hidden(self) -> list[Layer]:
        return self.layers[:-1]

    @property
    def widths(self) -> list[int]:
        """Neurons per variable layer: inputs, each hidden layer, outputs."""
        return [self.layers[0].in_features] + [l.out_features for l in self.layers]

    @property
    def num_params(self) -> int:
        return sum(l.num_params for l in self.layers)

    def num_params_with(self, hidden_widths) -> int:
        """Dense parameter count of this network with its hidden layers resized to ``hidden_widths``
        (what a partition, a fold or a neuron pruning leaves), without building it."""
        widths = [self.widths[0]] + [int(w) for w in hidden_widths] + [self.widths[-1]]
        return sum(widths[k] * l.taps * widths[k + 1] + (widths[k + 1] if l.has_bias else 0)
                   for k, l in enumerate(self.layers))

    def check_finite(self, what: str = "network") -> "Network":
        """Raise :class:`~afde_nb.errors.InvalidWeightsError` naming the first layer with a NaN or
        infinite weight or bias: NaN would otherwise reach the engine's sort comparators and turn
        every distance into "no merge" silently."""
        from .errors import InvalidWeightsError

        for k, l in enumerate(self.layers):
            for name, a in (("weight", l.weight), ("bias", l.bias)):
                # a sum is finite iff every entry is, unless it overflows: one pass at the memory
                # floor with no temporary; only a non-finite sum pays for the element-wise check
                with np.errstate(over="ignore", invalid="ignore"):
                    total = np.sum(a)
                if not np.isfinite(total) and not np.all(np.isfinite(a)):
                    raise InvalidWeightsError(
                        f"{what}: layer {k} ({l.path or 'Linear'}) has a NaN or infinite {name}; "
                        "afde-nb needs finite weights")
        return self

    def engine_args(self) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """(weights, biases, activation codes) as the C++ engine takes them."""
        return (
            [np.ascontiguousarray(l.weight, dtype=np.float64) for l in self.layers],
            [np.ascontiguousarray(l.bias, dtype=np.float64) for l in self.layers],
            [ACTIVATION_CODES[l.activation] for l in self.layers],
        )

    def layer_inputs(self, x: np.ndarray) -> list[np.ndarray]:
        """The input of every layer on ``x`` (float64): ``x`` itself, then each hidden layer's output."""
        ins = [np.asarray(x, dtype=np.float64)]
        for l in self.layers[:-1]:
            ins.append(l.apply(ins[-1] @ l.weight.T + l.bias))
        return ins

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Reference forward pass in float64 (used by the encoding checks)."""
        h = np.asarray(x, dtype=np.float64)
        for l in self.layers:
            h = l.apply(h @ l.weight.T + l.bias)
        return h


def unit_columns(units: np.ndarray, taps: int) -> np.ndarray:
    """The weight columns of input units ``units`` in a layer with ``taps`` columns per unit."""
    units = np.asarray(units, dtype=np.int64)
    return (units[:, None] * taps + np.arange(taps)).reshape(-1) if taps > 1 else units


def unit_norms(weight: np.ndarray, taps: int = 1) -> np.ndarray:
    """||outgoing weights|| of each input unit: the norm over its ``taps`` columns."""
    sq = (np.asarray(weight) ** 2).sum(axis=0)
    return np.sqrt(sq.reshape(-1, taps).sum(axis=1) if taps > 1 else sq)


def as_inputs(data, width: int, what: str = "calibration", flatten: tuple[int, int] | None = None) -> np.ndarray:
    """A float64 (n, width) copy of ``data`` (array or torch tensor); the caller's data is not touched.
    ``flatten`` applies the model's own input Flatten (start_dim, end_dim) to image-shaped data."""
    from .errors import InvalidWeightsError, ShapeMismatchError

    if hasattr(data, "detach"):  # a torch tensor
        data = data.detach().cpu().double().numpy()
    x = np.array(data, dtype=np.float64)
    if flatten is not None and x.ndim > 2:
        start, end = (d % x.ndim for d in flatten)
        x = x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])
    if x.ndim != 2 or x.shape[1] != width:
        raise ShapeMismatchError(f"{what} must have shape (n, {width}), got {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidWeightsError(f"{what} data contain NaN or infinite values")
    return x


def apply_activation(z: np.ndarray, activation: str, negative_slope: float = 0.01, params: tuple = ()) -> np.ndarray:
    """phi(z) element-wise, as torch computes it (``params``: :attr:`Layer.act_params`)."""
    p = dict(params)
    if activation == "identity":
        return z
    if activation == "tanh":
        return np.tanh(z)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "leaky_relu":
        return np.where(z >= 0, z, negative_slope * z)
    if activation == "gelu":
        if p.get("approximate", "none") == "tanh":
            return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))
        from scipy.special import erf

        return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    if activation == "silu":
        return z / (1.0 + np.exp(-z))
    if activation == "elu":
        return np.where(z > 0, z, p.get("alpha", 1.0) * np.expm1(np.minimum(z, 0.0)))
    if activation == "softplus":
        beta, thr = p.get("beta", 1.0), p.get("threshold", 20.0)
        return np.where(beta * z > thr, z, np.logaddexp(0.0, beta * z) / beta)
    if activation == "hardtanh":
        return np.clip(z, p.get("min_val", -1.0), p.get("max_val", 1.0))
    from .errors import InvalidArgumentError

    raise InvalidArgumentError(f"unknown activation {activation!r}")
