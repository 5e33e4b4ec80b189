"""Editing through a window (onnxgrow/window.py) is the same edit as on the whole graph.

Differential: each transform runs once on the whole graph and once through a window (forced on
small models by lowering its thresholds); both must refuse, or both must give students that
compute the same outputs, exactly as the teacher, with the same summary. The window must also be
really used (not fall back) where the transform stays inside it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxgrow import window
from onnxgrow.deepening import deepen_model
from onnxgrow.errors import GrowError
from onnxgrow.growth import grow_model, plan_from
from onnxgrow.widening import widen_model
from tests import zoo
from tests.helpers import assert_equivalent, scaled_errors
from tests.random_nets import RandomNet, example_input, recipes

import onnxgrow as og


@pytest.fixture
def always_window(monkeypatch):
    monkeypatch.setattr(window, "MIN_NODES", 0)
    monkeypatch.setattr(window, "MAX_SHARE", 1.0)


def chain(path, blocks: int = 40, d: int = 4, residual: bool = False) -> str:
    """MatMul(d×d) → Add(bias) → Relu blocks (with a residual Add every block when asked)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(blocks):
        p = f"b{k}"
        inits += [onnx.numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), f"{p}.w"),
                  onnx.numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), f"{p}.b")]
        nodes += [helper.make_node("MatMul", [x, f"{p}.w"], [f"{p}.m"], name=f"{p}.fc"),
                  helper.make_node("Add", [f"{p}.m", f"{p}.b"], [f"{p}.a"], name=f"{p}.add"),
                  helper.make_node("Relu", [f"{p}.a"], [f"{p}.r"], name=f"{p}.relu")]
        if residual:
            nodes.append(helper.make_node("Add", [x, f"{p}.r"], [f"{p}.out"], name=f"{p}.res"))
        x = f"{p}.out" if residual else f"{p}.r"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", d])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def edit(path, targets, transform, out):
    """(how the model was edited: "window" or "whole", summary) — or the GrowError's text."""
    model = window.load(path, targets)
    try:
        summary = model.run(transform)
    except GrowError as exc:
        return "refused", str(exc)
    model.write(out)
    used = "window" if isinstance(model, window.Window) and not model.edited_whole else "whole"
    return used, summary


def same_edit(tmp_path, path, targets, transform, monkeypatch) -> str:
    """Run `transform` on the whole graph and through a forced window; assert they agree; return
    how the window run went ("window", "whole" after falling back, or "refused")."""
    whole_out, window_out = str(tmp_path / "whole.onnx"), str(tmp_path / "window.onnx")
    with monkeypatch.context() as m:
        m.setattr(window, "MIN_NODES", 10**9)
        whole_how, whole_summary = edit(path, targets, transform, whole_out)
    with monkeypatch.context() as m:
        m.setattr(window, "MIN_NODES", 0)
        m.setattr(window, "MAX_SHARE", 1.0)
        how, summary = edit(path, targets, transform, window_out)
    assert (how == "refused") == (whole_how == "refused"), (how, summary, whole_summary)
    if how == "refused":
        assert summary == whole_summary
        return how
    assert summary["lines"] == whole_summary["lines"]
    assert summary["parameters"] == whole_summary["parameters"]
    assert summary.get("mappings") == whole_summary.get("mappings")  # what optimizer state follows
    onnx.checker.check_model(onnx.load(window_out), full_check=True)
    assert max(scaled_errors(whole_out, window_out)) <= 1e-6  # the whole graph's student, to rounding
    assert_equivalent(path, window_out)
    return how


def test_a_chain_is_widened_through_a_small_window(tmp_path, always_window):
    path = chain(tmp_path / "chain.onnx")
    model = window.load(path, ["b20.fc"])
    assert isinstance(model, window.Window)
    assert len(model.region) == 4  # b20.fc, its bias Add and Relu, and b21.fc that consumes it
    summary = model.run(lambda m: widen_model(m, layer="b20.fc", width=8))
    assert not model.edited_whole
    model.write(str(tmp_path / "out.onnx"))
    assert "b21.fc" in summary["lines"][1]
    student = onnx.load(str(tmp_path / "out.onnx"))
    shapes = {t.name: list(t.dims) for t in student.graph.initializer}
    assert [len(student.graph.node), len(student.graph.initializer)] == [120, 80]
    grown = {name: dims for name, dims in shapes.items() if name.split(".")[0] in ("b20", "b21")}
    assert sorted(grown.values()) == [[4], [4, 8], [8], [8, 4]], grown  # b21's bias stays


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("case", ["widen", "grow", "deepen", "deepen-last", "deepen-r2r", "widen-first"])
def test_chain_edits_agree_with_the_whole_graph(tmp_path, monkeypatch, residual, case):
    path = chain(tmp_path / "chain.onnx", residual=residual)
    transforms = {
        "widen": (["b7.fc"], lambda m: widen_model(m, layer="b7.fc", width=7, method="net2net", seed=3)),
        "widen-first": (["b0.fc"], lambda m: widen_model(m, layer="b0.fc", width=8, method="r2r", seed=3)),
        "grow": (["b3.fc", "b11.fc", "b30.fc"],
                 lambda m: grow_model(m, plan_from(widen=["b3.fc=x2", "b11.fc=6"], deepen=["b30.fc:zero"]))),
        "deepen": (["b12.fc"], lambda m: deepen_model(m, after="b12.fc", method="net2net")),
        "deepen-r2r": (["b12.fc"], lambda m: deepen_model(m, after="b12.fc", method="r2r", seed=1)),
        "deepen-last": (["b39.fc"], lambda m: deepen_model(m, after="b39.fc", method="net2net")),
    }
    targets, transform = transforms[case]
    how = same_edit(tmp_path, path, targets, transform, monkeypatch)
    if residual and case in ("widen", "widen-first", "grow"):
        assert how == "refused"  # the stream reaches the graph input and output
    elif case == "deepen-last" and not residual:
        assert how == "whole"  # the insertion replaces the window's (and the graph's) output
    else:
        assert how == "window"


ZOO_CASES = [(arch, exporter) for arch in sorted(zoo.ARCHITECTURES) for exporter in ("legacy", "dynamo")
             if exporter == "legacy" or arch in ("resnet_mini", "transformer_mini", "mobilenetv2_mini", "vit_mini")]


@pytest.mark.parametrize("arch,exporter", ZOO_CASES)
def test_zoo_edits_agree_with_the_whole_graph(tmp_path, monkeypatch, zoo_model, arch, exporter):
    """Three layers of every zoo network (first, middle, last listed by inspect), widened to
    twice their width and deepened after, by module path where one is recorded."""
    path = zoo_model(arch, exporter)
    layers = og.inspect(path)["layers"]
    chosen = {id(x): x for x in (layers[0], layers[len(layers) // 2], layers[-1])}.values()
    used = []
    for layer in chosen:
        name = layer.get("module") or layer["name"]
        width = 2 * layer["width"]
        used.append(same_edit(tmp_path, path, [name], lambda m: widen_model(m, layer=name, width=width, seed=1),
                              monkeypatch))
        used.append(same_edit(tmp_path, path, [name], lambda m: deepen_model(m, after=name, method="zero"),
                              monkeypatch))
    assert "window" in used or arch in WHOLE_ONLY, used


# every edit of these reaches the graph's input or output, or the window cannot be cut
WHOLE_ONLY: set = set()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decoder_edits_by_module_path_agree(tmp_path, monkeypatch, llm_model, family):
    """Attention and MLP projections of a GQA decoder, by module path: the window holds one block's
    attention (RoPE's tables are read, not followed to every other layer), or the neighbours of an
    insertion after a layer writing the residual stream, and is kept; widening the stream itself
    needs every layer: the near and local windows meet their edges, the whole flood fill takes it."""
    path = llm_model(family)
    for target, transform in [
        ("model.layers.0.mlp.up_proj", lambda m: widen_model(m, layer="model.layers.0.mlp.up_proj", width=96)),
        ("layers.1.self_attn.k_proj", lambda m: widen_model(m, layer="layers.1.self_attn.k_proj", width=48)),
        ("layers.1.self_attn.q_proj", lambda m: widen_model(m, layer="layers.1.self_attn.q_proj", width=64,
                                                             method="r2r")),
        ("layers.0.self_attn.v_proj", lambda m: widen_model(m, layer="layers.0.self_attn.v_proj", width=32)),
        ("model.layers.1.mlp.down_proj", lambda m: deepen_model(m, after="model.layers.1.mlp.down_proj",
                                                                 method="zero")),
        ("model.layers.0.self_attn.o_proj", lambda m: deepen_model(m, after="model.layers.0.self_attn.o_proj",
                                                                    method="r2r", seed=2)),
        ("model.layers.0.mlp.down_proj", lambda m: widen_model(m, layer="model.layers.0.mlp.down_proj",
                                                                width=64)),  # the stream: wider windows
    ]:
        how = same_edit(tmp_path, path, [target], transform, monkeypatch)
        assert how == "window", (target, how)


def test_an_unknown_name_gets_the_whole_graphs_message(tmp_path, always_window):
    path = chain(tmp_path / "chain.onnx")
    model = window.load(path, ["b7.fcc"])
    assert isinstance(model, window.Whole)
    with pytest.raises(GrowError, match="Closest names: 'b7.fc'"):
        model.run(lambda m: widen_model(m, layer="b7.fcc", width=8))


def test_the_command_line_edits_a_large_chain_through_a_window(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from onnxgrow.cli import cli

    path = chain(tmp_path / "chain.onnx", blocks=60)
    argv = ["grow", path, "--widen", "b10.fc=8", "--widen", "b40.fc=x2", "--deepen", "b50.fc:r2r", "--json"]
    calls = []
    real = window.Window.run
    monkeypatch.setattr(window.Window, "run", lambda self, t: calls.append(self) or real(self, t))
    results = {}
    for min_nodes in (10**9, 100):
        monkeypatch.setattr(window, "MIN_NODES", min_nodes)
        result = CliRunner().invoke(cli, [*argv, "-o", str(tmp_path / f"out{min_nodes}.onnx")])
        assert result.exit_code == 0, result.output
        results[min_nodes] = json.loads(result.output)
    assert len(calls) == 1 and not calls[0].edited_whole  # the second run, windowed
    whole, windowed = results[10**9], results[100]
    assert windowed["verify"]["ok"] and windowed["parameters"] == whole["parameters"]
    assert windowed["lines"] == whole["lines"] and windowed["parameters"]["after"] > 1200


@settings(max_examples=int(os.environ.get("ONNXGROW_PROPERTY_EXAMPLES", "36")) // 3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(recipe=recipes(), data=st.data())
def test_random_networks_agree_with_the_whole_graph(tmp_path, monkeypatch, recipe, data):
    """Property: on random DAGs (tests/random_nets.py), any layer widened by any method, or
    deepened after, through a window is the whole graph's edit."""
    net = zoo.randomize_(RandomNet(recipe), seed=data.draw(st.integers(0, 1000), label="seed"))
    path = str(tmp_path / f"net-{abs(hash(str(recipe))) % 10**8}.onnx")
    zoo.export(net, (example_input(),), path, exporter=data.draw(st.sampled_from(["legacy", "dynamo"])))
    layers = og.inspect(path)["layers"]
    for layer in data.draw(st.lists(st.sampled_from(layers), min_size=1, max_size=3, unique_by=lambda x: x["name"]),
                           label="layers"):
        name, width = layer.get("module") or layer["name"], 2 * layer["width"]
        if data.draw(st.booleans(), label="widen"):
            method = data.draw(st.sampled_from(["net2net", "netmorph", "r2r"]), label="method")
            transform = lambda m: widen_model(m, layer=name, width=width, method=method, seed=1)
        else:
            method = data.draw(st.sampled_from(["net2net", "zero", "r2r"]), label="method")
            transform = lambda m: deepen_model(m, after=name, method=method, seed=1)
        same_edit(tmp_path, path, [name], transform, monkeypatch)


def test_grown_weights_of_a_model_with_external_data_go_to_disk(tmp_path, monkeypatch):
    """The command line writes the grown weights of an external-data model to a spill file as
    they are made (graph.Spill), and removes it once the student is saved."""
    from pathlib import Path

    from click.testing import CliRunner

    from onnxgrow import graph as g
    from onnxgrow.cli import cli

    inline = onnx.load(chain(tmp_path / "inline.onnx", blocks=6, d=8))
    path = str(tmp_path / "external.onnx")
    onnx.save(inline, path, save_as_external_data=True, location="external.data", size_threshold=0)
    monkeypatch.setattr(g.Spill, "MIN_BYTES", 0)
    spills, real = [], g.Spill.write
    monkeypatch.setattr(g.Spill, "write", lambda self, a, n: spills.append(self) or real(self, a, n))
    out = str(tmp_path / "wide.onnx")
    result = CliRunner().invoke(cli, ["grow", path, "--widen", "b2.fc=16", "--widen", "b4.fc=12", "-o", out])
    assert result.exit_code == 0 and "match" in result.output, result.output
    assert len(spills) == 6 and not Path(spills[0]._dir.name).exists()  # fc, bias and next fc, twice
    assert_equivalent(path, out)


def test_the_python_api_edits_a_large_graph_through_a_window(tmp_path, monkeypatch):
    monkeypatch.setattr(window, "MIN_NODES", 100)
    path = chain(tmp_path / "chain.onnx", blocks=60)
    calls, real = [], window.Window.run
    monkeypatch.setattr(window.Window, "run", lambda self, t: calls.append(self) or real(self, t))
    teacher = onnx.load(path)
    wide = og.widen(path, layer="b10.fc", width=8)
    grown = og.grow(teacher, widen={"b20.fc": "x2"}, deepen=["b30.fc:zero"])
    deep = og.deepen(teacher, after="b40.fc", method="net2net")
    assert len(calls) == 3 and not any(c.edited_whole for c in calls)
    assert onnx.load(path) == teacher  # the caller's file and proto are not modified
    for student in (wide, grown, deep):
        assert isinstance(student, onnx.ModelProto) and student is not teacher
        assert_equivalent(path, student)
    assert len(grown.graph.node) > len(teacher.graph.node) == 180


def test_progress_is_reported_once_when_the_window_falls_back(tmp_path, always_window):
    path = chain(tmp_path / "chain.onnx")
    said = []
    plan = plan_from(widen=["b3.fc=8"], deepen=["b39.fc"])  # the insertion replaces the graph's output
    model = window.load(path, plan.targets())
    model.run(lambda m: grow_model(m, plan, said.append))
    assert model.edited_whole
    assert said == ["widened b3.fc (+0 coupled): 4 → 8", "inserted net2net after b39.fc"]
    said.clear()
    plan = plan_from(widen=["b3.fc=8"], deepen=["b20.fc"])
    model = window.load(path, plan.targets())
    model.run(lambda m: grow_model(m, plan, said.append))
    assert not model.edited_whole
    assert said == ["widened b3.fc (+0 coupled): 4 → 8", "inserted net2net after b20.fc"]


def test_an_initializer_that_is_also_a_graph_input_stays(tmp_path, always_window):
    """(IR < 4 style) A weight listed among the graph inputs can be overridden by the caller, so
    it stays in the student even once no node reads it, as it does when the whole graph is edited."""
    model = onnx.load(chain(tmp_path / "chain.onnx"))
    model.graph.input.append(helper.make_tensor_value_info("b20.w", TensorProto.FLOAT, [4, 4]))
    path = str(tmp_path / "inputs.onnx")
    onnx.save(model, path)
    loaded = window.load(path, ["b20.fc"])
    loaded.run(lambda m: widen_model(m, layer="b20.fc", width=8))
    assert isinstance(loaded, window.Window) and not loaded.edited_whole
    student = loaded.result(path)
    assert "b20.w" in {t.name for t in student.graph.initializer} and "b20.w" in {i.name for i in student.graph.input}
    assert "b20.b" not in {t.name for t in student.graph.initializer}  # its bias went, replaced


def test_a_large_model_is_written_a_weight_at_a_time(tmp_path, always_window, monkeypatch):
    monkeypatch.setattr(window, "SMALL_MODEL_BYTES", 0)
    path = chain(tmp_path / "chain.onnx")
    model = window.load(path, ["b5.fc"])
    model.run(lambda m: widen_model(m, layer="b5.fc", width=8))
    model.write(str(tmp_path / "out.onnx"))
    assert onnx.load(str(tmp_path / "out.onnx")) == model.source.proto
    assert_equivalent(path, str(tmp_path / "out.onnx"))


def test_a_non_finite_weight_outside_the_window_is_still_refused(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from onnxgrow.cli import cli

    monkeypatch.setattr(window, "MIN_NODES", 10)
    model = onnx.load(chain(tmp_path / "chain.onnx"))
    bad = next(t for t in model.graph.initializer if t.name == "b30.w")
    bad.CopyFrom(onnx.numpy_helper.from_array(np.full((4, 4), np.nan, np.float32), "b30.w"))
    path = str(tmp_path / "nan.onnx")
    onnx.save(model, path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["widen", path, "--layer", "b5.fc", "--width", "8", "-o", str(out)])
    assert isinstance(result.exception, GrowError) and "'b30.w' (16 of 16)" in str(result.exception)
    assert not out.exists()  # (the console script turns the GrowError into exit 2)
