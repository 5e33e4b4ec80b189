"""Hand-built tests of the element-wise rule family (onnxgrow/groups/elementwise.py): ops that
act on each channel alone pass the group through unchanged, per-channel parameters grow with it,
and an op that mixes the channels is refused with its name."""

from __future__ import annotations

import pytest
from onnx import helper

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.rule_graphs import (
    assert_widens_exactly,
    conv_sandwich,
    floats,
    ints,
    matmul_sandwich,
    model,
    value,
    weight,
)


def test_prelu_slope_per_channel_grows_with_the_channels():
    teacher = conv_sandwich([helper.make_node("PRelu", ["h", "slope"], ["m"])],
                            [weight("slope", 4, 1, 1)])
    assert_widens_exactly(teacher)


@pytest.mark.parametrize("pool", [
    helper.make_node("MaxPool", ["h"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("AveragePool", ["h"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    helper.make_node("GlobalAveragePool", ["h"], ["m"]),
], ids=["max", "average", "global"])
def test_pooling_is_channel_wise(pool):
    assert_widens_exactly(conv_sandwich([pool]))


def test_instance_norm_scale_and_bias_grow_with_the_channels():
    teacher = conv_sandwich([helper.make_node("InstanceNormalization", ["h", "g", "b"], ["m"])],
                            [weight("g", 4, positive=True), weight("b", 4)])
    assert_widens_exactly(teacher)


def test_softmax_over_other_axes_passes_and_over_the_channels_is_refused():
    spatial = conv_sandwich([helper.make_node("Softmax", ["h"], ["m"], axis=3)])
    assert_widens_exactly(spatial)
    channels = conv_sandwich([helper.make_node("Softmax", ["h"], ["m"], axis=1)])
    with pytest.raises(GrowError, match="Softmax.*normalises over the widened channel axis: new channels"):
        og.widen(channels, layer="p", width=8)


def test_softmax_over_the_channels_into_the_output_says_the_channels_are_the_outputs():
    """A classifier's last layer (MTCNN: Conv → Softmax → Flatten → output) is refused as a graph output."""
    nodes = [helper.make_node("Conv", ["x", "wp", "bp"], ["h"], name="p", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["h"], ["m"], axis=1), helper.make_node("Flatten", ["m"], ["probs"])]
    teacher = model(nodes, [value("x", 1, 2, 4, 4)], [value("probs", 1, None)],
                    [weight("wp", 4, 2, 3, 3), weight("bp", 4)], 17)
    with pytest.raises(GrowError, match="flow into the graph output 'probs' with no layer in between.*Softmax"):
        og.widen(teacher, layer="p", width=8)


def test_cast_like_lends_only_its_type():
    teacher = matmul_sandwich([helper.make_node("CastLike", ["h", "x"], ["m"])])
    assert_widens_exactly(teacher)


def test_shape_of_the_group_is_read_at_run_time():
    """x.view(x.size(0), -1): the batch size is read from the widened tensor itself."""
    middle = [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["f"]),
        helper.make_node("Unsqueeze", ["f", "axes23"], ["m"]),
    ]
    inits = [helper.make_tensor("zero", 7, [], [0]), ints("axes0", [0]), ints("minus1", [-1]),
             ints("axes23", [2, 3])]
    teacher = conv_sandwich(middle, inits, out_channels=4 * 16)
    assert_widens_exactly(teacher)


def test_reduce_over_the_channels_is_refused_unless_it_is_a_mean():
    teacher = conv_sandwich([helper.make_node("ReduceSum", ["h", "axis1"], ["s"], keepdims=1),
                             helper.make_node("Add", ["h", "s"], ["m"])], [ints("axis1", [1])])
    with pytest.raises(GrowError, match="ReduceSum.*reduces over the widened channel axis"):
        og.widen(teacher, layer="p", width=8)


def test_clip_bounds_are_scalars_not_channels():
    teacher = conv_sandwich([helper.make_node("Clip", ["h", "lo", "hi"], ["m"])],
                            [floats("lo", [0.0]), floats("hi", [6.0])])
    assert_widens_exactly(teacher)
