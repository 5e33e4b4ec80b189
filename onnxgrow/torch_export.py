"""ONNX -> trainable torch.nn.Module, and trained weights back into the same ONNX graph.

`to_torch(model)` builds a `torch.fx.GraphModule` (onnxgrow/torch_graph.py): torch's own layers
at the module paths the exporter recorded, the rest of the graph as readable fx code. Its
`onnx_names` / `onnx_layouts` / `onnx_rewire` say which initializer each state entry came from,
transposed or not, and which BatchNormalization statistics are private copies of shared ones;
`load_weights` and `import-weights` write a trained state (DDP, FSDP, torch.compile's wrapper and
PEFT LoRA adapters, merged, included) back through them.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx_ir as ir

from . import files, graph, ops
from .errors import GrowError

# ----------------------------------------------------------------------------- to_torch


def to_torch(model):
    """A trainable `torch.fx.GraphModule` computing what `model` computes (see torch_graph).

    Raises GrowError, listing every offending op type, when the model uses ops the converter
    does not cover.
    """
    require_torch()
    from .torch_graph import build

    irm = graph.load(model)
    if irm.functions:
        from onnx_ir.passes.common import InlinePass

        InlinePass()(irm)
    _check_supported(irm.graph)
    graph.infer_shapes(irm)  # ranks and types pick torch layers and size arithmetic
    from onnx_ir.passes.common import NameFixPass

    from .torch_graph import UNNAMED

    for node in irm.graph:
        if not node.name:
            node.meta[UNNAMED] = True  # layers of unnamed nodes are named after their type
    NameFixPass()(irm)  # every value named: names are the keys of the builder
    irm.graph.sort()
    return build(irm)


def require_torch(what: str = "the export to PyTorch"):
    """torch, or a GrowError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise GrowError(
            f"PyTorch is not installed, and {what} needs it: install it with "
            "`pip install 'onnxgrow[torch]'` (on a CPU-only machine install torch's CPU build first)."
        ) from None
    return torch


def _check_supported(g: ir.Graph) -> None:
    from .torch_ops import DTYPES, OPS

    problems: dict[str, list[str]] = defaultdict(list)
    for node in g:
        op = node.op_type if ops.is_onnx(node) else f"{node.domain}::{node.op_type}"
        if op != "Constant" and op not in OPS:
            problems[op].append(node.name or "")
            continue
        reason = _unsupported_usage(node, DTYPES)
        if reason:
            problems[f"{op} ({reason})"].append(node.name or "")
    if problems:
        listed = "; ".join(
            f"{op} ({len(names)} node{'s' if len(names) > 1 else ''}"
            + (f", e.g. {next(n for n in names if n)!r})" if any(names) else ")")
            for op, names in sorted(problems.items())
        )
        raise GrowError(
            f"cannot convert the model to PyTorch: onnxgrow's converter does not support {listed}. "
            "Run this model in onnxruntime instead, or re-export it without these ops (the "
            "default opset of torch.onnx.export gives only covered ones for common layers); the "
            "covered op types are the keys of onnxgrow.torch_ops.OPS."
        )


def _unsupported_usage(node: ir.Node, dtypes) -> str | None:
    """Why an op that the converter knows is used here in a way it does not cover, or None."""
    op = node.op_type
    at = lambda name, default=None: graph.attr(node, name, default)  # noqa: E731
    used = [bool(v is not None and (v.uses() or v.is_graph_output())) for v in node.outputs]
    if op == "Constant":
        if not any(k in node.attributes for k in ("value", "value_float", "value_floats",
                                                 "value_int", "value_ints")):
            return "only numeric values"
    elif op == "Resize":
        if at("mode", "nearest") not in ("nearest", "linear"):
            return f"mode {at('mode')!r}"
        if at("coordinate_transformation_mode") == "tf_crop_and_resize":
            return "tf_crop_and_resize"
        if at("antialias", 0):
            return "antialias"
    elif op == "Upsample" and at("mode", "nearest") not in ("nearest", "linear"):
        return f"mode {at('mode')!r}"
    elif op == "AveragePool" and any(d != 1 for d in at("dilations", ()) or ()):
        return "dilations"
    elif op == "MaxPool" and len(used) > 1 and used[1]:
        return "Indices output"
    elif op == "BatchNormalization" and (at("training_mode", 0) or any(used[1:])):
        return "training_mode=1; export the model in eval mode"
    elif op == "Cast" and at("to") not in dtypes:
        return f"cast to data type {at('to')}"
    elif op == "Pad" and at("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"mode {at('mode')!r}"
    elif op == "DepthToSpace" or op == "SpaceToDepth":
        if node.inputs[0].shape is not None and len(node.inputs[0].shape) != 4:
            return "input not 4-D"
    for a in node.attributes.values():
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return "subgraphs"
    return None


# ----------------------------------------------------------------------------- export file


def export_file(model, out) -> Path:
    """`torch.save` the converted module to `out`, atomically; returns the path.

    The file holds the whole module, its generated code included, so it runs on its own wherever
    onnxgrow and torch import: `torch.load(out, weights_only=False)` (loading runs that code: load
    only files you trust). `onnxgrow import-weights` reads such a file without running it.
    """
    dest = files.check_output(out, reads=[model])
    module = to_torch(model)
    import torch

    with graph.staged(dest, source=model) as tmp:
        try:
            torch.save(module, tmp)
        except OSError as exc:
            raise GrowError(f"cannot write {str(dest)!r}: {exc.strerror or exc}.") from None
    return dest


# ----------------------------------------------------------------------------- write-back


def load_weights(model, module):
    """`model` (not modified) with its initializers replaced by `module`'s state -> ModelProto.

    `module` is a module from `to_torch(model)` (also inside DistributedDataParallel or another
    module), or its `state_dict()`. Parameters and persistent buffers (BatchNormalization running
    statistics included) are written; a shape that differs from the initializer's is an error.
    """
    irm = graph.load(model)
    _apply_weights(irm, module)
    return graph.to_proto(irm)


def import_weights_file(model, trained_pt, out) -> Path:
    """Write the state in `trained_pt` (from `export_file`, or a state_dict) into `model` -> `out`."""
    require_torch()
    files.check_output(out, reads=[model, trained_pt])
    irm = graph.load(model)
    reads = [trained_pt, *graph.data_files(irm)]
    files.check_output(out, reads=reads)
    _apply_weights(irm, _load_trained(trained_pt))
    return graph.save(irm, out, source=model, reads=reads)


def _load_trained(path):
    """The state of a module saved by `export_file` (or after training), or a state_dict, read safely.

    Only torch's layers, onnxgrow's classes and tensors are unpickled (torch's weights_only mode);
    a saved GraphModule's code is not run: its state is read from the pickled module tree. A .pt
    holding other Python objects could run arbitrary code when loaded, so it is refused.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise GrowError(f"the trained file {str(path)!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise GrowError(f"{str(path)!r} is not a PyTorch file (torch.save writes a zip archive); "
                        "pass the .pt file written by `onnxgrow export` or by torch.save.")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GrowError(
            f"{str(path)!r} holds Python objects other than an onnxgrow module or tensors; "
            "loading it could run arbitrary code, so onnxgrow does not. "
            "Save the trained module's `state_dict()` (of the module `onnxgrow.to_torch` or "
            "`onnxgrow export` gave you) with torch.save and import that."
        ) from None
    except Exception as exc:
        raise GrowError(f"cannot read {str(path)!r} as a PyTorch file ({_first_line(exc)}).") from None
    return _GraphModuleState.module(loaded) if isinstance(loaded, _GraphModuleState) else loaded


class _GraphModuleState(dict):
    """What a pickled GraphModule holds, taken without running its code: its attribute dict."""

    @staticmethod
    def from_pickle(body, import_block=None):
        return _GraphModuleState(body)

    @staticmethod
    def module(body):
        import torch

        holder = torch.nn.Module()
        for key in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            if key in body:
                setattr(holder, key, body[key])
        for key in ("onnx_names", "onnx_layouts", "onnx_rewire"):
            setattr(holder, key, body.get(key, {}))
        return holder


def _safe_globals() -> list:
    """The classes a saved onnxgrow module is made of, for torch.load's weights_only mode."""
    import torch
    from torch import nn

    from .torch_graph import OnnxTracer
    from .torch_ops import Node, OnnxOp

    layers = [OnnxTracer, nn.Module, nn.Linear, nn.Embedding, nn.Dropout, nn.LayerNorm, nn.Conv1d, nn.Conv2d,
              nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.BatchNorm1d,
              nn.BatchNorm2d, nn.BatchNorm3d, OnnxOp, Node, set, torch.fx.graph_module.GraphModule]
    return layers + [(_GraphModuleState.from_pickle, "torch.fx.graph_module.reduce_graph_module")]


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _resolve(source, irm: ir.Model):
    """(state dict, state name -> initializer, state name -> layout, state name -> (bn output, slot))."""
    import torch

    if isinstance(source, torch.nn.Module):
        if hasattr(source, "get_base_model") and hasattr(source, "peft_config"):
            base = source.get_base_model()
            return _lora_merged_state(base), base.onnx_names, base.onnx_layouts, base.onnx_rewire
        found = [m for m in source.modules() if hasattr(m, "onnx_names") and hasattr(m, "onnx_rewire")]
        if len(found) != 1:
            raise GrowError(
                f"the trained module holds {len(found)} onnxgrow modules; pass the module "
                "`onnxgrow.to_torch` returned (or its state_dict)."
            )
        m = found[0]
        return m.state_dict(), m.onnx_names, m.onnx_layouts, m.onnx_rewire
    if isinstance(source, dict) and all(isinstance(v, torch.Tensor) for v in source.values()):
        state = dict(source)
        for prefix in ("module.", "_orig_mod."):  # saved from DDP, or from torch.compile's wrapper
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        ref = to_torch(irm)
        missing = sorted(set(ref.onnx_names) - set(state))
        if missing:
            raise GrowError(
                f"the state dict lacks {len(missing)} entries this model needs, e.g. "
                f"{', '.join(missing[:5])}: was it saved from a module converted from this model?"
            )
        return state, ref.onnx_names, ref.onnx_layouts, ref.onnx_rewire
    raise GrowError(
        f"cannot take weights from a {type(source).__name__}: pass the module from "
        "`onnxgrow.to_torch` / `onnxgrow export`, or its state_dict()."
    )


def _apply_weights(irm: ir.Model, source) -> None:
    state, names, layouts, rewire = _resolve(source, irm)
    g = irm.graph
    missing = sorted({names[s] for s in names if names[s] not in g.initializers})
    if missing:
        raise GrowError(
            f"the model has no initializer named {', '.join(repr(m) for m in missing[:5])}: "
            "the weights come from a different model. Import them into the model they were "
            "exported from."
        )
    arrays = {}
    for state_name, onnx_name in names.items():
        if state_name not in state:
            raise GrowError(f"the trained weights lack {state_name!r} (initializer {onnx_name!r}).")
        init = g.initializers[onnx_name].const_value
        array = _to_numpy(state[state_name], init.dtype.numpy())
        if layouts.get(state_name) == "T" and array.ndim == 2:
            array = array.T
        if array.size == init.size and _squeezed(array.shape) == _squeezed(init.shape.numpy()):
            array = np.ascontiguousarray(array).reshape(init.shape.numpy())  # Gemm's (1, n) bias
        if tuple(array.shape) != tuple(init.shape.numpy()):
            raise GrowError(
                f"the trained tensor {state_name!r} has shape {tuple(array.shape)} but the "
                f"model's initializer {onnx_name!r} has shape {tuple(init.shape.numpy())}: the "
                "weights belong to a differently shaped model (grown after export?). Export the "
                "model you want to update and train that."
            )
        arrays[state_name] = array
    for state_name, onnx_name in names.items():
        if state_name not in rewire:
            g.initializers[onnx_name].const_value = ir.tensor(arrays[state_name], name=onnx_name)
    changed = False
    for state_name, (bn_out, slot) in sorted(rewire.items()):
        onnx_name = names[state_name]
        if np.array_equal(arrays[state_name], g.initializers[onnx_name].const_value.numpy()):
            continue
        node = next((n for n in g if n.op_type == "BatchNormalization" and n.outputs[0].name == bn_out), None)
        if node is None:
            raise GrowError(f"the model has no BatchNormalization producing {bn_out!r}: the "
                            "weights come from a different model.")
        new_name = _unique_name(g, f"{onnx_name}.{bn_out}")
        value = ir.Value(name=new_name, const_value=ir.tensor(arrays[state_name], name=new_name),
                         shape=ir.Shape(arrays[state_name].shape),
                         type=ir.TensorType(g.initializers[onnx_name].const_value.dtype))
        g.register_initializer(value)
        node.replace_input_with(slot, value)
        changed = True
    if changed:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(irm)


def _lora_merged_state(base) -> dict:
    """The state of a PEFT-adapted module with its active LoRA adapters merged into the layers they
    adapt, under the layers' own names (the module is left as it is)."""
    merged = {}
    for name, m in base.named_modules():
        if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer"):
            weight = m.base_layer.weight.detach()
            for adapter in m.active_adapters:
                if adapter in getattr(m, "lora_A", {}):
                    weight = weight + m.get_delta_weight(adapter).detach()
            merged[f"{name}.weight"] = weight
    state = {}
    for key, value in base.state_dict().items():
        if "lora_" not in key:
            key = key.replace(".base_layer.", ".")
            state[key] = merged.get(key, value)
    return state


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1)


def _unique_name(g: ir.Graph, base: str) -> str:
    taken = set(g.initializers) | {v.name for n in g for v in n.outputs} | {v.name for v in g.inputs}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _to_numpy(t, dtype) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().astype(dtype, copy=False)
