"""Synthetic networks for the engine benchmarks (shared by the scripts in this folder)."""
from __future__ import annotations

import numpy as np

from afde_nb.core.network import Layer, Network


def random_mlp(width: int, depth: int, seed: int = 0, clusters: int | None = None, noise: float = 0.01,
               activation: str = "tanh", dtype=np.float64) -> Network:
    """``depth`` Linear layers of ``width`` x ``width`` (Glorot-scaled normal). With ``clusters``,
    every hidden layer's rows are drawn around that many centres (trained-network-like redundancy)."""
    rng = np.random.default_rng(seed)
    layers = []
    for k in range(depth):
        scale = 1.0 / np.sqrt(width)
        if clusters and k < depth - 1:
            centres = rng.standard_normal((clusters, width + 1), dtype=np.float32) * scale
            M = centres[rng.integers(0, clusters, width)]
            M += rng.standard_normal(M.shape, dtype=np.float32) * (noise * scale)
        else:
            M = rng.standard_normal((width, width + 1), dtype=np.float32) * scale
        M = M.astype(dtype, copy=False)
        layers.append(Layer(np.ascontiguousarray(M[:, :-1]), np.ascontiguousarray(M[:, -1]),
                            activation if k < depth - 1 else "identity"))
    return Network(layers, dtype="float32")
