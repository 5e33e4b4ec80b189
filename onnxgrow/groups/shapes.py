"""Static shapes around the walk, and tracing shape tensors back to where their entries come from
(a constant that can be edited, or a dimension read from a tensor at run time)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .. import graph as g
from ..errors import GrowError
from .core import Restructure, Slot, desc


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


def need_rank(value, node) -> int:
    rank = rank_of(value)
    if rank is None:
        raise GrowError(
            f"the rank of {value.name!r} (at {desc(node)}) is unknown, so onnxgrow cannot tell "
            "where the channel axis goes. Re-export the model with static shapes, or run "
            "onnx.shape_inference on it first."
        )
    return rank


def static_dim(value, axis) -> int | None:
    shape = shape_of(value)
    if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
        return None
    return shape[axis]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def int_list(node: ir.Node, attr_name: str, index: int | None):
    """An int-list parameter given as attribute (old opsets) or constant input (new opsets)."""
    if index is not None and len(node.inputs) > index and node.inputs[index] is not None:
        array = g.constant(node.inputs[index])
        if array is None:
            raise GrowError(f"{desc(node)} takes its {attr_name} from a computed tensor; "
                            "onnxgrow needs it constant to follow the channel axis.")
        return [int(v) for v in np.atleast_1d(array)]
    value = g.attr(node, attr_name)
    return None if value is None else [int(v) for v in value]


def static_ints(value, depth: int = 0) -> np.ndarray | None:
    """`value` as an array when it is a constant, or shape arithmetic over dimensions known
    statically (torch's chunk writes its Slice bounds as Shape → Gather → Add → Div → Mul)."""
    array = g.constant(value)
    if array is not None or value is None or depth > 16:
        return array
    node = value.producer()
    if node is None or len(node.outputs) != 1 or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        shape = shape_of(node.inputs[0])
        dims = None if shape is None else shape[g.attr(node, "start", 0) or 0:g.attr(node, "end")]
        return np.array(dims, np.int64) if dims is not None and all(isinstance(d, int) for d in dims) else None
    if node.op_type == "Gather" and node.inputs[0].producer() is not None \
            and node.inputs[0].producer().op_type == "Shape" and g.constant(node.inputs[1]) is not None:
        shape_node, picks = node.inputs[0].producer(), g.constant(node.inputs[1])
        shape = shape_of(shape_node.inputs[0])
        if shape is None or g.attr(node, "axis", 0) != 0:
            return None
        dims = np.array(shape[g.attr(shape_node, "start", 0) or 0:g.attr(shape_node, "end")], dtype=object)
        picked = dims[picks]
        return np.array(picked, np.int64) if all(isinstance(d, int) for d in np.atleast_1d(picked)) else None
    args = [None if inp is None else static_ints(inp, depth + 1) for inp in node.inputs]
    if any(a is None and inp is not None for a, inp in zip(args, node.inputs)):
        return None
    return g.fold(node, args)


def number_list(node, index, name):
    if len(node.inputs) > index and node.inputs[index] is not None:
        array = g.constant(node.inputs[index])
        if array is None:
            raise GrowError(f"{desc(node)} takes its {name} from a computed tensor.")
        return list(np.atleast_1d(array)) if array.size else None
    value = g.attr(node, name)
    return None if value is None else list(value)


def shape_entry(value, position, holder):
    """Trace entry `position` of the 1-D int shape tensor `value`, consumed as input holder[1]
    of node holder[0]: ("const", (node, input, pos), v) for a constant entry that can be edited
    there, ("dim", (tensor, axis), None) for one read from a tensor's shape, ("prod", [(tensor,
    axis), ...], k) for k times a product of such dims (`x.size(1) * x.size(2) * x.size(3)`),
    None otherwise."""
    array = g.constant(value)
    if array is not None:
        return "const", (*holder, position), int(np.atleast_1d(array)[position])
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Concat":
        offset = 0
        for i, piece in enumerate(node.inputs):
            length = static_dim(piece, 0)
            if length is None:  # a shape vector's length is static even where inference lost it
                probed = g.probed_shape(piece)
                length = probed[0] if probed and len(probed) == 1 else None
            if length is None:
                return None
            if position < offset + length:
                return shape_entry(piece, position - offset, (node, i))
            offset += length
        return None
    if node.op_type in ("Cast", "Identity"):
        return shape_entry(node.inputs[0], position, (node, 0))
    if node.op_type == "Unsqueeze" and position == 0:
        return scalar_entry(node.inputs[0], (node, 0))
    if node.op_type == "Shape":
        rank = rank_of(node.inputs[0])
        if rank is None:
            return None
        start = g.attr(node, "start", 0) or 0
        return "dim", (node.inputs[0], norm_axis(start, rank) + position), None
    if node.op_type == "Slice" and len(node.inputs) >= 3:  # a run of another shape's entries
        starts, steps = g.constant(node.inputs[1]), int_list(node, "steps", 4)
        length = static_dim(node.inputs[0], 0)
        if starts is None or starts.size != 1 or (steps and steps != [1]) or length is None:
            return None
        first = min(max(norm_axis(int(starts.reshape(-1)[0]), length), 0), length)  # Slice clamps
        return shape_entry(node.inputs[0], first + position, (node, 0))
    return None


def scalar_entry(value, holder):
    """A scalar shape value (see `shape_entry`)."""
    if g.constant(value) is not None:
        return "const", (*holder, 0), int(np.atleast_1d(g.constant(value))[0])
    node = value.producer()
    if node is not None and node.op_type == "Gather":
        idx = g.constant(node.inputs[1])
        if idx is not None and idx.size == 1:
            return shape_entry(node.inputs[0], int(idx.reshape(-1)[0]), (node, 0))
    product = dims_product(value)
    return None if product is None else ("prod", product[1], product[0])


def dims_product(value, depth: int = 0):
    """A scalar computed as k · Π dims read from tensors' shapes: (k, [(tensor, axis), ...])."""
    if value is None or depth > 16:
        return None
    array = g.constant(value)
    if array is not None:
        return (int(array.reshape(-1)[0]), []) if array.size == 1 else None
    node = value.producer()
    if node is None:
        return None
    if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        return dims_product(node.inputs[0], depth + 1)
    if node.op_type == "Mul":
        a, b = dims_product(node.inputs[0], depth + 1), dims_product(node.inputs[1], depth + 1)
        return None if a is None or b is None else (a[0] * b[0], a[1] + b[1])
    if node.op_type == "Gather":
        idx = g.constant(node.inputs[1])
        if idx is None or idx.size != 1:
            return None
        entry = shape_entry(node.inputs[0], int(idx.reshape(-1)[0]), (node, 0))
        if entry is not None and entry[0] == "dim":
            return 1, [entry[1]]
        if entry is not None and entry[0] == "const":
            return entry[2], []
    return None


def follow_reshape(src, dst, slot, node):
    """Where `slot` of `src` lands in `dst` (a reshape of it, both of known static shape).

    Reshape keeps the flat order, so channel i sits `inner` elements after channel i−1 in both;
    the group lands on the output axis whose stride divides `inner` and whose extent holds whole
    runs of `total` channels.
    """
    a, b = shape_of(src), shape_of(dst)
    if a is None or b is None:
        raise GrowError(f"the shapes around {desc(node)} are unknown, so the channel axis cannot "
                        "be followed through it. Export with static shapes.")
    a, b = _without_common_tail(a, b, slot.axis)
    inner_dims = a[slot.axis + 1:]
    if not all(isinstance(d, int) for d in inner_dims):
        raise GrowError(f"{desc(node)} merges the channel axis with dynamic dimensions. Export with a fixed "
                        "input size, or widen a layer whose channels do not reach it.")
    inner = slot.block * int(np.prod(inner_dims, dtype=np.int64))
    span = inner * slot.total
    stride = 1
    for axis in range(len(b) - 1, -1, -1):
        d = b[axis]
        if not isinstance(d, int):
            break
        if inner % stride == 0 and (stride * d) % span == 0:
            while slot.total == 1 and axis > 0 and b[axis - 1] == 1 and inner % (stride * d) == 0:
                stride, axis = stride * d, axis - 1  # a single unit that fills the axis: the outer
                d = 1  # size-1 axis counts it (one head of (B, T, 1, d) is a head, not d channels)
            return Slot(axis, slot.offset, slot.total, inner // stride)
        stride *= d
        if stride > inner:
            break
    why = (f"{desc(node)} reshapes {list(a)} to {list(b)}, splitting the widened channel axis "
           "into several (as attention heads do)")
    split = split_dims(a, b, slot)
    if split and slot.offset == 0 and slot.block == 1 and a[slot.axis] == slot.total:
        raise Restructure([(int(np.prod(split[:k])), int(np.prod(split[k + 1:])))
                           for k in range(len(split)) if split[k] > 1], why)
    raise GrowError(f"{why}; onnxgrow cannot widen through it.")


def _without_common_tail(a: tuple, b: tuple, axis: int) -> tuple[tuple, tuple]:
    """Both shapes with the trailing dims they share (after `axis` in `a`) set to 1: a reshape
    keeps the flat order, so dims that end both shapes alike (the sequence and head size of
    repeat_kv's (B, kv, rep, T, d) → (B, kv·rep, T, d), dynamic or not) do not move the channels."""
    dynamic = [i for i in range(axis + 1, len(a)) if not isinstance(a[i], int)]
    k = len(a) - dynamic[0] if dynamic else 0  # up to the outermost dynamic dim: equal ints may differ in meaning
    if k == 0 or k > len(b) or tuple(a[-k:]) != tuple(b[-k:]):
        return a, b
    return a[:len(a) - k] + (1,) * k, b[:len(b) - k] + (1,) * k


def split_dims(a, b, slot):
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

