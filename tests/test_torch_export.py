"""The PyTorch bridge: ONNX -> nn.Module (eval equals onnxruntime, trains), .pt export, write-back."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

import onnxgrow as og
from onnxgrow import torch_export
from onnxgrow.errors import GrowError

from .helpers import assert_equivalent, random_feeds, run

TOL = 1e-5  # max |torch - onnxruntime| / max |onnxruntime|: float32 rounding only


# ----------------------------------------------------------------------------- helpers


def make_model(nodes, inputs, outputs, inits=(), opset=18):
    """inputs: {name: shape list (float) or (shape list, elem_type)}; inits: {name: array}."""
    def info(name, spec):
        shape, dtype = spec if isinstance(spec, tuple) else (spec, T.FLOAT)
        return oh.make_tensor_value_info(name, dtype, shape)

    graph = oh.make_graph(
        nodes, "g", [info(n, s) for n, s in inputs.items()],
        [oh.make_empty_tensor_value_info(n) for n in outputs],
        [nh.from_array(np.asarray(a), n) for n, a in dict(inits).items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def rand(rng, *shape, lo=None, hi=None):
    if lo is not None:
        return rng.uniform(lo, hi, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def torch_outputs(module, feeds):
    with torch.no_grad():
        out = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
    return [out] if isinstance(out, torch.Tensor) else list(out)


def scaled_error(got, ref) -> float:
    assert tuple(got.shape) == tuple(ref.shape), f"shape {tuple(got.shape)} vs onnxruntime {ref.shape}"
    if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
        return 0.0 if np.array_equal(np.asarray(got), ref) else float("inf")
    if ref.size == 0:
        return 0.0
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def assert_matches_ort(model, module=None, batches=(2,)):
    """Eval outputs of `module` (default: converted from `model`) equal onnxruntime's, per batch size."""
    module = module if module is not None else og.to_torch(model)
    for batch in batches:
        feeds = random_feeds(model, seed=batch, batch=batch, vocab=8)
        ref = run(model, feeds)
        got = torch_outputs(module, feeds)
        assert len(got) == len(ref)
        errs = [scaled_error(g.detach().numpy(), r) for g, r in zip(got, ref, strict=True)]
        assert max(errs) <= TOL, f"torch differs from onnxruntime (batch {batch}): {errs}"
    return module


# ----------------------------------------------------------------------------- op coverage

R = np.random.default_rng(1)
X4 = {"x": ["N", 3, 9, 8]}


def _node(op, inputs, outputs=("y",), **attrs):
    return oh.make_node(op, list(inputs), list(outputs), **attrs)


def _single(op, inputs=X4, inits=(), opset=18, **attrs):
    """One node fed by the graph inputs, then the initializers, in order."""
    names = list(inputs) + list(dict(inits))
    return make_model([_node(op, names, ("y",), **attrs)], inputs, ["y"], inits, opset)


def _conv_w(cout, cin, *k):
    return rand(R, cout, cin, *k)


def _i64(*v):
    return np.array(v, np.int64)


OP_CASES = {
    "conv_asym_pads": lambda: _single("Conv", inits={"w": _conv_w(4, 3, 3, 3), "b": rand(R, 4)},
                                      pads=[1, 0, 2, 1], strides=[2, 1]),
    "conv_dilated_groups": lambda: _single(
        "Conv", inputs={"x": ["N", 4, 11, 10]}, inits={"w": _conv_w(6, 2, 3, 3)}, group=2,
        dilations=[2, 1], pads=[2, 1, 2, 1]),
    "conv_depthwise_same_upper": lambda: _single(
        "Conv", inputs={"x": ["N", 4, 9, 8]}, inits={"w": _conv_w(4, 1, 4, 3)}, group=4,
        auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_1x1_strided_odd_sizes": lambda: _single("Conv", inputs={"x": ["N", 3, 9, 7]}, inits={"w": _conv_w(4, 3, 1, 1)},
                                                  strides=[2, 3]),
    "conv_same_lower": lambda: _single("Conv", inits={"w": _conv_w(2, 3, 2, 2)}, auto_pad="SAME_LOWER"),
    "conv_valid": lambda: _single("Conv", inits={"w": _conv_w(2, 3, 3, 3)}, auto_pad="VALID"),
    "conv1d": lambda: _single("Conv", inputs={"x": ["N", 3, 12]}, inits={"w": _conv_w(5, 3, 3), "b": rand(R, 5)},
                              pads=[1, 1], strides=[2]),
    "conv3d": lambda: _single("Conv", inputs={"x": ["N", 2, 5, 6, 4]}, inits={"w": _conv_w(3, 2, 3, 3, 1)},
                              pads=[1, 0, 0, 1, 2, 0]),
    "conv_transpose": lambda: _single(
        "ConvTranspose", inits={"w": _conv_w(3, 4, 3, 3), "b": rand(R, 4)}, strides=[2, 2],
        pads=[1, 1, 1, 1], output_padding=[1, 0]),
    "conv_transpose_asym_groups": lambda: _single(
        "ConvTranspose", inputs={"x": ["N", 4, 5, 6]}, inits={"w": _conv_w(4, 3, 3, 2), "b": rand(R, 6)},
        strides=[2, 3], pads=[0, 1, 2, 0], group=2, dilations=[2, 1]),
    "conv_transpose_output_shape": lambda: _single(
        "ConvTranspose", inits={"w": _conv_w(3, 2, 3, 3)}, strides=[2, 2], output_shape=[18, 17]),
    "conv_transpose_same_upper_1d": lambda: _single(
        "ConvTranspose", inputs={"x": ["N", 3, 7]}, inits={"w": _conv_w(3, 2, 4)}, strides=[2],
        auto_pad="SAME_UPPER"),
    "gemm_transb": lambda: _single("Gemm", inputs={"x": ["N", 6]}, inits={"w": rand(R, 4, 6), "c": rand(R, 4)},
                                   transB=1),
    "gemm_alpha_beta_transa": lambda: _single(
        "Gemm", inputs={"x": [6, 3]}, inits={"w": rand(R, 6, 4), "c": rand(R, 3, 4)}, transA=1,
        alpha=0.5, beta=-1.5),
    "matmul_batched": lambda: _single("MatMul", inputs={"x": ["N", 2, 3, 5]}, inits={"w": rand(R, 5, 4)}),
    "einsum": lambda: _single("Einsum", inputs={"x": ["N", 3, 5]}, inits={"w": rand(R, 5, 4)},
                              equation="bij,jk->bki"),
    "arithmetic": lambda: make_model(
        [_node("Add", ["x", "a"], ["t1"]), _node("Sub", ["t1", "x"], ["t2"]), _node("Mul", ["t2", "x"], ["t3"]),
         _node("Abs", ["t3"], ["t4"]), _node("Add", ["t4", "one"], ["t5"]), _node("Div", ["t3", "t5"], ["t6"]),
         _node("Sqrt", ["t5"], ["t7"]), _node("Pow", ["t7", "three"], ["t8"]), _node("Reciprocal", ["t8"], ["t9"]),
         _node("Neg", ["t9"], ["t10"]), _node("Exp", ["t10"], ["t11"]), _node("Log", ["t5"], ["t12"]),
         _node("Erf", ["t6"], ["t13"]), _node("Sum", ["t11", "t12", "t13"], ["t14"]),
         _node("Max", ["t14", "t6"], ["t15"]), _node("Min", ["t15", "t12"], ["t16"]),
         _node("Mean", ["t16", "t11"], ["y"])],
        X4, ["y"], {"a": rand(R, 3, 1, 8), "one": np.float32(1.0), "three": np.float32(3.0)}),
    "activations": lambda: make_model(
        [_node("LeakyRelu", ["x"], ["a1"], alpha=0.2), _node("PRelu", ["a1", "slope"], ["a2"]),
         _node("Clip", ["a2", "lo", "hi"], ["a3"]), _node("HardSigmoid", ["x"], ["a4"], alpha=0.3, beta=0.4),
         _node("HardSwish", ["x"], ["a5"]), _node("Elu", ["x"], ["a6"], alpha=0.7), _node("Selu", ["x"], ["a7"]),
         _node("Softplus", ["x"], ["a8"]), _node("Gelu", ["x"], ["a9"]),
         _node("Gelu", ["x"], ["a10"], approximate="tanh"),
         _node("Sigmoid", ["x"], ["a11"]), _node("Tanh", ["x"], ["a12"]), _node("Relu", ["x"], ["a13"]),
         _node("Clip", ["x", "", "hi"], ["a14"]),
         _node("Sum", ["a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "a11", "a12", "a13", "a14"], ["y"])],
        X4, ["y"], {"slope": rand(R, 3, 1, 1), "lo": np.float32(-0.5), "hi": np.float32(0.6)}, opset=20),
    "clip_opset6_attrs": lambda: _single("Clip", opset=6, min=-0.3, max=0.4),
    "softmax_opset11_coerced": lambda: _single("Softmax", opset=11, axis=1),
    "log_softmax_opset13": lambda: _single("LogSoftmax", opset=13, axis=1),
    "batch_norm_eval": lambda: _single(
        "BatchNormalization", inits={"s": rand(R, 3), "b": rand(R, 3), "m": rand(R, 3), "v": rand(R, 3, lo=0.5, hi=2)},
        epsilon=1e-3),
    "layer_norm_last": lambda: _single("LayerNormalization", inits={"s": rand(R, 8), "b": rand(R, 8)}, epsilon=1e-3),
    "layer_norm_two_axes_no_bias": lambda: _single("LayerNormalization", inits={"s": rand(R, 9, 8)}, axis=-2),
    "instance_norm": lambda: _single("InstanceNormalization", inits={"s": rand(R, 3), "b": rand(R, 3)}),
    "group_norm_opset21": lambda: _single("GroupNormalization", inputs={"x": ["N", 4, 5, 3]},
                                          inits={"s": rand(R, 4), "b": rand(R, 4)}, num_groups=2, opset=21),
    "max_pool_ceil_pads": lambda: _single("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                          ceil_mode=1),
    "max_pool_asym_dilated": lambda: _single("MaxPool", kernel_shape=[2, 3], pads=[0, 1, 1, 2], dilations=[2, 1]),
    "max_pool_same_upper": lambda: _single("MaxPool", kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "avg_pool_exclude_pad": lambda: _single("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avg_pool_include_pad_ceil": lambda: _single("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                                                 pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1),
    "avg_pool_asym_pads": lambda: _single("AveragePool", kernel_shape=[2, 3], pads=[0, 2, 1, 0]),
    "avg_pool_asym_include": lambda: _single("AveragePool", kernel_shape=[2, 3], pads=[0, 2, 1, 0],
                                             count_include_pad=1),
    "global_pools": lambda: make_model(
        [_node("GlobalAveragePool", ["x"], ["a"]), _node("GlobalMaxPool", ["x"], ["b"]),
         _node("Add", ["a", "b"], ["y"])],
        X4, ["y"]),
    "reduce_opset13_attr": lambda: make_model(
        [_node("ReduceMean", ["x"], ["a"], axes=[1, -1]), _node("ReduceMax", ["x"], ["b"], axes=[2], keepdims=0),
         _node("ReduceSum", ["x", "ax"], ["c"], keepdims=0), _node("ReduceMin", ["x"], ["d"])],
        X4, ["a", "b", "c", "d"], {"ax": _i64(1, 3)}, opset=13),
    "reduce_opset18_inputs": lambda: make_model(
        [_node("ReduceMean", ["x", "ax"], ["a"]), _node("ReduceMax", ["x", "ax2"], ["b"], keepdims=0),
         _node("ReduceSum", ["x", "empty"], ["c"], noop_with_empty_axes=1),
         _node("ReduceSum", ["x"], ["d"], keepdims=0),
         _node("ReduceL2", ["x", "ax"], ["e"]), _node("ReduceSumSquare", ["x", "ax2"], ["f"])],
        X4, ["a", "b", "c", "d", "e", "f"], {"ax": _i64(-1), "ax2": _i64(1, 2), "empty": _i64()}),
    "shape_ops": lambda: make_model(
        [_node("Flatten", ["x"], ["f"], axis=2), _node("Reshape", ["f", "shp"], ["r"]),
         _node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]), _node("Unsqueeze", ["t", "ax"], ["u"]),
         _node("Squeeze", ["u", "ax"], ["s"]), _node("Shape", ["s"], ["sh"], start=1, end=-1),
         _node("Expand", ["e1", "sh"], ["ex"]), _node("Tile", ["s", "reps"], ["ti"]),
         _node("Identity", ["ti"], ["id"]), _node("Mul", ["ex", "one"], ["y0"])],
        X4, ["id", "y0"], {"shp": _i64(0, 4, -1, 2), "ax": _i64(-1, 0), "e1": rand(R, 1, 1), "reps": _i64(1, 2, 1, 1),
                           "one": np.ones((1, 1), np.float32)}),
    "squeeze_unsqueeze_opset11": lambda: make_model(
        [_node("Unsqueeze", ["x"], ["u"], axes=[0, 5]), _node("Squeeze", ["u"], ["y"], axes=[0, -1])],
        X4, ["y"], opset=11),
    "squeeze_all": lambda: make_model([_node("Squeeze", ["x"], ["y"])], {"x": [1, 3, 1, 2]}, ["y"]),
    "split_variants": lambda: make_model(
        [_node("Split", ["x", "sp"], ["a", "b"], axis=-1),
         _node("Split", ["x"], ["c", "d", "e"], axis=2, num_outputs=3)],
        X4, ["a", "b", "c", "d", "e"], {"sp": _i64(3, 5)}),
    "split_opset11": lambda: make_model(
        [_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]), _node("Split", ["x"], ["c", "d", "e"], axis=1)],
        X4, ["a", "b", "c", "d", "e"], opset=11),
    "slice_variants": lambda: make_model(
        [_node("Slice", ["x", "st", "en", "ax", "step"], ["a"]), _node("Slice", ["x", "st2", "en2"], ["b"]),
         _node("Slice", ["x", "st3", "en3", "ax3", "step3"], ["c"])],
        X4, ["a", "b", "c"],
        {"st": _i64(-1, 1), "en": _i64(-100, 7), "ax": _i64(3, 2), "step": _i64(-2, 3),
         "st2": _i64(0, 1), "en2": _i64(2**62, -1),
         "st3": _i64(7), "en3": _i64(1), "ax3": _i64(-1), "step3": _i64(-1)}),
    "slice_opset9_attrs": lambda: _single("Slice", opset=9, starts=[1, -4], ends=[100, -1], axes=[1, 3]),
    "gather_variants": lambda: make_model(
        [_node("Gather", ["x", "i"], ["a"], axis=1), _node("Gather", ["x", "s"], ["b"], axis=-1),
         _node("GatherElements", ["x", "ge"], ["c"], axis=1)],
        X4, ["a", "b", "c"], {"i": _i64(2, -1, 0, 0).reshape(2, 2), "s": np.array(-2, np.int64),
                              "ge": R.integers(0, 3, (2, 2, 9, 8))}),
    "gather_nd_scatter_nd": lambda: make_model(
        [_node("GatherND", ["x", "gi"], ["a"]), _node("GatherND", ["x", "gb"], ["b"], batch_dims=1),
         _node("ScatterND", ["x", "si", "up"], ["c"]), _node("ScatterND", ["x", "si2", "up2"], ["d"], reduction="add"),
         _node("ScatterND", ["x", "si2", "up2"], ["e"], reduction="max")],
        {"x": [2, 3, 9, 8]}, ["a", "b", "c", "d", "e"],
        {"gi": _i64(0, 1, -1, 1, 1, -3).reshape(3, 2), "gb": _i64(2, 1, 0, -1).reshape(2, 2, 1),
         "si": _i64(1, 0, 0, 2).reshape(2, 2), "up": rand(R, 2, 9, 8),
         "si2": _i64(1, 2, 1, 2, 0, -1).reshape(3, 2), "up2": rand(R, 3, 9, 8)}),
    "embedding_gather": lambda: make_model([_node("Gather", ["table", "ids"], ["y"])],
                                           {"ids": (["N", 5], T.INT64)}, ["y"], {"table": rand(R, 8, 4)}),
    "logic_where_cast": lambda: make_model(
        [_node("Greater", ["x", "zero"], ["g"]), _node("Less", ["x", "half"], ["l"]), _node("And", ["g", "l"], ["a"]),
         _node("Not", ["a"], ["n"]), _node("Equal", ["n", "g"], ["e"]), _node("Cast", ["e"], ["c"], to=T.FLOAT),
         _node("Where", ["a", "x", "c"], ["y"])],
        X4, ["y"], {"zero": np.float32(0), "half": np.float32(0.5)}),
    "constant_of_shape_range": lambda: make_model(
        [_node("Shape", ["x"], ["sh"]), _node("ConstantOfShape", ["sh"], ["c"],
                                               value=nh.from_array(np.array([2.5], np.float32))),
         _node("Gather", ["sh", "three"], ["w"]), _node("Range", ["zero", "w", "one"], ["r"]),
         _node("Cast", ["r"], ["rf"], to=T.FLOAT), _node("Add", ["c", "rf"], ["y"]),
         _node("Constant", [], ["k"], value=nh.from_array(rand(R, 8))), _node("Mul", ["y", "k"], ["z"])],
        X4, ["z"], {"three": np.array(3, np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64)}),
    "pad_modes": lambda: make_model(
        [_node("Pad", ["x", "p", "v"], ["a"]), _node("Pad", ["x", "p2"], ["b"], mode="reflect"),
         _node("Pad", ["x", "p2"], ["c"], mode="edge"), _node("Pad", ["x", "p3", "", "ax"], ["d"])],
        X4, ["a", "b", "c", "d"],
        {"p": _i64(0, 1, 2, 0, 0, 0, 1, 3), "v": np.float32(0.7), "p2": _i64(0, 0, 2, 1, 0, 0, 1, 3),
         "p3": _i64(1, -1, 2, 0), "ax": _i64(2, 3)}),
    "pad_opset2_attrs": lambda: _single("Pad", opset=2, pads=[0, 0, 1, 2, 0, 0, 2, 0], value=-1.0),
    "resize_nearest_scales": lambda: make_model(
        [_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")], X4, ["y"], {"sc": np.array([1, 1, 2, 3], np.float32)}),
    "resize_nearest_integer_scales": lambda: make_model(
        [_node("Resize", ["x", "", "sc"], ["a"], mode="nearest"),
         _node("Resize", ["x", "", "sc"], ["b"], mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn",
               nearest_mode="floor"),
         _node("Resize", ["x", "", "sc"], ["c"], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="round_prefer_floor"),  # rounds i/3 up: index picking, not repeats
         _node("Resize", ["x", "", "", "sz"], ["d"], mode="nearest", coordinate_transformation_mode="pytorch_half_pixel",
               nearest_mode="round_prefer_ceil")],
        X4, ["a", "b", "c", "d"], {"sc": np.array([1, 1, 3, 2], np.float32), "sz": _i64(2, 3, 18, 32)}),
    "resize_nearest_half_pixel_down": lambda: make_model(
        [_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")], X4, ["y"], {"sz": _i64(2, 3, 4, 4)}),
    "resize_linear_half_pixel": lambda: make_model(
        [_node("Resize", ["x", "", "sc"], ["y"], mode="linear")], X4, ["y"],
        {"sc": np.array([1, 1, 2, 1.5], np.float32)}),
    "resize_linear_align_corners": lambda: make_model(
        [_node("Resize", ["x", "", "", "sz"], ["y"], mode="linear", coordinate_transformation_mode="align_corners",
               axes=[2, 3])], X4, ["y"], {"sz": _i64(17, 5)}),
    "resize_pytorch_half_pixel_axes": lambda: make_model(
        [_node("Resize", ["x", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode="pytorch_half_pixel",
               axes=[2, 3])], X4, ["y"], {"sc": np.array([0.5, 2.0], np.float32)}),
    "upsample_opset9": lambda: make_model([_node("Upsample", ["x", "sc"], ["y"], mode="nearest")], X4, ["y"],
                                          {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9),
    "misc": lambda: make_model(
        [_node("Trilu", ["x", "k"], ["a"]), _node("Trilu", ["x"], ["b"], upper=0),
         _node("CumSum", ["x", "ax"], ["c"]), _node("CumSum", ["x", "ax"], ["d"], exclusive=1, reverse=1),
         _node("Dropout", ["x", "ratio"], ["e"]), _node("ArgMax", ["x"], ["f"], axis=1),
         _node("Softsign", ["x"], ["g"])],
        X4, ["a", "b", "c", "d", "e", "f", "g"], {"k": np.array(1, np.int64), "ax": np.array(2, np.int64),
                                                  "ratio": np.float32(0.3)}),
    "slices_as_python_indexing": lambda: make_model(
        [_node("Slice", ["x", "a0", "a1", "ax_last"], ["a"]), _node("Slice", ["x", "b0", "big", "ax2", "two"], ["b"]),
         _node("Slice", ["x", "c0", "small", "ax1"], ["c"]), _node("Slice", ["x", "d0", "d1", "ax_m2"], ["d"]),
         _node("Slice", ["x", "d1", "a0", "ax1"], ["e"])],
        X4, ["a", "b", "c", "d", "e"],
        {"a0": _i64(-3), "a1": _i64(100), "ax_last": _i64(-1), "b0": _i64(1), "big": _i64(2**63 - 1),
         "ax2": _i64(2), "two": _i64(2), "c0": _i64(-100), "small": _i64(-2**63), "ax1": _i64(1),
         "d0": _i64(2), "d1": _i64(-1), "ax_m2": _i64(-2)}, opset=13),
    "unsqueeze_reshape_concat_softmax": lambda: make_model(
        [_node("Unsqueeze", ["x", "ax"], ["u"]), _node("Reshape", ["u", "shp"], ["r"]),
         _node("Reshape", ["x", "shp0"], ["r0"]), _node("Concat", ["r0", "r0"], ["c"], axis=-1),
         _node("Softmax", ["c"], ["s"], axis=1), _node("Transpose", ["s"], ["y"], perm=[2, 0, 1])],
        X4, ["r", "y"], {"ax": _i64(-1, 1, 0), "shp": _i64(-1, 9, 8), "shp0": _i64(0, 3, -1)}, opset=13),
    "rms_norms_and_silu": lambda: make_model(
        [_node("Pow", ["x", "two"], ["p"]), _node("ReduceMean", ["p", "last"], ["m"]),
         _node("Add", ["m", "eps"], ["a"]), _node("Sqrt", ["a"], ["q"]), _node("Reciprocal", ["q"], ["r"]),
         _node("Mul", ["x", "r"], ["n"]), _node("Mul", ["n", "w"], ["y1"]),
         _node("Pow", ["y1", "two"], ["p2"]), _node("ReduceMean", ["p2", "last"], ["m2"]),
         _node("Add", ["eps", "m2"], ["a2"]), _node("Sqrt", ["a2"], ["q2"]), _node("Div", ["one", "q2"], ["r2"]),
         _node("Mul", ["r2", "y1"], ["n2"]), _node("Mul", ["w2", "n2"], ["y2"]),
         _node("Sigmoid", ["y2"], ["sg"]), _node("Mul", ["sg", "y2"], ["y3"]), _node("Mul", ["y2", "sg"], ["y4"]),
         _node("Pow", ["x", "two"], ["p3"]), _node("ReduceMean", ["p3", "ax2"], ["m3"]),  # not the last axis
         _node("Add", ["m3", "eps"], ["a3"]), _node("Sqrt", ["a3"], ["q3"]), _node("Reciprocal", ["q3"], ["r3"]),
         _node("Mul", ["x", "r3"], ["n3"]), _node("Mul", ["n3", "w"], ["y5"])],
        X4, ["y3", "y4", "sg", "y5"],
        {"two": np.float32(2), "last": _i64(-1), "eps": np.float32(1e-3), "w": rand(R, 8), "one": np.float32(1),
         "w2": rand(R, 8), "ax2": _i64(2)}),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case):
    R.bit_generator.state = np.random.PCG64(zlib.crc32(case.encode())).state  # same values in any run order
    model = OP_CASES[case]()
    batches = (2, 3) if any(d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim) else (1,)
    assert_matches_ort(model, batches=batches)


def test_exporter_decompositions_read_as_torch_code():
    """RMSNorm becomes nn.RMSNorm at its path, x * sigmoid(x) F.silu, shape ops torch calls; a near miss
    (the mean over another axis) stays as written."""
    module = og.to_torch(OP_CASES["rms_norms_and_silu"]())
    norms = [m for m in module.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 and all(n.eps == pytest.approx(1e-3) for n in norms)
    code = module.code
    assert code.count("torch.nn.functional.silu") == 2 and "torch.sigmoid" in code  # sg is an output too
    assert "onnx_op('Pow'" not in code and "torch.pow" in code
    shapes = og.to_torch(OP_CASES["unsqueeze_reshape_concat_softmax"]()).code
    assert "onnx_op" not in shapes.replace("onnx_op('Reshape', x, [0, 3, -1]", ""), shapes  # 0 copies a dim


# ----------------------------------------------------------------------------- small trainable nets


def conv_bn_net(rng, momentum=0.9, eps=1e-5, names=None, conv_bias=True):
    """x -> Conv -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm, every parameter random."""
    n = names or {}
    w, b, s, beta, mu, var, fw, fb = (n.get(k, k) for k in ("w", "b", "s", "beta", "mu", "var", "fw", "fb"))
    nodes = [
        oh.make_node("Conv", ["x", w, b] if conv_bias else ["x", w], ["c"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("BatchNormalization", ["c", s, beta, mu, var], ["bn"], epsilon=eps, momentum=momentum,
                     name="bn"),
        oh.make_node("Relu", ["bn"], ["r"]),
        oh.make_node("GlobalAveragePool", ["r"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", fw, fb], ["y"], transB=1, name="fc"),
    ]
    inits = {w: rand(rng, 6, 3, 3, 3) * 0.5, b: rand(rng, 6) * 0.2, s: rand(rng, 6, lo=0.5, hi=1.5),
             beta: rand(rng, 6) * 0.2, mu: rand(rng, 6) * 0.2, var: rand(rng, 6, lo=0.5, hi=2.0),
             fw: rand(rng, 4, 6) * 0.5, fb: rand(rng, 4) * 0.2}
    if not conv_bias:
        del inits[b]
    return make_model(nodes, {"x": ["N", 3, 6, 5]}, ["y"], inits)


def sgd_steps(module, inputs, steps=3, lr=0.1):
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        out = module(*inputs)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        loss = sum((o.float() ** 2).mean() for o in outs if o.is_floating_point())
        loss.backward()
        opt.step()
    module.eval()
    return module


def state_copy(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- parameters, names


def test_layers_are_torch_modules_at_the_module_paths_and_map_back():
    rng = np.random.default_rng(0)
    names = {"w": "layer1.0.conv.weight", "b": "layer1.0.conv.bias", "s": "bn.weight", "mu": "bn.running_mean",
             "var": "bn.running_var", "fw": "onnx::Gemm_12", "fb": "forward"}
    model = conv_bn_net(rng, names=names)
    module = og.to_torch(model)
    assert isinstance(module, torch.fx.GraphModule) and "self.layer1" in module.code
    assert isinstance(module.get_submodule("layer1.0.conv"), torch.nn.Conv2d)
    assert isinstance(module.get_submodule("bn"), torch.nn.BatchNorm2d)
    assert isinstance(module.get_submodule("fc"), torch.nn.Linear)  # no weight name: the node's
    params = dict(module.named_parameters())
    assert sorted(params) == ["bn.bias", "bn.weight", "fc.bias", "fc.weight", "layer1.0.conv.bias",
                              "layer1.0.conv.weight"]
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    assert set(module.onnx_names.values()) == set(inits)
    assert module.onnx_names["fc.bias"] == "forward" and module.onnx_names["fc.weight"] == "onnx::Gemm_12"
    assert {module.onnx_names[b] for b, _ in module.named_buffers() if b in module.onnx_names} == \
        {"bn.running_mean", "bn.running_var"}
    for state, tensor in module.state_dict().items():
        if state in module.onnx_names:
            np.testing.assert_array_equal(tensor.numpy(), inits[module.onnx_names[state]])


def test_unnamed_layers_are_named_after_their_type_and_weights_after_their_paths():
    rng = np.random.default_rng(1)
    nodes = [_node("MatMul", ["x", "W"], ["a"]), _node("Add", ["a", "bias"], ["h"]),  # one nn.Linear
             _node("Mul", ["h", "model.norm.weight"], ["g"]), _node("Add", ["g", "forward"], ["y"])]
    model = make_model(nodes, {"x": ["N", 4]}, ["y"], {"W": rand(rng, 4, 3), "bias": rand(rng, 3),
                                                       "model.norm.weight": rand(rng, 3), "forward": rand(rng, 3)})
    module = assert_matches_ort(model, batches=(2, 3))
    assert isinstance(module.get_submodule("linear"), torch.nn.Linear)
    assert sorted(n for n, _ in module.named_parameters()) == ["forward_", "linear.bias", "linear.weight",
                                                               "model.norm.weight"]
    assert module.onnx_layouts == {"linear.weight": "T"}  # MatMul's (in, out) is Linear's (out, in)
    torch.testing.assert_close(module.linear.weight, torch.from_numpy(nh.to_array(model.graph.initializer[0]).T))


def test_constants_shapes_and_scalars_are_buffers_not_parameters():
    rng = np.random.default_rng(0)
    nodes = [
        _node("Gather", ["table", "ids"], ["e"]),
        _node("Add", ["e", "pos"], ["h"]),
        _node("ReduceMean", ["h", "axes"], ["m"]),
        _node("Add", ["m", "eps"], ["me"]),
        _node("Mul", ["h", "me"], ["g"]),
        _node("Reshape", ["g", "shape"], ["y"]),
    ]
    model = make_model(nodes, {"ids": (["N", 5], T.INT64)}, ["y"],
                       {"table": rand(rng, 8, 4), "pos": rand(rng, 5, 4), "axes": _i64(-1),
                        "eps": np.float32(1e-3), "shape": _i64(0, -1)})
    module = assert_matches_ort(model, batches=(2, 3))
    assert sorted(n for n, _ in module.named_parameters()) == ["embedding.weight", "pos"]
    assert isinstance(module.embedding, torch.nn.Embedding)
    assert sorted(n for n, _ in module.named_buffers()) == ["eps"]
    assert "[0, -1]" in module.code  # shape constants are literals of the code


def test_shared_weight_is_one_parameter_also_through_identity():
    rng = np.random.default_rng(0)
    nodes = [_node("MatMul", ["x", "W"], ["a"]), _node("Relu", ["a"], ["r"]),
             _node("Identity", ["W"], ["W2"]), _node("MatMul", ["r", "W2"], ["b"]),
             _node("Gemm", ["b", "W"], ["y"], transB=1)]
    model = make_model(nodes, {"x": ["N", 4]}, ["y"], {"W": rand(rng, 4, 4)})
    module = og.to_torch(model)
    assert [n for n, _ in module.named_parameters()] == ["linear.weight"]  # one tensor, three layers
    assert module.linear_1.weight is module.linear.weight  # tied in the same layout
    assert not hasattr(module, "linear_2")  # the Gemm reads it transposed: it stays functional
    before = module.linear.weight.detach().clone()
    x = torch.from_numpy(rand(rng, 8, 4))
    sgd_steps(module, (x,), steps=2)
    assert not torch.equal(before, module.linear.weight)
    assert_matches_ort(onnx_from(load_weights_checked(model, module)), module, batches=(3,))


def onnx_from(proto):
    proto.ir_version = 10
    return proto


def load_weights_checked(model, module):
    out = og.load_weights(model, module)
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    return out


# ----------------------------------------------------------------------------- BatchNormalization


def reference_torch_net(model, momentum):
    """The torch modules that conv_bn_net(...) stands for, with its initializers."""
    a = {i.name: torch.from_numpy(nh.to_array(i).copy()) for i in model.graph.initializer}
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    bn = torch.nn.BatchNorm2d(6, eps=1e-5, momentum=momentum)
    fc = torch.nn.Linear(6, 4)
    with torch.no_grad():
        conv.weight.copy_(a["w"]), conv.bias.copy_(a["b"])
        bn.weight.copy_(a["s"]), bn.bias.copy_(a["beta"])
        bn.running_mean.copy_(a["mu"]), bn.running_var.copy_(a["var"])
        fc.weight.copy_(a["fw"]), fc.bias.copy_(a["fb"])
    return torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), fc)


@pytest.mark.parametrize("onnx_momentum", [0.9, 0.75])
def test_batch_norm_train_mode_is_torch_batch_norm(onnx_momentum):
    """Batch statistics in train mode, running stats updated with torch momentum 1 - m, eval after."""
    rng = np.random.default_rng(3)
    model = conv_bn_net(rng, momentum=onnx_momentum)
    module = og.to_torch(model)
    ref = reference_torch_net(model, momentum=1 - onnx_momentum)
    opt_a = torch.optim.SGD(module.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.05)
    module.train(), ref.train()
    for step in range(3):
        x = torch.from_numpy(rand(rng, 5, 3, 6, 5) * (1 + step))
        ya, yb = module(x), ref(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
        for y, opt in ((ya, opt_a), (yb, opt_b)):
            opt.zero_grad()
            (y ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(module.bn.running_mean, ref[1].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.bn.running_var, ref[1].running_var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(module.bn.running_var, torch.from_numpy(nh.to_array(model.graph.initializer[5])))
    torch.testing.assert_close(module.bn.weight, ref[1].weight, rtol=1e-5, atol=1e-6)
    module.eval(), ref.eval()
    x = torch.from_numpy(rand(rng, 2, 3, 6, 5))
    torch.testing.assert_close(module(x), ref(x), rtol=1e-5, atol=1e-6)
    # eval mode uses the running statistics: the output depends on no other sample of the batch
    torch.testing.assert_close(module(x)[:1], module(x[:1]), rtol=1e-5, atol=1e-6)
    # the trained running statistics go back into the ONNX graph
    assert_matches_ort(onnx_from(og.load_weights(model, module)), module, batches=(2,))


def test_shared_running_stats_get_private_buffers_and_are_written_back():
    """The legacy exporter deduplicates equal initializers (ones/zeros of fresh BNs) via Identity."""
    rng = np.random.default_rng(4)
    nodes = [
        _node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        _node("BatchNormalization", ["c1", "ones", "zeros", "zeros", "ones"], ["b1"]),
        _node("Relu", ["b1"], ["r1"]),
        _node("Conv", ["r1", "w2"], ["c2"]),
        _node("Identity", ["ones"], ["ones_id"]), _node("Identity", ["zeros"], ["zeros_id"]),
        _node("BatchNormalization", ["c2", "g2", "b2", "zeros_id", "ones_id"], ["y"]),
    ]
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["y"],
                       {"w1": rand(rng, 4, 3, 3, 3), "w2": rand(rng, 4, 4, 1, 1), "ones": np.ones(4, np.float32),
                        "zeros": np.zeros(4, np.float32), "g2": rand(rng, 4, lo=0.5, hi=1.5), "b2": rand(rng, 4)})
    module = og.to_torch(model)
    parameters = sorted(module.onnx_names[p] for p, _ in module.named_parameters())
    assert parameters == ["b2", "g2", "ones", "w1", "w2", "zeros"]
    assert len(module.onnx_rewire) == 4
    assert len([b for b, _ in module.named_buffers() if "running" in b]) == 4
    sgd_steps(module, (torch.from_numpy(rand(rng, 6, 3, 5, 5)),), steps=2)
    stats = [module.get_buffer(s) for s in sorted(module.onnx_rewire)]
    assert all(not torch.equal(a, b) for i, a in enumerate(stats) for b in stats[i + 1:])
    assert_matches_ort(onnx_from(og.load_weights(model, module)), module, batches=(2, 3))


def test_dropout_train_and_eval():
    model = make_model([_node("Dropout", ["x", "ratio"], ["y"])], {"x": [4000]}, ["y"],
                       {"ratio": np.float32(0.3)})
    module = og.to_torch(model)
    x = torch.ones(4000)
    assert torch.equal(module(x), x)
    module.train()
    y = module(x)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.05
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


# ----------------------------------------------------------------------------- unsupported ops


def test_unsupported_ops_are_all_listed_at_conversion():
    nodes = [_node("Relu", ["x"], ["a"]), _node("LpPool", ["a"], ["b"], kernel_shape=[2, 2]),
             _node("Resize", ["b", "", "sc"], ["c"], mode="cubic"),
             oh.make_node("FusedConv", ["c", "w"], ["d"], domain="com.microsoft"), _node("LpPool", ["d"], ["y"],
                                                                                       kernel_shape=[2, 2])]
    model = make_model(nodes, X4, ["y"], {"sc": np.array([1, 1, 2, 2], np.float32), "w": rand(R, 3, 3, 1, 1)})
    model.opset_import.append(oh.make_opsetid("com.microsoft", 1))
    with pytest.raises(GrowError) as err:
        og.to_torch(model)
    message = str(err.value)
    for part in ("LpPool (2 nodes", "Resize (mode 'cubic')", "com.microsoft::FusedConv"):
        assert part in message, message
    assert "Relu" not in message


def test_load_weights_refuses_a_shape_mismatch():
    model = conv_bn_net(np.random.default_rng(0))
    module = og.to_torch(model)
    state = module.state_dict()
    state["fc.weight"] = torch.zeros(5, 6)
    with pytest.raises(GrowError, match=r"'fc.weight'.*\(5, 6\).*\(4, 6\)"):
        og.load_weights(model, state)
    prefixed = {f"module.{k}": v * 2 for k, v in module.state_dict().items()}  # a DDP state_dict
    out = og.load_weights(model, prefixed)
    np.testing.assert_array_equal(nh.to_array(out.graph.initializer[0]), nh.to_array(model.graph.initializer[0]) * 2)


# ----------------------------------------------------------------------------- files and the CLI


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxgrow.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_export_file_loads_and_runs_in_a_fresh_process(tmp_path):
    model = conv_bn_net(np.random.default_rng(5))
    onnx.save(model, tmp_path / "m.onnx")
    res = _cli("export", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.pt"))
    assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    x = rand(np.random.default_rng(6), 3, 3, 6, 5)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, torch
        m = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)
        with torch.no_grad():
            y = m(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))
        np.save({str(tmp_path / 'y.npy')!r}, y.numpy())
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert scaled_error(np.load(tmp_path / "y.npy"), run(model, {"x": x})[0]) <= TOL


def test_import_weights_cli_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    model = conv_bn_net(rng)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    original = src.read_bytes()
    module = og.to_torch(src)
    sgd_steps(module, (torch.from_numpy(rand(rng, 6, 3, 6, 5)),), steps=3)
    torch.save(module, tmp_path / "trained.pt")
    res = _cli("import-weights", str(src), str(tmp_path / "trained.pt"), "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 0, res.stderr
    assert src.read_bytes() == original
    out = onnx.load(tmp_path / "out.onnx")
    assert out.ir_version == 10
    assert_matches_ort(out, module, batches=(2, 3))
    # a state_dict works too, through the Python API
    torch.save(module.state_dict(), tmp_path / "state.pt")
    path = torch_export.import_weights_file(src, tmp_path / "state.pt", tmp_path / "out2.onnx")
    assert_matches_ort(onnx.load(path), module, batches=(2,))


def test_import_weights_cli_refuses_weights_of_another_shape(tmp_path):
    small, big = conv_bn_net(np.random.default_rng(0)), conv_bn_net(np.random.default_rng(0))
    fw = next(i for i in big.graph.initializer if i.name == "fw")
    fw.CopyFrom(nh.from_array(np.zeros((4, 7), np.float32), "fw"))
    onnx.save(small, tmp_path / "small.onnx")
    onnx.save(big, tmp_path / "big.onnx")
    torch.save(og.to_torch(small), tmp_path / "small.pt")
    res = _cli("import-weights", str(tmp_path / "big.onnx"), str(tmp_path / "small.pt"), "-o",
               str(tmp_path / "out.onnx"))
    assert res.returncode == 2, res.stderr
    assert "'fw'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out.onnx").exists()



def test_import_weights_refuses_files_it_cannot_trust(tmp_path):
    from fractions import Fraction

    model = conv_bn_net(np.random.default_rng(0))
    torch.save({"w": Fraction(1, 3)}, tmp_path / "pickled.pt")  # unpickling this could run code
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name, message in (("pickled.pt", "arbitrary code"), ("text.pt", "not a PyTorch file"),
                          ("absent.pt", "does not exist")):
        with pytest.raises(GrowError, match=message):
            torch_export.import_weights_file(model, tmp_path / name, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()

# ----------------------------------------------------------------------------- the zoo

from . import zoo  # noqa: E402

# Every architecture with the legacy exporter by default; the dynamo exporters (about 10 s per
# export) for a representative few, and for all of them under `-m slow`.
DYNAMO_DEFAULT = {"resnet_mini", "transformer_mini"}
ZOO_CASES = [
    pytest.param(name, exporter, keep_bn, id=zoo.file_name(name, exporter, keep_bn)[:-5],
                 marks=() if exporter == "legacy" or (name in DYNAMO_DEFAULT and exporter == "dynamo")
                 else pytest.mark.slow)
    for name in zoo.ARCHITECTURES
    for exporter in ("legacy", "dynamo", "dynamo_raw")
    for keep_bn in ((True, False) if name == "resnet_mini" and exporter == "legacy" else (True,))
]


@pytest.mark.parametrize("name,exporter,keep_bn", ZOO_CASES)
def test_zoo_model_converts_trains_and_writes_back(name, exporter, keep_bn, tmp_path):
    path = zoo.build(name, exporter, keep_bn=keep_bn, path=tmp_path / "m.onnx", dynamic_batch=True)
    model = onnx.load(path)
    module = assert_matches_ort(model, batches=(2, 3))  # exported with batch 2: 3 is new
    torch_module, _ = zoo.make(name)
    if keep_bn:  # every trainable tensor of the torch model, and nothing else, is a parameter
        # (tensors of equal value may count once: exporters may deduplicate them into one initializer)
        distinct = {(tuple(p.shape), p.detach().numpy().tobytes()) for p in torch_module.parameters()}
        count = sum(p.numel() for p in module.parameters())
        assert sum(math.prod(s) for s, _ in distinct) <= count <= sum(p.numel() for p in torch_module.parameters())

    feeds = random_feeds(model, seed=9, batch=4, vocab=50)
    before = state_copy(module)
    sgd_steps(module, [torch.from_numpy(feeds[n]) for n in module.input_names], steps=1, lr=0.01)
    params = dict(module.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert len(changed) >= 0.75 * len(params)
    # the rest have no gradient to float rounding (e.g. a conv bias before a BN in train mode)
    biggest = max(float(p.grad.abs().max()) for p in params.values())
    assert all(float(params[n].grad.abs().max()) <= 1e-6 * biggest for n in set(params) - changed)
    stats = [s for s, onnx_name in module.onnx_names.items() if "running" in onnx_name or "num_batches" in onnx_name]
    assert all(not torch.equal(module.get_buffer(s), before[s]) for s in stats if s in dict(module.named_buffers())
               and module.get_buffer(s).is_floating_point())

    assert_matches_ort(onnx_from(og.load_weights(model, module)), module, batches=(2,))


def test_grown_model_converts_trains_and_writes_back(tmp_path):
    """What the transforms produce (a widened, then deepened zoo model) is a trainable module too."""
    from onnxgrow import graph

    path = zoo.build("resnet_mini", "legacy", path=tmp_path / "m.onnx", dynamic_batch=True)
    conv = next(n.name for n in onnx.load(path).graph.node if n.op_type == "Conv")
    grown = og.deepen(og.widen(path, layer=conv, width=12, method="net2net", seed=0), after=conv, method="r2r")
    model = graph.to_proto(og.load(grown))
    assert len(model.graph.node) > len(onnx.load(path).graph.node)
    module = assert_matches_ort(model, batches=(2, 3))
    feeds = random_feeds(model, seed=9, batch=4)
    sgd_steps(module, [torch.from_numpy(feeds[n]) for n in module.input_names], steps=2, lr=0.01)
    assert_matches_ort(onnx_from(og.load_weights(model, module)), module, batches=(2,))


def sparse_mlp(rng) -> onnx.ModelProto:
    """x[2, 6] -> fc1 (MatMul, sparse weight in [NNZ, 2] coordinates) -> relu -> fc2 (MatMul, sparse
    weight in flat positions) -> y: both weights sparse initializers, as valid ONNX allows."""
    model = make_model([oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                        oh.make_node("Relu", ["h"], ["r"], name="relu"),
                        oh.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], {"x": [2, 6]}, ["y"])
    w1 = rand(rng, 6, 5) * (rng.random((6, 5)) < 0.5)
    w2 = rand(rng, 5, 3) * (rng.random((5, 3)) < 0.5)
    coords = np.argwhere(w1).astype(np.int64)
    flat = np.flatnonzero(w2).astype(np.int64)
    model.graph.sparse_initializer.extend([
        oh.make_sparse_tensor(nh.from_array(w1[w1 != 0], "w1"), nh.from_array(coords, "w1_at"), [6, 5]),
        oh.make_sparse_tensor(nh.from_array(w2.reshape(-1)[flat], "w2"), nh.from_array(flat, "w2_at"), [5, 3])])
    return model


def test_sparse_initializers_convert_and_grow_as_their_dense_weights():
    model = sparse_mlp(np.random.default_rng(3))
    assert_matches_ort(model)
    student = og.widen(model, layer="fc1", width=9, seed=0)
    assert not student.graph.sparse_initializer
    assert [tuple(t.dims) for t in student.graph.initializer] == [(6, 9), (9, 3)]
    assert_equivalent(model, student)


def test_gemm_module_refuses_operands_that_are_not_matrices():
    model = make_model([oh.make_node("Gemm", ["x", "w"], ["y"], name="fc")], {"x": [2, 4], "w": [4, 3]}, ["y"])
    module = og.to_torch(model)  # B is a graph input: only its value can tell
    with pytest.raises(ValueError, match="Gemm multiplies 2-D matrices"):
        module(torch.ones(2, 4), torch.ones(3, 4, 5))
