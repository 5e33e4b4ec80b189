"""Growth plans (`onnxgrow grow`, `og.grow`): many transforms, one load, one verification, one save."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from onnx import helper

import onnxgrow as og
from onnxgrow import cli
from onnxgrow import graph as G
from onnxgrow.errors import GrowError
from tests.helpers import assert_equivalent
from tests.rule_graphs import ints, model, value


def _widenable(info) -> dict:
    return {layer["name"]: layer["width"] for layer in info["layers"] if layer["widen"].get("methods")}


@pytest.mark.parametrize("arch,exporter", [("resnet_mini", "legacy"), ("mobilenetv2_mini", "dynamo"),
                                           ("densenet_mini", "legacy"), ("vit_mini", "dynamo"),
                                           ("transformer_mini", "legacy"), ("senet", "dynamo")])
def test_twice_as_wide_everywhere_is_exact_and_doubles_every_widenable_layer(zoo_model, arch, exporter):
    teacher = zoo_model(arch, exporter)
    before = _widenable(og.inspect(teacher))
    student = og.grow(teacher, widen={"*": "x2"})
    assert_equivalent(teacher, student)
    after = {layer["name"]: layer["width"] for layer in og.inspect(student)["layers"]}
    assert {name: after[name] for name in before} == {name: 2 * w for name, w in before.items()}


@pytest.mark.parametrize("method", ["netmorph", "r2r"])
def test_every_preserving_method_grows_a_whole_model_exactly(zoo_model, method):
    teacher = zoo_model("resnet_mini", "dynamo")
    assert_equivalent(teacher, og.grow(teacher, widen={"layer*": "x2"}, deepen=["layer1.conv2:r2r"],
                                       method=method, seed=4))


def test_a_factor_rounds_to_what_the_group_allows_and_says_so(zoo_model):
    from onnxgrow import growth

    teacher = G.load(zoo_model("resnet_mini", "legacy"))
    plan = growth.plan_from(widen=["layer1.conv1=x1.4"], method="r2r")  # 8·1.4 = 11.2: r2r adds pairs
    summary = growth.grow_model(teacher, plan)
    (group,) = summary["groups"]
    assert group["width"] == {"before": 8, "after": 10} and group["rounded"]
    assert "rounded from ×1.4" in "\n".join(summary["lines"])


def test_a_normalised_stream_grows_to_a_non_multiple(zoo_model):
    teacher = zoo_model("transformer_mini", "legacy")  # pre-norm LayerNorm stream of 16
    student = og.grow(teacher, widen={"blocks.0.attn.proj": "x1.5"})
    assert_equivalent(teacher, student)


def test_a_factor_on_a_post_norm_stream_rounds_to_a_multiple(zoo_model):
    from onnxgrow import growth

    teacher = G.load(zoo_model("bert_layer", "legacy"))  # post-norm LayerNorm stream: multiples only
    summary = growth.grow_model(teacher, growth.plan_from(widen=["o=x1.5"]))
    (group,) = summary["groups"]
    assert group["width"]["after"] == 2 * group["width"]["before"] and group["rounded"]
    assert "rounded from ×1.5" in "\n".join(summary["lines"])


def test_a_factor_on_a_pre_norm_stream_is_not_rounded(zoo_model):
    from onnxgrow import growth

    teacher = G.load(zoo_model("transformer_mini", "legacy"))  # pre-norm: any width (padding.py)
    summary = growth.grow_model(teacher, growth.plan_from(widen=["blocks.0.attn.proj=x1.5"]))
    (group,) = summary["groups"]
    assert group["width"]["after"] == 24 and not group["rounded"]


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        cli.main(list(argv))
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_two_widths_for_one_group_is_exit_2_and_writes_nothing(zoo_model, tmp_path, capsys):
    teacher = zoo_model("resnet_mini", "legacy")
    digest, out = _digest(teacher), tmp_path / "s.onnx"
    code, _, err = _cli(capsys, "grow", teacher, "--widen", "stem.0=16", "--widen", "layer1.conv2=24",
                        "-o", str(out))
    assert code == 2 and "two specs cannot give one group different widths" in err
    assert not out.exists() and _digest(teacher) == digest


def test_an_explicit_layer_that_cannot_grow_is_exit_2_a_glob_skips_it(zoo_model, tmp_path, capsys):
    teacher = zoo_model("resnet_mini", "legacy")
    code, _, err = _cli(capsys, "grow", teacher, "--widen", "fc=20", "-o", str(tmp_path / "a.onnx"))
    assert code == 2 and "graph output" in err
    code, out, _ = _cli(capsys, "grow", teacher, "--widen", "*=x2", "--json", "-o", str(tmp_path / "b.onnx"))
    report = json.loads(out)
    assert code == 0 and report["verify"]["ok"]
    assert [s["layer"] for s in report["skipped"]] == ["/fc/Gemm"] and "graph output" in report["skipped"][0]["reason"]


def test_a_plan_file_is_the_same_as_the_flags(zoo_model, tmp_path, capsys):
    teacher = zoo_model("mobilenetv2_mini", "legacy")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"widen": {"features.*": "x2"}, "deepen": ["features.1.conv.2:r2r"], "seed": 3}))
    _cli(capsys, "grow", teacher, "--plan", str(plan), "-o", str(tmp_path / "a.onnx"), "--quiet")
    _cli(capsys, "grow", teacher, "--widen", "features.*=x2", "--deepen", "features.1.conv.2:r2r",
         "--seed", "3", "-o", str(tmp_path / "b.onnx"), "--quiet")
    a, b = G.load(str(tmp_path / "a.onnx")), G.load(str(tmp_path / "b.onnx"))
    assert [n.op_type for n in a.graph] == [n.op_type for n in b.graph]
    for name, v in a.graph.initializers.items():
        np.testing.assert_array_equal(G.constant(v), G.constant(b.graph.initializers[name]))


def test_one_load_one_verification_one_save(zoo_model, tmp_path, capsys, monkeypatch):
    from onnxgrow import verification

    calls = []
    real = verification.verify
    monkeypatch.setattr(verification, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err = _cli(capsys, "grow", zoo_model("resnet_mini", "legacy"), "--widen", "layer*=x2",
                          "--deepen", "layer1.conv1:r2r", "--deepen", "layer2.conv1:zero", "-o",
                          str(tmp_path / "s.onnx"))
    assert code == 0 and len(calls) == 1
    assert "inserted r2r after layer1.conv1" in out and "widened" in err  # progress on stderr


def test_bad_plans_are_refused_with_the_reason(zoo_model, tmp_path):
    teacher = zoo_model("resnet_mini", "legacy")
    for widen, match in (({"layer1.conv1": "x0.5"}, "factor from x1"), ({"layer1.conv1": "wide"}, "whole number"),
                         ({"nothing.*": "x2"}, "matches no layer")):
        with pytest.raises(GrowError, match=match):
            og.grow(teacher, widen=widen)
    with pytest.raises(GrowError, match="unknown method 'deeper'"):
        og.grow(teacher, deepen=["layer1.conv1:deeper"])


def test_a_constant_folded_before_an_edit_is_not_reused_after_it():
    """graph.constant caches folded shape arithmetic; an edit of its inputs must invalidate it."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    proto = model(nodes, [value("x", 2, 6)], [value("y", 3, 4)], [ints("a", [3]), ints("b", [4])])
    m = G.load(proto)
    concat = next(n for n in m.graph if n.op_type == "Concat")
    assert G.constant(concat.outputs[0]).tolist() == [3, 4]
    G.set_input_constant(m.graph, concat, 1, np.array([-1], np.int64), "b2")
    assert G.constant(concat.outputs[0]).tolist() == [3, -1]
