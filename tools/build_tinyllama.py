#!/usr/bin/env python
"""Write a TinyLlama-1.1B-shaped LlamaForCausalLM folder with random weights (never commit it).

    python tools/build_tinyllama.py OUT [--layers 22 --hidden 2048 --intermediate 5632
                                         --heads 32 --kv-heads 4 --vocab 32000 --seed 0]

The defaults are TinyLlama-1.1B's shape (1.1B parameters, 4.4 GB in float32); a small version
for a smoke test: --layers 2 --hidden 256 --intermediate 688 --heads 8 --kv-heads 2 --vocab 1000.
Written with `save_pretrained` (float32, safetensors, transformers' default shard size), no
tokenizer. The model is built on torch's meta device, materialised uninitialised (`to_empty`) and
filled once: linear and embedding weights N(0, 0.02²) from a seeded generator, norm gains
1 + N(0, 0.02²), so the folder is reproducible and building it costs about one pass over the
weights (transformers' own init is skipped).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build(out: Path, layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000,
          seed=0, max_position=2048) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_position,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, initializer_range=0.02, attention_bias=False, mlp_bias=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.02, generator=gen)
            if param.ndim == 1:  # RMSNorm gains
                param.add_(1.0)
        # non-persistent buffers (RoPE's inv_freq) are not saved, but keep the model usable
        for module in model.modules():
            if hasattr(module, "rope_init_fn") and hasattr(module, "inv_freq"):
                inv_freq, _ = module.rope_init_fn(module.config, torch.device("cpu"))
                module.inv_freq.copy_(inv_freq)
                if hasattr(module, "original_inv_freq"):
                    module.original_inv_freq = module.inv_freq
    model.config.dtype = torch.float32
    model.eval()
    model.save_pretrained(str(out))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = build(args.out, args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab,
                args.seed)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
