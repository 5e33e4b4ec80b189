#!/usr/bin/env python
"""Benchmark: a training step of `onnxgrow.to_torch(model)` against the native torch module it
was exported from, eager and under torch.compile, in one run.

    python tools/bench_torch.py [--quick] [--steps 20] [--no-compile] [--json out.json]

Models (random weights, float32, built here and never committed):
  llama   transformers' LlamaForCausalLM (hidden 256, 4 layers, 8 heads, 2 kv heads, FFN 688,
          vocab 512), batch 8 × 64 tokens, exported by the dynamo exporter (optimised)
  resnet  a hand-written ResNet (BasicBlocks 32-64-128, BatchNorm kept), batch 16 × 3×64×64,
          exported by the legacy exporter
(--quick: llama hidden 128, 2 layers; resnet 16-32-64 at 32×32.)

A step is forward, loss (mean square of the output), backward and an AdamW step, on the same
inputs for both modules. Each variant is warmed up (3 steps; compiled ones also compile then),
then timed over --steps steps; reported: the median step time and its ratio to the native
module's in the same mode. Targets (issue 17): eager ≤ 1.1×, compiled ≤ 1.1× native compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnxgrow as og  # noqa: E402

TARGET = 1.1


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class LogitsOnly(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def build(name: str, quick: bool, folder: Path):
    """(native module, example inputs, onnx path)."""
    torch.manual_seed(0)
    if name == "resnet":
        module = ResNet((16, 32, 64) if quick else (32, 64, 128))
        x = (torch.randn(16, 3, *((32, 32) if quick else (64, 64))),)
        path = folder / "resnet.onnx"
        torch.onnx.export(module.eval(), x, path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}})
    else:
        import transformers as tf

        hidden, layers = (128, 2) if quick else (256, 4)
        config = tf.LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=hidden * 43 // 16,
                                num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                                max_position_embeddings=256, attn_implementation="eager")
        module = LogitsOnly(tf.LlamaForCausalLM(config)).eval()
        with torch.no_grad():  # trained-like norm gains: all-ones ones would be deduplicated in the export
            for name, p in module.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        x = (torch.randint(0, 512, (8, 64)),)
        path = folder / "llama.onnx"
        dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
        program = torch.onnx.export(module, x, dynamo=True, input_names=["input_ids"], output_names=["logits"],
                                    dynamic_shapes=dims)
        proto = program.model_proto
        proto.ir_version = 10
        import onnx

        onnx.save(proto, path)
    return module, x, path


def time_steps(module, inputs, steps: int, compile_: bool) -> float:
    module.train()
    run = torch.compile(module) if compile_ else module
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        out = run(*inputs)
        out.float().pow(2).mean().backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--models", default="llama,resnet")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            native, inputs, path = build(name, args.quick, Path(tmp))
            converted = og.to_torch(str(path))
            for compile_ in (False,) if args.no_compile else (False, True):
                mode = "compiled" if compile_ else "eager"
                torch._dynamo.reset()
                t_native = time_steps(native, inputs, args.steps, compile_)
                torch._dynamo.reset()
                t_ours = time_steps(converted, inputs, args.steps, compile_)
                ratio = t_ours / t_native
                rows.append({"model": name, "mode": mode, "native_ms": 1e3 * t_native, "onnxgrow_ms": 1e3 * t_ours,
                             "ratio": ratio, "target": TARGET, "ok": ratio <= TARGET})
                print(f"{name:7s} {mode:9s} native {1e3 * t_native:8.1f} ms   onnxgrow {1e3 * t_ours:8.1f} ms   "
                      f"{ratio:5.2f}x  {'ok' if ratio <= TARGET else 'over target'}", flush=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
