"""The model zoo: small torch networks of well-known shapes, randomised and exported to ONNX.

Every test and the contract checker (``/work/shared/tools/grow_eval.py`` via ``tools/build_zoo.py``)
draws its teachers from here. Each architecture is a factory returning ``(module, example_inputs)``;
``build`` randomises one, exports it with the legacy (TorchScript) or dynamo (torch.export +
onnxscript) exporter, with BatchNormalization kept as nodes or folded into the preceding Conv, and
checks that onnxruntime reproduces torch.

Random parameters matter: with default initialisation BN statistics are 0/1, norm gains 1 and
biases 0, so a channel mapped to the wrong place would go unnoticed. ``randomize_`` gives every
per-channel parameter distinct values and scales weights by 1/sqrt(fan_in) so activations stay O(1).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

IR_VERSION = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 refuses
EXPORTERS = ("legacy", "dynamo")  # what users get by default; "dynamo_raw" is dynamo with optimize=False
VOCAB = 64  # grow_eval.py feeds integer inputs in [0, 50)


# ----------------------------------------------------------------------------- randomisation

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _fan_in(module: nn.Module) -> int:
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # each output sees in/groups * prod(kernel) / prod(stride) inputs on average
        k = math.prod(module.kernel_size) / math.prod(module.stride)
        return max(1, int(module.in_channels // module.groups * k))
    return int(np.prod(w.shape[1:]))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic distinct random values; put the module in eval mode.

    Weights ~ N(0, 1.2^2 / fan_in) (about variance preserving through ReLU-like nets), biases and
    norm shifts ~ N(0, 0.2^2), norm gains and layer-scale gammas ~ U(0.5, 1.5), BN running
    variance ~ U(0.5, 2), running mean ~ N(0, 0.2^2), embeddings ~ N(0, 1), tokens ~ N(0, 0.5^2).
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))

    for mod in module.modules():
        done = set()
        if isinstance(mod, _LINEAR):
            normal(mod.weight, 1.2 / math.sqrt(_fan_in(mod)))
            done.add("weight")
        elif isinstance(mod, nn.Embedding):
            normal(mod.weight, 1.0)
            done.add("weight")
        elif isinstance(mod, nn.PReLU):
            uniform(mod.weight, 0.05, 0.3)
            done.add("weight")
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            normal(mod.running_mean, 0.2)
            uniform(mod.running_var, 0.5, 2.0)
        for name, p in mod.named_parameters(recurse=False):
            if name in done:
                continue
            if name == "weight" and (isinstance(mod, _NORMS) or p.ndim == 1):
                uniform(p, 0.5, 1.5)  # norm gains (incl. hand-written LayerNorm2d)
            elif name.endswith("bias"):
                normal(p, 0.2)
            elif "gamma" in name or "scale" in name:
                uniform(p, 0.5, 1.5)
            elif name.endswith("weight"):  # e.g. MultiheadAttention.in_proj_weight
                normal(p, 1.2 / math.sqrt(int(np.prod(p.shape[1:]))))
            else:  # cls tokens, position embeddings
                normal(p, 0.5)
    return module.eval()


# ----------------------------------------------------------------------------- export

def _fold_rules_without_bn():
    """onnxscript's default rewrite rules minus BatchNormalization fusion."""
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    bn = set(map(id, _fuse_batchnorm.rules))
    return tuple(r for r in rewriter._DEFAULT_REWRITE_RULES if id(r) not in bn)


def _names(module, example_inputs, n_outputs):
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters if p not in ("args", "kwargs")]
    inputs = params[: len(example_inputs)]
    outputs = ["output"] if n_outputs == 1 else [f"output{i}" for i in range(n_outputs)]
    return inputs, outputs


def export(module: nn.Module, example_inputs, path, exporter: str = "legacy", keep_bn: bool = True,
           opset: int | None = None, dynamic_batch: bool = False, check: bool = True):
    """Export ``module`` (eval mode) to one self-contained ONNX file at ``path`` and return ``path``.

    legacy: ``torch.onnx.export(dynamo=False)``; keep_bn=True uses TrainingMode.PRESERVE (BN stays a
    node, constant folding still on), keep_bn=False the default eval export, which folds Conv+BN.
    dynamo: ``torch.onnx.export(dynamo=True)`` with its default optimisation; that optimiser fuses
    Conv/ConvTranspose/Gemm + BN, so keep_bn=True runs it with the BN-fusion rules removed.
    dynamo_raw: ``optimize=False`` (older torch's output): MatMul weights behind Transpose, shapes as
    Constant+Concat, bias-free Conv given a zero bias built by Shape/Expand; keep_bn=False fuses Conv+BN
    in torch first (``torch.fx.experimental.optimization.fuse``), since nothing in this path folds it.
    The file gets IR version 10 and is checked against torch in onnxruntime when ``check``.
    """
    if exporter not in EXPORTERS + ("dynamo_raw",):
        raise ValueError(f"exporter must be one of {EXPORTERS + ('dynamo_raw',)}, not {exporter!r}")
    module = module.eval()
    example_inputs = tuple(example_inputs)
    if dynamic_batch:  # batch 1 would be specialised by torch.export; trace with 2
        example_inputs = tuple(torch.cat([x, x]) for x in example_inputs)
    with torch.no_grad():
        ref = module(*example_inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    in_names, out_names = _names(module, example_inputs, len(ref))
    axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None
    path = os.fspath(path)

    if exporter == "legacy":
        with tempfile.TemporaryDirectory() as tmp:
            f = os.path.join(tmp, "m.onnx")
            kw = dict(training=torch.onnx.TrainingMode.PRESERVE) if keep_bn else {}
            torch.onnx.export(module, example_inputs, f, dynamo=False, input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, opset_version=opset, **kw)
            proto = onnx.load(f)
    else:
        from unittest import mock

        import onnx_ir as ir
        from onnxscript import rewriter

        raw = exporter == "dynamo_raw"
        if raw and not keep_bn:
            from torch.fx.experimental.optimization import fuse

            module = fuse(module)  # a fused copy
        patch = (mock.patch.object(rewriter, "_DEFAULT_REWRITE_RULES", _fold_rules_without_bn())
                 if keep_bn and not raw else contextlib.nullcontext())
        with patch:
            prog = torch.onnx.export(module, example_inputs, dynamo=True, verbose=False, optimize=not raw,
                                     input_names=in_names, output_names=out_names, dynamic_axes=axes,
                                     opset_version=opset)
        proto = ir.to_proto(prog.model)
    proto.ir_version = IR_VERSION
    onnx.save(proto, path)
    if check:
        _check(path, example_inputs, ref)
    return path


def _check(path, example_inputs, ref, tol=1e-5):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), example_inputs, strict=True)}
    got = sess.run(None, feeds)
    assert len(got) == len(ref), f"{path}: {len(got)} outputs, torch has {len(ref)}"
    for a, b in zip(got, ref, strict=True):
        b = b.numpy()
        assert a.shape == b.shape, f"{path}: output shape {a.shape} vs torch {b.shape}"
        err = np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12)
        assert err < tol, f"{path}: onnxruntime differs from torch, scaled error {err:.2e}"


# ----------------------------------------------------------------------------- building blocks

def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU, eps=1e-5):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


# ----------------------------------------------------------------------------- the sample set

class MnistCNN(nn.Module):
    """The seeds' teacher (Keras Net2Net example): conv-relu-pool-conv-relu-pool-flatten-fc-relu-fc."""

    def __init__(self, c1=8, c2=16, hidden=32, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class MLP(nn.Module):
    def __init__(self, din=64, hidden=32, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


def _shortcut(cin, cout, stride):
    """torchvision ResNet's projection shortcut (1x1 conv + BN), only when the shape changes."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class ResNetMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size=4):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(bn_size * growth), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseNetMini(nn.Module):
    """torchvision DenseNet shape: pre-activation dense layers, Concat of growing features, transition."""

    def __init__(self, growth=4, classes=10):
        super().__init__()
        self.conv0, self.norm0 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.block1 = nn.ModuleList(DenseLayer(8 + i * growth, growth) for i in range(3))
        c = 8 + 3 * growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        c //= 2
        self.block2 = nn.ModuleList(DenseLayer(c + i * growth, growth) for i in range(2))
        c += 2 * growth
        self.norm5, self.fc = nn.BatchNorm2d(c), nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.norm0(self.conv0(x)))
        for layer in self.block1:
            x = torch.cat([x, layer(x)], 1)
        x = self.trans(x)
        for layer in self.block2:
            x = torch.cat([x, layer(x)], 1)
        x = F.relu(self.norm5(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv_bn(cin, hid, 1, act=nn.ReLU6), conv_bn(hid, hid, 3, stride, groups=hid, act=nn.ReLU6),
                                  nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Mini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.ReLU6), InvertedResidual(8, 8, 1, 2),
                                      InvertedResidual(8, 16, 2, 4), InvertedResidual(16, 16, 1, 4),
                                      conv_bn(16, 32, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class SqueezeExcite(nn.Module):
    """pool -> 1x1 conv -> act -> 1x1 conv -> gate -> Mul (SENet / MobileNetV3 / EfficientNet)."""

    def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, squeeze, 1), act(), nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class SENet(nn.Module):
    """An SE-ResNet basic block between a stem and a classifier."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.conv1, self.conv2 = conv_bn(16, 16), conv_bn(16, 16, act=None)
        self.se = SqueezeExcite(16, 4)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.se(self.conv2(self.conv1(x))) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNeXtBlock(nn.Module):
    """torchvision-style: dw7x7, NHWC LayerNorm, Linear 4x, GELU, Linear, layer scale, residual."""

    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of NCHW via permutes (torchvision ConvNeXt)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = ConvNeXtBlock(32)
        self.norm, self.head = nn.LayerNorm(32, eps=1e-6), nn.Linear(32, classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class Attention(nn.Module):
    """Multi-head self-attention written the usual manual way (timm / nanoGPT)."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MHA(nn.Module):
    """nn.MultiheadAttention as self-attention."""

    def __init__(self, d, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, d, heads, mlp_ratio=2, attn=Attention):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), attn(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerMini(nn.Module):
    def __init__(self, vocab=VOCAB, seq=8, d=16, heads=2, depth=2, classes=10):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, seq, d))
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, ids):
        return self.head(self.norm(self.blocks(self.tok(ids) + self.pos)))


# ----------------------------------------------------------------------------- library-style minis

class Bottleneck(nn.Module):
    """torchvision ResNet-50 bottleneck (stride on the 3x3, 'v1.5')."""

    def __init__(self, cin, width, stride=1, expansion=4):
        super().__init__()
        cout = width * expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


class ResNetBottleneck(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(8, 4), Bottleneck(16, 4))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, stride=2))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


class MBConv(nn.Module):
    """MobileNetV3 / EfficientNet inverted residual: expand, depthwise, SE, project, residual."""

    def __init__(self, cin, hid, cout, k, stride, act, se_squeeze=0, se_act=nn.ReLU, se_gate=nn.Hardsigmoid):
        super().__init__()
        layers = [conv_bn(cin, hid, 1, act=act)] if hid != cin else []
        layers.append(conv_bn(hid, hid, k, stride, groups=hid, act=act))
        if se_squeeze:
            layers.append(SqueezeExcite(hid, se_squeeze, se_act, se_gate))
        layers.append(conv_bn(hid, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3Mini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.Hardswish),
            MBConv(8, 8, 8, 3, 1, nn.ReLU, se_squeeze=8),
            MBConv(8, 24, 12, 3, 2, nn.ReLU),
            MBConv(12, 32, 12, 5, 1, nn.Hardswish, se_squeeze=8),
            conv_bn(12, 32, 1, act=nn.Hardswish))
        self.classifier = nn.Sequential(nn.Linear(32, 40), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(40, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class EfficientNetMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        se = dict(se_act=nn.SiLU, se_gate=nn.Sigmoid)
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.SiLU, eps=1e-3),
            MBConv(8, 8, 8, 3, 1, nn.SiLU, se_squeeze=2, **se),
            MBConv(8, 48, 12, 3, 2, nn.SiLU, se_squeeze=2, **se),
            MBConv(12, 48, 12, 5, 1, nn.SiLU, se_squeeze=3, **se),
            conv_bn(12, 32, 1, act=nn.SiLU, eps=1e-3))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class XBlock(nn.Module):
    """RegNetX bottleneck: 1x1, grouped 3x3 (group width 8), 1x1, projection shortcut."""

    def __init__(self, cin, cout, stride, group_width=8):
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        idt = x if self.proj is None else self.proj(x)
        return F.relu(self.c(self.b(self.a(x))) + idt)


class RegNetXMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.s1 = nn.Sequential(XBlock(8, 16, 2), XBlock(16, 16, 1))
        self.s2 = nn.Sequential(XBlock(16, 32, 2))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.s2(self.s1(self.stem(x))), 1), 1))


class VGGBN(nn.Module):
    def __init__(self, cfg=(8, "M", 16, "M", 32, 32, "M"), classes=10):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(c * 4, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32),
                                        nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1, self.expand3x3 = nn.Conv2d(squeeze, e1, 1), nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNetMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 8, 16, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, classes, 1), nn.ReLU(True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class InceptionBlock(nn.Module):
    """GoogLeNet-style: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1, concatenated (BasicConv2d = conv-BN(eps 1e-3)-ReLU)."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        bc = lambda i, o, k: conv_bn(i, o, k, eps=1e-3)  # noqa: E731
        self.branch1 = bc(cin, c1, 1)
        self.branch2 = nn.Sequential(bc(cin, c3r, 1), bc(c3r, c3, 3))
        self.branch3 = nn.Sequential(bc(cin, c5r, 1), bc(c5r, c5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), bc(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = conv_bn(3, 8, eps=1e-3)
        self.inc1 = InceptionBlock(8, 8, 4, 8, 2, 4, 4)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inc2 = InceptionBlock(24, 8, 8, 12, 4, 8, 4)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.inc2(self.pool(self.inc1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def double_conv(cin, cout):
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNetMini(nn.Module):
    """Encoder-decoder with skip Concat; one up step by ConvTranspose, one by nn.Upsample + 1x1 conv."""

    def __init__(self, classes=2):
        super().__init__()
        self.enc1, self.enc2, self.mid = double_conv(3, 8), double_conv(8, 16), double_conv(16, 32)
        self.up1 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec1 = double_conv(32, 16)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, 8, 1))
        self.dec2 = double_conv(16, 8)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d1 = self.dec1(torch.cat([self.up1(m), e2], 1))
        d2 = self.dec2(torch.cat([self.up2(d1), e1], 1))
        return self.out(d2)


class ViTMini(nn.Module):
    """timm VisionTransformer shape: patch-embed conv, cls token, pos embedding, pre-LN blocks, cls head."""

    def __init__(self, attn=Attention, img=16, patch=4, d=16, heads=2, depth=2, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, d))
        self.blocks = nn.Sequential(*(Block(d, heads, attn=attn) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class MixerBlock(nn.Module):
    def __init__(self, tokens, d, tok_hidden=16, ch_hidden=32):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, tok_hidden), nn.GELU(), nn.Linear(tok_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(d, ch_hidden), nn.GELU(), nn.Linear(ch_hidden, d))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixerMini(nn.Module):
    def __init__(self, img=16, patch=4, d=16, depth=2, classes=10):
        super().__init__()
        tokens = (img // patch) ** 2
        self.stem = nn.Conv2d(3, d, patch, patch)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, d) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


class LayerNorm2dExplicit(nn.Module):
    """timm-style channels-first LayerNorm with the mean and variance over dim 1 written out."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtConvMlpBlock(nn.Module):
    """timm ConvNeXt with conv_mlp=True: dw7x7, LayerNorm2d, 1x1 conv 4x, GELU, 1x1 conv, layer scale."""

    def __init__(self, c):
        super().__init__()
        self.conv_dw, self.norm = nn.Conv2d(c, c, 7, padding=3, groups=c), LayerNorm2dExplicit(c)
        self.fc1, self.fc2 = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        y = self.fc2(F.gelu(self.fc1(self.norm(self.conv_dw(x)))))
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtLN2d(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2dExplicit(16))
        self.stage1 = ConvNeXtConvMlpBlock(16)
        self.down = nn.Sequential(LayerNorm2dExplicit(16), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = ConvNeXtConvMlpBlock(32)
        self.norm, self.head = LayerNorm2dExplicit(32), nn.Linear(32, classes)

    def forward(self, x):
        x = self.norm(self.stage2(self.down(self.stage1(self.stem(x)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Conv1dNet(nn.Module):
    def __init__(self, cin=4, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(cin, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class GPTBlock(nn.Module):
    """GPT-2 style: one fused c_attn projection split into q, k, v, heads by view, causal-free
    attention, residual stream with pre-LN, MLP with tanh-approximated GELU."""

    def __init__(self, c=16, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc, self.out = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), dim=-1)
        y = self.c_proj((att @ v).transpose(1, 2).reshape(b, t, c))
        x = x * 1.0 + y
        x = x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return self.head(x)


class BertLayerMini(nn.Module):
    """HF BERT's self-attention shape: separate q, k, v projections viewed into heads with
    x.size()[:-1] + (heads, head_size) (the legacy exporter computes that shape at run time),
    post-LN residuals, GELU intermediate, a token head."""

    def __init__(self, c=16, heads=2, vocab=VOCAB):
        super().__init__()
        self.heads = heads
        self.emb, self.pos = nn.Embedding(vocab, c), nn.Parameter(torch.zeros(1, 8, c))
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.fc, self.out, self.head = nn.Linear(c, 2 * c), nn.Linear(2 * c, c), nn.Linear(c, 5)

    def split_heads(self, x):
        return x.view(x.size()[:-1] + (self.heads, x.size(-1) // self.heads)).permute(0, 2, 1, 3)

    def forward(self, ids):
        x = self.emb(ids) + self.pos
        q, k, v = (self.split_heads(f(x)) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)), dim=-1) @ v
        att = att.permute(0, 2, 1, 3).contiguous()
        x = self.ln1(x + self.o(att.view(att.size()[:-2] + (-1,))))
        x = self.ln2(x + self.out(F.gelu(self.fc(x))))
        return self.head(x)


class TwoInTwoOut(nn.Module):
    """An image branch and a vector branch fused by Concat, with two heads."""

    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(conv_bn(3, 8), conv_bn(8, 16, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.vec = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(32, 16), nn.ReLU())
        self.head_a, self.head_b = nn.Linear(16, 4), nn.Linear(16, 3)

    def forward(self, image, features):
        h = self.fuse(torch.cat([self.img(image), self.vec(features)], 1))
        return self.head_a(h), self.head_b(h)


class SharedWeights(nn.Module):
    """Weights shared two ways: fc2 applied twice (one initializer, two Gemm nodes), and fc3's bias
    equal in value to fc2's (``tie_``), which the legacy exporter deduplicates through an Identity
    node and the dynamo exporter by reusing fc2's initializer."""

    def __init__(self, din=8, d=16, classes=4):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(din, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, classes)

    @torch.no_grad()
    def tie_(self):
        self.fc3.bias.copy_(self.fc2.bias)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc2(F.relu(self.fc1(x))))))
        return self.head(F.relu(self.fc3(h)))


# ----------------------------------------------------------------------------- split-and-concat blocks (YOLO)

class YoloConv(nn.Module):
    """ultralytics Conv: conv (no bias) → BatchNorm → SiLU."""

    def __init__(self, cin, cout, k=1, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = YoloConv(c, c, 3), YoloConv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


def halves(x, c, split_by):
    if split_by == "slice":
        return [x[:, :c], x[:, c:]]
    if split_by == "split":
        return list(x.split((c, c), 1))
    return list(x.chunk(2, 1))


class C2f(nn.Module):
    """YOLOv8's C2f: cv1 → two halves → n bottlenecks on the last → concat all → cv2."""

    def __init__(self, cin, cout, n=1, shortcut=True, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = cout // 2, split_by
        self.cv1 = YoloConv(cin, 2 * self.c)
        self.cv2 = YoloConv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = halves(self.cv1(x), self.c, self.split_by)
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    """YOLOv5's C3 (CSP): two 1x1 branches, bottlenecks on one, concat → cv3."""

    def __init__(self, cin, cout, n=1):
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2, self.cv3 = YoloConv(cin, c), YoloConv(cin, c), YoloConv(2 * c, cout)
        self.m = nn.Sequential(*(YoloBottleneck(c) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class ELAN(nn.Module):
    """An ELAN-like block: cv1 → two halves; a chain of 3x3 convs on the last; concat all → cv4."""

    def __init__(self, cin, cout, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = cout // 2, split_by
        self.cv1 = YoloConv(cin, 2 * self.c)
        self.cv2, self.cv3 = YoloConv(self.c, self.c, 3), YoloConv(self.c, self.c, 3)
        self.cv4 = YoloConv(4 * self.c, cout)

    def forward(self, x):
        y = halves(self.cv1(x), self.c, self.split_by)
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class GLU(nn.Module):
    """Gated halves: conv → a, b → a · sigmoid(b) → conv."""

    def __init__(self, c, split_by="chunk"):
        super().__init__()
        self.c, self.split_by = c, split_by
        self.proj, self.out = nn.Conv2d(c, 2 * c, 1), YoloConv(c, c)

    def forward(self, x):
        a, b = halves(self.proj(x), self.c, self.split_by)
        return self.out(a * torch.sigmoid(b))


class SPPF(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2 = YoloConv(cin, c), YoloConv(4 * c, cout)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class SplitNet(nn.Module):
    """A small YOLOv8-like backbone with every kind of split block, ending in a 1x1 head conv."""

    def __init__(self, split_by="chunk"):
        super().__init__()
        self.stem = YoloConv(3, 8, 3, 2)
        self.c2f = C2f(8, 8, n=2, split_by=split_by)
        self.down = YoloConv(8, 16, 3, 2)
        self.c2f_plain = C2f(16, 16, n=1, shortcut=False, split_by=split_by)
        self.c3 = C3(16, 16)
        self.elan = ELAN(16, 16, split_by=split_by)
        self.glu = GLU(16, split_by=split_by)
        self.sppf = SPPF(16, 16)
        self.head = nn.Conv2d(16 + 8, 5, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        p1 = self.c2f(self.stem(x))
        p2 = self.sppf(self.glu(self.elan(self.c3(self.c2f_plain(self.down(p1))))))
        return self.head(torch.cat([self.up(p2), p1], 1))  # a neck-style Concat of two scales


# ----------------------------------------------------------------------------- registry

def _img(c=3, hw=16):
    return (torch.randn(1, c, hw, hw, generator=torch.Generator().manual_seed(0)),)


ARCHITECTURES: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    # the sample set
    "mnist_cnn": lambda: (MnistCNN(), _img(1, 28)),
    "mlp": lambda: (MLP(), (torch.randn(1, 64, generator=torch.Generator().manual_seed(0)),)),
    "resnet_mini": lambda: (ResNetMini(), _img()),
    "densenet_mini": lambda: (DenseNetMini(), _img()),
    "mobilenetv2_mini": lambda: (MobileNetV2Mini(), _img()),
    "senet": lambda: (SENet(), _img()),
    "convnext_mini": lambda: (ConvNeXtMini(), _img()),
    "transformer_mini": lambda: (TransformerMini(), (torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0)),)),
    # minis of library architectures
    "resnet_bottleneck": lambda: (ResNetBottleneck(), _img(3, 32)),
    "mobilenetv3_mini": lambda: (MobileNetV3Mini(), _img()),
    "efficientnet_mini": lambda: (EfficientNetMini(), _img()),
    "regnetx_mini": lambda: (RegNetXMini(), _img()),
    "vgg_bn": lambda: (VGGBN(), _img()),
    "squeezenet_mini": lambda: (SqueezeNetMini(), _img(3, 32)),
    "inception_mini": lambda: (InceptionMini(), _img()),
    "unet_mini": lambda: (UNetMini(), _img()),
    "vit_mini": lambda: (ViTMini(), _img()),
    "vit_mini_mha": lambda: (ViTMini(attn=MHA), _img()),
    "mlp_mixer_mini": lambda: (MLPMixerMini(), _img()),
    "convnext_ln2d": lambda: (ConvNeXtLN2d(), _img()),
    "conv1d_net": lambda: (Conv1dNet(), (torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0)),)),
    "two_in_two_out": lambda: (TwoInTwoOut(), (*_img(), torch.randn(1, 8, generator=torch.Generator().manual_seed(1)))),
    "gpt_block": lambda: (GPTBlock(), (torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(0)),)),
    "bert_layer": lambda: (BertLayerMini(), (torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0)),)),
    "shared_weights": lambda: (SharedWeights(), (torch.randn(1, 8, generator=torch.Generator().manual_seed(0)),)),
    "yolo_mini": lambda: (SplitNet("split"), _img()),
}

SAMPLE_SET = ("mnist_cnn", "mlp", "resnet_mini", "densenet_mini", "mobilenetv2_mini", "senet", "convnext_mini",
              "transformer_mini")


def has_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def make(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The named architecture, randomised, in eval mode, with its example inputs."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    module, inputs = ARCHITECTURES[name]()
    randomize_(module, seed)
    if hasattr(module, "tie_"):
        module.tie_()
    return module, inputs


def file_name(name: str, exporter: str, keep_bn: bool = True) -> str:
    return f"{name}.{exporter}{'' if keep_bn else '.bnfold'}.onnx"


def build(name: str, exporter: str = "legacy", keep_bn: bool = True, path=None, seed: int = 0, **kw):
    """Build, randomise and export one architecture; returns the path (a temporary file if none given)."""
    module, inputs = make(name, seed)
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".onnx", prefix=f"{name}.")
        os.close(fd)
    return export(module, inputs, path, exporter=exporter, keep_bn=keep_bn, **kw)
