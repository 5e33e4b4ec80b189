"""Declared dimensions that mean "any size" (-1, 0, unnamed), verification inputs that run when
size 1 does not, and parameter counts that include Constant-node weights (issue 18, items 3-5).

The models are built here with onnx.helper, as old exporters write them: Paddle declares -1 and
holds its weights in Constant nodes; a detector fails in onnxruntime on 1x1 images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgrow import graph as g
from onnxgrow import widening, window
from onnxgrow.verification import verify
from tests.helpers import assert_equivalent

REPO = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def conv_net(path: Path, in_shape, kernel2: int = 3, pads2: int = 1, constants: bool = False,
             metadata: dict | None = None) -> Path:
    """x -> Conv 3->8 (3x3, padded) -> Relu -> Conv 8->8 (kernel2, pads2) -> GlobalAveragePool.
    With `constants`, every weight is a Constant node (as paddle2onnx writes them)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in (
        ("c1.weight", (8, 3, 3, 3)), ("c1.bias", (8,)), ("c2.weight", (8, 8, kernel2, kernel2)), ("c2.bias", (8,)))]
    nodes = [helper.make_node("Conv", ["x", "c1.weight", "c1.bias"], ["a"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "c2.weight", "c2.bias"], ["b"], pads=[pads2] * 4, name="conv2"),
             helper.make_node("GlobalAveragePool", ["b"], ["y"], name="gap")]
    if constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t, name=f"{t.name}.const") for t in weights] + nodes
        weights = []
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", F, in_shape)],
                              [helper.make_tensor_value_info("y", F, [in_shape[0], 8, 1, 1])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def pool_net(path: Path, in_shape, kernel: int) -> Path:
    """x -> MaxPool (kernel x kernel, no padding) -> GlobalAveragePool: runs only on images at
    least `kernel` wide."""
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[kernel, kernel], name="pool"),
         helper.make_node("GlobalAveragePool", ["p"], ["y"], name="gap")],
        "pool", [helper.make_tensor_value_info("x", F, in_shape)], [helper.make_tensor_value_info("y", F, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def declared(path, index: int = 0) -> list:
    dims = onnx.load(path).graph.input[index].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


ANY_SIZE = {
    "minus_one_batch": [-1, 3, "h", "w"],  # the Paddle classifier of the issue
    "minus_one_everywhere": [-1, 3, -1, -1],
    "zero_and_unnamed": [0, 3, None, None],
    "zero_spatial": [None, 3, 0, 0],
}


# ----------------------------------------------------------------------------- item 3: declared dims


@pytest.mark.parametrize("shape", ANY_SIZE.values(), ids=ANY_SIZE.keys())
def test_verify_a_model_against_itself(tmp_path, shape):
    m = conv_net(tmp_path / "m.onnx", shape)
    done = run_cli("verify", m, m, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["inputs"][0]["shape"] == [1, 3, 1, 1]


@pytest.mark.parametrize("shape", ANY_SIZE.values(), ids=ANY_SIZE.keys())
def test_inputs_of_any_size_are_accepted(tmp_path, shape):
    m = conv_net(tmp_path / "m.onnx", shape)
    np.savez(tmp_path / "images.npz", x=np.random.default_rng(1).random((2, 3, 37, 45), np.float32))
    done = run_cli("verify", m, m, "--inputs", tmp_path / "images.npz", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inputs"][0]["shape"] == [2, 3, 37, 45]
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 4, 37, 45), np.float32))  # 4 channels, not 3
    done = run_cli("verify", m, m, "--inputs", tmp_path / "wrong.npz")
    assert done.returncode == 2 and "internal error" not in done.stderr
    assert "has shape [2, 4, 37, 45]; the model expects ['?', 3, " in done.stderr


def test_dim_names_an_unnamed_dimension_by_input_and_axis(tmp_path):
    m = conv_net(tmp_path / "m.onnx", [-1, 3, -1, -1])
    done = run_cli("verify", m, m, "--dim", "x:0=2", "--dim", "x:2=17", "--dim", "x:3=9", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inputs"][0]["shape"] == [2, 3, 17, 9]
    done = run_cli("verify", m, m, "--dim", "h=17")
    assert done.returncode == 2
    assert "no such dynamic dimension. Dynamic dimensions: x:0, x:2, x:3" in done.stderr


@pytest.mark.parametrize("shape", [[-1, 3, "h", "w"], [-1, 3, -1, -1]], ids=["named", "unnamed"])
def test_widen_and_grow_are_exact_and_keep_the_declared_shape(tmp_path, shape):
    m = conv_net(tmp_path / "m.onnx", shape)
    wide, big = tmp_path / "wide.onnx", tmp_path / "big.onnx"
    done = run_cli("widen", m, "--layer", "conv1", "--width", "16", "-o", wide)
    assert done.returncode == 0, done.stderr
    done = run_cli("grow", m, "--widen", "*=x2", "--deepen", "conv1:r2r", "-o", big)
    assert done.returncode == 0, done.stderr
    for student in (wide, big):
        assert_equivalent(m, student)  # by onnxruntime directly, not by onnxgrow.verify
        assert declared(student) == declared(m)
    wide_model = onnx.load(wide)
    conv1 = next(n for n in wide_model.graph.node if n.name == "conv1")
    assert next(t for t in wide_model.graph.initializer if t.name == conv1.input[1]).dims[0] == 16


def test_zero_declared_input_is_widened_and_verified(tmp_path):
    """onnxruntime takes only empty tensors where an input declares 0: verification runs a copy
    that declares no size there; the student keeps the declaration."""
    m = conv_net(tmp_path / "m.onnx", [0, 3, None, None])
    done = run_cli("widen", m, "--layer", "conv1", "--width", "16", "-o", tmp_path / "wide.onnx")
    assert done.returncode == 0, done.stderr
    assert "→ match" in done.stdout
    assert declared(tmp_path / "wide.onnx") == [0, 3, None, None]


def test_shape_inference_carries_no_declared_minus_one(tmp_path):
    model = g.load(conv_net(tmp_path / "m.onnx", [-1, 3, -1, -1]))
    g.prepare(model)
    values = {o.name: o for node in model.graph for o in node.outputs}
    assert g.static_shape(model.graph.inputs[0]) == ("?", 3, "?", "?")
    assert g.static_shape(model.graph.outputs[0])[0] == "?"
    for name in "arb":
        shape = g.static_shape(values[name])
        assert shape[1] == 8 and not any(isinstance(d, int) and d <= 0 for d in shape), (name, shape)


# ----------------------------------------------------------------------------- item 4: sizes that run


def test_sizes_that_run_are_chosen_and_reported(tmp_path):
    m = conv_net(tmp_path / "m.onnx", ["N", 3, "h", "w"], kernel2=5, pads2=0)  # 1x1 fails in conv2
    done = run_cli("verify", m, m, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dims"] == {"N": 1, "h": 32, "w": 32}  # the batch stays 1
    assert report["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert "h, w at 32" in report["dims_note"] and "size 1" in report["dims_note"]
    done = run_cli("verify", m, m)
    assert "dynamic dimensions: N=1, h=32, w=32; h, w at 32; onnxruntime failed at size 1: " in done.stdout


def test_the_first_power_of_two_that_runs(tmp_path):
    m = pool_net(tmp_path / "m.onnx", [-1, 3, -1, -1], kernel=40)  # 32 fails too
    report = verify(str(m), str(m), samples=1)
    assert report.ok and report.dims == {"x:0": 1, "x:2": 64, "x:3": 64}
    assert "failed at size 1, 32:" in report.dims_note


def test_sizes_the_metadata_tells_come_first(tmp_path):
    m = conv_net(tmp_path / "m.onnx", ["batch", 3, "height", "width"], kernel2=5, pads2=0,
                 metadata={"imgsz": "[48, 40]"})  # ultralytics writes imgsz like this
    report = verify(str(m), str(m))
    assert report.ok and report.dims == {"batch": 1, "height": 48, "width": 40}
    assert "imgsz [48, 40] in the model's metadata" in report.dims_note


def test_widen_verifies_at_the_sizes_that_run(tmp_path):
    m = conv_net(tmp_path / "m.onnx", [-1, 3, -1, -1], kernel2=5, pads2=0)
    done = run_cli("widen", m, "--layer", "conv1", "--width", "16", "-o", tmp_path / "wide.onnx")
    assert done.returncode == 0, done.stderr
    assert "(3 samples at x:0=1, x:2=32, x:3=32: onnxruntime fails at size 1) → match" in done.stdout


def test_the_probe_runs_where_size_1_does_not(tmp_path):
    model = g.load(conv_net(tmp_path / "m.onnx", ["N", 3, "h", "w"], kernel2=5, pads2=0))
    g.prepare(model)
    b = next(o for node in model.graph for o in node.outputs if o.name == "b")
    assert g.probed_shape(b) == (1, 8, 28, 28)


def test_nothing_runs_exits_2_and_says_what_to_pass(tmp_path):
    m = pool_net(tmp_path / "m.onnx", ["N", 3, "h", "w"], kernel=1000)
    done = run_cli("verify", m, m)
    assert done.returncode == 2, done.stderr
    assert "internal error" not in done.stderr and "onnxruntime_src" not in done.stderr
    assert "running MaxPool node. Name:'pool'" in done.stderr
    assert "With h, w at 32, 64, 128, 256, 640 it fails as well" in done.stderr
    assert "--dim h=SIZE --dim w=SIZE or real inputs with --inputs FILE.npz" in done.stderr


def test_sizes_the_user_gave_are_not_retried(tmp_path):
    m = conv_net(tmp_path / "m.onnx", ["N", 3, "h", "w"], kernel2=5, pads2=0)
    report = verify(str(m), str(m), dims={"h": 32, "w": 32})
    assert report.ok and report.dims == {"N": 1, "h": 32, "w": 32} and report.dims_note == ""
    done = run_cli("verify", m, m, "--dim", "h=3")
    assert done.returncode == 2
    assert "With w at 32, 64, 128, 256, 640 (and h=3 as given) it fails as well" in done.stderr
    np.savez(tmp_path / "tiny.npz", x=np.zeros((1, 3, 1, 1), np.float32))
    done = run_cli("verify", m, m, "--inputs", tmp_path / "tiny.npz")
    assert done.returncode == 2
    assert "Invalid input shape" in done.stderr and "fails as well" not in done.stderr


def test_a_batch_that_is_the_only_dynamic_dimension_is_not_retried(tmp_path):
    m = pool_net(tmp_path / "m.onnx", ["N", 3, 2, 2], kernel=4)
    done = run_cli("verify", m, m)
    assert done.returncode == 2
    assert "Its dynamic dimensions were drawn at size 1 (N)" in done.stderr
    assert "--dim N=SIZE" in done.stderr and "--inputs FILE.npz" in done.stderr


# ----------------------------------------------------------------------------- item 5: counts


def test_constant_node_weights_are_counted(tmp_path):
    m = conv_net(tmp_path / "m.onnx", [-1, 3, "h", "w"], constants=True)
    expected = 8 * 3 * 9 + 8 + 8 * 8 * 9 + 8
    assert g.parameter_count(g.load(m)) == expected
    done = run_cli("inspect", m, "--json")
    assert json.loads(done.stdout)["parameters"] == expected
    done = run_cli("widen", m, "--layer", "conv1", "--width", "16", "-o", tmp_path / "wide.onnx", "--json")
    assert done.returncode == 0, done.stderr
    grown = 16 * 3 * 9 + 16 + 8 * 16 * 9 + 8
    assert json.loads(done.stdout)["parameters"] == {"before": expected, "after": grown}
    assert g.parameter_count(g.load(tmp_path / "wide.onnx")) == grown


def test_constant_node_weights_are_counted_through_a_window(tmp_path, monkeypatch):
    m = conv_net(tmp_path / "m.onnx", [-1, 3, "h", "w"], constants=True)
    monkeypatch.setattr(window, "MIN_NODES", 0)
    monkeypatch.setattr(window, "MAX_SHARE", 1.0)
    loaded = window.load(str(m), ["conv1"])
    assert isinstance(loaded, window.Window)
    summary = loaded.run(lambda model: widening.widen_model(model, layer="conv1", width=16))
    assert not loaded.edited_whole
    assert summary["parameters"] == {"before": 808, "after": 1608}


def test_what_counts_as_a_constant_weight():
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.ones((4, 5), np.float32))),
        helper.make_node("Constant", [], ["s"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["e"], value_float=1e-5),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([5, 4], np.int64))),
        helper.make_node("Constant", [], ["unused"], value=numpy_helper.from_array(np.ones(100, np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "e"], ["h2"]),
        helper.make_node("Reshape", ["h2", "shape"], ["h3"]), helper.make_node("Mul", ["h3", "h3"], ["y0"]),
        helper.make_node("Concat", ["s", "s"], ["y1"], axis=0),
    ]
    outputs = [helper.make_tensor_value_info(name, F, None) for name in ("y0", "y1")]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", F, [1, 4])], outputs,
                              [numpy_helper.from_array(np.ones(7, np.float32), "bias")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    # 20 + 3 + 1 from Constant nodes (not the int64 shape, not the one nothing reads) + 7 initialized
    assert g.parameter_count(model) == 31
