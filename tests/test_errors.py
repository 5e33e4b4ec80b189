"""Refusals and bugs are different: a rule that crashes is an InternalError (exit 3), never a
GrowError (exit 2); strict mode (the test suite's) lets no unexpected exception be tolerated."""

from __future__ import annotations

import pytest
from onnx import helper

import onnxgrow as og
from onnxgrow import cli
from onnxgrow.errors import GrowError, InternalError
from onnxgrow.groups import RULES
from tests.rule_graphs import conv_sandwich


def _relu_model(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_sandwich([helper.make_node("Relu", ["h"], ["m"])]).SerializeToString())
    return str(path)


def _crashing_rule(walk, node, side, index, slot):
    raise ValueError("an unanticipated shape")


def test_a_crashing_rule_is_an_internal_error_not_a_refusal(tmp_path, monkeypatch):
    monkeypatch.setitem(RULES, "Relu", _crashing_rule)
    with pytest.raises(InternalError, match="the Relu rule failed") as info:
        og.widen(_relu_model(tmp_path), layer="p", width=8)
    assert not isinstance(info.value, GrowError)


def test_the_cli_exits_3_without_a_traceback_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(RULES, "Relu", _crashing_rule)
    out = tmp_path / "s.onnx"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["widen", _relu_model(tmp_path), "--layer", "p", "--width", "8", "-o", str(out)])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "the Relu rule failed" in err and "Traceback" not in err
    assert not out.exists()


def test_inspect_tolerates_one_layers_bug_only_outside_strict_mode(tmp_path, monkeypatch):
    monkeypatch.setitem(RULES, "Relu", _crashing_rule)
    model = _relu_model(tmp_path)
    with pytest.raises(InternalError):
        og.inspect(model)  # the suite runs strict
    monkeypatch.setenv("ONNXGROW_STRICT", "0")
    layer = next(entry for entry in og.inspect(model)["layers"] if entry["name"] == "p")
    assert "methods" not in layer["widen"] and layer["widen"]["internal"]
    assert "bug" in layer["widen"]["reason"]
