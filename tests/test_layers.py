"""`onnxgrow inspect`: every weight layer is listed, in DESIGN's JSON shape, with widen/deepen
entries that carry either methods or a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import onnxgrow as og

MODELS = sorted(Path(__file__).resolve().parent.parent.joinpath("models").glob("*.onnx"))


def _weight_layers(path):
    """Conv/ConvTranspose/Gemm, and MatMul whose second input is a constant (possibly behind
    Identity/Cast/Transpose nodes) — the set the contract checker expects inspect to list."""
    model = onnx.load(path)
    constants = {i.name for i in model.graph.initializer}
    for n in model.graph.node:  # nodes are in topological order
        if n.op_type == "Constant" or (
                n.op_type in ("Identity", "Cast", "Transpose") and n.input[0] in constants):
            constants.update(n.output)
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")
            or (n.op_type == "MatMul" and n.input[1] in constants)}


@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_every_weight_layer_is_listed_with_methods_or_a_reason(path):
    info = og.inspect(path)
    assert {"model", "inputs", "outputs", "layers"} <= set(info)
    assert {layer["name"] for layer in info["layers"]} == _weight_layers(path)
    for layer in info["layers"]:
        assert {"name", "op", "width", "widen", "deepen"} <= set(layer)
        assert isinstance(layer["width"], int) and layer["width"] > 0
        for key in ("widen", "deepen"):
            entry = layer[key]
            assert ("methods" in entry and entry["methods"]) or entry.get("reason"), (layer["name"], key)
        if "methods" in layer["widen"]:
            assert isinstance(layer["widen"]["group"], list)
        if layer["op"] in ("Conv", "ConvTranspose"):
            assert layer["morph_kernel"].get("kernel") or layer["morph_kernel"].get("reason")


def test_cli_json_and_table(tmp_path):
    path = str(MODELS[0].parent / "resnet_mini.legacy.onnx")
    done = subprocess.run([sys.executable, "-m", "onnxgrow.cli", "inspect", path, "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    head = next(layer for layer in info["layers"] if layer["op"] == "Gemm")
    assert "graph output" in head["widen"]["reason"]
    table = subprocess.run([sys.executable, "-m", "onnxgrow.cli", "inspect", path],
                           capture_output=True, text=True).stdout
    assert "/layer1/conv1/Conv" in table and "why not:" in table and "graph output" in table
    assert "(+BatchNormalization→Relu)" in table  # where deepen inserts
