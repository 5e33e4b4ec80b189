"""Deepening: identity layers (net2net), zero-output residual blocks (r2r, zero), kernel growth.

Every transform must leave the model's function unchanged (to float32 rounding); every refusal
must be a GrowError; whatever `deepen_options` (inspect) promises, `deepen_model` must deliver.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxgrow import graph as G
from onnxgrow import names
from onnxgrow.errors import GrowError
from tests.helpers import assert_equivalent, random_feeds, run

D = importlib.import_module("onnxgrow.deepening")
METHODS = ("net2net", "r2r", "zero")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# ----------------------------------------------------------------------------- model builder


class Net:
    """A tiny onnx.helper graph builder with randomised per-channel parameters."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0

    def _name(self, base):
        self.k += 1
        return f"{base}{self.k}"

    def const(self, arr, base="c"):
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def op(self, op_type, inputs, name=None, n_out=1, **attrs):
        name = name or self._name(op_type.lower())
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def rand(self, *shape, scale=1.0):
        return self.rng.standard_normal(shape) * scale

    def conv(self, x, cin, cout, k=3, group=1, dims=2, name=None, **attrs):
        w = self.rand(cout, cin // group, *([k] * dims), scale=1.2 / np.sqrt(cin // group * k**dims))
        attrs.setdefault("pads", [k // 2] * 2 * dims)
        return self.op("Conv", [x, self.const(w, "w"), self.const(self.rand(cout, scale=0.2), "b")],
                       name=name, kernel_shape=[k] * dims, group=group, **attrs)

    def bn(self, x, c, eps=1e-5):
        params = [self.rng.uniform(0.5, 1.5, c), self.rand(c, scale=0.2), self.rand(c, scale=0.2),
                  self.rng.uniform(0.5, 2.0, c)]
        return self.op("BatchNormalization", [x] + [self.const(p, "bn") for p in params], epsilon=eps)

    def gemm(self, x, cin, cout, name=None):
        w = self.rand(cout, cin, scale=1.2 / np.sqrt(cin))
        return self.op("Gemm", [x, self.const(w, "w"), self.const(self.rand(cout, scale=0.2), "b")],
                       name=name, transB=1)

    def linear(self, x, cin, cout, name=None):
        """MatMul with a weight, then a separate bias Add (as torch exports Linear on N-D input)."""
        y = self.op("MatMul", [x, self.const(self.rand(cin, cout, scale=1.2 / np.sqrt(cin)), "w")], name=name)
        return self.op("Add", [y, self.const(self.rand(cout, scale=0.2), "b")])

    def act(self, x, kind):
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "relu6":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)])
        if kind == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if kind == "gelu":  # the legacy exporter's Erf pattern
            e = self.op("Erf", [self.op("Div", [x, self.const(np.sqrt(2.0))])])
            return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.const(1.0)])]), self.const(0.5)])
        if kind == "none":
            return x
        return self.op({"sigmoid": "Sigmoid", "tanh": "Tanh", "leaky": "LeakyRelu", "hardswish": "HardSwish"}[kind], [x])

    def model(self, inputs, outputs, opset=17):
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10
        return onnx.shape_inference.infer_shapes(m)


def conv_chain(act="relu", dims=2, group=1, bn=True, opset=17):
    """x -> conv0 -> [BN] -> act -> conv1 -> [BN] -> Relu -> MaxPool -> conv2 -> y."""
    n = Net(1)
    h = n.conv("x", 4, 8, dims=dims, name="conv0")
    h = n.act(n.bn(h, 8) if bn else h, act)
    h = n.conv(h, 8, 8, k=3, group=group, dims=dims, name="conv1")
    h = n.op("Relu", [n.bn(h, 8) if bn else h])
    h = n.op("MaxPool", [h], kernel_shape=[2] * dims, strides=[2] * dims)
    n.conv(h, 8, 6, k=1, dims=dims, name="conv2")
    return n.model([("x", [2, 4] + [8] * dims)], [n.nodes[-1].output[0]], opset)


def mlp(act="relu"):
    n = Net(2)
    h = n.act(n.gemm("x", 16, 24, name="fc0"), act)
    h = n.act(n.gemm(h, 24, 20, name="fc1"), "relu")
    n.gemm(h, 20, 5, name="fc2")
    return n.model([("x", [3, 16])], [n.nodes[-1].output[0]])


def token_block(opset=17, act="gelu"):
    """A transformer MLP on a token stream [B, T, C] with a residual add; the output is a graph output."""
    n = Net(3)
    h = n.act(n.linear("x", 16, 32, name="fc1"), act)
    h = n.linear(h, 32, 16, name="fc2")
    y = n.op("Add", ["x", h])
    n.linear(y, 16, 12, name="head")
    return n.model([("x", [2, 5, 16])], [n.nodes[-1].output[0]], opset)


def residual_model():
    """conv0 -> BN -> Relu = r, consumed by conv1 and by the residual Add (two consumers)."""
    n = Net(4)
    r = n.op("Relu", [n.bn(n.conv("x", 3, 8, name="conv0"), 8)])
    h = n.conv(n.op("Relu", [n.conv(r, 8, 8, name="conv1")]), 8, 8, name="conv2")
    y = n.op("Add", [r, h])
    n.conv(y, 8, 4, k=1, name="conv3")
    return n.model([("x", [2, 3, 8, 8])], [n.nodes[-1].output[0], r])


def layer_names(model):
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            names.append(node.name)
        elif node.op_type == "MatMul" and any(i.name == node.input[1] for i in model.graph.initializer):
            names.append(node.name)
    return names


def count_layers(model):
    return sum(n.op_type in LAYER_OPS for n in model.graph.node)


def deepen_ir(model, **kw):
    m = G.load(model)
    summary = D.deepen_model(m, **kw)
    return G.to_proto(m), summary


def node_by_name(model, name):
    return names.resolve(G.load(model).graph, name)


# ----------------------------------------------------------------------------- pure maths


@pytest.mark.parametrize("kernel, groups", [((3, 3), 1), ((5,), 2), ((1, 3, 3), 8), ((), 1)])
def test_identity_weight_is_identity(kernel, groups):
    w = D.identity_weight(8, groups, kernel)
    assert w.shape == (8, 8 // groups, *kernel)
    assert w.sum() == 8
    centre = tuple((k - 1) // 2 for k in kernel)
    for o in range(8):
        assert w[(o, o % (8 // groups)) + centre] == 1


@pytest.mark.parametrize("channels, groups", [(6, 1), (7, 1), (8, 8), (12, 3)])
def test_paired_block_output_is_zero_and_trainable(channels, groups):
    """B(t) = W2 φ(W1 t) = 0 for every t (any φ), while ∂B/∂W2 = φ(W1 t) and ∂B/∂W1 are non-zero."""
    rng = np.random.default_rng(0)
    w1, w2 = D.paired_weights(rng, channels, groups, (), dtype=np.float64)
    cg, hg = channels // groups, w1.shape[0] // groups
    assert hg % 2 == 0 and hg >= cg
    t = rng.standard_normal((channels, 50))

    def grouped(w, x, cin):
        return np.concatenate([w[g * (w.shape[0] // groups):(g + 1) * (w.shape[0] // groups)]
                               @ x[g * cin:(g + 1) * cin] for g in range(groups)])

    for phi in (np.tanh, lambda z: np.maximum(z, 0), lambda z: z / (1 + np.exp(-z))):
        h = phi(grouped(w1, t, cg))
        b = grouped(w2, h, hg)
        assert np.abs(b).max() <= 1e-12 * np.abs(h).max()
        # gradient of sum(B) w.r.t. W2 is h (per output row): non-zero
        assert np.abs(h).max() > 0.1
    # gradient of sum(B) w.r.t. W1's hidden unit j is (Σ_o W2[o, j]) φ'(.) t: non-zero for ±V halves
    g_hidden = np.concatenate([w2[g * cg:(g + 1) * cg].sum(0) for g in range(groups)])
    assert np.count_nonzero(g_hidden) == g_hidden.size
    w1z, w2z = D.paired_weights(rng, channels, groups, (), zero=True)
    assert not w2z.any() and w1z.any()


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-6, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_identity_bn_variance_rounds_to_one(eps, dtype):
    v = D.identity_bn_variance(eps, dtype)
    assert v + dtype(eps) == dtype(1)
    assert abs(float(v) - (1 - eps)) <= 2 * np.finfo(dtype).eps


# ----------------------------------------------------------------------------- where the block goes


@pytest.mark.parametrize("method", METHODS)
def test_conv_bn_relu_block_goes_after_the_activation(method):
    teacher = conv_chain("relu")
    student, summary = deepen_ir(teacher, after="conv0", method=method, seed=3)
    relu = next(n for n in teacher.graph.node if n.op_type == "Relu")
    assert summary["insert_on"] == relu.output[0]
    assert summary["through"] == ["BatchNormalization", "Relu"]
    assert count_layers(student) == count_layers(teacher) + (1 if method == "net2net" else 2)
    assert summary["parameters"]["after"] > summary["parameters"]["before"]
    onnx.checker.check_model(student)
    assert_equivalent(teacher, student)


def test_insertion_stops_before_maxpool():
    summary = deepen_ir(conv_chain("relu"), after="conv1", method="net2net")[1]
    assert summary["through"] == ["BatchNormalization", "Relu"]


@pytest.mark.parametrize("act, through", [("silu", "SiLU"), ("gelu", "GELU"), ("hardswish", "HardSwish")])
def test_composite_activations_are_walked_through(act, through):
    teacher = conv_chain(act)
    opts = D.deepen_options(node_by_name(teacher, "conv0"))
    assert opts["through"][0] == "BatchNormalization" and opts["through"][1].startswith(through)
    assert opts["methods"] == ["net2net", "r2r", "zero"] and "unavailable" not in opts
    for method in ("net2net", "r2r", "zero"):
        assert_equivalent(teacher, D.deepen(teacher, after="conv0", method=method))


@pytest.mark.parametrize("act", ["relu", "relu6", "none"])
@pytest.mark.parametrize("bn", [False, True])
def test_net2net_after_idempotent_activation(act, bn):
    teacher = conv_chain(act)
    student, summary = deepen_ir(teacher, after="conv0", method="net2net", bn=bn)
    ops = [n.op_type for n in student.graph.node if n.name.startswith("onnxgrow/")]
    expected = ["Conv"] + (["BatchNormalization"] if bn else []) + {"relu": ["Relu"], "relu6": ["Clip"], "none": []}[act]
    assert ops == expected
    assert_equivalent(teacher, student)


def _prelu_chain():
    """conv0 -> PRelu (a per-channel slope, as Keras exports it) -> conv1."""
    n = Net(8)
    h = n.conv("x", 4, 8, name="conv0")
    slope = n.const(np.random.default_rng(3).uniform(0.05, 0.6, (8, 1, 1)).astype(np.float32))
    h = n.op("PRelu", [h, slope])
    n.conv(h, 8, 5, k=3, name="conv1")
    return n.model([("x", [2, 4, 8, 8])], [n.nodes[-1].output[0]])


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "leaky", "silu", "gelu", "hardswish", "prelu"])
@pytest.mark.parametrize("bn", [False, True])
def test_net2net_blends_in_a_non_idempotent_activation(act, bn):
    """After φ with φ(φ(x)) ≠ φ(x), the identity layer's activation is u + a·(φ(u) − u) with a = 0: the
    student computes the teacher's values bit for bit, and a is a per-channel weight that moves it
    towards a φ-layer."""
    teacher = _prelu_chain() if act == "prelu" else conv_chain(act)
    student, summary = deepen_ir(teacher, after="conv0", method="net2net", bn=bn)
    new = [n for n in student.graph.node if n.name.startswith("onnxgrow/")]
    assert [n.op_type for n in new][:1 + bn] == ["Conv"] + (["BatchNormalization"] if bn else [])
    assert [n.op_type for n in new][-3:] == ["Sub", "Mul", "Add"]
    assert "blended in" in summary["lines"][1]
    mix = [i for i in student.graph.initializer if "activation_mix" in i.name]
    assert len(mix) == 1 and numpy_helper.to_array(mix[0]).shape == (8, 1, 1)
    assert not numpy_helper.to_array(mix[0]).any()
    feeds = random_feeds(teacher, seed=5)
    for want, got in zip(run(teacher, feeds), run(student, feeds)):
        np.testing.assert_array_equal(got, want)
    # a = 1 makes the new layer an identity layer followed by φ: the blend really is φ's
    for init in student.graph.initializer:
        if init is mix[0]:
            init.CopyFrom(numpy_helper.from_array(np.ones((8, 1, 1), np.float32), init.name))
    moved = run(student, feeds)[0]
    assert not np.allclose(moved, run(teacher, feeds)[0], atol=1e-4)


def test_net2net_blend_is_a_trainable_weight_in_torch():
    import torch

    import onnxgrow as og

    module = og.to_torch(D.deepen(conv_chain("silu"), after="conv0", method="net2net"))
    mix = {n: p for n, p in module.named_parameters() if "activation_mix" in n}
    assert len(mix) == 1
    out = module(torch.randn(2, 4, 8, 8))
    (out[0] if isinstance(out, (tuple, list)) else out).square().sum().backward()
    (weight,) = mix.values()
    assert weight.requires_grad and weight.grad.abs().sum() > 0


def test_net2net_blend_on_a_token_stream_is_per_feature():
    teacher = token_block(act="gelu")
    student, _ = deepen_ir(teacher, after="fc1", method="net2net")
    mix = [numpy_helper.to_array(i) for i in student.graph.initializer if "activation_mix" in i.name]
    assert [m.shape for m in mix] == [(32,)]
    assert_equivalent(teacher, student)


def test_net2net_refuses_an_activation_that_is_not_finite_everywhere():
    """Clip(min) → Log: a blend of Log would be NaN on the identity layer's negative inputs, and
    NaN · 0 is not 0; Log is not idempotent either."""
    net = Net(7)
    h = net.gemm("x", 6, 5, name="fc0")
    h = net.op("Log", [net.op("Clip", [h, net.const(np.float32(1e-3)), ""])])
    net.gemm(h, 5, 3, name="fc1")
    teacher = net.model([("x", [2, 6])], [net.nodes[-1].output[0]])
    with pytest.raises(GrowError, match="finite.*r2r"):
        D.deepen(teacher, after="fc0", method="net2net")
    assert "net2net" not in D.deepen_options(node_by_name(teacher, "fc0"))["methods"]


@pytest.mark.parametrize("method", ["r2r", "zero"])
def test_block_after_a_partial_function_uses_relu(method):
    """A mel front end's MatMul → Clip(min) → Log: a copy of Log inside the block would be NaN on its
    negative hidden units (NaN · 0 is not 0), so the block's φ is Relu."""
    net = Net(7)
    h = net.gemm("x", 6, 5, name="fc0")
    h = net.op("Clip", [h, net.const(np.float32(1e-3)), ""])
    h = net.op("Log", [h])
    net.gemm(h, 5, 3, name="fc1")
    teacher = net.model([("x", [2, 6])], [net.nodes[-1].output[0]])
    student, summary = deepen_ir(teacher, after="fc0", method=method)
    assert "Relu" in {n.op_type for n in student.graph.node if n.name.startswith("onnxgrow/")}
    assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", ["net2net", "r2r"])
def test_residual_tensor_with_several_consumers_and_graph_output(method):
    teacher = residual_model()
    student, summary = deepen_ir(teacher, after="conv0", method=method, seed=1)
    r = summary["insert_on"]
    # the graph output keeps its name but is now produced by the block; no teacher node reads the old r
    assert [o.name for o in student.graph.output] == [o.name for o in teacher.graph.output]
    producer = {o: n for n in student.graph.node for o in n.output}
    assert producer[r].name.startswith("onnxgrow/")
    readers = [n for n in student.graph.node if r + "/pre_deepen" in n.input]
    assert readers and all(n.name.startswith("onnxgrow/") for n in readers)
    onnx.checker.check_model(student)
    assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", METHODS)
def test_deepen_after_the_last_layer_keeps_the_output_name(method):
    teacher = mlp()
    student = D.deepen(teacher, after="fc2", method=method)
    assert student.graph.output[0].name == teacher.graph.output[0].name
    assert_equivalent(teacher, student)


# ----------------------------------------------------------------------------- families


@pytest.mark.parametrize("method", METHODS)
def test_gemm(method):
    teacher = mlp()
    for layer in ("fc0", "fc1"):
        student = D.deepen(teacher, after=layer, method=method, seed=2)
        new = [n for n in student.graph.node if n.name.startswith("onnxgrow/")]
        assert {n.op_type for n in new} >= {"Gemm"}
        assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", ["r2r", "zero"])
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("value_info", [True, False])
def test_token_stream_block_has_layernorm_from_opset_17(method, opset, value_info):
    teacher = token_block(opset)
    if not value_info:  # legacy exports may carry no intermediate shapes: deepen infers them
        del teacher.graph.value_info[:]
    student, summary = deepen_ir(teacher, after="fc1", method=method)
    ops = [n.op_type for n in student.graph.node if n.name.startswith("onnxgrow/")]
    assert ("LayerNormalization" in ops) == (opset >= 17)
    assert ops.count("MatMul") == 2
    assert summary["through"][0] == "Add" and summary["through"][1].startswith("GELU")
    assert_equivalent(teacher, student)


def test_token_stream_net2net_and_bn():
    teacher = token_block()
    for layer in ("fc1", "fc2", "head"):  # GELU blended in after fc1; nothing after the others  # no activation after these: an identity MatMul is exact
        assert_equivalent(teacher, D.deepen(teacher, after=layer, method="net2net"))
    with pytest.raises(GrowError, match="--bn"):
        D.deepen(teacher, after="fc2", method="r2r", bn=True)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_conv_1d_and_3d(dims, method):
    teacher = conv_chain("relu", dims=dims)
    for layer in ("conv0", "conv1", "conv2"):
        assert_equivalent(teacher, D.deepen(teacher, after=layer, method=method, seed=5))


@pytest.mark.parametrize("group", [2, 8])
@pytest.mark.parametrize("method", METHODS)
def test_grouped_and_depthwise_layers_stay_grouped(group, method):
    teacher = conv_chain("relu6", group=group)
    student = D.deepen(teacher, after="conv1", method=method)
    new = [n for n in student.graph.node if n.name.startswith("onnxgrow/") and n.op_type == "Conv"]
    assert new and all(helper.get_attribute_value(next(a for a in n.attribute if a.name == "group")) == group
                       for n in new)
    assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", METHODS)
def test_after_conv_transpose(method):
    n = Net(5)
    w = n.rand(8, 6, 2, 2, scale=0.3)
    h = n.op("ConvTranspose", ["x", n.const(w), n.const(n.rand(6))], name="up", strides=[2, 2], kernel_shape=[2, 2])
    n.conv(n.op("Relu", [h]), 6, 4, name="conv")
    teacher = n.model([("x", [1, 8, 4, 4])], [n.nodes[-1].output[0]])
    student = D.deepen(teacher, after="up", method=method)
    new = [n for n in student.graph.node if n.name.startswith("onnxgrow/") and n.op_type == "Conv"]
    assert all(list(next(a for a in n.attribute if a.name == "kernel_shape").ints) == [3, 3] for n in new)
    assert_equivalent(teacher, student)


@pytest.mark.parametrize("method", METHODS)
def test_kernel_option(method):
    teacher = conv_chain("relu")
    student = D.deepen(teacher, after="conv0", method=method, kernel=5)
    new = [n for n in student.graph.node if n.name.startswith("onnxgrow/") and n.op_type == "Conv"]
    assert all(list(next(a for a in n.attribute if a.name == "kernel_shape").ints) == [5, 5] for n in new)
    assert_equivalent(teacher, student)
    with pytest.raises(GrowError, match="odd"):
        D.deepen(teacher, after="conv0", method=method, kernel=4)
    with pytest.raises(GrowError, match="--kernel"):
        D.deepen(mlp(), after="fc0", method=method, kernel=3)


def test_refusals_are_grow_errors():
    teacher = token_block()
    with pytest.raises(GrowError, match="closest|Closest"):
        D.deepen(teacher, after="nope", method="r2r")
    with pytest.raises(GrowError, match="not a Conv"):
        D.deepen(conv_chain(), after=conv_chain().graph.node[1].name, method="r2r")
    with pytest.raises(GrowError, match="unknown deepen method"):
        D.deepen(teacher, after="fc1", method="wider")
    n = Net(6)
    n.op("MatMul", ["a", "b"], name="scores")
    two_inputs = n.model([("a", [2, 3, 4]), ("b", [2, 4, 5])], ["scores_out"])
    assert "reason" in D.deepen_options(node_by_name(two_inputs, "scores"))
    with pytest.raises(GrowError, match="two computed tensors"):
        D.deepen(two_inputs, after="scores", method="r2r")


# ----------------------------------------------------------------------------- seeds, chains, names


def test_seed_is_deterministic():
    teacher = conv_chain("relu")
    a = D.deepen(teacher, after="conv0", method="r2r", seed=7)
    b = D.deepen(teacher, after="conv0", method="r2r", seed=7)
    c = D.deepen(teacher, after="conv0", method="r2r", seed=8)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_argument_is_not_modified():
    teacher = conv_chain("relu")
    before = teacher.SerializeToString()
    D.deepen(teacher, after="conv0", method="r2r")
    assert teacher.SerializeToString() == before


def test_chains_stay_exact_with_unique_names():
    teacher = conv_chain("relu")
    student = teacher
    for layer, method in [("conv0", "r2r"), ("conv0", "net2net"), ("conv1", "zero"), ("conv2", "r2r"),
                          ("onnxgrow/deepen0/conv2", "net2net"), ("onnxgrow/deepen1/identity", "r2r")]:
        before = count_layers(student)
        student = D.deepen(student, after=layer, method=method, seed=len(layer))
        assert count_layers(student) > before
    names = [n.name for n in student.graph.node]
    values = [o for n in student.graph.node for o in n.output] + [i.name for i in student.graph.initializer]
    assert len(set(names)) == len(names) and len(set(values)) == len(values)
    onnx.checker.check_model(student)
    assert_equivalent(teacher, student)


def test_zero_block_is_exactly_zero_and_r2r_within_rounding():
    """zero: t + 0 is t bitwise. r2r: the ±V sum is zero up to the accumulation order's rounding."""
    teacher = mlp()
    feeds = random_feeds(teacher)
    ref = run(teacher, feeds)[0]
    assert np.array_equal(run(D.deepen(teacher, after="fc2", method="zero"), feeds)[0], ref)
    got = run(D.deepen(teacher, after="fc2", method="r2r"), feeds)[0]
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


def test_summary_lines():
    summary = deepen_ir(conv_chain("relu"), after="conv0", method="r2r")[1]
    text = "\n".join(summary["lines"])
    assert "conv0" in text and "8 channels" in text and "Add (residual)" in text and "→" in text
    assert summary["nodes"] and all(n.startswith("onnxgrow/deepen0/") for n in summary["nodes"])


# ----------------------------------------------------------------------------- inspect consistency


@pytest.mark.parametrize("make", [lambda: conv_chain("relu"), lambda: conv_chain("silu", group=8), mlp,
                                  token_block, residual_model, lambda: conv_chain("relu6", dims=1)])
def test_every_promise_is_kept_and_every_refusal_is_announced(make):
    from onnxgrow.layers import describe

    teacher = make()
    listed = {entry["name"]: entry["deepen"] for entry in describe(teacher)["layers"]}
    assert sorted(listed) == sorted(layer_names(teacher))
    for layer, opts in listed.items():
        for method in METHODS:
            if method in opts.get("methods", []):
                assert_equivalent(teacher, D.deepen(teacher, after=layer, method=method))
            else:
                with pytest.raises(GrowError):
                    D.deepen(teacher, after=layer, method=method)


# ----------------------------------------------------------------------------- kernel growth


def single_conv(k=3, dims=2, pads=None, strides=1, dilation=1, auto_pad=None, group=1, size=9, transpose=False):
    n = Net(7)
    cin, cout = 4, 6
    attrs = {"kernel_shape": [k] * dims, "strides": [strides] * dims, "dilations": [dilation] * dims, "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = pads if pads is not None else [k // 2] * 2 * dims
    shape = (cin, cout // group) if transpose else (cout, cin // group)
    w = n.const(n.rand(*shape, *([k] * dims), scale=0.4))
    y = n.op("ConvTranspose" if transpose else "Conv", ["x", w, n.const(n.rand(cout))], name="conv", **attrs)
    n.op("Relu", [y])
    return n.model([("x", [2, cin] + [size] * dims)], [n.nodes[-1].output[0]])


@pytest.mark.parametrize("case", [
    dict(), dict(k=1), dict(dims=1), dict(dims=3, size=5), dict(dilation=2), dict(strides=2),
    dict(pads=[0, 1, 2, 0]), dict(group=2), dict(auto_pad="SAME_UPPER"), dict(auto_pad="SAME_LOWER"),
    dict(auto_pad="SAME_UPPER", strides=2, size=8), dict(auto_pad="SAME_LOWER", strides=2, size=9, k=2),
    dict(auto_pad="VALID", strides=2), dict(transpose=True, strides=2, pads=[1, 1, 1, 1]),
    dict(transpose=True, k=2, strides=2, pads=[0, 0, 0, 0]),
])
def test_kernel_growth_is_exact(case):
    teacher = single_conv(**case)
    k = case.get("k", 3)
    new = k + 2 if k % 2 else k + 4
    student = D.morph_kernel(teacher, layer="conv", kernel=new)
    node = next(n for n in student.graph.node if n.name == "conv")
    w = next(i for i in student.graph.initializer if i.name == node.input[1])
    assert list(w.dims[2:]) == [new] * case.get("dims", 2)
    assert len(student.graph.initializer) == len(teacher.graph.initializer)
    assert_equivalent(teacher, student)


def test_kernel_growth_refusals():
    teacher = single_conv()
    for bad in (2, 3, 4):  # smaller, the same, an odd difference
        with pytest.raises(GrowError, match="even"):
            D.morph_kernel(teacher, layer="conv", kernel=bad)
    with pytest.raises(GrowError, match="Conv and ConvTranspose"):
        D.morph_kernel(mlp(), layer="fc0", kernel=3)
    dynamic = single_conv(auto_pad="SAME_UPPER", strides=2)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    for v in list(dynamic.graph.value_info):
        dynamic.graph.value_info.remove(v)
    with pytest.raises(GrowError, match="static"):
        D.morph_kernel(dynamic, layer="conv", kernel=5)
    assert D.kernel_options(node_by_name(teacher, "conv")) == {"kernel": [3, 3]}
    assert "reason" in D.kernel_options(node_by_name(mlp(), "fc0"))


# ----------------------------------------------------------------------------- random graphs


ACTS = ["relu", "relu6", "none", "silu", "sigmoid", "gelu", "leaky"]


@st.composite
def random_nets(draw):
    """Random conv nets: stages of conv [BN] act, optional residual adds, pools, a Gemm head."""
    n = Net(draw(st.integers(0, 10_000)))
    dims = draw(st.sampled_from([1, 2]))
    c = c0 = draw(st.sampled_from([3, 4]))
    h = "x"
    for i in range(draw(st.integers(1, 4))):
        cout = draw(st.sampled_from([4, 6, 8]))
        group = draw(st.sampled_from([g for g in (1, 2, cout) if c % g == 0 and cout % g == 0 and (g == 1 or c == cout)]))
        y = n.conv(h, c, cout, k=draw(st.sampled_from([1, 3])), group=group, dims=dims, name=f"conv{i}")
        if draw(st.booleans()):
            y = n.bn(y, cout)
        y = n.act(y, draw(st.sampled_from(ACTS)))
        if cout == c and draw(st.booleans()):
            y = n.op("Add", [h, y])
        if draw(st.booleans()):
            y = n.op("MaxPool", [y], kernel_shape=[2] * dims, strides=[1] * dims)
        h, c = y, cout
    h = n.op("Flatten", [n.op("GlobalAveragePool", [h])])
    h = n.act(n.gemm(h, c, 5, name="fc"), draw(st.sampled_from(ACTS)))
    outputs = [h] + (["conv0_out"] if draw(st.booleans()) else [])
    return n.model([("x", [2, c0] + [6] * dims)], outputs)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_nets(), st.sampled_from(METHODS), st.integers(0, 3))
def test_random_graphs_deepen_exactly_or_refuse(teacher, method, pick):
    layers = layer_names(teacher)
    layer = layers[pick % len(layers)]
    opts = D.deepen_options(node_by_name(teacher, layer))
    try:
        student = D.deepen(teacher, after=layer, method=method, seed=pick)
    except GrowError:
        assert method not in opts.get("methods", []), "inspect promised a method that deepen refused"
        assert method == "net2net", "r2r and zero apply after every layer"
        return
    assert method in opts["methods"]
    assert count_layers(student) > count_layers(teacher)
    onnx.checker.check_model(student)
    assert_equivalent(teacher, student)


# ----------------------------------------------------------------------------- the zoo

ZOO_FAST = ("resnet_mini", "mobilenetv3_mini", "vit_mini", "transformer_mini")


def zoo_cases():
    from tests import zoo

    for name in zoo.ARCHITECTURES:
        for exporter in zoo.EXPORTERS:
            fast = exporter == "legacy" and name in ZOO_FAST
            yield pytest.param(name, exporter, marks=[] if fast else [pytest.mark.slow], id=f"{name}-{exporter}")


@pytest.mark.parametrize("name, exporter", list(zoo_cases()))
def test_zoo_every_layer_deepens_exactly_or_refuses_cleanly(tmp_path, name, exporter):
    """Every layer inspect lists, with r2r and net2net: exact when promised, a GrowError when not."""
    from onnxgrow.layers import describe
    from tests import zoo

    path = zoo.build(name, exporter, True, tmp_path / zoo.file_name(name, exporter))
    teacher = onnx.load(path)
    layers = describe(path)["layers"]
    assert layers
    for layer in layers:
        promised = layer["deepen"].get("methods", [])
        assert {"r2r", "zero"} <= set(promised), f"{layer['name']}: {layer['deepen']}"
        for method in ("net2net", "r2r"):
            if method in promised:
                student = D.deepen(teacher, after=layer["name"], method=method, seed=1)
                assert count_layers(student) > count_layers(teacher)
                assert_equivalent(teacher, student)
            else:
                with pytest.raises(GrowError, match="r2r"):
                    D.deepen(teacher, after=layer["name"], method=method)


# ----------------------------------------------------------------------------- command line


def run_cli(capfd, argv):
    from onnxgrow.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return exc.value.code, out, err


def test_cli_deepen_verifies_and_prints_a_summary(tmp_path, capfd):
    path = tmp_path / "teacher.onnx"
    onnx.save(conv_chain("silu"), path)
    code, out, err = run_cli(capfd, ["deepen", path, "--after", "conv0", "--method", "r2r", "--seed", "1",
                                     "-o", tmp_path / "student.onnx"])
    assert code == 0, err
    assert "inserted:" in out and "parameters:" in out and "match" in out
    assert_equivalent(onnx.load(path), onnx.load(tmp_path / "student.onnx"))
    code, out, err = run_cli(capfd, ["deepen", path, "--after", "conv0", "--method", "net2net",
                                     "-o", tmp_path / "other.onnx"])
    assert code == 0 and "SiLU (Sigmoid→Mul) blended in: u + a·(SiLU(u) − u), a = 0" in out, err
    assert_equivalent(onnx.load(path), onnx.load(tmp_path / "other.onnx"))
    code, out, err = run_cli(capfd, ["morph-kernel", path, "--layer", "conv1", "--kernel", "5",
                                     "-o", tmp_path / "k5.onnx"])
    assert code == 0, err
    assert_equivalent(onnx.load(path), onnx.load(tmp_path / "k5.onnx"))
