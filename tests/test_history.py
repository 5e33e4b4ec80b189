"""Growth history (onnxgrow/checkpoints/history.py): every transform records what it made from
what, through a window or on the whole graph alike, and steps accumulate across files."""

from __future__ import annotations

import json

import onnx
import pytest

import onnxgrow as og
from onnxgrow import window
from onnxgrow.checkpoints import history


def _history(model: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in model.metadata_props}[history.KEY])


def test_a_window_records_the_history_the_whole_graph_records(llm_model, monkeypatch):
    path = llm_model("llama")
    monkeypatch.setattr(window, "MIN_NODES", 10**9)
    whole = _history(og.widen(path, layer="model.layers.1.mlp.up_proj", width=96))
    monkeypatch.setattr(window, "MIN_NODES", 0)
    windowed = _history(og.widen(path, layer="model.layers.1.mlp.up_proj", width=96))
    assert windowed == whole
    lineage = whole["steps"][0]["lineage"]
    assert len(lineage) >= 3  # up_proj's and gate_proj's... weights and down_proj's columns
    assert all(old in whole["roots"] for old, _, _ in lineage.values())


def test_steps_accumulate_and_lineage_follows_them_to_the_roots(llm_model):
    once = og.grow(llm_model("qwen2"), widen={"*": "x2"})
    twice = og.grow(once, deepen=["model.layers.0:zero"])
    found = _history(twice)
    assert len(found["steps"]) == 2 and found["steps"][1]["copies"][0]["as"].endswith("layers.1")
    live = {t.name for t in twice.graph.initializer}
    origins = history.origins(found, live)
    copied = [name for name, (_, events, _) in origins.items() if events]
    assert copied and all(origins[n][0] in found["roots"] for n in copied)


@pytest.mark.parametrize("values", [[], [3], [0, 1, 2, 3, 7, 7, 7, 1, 0, 5], [-1, -1, 4, 5, 6, 0]])
def test_runs_round_trip(values):
    assert history.unruns(history.runs(values)) == values
