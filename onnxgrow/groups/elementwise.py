"""Rules for ops that act on each channel alone: element-wise ops, activations, per-channel
normalisation and pooling, and reductions (ReduceMean over the channels: uniform replication only)."""

from __future__ import annotations

import numpy as np

from .. import graph as g
from ..errors import GrowError
from .core import desc
from .shapes import int_list, need_rank, norm_axis, static_dim


def refuse(why: str):
    def rule(walk, node, side, index, slot):
        raise GrowError(f"the widened channels reach {desc(node)}: {why}")

    return rule


def elementwise(walk, node, side, index, slot):
    """Element-wise with numpy broadcasting: every input that has the axis carries the group."""
    out_rank = need_rank(node.outputs[0], node)
    known = node.inputs[index] if side == "in" else node.outputs[index]
    axis = slot.axis + out_rank - need_rank(known, node)
    full = static_dim(node.outputs[0], axis)
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        a = axis - (out_rank - need_rank(value, node))
        if a < 0 or (static_dim(value, a) == 1 and (full != 1 or (side == "in" and value is not known))):
            continue  # broadcast along the channel axis (also beside a single unit: the cos of RoPE
            # on multi-query attention's one key head)
        walk.join_input(node, i, slot.moved(a))
    walk.join_outputs(node, slot.moved(axis))


def unary(walk, node, side, index, slot):
    """Element-wise on input 0 only; other inputs (Clip bounds, Dropout ratio) are scalars."""
    walk.join_input(node, 0, slot)
    walk.join_outputs(node, slot)


def prelu(walk, node, side, index, slot):
    """PRelu: channel-wise; a slope with a channel axis grows with the group (same slot)."""
    out_rank = need_rank(node.outputs[0], node)
    unary(walk, node, side, index, slot)
    a = slot.axis - (out_rank - need_rank(node.inputs[1], node))
    if a >= 0 and static_dim(node.inputs[1], a) not in (1, None):
        walk.join_input(node, 1, slot.moved(a))


def _channel_first(walk, node, side, index, slot, params=()):
    """Ops over (N, C, spatial…): channel-wise along axis 1, with per-channel params."""
    if slot.axis == 1:
        for i in params:
            if len(node.inputs) > i and node.inputs[i] is not None:
                walk.join_input(node, i, slot.moved(0))
    elif slot.axis != 0 or node.op_type not in ("BatchNormalization", "InstanceNormalization"):
        raise GrowError(
            f"the widened channels reach {desc(node)} on axis {slot.axis}, not its channel axis 1; "
            "it would mix them spatially."
        )
    walk.join_input(node, 0, slot)
    walk.join_outputs(node, slot)


def batchnorm(walk, node, side, index, slot):
    """BatchNormalization: channel axis 1 → the same slot out; scale, bias, mean, var grow on axis 0.
    BatchNormalization: channel axis 1 → the same slot out; scale, bias, mean, var grow on axis 0."""
    if len([o for o in node.outputs if o is not None and o.name]) > 1:
        raise GrowError(f"{desc(node)} is in training mode (it outputs running statistics); "
                        "export the model in eval mode.")
    _channel_first(walk, node, side, index, slot, params=(1, 2, 3, 4))


def instancenorm(walk, node, side, index, slot):
    """InstanceNormalization: channel axis 1 → the same slot out; scale and bias grow on axis 0."""
    _channel_first(walk, node, side, index, slot, params=(1, 2))


def pool(walk, node, side, index, slot):
    """Pools over spatial axes: channel axis 1 → the same slot out (argmax indices refused)."""
    _channel_first(walk, node, side, index, slot)
    for out in node.outputs[1:]:  # MaxPool indices
        if out is not None and out.uses():
            raise GrowError(f"{desc(node)} returns argmax indices, which depend on the channel count.")


def layernorm(walk, node, side, index, slot):
    rank = need_rank(node.inputs[0], node)
    first = norm_axis(g.attr(node, "axis", -1), rank)
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
        walk.group.norms.append(node)


def _require_whole_axis(walk, node, slot):
    """A mean over the channel axis survives uniform replication when the group is the whole axis
    (whole heads or channel blocks copied equally often: OLMo2's q_norm over all heads)."""
    if slot.offset != 0 or slot.also_at or slot.total != walk.group.width:
        raise GrowError(f"{desc(node)} normalises over the widened channels together with other "
                        "features; no replication keeps its statistics.")


def reduce(walk, node, side, index, slot):
    """ReduceX: channel-wise unless it reduces the channel axis (ReduceMean: uniform only)."""
    if side == "out" or index != 0:
        raise GrowError(f"cannot trace the channels back through {desc(node)}.")
    rank = need_rank(node.inputs[0], node)
    axes = int_list(node, "axes", 1)
    if not axes:
        axes = [] if g.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted(norm_axis(a, rank) for a in axes)
    keep = g.attr(node, "keepdims", 1)
    if slot.axis in axes:
        if node.op_type != "ReduceMean" or not keep:
            raise GrowError(f"{desc(node)} reduces over the widened channel axis; adding channels "
                            "would change its result.")
        _require_whole_axis(walk, node, slot)
        _mark_uniform(walk, node)
        return  # the output has size 1 on that axis: it broadcasts back, not part of the group
    new_axis = slot.axis if keep else slot.axis - sum(1 for a in axes if a < slot.axis)
    walk.join(node.outputs[0], slot.moved(new_axis), node)


def softmax(walk, node, side, index, slot):
    """Softmax/LogSoftmax: the same slot out unless it normalises over the group axis (refused)."""
    rank = need_rank(node.inputs[0], node)
    axis = norm_axis(g.attr(node, "axis", -1), rank)
    if axis == slot.axis:
        raise GrowError(f"{desc(node)} normalises over the widened channel axis: new channels would take "
                        "probability from the old ones, so no widening there is exact.")
    unary(walk, node, side, index, slot)


def cast_like(walk, node, side, index, slot):
    """CastLike(x, like): `like` lends only its type."""
    if side == "in" and index == 1:
        return
    unary(walk, node, side, index, slot)


def stop(walk, node, side, index, slot):
    """Shape/Size read the tensor's shape, which follows the widening at run time: fine where the
    widened size only shapes other tensors (Reshape/Expand targets, which their rules check), a
    refusal where it flows into a value (an attention scale 1/√(C/heads), a Size)."""
    if side == "out":
        raise GrowError(f"cannot trace the channels back through {desc(node)}.")
    if node.op_type == "Size":
        carries = True
    else:
        start = g.attr(node, "start", 0) or 0
        rank = need_rank(node.inputs[0], node)
        carries = {norm_axis(slot.axis, rank) - norm_axis(start, rank)}
    culprit = _value_use_of_size(node.outputs[0], carries, source=node.inputs[0])
    if culprit is not None:
        raise GrowError(f"{desc(node)} reads the widened channel count, and {desc(culprit)} computes "
                        "a value from it (not a shape); widening would change that value.")


_SHAPE_ARITHMETIC = ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity",
                     "Mul", "Add", "Sub", "Div", "Floor", "Ceil")


def _value_use_of_size(value, carries, depth: int = 0, source=None):
    """The first node that uses the widened size held in `value` as data rather than as a shape,
    or None. `carries` is True for a scalar holding it, or the positions of a shape vector that do.
    Bounds of a Slice of `source` itself (the tensor whose size is read: torch's chunk) are pinned
    by the Slice rule."""
    if not carries or depth > 24:
        return None
    for use in value.uses():
        user = use.node
        if user.op_type in ("Reshape", "Expand", "ConstantOfShape", "Tile") and use.idx > 0:
            continue  # a shape for another tensor: the layout rules check it
        if user.op_type == "Slice" and use.idx > 0 and user.inputs[0] is source:
            continue
        if user.op_type not in _SHAPE_ARITHMETIC:
            return user
        out = _carried_after(user, use.idx, carries)
        culprit = _value_use_of_size(user.outputs[0], out, depth + 1, source)
        if culprit is not None:
            return culprit
    return None


def _carried_after(node, index, carries):
    """Which entries of `node`'s output hold the widened size, given which of input `index` do."""
    if node.op_type == "Gather" and index == 0:
        picks = g.constant(node.inputs[1])
        if picks is None or carries is True:
            return True
        picked = [int(i) for i in np.atleast_1d(picks)]
        hits = {k for k, i in enumerate(picked) if i in carries}
        return (bool(hits) if np.ndim(picks) == 0 else hits) or False
    if node.op_type == "Slice" and index == 0 and carries is not True:
        starts = g.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if starts is None:
            return True
        first = int(np.atleast_1d(starts)[0])
        return {c - first for c in carries if c >= first} or False
    if node.op_type == "Concat" and carries is not True:
        offset = sum(static_dim(v, 0) or 0 for v in node.inputs[:index])
        return {c + offset for c in carries}
    return carries  # arithmetic and casts keep whatever they were given

