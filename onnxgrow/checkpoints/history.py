"""Growth history: what onnxgrow did to a model, kept in the model's own metadata.

Exporting a grown ONNX back to the checkpoint it came from needs, for every weight of the
student, the teacher weight it grew from. The transforms know that as they work; afterwards the
graph alone does not say it (a widened weight is a new initializer, `val_155.w48`; a block copy's
weights are new initializers read by nodes without module paths). So every transform records it,
and `metadata_props["onnxgrow.history"]` keeps it across files and growth steps:

    {"version": 1,
     "roots": {NAME: {"shape": [...], "sample": [16 float32 values]}},   # the teacher, once
     "steps": [{"command": "grow", "plan": {...},
                "lineage": {NEW: [OLD, EVENT or null, TRANSPOSED]},     # in creation order
                "copies": [{"id": EVENT, "block": PATH, "index": I, "as": NEW PATH}],
                "mappings": [{"initializer", "source", "axis", "index": RUNS, "scale": RUNS}]}]}

- `roots` fingerprints every float initializer of the teacher as the first step found it: its
  shape and 16 values at flat positions drawn from a seed fixed by its size. Export confirms a
  checkpoint tensor against them
  (after training, the student's values are no longer the teacher's; the fingerprint still is).
- `lineage` has one edge per initializer a step made from another: a grown or zeroed weight
  replacing its input (EVENT null), a block copy's own weight (EVENT names the copy), through a
  2-D Transpose the weight sat behind (TRANSPOSED). Following the edges of every step in order
  gives each live initializer its root and the copies it passed through (`origins`).
- `mappings` are the channel mappings (optim.py's), index and scale run-length coded: [[value,
  count], ...].
"""

from __future__ import annotations

import json

import numpy as np

from .. import names, ops

KEY = "onnxgrow.history"
SAMPLES = 16
LINEAGE = "onnxgrow.lineage"  # graph.meta: {new: [old, event, transposed]} of the running step
COPIES = "onnxgrow.copies"  # graph.meta: [block description] of the running step


# ----------------------------------------------------------------------------- while transforming


def note_derived(graph, new_name: str, old_value, event: int | None = None) -> None:
    """Record that initializer `new_name` was made from `old_value` (looked through a 2-D
    Transpose or Cast in front of a weight, to the initializer behind it)."""
    old, transposed = behind_wrappers(old_value)
    if old is None:
        return
    graph.meta.setdefault(LINEAGE, {})[new_name] = [old, event, transposed]


def note_copy(graph, block: dict) -> int:
    """Register a block copy of the running step; returns its event number."""
    copies = graph.meta.setdefault(COPIES, [])
    copies.append(block)
    return len(copies) - 1


def behind_wrappers(value, depth: int = 0) -> tuple[str | None, bool]:
    """(name of the value a weight is read from behind ops.WEIGHT_WRAPPERS, whether a 2-D
    Transpose lies between); the value's own name when it is not behind one."""
    if value is None or depth > 4:
        return None, False
    node = value.producer()
    if value.is_initializer() or node is None or node.op_type not in ops.WEIGHT_WRAPPERS or not node.inputs:
        return value.name, False
    source = node.inputs[0]
    if node.op_type != "Transpose":
        return behind_wrappers(source, depth + 1)
    perm = node.attributes.get("perm")
    if source is not None and source.shape is not None and len(source.shape) == 2 and (
            perm is None or list(perm.value) == [1, 0]):
        name, transposed = behind_wrappers(source, depth + 1)
        return name, not transposed
    return value.name, False


# ----------------------------------------------------------------------------- reading and writing


def read(metadata: dict) -> dict | None:
    text = metadata.get(KEY)
    if not text:
        return None
    try:
        history = json.loads(text)
    except ValueError:
        return None
    return history if isinstance(history, dict) and history.get("version") == 1 else None


def metadata_of(model) -> dict:
    """{key: value} of an onnx.ModelProto's or an onnx_ir.Model's metadata_props."""
    props = model.metadata_props
    if isinstance(props, dict):
        return dict(props)
    return {p.key: p.value for p in props}


def begin(model, initializers) -> dict:
    """The history so far, or a new one fingerprinting `initializers` ({name: array-like})."""
    history = read(metadata_of(model))
    if history is not None:
        return history
    return {"version": 1, "roots": {name: fingerprint(array) for name, array in initializers()},
            "steps": []}


def fingerprint(array) -> dict:
    array = np.asarray(array)
    return {"shape": list(array.shape), "sample": sample(array)}


def sample(array) -> list[float]:
    """SAMPLES values of `array` (float32, flattened in C order) at positions drawn from a fixed
    seed: evenly spaced positions of an n×n matrix fall on its diagonal, which its transpose
    shares, so they could not tell a weight from its transpose."""
    array = np.asarray(array)
    if array.size == 0:
        return []
    positions = np.sort(np.random.default_rng(array.size).integers(0, array.size, min(SAMPLES, array.size)))
    picked = array[np.unravel_index(positions, array.shape)] if array.ndim else array.reshape(1)
    return [float(v) for v in np.asarray(picked).astype(np.float32)]  # no copy of a view or a map


def record(model, history: dict, summary: dict, meta: dict) -> None:
    """Append the step that produced `summary` (its lineage in `meta`, a graph.meta) to
    `history` and store it in `model`'s metadata (onnx.ModelProto or onnx_ir.Model)."""
    lineage = meta.pop(LINEAGE, {})
    copies = meta.pop(COPIES, [])
    step_no = len(history["steps"])
    step = {"command": summary.get("command"), "plan": summary.get("plan"),
            "lineage": {new: [old, None if event is None else f"{step_no}.{event}", transposed]
                        for new, (old, event, transposed) in lineage.items()},
            "copies": [{"id": f"{step_no}.{k}", **block} for k, block in enumerate(copies)],
            "mappings": [_compact(m) for m in summary.get("mappings", [])]}
    history["steps"].append(step)
    text = json.dumps(history, separators=(",", ":"))
    props = model.metadata_props
    if isinstance(props, dict):
        props[KEY] = text
        return
    for entry in props:
        if entry.key == KEY:
            entry.value = text
            return
    props.add(key=KEY, value=text)


def _compact(mapping: dict) -> dict:
    return {**mapping, "index": runs(mapping["index"]), "scale": runs(mapping["scale"])}


def runs(values) -> list:
    """[[value, count], ...] of consecutive equal values; consecutive integers as [start, -count]."""
    out: list = []
    for v in values:
        if out and out[-1][1] > 0 and out[-1][0] == v:
            out[-1][1] += 1
        elif (out and isinstance(v, int) and out[-1][1] < 0 and out[-1][0] - out[-1][1] == v):
            out[-1][1] -= 1
        elif out and isinstance(v, int) and out[-1][1] == 1 and out[-1][0] + 1 == v:
            out[-1][1] = -2
        else:
            out.append([v, 1])
    return out


def unruns(coded) -> list:
    out = []
    for v, n in coded:
        out.extend([v] * n if n > 0 else range(v, v - n))
    return out


# ----------------------------------------------------------------------------- following it


def origins(history: dict | None, live: set) -> dict[str, tuple[str, tuple, bool]]:
    """{live initializer: (root, copy events it passed through, transposed against the root)}
    for every live initializer that descends from a root (all of them without a history)."""
    if history is None:
        return {name: (name, (), False) for name in live}
    origin = {name: (name, (), False) for name in history["roots"]}
    for step in history["steps"]:
        for new, (old, event, transposed) in step["lineage"].items():
            if old in origin:
                root, events, flipped = origin[old]
                origin[new] = (root, events + ((event,) if event else ()), flipped != bool(transposed))
    return {name: origin[name] for name in live if name in origin}


def copies(history: dict | None) -> dict[str, dict]:
    """{event: the copied block's description} over all steps."""
    return {c["id"]: c for step in (history or {}).get("steps", []) for c in step["copies"]}


def block_places(graph, grown: dict, copied: dict) -> dict[tuple[str, tuple], str]:
    """{(teacher block path, copy events): the block's module path in the grown model} for every
    item of a container (`model.layers`) that block copies went into — the teacher's own items
    with events () — numbered by their place in the graph, as a checkpoint numbers them: the copy
    of `layers.3` right after it is `layers.4`, the old `layers.4` is `layers.5`. A container
    holding a copy of part of an item (a block found inside it) keeps its numbers. `grown` is
    origins(), `copied` copies(); a graph without copies of indexed blocks gives {}."""
    paths = [block.get("block") or "" for block in copied.values()]
    containers = {path.rpartition(".")[0] for path in paths if path.rpartition(".")[2].isdigit()} - {""}
    first: dict[tuple[str, tuple], int] = {}
    weights: dict[tuple[str, tuple], set] = {}  # item -> the roots of the float weights it reads
    for position, node in enumerate(graph if containers else ()):
        scope = names.scope_of(node) or ""
        for value in node.inputs:
            name = behind_wrappers(value)[0] if value is not None else None
            root, events, _ = grown.get(name, (None, (), False))
            if events:
                block = copied.get(events[-1], {}).get("block")
                item = (block, events) if block and block.rpartition(".")[0] in containers else None
            else:
                container = next((c for c in containers if scope.startswith(c + ".")), None)
                index = scope[len(container) + 1:].split(".")[0] if container else ""
                item = (f"{container}.{index}", ()) if index.isdigit() else None
            if item is None:
                continue
            first.setdefault(item, position)
            const = graph.initializers[name].const_value if name in graph.initializers else None
            if const is not None and const.dtype.is_floating_point() and const.size > 1:
                weights.setdefault(item, set()).add(root)
    partial = {block.rpartition(".")[0] for (block, events), roots in weights.items()
               if events and roots != weights.get((block, ()), set())}
    places = {}
    for container in containers - partial:
        items = sorted((position, item) for item, position in first.items() if item[0].rpartition(".")[0] == container)
        places.update({item: f"{container}.{rank}" for rank, (_, item) in enumerate(items)})
    return places
