"""The group's data: where its channels sit (`Slot`), what grows (`WeightEdit`, `ShapeEdit`), the
whole coupled group (`Group`), and `Restructure`, the signal that the units come in a structure."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from ..errors import GrowError


@dataclass(frozen=True)
class Slot:
    """Where the group's n channels sit along one axis of a tensor (see module docstring).

    `also_at`: further offsets where the same n units sit again (the parts of a split-and-concat
    block joined back: every copy grows, its new units inserted right after it)."""

    axis: int
    offset: int
    total: int
    block: int = 1
    also_at: tuple = ()

    @property
    def offsets(self) -> tuple:
        return (self.offset, *self.also_at)

    def moved(self, axis: int) -> "Slot":
        return replace(self, axis=axis)

    def positions(self, dim: int) -> list[int]:
        """The unit offsets of every copy of the group along an axis of `dim` channels (the
        `outer` repeats written out)."""
        outer = dim // (self.total * self.block)
        return [o * self.total + offset for o in range(outer) for offset in self.offsets]

    def growth(self, dim: int) -> int:
        """Channels an axis of `dim` channels gains per new unit: one block per copy."""
        return len(self.positions(dim)) * self.block


def slot_at(axis: int, positions, total: int, block: int, width: int) -> Slot:
    """The Slot of copies of `width` units at unit offsets `positions` along an axis of `total`
    units; a pattern that repeats evenly along the axis is written as the repeat (its `outer`),
    so one layout has one Slot."""
    positions = sorted(set(positions))
    for repeats in range(len(positions), 1, -1):
        period = total // repeats
        if total % repeats or len(positions) % repeats:
            continue
        base = [p for p in positions if p < period]
        if (all(p + width <= period for p in base)
                and positions == [k * period + p for k in range(repeats) for p in base]):
            return Slot(axis, base[0], period, block, tuple(base[1:]))
    return Slot(axis, positions[0], total, block, tuple(positions[1:]))


def merged_slot(known: Slot, more: Slot, dim: int | None, width: int) -> Slot | None:
    """The Slot holding the copies of both (None when they cannot share one tensor: another
    axis or block, an unknown size, or copies that overlap)."""
    if known.axis != more.axis or known.block != more.block or dim is None:
        return None
    positions = sorted(set(known.positions(dim)) | set(more.positions(dim)))
    if any(b - a < width for a, b in zip(positions, positions[1:])):
        return None
    return slot_at(known.axis, positions, dim // known.block, known.block, width)


def single(slot: Slot, node: ir.Node) -> None:
    """Refuse a rule that follows one copy of the group only."""
    if slot.also_at:
        raise GrowError(f"the widened channels reach {desc(node)} in several places of one tensor "
                        f"(the parts of a split-and-concat block); onnxgrow cannot follow them through "
                        f"{node.op_type}.")


@dataclass
class WeightEdit:
    """A constant input of `node` that grows along `axis`.

    role: "producer" (new output units: rows chosen by the method), "consumer" (new input
    columns: split / zero / ±V / random by the method) or "param" (per-channel values: copied).
    """

    node: ir.Node
    index: int
    axis: int
    slot: Slot
    role: str


@dataclass
class ShapeEdit:
    """An integer shape/size constant (input `index` of `node`) whose entry `position` grows by
    `per_unit` for every new channel; or, for `attr`, an attribute list entry.

    `consumer` is the node that reads the shape (a Reshape or Expand) when `node` is further up
    the shape's computation (a Concat of a batch size read at run time and constants): that
    computation may be shared with shapes outside the group, so it is copied for the consumer
    before the edit.

    `value`: the teacher's values of an input computed at run time from shapes that are known
    statically (torch's chunk bounds); the edit writes them as a constant, grown."""

    node: ir.Node
    index: int | None
    position: int
    per_unit: int
    attr: str | None = None
    consumer: ir.Node | None = None
    value: np.ndarray | None = None


@dataclass
class Group:
    """The coupled group of one set of channels. Built by `find_group`."""

    width: int  # units: the layer's channels / (outer · block)
    outer: int = 1  # >1 when every conv group (or q, k and v) grows alike
    block: int = 1  # >1 when a unit is a run of channels (an attention head)
    members: dict = field(default_factory=dict)  # ir.Value -> Slot
    edits: list = field(default_factory=list)  # WeightEdit
    shape_edits: list = field(default_factory=list)  # ShapeEdit
    group_attrs: list = field(default_factory=list)  # depthwise Convs whose `group` grows
    uniform_only: list = field(default_factory=list)  # names of nodes needing uniform replication
    norms: list = field(default_factory=list)  # those nodes (LayerNormalization, ReduceMean)
    broadcasts: list = field(default_factory=list)  # Expands whose new channels copy one value (repeat_kv)

    @property
    def producers(self) -> list[ir.Node]:
        return _unique(e.node for e in self.edits if e.role == "producer")

    @property
    def consumers(self) -> list[ir.Node]:
        return _unique(e.node for e in self.edits if e.role == "consumer")


def _unique(items):
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


class Restructure(GrowError):
    """The walk found that the layer's units come in a structure: `candidates` lists the
    (outer, block) views of its channels worth trying — every conv group growing alike
    (outer = groups), or attention heads (outer = 3 for fused q/k/v, block = head size)."""

    def __init__(self, candidates: list[tuple[int, int]], why: str):
        super().__init__(f"{why}; its channels do not line up with the widened units.")
        self.candidates = candidates


class OutputReached(GrowError):
    """The widened channels reach a graph output: more of them would change its shape."""


def desc(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"an unnamed {node.op_type} node"


# where values stop flowing into an output: layers mix them, Shape/Size keep only their sizes
OUTPUT_BARRIERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN",
                             "Shape", "Size"})


def output_reached(value: ir.Value, limit: int = 256) -> str | None:
    """The name of a graph output that `value`'s elements flow into without passing a layer (they
    are part of that output), or None."""
    seen, queue = {id(value)}, [value]
    while queue and len(seen) <= limit:
        v = queue.pop(0)
        if v.is_graph_output():
            return v.name
        for use in v.uses():
            if use.node.op_type in OUTPUT_BARRIERS:
                continue
            for out in use.node.outputs:
                if out is not None and id(out) not in seen:
                    seen.add(id(out))
                    queue.append(out)
    return None

