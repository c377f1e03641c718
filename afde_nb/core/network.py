"""The plain-array view of a feed-forward network that the engine works on.

A :class:`Network` is a list of :class:`Layer` (Linear + element-wise activation). Layers
``0..L-1`` produce hidden neurons; the last layer produces the outputs. Arrays are in the model's
dtype: :func:`~afde_nb.models.stack.to_network` holds read-only numpy *views* of a CPU float32/float64
model's tensors (no copy, issue 10) and float64 copies of anything else; nothing here writes into
them, so the user's model is never touched. Code that needs float64 precision (repair solves,
probe forwards) converts locally; numpy's promotion does it for ``x @ W.T`` with float64 ``x``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

#: activation name -> engine code (cpp/polyode.hpp, enum Act)
ACTIVATION_CODES = {"identity": 0, "tanh": 1, "sigmoid": 2, "relu": 3, "leaky_relu": 4}
POLYNOMIAL = ("identity", "tanh", "sigmoid")
#: positively homogeneous: phi(c z) = c phi(z) for c > 0, so rows equal up to a positive factor merge exactly
HOMOGENEOUS = ("relu", "leaky_relu")
#: the activations the polynomial ODE (encode), the paper's components and the forward mode are
#: defined for (method.md); the others (below) get the backward merge path only
ODE_DEFINED = tuple(ACTIVATION_CODES)
#: element-wise activations without an ODE encoding: equal rows (+bias) are still exact equivalents
#: (every element-wise activation module of torch and of Hugging Face's ``ACT2FN``; see
#: :func:`apply_activation` for each one's definition and parameters)
GENERAL = ("gelu", "silu", "elu", "softplus", "hardtanh", "hardswish", "hardsigmoid", "mish", "selu", "celu",
           "logsigmoid", "softsign", "tanhshrink", "hardshrink", "softshrink", "threshold", "relu2", "laplace",
           "sqrt_softplus", "xielu")
#: odd, phi(-z) = -phi(z): a negated row is the same unit with its outgoing column negated
#: (tanh and identity are odd too, and hardtanh where min_val = -max_val)
ODD = ("softsign", "tanhshrink", "hardshrink", "softshrink")
ACTIVATIONS = ODE_DEFINED + GENERAL
#: SELU's constants (torch.nn.SELU)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


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
    #: softplus's beta and threshold, hardtanh's min_val and max_val, ... (:func:`apply_activation`)
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
    #: the arrays are fresh buffers that nothing else references (the quotient's output):
    #: :func:`~afde_nb.models.stack.to_torch` may then hand them to the torch model instead of copying
    #: (once; it clears the flag)
    owned: bool = field(default=False, repr=False, compare=False)
    #: set once every array was found finite while all were read-only (they cannot have changed
    #: through this Network since): :meth:`check_finite` then skips its pass over the weights
    finite_checked: bool = field(default=False, repr=False, compare=False)

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

    def check_finite(self, what: str = "network", layers=None) -> "Network":
        """Raise :class:`~afde_nb.errors.InvalidWeightsError` naming the first layer with a NaN or
        infinite weight or bias: NaN would otherwise reach the engine's sort comparators and turn
        every distance into "no merge" silently. ``layers``: only these layer indices (the caller
        checked the others). Skipped when :attr:`finite_checked` still holds (see :meth:`readonly`)."""
        if self.finite_checked and self.readonly():
            return self
        for k in range(len(self.layers)) if layers is None else layers:
            l = self.layers[k]
            for name, a in (("weight", l.weight), ("bias", l.bias)):
                if not finite(a):
                    raise non_finite_error(what, k, l, name)
        if layers is None:
            self.finite_checked = self.readonly()
        return self

    def readonly(self) -> bool:
        """Whether no array can be written through this Network (to_network's views and copies)."""
        return all(not (isinstance(a, np.ndarray) and a.flags.writeable)
                   for l in self.layers for a in (l.weight, l.bias))

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


def finite(a: np.ndarray) -> bool:
    """Every entry finite. A sum is finite iff every entry is, unless it overflows: one pass at the
    memory floor with no temporary; only a non-finite sum pays for the element-wise check."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(a)
    return bool(np.isfinite(total) or np.all(np.isfinite(a)))


def non_finite_error(what: str, k: int, layer: Layer, name: str):
    """The InvalidWeightsError naming tensor ``name`` of layer ``k``."""
    from ..errors import InvalidWeightsError

    where = f"{layer.path}.{name}" if layer.path else f"layer {k} {name}"
    return InvalidWeightsError(f"{what}: {where} (layer {k}) contains NaN or infinite values; "
                               "afde-nb needs finite weights")


def engine_layer(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) as the engine reads them: ``W`` in place when it is a C-contiguous float32/float64
    array (a to_network view), else one float64 copy; ``b`` as float64 (one value per row)."""
    w = layer.weight
    if not (isinstance(w, np.ndarray) and w.dtype in (np.float32, np.float64) and w.flags.c_contiguous):
        w = np.ascontiguousarray(w, dtype=np.float64)
    return w, np.ascontiguousarray(layer.bias, dtype=np.float64)


def column_map(labels: np.ndarray, signs: np.ndarray, scales: np.ndarray, activation: str, taps: int = 1):
    """How a layer's weight columns map onto reduced source neurons (:class:`afde_nb.core.path.Source`:
    source k is ``signs[k] * scales[k] * u_{labels[k]}``, a sigmoid with sign -1 is ``1 - u``), as
    the engine takes it: (column labels or None for the identity, coefficients or None for all 1,
    flips or None, reduced columns). ``taps`` columns per source neuron."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if labels.size else 0
    coef = np.asarray(signs) * np.asarray(scales, dtype=np.float64)
    flip = (np.asarray(signs) < 0) if activation == "sigmoid" else None
    if taps > 1:
        labels = (labels[:, None] * taps + np.arange(taps)).reshape(-1)
        coef = np.repeat(coef, taps)
        flip = None if flip is None else np.repeat(flip, taps)
        k *= taps
    ident = k == labels.size and np.array_equal(labels, np.arange(k))
    return (None if ident else labels,
            None if np.all(coef == 1.0) else np.ascontiguousarray(coef, dtype=np.float64),
            None if flip is None or not flip.any() else flip.astype(np.uint8), k)


def unit_columns(units: np.ndarray, taps: int) -> np.ndarray:
    """The weight columns of input units ``units`` in a layer with ``taps`` columns per unit."""
    units = np.asarray(units, dtype=np.int64)
    return (units[:, None] * taps + np.arange(taps)).reshape(-1) if taps > 1 else units


def unit_norms(weight: np.ndarray, taps: int = 1) -> np.ndarray:
    """||outgoing weights|| of each input unit: the norm over its ``taps`` columns. Squares summed
    in float64 for a float32 weight, a block of rows at a time (no float64 copy of the layer)."""
    weight = np.asarray(weight)
    if weight.dtype == np.float64 or weight.size == 0:
        sq = (weight ** 2).sum(axis=0)
    else:
        sq = np.zeros(weight.shape[1])
        for r in range(0, len(weight), 256):
            sq += np.square(weight[r:r + 256], dtype=np.float64).sum(axis=0)
    return np.sqrt(sq.reshape(-1, taps).sum(axis=1) if taps > 1 else sq)


def as_inputs(data, width: int, what: str = "calibration", flatten: tuple[int, int] | None = None) -> np.ndarray:
    """A float64 (n, width) copy of ``data`` (array or torch tensor); the caller's data is not touched.
    ``flatten`` applies the model's own input Flatten (start_dim, end_dim) to image-shaped data."""
    from ..errors import InvalidWeightsError, ShapeMismatchError

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
    """phi(z) element-wise, as torch computes it (``params``: :attr:`Layer.act_params`).

    gelu: z Phi(z) (``approximate="tanh"``: 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))), clipped
    to [min, max] where given (Hugging Face's ``gelu_10``); silu: z sigmoid(beta z) (beta 1; 1.702:
    ``quick_gelu``); elu(alpha); softplus(beta, threshold); hardtanh(min_val, max_val) (ReLU6: 0, 6);
    hardswish: z relu6(z + 3) / 6; hardsigmoid: relu6(z + 3) / 6; mish: z tanh(softplus(z)); selu:
    scale elu(z, alpha) with torch's constants; celu(alpha): max(0, z) + min(0, alpha (exp(z / alpha) - 1));
    logsigmoid: log sigmoid(z); softsign: z / (1 + |z|); tanhshrink: z - tanh(z); hardshrink(lambd):
    z where |z| > lambd else 0; softshrink(lambd): z -+ lambd beyond +-lambd else 0;
    threshold(threshold, value): z where z > threshold else value; relu2: relu(z)^2; laplace(mu,
    sigma): Phi((z - mu) / sigma); sqrt_softplus: sqrt(softplus(z)); xielu(alpha_p, alpha_n, beta,
    eps): alpha_p z^2 + beta z for z > 0, else alpha_n (expm1(min(z, eps)) - z) + beta z.

    ``z`` a torch tensor: the same function by torch's own kernels, in the tensor's dtype and on
    its device (:mod:`afde_nb.core.compute`); the result may be ``z`` itself (identity) or a new
    tensor, never a write into ``z``."""
    p = dict(params)
    if isinstance(z, torch.Tensor):
        return _torch_activation(z, activation, negative_slope, p)
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
    f = _VALUES.get(activation)
    if f is None:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown activation {activation!r}")
    with np.errstate(over="ignore", under="ignore"):
        return f(np.asarray(z), p)


def _gelu(z: np.ndarray, p: dict) -> np.ndarray:
    if p.get("approximate", "none") == "tanh":
        h = 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3)))
    else:
        from scipy.special import erf

        h = 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    return np.clip(h, p["min"], p["max"]) if "min" in p else h


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.where(z > 20.0, z, np.logaddexp(0.0, z))  # torch's threshold 20


def _expit(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def _silu(z: np.ndarray, beta: float) -> np.ndarray:
    """z sigmoid(beta z): the same values as ``z * expit(beta * z)`` without the copy ``1.0 * z``
    and with the product written into the sigmoid's array (issue 29's profile)."""
    e = _expit(z if beta == 1.0 else beta * z)
    if isinstance(e, np.ndarray) and e.shape == np.shape(z) and e.dtype == np.result_type(z, e):
        return np.multiply(z, e, out=e)
    return z * e


def _erf(z: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(z)


#: name -> phi(z, params) for the activations beyond the polynomial ODE's
_VALUES = {
    "gelu": _gelu,
    "silu": lambda z, p: _silu(z, p.get("beta", 1.0)),
    "elu": lambda z, p: np.where(z > 0, z, p.get("alpha", 1.0) * np.expm1(np.minimum(z, 0.0))),
    "softplus": lambda z, p: np.where(p.get("beta", 1.0) * z > p.get("threshold", 20.0), z,
                                      np.logaddexp(0.0, p.get("beta", 1.0) * z) / p.get("beta", 1.0)),
    "hardtanh": lambda z, p: np.clip(z, p.get("min_val", -1.0), p.get("max_val", 1.0)),
    "hardswish": lambda z, p: z * np.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda z, p: np.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "mish": lambda z, p: z * np.tanh(_softplus(z)),
    "selu": lambda z, p: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0.0))),
    "celu": lambda z, p: np.where(z > 0, z, p.get("alpha", 1.0) * np.expm1(np.minimum(z, 0.0) / p.get("alpha", 1.0))),
    "logsigmoid": lambda z, p: -np.logaddexp(0.0, -z),
    "softsign": lambda z, p: z / (1.0 + np.abs(z)),
    "tanhshrink": lambda z, p: z - np.tanh(z),
    "hardshrink": lambda z, p: np.where(np.abs(z) > p.get("lambd", 0.5), z, 0.0),
    "softshrink": lambda z, p: np.where(z > p.get("lambd", 0.5), z - p.get("lambd", 0.5),
                                        np.where(z < -p.get("lambd", 0.5), z + p.get("lambd", 0.5), 0.0)),
    "threshold": lambda z, p: np.where(z > p["threshold"], z, p["value"]),
    "relu2": lambda z, p: np.maximum(z, 0.0) ** 2,
    "laplace": lambda z, p: 0.5 * (1.0 + _erf((z - p["mu"]) / (p["sigma"] * np.sqrt(2.0)))),
    "sqrt_softplus": lambda z, p: np.sqrt(_softplus(z)),
    "xielu": lambda z, p: np.where(z > 0, p["alpha_p"] * z * z + p["beta"] * z,
                                   (np.expm1(np.minimum(z, p["eps"])) - z) * p["alpha_n"] + p["beta"] * z),
}


def _torch_activation(z: torch.Tensor, activation: str, negative_slope: float, p: dict) -> torch.Tensor:
    """:func:`apply_activation` of a tensor (the definitions above, by torch.nn.functional)."""
    f = _TORCH.get(activation)
    if f is None:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown activation {activation!r}")
    return f(z, dict(p, negative_slope=negative_slope))


def _torch_gelu(z: torch.Tensor, p: dict) -> torch.Tensor:
    h = F.gelu(z, approximate="tanh" if p.get("approximate", "none") == "tanh" else "none")
    return h.clamp_(p["min"], p["max"]) if "min" in p else h


def _torch_silu(z: torch.Tensor, p: dict) -> torch.Tensor:
    beta = p.get("beta", 1.0)
    return F.silu(z) if beta == 1.0 else z * torch.sigmoid(beta * z)


#: name -> phi(z, params) on tensors, for every activation of :data:`ACTIVATIONS`
_TORCH = {
    "identity": lambda z, p: z,
    "tanh": lambda z, p: torch.tanh(z),
    "sigmoid": lambda z, p: torch.sigmoid(z),
    "relu": lambda z, p: torch.relu(z),
    "leaky_relu": lambda z, p: F.leaky_relu(z, p["negative_slope"]),
    "gelu": _torch_gelu,
    "silu": _torch_silu,
    "elu": lambda z, p: F.elu(z, p.get("alpha", 1.0)),
    "softplus": lambda z, p: F.softplus(z, p.get("beta", 1.0), p.get("threshold", 20.0)),
    "hardtanh": lambda z, p: F.hardtanh(z, p.get("min_val", -1.0), p.get("max_val", 1.0)),
    "hardswish": lambda z, p: F.hardswish(z),
    "hardsigmoid": lambda z, p: F.hardsigmoid(z),
    "mish": lambda z, p: F.mish(z),
    "selu": lambda z, p: F.selu(z),
    "celu": lambda z, p: F.celu(z, p.get("alpha", 1.0)),
    "logsigmoid": lambda z, p: F.logsigmoid(z),
    "softsign": lambda z, p: F.softsign(z),
    "tanhshrink": lambda z, p: F.tanhshrink(z),
    "hardshrink": lambda z, p: F.hardshrink(z, p.get("lambd", 0.5)),
    "softshrink": lambda z, p: F.softshrink(z, p.get("lambd", 0.5)),
    "threshold": lambda z, p: F.threshold(z, p["threshold"], p["value"]),
    "relu2": lambda z, p: torch.relu(z).square_(),
    "laplace": lambda z, p: 0.5 * (1.0 + torch.erf((z - p["mu"]) / (p["sigma"] * math.sqrt(2.0)))),
    "sqrt_softplus": lambda z, p: F.softplus(z).sqrt_(),
    "xielu": lambda z, p: torch.where(z > 0, p["alpha_p"] * z * z + p["beta"] * z,
                                      (torch.expm1(torch.clamp(z, max=p["eps"])) - z) * p["alpha_n"] + p["beta"] * z),
}
