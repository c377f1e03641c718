"""The split of a calibrated parameter budget between layers, from the chains' own rows (issue 29;
docs/method.md §8.6).

The candidates are those of :func:`afde_nb.core.target.scale_candidates` (one eps for all layers,
each part's eps scaled by 1/4..4) and the same fraction of every layer, each cut exactly at the
budget by :func:`afde_nb.core.target.for_params`. They used to be told apart by reducing and
repairing every chain for each one (on rows of a second model run on 3/4 of the calibration inputs)
and running the whole model on the other 1/4: on LLaMA-style models about 3/4 of a calibrated
budget call. Here the same seeded quarter of the calibration inputs is held out, but every chain is
reduced and repaired on its rows from compress's one calibration run (a chain's rows are in input
order, so row r of R belongs to input ``r * n // R``: exact where every input gives as many rows,
to within one input's rows where they were subsampled):

* **per chain** (:class:`ChainErrors`): a chain's error at given merge counts of its own layers is
  its relative MSE on the held-out inputs' rows against the original chain's outputs there, after
  its reduction (+ repair on the other inputs' rows), cached;
* **gains** (:meth:`ChainErrors.gains`): how much of a chain's relative error reaches the model's
  output differs by orders of magnitude (a char LM's first MLP: 0.88, the others 0.06-0.19), so
  per part of at most :data:`~afde_nb.core.target.SEGMENTS` consecutive parts of the chains, that
  part's chains are replaced by their quotients at the global order's cut and the model is run on
  the held-out inputs: the ratio of the output's relative MSE to the part's chains' summed. One
  model run per part, none for a model of one chain;
* **estimate** of every candidate (:class:`Estimate`): per layer, its first-order figure
  (:meth:`~afde_nb.core.path.LayerPath.centred`) times the ratio measured / first order at up to
  :data:`POINTS` of the merge counts the candidates give it (its chain reduced with only that layer
  cut), interpolated in log-log as :func:`afde_nb.pipeline.estimate.corrected` does with the
  anchors; the layers' relative MSEs times their chain's gain, summed (errors taken as
  uncorrelated);
* **measured**: one eps for all layers, the same fraction of every layer and the :data:`TOP` best
  others by estimate are scored as before, by the model's relative MSE on the held-out inputs with
  every chain reduced and repaired (the chains' cached reductions); the lowest is chosen.

A plain stack's one chain is the model: there every candidate is scored on the chain's own
held-out rows (the model's relative MSE, computed in numpy as before, with no run of the torch
model), no estimate needed. So a calibrated budget costs at most ``SEGMENTS + TOP + 2`` model runs
on a quarter of the calibration inputs instead of ``len(candidates)`` runs and a run on 3/4 of
them, and reductions of single chains instead of ``len(candidates)`` reductions of all of them. Chains whose rows the
array network cannot run (a convolution's patches, an inverted-residual block's maps) get no
measured ratio (the median of the measured layers', 1 where none was) and their share of the
estimate is its first order; the measured candidates are still scored on the model's outputs.
"""
from __future__ import annotations

import numpy as np

from ..core.repair import deviation
from ..models.capture import Captured
from .estimate import corrected

#: merge counts per layer at which its chain's error is measured for the estimate
POINTS = 3
#: candidates measured besides one eps for all layers and the same fraction of every layer
TOP = 2


def split_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """3/4 of n samples to fit on, 1/4 held out to score (seeded): the split of the budget split,
    ``held_out_error`` and the estimate's anchors."""
    idx = np.random.default_rng(0).permutation(n)
    cut = (3 * n) // 4
    return idx[:cut], idx[cut:]


def input_rows(n_rows: int, n_inputs: int, inputs: np.ndarray) -> np.ndarray:
    """The rows (of ``n_rows`` drawn from ``n_inputs`` inputs in input order) of ``inputs``."""
    owner = (np.arange(n_rows, dtype=np.int64) * n_inputs) // max(n_rows, 1)
    return np.flatnonzero(np.isin(owner, inputs))


class ChainErrors:
    """Each chain reduced (+ repaired on the fit inputs' rows) at given merge counts of its own
    layers, and its relative MSE on the held-out inputs' rows, cached (see the module docstring)."""

    def __init__(self, cap: Captured, path, rows: list, fit_rows: list, calib, want: np.ndarray | None):
        n_inputs = len(calib)
        self.cap, self.path = cap, path
        self.fit_inputs, self.held_inputs = split_inputs(n_inputs)
        self.fit: list = []
        self.held: list = []
        self.want: list = []
        self.layers: list[range] = []
        at = 0
        # rows that are not one array of as many rows per input in input order cannot be cut by
        # input: an inverted-residual chain's maps (:class:`~afde_nb.core.inverted.Maps`, a few
        # images picked from the inputs), an expert's routed tokens (each input sends it another
        # number). Those chains' repair rows come from one capture run on the fit inputs, counted
        # in ``runs``, as before this split was chosen on the chains' own rows
        from ..models.chains import EXPERTS

        sliced = [fit_rows[k] is not None and fit_rows[k] is rows[k][0] for k in range(len(cap.nets))]
        whole = [k for k in range(len(cap.nets)) if sliced[k] and (
            not isinstance(rows[k][0], np.ndarray) or cap.kind(k) is EXPERTS)]
        extra = cap.rows(calib[self.fit_inputs]) if whole else None
        self.runs = int(bool(whole))
        for k, net in enumerate(cap.nets):
            self.layers.append(range(at, at + len(net.hidden)))
            at += len(net.hidden)
            r = rows[k][0]
            ok = self.measurable(k)
            own = fit_rows[k]  # the repair's rows: calibration rows (then those of the fit inputs), pseudo or None
            self.fit.append(extra[k][0] if k in whole else
                            r[input_rows(len(r), n_inputs, self.fit_inputs)] if sliced[k] else own)
            held = r[input_rows(len(r), n_inputs, self.held_inputs)] if ok else None
            self.held.append(held)
            self.want.append(net.forward(held) if ok else None)
        self.nets: dict[tuple, object] = {}
        self.errors: dict[tuple, float] = {}
        self.gain = [1.0] * len(cap.nets)
        self.reductions = 0
        # the original's outputs on the held-out inputs: those of compress's calibration run (no second
        # run of the original) unless their width depends on the batch (as for held_out_error)
        self.model_want = want[self.held_inputs] if want is not None and not cap.stack else None
        self.calib = calib

    def reference(self, got: np.ndarray) -> np.ndarray:
        """The original's outputs on the held-out inputs, to compare with ``got`` (a run of the
        original where compress's outputs have another width per row, e.g. CLIP's (n, n) logits)."""
        if self.model_want is None or self.model_want.shape[1] != got.shape[1]:
            self.model_want = self.cap.output(self.calib[self.held_inputs])
        return self.model_want

    def measurable(self, k: int) -> bool:
        """Chain ``k``'s rows run through its array network: Linear chains (taps 1) and gated ones."""
        from ..models.chains import GATED, LAYERS

        kind, net = self.cap.kind(k), self.cap.nets[k]
        return kind is GATED or (kind is LAYERS and all(l.taps == 1 for l in net.layers))

    def net(self, k: int, merges: tuple[int, ...]):
        """Chain ``k`` reduced at ``merges`` of its layers and repaired as compress repairs it."""
        key = (k, tuple(int(m) for m in merges))
        if key not in self.nets:
            full = [lp.exact for lp in self.path.layers]
            for h, m in zip(self.layers[k], merges):
                full[h] = int(m)
            part = self.cap.split(self.path.partition_at(full))[k]
            _, fixed, _ = self.cap.kind(k).reduce(self.cap.nets[k], part, self.fit[k])
            self.reductions += 1
            self.nets[key] = fixed
        return self.nets[key]

    def error(self, k: int, merges: tuple[int, ...]) -> float:
        """Chain ``k``'s held-out relative MSE at ``merges`` (0 with exact merges only)."""
        key = (k, tuple(int(m) for m in merges))
        if key not in self.errors:
            if all(m <= self.path.layers[h].exact for h, m in zip(self.layers[k], merges)):
                self.errors[key] = 0.0
            else:
                got = self.net(k, key[1]).forward(self.held[k])
                self.errors[key] = float(deviation(self.want[k], got)["relative_mse"])
        return self.errors[key]

    def chain_of(self, h: int) -> int:
        return next(k for k, r in enumerate(self.layers) if h in r)

    def layer_error(self, h: int, m: int) -> float:
        """The held-out relative RMS error of layer ``h``'s chain with only layer ``h`` cut at ``m``."""
        k = self.chain_of(h)
        merges = [self.path.layers[g].exact for g in self.layers[k]]
        merges[h - self.layers[k].start] = m
        return float(np.sqrt(self.error(k, tuple(merges))))

    def gains(self, calib, ms: list[int], segments: int) -> int:
        """Each chain's gain to the model's output, per part of at most ``segments`` consecutive
        parts of the chains: the part's chains replaced by their quotients at ``ms`` (not repaired:
        the gain is the network's, not the repair's), the model run on the held-out inputs, the
        output's relative MSE over the part's chains' summed. 1 for a model of one chain; returns
        the model runs spent."""
        K = len(self.cap.nets)
        if K == 1:
            return 0
        x = calib[self.held_inputs]
        runs = 0
        full = self.cap.split(self.path.partition_at(ms))
        for part in np.array_split(np.arange(K), min(K, max(int(segments), 1))):
            nets = list(self.cap.nets)
            chain = 0.0
            for k in part:
                small, _, _ = self.cap.kind(k).reduce(self.cap.nets[k], full[k], None)
                nets[k] = small
                if self.held[k] is not None:
                    chain += float(deviation(self.want[k], small.forward(self.held[k]))["relative_mse"])
            if chain <= 0:
                continue
            got = self.cap.output(x, nets)
            runs += 1
            ref = self.reference(got)
            if got.shape == ref.shape:
                g = float(deviation(ref, got)["relative_mse"]) / chain
                for k in part:
                    self.gain[k] = g
        return runs

    def model_error(self, calib, ms: list[int]) -> float:
        """The model's relative MSE on the held-out inputs with every chain reduced (+ repaired) at
        ``ms``; for a plain stack its chain's own (no run of the model)."""
        if self.cap.stack:
            return self.error(0, tuple(ms))
        nets = [self.net(k, tuple(ms[h] for h in r)) for k, r in enumerate(self.layers)]
        got = self.cap.output(calib[self.held_inputs], nets)
        return float(deviation(self.reference(got), got)["relative_mse"])


class Estimate:
    """Per layer, its first-order figure corrected by its measured marks (see the module docstring)."""

    def __init__(self, path, chains: ChainErrors, options: list[list[int]], points: int = POINTS):
        self.path, self.chains = path, chains
        self.marks: list[list[tuple[float, float]]] = []
        for h, lp in enumerate(path.layers):
            # the fewest and most merges the candidates give the layer, and one eps for all layers'
            got = sorted({int(o[h]) for o in options if o[h] > lp.exact})
            pick = got if len(got) <= points else sorted(
                {got[0], got[-1]} | ({int(options[0][h])} if options[0][h] > lp.exact else {got[len(got) // 2]}))
            marks = []
            if chains.held[chains.chain_of(h)] is not None:
                for m in pick:
                    first, measured = lp.centred(m), chains.layer_error(h, m)
                    if first > 0 and measured > 0 and np.isfinite(measured):
                        marks.append((first, measured))
            self.marks.append(sorted(marks))
        ratios = [m / f for marks in self.marks for f, m in marks]
        self.fallback = float(np.median(ratios)) if ratios else 1.0

    def layer(self, h: int, m: int) -> float:
        """Layer ``h``'s estimated relative RMS error (on its chain's output) at ``m`` merges."""
        first = self.path.layers[h].centred(m)
        return corrected(first, self.marks[h]) if self.marks[h] else first * self.fallback

    def __call__(self, ms: list[int]) -> float:
        """A split's estimated relative MSE of the model's output: its layers', times their gains, summed."""
        return float(sum(self.chains.gain[self.chains.chain_of(h)] * self.layer(h, m) ** 2 for h, m in enumerate(ms)))


def choose(cap: Captured, path, options: list[list[int]], rows: list, fit_rows: list, calib, want, segments: int,
           top: int = TOP) -> tuple[int, dict]:
    """The index of the chosen option (``options[0]``: one eps for all layers, ``options[-1]``:
    the same fraction of every layer) and what it was chosen on (``Compression.budget_split``'s
    ``split_estimates``, ``split_measured``, the gains and the model runs spent)."""
    chains = ChainErrors(cap, path, rows, fit_rows, calib, want)
    if cap.stack:  # the chain is the model: every candidate scored on its own rows, no run of the torch model
        estimates, scored, runs = None, list(range(len(options))), chains.runs
    else:
        runs = chains.runs + chains.gains(calib, options[0], segments)
        est = Estimate(path, chains, options)
        estimates = [est(o) for o in options]
        scored = [0] + ([len(options) - 1] if options[-1] != options[0] else [])
        for i in sorted(range(len(options)), key=lambda i: (estimates[i], i)):
            if len(scored) >= len(set(scored[:2])) + top:
                break
            if all(options[i] != options[j] for j in scored):
                scored.append(i)
    measured = {}
    for i in scored:
        measured[i] = chains.model_error(calib, options[i])
        runs += not cap.stack
    best = min(measured, key=lambda i: (measured[i], i))
    return best, {"split_estimates": estimates, "split_measured": measured, "split_chosen": best,
                  "split_held_out": int(len(chains.held_inputs)), "split_gains": list(chains.gain),
                  "split_model_runs": runs, "split_chain_reductions": chains.reductions}
