"""ONNX graph -> torch.fx.GraphModule with torch's own layers at the user's module paths.

`build(model)` writes one fx node per ONNX node, in topological order:
- **Layers** become torch modules placed where the exporter recorded them (the weight's
  state-dict name, else the node's module scope; see onnxgrow/names.py): Conv → `nn.Conv1d/2d/3d`,
  ConvTranspose → `nn.ConvTranspose*`, Gemm and MatMul by a constant matrix (with the bias Add
  that follows it, and the Transpose the weight sits behind) → `nn.Linear`, Gather from a
  constant table → `nn.Embedding`, BatchNormalization → `nn.BatchNorm*`, LayerNormalization over
  the last axis → `nn.LayerNorm`, RMSNorm as exporters decompose it (Pow, ReduceMean, Add, Sqrt,
  Reciprocal, Mul, Mul by the gain) → `nn.RMSNorm`, Dropout → `nn.Dropout`. A layer whose ONNX form has no exact
  module (padding that depends on the input size, a Gemm with alpha ≠ 1, ...) stays functional.
  A 1x1 Conv with stride s becomes `x[:, :, ::s, ::s]` and a stride-1 `nn.Conv2d` (the same sums):
  torch 2.13's CPU backward of a strided 1x1 conv in channels_last, the layout inductor gives
  convs, segfaults on odd batch sizes (a hand-written ResNet's downsample crashes the same way).
- **Other weights** (RMSNorm gains, positional embeddings, class tokens) are parameters at their
  state-dict path when they have one (`model.norm.weight`), else at a name made from the
  initializer's; constants are buffers.
- **Sizes**: Shape, and the integer arithmetic over it, run as Python arithmetic on sizes
  (onnxgrow/torch_sizes.py), so tracing and torch.compile keep them symbolic.
- **Torch calls** where the two agree exactly: `torch.relu`, `operator.add`, `F.silu` for
  `x * sigmoid(x)`, `torch.permute`, `torch.cat`, `torch.softmax`, `torch.reshape`, `x[..., a:b]`
  for constant Slices: the code reads as a user's and runs without per-op dispatch.
- **Everything else** runs the op's implementation in onnxgrow/torch_ops.py (`onnx_op(...)`).

The module carries what write-back needs: `onnx_names` (state name → initializer),
`onnx_layouts` (state names stored transposed: Linear weights of MatMul/Gemm(transB=0)) and
`onnx_rewire` (private copies of BatchNormalization statistics shared between nodes:
state name → (output of the BatchNormalization node, input slot)).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch
from torch import fx, nn

from . import graph, names, ops, torch_sizes
from .checkpoints import history
from .errors import GrowError
from .torch_ops import DTYPES, OnnxOp, torch_pad, onnx_op

# Ops through which a constant keeps its role: a Transpose of a weight is still a weight.
PASS_THROUGH = ops.RELAYOUT | {"Tile", "Slice"}
WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,), "Gather": (0,),
}
ANY_SLOT = {"Einsum", "Concat"}
ARITHMETIC = {"Add", "Sub", "Mul", "Div"}
TRAIN_DEPENDENT = {"BatchNormalization", "Dropout"}  # functional forms that read module.training

# Inputs that take sizes (a Python int or list) as well as tensors.
SIZE_SLOTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Unsqueeze": {1},
    "Squeeze": {1}, "Split": {1}, "Pad": {1}, "ReduceSum": {1}, "ReduceMean": {1},
    "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1}, "ReduceL2": {1}, "CumSum": {1},
    "Trilu": {1}, "SequenceAt": {1}, "SplitToSequence": {1}, "Resize": {1, 2, 3}, "Upsample": {1},
}
OPSET_DEPENDENT = {  # ops whose torch_ops implementation reads the opset
    "Clip", "Softmax", "LogSoftmax", "Hardmax", "Slice", "Pad", "Resize", "Upsample",
    "Dropout", "Split", "Squeeze", "Unsqueeze", "ReduceSum", "ReduceMean", "ReduceMax",
    "ReduceMin", "ReduceProd", "ReduceL2"}
SMALL_CONSTANT = 64  # integer constants up to this size are written into the code as literals
DIRECT = {  # ONNX op -> torch function computing exactly the same (float inputs for Div)
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
    "Reciprocal": torch.reciprocal, "Sin": torch.sin, "Cos": torch.cos, "MatMul": torch.matmul,
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul,
}
UNNAMED = "onnxgrow.unnamed"  # node meta: the node had no name of its own in the file
RESERVED = set(dir(fx.GraphModule)) | {"graph", "code", "meta", "training"}


def build(irm: ir.Model) -> fx.GraphModule:
    """The GraphModule computing what `irm` computes (see the module docstring)."""
    return _Builder(irm).module()


class OnnxTracer(fx.Tracer):
    """The tracer `torch.load` re-traces a saved module's code with: onnxgrow's helpers are
    leaves (they compute on real sizes; traced through, they would see proxies)."""

    def __init__(self, *args, **kwargs):
        helpers = tuple(f for f in vars(torch_sizes).values()
                        if callable(f) and getattr(f, "__module__", "") == torch_sizes.__name__)
        kwargs.setdefault("autowrap_functions", helpers + (onnx_op,))
        super().__init__(*args, **kwargs)


@dataclass
class _Layer:
    node: ir.Node
    module: nn.Module
    x: ir.Value  # the run-time input
    out: ir.Value  # what the module computes (the bias Add's output when one was absorbed)
    params: dict  # module attribute -> (initializer value, layout: None or "T")
    absorbed: list = field(default_factory=list)  # nodes the module computes too
    pre_pad: list | None = None  # F.pad before the module (asymmetric Conv padding)
    pre_stride: tuple | None = None  # x[:, :, ::s, ::s] before a 1x1 conv given stride 1 instead
    path: str = ""


class _Builder:
    def __init__(self, irm: ir.Model):
        self.g = irm.graph
        self.opset = ops.opset(irm)
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.tensor: dict[str, fx.Node] = {}  # ONNX value name -> fx node of its tensor
        self.size: dict[str, object] = {}  # ONNX value name -> int / list / fx node of sizes
        self.dtype: dict[str, int] = {}  # ONNX dtype of values that have a size form
        self.state: dict[str, tuple[str, str | None]] = {}  # initializer -> (state path, layout)
        self.onnx_names: dict[str, str] = {}
        self.onnx_layouts: dict[str, str] = {}
        self.onnx_rewire: dict[str, tuple[str, int]] = {}
        self.non_persistent: set[str] = set()
        self.literal: dict[str, object] = {}  # small float constants: Python floats in size slots
        self.constants: dict[str, np.ndarray] = {}  # Constant nodes' values, buffers once read as tensors
        self.anchor = None  # a graph input: the device of tensors made from sizes
        # each grown initializer's teacher name (`fc1.weight.w32` ← `fc1.weight`) and the block copies
        # it went through, from the growth history the transforms record: its layer keeps the teacher's
        # module path (in the copy's place), its state the teacher's name
        past = history.read(history.metadata_of(irm))
        grown = history.origins(past, set(irm.graph.initializers))
        self.origin = {name: (root, events) for name, (root, events, _) in grown.items()}
        # where each block of a container copies went into sits in the grown model: numbered as the
        # grown checkpoint numbers them
        self.places = {(_module_path(block) or block, events): _module_path(path) for (block, events), path
                       in history.block_places(irm.graph, grown, history.copies(past)).items()}
        self.original_path: dict[str, str] = {}  # teacher weight -> its layer's teacher module path

    # --------------------------------------------------------------------- top level

    def module(self) -> fx.GraphModule:
        g = self.g
        for v in g.inputs:
            if v.is_initializer():
                continue
            node = self.fx.placeholder(_identifier(v.name))
            self.tensor[v.name] = node
            self.anchor = self.anchor if self.anchor is not None else node
        for v in g.initializers.values():
            if v.const_value is not None and not v.is_graph_input():
                self._size_constant(v, v.const_value.numpy())
        layers = self._plan_layers()
        for layer in layers.values():
            self._place_layer(layer)
        absorbed = {id(n) for layer in layers.values() for n in layer.absorbed}
        for node in g:
            if id(node) in absorbed:
                continue
            if id(node) in layers:
                self._emit_layer(layers[id(node)])
            elif node.op_type == "Constant":
                self._constant(node.outputs[0])
            else:
                self._emit(node)
        outputs = [self._tensor_of(v) for v in g.outputs]
        self.fx.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        gm = fx.GraphModule(self.root, self.fx, class_name="OnnxModule")
        gm.graph.eliminate_dead_code()  # e.g. an Identity of a weight that a layer now reads itself
        gm.recompile()
        gm._tracer_cls = OnnxTracer  # pickling re-traces the code: keep the size helpers whole
        for path in self.non_persistent:
            owner, _, leaf = path.rpartition(".")
            gm.get_submodule(owner)._non_persistent_buffers_set.add(leaf)
        gm.onnx_names, gm.onnx_layouts, gm.onnx_rewire = self.onnx_names, self.onnx_layouts, self.onnx_rewire
        gm.opset = self.opset
        gm.input_names = [v.name for v in g.inputs if not v.is_initializer()]
        gm.output_names = [v.name for v in g.outputs]
        gm.eval()
        return gm

    # --------------------------------------------------------------------- layers

    def _plan_layers(self) -> dict[int, _Layer]:
        layers, claimed = {}, {}
        for node in self.g:
            layer = self._layer(node) if ops.is_onnx(node) else None
            if layer is None or self._named_otherwise(layer):
                continue
            # One parameter per initializer: a second layer may share it only in the same layout.
            if any(claimed.get(id(v), layout) != layout for v, layout in layer.params.values()):
                continue
            for v, layout in layer.params.values():
                claimed[id(v)] = layout
            layers[id(node)] = layer
        return layers

    def _layer(self, node: ir.Node) -> _Layer | None:
        """The torch layer computing `node` exactly, or None (it stays functional)."""
        if any(o is not None and o.is_graph_output() for o in node.outputs[1:]):
            return None
        build = {"Conv": self._conv, "ConvTranspose": self._conv, "Gemm": self._gemm, "MatMul": self._matmul,
                 "Gather": self._embedding, "BatchNormalization": self._batch_norm,
                 "LayerNormalization": self._layer_norm, "Dropout": self._dropout,
                 "Mul": self._rms_norm}.get(node.op_type)
        return build(node) if build else None

    def _conv(self, node):
        transposed = node.op_type == "ConvTranspose"
        x, w, b = (list(node.inputs) + [None])[:3]
        w_init, b_init = _init(w), _init(b)
        if w_init is None or (b is not None and b_init is None) or _init(x) is not None:
            return None
        weight = w_init.const_value
        k = tuple(weight.shape)[2:]
        n = len(k)
        if not 1 <= n <= 3 or not _float(w_init):
            return None
        at = lambda name, default: tuple(graph.attr(node, name, default))  # noqa: E731
        strides, dilations = at("strides", (1,) * n), at("dilations", (1,) * n)
        group = graph.attr(node, "group", 1)
        if group < 1:
            return None
        auto = graph.attr(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER") and not transposed and all(s == 1 for s in strides):
            total = [(kk - 1) * d for kk, d in zip(k, dilations)]
            small = [t // 2 for t in total]
            big = [t - t // 2 for t in total]
            begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto in ("NOTSET", "VALID"):
            pads = at("pads", (0,) * 2 * n) if auto == "NOTSET" else (0,) * 2 * n
            begin, end = list(pads[:n]), list(pads[n:])
        else:
            return None
        pre_pad = None
        if begin != end:
            if transposed:
                return None
            pre_pad, begin = torch_pad(begin, end), [0] * n
        pre_stride = None
        if not transposed and all(kk == 1 for kk in k) and any(st > 1 for st in strides) and not any(begin + end):
            # A strided 1x1 conv reads every s-th pixel: torch 2.13's CPU backward of a channels_last
            # strided 1x1 conv segfaults on odd batch sizes (inductor picks channels_last for convs).
            pre_stride = (slice(None), slice(None)) + tuple(slice(None, None, st) if st > 1 else slice(None)
                                                            for st in strides)
            strides = (1,) * n
        if transposed:
            if graph.attr(node, "output_shape", None) is not None:
                return None
            cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
            module = cls(weight.shape[0], weight.shape[1] * group, k, strides, tuple(begin),
                         at("output_padding", (0,) * n), group, b is not None, dilations, device="meta")
        else:
            cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
            module = cls(weight.shape[1] * group, weight.shape[0], k, strides, tuple(begin), dilations,
                         group, b is not None, device="meta")
        params = {"weight": (w_init, None)}
        if b is not None:
            params["bias"] = (b_init, None)
        return _Layer(node, module, x, node.outputs[0], params, pre_pad=pre_pad, pre_stride=pre_stride)

    def _gemm(self, node):
        a, b, c = (list(node.inputs) + [None])[:3]
        b_init, c_init = _init(b), _init(c)
        if (b_init is None or not _float(b_init) or len(b_init.const_value.shape) != 2
                or graph.attr(node, "transA", 0) or graph.attr(node, "alpha", 1.0) != 1.0
                or _init(a) is not None):
            return None
        out_f = b_init.const_value.shape[0 if graph.attr(node, "transB", 0) else 1]
        if c is not None and (c_init is None or graph.attr(node, "beta", 1.0) != 1.0
                              or tuple(c_init.const_value.shape) not in ((out_f,), (1, out_f))):
            return None
        layout = None if graph.attr(node, "transB", 0) else "T"
        return self._linear(node, a, node.outputs[0], b_init, layout, c_init, [])

    def _matmul(self, node):
        x, w = node.inputs
        if _init(x) is not None or w is None:
            return None
        absorbed, w_init, layout = [], _init(w), "T"
        producer = w.producer()
        if w_init is None and producer is not None and producer.op_type == "Transpose":
            w_init, layout = _init(producer.inputs[0]), None
            if (list(graph.attr(producer, "perm", [1, 0])) != [1, 0] or len(w.uses()) != 1
                    or w.is_graph_output()):
                return None
            absorbed.append(producer)
        if w_init is None or not _float(w_init) or len(w_init.const_value.shape) != 2:
            return None
        out, bias = node.outputs[0], None
        uses = list(out.uses())
        if len(uses) == 1 and not out.is_graph_output() and uses[0].node.op_type == "Add":
            add = uses[0].node
            other = _init(add.inputs[1 - uses[0].idx])
            out_f = w_init.const_value.shape[1 if layout == "T" else 0]
            if other is not None and _float(other) and tuple(other.const_value.shape) == (out_f,):
                bias, out = other, add.outputs[0]
                absorbed.append(add)
        return self._linear(node, x, out, w_init, layout, bias, absorbed)

    def _linear(self, node, x, out, w_init, layout, b_init, absorbed):
        shape = w_init.const_value.shape
        in_f, out_f = (shape[0], shape[1]) if layout == "T" else (shape[1], shape[0])
        module = nn.Linear(in_f, out_f, bias=b_init is not None, device="meta")
        params = {"weight": (w_init, layout)}
        if b_init is not None:
            params["bias"] = (b_init, None)
        return _Layer(node, module, x, out, params, absorbed)

    def _embedding(self, node):
        table, indices = node.inputs
        t = _init(table)
        if (t is None or not _float(t) or len(t.const_value.shape) != 2 or graph.attr(node, "axis", 0) != 0
                or graph.constant(indices) is not None):
            return None
        module = nn.Embedding(*t.const_value.shape, device="meta")
        return _Layer(node, module, indices, node.outputs[0], {"weight": (t, None)})

    def _batch_norm(self, node):
        x = node.inputs[0]
        inits = [_init(v) for v in node.inputs[1:5]]
        rank = _rank(x, probe=True)
        if (any(i is None or not _float(i) for i in inits) or rank not in (2, 3, 4, 5)
                or graph.attr(node, "training_mode", 0) or any(o is not None and o.uses() for o in node.outputs[1:])):
            return None
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
        module = cls(inits[0].const_value.shape[0], graph.attr(node, "epsilon", 1e-5),
                     1.0 - graph.attr(node, "momentum", 0.9), device="meta")
        params = dict(zip(("weight", "bias", "running_mean", "running_var"), ((i, None) for i in inits)))
        return _Layer(node, module, x, node.outputs[0], params)

    def _layer_norm(self, node):
        x, scale, bias = (list(node.inputs) + [None])[:3]
        s, b = _init(scale), _init(bias)
        rank = _rank(x, probe=True)
        axis = graph.attr(node, "axis", -1)
        if (s is None or not _float(s) or len(s.const_value.shape) != 1 or (bias is not None and b is None)
                or rank is None or axis not in (-1, rank - 1) or any(o is not None and o.uses() for o in node.outputs[1:])
                or (b is not None and tuple(b.const_value.shape) != tuple(s.const_value.shape))):
            return None
        module = nn.LayerNorm(s.const_value.shape[0], graph.attr(node, "epsilon", 1e-5),
                              bias=b is not None, device="meta")
        params = {"weight": (s, None)}
        if b is not None:
            params["bias"] = (b, None)
        return _Layer(node, module, x, node.outputs[0], params)

    def _rms_norm(self, node):
        """RMSNorm as exporters decompose it: `w * (x * 1/sqrt(mean(x², -1) + eps))`, the
        reciprocal written Reciprocal or Div(1, ·) → `nn.RMSNorm`."""
        match = _rms_norm_pattern(node)
        if match is None:
            return None
        x, w, eps, absorbed = match
        module = nn.RMSNorm(w.const_value.shape[0], eps, device="meta")
        return _Layer(node, module, x, node.outputs[0], {"weight": (w, None)}, absorbed)

    def _dropout(self, node):
        if len(node.outputs) > 1 and node.outputs[1] is not None and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            return None
        if self.opset < 12:
            p = graph.attr(node, "ratio", 0.5)
        else:
            ratio = node.inputs[1] if len(node.inputs) > 1 else None
            value = graph.constant(ratio) if ratio is not None else np.array(0.5)
            if value is None:
                return None
            p = float(value)
        return _Layer(node, nn.Dropout(p), node.inputs[0], node.outputs[0], {})

    def _place_layer(self, layer: _Layer) -> None:
        """Put the layer's module at its path, its weights in it: before any other weight is
        placed, so a weight read elsewhere first (an Identity of a bias) does not take the path."""
        path = self._layer_path(layer)
        layer.path = path
        module = layer.module
        for attr, (value, layout) in layer.params.items():
            state = f"{path}.{attr}"
            if value.name in self.state and self.state[value.name][1] == layout and attr not in ("running_mean", "running_var"):
                owner = self.state[value.name][0]  # a tied weight: the same Parameter object
                setattr(module, attr, operator.attrgetter(owner)(self.root))
                continue
            array = _array(value, layout)
            if attr == "bias":
                array = array.reshape(-1)  # Gemm's C may be (1, out)
            if attr in ("running_mean", "running_var"):
                module.register_buffer(attr, array)
                slot = 3 if attr == "running_mean" else 4
                if len(list(_uses(value))) > 1:
                    self.onnx_rewire[state] = (layer.node.outputs[0].name, slot)
                    self.onnx_names[state] = value.name
                    continue
            else:
                setattr(module, attr, nn.Parameter(array, requires_grad=_is_trainable(value)))
            self.state.setdefault(value.name, (state, layout))
            self.onnx_names[state] = value.name
            if layout:
                self.onnx_layouts[state] = layout
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_batches_tracked = torch.tensor(0, dtype=torch.long)
        _set_module(self.root, path, module)

    def _emit_layer(self, layer: _Layer) -> None:
        path = layer.path
        x = self._tensor_of(layer.x)
        if layer.pre_pad is not None:
            x = self.fx.call_function(torch.nn.functional.pad, (x, layer.pre_pad))
        if layer.pre_stride is not None:
            x = self.fx.call_function(operator.getitem, (x, layer.pre_stride))
        out = self.fx.create_node("call_module", path, (x,), name=_identifier(path.replace(".", "_")))
        self.tensor[layer.out.name] = out

    def _layer_path(self, layer: _Layer) -> str:
        """The module that ran the op (its scope) first, then the weight's owner by name (see
        names.aliases): a tied weight is named after one of its layers, an embedding's after the LM head.
        A block copy's layer takes its original's path in the copy's place (`layers.0.mlp` → `layers.1.mlp`),
        and the items of a container copies went into are renumbered (_placed)."""
        node = layer.node
        weight = layer.params.get("weight", (None, None))[0]
        weight_name, events = self._origin(weight.name if weight is not None else "")
        original = self.original_path.get(weight_name) if events else None
        candidates = [original] if original else []
        candidates += names.aliases(node) if node.op_type in ops.WEIGHT_OPS else [names.scope_of(node)]
        if weight_name.endswith(".weight"):
            candidates.append(weight_name[: -len(".weight")])
        if layer.node.name and not layer.node.meta.get(UNNAMED):
            candidates.append(layer.node.name)
        candidates.append(type(layer.module).__name__.lower())
        for c in candidates:
            path = _module_path(c) if c else None
            placed = self._placed(path, events) if path else None
            if placed and _free_path(self.root, placed):
                if weight is not None and not events:
                    self.original_path.setdefault(weight_name, path)
                return placed
        return _unique_attr(self.root, _identifier(candidates[-1]))

    def _placed(self, path: str, events: tuple) -> str:
        """`path`, a teacher module path, where the block holding it sits in the grown model (the
        block's instance after copy `events`); unchanged outside containers copies went into."""
        for (block, of), place in self.places.items():
            if of == events and (path == block or path.startswith(block + ".")):
                return place + path[len(block):]
        return path

    # --------------------------------------------------------------------- other nodes

    def _emit(self, node: ir.Node) -> None:
        op = node.op_type if ops.is_onnx(node) else f"{node.domain}::{node.op_type}"
        if self._emit_size(node, op) or self._emit_from_sizes(node, op) or self._emit_torch(node, op):
            return
        slots = SIZE_SLOTS.get(op, set())
        args = [None if v is None or not v.name
                else self.size[v.name] if i in slots and v.name in self.size
                else self.literal[v.name] if i in slots and v.name in self.literal
                else self._tensor_of(v) for i, v in enumerate(node.inputs)]
        outputs = tuple(v.name if v is not None and (v.uses() or v.is_graph_output()) else "" for v in node.outputs)
        hint = _identifier(node.outputs[0].name) if node.outputs and node.outputs[0] is not None else None
        kind, target, kwargs = "call_function", onnx_op, {}
        if op in DIRECT and not node.attributes and len(outputs) == 1 and None not in args:
            target = DIRECT[op]
        elif op == "Div" and _is_float(node.outputs[0]):
            target = operator.truediv
        elif op in TRAIN_DEPENDENT:
            kind = "call_module"
            target = _unique_attr(self.root, _identifier(f"{op.lower()}_{hint or 'op'}"))
            attrs = {k: self._attr(a) for k, a in node.attributes.items()}
            _set_module(self.root, target, OnnxOp(op, attrs, self.opset, outputs))
        else:
            attrs = {k: self._attr(a) for k, a in node.attributes.items()}
            args = [op, *args]
            kwargs = {"attrs": attrs} if attrs else {}
            if op in OPSET_DEPENDENT:
                kwargs["opset"] = self.opset
            if len(outputs) > 1:
                kwargs["outputs"] = outputs
        result = self.fx.create_node(kind, target, tuple(args), kwargs, name=hint)
        if len(node.outputs) == 1:
            self.tensor[node.outputs[0].name] = result
        else:
            for i, v in enumerate(node.outputs):
                if v is not None and outputs[i]:
                    self.tensor[v.name] = self.fx.call_function(operator.getitem, (result, i))

    def _emit_torch(self, node: ir.Node, op: str) -> bool:
        """Ops written as the torch call a user would write: SiLU (`x * sigmoid(x)`), Pow by a
        constant exponent, Transpose, Softmax and Concat. False when `node` is none of them."""
        ins, out = node.inputs, node.outputs[0] if len(node.outputs) == 1 else None
        if out is None or any(v is None for v in ins):
            return False
        at = lambda name, default=None: graph.attr(node, name, default)  # noqa: E731
        if op == "Mul" and _is_float(out) and (x := _silu_input(node)) is not None:
            fn, args = torch.nn.functional.silu, (self._tensor_of(x),)
        elif (op == "Pow" and _is_float(out) and isinstance(self.literal.get(ins[1].name), float)
              and _is_float(ins[0])):
            fn, args = torch.pow, (self._tensor_of(ins[0]), self.literal[ins[1].name])
        elif op == "Transpose" and at("perm") is not None:
            fn, args = torch.permute, (self._tensor_of(ins[0]), tuple(at("perm")))
        elif op == "Softmax" and self.opset >= 13:
            fn, args = torch.softmax, (self._tensor_of(ins[0]), at("axis", -1))
        elif op == "Concat" and ins:
            fn, args = torch.cat, ([self._tensor_of(v) for v in ins], at("axis"))
        elif op == "Reshape" and ins[1].name in self.size and (at("allowzero", 0) or self._no_zero(ins, 1)):
            # torch.reshape reads 0 as size 0; ONNX (allowzero=0) as "copy the input's dim"
            fn, args = torch.reshape, (self._tensor_of(ins[0]), self.size[ins[1].name])
        elif op == "Unsqueeze" and self.opset >= 13 and (
                axes := _ascending(self._literal_ints(ins, 1), _rank(ins[0]))):
            value = self._tensor_of(ins[0])
            for axis in axes:  # ascending output positions: each insert leaves the earlier ones in place
                value = self.fx.call_function(torch.unsqueeze, (value, axis))
            self.tensor[out.name] = value
            return True
        elif op == "Slice" and self.opset >= 10 and (index := self._slice_index(ins)) is not None:
            fn, args = operator.getitem, (self._tensor_of(ins[0]), index)
        else:
            return False
        self.tensor[out.name] = self.fx.create_node("call_function", fn, args, name=_identifier(out.name))
        return True

    def _literal_ints(self, ins, i: int):
        """Input `i` as a list of ints written into the code, else None."""
        value = self.size.get(ins[i].name) if i < len(ins) and ins[i] is not None else None
        if isinstance(value, int):
            return [value]
        return value if isinstance(value, list) and all(isinstance(v, int) for v in value) else None

    def _no_zero(self, ins, i: int) -> bool:
        """Whether input `i` is a literal size list without a 0 in it."""
        literal = self._literal_ints(ins, i)
        return literal is not None and 0 not in literal

    def _slice_index(self, ins):
        """`x[..., a:b]`-style index of a Slice with literal starts/ends/axes and positive steps
        (Python slicing clamps out-of-range bounds as ONNX does), else None."""
        starts, ends = self._literal_ints(ins, 1), self._literal_ints(ins, 2)
        axes = self._literal_ints(ins, 3) if len(ins) > 3 and ins[3] is not None else list(range(len(starts or [])))
        steps = self._literal_ints(ins, 4) if len(ins) > 4 and ins[4] is not None else [1] * len(axes or [])
        if None in (starts, ends, axes, steps) or not len(starts) == len(ends) == len(axes) == len(steps) == 1:
            return None
        (start,), (end,), (axis,), (step,) = starts, ends, axes, steps
        if step < 1:
            return None
        start, end = (max(-2**62, min(v, 2**62)) for v in (start, end))  # INT64 bounds: torch warns on them
        cut = slice(start or None, None if end == 2**62 else end, None if step == 1 else step)
        return (slice(None),) * axis + (cut,) if axis >= 0 else (Ellipsis, cut) + (slice(None),) * (-axis - 1)

    def _emit_from_sizes(self, node: ir.Node, op: str) -> bool:
        """ConstantOfShape and Range over sizes: tensors made straight from (symbolic) sizes."""
        out = node.outputs[0]
        if not node.inputs or any(v is None or v.name not in self.size for v in node.inputs):
            return False
        if op == "ConstantOfShape":
            value = graph.attr(node, "value")
            scalar = value.numpy().reshape(-1)[0].item() if value is not None else 0.0
            dtype = DTYPES.get(out.dtype.value if out.dtype is not None else 1, torch.float32)
            args = (self.size[node.inputs[0].name], scalar, dtype, self.anchor)
            target = torch_sizes.full
        elif op == "Range" and all(_rank(v) == 0 for v in node.inputs):
            dtype = DTYPES.get(out.dtype.value if out.dtype is not None else 7, torch.int64)
            args = (*(self.size[v.name] for v in node.inputs), dtype, self.anchor)
            target = torch_sizes.arange
        else:
            return False
        self.tensor[out.name] = self.fx.create_node("call_function", target, args, name=_identifier(out.name))
        return True

    def _attr(self, a: ir.Attr):
        if a.type == ir.AttributeType.TENSOR:
            return self._buffer(_identifier(f"attr_{a.name}"), _torch(a.value.numpy()), persistent=False)
        if a.type == ir.AttributeType.TENSORS:
            return [self._buffer(_identifier(f"attr_{a.name}"), _torch(t.numpy()), persistent=False) for t in a.value]
        if isinstance(a.value, (list, tuple)):
            return tuple(a.value)
        return a.value

    def _emit_size(self, node: ir.Node, op: str) -> bool:
        """Emit `node` as arithmetic on sizes when it is one (see torch_sizes); False if not."""
        ins = node.inputs
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None:
            return False
        known = lambda i: i < len(ins) and ins[i] is not None and ins[i].name in self.size  # noqa: E731
        s = lambda i: self.size[ins[i].name]  # noqa: E731
        name = _identifier(out.name) if out.name else None
        call = lambda fn, *args: self.fx.create_node("call_function", fn, args, name=name)  # noqa: E731
        at = lambda name, default=None: graph.attr(node, name, default)  # noqa: E731
        if op == "Shape" and known(0) and (length := _static_length(ins[0])) is not None and not at("start", 0) \
                and at("end") in (None, 1):
            value = [length]  # the length of a size list: a literal
        elif op == "Shape":
            value = call(torch_sizes.shape, self._tensor_of(ins[0]), at("start", 0), at("end"))
        elif (op == "ConstantOfShape" and known(0) and isinstance(s(0), list) and len(s(0)) == 1
              and isinstance(s(0)[0], int) and s(0)[0] <= SMALL_CONSTANT and _integer(out)):
            fill = graph.attr(node, "value")
            value = [int(fill.numpy().reshape(-1)[0]) if fill is not None else 0] * s(0)[0]
        elif op == "Size":
            value = call(torch_sizes.numel, self._tensor_of(ins[0]))
        elif op == "Identity" and known(0):
            value = s(0)
        elif op == "Cast" and known(0) and at("to") in (6, 7):
            value = s(0)
        elif op == "Gather" and known(0) and known(1) and at("axis", 0) == 0 and isinstance(s(1), (int, list)):
            value = call(torch_sizes.gather, s(0), s(1))
        elif op == "Slice" and self.opset >= 10 and known(0) and all(
                known(i) and (len(s(i)) == 1 if isinstance(s(i), list) else _static_length(ins[i]) == 1)
                for i in range(1, len(ins)) if ins[i] is not None):
            value = call(torch_sizes.slice_, *[s(i) if ins[i] is not None else None for i in range(len(ins))])
        elif op == "Concat" and all(known(i) for i in range(len(ins))):
            value = call(torch_sizes.concat, *[s(i) for i in range(len(ins))])
        elif op == "Unsqueeze" and known(0) and _rank(ins[0]) == 0:
            value = call(torch_sizes.unsqueeze, s(0))
        elif op == "Squeeze" and known(0) and _rank(ins[0]) == 1 and _rank(out) == 0:
            value = call(torch_sizes.squeeze, s(0))
        elif op in torch_sizes.ELEMENTWISE and known(0) and known(1) and (_integer(out) or _boolean(out)):
            value = call(torch_sizes.elementwise, op, s(0), s(1))
        elif op == "Neg" and known(0):
            value = call(torch_sizes.neg, s(0))
        elif op == "Where" and known(0) and known(1) and known(2):
            value = call(torch_sizes.where, s(0), s(1), s(2))
        elif op == "ReduceProd" and known(0) and _rank(ins[0]) == 1 and (len(ins) < 2 or ins[1] is None):
            value = call(torch_sizes.prod, s(0), at("keepdims", 1))
        elif op == "Reshape" and known(0) and _rank(ins[0]) in (0, 1) and _rank(out) == 1:
            value = call(torch_sizes.concat, s(0))
        else:
            return False
        self.size[out.name] = value
        self.dtype[out.name] = out.dtype.value if out.dtype is not None else 7
        return True

    # --------------------------------------------------------------------- values

    def _tensor_of(self, v: ir.Value) -> fx.Node:
        """The fx node of `v` as a tensor, made on first use for initializers and sizes."""
        if v.name in self.tensor:
            return self.tensor[v.name]
        if v.name in self.size:
            dtype = DTYPES.get(self.dtype[v.name], torch.int64)
            node = self.fx.call_function(torch_sizes.as_tensor, (self.size[v.name], dtype, self.anchor))
        elif v.name in self.state:
            state, layout = self.state[v.name]
            node = self.fx.get_attr(state)
            if layout == "T":
                node = self.fx.call_function(torch.t, (node,))
            shape = tuple(v.const_value.shape)
            if tuple(operator.attrgetter(state)(self.root).shape) != shape and layout != "T":
                node = self.fx.call_function(torch.reshape, (node, shape))
        elif v.name in self.constants:
            node = self._buffer(_identifier(f"const_{v.name}"), _torch(self.constants[v.name]), persistent=False)
        elif v.const_value is not None:
            node = self._initializer(v)
        else:
            raise GrowError(f"the value {v.name!r} is read before it is computed: the graph is not valid.")
        self.tensor[v.name] = node
        return node

    def _initializer(self, v: ir.Value) -> fx.Node:
        array = v.const_value.numpy()
        if _is_trainable(v):
            path = self._state_path(v.name)
            _set_attr(self.root, path, nn.Parameter(_torch(array)))
            self.state[v.name] = (path, None)
            self.onnx_names[path] = v.name
            return self.fx.get_attr(path)
        path = self._state_path(v.name)
        _set_attr(self.root, path, _torch(array), buffer=True)
        self.onnx_names[path] = v.name
        return self.fx.get_attr(path)

    def _constant(self, v: ir.Value) -> None:
        array = graph.constant(v)
        if array is None:
            raise GrowError(f"the Constant {v.name!r} holds no numeric value onnxgrow can read.")
        self.constants[v.name] = np.asarray(array)
        self._size_constant(v, self.constants[v.name])

    def _size_constant(self, v: ir.Value, array: np.ndarray) -> None:
        """Small integer constants (shape constants) also get a size form: literals in the code;
        small float ones a literal form for the inputs that take one (Resize's scales)."""
        if array.ndim > 1 or array.size > SMALL_CONSTANT:
            return
        if array.dtype.kind in "iu":
            self.size[v.name] = int(array) if array.ndim == 0 else [int(i) for i in array]
            self.dtype[v.name] = v.dtype.value if v.dtype is not None else 7
        elif array.dtype.kind == "f":
            self.literal[v.name] = float(array) if array.ndim == 0 else [float(i) for i in array]

    def _buffer(self, name: str, tensor, persistent: bool):
        path = _unique_attr(self.root, name)
        _set_attr(self.root, path, tensor, buffer=True)
        if not persistent:
            self.non_persistent.add(path)
        return self.fx.get_attr(path)

    def _origin(self, name: str | None) -> tuple[str, tuple]:
        """(the state-dict name initializer `name` had before growth, the block copies it went
        through): its own name and () if it was not grown."""
        return self.origin.get(name, (name or "", ()))

    def _named_otherwise(self, layer: _Layer) -> bool:
        """Whether the weight's state-dict name says a module other than a layer owns it
        (`attn.in_proj_weight` of nn.MultiheadAttention): then it stays a parameter of that name."""
        weight = layer.params.get("weight", (None, None))[0]
        name = self._origin(weight.name if weight is not None else "")[0]
        return "." in name and not name.endswith(".weight") and _module_path(name) == name

    def _state_path(self, name: str) -> str:
        name, events = self._origin(name)
        path = _module_path(name)
        path = self._placed(path, events) if path else None
        if path and "." in path and _free_path(self.root, path):
            return path
        return _unique_attr(self.root, _identifier(name))


# ----------------------------------------------------------------------------- helpers


def _producer(v: ir.Value | None, op: str, private: bool = True) -> ir.Node | None:
    """The `op` node computing `v`; with `private`, only when nothing else reads `v`."""
    node = v.producer() if v is not None else None
    if node is None or node.op_type != op or not ops.is_onnx(node):
        return None
    if private and (len(v.uses()) != 1 or v.is_graph_output()):
        return None
    return node


def _silu_input(mul: ir.Node) -> ir.Value | None:
    """x when `mul` computes x * sigmoid(x) (either order), else None."""
    for i in (0, 1):
        sigmoid = _producer(mul.inputs[i], "Sigmoid", private=False)
        if sigmoid is not None and sigmoid.inputs[0] is mul.inputs[1 - i]:
            return sigmoid.inputs[0]
    return None


def _rms_norm_pattern(mul: ir.Node):
    """(x, weight, eps, the nodes before `mul`) when `mul` is w * (x * 1/sqrt(mean(x², -1) + eps))
    with a 1-D float weight as long as x's last axis; else None."""
    for i in (0, 1):
        w, normed = _init(mul.inputs[i]), mul.inputs[1 - i]
        scale = _producer(normed, "Mul")
        if w is None or scale is None or not _float(w) or len(w.const_value.shape) != 1:
            continue
        for j in (0, 1):
            x, inverse = scale.inputs[j], scale.inputs[1 - j]
            match = _inverse_rms(x, inverse)
            if match is None:
                continue
            eps, nodes = match
            d = w.const_value.shape[0]
            last = x.shape[-1] if x.shape is not None and len(x.shape) else None
            if d < 2 or (isinstance(last, int) and last != d):
                continue
            return x, w, eps, [*nodes, scale]
    return None


def _inverse_rms(x: ir.Value, inverse: ir.Value):
    """(eps, nodes) when `inverse` is 1/sqrt(mean(x², -1, keepdims) + eps), else None."""
    reciprocal = _producer(inverse, "Reciprocal")
    sqrt_in = None
    if reciprocal is not None:
        sqrt_in = reciprocal.inputs[0]
    elif (div := _producer(inverse, "Div")) is not None and _scalar(div.inputs[0]) == 1.0:
        reciprocal, sqrt_in = div, div.inputs[1]
    sqrt = _producer(sqrt_in, "Sqrt")
    add = _producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if add is None:
        return None
    for k in (0, 1):
        eps, mean_out = _scalar(add.inputs[k]), add.inputs[1 - k]
        mean = _producer(mean_out, "ReduceMean")
        if eps is None or mean is None or not graph.attr(mean, "keepdims", 1):
            continue
        axes = graph.attr(mean, "axes", None)
        if axes is None and len(mean.inputs) > 1:
            axes = graph.constant(mean.inputs[1])
        rank = _rank(x)
        if axes is None or [int(a) for a in np.reshape(axes, -1)] not in ([-1], [rank - 1] if rank else [-1]):
            continue
        square = _producer(mean.inputs[0], "Pow")
        if square is None or square.inputs[0] is not x or _scalar(square.inputs[1]) != 2.0:
            continue
        return eps, [square, mean, add, sqrt, reciprocal]
    return None


def _scalar(v: ir.Value | None) -> float | None:
    """The value of a one-element float constant, else None."""
    array = graph.constant(v) if v is not None else None
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return float(array.reshape(-1)[0])


def _ascending(axes: list[int] | None, rank: int | None) -> list[int] | None:
    """Unsqueeze's axes as distinct non-negative output positions, sorted; None when they are not
    (or are negative and the input's rank is unknown)."""
    if not axes:
        return None
    if min(axes) < 0:
        if rank is None:
            return None
        axes = [a + rank + len(axes) if a < 0 else a for a in axes]
    return sorted(axes) if min(axes) >= 0 and len(set(axes)) == len(axes) else None


def _init(v: ir.Value | None, depth: int = 0) -> ir.Value | None:
    """The initializer behind `v` (through Identity, as the legacy exporter deduplicates), or None."""
    if v is None or depth > 8:
        return None
    if v.const_value is not None and v.is_initializer() and not v.is_graph_input():
        return v
    producer = v.producer()
    if producer is not None and producer.op_type == "Identity" and len(v.uses()) <= 1:
        return _init(producer.inputs[0], depth + 1)
    return None


def _float(v: ir.Value) -> bool:
    return v.const_value is not None and v.const_value.dtype.is_floating_point()


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype is not None and v.dtype.is_floating_point()


def _integer(v: ir.Value | None) -> bool:
    return v is not None and v.dtype is not None and v.dtype.value in (6, 7)


def _boolean(v: ir.Value | None) -> bool:
    return v is not None and v.dtype is not None and v.dtype.value == 9


def _static_length(v: ir.Value) -> int | None:
    """The length of a 1-D value whose length is fixed in the graph, else None."""
    shape = v.shape
    return shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None


def _rank(v: ir.Value | None, probe: bool = False):
    shape = graph.static_shape(v, probe=probe) if v is not None else None
    return len(shape) if shape is not None else None


def _uses(value: ir.Value, depth: int = 0):
    """(node, input slot) pairs where `value` is consumed, looking through PASS_THROUGH ops."""
    for use in value.uses():
        node, slot = use.node, use.idx
        if node.op_type in PASS_THROUGH and slot == 0 and len(node.outputs) == 1 and depth < 16:
            yield from _uses(node.outputs[0], depth + 1)
        else:
            yield node, slot


def _is_trainable(value: ir.Value) -> bool:
    """A finite floating-point initializer that reaches a weight slot (see torch_export)."""
    tensor = value.const_value
    if tensor is None or not tensor.dtype.is_floating_point():
        return False
    array = tensor.numpy()
    if not np.all(np.isfinite(array.astype(np.float32))):
        return False
    for node, slot in _uses(value):
        op = node.op_type
        if slot in WEIGHT_SLOTS.get(op, ()) or op in ANY_SLOT:
            return True
        if op in ARITHMETIC and array.size > 1:
            return True
    return False


def _array(value: ir.Value, layout):
    t = _torch(value.const_value.numpy())
    return t.t().contiguous() if layout == "T" else t


def _torch(array: np.ndarray):
    """A numpy array (bfloat16 too) as a fresh CPU tensor."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16).astype(np.int16)).view(torch.bfloat16).clone()
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError:
        raise GrowError(
            f"cannot convert a tensor of type {array.dtype} to PyTorch; only numeric and boolean "
            "tensors are supported."
        ) from None


def _identifier(name: str) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", name or "") or "t"
    return "t_" + base if base[0].isdigit() else base


def _module_path(name: str) -> str | None:
    """A dotted path of valid attribute names from `name` (`layer1.0.conv1`), or None."""
    parts = name.strip(".").split(".")
    if not all(parts):
        return None
    clean = [re.sub(r"[^0-9A-Za-z_]", "_", p) for p in parts]
    clean = [p + "_" if p in RESERVED or hasattr(nn.Module, p) else p for p in clean]
    return ".".join(clean)


def _free_path(root: nn.Module, path: str) -> bool:
    """Whether `path` can hold a new module or tensor: its parents are modules or free (a layer may
    hold another: nn.MultiheadAttention's out_proj where its in-projection became the Linear)."""
    node = root
    *parents, leaf = path.split(".")
    for p in parents:
        child = node._modules.get(p)
        if child is None:
            return not hasattr(node, p)
        node = child
    return not hasattr(node, leaf)


def _unique_attr(root: nn.Module, base: str) -> str:
    base = base + "_" if base in RESERVED or hasattr(nn.Module, base) else base
    name, i = base, 1
    while hasattr(root, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _parent(root: nn.Module, path: str):
    node = root
    *parents, leaf = path.split(".")
    for p in parents:
        child = node._modules.get(p)
        if child is None:
            child = nn.Module()
            node.add_module(p, child)
        node = child
    return node, leaf


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    owner, leaf = _parent(root, path)
    owner.add_module(leaf, module)


def _set_attr(root: nn.Module, path: str, tensor, buffer: bool = False) -> None:
    owner, leaf = _parent(root, path)
    if buffer:
        owner.register_buffer(leaf, tensor)
    else:
        owner.register_parameter(leaf, tensor)
