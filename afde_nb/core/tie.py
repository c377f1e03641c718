"""Ties: blocks of units that must keep one width (issue 27).

Some parameters hold several blocks of units at one width: a mixture-of-experts bank stored fused
(``gate_up_proj`` (E, 2I, H): every expert has I units; :mod:`afde_nb.models.experts`), and the
groups of a grouped convolution. Each block is lumped on its own (units of different blocks never
merge), but the written parameter has one width for all: the widest block's, the narrower ones
zero-padded (exact: a padded unit computes 0 and feeds nothing), rounded up to ``align`` units
where a kernel needs aligned rows (the grouped matrix products need 16-byte rows). The parameter
count charges every block that width (:func:`tie_widths`), so padding is never free, and the merge
path cuts a tie in rounds (:meth:`~afde_nb.core.path.MergePath.tied`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tie:
    """``members``: the tied blocks (hidden-layer indices, or chain indices where a
    :class:`~afde_nb.models.capture.Captured` keeps them); ``full``: their width as built;
    ``align``: the written width is a multiple of it (or ``full``); ``layer``: with chain indices,
    which hidden layer of each chain (a grouped conv's blocks tie two layers: its inputs, its outputs)."""

    members: tuple
    full: int
    align: int = 1
    layer: int = 0

    def width(self, widths) -> int:
        """The width the parameter holds for the members' widths ``widths`` (indexed by member)."""
        w = max(int(widths[h]) for h in self.members)
        return min(self.full, -(-w // self.align) * self.align)

    def over(self, members: tuple) -> "Tie":
        """The same tie over other indices (chain indices -> hidden-layer indices)."""
        return Tie(tuple(members), self.full, self.align, self.layer)


def tie_widths(widths: list[int], ties) -> list[int]:
    """``widths`` (one per hidden layer) with every member of a tie at the tie's width."""
    out = list(widths)
    for t in ties:
        w = t.width(out)
        for h in t.members:
            out[h] = w
    return out
