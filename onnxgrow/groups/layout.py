"""Rules for ops that move the channel axis or cut it: Transpose, Squeeze, Concat, Split, Slice,
Gather, Expand, Pad, Resize, Reshape/Flatten (with the shape constants that must grow along)."""

from __future__ import annotations

import numpy as np

from .. import graph as g
from ..errors import GrowError
from .core import Restructure, ShapeEdit, Slot, desc
from .shapes import (
    follow_reshape,
    int_list,
    need_rank,
    norm_axis,
    number_list,
    rank_of,
    shape_entry,
    shape_of,
    static_dim,
)


def transpose(walk, node, side, index, slot):
    """Transpose: the slot moves to axis perm.index(axis) (backward: perm[axis])."""
    rank = need_rank(node.inputs[0], node)
    perm = list(g.attr(node, "perm") or reversed(range(rank)))
    if side == "in":
        walk.join(node.outputs[0], slot.moved(perm.index(slot.axis)), node)
    else:
        walk.join_input(node, 0, slot.moved(perm[slot.axis]))


def squeeze(walk, node, side, index, slot):
    """Squeeze/Unsqueeze: the channel axis keeps its place among the kept axes."""
    in_rank = need_rank(node.inputs[0], node)
    out_rank = need_rank(node.outputs[0], node)
    axes = int_list(node, "axes", 1)
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(shape_of(node.inputs[0])) if d == 1]
        removed = {norm_axis(a, in_rank) for a in axes}
        in_kept, out_kept = [i for i in range(in_rank) if i not in removed], list(range(out_rank))
    else:
        added = {norm_axis(a, out_rank) for a in axes}
        in_kept, out_kept = list(range(in_rank)), [i for i in range(out_rank) if i not in added]
    if side == "in":
        if slot.axis not in in_kept:
            raise GrowError(f"{desc(node)} squeezes the widened channel axis away.")
        walk.join(node.outputs[0], slot.moved(out_kept[in_kept.index(slot.axis)]), node)
    else:
        if slot.axis not in out_kept:
            raise GrowError(f"cannot trace the channels back through {desc(node)}.")
        walk.join_input(node, 0, slot.moved(in_kept[out_kept.index(slot.axis)]))


def concat(walk, node, side, index, slot):
    out_rank = need_rank(node.outputs[0], node)
    axis = norm_axis(g.attr(node, "axis"), out_rank)
    if slot.axis != axis:  # concatenated along another axis: a junction
        for i in range(len(node.inputs)):
            walk.join_input(node, i, slot)
        walk.join_outputs(node, slot)
        return
    dims = [static_dim(v, axis) for v in node.inputs]
    if any(d is None for d in dims):
        raise GrowError(f"the sizes of the inputs of {desc(node)} are unknown; cannot place the "
                        "widened channels in its output.")
    starts = [int(x) for x in np.concatenate([[0], np.cumsum(dims)])]
    if any(d % slot.block for d in dims):
        raise GrowError(f"{desc(node)} joins tensors with different channel block sizes.")
    if side == "in":
        if sum(1 for v in node.inputs if v is node.inputs[index]) > 1:
            raise GrowError(f"{desc(node)} concatenates the widened tensor with itself.")
        if dims[index] != slot.total * slot.block:
            raise GrowError(f"{desc(node)} concatenates a tensor whose channels are interleaved "
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
    raise GrowError(f"the widened channels span several inputs of {desc(node)}.")


def _require_unstrided(walk, node, slot, dim):
    if dim != slot.total * slot.block:
        raise GrowError(f"{desc(node)} cuts an axis where the widened channels are interleaved "
                        "with other features.")


def split(walk, node, side, index, slot):
    rank = need_rank(node.inputs[0], node)
    axis = norm_axis(g.attr(node, "axis", 0), rank)
    if slot.axis != axis:
        walk.join_input(node, 0, slot)
        walk.join_outputs(node, slot)
        return
    if side == "out":
        raise GrowError(f"the widened channels come out of one part of {desc(node)}; widen the "
                        "layer that produces its input instead.")
    dims = [static_dim(o, axis) for o in node.outputs]
    if any(d is None for d in dims):
        raise GrowError(f"the output sizes of {desc(node)} are unknown.")
    full = static_dim(node.inputs[0], axis)
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
        raise Restructure([(len(dims), 1)], f"{desc(node)} splits the widened channels into "
                                            f"{len(dims)} equal parts")
    raise GrowError(f"{desc(node)} splits the widened channels apart; this cannot be widened.")


def _grow_split_part(walk, node, part, per_unit):
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        walk.shape_edit(ShapeEdit(node, 1, part, per_unit))
    else:  # sizes in the `split` attribute, or equal parts from `num_outputs`
        walk.shape_edit(ShapeEdit(node, None, part, per_unit, attr="split"))


def slice_(walk, node, side, index, slot):
    """Slice: another axis passes; on the channel axis the group must lie inside the kept range
    (its start and explicit end move with new channels). Backward only through a slice that keeps
    the whole channel axis (the raw exporter's x[:, :, None] and x[..., :] copies)."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels are used as slice bounds by {desc(node)}.")
    rank = need_rank(node.inputs[0], node)
    starts, ends = int_list(node, "starts", 1), int_list(node, "ends", 2)
    axes = int_list(node, "axes", 3) or list(range(len(starts)))
    steps = int_list(node, "steps", 4) or [1] * len(starts)
    axes = [norm_axis(a, rank) for a in axes]
    if side == "out":
        _slice_backward(walk, node, slot, axes, starts, ends, steps)
        return
    if slot.axis not in axes:
        walk.join_outputs(node, slot)
        return
    if node.inputs[1] is None or len(node.inputs) < 3:
        raise GrowError(f"{desc(node)} (an old-opset Slice) cuts the channel axis.")
    k = axes.index(slot.axis)
    dim = static_dim(node.inputs[0], slot.axis)
    if steps[k] != 1 or dim is None:
        raise GrowError(f"{desc(node)} slices the channel axis with a step or an unknown size.")
    s = min(max(starts[k] + dim if starts[k] < 0 else starts[k], 0), dim)
    e = min(max(ends[k] + dim if ends[k] < 0 else ends[k], 0), dim)
    moves_end = ends[k] <= dim  # an explicit end (dim itself included) moves with new channels
    part = slot.total * slot.block
    if dim != part and dim % part == 0:  # `outer` parts growing alike: a fused projection
        _slice_part(walk, node, slot, k, s, e, part, moves_end)
        return
    _require_unstrided(walk, node, slot, dim)
    lo, hi = slot.offset * slot.block, (slot.offset + walk.group.width) * slot.block
    if starts[k] < 0 or (ends[k] < 0 and e > lo):
        raise GrowError(f"{desc(node)} slices the channel axis from its end.")
    if s <= lo and hi <= e:
        if (lo - s) % slot.block:
            raise GrowError(f"{desc(node)} cuts into a channel block.")
        if moves_end:
            walk.shape_edit(ShapeEdit(node, 2, k, slot.block))
        walk.join(node.outputs[0], Slot(slot.axis, slot.offset - s // slot.block,
                                        (e - s) // slot.block, slot.block), node)
    elif s >= hi:
        walk.shape_edit(ShapeEdit(node, 1, k, slot.block))
        if moves_end:
            walk.shape_edit(ShapeEdit(node, 2, k, slot.block))
    elif e > lo:
        if (slot.offset, slot.block, slot.total) == (0, 1, dim) and e > s and dim % (e - s) == 0 and s % (e - s) == 0:
            raise Restructure([(dim // (e - s), 1)], f"{desc(node)} cuts the widened channels into "
                              f"{dim // (e - s)} equal parts (a fused projection)")
        raise GrowError(f"{desc(node)} takes part of the widened channels; this cannot be widened.")


def _slice_part(walk, node, slot, k, s, e, part, moves_end):
    """A Slice that takes whole part p of a tensor holding `outer` parts that grow alike (q, k or
    v of a fused qkv projection): its bounds move by p and p + 1 parts' growth."""
    if s % part or e - s != part:
        raise GrowError(f"{desc(node)} cuts a fused projection into unequal parts (as the q, k and v of a "
                        "fused qkv with grouped-query attention): onnxgrow grows a fused projection only when "
                        "its parts are equal. Its other layers grow; so does an export with separate q/k/v "
                        "projections.")
    p = s // part
    if p:
        walk.shape_edit(ShapeEdit(node, 1, k, p * slot.block))
    if moves_end:
        walk.shape_edit(ShapeEdit(node, 2, k, (p + 1) * slot.block))
    walk.join(node.outputs[0], slot, node)


def _slice_backward(walk, node, slot, axes, starts, ends, steps):
    if slot.axis in axes:
        k = axes.index(slot.axis)
        dim = static_dim(node.inputs[0], slot.axis)
        if dim is None or starts[k] != 0 or steps[k] != 1 or ends[k] < dim or dim != static_dim(node.outputs[0], slot.axis):
            raise GrowError(f"the widened channels come out of {desc(node)}, which keeps only part of "
                            "its input's channel axis; widen the layer that produces its input instead.")
        if ends[k] == dim:  # an explicit end moves with the new channels
            walk.shape_edit(ShapeEdit(node, 2, k, slot.block))
    walk.join_input(node, 0, slot)


def gather(walk, node, side, index, slot):
    """Gather: along another axis the slot moves past the index dims; an identity gather (arange)
    acts as a reshape."""
    if side == "in" and index == 1:
        raise GrowError(f"the widened channels are used as indices by {desc(node)}.")
    rank = need_rank(node.inputs[0], node)
    axis = norm_axis(g.attr(node, "axis", 0), rank)
    idx_rank = need_rank(node.inputs[1], node)
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
    dim = static_dim(data, 0)
    if rank_of(data) != 1 or idx is None or dim is None or not np.array_equal(
            idx.reshape(-1), np.arange(dim)):
        raise GrowError(f"{desc(node)} picks entries along the widened channel axis.")
    in_slot, out_slot = (slot, follow_reshape(data, out, slot, node)) if side == "in" else (
        follow_reshape(out, data, slot, node), slot)
    walk.shape_edit(ShapeEdit(node, 1, out_slot.axis, static_dim(out, out_slot.axis) // out_slot.total,
                              attr="arange"))
    walk.join_input(node, 0, in_slot)
    walk.join(out, out_slot, node)


def expand(walk, node, side, index, slot):
    if side == "in" and index == 1:
        raise GrowError(f"the widened channels are used as a shape by {desc(node)}.")
    out_rank = need_rank(node.outputs[0], node)
    in_rank = need_rank(node.inputs[0], node)
    axis = slot.axis + (out_rank - in_rank if side == "in" else 0)
    in_axis = axis - (out_rank - in_rank)
    broadcast = in_axis < 0 or (static_dim(node.inputs[0], in_axis) == 1 and static_dim(node.outputs[0], axis) != 1)
    if broadcast and side == "in":
        raise GrowError(f"{desc(node)} broadcasts a single value over the widened channels.")
    target = g.constant(node.inputs[1])
    length = len(target) if target is not None else (
        static_dim(node.inputs[1], 0) or (g.probed_shape(node.inputs[1]) or [None])[0])
    position = None if length is None else axis - (out_rank - length)
    if position is None:
        raise GrowError(f"{desc(node)} expands to a shape of unknown length.")
    if position >= 0:  # the target shape has an entry for the channel axis: 1 keeps it
        entry = shape_entry(node.inputs[1], position, (node, 1))
        if entry is None or entry[0] != "const":
            raise GrowError(f"{desc(node)} expands the channel axis to a size computed at run "
                            "time; onnxgrow cannot keep it consistent.")
        _, (holder, idx, pos), value = entry
        if value not in (1, -1) or broadcast:
            walk.shape_edit(ShapeEdit(holder, idx, pos, static_dim(node.outputs[0], axis) // slot.total,
                                      consumer=node))
    elif broadcast:
        raise GrowError(f"{desc(node)} broadcasts a single value over the widened channels.")
    if broadcast:  # every channel along the axis is a copy of one value (repeat_kv): so are new ones
        walk.group.broadcasts.append(node)
        walk.join(node.outputs[0], slot.moved(axis), node)
        return
    walk.join_input(node, 0, slot.moved(in_axis))
    walk.join(node.outputs[0], slot.moved(axis), node)


def pad(walk, node, side, index, slot):
    """Pad: the same slot out; padding the group axis is refused."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a parameter of {desc(node)}.")
    rank = need_rank(node.inputs[0], node)
    pads = int_list(node, "pads", 1)
    axes = int_list(node, "axes", 3)
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    if pads is not None and slot.axis in axes:
        k = axes.index(slot.axis)
        if pads[k] or pads[k + len(axes)]:
            raise GrowError(f"{desc(node)} pads the channel axis.")
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)


def resize(walk, node, side, index, slot):
    """Resize/Upsample: the same slot out; a sizes target grows its channel entry; rescaling the
    group axis is refused."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a parameter of {desc(node)}.")
    if node.op_type == "Upsample":
        scales = number_list(node, 1, "scales")
        sizes = None
    else:
        scales = number_list(node, 2, "scales")
        sizes = number_list(node, 3, "sizes")
    if g.attr(node, "axes") is not None:
        raise GrowError(f"{desc(node)} uses the `axes` attribute, which onnxgrow does not follow.")
    if scales is not None and len(scales) > slot.axis and scales[slot.axis] != 1:
        raise GrowError(f"{desc(node)} rescales the channel axis.")
    if sizes is not None:
        walk.shape_edit(
            ShapeEdit(node, 3, slot.axis, static_dim(node.outputs[0], slot.axis) // slot.total))
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)


def reshape(walk, node, side, index, slot):
    """Reshape/Flatten: follow the group's sub-axis through merged or split dimensions."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels are used as a shape by {desc(node)}.")
    data, out = node.inputs[0], node.outputs[0]
    in_slot, out_slot = (slot, follow_reshape(data, out, slot, node)) if side == "in" else (
        follow_reshape(out, data, slot, node), slot)
    if node.op_type == "Reshape":
        _reshape_target_edit(walk, node, in_slot, out_slot)
    if (walk.group.outer, walk.group.block) == (1, 1) and _single_head(data, out, in_slot, out_slot, walk.group.width):
        walk.alternatives.append((1, walk.group.width))
    walk.join_input(node, 0, in_slot)
    walk.join(out, out_slot, node)


def _single_head(data, out, in_slot, out_slot, units) -> bool:
    """A reshape (B, T, d) → (B, T, 1, d): one attention head (multi-query attention's key and
    value). The channels map onto the head size, but the head as a whole is also a unit to grow."""
    return (in_slot.offset == 0 and in_slot.block == 1 and in_slot.total == units == out_slot.total
            and out_slot.block == 1 and out_slot.axis > 0 and static_dim(out, out_slot.axis - 1) == 1
            and static_dim(data, in_slot.axis) == units)


def _reshape_target_edit(walk, node, in_slot, out_slot):
    """The target shape's entry for the channel axis must grow with the channels."""
    position = out_slot.axis
    per_unit = static_dim(node.outputs[0], position) // out_slot.total
    entry = shape_entry(node.inputs[1], position, (node, 1))
    if entry is None:
        raise GrowError(
            f"{desc(node)} reshapes to a shape computed at run time that onnxgrow cannot follow "
            "to the channel axis. Export with static shapes (e.g. torch.onnx.export(dynamo=True)).")
    kind, where, value = entry
    if kind == "const":
        if value == -1:
            return
        if value == 0:
            in_per_unit = static_dim(node.inputs[0], position) // in_slot.total if in_slot.axis == position else None
            if in_per_unit != per_unit:
                raise GrowError(f"{desc(node)} copies a dimension (0) that does not follow the "
                                "widened channels.")
            return
        holder, idx, pos = where
        walk.shape_edit(ShapeEdit(holder, idx, pos, per_unit, consumer=node))
        return
    factors = [where] if kind == "dim" else where  # read at run time from tensors' shapes

    def check():  # once the group is whole: a factor may be a tensor the walk reaches later
        if not _runtime_size_follows({**walk.group.members, node.inputs[0]: in_slot}, factors, out_slot):
            raise GrowError(f"{desc(node)} computes the channel dimension of its target shape at run "
                            "time from dimensions that do not grow with the widened channels exactly; "
                            "onnxgrow cannot keep it consistent.")
    walk.final_checks.append(check)


def _runtime_size_follows(members, factors, out_slot) -> bool:
    """A target entry k·Π dᵢ read at run time stays right after widening when exactly one factor
    is a widened axis: the entry (= out_dim, since the graph runs) then grows by out_dim/totalᵢ
    per new unit, which must be what the output axis grows by, out_dim/out_total."""
    growing = [members[t] for t, a in factors if t in members and members[t].axis == a]
    return len(growing) == 1 and growing[0].total == out_slot.total

