"""Hand-built tests of the layer rule family (onnxgrow/groups/layers.py): where the group starts
(producer rows) and ends (consumer columns) in Conv, ConvTranspose, Gemm and MatMul weights."""

from __future__ import annotations

import pytest
from onnx import helper

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.rule_graphs import assert_widens_exactly, model, value, weight


def conv_transpose_chain(group=1):
    """ConvTranspose p (weight [in, out/g, k, k]) → Relu → ConvTranspose c."""
    nodes = [helper.make_node("ConvTranspose", ["x", "wp", "bp"], ["h"], name="p", strides=[2, 2],
                              group=group),
             helper.make_node("Relu", ["h"], ["m"]),
             helper.make_node("ConvTranspose", ["m", "wc"], ["y"], name="c", pads=[1, 1, 1, 1])]
    inits = [weight("wp", 2, 4 // group, 2, 2), weight("bp", 4), weight("wc", 4, 3, 3, 3)]
    return model(nodes, [value("x", 1, 2, 3, 3)], [value("y", 1, 3, None, None)], inits)


def test_conv_transpose_produces_on_weight_axis_1_and_consumes_on_axis_0():
    assert_widens_exactly(conv_transpose_chain())


def test_grouped_conv_transpose_is_refused_with_the_reason():
    with pytest.raises(GrowError, match="only an ungrouped ConvTranspose"):
        og.widen(conv_transpose_chain(group=2), layer="p", width=8)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_axes_follow_trans_b(trans_b):
    nodes = [helper.make_node("Gemm", ["x", "wp", "bp"], ["h"], name="p", transB=trans_b),
             helper.make_node("Tanh", ["h"], ["m"]),
             helper.make_node("Gemm", ["m", "wc"], ["y"], name="c", transB=trans_b)]
    wp, wc = ((4, 3), (2, 4)) if trans_b else ((3, 4), (4, 2))
    inits = [weight("wp", *wp), weight("bp", 4), weight("wc", *wc)]
    assert_widens_exactly(model(nodes, [value("x", 5, 3)], [value("y", 5, 2)], inits))


def test_weight_first_matmul_consumes_on_its_columns():
    """A consumer W @ x whose x has the group on its rows reads it through W's columns."""
    nodes = [helper.make_node("MatMul", ["x", "wp"], ["h"], name="p"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Transpose", ["r"], ["m"], perm=[1, 0]),
             helper.make_node("MatMul", ["wc", "m"], ["y"], name="c")]
    inits = [weight("wp", 3, 4), weight("wc", 2, 4)]
    assert_widens_exactly(model(nodes, [value("x", 5, 3)], [value("y", 2, 5)], inits))


def recurrent_after_matmul(op, directions=1, transpose=False):
    """x[5,2,3] → MatMul p (4 features) → [Transpose to the sequence's feature axis 1] → op (hidden 3)
    → its Y and Y_h. (onnxruntime runs only layout 0.)"""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    attrs = {"hidden_size": 3, **({"direction": "bidirectional"} if directions == 2 else {})}
    features = 2 if transpose else 4
    nodes = [helper.make_node("MatMul", ["x", "wp"], ["h"], name="p"),
             *([helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1])] if transpose else []),
             helper.make_node(op, ["ht" if transpose else "h", "W", "R", "B"], ["y", "y_h"], name="rnn", **attrs)]
    inits = [weight("wp", 3, 4), weight("W", directions, gates * 3, features),
             weight("R", directions, gates * 3, 3), weight("B", directions, 2 * gates * 3)]
    return model(nodes, [value("x", 5, 2, 3)], [value("y", None, None, None, None), value("y_h", None, None, None)],
                 inits, opset=14)


@pytest.mark.parametrize("op, directions", [("LSTM", 1), ("LSTM", 2), ("GRU", 2), ("RNN", 1)])
def test_recurrent_layers_consume_the_features_through_w_axis_2(op, directions):
    """ddddocr's CRNN: a conv's channels feed an LSTM."""
    assert_widens_exactly(recurrent_after_matmul(op, directions), width=10)


def test_recurrent_layers_refuse_channels_on_another_axis():
    with pytest.raises(GrowError, match="LSTM node 'rnn' on axis 1, not its feature axis 2"):
        og.widen(recurrent_after_matmul("LSTM", transpose=True), layer="p", width=8)
