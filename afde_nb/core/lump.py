"""eps-lumping: a partition of a network's hidden neurons into blocks that behave alike.

``method="ward"`` (the default) and ``"complete"`` cut the merge path of :mod:`afde_nb.core.path`:
bounded blocks, exact symmetries, eps an error bound (method.md §8). ``method="components"`` is
the paper's setting, the coarsest eps-FDE / eps-BDE partition (ERODE's): the partition refines the layer prepartition (inputs and outputs alone, one block per hidden
layer): a block splits into the connected components of the graph linking members at distance
<= eps (method.md §3). Distances are the closed forms derived in ``cpp/lumping.cpp``; the C++
engine computes them and the components.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _core
from ..errors import InvalidArgumentError, InvalidEpsError
from .network import Network
from .partition import Partition

MODES = ("forward", "backward")
METHODS = ("ward", "complete", "components")


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise InvalidEpsError(f"eps must be a real number >= 0, got {eps!r} ({type(eps).__name__})")
    e = float(eps)
    if not math.isfinite(e) or e < 0:
        raise InvalidEpsError(f"eps must be a finite number >= 0, got {eps!r}")
    return e


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    return str(mode)


def check_method(method: object) -> str:
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}")
    return str(method)


def activation_rms(net: Network, X: np.ndarray) -> list[np.ndarray]:
    """Calibration RMS of every neuron of the source layers (inputs and each hidden layer but the
    last): the weights of the data-aware distances."""
    return [np.sqrt(np.mean(h ** 2, axis=0)) if len(h) else np.ones(h.shape[1]) for h in net.layer_inputs(X)[:-1]]


def lump(net: Network, eps: float = 0.0, mode: str = "backward", relative: bool = True,
         threads: int = 0, rms: list[np.ndarray] | None = None, *, method: str = "ward",
         symmetry: bool = True, calibration: np.ndarray | None = None) -> Partition:
    """The partition of ``net`` at ``eps``.

    ``method="ward"``/``"complete"``: the cut of :func:`afde_nb.core.path.merge_path` at eps (an error
    bound, relative to the next layer's pre-activations when ``relative``; ``calibration`` gives the
    inputs the bound is measured on, else standard-normal pseudo-inputs; ``symmetry`` allows the
    activation's sign symmetry). ``rms`` does not apply to these methods.

    ``method="components"``: the coarsest eps-FDE (``mode="forward"``) or eps-BDE (``"backward"``)
    partition, the paper's setting, unchanged from the first release (no symmetry).

    ``relative=True`` reads eps as a fraction of each layer's *mean neuron norm*: the mean distance
    of its neurons from a neuron with all-zero weights, under the same distance. (method.md says
    "relative to the layer's mean absolute weight"; that ignores fan-in and the per-activation
    constants of the distance, so one relative eps meant very different things in different
    layers and modes. The mean neuron norm is the mean |weight| times exactly those factors.)
    ``threads`` (0 = OpenMP default) never changes the result. With ``rms`` (from
    :func:`activation_rms`) the distances are data-aware: each incoming coefficient is weighted by
    the calibration RMS of its source neuron, as Wanda weights |W_ij| by ||X_j||.
    """
    e = check_eps(eps)
    mode = check_mode(mode)
    method = check_method(method)
    net.check_finite()
    if method != "components":
        from .path import merge_path

        if rms is not None:
            raise InvalidArgumentError("rms (data-aware distances) applies to method='components' only")
        return merge_path(net, method=method, mode=mode, relative=relative, symmetry=symmetry,
                          calibration=calibration, threads=threads).partition(e)
    labels, per_layer = _core.lump(*net.engine_args(), mode, [e] * len(net.hidden), bool(relative), int(threads),
                                   None if rms is None else [np.asarray(r, dtype=np.float64) for r in rms])
    return Partition(tuple(np.asarray(l) for l in labels), mode, e, bool(relative), tuple(per_layer))
