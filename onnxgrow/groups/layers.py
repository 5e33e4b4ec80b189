"""Rules for the weight layers the channels end or start at: Conv (grouped and depthwise),
ConvTranspose, Gemm, MatMul (a constant operand on either side, or two computed tensors), and the
recurrent layers (LSTM, GRU, RNN) as consumers."""

from __future__ import annotations

from .. import graph as g
from ..errors import GrowError
from .core import Restructure, Slot, desc, single
from .shapes import need_rank, static_dim


def conv(walk, node, side, index, slot):
    """Conv: input axis 1 → weight axis 1 (consumer); output axis 1 ← weight axis 0 and bias
    (producer); depthwise passes the group on, grouped restructures."""
    groups = g.attr(node, "group", 1)
    weight = g.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        raise GrowError(f"{desc(node)} has a computed (non-constant) weight.")
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach the weight of {desc(node)}.")
    if slot.axis != 1:
        raise GrowError(f"the widened channels reach {desc(node)} on axis {slot.axis}, not its "
                        "channel axis.")
    if groups == 1:
        _conv_weights(walk, node, side, slot)
        return
    single(slot, node)
    in_ch, out_ch = weight.shape[1] * groups, weight.shape[0]
    if groups == in_ch:  # depthwise: channel-wise, each channel feeding m outputs (a block of m)
        m = out_ch // in_ch
        if slot.block != (1 if side == "in" else m):
            raise GrowError(f"cannot follow the channels through {desc(node)}.")
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
        raise Restructure([(groups, 1)], f"{desc(node)} is a grouped convolution (group={groups})")
    raise GrowError(
        f"{desc(node)} is a grouped convolution (group={groups}) whose groups do not line up with "
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


def conv_transpose(walk, node, side, index, slot):
    """ConvTranspose: input axis 1 → weight axis 0 (consumer); output axis 1 ← weight axis 1 and bias
    (producer)."""
    if g.constant(node.inputs[1]) is None:
        raise GrowError(f"{desc(node)} has a computed (non-constant) weight.")
    if g.attr(node, "group", 1) != 1 or slot.axis != 1 or (side == "in" and index != 0):
        raise GrowError(f"{desc(node)}: only an ungrouped ConvTranspose, on its channel axis, can "
                        "be widened through.")
    _conv_weights(walk, node, side, slot, in_axis=0, out_axis=1)


def gemm(walk, node, side, index, slot):
    """Gemm: the K axis of A → weight rows (columns with transB) (consumer); output axis 1 ← weight
    columns (rows) and C; the M axis passes."""
    trans_a, trans_b = g.attr(node, "transA", 0), g.attr(node, "transB", 0)
    if g.constant(node.inputs[1]) is None:
        raise GrowError(f"{desc(node)} multiplies two computed tensors; only a constant weight "
                        "can be widened.")
    if side == "in" and index != 0:
        raise GrowError(f"the widened channels reach a weight or bias input of {desc(node)}.")
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
            raise GrowError(f"{desc(node)} adds a computed bias C.")
        if bias.ndim >= 1 and bias.shape[-1] != 1:
            walk.weight(node, 2, bias.ndim - 1, slot.moved(bias.ndim - 1), "producer")


def matmul(walk, node, side, index, slot):
    a, b = node.inputs[0], node.inputs[1]
    ca, cb = g.constant(a), g.constant(b)
    out_rank = need_rank(node.outputs[0], node)
    ra, rb = need_rank(a, node), need_rank(b, node)
    if ra < 2 or rb < 2:
        raise GrowError(f"{desc(node)} multiplies by a vector; onnxgrow follows only matrices.")
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
                f"the widened channels are the contracted axis of {desc(node)}, a product of two "
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
            if ax >= 0 and static_dim(node.inputs[i], ax) != 1:
                walk.join_input(node, i, slot.moved(ax))
    walk.join(node.outputs[0], slot.moved(out_axis), node)


def _matmul_weight(walk, node, side, slot, data, contracted, w_in, w_out, out_units):
    """MatMul with one constant operand: the data's `contracted` axis meets the weight's `w_in`
    axis (a consumer), the weight's `w_out` axis makes the output's `out_units` axis (a
    producer); the data's other axes pass through."""
    weight = 1 - data
    shift = need_rank(node.outputs[0], node) - need_rank(node.inputs[data], node)
    if side == "in" and slot.axis == contracted:
        walk.weight(node, weight, w_in, slot, "consumer")
    elif side == "out" and slot.axis == out_units:
        walk.weight(node, weight, w_out, slot, "producer")
    elif side == "in":
        walk.join(node.outputs[0], slot.moved(slot.axis + shift), node)
    else:
        walk.join_input(node, data, slot.moved(slot.axis - shift))



def recurrent(walk, node, side, index, slot):
    """LSTM/GRU/RNN read the channels as the features of X (axis 2 in both layouts) through W's
    axis 2 (consumer); their hidden units are a layer of their own, not widened here."""
    if side != "in" or index != 0:
        raise GrowError(f"the widened channels reach {desc(node)} other than as its input X; only the "
                        "input features of a recurrent layer can grow.")
    if slot.axis != 2:
        raise GrowError(f"the widened channels reach {desc(node)} on axis {slot.axis}, not its feature axis 2.")
    if g.constant(node.inputs[1]) is None:
        raise GrowError(f"{desc(node)} has a computed (non-constant) input weight W.")
    single(slot, node)
    walk.weight(node, 1, 2, slot, "consumer")
