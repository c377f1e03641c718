"""Chain kinds: what the pipeline does to one chain of groups, per kind of group.

:class:`~afde_nb.models.capture.Captured` reads every chain with its kind (:func:`kind_of`) and the
pipeline (:mod:`afde_nb.pipeline.compress`) asks ``cap.kind(k)`` for chain k's merge path and its
reduction (the quotient, and the repair where a merge was lossy), never which kind it is. Five kinds:

* :data:`LAYERS`: a chain of Linear/convolution groups read as a
  :class:`~afde_nb.core.network.Network` (a plain stack is one): :mod:`afde_nb.core.path`,
  :mod:`afde_nb.core.reduce`, :mod:`afde_nb.core.repair`, written back by
  :func:`afde_nb.models.surgery.write_back`;
* :data:`GATED`: one gated group ``down(act(gate(x)) * up(x))`` read as a
  :class:`~afde_nb.core.gated.GatedNet`: :mod:`afde_nb.core.gated`, :mod:`afde_nb.models.gated`;
* :data:`INVERTED`: one inverted-residual group (producer -> depthwise -> [SE] -> 1x1 consumer)
  read as an :class:`~afde_nb.core.inverted.InvertedNet`: :mod:`afde_nb.core.inverted`,
  :mod:`afde_nb.models.inverted`. Its rows are the producer's input maps (whole images: the
  depthwise conv reads neighbours), collected by :func:`chain_inputs` in the same model run.
* :data:`EXPERTS`: one expert of a fused mixture-of-experts bank, a gated layer
  (:mod:`afde_nb.models.experts`); its rows are the tokens routed to it, collected by
  :func:`chain_inputs` in the same run, and a bank's experts are written together
  (``write_tied``: they keep one width, :attr:`~afde_nb.models.capture.Captured.ties`).
* :data:`GROUPED`: one group of a grouped convolution's input channels (and, where they reach a
  convolution directly, of its output channels), a two-layer
  :class:`~afde_nb.core.network.Network` (:mod:`afde_nb.models.grouped`); its consumer rows are its
  group's channels of the grouped conv's input patches, and a conv's groups keep one width and are
  written together, as a bank's experts.

Every kind has the same methods: ``network(root, chain)`` and ``costs(net, chain)`` (capture),
``pseudo_rows(net, first)`` (the chain's input rows without data), ``path(net, **options)`` (a
:class:`~afde_nb.core.path.MergePath` with one :class:`~afde_nb.core.path.LayerPath` per hidden
layer, options as :func:`~afde_nb.core.path.merge_path` takes them), ``reduce(net, part, rows)``
(-> the quotient, the result after any repair on the chain's input rows ``rows`` (None: none), the
first refit layer or None), ``repairable(net)`` (whether a repair may refit it) and
``write(root, chain, net)``.
"""
from __future__ import annotations

from ..core import gated as core_gated
from ..core import inverted as core_inverted
from ..core.path import MergePath, merge_path
from ..core.reduce import quotient
from ..core.repair import LOSSY, repair
from . import experts, gated, grouped, inverted, surgery


class LayerChain:
    """Chains of Linear/convolution groups (and plain stacks)."""

    name = "layers"

    def network(self, root, chain):
        return surgery.chain_network(root, chain)

    def costs(self, net, chain) -> list[tuple[int, int]]:
        return [surgery.unit_cost(net.layers[k], a, chain[k].norm if k < len(chain) else None,
                                  chain[k].post if k < len(chain) else None)
                for k, a in enumerate(surgery.chain_affines(chain))]

    def pseudo_rows(self, net, first: bool = False):
        return surgery.pseudo_inputs(net, first=first)

    def path(self, net, **options) -> MergePath:
        return merge_path(net, **options)

    def reduce(self, net, part, rows):
        small, blocks = quotient(net, part)
        if blocks:  # how the first layer's rows merged: its writing may have to apply it again
            small.meta["rows0"] = blocks[0].target_map()  # (surgery._merged_rows), and a repair keeps it
        lossy = [h for h, b in enumerate(blocks) if b.spread > LOSSY]
        if rows is None or not lossy:
            return small, small, None
        start = lossy[0] + 1
        return small, repair(net, small, rows, [b.target_map() for b in blocks], start=start), start

    def repairable(self, net) -> bool:
        """Repair refits chains of Linear layers (tokens of a sequence are rows); a convolution
        chain's patches overlap, so its layers are not refit."""
        # units that fan out are read by a stacked layer of every consumer's taps (surgery's
        # _stacked_layer), a bound's view of them, not a layer to refit
        return all(l.taps == 1 for l in net.layers) and "stacked" not in net.meta

    def write(self, root, chain, net) -> None:
        surgery.write_back(root, chain, net)


class GatedChain:
    """One gated group: gate and up projections (their rows) and the down projection (its columns)."""

    name = "gated"

    def network(self, root, chain):
        return gated.gated_network(root, chain)

    def costs(self, net, chain) -> list[tuple[int, int]]:
        return gated.unit_costs(net, chain)

    def pseudo_rows(self, net, first: bool = False):
        return gated.pseudo_rows(net, first=first)

    def path(self, net, **options) -> MergePath:
        return core_gated.merge_path(net, **options)

    def reduce(self, net, part, rows):
        return core_gated.reduce_and_repair(net, part, rows)

    def repairable(self, net) -> bool:
        return True

    def write(self, root, chain, net) -> None:
        gated.write_back(root, chain, net)


class InvertedChain:
    """One inverted-residual group: producer rows, depthwise kernels, SE gate rows and the consumer's
    (and fc1's) columns; its rows are the producer's input maps."""

    name = "inverted"

    def network(self, root, chain):
        return inverted.inverted_network(root, chain)

    def costs(self, net, chain) -> list[tuple[int, int]]:
        return inverted.unit_costs(net, chain)

    def pseudo_rows(self, net, first: bool = False):
        return inverted.pseudo_rows(net, first=first)

    def path(self, net, **options) -> MergePath:
        return core_inverted.merge_path(net, **options)

    def reduce(self, net, part, rows):
        return core_inverted.reduce_and_repair(net, part, rows)

    def repairable(self, net) -> bool:
        return True  # the 1x1 consumer is refit on sampled positions of the probe maps

    def write(self, root, chain, net) -> None:
        inverted.write_back(root, chain, net)


class ExpertChain(GatedChain):
    """One expert of a fused bank: a gated layer whose weights are slices of the bank's 3-D
    parameters; the bank's experts are written back together (:meth:`write_tied`)."""

    name = "expert"

    def network(self, root, chain):
        return experts.expert_network(root, chain)

    def costs(self, net, chain) -> list[tuple[int, int]]:
        return experts.unit_costs(net, chain)

    def write(self, root, chain, net) -> None:
        experts.write_tied(root, [chain], [net])

    def write_tied(self, root, chains, nets, tie=None) -> None:
        experts.write_tied(root, chains, nets, tie)


class GroupedChain(LayerChain):
    """One group of a grouped convolution's input channels (:mod:`afde_nb.models.grouped`): the
    producer's rows of the block and the grouped conv's rows of its group; the blocks of one conv
    keep one width and are written back together (:meth:`write_tied`). Not refit (a 3x3 kernel's
    patches overlap, as in any conv chain)."""

    name = "grouped"

    def network(self, root, chain):
        return grouped.grouped_network(root, chain)

    def costs(self, net, chain) -> list[tuple[int, int]]:
        return grouped.unit_costs(net, chain)

    def reduce(self, net, part, rows):
        small, _ = quotient(net, part)
        return small, small, None

    def repairable(self, net) -> bool:
        return False

    def write(self, root, chain, net) -> None:
        grouped.write_tied(root, [chain], [net])

    def write_tied(self, root, chains, nets, tie=None) -> None:
        grouped.write_tied(root, chains, nets, tie)


LAYERS = LayerChain()
GATED = GatedChain()
INVERTED = InvertedChain()
EXPERTS = ExpertChain()
GROUPED = GroupedChain()


def kind_of(chain) -> LayerChain | GatedChain | InvertedChain:
    """The kind of a chain of groups (None or empty: a plain stack's, :data:`LAYERS`)."""
    if chain and experts.is_expert(chain):
        return EXPERTS
    if chain and grouped.is_grouped(chain):
        return GROUPED
    if chain and inverted.is_inverted(chain):
        return INVERTED
    return GATED if chain and gated.is_gated(chain) else LAYERS


def chain_inputs(model, chains: list, x) -> tuple[list[list], object]:
    """:func:`_chain_inputs`, a grouped block's consumer rows cut to its group's channels
    (:func:`afde_nb.models.grouped.slice_rows`)."""
    got, y = _chain_inputs(model, chains, x)
    return grouped.slice_rows(chains, got), y


def _chain_inputs(model, chains: list, x) -> tuple[list[list], object]:
    """(every chain's rows, the model's output on ``x``) from one run of ``model``: the inverted
    chains' probe maps by :func:`afde_nb.models.inverted.record`'s hooks, the experts' routed tokens
    by :func:`afde_nb.models.experts.record`'s (an expert no token reached: pseudo-inputs), every
    other chain's rows by :func:`afde_nb.models.surgery.chain_inputs` (a producer without a module
    of its own, in a torch.export program, is read in a second run)."""
    mine = [k for k, c in enumerate(chains) if experts.is_expert(c)]
    if mine:
        rest = [k for k in range(len(chains)) if k not in mine]
        with experts.record(model, [chains[k] for k in mine]) as seen:
            got, y = _chain_inputs(model, [chains[k] for k in rest], x)
        out: list = [None] * len(chains)
        for k, r in zip(rest, got):
            out[k] = r
        for k in mine:
            (g,) = chains[k]
            out[k] = seen.get(g) or gated.pseudo_rows(experts.expert_network(model, chains[k]))
        return out, y
    own = [k for k, c in enumerate(chains) if inverted.is_inverted(c)]
    if not own:
        return surgery.chain_inputs(model, chains, x)
    rest = [k for k in range(len(chains)) if k not in own]
    mine = [chains[k] for k in own]
    with inverted.record(model, mine) as seen:
        got, y = surgery.chain_inputs(model, [chains[k] for k in rest], x)
    late = inverted.missing(mine, seen)
    if late:
        by = {g.producer.weight: g for (g,) in mine}
        more, _ = surgery.capture_run(model, late, x, lambda a, t: inverted.maps_of(model, by[a.weight], t))
        seen.update(more)
    out: list = [None] * len(chains)
    for k, r in zip(rest, got):
        out[k] = r
    for k, (g,) in zip(own, mine):
        out[k] = [seen[g.producer.weight]]
    return out, y
