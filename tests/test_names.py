"""Names users know: module paths recovered from what the exporters record, checked against the
truth (the torch module whose weight values the node holds), and the lookup every command uses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper

import onnxgrow as og
from onnxgrow import graph as G
from onnxgrow import names
from onnxgrow.errors import GrowError
from tests import zoo
from tests.helpers import assert_equivalent, run
from tests.rule_graphs import conv_sandwich, ints


class ClassicMnist(nn.Module):
    """The PyTorch examples' MNIST network, flattening with x.view(-1, C*H*W) read at run time."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, x.size(1) * x.size(2) * x.size(3))
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """exporter -> path, every export with a dynamic batch (the usual dynamic_axes)."""
    folder = tmp_path_factory.mktemp("mnist")
    net = zoo.randomize_(ClassicMnist(), seed=3)
    x = torch.randn(2, 1, 28, 28)
    paths = {}
    legacy = folder / "legacy.onnx"
    torch.onnx.export(net, (x,), str(legacy), dynamo=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load(str(legacy))
    proto.ir_version = zoo.IR_VERSION
    onnx.save(proto, str(legacy))
    paths["legacy"] = str(legacy)
    for exporter in ("dynamo", "dynamo_raw"):
        paths[exporter] = zoo.export(net, (x[:1],), str(folder / f"{exporter}.onnx"), exporter=exporter,
                                     dynamic_batch=True)
    return paths, net


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxgrow.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo", "dynamo_raw"])
def test_the_cards_command_works_on_the_classic_mnist_network(mnist, exporter, tmp_path):
    paths, _ = mnist
    for layer, width in (("conv1", 128), ("conv2", 40), ("fc1", 64)):
        out = tmp_path / f"{layer}.onnx"
        done = _cli("widen", paths[exporter], "--layer", layer, "--width", str(width), "-o", str(out),
                    "--dim", "batch=3")
        assert done.returncode == 0, done.stderr
        assert_equivalent(paths[exporter], str(out))


def _truth(module: nn.Module) -> dict[str, np.ndarray]:
    """module path -> weight of every layer module."""
    return {name: m.weight.detach().numpy() for name, m in module.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear))}


def _holds(node_weight: np.ndarray, weight: np.ndarray) -> bool:
    """The node's constant is this weight, as is or transposed (Linear as MatMul)."""
    for candidate in (node_weight, node_weight.T if node_weight.ndim == 2 else node_weight):
        if candidate.shape == weight.shape and np.allclose(candidate, weight, rtol=1e-6, atol=1e-7):
            return True
    return False


def _check_against_truth(path: str, module: nn.Module, folded: bool):
    truth = _truth(module)
    model = G.load(path)
    resolved = 0
    for node, paths in names.layer_names(model.graph):
        assert paths, f"{node.name}: no module path recorded"
        path_ = paths[0]
        assert names.resolve(model.graph, path_) is node
        if path_ in truth and not folded:  # folded BN changes the weight's values
            assert _holds(G.constant(node.inputs[1]), truth[path_]), f"{node.name} is not {path_}"
        resolved += path_ in truth
    assert resolved == len(truth) or folded


WITH_BN = ["resnet_mini", "densenet_mini", "mobilenetv2_mini", "senet"]
NAME_CASES = ([(arch, exporter, True) for arch in WITH_BN + ["transformer_mini", "vit_mini", "gpt_block"]
               for exporter in ("legacy", "dynamo")]
              + [(arch, "dynamo", False) for arch in WITH_BN])  # dynamo's optimiser folds BN


@pytest.mark.parametrize("arch,exporter,keep_bn", NAME_CASES)
def test_module_paths_name_the_module_that_owns_the_weight(zoo_model, arch, exporter, keep_bn):
    path = zoo_model(arch, exporter, keep_bn)
    module, _ = zoo.make(arch)
    zoo.randomize_(module, seed=0)
    _check_against_truth(path, module, folded=not keep_bn)


def test_a_dotted_suffix_finds_a_wrapped_module_when_unique(zoo_model):
    graph = G.load(zoo_model("transformer_mini", "dynamo")).graph
    full = names.resolve(graph, "blocks.0.attn.proj")
    assert names.resolve(graph, "0.attn.proj") is full  # whole components only
    with pytest.raises(GrowError, match="names 2 layers"):
        names.resolve(graph, "attn.proj")  # blocks.0 and blocks.1
    with pytest.raises(GrowError, match="no layer named 'ttn.proj'"):
        names.resolve(graph, "ttn.proj")


def test_globs_select_by_node_name_or_module_path(zoo_model):
    graph = G.load(zoo_model("resnet_mini", "legacy")).graph
    layer2 = names.select(graph, "layer2.*")
    assert layer2 and all(names.module_path(n).startswith("layer2.") for n in layer2)
    assert len(names.select(graph, "*")) == len(names.layer_names(graph))
    assert names.select(graph, "/stem/*") == [names.resolve(graph, "stem.0")]
    with pytest.raises(GrowError, match="matches no layer"):
        names.select(graph, "nothing.*")


def test_graphs_without_records_keep_node_names():
    teacher = conv_sandwich([helper.make_node("Relu", ["h"], ["m"])])
    assert [names.module_path(n) for n, _ in names.layer_names(G.load(teacher).graph)] == [None, None]
    assert_equivalent(teacher, og.widen(teacher, layer="p", width=6))


def test_inspect_shows_module_paths(zoo_model):
    info = og.inspect(zoo_model("resnet_mini", "dynamo"))
    assert [layer["module"] for layer in info["layers"]][:3] == ["stem.0", "layer1.conv1", "layer1.conv2"]


def test_unknown_and_ambiguous_names_exit_2_with_candidates(mnist, tmp_path):
    paths, _ = mnist
    unknown = _cli("widen", paths["dynamo"], "--layer", "conv3", "--width", "64", "-o", str(tmp_path / "o.onnx"))
    assert unknown.returncode == 2 and "conv1" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_runtime_size_that_cannot_follow_is_refused():
    """view(-1, C·C) equals C·H·W for this teacher, but not once C grows: refuse."""
    middle = [helper.make_node("Shape", ["h"], ["s"]),
              helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
              helper.make_node("Mul", ["c", "c"], ["cc"]),
              helper.make_node("Unsqueeze", ["cc", "axis0"], ["cc1"]),
              helper.make_node("Concat", ["minus1", "cc1"], ["target"], axis=0),
              helper.make_node("Reshape", ["h", "target"], ["f"]),
              helper.make_node("Unsqueeze", ["f", "axes23"], ["m"])]
    inits = [helper.make_tensor("one", 7, [], [1]), ints("axis0", [0]), ints("minus1", [-1]),
             ints("axes23", [2, 3])]
    teacher = conv_sandwich(middle, inits, hw=2, out_channels=16)
    with pytest.raises(GrowError, match="computes the channel dimension of its target shape at run time"):
        og.widen(teacher, layer="p", width=8)


def test_a_shape_read_into_a_value_is_refused_not_widened_wrongly(tmp_path):
    """Legacy exports of attention compute the scale (C/heads)^-0.5 from Shape of the stream under
    a dynamic batch: widening the stream would change it, so it must be refused; the rest exact."""
    module, example = zoo.make("transformer_mini")
    zoo.randomize_(module, 0)
    path = zoo.export(module, example, str(tmp_path / "t.onnx"), exporter="legacy", dynamic_batch=True)
    layers = og.inspect(path)["layers"]
    refused = [layer for layer in layers if "methods" not in layer["widen"]]
    assert any("computes a value from it" in layer["widen"]["reason"] for layer in refused)
    for layer in layers:
        if "methods" in layer["widen"]:
            student = og.widen(path, layer=layer["name"], width=2 * layer["width"])
            for batch in (1, 3):
                ids = np.random.default_rng(batch).integers(0, 10, (batch, 8)).astype(np.int64)
                (want,), (got,) = run(path, {"ids": ids}), run(student, {"ids": ids})
                assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5


@pytest.mark.parametrize("family,variant", [("llama", "dynamo"), ("qwen2", "dynamo"), ("phi3", "dynamo"),
                                            ("gpt_neox", "dynamo"), ("llama", "dynamo_raw")])
def test_transformers_module_paths_name_the_linear_that_owns_the_weight(llm_model, family, variant):
    """Ground truth by weight values on transformers decoders: every nn.Linear's module path
    (and its suffix without the wrapper, `model.layers.0.mlp.up_proj`) resolves to the node that
    holds that Linear's weight (a tied lm_head: the embedding's, transposed)."""
    from tests import llm_zoo

    graph = G.load(llm_model(family, variant)).graph
    module = llm_zoo.make(family)
    linears = {name: m.weight.detach().numpy() for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) >= 8
    for name, weight in linears.items():
        for text in (name, name.removeprefix("lm.")):
            node = names.resolve(graph, text)
            assert _holds(G.constant(node.inputs[1]), weight), f"{text} resolves to {node.name}, not its weight"
