"""Tiny random decoder LMs from `transformers`, exported with the dynamo exporter (optimised, and
raw with optimize=False) with a dynamic batch and sequence: one input `input_ids`, one output
`logits`. Attention is eager, or with a `_sdpa` variant transformers' default
scaled_dot_product_attention (which the raw export decomposes with shapes computed at run time). Every parameter is randomised (norm gains U(0.5, 1.5), biases N(0, 0.2²), weights
N(0, 1/fan_in)), so a channel mapped to the wrong place shows.

    python -c "from tests import llm_zoo; llm_zoo.build('llama', 'dynamo', '/tmp/llama.onnx')"
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch

VOCAB = 64  # the contract checker feeds integer inputs in [0, 50)
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "olmo2", "phi3", "gpt_neox")
MORE_FAMILIES = ("gpt2", "bert")  # checkpoint round trips (tests/test_checkpoints_hf.py)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, attn_implementation="eager")


def config(family: str):
    import transformers as tf

    if family == "llama":  # GQA: 4 query heads on 2 key/value heads
        return tf.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "qwen2":  # q/k/v biases, tied embeddings
        return tf.Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    if family == "qwen3":  # RMSNorm on each head's q and k
        return tf.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False)
    if family == "gemma":  # multi-query, head size 16 ≠ 32/4, (1 + w) RMSNorm, GeGLU, √d-scaled tied embeddings
        return tf.GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=16, hidden_activation="gelu_pytorch_tanh",
                              tie_word_embeddings=True)
    if family == "olmo2":  # RMSNorm over the whole q and k projections (all heads), post-norm blocks
        return tf.Olmo2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return tf.Phi3Config(**COMMON, num_key_value_heads=4, tie_word_embeddings=False,
                             pad_token_id=0)
    if family == "gpt_neox":  # fused interleaved qkv, partial rotary, LayerNorm, parallel residual
        c = dict(COMMON)
        return tf.GPTNeoXConfig(**c, rotary_pct=0.5, use_parallel_residual=True, tie_word_embeddings=False)
    if family == "gpt2":  # Conv1D weights stored [in, out], fused c_attn, learned positions, tied head
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                             attn_implementation="eager")
    if family == "bert":  # post-norm encoder with a masked-LM head (tied decoder, its own bias)
        return tf.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, attn_implementation="eager")
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES + MORE_FAMILIES}")


class LogitsOnly(torch.nn.Module):
    """input_ids -> logits, no cache: what a user exports for inference."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        if self.lm.config.model_type == "bert":  # an encoder: no cache to turn off
            return self.lm(input_ids=input_ids).logits
        return self.lm(input_ids=input_ids, use_cache=False).logits


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1 and ("norm" in name or "ln" in name):
            p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
        elif p.ndim == 1:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        else:
            p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
    return module.eval()


VARIANTS = ("dynamo", "dynamo_raw", "dynamo_sdpa", "dynamo_raw_sdpa")


def make(family: str, seed: int = 0, attention: str = "eager") -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    auto = tf.AutoModelForMaskedLM if family == "bert" else tf.AutoModelForCausalLM
    lm = auto.from_config(config(family), attn_implementation=attention)
    return LogitsOnly(randomize_(lm, seed)).eval()


def build(family: str, variant: str = "dynamo", path=None, seed: int = 0) -> str:
    """Export one model to `path` (IR version 10) and check onnxruntime reproduces torch on two
    different batch/sequence shapes."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    module = make(family, seed, "sdpa" if variant.endswith("_sdpa") else "eager")
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(seed))
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    program = torch.onnx.export(module, (ids,), dynamo=True, optimize="_raw" not in variant,
                                input_names=["input_ids"], output_names=["logits"], dynamic_shapes=dims)
    proto = program.model_proto
    proto.ir_version = 10
    path = os.fspath(path or f"{family}.{variant}.onnx")
    onnx.save(proto, path)
    _check(path, module)
    return path


def _check(path: str, module: torch.nn.Module) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in ((2, 5), (3, 7)):
        ids = np.random.default_rng(1).integers(0, 50, shape)
        want = module(torch.from_numpy(ids)).detach().numpy()
        got = session.run(None, {"input_ids": ids.astype(np.int64)})[0]
        err = float(np.abs(got - want).max() / np.abs(want).max())
        if err > 1e-4:
            raise AssertionError(f"{path}: onnxruntime differs from torch by {err:.2e} at {shape}")
