"""Hand-built tests of the layout rule family (onnxgrow/groups/layout.py): ops that move or cut
the channel axis. The group is followed to where its channels land, and the shape constants that
must grow with it (Split sizes, Slice ends, Expand and Resize targets) are edited."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.rule_graphs import (
    assert_widens_exactly,
    conv_sandwich,
    floats,
    ints,
    matmul_sandwich,
    value,
    weight,
)


@pytest.mark.parametrize("end", [6, 7])
def test_slice_that_keeps_the_group_moves_its_end(end):
    """Concat(h, q) then Slice [0:end]: the end moves with the new channels, also when it is
    the axis' full size (7)."""
    middle = [helper.make_node("Concat", ["h", "q"], ["hq"], axis=1),
              helper.make_node("Slice", ["hq", "start", "end", "axis"], ["m"])]
    teacher = conv_sandwich(middle, [weight("q", 1, 3, 4, 4), ints("start", [0]), ints("end", [end]),
                                     ints("axis", [1])], out_channels=end)
    assert_widens_exactly(teacher)


def test_slice_of_the_other_part_shifts_past_the_new_channels():
    middle = [helper.make_node("Concat", ["h", "q"], ["hq"], axis=1),
              helper.make_node("Slice", ["hq", "start", "end", "axis"], ["tail"]),
              helper.make_node("Concat", ["hq", "tail"], ["m"], axis=1)]
    teacher = conv_sandwich(middle, [weight("q", 1, 3, 4, 4), ints("start", [4]), ints("end", [7]),
                                     ints("axis", [1])], out_channels=10)
    assert_widens_exactly(teacher)


def test_slice_taking_part_of_the_group_is_refused():
    middle = [helper.make_node("Slice", ["h", "start", "end", "axis"], ["m"])]
    teacher = conv_sandwich(middle, [ints("start", [1]), ints("end", [3]), ints("axis", [1])],
                            out_channels=2)
    with pytest.raises(GrowError, match="Slice.*takes part of the widened channels"):
        og.widen(teacher, layer="p", width=8)


def test_slices_into_equal_parts_grow_every_part_alike():
    """A fused projection: Slices take whole equal parts (q, k, v); each part grows alike and the
    bounds of the later parts move."""
    middle = [helper.make_node("Slice", ["h", "s0", "e0", "axis"], ["a"]),
              helper.make_node("Slice", ["h", "s1", "e1", "axis"], ["b"]),
              helper.make_node("Mul", ["a", "b"], ["m"])]
    teacher = conv_sandwich(middle, [ints("s0", [0]), ints("e0", [2]), ints("s1", [2]), ints("e1", [4]),
                                     ints("axis", [1])], out_channels=2)
    assert_widens_exactly(teacher, width=8)


@pytest.mark.parametrize("sizes", ["attribute", "input"])
def test_split_into_the_group_and_the_rest_grows_the_group_part(sizes):
    if sizes == "attribute":
        split = helper.make_node("Split", ["hq"], ["a", "b"], axis=1, split=[4, 3])
        opset, inits = 11, []
    else:
        split = helper.make_node("Split", ["hq", "sizes"], ["a", "b"], axis=1)
        opset, inits = 17, [ints("sizes", [4, 3])]
    middle = [helper.make_node("Concat", ["h", "q"], ["hq"], axis=1), split,
              helper.make_node("Relu", ["b"], ["rb"]), helper.make_node("ReduceMean" if opset < 18 else "ReduceMean",
                                                                         ["rb"], ["mb"], axes=[1], keepdims=1),
              helper.make_node("Add", ["a", "mb"], ["m"])]
    teacher = conv_sandwich(middle, [weight("q", 1, 3, 4, 4), *inits], opset=opset)
    assert_widens_exactly(teacher)


def test_expand_keeps_the_channel_entry_at_one():
    middle = [helper.make_node("Expand", ["h", "target"], ["m"])]
    teacher = conv_sandwich(middle, [ints("target", [1, 1, 1, 1])])
    assert_widens_exactly(teacher)


def test_expand_to_an_explicit_channel_count_grows_the_target():
    """A per-channel [1,C,1,1] gate expanded to the feature map: the target's C entry grows."""
    middle = [helper.make_node("GlobalAveragePool", ["h"], ["gap"]),
              helper.make_node("Expand", ["gap", "target"], ["e"]),
              helper.make_node("Mul", ["h", "e"], ["m"])]
    teacher = conv_sandwich(middle, [ints("target", [1, 4, 4, 4])])
    assert_widens_exactly(teacher)


def test_pad_on_spatial_axes_passes_and_on_the_channels_is_refused():
    spatial = conv_sandwich([helper.make_node("Pad", ["h", "pads"], ["m"])],
                            [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])
    assert_widens_exactly(spatial)
    channels = conv_sandwich([helper.make_node("Pad", ["h", "pads"], ["m"])],
                             [ints("pads", [0, 1, 0, 0, 0, 0, 0, 0])], out_channels=5)
    with pytest.raises(GrowError, match="Pad.*pads the channel axis"):
        og.widen(channels, layer="p", width=8)


def test_resize_by_scales_passes_and_by_sizes_grows_the_channel_entry():
    by_scales = conv_sandwich([helper.make_node("Resize", ["h", "", "scales"], ["m"], mode="nearest")],
                              [floats("scales", [1, 1, 2, 2])])
    assert_widens_exactly(by_scales)
    by_sizes = conv_sandwich([helper.make_node("Resize", ["h", "", "", "sizes"], ["m"], mode="nearest")],
                             [ints("sizes", [1, 4, 8, 8])])
    assert_widens_exactly(by_sizes)
    channels = conv_sandwich([helper.make_node("Resize", ["h", "", "scales"], ["m"], mode="nearest")],
                             [floats("scales", [1, 2, 1, 1])], out_channels=8)
    with pytest.raises(GrowError, match="Resize.*rescales the channel axis"):
        og.widen(channels, layer="p", width=8)


def test_unsqueeze_and_squeeze_keep_the_channel_axis_among_the_kept_axes():
    middle = [helper.make_node("Unsqueeze", ["h", "axis0"], ["u"]),
              helper.make_node("Relu", ["u"], ["r"]),
              helper.make_node("Squeeze", ["r", "axis0"], ["m"])]
    assert_widens_exactly(matmul_sandwich(middle, [ints("axis0", [0])]))


def test_transpose_moves_the_channel_axis():
    middle = [helper.make_node("Transpose", ["h"], ["t"], perm=[0, 2, 1]),
              helper.make_node("Mul", ["t", "gain"], ["tg"]),
              helper.make_node("Transpose", ["tg"], ["m"], perm=[0, 2, 1])]
    assert_widens_exactly(matmul_sandwich(middle, [weight("gain", 4, 1)]))


def test_gather_along_another_axis_passes():
    middle = [helper.make_node("Gather", ["h", "rows"], ["m"], axis=1)]
    teacher = matmul_sandwich(middle, [helper.make_tensor("rows", 7, [3], [4, 0, 2])])
    teacher.graph.output[0].CopyFrom(value("y", 2, 3, 2))
    assert_widens_exactly(teacher)


def test_gather_picking_channels_is_refused():
    middle = [helper.make_node("Gather", ["h", "cols"], ["m"], axis=2)]
    teacher = matmul_sandwich(middle, [helper.make_tensor("cols", 7, [2], [0, 3])], out_features=2)
    with pytest.raises(GrowError, match="Gather.*picks entries along the widened channel axis"):
        og.widen(teacher, layer="p", width=8)


def test_flatten_makes_each_channel_a_block_of_features():
    middle = [helper.make_node("Flatten", ["h"], ["f"], axis=1),
              helper.make_node("Unsqueeze", ["f", "axes"], ["m"])]
    teacher = conv_sandwich(middle, [ints("axes", [2, 3])], out_channels=4 * 16)
    assert_widens_exactly(teacher, width=6)
    assert np.prod([4, 4]) == 16


def test_split_to_sequence_read_at_constant_positions_grows_as_a_split():
    """The raw dynamo exporter's torch.chunk: SplitToSequence + SequenceAt becomes a Split."""
    middle = [helper.make_node("SplitToSequence", ["h", "two"], ["seq"], axis=1),
              helper.make_node("SequenceAt", ["seq", "zero"], ["a"]),
              helper.make_node("SequenceAt", ["seq", "one"], ["b"]),
              helper.make_node("Mul", ["a", "b"], ["m"])]
    scalars = [helper.make_tensor(name, TensorProto.INT64, [], [v]) for name, v in (("two", 2), ("zero", 0), ("one", 1))]
    teacher = conv_sandwich(middle, scalars, out_channels=2)
    assert_widens_exactly(teacher, width=8)
