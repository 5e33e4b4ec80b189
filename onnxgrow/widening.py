"""Widening a coupled group from n to q units: net2net, netmorph, r2r and random.

New unit j (n ≤ j < q) takes a source unit src(j) < n; c_i counts the units (old and new) that
are copies of unit i. Where a group's tensors carry the n channels (see groups.Slot), the new
channels are inserted right after them. What each kind of weight gets:

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
the weight being grown, so new units start at the scale of the old.

Groups that normalise over their channels (LayerNorm over channels, RMSNorm, a hand-written
LayerNorm2d: `Group.uniform_only`) keep their statistics only if every unit is copied equally
often, so there every preserving method makes the new producer units copies (q a multiple of n):
netmorph then gives the copies zero outgoing weights, and r2r pairs each copy with its original,
adding +V to the original's outgoing weights and −V to the copy's (W_i·x + V·x − V·x = W_i·x).
Widths that are not a multiple pad the stream instead (zero under RMS norms, the mean under
pre-norm LayerNorm): padding.PadPlan, which offers the same interface as Plan.

When the units are attention heads (groups.Group.block = head size), r2r pairs the channels inside
each new head instead of pairing heads: a new head's value channels 2i and 2i+1 are equal, so the
output projection's +V/−V on them cancels whatever the attention weights are, and any number of
heads can be added.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import graph as g
from . import groups as gr
from .errors import GrowError, InternalError

METHODS = ("net2net", "netmorph", "r2r", "random")
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


def insert_channels(array, axis, slot, n, new_part) -> np.ndarray:
    """`array` with `new_part` (5-D, k channels) inserted after the group's n channels."""
    view = _view(array, axis, slot)
    at = slot.offset + n
    grown = np.concatenate([view[:, :, :at], new_part.astype(array.dtype), view[:, :, at:]], axis=2)
    shape = list(array.shape)
    shape[axis] = grown.shape[1] * grown.shape[2] * grown.shape[3]
    return grown.reshape(shape)


def scale_channels(array, axis, slot, factors) -> np.ndarray:
    view = _view(array, axis, slot).astype(np.float64)
    view[:, :, slot.offset:slot.offset + len(factors)] *= np.asarray(factors)[None, None, :, None, None]
    return view.reshape(array.shape).astype(array.dtype)


# ----------------------------------------------------------------------------- the plan


class Plan:
    """The numbers for one widening: method, sizes, sources, splits and the random stream."""

    def __init__(self, n: int, q: int, method: str, seed: int, noise: float, uniform: bool = False,
                 block: int = 1):
        self.n, self.q, self.method = n, q, method
        self.copies_only = uniform and method != "random"  # new units must replicate old ones
        # r2r on attention heads pairs the channels inside each new head (any number of heads)
        self.pair_axis = 3 if method == "r2r" and not uniform and block > 1 and block % 2 == 0 else 2
        self.block = block
        self.rng = np.random.default_rng(seed)
        paired = method == "r2r" and not uniform and self.pair_axis == 2
        self.src = source_units(n, q - n, self.rng, paired=paired)
        self.s_old, self.s_new = split_factors(n, self.src, noise if method == "net2net" else 0.0, self.rng)

    @property
    def new(self) -> int:
        return self.q - self.n

    def _random_like(self, array, shape, pairs=False):
        """N(0, std(array)²) of `shape` (5-D); with `pairs`, equal in pairs along pair_axis."""
        sigma = float(np.std(array)) or 1.0
        if not pairs:
            return self.rng.normal(0.0, sigma, size=shape)
        half = list(shape)
        half[self.pair_axis] //= 2
        return np.repeat(self.rng.normal(0.0, sigma, size=half), 2, axis=self.pair_axis)

    def write(self, graph: ir.Graph, edit: gr.WeightEdit, grown: np.ndarray, hint: str) -> None:
        g.set_input_constant(graph, edit.node, edit.index, grown, hint)

    def finish(self, graph: ir.Graph) -> None:
        """Nothing beyond the weights: replication keeps every norm's statistics."""

    def _pairs_within(self, slot) -> bool:
        return self.pair_axis == 3 and slot.block == self.block

    def grow(self, array: np.ndarray, edit: gr.WeightEdit, is_bias: bool) -> np.ndarray:
        slot, axis = edit.slot, edit.axis
        copies = take_channels(array, axis, slot, self.src)
        if edit.role == "param" and self._pairs_within(slot):
            copies = copies.copy()
            copies[:, :, :, 1::2] = copies[:, :, :, 0::2]  # both channels of a pair agree
        if edit.role == "param" or (edit.role == "producer" and (
                self.method == "net2net" or self.copies_only)):
            return insert_channels(array, axis, slot, self.n, copies)
        if edit.role == "producer":
            if is_bias:
                return insert_channels(array, axis, slot, self.n, np.zeros_like(copies))
            if self.method == "r2r" and self.pair_axis == 3 and not self._pairs_within(slot):
                raise InternalError("a head's producer without the head's channel blocks")
            part = self._random_like(array, copies.shape, pairs=self.method == "r2r")
            return insert_channels(array, axis, slot, self.n, part)
        # consumer columns
        if self.method == "net2net":
            scaled = scale_channels(array, axis, slot, self.s_old)
            part = copies * self.s_new[None, None, :, None, None]
            return insert_channels(scaled, axis, slot, self.n, part)
        if self.method == "netmorph":
            return insert_channels(array, axis, slot, self.n, np.zeros_like(copies))
        if self.method == "r2r" and self.copies_only:  # pair each copy with its original
            v = self.rng.normal(0.0, float(np.std(array)) or 1.0, size=copies.shape)
            view = _view(array, axis, slot).astype(np.float64)
            np.add.at(view, (slice(None), slice(None), slot.offset + self.src), v)
            return insert_channels(view.reshape(array.shape).astype(array.dtype), axis, slot, self.n, -v)
        if self.method == "r2r":  # +V, −V on each pair (of units, or of channels in a head)
            k = self.pair_axis
            half = list(copies.shape)
            half[k] //= 2
            v = self.rng.normal(0.0, float(np.std(array)) or 1.0, size=half)
            part = np.stack([v, -v], axis=k + 1).reshape(copies.shape)
            return insert_channels(array, axis, slot, self.n, part)
        return insert_channels(array, axis, slot, self.n, self._random_like(array, copies.shape))


# ----------------------------------------------------------------------------- entry points


def widen_model(model: ir.Model, *, layer: str, width: int, method: str = "net2net", seed: int = 0,
                noise: float | None = None) -> dict:
    """Widen `layer` of `model` (in place) to `width` units; return a summary for the CLI."""
    from . import padding  # it builds on this module's channel helpers
    if method not in METHODS:
        raise GrowError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    noise = DEFAULT_NOISE if noise is None else float(noise)
    if not 0.0 <= noise < 1.0:
        raise GrowError(f"--noise {noise}: the replica split needs 0 <= noise < 1 to keep every "
                        "share positive.")
    graph = model.graph
    node = g.find_node(graph, layer)
    g.infer_shapes(model)
    group = gr.find_group(node)
    repeat = group.outer * group.block
    n = group.width * repeat
    padded = padding.needs_padding(group, n, width, method)
    check_width(node, n, width, method, group, padded)
    params_before = g.parameter_count(model)
    if padded:
        plan = padding.PadPlan(graph, group, group.width, width // repeat, method, seed, layer)
    else:
        plan = Plan(group.width, width // repeat, method, seed, noise, uniform=bool(group.uniform_only),
                    block=group.block)
    apply(graph, group, plan)
    g.remove_unused(model)
    params_after = g.parameter_count(model)
    members = [x.name for x in group.producers + group.consumers if x is not node]
    return {
        "layer": layer, "method": method, "seed": seed, "noise": noise if method == "net2net" else None,
        "width": [n, width], "producers": [x.name for x in group.producers],
        "consumers": [x.name for x in group.consumers], "parameters": [params_before, params_after],
        "lines": [
            f"widened {layer}: {n} -> {width} units ({method}"
            + (f", noise {noise}" if method == "net2net" else "") + ")",
            f"coupled group: {len(group.producers)} producer(s), {len(group.consumers)} consumer(s)"
            + (f": {', '.join(members[:8])}{' ...' if len(members) > 8 else ''}" if members else ""),
            f"parameters: {params_before:,} -> {params_after:,}",
        ] + (plan.notes() if padded else []),
    }


def check_width(node, n: int, width: int, method: str, group: gr.Group, padded: bool = False) -> None:
    """Refuse widths the group cannot take; `padded`: a normalised stream grown by padding."""
    name = node.name
    if width <= n:
        raise GrowError(f"{name!r} has {n} units; --width must be larger than that (got {width}). "
                        "onnxgrow only grows models.")
    repeat = group.outer * group.block
    if width % repeat:
        what = (f"attention heads of {group.block} channels" if group.block > 1 else
                f"a grouped convolution with {group.outer} groups")
        raise GrowError(
            f"cannot widen {name!r} to {width}: its channels are {what}, which grow as whole "
            f"units; use a multiple of {repeat} (e.g. {2 * n}).")
    if group.uniform_only and width % n and method != "random" and not padded:
        raise GrowError(
            f"cannot widen {name!r} to {width}: {', '.join(group.uniform_only[:3])} normalise over "
            f"its channels, which stays exact only when every unit is copied equally often; use a "
            f"multiple of {n} (e.g. {2 * n}).")
    heads_pair_inside = group.block > 1 and group.block % 2 == 0
    if method == "r2r" and not group.uniform_only and not heads_pair_inside and ((width - n) // repeat) % 2:
        if repeat > 1:
            unit = "attention heads" if group.block > 1 else "channels per conv group"
            raise GrowError(
                f"r2r adds units in ±V pairs, and {name!r} grows by whole {unit} ({repeat} channels "
                f"each): {width} gives {(width - n) // repeat} new ones, an odd number. Use --width "
                f"{width - repeat} or {width + repeat}, or another method.")
        raise GrowError(
            f"r2r adds units in ±V pairs, so the increase must be even: {width} - {n} = {width - n} "
            f"is odd. Use --width {width - 1} or {width + 1}, or another method.")


def apply(graph: ir.Graph, group: gr.Group, plan: Plan) -> None:
    """Write the grown weights, shape constants, attributes and value shapes into `graph`."""
    done = set()
    for edit in group.edits:
        key = (id(edit.node), edit.index, edit.axis, edit.role)
        if key in done:
            continue
        done.add(key)
        value = edit.node.inputs[edit.index]
        array = g.constant(value)
        is_bias = edit.role == "producer" and (
            (edit.node.op_type in ("Conv", "ConvTranspose", "Gemm") and edit.index == 2))
        grown = plan.grow(array, edit, is_bias)
        plan.write(graph, edit, grown, f"{value.name}.w{plan.q}")
    for edit in group.shape_edits:
        _apply_shape_edit(graph, edit, plan.new)
    for node in group.group_attrs:
        node.attributes["group"] = ir.AttrInt64("group", g.attr(node, "group") + plan.new)
    for value, slot in group.members.items():
        shape = g.static_shape(value, probe=False)
        if shape is not None and isinstance(shape[slot.axis], int):
            dims = list(value.shape)
            dims[slot.axis] = shape[slot.axis] + shape[slot.axis] // slot.total * plan.new
            value.shape = ir.Shape(dims)
    plan.finish(graph)


def _apply_shape_edit(graph, edit: gr.ShapeEdit, new: int) -> None:
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
        if "split" in node.attributes or _opset(graph) < 13:
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
    array = np.array(g.constant(value), copy=True)
    array.reshape(-1)[edit.position] += edit.per_unit * new
    g.set_input_constant(graph, node, edit.index, array, f"{value.name}.w")


def _opset(graph) -> int:
    return graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 1))


def widen(model, *, layer: str, width: int, method: str = "net2net", seed: int = 0,
          noise: float | None = None):
    """Widen `layer` of `model` to `width` units; return the student as an onnx.ModelProto (a
    gs.Graph when given one). `model` is a path, ModelProto, onnx_ir.Model or gs.Graph and is not
    modified."""
    ir_model = g.load(model)
    widen_model(ir_model, layer=layer, width=width, method=method, seed=seed, noise=noise)
    return g.like_input(model, ir_model)
