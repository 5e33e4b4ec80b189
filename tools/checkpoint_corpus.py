"""Checkpoints never seen: random transformers configs of every family, grown by random plans and
written back as folders, each compared with the grown ONNX by loading it with transformers.

    python tools/checkpoint_corpus.py --models 30 --seed 1 [--out /tmp/ckpt-corpus] [--json R.json]

Per model: a random config (layers 1-3, head size 4-16, heads 2-6, key/value groups where the
family has them, FFN 2-4x, tied or not where the family allows), random weights (every parameter,
norm gains included), saved with save_pretrained; then one random plan: '*=x2', '*=x1.5', a block
copy (zero or r2r) at a random index, or a widening followed by a copy in a second growth step.
Outcomes: exact (the folder's logits match the grown ONNX's by the verify rule), refused (exit 2
with a reason: the plan or the config cannot be expressed), wrong (written but not matching: a bug),
crashed (an exception that is not a refusal: a bug).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "olmo2", "phi3", "gpt_neox", "gpt2")


def random_config(family: str, rng: random.Random):
    import transformers as tf

    head = rng.choice([4, 8, 16])
    kv = rng.choice([1, 2])
    heads = kv * rng.choice([1, 2, 3])
    hidden = head * heads
    common = dict(vocab_size=rng.choice([50, 64, 97]), hidden_size=hidden,
                  intermediate_size=hidden * rng.choice([2, 3, 4]), num_hidden_layers=rng.choice([1, 2, 3]),
                  num_attention_heads=heads, max_position_embeddings=64, attn_implementation="eager")
    tied = rng.random() < 0.5
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=common["vocab_size"], n_embd=hidden, n_layer=common["num_hidden_layers"],
                             n_head=heads, n_positions=64, attn_implementation="eager")
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**common, rotary_pct=rng.choice([0.25, 0.5, 1.0]), tie_word_embeddings=tied,
                                use_parallel_residual=rng.random() < 0.5)
    if family == "phi3":
        return tf.Phi3Config(**common, num_key_value_heads=heads, tie_word_embeddings=False, pad_token_id=0)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "mistral": tf.MistralConfig,
           "gemma": tf.GemmaConfig, "olmo2": tf.Olmo2Config}[family]
    extra = {"head_dim": head} if family in ("qwen3", "gemma") else {}
    if family == "mistral":
        extra["sliding_window"] = None
    return cls(**common, num_key_value_heads=kv, tie_word_embeddings=tied, **extra)


def random_plan(config, rng: random.Random) -> tuple[str, list]:
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    block = rng.randrange(layers)
    choice = rng.choice(["x2", "x1.5", "copy", "twice"])
    if choice == "x2":
        return choice, [dict(widen={"*": "x2"})]
    if choice == "x1.5":
        return choice, [dict(widen={"*": "x1.5"})]
    method = rng.choice(["zero", "r2r"])
    if choice == "copy":
        return f"copy {block}:{method}", [dict(deepen=[f"{block}:{method}"])]
    return f"x2 then copy {block}:zero", [dict(widen={"*": "x2"}), dict(deepen=[f"{block}:zero"])]


def one(index: int, family: str, rng: random.Random, out: Path) -> dict:
    import torch
    import transformers as tf

    import onnxgrow as og
    from onnxgrow.checkpoints import hf, hf_grow
    from tests import llm_zoo

    config = random_config(family, rng)
    torch.manual_seed(index)
    lm = llm_zoo.randomize_(tf.AutoModelForCausalLM.from_config(config), seed=index)
    folder, onnx_path = out / f"{index}-{family}", out / f"{index}-{family}.onnx"
    lm.save_pretrained(folder)
    label, steps = random_plan(config, rng)
    record = {"index": index, "family": family, "plan": label, "hidden": config.hidden_size,
              "heads": config.num_attention_heads,
              "kv": getattr(config, "num_key_value_heads", config.num_attention_heads)}
    try:
        hf_grow.export_onnx(folder, onnx_path)
        student = str(onnx_path)
        for step in steps:
            student = og.grow(student, **step)
        report = hf.export_folder(student, folder, out / f"{index}-{family}-grown")
        record.update(outcome="exact", max_rel=report["verify"]["max_rel"], config=report["config"])
    except og.MismatchError as exc:
        record.update(outcome="wrong", reason=str(exc)[:300])
    except og.GrowError as exc:
        record.update(outcome="refused", reason=str(exc)[:300])
    except Exception as exc:  # a bug: keep going, count it
        record.update(outcome="crashed", reason=f"{type(exc).__name__}: {exc}"[:300],
                      trace=traceback.format_exc()[-1500:])
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out / f"{index}-{family}-grown", ignore_errors=True)
    onnx_path.unlink(missing_ok=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="/tmp/ckpt-corpus")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    records = []
    for i in range(args.models):
        family = FAMILIES[i % len(FAMILIES)]
        start = time.perf_counter()
        record = one(i, family, rng, out)
        record["seconds"] = round(time.perf_counter() - start, 1)
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "trace"}), flush=True)
    counts = {o: sum(r["outcome"] == o for r in records) for o in ("exact", "refused", "wrong", "crashed")}
    print(json.dumps(counts))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "records": records}, indent=1))


if __name__ == "__main__":
    main()
