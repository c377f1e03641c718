"""Index maps: where a unit's values land after ``permute``, ``transpose``, ``reshape``, ``view``,
``flatten``, ``unsqueeze`` and ``squeeze``, computed on the indices themselves.

Rather than one hand-written rule per layout, the view operations between a producer and its
consumer are applied to a tensor of element ids (each element's flat index in the tensor where the
views began), with the operations' own arguments and the exported graph's shapes. What arrives at
the consumer says, for every consumer column, which unit (channel) and which position it reads.
:func:`columns` then proves that the columns form a *product layout*: with ``C`` units of ``T``
positions each, unit ``c``'s ``t``-th column is ``(t // inner) * C * inner + c * inner + t % inner``
for one ``inner`` (channel-major ``c * T + t`` is ``inner = T``; a ``permute(0, 2, 1, 3)`` then
``reshape`` into a classifier, as CREPE does, is ``inner = 1``), every unit reading the same
position at the same ``t``, and each row of the consumer one sample. Only then does a merge of
units sum the right columns, and the layout gives the reduced model's columns for any ``C``:
Torch-Pruning assumes consecutive columns here and cuts the wrong ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

aten = torch.ops.aten

#: ATen ops (and torch functions / tensor methods of traced graphs) that move elements without
#: changing them, with how to apply each to an id tensor (``args``: the node's arguments after
#: the input; ``shape``: the node's output shape)
_APPLY = {
    aten.permute.default: lambda t, args, shape: t.permute(*args[0]),
    aten.transpose.int: lambda t, args, shape: t.transpose(args[0], args[1]),
    aten.t.default: lambda t, args, shape: t.t(),
    aten.flatten.using_ints: lambda t, args, shape: t.flatten(*args),
    aten.unsqueeze.default: lambda t, args, shape: t.unsqueeze(args[0]),
    aten.squeeze.dim: lambda t, args, shape: t.squeeze(args[0]),
    aten.squeeze.dims: lambda t, args, shape: t.reshape(shape),
    aten.squeeze.default: lambda t, args, shape: t.squeeze(),
    aten.view.default: lambda t, args, shape: t.reshape(shape),
    aten.reshape.default: lambda t, args, shape: t.reshape(shape),
    aten._unsafe_view.default: lambda t, args, shape: t.reshape(shape),
    aten.unflatten.int: lambda t, args, shape: t.reshape(shape),
    aten.clone.default: lambda t, args, shape: t,
    aten.alias.default: lambda t, args, shape: t,
    aten.contiguous.default: lambda t, args, shape: t,
}
#: view ops whose shape argument may hold a literal width (a forward's ``reshape(-1, 2048)``)
SHAPED = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def concrete(val) -> tuple[int, ...] | None:
    """A traced tensor's shape as ints (a symbolic size, such as a dynamic batch, by the value it
    was traced with), or None where the graph carries no shapes (a torch.fx trace)."""
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
            continue
        # a symbol's traced value, read without int(d): that would guard on it and specialise the
        # program's batch in the user's own graph
        node = getattr(d, "node", None)
        hint = getattr(node, "hint", None)
        if hint is None:
            try:
                hint = node.shape_env.size_hint(node.expr)
            except Exception:  # noqa: BLE001 - an unbacked symbol without a hint
                return None
        out.append(int(hint))
    return tuple(out)


#: the same moves in a torch.fx trace (no shapes there: they are followed in an exported graph)
_TRACED = (torch.permute, torch.reshape, torch.transpose, torch.squeeze, torch.unsqueeze, torch.t)
_METHODS = ("permute", "reshape", "view", "transpose", "flatten", "unflatten", "unsqueeze", "squeeze", "contiguous",
            "t", "mT")


def reads_shape(node: fx.Node) -> bool:
    """A read of a tensor's shape, not its values (``x.shape``, ``x.size()``, ``x.dim()``,
    ``aten.sym_size``, ``_assert_tensor_metadata``): it sees no unit's value, so it does not stop a
    walk."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim", "dtype", "device")
    if node.op == "call_method":
        return node.target in ("size", "dim")
    # and the bookkeeping an export emits: metadata asserts whose result nothing reads
    name = str(node.target)
    return node.op == "call_function" and ("sym_size" in name or ("_assert" in name and not node.users))


def followable(node: fx.Node) -> bool:
    """A view op whose effect on the indices :meth:`Ids.apply` computes (an exported graph's)."""
    return node.op == "call_function" and node.target in _APPLY


def is_view(node: fx.Node) -> bool:
    """An operation that only moves elements: an exported graph's (followed, :class:`Ids`) or a
    torch.fx trace's (recognised, not followed)."""
    if node.op == "call_method":
        return node.target in _METHODS
    return node.op == "call_function" and (node.target in _APPLY or node.target in _TRACED)


@dataclass
class Ids:
    """Element ids of the tensor where the views began (``shape``), as they stand now (``ids``);
    ``axis`` is the units' axis there and ``batch`` the axes that index samples (a convolution's
    first, every axis before a Linear's features)."""

    shape: tuple[int, ...]
    axis: int
    batch: tuple[int, ...]
    ids: torch.Tensor

    @classmethod
    def start(cls, node: fx.Node, channels_first: bool) -> "Ids | None":
        shape = concrete(node.meta.get("val"))
        if not shape or len(shape) < 2:
            return None
        axis = 1 if channels_first else len(shape) - 1
        batch = (0,) if channels_first else tuple(range(len(shape) - 1))
        return cls(shape, axis, batch, torch.arange(int(np.prod(shape))).reshape(shape))

    def apply(self, node: fx.Node) -> bool:
        """Move the ids through view ``node``; False where its result cannot be followed."""
        out = concrete(node.meta.get("val"))
        if out is None or node.target not in _APPLY:
            return False
        try:
            t = _APPLY[node.target](self.ids, list(node.args[1:]), out)
        except Exception:  # noqa: BLE001 - arguments this reading does not follow
            return False
        if tuple(t.shape) != out:
            return False
        self.ids = t
        return True

    def identity(self) -> bool:
        """The views changed nothing (the ids stand where they began)."""
        return tuple(self.ids.shape) == self.shape and bool(
            torch.equal(self.ids, torch.arange(self.ids.numel()).reshape(self.shape)))

    def columns(self) -> tuple[int, int] | str:
        """(inner, T) of the product layout (module docstring) in which a Linear consumer's
        columns (the last axis now) read the units, or why they do not form one."""
        unit, sample, pos = (a.reshape(-1, self.ids.shape[-1]) for a in self._coords())
        if (sample != sample[:, :1]).any():
            return "a row of the consumer mixes samples"
        if (unit != unit[:1]).any() or (pos != pos[:1]).any():
            return "the consumer's columns read other units or positions from row to row"
        unit, pos = unit[0], pos[0]
        C, F = self.shape[self.axis], len(unit)
        if F % C or (np.bincount(unit, minlength=C) != F // C).any():
            return f"its {F} columns do not read each of the {C} units equally often"
        T = F // C
        inner = int(np.argmax(unit != unit[0])) if C > 1 and (unit != unit[0]).any() else F
        j = np.arange(F)
        if (unit != (j // inner) % C).any():
            return "its columns are not one product layout of units and positions"
        cols = layout(C, T, inner)
        if (pos[cols] != pos[cols[0]][None, :]).any():
            return "its units' columns read different positions"
        return inner, T

    def _coords(self):
        """(unit, sample, position) of every element now, each as the current shape."""
        coords = np.unravel_index(self.ids.numpy(), self.shape)
        unit = coords[self.axis]
        sample = np.ravel_multi_index([coords[a] for a in self.batch], [self.shape[a] for a in self.batch]) \
            if self.batch else np.zeros_like(unit)
        rest = [a for a in range(len(self.shape)) if a != self.axis and a not in self.batch]
        pos = np.ravel_multi_index([coords[a] for a in rest], [self.shape[a] for a in rest]) \
            if rest else np.zeros_like(unit)
        return unit, sample, pos

    def maps(self) -> tuple[int, int] | None:
        """(H, W) where a Linear's tokens ``(B, N, C)`` now stand as maps ``(B, C, H, W)``: channel c
        of image b at (h, w) is unit c of token ``h W + w`` of sample b (SegFormer's Mix-FFN:
        ``transpose(1, 2).view(B, C, H, W)``); None otherwise."""
        if self.ids.dim() != 4 or len(self.shape) != 3 or self.axis != 2:
            return None
        B, C, H, W = self.ids.shape
        b, n, c = np.unravel_index(self.ids.numpy(), self.shape)  # where each element began: (B, N, C)
        ok = (c == np.arange(C)[None, :, None, None]).all() and (b == np.arange(B)[:, None, None, None]).all() \
            and (n == (np.arange(H)[:, None] * W + np.arange(W)[None, :])[None, None]).all()
        return (H, W) if ok and H * W == self.shape[1] and C == self.shape[2] else None

    def tokens(self) -> bool:
        """Whether maps ``(B, C, H, W)`` (where the ids began) now stand as tokens ``(B, H W, C)``:
        the inverse of :meth:`maps`, what a Linear then reads one token per row."""
        if self.ids.dim() != 3 or len(self.shape) != 4 or self.axis != 1:
            return False
        B, N, C = self.ids.shape
        unit, sample, pos = self._coords()
        return N == self.shape[2] * self.shape[3] and C == self.shape[1] and bool(
            (unit == np.arange(C)[None, None, :]).all() and (pos == np.arange(N)[None, :, None]).all()
            and (sample == np.arange(B)[:, None, None]).all())


def layout(C: int, T: int, inner: int) -> np.ndarray:
    """(C, T) array: the column of unit c, position t in the product layout of ``inner``."""
    t = np.arange(T)
    return (t // inner)[None, :] * (C * inner) + np.arange(C)[:, None] * inner + (t % inner)[None, :]


def channel_major(C: int, T: int, inner: int | None) -> np.ndarray | None:
    """Column permutation taking a consumer's weight (or input rows) from the model's layout to
    channel-major (``W[:, perm]``), or None where it is channel-major already."""
    if inner is None or inner == T:
        return None
    return layout(C, T, inner).reshape(-1)
