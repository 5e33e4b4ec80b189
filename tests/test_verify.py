"""onnxgrow.verification (og.verify): the comparison rule, the inputs it draws or reads, providers, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgrow.errors import GrowError
from onnxgrow.verification import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    compare,
    cuda_status,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def mlp(W1, W2, W3=None, act="Relu"):
    """x[batch,4] -> y = act(x W1) W2, and z = act(x W1) W3 when W3 is given."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node(act, ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")]
    outs = [vi("y", F, ["batch", W2.shape[1]])]
    if W3 is not None:
        nodes.append(helper.make_node("MatMul", ["r", "W3"], ["z"]))
        inits.append(numpy_helper.from_array(W3, "W3"))
        outs.append(vi("z", F, ["batch", W3.shape[1]]))
    return make_model(nodes, [vi("x", F, ["batch", 4])], outs, inits)


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in ((4, 8), (8, 3), (8, 5))]


def altered(w, delta=0.05):
    """`w` with its largest weight changed by `delta` of its value."""
    w = w.copy()
    w[np.unravel_index(np.abs(w).argmax(), w.shape)] *= 1 + delta
    return w


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- the rule


def test_compare_scales_the_tolerance_with_the_largest_teacher_value():
    t = [np.array([100.0, 0.001], np.float32)]
    # 1e-3 error on a value of 1e-3 (100% per element) is 1e-5 of S = 100: passes
    s = [np.array([100.0, 0.002], np.float32)]
    stats = compare(t, s, DEFAULT_ATOL, DEFAULT_RTOL)
    assert stats["passed"] and stats["scale"] == 100.0
    assert stats["max_rel"] == pytest.approx(1e-5, rel=1e-3)
    s = [np.array([100.01, 0.001], np.float32)]  # 1e-4 of S: fails
    assert not compare(t, s, DEFAULT_ATOL, DEFAULT_RTOL)["passed"]


def test_minimum_tolerances_are_the_boundary_of_passing():
    rng = np.random.default_rng(1)
    t = [rng.standard_normal(50).astype(np.float32) * 3 for _ in range(2)]
    s = [a + rng.standard_normal(50).astype(np.float32) * 1e-3 for a in t]
    stats = compare(t, s, 1e-6, 1e-5)
    assert not stats["passed"] and stats["min_atol"] > 0 and stats["min_rtol"] > 0
    assert compare(t, s, stats["min_atol"] * 1.0001, 1e-5)["passed"]
    assert not compare(t, s, stats["min_atol"] * 0.99, 1e-5)["passed"]
    assert compare(t, s, 1e-6, stats["min_rtol"] * 1.0001)["passed"]
    assert not compare(t, s, 1e-6, stats["min_rtol"] * 0.99)["passed"]
    err = np.abs(np.concatenate(t) - np.concatenate(s))
    assert stats["max_abs"] == pytest.approx(err.max())
    assert stats["mean_abs"] == pytest.approx(err.mean(), rel=1e-4)
    assert stats["p99_abs"] == pytest.approx(np.percentile(err, 99), rel=1e-4)


def test_nan_or_inf_in_the_student_fails_even_with_huge_tolerances():
    t = [np.array([1.0, 2.0, np.inf], np.float32)]
    assert compare(t, [t[0].copy()], 0, 0)["passed"]  # the same Inf in both is fine
    for bad in (np.nan, np.inf):
        stats = compare(t, [np.array([1.0, bad, np.inf], np.float32)], 1e9, 1e9)
        assert not stats["passed"] and stats["nonfinite"] == 1


# ----------------------------------------------------------------------------- verify on models


def test_identical_models_match_from_path_proto_and_ir(tmp_path, weights):
    import onnx_ir as ir

    m = mlp(*weights[:2])
    onnx.save(m, tmp_path / "a.onnx")
    for teacher, student in ((tmp_path / "a.onnx", str(tmp_path / "a.onnx")), (m, ir.from_proto(m))):
        report = verify(teacher, student)
        assert report.ok and report.samples == 3 and report.seed == 0
        (out,) = report.outputs
        assert out.name == "y" and out.shape == [1, 3] and out.passed
        assert out.max_abs == 0 and out.scale > 0
        assert report.format().splitlines()[-1] == f"match on {report.provider}"


def test_one_weight_changed_fails_with_the_numbers(weights):
    W1, W2 = weights[:2]
    report = verify(mlp(W1, W2), mlp(W1, altered(W2)))
    assert not report.ok
    (out,) = report.outputs
    assert not out.passed and out.max_abs > out.allowed == pytest.approx(DEFAULT_ATOL + DEFAULT_RTOL * out.scale)
    assert out.max_rel == pytest.approx(out.max_abs / out.scale)
    assert report.format().splitlines()[-1].startswith("MISMATCH: y differs by up to")
    # the smallest tolerance the report names really is enough
    assert verify(mlp(W1, W2), mlp(W1, altered(W2)), atol=out.min_atol * 1.001).ok
    assert verify(mlp(W1, W2), mlp(W1, altered(W2)), rtol=out.min_rtol * 1.001).ok


def test_seed_draws_the_inputs(weights):
    W1, W2 = weights[:2]
    a = verify(mlp(W1, W2), mlp(W1, altered(W2)), seed=3).outputs[0]
    b = verify(mlp(W1, W2), mlp(W1, altered(W2)), seed=3).outputs[0]
    c = verify(mlp(W1, W2), mlp(W1, altered(W2)), seed=4).outputs[0]
    assert a.max_abs == b.max_abs != c.max_abs


def test_per_output_tolerance(weights):
    W1, W2, W3 = weights
    teacher, student = mlp(W1, W2, W3), mlp(W1, W2, altered(W3))
    report = verify(teacher, student)
    assert not report.ok and [o.passed for o in report.outputs] == [True, False]
    assert verify(teacher, student, atol={"z": 1.0}).ok
    assert verify(teacher, student, rtol={"z": 0.5, "": DEFAULT_RTOL}).ok
    assert not verify(teacher, student, atol={"y": 1.0}).ok
    report = verify(teacher, student, atol={"": 1.0, "y": 0.0})
    assert report.ok and [o.atol for o in report.outputs] == [0.0, 1.0]
    with pytest.raises(GrowError, match="'w'.*Its outputs: y, z"):
        verify(teacher, student, atol={"w": 1.0})
    with pytest.raises(GrowError, match=">= 0"):
        verify(teacher, student, rtol=-1.0)


def test_npz_inputs_are_the_one_sample_used(tmp_path, weights):
    # the teacher applies Relu, the student Identity: equal exactly when the hidden values are >= 0
    W1, W2 = np.abs(weights[0]), weights[1]
    teacher, student = mlp(W1, W2), mlp(W1, W2, act="Identity")
    assert not verify(teacher, student).ok  # random N(0,1) inputs have negative entries
    np.savez(tmp_path / "pos.npz", x=np.abs(np.random.default_rng(0).standard_normal((6, 4))).astype(np.float32))
    report = verify(teacher, student, inputs=tmp_path / "pos.npz", samples=5)
    assert report.ok and report.samples == 1 and report.input_source == str(tmp_path / "pos.npz")
    assert report.inputs == [{"name": "x", "dtype": "float32", "shape": [6, 4]}]
    assert report.outputs[0].shape == [6, 3]
    # a dict of arrays works the same; float64 is cast to the input's float32
    assert verify(teacher, student, inputs={"x": np.ones((2, 4))}).ok


@pytest.mark.parametrize("arrays, message", [
    ({}, "missing 'x'"),
    ({"x": np.ones((1, 4), np.float32), "extra": np.ones(2)}, "not inputs of the model: 'extra'"),
    ({"x": np.ones((1, 5), np.float32)}, r"input 'x' .* shape \[1, 5\]"),
    ({"x": np.ones(4, np.float32)}, r"input 'x' .* shape \[4\]"),
    ({"x": np.array([["a"] * 4])}, "input 'x'"),
])
def test_bad_inputs_are_named(tmp_path, weights, arrays, message):
    m = mlp(*weights[:2])
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(GrowError, match=message):
        verify(m, m, inputs=tmp_path / "in.npz")


def test_unreadable_npz(tmp_path, weights):
    m = mlp(*weights[:2])
    with pytest.raises(GrowError, match="does not exist"):
        verify(m, m, inputs=tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(GrowError, match="cannot read the inputs file"):
        verify(m, m, inputs=tmp_path / "bad.npz")


def test_dims_size_dynamic_dimensions(weights):
    m = mlp(*weights[:2])
    report = verify(m, m, dims={"batch": 5})
    assert report.inputs[0]["shape"] == [5, 4] and report.outputs[0].shape == [5, 3]
    with pytest.raises(GrowError, match="no such dynamic dimension.*batch"):
        verify(m, m, dims={"btach": 5})


def test_output_shape_or_name_mismatch_is_a_failed_report(weights):
    W1, W2 = weights[:2]
    report = verify(mlp(W1, W2), mlp(W1, weights[2]))  # y has 3 features in one, 5 in the other
    assert not report.ok
    assert "shape [1, 5] in the student, [1, 3] in the teacher" in report.format()
    renamed = mlp(W1, W2)
    renamed.graph.node[-1].output[0] = "out"
    renamed.graph.output[0].name = "out"
    report = verify(mlp(W1, W2), renamed)
    assert not report.ok and report.outputs == []
    assert "output 'y' of the teacher is missing from the student" in report.format()
    assert "extra output 'out'" in report.to_dict()["problems"][1]


def test_different_inputs_cannot_be_compared(weights):
    W1, W2 = weights[:2]
    other = mlp(W1, W2)
    other.graph.input[0].name = "x2"
    other.graph.node[0].input[0] = "x2"
    with pytest.raises(GrowError, match="different inputs"):
        verify(mlp(W1, W2), other)
    double = make_model([helper.make_node("Cast", ["x"], ["c"], to=F), helper.make_node("MatMul", ["c", "W"], ["y"])],
                        [vi("x", TensorProto.DOUBLE, ["batch", 4])], [vi("y", F, ["batch", 3])],
                        [numpy_helper.from_array(W1 @ W2, "W")])
    with pytest.raises(GrowError, match="input 'x' is float32 in the teacher but float64"):
        verify(mlp(W1, W2), double)


def test_nan_in_the_student_fails(weights):
    W1, W2 = weights[:2]
    bias = np.zeros(3, np.float32)
    bias[1] = np.nan
    student = mlp(W1, W2)
    student.graph.node[-1].output[0] = "y0"
    student.graph.node.append(helper.make_node("Add", ["y0", "nanbias"], ["y"]))
    student.graph.initializer.append(numpy_helper.from_array(bias, "nanbias"))
    report = verify(mlp(W1, W2), student, atol=1e9)
    assert not report.ok and report.outputs[0].nonfinite == 3  # one per sample
    assert "NaN/Inf" in report.format()


def test_a_model_onnxruntime_cannot_load_is_a_grow_error(tmp_path, weights):
    m = mlp(*weights[:2])
    bad = mlp(*weights[:2])
    bad.graph.node[1].op_type = "NoSuchOp"
    onnx.save(bad, tmp_path / "bad.onnx")
    with pytest.raises(GrowError, match=r"cannot load .*bad\.onnx.*NoSuchOp"):
        verify(m, tmp_path / "bad.onnx")


def test_external_data_models_load_by_path_and_from_onnx_ir(tmp_path, weights):
    import onnx_ir as ir

    m = mlp(*weights[:2])
    onnx.save(mlp(*weights[:2]), tmp_path / "ext.onnx", save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)  # (onnx.save rewrites its argument)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    assert verify(tmp_path / "ext.onnx", m).ok
    lazy = ir.load(tmp_path / "ext.onnx")  # ExternalTensors pointing into ext.onnx.data
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in lazy.graph.initializers.values())
    assert verify(lazy, m).ok
    # a proto whose external data cannot be found is a clear error, not a crash
    detached = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    with pytest.raises(GrowError, match="external data"):
        verify(m, detached)


# ----------------------------------------------------------------------------- random inputs


def test_token_ids_stay_inside_the_embedding():
    # ids (int32) -> Cast -> Reshape -> Gather(table of 7 rows); 0..9 would index out of range,
    # which onnxruntime refuses. The ids are also an output, so the report shows their range.
    table = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    m = make_model(
        [helper.make_node("Cast", ["ids"], ["i64"], to=TensorProto.INT64),
         helper.make_node("Reshape", ["i64", "shape"], ["flat"]),
         helper.make_node("Gather", ["E", "flat"], ["y"]),
         helper.make_node("Cast", ["ids"], ["ids_f"], to=F)],
        [vi("ids", TensorProto.INT32, ["B", "T"])],
        [vi("y", F, ["N", 4]), vi("ids_f", F, ["B", "T"])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([-1], np.int64), "shape")])
    report = verify(m, m, dims={"B": 2, "T": 200}, samples=4)
    assert report.ok and report.inputs == [{"name": "ids", "dtype": "int32", "shape": [2, 200]}]
    assert report.outputs[1].scale == 6  # the largest id drawn is vocab - 1


def test_int_bool_and_half_inputs_are_drawn():
    m = make_model(
        [helper.make_node("Cast", ["n"], ["nf"], to=F), helper.make_node("Cast", ["b"], ["bf"], to=F),
         helper.make_node("Cast", ["h"], ["hf"], to=F)],
        [vi("n", TensorProto.INT64, [300]), vi("b", TensorProto.BOOL, [300]), vi("h", TensorProto.FLOAT16, [300])],
        [vi("nf", F, [300]), vi("bf", F, [300]), vi("hf", F, [300])])
    report = verify(m, m)
    assert report.ok
    assert [i["dtype"] for i in report.inputs] == ["int64", "bool", "float16"]
    ints, bools, halves = report.outputs
    assert ints.scale == 9  # integers that index no table: [0, 10)
    assert bools.scale == 1
    assert 2 < halves.scale < 6  # N(0, 1)


def test_inputs_that_cannot_be_drawn_ask_for_an_npz():
    m = make_model([helper.make_node("Identity", ["s"], ["y"])], [vi("s", TensorProto.STRING, [2])],
                   [vi("y", TensorProto.STRING, [2])])
    with pytest.raises(GrowError, match="--inputs"):
        verify(m, m)
    unshaped = make_model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", F, None)], [vi("y", F, None)])
    with pytest.raises(GrowError, match="no shape.*--inputs"):
        verify(unshaped, unshaped)
    assert verify(unshaped, unshaped, inputs={"x": np.ones((2, 3), np.float32)}).ok


# ----------------------------------------------------------------------------- the defaults


def _plain_chain(layers, n=32, seed=0):
    """x -> (MatMul, Add, Relu) x layers, He-scaled: activations stay O(1)."""
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal((n, n)) * np.sqrt(2 / n)).astype(np.float32),
             (rng.standard_normal(n) * 0.1).astype(np.float32)] for _ in range(layers)]


def _residual_chain(blocks, n=32, seed=0):
    """x -> x + (relu(x W1 + b1) W2 + b2) / sqrt(blocks), blocks times (2 layers each)."""
    rng = np.random.default_rng(seed)
    a = 1 / np.sqrt(blocks)
    return [[(rng.standard_normal((n, n)) * np.sqrt(2 / n)).astype(np.float32),
             (rng.standard_normal(n) * 0.1).astype(np.float32),
             (rng.standard_normal((n, n)) * np.sqrt(1 / n) * a).astype(np.float32),
             (rng.standard_normal(n) * 0.1 * a).astype(np.float32)] for _ in range(blocks)]


def _chain_model(params, residual):
    nodes, inits, x = [], [], "x"
    for i, p in enumerate(params):
        names = [f"p{i}_{j}" for j in range(len(p))]
        inits += [numpy_helper.from_array(a, n) for a, n in zip(p, names)]
        nodes += [helper.make_node("MatMul", [x, names[0]], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", names[1]], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        h = f"r{i}"
        if residual:
            nodes += [helper.make_node("MatMul", [h, names[2]], [f"n{i}"]),
                      helper.make_node("Add", [f"n{i}", names[3]], [f"b{i}"]),
                      helper.make_node("Add", [x, f"b{i}"], [f"s{i}"])]
            h = f"s{i}"
        x = h
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    n = params[0][0].shape[0]
    return make_model(nodes, [vi("x", F, ["batch", n])], [vi("y", F, ["batch", n])], inits)


def _widen(W_in, b, W_out, width, seed=0):
    """Net2WiderNet by hand: replicate units of (W_in, b), split their outgoing rows of W_out."""
    n = W_in.shape[1]
    g = np.concatenate([np.arange(n), np.random.default_rng(seed).integers(0, n, width - n)])
    c = np.bincount(g, minlength=n)
    return W_in[:, g], b[g], (W_out[g, :] / c[g][:, None]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_pass_an_exact_transform_of_a_deep_chain(seed):
    # 160 float32 layers; layer 1 widened 32 -> 48 by Net2Net, layer 2 rescaled by 2.5 and layer 3
    # by 1/2.5 (ReLU is positively homogeneous): exact in real arithmetic, rounding only in float32
    params = _plain_chain(160, seed=seed)
    grown = [list(p) for p in params]
    grown[1][0], grown[1][1], grown[2][0] = _widen(params[1][0], params[1][1], params[2][0], 48, seed)
    grown[2] = [grown[2][0] * np.float32(2.5), grown[2][1] * np.float32(2.5)]
    grown[3] = [grown[3][0] / np.float32(2.5), grown[3][1]]
    report = verify(_chain_model(params, False), _chain_model(grown, False), dims={"batch": 4})
    out = report.outputs[0]
    assert report.ok, report.format()
    assert 0 < out.max_abs and out.max_rel < DEFAULT_RTOL / 5  # rounding, well inside the default

    blocks = _residual_chain(80, seed=seed)  # 160 layers with skip connections
    grown = [list(b) for b in blocks]
    grown[1][0], grown[1][1], grown[1][2] = _widen(*blocks[1][:3], 48, seed)
    teacher = _chain_model(blocks, True)
    report = verify(teacher, _chain_model(grown, True), dims={"batch": 4})
    assert report.ok and report.outputs[0].max_rel < DEFAULT_RTOL / 5, report.format()


@pytest.mark.parametrize("block", [1, 40, 79])
def test_defaults_fail_one_weight_changed_in_a_deep_chain(block):
    # one of the 163,840 weights changed by 5% moves the output by ~1e-3 of its scale (measured
    # 4e-4..1.8e-3 over seeds and blocks); the rounding of an exact transform is ~1e-6 of it
    blocks = _residual_chain(80)
    changed = [list(b) for b in blocks]
    changed[block][0] = altered(blocks[block][0])
    report = verify(_chain_model(blocks, True), _chain_model(changed, True), dims={"batch": 4})
    assert not report.ok
    assert report.outputs[0].max_rel > 5 * DEFAULT_RTOL


# ----------------------------------------------------------------------------- providers


def test_provider_is_reported_with_the_reason(weights):
    m = mlp(*weights[:2])
    usable, why = cuda_status()
    report = verify(m, m)
    if usable:
        assert report.provider == "cuda" and report.provider_note == ""
    else:
        assert why and report.provider == "cpu" and report.provider_note == f"CUDA not usable: {why}"
        assert f"provider: cpu (CUDA not usable: {why})" in report.format()
        with pytest.raises(GrowError, match="CUDA was requested but is not usable"):
            verify(m, m, provider="cuda")
    cpu = verify(m, m, provider="cpu")
    assert cpu.provider == "cpu" and cpu.provider_note == ""
    with pytest.raises(GrowError, match="unknown provider"):
        verify(m, m, provider="tpu")
    with pytest.raises(GrowError, match="samples"):
        verify(m, m, samples=0)


def test_package_level_verify_is_the_function(tmp_path, weights):
    # `og.verify` must stay the function whichever of onnxgrow / onnxgrow.verification comes first
    onnx.save(mlp(*weights[:2]), tmp_path / "a.onnx")
    for first in ("import onnxgrow.verification", "from onnxgrow.verification import compare", "pass"):
        code = f"{first}\nimport onnxgrow as og\nprint(og.verify({str(tmp_path / 'a.onnx')!r}, " \
               f"{str(tmp_path / 'a.onnx')!r}).ok)"
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert done.stdout.strip() == "True", (first, done.stderr[-500:])


# ----------------------------------------------------------------------------- the command line


@pytest.fixture
def pair(tmp_path, weights):
    W1, W2, W3 = weights
    paths = {}
    for name, m in (("teacher", mlp(W1, W2, W3)), ("same", mlp(W1, W2, W3)), ("changed", mlp(W1, W2, altered(W3)))):
        onnx.save(m, tmp_path / f"{name}.onnx")
        paths[name] = tmp_path / f"{name}.onnx"
    return paths


def test_cli_exit_codes_and_quiet_stderr(pair):
    done = run_cli("verify", pair["teacher"], pair["same"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] in ("match on cpu", "match on cuda")
    assert done.stderr == ""  # no onnxruntime log lines, not even from the CUDA probe
    done = run_cli("verify", pair["teacher"], pair["changed"])
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith("MISMATCH: z differs")
    assert "Traceback" not in done.stdout + done.stderr


def test_cli_json_dims_and_per_output_tolerance(pair):
    done = run_cli("verify", pair["teacher"], pair["changed"], "--json", "--dim", "batch=3",
                   "--atol", "z:1", "--samples", "2", "--seed", "5")
    assert done.returncode == 0, done.stdout + done.stderr

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    rep = json.loads(done.stdout, parse_constant=strict)
    assert rep["ok"] is True and rep["samples"] == 2 and rep["seed"] == 5
    assert rep["provider"] in ("cpu", "cuda") and isinstance(rep["provider_note"], str)
    assert rep["inputs"] == [{"name": "x", "dtype": "float32", "shape": [3, 4]}]
    y, z = rep["outputs"]
    assert (y["name"], y["shape"], y["max_abs"], y["atol"]) == ("y", [3, 3], 0.0, DEFAULT_ATOL)
    assert z["name"] == "z" and z["atol"] == 1.0 and z["rtol"] == DEFAULT_RTOL
    assert 0 < z["max_abs"] <= 1 and z["passed"] is True
    for key in ("mean_abs", "p99_abs", "max_rel", "scale", "min_atol", "min_rtol", "allowed"):
        assert isinstance(z[key], float)


def test_cli_npz_inputs(pair, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.ones((2, 4), np.float32))
    done = run_cli("verify", pair["teacher"], pair["same"], "--inputs", tmp_path / "in.npz", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["samples"] == 1 and rep["inputs"][0]["shape"] == [2, 4]
    np.savez(tmp_path / "wrong.npz", input=np.ones((2, 4), np.float32))
    done = run_cli("verify", pair["teacher"], pair["same"], "--inputs", tmp_path / "wrong.npz")
    assert done.returncode == 2 and "missing 'x'" in done.stderr and "Traceback" not in done.stderr


def softmax_head(shift, op="Softmax"):
    """x[batch,4] → logits = x W + b (+ shift) → op → p; logits of size ~30, as a big classifier's."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 50)) * 8).astype(np.float32)
    b = (rng.standard_normal(50) + shift).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
             helper.make_node(op, ["logits"], ["p"], **({"axis": -1} if "Softmax" in op else {}))]
    return make_model(nodes, [vi("x", F, ["batch", 4])], [vi("p", F, ["batch", 50])],
                      [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])


def test_a_softmax_output_that_fails_by_rounding_of_its_logits_passes_by_them():
    teacher = softmax_head(0.0)
    rounding = np.random.default_rng(4).uniform(-3e-4, 3e-4, 50)  # within 5e-5 of logits of size ~30
    student = softmax_head(rounding)
    report = verify(teacher, student, dims={"batch": 16})
    (out,) = report.outputs
    assert out.max_abs > out.allowed  # the probabilities alone would fail ...
    assert report.ok and out.passed and "logits 'logits'" in out.judged_by  # ... their logits pass
    assert "ok by its logits 'logits'" in report.format()
    wrong = verify(teacher, softmax_head(np.random.default_rng(4).uniform(-0.1, 0.1, 50)), dims={"batch": 16})
    assert not wrong.ok and wrong.outputs[0].judged_by is None


def test_only_squashing_outputs_are_judged_by_their_input():
    teacher = softmax_head(0.0, op="Sin")  # of size 1 like probabilities, but not a function of a logit's rank
    report = verify(teacher, softmax_head(np.random.default_rng(4).uniform(-3e-4, 3e-4, 50), op="Sin"),
                    dims={"batch": 16})
    assert not report.ok and report.outputs[0].judged_by is None
