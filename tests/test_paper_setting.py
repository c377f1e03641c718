"""The paper's setting (method.md §8.7): eps-graph components without symmetry, forward and
backward, must keep returning the partitions the first release returned.

``tests/data/paper_partitions.npz`` was written by the first release's engine (before the
Ward/symmetry work) with ``python tests/test_paper_setting.py --write``; the networks are
regenerated here from fixed seeds, so any change of the components path shows up as a diff.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import afde_nb
from afde_nb.core.network import Layer, Network

DATA = Path(__file__).parent / "data" / "paper_partitions.npz"
ACTS = ["tanh", "sigmoid", "identity", "relu", "leaky_relu"]
EPS = [0.0, 0.05, 0.2, 0.5, 1.0]


def network(seed: int, act: str) -> Network:
    """Two hidden layers of 24 and 16 with planted duplicates, negated duplicates and near-copies."""
    rng = np.random.default_rng(seed)
    widths = [6, 24, 16, 3]
    layers = []
    for k in range(3):
        W = rng.normal(size=(widths[k + 1], widths[k])) * 0.5
        b = rng.normal(size=widths[k + 1]) * 0.5
        if k < 2:
            W[1], b[1] = W[0], b[0]                      # exact duplicate
            W[3], b[3] = -W[2], -b[2]                    # negated duplicate (not merged in this setting)
            W[5], b[5] = W[4] + 0.01 * rng.normal(size=widths[k]), b[4]  # near copy
            W[7], b[7] = 2.0 * W[6], 2.0 * b[6]          # proportional (ReLU family merges it)
        layers.append(Layer(W, b, act if k < 2 else "identity"))
    return Network(layers, dtype="float64")


def cases():
    for seed in (0, 1):
        for act in ACTS:
            for mode in ("backward", "forward"):
                for relative in (False, True):
                    for eps in EPS:
                        yield f"s{seed}_{act}_{mode}_{'rel' if relative else 'abs'}_{eps:g}", seed, act, mode, relative, eps


def partition(seed, act, mode, relative, eps):
    return afde_nb.lump(network(seed, act), eps, mode, relative=relative, method="components").labels


@pytest.mark.parametrize("key,seed,act,mode,relative,eps", list(cases()))
def test_components_partitions_unchanged(key, seed, act, mode, relative, eps):
    stored = np.load(DATA)
    got = partition(seed, act, mode, relative, eps)
    for h, labels in enumerate(got):
        np.testing.assert_array_equal(labels, stored[f"{key}_h{h}"], err_msg=key)


if __name__ == "__main__" and "--write" in sys.argv:
    out = {}
    for key, seed, act, mode, relative, eps in cases():
        labels = afde_nb.lump(network(seed, act), eps, mode, relative=relative).labels  # first release's API
        for h, l in enumerate(labels):
            out[f"{key}_h{h}"] = l
    np.savez_compressed(DATA, **out)
    print(f"wrote {len(out)} label arrays to {DATA}")
