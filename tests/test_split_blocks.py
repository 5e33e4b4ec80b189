"""Split-and-concat blocks (YOLO's C2f, C3/CSP, ELAN, SPPF; GLU halves): a layer's output is cut
into parts, each part used on its own (a chain of bottlenecks adding it back as their shortcut),
and the parts joined again by Concat. Every conv of such a network widens exactly, alone and all
at once (`*=x2`): each part grows with its new units inside it, the Split sizes and the Concat
layout move along, and the bottleneck chains grow with their part.

The blocks are written as in ultralytics (Conv = conv-BN-SiLU, `chunk(2, 1)`), randomised and
exported by torch's legacy exporter: `split((c, c), 1)` (ultralytics' forward_split) as a Split
with its sizes an input (opset 17) or an attribute (opset 11); `chunk(2, 1)` as Slices whose bounds
are computed from the tensor's shape at run time (torch 2.13); `x[:, :c]` as Slices with constant
bounds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests import zoo
from tests.helpers import assert_equivalent
from tests.zoo import SplitNet


VARIANTS = [("split", 17), ("split", 11), ("chunk", 17), ("slice", 17)]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{s}-opset{o}" for s, o in VARIANTS])
def split_net(request, tmp_path_factory):
    split_by, opset = request.param
    module = zoo.randomize_(SplitNet(split_by), seed=3)
    path = tmp_path_factory.mktemp("split") / "split_net.onnx"
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    zoo.export(module, (x,), path, opset=opset, keep_bn=False)
    return onnx.load(path), split_by, opset


def convs(model):
    return [n for n in model.graph.node if n.op_type == "Conv"]


def out_channels(model):
    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: inits[n.input[1]].dims[0] for n in convs(model)}


def test_the_exports_cut_the_parts_as_asked(split_net):
    model, split_by, opset = split_net
    ops = [n.op_type for n in model.graph.node]
    if split_by == "split":
        assert ops.count("Split") == 4 and "Slice" not in ops
    else:  # torch 2.13 writes chunk as Slices with bounds computed from the tensor's shape
        assert ops.count("Slice") == 8 and "Split" not in ops
    for split in (n for n in model.graph.node if n.op_type == "Split"):
        assert (len(split.input) == 2) == (opset >= 13)


@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
def test_every_conv_but_the_head_widens_exactly(split_net, method):
    model, split_by, opset = split_net
    if method != "net2net" and (split_by, opset) != ("split", 17):
        return  # the other methods differ in the numbers only, not in the layout: one export suffices
    widths = out_channels(model)
    for node in convs(model)[:-1]:
        student = og.widen(model, layer=node.name, width=2 * widths[node.name], method=method, seed=2)
        assert out_channels(student)[node.name] == 2 * widths[node.name]
        assert_equivalent(model, student)


def test_widening_the_first_conv_of_a_c2f_grows_both_halves_and_every_bottleneck(split_net):
    model, split_by, _ = split_net
    cv1 = next(n.name for n in convs(model) if "c2f/cv1" in n.name)
    student, summary = og.grow(model, widen={cv1: "x2"}, with_summary=True)
    before, after = out_channels(model), out_channels(student)
    grown = {name for name in before if after[name] != before[name]}
    # the shortcut adds put each bottleneck's last conv in cv1's group; the first convs read a part
    assert grown == {cv1, "/c2f/m.0/cv2/conv/Conv", "/c2f/m.1/cv2/conv/Conv"}
    assert after["/c2f/cv2/conv/Conv"] == before["/c2f/cv2/conv/Conv"]
    assert_equivalent(model, student)
    split = next(n for n in student.graph.node if n.op_type in ("Split", "Slice") and n.input[0].startswith("/c2f/"))
    if split.op_type == "Split":  # each half grew from 4 to 8
        sizes = (onnx.numpy_helper.to_array(next(i for i in student.graph.initializer if i.name == split.input[1]))
                 if len(split.input) > 1 else next(a.ints for a in split.attribute if a.name == "split"))
        assert list(sizes) == [8, 8]


def test_widening_a_bottleneck_grows_its_part_in_place(split_net):
    """m.0's last conv adds to the second half: cv1 grows inside that half only, and the Concat
    carries the group three times (the half, m.0's sum, m.1's sum)."""
    model, _, _ = split_net
    student, summary = og.grow(model, widen={"/c2f/m.0/cv2/conv/Conv": "x2"}, with_summary=True)
    before, after = out_channels(model), out_channels(student)
    assert after["/c2f/cv1/conv/Conv"] == before["/c2f/cv1/conv/Conv"] + 4  # the second half: 4 → 8
    assert after["/c2f/m.1/cv2/conv/Conv"] == 8
    assert_equivalent(model, student)


def test_star_x2_doubles_every_conv_but_the_head_exactly(split_net):
    model, _, _ = split_net
    student, summary = og.grow(model, widen={"*": "x2"}, with_summary=True)
    before, after = out_channels(model), out_channels(student)
    head = convs(model)[-1].name
    assert {n: after[n] for n in before if n != head} == {n: 2 * before[n] for n in before if n != head}
    assert after[head] == before[head]
    assert [s["layer"] for s in summary["skipped"]] == [head]
    assert_equivalent(model, student)


def test_star_x2_with_r2r_is_exact_too(split_net):
    model, _, _ = split_net
    student = og.grow(model, widen={"*": "x2"}, method="r2r", seed=1)
    assert_equivalent(model, student)


def test_channel_maps_of_a_split_group_say_where_every_value_came_from(split_net):
    """The optimizer-state map of cv2 (reading the Concat that holds the group three times) lists
    the teacher column each student column was split from, scaled by its share."""
    model, _, _ = split_net
    student, summary = og.grow(model, widen={"/c2f/m.0/cv2/conv/Conv": "x2"}, with_summary=True, method="net2net")
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    grown = {i.name: onnx.numpy_helper.to_array(i) for i in student.graph.initializer}
    for m in summary["mappings"]:
        old, new = weights[m["source"]], grown[m["initializer"]]
        index, scale = np.array(m["index"]), np.array(m["scale"])
        assert new.shape[m["axis"]] == index.size
        picked = np.take(old, np.where(index >= 0, index, 0), axis=m["axis"])
        shape = [1] * new.ndim
        shape[m["axis"]] = -1
        expect = picked * scale.reshape(shape)
        keep = index >= 0
        assert np.allclose(np.compress(keep, new, axis=m["axis"]), np.compress(keep, expect, axis=m["axis"]), atol=1e-6)


def test_a_split_part_used_as_a_shape_is_still_refused():
    """A part of a split block that reaches an op without a rule for several copies (here
    Reshape) is refused with the op named, not widened wrongly."""
    from onnx import helper
    from tests.rule_graphs import conv_sandwich, ints, weight

    middle = [helper.make_node("Split", ["h", "sizes"], ["a", "b"], axis=1),
              helper.make_node("Relu", ["b"], ["rb"]),
              helper.make_node("Concat", ["b", "rb", "q"], ["bq"], axis=1),
              helper.make_node("Reshape", ["bq", "shape"], ["m"])]
    teacher = conv_sandwich(middle, [ints("sizes", [2, 2]), weight("q", 1, 2, 4, 4), ints("shape", [1, 6, 4, 4])],
                            out_channels=6)
    with pytest.raises(GrowError, match="several places of one tensor.*Reshape"):
        og.widen(teacher, layer="p", width=8)
