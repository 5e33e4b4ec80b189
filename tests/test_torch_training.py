"""`onnxgrow.to_torch` speaks PyTorch: torch's layers at the user's module paths, LoRA by module
name, freezing by path, torch.compile over changing batch sizes, outputs as onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnxgrow as og
from tests import llm_zoo, zoo
from tests.helpers import run

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.Embedding,
          nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


def _ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 50, (batch, seq)))


def _matches_ort(model_or_path, module, *inputs, tol=1e-5):
    model = onnx.load(model_or_path) if isinstance(model_or_path, str) else model_or_path
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    want = run(model, {n: x.numpy() for n, x in zip(names, inputs)})[0]
    with torch.no_grad():
        got = module(*inputs)
    got = (got[0] if isinstance(got, tuple) else got).numpy()
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_every_zoo_layer_is_a_torch_layer_at_its_module_path(exporter, zoo_model):
    """The torch model's Conv/Linear/Embedding/BatchNorm/LayerNorm modules, by path and type."""
    missing = []
    for arch in zoo.ARCHITECTURES:
        module = og.to_torch(zoo_model(arch, exporter))
        torch_module, _ = zoo.make(arch)
        got = dict(module.named_modules())
        for path, layer in torch_module.named_modules():
            if isinstance(layer, LAYERS) and not (path in got and isinstance(layer, type(got[path]))
                                                  and isinstance(got[path], LAYERS)):
                missing.append(f"{arch}:{path}")
    assert not missing, missing


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_widened_models_layers_stay_torch_layers_at_their_module_paths(exporter, zoo_model):
    """Growth renames what it grows (`fc1.weight` → `fc1.weight.w32`); the grown model's torch layers
    keep the teacher's module paths and types, their weights the teacher's state-dict names."""
    from onnxgrow.errors import GrowError

    missing, grown_any = [], 0
    for arch in zoo.ARCHITECTURES:
        teacher = onnx.load(zoo_model(arch, exporter))
        try:
            student = og.grow(teacher, widen={"*": "x2"}, method="netmorph")
        except GrowError:  # a graph-output layer, say: nothing grown, nothing to check
            continue
        grown_any += 1
        original, module = og.to_torch(teacher), og.to_torch(student)
        before = {p: type(m) for p, m in original.named_modules() if isinstance(m, LAYERS)}
        after = dict(module.named_modules())
        missing += [f"{arch}:{p}" for p, kind in before.items() if not isinstance(after.get(p), kind)]
        layer_state = {k for k in original.state_dict() if k.rsplit(".", 1)[0] in before}
        assert layer_state <= set(module.state_dict()), arch  # the layers' weights, wider, under the same names
    assert grown_any >= len(zoo.ARCHITECTURES) // 2 and not missing, missing


def test_a_parameter_named_like_a_grown_one_keeps_its_name():
    """What a weight grew from comes from the growth history, not from its name: `mlp.w2` (a
    name `….w{width}` growth could have made) is the user's parameter, and stays `mlp.w2`."""
    import io

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Module()
            self.mlp.w2 = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return x @ self.mlp.w2

    buffer = io.BytesIO()
    torch.onnx.export(Model(), (torch.randn(2, 8),), buffer, dynamo=False, input_names=["x"])
    assert list(og.to_torch(onnx.load_from_string(buffer.getvalue())).state_dict()) == ["mlp.w2"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decoder_parameters_have_the_checkpoints_names_and_values(family, llm_model):
    module = og.to_torch(llm_model(family))
    lm = llm_zoo.make(family)
    native = dict(lm.named_parameters())
    params = dict(module.named_parameters())
    assert set(native) <= set(params)  # every weight under its own name (tied ones once)
    assert isinstance(module.get_submodule("lm.model.layers.0.self_attn.q_proj"), nn.Linear)
    assert isinstance(module.get_submodule("lm.model.embed_tokens"), nn.Embedding)
    assert isinstance(module.get_submodule("lm.model.layers.1.post_attention_layernorm"), nn.RMSNorm)
    assert isinstance(module.get_submodule("lm.model.norm"), nn.RMSNorm)
    for name, p in native.items():
        torch.testing.assert_close(params[name], p, rtol=0, atol=0)


def test_lora_attaches_by_name_starts_unchanged_and_merges_back(llm_model):
    import peft
    path = llm_model("llama")
    module = og.to_torch(path)
    lora = peft.get_peft_model(module, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    adapted = [n for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(adapted) == 2 * 2  # q_proj and v_proj of both layers
    ids = _ids(2, 6)
    _matches_ort(path, lora.eval(), ids)  # LoRA's B starts at zero: the function is unchanged
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for m in lora.modules():  # a trained adapter: B no longer zero
        if isinstance(m, peft.tuners.lora.LoraLayer):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.05)
    with torch.no_grad():
        adapted_out = lora(ids)
    grown = og.load_weights(path, lora)  # merged into q_proj/v_proj, written to their initializers
    grown.ir_version = 10
    want = run(grown, {"input_ids": ids.numpy()})[0]
    np.testing.assert_allclose(want, adapted_out.numpy(), rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(want - run(path, {"input_ids": ids.numpy()})[0]).max() > 1e-3  # and it changed


def test_requires_grad_on_a_module_path_freezes_exactly_that_module(llm_model):
    module = og.to_torch(llm_model("llama")).train()
    module.get_submodule("lm.model.layers.0").requires_grad_(False)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module(_ids(2, 5)).float().pow(2).mean().backward()
    opt.step()
    for name, p in module.named_parameters():
        frozen = name.startswith("lm.model.layers.0.")
        assert torch.equal(p, before[name]) == frozen or (not frozen and "inv_freq" in name), name


def _train_compiled(module, make_inputs, batches, backend):
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=backend)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    for b in batches:
        out = compiled(*make_inputs(b))
        (out[0] if isinstance(out, tuple) else out).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return compiled


@pytest.mark.parametrize("case", ["resnet_mini", "yolo_mini", "vit_mini_mha", "llama"])
def test_torch_compile_trains_over_changing_batch_sizes(case, tmp_path, llm_model):
    """Dynamo captures the whole model without a graph break and recompiles at most once for the
    dynamic batch (aot_eager: dynamo and autograd's tracing, without inductor's C++ build); the
    compiled model in eval mode matches onnxruntime after the trained weights are written back."""
    from torch._dynamo.utils import counters

    if case == "llama":
        path = llm_model("llama")
        make_inputs = lambda b: (_ids(b, 5, seed=b),)  # noqa: E731
    else:
        path = zoo.build(case, "legacy", path=tmp_path / "m.onnx", dynamic_batch=True)
        _, example = zoo.make(case)
        make_inputs = lambda b: (torch.randn(b, *example[0].shape[1:]),)  # noqa: E731
    module = og.to_torch(path)
    counters.clear()
    compiled = _train_compiled(module, make_inputs, (1, 1, 2, 3, 4), "aot_eager")
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2  # static batch 1, then one dynamic graph
    trained = og.load_weights(path, module)
    trained.ir_version = 10
    compiled.eval()
    _matches_ort(trained, compiled, *make_inputs(3), tol=1e-4)


def test_inductor_compiles_forward_backward_and_step(tmp_path):
    """torch.compile's default backend (inductor, C++ on the CPU) trains a converted conv net."""
    from tests.test_torch_export import conv_bn_net

    model = conv_bn_net(np.random.default_rng(0))
    module = og.to_torch(model)
    compiled = _train_compiled(module, lambda b: (torch.randn(b, 3, 6, 5),), (2, 2, 3), "inductor")
    trained = og.load_weights(model, module)
    trained.ir_version = 10
    compiled.eval()
    _matches_ort(trained, compiled, torch.randn(3, 3, 6, 5), tol=1e-4)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_block_copys_layers_take_the_next_item_of_the_container(exporter, zoo_model):
    """Deepening `features.1` puts the copy's torch layers at `features.2.*`, with the original's types,
    and moves the later items one on (`features.2` → `features.3`), as the grown checkpoint numbers
    them; the student computes the teacher's outputs, and the torch module the student's."""
    from onnxgrow import blocks as bl
    import onnx_ir as ir

    checked, wrong = 0, []
    for arch in zoo.ARCHITECTURES:
        teacher = onnx.load(zoo_model(arch, exporter))
        indexed = [b for b in bl.find_blocks(ir.from_proto(teacher)) if _container_item(b.path or "")]
        if not indexed:
            continue
        container, k = _container_item(indexed[0].path)
        student = og.grow(teacher, deepen=[f"{indexed[0].path}:zero"])
        module = og.to_torch(student)
        before = {p: type(m) for p, m in og.to_torch(teacher).named_modules() if isinstance(m, LAYERS)}
        after = {p: type(m) for p, m in module.named_modules() if isinstance(m, LAYERS)}
        want = {}
        for path, kind in before.items():
            index = path[len(container) + 1:].split(".")[0] if path.startswith(container + ".") else ""
            if not index.isdigit():
                want[path] = kind
                continue
            i, rest = int(index), path[len(container) + 1 + len(index):]
            want[f"{container}.{i + (i > k)}{rest}"] = kind
            if i == k:
                want[f"{container}.{k + 1}{rest}"] = kind
        if after != want:
            wrong.append((arch, sorted(set(want) - set(after))[:3], sorted(set(after) - set(want))[:3]))
        inputs = zoo.make(arch)[1]
        feeds = {i.name: x.numpy() for i, x in zip(teacher.graph.input, inputs)}
        np.testing.assert_array_equal(run(student, feeds)[0], run(teacher, feeds)[0])
        _matches_ort(student, module, *inputs)
        checked += 1
    assert checked >= 8 and not wrong, wrong


def _container_item(path: str) -> tuple[str, int] | None:
    container, _, index = path.rpartition(".")
    return (container, int(index)) if container and index.isdigit() else None


def test_a_copy_of_part_of_an_item_leaves_the_numbers_as_they_are():
    """A residual unit followed by a layer of its own item (`items.0.out`): its copy is not a whole
    `items.N`, so no item is renumbered and the copy's layers take paths of their own."""
    import io

    class Item(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.out(torch.relu(x + self.fc(x)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.items = nn.ModuleList([Item(), Item()])

        def forward(self, x):
            for item in self.items:
                x = item(x)
            return x

    buffer = io.BytesIO()
    torch.onnx.export(Model(), (torch.randn(2, 8),), buffer, dynamo=False, input_names=["x"])
    teacher = onnx.load_from_string(buffer.getvalue())
    student = og.grow(teacher, deepen=["items.0:zero"])
    before = {p for p, m in og.to_torch(teacher).named_modules() if isinstance(m, nn.Linear)}
    after = {p for p, m in og.to_torch(student).named_modules() if isinstance(m, nn.Linear)}
    assert before == {"items.0.fc", "items.0.out", "items.1.fc", "items.1.out"}
    assert before < after and len(after) == 5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_grown_decoders_parameters_are_its_grown_folders(family, llm_model, hf_folder, tmp_path):
    """Widened and deepened (a copy after each block): to_torch's parameters are the grown
    Hugging Face folder's, name for name (the copies at `model.layers.1` and `.3`) and value for value."""
    import transformers
    from pathlib import Path

    from onnxgrow.checkpoints import hf

    student = og.grow(llm_model(family), widen={"*": "x2"}, deepen=["0:zero", "1:zero"])
    hf.export_folder(student, Path(hf_folder(family)), tmp_path / "out")
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    native = dict(lm.named_parameters())
    module = og.to_torch(student)
    params = dict(module.named_parameters())
    assert len(native) > 20 and {f"lm.{k}" for k in native} <= set(params), sorted(set(params))[:10]
    for name, p in native.items():
        torch.testing.assert_close(params[f"lm.{name}"], p, rtol=0, atol=0)
    # the user's own class takes to_torch's state dict as it is (strict), and computes the grown ONNX's logits
    state = {k[len("lm."):]: v for k, v in module.state_dict().items() if k.startswith("lm.")}
    lm.load_state_dict({k: v for k, v in state.items() if k in lm.state_dict()}, strict=True)
    ids = np.random.default_rng(3).integers(0, llm_zoo.VOCAB, (2, 6))
    with torch.no_grad():
        got = lm(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    want = run(student, {"input_ids": ids})[0]
    assert np.abs(got - want).max() <= 5e-5 * np.abs(want).max()
