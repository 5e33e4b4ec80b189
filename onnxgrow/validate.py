"""Checks on a model file before onnxgrow works on it: refusals, never repairs.

A model is read as a protobuf without its external data (`check_model_proto`), and refused when
onnxruntime or onnxgrow could not use it faithfully:

- its IR version or default-domain opset is newer than the installed onnx knows;
- its graph is not a well-formed SSA program: every node input must be a graph input, an
  initializer, or an output of an EARLIER node (this catches undefined tensors, cycles and
  nodes out of order alike); no value is defined twice; every graph output is produced;
- two initializers share a name (onnxruntime keeps the last, other readers the first, so the
  model has no single meaning);
- an initializer's data does not hold prod(dims) elements (inline data too short or too long;
  external data whose file is missing, lies outside the model's folder (also through a symbolic
  link), has several hard links (as onnx-ir refuses), or is shorter than offset + prod(dims)·itemsize);
- a weight (input 1 of Conv/ConvTranspose/Gemm/MatMul) has a zero-size dimension. (A graph input
  declaring 0, or -1, is not refused: old exporters write them for "any size", see graph.dim.)
- a name (of a node, an op, a value) is not valid UTF-8 (protobuf hands such a field over as bytes);
- a layer no runtime can run: a Conv or ConvTranspose with group < 1, or whose weight is not at
  least 3-D or has output channels not divisible by its groups; a Gemm whose constant A or B is
  not 2-D.

`check_finite` refuses weights holding NaN or ±Inf before a transform: the teacher's outputs
would be non-finite, and comparing NaN with NaN proves nothing. A single-element ±Inf is a bound,
not a weight, and is kept: torch writes `clamp(min=…)` as Clip with max = +Inf (openWakeWord's
mel front end), tf2onnx a floor as Max(−Inf, x) (Magika).

`check_growth_memory` refuses a width or kernel whose new weights cannot fit in the available
memory: a lower bound on the new bytes (one output unit's share of the layer's weight times the
requested units, or the new kernel's taps times the output channels) against MemAvailable.
"""

from __future__ import annotations

import functools
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from . import ops
from .errors import GrowError


# ----------------------------------------------------------------------------- the protobuf


class GraphIndex:
    """Which node produces and which nodes read each value of a graph (node indices), and whether
    a node holds a subgraph: recorded by the order check, which walks them all anyway."""

    def __init__(self):
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        self.subgraphs = False


def check_model_proto(proto: onnx.ModelProto, where: str, base_dir: Path | None = None,
                      index: GraphIndex | None = None) -> None:
    """Refuse a model onnxgrow cannot read faithfully (see the module docstring); fill `index`
    for the main graph when given one."""
    _check_versions(proto, where)
    g = proto.graph
    _check_graph(g, where, outer=set(), index=index)
    _check_initializers(g, where, base_dir)
    _check_zero_sizes(g, where)
    _check_layers(g, where)


def _check_versions(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version > onnx.IR_VERSION:
        raise GrowError(
            f"{where} has IR version {proto.ir_version}, newer than the installed onnx "
            f"{onnx.__version__} reads (up to {onnx.IR_VERSION}). Upgrade onnx and onnxruntime, "
            "or re-export the model for an older IR version."
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ops.ONNX_DOMAINS and opset.version > newest:
            raise GrowError(
                f"{where} imports opset {opset.version} of the default ONNX domain; the installed "
                f"onnx {onnx.__version__} knows opsets up to {newest}. Re-export the model with "
                f"opset {newest} or lower, or upgrade onnx and onnxruntime."
            )
    imported = {o.domain if o.domain != "ai.onnx" else "" for o in proto.opset_import} or {""}
    imported |= {f.domain for f in proto.functions}  # model-local functions resolve themselves
    for node in proto.graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        if domain not in imported:
            raise GrowError(
                f"node {node.name or node.op_type!r} ({node.op_type}) is in the domain "
                f"{node.domain!r}, which {where} does not import (opset_import), so no runtime "
                "can resolve it. Add the domain to the model's opset imports, or re-export it."
            )


def _check_graph(g: onnx.GraphProto, where: str, outer: set, index: GraphIndex | None = None) -> None:
    """SSA order: every input defined before its use, nothing defined twice, outputs produced."""
    producer = index.producer if index is not None else {}
    readers = index.consumers if index is not None else None
    inputs = [i.name for i in g.input]
    _check_utf8((*inputs, *(o.name for o in g.output), *(t.name for t in g.initializer),
                 *(v.name for v in g.value_info)), "a value of the graph", where)
    if len(set(inputs)) != len(inputs):
        twice = sorted({n for n in inputs if inputs.count(n) > 1})
        raise GrowError(f"{where} declares the graph input {twice[0]!r} twice; rename one of them.")
    defined = set(inputs)
    defined.update(t.name for t in g.initializer)
    defined.update(s.values.name for s in g.sparse_initializer)
    subgraph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    for position, node in enumerate(g.node):
        _check_utf8((node.name, node.op_type, node.domain, *node.input, *node.output,
                     *(a.name for a in node.attribute)), f"node #{position}", where)
        for name in node.input:
            if name and name not in defined and name not in outer:
                _undefined_input(g, position, name, where)
            if readers is not None:
                readers[name].append(position)
        if node.op_type in ops.SUBGRAPH_OPS or node.domain not in ops.ONNX_DOMAINS:
            for attr in node.attribute:
                if attr.type in subgraph_types:
                    if index is not None:
                        index.subgraphs = True
                    for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                        _check_graph(sub, where, outer | defined)
        for name in node.output:
            if name and name in defined:
                raise GrowError(
                    f"{where} is not a valid graph: the value {name!r} is defined twice (node "
                    f"{_label(node, position)} produces it again). Each value must have one producer; "
                    "re-export the model or rename one of them."
                )
            defined.add(name)
            producer[name] = position
    for out in g.output:
        if out.name not in defined and out.name not in outer:
            raise GrowError(
                f"{where} is not a valid graph: its output {out.name!r} is not produced by any node, "
                "graph input or initializer. Re-export the model, or remove that output."
            )


def _check_utf8(texts, what: str, where: str) -> None:
    """protobuf hands a string field that is not valid UTF-8 over as bytes."""
    for text in texts:
        if isinstance(text, bytes):
            raise GrowError(
                f"{what} in {where} has a name that is not valid UTF-8 text ({text!r}): ONNX names "
                "are UTF-8 strings. The file is corrupt, or was written by a tool that does not "
                "encode names; re-export the model with valid names."
            )


def _label(node: onnx.NodeProto, index: int) -> str:
    return repr(node.name) if node.name else f"#{index} ({node.op_type})"


def _undefined_input(g: onnx.GraphProto, index: int, name: str, where: str) -> None:
    later = next((n for n in g.node if name in n.output), None)
    why = (f"produced only by a later node, {later.name or later.op_type!r} (the nodes are out of "
           "topological order or form a cycle)" if later is not None
           else "which no graph input, initializer or node defines")
    raise GrowError(
        f"{where} is not a valid graph: node {_label(g.node[index], index)} reads {name!r}, {why}. "
        "Check it with `python -m onnx.checker` and re-export the model."
    )


def _check_initializers(g: onnx.GraphProto, where: str, base_dir: Path | None) -> None:
    seen: set = set()
    for t in g.initializer:
        if t.name in seen:
            raise GrowError(
                f"{where} holds two initializers named {t.name!r}: onnxruntime uses the last, "
                "other tools the first, so the model has no single meaning. Remove one of them."
            )
        seen.add(t.name)
        _check_tensor_data(t, where, base_dir)


@functools.lru_cache(maxsize=None)
def itemsize_bits(data_type: int) -> int | None:
    if data_type == onnx.TensorProto.STRING:
        return None
    try:
        import onnx_ir as ir

        return ir.DataType(data_type).bitwidth
    except Exception:  # an unknown data type: onnx-ir reports it on conversion
        return None


def _check_tensor_data(t: onnx.TensorProto, where: str, base_dir: Path | None) -> None:
    if t.dims and min(t.dims) < 0:
        raise GrowError(f"the initializer {t.name!r} in {where} has a negative dimension "
                        f"{list(t.dims)}; the file is corrupt. Re-export the model.")
    count = math.prod(t.dims)
    bits = itemsize_bits(t.data_type)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        if bits is not None:
            _check_external(t, where, base_dir, (count * bits + 7) // 8)
        return
    if t.HasField("raw_data") and bits is not None:
        have, need = len(t.raw_data), (count * bits + 7) // 8
        unit = "bytes"
    elif bits is not None and bits >= 8:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
        complex_ = t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
        have, need, unit = len(getattr(t, field)), count * (2 if complex_ else 1), "values"
    else:
        return
    if have != need:
        raise GrowError(
            f"the initializer {t.name!r} in {where} has dims {list(t.dims)} ({need} {unit}) but "
            f"holds {have} {unit} of data: the file is truncated or corrupt. Re-export the model."
        )


def _check_external(t: onnx.TensorProto, where: str, base_dir: Path | None, need: int) -> None:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    offset, length = int(info.get("offset", 0) or 0), info.get("length")
    if length is not None and int(length) != need:
        raise GrowError(f"the initializer {t.name!r} in {where} says its external data is {length} "
                        f"bytes long, but dims {list(t.dims)} need {need}. Re-export the model.")
    if base_dir is None:
        return  # an in-memory model: onnx-ir resolves the data files on use
    folder = base_dir.resolve()
    path = (folder / location).resolve()
    if not location or Path(location).is_absolute() or folder not in path.parents:
        raise GrowError(
            f"the initializer {t.name!r} in {where} keeps its data at {location!r}, outside the "
            f"model's folder {str(folder)!r}; onnxgrow only reads data files beside the model "
            "(a model must not point at arbitrary files). Move the data file next to the model "
            "and set its location to the bare file name."
        )
    if not path.is_file():
        raise GrowError(f"the external data file {location!r} of {where} (initializer {t.name!r}) "
                        f"is missing from {str(folder)!r}. Copy the .data file next to the model.")
    stat = path.stat()
    if stat.st_nlink > 1:  # onnx-ir refuses these too: a hard link can smuggle in any file
        raise GrowError(
            f"the external data file {location!r} of {where} has {stat.st_nlink} hard links; "
            "onnx-ir refuses to read such a file (a hard link can make any file look local). "
            "Replace the link with a copy of the file."
        )
    size = stat.st_size
    if offset + need > size:
        raise GrowError(
            f"the external data file {location!r} of {where} is {size} bytes, too short for "
            f"initializer {t.name!r} ({need} bytes at offset {offset}): it is truncated. Copy it "
            "again from the source."
        )


def _check_zero_sizes(g: onnx.GraphProto, where: str) -> None:
    empty = [t for t in g.initializer if 0 in t.dims]
    if not empty:
        return
    weights = {n.input[1]: n for n in g.node
               if n.op_type in ops.WEIGHT_OPS and n.domain in ops.ONNX_DOMAINS and len(n.input) > 1}
    for t in empty:
        if t.name in weights:
            node = weights[t.name]
            raise GrowError(
                f"the weight {t.name!r} of {node.op_type} {node.name!r} in {where} has a zero-size "
                f"dimension {list(t.dims)}: the layer has no units to grow or copy. Re-export the "
                "model with the layer's real size."
            )


def _check_layers(g: onnx.GraphProto, where: str) -> None:
    """Layers that no runtime can run (onnxruntime refuses them too): refused by name, rather than
    failing inside a transform or converting to a module that computes something else."""
    constants = {t.name: t for t in g.initializer}
    for position, node in enumerate(g.node):
        if node.domain not in ops.ONNX_DOMAINS or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        label = f"{node.op_type} {_label(node, position)} in {where}"
        if node.op_type == "Gemm":
            for slot, operand in ((0, "A"), (1, "B")):
                t = constants.get(node.input[slot]) if len(node.input) > slot else None
                if t is not None and len(t.dims) != 2:
                    raise GrowError(f"{label} has a {len(t.dims)}-D {operand} ({t.name!r}, dims "
                                    f"{list(t.dims)}); Gemm multiplies 2-D matrices. Re-export the "
                                    "model (a MatMul takes higher ranks).")
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group < 1:
            raise GrowError(f"{label} has group={group}; the number of groups is a positive integer "
                            "(1 for an ordinary convolution). The file is corrupt or was edited: "
                            "re-export the model.")
        w = constants.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        if len(w.dims) < 3:
            raise GrowError(f"{label} has a {len(w.dims)}-D weight {w.name!r} (dims {list(w.dims)}); "
                            "a convolution's weight has at least 3 dimensions (channels, channels "
                            "per group, kernel). Re-export the model.")
        if w.dims[0] % group:
            raise GrowError(f"{label} has group={group}, which does not divide the {w.dims[0]} "
                            f"channels of dimension 0 of its weight {w.name!r}. The file is "
                            "corrupt or was edited: re-export the model.")


# ----------------------------------------------------------------------------- weights


def check_finite(model, where: str = "the model") -> None:
    """Refuse an onnx_ir.Model whose float initializers hold NaN or ±Inf."""
    bad = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or not tensor.dtype.is_floating_point():
            continue
        _count_non_finite(value.name, tensor.numpy(), bad)
    _refuse_non_finite(bad, where)


def check_finite_tensors(tensors, where: str = "the model") -> None:
    """As `check_finite`, for the TensorProtos of an inline model."""
    import onnx_ir as ir

    bad = []
    for tensor in tensors:
        if ir.DataType(tensor.data_type).is_floating_point():
            _count_non_finite(tensor.name, ir.serde.TensorProtoTensor(tensor).numpy(), bad)
    _refuse_non_finite(bad, where)


def _count_non_finite(name: str, array: np.ndarray, bad: list) -> None:
    if array.size == 1 and np.isinf(array).all():
        return  # a bound (Clip's max = +Inf, Max(−Inf, x)), not a diverged weight
    count = int(array.size - np.count_nonzero(np.isfinite(array)))
    if count:
        bad.append(f"{name!r} ({count} of {array.size})")


def _refuse_non_finite(bad: list, where: str) -> None:
    if bad:
        raise GrowError(
            f"{where} has NaN or infinite weights: {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}. Its outputs would be "
            "non-finite, so no student could be verified against it. Fix the weights (the "
            "training diverged, or the file was damaged) and try again."
        )


# ----------------------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_allocation(need: float, request: str, what: str = "the new weights") -> None:
    """Refuse `request` when `need` bytes (for `what`) exceed the memory available now."""
    have = available_memory()
    if need > have:
        raise GrowError(
            f"{request} would need at least {human_bytes(need)} of memory for {what} alone; "
            f"{human_bytes(have)} is available. Ask for a smaller size."
        )


def check_growth_memory(node, *, width: int | None = None, kernel: int | None = None) -> None:
    """Lower bound on the new weights of widening `node` to `width` units or growing its kernel
    (or an inserted layer's) to `kernel`, against the available memory."""
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
        return
    w = node.inputs[1].const_value
    dims = [int(d) for d in w.shape.numpy()]
    if not dims or 0 in dims:
        return
    itemsize = max(w.dtype.itemsize, 1)
    if width is not None:
        per_unit = math.prod(dims) * itemsize / max(dims)  # the out axis is at most the longest
        check_allocation(per_unit * width, f"widening {node.name!r} to {width} units")
    if kernel is not None and len(dims) > 2:
        channels = dims[1] if node.op_type == "ConvTranspose" else dims[0]
        check_allocation(channels * float(kernel) ** (len(dims) - 2) * itemsize,
                         f"a {kernel}x{kernel} kernel on {node.name!r} ({channels} channels)")
