"""Whole-block copies: depth growth by residual blocks (LLaMA-Pro, MSG, LEMON, G_stack).

A residual unit is y = x + f(x): an Add whose one input is the stream x itself and whose other
input is a branch computed from x alone (every node between x and the Add is used only on the
way to it); a ReLU right after the Add (ResNet's relu(x + f(x))) belongs to the unit. A *block*
is a run of consecutive units that one module owns: a transformer layer (attention unit, then MLP
unit, under `model.layers.3`), a ResNet basic or bottleneck block, a ConvNeXt block. Without
module names every unit is a block of its own.

Copying block B after itself: the copy B′ reads B's output y and every former reader of y reads
B′'s output instead. B′ starts from B's trained weights (new initializers; constants that several
layers share, and tensors from outside the block such as the attention mask or the rotary
cos/sin tables, are shared read-only), and each of its branches is made to output exactly 0, so
B′(y) = y + 0 = y:
- zero (LLaMA-Pro): the branch's last layer — o_proj, down_proj, the last conv — gets zero weight
  and bias; a BatchNorm after it gets zero scale and shift, a layer scale γ becomes 0. The
  output projections get gradients at once, the rest once they move.
- r2r: the last layer's input units are made to come in identical pairs (the layers producing
  them copy unit 2i into 2i+1, through the coupled group, inside each attention head) and its
  weight columns become +V and −V per pair: W·h = Σ V·hᵢ − V·hᵢ = 0 for every input, while every
  weight of the branch gets a gradient from the first step.
A ResNet unit ends in a ReLU: its copy computes relu(y + 0) = y exactly because y, the output of
B's own ReLU, is non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from . import graph as g
from . import groups as gr
from . import names, ops
from .checkpoints import history
from .errors import GrowError
from .methods import pairs_inside_heads
from .summary import summary

BLOCK_METHODS = ("zero", "r2r")


@dataclass
class Unit:
    """y = x + f(x), and the nodes of f (the Add and a following ReLU included)."""

    x: ir.Value
    add: ir.Node
    branch: ir.Value
    nodes: list
    post: ir.Node | None = None

    @property
    def out(self) -> ir.Value:
        return (self.post or self.add).outputs[0]


@dataclass
class Block:
    index: int
    path: str | None
    units: list = field(default_factory=list)

    @property
    def x(self) -> ir.Value:
        return self.units[0].x

    @property
    def out(self) -> ir.Value:
        return self.units[-1].out

    def describe(self) -> dict:
        layers = [n for u in self.units for n in u.nodes if g.is_weight_layer(n)]
        return {"index": self.index, "path": self.path, "units": len(self.units),
                "first": layers[0].name if layers else None, "last": layers[-1].name if layers else None,
                "attention": any(_is_attention(u) for u in self.units)}


# ----------------------------------------------------------------------------- finding blocks


def find_blocks(model: ir.Model) -> list[Block]:
    """The residual blocks of `model` in graph order (see the module docstring)."""
    graph = model.graph
    order = {id(n): i for i, n in enumerate(graph)}
    units = [u for node in graph if node.op_type == "Add" and ops.is_onnx(node)
             for u in [_unit(node, order)] if u is not None]
    blocks: list[Block] = []
    for unit in units:
        path = _owner(unit)
        last = blocks[-1] if blocks else None
        if (last is not None and path is not None and last.path == path and last.out is unit.x):
            last.units.append(unit)
        else:
            blocks.append(Block(len(blocks), path, [unit]))
    return blocks


def _unit(add: ir.Node, order: dict) -> Unit | None:
    if len(add.inputs) != 2 or any(v is None or g.constant(v) is not None for v in add.inputs):
        return None
    for x, branch in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        nodes = _between(x, branch, order[id(add)], order)
        if nodes and any(g.is_weight_layer(n) for n in nodes) and _closed(nodes, add):
            post = _post_relu(add)
            return Unit(x, add, branch, nodes + [add] + ([post] if post else []), post)
    return None


def _between(x: ir.Value, y: ir.Value, limit: int, order: dict) -> list[ir.Node]:
    """The nodes on paths from x to y (in graph order), or [] when y does not depend on x."""
    forward, stack = set(), [u.node for u in x.uses()]
    while stack:
        node = stack.pop()
        if id(node) in forward or order.get(id(node), limit) >= limit:
            continue
        forward.add(id(node))
        stack += [u.node for out in node.outputs if out is not None for u in out.uses()]
    found, stack = {}, [y.producer()]
    while stack:
        node = stack.pop()
        if node is None or id(node) in found or id(node) not in forward:
            continue
        found[id(node)] = node
        stack += [v.producer() for v in node.inputs if v is not None]
    return sorted(found.values(), key=lambda n: order[id(n)])


def _closed(nodes: list, add: ir.Node) -> bool:
    """Every value made inside the branch is read only inside it (or by the Add)."""
    inside = {id(n) for n in nodes} | {id(add)}
    return all(not out.is_graph_output() and all(id(u.node) in inside for u in out.uses())
               for n in nodes for out in n.outputs if out is not None)


def _post_relu(add: ir.Node) -> ir.Node | None:
    uses = list(add.outputs[0].uses())
    if len(uses) == 1 and uses[0].node.op_type == "Relu" and not add.outputs[0].is_graph_output():
        return uses[0].node
    return None


def _owner(unit: Unit) -> str | None:
    """The module owning a unit: the common prefix of its layers' module paths, up to the last
    indexed child in it (layers.3, layer1.0) when that names attributes below one (`layers.3.mlp`,
    nn.MultiheadAttention's `blocks.0.attn.attn`)."""
    paths = [names.module_path(n) for n in unit.nodes if g.is_weight_layer(n)]
    if not paths or any(p is None for p in paths):
        return None
    parts = [p.split(".") for p in paths]
    common = []
    for column in zip(*parts):
        if len(set(column)) > 1:
            break
        common.append(column[0])
    if len(paths) == 1:
        common = common[:-1]  # a lone layer's own path names the layer, not its block
    indexed = [i for i, part in enumerate(common) if part.isdigit()]
    if indexed:
        common = common[:indexed[-1] + 1]  # `layers.3.self_attn` and `layers.3.mlp` make one block, `layers.3`
    return ".".join(common) or None


def _is_attention(unit: Unit) -> bool:
    return any(n.op_type == "Softmax" for n in unit.nodes)


def resolve_block(blocks: list[Block], text: str) -> Block:
    """A block by module path (or a unique dotted suffix of one) or by its index."""
    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(blocks):
            return blocks[index]
    else:
        exact = [b for b in blocks if b.path == text]
        matches = exact or [b for b in blocks if b.path and b.path.endswith("." + text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise GrowError(f"{text!r} names {len(matches)} blocks: "
                            + ", ".join(f"{b.index} ({b.path})" for b in matches) + ".")
    listing = ", ".join(f"{b.index}" + (f" ({b.path})" if b.path else "") for b in blocks[:20]) or "none"
    raise GrowError(f"no residual block {text!r} in the model. Blocks: {listing}. Name one by its "
                    "module path or index; `onnxgrow inspect MODEL` lists them.")


# ----------------------------------------------------------------------------- copying


def copy_block(model: ir.Model, block: str, method: str = "zero", seed: int = 0) -> dict:
    """Insert a copy of residual block `block` right after it, its branches made to output 0
    (`zero` or `r2r`), in place; return the summary."""
    if method not in BLOCK_METHODS:
        raise GrowError(f"unknown block method {method!r}: choose one of {', '.join(BLOCK_METHODS)}.")
    graph = model.graph
    g.prepare(model)
    chosen = resolve_block(find_blocks(model), block)
    before = g.parameter_count(model)
    nodes = _with_constant_inputs([n for u in chosen.units for n in u.nodes])
    event = history.note_copy(graph, {"block": chosen.path, "index": chosen.index, "as": _next_path(chosen.path)})
    mapping, copies = _copy_nodes(graph, nodes, chosen.x, chosen.out, event)
    rng = np.random.default_rng(seed)
    for unit in chosen.units:
        branch = mapping[unit.branch]
        if method == "zero":
            _zero_branch(graph, branch, mapping)
        else:
            _pair_branch(graph, branch, rng)
    old_out, new_out = chosen.out, mapping[chosen.out]
    graph.insert_after(old_out.producer(), copies)
    _rewire(graph, old_out, new_out, copies)
    g.edited(graph)
    g.remove_unused(model)
    where = chosen.path or f"block {chosen.index}"
    lines = [f"copied {where} ({len(chosen.units)} residual unit(s), {len(copies)} nodes) after itself, "
             f"method {method}: its branches output 0, so the model computes what it did"]
    return summary("deepen", lines, before, g.parameter_count(model), block=chosen.describe(),
                   method=method, nodes=[n.name for n in copies])


def _next_path(path: str | None) -> str | None:
    """The module path a copy of an indexed block takes in a checkpoint: `model.layers.3` →
    `model.layers.4` (later items shift by one); None for blocks that are not items of a list."""
    container, _, index = (path or "").rpartition(".")
    return f"{container}.{int(index) + 1}" if container and index.isdigit() else None


def _with_constant_inputs(nodes: list) -> list:
    """`nodes` plus the constant-only computations only they read (weights behind a Transpose)."""
    chosen = {id(n): n for n in nodes}
    changed = True
    while changed:
        changed = False
        for node in list(chosen.values()):
            for value in node.inputs:
                producer = None if value is None else value.producer()
                if (producer is None or id(producer) in chosen or g.constant(value) is None
                        or any(id(u.node) not in chosen for u in value.uses())):
                    continue
                chosen[id(producer)] = producer
                changed = True
    graph_order = {id(n): i for i, n in enumerate(nodes[0].graph)}
    return sorted(chosen.values(), key=lambda n: graph_order[id(n)])


def _copy_nodes(graph: ir.Graph, nodes: list, x: ir.Value, out: ir.Value, event: int):
    """Copies of `nodes` reading `out` where the originals read `x`; weights only they read are
    copied too (recorded as copy `event` in the growth history). Returns (value mapping, new
    nodes in order)."""
    inside = {id(n) for n in nodes}
    mapping: dict = {x: out}
    made = []
    for node in nodes:
        inputs = [None if v is None else mapping.get(v) or _own_weight(graph, v, inside, mapping, event)
                  for v in node.inputs]
        copy = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                       num_outputs=len(node.outputs), name=g.unique_name(graph, f"{node.name}.copy"))
        for old, new in zip(node.outputs, copy.outputs):
            new.name = g.unique_name(graph, f"{old.name}.copy")
            new.shape, new.type = old.shape, old.type
            mapping[old] = new
        made.append(copy)
    return mapping, made


def _own_weight(graph, value: ir.Value, inside: set, mapping: dict, event: int) -> ir.Value:
    """A float initializer read only inside the block gets a copy; anything else is shared."""
    if (value.is_initializer() and value.const_value is not None and value.const_value.dtype in g.FLOAT_TYPES
            and value.const_value.size > 1 and all(id(u.node) in inside for u in value.uses())):
        mapping[value] = g.new_initializer(graph, f"{value.name}.copy", value.const_value.numpy())
        history.note_derived(graph, mapping[value].name, value, event)
        return mapping[value]
    return value


def _rewire(graph: ir.Graph, old: ir.Value, new: ir.Value, copies: list) -> None:
    own = {id(n) for n in copies}
    for use in list(old.uses()):
        if id(use.node) not in own:
            use.node.replace_input_with(use.idx, new)
    for i, value in enumerate(graph.outputs):
        if value is old:
            graph.outputs[i] = new
            name = old.name
            old.name = g.unique_name(graph, f"{name}/before_copy")
            new.name = name


# ----------------------------------------------------------------------------- zero branches


def _zero_branch(graph: ir.Graph, value: ir.Value, mapping: dict) -> None:
    """Make `value` (a branch output of the copy) exactly 0 by zeroing where it is made."""
    node = value.producer()
    if node is None:
        raise GrowError(f"the branch output {value.name!r} is not computed inside the block.")
    if g.is_weight_layer(node):
        _set_zero(graph, node, 1)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            _set_zero(graph, node, 2)
        return
    if node.op_type == "BatchNormalization":
        _set_zero(graph, node, 1)
        _set_zero(graph, node, 2)
        return
    data = [v for v in node.inputs if v is not None and g.constant(v) is None]
    if node.op_type in ("Add", "Sub") and len(data) == 2:  # two branches meeting (parallel residual)
        for v in data:
            _zero_branch(graph, v, mapping)
        return
    if node.op_type == "Mul" and len(data) == 2:  # a gate (squeeze-excite): zero the gated side
        gated = [v for v in data if v.producer() is None or v.producer().op_type not in ("Sigmoid", "HardSigmoid")]
        _zero_branch(graph, (gated or data)[0], mapping)
        return
    if node.op_type == "Mul" and len(data) == 1 and len(node.inputs) == 2:  # a layer scale γ
        _set_zero(graph, node, [i for i, v in enumerate(node.inputs) if v is not data[0]][0])
        return
    if node.op_type in ("Add", "Sub") and len(data) == 1:  # a bias after the layer
        _set_zero(graph, node, [i for i, v in enumerate(node.inputs) if v is not data[0]][0])
        _zero_branch(graph, data[0], mapping)
        return
    if node.op_type in ops.RELAYOUT and data:
        _zero_branch(graph, data[0], mapping)
        return
    raise GrowError(f"cannot make the copied branch output exactly 0: it ends in a {node.op_type} "
                    f"node ({node.name!r}) onnxgrow does not zero through.")


def _set_zero(graph: ir.Graph, node: ir.Node, index: int) -> None:
    value = node.inputs[index]
    array = g.constant(value)
    if array is None:
        raise GrowError(f"input {index} of {node.name!r} is computed at run time; cannot zero it.")
    g.set_input_constant(graph, node, index, np.zeros_like(array), f"{value.name}.zero")


# ----------------------------------------------------------------------------- r2r branches


def _pair_branch(graph: ir.Graph, value: ir.Value, rng: np.random.Generator) -> None:
    """r2r: the branch's last layer reads units in identical pairs with weights +V/−V."""
    for last, trailing, group in _r2r_targets(value):
        _zero_offsets(graph, last, trailing)
        _pair_group(graph, group, rng)


def _r2r_targets(value: ir.Value) -> list[tuple]:
    """(last layer, the affine ops after it, the coupled group of its input units) for each
    branch ending in `value`; GrowError when r2r cannot pair it."""
    node, trailing = value.producer(), []
    while node is not None and not g.is_weight_layer(node):
        data = [v for v in node.inputs if v is not None and g.constant(v) is None]
        if node.op_type in ("Add", "Sub") and len(data) == 2:
            return [t for v in data for t in _r2r_targets(v)]
        if len(data) != 1 or node.op_type not in ops.RELAYOUT | {"Add", "Mul", "BatchNormalization"}:
            raise GrowError(f"r2r cannot pair a branch ending in {node.op_type} ({node.name!r}); "
                            "use --method zero.")
        trailing.append(node)
        node = data[0].producer()
    if node is None:
        raise GrowError("r2r found no layer at the end of the branch; use --method zero.")
    group = _input_group(node)
    if [c for c in group.consumers if c is not node]:
        raise GrowError(f"the units {node.name!r} reads are also read elsewhere in the branch, so "
                        "pairing them would change it; use --method zero.")
    if group.width % 2 and not pairs_inside_heads(group):
        raise GrowError(f"r2r pairs the {group.width} units {node.name!r} reads, an odd number; use "
                        "--method zero.")
    return [(node, trailing, group)]


def _pair_group(graph: ir.Graph, group, rng: np.random.Generator) -> None:
    """Producers copy unit 2i into 2i+1 (inside each head when the units are heads); the
    consumer's columns become +V, −V per pair."""
    # whole heads in pairs when their number is even (q, k and v of a pair agree, so the query and
    # key weights get gradients too); else the channels inside each head, or whole units
    k = 2 if pairs_inside_heads(group) and group.width % 2 else 1
    even, odd = [slice(None)] * 4, [slice(None)] * 4
    even[k], odd[k] = slice(0, None, 2), slice(1, None, 2)
    for edit in group.edits:
        array = g.constant(edit.node.inputs[edit.index])
        axis, block = edit.axis, edit.slot.block
        before = int(np.prod(array.shape[:axis], dtype=np.int64))
        after = int(np.prod(array.shape[axis + 1:], dtype=np.int64))
        view = array.reshape(before, array.shape[axis] // block, block, after).astype(np.float64)
        if edit.role == "consumer":
            v = rng.normal(0.0, float(np.std(array)) or 1.0, size=view[tuple(even)].shape)
            view[tuple(even)], view[tuple(odd)] = v, -v
        else:
            view[tuple(odd)] = view[tuple(even)]
        g.set_input_constant(graph, edit.node, edit.index, view.reshape(array.shape).astype(array.dtype),
                             f"{edit.node.inputs[edit.index].name}.r2r")


def block_methods(block: Block) -> tuple[list[str], dict[str, str]]:
    """The block-copy methods that apply to `block` (what inspect promises), and why not r2r."""
    try:
        for unit in block.units:
            _r2r_targets(unit.branch)
    except GrowError as exc:
        return ["zero"], {"r2r": str(exc)}
    return ["zero", "r2r"], {}


def _zero_offsets(graph: ir.Graph, layer: ir.Node, after: list) -> None:
    """The layer's output W·h is 0 once paired; what follows must map 0 to 0: the layer's bias,
    bias Adds and a BatchNorm's shift and mean become 0 (scales stay: they keep 0 at 0)."""
    if layer.op_type in ("Conv", "ConvTranspose", "Gemm") and len(layer.inputs) > 2 and layer.inputs[2] is not None:
        _set_zero(graph, layer, 2)
    for node in after:
        if node.op_type == "BatchNormalization":
            _set_zero(graph, node, 2)
            _set_zero(graph, node, 3)
        elif node.op_type in ("Add", "Sub"):
            _set_zero(graph, node, next(i for i, v in enumerate(node.inputs) if g.constant(v) is not None))


def _input_group(layer: ir.Node):
    """The coupled group of the units `layer` reads: that of the nearest upstream layer whose
    group `layer` consumes."""
    seen, queue, reason = set(), [layer.inputs[0]], None
    while queue:
        value = queue.pop(0)
        node = None if value is None else value.producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if g.is_weight_layer(node):
            try:
                group = gr.find_group(node)
            except GrowError as exc:
                reason = reason or str(exc)
                continue
            if any(c is layer for c in group.consumers):
                return group
            continue
        queue += [i for i in node.inputs if i is not None and g.constant(i) is None]
    raise GrowError(f"r2r cannot pair the units {layer.name!r} reads"
                    + (f" ({reason})" if reason else "") + "; use --method zero.")
