"""Capture: a torch model read as chains of lumpable groups, each chain a
:class:`~afde_nb.core.network.Network`: the one form the pipeline works on, for every model.

Two readers, one result. A *plain stack* (an ``nn.Sequential``, or a module whose forward is one,
of ``Linear`` layers and element-wise activations: :func:`~afde_nb.models.stack.to_network`) is
one chain over the whole model, read as views of its float32/float64 tensors (no copy, issue 10)
and written back as a plain ``nn.Sequential`` that stock torch rebuilds from its JSON
architecture. Any other model is traced (:func:`~afde_nb.models.groups.find_groups`: torch.fx, or
a ``torch.export`` program's graph, or where torch.fx cannot trace the whole forward, as in a Hugging
Face model, ``torch.export`` on example inputs) into chains of groups, read in float64 with BatchNorms folded
(:func:`~afde_nb.models.surgery.chain_network`), and written back into a copy of the user's own
module. Everything after capture asks the :class:`Captured` what it needs and never which reader
made it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.network import ODE_DEFINED, Network, as_inputs
from ..core.partition import Partition
from ..core.tie import Tie, tie_widths
from ..errors import InvalidArgumentError, InvalidWeightsError, ShapeMismatchError, UnsupportedLayerError
from . import grouped, surgery
from .chains import LAYERS, GatedChain, LayerChain, chain_inputs, kind_of
from .export import PROGRAM_SUFFIX
from .groups import Affine, Discovery, Group, find_groups
from .stack import to_network, to_torch

#: probe rows without data: standard-normal inputs, as many as the merge path's pseudo-inputs
PSEUDO_ROWS = surgery.PSEUDO


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Captured:
    """A model as chains of groups (``discovery.chains``), each read as a network (``nets``).

    ``stack``: the model is one plain stack, its whole forward the single chain's (the paper's
    setting: the polynomial ODE, forward mode and the eps-graph components are defined on it).
    ``costs`` per chain layer (taps, parameters per output unit) and ``fixed`` (the parameters
    outside the chains) count the model's parameters as the chains' hidden widths change."""

    model: nn.Module
    discovery: Discovery
    nets: list[Network]
    costs: list[list[tuple[int, int]]]
    fixed: int
    stack: bool = False
    not_a_stack: str = field(default="", repr=False)
    #: chains that keep one width (:class:`~afde_nb.core.tie.Tie` over chain indices, each chain
    #: one hidden layer): the experts of a bank stored fused (:mod:`afde_nb.models.experts`);
    #: counted at the tie's width, written together
    ties: tuple = ()
    #: layers whose columns are slices of a concatenation and whose rows are another chain's units:
    #: (taps, the hidden layers (global index) of the slices, the hidden layer of the rows), whose
    #: parameters are a product of widths of two chains (:func:`crossed`)
    crossed: list = field(default_factory=list, repr=False)

    # ---- what the model allows -------------------------------------------------------------

    @property
    def ode(self) -> bool:
        """Whether the polynomial ODE encoding (method.md §2) is defined for the model: one plain
        stack of tanh, sigmoid, identity and ReLU-family layers."""
        return self.stack and all(l.activation in ODE_DEFINED for l in self.nets[0].hidden)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods the model takes: the eps-graph components only where the ODE is defined."""
        return ("ward", "complete", "components") if self.ode else ("ward", "complete")

    @property
    def formats(self) -> tuple[str, ...]:
        """The files the reduced model saves to: a state_dict with its JSON architecture only for a
        plain stack (stock torch rebuilds it from the JSON), a ``torch.export`` program for any."""
        return (".pt", ".safetensors", PROGRAM_SUFFIX) if self.stack else (PROGRAM_SUFFIX,)

    def check(self, method: str, mode: str, approx=None) -> None:
        """Refuse a setting the model does not allow, naming why and what to use instead."""
        if not self.nets:
            raise UnsupportedLayerError(
                (f"not one plain stack ({self.not_a_stack}), " if self.not_a_stack else "") +
                "and nothing inside it lumps: no hidden units pass through one element-wise activation into "
                "exactly one Linear/convolution.\n" + self.discovery.report())
        if method == "components" and not self.ode:
            raise InvalidArgumentError(
                "method='components' (the paper's eps-graph components) is defined by the polynomial ODE: plain "
                f"Linear stacks of {', '.join(ODE_DEFINED)}; {self.discovery.model} is not one: use method='ward' "
                "or 'complete'")
        if mode == "forward":
            for net in self.nets:
                for l in net.hidden:
                    if l.activation not in ODE_DEFINED:
                        raise InvalidArgumentError(
                            f"mode='forward' is defined by the polynomial ODE, for {', '.join(ODE_DEFINED)}; {l.path} "
                            f"uses {l.activation}: use mode='backward'")
        if approx is not None and method == "components":
            raise InvalidArgumentError("approx applies to the merge paths (method='ward' or 'complete')")

    # ---- parameters --------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        return self.num_params_with([l.out_features for n in self.nets for l in n.hidden])

    @property
    def tied_layers(self) -> tuple:
        """:attr:`ties` as hidden-layer indices (all chains' hidden layers in order): the layers a
        merge path cuts in rounds (:meth:`~afde_nb.core.path.MergePath.tied`)."""
        if not self.ties:
            return ()
        first = np.cumsum([0] + [len(n.hidden) for n in self.nets])
        return tuple(t.over(tuple(int(first[k]) + t.layer for k in t.members)) for t in self.ties)

    def num_params_with(self, hidden_widths) -> int:
        """The model's parameter count with the chains' hidden layers resized to ``hidden_widths``
        (all chains' hidden layers in order), without building it; the layers of a tie count at
        the tie's width (what the written model holds: :func:`~afde_nb.core.tie.tie_widths`)."""
        hidden_widths = tie_widths(list(hidden_widths), self.tied_layers)
        total, at = self.fixed, 0
        for net, cost in zip(self.nets, self.costs):
            k = len(net.hidden)
            w = [net.widths[0]] + [int(v) for v in hidden_widths[at:at + k]] + [net.widths[-1]]
            at += k
            total += sum(w[i] * t * w[i + 1] + p * w[i + 1] for i, (t, p) in enumerate(cost))
        if self.crossed:
            # each chain counts such a layer with the other chain's width as it was: the product's
            # change in both at once is what that leaves out
            full = [l.out_features for n in self.nets for l in n.hidden]
            for t, slices, rows in self.crossed:
                cols = sum(int(hidden_widths[h]) - full[h] for h in slices)
                total += t * cols * (int(hidden_widths[rows]) - full[rows])
        return total

    def split(self, part: Partition) -> list[Partition]:
        """One partition per chain out of a partition of all chains' hidden layers."""
        if len(self.nets) == 1:
            return [part]
        out, at = [], 0
        for net in self.nets:
            sl = slice(at, at + len(net.hidden))
            at = sl.stop
            out.append(Partition(part.labels[sl], part.mode, part.eps, part.relative, part.eps_per_layer[sl],
                                 method=part.method, signs=None if part.signs is None else part.signs[sl],
                                 weights=None if part.weights is None else part.weights[sl]))
        return out

    # ---- data ----------------------------------------------------------------------------------

    def calibration(self, data):
        """Calibration data as the model takes it: an (n, in) float64 array for a plain stack
        (flattened where it starts with a Flatten), else a tensor in the model's dtype and device;
        NaN or infinite values are an error."""
        if self.stack:
            return as_inputs(data, self.nets[0].widths[0], "calibration", self.nets[0].meta.get("flatten"))
        return as_model_input(self.model, data)

    def inputs(self, data, what: str = "calibration"):
        """``data`` checked as inputs of the model, in the form the pipeline keeps them: a plain
        stack's as an (n, in) float64 array (its input Flatten applied), any other model's as given
        once the model runs on two of its rows; a shape the model does not take is a
        :class:`~afde_nb.errors.ShapeMismatchError` naming ``what``."""
        if self.stack:
            return as_inputs(data, self.nets[0].widths[0], what, self.nets[0].meta.get("flatten"))
        try:
            self.output(self.calibration(data)[:2])
        except ShapeMismatchError as exc:
            shape = data.shape if hasattr(data, "shape") else type(data).__name__
            raise ShapeMismatchError(f"{type(self.model).__name__} does not run on {what} shaped {shape}: "
                                     f"{str(exc).split(': ', 1)[-1]}") from exc
        return data

    def example(self, data):
        """Two rows of ``data`` as the model takes them (the inputs a ``.pt2`` export traces with by
        default), or None."""
        if data is None:
            return None
        if isinstance(data, tuple):  # positional inputs, or (args, kwargs)
            if len(data) == 2 and isinstance(data[0], (tuple, list)) and isinstance(data[1], Mapping):
                return (tuple(self.example(a) for a in data[0]), {
                    k: self.example(v) if isinstance(v, (torch.Tensor, np.ndarray)) else v for k, v in data[1].items()})
            return tuple(self.example(a) for a in data)
        x = as_model_input(self.model, data if isinstance(data, Mapping) else data[:2])
        return x[:2].clone()

    def rows(self, x, first: bool = False) -> list[list[np.ndarray]]:
        """Every chain layer's input rows when the model (in eval mode) runs on ``x`` (None:
        standard-normal pseudo-inputs run through each chain,
        :func:`~afde_nb.models.surgery.pseudo_inputs`; ``first``: the first layer's only). A plain
        stack's rows after the first are left to the merge path, which runs the network itself
        (in its own dtype)."""
        if x is None:
            return [self.kind(k).pseudo_rows(net, first=first) for k, net in enumerate(self.nets)]
        if self.stack:
            return [[np.asarray(x, dtype=np.float64)]]
        return self.rows_and_output(x)[0]

    def rows_and_output(self, x) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """(:meth:`rows`, :meth:`output`) on ``x`` (not None), from one run of the model: the run
        that draws the rows also gives the outputs."""
        if self.stack:
            return self.rows(x), self.output(x)
        was = self.model.training
        train(self.model, False)
        try:
            got, y = chain_inputs(self.model, self.discovery.chains, x)
        finally:
            train(self.model, was)
        return got, _output_array(y, len(x), self.model)

    def layer_inputs(self, x) -> list[list[np.ndarray]]:
        """Every chain layer's input on ``x`` (as :meth:`calibration` reads it), a plain stack's
        from its float64 forward."""
        if self.stack:
            return [self.nets[0].layer_inputs(x)]
        return self.rows(x)

    def unit_norms(self, x) -> list[list[np.ndarray]]:
        """``||h_i||_2`` over ``x`` of every unit of every group (per chain, per hidden layer): a
        Linear's features, a convolution's channels over every position (not only the sampled
        patches of :meth:`rows`)."""
        if self.stack:
            return [[np.linalg.norm(h, axis=0) for h in self.nets[0].layer_inputs(x)[1:]]]
        was = self.model.training
        train(self.model, False)
        try:
            got = surgery.capture(self.model, [g.consumer for c in self.discovery.chains for g in c], x)
        finally:
            train(self.model, was)
        return [[surgery.unit_norms(grouped.own_channels(g, surgery.slice_input(got[g.consumer.weight], g.consumer)),
                                    g.consumer.kind,
                                    net.layers[h + 1].in_features, self.model, g)
                 for h, g in enumerate(chain)] for chain, net in zip(self.discovery.chains, self.nets)]

    def written(self, nets: list[Network], model: nn.Module) -> list[Network]:
        """The chains as later stages (a repair) read them from ``model``, :meth:`write`'s output
        for ``nets``: a plain stack re-read (its arrays as the model holds them, in its dtype);
        other chains as given (float64; the model holds them rounded to its dtype)."""
        return [to_network(model, check=False)] if self.stack else list(nets)

    def probes(self, rows: list[list[np.ndarray]] | None, k: int) -> dict:
        """The keyword that gives chain ``k``'s merge path its probe rows (``rows`` None: pseudo-
        inputs; a plain stack's path draws its own, as :func:`~afde_nb.core.path.probe_inputs`)."""
        if self.stack:
            return {"calibration": None if rows is None else rows[k][0]}
        if rows is None:  # drawn when the path first needs them (never at eps = 0)
            return {"inputs": lambda: self.kind(k).pseudo_rows(self.nets[k])}
        r = rows[k]
        return {"inputs": lambda: r}

    def kind(self, k: int) -> LayerChain | GatedChain:
        """Chain ``k``'s kind (:mod:`afde_nb.models.chains`): its merge path, reduction and writing
        back, as the pipeline asks for them (a plain stack's: Linear layers)."""
        chains = self.discovery.chains
        return kind_of(chains[k]) if k < len(chains) and not self.stack else LAYERS

    def repairable(self, k: int) -> bool:
        """Whether chain ``k``'s kind may refit it (:mod:`afde_nb.models.chains`): chains of Linear
        layers (tokens of a sequence are rows), not a convolution chain's overlapping patches; an
        inverted-residual block's 1x1 consumer."""
        return self.kind(k).repairable(self.nets[k])

    # ---- outputs and writing back ------------------------------------------------------------------

    def output(self, x, nets: list[Network] | None = None, model: nn.Module | None = None) -> np.ndarray:
        """The model's outputs on ``x`` as (n, outputs) float64, with the chains replaced by
        ``nets`` where given (``model``: their :meth:`write`, where already built). A plain
        stack's are its network's, in float64; a ``ModelOutput``, tuple or dict is read by its
        tensors with n rows, logits first (:func:`~afde_nb.models.surgery.output_rows`)."""
        if self.stack:
            return (nets or self.nets)[0].forward(x)
        model = model if model is not None else self.model if nets is None else self.write(nets)
        was = model.training
        train(model, False)
        try:
            y = surgery.run(model, x)
        finally:
            train(model, was)
        return _output_array(y, len(x), model)

    def write(self, nets: list[Network]) -> nn.Module:
        """The model with its chains replaced by ``nets``: a plain stack as a new ``nn.Sequential``
        of stock modules (on the model's device), any other model as a copy of itself, smaller
        layers in place. The user's model is never modified."""
        if self.stack:
            device = next((p.device for p in self.model.parameters()), None)
            return to_torch(nets[0], device=device)
        out = surgery.copy_model(self.model)
        chains = self.discovery.chains
        tied = {k for t in self.ties for k in t.members}
        sliced = {a.weight for c in chains for a in getattr(c[-1], "consumers", ()) if a.cols is not None}
        for k in surgery.write_order(chains):  # slices of a concatenation's consumer compose in this order
            if k in tied:
                continue
            net = surgery.with_rows(nets[k], self.nets[k]) if chains[k][0].producer.weight in sliced else nets[k]
            self.kind(k).write(out, chains[k], net)
        for t in {t.members: t for t in self.ties}.values():  # one width for all: written together
            ks = t.members
            self.kind(ks[0]).write_tied(out, [chains[k] for k in ks], [nets[k] for k in ks], t)
        train(out, self.model.training)
        return out


def capture(model: nn.Module, example_inputs=None, calibration=None) -> Captured:
    """``model`` read as chains of groups (see the module docstring); the model is not modified.

    A model whose forward torch.fx cannot trace whole (a Hugging Face model) is read through
    ``torch.export`` on example inputs: ``example_inputs``, else two rows of ``calibration``, else
    the model's own ``dummy_inputs`` (Hugging Face models have them); inputs as
    :func:`as_model_input` takes them (a tensor, or a dict of keyword inputs)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        net = to_network(model, check=False)  # finiteness: merge_path's first pass (else quotient/lump)
    except UnsupportedLayerError as exc:
        return _traced(model, str(exc), lambda: _example(model, example_inputs, calibration))
    layers = net.layers
    groups = [Group(_affine(a), _affine(b), a.activation, a.negative_slope) for a, b in zip(layers, layers[1:])]
    disc = Discovery([groups] if groups else [], [], type(model).__name__)
    return Captured(model, disc, [net], [[(1, 1 if l.has_bias else 0) for l in layers]], 0, stack=True)


def _affine(layer) -> Affine:
    return Affine(layer.path, "linear", f"{layer.path}.weight", f"{layer.path}.bias" if layer.has_bias else None,
                  layer.path)


def _example(model: nn.Module, example_inputs, calibration) -> tuple[tuple, dict] | None:
    """(args, kwargs) to export ``model`` on (see :func:`capture`), or None."""
    if example_inputs is None and calibration is not None:
        example_inputs = as_model_input(model, calibration if isinstance(calibration, Mapping) else calibration[:2])[:2]
    if example_inputs is None:
        example_inputs = getattr(model, "dummy_inputs", None)
        if not isinstance(example_inputs, (dict, torch.Tensor)):
            return None
    if isinstance(example_inputs, tuple):
        return tuple(as_model_input(model, a) for a in example_inputs), {}
    x = as_model_input(model, example_inputs)
    return ((), x.kwargs) if isinstance(x, surgery.Batch) else ((x,), {})


def _traced(model: nn.Module, not_a_stack: str, example=None) -> Captured:
    disc = find_groups(model, example)
    kinds = [kind_of(c) for c in disc.chains]
    nets = [kd.network(model, c) for kd, c in zip(kinds, disc.chains)]
    for n in nets:
        n.check_finite(type(model).__name__)
    costs = [kd.costs(net, c) for kd, net, c in zip(kinds, nets, disc.chains)]
    ties: dict = {}
    for k, c in enumerate(disc.chains):
        key = getattr(c[0], "tie", None)  # experts, grouped conv blocks
        if key is not None:
            ties.setdefault(key, []).append(k)
    # one tie per hidden layer of the tied chains (an expert has one; a grouped conv's block two)
    ties = tuple(Tie(tuple(ks), nets[ks[0]].hidden[h].out_features, disc.chains[ks[0]][0].align, h)
                 for ks in ties.values() for h in range(len(nets[ks[0]].hidden)))
    cap = Captured(model, disc, nets, costs, 0, not_a_stack=not_a_stack, ties=ties,
                   crossed=crossed(model, disc.chains, nets))
    cap.fixed = count_params(model) - cap.num_params
    return cap


def crossed(model: nn.Module, chains: list, nets: list[Network]) -> list[tuple[int, list[int], int]]:
    """:attr:`Captured.crossed`: every layer that one or more chains end in as a slice of its columns
    (a concatenation's consumer, or one of several consumers of units that fan out) and another
    chain starts from (its rows that chain's first hidden units), as (columns per unit, the slices'
    hidden layers, the rows' hidden layer), hidden layers numbered over all chains in order."""
    at, start = 0, []
    for net in nets:
        start.append(at)
        at += len(net.hidden)
    heads = {c[0].producer.weight: start[k] for k, c in enumerate(chains) if len(nets[k].hidden)}
    out: dict[str, tuple] = {}
    for k, c in enumerate(chains):
        for a in getattr(c[-1], "consumers", (c[-1].consumer,)):
            if a.cols is None or a.weight not in heads:
                continue
            per = int(surgery.weight(model, a)[0].numel()) // a.cols[2]
            t, slices, rows = out.get(a.weight, (per, [], heads[a.weight]))
            out[a.weight] = (t, slices + [start[k] + len(nets[k].hidden) - 1], rows)
    return list(out.values())


def _output_array(y, n: int, model: nn.Module) -> np.ndarray:
    """A model's output on n rows as (n, outputs) float64 (:func:`~afde_nb.models.surgery.output_rows`)."""
    return surgery.output_rows(y, n, type(model).__name__).detach().to("cpu", torch.float64).numpy()


def as_model_input(model: nn.Module, data) -> torch.Tensor | surgery.Batch:
    """Calibration data as the model takes it: a tensor (its first argument) in its parameters'
    dtype (integer tensors, such as token ids, keep theirs) and device; a dict (or
    :class:`~afde_nb.models.surgery.Batch`) of keyword inputs batched on their first axis, each
    tensor so converted, as a :class:`~afde_nb.models.surgery.Batch` (other values as given)."""
    if isinstance(data, surgery.Batch):
        data = data.kwargs
    if isinstance(data, Mapping):
        return surgery.Batch({k: as_model_input(model, v) if isinstance(v, (torch.Tensor, np.ndarray)) else v
                              for k, v in data.items()})
    ref = next(model.parameters(), None)
    t = data.detach() if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    if t.is_floating_point() and ref is not None:
        t = t.to(dtype=ref.dtype)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise InvalidWeightsError("calibration data contain NaN or infinite values")
    return t.to(ref.device) if ref is not None else t


def train(model: nn.Module, mode: bool) -> None:
    """model.train(mode), where the model allows it (a torch.export program's module does not)."""
    if model.training != mode:
        try:
            model.train(mode)
        except NotImplementedError:
            pass
