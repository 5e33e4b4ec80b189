"""The group's data: where its channels sit (`Slot`), what grows (`WeightEdit`, `ShapeEdit`), the
whole coupled group (`Group`), and `Restructure`, the signal that the units come in a structure."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from ..errors import GrowError


@dataclass(frozen=True)
class Slot:
    """Where the group's n channels sit along one axis of a tensor (see module docstring)."""

    axis: int
    offset: int
    total: int
    block: int = 1

    def moved(self, axis: int) -> "Slot":
        return Slot(axis, self.offset, self.total, self.block)


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
    before the edit."""

    node: ir.Node
    index: int | None
    position: int
    per_unit: int
    attr: str | None = None
    consumer: ir.Node | None = None


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


def desc(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"an unnamed {node.op_type} node"

