"""Edit a graph with many nodes through a window: the nodes a transform can reach.

onnx-ir builds Python objects for every node, ~35 µs a node to read and as much to write: 1.5 s
for a 24,000-node graph that onnx's C++ loads and saves in 0.1 s. A transform reaches only the
nodes around its targets — a coupled group ends at the layers that consume it, an insertion sits
right after its layer — so for a large graph the command line keeps the loaded proto and makes
an onnx-ir model of just those nodes (`Window`):

- flood-filled from the targets' outputs through every node, except that a weight layer (Conv
  with one group, ConvTranspose with one group, Gemm, MatMul with a constant weight) is taken in
  without going past its data input or its output: a group ends there. Its weight and bias, and
  every other reader of a shared float weight, are taken in. The first window is local: only
  values computed from the targets get all their readers, everything else only its producers
  (RoPE's tables and the attention mask are read by every layer; a query projection's group
  never goes there), and only within `NEAR` nodes of the targets (an insertion after a layer that
  writes the residual stream needs its neighbours, not every layer the stream reaches). If that is
  not enough, the local window without the limit, then the whole flood fill are tried.
- Values crossing the window's edge become its graph inputs and outputs (typed by one shape
  inference of the whole graph). Transforms already refuse to change those: a widened group that
  reaches one is refused; an insertion after one replaces it, which is detected.

The transform runs unchanged on the window; its nodes are put back into the proto where the
originals were, and onnx writes the model in C++. The window is only kept when the splice is
provably the edit the whole graph would have got: when the transform refuses, or its edit reaches
the edge (an edge value replaced or its inferred shape changed, a weight also read outside
rewritten in place, a new node reading a value produced after it), the transform runs again on
the whole graph, as it would have without a window, and its answer stands.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from . import graph as g
from . import names, ops, validate
from .checkpoints import history
from .errors import GrowError, tolerate
from .summary import parameters_line

# below this many nodes the whole graph in onnx-ir costs little; ONNXGROW_WINDOW_MIN_NODES sets it
# (0: every edit tries a window; a huge number: none does)
MIN_NODES = int(os.environ.get("ONNXGROW_WINDOW_MIN_NODES", "2000"))
MAX_SHARE = 0.5  # a window over more of the graph than this saves too little
NEAR = 12  # the first window: nodes at most this far from the targets (an insertion's reach)
WIDENING = ((True, NEAR), (True, None), (False, None))  # the windows tried: (local, reach)
SMALL_MODEL_BYTES = 64 << 20  # copied whole for shape inference; larger ones without their weights
CONSTANT_WRAPPERS = ops.RELAYOUT | ops.WEIGHT_WRAPPERS  # a constant behind these is still one
FLOAT_TYPES = {t.value for t in g.FLOAT_TYPES}


class Whole:
    """The whole model in onnx-ir: what every command edits when a window would not help."""

    def __init__(self, model: ir.Model, spill: bool = False):
        self.model = model
        if spill and g.data_files(model):  # weights on disk: so are the grown ones, until saved
            model.graph.meta["onnxgrow.spill"] = g.Spill()

    def result(self, original):
        return g.like_input(original, self.model)

    def data_files(self) -> list[Path]:
        return g.data_files(self.model)

    def check_finite(self, where: str) -> None:
        validate.check_finite(self.model, where)

    def run(self, transform) -> dict:
        graph = self.model.graph
        started = history.begin(self.model, lambda: (
            (name, v.const_value.numpy()) for name, v in graph.initializers.items()
            if v.const_value is not None and v.const_value.dtype in g.FLOAT_TYPES))
        summary = transform(self.model)
        history.record(self.model, started, summary, graph.meta)
        return summary

    def write(self, path: Path) -> None:
        g.write(self.model, path)
        spill = self.model.graph.meta.pop("onnxgrow.spill", None)
        if spill is not None:
            spill.close()


def load(model, targets: list[str] | None, spill: bool = False):
    """`model` (a path, ModelProto, onnx_ir.Model or gs.Graph; never modified) ready for a
    transform of `targets` (node names or module paths; None when the transform's reach is not
    known from names: globs, block copies): a `Window` when the graph is large and the targets'
    reach is a small part of it, else `Whole`. `spill`: a model with external data writes its
    grown weights to a temporary file as they are made (see graph.Spill)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = g.read_proto(path)  # read and checked once, whichever way it is edited
        source = _Source.of(proto, path.parent) if targets else None
        whole = lambda: Whole(g.from_file_proto(proto, path, checked=source is not None), spill)  # noqa: E731
    elif isinstance(model, onnx.ModelProto) and targets and len(model.graph.node) >= MIN_NODES:
        proto = onnx.ModelProto()  # a copy: the caller's proto is not modified
        proto.CopyFrom(model)
        source = _Source.of(proto, None)
        whole = lambda: Whole(g.from_proto(proto, "model", checked=source is not None), spill)  # noqa: E731
    else:
        return Whole(g.load(model), spill)
    window = Window.around(source, targets, whole) if source is not None else None
    return window if window is not None else whole()


def edit(model, targets: list[str] | None, transform):
    """The API's edit: (the student in the caller's currency, the transform's summary); `model`
    is never modified."""
    loaded = load(model, targets)
    summary = loaded.run(transform)
    return loaded.result(model), summary


class _Source:
    """A model file kept as its proto, with the indexes a window needs."""

    def __init__(self, proto: onnx.ModelProto, index: validate.GraphIndex):
        self.proto = proto
        self.producer, self.consumers = index.producer, index.consumers
        self.initializer = {t.name: i for i, t in enumerate(proto.graph.initializer)}
        self.outputs = {o.name for o in proto.graph.output}
        self.inputs = {i.name: i for i in proto.graph.input}

    @classmethod
    def of(cls, proto: onnx.ModelProto, base_dir: Path | None) -> "_Source | None":
        """`proto` checked (graph.check_proto) and indexed, if it is a large, plain, inline model;
        None for anything else (the whole graph in onnx-ir handles every case, and reports every
        error in the words users know)."""
        graph = proto.graph
        if (len(graph.node) < MIN_NODES or proto.functions or graph.sparse_initializer
                or any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)):
            return None
        index = validate.GraphIndex()
        try:
            g.check_proto(proto, "the model", base_dir, index)
        except GrowError:
            return None
        return None if index.subgraphs else cls(proto, index)

    # ------------------------------------------------------------------ which nodes
    def is_constant(self, name: str, depth: int = 0) -> bool:
        if name in self.initializer:
            return True
        index = self.producer.get(name)
        if index is None or depth > 4:
            return False
        node = self.proto.graph.node[index]
        return node.op_type == "Constant" or (
            node.op_type in CONSTANT_WRAPPERS and bool(node.input) and self.is_constant(node.input[0], depth + 1))

    def is_closed(self, node: onnx.NodeProto) -> bool:
        """A weight layer: a group ends at its data input and at its output."""
        if node.op_type not in ops.WEIGHT_OPS or node.domain not in ops.ONNX_DOMAINS or len(node.input) < 2:
            return False
        if node.op_type in ("Conv", "ConvTranspose"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group != 1:
                return False
        return self.is_constant(node.input[1])

    def candidates(self, text: str) -> list[int]:
        """Nodes that `text` could name (see names.resolve): the nodes of that exact name, else
        every weight layer whose legacy scope, scope metadata or weight names contain it."""
        nodes = self.proto.graph.node
        if text in self.node_names():
            return self._by_name[text]
        if not hasattr(self, "_said"):
            self._said = [(i, self._mentioned(node)) for i, node in enumerate(nodes) if node.op_type in ops.WEIGHT_OPS]
        return [index for index, said in self._said if text in said]

    def node_names(self) -> dict[str, list[int]]:
        if not hasattr(self, "_by_name"):
            self._by_name: dict[str, list[int]] = defaultdict(list)
            for index, node in enumerate(self.proto.graph.node):
                self._by_name[node.name].append(index)
        return self._by_name

    def _mentioned(self, node: onnx.NodeProto) -> str:
        """Everything a module path of `node` is read from (see names.aliases), as one text."""
        said = [names.legacy_scope(node.name) or "", *(p.value for p in node.metadata_props)]
        todo = list(node.input[1:])
        while todo and len(said) < 16:
            name = todo.pop()
            said.append(name)
            index = self.producer.get(name)
            if index is not None and self.proto.graph.node[index].op_type in ops.WEIGHT_WRAPPERS:
                todo.extend(self.proto.graph.node[index].input[:1])
        return "\n".join(said)

    def region(self, seeds: list[int], local: bool = False, reach: int | None = None) -> list[int]:
        """The nodes a transform of `seeds` can reach (see the module docstring), in graph order.

        `local`: only what is computed from the seeds' outputs gets all its readers; everything
        else only its producers. `reach`: and only up to that many nodes from the seeds. A group
        that goes further meets the window's edge and is refused there; the transform then runs
        again on a wider window."""
        nodes = self.proto.graph.node
        inside: set[int] = set()
        opened: set[int] = set()
        todo: deque[tuple[str, bool, int]] = deque()  # (value, whether its readers are taken, hops)

        def take(index: int, forward: bool, hops: int) -> None:
            node = nodes[index]
            closed = self.is_closed(node)
            if index not in inside:
                inside.add(index)
                todo.extend((name, not local, hops) for name in (node.input[1:] if closed else node.input))
            if forward and not closed and node.input and index not in opened and (reach is None or hops < reach):
                opened.add(index)
                todo.extend((name, True, hops + 1) for name in node.output)

        for index in seeds:
            take(index, True, 0)
            todo.extend((name, True, 0) for name in nodes[index].output)
        seen: set[tuple[str, bool]] = set()
        while todo:
            name, forward, hops = todo.popleft()
            if not name or (name, True) in seen or (name, forward) in seen:
                continue
            seen.add((name, forward))
            if name in self.producer:
                take(self.producer[name], not local, hops)
            readers = forward
            if name in self.initializer:
                if not self._float_weight(name):
                    continue  # shape constants and the like are never rewritten in place
                readers = True  # every reader of a shared weight
            if readers:
                for index in self.consumers.get(name, ()):
                    take(index, forward or not local, hops)
        return sorted(inside)

    def prefix(self, values: set) -> onnx.ModelProto:
        """The model up to the last node producing one of `values` (the graph is in topological
        order: their whole computation), light (graph.light_copy): what a shape inference of
        `values` needs."""
        last = max((self.producer[v] for v in values if v in self.producer), default=-1)
        return g.light_copy(self.proto, self.proto.graph.node[: last + 1], whole_under=SMALL_MODEL_BYTES)

    def _float_weight(self, name: str) -> bool:
        tensor = self.proto.graph.initializer[self.initializer[name]]
        return tensor.data_type in FLOAT_TYPES and math.prod(tensor.dims) > 1

    def parameter_count(self, names=None) -> int:
        """Float weights of the initializers `names`; with None, of the whole model (Constant
        nodes that something reads included, as graph.parameter_count)."""
        tensors = self.proto.graph.initializer
        chosen = tensors if names is None else (tensors[self.initializer[n]] for n in names)
        total = sum(math.prod(t.dims) for t in chosen if t.data_type in FLOAT_TYPES)
        if names is None:
            for node in self.proto.graph.node:
                if (node.op_type == "Constant" and node.domain in ops.ONNX_DOMAINS and node.output
                        and (self.consumers.get(node.output[0]) or node.output[0] in self.outputs)):
                    total += _constant_parameters(node)
        return total


class Window:
    """An onnx-ir model of part of a large graph, spliced back after the transform."""

    def __init__(self, source: _Source, region: list[int]):
        self.source, self.region = source, region
        self.model = self._build()
        graph = self.model.graph
        self.origin = {id(node): index for node, index in zip(graph, region)}
        self.edge_inputs = [(v, v.name) for v in graph.inputs]
        self.edge_outputs = [(v, v.name) for v in graph.outputs]
        self.shared = {name for name in graph.initializers
                       if any(i not in self._inside for i in source.consumers.get(name, ()))
                       or name in source.outputs or name in source.inputs}  # kept in the proto
        self.consts = {name: id(value.const_value) for name, value in graph.initializers.items()}
        self.constant_nodes = g.constant_node_parameters(graph)  # counted apart from initializers
        graph.meta["onnxgrow.names"] = _TakenNames(source)  # new names stay unique in the whole graph
        graph.meta["onnxgrow.window"] = True
        graph.meta["onnxgrow.inferred"] = True  # shapes inferred on the whole graph know more

    @classmethod
    def around(cls, source: _Source, targets: list[str], whole) -> "Window | None":
        """A window of `source` around `targets` — what is computed from them within `NEAR`
        nodes, then all that is computed from them, then the whole flood fill, as far as each is
        needed — or None where none would help; `whole()` gives the model to edit whole if no
        window can take the transform."""
        seeds = []
        for text in targets:
            found = source.candidates(text)
            if not found:
                return None
            seeds += found
        window = cls.first(source, seeds, WIDENING, whole)
        if window is None:
            return None
        for text in targets:  # each target must name the same node in the window as in the graph
            try:
                names.resolve(window.model.graph, text)
            except GrowError:
                return None
        return window

    @classmethod
    def first(cls, source: _Source, seeds: list[int], attempts: tuple, whole, after: int = 0) -> "Window | None":
        """A window of the first region of `attempts` ((local, reach) pairs, narrowest first) that
        is larger than `after` nodes and small enough to help; it knows how to make the next one
        (only when needed), and `whole()`. None if no region qualifies."""
        limit = MAX_SHARE * len(source.proto.graph.node)
        for i, (local, reach) in enumerate(attempts):
            region = source.region(seeds, local, reach)
            if len(region) > limit:
                return None  # the wider ones are larger still
            if len(region) > after:
                window = cls(source, region)
                window.whole = whole
                window.wider = lambda: cls.first(source, seeds, attempts[i + 1:], whole, len(region)) or whole()
                return window
        return None

    @property
    def edited_whole(self) -> bool:
        """Whether the last `run` fell back to the whole graph (after a wider window, perhaps)."""
        fallback = getattr(self, "fallback", None)
        return isinstance(fallback, Whole) or (isinstance(fallback, Window) and fallback.edited_whole)

    def _build(self) -> ir.Model:
        source, proto = self.source, self.source.proto
        nodes = proto.graph.node
        self._inside = set(self.region)
        self.edge_shapes: dict = {}  # edge output -> its dims as inferred on the whole graph
        produced = {name for i in self.region for name in nodes[i].output if name}
        read = {name for i in self.region for name in nodes[i].input if name}
        types = _inferred_types(source.prefix(read | produced), read | produced)
        self.produced = produced
        light = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name,
                                producer_version=proto.producer_version, domain=proto.domain,
                                model_version=proto.model_version)
        light.opset_import.extend(proto.opset_import)
        graph = light.graph
        graph.name = proto.graph.name
        graph.node.extend(nodes[i] for i in self.region)
        graph.initializer.extend(proto.graph.initializer[source.initializer[name]]
                                 for name in sorted(read & source.initializer.keys()))
        for name in sorted(read - produced - source.initializer.keys()):
            graph.input.append(source.inputs.get(name) or types.get(name) or onnx.ValueInfoProto(name=name))
        for name in sorted(produced):
            if name in source.outputs or any(i not in self._inside for i in source.consumers.get(name, ())):
                graph.output.append(types.get(name) or onnx.ValueInfoProto(name=name))
                self.edge_shapes[name] = _dims(types.get(name))
            elif name in types:
                graph.value_info.append(types[name])
        return ir.from_proto(light)

    # ------------------------------------------------------------------ the command line's interface
    def data_files(self) -> list[Path]:
        return []  # windows are made of inline models only

    def check_finite(self, where: str) -> None:
        validate.check_finite_tensors(self.source.proto.graph.initializer, where)

    def run(self, transform) -> dict:
        """`transform(model)` on the window; on a wider one, or the whole graph, when it cannot
        take it."""
        try:
            summary = transform(self.model)
            placed = self._placement() if self._edges_kept() else None
        except GrowError:  # the whole graph gives the answer, refusal or not
            placed = None
        except Exception as exc:  # a bug, here or in the transform: the whole graph may not meet it
            tolerate(exc)
            placed = None
        if placed is None:
            self.fallback = self.wider()
            return self.fallback.run(transform)
        proto = self.source.proto  # the teacher's fingerprints: taken before the splice edits it
        started = history.begin(proto, lambda: (
            (t.name, _array(t)) for t in proto.graph.initializer if t.data_type in FLOAT_TYPES))
        before, after = self._splice(*placed)  # edits the proto: a failure here is not retried
        for say, message in self.model.graph.meta.pop("onnxgrow.progress", []):
            say(message)
        summary["parameters"] = {"before": before, "after": after}
        summary["lines"] = [line for line in summary["lines"] if not line.startswith("parameters:")]
        summary["lines"].append(parameters_line(before, after))
        history.record(proto, started, summary, self.model.graph.meta)
        return summary

    def result(self, original):
        fallback = getattr(self, "fallback", None)
        if fallback is not None:
            return fallback.result(original)
        return g.like_input(original, self.source.proto)

    def write(self, path: Path) -> None:
        fallback = getattr(self, "fallback", None)
        if fallback is not None:
            fallback.write(path)
            return
        try:
            _write_streamed(self.source.proto, path)
        except OSError as exc:
            raise GrowError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from None

    # ------------------------------------------------------------------ the splice
    def _splice(self, anchored: dict, tail: list) -> tuple[int, int]:
        """Put the edited window back into the proto (nodes placed by `_placement`); return the
        whole model's parameters before and after."""
        graph, source, proto = self.model.graph, self.source, self.source.proto
        final = dict(graph.initializers)
        dropped = [name for name in self.consts if name not in final and name not in self.shared]
        replaced = [name for name, ident in self.consts.items()
                    if name in final and id(final[name].const_value) != ident]
        added = [value for name, value in final.items() if name not in self.consts]
        before = source.parameter_count()
        after = before - source.parameter_count(dropped + replaced) + sum(
            _parameters(final[name]) for name in replaced) + sum(_parameters(v) for v in added)
        after += g.constant_node_parameters(graph) - self.constant_nodes
        protos = {id(node): ir.serde.serialize_node(node) for node in graph}
        self._replace_nodes(anchored, tail, protos)
        for name in replaced:
            proto.graph.initializer[source.initializer[name]].CopyFrom(_tensor_proto(final[name]))
        for index in sorted((source.initializer[name] for name in dropped), reverse=True):
            del proto.graph.initializer[index]
        proto.graph.initializer.extend(_tensor_proto(value) for value in added)
        stale = self.produced | {name for p in protos.values() for name in p.output}
        for index in reversed([i for i, vi in enumerate(proto.graph.value_info) if vi.name in stale]):
            del proto.graph.value_info[index]
        imports = dict(self.model.opset_imports)
        if imports != {o.domain: o.version for o in proto.opset_import}:
            del proto.opset_import[:]
            proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports.items())
        return before, after

    def _edges_kept(self) -> bool:
        """The window's graph inputs and outputs are the same values, under the same names, with
        the same inferred shapes; no weight also read outside was rewritten in place."""
        graph = self.model.graph
        for now, then in ((graph.inputs, self.edge_inputs), (graph.outputs, self.edge_outputs)):
            if [id(v) for v in now] != [id(v) for v, _ in then] or [v.name for v in now] != [n for _, n in then]:
                return False
        if any(id(graph.initializers[name].const_value) != self.consts[name]
               for name in self.shared if name in graph.initializers):
            return False
        inferred = _inferred_types(g.light_proto(self.model), set(self.edge_shapes))
        for name, shape in self.edge_shapes.items():
            now = _dims(inferred.get(name))
            if shape is not None and now is not None and (
                    len(now) != len(shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                                  for a, b in zip(now, shape))):
                return False
        return True

    def _placement(self):
        """Where each node of the edited window goes: ({proto index: [nodes ending with the
        original at that index]}, [nodes after the last original]); None when an original moved,
        or a node would read a value produced after it."""
        source, inside = self.source, self._inside
        anchored: dict[int, list] = {}
        pending: list = []
        order: list[float] = []
        last = -1
        for node in self.model.graph:
            index = self.origin.get(id(node))
            if index is None:
                pending.append(node)
                continue
            if index <= last:
                return None
            anchored[index] = [*pending, node]
            order += [index - 0.5] * len(pending) + [index]
            pending, last = [], index
        tail = pending
        order += [max(self.region) + 0.5] * len(tail)
        produced_at = {}
        for node, at in zip(self.model.graph, order):
            for value in node.inputs:
                if value is None or not value.name or value.is_initializer() or (
                        value.is_graph_input() and value.name not in source.producer):
                    continue  # a weight, or an input of the whole graph
                if value.name in produced_at:
                    continue
                outside = source.producer.get(value.name)
                if outside is None or outside in inside or outside > at:
                    return None  # read before it is produced (or never produced)
            for out in node.outputs:
                produced_at[out.name] = at
        return anchored, tail

    def _replace_nodes(self, anchored: dict, tail: list, protos: dict) -> None:
        nodes = self.source.proto.graph.node
        if not tail and all(len(v) == 1 for v in anchored.values()) and len(anchored) == len(self.region):
            for index, (node,) in anchored.items():
                nodes[index].CopyFrom(protos[id(node)])
            return
        last = self.region[-1]
        rebuilt = []
        for index, node in enumerate(nodes):
            if index in self._inside:
                rebuilt.extend(protos[id(n)] for n in anchored.get(index, ()))
            else:
                rebuilt.append(node)
            if index == last:
                rebuilt.extend(protos[id(n)] for n in tail)
        del nodes[:]
        nodes.extend(rebuilt)


def _write_streamed(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto`; a large one with its weights one at a time (see graph._write_inline), so the
    whole model's bytes are never in memory beside the model."""
    if proto.ByteSize() <= SMALL_MODEL_BYTES:
        Path(path).write_bytes(proto.SerializeToString())
        return
    head = onnx.ModelProto()
    _copy_fields(proto, head, skip="graph")
    _copy_fields(proto.graph, head.graph, skip="initializer")
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        for tensor in proto.graph.initializer:
            data = tensor.SerializeToString()
            field = b"\x2a" + g.varint(len(data))  # GraphProto.initializer
            f.write(b"\x3a" + g.varint(len(field) + len(data)) + field)  # ModelProto.graph
            f.write(data)


def _copy_fields(source, target, skip: str) -> None:
    """Copy every field of protobuf message `source` that is set, except `skip`, into `target`."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _parameters(value: ir.Value) -> int:
    tensor = value.const_value
    return math.prod(tensor.shape.dims) if tensor is not None and tensor.dtype in g.FLOAT_TYPES else 0


def _constant_parameters(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "value":
            return math.prod(a.t.dims) if a.t.data_type in FLOAT_TYPES else 0
        if a.name in ("value_float", "value_floats"):
            return 1 if a.name == "value_float" else len(a.floats)
    return 0


def _array(tensor: onnx.TensorProto):
    """An inline initializer's values, without a copy where they are raw bytes."""
    if tensor.raw_data:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(tuple(tensor.dims))
    return onnx.numpy_helper.to_array(tensor)


def _tensor_proto(value: ir.Value) -> onnx.TensorProto:
    tensor = ir.serde.serialize_tensor(value.const_value)
    tensor.name = value.name
    return tensor


class _TakenNames(set):
    """The names of the whole graph (node, value and initializer names), as `graph.unique_name`
    needs them, without building a set of all of them: names made since are the set's own."""

    def __init__(self, source: _Source):
        super().__init__()
        self.source = source

    def __contains__(self, name) -> bool:
        source = self.source
        return (super().__contains__(name) or name in source.producer or name in source.initializer
                or name in source.inputs or name in source.node_names())


def _inferred_types(proto: onnx.ModelProto, wanted: set) -> dict:
    """{name: ValueInfoProto} from onnx shape inference, for the `wanted` values it typed."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return {}
    found = {}
    for field in (inferred.graph.value_info, inferred.graph.output, inferred.graph.input):
        for vi in field:
            if vi.name in wanted and vi.type.HasField("tensor_type"):
                found.setdefault(vi.name, vi)
    return found


def _dims(value_info: onnx.ValueInfoProto | None) -> tuple | None:
    if value_info is None or not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim)
