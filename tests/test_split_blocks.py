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
import torch.nn as nn

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests import zoo
from tests.helpers import assert_equivalent


class Conv(nn.Module):
    """ultralytics Conv: conv (no bias) → BatchNorm → SiLU."""

    def __init__(self, cin, cout, k=1, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


def halves(x, c, split_by):
    if split_by == "slice":
        return [x[:, :c], x[:, c:]]
    if split_by == "split":
        return list(x.split((c, c), 1))
    return list(x.chunk(2, 1))


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 → two halves → n bottlenecks on the last → concat all → cv2."""

    def __init__(self, cin, cout, n=1, shortcut=True, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = cout // 2, split_by
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = halves(self.cv1(x), self.c, self.split_by)
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    """YOLOv5's C3 (CSP): two 1x1 branches, bottlenecks on one, concat → cv3."""

    def __init__(self, cin, cout, n=1):
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2, self.cv3 = Conv(cin, c), Conv(cin, c), Conv(2 * c, cout)
        self.m = nn.Sequential(*(Bottleneck(c) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class ELAN(nn.Module):
    """An ELAN-like block: cv1 → two halves; a chain of 3x3 convs on the last; concat all → cv4."""

    def __init__(self, cin, cout, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = cout // 2, split_by
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2, self.cv3 = Conv(self.c, self.c, 3), Conv(self.c, self.c, 3)
        self.cv4 = Conv(4 * self.c, cout)

    def forward(self, x):
        y = halves(self.cv1(x), self.c, self.split_by)
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class GLU(nn.Module):
    """Gated halves: conv → a, b → a · sigmoid(b) → conv."""

    def __init__(self, c, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = c, split_by
        self.proj, self.out = nn.Conv2d(c, 2 * c, 1), Conv(c, c)

    def forward(self, x):
        a, b = halves(self.proj(x), self.c, self.split_by)
        return self.out(a * torch.sigmoid(b))


class SPPF(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2 = Conv(cin, c), Conv(4 * c, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class SplitNet(nn.Module):
    """A small YOLOv8-like backbone with every kind of split block, ending in a 1x1 head conv."""

    def __init__(self, split_by="chunk"):
        super().__init__()
        self.stem = Conv(3, 8, 3, 2)
        self.c2f = C2f(8, 8, n=2, split_by=split_by)
        self.down = Conv(8, 16, 3, 2)
        self.c2f_plain = C2f(16, 16, n=1, shortcut=False, split_by=split_by)
        self.c3 = C3(16, 16)
        self.elan = ELAN(16, 16, split_by=split_by)
        self.glu = GLU(16, split_by=split_by)
        self.sppf = SPPF(16, 16)
        self.head = nn.Conv2d(16 + 8, 5, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        p1 = self.c2f(self.stem(x))
        p2 = self.sppf(self.glu(self.elan(self.c3(self.c2f_plain(self.down(p1))))))
        return self.head(torch.cat([self.up(p2), p1], 1))  # a neck-style Concat of two scales


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
