"""The op vocabulary: which ONNX ops onnxgrow treats how, in one place that every module reads.

Each set names one property an op has for onnxgrow's purposes; a module that needs "ops that act
on each element alone" or "ops that only re-lay out a constant" imports the set instead of writing
its own list, so adding an op here teaches every transform, `inspect` and the exporters at once.
"""

from __future__ import annotations

ONNX_DOMAINS = ("", "ai.onnx")  # the default domain has two spellings

# layers with a weight: what onnxgrow widens, deepens after and lists in `inspect`
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# element-wise with numpy broadcasting over all inputs
BROADCAST_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where",
                    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or",
                    "Xor", "Mod", "BitShift")

# element-wise on input 0; any other input is a scalar parameter (Clip bounds, Dropout ratio)
UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
         "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt",
         "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout",
         "Cast", "Clip", "Mish", "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Shrink", "Swish")

# unary ops that keep a float tensor's type (deepening walks through them)
UNARY_FLOAT = tuple(op for op in UNARY if op not in ("Cast", "Not", "IsNaN", "IsInf"))

# the nonlinear activations a layer is followed by (what `inspect` shows as "act")
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid",
                         "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Gelu", "Mish",
                         "Swish"})

# φ(φ(x)) = φ(x): an identity layer followed by a copy of φ preserves φ's output (Net2DeeperNet)
IDEMPOTENT = frozenset({"Relu", "Clip", "Max", "Min"})

# ops that only re-lay out their input's values (a weight behind them is still that weight)
RELAYOUT = frozenset({"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand",
                      "Transpose"})

# ops a weight can sit behind and still be that weight (its state-dict name still names the layer)
WEIGHT_WRAPPERS = frozenset({"Transpose", "Cast", "Identity", "CastLike"})

# the default domain's ops that hold subgraphs (any op of another domain may too)
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})

# constant folding: these re-lay out a constant and are folded at any size; any other op is folded
# only on small operands (shape arithmetic), never on weights (that would be a weight computation)
FOLD_AT_ANY_SIZE = frozenset({"Identity", "Cast", "Transpose", "Shape", "Expand"})

REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


def is_onnx(node) -> bool:
    """The node is an op of the default ONNX domain (not a custom or contrib op)."""
    return node.domain in ONNX_DOMAINS


def opset(graph, default: int = 1) -> int:
    """The default-domain opset version the graph imports."""
    imports = graph.opset_imports
    return imports.get("", imports.get("ai.onnx", default))
