"""Coupled groups: everything that must change when one layer's output channels grow.

Widening layer X from n to q units adds q − n channels to X's output tensor. Those channels flow
forward through channel-wise ops (BatchNormalization, activations, pooling, Transpose, Reshape,
Concat, …) until they reach *consumers* (Conv/Gemm/MatMul) whose input weights must grow; where
they meet another tensor element-wise (a residual Add, a squeeze-excite Mul) that tensor must carry
the same channels, so the walk goes *backward* from it to the *producers* that made it, which grow
with the same mapping. The connected set is the coupled group. It is computed once, here, by one
graph walk; every transform (widening.py) then only decides what numbers the new channels get.

Where the group's channels sit in a tensor is a `Slot`: along `axis`, the tensor's index is
`outer·(total·block) + (offset + i)·block + r` for group channel i < n, so one description covers
a plain channel axis (offset 0, total n, block 1), a slice of a Concat (offset o, total T) and a
Flatten that made each channel a block of H·W features (block H·W). New channels are inserted
right after the group's n channels, at `offset + n`.

Op rules are data: `RULES` maps an op type to the function that, given one input or output known
to carry the group, says where the group sits in every other input and output (or which weight
axis grows). An op without a rule ends the walk with a refusal that names it: an unknown op is
never assumed to be element-wise.

Some ops mix the channels but stay exact under *uniform replication* (every unit copied the same
number of times, as net2net does when the new width is a multiple of the old): the mean over the
channel axis is unchanged, so LayerNormalization over channels and ReduceMean over channels
(RMSNorm, hand-written LayerNorm2d) keep their outputs. They mark the group `uniform_only`.

Some channels come in structure the walk discovers on the way: a grouped Conv needs every conv
group to grow alike, a Reshape into attention heads needs whole heads (q, k and v together). The
rule raises `Restructure` with the views worth trying — the layer's channels as `outer` repeats
of `width` units of `block` channels — and `find_group` walks again with each.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from . import graph as g
from .errors import GrowError


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
    `per_unit` for every new channel; or, for `attr`, an attribute list entry."""

    node: ir.Node
    index: int | None
    position: int
    per_unit: int
    attr: str | None = None


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
    nodes: list = field(default_factory=list)  # every node the group touches, in visit order

    @property
    def producers(self) -> list[ir.Node]:
        return _unique(e.node for e in self.edits if e.role == "producer")

    @property
    def consumers(self) -> list[ir.Node]:
        return _unique(e.node for e in self.edits if e.role == "consumer")

    def methods(self) -> tuple[list[str], dict[str, str]]:
        """The widening methods that apply, and why the others don't."""
        why = {}
        heads_pair_inside = self.block > 1 and self.block % 2 == 0  # see widening.Plan
        if self.width % 2 and not self.uniform_only and not heads_pair_inside:
            why["r2r"] = (f"r2r adds units in ±V pairs; the current width {self.width} is odd, so "
                          "doubling it adds an odd number (widths of the same parity work)")
        return [m for m in ("net2net", "netmorph", "r2r", "random") if m not in why], why


def _unique(items):
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


# ----------------------------------------------------------------------------- the walk


class Walk:
    """Breadth-first walk over (value, slot) pairs; rules add members and edits."""

    def __init__(self, width: int, outer: int = 1, block: int = 1):
        self.group = Group(width, outer, block)
        self.queue: deque[ir.Value] = deque()
        self.done: set[tuple] = set()
        self.edited: set[tuple] = set()
        self.came_from: dict = {}  # value -> the node whose rule added it (not walked back into)

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
            if known != slot:
                raise GrowError(
                    f"tensor {value.name!r} would carry the widened channels in two places "
                    f"({known} and {slot}) around {_desc(via)}; this pattern cannot be widened."
                )
            return
        if value.is_graph_output():
            raise GrowError(
                f"the widened channels reach the graph output {value.name!r} (through {_desc(via)}): "
                "widening would change the model's output shape. Widen a layer whose channels are "
                "consumed inside the model."
            )
        if value.is_graph_input():
            raise GrowError(
                f"the widened channels reach the graph input {value.name!r} (through {_desc(via)}): "
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
        if ("w", id(node), index, axis) not in self.edited:
            self.edited.add(("w", id(node), index, axis))
            self.group.edits.append(WeightEdit(node, index, axis, slot, role))

    def shape_edit(self, edit: ShapeEdit) -> None:
        key = ("s", id(edit.node), edit.index, edit.position, edit.attr)
        if key not in self.edited:
            self.edited.add(key)
            self.group.shape_edits.append(edit)

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
        return self.group

    def visit(self, node: ir.Node, side: str, index: int, slot: Slot) -> None:
        # Once per (node, port): a Conv whose input and output both carry the group is both
        # a consumer and a producer; channel-wise rules re-run idempotently.
        key = (id(node), side, index)
        if key in self.done:
            return
        self.done.add(key)
        if node not in self.group.nodes:
            self.group.nodes.append(node)
        if node.domain not in ("", "ai.onnx"):
            raise GrowError(
                f"the widened channels reach {_desc(node)}, an op of domain {node.domain!r} that "
                "onnxgrow has no rule for; widening through it is not supported."
            )
        rule = RULES.get(node.op_type)
        if rule is None:
            raise GrowError(
                f"the widened channels reach {_desc(node)}, and onnxgrow has no rule for how "
                f"{node.op_type} treats the channel axis, so it cannot widen exactly through it. "
                "Widen another layer (`onnxgrow inspect` lists which ones work)."
            )
        try:
            rule(self, node, side, index, slot)
        except GrowError:
            raise
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
            # a shape or attribute the rule did not expect: refuse rather than guess
            raise GrowError(
                f"onnxgrow could not follow the widened channels through {_desc(node)} "
                f"({type(exc).__name__}: {exc}); this pattern is not supported. Please report it "
                "with the model; `onnxgrow inspect` lists the layers that can be widened.") from None


def _desc(node: ir.Node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"an unnamed {node.op_type} node"


# ----------------------------------------------------------------------------- shapes


def shape_of(value: ir.Value | None) -> tuple | None:
    """Static shape: ints, or names for symbolic dims. Dims shape inference could not work out
    (named unk__N, e.g. behind a Reshape to a computed shape) are taken from the probe run."""
    shape = g.static_shape(value)
    if shape is None and value is not None:
        array = g.constant(value)
        if array is not None:
            return tuple(array.shape)
    if shape is not None and any(isinstance(d, str) and d.startswith("unk__") for d in shape):
        probed = g.probed_shape(value)
        if probed is not None and len(probed) == len(shape):
            shape = tuple(p if isinstance(d, str) and d.startswith("unk__") else d
                          for d, p in zip(shape, probed))
    return shape


def rank_of(value: ir.Value | None) -> int | None:
    shape = shape_of(value)
    return None if shape is None else len(shape)


def _need_rank(value, node) -> int:
    rank = rank_of(value)
    if rank is None:
        raise GrowError(
            f"the rank of {value.name!r} (at {_desc(node)}) is unknown, so onnxgrow cannot tell "
            "where the channel axis goes. Re-export the model with static shapes, or run "
            "onnx.shape_inference on it first."
        )
    return rank


def _dim(value, axis) -> int | None:
    shape = shape_of(value)
    if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
        return None
    return shape[axis]


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(node: ir.Node, attr_name: str, index: int | None):
    """An int-list parameter given as attribute (old opsets) or constant input (new opsets)."""
    if index is not None and len(node.inputs) > index and node.inputs[index] is not None:
        array = g.constant(node.inputs[index])
        if array is None:
            raise GrowError(f"{_desc(node)} takes its {attr_name} from a computed tensor; "
                            "onnxgrow needs it constant to follow the channel axis.")
        return [int(v) for v in np.atleast_1d(array)]
    value = g.attr(node, attr_name)
    return None if value is None else [int(v) for v in value]


# ----------------------------------------------------------------------------- rules


def _refuse(why: str):
    def rule(walk, node, side, index, slot):
        raise GrowError(f"the widened channels reach {_desc(node)}: {why}")

    return rule


def elementwise(walk: Walk, node: ir.Node, side: str, index: int, slot: Slot) -> None:
    """Element-wise with numpy broadcasting: every input that has the axis carries the group."""
    out_rank = _need_rank(node.outputs[0], node)
    known = node.inputs[index] if side == "in" else node.outputs[index]
    axis = slot.axis + out_rank - _need_rank(known, node)
    full = _dim(node.outputs[0], axis)
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        a = axis - (out_rank - _need_rank(value, node))
        if a < 0 or (_dim(value, a) == 1 and full != 1):
            continue  # broadcast along the channel axis
        walk.join_input(node, i, slot.moved(a))
    walk.join_outputs(node, slot.moved(axis))


def unary(walk, node, side, index, slot):
    """Element-wise on input 0 only; other inputs (Clip bounds, Dropout ratio) are scalars."""
    walk.join_input(node, 0, slot)
    walk.join_outputs(node, slot)


def prelu(walk, node, side, index, slot):
    out_rank = _need_rank(node.outputs[0], node)
    unary(walk, node, side, index, slot)
    a = slot.axis - (out_rank - _need_rank(node.inputs[1], node))
    if a >= 0 and _dim(node.inputs[1], a) not in (1, None):
        walk.join_input(node, 1, slot.moved(a))


def _channel_first(walk, node, side, index, slot, params=()):
    """Ops over (N, C, spatial…): channel-wise along axis 1, with per-channel params."""
    if slot.axis == 1:
        for i in params:
            if len(node.inputs) > i and node.inputs[i] is not None:
                walk.join_input(node, i, slot.moved(0))
    elif slot.axis != 0 or node.op_type not in ("BatchNormalization", "InstanceNormalization"):
        raise GrowError(
            f"the widened channels reach {_desc(node)} on axis {slot.axis}, not its channel axis 1; "
            "it would mix them spatially."
        )
    walk.join_input(node, 0, slot)
    walk.join_outputs(node, slot)


def batchnorm(walk, node, side, index, slot):
    if len([o for o in node.outputs if o is not None and o.name]) > 1:
        raise GrowError(f"{_desc(node)} is in training mode (it outputs running statistics); "
                        "export the model in eval mode.")
    _channel_first(walk, node, side, index, slot, params=(1, 2, 3, 4))


def instancenorm(walk, node, side, index, slot):
    _channel_first(walk, node, side, index, slot, params=(1, 2))


def pool(walk, node, side, index, slot):
    _channel_first(walk, node, side, index, slot)
    for out in node.outputs[1:]:  # MaxPool indices
        if out is not None and out.uses():
            raise GrowError(f"{_desc(node)} returns argmax indices, which depend on the channel count.")


def layernorm(walk, node, side, index, slot):
    rank = _need_rank(node.inputs[0], node)
    first = _norm_axis(g.attr(node, "axis", -1), rank)
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)
    if slot.axis < first:
        return  # normalises over other axes: channel-wise
    _require_whole_axis(walk, node, slot)
    _mark_uniform(walk, node)
    for i in (1, 2):
        walk.join_input(node, i, slot.moved(slot.axis - first))


def _mark_uniform(walk, node):
    name = node.name or node.op_type
    if name not in walk.group.uniform_only:
        walk.group.uniform_only.append(name)


def _require_whole_axis(walk, node, slot):
    if slot.offset != 0 or slot.block != 1 or slot.total != walk.group.width:
        raise GrowError(f"{_desc(node)} normalises over the widened channels together with other "
                        "features; no replication keeps its statistics.")


def reduce(walk, node, side, index, slot):
    """ReduceX: channel-wise unless it reduces the channel axis (ReduceMean: uniform only)."""
    if side == "out" or index != 0:
        raise GrowError(f"cannot trace the channels back through {_desc(node)}.")
    rank = _need_rank(node.inputs[0], node)
    axes = _ints(node, "axes", 1)
    if not axes:
        axes = [] if g.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted(_norm_axis(a, rank) for a in axes)
    keep = g.attr(node, "keepdims", 1)
    if slot.axis in axes:
        if node.op_type != "ReduceMean" or not keep:
            raise GrowError(f"{_desc(node)} reduces over the widened channel axis; adding channels "
                            "would change its result.")
        _require_whole_axis(walk, node, slot)
        _mark_uniform(walk, node)
        return  # the output has size 1 on that axis: it broadcasts back, not part of the group
    new_axis = slot.axis if keep else slot.axis - sum(1 for a in axes if a < slot.axis)
    walk.join(node.outputs[0], slot.moved(new_axis), node)


def transpose(walk, node, side, index, slot):
    rank = _need_rank(node.inputs[0], node)
    perm = list(g.attr(node, "perm") or reversed(range(rank)))
    if side == "in":
        walk.join(node.outputs[0], slot.moved(perm.index(slot.axis)), node)
    else:
        walk.join_input(node, 0, slot.moved(perm[slot.axis]))


def squeeze(walk, node, side, index, slot):
    """Squeeze/Unsqueeze: the channel axis keeps its place among the kept axes."""
    in_rank = _need_rank(node.inputs[0], node)
    out_rank = _need_rank(node.outputs[0], node)
    axes = _ints(node, "axes", 1)
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(shape_of(node.inputs[0])) if d == 1]
        removed = {_norm_axis(a, in_rank) for a in axes}
        in_kept, out_kept = [i for i in range(in_rank) if i not in removed], list(range(out_rank))
    else:
        added = {_norm_axis(a, out_rank) for a in axes}
        in_kept, out_kept = list(range(in_rank)), [i for i in range(out_rank) if i not in added]
    if side == "in":
        if slot.axis not in in_kept:
            raise GrowError(f"{_desc(node)} squeezes the widened channel axis away.")
        walk.join(node.outputs[0], slot.moved(out_kept[in_kept.index(slot.axis)]), node)
    else:
        if slot.axis not in out_kept:
            raise GrowError(f"cannot trace the channels back through {_desc(node)}.")
        walk.join_input(node, 0, slot.moved(in_kept[out_kept.index(slot.axis)]))


def concat(walk, node, side, index, slot):
    out_rank = _need_rank(node.outputs[0], node)
    axis = _norm_axis(g.attr(node, "axis"), out_rank)
    if slot.axis != axis:  # concatenated along another axis: a junction
        for i in range(len(node.inputs)):
            walk.join_input(node, i, slot)
        walk.join_outputs(node, slot)
        return
    dims = [_dim(v, axis) for v in node.inputs]
    if any(d is None for d in dims):
        raise GrowError(f"the sizes of the inputs of {_desc(node)} are unknown; cannot place the "
                        "widened channels in its output.")
    starts = [int(x) for x in np.concatenate([[0], np.cumsum(dims)])]
    if any(d % slot.block for d in dims):
        raise GrowError(f"{_desc(node)} joins tensors with different channel block sizes.")
    if side == "in":
        if sum(1 for v in node.inputs if v is node.inputs[index]) > 1:
            raise GrowError(f"{_desc(node)} concatenates the widened tensor with itself.")
        if dims[index] != slot.total * slot.block:
            raise GrowError(f"{_desc(node)} concatenates a tensor whose channels are interleaved "
                            "with other features; cannot place the widened channels.")
        walk.join(node.outputs[0], Slot(axis, slot.offset + starts[index] // slot.block,
                                        starts[-1] // slot.block, slot.block), node)
        return
    _require_unstrided(walk, node, slot, starts[-1])
    lo, hi = slot.offset * slot.block, (slot.offset + walk.group.width) * slot.block
    for i in range(len(node.inputs)):
        if starts[i] <= lo and hi <= starts[i + 1]:
            walk.join_input(node, i, Slot(axis, slot.offset - starts[i] // slot.block,
                                          dims[i] // slot.block, slot.block))
            return
    raise GrowError(f"the widened channels span several inputs of {_desc(node)}.")


def _require_unstrided(walk, node, slot, dim):
    if dim != slot.total * slot.block:
        raise GrowError(f"{_desc(node)} cuts an axis where the widened channels are interleaved "
                        "with other features.")


def split(walk, node, side, index, slot):
    rank = _need_rank(node.inputs[0], node)
    axis = _norm_axis(g.attr(node, "axis", 0), rank)
    if slot.axis != axis:
        walk.join_input(node, 0, slot)
        walk.join_outputs(node, slot)
        return
    if side == "out":
        raise GrowError(f"the widened channels come out of one part of {_desc(node)}; widen the "
                        "layer that produces its input instead.")
    dims = [_dim(o, axis) for o in node.outputs]
    if any(d is None for d in dims):
        raise GrowError(f"the output sizes of {_desc(node)} are unknown.")
    full = _dim(node.inputs[0], axis)
    chunk = slot.total * slot.block
    if len(dims) > 1 and full == len(dims) * chunk and all(d == chunk for d in dims):
        for i, out in enumerate(node.outputs):  # one repeat per part (q, k, v of a fused qkv)
            _grow_split_part(walk, node, i, slot.block)
            walk.join(out, slot, node)
        return
    _require_unstrided(walk, node, slot, full)
    starts = [int(x) for x in np.concatenate([[0], np.cumsum(dims)])]
    lo, hi = slot.offset * slot.block, (slot.offset + walk.group.width) * slot.block
    for i, out in enumerate(node.outputs):
        if starts[i] <= lo and hi <= starts[i + 1]:
            _grow_split_part(walk, node, i, slot.block)
            walk.join(out, Slot(axis, slot.offset - starts[i] // slot.block,
                                dims[i] // slot.block, slot.block), node)
            return
    if slot.offset == 0 and slot.block == 1 and len(set(dims)) == 1:
        raise Restructure([(len(dims), 1)], f"{_desc(node)} splits the widened channels into "
                                            f"{len(dims)} equal parts")
    raise GrowError(f"{_desc(node)} splits the widened channels apart; this cannot be widened.")


def _grow_split_part(walk, node, part, per_unit):
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        walk.shape_edit(ShapeEdit(node, 1, part, per_unit))
    else:  # sizes in the `split` attribute, or equal parts from `num_outputs`
        walk.shape_edit(ShapeEdit(node, None, part, per_unit, attr="split"))


def slice_(walk, node, side, index, slot):
    if side == "out" or index != 0:
        raise GrowError(f"cannot trace the widened channels through {_desc(node)}.")
    rank = _need_rank(node.inputs[0], node)
    starts, ends = _ints(node, "starts", 1), _ints(node, "ends", 2)
    axes = _ints(node, "axes", 3) or list(range(len(starts)))
    steps = _ints(node, "steps", 4) or [1] * len(starts)
    axes = [_norm_axis(a, rank) for a in axes]
    if slot.axis not in axes:
        walk.join_outputs(node, slot)
        return
    if node.inputs[1] is None or len(node.inputs) < 3:
        raise GrowError(f"{_desc(node)} (an old-opset Slice) cuts the channel axis.")
    k = axes.index(slot.axis)
    dim = _dim(node.inputs[0], slot.axis)
    if steps[k] != 1 or dim is None:
        raise GrowError(f"{_desc(node)} slices the channel axis with a step or an unknown size.")
    _require_unstrided(walk, node, slot, dim)
    lo, hi = slot.offset * slot.block, (slot.offset + walk.group.width) * slot.block
    s = min(max(starts[k] + dim if starts[k] < 0 else starts[k], 0), dim)
    e = min(max(ends[k] + dim if ends[k] < 0 else ends[k], 0), dim)
    if starts[k] < 0 or (ends[k] < 0 and e > lo):
        raise GrowError(f"{_desc(node)} slices the channel axis from its end.")
    moves_end = ends[k] < dim  # an explicit end at or after the group moves with new channels
    if s <= lo and hi <= e:
        if (lo - s) % slot.block:
            raise GrowError(f"{_desc(node)} cuts into a channel block.")
        if moves_end:
            walk.shape_edit(ShapeEdit(node, 2, k, slot.block))
        walk.join(node.outputs[0], Slot(slot.axis, slot.offset - s // slot.block,
                                        (e - s) // slot.block, slot.block), node)
    elif s >= hi:
        walk.shape_edit(ShapeEdit(node, 1, k, slot.block))
        if moves_end:
            walk.shape_edit(ShapeEdit(node, 2, k, slot.block))
    elif e > lo:
        raise GrowError(f"{_desc(node)} takes part of the widened channels; this cannot be widened.")


def gather(walk, node, side, index, slot):
    if side == "in" and index == 1:
        raise GrowError(f"the widened channels are used as indices by {_desc(node)}.")
    rank = _need_rank(node.inputs[0], node)
    axis = _norm_axis(g.attr(node, "axis", 0), rank)
    idx_rank = _need_rank(node.inputs[1], node)
    if side == "in":
        data_axis = slot.axis
    elif slot.axis < axis:
        data_axis = slot.axis
    elif slot.axis >= axis + idx_rank:
        data_axis = slot.axis - idx_rank + 1
    else:
        data_axis = axis
    if data_axis == axis:
        _identity_gather(walk, node, side, slot)
        return
    out_axis = data_axis if data_axis < axis else data_axis + idx_rank - 1
    walk.join_input(node, 0, slot.moved(data_axis))
    walk.join(node.outputs[0], slot.moved(out_axis), node)


def _identity_gather(walk, node, side, slot):
    """Gather of a flat tensor with indices arange(n) in some shape is a reshape (the dynamo
    exporter writes as_strided so); its indices grow with the channels."""
    data, out = node.inputs[0], node.outputs[0]
    idx = g.constant(node.inputs[1])
    dim = _dim(data, 0)
    if rank_of(data) != 1 or idx is None or dim is None or not np.array_equal(
            idx.reshape(-1), np.arange(dim)):
        raise GrowError(f"{_desc(node)} picks entries along the widened channel axis.")
    in_slot, out_slot = (slot, _follow_reshape(data, out, slot, node)) if side == "in" else (
        _follow_reshape(out, data, slot, node), slot)
    walk.shape_edit(ShapeEdit(node, 1, out_slot.axis, _dim(out, out_slot.axis) // out_slot.total,
                              attr="arange"))
    walk.join_input(node, 0, in_slot)
    walk.join(out, out_slot, node)


def expand(walk, node, side, index, slot):
    if side == "in" and index == 1:
        raise GrowError(f"the widened channels are used as a shape by {_desc(node)}.")
    out_rank = _need_rank(node.outputs[0], node)
    in_rank = _need_rank(node.inputs[0], node)
    axis = slot.axis + (out_rank - in_rank if side == "in" else 0)
    in_axis = axis - (out_rank - in_rank)
    if in_axis < 0 or _dim(node.inputs[0], in_axis) == 1:
        raise GrowError(f"{_desc(node)} broadcasts a single value over the widened channels.")
    target = g.constant(node.inputs[1])
    length = len(target) if target is not None else (
        _dim(node.inputs[1], 0) or (g.probed_shape(node.inputs[1]) or [None])[0])
    position = None if length is None else axis - (out_rank - length)
    if position is None:
        raise GrowError(f"{_desc(node)} expands to a shape of unknown length.")
    if position >= 0:  # the target shape has an entry for the channel axis: 1 keeps it
        entry = _shape_entry(node.inputs[1], position, (node, 1))
        if entry is None or entry[0] != "const":
            raise GrowError(f"{_desc(node)} expands the channel axis to a size computed at run "
                            "time; onnxgrow cannot keep it consistent.")
        _, (holder, idx, pos), value = entry
        if value not in (1, -1):
            walk.shape_edit(ShapeEdit(holder, idx, pos, _dim(node.outputs[0], axis) // slot.total))
    walk.join_input(node, 0, slot.moved(in_axis))
    walk.join(node.outputs[0], slot.moved(axis), node)


def pad(walk, node, side, index, slot):
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a parameter of {_desc(node)}.")
    rank = _need_rank(node.inputs[0], node)
    pads = _ints(node, "pads", 1)
    axes = _ints(node, "axes", 3)
    axes = list(range(rank)) if axes is None else [_norm_axis(a, rank) for a in axes]
    if pads is not None and slot.axis in axes:
        k = axes.index(slot.axis)
        if pads[k] or pads[k + len(axes)]:
            raise GrowError(f"{_desc(node)} pads the channel axis.")
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)


def resize(walk, node, side, index, slot):
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a parameter of {_desc(node)}.")
    if node.op_type == "Upsample":
        scales = _ints_or_floats(node, 1, "scales")
        sizes = None
    else:
        scales = _ints_or_floats(node, 2, "scales")
        sizes = _ints_or_floats(node, 3, "sizes")
    if g.attr(node, "axes") is not None:
        raise GrowError(f"{_desc(node)} uses the `axes` attribute, which onnxgrow does not follow.")
    if scales is not None and len(scales) > slot.axis and scales[slot.axis] != 1:
        raise GrowError(f"{_desc(node)} rescales the channel axis.")
    if sizes is not None:
        walk.shape_edit(
            ShapeEdit(node, 3, slot.axis, _dim(node.outputs[0], slot.axis) // slot.total))
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)


def _ints_or_floats(node, index, name):
    if len(node.inputs) > index and node.inputs[index] is not None:
        array = g.constant(node.inputs[index])
        if array is None:
            raise GrowError(f"{_desc(node)} takes its {name} from a computed tensor.")
        return list(np.atleast_1d(array)) if array.size else None
    value = g.attr(node, name)
    return None if value is None else list(value)


def reshape(walk, node, side, index, slot):
    """Reshape/Flatten: follow the group's sub-axis through merged or split dimensions."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels are used as a shape by {_desc(node)}.")
    data, out = node.inputs[0], node.outputs[0]
    in_slot, out_slot = (slot, _follow_reshape(data, out, slot, node)) if side == "in" else (
        _follow_reshape(out, data, slot, node), slot)
    if node.op_type == "Reshape":
        _reshape_target_edit(walk, node, in_slot, out_slot)
    walk.join_input(node, 0, in_slot)
    walk.join(out, out_slot, node)


def _reshape_target_edit(walk, node, in_slot, out_slot):
    """The target shape's entry for the channel axis must grow with the channels."""
    position = out_slot.axis
    per_unit = _dim(node.outputs[0], position) // out_slot.total
    entry = _shape_entry(node.inputs[1], position, (node, 1))
    if entry is None:
        raise GrowError(
            f"{_desc(node)} reshapes to a shape computed at run time that onnxgrow cannot follow "
            "to the channel axis. Export with static shapes (e.g. torch.onnx.export(dynamo=True)).")
    kind, where, value = entry
    if kind == "const":
        if value == -1:
            return
        if value == 0:
            in_per_unit = _dim(node.inputs[0], position) // in_slot.total if in_slot.axis == position else None
            if in_per_unit != per_unit:
                raise GrowError(f"{_desc(node)} copies a dimension (0) that does not follow the "
                                "widened channels.")
            return
        holder, idx, pos = where
        walk.shape_edit(ShapeEdit(holder, idx, pos, per_unit))
        return
    source, dim_index = where  # the entry is read at run time from `source`'s shape
    if source is node.inputs[0] and dim_index == in_slot.axis and in_slot.axis == position and (
            _dim(source, dim_index) // in_slot.total == per_unit):
        return
    raise GrowError(f"{_desc(node)} takes the channel dimension of its target shape from another "
                    "tensor's shape at run time; onnxgrow cannot keep it consistent.")


def _shape_entry(value, position, holder):
    """Trace entry `position` of the 1-D int shape tensor `value`, consumed as input holder[1]
    of node holder[0]: ("const", (node, input, pos), v) for a constant entry that can be edited
    there, ("dim", (tensor, axis), None) for one read from a tensor's shape, None otherwise."""
    array = g.constant(value)
    if array is not None:
        return "const", (*holder, position), int(np.atleast_1d(array)[position])
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Concat":
        offset = 0
        for i, piece in enumerate(node.inputs):
            length = _dim(piece, 0)
            if length is None:  # a shape vector's length is static even where inference lost it
                probed = g.probed_shape(piece)
                length = probed[0] if probed and len(probed) == 1 else None
            if length is None:
                return None
            if position < offset + length:
                return _shape_entry(piece, position - offset, (node, i))
            offset += length
        return None
    if node.op_type in ("Cast", "Identity"):
        return _shape_entry(node.inputs[0], position, (node, 0))
    if node.op_type == "Unsqueeze" and position == 0:
        return _scalar_entry(node.inputs[0], (node, 0))
    if node.op_type == "Shape":
        rank = rank_of(node.inputs[0])
        if rank is None:
            return None
        start = g.attr(node, "start", 0) or 0
        return "dim", (node.inputs[0], _norm_axis(start, rank) + position), None
    if node.op_type == "Slice" and len(node.inputs) >= 3:  # a run of another shape's entries
        starts, steps = g.constant(node.inputs[1]), _ints(node, "steps", 4)
        length = _dim(node.inputs[0], 0)
        if starts is None or starts.size != 1 or (steps and steps != [1]) or length is None:
            return None
        first = int(starts.reshape(-1)[0])
        return _shape_entry(node.inputs[0], _norm_axis(first, length) + position, (node, 0))
    return None


def _scalar_entry(value, holder):
    if g.constant(value) is not None:
        return "const", (*holder, 0), int(np.atleast_1d(g.constant(value))[0])
    node = value.producer()
    if node is not None and node.op_type == "Gather":
        idx = g.constant(node.inputs[1])
        if idx is not None and idx.size == 1:
            return _shape_entry(node.inputs[0], int(idx.reshape(-1)[0]), (node, 0))
    return None


def _follow_reshape(src, dst, slot, node):
    """Where `slot` of `src` lands in `dst` (a reshape of it, both of known static shape).

    Reshape keeps the flat order, so channel i sits `inner` elements after channel i−1 in both;
    the group lands on the output axis whose stride divides `inner` and whose extent holds whole
    runs of `total` channels.
    """
    a, b = shape_of(src), shape_of(dst)
    if a is None or b is None:
        raise GrowError(f"the shapes around {_desc(node)} are unknown, so the channel axis cannot "
                        "be followed through it. Export with static shapes.")
    inner_dims = a[slot.axis + 1:]
    if not all(isinstance(d, int) for d in inner_dims):
        raise GrowError(f"{_desc(node)} merges the channel axis with dynamic dimensions.")
    inner = slot.block * int(np.prod(inner_dims, dtype=np.int64))
    span = inner * slot.total
    stride = 1
    for axis in range(len(b) - 1, -1, -1):
        d = b[axis]
        if not isinstance(d, int):
            break
        if inner % stride == 0 and (stride * d) % span == 0:
            return Slot(axis, slot.offset, slot.total, inner // stride)
        stride *= d
        if stride > inner:
            break
    why = (f"{_desc(node)} reshapes {list(a)} to {list(b)}, splitting the widened channel axis "
           "into several (as attention heads do)")
    split = _split_dims(a, b, slot)
    if split and slot.offset == 0 and slot.block == 1 and a[slot.axis] == slot.total:
        raise Restructure([(int(np.prod(split[:k])), int(np.prod(split[k + 1:])))
                           for k in range(len(split)) if split[k] > 1], why)
    raise GrowError(f"{why}; onnxgrow cannot widen through it.")


def _split_dims(a, b, slot):
    """The output dims that the input's channel axis is split into, when it maps to a run of
    whole output axes with the same dims on both sides."""
    if not all(isinstance(d, int) for d in a[slot.axis:]):
        return None
    after = int(np.prod(a[slot.axis + 1:], dtype=np.int64))
    stride, end = 1, len(b)
    while end > 0 and stride < after:
        end -= 1
        if not isinstance(b[end], int):
            return None
        stride *= b[end]
    if stride != after:
        return None
    start, size = end, 1
    while start > 0 and size < a[slot.axis]:
        start -= 1
        if not isinstance(b[start], int):
            return None
        size *= b[start]
    return list(b[start:end]) if size == a[slot.axis] and end - start > 1 else None


def conv(walk, node, side, index, slot):
    groups = g.attr(node, "group", 1)
    weight = g.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        raise GrowError(f"{_desc(node)} has a computed (non-constant) weight.")
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach the weight of {_desc(node)}.")
    if slot.axis != 1:
        raise GrowError(f"the widened channels reach {_desc(node)} on axis {slot.axis}, not its "
                        "channel axis.")
    if groups == 1:
        _conv_weights(walk, node, side, slot)
        return
    in_ch, out_ch = weight.shape[1] * groups, weight.shape[0]
    if groups == in_ch:  # depthwise: channel-wise, each channel feeding m outputs (a block of m)
        m = out_ch // in_ch
        if slot.block != (1 if side == "in" else m):
            raise GrowError(f"cannot follow the channels through {_desc(node)}.")
        in_slot = Slot(1, slot.offset, slot.total, 1)
        out_slot = Slot(1, slot.offset, slot.total, m)
        if node not in walk.group.group_attrs:
            walk.group.group_attrs.append(node)
        walk.join_input(node, 0, in_slot)
        walk.join(node.outputs[0], out_slot, node)
        walk.weight(node, 1, 0, out_slot, "param")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            walk.weight(node, 2, 0, out_slot, "param")
        return
    # grouped: channels are widened inside every conv group alike (`outer` = groups in the slot)
    per_group, dim = (weight.shape[1], in_ch) if side == "in" else (out_ch // groups, out_ch)
    outer = dim // (slot.total * slot.block)
    if slot.block == 1 and outer == groups and slot.total == per_group:
        _conv_weights(walk, node, side, slot)
        return
    if outer == 1 and slot.offset == 0 and slot.block == 1 and slot.total == dim:
        raise Restructure([(groups, 1)], f"{_desc(node)} is a grouped convolution (group={groups})")
    raise GrowError(
        f"{_desc(node)} is a grouped convolution (group={groups}) whose groups do not line up with "
        "the widened channels; widening through it is not supported. Widen a layer outside this "
        "block.")


def _conv_weights(walk, node, side, slot, in_axis=1, out_axis=0):
    """A Conv consumes the channels through its weight's axis 1 and produces them on axis 0
    (a ConvTranspose the other way round); the bias grows with the outputs."""
    if side == "in":
        walk.weight(node, 1, in_axis, slot, "consumer")
        return
    walk.weight(node, 1, out_axis, slot, "producer")
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        walk.weight(node, 2, 0, slot, "producer")


class Restructure(GrowError):
    """The walk found that the layer's units come in a structure: `candidates` lists the
    (outer, block) views of its channels worth trying — every conv group growing alike
    (outer = groups), or attention heads (outer = 3 for fused q/k/v, block = head size)."""

    def __init__(self, candidates: list[tuple[int, int]], why: str):
        super().__init__(f"{why}; its channels do not line up with the widened units.")
        self.candidates = candidates


def conv_transpose(walk, node, side, index, slot):
    if g.constant(node.inputs[1]) is None:
        raise GrowError(f"{_desc(node)} has a computed (non-constant) weight.")
    if g.attr(node, "group", 1) != 1 or slot.axis != 1 or (side == "in" and index != 0):
        raise GrowError(f"{_desc(node)}: only an ungrouped ConvTranspose, on its channel axis, can "
                        "be widened through.")
    _conv_weights(walk, node, side, slot, in_axis=0, out_axis=1)


def gemm(walk, node, side, index, slot):
    trans_a, trans_b = g.attr(node, "transA", 0), g.attr(node, "transB", 0)
    if g.constant(node.inputs[1]) is None:
        raise GrowError(f"{_desc(node)} multiplies two computed tensors; only a constant weight "
                        "can be widened.")
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a weight or bias input of {_desc(node)}.")
    k_axis = 0 if trans_a else 1
    if side == "in":
        if slot.axis == k_axis:
            walk.weight(node, 1, 1 if trans_b else 0, slot, "consumer")
        else:  # the batch (M) axis passes through
            walk.join(node.outputs[0], slot.moved(0), node)
        return
    if slot.axis == 0:
        walk.join_input(node, 0, slot.moved(1 - k_axis))
        return
    walk.weight(node, 1, 0 if trans_b else 1, slot, "producer")
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = g.constant(node.inputs[2])
        if bias is None:
            raise GrowError(f"{_desc(node)} adds a computed bias C.")
        if bias.ndim >= 1 and bias.shape[-1] != 1:
            walk.weight(node, 2, bias.ndim - 1, slot.moved(bias.ndim - 1), "producer")


def matmul(walk, node, side, index, slot):
    a, b = node.inputs[0], node.inputs[1]
    ca, cb = g.constant(a), g.constant(b)
    out_rank = _need_rank(node.outputs[0], node)
    ra, rb = _need_rank(a, node), _need_rank(b, node)
    if ra < 2 or rb < 2:
        raise GrowError(f"{_desc(node)} multiplies by a vector; onnxgrow follows only matrices.")
    if cb is not None and ca is None:  # x @ W: W's rows take input features, columns make outputs
        _matmul_weight(walk, node, side, slot, 0, ra - 1, rb - 2, rb - 1, out_rank - 1)
        return
    if ca is not None and cb is None:  # W @ x: the mirror image
        _matmul_weight(walk, node, side, slot, 1, rb - 2, ra - 1, ra - 2, out_rank - 2)
        return
    # two computed tensors (attention): rows of A and columns of B pass, batch axes join
    if side == "in":
        rank = ra if index == 0 else rb
        out_axis = slot.axis + out_rank - rank
        if (index == 0 and slot.axis == ra - 1) or (index == 1 and slot.axis == rb - 2):
            raise GrowError(
                f"the widened channels are the contracted axis of {_desc(node)}, a product of two "
                "computed tensors (as in attention); widening them would change the product.")
    else:
        out_axis = slot.axis
    if out_axis == out_rank - 2:
        walk.join_input(node, 0, slot.moved(ra - 2))
    elif out_axis == out_rank - 1:
        walk.join_input(node, 1, slot.moved(rb - 1))
    else:
        for i, rank in ((0, ra), (1, rb)):
            ax = out_axis - (out_rank - rank)
            if ax >= 0 and _dim(node.inputs[i], ax) != 1:
                walk.join_input(node, i, slot.moved(ax))
    walk.join(node.outputs[0], slot.moved(out_axis), node)


def cast_like(walk, node, side, index, slot):
    """CastLike(x, like): `like` lends only its type."""
    if side == "in" and index == 1:
        return
    unary(walk, node, side, index, slot)


def _matmul_weight(walk, node, side, slot, data, contracted, w_in, w_out, out_units):
    """MatMul with one constant operand: the data's `contracted` axis meets the weight's `w_in`
    axis (a consumer), the weight's `w_out` axis makes the output's `out_units` axis (a
    producer); the data's other axes pass through."""
    weight = 1 - data
    shift = _need_rank(node.outputs[0], node) - _need_rank(node.inputs[data], node)
    if side == "in" and slot.axis == contracted:
        walk.weight(node, weight, w_in, slot, "consumer")
    elif side == "out" and slot.axis == out_units:
        walk.weight(node, weight, w_out, slot, "producer")
    elif side == "in":
        walk.join(node.outputs[0], slot.moved(slot.axis + shift), node)
    else:
        walk.join_input(node, data, slot.moved(slot.axis - shift))


def softmax(walk, node, side, index, slot):
    rank = _need_rank(node.inputs[0], node)
    axis = _norm_axis(g.attr(node, "axis", -1), rank)
    if axis == slot.axis:
        raise GrowError(f"{_desc(node)} normalises over the widened channel axis.")
    unary(walk, node, side, index, slot)


def stop(walk, node, side, index, slot):
    """Shape/Size read the tensor's shape, which follows the widening at run time."""
    if side == "out":
        raise GrowError(f"cannot trace the channels back through {_desc(node)}.")


ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "Equal",
               "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
               "BitShift")
UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
         "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal",
         "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast",
         "Clip", "Mish", "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Shrink", "Swish")

RULES = {
    **{op: elementwise for op in ELEMENTWISE},
    **{op: unary for op in UNARY},
    "PRelu": prelu,
    "BatchNormalization": batchnorm,
    "InstanceNormalization": instancenorm,
    "LayerNormalization": layernorm,
    "MaxPool": pool, "AveragePool": pool, "LpPool": pool, "GlobalAveragePool": pool,
    "GlobalMaxPool": pool, "GlobalLpPool": pool,
    **{op: reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                             "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")},
    "Transpose": transpose,
    "Squeeze": squeeze, "Unsqueeze": squeeze,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Expand": expand,
    "Pad": pad,
    "Resize": resize, "Upsample": resize,
    "Reshape": reshape, "Flatten": reshape,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Softmax": softmax, "LogSoftmax": softmax,
    "CastLike": cast_like,
    "Shape": stop, "Size": stop,
    "GroupNormalization": _refuse("GroupNormalization normalises over groups of channels; new "
                                  "channels would change every group's statistics."),
    "LRN": _refuse("LRN normalises across neighbouring channels."),
    "Einsum": _refuse("Einsum has no channel rule in onnxgrow."),
}


# ----------------------------------------------------------------------------- entry points


def output_axis(node: ir.Node) -> int:
    """The axis of `node`'s output that holds its units (channels or features)."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return 1
    rank = _need_rank(node.outputs[0], node)
    return rank - 1 if g.constant(node.inputs[1]) is not None else rank - 2  # x @ W or W @ x


def layer_width(node: ir.Node) -> int | None:
    """Output channels/features of a weight layer, read from its constant weight."""
    weight = g.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.op_type == "MatMul" and weight is None:
        weight = g.constant(node.inputs[0])
        return None if weight is None else int(weight.shape[-2])
    if weight is None:
        return None
    if node.op_type == "Conv":
        return int(weight.shape[0])
    if node.op_type == "ConvTranspose":
        return int(weight.shape[1] * g.attr(node, "group", 1))
    if node.op_type == "Gemm":
        return int(weight.shape[0] if g.attr(node, "transB", 0) else weight.shape[1])
    return int(weight.shape[-1])


def find_group(node: ir.Node) -> Group:
    """The coupled group of `node`'s output units. Raises GrowError if it cannot be widened.

    A grouped Conv in the way restarts the walk with the channels seen as `groups` repeats of
    width/groups units, so every conv group grows alike (and the new width must be a multiple).
    """
    if not g.is_weight_layer(node):
        raise GrowError(
            f"{_desc(node)} is not a Conv, ConvTranspose, Gemm or MatMul with a constant weight; "
            "only those layers can be widened.")
    width = layer_width(node)
    if width is None:
        raise GrowError(f"the weight of {_desc(node)} is computed at run time, not a constant; "
                        "only layers with constant weights can be widened.")
    out = node.outputs[0]
    axis = output_axis(node)
    if out.is_graph_output():
        raise GrowError(
            f"the output of {_desc(node)} is the graph output {out.name!r}: widening it would "
            "change the model's output shape. Widen an inner layer.")
    tried, pending, error = set(), [(1, 1)], None
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
            if block == 1:  # compose: the split applies to the units of this view
                composed = [(outer * o, b) for o, b in exc.candidates]
                pending += [c for c in composed if c not in tried and width % (c[0] * c[1]) == 0]
        except GrowError as exc:  # a restructured walk got further: its reason is the useful one
            error = exc
    raise GrowError(str(error)) from None
