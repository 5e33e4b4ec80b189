"""`onnxgrow inspect`: every Conv, ConvTranspose, Gemm and MatMul-with-constant-weight node, its
widths, and which transforms apply to it — or why not.

The answers come from the same code the transforms run (groups.find_group for widen,
deepen.deepen_options for deepen), so what inspect promises, widen and deepen deliver.
"""

from __future__ import annotations

import os

import onnx_ir as ir

from . import graph as g
from . import groups as gr
from . import names
from .errors import GrowError, tolerate
from .layerspec import layer_spec
from .methods import widen_methods_for


def describe(model) -> dict:
    """The inspect report of `model` (path, ModelProto, onnx_ir.Model) as a JSON-ready dict."""
    ir_model = g.load(model)
    g.prepare(ir_model)
    graph = ir_model.graph
    layers = []
    groups_by_producer: dict[int, gr.Group] = {}
    for node in graph:
        if g.is_weight_layer(node):
            layers.append(_describe_layer(node, groups_by_producer))
    return {
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else (graph.name or "model"),
        "ir_version": ir_model.ir_version,
        "opset": graph.opset_imports.get("", None),
        "inputs": [_describe_value(v) for v in graph.inputs if v.name not in graph.initializers],
        "outputs": [_describe_value(v) for v in graph.outputs],
        "parameters": g.parameter_count(ir_model),
        "layers": layers,
        "blocks": _describe_blocks(ir_model),
    }


def _describe_blocks(model: ir.Model) -> list[dict]:
    """The residual blocks `deepen --block` can copy, with the methods that apply."""
    from .blocks import block_methods, find_blocks

    described = []
    for block in find_blocks(model):
        methods, why = block_methods(block)
        described.append({**block.describe(), "methods": methods, **({"not": why} if why else {})})
    return described


def _describe_value(value: ir.Value) -> dict:
    shape = g.static_shape(value)
    return {"name": value.name, "dtype": str(value.dtype.name.lower()) if value.dtype else None,
            "shape": list(shape) if shape is not None else None}


def _describe_layer(node: ir.Node, groups_by_producer: dict) -> dict:
    spec = layer_spec(node)
    entry = {
        "name": node.name,
        "module": names.module_path(node),
        "op": node.op_type,
        "width": spec.width,
        "in_width": spec.in_width,
        "kernel": list(spec.kernel) if spec.kernel is not None else None,
        "widen": _widen_entry(node, groups_by_producer),
        "deepen": _deepen_entry(node),
    }
    entry["activation"] = entry["deepen"].pop("activation", None)
    if node.op_type in ("Conv", "ConvTranspose"):
        entry["morph_kernel"] = _kernel_entry(node)
    return entry


def _widen_entry(node: ir.Node, groups_by_producer: dict) -> dict:
    group = groups_by_producer.get(id(node))
    if group is None:
        try:
            group = gr.find_group(node)
        except GrowError as exc:
            return {"reason": str(exc)}
        except Exception as exc:  # one layer's analysis failing must not take inspect down
            return _internal(exc)
        for producer in group.producers:
            groups_by_producer[id(producer)] = group
    methods, why = widen_methods_for(group)
    others = [n.name for n in group.producers + group.consumers if n is not node]
    entry = {"methods": methods, "group": others}
    if why:
        entry["not"] = why
    if group.block > 1 and group.broadcasts and group.outer > 1:
        entry["note"] = (f"grows by query heads of {group.block} channels, one in each of the {group.outer} "
                         f"key/value heads' groups: the new width must be a multiple of {group.outer * group.block}")
    elif group.block > 1:
        entry["note"] = (f"grows by whole attention heads of {group.block} channels: the new width "
                         f"must be a multiple of {group.outer * group.block}")
        query_group = max((e.slot.block for e in group.edits), default=group.block) // group.block
        if query_group > 1:  # key/value heads of grouped-query attention
            entry["note"] += f" (each new key/value head comes with its {query_group} query heads)"
    elif group.outer > 1:
        entry["note"] = (f"passes a grouped convolution: the new width must be a multiple of "
                         f"{group.outer}")
    if group.uniform_only:
        entry["note"] = (f"normalised over its channels ({', '.join(group.uniform_only[:2])}): a "
                         f"multiple of {group.width} replicates units; any other width pads the "
                         "stream (zeros under RMS norms, the mean under pre-norm LayerNorm; "
                         "post-norm stacks need a multiple)")
    return entry


def _deepen_entry(node: ir.Node) -> dict:
    from .deepening import deepen_options

    try:
        return deepen_options(node)
    except GrowError as exc:
        return {"reason": str(exc)}
    except Exception as exc:  # one layer's analysis failing must not take inspect down
        return _internal(exc)


def _internal(exc: Exception) -> dict:
    """A layer whose analysis hit a bug: nothing is promised for it (strict mode: raise)."""
    tolerate(exc)
    return {"reason": f"internal error while analysing this layer ({type(exc).__name__}: {exc}); "
                      "this is a bug in onnxgrow, please report it", "internal": True}


def _kernel_entry(node: ir.Node) -> dict:
    """Whether `onnxgrow morph-kernel` can grow this layer's kernel: {"kernel": [...]} or a reason."""
    from .deepening import kernel_options

    try:
        return kernel_options(node)
    except Exception as exc:  # one layer's analysis failing must not take inspect down
        return _internal(exc)


def _deepen_cell(deepen: dict) -> str:
    """Methods, and where the new layer goes: after the layer and the ops listed (+BN→Relu)."""
    if "methods" not in deepen:
        return "no"
    through = deepen.get("through") or []
    return ",".join(deepen["methods"]) + (f" (+{'→'.join(through)})" if through else "")


def format_table(info: dict) -> str:
    """The human-readable inspect output."""
    rows = [("layer", "module", "op", "in->out", "kernel", "act", "widen", "deepen (inserted after +ops)")]
    for layer in info["layers"]:
        widen, deepen = layer["widen"], layer["deepen"]
        rows.append((
            layer["name"], layer["module"] or "-", layer["op"], f"{layer['in_width']}->{layer['width']}",
            "x".join(map(str, layer["kernel"])) if layer["kernel"] else "-",
            layer["activation"] or "-",
            ",".join(widen["methods"]) + (f" (+{len(widen['group'])} coupled)" if widen.get("group") else "")
            if "methods" in widen else "no",
            _deepen_cell(deepen),
        ))
    widths = [min(max(len(str(r[i])) for r in rows), 60) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c)[:w].ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ins = ", ".join(f"{v['name']}{v['shape']}" for v in info["inputs"])
    outs = ", ".join(f"{v['name']}{v['shape']}" for v in info["outputs"])
    head = [f"model: {info['model']}  (IR {info['ir_version']}, opset {info['opset']}, "
            f"{info['parameters']:,} parameters)", f"inputs: {ins}", f"outputs: {outs}", ""]
    notes = []
    for layer in info["layers"]:
        for key in ("widen", "deepen"):
            if "reason" in layer[key]:
                notes.append(f"  {layer['name']}: {key} no: {layer[key]['reason']}")
    blocks = [f"  {b['index']}: {b['path'] or '-'} ({b['units']} residual unit(s){', attention' if b['attention'] else ''}; "
              f"{b['first']} … {b['last']}): {','.join(b['methods'])}" for b in info.get("blocks", [])]
    tail = (["", "blocks (deepen --block PATH|INDEX):"] + blocks if blocks else [])
    tail += ["", "why not:"] + notes if notes else []
    return "\n".join(head + lines + tail)
