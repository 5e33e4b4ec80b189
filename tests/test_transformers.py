"""Decoder LMs from `transformers` (tests/llm_zoo.py): values, FFN and stream, and attention heads
under RoPE with grouped-query and multi-query attention, checked at several batch and sequence
lengths (at one token attention ignores the queries and keys, so a wrong head would not show)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.helpers import run


def _assert_same(teacher, student):
    for batch, seq in ((2, 5), (3, 9), (1, 1)):
        ids = {"input_ids": np.random.default_rng(seq).integers(0, 50, (batch, seq)).astype(np.int64)}
        (want,), (got,) = run(teacher, ids), run(student, ids)
        assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-5


# raw exports of transformers' default attention (scaled_dot_product_attention): torch's exporter decomposes
# it reading the heads' count from the repeated keys' shape at run time
RAW_SDPA = [("llama", "dynamo_raw_sdpa"), ("qwen2", "dynamo_raw_sdpa"), ("mistral", "dynamo_raw_sdpa")]


@pytest.mark.parametrize("family,variant", [("llama", "dynamo"), *RAW_SDPA])
@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
def test_a_gqa_decoder_grows_values_ffn_and_stream_exactly(llm_model, family, variant, method):
    teacher = llm_model(family, variant)
    student = og.grow(teacher, widen={"model.layers.*.self_attn.v_proj": "x2", "*mlp.up_proj": "x2",
                                      "model.layers.0.self_attn.o_proj": "x1.5"}, method=method, seed=5)
    _assert_same(teacher, student)


# family, variant, query heads → kv heads of the tiny models: llama/mistral/qwen GQA 4 → 2, gemma MQA 4 → 1
HEADS = [("llama", "dynamo"), ("llama", "dynamo_raw"), ("mistral", "dynamo"), ("qwen2", "dynamo"),
         ("qwen3", "dynamo"), ("gemma", "dynamo"), ("llama", "dynamo_sdpa"), *RAW_SDPA]


# what widening one projection to twice its width grows: the factor of each projection's width
HEAD_GROWTH = {
    # query heads join every key/value head's group (2 → 4 per kv head; gemma's single kv head 4 → 8);
    # the key/value heads stay
    ("q_proj", 0): {"q_proj": 2, "k_proj": 1, "v_proj": 1},
    # key/value heads (2 → 4; gemma's one → 2), each with a full group of query heads: all grow
    ("k_proj", 1): {"q_proj": 2, "k_proj": 2, "v_proj": 2},
}


@pytest.mark.parametrize("family,variant", HEADS)
@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
@pytest.mark.parametrize("widened,layer", list(HEAD_GROWTH))
def test_heads_grow_by_whole_key_value_groups(llm_model, family, variant, method, widened, layer):
    teacher = llm_model(family, variant)
    scope = f"layers.{layer}.self_attn."
    before = _out_widths(teacher, scope)
    student = og.widen(teacher, layer=f"model.{scope}{widened}", width=2 * before[widened], method=method,
                       seed=3 + layer)
    _assert_same(teacher, student)
    assert _out_widths(student, scope) == {p: f * before[p] for p, f in HEAD_GROWTH[widened, layer].items()}


def test_an_odd_number_of_query_heads_per_group_is_refused_for_r2r_with_what_works(llm_model):
    with pytest.raises(GrowError, match=r"one per key/value head .*--width 64"):
        og.widen(llm_model("llama"), layer="model.layers.0.self_attn.q_proj", width=48, method="r2r")


def test_inspect_promises_heads_on_grouped_query_attention(llm_model):
    rows = {r["module"]: r for r in og.inspect(llm_model("llama"))["layers"]}
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert rows[f"lm.model.layers.0.self_attn.{proj}"]["widen"]["methods"][:3] == ["net2net", "netmorph", "r2r"]


def _out_width(model, suffix: str) -> int:
    return next(r["width"] for r in og.inspect(model)["layers"] if r["module"].endswith(suffix))


def _out_widths(model, scope: str) -> dict:
    """{projection: output width} of the q, k and v projections under `scope` (one inspect)."""
    rows = og.inspect(model)["layers"]
    return {p: next(r["width"] for r in rows if r["module"].endswith(scope + p)) for p in ("q_proj", "k_proj", "v_proj")}


@pytest.mark.parametrize("family,variant,layer", [
    ("phi3", "dynamo", "model.layers.0.self_attn.qkv_proj"),  # Slices of the fused qkv
    ("phi3", "dynamo_raw", "model.layers.0.self_attn.qkv_proj"),
    ("phi3", "dynamo_raw", "model.layers.1.mlp.gate_up_proj"),  # SplitToSequence (torch.chunk, raw)
    ("gpt_neox", "dynamo_raw", "gpt_neox.layers.0.attention.query_key_value"),  # per-head interleaved, raw
])
@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
def test_fused_projections_grow_per_part(llm_model, family, variant, layer, method):
    teacher = llm_model(family, variant)
    width = _out_width(teacher, layer)
    student = og.widen(teacher, layer=layer, width=2 * width, method=method, seed=6)
    _assert_same(teacher, student)
    assert _out_width(student, layer) == 2 * width


@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
def test_a_norm_over_all_heads_keeps_its_statistics_under_whole_head_copies(llm_model, method):
    """OLMo2's q_norm/k_norm average over every head of q and k: doubling the heads copies each
    one equally often (uniform replication), exact; 1.5× is refused with the multiple that works."""
    teacher = llm_model("olmo2")
    student = og.widen(teacher, layer="model.layers.0.self_attn.q_proj", width=64, method=method, seed=2)
    _assert_same(teacher, student)
    with pytest.raises(GrowError, match="multiple of 32.*copied equally often"):
        og.widen(teacher, layer="model.layers.0.self_attn.q_proj", width=48, method=method)


@pytest.mark.parametrize("family,variant", [("llama", "dynamo"), ("gemma", "dynamo"), ("phi3", "dynamo_raw"),
                                            ("qwen2", "dynamo_raw"), ("mistral", "dynamo_raw"), *RAW_SDPA])
def test_grow_star_x2_doubles_every_layer_but_the_head_exactly(llm_model, family, variant):
    """`grow --widen '*=x2'` on a grouped/multi-query decoder: key/value heads double with their
    query groups (k_proj's group first), so q, k, v, o, the FFN and the stream all double; only the
    LM head, whose output is the logits, stays."""
    teacher = llm_model(family, variant)
    rows = og.inspect(teacher)["layers"]
    assert [r["module"] for r in rows if not r["widen"].get("methods")] == ["lm.lm_head"]
    widenable = {r["name"]: r["width"] for r in rows if r["widen"].get("methods")}
    student = og.grow(teacher, widen={"*": "x2"})
    _assert_same(teacher, student)
    after = {r["name"]: r["width"] for r in og.inspect(student)["layers"]}
    assert {n: after[n] for n in widenable} == {n: 2 * w for n, w in widenable.items()}
