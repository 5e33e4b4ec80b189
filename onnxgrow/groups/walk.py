"""The walk: breadth-first over (tensor, Slot) pairs, each op's rule saying where the group goes
next; and `find_group`, which restarts it with the structures a rule discovers."""

from __future__ import annotations

from collections import deque

import onnx_ir as ir

from .. import graph as g
from .. import ops
from ..errors import GrowError, InternalError
from ..layerspec import layer_spec
from . import elementwise as ew
from . import layers as ly
from . import layout as lo
from .core import Group, OutputReached, Restructure, ShapeEdit, Slot, WeightEdit, desc, merged_slot, output_reached
from .shapes import need_rank, static_dim


class Walk:
    """Breadth-first walk over (value, slot) pairs; rules add members and edits."""

    def __init__(self, width: int, outer: int = 1, block: int = 1):
        self.group = Group(width, outer, block)
        self.queue: deque[ir.Value] = deque()
        self.done: set[tuple] = set()
        self.edited: dict[tuple, WeightEdit | ShapeEdit] = {}
        self.came_from: dict = {}  # value -> the node whose rule added it (not walked back into)
        self.alternatives: list = []  # (outer, block) views to try if this walk fails (a single head)
        self.final_checks: list = []  # callables that need the whole group (raise GrowError)

    # rules call these ------------------------------------------------------
    def join(self, value: ir.Value | None, slot: Slot, via: ir.Node, index: int | None = None) -> None:
        """`value` carries the group at `slot`; constants become per-channel params of `via`."""
        if value is None:
            return
        if index is not None and g.constant(value) is not None:
            self.param(via, index, slot)
            return
        known = self.group.members.get(value)
        if known is not None:
            if known == slot:
                return
            merged = merged_slot(known, slot, static_dim(value, slot.axis), self.group.width)
            if merged is None:
                raise GrowError(
                    f"tensor {value.name!r} would carry the widened channels in two places "
                    f"({known} and {slot}) around {desc(via)}; this pattern cannot be widened."
                )
            if merged != known:  # more copies of the group (a split part joined back): walk on with all
                self.group.members[value] = merged
                self.came_from[value] = via
                self.queue.append(value)
            return
        if value.is_graph_output():
            raise OutputReached(
                f"the widened channels reach the graph output {value.name!r} (through {desc(via)}): "
                "widening would change the model's output shape. Widen a layer whose channels are "
                "consumed inside the model."
            )
        if value.is_graph_input():
            raise GrowError(
                f"the widened channels reach the graph input {value.name!r} (through {desc(via)}): "
                "widening would change what the model takes as input."
            )
        self.group.members[value] = slot
        self.came_from[value] = via
        self.queue.append(value)

    def join_input(self, node: ir.Node, index: int, slot: Slot) -> None:
        if index < len(node.inputs):
            self.join(node.inputs[index], slot, node, index)

    def join_outputs(self, node: ir.Node, slot: Slot) -> None:
        for out in node.outputs:
            if out is not None and out.name:
                self.join(out, slot, node)

    def param(self, node: ir.Node, index: int, slot: Slot) -> None:
        """A constant input of `node` holding one value per channel: copied for new channels."""
        array = g.constant(node.inputs[index])
        if array.ndim == 0 or array.ndim <= slot.axis or array.shape[slot.axis] == 1:
            return  # broadcast along the group axis: nothing to grow
        self.weight(node, index, slot.axis, slot, "param")

    def weight(self, node: ir.Node, index: int, axis: int, slot: Slot, role: str) -> None:
        """Input `index` of `node` is a constant that grows along `axis` (once, however often
        the walk passes)."""
        key = ("w", id(node), index, axis)
        known = self.edited.get(key)
        if known is None:
            self.edited[key] = WeightEdit(node, index, axis, slot, role)
            self.group.edits.append(self.edited[key])
        elif known.slot != slot:  # reached again with more copies of the group
            dim = g.constant(node.inputs[index]).shape[axis]
            merged = merged_slot(known.slot, slot, dim, self.group.width)
            if merged is None:
                raise GrowError(f"the widened channels reach input {index} of {desc(node)} in two "
                                f"places ({known.slot} and {slot}) that overlap; this cannot be widened.")
            known.slot = merged

    def shape_edit(self, edit: ShapeEdit) -> None:
        """Once per entry; a later edit of the same entry (more copies of the group reached it)
        replaces the earlier one's growth."""
        key = ("s", id(edit.node), edit.index, edit.position, edit.attr, id(edit.consumer))
        known = self.edited.get(key)
        if known is None:
            self.edited[key] = edit
            self.group.shape_edits.append(edit)
        else:
            known.per_unit = max(known.per_unit, edit.per_unit)

    # -----------------------------------------------------------------------

    def run(self) -> Group:
        while self.queue:
            value = self.queue.popleft()
            slot = self.group.members[value]
            origin = self.came_from.get(value)
            producer = value.producer()
            if producer is not None and producer is not origin:
                self.visit(producer, "out", value.index(), slot)
            for use in list(value.uses()):
                if use.node is not origin:
                    self.visit(use.node, "in", use.idx, slot)
        for check in self.final_checks:
            check()
        return self.group

    def visit(self, node: ir.Node, side: str, index: int, slot: Slot) -> None:
        # Once per (node, port, slot): a Conv whose input and output both carry the group is both
        # a consumer and a producer; channel-wise rules re-run idempotently, and again when the
        # port's tensor gained copies of the group.
        key = (id(node), side, index, slot)
        if key in self.done:
            return
        self.done.add(key)
        if not ops.is_onnx(node):
            raise GrowError(
                f"the widened channels reach {desc(node)}, an op of domain {node.domain!r} that "
                "onnxgrow has no rule for; widening through it is not supported."
            )
        rule = RULES.get(node.op_type)
        if rule is None:
            raise GrowError(
                f"the widened channels reach {desc(node)}, and onnxgrow has no rule for how "
                f"{node.op_type} treats the channel axis, so it cannot widen exactly through it. "
                "Widen another layer (`onnxgrow inspect` lists which ones work)."
            )
        try:
            rule(self, node, side, index, slot)
        except (GrowError, InternalError):
            raise
        except Exception as exc:  # a rule met a shape or attribute it did not anticipate: a bug
            raise InternalError(f"the {node.op_type} rule failed at {desc(node)} "
                                f"({type(exc).__name__}: {exc})") from exc


RULES = {
    **{op: ew.elementwise for op in ops.BROADCAST_BINARY},
    **{op: ew.unary for op in ops.UNARY},
    "PRelu": ew.prelu,
    "BatchNormalization": ew.batchnorm,
    "InstanceNormalization": ew.instancenorm,
    "LayerNormalization": ew.layernorm,
    **{op: ew.pool for op in ops.POOLS},
    **{op: ew.reduce for op in ops.REDUCTIONS},
    "Softmax": ew.softmax, "LogSoftmax": ew.softmax,
    "CastLike": ew.cast_like,
    "Shape": ew.stop, "Size": ew.stop,
    "GroupNormalization": ew.refuse("GroupNormalization normalises over groups of channels; new "
                                    "channels would change every group's statistics."),
    "LRN": ew.refuse("LRN normalises across neighbouring channels."),
    "Einsum": ew.refuse("Einsum has no channel rule in onnxgrow."),
    "Transpose": lo.transpose,
    "Squeeze": lo.squeeze, "Unsqueeze": lo.squeeze,
    "Concat": lo.concat,
    "Split": lo.split,
    "Slice": lo.slice_,
    "Gather": lo.gather,
    "Expand": lo.expand,
    "Pad": lo.pad,
    "Resize": lo.resize, "Upsample": lo.resize,
    "Reshape": lo.reshape, "Flatten": lo.reshape,
    "Conv": ly.conv,
    "ConvTranspose": ly.conv_transpose,
    "Gemm": ly.gemm,
    "MatMul": ly.matmul,
    "LSTM": ly.recurrent, "GRU": ly.recurrent, "RNN": ly.recurrent,
}


def find_group(node: ir.Node) -> Group:
    """The coupled group of `node`'s output units. Raises GrowError if it cannot be widened.

    A grouped Conv in the way restarts the walk with the channels seen as `groups` repeats of
    width/groups units, so every conv group grows alike (and the new width must be a multiple).
    """
    spec = layer_spec(node)
    if spec is None:
        raise GrowError(
            f"{desc(node)} is not a Conv, ConvTranspose, Gemm or MatMul with a constant weight; "
            "only those layers can be widened.")
    width = spec.width
    if width is None:
        raise GrowError(f"the weight of {desc(node)} is computed at run time, not a constant; "
                        "only layers with constant weights can be widened.")
    out = node.outputs[0]
    axis = spec.output_axis(need_rank(out, node) if spec.family == "matmul" else 2)
    if out.is_graph_output():
        raise OutputReached(
            f"the output of {desc(node)} is the graph output {out.name!r}: widening it would "
            "change the model's output shape. Widen an inner layer.")
    tried, pending, error, heads_error, heads_block = set(), [(1, 1)], None, None, None
    while pending:
        outer, block = pending.pop(0)
        tried.add((outer, block))
        units = width // (outer * block)
        walk = Walk(units, outer, block)
        walk.join(out, Slot(axis, 0, units, block), via=None)  # None: start at the layer
        try:
            return walk.run()
        except Restructure as exc:
            error = exc if error is None else error
            # compose: the split applies to the units of this view. Inside a view of heads, the
            # finer split comes first: query heads grouped per key/value head (outer = kv heads)
            # before whole groups of query heads
            composed = [(outer * o, block * b) for o, b in sorted(exc.candidates, key=lambda c: c[1] if block > 1 else 0)]
            pending += [c for c in composed + walk.alternatives
                        if c not in tried and c not in pending and width % (c[0] * c[1]) == 0]
        except GrowError as exc:  # a restructured walk got further: its reason is the useful one
            pending += [c for c in walk.alternatives if c not in tried and c not in pending]
            if heads_error is None or block == 1:
                error = exc
            if block > 1 and heads_error is None:
                heads_error, heads_block = exc, block  # where the walk that saw attention heads stopped
    reached = output_reached(out)
    if reached is not None and not isinstance(heads_error or error, OutputReached):
        raise OutputReached(f"the widened channels flow into the graph output {reached!r} with no layer in between, "
                        f"so widening would change the model's output shape (the walk stopped at: {error}). "
                        "Widen an earlier layer.") from None
    if heads_error is not None:
        raise GrowError(f"{heads_error} (seen as attention heads of {heads_block} channels)") from None
    raise GrowError(str(error)) from None
