"""The teacher's state-dict keys found among the student's initializers.

Every float key K of the teacher's checkpoint (tensor T, torch layout) is matched to one *root*
— an initializer of the ONNX the growth started from (history.py) — by evidence, strongest first:

1. by name: the root is called K, or ends in `.K` (a wrapper module's prefix, `lm.model…`);
2. by module path: the root is read (directly, or behind a Transpose/Cast) by a node that the
   module owning K computed (`model.layers.0.self_attn.q_proj` for `…q_proj.weight`): the
   optimising dynamo exporter stores a Linear's weight transposed as `val_155`;
3. by value alone, when exactly one root matches;

and every candidate is *confirmed by values*: T, in the root's layout (as it is, transposed, or
with the root's extra size-1 axes), equals the root's fingerprint at the 16 sampled positions. A
key no root confirms is a mismatch (the ONNX did not come from this checkpoint).

A root lives on in the student as one initializer per *instance*: the original, and one per block
copy it went through (history.origins). The original keeps K; a copy of block `model.layers.3`
becomes a new item of the container `model.layers`, and every item of a container a copy went
into is renumbered by its position in the student's graph (the copy of 3 right after it is 4,
the old 4 is 5, …). A copy has a place in a state dict only as an item of a ModuleList or
Sequential; other copies, and layers inserted by `deepen --after`, are refused with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .. import graph as g
from .. import names, ops
from ..errors import GrowError
from . import history

WRAPPERS = ops.WEIGHT_WRAPPERS | {"Reshape", "Unsqueeze", "Squeeze"}  # a bias or gain can sit behind these too


@dataclass
class Placed:
    """One key of the student's state dict: where its tensor is and how to lay it out."""

    key: str
    teacher_key: str
    initializer: str | None  # None: a key the ONNX does not hold (copied as the teacher has it)
    layout: str = "same"  # "same", "T" (2-D transpose), "squeeze" (the ONNX's size-1 axes), "plus1" (1 + w)


class Teacher:
    """The teacher's tensors, read one at a time: {key: shape}, is_float, array(key) → float32."""

    def __init__(self, shapes: dict, floats: set, loader):
        self.shapes, self.floats, self._loader = shapes, floats, loader

    def array(self, key: str) -> np.ndarray:
        return self._loader(key)


def place(model: ir.Model, teacher: Teacher) -> tuple[list[Placed], dict]:
    """The student's keys in the teacher's order (copies after their originals' container
    renumbered), and a report {"matched": {how: count}, "copies": [...]}; a GrowError naming the
    first mismatches when the ONNX did not come from `teacher`."""
    graph = model.graph
    hist = history.read(history.metadata_of(model))
    live = {name for name, v in graph.initializers.items()
            if v.const_value is not None and v.const_value.dtype in g.FLOAT_TYPES}
    origin = history.origins(hist, live)
    prints = hist["roots"] if hist else {n: history.fingerprint(graph.initializers[n].const_value.numpy())
                                         for n in live}
    instances: dict[str, list] = defaultdict(list)  # root -> [(live name, events, transposed)]
    for name, (root, events, flipped) in origin.items():
        instances[root].append((name, events, flipped))
    readers = _readers(graph)
    _refuse_inserted(graph, live - set(origin), readers)
    scopes = {root: {s for name, events, _ in found if not events for s in readers[name][1]}
              for root, found in instances.items()}

    matched, missing, how_counts = {}, [], defaultdict(int)
    for key in teacher.shapes:
        if key not in teacher.floats:
            continue
        found = _match(key, teacher, prints, instances, scopes)
        if found is None:
            missing.append(key)
            continue
        root, layout, how = found
        matched[key] = (root, layout)
        how_counts[how] += 1
    if missing:
        raise GrowError(_mismatch_message(missing, teacher, prints))
    _refuse_extra(graph, teacher, prints, {r for r, _ in matched.values()}, instances)

    copies = history.copies(hist)
    placed, renames = [], _renumber(matched, instances, copies, readers, teacher)
    for key in teacher.shapes:
        if key not in matched:
            placed += [Placed(new_key, key, None) for new_key in (renames[key].values() if key in renames else [key])]
            continue
        root, layout = matched[key]
        for name, events, flipped in _one_per_instance(key, instances[root], readers):
            new_key = renames[key].get(events, key) if key in renames else key
            placed.append(Placed(new_key, key, name, _flip(layout) if flipped else layout))
    placed.sort(key=lambda p: _natural(p.key))
    return placed, {"matched": dict(how_counts), "copies": list(copies.values())}


def _one_per_instance(key: str, found: list, readers) -> list:
    """One live initializer per block instance. A root can live on twice in one instance when
    growth gave two readers of one weight different tensors (a tied LM head split by net2net,
    reading the table through a Transpose): the key's own module's reader wins, else the first."""
    module = key.rpartition(".")[0]
    by_events: dict[tuple, list] = defaultdict(list)
    for item in found:
        by_events[item[1]].append(item)
    chosen = []
    for items in by_events.values():
        own = [i for i in items if any(_owned_by(s, module) for s in readers[i[0]][1])]
        chosen.append(min(own or items, key=lambda i: readers[i[0]][0]))
    return chosen


def _owned_by(name: str, owner: str) -> bool:
    """`name` is `owner`, or `owner` under a wrapper's prefix (`lm.model.norm` for `model.norm`)."""
    return bool(owner) and (name == owner or name.endswith("." + owner))


def _flip(layout: str) -> str:
    if layout in ("squeeze", "plus1"):
        raise GrowError("a weight held with extra size-1 axes was transposed by growth; cannot lay it out.")
    return "T" if layout == "same" else "same"


# ----------------------------------------------------------------------------- matching one key


def _match(key, teacher, prints, instances, scopes):
    module = key.rpartition(".")[0]
    by_name = [r for r in instances if _owned_by(r, key)]
    by_scope = [r for r in instances if r not in by_name and any(_owned_by(s, module) for s in scopes.get(r, ()))]
    shape = teacher.shapes[key]
    array = None
    for how, candidates in (("name", by_name), ("module path", by_scope)):
        for root in candidates:
            if _fits(shape, prints[root]["shape"]) is None:
                continue
            array = teacher.array(key) if array is None else array
            layout = confirm(array, prints[root])
            if layout is not None:
                return root, layout, how
    # by value alone: exactly one root whose values are the key's
    fitting = [r for r in instances if _fits(shape, prints[r]["shape"]) is not None]
    if not fitting or int(np.prod(shape, dtype=np.int64)) < 2:
        return None
    array = teacher.array(key) if array is None else array
    found = [(r, lay) for r in fitting for lay in [confirm(array, prints[r])] if lay is not None]
    if len(found) == 1:
        return found[0][0], found[0][1], "value"
    return None


def _fits(shape, onnx_shape) -> str | None:
    shape, onnx_shape = tuple(shape), tuple(onnx_shape)
    if shape == onnx_shape:
        return "same"
    if len(shape) == 2 and onnx_shape == shape[::-1]:
        return "T"
    if tuple(d for d in onnx_shape if d != 1) == tuple(d for d in shape if d != 1):
        return "squeeze"
    return None


def confirm(array: np.ndarray, fingerprint: dict) -> str | None:
    """The layout under which `array` (torch layout) is the fingerprinted tensor, or None:
    "same", "T", "squeeze", or "plus1" (a 1-D gain the exporter folded into 1 + w: Gemma's norms)."""
    shape = tuple(fingerprint["shape"])
    views = {"same": array if array.shape == shape else None,
             "T": array.T if array.ndim == 2 and array.shape[::-1] == shape else None,
             "squeeze": array.reshape(shape) if _fits(array.shape, shape) == "squeeze" else None}
    for layout, view in views.items():
        if view is not None and history.sample(view) == fingerprint["sample"]:
            return layout
    if views["same"] is not None and array.ndim == 1 and history.sample(np.float32(1) + array) == fingerprint["sample"]:
        return "plus1"
    return None


def _mismatch_message(missing, teacher, prints) -> str:
    listed = ", ".join(f"{k} {list(teacher.shapes[k])}" for k in missing[:5])
    folded = [k for k in missing if k.endswith((".running_mean", ".running_var"))]
    hint = ""
    if folded:
        module = folded[0].rpartition(".")[0]
        hint = (f" The BatchNorm {module!r} is not in the ONNX: the exporter folded it into its conv "
                "(export in training mode, or with do_constant_folding=False, keeps it), so the "
                "grown conv cannot be split back into the teacher's conv and BatchNorm.")
    return (f"{len(missing)} of the teacher's {len(teacher.floats)} float tensors are not in the ONNX "
            f"(no initializer of that name, module path or value): {listed}"
            f"{' …' if len(missing) > 5 else ''}.{hint} Export from the checkpoint the ONNX was "
            "exported from (the one it was grown from).")


def _refuse_extra(graph, teacher, prints, claimed: set, instances) -> None:
    """Weights of the ONNX's layers that no teacher key holds: another model's ONNX."""
    extra = []
    for root in instances:
        if root in claimed or len(prints[root]["shape"]) < 2:
            continue
        if any(_reads_as_weight(graph.initializers[name]) for name, _, _ in instances[root]):
            if not any(confirm(teacher.array(k), prints[root])
                       for k in teacher.floats if _fits(teacher.shapes[k], prints[root]["shape"])):
                extra.append(f"{root} {prints[root]['shape']}")
    if extra:
        raise GrowError(f"the ONNX has weights the teacher does not hold: {', '.join(extra[:5])}"
                        f"{' …' if len(extra) > 5 else ''}. Give the checkpoint the ONNX was exported from.")


def _reads_as_weight(value: ir.Value, depth: int = 0) -> bool:
    for use in value.uses():
        node = use.node
        if g.is_weight_layer(node) and use.idx == 1 or node.op_type == "Gather" and use.idx == 0:
            return True
        if node.op_type in WRAPPERS and depth < 3 and _reads_as_weight(node.outputs[0], depth + 1):
            return True
    return False


# ----------------------------------------------------------------------------- the graph's side


def _readers(graph: ir.Graph) -> dict[str, tuple[int, set]]:
    """{initializer: (position of its first reader in the graph, module paths of its readers)},
    looking through the ops a weight sits behind."""
    order = {id(n): i for i, n in enumerate(graph)}
    out = {}
    for name, value in graph.initializers.items():
        first, scopes = len(order), set()
        stack, seen = [(value, 0)], set()
        while stack:
            v, depth = stack.pop()
            for use in v.uses():
                node = use.node
                if id(node) in seen:
                    continue
                seen.add(id(node))
                first = min(first, order.get(id(node), len(order)))
                if node.op_type in WRAPPERS and depth < 3 and node.outputs:
                    stack.append((node.outputs[0], depth + 1))
                    continue
                scope = names.scope_of(node)
                if scope:
                    scopes.add(scope)
        out[name] = (first, scopes)
    return out


def _refuse_inserted(graph: ir.Graph, unrooted: set, readers) -> None:
    """Layers the teacher's class does not have (deepen --after) cannot go into its checkpoint."""
    inserted = sorted((n for n in unrooted if _reads_as_weight(graph.initializers[n])
                       and graph.initializers[n].const_value.size > 1), key=lambda n: readers[n][0])
    if inserted:
        raise GrowError(
            f"the grown model has layers its teacher's class does not have ({', '.join(inserted[:3])}"
            f"{' …' if len(inserted) > 3 else ''}: inserted by `deepen --after`), so no checkpoint of "
            "that class can hold them. Block copies (`deepen --block`, `grow --deepen PATH:zero`) of "
            "ModuleList items can; or keep the model as ONNX, or `onnxgrow export` it as a module.")


# ----------------------------------------------------------------------------- block copies


def _renumber(matched, instances, copies, readers, teacher) -> dict[str, dict]:
    """{teacher key: {copy events: student key}} for every key in a container a copy went into."""
    touched = {ev for root, _ in matched.values() for _, events, _ in instances[root] for ev in events}
    if not touched:
        return {}
    containers = set()
    for ev in touched:
        block = copies.get(ev, {}).get("block")
        keys = [k for k, (root, _) in matched.items() if any(ev in e for _, e, _ in instances[root])]
        where = _key_block(block, keys)
        if where is None:
            raise GrowError(
                f"a copy of block {block or copies.get(ev, {}).get('index')!r} has no place in the "
                "teacher's state dict: its module is not an item of a ModuleList or Sequential "
                "(`model.layers.3`), so the class has no slot for a copy. Copy an indexed block, or "
                "keep the model as ONNX.")
        containers.add(where[0])
    renames: dict[str, dict] = defaultdict(dict)
    for container in containers:
        prefix = container + "."
        items: dict[tuple, dict] = defaultdict(dict)  # (old index, events) -> {rest: teacher key}
        position: dict[tuple, int] = {}
        plain = defaultdict(list)  # old index -> keys the ONNX does not hold (copied along)
        for key in teacher.shapes:
            if not key.startswith(prefix):
                continue
            index, _, rest = key[len(prefix):].partition(".")
            if not index.isdigit():
                continue
            if key not in matched:
                plain[int(index)].append((rest, key))
                continue
            for name, events, _ in instances[matched[key][0]]:
                item = (int(index), events)
                items[item][rest] = key
                position[item] = min(position.get(item, 1 << 62), readers[name][0])
        originals = {i: set(rests) for (i, ev), rests in items.items() if not ev}
        for rank, item in enumerate(sorted(items, key=lambda it: (position[it], it[0]))):
            old, events = item
            if set(items[item]) != originals.get(old, set()):
                raise GrowError(f"the copy of {prefix}{old} holds {len(items[item])} of the block's "
                                f"{len(originals.get(old, ()))} tensors; cannot write it as a whole block.")
            for rest, key in items[item].items():
                renames[key][events] = f"{prefix}{rank}.{rest}"
            for rest, key in plain[old]:
                renames[key][events] = f"{prefix}{rank}.{rest}"
    return renames


def _key_block(block: str | None, keys: list[str]) -> tuple[str, int] | None:
    """(container, index) of `block` (an ONNX module path, maybe under a wrapper's prefix) in
    the keys' own naming: `lm.model.layers.3` → ("model.layers", 3)."""
    if not block or not keys:
        return None
    parts = block.split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        if all(k.startswith(candidate + ".") for k in keys):
            container, _, index = candidate.rpartition(".")
            return (container, int(index)) if index.isdigit() and container else None
    return None


def _natural(key: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]
