"""Loading, saving and small helpers over the onnx-ir graph.

Every public entry point takes a model as a path, an `onnx.ModelProto`, an `onnx_ir.Model` or an
onnx-graphsurgeon `Graph`, and works on a private `onnx_ir.Model`, so the caller's object and file
are never modified. Large weights stay memory-mapped (onnx-ir reads external data lazily), so a
model over 2 GB is never held in memory twice.

Saving is atomic: the model (and its external data, above 2 GB) is written into a temporary
folder beside the destination and renamed into place, so an interrupted run never leaves a
half-written file. The input's IR version is kept: onnx 1.23 stamps IR 14 on new models, which
onnxruntime 1.31 refuses.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from . import files, ops, validate
from .checkpoints import history
from .errors import GrowError

EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # protobuf cannot hold a message over 2 GiB


# ----------------------------------------------------------------------------- load


def load(model, what: str = "model") -> ir.Model:
    """Return a private onnx-ir copy of `model` (path, ModelProto, ir.Model or gs.Graph)."""
    if isinstance(model, ir.Model):
        return ir.from_proto(ir.to_proto(model))
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return from_proto(proto, what)
    if _is_gs_graph(model):
        import onnx_graphsurgeon as gs

        return from_proto(gs.export_onnx(model), what)
    if isinstance(model, (str, os.PathLike)):
        return from_file_proto(read_proto(Path(model), what), Path(model))
    raise GrowError(
        f"cannot use {type(model).__name__} as the {what}: pass a path to an .onnx file, an "
        "onnx.ModelProto, an onnx_ir.Model or an onnx_graphsurgeon Graph."
    )


def read_proto(path: Path, what: str = "model") -> onnx.ModelProto:
    """The ModelProto in the file at `path`, external data left on disk; a missing, empty or
    unreadable file is a GrowError that says so."""
    if not path.exists():
        raise GrowError(f"the {what} file {str(path)!r} does not exist.")
    if path.is_dir():
        raise GrowError(f"the {what} {str(path)!r} is a folder, not an ONNX file.")
    if path.stat().st_size == 0:
        raise GrowError(f"the {what} file {str(path)!r} is empty: it is not an ONNX model.")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for bad bytes
        raise GrowError(
            f"cannot read {str(path)!r} as an ONNX model ({short_message(exc)}). Is it truncated or "
            "not an .onnx file? Re-export it, or check it with `python -m onnx.checker`."
        ) from None


def from_file_proto(proto: onnx.ModelProto, path: Path, checked: bool = False) -> ir.Model:
    """`proto` as `read_proto` read it from `path`, checked (unless `checked` already) and
    converted; its data files are looked for beside it."""
    model = from_proto(proto, str(path), base_dir=path.parent, checked=checked)
    ir.external_data.set_base_dir(model.graph, path.parent)  # as ir.load: data files beside the model
    return model


def check_proto(proto: onnx.ModelProto, what: str, base_dir: Path | None = None,
                index: validate.GraphIndex | None = None) -> None:
    """Refuse a proto onnxgrow cannot read faithfully: empty, or see validate.py (external data
    files are looked for in `base_dir`; `index` is filled on the way)."""
    _check_not_empty(proto, what)
    validate.check_model_proto(proto, what, base_dir, index)


def from_proto(proto: onnx.ModelProto, what: str, base_dir: Path | None = None,
               checked: bool = False) -> ir.Model:
    """`proto` (owned by the caller no more) checked (unless `checked` already) and converted to
    onnx-ir."""
    if not checked:
        check_proto(proto, what, base_dir)
    densify_sparse_initializers(proto, what)
    try:
        model = ir.from_proto(proto)
    except Exception as exc:
        raise GrowError(f"the {what} is not a valid ONNX model ({short_message(exc)}).") from None
    model.graph.meta["onnxgrow.source"] = (proto, len(proto.graph.node))  # read while the graph is unedited
    return model


def densify_sparse_initializers(proto: onnx.ModelProto, what: str) -> None:
    """Replace each sparse initializer of the main graph by the dense one it stands for: onnx-ir
    reads only dense initializers, and a stored zero is a weight like any other (a grown or
    exported model holds it densely)."""
    g = proto.graph
    for sparse in g.sparse_initializer:
        g.initializer.append(onnx.numpy_helper.from_array(sparse_to_dense(sparse, what), sparse.values.name))
    del g.sparse_initializer[:]


def sparse_to_dense(sparse: onnx.SparseTensorProto, what: str = "the model") -> np.ndarray:
    """The dense array of a SparseTensorProto: `values` at `indices`, either [NNZ] positions in
    the flattened tensor or [NNZ, rank] coordinates; zero elsewhere."""
    name, shape = sparse.values.name, tuple(sparse.dims)
    try:
        values = onnx.numpy_helper.to_array(sparse.values).reshape(-1)
        indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
        if indices.ndim == 2 and indices.shape[1] == len(shape):
            indices = np.ravel_multi_index(tuple(indices.T), shape)
        if indices.shape != values.shape or np.any(indices < 0) or np.any(indices >= math.prod(shape)):
            raise ValueError(f"{values.size} values at indices of shape {list(indices.shape)} "
                             f"in a tensor of dims {list(shape)}")
    except Exception as exc:  # a malformed sparse tensor fails in numpy in several ways
        raise GrowError(f"the sparse initializer {name!r} in {what} is malformed ({short_message(exc)}). "
                        "Re-export the model.") from None
    dense = np.zeros(math.prod(shape), values.dtype)
    dense[indices] = values
    return dense.reshape(shape)


def _check_not_empty(proto: onnx.ModelProto, where: str) -> None:
    if not proto.graph.node and not proto.graph.output:
        raise GrowError(
            f"{where} holds no graph (no nodes, no outputs): it is not an ONNX model, or it was "
            "truncated."
        )


def short_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.to_proto(model)


def like_input(original, model: ir.Model | onnx.ModelProto):
    """The result in the caller's currency: a gs.Graph for a gs.Graph, else an onnx.ModelProto."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    if _is_gs_graph(original):
        import onnx_graphsurgeon as gs

        return gs.import_onnx(proto)
    return proto


def _is_gs_graph(obj) -> bool:
    return type(obj).__module__.startswith("onnx_graphsurgeon")


# ----------------------------------------------------------------------------- save


def save(model: ir.Model, path, source=None, reads=()) -> Path:
    """Write `model` to `path` atomically; with external data when its weights pass 2 GB.

    `source` is the path the model was read from: writing over it is refused, so the input file
    is never modified.
    """
    with staged(path, source, reads) as tmp_path:
        write(model, tmp_path)
    return Path(path)


def write(model: ir.Model, path: Path) -> None:
    """Serialise `model` to `path` (not atomic: see `staged`), external data beside it above 2 GB."""
    try:
        if weight_bytes(model) > EXTERNAL_DATA_THRESHOLD:
            ir.save(model, path, external_data=path.name + ".data")
        else:
            _write_inline(model, path)
    except OSError as exc:
        raise GrowError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from None


def _write_inline(model: ir.Model, path: Path) -> None:
    """Write the model without its weights, then each weight as one more `graph` field.

    A protobuf parser merges repeated occurrences of a message field, so the file reads back as
    one ModelProto; written this way the model is never held twice in memory (a whole-model
    ModelProto and its bytes would be), and external tensors are read one at a time.
    """
    graph = model.graph
    values = list(graph.initializers.values())
    for value in values:
        graph.initializers.pop(value.name)
    try:
        head = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value in values:
            graph.initializers.add(value)
    with open(path, "wb") as f:
        f.write(head)
        for value in values:
            for piece in _initializer_chunk(value):
                f.write(piece)


def _initializer_chunk(value: ir.Value) -> list:
    """The bytes of `graph { initializer { … } }` for one weight: a plain numeric array is written
    as its tensor header followed by its raw bytes straight from numpy (no copies of the weight);
    anything else through onnx-ir's serialiser."""
    tensor = value.const_value
    array = tensor.numpy() if tensor.dtype.bitwidth >= 8 and tensor.dtype != ir.DataType.STRING else None
    if array is None or tensor.doc_string or tensor.metadata_props:
        if isinstance(tensor, ir.ExternalTensor):
            tensor = ir.tensor(tensor.numpy(), name=value.name)
        chunk = onnx.GraphProto()
        ir.serde.serialize_tensor_into(chunk.initializer.add(), tensor)
        data = chunk.SerializeToString()
        return [b"\x3a" + varint(len(data)), data]  # field 7 (ModelProto.graph), length-delimited
    raw = memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")
    if array.dtype.byteorder == ">":
        raw = memoryview(array.astype(array.dtype.newbyteorder("<")).reshape(-1)).cast("B")
    header = onnx.TensorProto(name=value.name, data_type=tensor.dtype.value, dims=array.shape).SerializeToString()
    header += b"\x4a" + varint(len(raw))  # field 9 (TensorProto.raw_data)
    initializer = b"\x2a" + varint(len(header) + len(raw))  # field 5 (GraphProto.initializer)
    graph_head = initializer + header
    return [b"\x3a" + varint(len(graph_head) + len(raw)), graph_head, raw]


def varint(n: int) -> bytes:
    """`n` as a protobuf varint."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def staged(path, source=None, reads=()):
    """Yield a temporary path beside `path`, renamed into place when the block succeeds; writing
    over `source` or any of `reads` (the files the command reads) is refused. See files.staged."""
    return files.staged(path, reads=(source, *reads))


def data_files(model: ir.Model) -> list[Path]:
    """The external data files `model`'s initializers are read from."""
    return sorted({Path(v.const_value.path) for v in model.graph.initializers.values()
                   if isinstance(v.const_value, ir.ExternalTensor)})


def weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


# ----------------------------------------------------------------------------- nodes and values


def constant(value: ir.Value | None, depth: int = 0) -> np.ndarray | None:
    """The constant array behind `value`: an initializer, a Constant node, or a small expression
    of constants (shape arithmetic exporters leave unfolded, weights behind Identity/Cast)."""
    if value is None or depth > 24:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    node = value.producer()
    if node is None or not ops.is_onnx(node):
        return None
    if node.op_type == "Constant":
        attr = node.attributes.get("value")
        return _constant_from_other_attr(node) if attr is None else attr.as_tensor().numpy()
    if node.op_type == "CastLike" and node.inputs[1] is not None and node.inputs[1].dtype is not None:
        inner = constant(node.inputs[0], depth + 1)  # the second input only lends its type
        return None if inner is None else inner.astype(node.inputs[1].dtype.numpy())
    fold = _FOLD.get(node.op_type)
    if fold is None or len(node.outputs) != 1:
        return None
    version = edit_count(value.graph)
    cached = value.meta.get("onnxgrow.constant")
    if cached is not None and cached[0] == version:
        return cached[1]
    args = []
    for inp in node.inputs:
        arg = None if inp is None else constant(inp, depth + 1)
        if inp is not None and arg is None:
            return None
        args.append(arg)
    if node.op_type not in ops.FOLD_AT_ANY_SIZE and any(a is not None and a.size > 4096 for a in args):
        return None  # fold shape arithmetic and weight layouts, not weight computations
    try:
        result = np.asarray(fold(node, *args))
    except Exception:  # an expression numpy cannot mirror: treat as not constant
        return None
    value.meta["onnxgrow.constant"] = (version, result)
    return result


def edited(graph: ir.Graph) -> None:
    """Record that `graph` changed: constants folded and shapes probed before are recomputed."""
    graph.meta["onnxgrow.edits"] = edit_count(graph) + 1


def edit_count(graph: ir.Graph | None) -> int:
    return 0 if graph is None else graph.meta.get("onnxgrow.edits", 0)


def _cast(node, x, *_):
    to = node.attributes.get("to")
    return x if to is None else x.astype(ir.DataType(to.as_int()).numpy())


def _axes(node, given, default=None):
    if given is not None:
        return [int(a) for a in np.atleast_1d(given)]
    a = node.attributes.get("axes")
    return default if a is None else list(a.value)


def _slice(node, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        index[int(ax)] = slice(int(st), int(en), int(sp))
    return x[tuple(index)]



_FOLD = {
    "Transpose": lambda n, x: np.transpose(x, n.attributes["perm"].value if "perm" in n.attributes else None),
    "Shape": lambda n, x: np.array(x.shape[(n.attributes["start"].value if "start" in n.attributes else 0):
                                           (n.attributes["end"].value if "end" in n.attributes else None)], np.int64),
    "Expand": lambda n, x, shape: x * np.ones([int(d) for d in shape], dtype=x.dtype),
    "Identity": lambda n, x: x,
    "Cast": _cast,
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: a // b if np.issubdtype(a.dtype, np.integer) else a / b,
    "Mod": lambda n, a, b: np.fmod(a, b) if n.attributes.get("fmod") and n.attributes["fmod"].value else np.mod(a, b),
    "Equal": lambda n, a, b: a == b,
    "Not": lambda n, a: ~a,
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "ConstantOfShape": lambda n, shape: np.full(
        [int(d) for d in shape],
        n.attributes["value"].as_tensor().numpy().reshape(-1)[0] if "value" in n.attributes else np.float32(0)),
    "Concat": lambda n, *xs: np.concatenate(xs, axis=n.attributes["axis"].value),
    "Unsqueeze": lambda n, x, axes=None: np.expand_dims(x, tuple(
        sorted(a % (x.ndim + len(_axes(n, axes))) for a in _axes(n, axes)))),
    "Squeeze": lambda n, x, axes=None: np.squeeze(x, axis=None if _axes(n, axes) is None else tuple(
        a % x.ndim for a in _axes(n, axes))),
    "Gather": lambda n, x, i: np.take(x, i, axis=n.attributes["axis"].value if "axis" in n.attributes else 0),
    "Slice": _slice,
    "Reshape": lambda n, x, shape: x.reshape([int(d) if d != 0 else x.shape[i] for i, d in enumerate(shape)]),
}


def fold(node: ir.Node, args: list) -> np.ndarray | None:
    """`node`'s output computed by numpy from the arrays `args` (None for an op not mirrored)."""
    rule = _FOLD.get(node.op_type)
    try:
        return None if rule is None else np.asarray(rule(node, *args))
    except Exception:  # an expression numpy cannot mirror
        return None


def _constant_from_other_attr(node: ir.Node) -> np.ndarray | None:
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in node.attributes:
            return np.array(node.attributes[key].value, dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in node.attributes:
            return np.array(list(node.attributes[key].value), dtype=dtype)
    return None


def chain_back(value: ir.Value | None, limit: int):
    """The producer of `value`, then the producer of that node's one computed input, and so on
    (at most `limit` nodes); stops at a node with no or several computed inputs, after yielding it."""
    for _ in range(limit):
        node = value.producer() if value is not None else None
        if node is None:
            return
        yield node
        computed = [v for v in node.inputs if v is not None and constant(v) is None]
        if len(computed) != 1:
            return
        value = computed[0]


def attr(node: ir.Node, name: str, default=None):
    """A node attribute's Python value, or `default`."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def is_weight_layer(node: ir.Node) -> bool:
    """Conv, ConvTranspose, Gemm, and MatMul whose second input is a constant weight."""
    if not ops.is_onnx(node) or node.op_type not in ops.WEIGHT_OPS:
        return False
    if node.op_type == "MatMul":
        return len(node.inputs) > 1 and constant(node.inputs[1]) is not None
    return True


def static_shape(value: ir.Value | None, probe: bool = True) -> tuple | None:
    """The value's shape as a tuple of ints and strings (symbolic dims), or None if unknown.

    Where shape inference left a value without a shape, the shapes seen in one onnxruntime run
    are used (see `_probe_shapes`); they are never written into the model.
    """
    if value is None:
        return None
    if value.shape is not None:
        declared = value.is_graph_input() or value.is_graph_output()
        return tuple(dim(d, declared) for d in value.shape)
    return probed_shape(value) if probe else None


def dim(d, declared: bool = True):
    """One dimension as an int, a name, or "?" for any size: unnamed, negative (old exporters write
    -1), or 0 in a graph input's or output's declared shape (where exporters mean "any" by it)."""
    if isinstance(d, int):
        return d if d > 0 or (d == 0 and not declared) else "?"
    return d.value if d.value is not None else "?"


def relax_declared_dims(graph: onnx.GraphProto) -> onnx.GraphProto:
    """Clear the dims of `graph`'s inputs and value_info that mean "any size" (see `dim`), so shape
    inference does not carry -1 or 0 through the graph as sizes. Outputs keep theirs: inference
    would replace them with its own names, and the student would declare different outputs."""
    for i, value_info in enumerate((*graph.input, *graph.value_info)):
        declared = i < len(graph.input)
        if value_info.type.HasField("tensor_type"):
            for d in value_info.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and (d.dim_value < 0 or (declared and d.dim_value == 0)):
                    d.Clear()
    return graph


def probed_shape(value: ir.Value) -> tuple | None:
    """The shape `value` had in one onnxruntime run (see _probe_shapes)."""
    return None if value.graph is None else _probe_shapes(value.graph).get(value.name)


def _probe_shapes(graph: ir.Graph) -> dict:
    """Shapes of every intermediate value from one onnxruntime run on random inputs (dynamic
    dimensions 1, or the first of PROBE_SIZES that runs), computed once per graph and only when
    shape inference fell short."""
    cached = graph.meta.get("onnxgrow.probed")
    if cached is not None and cached[0] == edit_count(graph):
        return cached[1]
    shapes: dict = {}
    graph.meta["onnxgrow.probed"] = (edit_count(graph), shapes)
    model = graph.meta.get("onnxgrow.model")
    if model is None or graph.meta.get("onnxgrow.window"):  # a window's inputs are not the model's
        return shapes
    try:
        import onnxruntime as ort

        proto = ir.to_proto(model)
        relax_declared_dims(proto.graph)  # onnxruntime refuses inputs other than a declared 0
        known = {o.name for o in proto.graph.output}
        names = [o.name for node in graph for o in node.outputs
                 if o is not None and o.name and o.name not in known and o.dtype is not None]
        for name in names:
            proto.graph.output.add().name = name
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # the probe is a best effort; rules refuse when a shape stays unknown
        return shapes
    # as verification: where size 1 does not run (pooling, unpadded convolutions), larger ones
    for size in PROBE_SIZES:
        rng = np.random.default_rng(0)
        feeds = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 if axis == 0 and len(inp.shape) > 1 else size
                     for axis, d in enumerate(inp.shape)]
            dtype = ir.DataType.from_numpy(np.dtype(_ORT_TYPES.get(inp.type, "float32"))).numpy()
            feeds[inp.name] = (np.zeros(shape, dtype) if np.issubdtype(dtype, np.integer) or dtype == bool
                               else rng.standard_normal(shape).astype(dtype))
        try:
            outs = sess.run(None, feeds)
        except Exception:
            continue
        for meta, array in zip(sess.get_outputs(), outs):
            shapes[meta.name] = tuple(np.shape(array))
        break
    return shapes


PROBE_SIZES = (1, 32, 64, 128, 256, 640)  # dynamic dimensions (the batch stays 1), until one runs


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def taken_names(graph: ir.Graph) -> set:
    """Every value and node name in `graph`, computed once; `unique_name` keeps it current."""
    taken = graph.meta.get("onnxgrow.names")
    if taken is None:
        taken = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in graph.all_nodes():
            taken.add(node.name or "")
            taken.update(o.name or "" for o in node.outputs)
        graph.meta["onnxgrow.names"] = taken
    return taken


def unique_name(graph: ir.Graph, hint: str) -> str:
    """A name not used in `graph`, derived from `hint` (and from now on taken)."""
    taken = taken_names(graph)
    name, k = hint, 1
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    taken.add(name)
    return name


def new_initializer(graph: ir.Graph, hint: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer named after `hint`; return its value. In a graph with
    a spill file (see `Spill`) a large array goes to disk at once."""
    name = unique_name(graph, hint)
    spill = graph.meta.get("onnxgrow.spill")
    if spill is not None and array.nbytes >= Spill.MIN_BYTES:
        tensor = spill.write(array, name)
        drop_mapped_pages(graph.initializers.values())
    else:
        tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


class Spill:
    """A temporary file the grown weights of a model with external data are written to as they are
    made, read back only when the student is saved (kernel-copied into its data file): the grown
    model is never held in memory. The file is deleted with this object (or at exit)."""

    MIN_BYTES = 1 << 20

    def __init__(self):
        self._dir = self._file = None  # made with the first weight: a refusal leaves nothing behind

    def write(self, array: np.ndarray, name: str) -> ir.ExternalTensor:
        if self._file is None:
            import tempfile

            self._dir = tempfile.TemporaryDirectory(prefix="onnxgrow-spill-")
            self._file = open(Path(self._dir.name) / "weights.data", "wb")  # noqa: SIM115 (closed in close())
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        offset = self._file.tell()
        self._file.write(memoryview(array.reshape(-1)).cast("B"))
        self._file.flush()
        return ir.ExternalTensor("weights.data", offset, array.nbytes, ir.DataType.from_numpy(array.dtype),
                                 shape=ir.Shape(array.shape), name=name, base_dir=self._dir.name)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._dir.cleanup()


def drop_mapped_pages(values) -> None:
    """Let the kernel take back the pages of weights read through memory maps (the teacher's
    external data, the spill file): touched once, they would stay in this process's resident
    memory; they are read again from the page cache if needed."""
    for value in values:
        tensor = value.const_value
        raw = getattr(tensor, "raw", None) if isinstance(tensor, ir.ExternalTensor) else None
        if raw is not None and hasattr(raw, "madvise"):
            raw.madvise(mmap.MADV_DONTNEED)


def set_input_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, hint: str) -> None:
    """Point input `index` of `node` at a new initializer holding `array` (others keep the old);
    the growth history records which weight it replaced."""
    new = new_initializer(graph, hint, array)
    history.note_derived(graph, new.name, node.inputs[index])
    node.replace_input_with(index, new)
    edited(graph)


def prepare(model: ir.Model) -> None:
    """Make `model` ready for the analyses: sequences split into plain Splits, shapes inferred."""
    infer_shapes(model)
    if split_sequences(model.graph):
        infer_shapes(model)


def split_sequences(graph: ir.Graph) -> int:
    """SplitToSequence read only by SequenceAt at constant positions (the raw dynamo exporter's
    `torch.split`/`chunk`) becomes a Split with one output per part: the same values, in ops the
    channel rules know."""
    done = 0
    for node in list(graph):
        if node.op_type != "SplitToSequence" or not ops.is_onnx(node):
            continue
        parts = _sequence_parts(node)
        if parts is None:
            continue
        sizes, picks = parts
        split = ir.Node("", "Split", [node.inputs[0]], [ir.AttrInt64("axis", attr(node, "axis", 0))],
                        num_outputs=len(sizes), name=unique_name(graph, f"{node.name}.split"))
        if ops.opset(graph) < 13:
            split.attributes["split"] = ir.AttrInt64s("split", sizes)
        else:
            split.resize_inputs(2)
            split.replace_input_with(1, new_initializer(graph, f"{node.name}.sizes", np.array(sizes, np.int64)))
        for i, out in enumerate(split.outputs):
            out.name = unique_name(graph, f"{node.name}.part{i}")
        graph.insert_before(node, split)
        for at, position in picks:
            out = split.outputs[position]
            out.shape, out.type = at.outputs[0].shape, at.outputs[0].type
            ir.convenience.replace_all_uses_with(at.outputs[0], out)
            graph.remove(at, safe=True)
        graph.remove(node, safe=True)
        done += 1
    if done:
        edited(graph)
    return done


def _sequence_parts(node: ir.Node):
    """(sizes, [(SequenceAt node, position)]) when `node` can become a Split, else None."""
    axis = attr(node, "axis", 0)
    shape = static_shape(node.inputs[0], probe=False)
    split = constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if shape is None or split is None or not isinstance(shape[axis], int):
        return None
    dim = shape[axis]
    if split.ndim == 0:
        step = int(split)
        sizes = [min(step, dim - start) for start in range(0, dim, step)]
    else:
        sizes = [int(v) for v in split]
    if sum(sizes) != dim or not sizes:
        return None
    picks = []
    for use in node.outputs[0].uses():
        at = use.node
        position = constant(at.inputs[1]) if at.op_type == "SequenceAt" and len(at.inputs) > 1 else None
        if position is None or at.outputs[0].is_graph_output():
            return None
        picks.append((at, int(position) % len(sizes)))
    return (sizes, picks) if picks and not node.outputs[0].is_graph_output() else None


def infer_shapes(model: ir.Model) -> None:
    """Fill in value shapes with onnx shape inference.

    Weights over 1 kB go in as data-less inputs (shape constants stay, for data propagation),
    and the inferred types are copied back by name: cheaper than a whole-model round trip.
    """
    graph = model.graph
    values = list(graph.initializers.values())
    for value in values:
        if value.const_value is not None:
            value.shape = value.shape or value.const_value.shape
            value.dtype = value.dtype or value.const_value.dtype
    if graph.meta.pop("onnxgrow.inferred", False):
        return  # a window's values were typed by an inference of the whole graph (see window.py)
    source, nodes = graph.meta.pop("onnxgrow.source", (None, None))  # not kept: it holds the teacher's weights
    if source is not None and edit_count(graph) == 0 and nodes == graph.num_nodes():
        proto = light_copy(source)  # the loaded proto: no Python serialisation
    else:
        proto = light_proto(model)
    graph.meta["onnxgrow.model"] = model
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference is a help, not a requirement: unknown shapes get probed
        return
    types = {vi.name: vi.type for vi in inferred.graph.value_info}
    types.update((vi.name, vi.type) for vi in inferred.graph.output)
    for node in graph:
        for out in node.outputs:
            proto_type = types.get(out.name) if out is not None else None
            if proto_type is None:
                continue
            shape = ir.serde.deserialize_type_proto_for_shape(proto_type)
            if shape is not None and out.shape != shape:
                out.shape = shape
            value_type = ir.serde.deserialize_type_proto_for_type(proto_type)
            if value_type is not None and out.type is None:
                out.type = value_type


def light_proto(model: ir.Model) -> onnx.ModelProto:
    """`model` as a proto whose weights over 1 kB are data-less inputs: all shape inference needs."""
    graph = model.graph
    big = [v for v in graph.initializers.values() if v.const_value is None or v.const_value.nbytes > 1000]
    inputs = set(graph.inputs)
    extra = [v for v in big if v not in inputs]
    for value in big:
        graph.initializers.pop(value.name)
    graph.inputs.extend(extra)
    try:
        proto = ir.serde.serialize_model(model)
        relax_declared_dims(proto.graph)
        return proto
    finally:
        for _ in extra:
            graph.inputs.pop()
        for value in big:
            graph.initializers.add(value)


def light_copy(source: onnx.ModelProto, nodes=None, whole_under: int = 0) -> onnx.ModelProto:
    """A copy of `source` for shape inference, made in C++: its initializers over 1 kB become
    data-less inputs (a model under `whole_under` bytes keeps them all: one copy instead of a
    Python loop over them); with `nodes`, only those nodes (a prefix of the graph, no outputs)."""
    light = onnx.ModelProto()
    light.ir_version = source.ir_version
    light.opset_import.extend(source.opset_import)
    light.functions.extend(source.functions)
    graph, src = light.graph, source.graph
    graph.name = src.name
    graph.node.extend(src.node if nodes is None else nodes)
    graph.input.extend(src.input)
    if nodes is None:
        graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)  # the exporter's shapes help inference
    relax_declared_dims(graph)
    if whole_under and source.ByteSize() <= whole_under:
        graph.initializer.extend(src.initializer)
        return light
    inputs = {i.name for i in src.input}
    for tensor in src.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and is_small_tensor(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light


def is_small_tensor(tensor: onnx.TensorProto) -> bool:
    """At most 1 kB of data (computed from the dims: ByteSize() walks a large tensor's bytes)."""
    bits = validate.itemsize_bits(tensor.data_type)
    return bits is not None and math.prod(tensor.dims) * bits <= 8000


def remove_unused(model: ir.Model) -> None:
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)


FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def parameter_count(model: ir.Model) -> int:
    """Number of float weights, in initializers and Constant nodes (Paddle's exporter writes its
    weights as Constant nodes); integer shape constants are not parameters."""
    initializers = sum(math.prod(v.const_value.shape.dims) for v in model.graph.initializers.values()
                       if v.const_value is not None and v.const_value.dtype in FLOAT_TYPES)
    return initializers + constant_node_parameters(model.graph)


def constant_node_parameters(graph: ir.Graph) -> int:
    """Float values held by the Constant nodes of `graph` that something reads."""
    total = 0
    for node in graph:
        if node.op_type != "Constant" or not ops.is_onnx(node) or not node.outputs:
            continue
        out = node.outputs[0]
        if not (out.uses() or out.is_graph_output()):
            continue  # left behind by an edit that replaced it
        attr = node.attributes.get("value")
        if attr is not None:
            tensor = attr.as_tensor()
            if tensor.dtype in FLOAT_TYPES:
                total += math.prod(tensor.shape.dims)
        elif "value_float" in node.attributes:
            total += 1
        elif "value_floats" in node.attributes:
            total += len(node.attributes["value_floats"].value)
    return total
