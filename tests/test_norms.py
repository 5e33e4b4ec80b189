"""A normalised residual stream grown to any width (onnxgrow/padding.py): RMSNorm by zero padding,
pre-norm LayerNorm by mean padding, tied embeddings kept tied, post-norm refused for
non-multiples, multiples unchanged (uniform replication)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnxgrow as og
from onnxgrow import graph as g
from onnxgrow import groups as gr
from onnxgrow.errors import GrowError
from onnxgrow.padding import pad_value
from tests.helpers import SCALED_TOL, run, scaled_errors
from tests.llm_zoo import LogitsOnly

PRESERVING = ("net2net", "netmorph", "r2r")


# ----------------------------------------------------------------------------- the maths, in numpy

def rms_norm(x, gain, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * gain


def layer_norm(x, gain, bias, eps):
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c ** 2).mean(-1, keepdims=True) + eps) * gain + bias


def test_rms_norm_of_a_zero_padded_stream():
    rng = np.random.default_rng(0)
    d, d2, eps = 8, 13, 1e-3
    x, gain = rng.normal(size=(4, d)), rng.uniform(0.5, 1.5, d)
    padded = np.concatenate([x, np.zeros((4, d2 - d))], 1)
    gain2 = np.concatenate([gain * np.sqrt(d / d2), rng.normal(size=d2 - d)])
    y = rms_norm(padded, gain2, eps * d / d2)
    np.testing.assert_allclose(y[:, :d], rms_norm(x, gain, eps), rtol=1e-12)
    np.testing.assert_array_equal(y[:, d:], 0.0)


def test_layer_norm_of_a_mean_padded_stream():
    rng = np.random.default_rng(1)
    d, d2, eps = 8, 11, 1e-5
    x, gain, bias = rng.normal(size=(4, d)), rng.uniform(0.5, 1.5, d), rng.normal(size=d)
    padded = np.concatenate([x, np.repeat(x.mean(-1, keepdims=True), d2 - d, 1)], 1)
    gain2 = np.concatenate([gain * np.sqrt(d / d2), rng.normal(size=d2 - d)])
    y = layer_norm(padded, gain2, np.concatenate([bias, np.zeros(d2 - d)]), eps * d / d2)
    np.testing.assert_allclose(y[:, :d], layer_norm(x, gain, bias, eps), rtol=1e-10)
    np.testing.assert_allclose(y[:, d:], 0.0, atol=1e-12)


def test_mean_padded_rows_give_mean_padded_outputs():
    rng = np.random.default_rng(2)
    w, x = rng.normal(size=(6, 5)), rng.normal(size=(3, 6))  # x @ W, 5 output channels
    view = w.reshape(1, 1, 6, 1, 5).transpose(0, 1, 4, 3, 2)  # channels on axis 2
    new = pad_value(view, "mean", 3).transpose(0, 1, 4, 3, 2).reshape(6, 3)
    out = x @ np.concatenate([w, new], 1)
    np.testing.assert_allclose(out[:, 5:], np.repeat(out[:, :5].mean(1, keepdims=True), 3, 1))


# ----------------------------------------------------------------------------- tiny Llama

def _export_llama(path: str, tied: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                      vocab_size=64, intermediate_size=48, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every parameter random, norm gains included
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.3)

    ids = torch.randint(0, 64, (2, 5))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    program = torch.onnx.export(LogitsOnly(model).eval(), (ids,), dynamic_shapes=({0: batch, 1: seq},), dynamo=True,
                                input_names=["ids"], output_names=["logits"])
    proto = program.model_proto
    proto.ir_version = 10
    onnx.save(proto, path)


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp().parent / "onnxgrow-zoo-cache"
    cache.mkdir(exist_ok=True)

    def build(tied: bool = False) -> str:
        path = cache / f"llama-tiny{'-tied' if tied else ''}.onnx"
        if not path.exists():
            tmp = cache / f".{os.getpid()}-{path.name}"
            _export_llama(str(tmp), tied)
            os.replace(tmp, path)
        return str(path)

    return build


def stream_layer(path: str) -> str:
    """A producer of the residual stream: a weight layer whose group holds an embedding Gather."""
    model = g.load(path)
    g.infer_shapes(model)
    for node in model.graph:
        if g.is_weight_layer(node) and node.op_type == "MatMul":
            try:
                group = gr.find_group(node)
            except GrowError:
                continue
            if group.norms and any(e.node.op_type == "Gather" for e in group.edits):
                return node.name
    raise AssertionError("no stream producer found")


def errors_on(teacher, student, shapes):
    errs = []
    for seed, (b, t) in enumerate(shapes):
        feeds = {"ids": np.random.default_rng(seed).integers(0, 64, size=(b, t)).astype(np.int64)}
        (a,), (s,) = run(teacher, feeds), run(student, feeds)
        assert a.shape == s.shape
        errs.append(float(np.abs(a - s.astype(np.float64)).max() / np.abs(a).max()))
    return errs


@pytest.mark.parametrize("method", PRESERVING)
def test_llama_stream_to_one_and_a_half_times(llama, method):
    path = llama()
    student = og.widen(path, layer=stream_layer(path), width=48, method=method)
    assert max(errors_on(path, student, [(2, 5), (3, 9)])) <= SCALED_TOL
    norm_gains = [i for i in student.graph.initializer if i.name.endswith("norm.weight")]
    assert not norm_gains or all(i.dims[0] == 32 for i in norm_gains)  # grown copies have new names


def test_llama_stream_multiple_still_uniform(llama):
    path = llama()
    for method in PRESERVING:
        student = og.widen(path, layer=stream_layer(path), width=64, method=method)
        assert max(errors_on(path, student, [(2, 5), (1, 3)])) <= SCALED_TOL


def test_llama_tied_embedding_stays_tied(llama):
    path = llama(tied=True)
    student = og.widen(path, layer=stream_layer(path), width=40, method="net2net")
    assert max(errors_on(path, student, [(2, 5), (3, 9)])) <= SCALED_TOL
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in student.graph.initializer}
    table = next(w for w in weights.values() if w.shape == (64, 40))
    assert any(w.shape == (40, 64) and np.array_equal(w, table.T) for w in weights.values())


def test_shared_initializer_embedding_stays_one_initializer(tmp_path):
    import torch
    from torch import nn

    class TinyLM(nn.Module):
        def __init__(self, vocab=20, d=8):
            super().__init__()
            self.emb, self.gain1, self.gain2 = nn.Embedding(vocab, d), nn.Parameter(torch.rand(d) + .5), \
                nn.Parameter(torch.rand(d) + .5)
            self.fc, self.out = nn.Linear(d, 16), nn.Linear(16, d)

        def norm(self, x, gain):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * gain

        def forward(self, ids):
            x = self.emb(ids)
            x = x + self.out(torch.relu(self.fc(self.norm(x, self.gain1))))
            return self.norm(x, self.gain2) @ self.emb.weight.T

    torch.manual_seed(0)
    path = str(tmp_path / "tied.onnx")
    torch.onnx.export(TinyLM().eval(), (torch.randint(0, 20, (2, 5)),), path, dynamo=False,
                      do_constant_folding=False, input_names=["ids"], output_names=["logits"], dynamic_axes={"ids": {0: "b", 1: "t"}})
    proto = onnx.load(path)
    proto.ir_version = 10
    onnx.save(proto, path)
    student = og.widen(path, layer=stream_layer(path), width=13, method="net2net")
    feeds_shapes = [(2, 5), (1, 7)]
    errs = []
    for seed, (b, t) in enumerate(feeds_shapes):
        feeds = {"ids": np.random.default_rng(seed).integers(0, 20, size=(b, t)).astype(np.int64)}
        (a,), (s,) = run(path, feeds), run(student, feeds)
        errs.append(float(np.abs(a - s).max() / np.abs(a).max()))
    assert max(errs) <= SCALED_TOL
    teacher_tables = [i for i in onnx.load(path).graph.initializer if list(i.dims) == [20, 8]]
    assert len(teacher_tables) == 1  # Gather and the head's Transpose read one initializer
    assert len([i for i in student.graph.initializer if list(i.dims) == [20, 13]]) == 1
    assert not [i for i in student.graph.initializer if list(i.dims) == [13, 20]]


# ----------------------------------------------------------------------------- LayerNorm stacks

@pytest.mark.parametrize("arch", ["transformer_mini", "vit_mini", "vit_mini_mha"])
@pytest.mark.parametrize("method", PRESERVING)
def test_pre_norm_layernorm_stream_to_one_and_a_half_times(zoo_model, arch, method):
    path = zoo_model(arch, "dynamo")
    layer = _normalised_producer(path)
    student = og.widen(path, layer=layer, width=24, method=method)
    assert max(scaled_errors(path, student)) <= SCALED_TOL


def _normalised_producer(path: str) -> str:
    model = g.load(path)
    g.infer_shapes(model)
    for node in model.graph:
        if not g.is_weight_layer(node):
            continue
        try:
            group = gr.find_group(node)
        except GrowError:
            continue
        if group.norms and group.width == 16:
            return node.name
    raise AssertionError("no normalised stream")


def test_post_norm_refuses_non_multiples_and_keeps_multiples(zoo_model):
    path = zoo_model("bert_layer", "legacy")
    layer = _normalised_producer(path)
    with pytest.raises(GrowError, match="post-norm") as info:
        og.widen(path, layer=layer, width=24)
    assert "multiple of 16" in str(info.value)
    for method in PRESERVING:
        assert max(scaled_errors(path, og.widen(path, layer=layer, width=32, method=method))) <= SCALED_TOL


def test_summary_says_how_the_stream_grew(llama):
    from onnxgrow.widening import widen_model

    path = llama()
    summary = widen_model(g.load(path), layer=stream_layer(path), width=48, method="net2net")
    assert any("zero padding" in line and "net2net cannot split" in line for line in summary["lines"])


# ----------------------------------------------------------------------------- tests/llm_zoo.py

@pytest.fixture(scope="session")
def llm_path(tmp_path_factory):
    from tests import llm_zoo

    cache = tmp_path_factory.getbasetemp().parent / "onnxgrow-zoo-cache"
    cache.mkdir(exist_ok=True)

    def build(family: str) -> str:
        path = cache / f"llm-{family}.dynamo.onnx"
        if not path.exists():
            tmp = cache / f".{os.getpid()}-{path.name}"
            llm_zoo.build(family, "dynamo", tmp)
            os.replace(tmp, path)
        return str(path)

    return build


@pytest.mark.parametrize("family", ["gpt_neox"])  # LayerNorm, parallel residual (Llama: above)
def test_llm_zoo_stream_to_one_and_a_half_times(llm_path, family):
    path = llm_path(family)
    layer = stream_layer(path)
    for method in PRESERVING:
        student = og.widen(path, layer=layer, width=48, method=method)
        feeds = [{"input_ids": np.random.default_rng(s).integers(0, 50, size=shape).astype(np.int64)}
                 for s, shape in enumerate([(2, 5), (3, 7)])]
        for feed in feeds:
            (a,), (b,) = run(path, feed), run(student, feed)
            assert np.abs(a - b).max() / np.abs(a).max() <= SCALED_TOL


def test_gemma_style_one_plus_w_gain_hand_built():
    """RMSNorm whose gain is computed as (1 + w): w's old entries become (1 + w)·√(d/d′) − 1.
    d = 4100: above the size onnxgrow folds constant expressions at, so 1 + w stays computed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    const = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="p"),
             helper.make_node("Pow", ["h", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]),
             helper.make_node("Mul", ["h", "inv"], ["normed"]),
             helper.make_node("Add", ["w", "one"], ["gain"]),
             helper.make_node("Mul", ["normed", "gain"], ["n"]),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="c")]
    inits = [const("w1", rng.normal(size=(4, 4100))), const("two", 2.0), const("eps", 1e-2),
             const("w", rng.normal(size=4100)), const("one", 1.0), const("w2", rng.normal(size=(4100, 3))),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "gemma_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    for method in PRESERVING:
        student = og.widen(model, layer="p", width=4105, method=method)
        assert max(scaled_errors(model, student)) <= SCALED_TOL


# ----------------------------------------------------------------------------- og.grow(pad_streams=, new_std=)

def _stream_table(model) -> np.ndarray:
    """The embedding table (the Gather's data) of a grown LM."""
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    return next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == gather.input[0])


@pytest.mark.parametrize("method", PRESERVING)
def test_pad_streams_pads_a_stream_at_a_multiple_exactly(llama, method):
    """x2 copies an RMS stream's channels; with pad_streams the new channels start at zero (the
    embedding's new columns 0) and the model is as exact."""
    path = llama()
    copied = og.grow(path, widen={"*": "x2"}, method=method)
    padded, done = og.grow(path, widen={"*": "x2"}, method=method, pad_streams=True, with_summary=True)
    assert max(errors_on(path, padded, [(2, 5), (3, 9)])) <= SCALED_TOL
    assert not _stream_table(padded)[:, 32:].any() and _stream_table(copied)[:, 32:].any()
    assert any("zero padding" in line for line in done["lines"])


def test_pad_streams_copies_where_padding_would_not_stay_exact(zoo_model):
    """A post-norm LayerNorm stack keeps its copies at a multiple (padding is refused there), and
    the summary says so; the student is exact."""
    path = zoo_model("bert_layer", "legacy")
    student, done = og.grow(path, widen={_normalised_producer(path): 32}, method="netmorph", pad_streams=True,
                            with_summary=True)
    assert max(scaled_errors(path, student)) <= SCALED_TOL
    assert any("copied, not padded" in line for line in done["lines"])


@pytest.mark.parametrize("arch", ["transformer_mini", "vit_mini"])
def test_pad_streams_mean_pads_a_pre_norm_layernorm_stream_at_a_multiple(zoo_model, arch):
    path = zoo_model(arch, "dynamo")
    student, done = og.grow(path, widen={_normalised_producer(path): 32}, method="netmorph", pad_streams=True,
                            with_summary=True)
    assert max(scaled_errors(path, student)) <= SCALED_TOL
    assert any("mean padding" in line for line in done["lines"])


@pytest.mark.parametrize("method", ["netmorph", "r2r", "random"])
def test_new_std_draws_the_new_units_at_that_scale(llama, method):
    """The new units' random weights (an MLP's new up rows; the padded stream's new reader columns)
    have std ≈ new_std, not the trained weight's; preserving methods stay exact."""
    path = llama()
    teacher = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    student = og.grow(path, widen={"*": "x2"}, method=method, pad_streams=True, new_std=0.003)
    relative = og.grow(path, widen={"*": "x2"}, method=method, pad_streams=True, new_std="x0.01")
    if method != "random":
        assert max(errors_on(path, student, [(2, 5)])) <= SCALED_TOL
    new_parts = []
    for init in student.graph.initializer:
        w = onnx.numpy_helper.to_array(init)
        old = next((t for t in teacher.values() if w.ndim == 2 and t.ndim == 2 and t.shape[1] == w.shape[1]
                    and t.shape[0] * 2 == w.shape[0] and np.array_equal(w[:t.shape[0]], t)), None)
        if old is not None and np.std(old) > 0.05:  # rows kept, rows added: the added ones are new units
            new_parts.append(w[old.shape[0]:])
    assert new_parts, "no widened weight with kept rows found"
    stds = [float(np.std(part)) for part in new_parts if part.any()]
    assert stds and all(0.002 < s < 0.0045 for s in stds), stds
    if method != "random":
        assert max(errors_on(path, relative, [(2, 5)])) <= SCALED_TOL
    grown = {i.name: onnx.numpy_helper.to_array(i) for i in relative.graph.initializer}
    assert any(w.shape == (2 * t.shape[0], t.shape[1]) and np.array_equal(w[:t.shape[0]], t)
               and 0.005 < np.std(w[t.shape[0]:]) / np.std(t) < 0.02 for t in teacher.values() if t.ndim == 2
               and np.std(t) > 0.05 for w in grown.values())


@pytest.mark.parametrize("bad", [0.0, -0.02, float("nan"), float("inf"), True, "x0", "x-1", "xx", "abc", [0.02]])
def test_new_std_must_be_a_positive_number_or_a_positive_factor(llama, bad):
    with pytest.raises(GrowError, match="new_std"):
        og.grow(llama(), widen={"*": "x2"}, method="netmorph", new_std=bad)


def test_new_std_as_a_factor_of_each_weights_own():
    """"x0.5": the new units' random weights at half each grown weight's own std, whatever its scale."""
    from onnxgrow.growth import parse_new_std
    from onnxgrow.widening import new_sigma

    assert parse_new_std("x0.50") == "x0.5" and parse_new_std("0.02") == 0.02 and parse_new_std(None) is None
    for scale in (0.01, 3.0):
        w = np.random.default_rng(0).normal(0.0, scale, (64, 64))
        assert new_sigma("x0.5", w) == pytest.approx(0.5 * np.std(w))
        assert new_sigma(0.02, w) == 0.02 and new_sigma(None, w) == pytest.approx(np.std(w))


def test_cli_grow_pads_and_draws_at_new_std_and_refuses_a_bad_one(llama, tmp_path, capsys):
    from onnxgrow import cli

    def exit_code(*argv):
        with pytest.raises(SystemExit) as done:
            cli.main(["grow", llama(), *argv])
        return done.value.code

    out = tmp_path / "s.onnx"
    assert exit_code("--widen", "*=x2", "--method", "netmorph", "--pad-streams", "--new-std", "0.02", "-o", str(out)) == 0
    assert not _stream_table(onnx.load(out))[:, 32:].any()
    capsys.readouterr()
    assert exit_code("--widen", "*=x2", "--method", "netmorph", "--new-std", "x0.5", "-o", str(tmp_path / "x.onnx")) == 0
    assert exit_code("--widen", "*=x2", "--new-std", "-1", "-o", str(tmp_path / "bad.onnx")) == 2
    assert "new_std" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()
    plan = tmp_path / "plan.json"
    plan.write_text('{"widen": {"*": "x2"}, "method": "netmorph", "pad_streams": true, "new_std": 0.02}')
    assert exit_code("--plan", str(plan), "-o", str(tmp_path / "p.onnx")) == 0
    assert not _stream_table(onnx.load(tmp_path / "p.onnx"))[:, 32:].any()
