"""Tiny hand-built graphs for the channel rules: a producer layer `p` whose output channels pass
one op under test on their way to a consumer layer `c`. Each test widens `p` and compares teacher
and student in onnxruntime, or checks the refusal names the op."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

import onnxgrow as og
from tests.helpers import assert_equivalent

PRESERVING = ("net2net", "netmorph", "r2r")


def model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "rule", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def weight(name, *shape, seed=0, positive=False):
    a = np.random.default_rng(sum(map(ord, name)) + seed).normal(size=shape).astype(np.float32)
    return helper.make_tensor(name, TensorProto.FLOAT, shape, (np.abs(a) + 0.5 if positive else a).ravel())


def ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def floats(name, values):
    return helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values)


def value(name, *shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def conv_sandwich(middle, inits=(), channels=4, out_channels=None, hw=4, opset=17, consumer_k=1):
    """x[1,2,hw,hw] → Conv p (channels) → *middle* (reads "h", writes "m") → Conv c → y."""
    out_channels = channels if out_channels is None else out_channels
    nodes = [helper.make_node("Conv", ["x", "wp", "bp"], ["h"], name="p", pads=[1, 1, 1, 1]),
             *middle,
             helper.make_node("Conv", ["m", "wc", "bc"], ["y"], name="c")]
    inits = [weight("wp", channels, 2, 3, 3), weight("bp", channels),
             weight("wc", 3, out_channels, consumer_k, consumer_k), weight("bc", 3), *inits]
    return model(nodes, [value("x", 1, 2, hw, hw)], [value("y", 1, 3, None, None)], inits, opset)


def matmul_sandwich(middle, inits=(), features=4, out_features=None, opset=17):
    """x[2,5,3] → MatMul p (features) → *middle* ("h" → "m") → MatMul c → y."""
    out_features = features if out_features is None else out_features
    nodes = [helper.make_node("MatMul", ["x", "wp"], ["h"], name="p"), *middle,
             helper.make_node("MatMul", ["m", "wc"], ["y"], name="c")]
    inits = [weight("wp", 3, features), weight("wc", out_features, 2), *inits]
    return model(nodes, [value("x", 2, 5, 3)], [value("y", 2, 5, 2)], inits, opset)


def assert_widens_exactly(teacher, layer="p", width=8, methods=PRESERVING):
    for method in methods:
        student = og.widen(teacher, layer=layer, width=width, method=method, seed=1)
        assert_equivalent(teacher, student)
