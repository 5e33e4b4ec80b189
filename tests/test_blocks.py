"""Whole-block copies (onnxgrow/blocks.py): a residual block copied after itself computes what the
model did — bitwise with `zero`, to rounding with `r2r` — on transformers decoders (with a
dynamic batch and sequence) and on CNN blocks, and its weights train from the first step."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnxgrow as og
from onnxgrow import blocks, cli
from onnxgrow import graph as G
from onnxgrow.errors import GrowError
from tests.helpers import run


def _feeds(path, batch, seq):
    return {"input_ids": np.random.default_rng(batch * seq).integers(0, 50, (batch, seq)).astype(np.int64)}


def _assert_same(teacher, student, tol):
    for batch, seq in ((2, 5), (3, 9)):
        feeds = _feeds(teacher, batch, seq)
        (want,), (got,) = run(teacher, feeds), run(student, feeds)
        assert float(np.abs(got - want).max() / np.abs(want).max()) <= tol


def _count(model, op):
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    return sum(n.op_type == op for n in proto.graph.node)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3", "gpt_neox"])
def test_copying_the_first_transformer_layer_is_exact_and_adds_an_attention(llm_model, family):
    teacher = llm_model(family)
    promised = og.inspect(teacher)["blocks"][0]
    assert promised["attention"] and "zero" in promised["methods"]
    assert family == "phi3" or "r2r" in promised["methods"]  # phi3: its fused qkv is not paired yet
    for method in promised["methods"]:
        student = og.deepen(teacher, block="0", method=method, seed=1)
        _assert_same(teacher, student, 0.0 if method == "zero" else 1e-5)
        assert _count(student, "Softmax") == _count(teacher, "Softmax") + 1


def test_blocks_are_named_by_module_path_suffix_or_index(llm_model):
    teacher = llm_model("llama")
    m = G.load(teacher)
    found = blocks.find_blocks(m)
    assert [b.path for b in found] == ["lm.model.layers.0", "lm.model.layers.1"]
    assert all(b.describe()["attention"] and len(b.units) == 2 for b in found)
    assert blocks.resolve_block(found, "model.layers.1") is found[1]
    with pytest.raises(GrowError, match="no residual block 'model.layers.5'.*0 \\(lm.model.layers.0\\)"):
        blocks.resolve_block(found, "model.layers.5")


def test_a_units_owner_is_the_innermost_indexed_item_over_its_layers():
    """`0.mlp.fc1`, `0.mlp.fc2` (a top-level Sequential) belong to block `0`; nn.MultiheadAttention's
    `blocks.0.attn.attn` and the MLP of `blocks.0` make one block, `blocks.0`."""
    import io
    from torch import nn

    from tests import zoo

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP()

        def forward(self, x):
            return x + self.mlp(x)

    buffer = io.BytesIO()
    torch.onnx.export(nn.Sequential(Block(), Block()), (torch.randn(2, 8),), buffer, dynamo=False)
    assert [b.path for b in blocks.find_blocks(G.load(onnx.load_from_string(buffer.getvalue())))] == ["0", "1"]
    module, inputs = zoo.make("vit_mini_mha")
    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), inputs, buffer, dynamo=False)
    found = blocks.find_blocks(G.load(onnx.load_from_string(buffer.getvalue())))
    assert [(b.path, len(b.units)) for b in found] == [("blocks.0", 2), ("blocks.1", 2)]


@pytest.mark.parametrize("plan", [["0:zero", "1:zero"], ["1:zero", "0:r2r", "1:zero"], ["model.layers.1:zero", "0:zero"]])
def test_block_indices_in_a_plan_name_the_given_models_blocks(llm_model, plan):
    """A copy counts as blocks of its own (its nodes have no module path, so each of its units is
    one): `--deepen 0:zero --deepen 1:zero` must still copy the teacher's blocks 0 and 1."""
    teacher = llm_model("llama")
    student, done = og.grow(teacher, deepen=plan, with_summary=True)
    want = [f"lm.model.layers.{spec.partition(':')[0][-1]}" for spec in plan]
    assert [i["block"]["path"] for i in done["insertions"]] == want
    _assert_same(teacher, student, 1e-5)


def test_raw_dynamo_export_and_a_grow_plan(llm_model):
    teacher = llm_model("llama", "dynamo_raw")
    student = og.grow(teacher, widen={"*mlp.up_proj": "x2"}, deepen=["model.layers.1:r2r", "model.layers.0:zero"])
    _assert_same(teacher, student, 1e-5)
    assert _count(student, "Softmax") == _count(teacher, "Softmax") + 2


@pytest.mark.parametrize("arch,exporter,block", [("resnet_mini", "legacy", "0"), ("resnet_bottleneck", "dynamo", "0"),
                                                 ("convnext_mini", "dynamo", "1"), ("transformer_mini", "legacy", "blocks.1"),
                                                 ("mobilenetv2_mini", "dynamo", "0"), ("senet", "legacy", "0")])
def test_cnn_and_vision_blocks_copy_exactly(zoo_model, arch, exporter, block):
    from tests.helpers import assert_equivalent

    teacher = zoo_model(arch, exporter)
    methods = next(b["methods"] for b in og.inspect(teacher)["blocks"] if str(b["index"]) == block or b["path"] == block)
    assert "zero" in methods
    for method in methods:  # every promised method works
        assert_equivalent(teacher, og.deepen(teacher, block=block, method=method, seed=2))


def test_r2r_gives_every_copied_projection_a_gradient_zero_only_the_output_projections(llm_model):
    """With the block's output 0 for every input, a parameter that only shapes the input of the
    paired layers (a norm gain) gets no gradient at the first step under either method; r2r gives
    one to every projection (heads paired whole in multi-head attention), zero only to the
    zeroed output projections."""
    teacher = llm_model("gpt_neox")
    live = {}
    for method in ("zero", "r2r"):
        module = og.to_torch(og.deepen(teacher, block="1", method=method, seed=3))
        module.train()
        out = module(torch.from_numpy(_feeds(teacher, 2, 6)["input_ids"]))
        (out[0] if isinstance(out, (list, tuple)) else out).pow(2).mean().backward()
        grads = {module.onnx_names.get(n, n): float(p.grad.abs().max()) for n, p in module.named_parameters()
                 if p.grad is not None}
        copied = {n: v for n, v in grads.items() if ".copy" in n or ".r2r" in n or ".zero" in n}
        live[method] = {n for n, v in copied.items() if v > 1e-8}
        if method == "r2r":
            assert all("layernorm" in n for n in set(copied) - live[method]), set(copied) - live[method]
    assert len(live["r2r"]) > len(live["zero"]) > 0


def test_cli_block_copy_and_refusals(llm_model, tmp_path, capsys):
    teacher, out = llm_model("llama"), tmp_path / "deep.onnx"
    with pytest.raises(SystemExit) as done:
        cli.main(["deepen", teacher, "--block", "model.layers.0", "--method", "r2r", "-o", str(out)])
    assert done.value.code == 0 and "copied" in capsys.readouterr().out and out.exists()
    for argv, match in ((["--block", "9"], "no residual block"), (["--block", "0", "--after", "x"], "exactly one"),
                        (["--block", "0", "--method", "net2net"], "unknown block method"),
                        (["--block", "0", "--kernel", "3"], "--kernel and --bn")):
        with pytest.raises(SystemExit) as done:
            cli.main(["deepen", teacher, *argv, "-o", str(tmp_path / "x.onnx")])
        assert done.value.code == 2 and match in capsys.readouterr().err
