"""Deepen a network: identity layers (Net2DeeperNet), zero-output residual blocks (R2DeeperR,
zero), and kernel-size growth (Network Morphism). Every transform is exact in real arithmetic.

Where the new layer goes. "After node X" means after X *and the channel-wise ops that directly
follow it* (its BatchNormalization, bias Add, layer-scale Mul, activation), so the new layer sees
what the next layer saw. From X's output we absorb, one step at a time, a region of elementwise
ops (unary activations; Add/Sub/Mul/Div/Pow/Max/Min/PRelu whose other operand is a scalar or
per-channel constant; BatchNormalization) that starts at the current tensor and closes on a single
tensor: a lone Relu is a step, and so is SiLU's Sigmoid→Mul(x, ·) or the Erf-GELU pattern. We
stop at anything else (MaxPool, a residual Add, a Reshape, a graph output). The block is inserted
on the tensor t where the walk stopped, and every consumer of t (graph outputs included) reads the
block's output instead.

Let t have C channels (axis 1 for Conv/ConvTranspose outputs, the last axis for Gemm/MatMul).
- net2net: t ↦ φ(I·t), with I an identity layer of X's family: a Conv whose k×k kernel is 1 at
  the centre tap ((k−1)//2, padding k//2, stride 1) of channel i→i, or a Gemm/MatMul with the
  identity matrix; biases 0. I·t = t exactly (one product by 1, the rest by 0). φ is a copy of
  the walk's last step when that is Relu, Clip or Max/Min with a constant: then t = φ(x) is already
  a fixed point of φ and φ(I·t) = t. After any other activation φ (Sigmoid, Tanh, SiLU, GELU,
  HardSwish, LeakyRelu, PRelu, …: φ(φ(x)) ≠ φ(x)) the new layer's activation is Network Morphism's
  parametric form of the network's own φ, ψ(u) = u + a ⊙ (φ(u) − u) with a trainable per-channel
  a = 0: u + 0·(finite) = u exactly, so ψ(I·t) = t, and ∂ψ/∂a = φ(u) − u ≠ 0 lets training turn
  the layer into a φ-layer (a = 1). φ must be finite for every input (not Log, Sqrt, …: NaN · 0 is
  not 0); such a walk is refused. When the walk ends on an affine op after an idempotent one (BN
  after Relu) or at X itself, I alone is exact. With --bn an identity BatchNormalization (mean 0,
  var 1−ε so var+ε rounds to 1, scale 1, bias 0) follows I.
- r2r: t ↦ t + B(t), B = L2 ∘ φ ∘ [BN] ∘ L1 (a LayerNormalization first on token streams,
  opset ≥ 17). L1's hidden units come in identical pairs (random, He-scaled), L2 gives the pair
  outgoing weights +V and −V, so B(t) = Σ V·φ(a·t) − V·φ(a·t) = 0 for every t and any φ, while
  ∂B/∂V = φ(a·t) ≠ 0 and ∂B/∂a ≠ 0: the block trains from the first step. In floating point the
  sum is zero up to rounding of the accumulation order (measured ≈1e-7 of |t|).
- zero: the same block with L2 = 0 (B(t) = 0 exactly; L1 gets no gradient until L2 moves).
φ inside the blocks is a copy of the network's own activation (the last non-affine step of the walk)
when it uses only scalar constants and is finite for every input (not Log, Sqrt, Reciprocal, a
fractional Pow: the block's hidden units take any sign), else Relu. The new Conv copies X's group count (depthwise
stays depthwise) and X's kernel when it is odd (else 3); --kernel overrides.

Kernel growth: a Conv (or ConvTranspose) kernel k grows to k' (k' > k, k' − k even) by zero-padding
δ = (k'−k)/2 taps on each side and growing the padding by dilation·δ on each side: every output
reads the same inputs through the same nonzero taps, and the output size is unchanged. SAME
auto-padding is kept at stride 1 and made explicit from the static input size otherwise; VALID
becomes explicit padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from . import graph as G
from . import names, ops, window
from .errors import GrowError
from .layerspec import FAMILY, layer_spec
from .methods import DEEPEN_METHODS, deepen_method
from .summary import summary
from .validate import check_growth_memory

MAX_STEP_NODES = 16

# Elementwise ops a walk may pass through. Inputs other than the walked tensor must be constants
# that do not change the tensor's shape (scalars or per-channel vectors).
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"}
SUPPORTED_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


# ----------------------------------------------------------------------------- pure maths


def identity_weight(channels: int, groups: int, kernel: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Conv-layout identity [C, C/groups, *kernel]: 1 at the centre tap of channel i -> i."""
    cg = channels // groups
    w = np.zeros((channels, cg, *kernel), dtype=dtype)
    out = np.arange(channels)
    w[(out, out % cg) + tuple((k - 1) // 2 for k in kernel)] = 1
    return w


def paired_weights(rng: np.random.Generator, channels: int, groups: int, kernel: tuple[int, ...],
                   zero: bool = False, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(W1 [H, C/g, *k], W2 [C, H/g, *k]) with L2(φ(L1 t)) = 0 for every t and every φ.

    Per group, L1 has hidden units [A; A] (each random filter twice) and L2 reads them with
    [V, −V]; with `zero`, L1 is unpaired random and L2 = 0. H/g is C/g rounded up to even.
    He-normal scales (std √(2/fan_in)).
    """
    cg = channels // groups
    half = (cg + 1) // 2
    taps = math.prod(kernel)
    std1, std2 = math.sqrt(2.0 / (cg * taps)), math.sqrt(2.0 / (2 * half * taps))
    if zero:
        w1 = rng.standard_normal((groups * 2 * half, cg, *kernel)) * std1
        w2 = np.zeros((channels, 2 * half, *kernel))
    else:
        a = rng.standard_normal((groups, half, cg, *kernel)) * std1
        w1 = np.concatenate([a, a], axis=1).reshape(groups * 2 * half, cg, *kernel)
        v = rng.standard_normal((groups, cg, half, *kernel)) * std2
        w2 = np.concatenate([v, -v], axis=2).reshape(channels, 2 * half, *kernel)
    return w1.astype(dtype), w2.astype(dtype)


def identity_bn_variance(eps: float, dtype=np.float32) -> np.ndarray:
    """The variance v closest to 1 − ε with fl(v + ε) == 1, so BN divides by exactly 1."""
    one, e = dtype(1), dtype(eps)
    v = one - e
    while v + e != one:
        v = np.nextafter(v, one if v + e < one else dtype(0))
    return v


def grow_kernel(w: np.ndarray, new_kernel: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the spatial dims of a [*, *, *kernel] weight equally on both sides."""
    pad = [(0, 0), (0, 0)] + [((n - k) // 2, (n - k) // 2) for k, n in zip(w.shape[2:], new_kernel)]
    return np.pad(w, pad)


# ----------------------------------------------------------------------------- the walk


PARTIAL = frozenset({"Log", "Sqrt", "Reciprocal", "Acos", "Asin", "Acosh", "Atanh"})  # not finite on all reals


def _finite_everywhere(step: "_Step") -> bool:
    """Whether every node of `step` gives a finite value for every finite input (Pow only by an
    integer constant, Div only by a constant)."""
    for n in step.nodes:
        if n.op_type in PARTIAL:
            return False
        if n.op_type == "Pow":
            exponent = G.constant(n.inputs[1])
            if exponent is None or np.any(exponent < 0) or np.any(exponent != np.floor(exponent)):
                return False
        if n.op_type == "Div" and G.constant(n.inputs[1]) is None:
            return False
    return True


@dataclass
class _Step:
    """A region of elementwise nodes mapping tensor `start` to tensor `end`."""

    nodes: list
    start: ir.Value
    end: ir.Value
    const_inputs: list = field(default_factory=list)  # the constants the nodes read

    @property
    def kind(self) -> str:
        op_types = [n.op_type for n in self.nodes]
        if len(op_types) == 1:
            n = self.nodes[0]
            if op_types[0] in ("BatchNormalization", "Identity", "Dropout", "Neg"):
                return "affine"
            walked = [v is self.start for v in n.inputs]
            if walked.count(True) == 1 and (op_types[0] in ("Add", "Sub", "Mul") or op_types[0] == "Div" and walked[0]):
                return "affine"
            if op_types[0] in ops.IDEMPOTENT:
                return "idempotent"
        return "activation"

    @property
    def name(self) -> str:
        """What the step computes: its op (Clip with its range), or a known pattern's name."""
        op_types = [n.op_type for n in self.nodes]
        if len(op_types) == 1:
            return "Clip" + _clip_range(self.nodes[0]) if op_types[0] == "Clip" else op_types[0]
        kinds = set(op_types)
        return ("SiLU" if kinds == {"Sigmoid", "Mul"} else "HardSwish" if kinds == {"HardSigmoid", "Mul"}
                else "GELU" if "Erf" in kinds or {"Tanh", "Pow"} <= kinds else "→".join(op_types))

    def describe(self) -> str:
        if len(self.nodes) == 1:
            return self.nodes[0].op_type
        pattern = "→".join(n.op_type for n in self.nodes)
        return pattern if self.name == pattern else f"{self.name} ({pattern})"


def _clip_range(node: ir.Node) -> str:
    bounds = []
    for i, key in ((1, "min"), (2, "max")):
        v = G.constant(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None
        v = G.attr(node, key) if v is None else float(v)
        bounds.append("" if v is None else f"{float(v):g}")
    return f"({bounds[0]},{bounds[1]})"



@dataclass
class _Plan:
    node: ir.Node
    family: str  # conv | gemm | matmul
    insert: ir.Value
    steps: list
    channels: int
    shape: tuple | None  # the insertion tensor's shape: ints, or None per unknown dim
    groups: int
    kernel: tuple
    dtype: ir.DataType

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def family_op(self) -> str:
        return {"conv": "Conv", "gemm": "Gemm", "matmul": "MatMul"}[self.family]

    @property
    def through(self) -> list[str]:
        return [s.describe() for s in self.steps]

    def blended_activation(self) -> _Step | None:
        """The φ net2net blends in (u + a·(φ(u) − u), a = 0): the last non-affine step, when the
        walk passed an activation that is not idempotent."""
        if not any(s.kind == "activation" for s in self.steps):
            return None
        return next(s for s in reversed(self.steps) if s.kind != "affine")

    @property
    def net2net_reason(self) -> str | None:
        """Why net2net cannot go here, or None: a blend of φ is exact only where φ is finite."""
        act = self.blended_activation()
        if act is None or _finite_everywhere(act):
            return None
        return (
            f"{self.node.name!r} is followed by {act.describe()}, which is neither idempotent nor finite for "
            "every input, so net2net's identity layer can neither repeat it nor blend it in "
            "(u + a·(φ(u) − u) with a = 0 is NaN where φ(u) is). Use --method r2r (a zero-output "
            "residual block, exact after any activation)."
        )

    def last_activation(self) -> _Step | None:
        """The step cloned as φ inside r2r/zero blocks: the last non-affine step, when it reads only
        scalar constants and is finite for every input (a block's hidden units take any sign: a
        copy of Log would make NaN there, and NaN · 0 is not 0)."""
        for step in reversed(self.steps):
            if step.kind != "affine":
                if all(c.size == 1 for c in step.const_inputs) and _finite_everywhere(step):
                    return step
                return None
        return None


def _shape(value: ir.Value) -> tuple | None:
    """The value's shape, ints or None per dim; None when even the rank is unknown."""
    shape = G.static_shape(value, probe=False)
    return None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)


def _constant_derived(value: ir.Value | None, depth: int = 0) -> bool:
    """True when `value` is computed from constants only (e.g. a weight behind Transpose)."""
    if value is None:
        return False
    if value.const_value is not None or G.constant(value) is not None:
        return True
    node = value.producer()
    if node is None or depth > 8 or not node.inputs:
        return False
    return all(v is None or _constant_derived(v, depth + 1) for v in node.inputs)


def _const_shape(value: ir.Value | None) -> tuple | None:
    arr = G.constant(value)
    if arr is not None:
        return arr.shape
    return _shape(value) if value is not None else None


def _layer_geometry(node: ir.Node) -> tuple[str, int, tuple | None, int, tuple]:
    """(family, channels, output shape, groups, kernel) of a Conv/ConvTranspose/Gemm/MatMul."""
    op = node.op_type
    if not ops.is_onnx(node) or op not in FAMILY:
        raise GrowError(
            f"cannot deepen after {node.name!r}: it is a {op}, not a Conv, ConvTranspose, Gemm or "
            "MatMul layer. Name a layer node; `onnxgrow inspect MODEL` lists them."
        )
    family = FAMILY[op]
    out_shape = _shape(node.outputs[0])
    w_shape = _const_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    groups, kernel, channels = 1, (), None
    if family == "conv":
        spec = layer_spec(node, w_shape)
        groups = spec.groups
        if w_shape is not None and len(w_shape) >= 3:
            channels, kernel = spec.width, spec.kernel
        kernel = tuple(G.attr(node, "kernel_shape", kernel) or kernel)
        if not kernel:
            raise GrowError(
                f"cannot deepen after {node.name!r}: its kernel size is unknown (no kernel_shape and "
                "no constant weight). Export the model with constant weights."
            )
        if out_shape is None or len(out_shape) != len(kernel) + 2:
            out_shape = (None, channels) + (None,) * len(kernel)
    elif family == "gemm":
        if w_shape is not None and len(w_shape) == 2:
            channels = layer_spec(node, w_shape).width
        if out_shape is None or len(out_shape) != 2:
            out_shape = (None, channels)
    else:
        if len(node.inputs) < 2 or not _constant_derived(node.inputs[1]):
            raise GrowError(
                f"cannot deepen after {node.name!r}: this MatMul multiplies two computed tensors "
                "(e.g. attention scores), it has no weight. Deepen after a MatMul whose second "
                "input is a weight (a Linear layer)."
            )
        if w_shape is not None and len(w_shape) < 2:
            raise GrowError(
                f"cannot deepen after {node.name!r}: its weight is a vector, so its output has no "
                "feature axis to keep. Deepen after a layer with a 2-D weight."
            )
        if w_shape is not None:
            channels = layer_spec(node, w_shape).width
    if out_shape is not None:
        axis = 1 if family == "conv" else -1
        known = out_shape[axis]
        if channels is None:
            channels = known
        if known is None:
            out_shape = tuple(channels if i == (axis % len(out_shape)) else d for i, d in enumerate(out_shape))
    if not isinstance(channels, int) or channels <= 0:
        raise GrowError(
            f"cannot deepen after {node.name!r}: its number of output channels is not static "
            "(its weight is not a constant and shape inference cannot tell). Export the model with "
            "static weights."
        )
    if family == "conv" and channels % groups:
        groups = 1
    return family, channels, out_shape, groups, kernel


def _const_fits(arr: np.ndarray, shape: tuple | None, channels: int) -> bool:
    """A constant operand keeps the walked tensor's shape: each dim is 1 or the tensor's own."""
    if shape is None:
        return arr.ndim <= 1 and arr.size in (1, channels)
    if arr.ndim > len(shape):
        return False
    return all(c == 1 or (d is not None and c == d) for c, d in zip(arr.shape[::-1], shape[::-1]))


def _absorbable(node: ir.Node, avail: set, shape: tuple | None, channels: int, graph: ir.Graph,
                consts: list) -> bool:
    """Can `node` join the region? All non-constant inputs must be region tensors."""
    if node.graph is not graph or not ops.is_onnx(node):
        return False
    op = node.op_type
    if op == "BatchNormalization":
        if G.attr(node, "training_mode", 0) or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return False
        if node.inputs[0] not in avail or shape is None or len(shape) < 2 or shape[1] is None:
            return False
        params = [G.constant(v) for v in node.inputs[1:5]]
        if len(params) != 4 or any(p is None or p.shape != (shape[1],) for p in params):
            return False
        consts.extend(params)
        return True
    if op not in ops.UNARY_FLOAT and op not in BINARY:
        return False
    if op == "Dropout":
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return False
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = G.constant(node.inputs[2])
            if mode is None or bool(mode.any()):
                return False
    if len(node.outputs) != 1 and op != "Dropout":
        return False
    found = []
    walked = False
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        if v in avail:
            if i > 0 and (op in ops.UNARY_FLOAT or op == "PRelu"):
                return False
            walked = True
            continue
        if op in ops.UNARY_FLOAT and op not in ("Clip", "Dropout"):
            return False
        arr = G.constant(v)
        if arr is None or v.is_graph_input():
            return False
        if op in ("Clip", "Dropout"):
            if arr.size != 1:
                return False
            if op == "Dropout":
                continue
        elif not _const_fits(arr, shape, channels):
            return False
        found.append(arr)
    if not walked:
        return False
    consts.extend(found)
    return True


def _next_step(t: ir.Value, graph: ir.Graph, order: dict, shape, channels) -> _Step | None:
    """The smallest region of elementwise nodes from `t` that closes on a single tensor."""
    region: list = []
    avail = {t}
    consts: list = []
    while len(region) < MAX_STEP_NODES:
        candidates = {u.node for v in avail for u in v.uses() if u.node not in region}
        if len(candidates) > 1:
            if not order:
                order.update((n, i) for i, n in enumerate(graph))
            candidates = sorted(candidates, key=lambda n: (order.get(n, len(order)), n.name or ""))
        for cand in candidates:
            found: list = []
            if _absorbable(cand, avail, shape, channels, graph, found):
                region.append(cand)
                consts.extend(found)
                avail.update(o for o in cand.outputs[:1])
                break
        else:
            return None
        open_ = [v for v in avail if v.is_graph_output() or any(u.node not in region for u in v.uses())]
        if len(open_) == 1 and open_[0] is not t:
            return _Step(region, t, open_[0], consts)
        if not open_:
            return None
    return None


def _plan(node: ir.Node) -> _Plan:
    """Where and how a block after `node` goes; raises GrowError when nothing can go there."""
    graph = node.graph
    if graph is None:
        raise GrowError(f"node {node.name!r} is not in a graph.")
    family, channels, shape, groups, kernel = _layer_geometry(node)
    order: dict = {}  # graph positions, filled on first need: candidates are tried in graph order
    t = node.outputs[0]
    steps = []
    while not t.is_graph_output():
        step = _next_step(t, graph, order, shape, channels)
        if step is None:
            break
        steps.append(step)
        t = step.end
    dtype = t.dtype or node.outputs[0].dtype or (node.inputs[0].dtype if node.inputs else None)
    if dtype is None:
        w = G.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        dtype = ir.DataType.from_numpy(w.dtype) if w is not None else ir.DataType.FLOAT
    if dtype not in SUPPORTED_DTYPES:
        raise GrowError(
            f"cannot deepen after {node.name!r}: its output is {dtype.name}, and onnxgrow builds new "
            "layers in float32, float16 or float64 only. Deepen a float model (before quantisation)."
        )
    kernel = tuple(k if k % 2 else 3 for k in kernel)
    return _Plan(node, family, t, steps, channels, shape, groups, kernel, dtype)


# ----------------------------------------------------------------------------- building


class _Builder:
    """Adds uniquely named nodes and initializers under one prefix."""

    def __init__(self, graph: ir.Graph, prefix: str, dtype: ir.DataType):
        self.graph, self.dtype = graph, dtype
        names = G.taken_names(graph)
        i = 0
        while any(n.startswith(f"{prefix}{i}/") for n in names):
            i += 1
        self.prefix = f"{prefix}{i}/"
        self.nodes: list[ir.Node] = []
        self.counts: dict[str, int] = {}

    def _name(self, base: str) -> str:
        k = self.counts.get(base, 0)
        self.counts[base] = k + 1
        return G.unique_name(self.graph, f"{self.prefix}{base}" + (f"_{k}" if k else ""))

    def init(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        arr = np.ascontiguousarray(array, dtype=(dtype or self.dtype).numpy())
        name = self._name(base)
        value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(dtype or self.dtype),
                         const_value=ir.tensor(arr, name=name))
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs, attrs=None, base: str | None = None, **kw) -> ir.Value:
        name = self._name(base or op_type)
        node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(attrs or {}), name=name, **kw)
        node.outputs[0].name = G.unique_name(self.graph, name + "/out")
        self.nodes.append(node)
        return node.outputs[0]

    def clone(self, step: _Step, x: ir.Value) -> ir.Value:
        """Re-apply `step`'s elementwise nodes to `x` (its constants are shared, not copied)."""
        mapping = {step.start: x}
        for n in step.nodes:
            name = self._name(n.op_type)
            new = ir.Node(n.domain, n.op_type, [mapping.get(v, v) for v in n.inputs],
                          list(n.attributes.values()), num_outputs=1, name=name)
            new.outputs[0].name = G.unique_name(self.graph, name + "/out")
            mapping[n.outputs[0]] = new.outputs[0]
            self.nodes.append(new)
        return mapping[step.end]


def _layer(b: _Builder, plan: _Plan, x: ir.Value, w: np.ndarray, kernel: tuple, groups: int, base: str) -> ir.Value:
    """One layer of the plan's family on x; `w` is in conv layout [out, in/g, *kernel]; bias 0."""
    out = w.shape[0]
    bias = b.init(f"{base}.bias", np.zeros(out))
    if plan.family == "conv":
        attrs = {"kernel_shape": list(kernel), "pads": [k // 2 for k in kernel] * 2,
                 "strides": [1] * len(kernel), "dilations": [1] * len(kernel), "group": groups}
        return b.op("Conv", [x, b.init(f"{base}.weight", w), bias], attrs, base=base)
    if plan.family == "gemm":
        return b.op("Gemm", [x, b.init(f"{base}.weight", w), bias], {"transB": 1}, base=base)
    y = b.op("MatMul", [x, b.init(f"{base}.weight", w.T)], base=base)
    return b.op("Add", [y, bias], base=f"{base}.add_bias")


def _blend(b: _Builder, plan: _Plan, u: ir.Value, act: _Step) -> ir.Value:
    """Network Morphism's parametric activation u + a ⊙ (φ(u) − u), a per channel, all zero."""
    trailing = (plan.rank or 2) - 2 if plan.family == "conv" else 0
    a = b.init("activation_mix", np.zeros((plan.channels,) + (1,) * trailing))
    change = b.op("Sub", [b.clone(act, u), u], base="activation_change")
    return b.op("Add", [u, b.op("Mul", [change, a], base="mix")], base="activation_blend")


def _bn(b: _Builder, x: ir.Value, channels: int, base: str) -> ir.Value:
    eps = 1e-5
    var = identity_bn_variance(eps, b.dtype.numpy().type)
    return b.op("BatchNormalization", [
        x, b.init(f"{base}.weight", np.ones(channels)), b.init(f"{base}.bias", np.zeros(channels)),
        b.init(f"{base}.running_mean", np.zeros(channels)), b.init(f"{base}.running_var", np.full(channels, var)),
    ], {"epsilon": eps}, base=base)


def _check_request(plan: _Plan, method: str, kernel, bn: bool, opset: int) -> tuple:
    name = plan.node.name
    if not deepen_method(method).residual and plan.net2net_reason:
        raise GrowError(f"cannot deepen after {name!r} with net2net: {plan.net2net_reason}")
    k = plan.kernel
    if kernel is not None:
        if plan.family != "conv":
            raise GrowError(
                f"--kernel applies to Conv layers; {name!r} is a {plan.node.op_type}, so the new layer "
                "is a dense one. Leave --kernel out."
            )
        if kernel < 1 or kernel % 2 == 0:
            raise GrowError(
                f"--kernel {kernel}: the inserted Conv needs an odd kernel (1, 3, 5, …) so that "
                "'same' padding of k//2 on each side keeps the feature map's size."
            )
        k = (kernel,) * len(plan.kernel)
    if bn:
        if plan.rank is None or plan.rank < 2 or (plan.family == "matmul" and plan.rank != 2):
            raise GrowError(
                f"--bn: BatchNormalization normalises axis 1, but the features of {name!r} are on the "
                "last axis of a token stream. Leave --bn out (r2r puts a LayerNormalization in "
                "front of its block on token streams)."
            )
        if opset < 9:
            raise GrowError(f"--bn needs opset 9 or later; the model uses opset {opset}.")
    return k


def _rewire(graph: ir.Graph, t: ir.Value, out: ir.Value, new_nodes: list) -> None:
    """Make every consumer of t (graph outputs too) read `out`; the block keeps reading t."""
    own = set(new_nodes)
    for use in t.uses():
        if use.node not in own:
            use.node.replace_input_with(use.idx, out)
    if t.is_graph_output():
        for i, v in enumerate(graph.outputs):
            if v is t:
                graph.outputs[i] = out
        name = t.name
        t.name = G.unique_name(graph, name + "/pre_deepen")
        out.name = name
        out.type = t.type
        out.shape = None if t.shape is None else ir.Shape(t.shape)


def _fmt_kernel(kernel: tuple) -> str:
    return "×".join(map(str, kernel)) + " " if kernel else ""


def deepen_model(model: ir.Model, *, after: str, method: str = "net2net", kernel: int | None = None,
                 bn: bool = False, seed: int = 0) -> dict:
    """Insert a layer (net2net) or a zero-output residual block (r2r, zero) after node `after`,
    editing `model` in place. Returns a summary with human-readable "lines"."""
    node = names.resolve(model.graph, after)
    check_growth_memory(node, kernel=kernel)
    G.prepare(model)
    return deepen_node(model, node, method=method, kernel=kernel, bn=bn, seed=seed)


def deepen_node(model: ir.Model, node: ir.Node, *, method: str = "net2net", kernel: int | None = None,
                bn: bool = False, seed: int = 0) -> dict:
    """`deepen_model` on a node already found, with shapes already inferred (growth plans)."""
    graph = model.graph
    plan = _plan(node)
    opset = ops.opset(graph, default=0)
    k = _check_request(plan, method, kernel, bn, opset)
    spec = deepen_method(method)
    before = G.parameter_count(model)
    rng = np.random.default_rng(seed)
    b = _Builder(graph, "onnxgrow/deepen", plan.dtype)
    t, c = plan.insert, plan.channels
    dt = plan.dtype.numpy()
    groups = plan.groups if plan.family == "conv" else 1
    desc = []
    if not spec.residual:
        y = _layer(b, plan, t, identity_weight(c, groups, k, dt), k, groups, "identity")
        desc.append(f"{plan.family_op()} {_fmt_kernel(k)}{c}→{c} identity" + (f" (group {groups})" if groups > 1 else ""))
        if bn:
            y = _bn(b, y, c, "bn")
            desc.append("BatchNormalization (identity)")
        last = plan.steps[-1] if plan.steps else None
        blended = plan.blended_activation()
        if blended is not None:
            y = _blend(b, plan, y, blended)
            desc.append(f"{blended.describe()} blended in: u + a·({blended.name}(u) − u), a = 0 (trainable)")
        elif last is not None and last.kind == "idempotent":
            y = b.clone(last, y)
            desc.append(f"{last.describe()} (copy)")
        out = y
    else:
        x = t
        if plan.family == "matmul" and plan.rank is not None and plan.rank >= 3 and opset >= 17:
            x = b.op("LayerNormalization", [x, b.init("ln.weight", np.ones(c)), b.init("ln.bias", np.zeros(c))],
                     {"axis": -1, "epsilon": 1e-5}, base="ln")
            desc.append("LayerNormalization")
        w1, w2 = paired_weights(rng, c, groups, k, zero=not spec.paired, dtype=dt)
        h = _layer(b, plan, x, w1, k, groups, "fc1" if plan.family != "conv" else "conv1")
        desc.append(f"{plan.family_op()} {_fmt_kernel(k)}{c}→{w1.shape[0]}" + (" (paired units)" if spec.paired else ""))
        if bn:
            h = _bn(b, h, w1.shape[0], "bn")
            desc.append("BatchNormalization")
        act = plan.last_activation()
        h = b.clone(act, h) if act is not None else b.op("Relu", [h], base="relu")
        desc.append(act.describe() if act is not None else "Relu")
        y = _layer(b, plan, h, w2, k, groups, "fc2" if plan.family != "conv" else "conv2")
        desc.append(f"{plan.family_op()} {_fmt_kernel(k)}{w1.shape[0]}→{c}" + (" (+V/−V)" if spec.paired else " (zeros)"))
        out = b.op("Add", [t, y], base="residual")
        desc.append("Add (residual)")
    if t.type is not None:
        out.type = t.type
    out.shape = None if t.shape is None else ir.Shape(t.shape)  # the block keeps the shape
    insert_name = t.name
    graph.insert_after(t.producer(), b.nodes)
    _rewire(graph, t, out, b.nodes)
    where = f"after {', '.join(plan.through)}" if plan.steps else "directly on its output"
    lines = [
        f"deepen after {node.name!r} ({node.op_type}), method {method}: the new "
        f"{'block' if spec.residual else 'layer'} reads {insert_name!r} ({where}), {c} "
        + ("channels" if plan.family == "conv" else "features"),
        "inserted: " + " → ".join(desc),
    ]
    return summary("deepen", lines, before, G.parameter_count(model), after=node.name, method=method,
                   insert_on=insert_name, through=plan.through, channels=c, nodes=[n.name for n in b.nodes])


def deepen(model, *, after: str | None = None, block: str | None = None, method: str | None = None,
           kernel: int | None = None, bn: bool = False, seed: int = 0):
    """Public API: a deepened copy of `model` (path, ModelProto, onnx_ir.Model or gs.Graph) as an
    onnx.ModelProto — a layer or block inserted after layer `after`, or a copy of residual block
    `block` (a module path or an index; see onnxgrow.blocks). The argument is never modified."""
    student, _ = window.edit(model, [after] if after and not block else None,
                             lambda m: deepen_any(m, after=after, block=block, method=method, kernel=kernel,
                                                  bn=bn, seed=seed))
    return student


def deepen_any(model: ir.Model, *, after: str | None, block: str | None, method: str | None,
               kernel: int | None = None, bn: bool = False, seed: int = 0) -> dict:
    """Exactly one of `after` (deepen after a layer; method default net2net) and `block` (copy a
    residual block; method zero or r2r, default zero), in place."""
    if (after is None) == (block is None):
        raise GrowError("name exactly one of --after LAYER (insert after a layer) and --block PATH "
                        "(copy a residual block).")
    if after is not None:
        return deepen_model(model, after=after, method=method or "net2net", kernel=kernel, bn=bn, seed=seed)
    if kernel is not None or bn:
        raise GrowError("--kernel and --bn shape an inserted layer; a block copy keeps the block's own "
                        "layers. Leave them out with --block.")
    from .blocks import copy_block

    return copy_block(model, block, method=method or "zero", seed=seed)


def deepen_options(node: ir.Node) -> dict:
    """For inspect: {"methods", "after" (the tensor the block reads), "through", "unavailable",
    "activation" (the first non-affine step, if any)} or {"reason"}. deepen_model with default options succeeds for every method listed."""
    try:
        plan = _plan(node)
    except GrowError as exc:
        return {"reason": str(exc)}
    info = {"methods": [name for name, m in DEEPEN_METHODS.items() if m.residual or plan.net2net_reason is None],
            "after": plan.insert.name, "through": plan.through}
    act = next((s for s in plan.steps if s.kind != "affine"), None)
    if act is not None:
        info["activation"] = act.name
    if plan.net2net_reason:
        info["unavailable"] = {"net2net": plan.net2net_reason}
    return info


# ----------------------------------------------------------------------------- kernel growth


def _kernel_plan(node: ir.Node) -> tuple[np.ndarray, tuple]:
    name = node.name
    if not ops.is_onnx(node) or node.op_type not in ("Conv", "ConvTranspose"):
        raise GrowError(
            f"cannot grow the kernel of {name!r}: it is a {node.op_type}; kernel growth applies to "
            "Conv and ConvTranspose nodes."
        )
    w = G.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim < 3:
        raise GrowError(f"cannot grow the kernel of {name!r}: its weight is not a constant tensor.")
    if node.op_type == "ConvTranspose":
        if G.attr(node, "output_shape") is not None:
            raise GrowError(
                f"cannot grow the kernel of {name!r}: it sets output_shape, which makes onnxruntime "
                "derive the padding; re-export it with explicit pads."
            )
        if G.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise GrowError(
                f"cannot grow the kernel of {name!r}: a ConvTranspose with SAME auto-padding; "
                "re-export it with explicit pads."
            )
    return w, tuple(w.shape[2:])


def kernel_options(node: ir.Node) -> dict:
    """For inspect: {"kernel": [k, ...]} when morph-kernel applies, else {"reason": ...}."""
    try:
        _, kernel = _kernel_plan(node)
    except GrowError as exc:
        return {"reason": str(exc)}
    return {"kernel": list(kernel)}


def morph_kernel_model(model: ir.Model, *, layer: str, kernel: int) -> dict:
    """Grow the kernel of Conv/ConvTranspose `layer` to `kernel` in every spatial dim, in place."""
    graph = model.graph
    node = names.resolve(graph, layer)
    check_growth_memory(node, kernel=kernel)
    w, old = _kernel_plan(node)
    G.infer_shapes(model)
    sd = len(old)
    if kernel < 1 or any(kernel < k or (kernel - k) % 2 for k in old) or all(kernel == k for k in old):
        raise GrowError(
            f"cannot grow the {_fmt_kernel(old).strip()} kernel of {layer!r} to {kernel}: the new size "
            "must be larger and differ from the old by an even number in every dimension (so the "
            f"padding grows equally on both sides), e.g. {max(old) + 2}."
        )
    new = tuple(kernel for _ in old)
    delta = [(kernel - k) // 2 for k in old]
    dil = list(G.attr(node, "dilations", None) or [1] * sd)
    strides = list(G.attr(node, "strides", None) or [1] * sd)
    auto = G.attr(node, "auto_pad", "NOTSET")
    pads = list(G.attr(node, "pads", None) or [0] * 2 * sd)
    attrs = {}
    if auto in ("SAME_UPPER", "SAME_LOWER") and any(s != 1 for s in strides):
        shape = _shape(node.inputs[0])
        if shape is None or any(d is None for d in shape[2:]):
            raise GrowError(
                f"cannot grow the kernel of {layer!r}: it uses {auto} padding with stride "
                f"{strides}, whose padding depends on the input size, and that size is not static. "
                "Re-export with explicit pads or a static input shape."
            )
        pads = _same_pads(shape[2:], old, strides, dil, auto)
        auto = "NOTSET"
        attrs["auto_pad"] = ir.AttrString("auto_pad", "NOTSET")
    elif auto == "VALID":
        pads, auto = [0] * 2 * sd, "NOTSET"
        attrs["auto_pad"] = ir.AttrString("auto_pad", "NOTSET")
    if auto == "NOTSET":
        grow = [d * s for d, s in zip(dil, delta)]
        attrs["pads"] = ir.AttrInt64s("pads", [p + g for p, g in zip(pads, grow + grow)])
    attrs["kernel_shape"] = ir.AttrInt64s("kernel_shape", list(new))
    for a in attrs.values():
        node.attributes[a.name] = a
    before = G.parameter_count(model)
    b = _Builder(graph, "onnxgrow/kernel", ir.DataType.from_numpy(w.dtype))
    old_w = node.inputs[1]
    node.replace_input_with(1, b.init(f"{node.name}.weight", grow_kernel(w, new), ir.DataType.from_numpy(w.dtype)))
    if old_w.is_initializer() and not old_w.uses() and not old_w.is_graph_output():
        graph.initializers.pop(old_w.name)
    line = (f"grew the kernel of {layer!r} ({node.op_type}) from {_fmt_kernel(old).strip()} to "
            f"{_fmt_kernel(new).strip()}: zero taps around the old kernel, padding "
            + ("kept SAME (stride 1)" if auto != "NOTSET" else f"now {list(node.attributes['pads'].value)}"))
    return summary("morph-kernel", [line], before, G.parameter_count(model), layer=layer,
                   kernel={"before": list(old), "after": list(new)})


def _same_pads(size, kernel, strides, dil, auto) -> list:
    """Explicit [begins..., ends...] equal to SAME_UPPER/SAME_LOWER for a static input size."""
    begins, ends = [], []
    for n, k, s, d in zip(size, kernel, strides, dil):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def morph_kernel(model, *, layer: str, kernel: int):
    """Public API: a copy of `model` whose Conv `layer` has a kernel×kernel kernel (exact)."""
    student, _ = window.edit(model, [layer], lambda m: morph_kernel_model(m, layer=layer, kernel=kernel))
    return student
