"""Export real architectures from timm and torchvision into a folder, for the contract checker.

    python tools/build_timm_zoo.py OUT_DIR [--only resnet18,vit_tiny_patch16_224] [--exporters legacy,dynamo]
    python ../shared/tools/grow_eval.py OUT_DIR out.json --op widen --per-model 8

This is a development tool, not part of the package: it needs timm, torchvision and transformers
(for small random BERT and GPT-2 encoders with a token head), and PyPI's
torchvision does not import beside the CPU torch 2.13.0 build the project pins. Run it from a
separate environment, e.g. `python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1
torchvision==0.29.1 timm transformers onnx onnxscript onnxruntime`. Weights are random (no download): every
per-channel parameter is randomised so a channel mapped to the wrong place shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import onnx
import torch

# (name, source, input size, extra kwargs)
MODELS = [
    ("resnet18", "timm", 64, {}),
    ("resnet50", "timm", 64, {}),
    ("mobilenetv2_050", "timm", 64, {}),
    ("mobilenetv3_small_050", "timm", 64, {}),
    ("efficientnet_b0", "timm", 64, {}),
    ("regnetx_002", "timm", 64, {}),
    ("regnety_002", "timm", 64, {}),
    ("densenet121", "timm", 64, {}),
    ("convnext_atto", "timm", 64, {}),
    ("vit_tiny_patch16_224", "timm", 64, {"img_size": 64}),
    ("deit_tiny_patch16_224", "timm", 64, {"img_size": 64}),
    ("mixer_s16_224", "timm", 64, {"img_size": 64}),
    ("ghostnet_050", "timm", 64, {}),
    ("resnext26ts", "timm", 64, {}),
    ("squeezenet1_0", "torchvision", 64, {}),
    ("shufflenet_v2_x0_5", "torchvision", 64, {}),
    ("mnasnet0_5", "torchvision", 64, {}),
    ("googlenet", "torchvision", 64, {"aux_logits": False, "init_weights": False}),
    ("vgg11_bn", "torchvision", 64, {}),
    ("swin_t", "torchvision", 64, {}),
    ("bert_tiny", "transformers", 8, {}),
    ("gpt2_tiny", "transformers", 8, {}),
]


class TokenClassifier(torch.nn.Module):
    """A transformers encoder/decoder with a per-token linear head, fed token ids only."""

    def __init__(self, body, width):
        super().__init__()
        self.body, self.head = body, torch.nn.Linear(width, 10)

    def forward(self, ids):
        return self.head(self.body(input_ids=ids).last_hidden_state)


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    for name, p in module.named_parameters():
        if p.ndim <= 1:
            base = 1.0 if ("weight" in name or "gamma" in name) and "bias" not in name else 0.0
            p.copy_(base + (torch.rand(p.shape, generator=g) - 0.5) * (1.0 if base else 0.4))
        else:
            fan_in = max(1, p[0].numel())
            p.copy_(torch.randn(p.shape, generator=g) * (1.2 / fan_in) ** 0.5)
    module.eval()


def create(name: str, source: str, kwargs: dict) -> torch.nn.Module:
    if source == "transformers":
        import transformers as tf

        if name.startswith("bert"):
            config = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32)
            return TokenClassifier(tf.BertModel(config), 32)
        config = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
        return TokenClassifier(tf.GPT2Model(config), 32)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)


def export(module, size, path, exporter):
    if isinstance(module, TokenClassifier):  # token ids (the checker feeds ints in [0, 50))
        x = torch.randint(0, 50, (1, size), generator=torch.Generator().manual_seed(0))
    else:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if exporter == "legacy":
        torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["output"])
    else:
        torch.onnx.export(module, (x,), path, dynamo=True, input_names=["x"],
                          output_names=["output"], external_data=False)
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, path)
    data = path + ".data"
    if os.path.exists(data):
        os.remove(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", default="")
    ap.add_argument("--exporters", default="legacy,dynamo")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    wanted = set(a.only.split(",")) if a.only else None
    for name, source, size, kwargs in MODELS:
        if wanted and name not in wanted:
            continue
        for exporter in a.exporters.split(","):
            path = os.path.join(a.out, f"{name}-{exporter}.onnx")
            if os.path.exists(path):
                continue
            t = time.time()
            try:
                module = create(name, source, kwargs)
                randomize_(module)
                export(module, size, path, exporter)
                print(f"{name}-{exporter}: {time.time() - t:.1f}s", flush=True)
            except Exception as exc:  # keep going: one exporter failure is no reason to stop
                print(f"{name}-{exporter}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                traceback.print_exc(limit=2, file=sys.stderr)
                if os.path.exists(path):
                    os.remove(path)


if __name__ == "__main__":
    main()
