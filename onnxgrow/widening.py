"""Widening a coupled group from n to q units: net2net, netmorph, r2r and random.

New unit j (n ≤ j < q) takes a source unit src(j) < n; c_i counts the units (old and new) that
are copies of unit i. Where a group's tensors carry the n channels (see groups.Slot), the new
channels are inserted right after them. What each kind of weight gets (the methods themselves live
in methods.py, one object each):

                      net2net            netmorph         r2r                   random
  producer rows       copy of src(j)     random           random, in equal      random
  (and its bias)      (its bias)         (bias 0)         pairs (bias 0)        (bias 0)
  per-channel params  copy of src(j)     copy             copy (pairs agree)    copy
  consumer columns    split: s_j·W[src]  zero             +V, −V per pair       random

net2net is exact because the c_i copies of unit i carry identical values and their consumer
weights s_j·W_i sum to W_i (Σ s_j = 1 over the copies). The textbook split is s_j = 1/c_i;
`noise` ε draws s_j ∝ 1 + ε·u_j, u ~ U(−1, 1), which breaks the symmetry between copies and is
still exact. netmorph is exact because the consumers ignore the new units; r2r because each pair
carries identical values with opposite outgoing weights, so it cancels. random is the
non-preserving baseline. "Random" weights are drawn N(0, σ²) with σ the standard deviation of
the weight being grown, so new units start at the scale of the old — or σ = `new_std` when given
(a number, or "xF": F × the weight's own), so that they start quieter.

Groups that normalise over their channels (LayerNorm over channels, RMSNorm, a hand-written
LayerNorm2d: `Group.uniform_only`) keep their statistics only if every unit is copied equally
often, so there every preserving method makes the new producer units copies (q a multiple of n):
netmorph then gives the copies zero outgoing weights, and r2r pairs each copy with its original,
adding +V to the original's outgoing weights and −V to the copy's (W_i·x + V·x − V·x = W_i·x).
Widths that are not a multiple pad the stream instead (zero under RMS norms, the mean under
pre-norm LayerNorm): padding.PadPlan, which offers the same interface as Plan. With `pad_streams`
multiples are padded too, wherever PadPlan stays exact (else copied, with a note).

When the units are attention heads (groups.Group.block = head size), r2r pairs the channels inside
each new head instead of pairing heads: a new head's value channels 2i and 2i+1 are equal, so the
output projection's +V/−V on them cancels whatever the attention weights are, and any number of
heads can be added.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_ir as ir

from . import graph as g
from . import groups as gr
from . import names, ops, window
from .errors import GrowError, InternalError
from .methods import R2R, Net2Net, pairs_inside_heads, widen_method
from .summary import summary
from .validate import check_growth_memory

DEFAULT_NOISE = 0.1


# ----------------------------------------------------------------------------- the mapping


def source_units(n: int, new: int, rng: np.random.Generator, paired: bool = False) -> np.ndarray:
    """src(j) for the `new` added units: balanced (each old unit copied as evenly as possible),
    random order; with `paired`, consecutive new units share a source (r2r pairs)."""
    count = new // 2 if paired else new
    reps = -(-count // n) if count else 0
    picks = np.concatenate([rng.permutation(n) for _ in range(reps)])[:count] if reps else np.zeros(0, int)
    return np.repeat(picks, 2) if paired else picks


def split_factors(n: int, src: np.ndarray, noise: float, rng: np.random.Generator):
    """net2net's s for old units (length n) and new units (len(src)); copies of a unit sum to 1."""
    units = np.concatenate([np.arange(n), src])
    w = 1.0 + noise * rng.uniform(-1.0, 1.0, size=units.size) if noise else np.ones(units.size)
    totals = np.bincount(units, weights=w, minlength=n)
    s = w / totals[units]
    return s[:n], s[n:]


# ----------------------------------------------------------------------------- channel arrays


def _view(array: np.ndarray, axis: int, slot: gr.Slot) -> np.ndarray:
    """`array` as (before, outer, total, block, after) around `axis`."""
    before = int(np.prod(array.shape[:axis], dtype=np.int64))
    after = int(np.prod(array.shape[axis + 1:], dtype=np.int64))
    dim = array.shape[axis]
    if dim % (slot.total * slot.block):
        raise InternalError(f"axis {axis} of size {dim} does not hold {slot}")
    outer = dim // (slot.total * slot.block)
    return array.reshape(before, outer, slot.total, slot.block, after)


def take_channels(array, axis, slot, units) -> np.ndarray:
    """The group channels `units` (0-based within the group), in the 5-D view."""
    return _view(array, axis, slot)[:, :, slot.offset + np.asarray(units, dtype=np.int64)]


def insert_copies(array, axis, slot, n, units) -> np.ndarray:
    """`array` with copies of the group channels `units` inserted after its n channels: one
    gather into the grown array (no separate copies to concatenate)."""
    view = _view(array, axis, slot)
    at = slot.offset + n
    index = np.concatenate([np.arange(at), slot.offset + np.asarray(units, dtype=np.int64),
                            np.arange(at, view.shape[2])])
    return _unview(np.take(view, index, axis=2), array.shape, axis)


def insert_channels(array, axis, slot, n, new_part) -> np.ndarray:
    """`array` with `new_part` (5-D, k channels) inserted after the group's n channels."""
    view = _view(array, axis, slot)
    at = slot.offset + n
    grown = np.concatenate([view[:, :, :at], new_part.astype(array.dtype, copy=False), view[:, :, at:]], axis=2)
    return _unview(grown, array.shape, axis)


def _unview(grown: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """A grown 5-D view back in the array's layout (`shape` with the grown axis)."""
    shape = list(shape)
    shape[axis] = grown.shape[1] * grown.shape[2] * grown.shape[3]
    return grown.reshape(shape)


def one_copy_at_a_time(slot: gr.Slot, new: int) -> list[gr.Slot]:
    """A Slot holding several copies of the group as one Slot per copy, in the order to grow
    them: the last first, so the copies before it keep their offsets, each on the axis as the
    copies grown before it left it."""
    return [gr.Slot(slot.axis, offset, slot.total + k * new, slot.block)
            for k, offset in enumerate(sorted(slot.offsets, reverse=True))]


def new_sigma(new_std, array) -> float:
    """The std of new units' random weights beside `array`: `new_std` (a number), F × the array's
    own ("xF"), or the array's own (None)."""
    own = float(np.std(array)) or 1.0
    if new_std is None:
        return own
    return float(new_std[1:]) * own if isinstance(new_std, str) else float(new_std)


def scale_channels(array, axis, slot, factors, in_place: bool = False) -> np.ndarray:
    """`array` with the group's first len(factors) channels multiplied by `factors` (in float32
    or wider: one rounding of the product, without a float64 copy of a large weight)."""
    out = array if in_place else array.copy()
    view = _view(out, axis, slot)
    part = slice(slot.offset, slot.offset + len(factors))
    f = np.asarray(factors, dtype=np.result_type(out.dtype, np.float32))[None, None, :, None, None]
    view[:, :, part] = (view[:, :, part] * f).astype(out.dtype, copy=False)
    return out


# ----------------------------------------------------------------------------- the plan


class Plan:
    """The numbers for one widening: sizes, sources, splits and the random stream; the method
    (methods.WIDEN_METHODS) decides what the new producer rows and consumer columns get."""

    def __init__(self, n: int, q: int, method: str, seed: int, noise: float, uniform: bool = False,
                 pairs_inside: bool = False, new_std: float | str | None = None):
        self.n, self.q, self.new_std = n, q, new_std
        self.method = widen_method(method)
        self.copies_only = uniform and self.method.preserving  # new units must replicate old ones
        # r2r on attention heads pairs the channels inside each new head (any number of heads)
        is_r2r = isinstance(self.method, R2R)
        self.pair_axis = 3 if is_r2r and not uniform and pairs_inside else 2
        self.rng = np.random.default_rng(seed)
        self.src = source_units(n, q - n, self.rng, paired=is_r2r and not uniform and self.pair_axis == 2)
        split_noise = noise if isinstance(self.method, Net2Net) else 0.0
        self.s_old, self.s_new = split_factors(n, self.src, split_noise, self.rng)

    @property
    def new(self) -> int:
        return self.q - self.n

    def sigma(self, array) -> float:
        return new_sigma(self.new_std, array)

    def random_like(self, array, shape, pairs=False):
        """N(0, σ²) of `shape` (5-D), σ = self.sigma(array); with `pairs`, equal in pairs along pair_axis."""
        sigma = self.sigma(array)
        if not pairs:
            return self.rng.normal(0.0, sigma, size=shape)
        half = list(shape)
        half[self.pair_axis] //= 2
        return np.repeat(self.rng.normal(0.0, sigma, size=half), 2, axis=self.pair_axis)

    def write(self, graph: ir.Graph, edit: gr.WeightEdit, grown: np.ndarray, hint: str) -> None:
        g.set_input_constant(graph, edit.node, edit.index, grown, hint)

    def finish(self, graph: ir.Graph) -> None:
        """Nothing beyond the weights: replication keeps every norm's statistics."""

    def channel_map(self, dim: int, edit: gr.WeightEdit, is_bias: bool):
        return channel_map(self, dim, edit, is_bias)

    def pairs_within(self, slot) -> bool:
        return self.pair_axis == 3 and slot.block % 2 == 0

    def view(self, array, axis, slot):
        return _view(array, axis, slot)

    def scale(self, array, axis, slot, factors, in_place: bool = False):
        return scale_channels(array, axis, slot, factors, in_place)

    def insert(self, array, axis, slot, part):
        return insert_channels(array, axis, slot, self.n, part)

    def insert_copies(self, array, axis, slot):
        return insert_copies(array, axis, slot, self.n, self.src)

    def grow(self, array: np.ndarray, edit: gr.WeightEdit, is_bias: bool) -> np.ndarray:
        if edit.slot.also_at:  # several copies of the group: each grows as if alone
            for slot in one_copy_at_a_time(edit.slot, self.new):
                array = self.grow(array, replace(edit, slot=slot), is_bias)
            return array
        slot, axis = edit.slot, edit.axis
        copied = edit.role == "param" or (edit.role == "producer" and (
            self.copies_only or (self.method.copies_bias if is_bias else self.method.copies_rows)))
        if copied and not self.pairs_within(slot):
            return self.insert_copies(array, axis, slot)  # per-channel values and copied rows
        if edit.role == "consumer" and self.method.copies_rows:
            return self.method.grow_consumer(self, array, axis, slot, None)  # split copies: no `copies` needed
        copies = take_channels(array, axis, slot, self.src)
        if edit.role == "param":  # both channels of a pair agree
            copies = copies.copy()
            copies[:, :, :, 1::2] = copies[:, :, :, 0::2]
            return self.insert(array, axis, slot, copies)
        if edit.role == "producer":
            if copied:
                part = copies
            elif is_bias:
                part = np.zeros_like(copies)
            else:
                part = self.method.new_rows(self, array, copies, slot)
            return self.insert(array, axis, slot, part)
        return self.method.grow_consumer(self, array, axis, slot, copies)


# ----------------------------------------------------------------------------- entry points


def widen_model(model: ir.Model, *, layer: str, width: int, method: str = "net2net", seed: int = 0,
                noise: float | None = None) -> dict:
    """Widen `layer` of `model` (in place) to `width` units; return a summary for the CLI."""
    widen_method(method)
    node = names.resolve(model.graph, layer)
    check_growth_memory(node, width=width)
    g.prepare(model)
    group = gr.find_group(node)
    params_before = g.parameter_count(model)
    details = widen_group(model.graph, node, group, width, method, seed, noise)
    g.remove_unused(model)
    n, members = group_width(group), [x.name for x in group.producers + group.consumers if x is not node]
    lines = [
        f"widened {layer}: {n} → {width} units ({method}" + (f", noise {details['noise']}" if method == "net2net" else "") + ")",
        f"coupled group: {len(group.producers)} producer(s), {len(group.consumers)} consumer(s)"
        + (f": {', '.join(members[:8])}{' ...' if len(members) > 8 else ''}" if members else ""),
    ]
    lines += details.get("notes", [])
    return summary("widen", lines, params_before, g.parameter_count(model), layer=layer, seed=seed, **details)


def group_width(group: gr.Group) -> int:
    """The layer's current output width (its channels) that the group's units make up."""
    return group.width * group.outer * group.block


def widen_group(graph: ir.Graph, node: ir.Node, group: gr.Group, width: int, method: str, seed: int,
                noise: float | None, pad_streams: bool = False, new_std: float | str | None = None) -> dict:
    """Widen `group` (found from `node`) to `width` channels in place; return what was done.
    `pad_streams`: pad a normalised stream at a multiple too, where padding stays exact (copies
    otherwise); `new_std`: the std of the new units' random weights (None: each weight's own)."""
    from . import padding  # it builds on this module's channel helpers
    noise = DEFAULT_NOISE if noise is None else float(noise)
    if not 0.0 <= noise < 1.0:
        raise GrowError(f"--noise {noise}: the replica split needs 0 <= noise < 1 to keep every "
                        "share positive.")
    repeat, n = group.outer * group.block, group_width(group)
    check_width(node, n, width, method, group, padding.needs_padding(group, n, width, method))
    plan, notes = None, []
    if padding.needs_padding(group, n, width, method, at_multiples=pad_streams):
        try:
            plan = padding.PadPlan(graph, group, group.width, width // repeat, method, seed, node.name, new_std)
        except GrowError:
            if width % n:  # not a multiple: only padding could stay exact
                raise
            # heads, conv groups, post-norm stacks, a shared ε: copies stay exact
            notes.append("normalised channels copied, not padded: padding would not keep them exact here")
    padded = plan is not None
    if plan is None:
        plan = Plan(group.width, width // repeat, method, seed, noise, uniform=bool(group.uniform_only),
                    pairs_inside=pairs_inside_heads(group), new_std=new_std)
    mappings = apply(graph, group, plan)
    for mapping in mappings if padded else ():
        mapping["padded"] = True  # new channels zero or the mean, not copies (a folder's norms then use ε·d/d′)
    details = {"method": method, "noise": noise if method == "net2net" else None,
               "width": {"before": n, "after": width}, "producers": [x.name for x in group.producers],
               "consumers": [x.name for x in group.consumers], "mappings": mappings}
    if padded or notes:
        details["notes"] = (plan.notes() if padded else []) + notes
    return details


def check_width(node, n: int, width: int, method: str, group: gr.Group, padded: bool = False) -> None:
    """Refuse widths the group cannot take; `padded`: a normalised stream grown by padding."""
    name = node.name
    if width <= n:
        raise GrowError(f"{name!r} has {n} units; --width must be larger than that (got {width}). "
                        "onnxgrow only grows models.")
    repeat = group.outer * group.block
    if width % repeat:
        if group.block > 1 and group.broadcasts and group.outer > 1:
            what = (f"query heads of {group.block} channels in {group.outer} key/value heads' groups, "
                    "which grow alike by whole heads")
        elif group.block > 1:
            what = f"attention heads of {group.block} channels, which grow as whole units"
        else:
            what = f"a grouped convolution with {group.outer} groups, which grow alike"
        raise GrowError(
            f"cannot widen {name!r} to {width}: its channels are {what}; use a multiple of {repeat} "
            f"(e.g. {-(-width // repeat) * repeat}).")
    if group.uniform_only and width % n and method != "random" and not padded:
        raise GrowError(
            f"cannot widen {name!r} to {width}: {', '.join(group.uniform_only[:3])} normalise over "
            f"its channels, which stays exact only when every unit is copied equally often; use a "
            f"multiple of {n} (e.g. {2 * n}).")
    widen_method(method).check_width(name, n, width, group)


def apply(graph: ir.Graph, group: gr.Group, plan: Plan) -> list[dict]:
    """Write the grown weights, shape constants, attributes and value shapes into `graph`; return
    the channel mapping of every grown weight (see `channel_map`)."""
    mappings = []
    for edit in group.edits:  # the walk lists each (node, input, axis) once
        value = edit.node.inputs[edit.index]
        array = g.constant(value)
        is_bias = edit.role == "producer" and (
            (edit.node.op_type in ("Conv", "ConvTranspose", "Gemm") and edit.index == 2))
        grown = plan.grow(array, edit, is_bias)
        plan.write(graph, edit, grown, f"{value.name}.w{plan.q}")
        mapped = plan.channel_map(array.shape[edit.axis], edit, is_bias)
        if mapped is None:  # nothing of its own changed (a tied head reading the grown table)
            continue
        index, scale = mapped
        mappings.append({"initializer": edit.node.inputs[edit.index].name, "source": value.name,
                         "axis": edit.axis, "index": index.tolist(), "scale": scale.tolist()})
    copies: dict = {}  # shape computations made private to one consumer
    for edit in group.shape_edits:
        _apply_shape_edit(graph, edit, plan.new, copies)
    for node in group.group_attrs:
        node.attributes["group"] = ir.AttrInt64("group", g.attr(node, "group") + plan.new)
    for value, slot in group.members.items():
        shape = g.static_shape(value, probe=False)
        if shape is not None and isinstance(shape[slot.axis], int):
            dims = list(value.shape)
            dims[slot.axis] = shape[slot.axis] + slot.growth(shape[slot.axis]) * plan.new
            value.shape = ir.Shape(dims)
    plan.finish(graph)
    return mappings


def channel_map(plan: Plan, dim: int, edit: gr.WeightEdit, is_bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each position along the grown axis: the old position whose value it took (−1 for a
    fresh value: random, zero or ±V) and the factor applied (net2net's split s_j; else 1).

    This is what an optimizer's state needs to follow the weights (onnxgrow.optim).
    """
    if edit.slot.also_at:  # the maps of the copies, grown one at a time, composed
        index, scale = np.arange(dim), np.ones(dim)
        for slot in one_copy_at_a_time(edit.slot, plan.new):
            step, factor = channel_map(plan, index.size, replace(edit, slot=slot), is_bias)
            index, scale = np.where(step >= 0, index[step], -1), np.where(step >= 0, scale[step], 1.0) * factor
        return index, scale
    slot, n, new = edit.slot, plan.n, plan.new
    outer = dim // (slot.total * slot.block)
    channel = np.arange(slot.total + new) - slot.offset  # relative to the group's first channel
    is_new = (channel >= n) & (channel < n + new)
    source = np.where(channel < n, channel, channel - new)
    source[is_new] = plan.src
    copied = edit.role == "param" or plan.copies_only or (
        edit.role == "producer" and (plan.method.copies_bias if is_bias else plan.method.name == "net2net")
    ) or (edit.role == "consumer" and plan.method.name == "net2net")
    scale = np.ones(channel.size)
    if edit.role == "consumer" and plan.method.name == "net2net":
        old = (channel >= 0) & (channel < n)
        scale[old], scale[is_new] = plan.s_old[channel[old]], plan.s_new
    grid_o, grid_c, grid_r = np.meshgrid(np.arange(outer), np.arange(channel.size),
                                         np.arange(slot.block), indexing="ij")
    r = grid_r
    if edit.role == "param" and plan.pairs_within(slot):  # both channels of a pair copy the first
        r = np.where(is_new[grid_c], grid_r - grid_r % 2, grid_r)
    index = grid_o * slot.total * slot.block + (slot.offset + source[grid_c]) * slot.block + r
    if not copied:
        index = np.where(is_new[grid_c], -1, index)
    return index.reshape(-1), np.broadcast_to(scale[grid_c], index.shape).reshape(-1)


def _apply_shape_edit(graph, edit: gr.ShapeEdit, new: int, copies: dict) -> None:
    node = edit.node
    if edit.attr == "split":
        axis = g.attr(node, "axis", 0) % len(gr.shape_of(node.inputs[0]))
        if len(node.inputs) > 1 and node.inputs[1] is not None:  # made by an earlier edit
            sizes = [int(v) for v in g.constant(node.inputs[1])]
        elif "split" in node.attributes:
            sizes = [int(v) for v in node.attributes["split"].value]
        else:
            sizes = [int(gr.static_dim(o, axis)) for o in node.outputs]
        sizes[edit.position] += edit.per_unit * new
        if "split" in node.attributes or ops.opset(graph) < 13:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        else:
            node.attributes.pop("num_outputs", None)
            if len(node.inputs) < 2:
                node.resize_inputs(2)
            node.replace_input_with(1, g.new_initializer(graph, f"{node.name}.split", np.array(sizes, np.int64)))
        return
    value = node.inputs[edit.index]
    if edit.attr == "arange":  # identity-gather indices: arange over the grown shape
        shape = list(g.constant(value).shape)
        shape[edit.position] += edit.per_unit * new
        indices = np.arange(int(np.prod(shape)), dtype=g.constant(value).dtype).reshape(shape)
        g.set_input_constant(graph, node, edit.index, indices, f"{value.name}.w")
        return
    if edit.consumer is not None and edit.consumer is not node:
        node = _own_shape_chain(graph, edit.consumer, node, copies)
        value = node.inputs[edit.index]
    current = g.constant(value)
    array = np.array(edit.value if current is None else current, copy=True)
    array.reshape(-1)[edit.position] += edit.per_unit * new
    g.set_input_constant(graph, node, edit.index, array, f"{value.name}.w")


def _own_shape_chain(graph: ir.Graph, consumer: ir.Node, holder: ir.Node, copies: dict) -> ir.Node:
    """Give `consumer` (which reads its shape, input 1, from a computation through `holder`) a
    private copy of that computation; return the copy of `holder` (made once per consumer)."""
    key = (id(consumer), id(holder))
    if key not in copies:
        path = _path_to(consumer.inputs[1], holder)
        if path is None:
            raise InternalError(f"the shape of {consumer.name!r} is not computed through {holder.name!r}")
        made = [_copy_node(graph, original) for original in path]
        consumer.replace_input_with(1, made[0].outputs[0])
        for user, original, copy in zip(made, path[1:], made[1:]):
            user.replace_input_with(list(user.inputs).index(original.outputs[0]), copy.outputs[0])
        graph.insert_before(consumer, list(reversed(made)))
        copies[key] = made[-1]
    return copies[key]


def _path_to(value: ir.Value | None, target: ir.Node, depth: int = 0) -> list[ir.Node] | None:
    """The nodes from `value`'s producer up to `target`, or None when it does not come from it."""
    node = None if value is None or depth > 16 else value.producer()
    if node is None:
        return None
    if node is target:
        return [node]
    for inp in node.inputs:
        rest = _path_to(inp, target, depth + 1)
        if rest is not None:
            return [node, *rest]
    return None


def _copy_node(graph: ir.Graph, original: ir.Node) -> ir.Node:
    copy = ir.Node(original.domain, original.op_type, list(original.inputs),
                   list(original.attributes.values()), num_outputs=1,
                   name=g.unique_name(graph, f"{original.name}.own"))
    out, src = copy.outputs[0], original.outputs[0]
    out.name, out.shape, out.type = g.unique_name(graph, f"{src.name}.own"), src.shape, src.type
    return copy


def widen(model, *, layer: str, width: int, method: str = "net2net", seed: int = 0,
          noise: float | None = None):
    """Widen `layer` of `model` to `width` units; return the student as an onnx.ModelProto (a
    gs.Graph when given one). `model` is a path, ModelProto, onnx_ir.Model or gs.Graph and is not
    modified."""
    student, _ = window.edit(model, [layer], lambda m: widen_model(m, layer=layer, width=width, method=method,
                                                                    seed=seed, noise=noise))
    return student
