"""Hand-built tests of target shapes computed at run time (onnxgrow/groups/shapes.py and the
Reshape rule): an entry read from a tensor's shape grows exactly when that tensor's axis carries
the widened channels, wherever in the walk it joins; any other run-time entry is refused."""

from __future__ import annotations

import pytest
from onnx import helper

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.rule_graphs import assert_widens_exactly, conv_sandwich, ints, matmul_sandwich

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def test_shape_slices_from_the_open_ends_follow_the_channels():
    """torchlib's scaled_dot_product_attention: x.reshape(Shape(x)[:-2] + [-1]) and back with
    Shape(x)[:-2] + Shape(x)[-2:], the open ends written as INT64_MIN and INT64_MAX."""
    middle = [helper.make_node("Shape", ["h"], ["s"]),
              helper.make_node("Slice", ["s", "from_start", "minus2"], ["lead"]),
              helper.make_node("Slice", ["s", "minus2", "to_end"], ["tail"]),
              helper.make_node("Concat", ["lead", "minus1"], ["flat_shape"], axis=0),
              helper.make_node("Reshape", ["h", "flat_shape"], ["flat"]),
              helper.make_node("Concat", ["lead", "tail"], ["back_shape"], axis=0),
              helper.make_node("Reshape", ["flat", "back_shape"], ["m"])]
    inits = [ints("from_start", [INT64_MIN]), ints("minus2", [-2]), ints("to_end", [INT64_MAX]),
             ints("minus1", [-1])]
    assert_widens_exactly(conv_sandwich(middle, inits))


def _reshape_by_a_later_tensor(axis):
    """h[2, 5, 5] → Reshape to [-1, <entry>] → back to [2, 5, -1] → + t2, where t2 = Relu(Relu(h))
    joins the walk only after the Reshape: the entry is Shape(t2)[axis] (2: the features; 1: a
    sequence length equal to the feature count in the teacher)."""
    middle = [helper.make_node("Relu", ["h"], ["t1"]),
              helper.make_node("Relu", ["t1"], ["t2"]),
              helper.make_node("Shape", ["t2"], ["s"]),
              helper.make_node("Slice", ["s", "at", "after"], ["entry"]),
              helper.make_node("Concat", ["minus1", "entry"], ["flat_shape"], axis=0),
              helper.make_node("Reshape", ["h", "flat_shape"], ["flat"]),
              helper.make_node("Reshape", ["flat", "back_shape"], ["back"]),
              helper.make_node("Add", ["back", "t2"], ["m"])]
    inits = [ints("at", [axis]), ints("after", [axis + 1]), ints("minus1", [-1]), ints("back_shape", [2, 5, -1])]
    return matmul_sandwich(middle, inits, features=5)


def test_a_size_read_from_a_tensor_the_walk_reaches_later_follows_the_channels():
    assert_widens_exactly(_reshape_by_a_later_tensor(axis=2), width=9)


def test_a_size_read_from_a_later_tensor_that_does_not_grow_is_refused():
    """Shape(t2)[1] is the sequence length: it equals the 5 features of the teacher but not the
    10 of the student, so the Reshape would cut the student's features wrongly."""
    with pytest.raises(GrowError, match="computes the channel dimension of its target shape at run time"):
        og.widen(_reshape_by_a_later_tensor(axis=1), layer="p", width=10)
