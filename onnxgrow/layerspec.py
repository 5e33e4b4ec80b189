"""One description of a weight layer's geometry, read by the coupled-group walk, `inspect`,
deepening and kernel growth, so the weight layouts of the four layer ops are written once:

  op                weight layout               input axis   output axis   units in the output
  Conv              (out, in/groups, *kernel)   1            0             axis 1
  ConvTranspose     (in, out/groups, *kernel)   0            1             axis 1
  Gemm              (K, N); (N, K) with transB  0; 1         1; 0          axis 1
  MatMul x @ W      (..., K, N)                 rank − 2     rank − 1      the last axis
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from . import graph as g
from . import ops

FAMILY = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "gemm", "MatMul": "matmul"}


@dataclass(frozen=True)
class LayerSpec:
    """Where a layer keeps its weight and which of the weight's axes are its inputs and outputs."""

    op: str
    weight_index: int
    in_axis: int
    out_axis: int
    groups: int
    weight_shape: tuple[int, ...] | None  # None when the weight is computed at run time

    @property
    def family(self) -> str:
        return FAMILY[self.op]

    @property
    def width(self) -> int | None:
        """Output channels or features."""
        if self.weight_shape is None:
            return None
        per_group = self.weight_shape[self.out_axis]
        return per_group * self.groups if self.op == "ConvTranspose" else per_group

    @property
    def in_width(self) -> int | None:
        """Input channels or features."""
        if self.weight_shape is None:
            return None
        per_group = self.weight_shape[self.in_axis]
        return per_group * self.groups if self.op == "Conv" else per_group

    @property
    def kernel(self) -> tuple[int, ...] | None:
        if self.family != "conv" or self.weight_shape is None:
            return None
        return tuple(self.weight_shape[2:])

    @property
    def taps(self) -> int:
        return math.prod(self.kernel or ())

    def output_axis(self, out_rank: int) -> int:
        """The axis of the layer's output that holds its units."""
        return 1 if self.family != "matmul" else out_rank - 1


def layer_spec(node: ir.Node, weight_shape: tuple | None = None) -> LayerSpec | None:
    """The geometry of a Conv, ConvTranspose, Gemm or MatMul-with-constant-weight; None for any
    other node. `weight_shape` stands in for the weight's when it is computed at run time."""
    op = node.op_type
    if not ops.is_onnx(node) or op not in FAMILY or len(node.inputs) < 2:
        return None
    if weight_shape is None:
        weight = g.constant(node.inputs[1])
        if weight is None and op == "MatMul":
            return None  # a product of two computed tensors (attention), not a layer
        weight_shape = None if weight is None else weight.shape
    shape = None if weight_shape is None else tuple(int(d) for d in weight_shape)
    if op == "Conv":
        return LayerSpec(op, 1, 1, 0, int(g.attr(node, "group", 1)), shape)
    if op == "ConvTranspose":
        return LayerSpec(op, 1, 0, 1, int(g.attr(node, "group", 1)), shape)
    if op == "Gemm":
        trans_b = g.attr(node, "transB", 0)
        return LayerSpec(op, 1, 1 if trans_b else 0, 0 if trans_b else 1, 1, shape)
    rank = len(shape)
    return LayerSpec(op, 1, max(rank - 2, 0), max(rank - 1, 0), 1, shape)
