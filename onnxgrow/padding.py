"""Growing a normalised residual stream to any width d → d′ (not only multiples of d).

Uniform replication (widening.Plan with `copies_only`) keeps every norm over the channels exact
only when d′ is a multiple of d. For any d′ > d the stream is *padded* instead:

RMSNorm, zero padding. Every producer of the stream (embedding table columns, output
projections' new rows and biases, additive constants) gives the d′ − d new channels the value 0,
so sums of stream tensors keep them 0. Over the padded x* the mean square is
    ms(x*) = (1/d′)·Σ_{i<d} x_i² = (d/d′)·ms(x),
so with ε* = (d/d′)·ε:  x_i / √(ms(x*) + ε*) = √(d′/d) · x_i / √(ms(x) + ε).
Multiplying the gain of the original channels by √(d/d′) restores every original output; the
new outputs are 0 / rms · g = 0 whatever the new gain (copies are written).

LayerNorm, mean padding (LEMON). The new channels carry μ = mean of the old ones: new producer
rows (and biases, additive constants, embedding columns) are the mean of the old rows, and a
linear map's outputs then satisfy W*_new·x = mean_i(W_i·x) = μ_out; sums of mean-padded tensors
stay mean-padded. So mean(x*) = μ, the centred new channels are 0 and
    var(x*) = (1/d′)·Σ_{i<d} (x_i − μ)² = (d/d′)·var(x);
as for RMSNorm, ε* = (d/d′)·ε and gain × √(d/d′) keep the original outputs, and a new bias of 0
makes the new outputs 0. Post-norm stacks (the norm's output, whose new channels are 0, is added
back into the stream) break "new = mean of old" for the next norm: refused, multiples only.

A gain computed as (c + w) (Gemma's RMSNorm: 1 + w) is rescaled as a whole: the old entries of
w become (c + w)·√(d/d′) − c.

Consumers. Where a consumer reads a tensor whose new channels are 0 (a norm's output, or any
RMS-stream tensor), its new input columns multiply zeros: they are drawn at random (every
preserving method: the new channels can learn; exact regardless — net2net cannot split a zero
channel, so it does the same). Where it reads a mean-padded tensor, its new columns are 0.
A norm without a gain (its normalised output reaches a consumer directly) is compensated in the
consumer instead: old columns × √(d/d′). An embedding tied to the LM head (one initializer read
by Gather and, through a Transpose, by the head) stays one initializer: its new columns are the
padding, which the head multiplies by zeros.

Which tensor carries what is found by an abstract evaluation of the group in graph order: each
member tensor's new channels are `zero`, `mean` or `other` (then nothing that reads it may be a
consumer or a norm), and `scaled` marks old channels carrying √(d′/d) not yet compensated.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import graph as g
from . import groups as gr
from . import widening as wd
from .errors import GrowError

ZERO, MEAN, OTHER = "zero", "mean", "other"
PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast", "Neg"})  # linear: any padding passes
ZERO_AT_ZERO = frozenset({"Relu", "LeakyRelu", "Tanh", "Gelu", "Erf", "Abs", "Sqrt", "Sin", "Softsign",
                          "HardSwish", "Mish", "Selu", "Elu", "Celu", "Swish", "Sign", "Round"})
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "Abs"})  # f(c·x) = c·f(x), c > 0: a scale passes
LAYOUT = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Slice",
                    "Split", "Gather", "Pad", "Concat", "Tile"})
LINEAR_REDUCE = frozenset({"ReduceMean", "ReduceSum"})


def needs_padding(group: gr.Group, n: int, width: int, method: str, at_multiples: bool = False) -> bool:
    """A normalised group grown to a non-multiple (or, `at_multiples`, to any width), by a preserving
    method: pad the stream."""
    return bool(group.uniform_only) and (at_multiples or width % n != 0) and method != "random"


def can_pad(group: gr.Group, q: int, method: str) -> bool:
    """Whether padding keeps `group` exact at q units (False for post-norm stacks, heads, …)."""
    if group.outer != 1 or group.block != 1 or not group.norms or q <= group.width:
        return False
    try:
        PadPlan(group.norms[0].graph, group, group.width, q, method, 0, "")
    except GrowError:
        return False
    return True


def pad_value(old: np.ndarray, mode: str, count: int) -> np.ndarray:
    """New entries for a 5-D channel view (…, n, block, after): zeros, or the mean over the
    old channels repeated `count` times."""
    shape = list(old.shape)
    shape[2] = count
    if mode == ZERO:
        return np.zeros(shape)
    return np.repeat(old.astype(np.float64).mean(axis=2, keepdims=True), count, axis=2)


class PadPlan:
    """The numbers for one padded widening; same interface as widening.Plan (n, q, new, grow)."""

    def __init__(self, graph: ir.Graph, group: gr.Group, n: int, q: int, method: str, seed: int,
                 layer: str, new_std: float | str | None = None):
        if group.outer != 1 or group.block != 1:
            current = n * group.outer * group.block
            raise GrowError(f"cannot widen {layer!r} to a width that is not a multiple of {current}: "
                            f"its norms ({', '.join(group.uniform_only[:2])}) average over all of its channels, "
                            "which come in heads or conv groups: they stay exact only when every one is "
                            f"copied equally often (e.g. --width {2 * current}).")
        if any(slot.also_at for slot in [*group.members.values(), *(e.slot for e in group.edits)]):
            raise GrowError(f"cannot widen {layer!r} to a width that is not a multiple of {n}: its "
                            f"norms ({', '.join(group.uniform_only[:2])}) average over its channels, and "
                            "padding does not follow a split block's parts; use a multiple "
                            f"(e.g. {2 * n}).")
        self.n, self.q, self.method, self.layer, self.new_std = n, q, method, layer, new_std
        self.rng = np.random.default_rng(seed)
        self.ratio = n / q  # d/d′
        self.group = group
        self.mode = _mode(group)
        self.state: dict = {}  # ir.Value -> (padding, scaled)
        self.fill: dict = {}  # id(WeightEdit) -> "pad" | "zero" | "mean" | "gain" | "fresh" | "fresh-gain" | "tied"
        self.variance: set = set()  # ReduceMean nodes over x² (their ε scales by d/d′)
        self.centring: set = set()  # ReduceMean nodes over x (the mean, unchanged)
        self.offsets: dict = {}  # id(gain edit) -> c of a (c + w) gain
        self.in_place: dict = {}  # id(table) -> (table, Transposes reading it): a tied embedding
        from .padding_eval import Evaluation  # it reads this module's op sets

        Evaluation(self, graph).run()

    @property
    def new(self) -> int:
        return self.q - self.n

    def sigma(self, array) -> float:
        return wd.new_sigma(self.new_std, array)

    def refuse(self, why: str):
        raise GrowError(f"cannot widen {self.layer!r} to {self.q} (not a multiple of {self.n}): {why} "
                        f"Exact growth there needs uniform replication: use a multiple of {self.n} "
                        f"(e.g. {2 * self.n}).")

    def notes(self) -> list[str]:
        how = ("zero padding (RMS norms)" if self.mode == ZERO else "mean padding (LayerNorm, LEMON)")
        return [f"stream grown by {how}: norm gains x sqrt({self.n}/{self.q}), eps x {self.n}/{self.q}; "
                "new consumer columns random (they multiply zeros; net2net cannot split a zero "
                "channel)" if self.method == "net2net" else
                f"stream grown by {how}: norm gains x sqrt({self.n}/{self.q}), eps x {self.n}/{self.q}; "
                "new consumer columns random (they multiply zeros)"]

    # ------------------------------------------------------------------ numbers for one edit
    def grow(self, array: np.ndarray, edit: gr.WeightEdit, is_bias: bool) -> np.ndarray:
        how = self.fill[id(edit)]
        if how == "tied-skip":  # the head reads the embedding table, grown in place
            return array
        slot, axis = edit.slot, edit.axis
        old = wd.take_channels(array, axis, slot, np.arange(self.n))
        shape = list(old.shape)
        shape[2] = self.new
        if how in ("pad", "tied"):
            part = pad_value(old, self.mode, self.new)
        elif how in (ZERO, MEAN):
            part = pad_value(old, how, self.new)
        elif how == "gain":  # (c + w)·√(d/d′) − c; c = 0 for a plain gain
            c, dtype = self.offsets.get(id(edit), 0.0), array.dtype
            array = (wd.scale_channels(array + c, axis, slot, np.full(self.n, np.sqrt(self.ratio))) - c).astype(dtype)
            part = wd.take_channels(array, axis, slot, np.arange(self.new) % self.n)
        else:  # fresh / fresh-gain: consumer columns that multiply zeros
            if how == "fresh-gain":
                array = wd.scale_channels(array, axis, slot, np.full(self.n, np.sqrt(self.ratio)))
            part = self.rng.normal(0.0, self.sigma(array), size=shape)
        return wd.insert_channels(array, axis, slot, self.n, part)

    def write(self, graph: ir.Graph, edit: gr.WeightEdit, grown: np.ndarray, hint: str) -> None:
        """Store `grown`; a tied embedding is rewritten in place so its readers stay one."""
        value = edit.node.inputs[edit.index]
        if self.fill[id(edit)] == "tied-skip":
            return
        if id(value) in self.in_place:
            value.const_value = ir.tensor(grown.astype(g.constant(value).dtype), name=value.name)
            value.shape = ir.Shape(grown.shape)
            g.edited(graph)  # constants folded from the table (its Transpose) are stale
            return
        g.set_input_constant(graph, edit.node, edit.index, grown, hint)

    def channel_map(self, dim: int, edit: gr.WeightEdit, is_bias: bool):
        """As widening.channel_map: old positions keep their index (gains and compensated
        consumer columns scaled by √(d/d′)); new positions are fresh (−1)."""
        how = self.fill[id(edit)]
        if how == "tied-skip":
            return None
        slot, n, new = edit.slot, self.n, self.new
        outer = dim // (slot.total * slot.block)
        channel = np.arange(slot.total + new) - slot.offset
        is_new = (channel >= n) & (channel < n + new)
        source = np.where(channel < n, channel, channel - new)
        scale = np.ones(channel.size)
        if how in ("gain", "fresh-gain"):
            scale[(channel >= 0) & (channel < n)] = np.sqrt(self.ratio)
        grid_o, grid_c, grid_r = np.meshgrid(np.arange(outer), np.arange(channel.size),
                                             np.arange(slot.block), indexing="ij")
        index = grid_o * slot.total * slot.block + (slot.offset + source[grid_c]) * slot.block + grid_r
        index = np.where(is_new[grid_c], -1, index)
        return index.reshape(-1), np.broadcast_to(scale[grid_c], index.shape).reshape(-1)

    def finish(self, graph: ir.Graph) -> None:
        """Scale ε of every norm over the stream by d/d′ (and fix a tied head's shape)."""
        for node in self.variance:
            _scale_epsilon(graph, node, self.ratio)
        for node in self.group.norms:
            if node.op_type == "LayerNormalization":
                eps = g.attr(node, "epsilon", 1e-5)
                node.attributes["epsilon"] = ir.AttrFloat32("epsilon", eps * self.ratio)
        for value_id, (value, transposes) in self.in_place.items():
            for node in transposes:
                perm = g.attr(node, "perm", None)
                dims = list(value.shape)
                node.outputs[0].shape = ir.Shape([dims[p] for p in perm] if perm else dims[::-1])


def _mode(group: gr.Group) -> str:
    """MEAN when any norm centres its input (LayerNorm), ZERO when all are RMS norms."""
    for node in group.norms:
        if node.op_type == "LayerNormalization" or not _is_square(node.inputs[0]):
            return MEAN
    return ZERO


def _is_square(value: ir.Value) -> bool:
    node = value.producer()
    if node is None:
        return False
    if node.op_type == "Mul":
        return node.inputs[0] is node.inputs[1]
    if node.op_type == "Pow":
        exponent = g.constant(node.inputs[1])
        return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0
    return False


def _scale_epsilon(graph, reduce_node: ir.Node, ratio: float) -> None:
    """The Add(ms, ε) after a ReduceMean over x²: ε × d/d′ (a new constant for this node only)."""
    for use in reduce_node.outputs[0].uses():
        node = use.node
        if node.op_type != "Add":
            continue
        other = node.inputs[1 - use.idx]
        eps = g.constant(other)
        if eps is not None and eps.size == 1:
            g.set_input_constant(graph, node, 1 - use.idx, (eps * ratio).astype(eps.dtype),
                                 f"{other.name}.eps")

