"""Decoder LMs from `transformers` (tests/llm_zoo.py): what widens exactly today, and a refusal
that says why where it does not (grouped-query attention's query/key heads)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxgrow as og
from onnxgrow.errors import GrowError
from tests.helpers import run


def _assert_same(teacher, student):
    for batch, seq in ((2, 5), (3, 9)):
        ids = {"input_ids": np.random.default_rng(seq).integers(0, 50, (batch, seq)).astype(np.int64)}
        (want,), (got,) = run(teacher, ids), run(student, ids)
        assert float(np.abs(got - want).max() / np.abs(want).max()) <= 1e-5


@pytest.mark.parametrize("method", ["net2net", "netmorph", "r2r"])
def test_a_gqa_llama_grows_values_ffn_and_stream_exactly(llm_model, method):
    teacher = llm_model("llama")
    student = og.grow(teacher, widen={"model.layers.*.self_attn.v_proj": "x2", "*mlp.up_proj": "x2",
                                      "model.layers.0.self_attn.o_proj": "x1.5"}, method=method, seed=5)
    _assert_same(teacher, student)


def test_gqa_query_heads_are_refused_with_the_reason(llm_model):
    with pytest.raises(GrowError, match="grouped-query attention"):
        og.widen(llm_model("llama"), layer="model.layers.0.self_attn.k_proj", width=32)
