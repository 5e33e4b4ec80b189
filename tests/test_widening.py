"""Widening: the numpy maths, hand-built graphs that exercise each channel rule, every zoo
architecture, and the command line.

Exactness is asserted as max|student − teacher| / max|teacher| ≤ 1e-5 on random inputs
(tests/helpers.py): float32 rounding of an exact transform stays below ~1e-6 of the output's
scale on these nets, while one channel mapped to the wrong place moves it by O(1e-1).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxgrow as og
from onnxgrow import groups
from onnxgrow.errors import GrowError
from onnxgrow.widening import (
    insert_channels,
    scale_channels,
    source_units,
    split_factors,
    take_channels,
)
from tests import zoo
from tests.helpers import assert_equivalent, random_feeds, run, scaled_errors
from tests.rule_graphs import model as _model

METHODS = ("net2net", "netmorph", "r2r")


# ----------------------------------------------------------------------------- maths


def test_source_units_are_balanced_and_pairs_share_a_source():
    rng = np.random.default_rng(0)
    src = source_units(5, 12, rng)
    assert np.bincount(src, minlength=5).max() - np.bincount(src, minlength=5).min() <= 1
    pairs = source_units(5, 8, rng, paired=True)
    assert (pairs[0::2] == pairs[1::2]).all() and len(pairs) == 8


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_split_factors_of_the_copies_of_a_unit_sum_to_one(noise):
    rng = np.random.default_rng(1)
    src = source_units(4, 7, rng)
    s_old, s_new = split_factors(4, src, noise, rng)
    totals = s_old + np.bincount(src, weights=s_new, minlength=4)
    np.testing.assert_allclose(totals, 1.0)
    assert (s_new > 0).all()
    if noise == 0:  # textbook Net2Net: 1/c_i
        counts = 1 + np.bincount(src, minlength=4)
        np.testing.assert_allclose(s_old, 1 / counts)


def test_slot_views_follow_offset_and_block():
    # a Concat output [prefix 2 | group 3 | suffix 1], each channel a block of 2 features
    slot = groups.Slot(axis=1, offset=2, total=6, block=2)
    x = np.arange(12).reshape(1, 12)
    assert take_channels(x, 1, slot, [0]).ravel().tolist() == [4, 5]
    grown = insert_channels(x, 1, slot, 3, take_channels(x, 1, slot, [1]))
    assert grown.ravel().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 10, 11]
    scaled = scale_channels(x.astype(float), 1, slot, [1, 0.5, 2])
    assert scaled.ravel().tolist() == [0, 1, 2, 3, 4, 5, 3, 3.5, 16, 18, 10, 11]


def test_layernorm_statistics_survive_uniform_replication_only():
    """LayerNorm over d channels: replicating every unit c times keeps mean and variance, so the
    replicated outputs equal the originals; replicating some units more than others does not."""
    x = np.random.default_rng(2).normal(size=(4, 6))

    def ln(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    uniform = np.concatenate([x, x], axis=1)
    np.testing.assert_allclose(ln(uniform)[:, :6], ln(x), atol=1e-12)
    skewed = np.concatenate([x, x[:, :3]], axis=1)
    assert np.abs(ln(skewed)[:, :6] - ln(x)).max() > 1e-2


# ----------------------------------------------------------------------------- hand-built graphs


def _w(name, *shape, seed=0, positive=False):
    a = np.random.default_rng(abs(hash(name)) % 2**32 + seed).normal(size=shape).astype(np.float32)
    return helper.make_tensor(name, TensorProto.FLOAT, shape, np.abs(a) + 0.5 if positive else a)


def _vi(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def concat_flatten_model():
    """conv a | conv b -> Concat -> BN -> Relu -> Flatten -> Gemm: widening `a` is a slice at
    offset 0 of the concat, widening `b` a slice at offset 3; Flatten makes blocks of H·W."""
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="b"),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_w("wa", 3, 2, 3, 3), _w("ba", 3), _w("wb", 4, 2, 1, 1), _w("s", 7), _w("t", 7),
             _w("m", 7), _w("v", 7, positive=True), _w("wf", 5, 7 * 16), _w("bf", 5)]
    return _model(nodes, [_vi("x", 1, 2, 4, 4)], [_vi("y", 1, 5)], inits)


def residual_transpose_model():
    """Two MatMul producers meet at a residual Add on a [B, T, C] stream; a Transpose moves the
    channel axis around a per-channel Mul; the consumer is a MatMul on the moved-back axis."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="p1"),
        helper.make_node("Add", ["h1", "b1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["h2"], name="p2"),
        helper.make_node("Add", ["h", "h2"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1]),
        helper.make_node("Mul", ["rt", "g"], ["rg"]),
        helper.make_node("Transpose", ["rg"], ["rb"], perm=[0, 2, 1]),
        helper.make_node("Tanh", ["rb"], ["a"]),
        helper.make_node("MatMul", ["a", "w3"], ["y"], name="c"),
    ]
    inits = [_w("w1", 4, 6), _w("b1", 6), _w("w2", 6, 6), _w("g", 6, 1), _w("w3", 6, 3)]
    return _model(nodes, [_vi("x", 2, 5, 4)], [_vi("y", 2, 5, 3)], inits)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer,width", [("a", 7), ("b", 10)])
def test_concat_slice_and_flatten_blocks(method, layer, width):
    teacher = concat_flatten_model()
    student = og.widen(teacher, layer=layer, width=width, method=method, seed=3)
    assert_equivalent(teacher, student)
    dims = {i.name: list(i.dims) for i in student.graph.initializer}
    fc_in = [d for n, d in dims.items() if d[0] == 5 and len(d) == 2][0][1]
    old = 3 if layer == "a" else 4
    assert fc_in == (7 + width - old) * 16


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", ["p1", "p2"])
def test_residual_junction_and_transposed_channel_axis(method, layer):
    teacher = residual_transpose_model()
    group = groups.find_group(_ir_node(teacher, layer))
    assert {n.name for n in group.producers} == {"p1", "p2"}
    assert {n.name for n in group.consumers} == {"p2", "c"}
    student = og.widen(teacher, layer=layer, width=10, method=method, seed=1)
    assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r", "random"])
@pytest.mark.parametrize("layer,width", [("a", 7), ("b", 10)])
def test_channel_maps_say_where_every_grown_value_came_from(method, layer, width):
    """The mappings widen reports (what optimizer state follows): every position with a source
    holds source value × scale; every fresh one is new (random, zero or ±V)."""
    from onnxgrow import graph as G
    from onnxgrow.widening import widen_model

    teacher = G.load(concat_flatten_model())
    old = {name: G.constant(v) for name, v in teacher.graph.initializers.items()}
    student = G.load(concat_flatten_model())
    summary = widen_model(student, layer=layer, width=width, method=method, seed=3)
    assert summary["mappings"]
    for m in summary["mappings"]:
        grown = G.constant(student.graph.initializers[m["initializer"]])
        source = np.moveaxis(old[m["source"]], m["axis"], 0)
        grown = np.moveaxis(grown, m["axis"], 0)
        index, scale = np.array(m["index"]), np.array(m["scale"])
        assert len(index) == grown.shape[0] > source.shape[0]
        kept = index >= 0
        expect = source[index[kept]] * scale[kept].reshape(-1, *[1] * (grown.ndim - 1))
        np.testing.assert_allclose(grown[kept], expect, rtol=1e-6, atol=1e-7)
        if method == "net2net" or m["source"] in ("s", "t", "m", "v"):  # copies, splits, BN params
            assert kept.all()
    fresh = sum(int((np.array(m["index"]) < 0).sum()) for m in summary["mappings"])
    assert (fresh == 0) == (method == "net2net")


def _ir_node(model, name):
    from onnxgrow import graph, names

    m = graph.load(model)
    graph.infer_shapes(m)
    return names.resolve(m.graph, name)


def test_each_method_does_what_it_says():
    teacher = residual_transpose_model()
    outs = {}
    for method in ("net2net", "netmorph", "r2r", "random"):
        student = og.widen(teacher, layer="p1", width=10, method=method, seed=0)
        outs[method] = max(scaled_errors(teacher, student))
        w3 = onnx.numpy_helper.to_array([i for i in student.graph.initializer if list(i.dims) == [10, 3]][0])
        if method == "netmorph":
            assert not w3[6:].any(), "netmorph's consumer columns for new units must be zero"
        if method == "r2r":
            np.testing.assert_array_equal(w3[6::2], -w3[7::2])
            assert np.abs(w3[6:]).min() > 0
    assert outs["random"] > 1e-2 and max(outs[m] for m in METHODS) < 1e-5


def test_net2net_is_deterministic_for_a_seed_and_noise_breaks_symmetry():
    teacher = residual_transpose_model()
    a = og.widen(teacher, layer="p1", width=9, seed=5)
    b = og.widen(teacher, layer="p1", width=9, seed=5)
    c = og.widen(teacher, layer="p1", width=9, seed=6)
    assert a.SerializeToString() == b.SerializeToString() != c.SerializeToString()
    textbook = og.widen(teacher, layer="p1", width=9, seed=5, noise=0)
    assert_equivalent(teacher, textbook)


def test_input_model_is_not_modified():
    teacher = concat_flatten_model()
    before = teacher.SerializeToString()
    og.widen(teacher, layer="a", width=6)
    assert teacher.SerializeToString() == before


@pytest.mark.parametrize("layer,width,method,match", [
    ("a", 3, "net2net", "must be larger"),
    ("a", 2, "net2net", "must be larger"),
    ("a", 6, "r2r", "odd"),  # 3 -> 6 adds 3
    ("fc", 9, "net2net", "graph output"),
    ("nope", 9, "net2net", "no layer named"),
])
def test_refusals_say_why(layer, width, method, match):
    with pytest.raises(GrowError, match=match):
        og.widen(concat_flatten_model(), layer=layer, width=width, method=method)


def test_unknown_op_is_refused_not_assumed_elementwise():
    model = residual_transpose_model()
    model.graph.node[7].op_type = "Hardmax"  # the Tanh becomes an op that mixes channels
    with pytest.raises(GrowError, match="Hardmax"):
        og.widen(model, layer="p1", width=8)


def test_layernorm_group_any_width_by_mean_padding_multiples_by_replication():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="p"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="c")]
    model = _model(nodes, [_vi("x", 3, 4)], [_vi("y", 3, 2)],
                   [_w("w1", 4, 6), _w("g", 6), _w("b", 6), _w("w2", 6, 2)])
    for method in METHODS:
        assert_equivalent(model, og.widen(model, layer="p", width=12, method=method, seed=2))
        if method != "random":  # 9: mean padding (onnxgrow/padding.py)
            assert_equivalent(model, og.widen(model, layer="p", width=9, method=method, seed=2))


# ----------------------------------------------------------------------------- the zoo


def _weight_layers(path):
    from onnxgrow import graph

    m = graph.load(path)
    return [n.name for n in m.graph if graph.is_weight_layer(n)]


ZOO_CASES = [(arch, exp) for arch in zoo.ARCHITECTURES for exp in zoo.EXPORTERS]


@pytest.mark.parametrize("arch,exporter", ZOO_CASES)
def test_zoo_every_layer_widens_exactly_or_is_refused_with_a_reason(zoo_model, arch, exporter):
    """Every weight layer, methods in rotation, doubled width: exact, or a GrowError that inspect
    predicted (what inspect promises, widen delivers)."""
    path = zoo_model(arch, exporter)
    info = {layer["name"]: layer for layer in og.inspect(path)["layers"]}
    feeds = random_feeds(path)
    reference = run(path, feeds)
    exact = 0
    for i, name in enumerate(_weight_layers(path)):
        method = METHODS[i % 3]
        promised = method in info[name]["widen"].get("methods", [])
        try:
            student = og.widen(path, layer=name, width=2 * info[name]["width"], method=method, seed=i)
        except GrowError as exc:
            assert not promised, f"inspect promised {method} for {name}, widen refused: {exc}"
            continue
        assert promised, f"{name}: widen worked but inspect did not list {method}"
        for got, want in zip(run(student, feeds), reference, strict=True):
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-5, f"{name} ({method}): scaled error {err}"
        exact += 1
    assert exact > 0


@pytest.mark.parametrize("arch", ["resnet_mini", "mobilenetv2_mini", "senet", "vgg_bn"])
def test_zoo_folded_batchnorm(zoo_model, arch):
    path = zoo_model(arch, "legacy", keep_bn=False)
    layers = [l for l in og.inspect(path)["layers"] if l["widen"].get("methods")]
    for i, layer in enumerate(layers[:4]):
        student = og.widen(path, layer=layer["name"], width=layer["width"] + 2, method=METHODS[i % 3])
        assert_equivalent(path, student)


# ----------------------------------------------------------------------------- command line


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxgrow.cli", *args], capture_output=True, text=True)


def test_cli_widen_verifies_writes_and_keeps_input(tmp_path):
    src = tmp_path / "t.onnx"
    onnx.save(concat_flatten_model(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "s.onnx"
    done = _cli("widen", str(src), "--layer", "b", "--width", "8", "--method", "r2r", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "4 → 8" in done.stdout and "match" in done.stdout
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert onnx.load(out).ir_version == 10
    assert_equivalent(str(src), str(out))


def test_cli_refusal_is_exit_2_and_writes_nothing(tmp_path):
    src = tmp_path / "t.onnx"
    onnx.save(concat_flatten_model(), src)
    out = tmp_path / "s.onnx"
    done = _cli("widen", str(src), "--layer", "b", "--width", "7", "--method", "r2r", "-o", str(out))
    assert done.returncode == 2 and "--width 6 or 8" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx"]


def test_cli_random_is_reported_not_failed(tmp_path):
    src = tmp_path / "t.onnx"
    onnx.save(concat_flatten_model(), src)
    done = _cli("widen", str(src), "--layer", "a", "--width", "6", "--method", "random",
                "-o", str(tmp_path / "s.onnx"))
    assert done.returncode == 0 and "as expected" in done.stdout


def test_graphsurgeon_graph_in_graphsurgeon_graph_out():
    gs = pytest.importorskip("onnx_graphsurgeon")  # the optional [gs] extra; [dev] installs it
    teacher = concat_flatten_model()
    student = og.widen(gs.import_onnx(teacher), layer="b", width=8, method="netmorph")
    assert isinstance(student, gs.Graph)
    assert_equivalent(teacher, gs.export_onnx(student))


@pytest.mark.parametrize("arch", ["resnet_mini", "transformer_mini", "mobilenetv3_mini", "vit_mini"])
def test_zoo_raw_dynamo_exports(zoo_model, arch):
    """Unoptimised dynamo graphs: MatMul weights behind Transpose, biases computed from Shape,
    CastLike(x, like=activation) — the weights must still be found and grown."""
    path = zoo_model(arch, "dynamo_raw")
    layers = [l for l in og.inspect(path)["layers"] if l["widen"].get("methods")]
    assert layers
    for i, layer in enumerate(layers[:5]):
        method = METHODS[i % 3]
        if method not in layer["widen"]["methods"]:
            continue
        student = og.widen(path, layer=layer["name"], width=2 * layer["width"], method=method, seed=i)
        assert_equivalent(path, student)


def test_identity_gather_is_followed_like_a_reshape():
    """dynamo writes timm's ConvNeXt head as a flat tensor gathered by arange(C) indices."""
    c = 6
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="p"),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "flat"], ["f"]),
        helper.make_node("Gather", ["f", "idx"], ["g"], axis=0),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="c"),
    ]
    inits = [_w("w1", c, 3, 1, 1), _w("w2", 4, c, 1, 1),
             helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("idx", TensorProto.INT64, [1, c, 1, 1], np.arange(c))]
    teacher = _model(nodes, [_vi("x", 1, 3, 4, 4)], [_vi("y", 1, 4, 1, 1)], inits)
    for method in METHODS:
        assert_equivalent(teacher, og.widen(teacher, layer="p", width=2 * c, method=method))


def test_attention_grows_by_whole_heads_and_r2r_pairs_inside_a_head(zoo_model):
    """transformer_mini: fused qkv 48 = 3 (q, k, v) × 2 heads × 8. One more head (72) is an odd
    number of new heads; r2r then pairs the channels inside the new head and still cancels."""
    path = zoo_model("transformer_mini", "legacy")
    layer = "/blocks/blocks.0/attn/qkv/MatMul"
    entry = next(l for l in og.inspect(path)["layers"] if l["name"] == layer)
    assert "heads" in entry["widen"]["note"] and "r2r" in entry["widen"]["methods"]
    for method in METHODS:
        assert_equivalent(path, og.widen(path, layer=layer, width=72, method=method, seed=4))
    with pytest.raises(GrowError, match="multiple of 24"):
        og.widen(path, layer=layer, width=60)
