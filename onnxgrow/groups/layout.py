"""Rules for ops that move the channel axis or cut it: Transpose, Squeeze, Concat, Split, Slice,
Gather, Expand, Pad, Resize, Reshape/Flatten (with the shape constants that must grow along)."""

from __future__ import annotations

import numpy as np

from .. import graph as g
from ..errors import GrowError
from .core import Restructure, ShapeEdit, Slot, desc, single, slot_at
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
    static_ints,
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
    """Concat along the channel axis: every copy of the group in an input is a copy in the
    output, at the input's offset (the parts of a split block joined back: several copies); back
    from the output, each copy lies inside one input. Along another axis: a junction."""
    out_rank = need_rank(node.outputs[0], node)
    axis = norm_axis(g.attr(node, "axis"), out_rank)
    if slot.axis != axis:  # concatenated along another axis: a junction
        for i in range(len(node.inputs)):
            walk.join_input(node, i, slot)
        walk.join_outputs(node, slot)
        return
    dims = _sizes(node, node.inputs, axis, slot, "inputs")
    starts = _starts(dims, slot.block)
    if side == "in":
        if sum(1 for v in node.inputs if v is node.inputs[index]) > 1:
            raise GrowError(f"{desc(node)} concatenates the widened tensor with itself.")
        positions = [starts[index] + p for p in slot.positions(dims[index])]
        walk.join(node.outputs[0], slot_at(axis, positions, starts[-1], slot.block, walk.group.width), node)
        return
    for i, positions in enumerate(_by_part(walk, node, slot, starts, "inputs")):
        if positions:
            walk.join_input(node, i, slot_at(axis, positions, dims[i] // slot.block, slot.block,
                                             walk.group.width))


def _sizes(node, values, axis, slot, what):
    dims = [static_dim(v, axis) for v in values]
    if any(d is None for d in dims):
        raise GrowError(f"the sizes of the {what} of {desc(node)} are unknown; cannot place the "
                        "widened channels.")
    if any(d % slot.block for d in dims):
        raise GrowError(f"{desc(node)} joins or cuts tensors with different channel block sizes.")
    return dims


def _starts(dims, block):
    """Where each part starts along the axis, in units of `block` channels (and the total last)."""
    return [int(x) // block for x in np.concatenate([[0], np.cumsum(dims)])]


def _by_part(walk, node, slot, starts, what):
    """The copies of the group in the whole tensor, per part (offsets relative to the part);
    a copy that spans two parts is refused."""
    per_part = [[] for _ in starts[:-1]]
    for p in slot.positions(starts[-1] * slot.block):
        part = int(np.searchsorted(starts, p, side="right")) - 1
        if p + walk.group.width > starts[part + 1]:
            raise GrowError(f"the widened channels span several {what} of {desc(node)}.")
        per_part[part].append(p - starts[part])
    return per_part


def split(walk, node, side, index, slot):
    """Split along the channel axis: each copy of the group lies inside one part, which grows by
    the new units of its copies (the sizes move with them); back from a part, the copy sits at the
    part's offset in the input (the layer before grows inside that part only)."""
    rank = need_rank(node.inputs[0], node)
    axis = norm_axis(g.attr(node, "axis", 0), rank)
    if slot.axis != axis:
        walk.join_input(node, 0, slot)
        walk.join_outputs(node, slot)
        return
    dims = _sizes(node, node.outputs, axis, slot, "outputs")
    starts = _starts(dims, slot.block)
    if side == "out":
        positions = [starts[index] + p for p in slot.positions(dims[index])]
        walk.join_input(node, 0, slot_at(axis, positions, starts[-1], slot.block, walk.group.width))
        slot = walk.group.members.get(node.inputs[0])
        if slot is None:
            raise GrowError(f"the widened channels come out of {desc(node)}, which splits a constant; "
                            "widen another layer.")
    if static_dim(node.inputs[0], axis) != sum(dims):
        raise GrowError(f"the output sizes of {desc(node)} do not add up to its input's.")
    try:
        per_part = _by_part(walk, node, slot, starts, "outputs")
    except GrowError:
        if slot.offset == 0 and slot.block == 1 and not slot.also_at and slot.total == starts[-1] and len(set(dims)) == 1:
            raise Restructure([(len(dims), 1)], f"{desc(node)} splits the widened channels into "
                                                f"{len(dims)} equal parts") from None
        raise GrowError(f"{desc(node)} splits the widened channels apart; this cannot be widened.") from None
    for i, (out, positions) in enumerate(zip(node.outputs, per_part)):
        if positions:
            _grow_split_part(walk, node, i, len(positions) * slot.block)
            walk.join(out, slot_at(axis, positions, dims[i] // slot.block, slot.block, walk.group.width), node)


def _grow_split_part(walk, node, part, per_unit):
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        walk.shape_edit(ShapeEdit(node, 1, part, per_unit))
    else:  # sizes in the `split` attribute, or equal parts from `num_outputs`
        walk.shape_edit(ShapeEdit(node, None, part, per_unit, attr="split"))


def slice_(walk, node, side, index, slot):
    """Slice: another axis passes; on the channel axis each copy of the group lies inside the kept
    range or outside it (its start and explicit end move with the new channels before them).
    Backward from the kept range of a step-1 slice (one part of a slice-cut split block), the copy
    sits at the slice's start in the input."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels are used as slice bounds by {desc(node)}.")
    rank = need_rank(node.inputs[0], node)
    starts, ends, axes, steps = (_slice_param(walk, node, name, i) for i, name in enumerate(
        ("starts", "ends", "axes", "steps"), start=1))
    axes = [norm_axis(a, rank) for a in axes or range(len(starts))]
    steps = steps or [1] * len(starts)
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
    if slot.also_at:
        _slice_copies(walk, node, slot, k, starts[k], ends[k], s, e, dim, moves_end)
        return
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


def _require_unstrided(walk, node, slot, dim):
    if dim != slot.total * slot.block:
        raise GrowError(f"{desc(node)} cuts an axis where the widened channels are interleaved "
                        "with other features.")


def _slice_param(walk, node, name, index):
    """A Slice parameter; one computed from static shapes at run time is pinned to its value (the
    widened tensor's shape would change it)."""
    if index >= len(node.inputs) or node.inputs[index] is None or g.constant(node.inputs[index]) is not None:
        return int_list(node, name, index)
    array = static_ints(node.inputs[index])
    if array is None:
        raise GrowError(f"{desc(node)} takes its {name} from a computed tensor; onnxgrow needs it "
                        "constant to follow the channel axis.")
    walk.shape_edit(ShapeEdit(node, index, 0, 0, value=array))
    return [int(v) for v in np.atleast_1d(array)]


def _slice_copies(walk, node, slot, k, start, end, s, e, dim, moves_end):
    """A slice of a tensor holding several copies of the group: copies before the kept range move
    its start, those inside it are kept (and move an explicit end)."""
    if start < 0 or end < 0 or s % slot.block:
        raise GrowError(f"{desc(node)} slices the channel axis from its end or inside a channel block.")
    before, inside = 0, []
    for p in slot.positions(dim):
        lo, hi = p * slot.block, (p + walk.group.width) * slot.block
        if hi <= s:
            before += 1
        elif s <= lo and hi <= e:
            inside.append(p - s // slot.block)
        elif lo < e:
            raise GrowError(f"{desc(node)} takes part of the widened channels; this cannot be widened.")
    if before:
        walk.shape_edit(ShapeEdit(node, 1, k, before * slot.block))
    if moves_end and before + len(inside):
        walk.shape_edit(ShapeEdit(node, 2, k, (before + len(inside)) * slot.block))
    if inside:
        walk.join(node.outputs[0], slot_at(slot.axis, inside, (e - s) // slot.block, slot.block,
                                           walk.group.width), node)


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
        kept = static_dim(node.outputs[0], slot.axis)
        if dim is None or kept is None or steps[k] != 1 or starts[k] < 0 or ends[k] < 0 \
                or starts[k] % slot.block or node.inputs[1] is None or len(node.inputs) < 3:
            raise GrowError(f"the widened channels come out of {desc(node)}, which keeps part of its "
                            "input's channel axis in a way onnxgrow cannot follow back (a step, a start "
                            "from the end, an old-opset Slice); widen the layer that produces its input "
                            "instead.")
        if kept != dim:  # one part of the input: the copies sit after the slice's start
            start = starts[k] // slot.block
            positions = [start + p for p in slot.positions(kept)]
            walk.join_input(node, 0, slot_at(slot.axis, positions, dim // slot.block, slot.block,
                                             walk.group.width))
            if node.inputs[0] not in walk.group.members:
                raise GrowError(f"the widened channels come out of {desc(node)}, which slices a constant; "
                                "widen another layer.")
            slice_(walk, node, "in", 0, walk.group.members[node.inputs[0]])  # the bounds move
            return
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
    single(slot, node)
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
    single(slot, node)
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
            ShapeEdit(node, 3, slot.axis, slot.growth(static_dim(node.outputs[0], slot.axis))))
    walk.join_input(node, 0, slot)
    walk.join(node.outputs[0], slot, node)


def reshape(walk, node, side, index, slot):
    """Reshape/Flatten: follow the group's sub-axis through merged or split dimensions."""
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels are used as a shape by {desc(node)}.")
    single(slot, node)
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

