"""The zoo itself: every architecture exports with both exporters, runs in onnxruntime, matches torch,
keeps or folds BatchNormalization as asked, and carries distinct per-channel parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from tests import zoo
from tests.helpers import run

BN_ARCHS = [n for n in zoo.ARCHITECTURES if zoo.has_bn(zoo.ARCHITECTURES[n]()[0])]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Export each (arch, exporter, keep_bn) once per module run; returns the path."""
    cache = {}

    def get(name, exporter, keep_bn=True, **kw):
        key = (name, exporter, keep_bn, tuple(sorted(kw.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{name}.{exporter}")
            cache[key] = zoo.build(name, exporter, keep_bn, folder / zoo.file_name(name, exporter, keep_bn), **kw)
        return cache[key]

    return get


def fresh_inputs(example, batch=1, seed=1):
    """New random inputs shaped like the example (token ids in [0, 50), as grow_eval draws them)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in example:
        shape = (batch, *x.shape[1:])
        out.append(torch.randint(0, 50, shape, generator=g) if not x.is_floating_point() else torch.randn(shape, generator=g))
    return out


def assert_matches_torch(path, module, inputs, tol=1e-5):
    with torch.no_grad():
        ref = module(*inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    names = [i.name for i in onnx.load(path).graph.input]
    got = run(path, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        b = b.numpy()
        assert a.shape == b.shape
        err = np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()
        assert err < tol, f"scaled error {err:.2e}"


def slow_unless(fast, name, exporter):
    # the dynamo exporter takes ~2 s of CPU per model: the default run exports only `fast` with it
    marks = [pytest.mark.slow] if exporter == "dynamo" and name not in fast else []
    return pytest.param(name, exporter, marks=marks, id=f"{name}-{exporter}")


FAST_BNFOLD = ("resnet_mini", "densenet_mini")  # all BN after Conv; BN after Concat stays


@pytest.mark.parametrize("name,exporter", [slow_unless(zoo.SAMPLE_SET, n, e) for n in zoo.ARCHITECTURES for e in zoo.EXPORTERS])
def test_export_runs_and_matches_torch(built, name, exporter):
    path = Path(built(name, exporter))
    assert onnx.load(path).ir_version == zoo.IR_VERSION
    assert [p.name for p in path.parent.iterdir()] == [path.name], "stray files beside the export"
    assert path.stat().st_size < 1_000_000
    module, example = zoo.make(name)
    assert_matches_torch(path, module, fresh_inputs(example))


def conv_fed_bn(model: onnx.ModelProto) -> int:
    """Number of BatchNormalization nodes whose input comes straight from a Conv."""
    conv_out = {o for n in model.graph.node if n.op_type == "Conv" for o in n.output}
    return sum(n.op_type == "BatchNormalization" and n.input[0] in conv_out for n in model.graph.node)


def bn_modules(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("name,exporter", [slow_unless(zoo.SAMPLE_SET, n, e) for n in BN_ARCHS for e in zoo.EXPORTERS])
def test_keep_bn_keeps_every_batchnorm(built, name, exporter):
    model = onnx.load(built(name, exporter, keep_bn=True))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == bn_modules(zoo.make(name)[0])


@pytest.mark.parametrize("name,exporter", [slow_unless(FAST_BNFOLD, n, e) for n in BN_ARCHS for e in zoo.EXPORTERS])
def test_bnfold_folds_conv_batchnorm(built, name, exporter):
    path = built(name, exporter, keep_bn=False)
    model = onnx.load(path)
    assert conv_fed_bn(model) == 0
    kept = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert kept < bn_modules(zoo.make(name)[0])  # only BNs not after a Conv remain (DenseNet pre-activation)
    module, example = zoo.make(name)
    assert_matches_torch(path, module, fresh_inputs(example))


@pytest.mark.parametrize("keep_bn", [True, False])
def test_dynamo_raw_export(built, keep_bn):
    path = built("resnet_mini", "dynamo_raw", keep_bn)
    model = onnx.load(path)
    assert conv_fed_bn(model) == (6 if keep_bn else 0)
    module, example = zoo.make("resnet_mini")
    assert_matches_torch(path, module, fresh_inputs(example))


@pytest.mark.parametrize("name,exporter", [("resnet_mini", "legacy"), ("resnet_mini", "dynamo"),
                                           ("transformer_mini", "legacy")])
def test_dynamic_batch(built, name, exporter):
    path = built(name, exporter, dynamic_batch=True)
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    module, example = zoo.make(name)
    for batch in (1, 3):
        assert_matches_torch(path, module, fresh_inputs(example, batch=batch))


def per_channel_tensors(module: nn.Module):
    """1-D parameters and BN statistics: the values a channel carries with it."""
    for mname, m in module.named_modules():
        for pname, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if t.ndim == 1 and t.is_floating_point():
                yield f"{mname}.{pname}", t


@pytest.mark.parametrize("name", list(zoo.ARCHITECTURES))
def test_randomize_makes_per_channel_values_distinct(name):
    module, example = zoo.make(name, seed=3)
    assert not module.training
    tensors = dict(per_channel_tensors(module))
    assert tensors
    for key, t in tensors.items():
        assert torch.unique(t).numel() == t.numel(), f"{key} has repeated values"
        if key.endswith("running_var"):
            assert (t >= 0.5).all() and (t <= 2).all()
    # cls tokens, position embeddings, layer-scale gammas: no constant left from initialisation
    for key, p in module.named_parameters():
        assert torch.unique(p).numel() > min(p.numel(), 2) - 1, f"{key} looks uninitialised"
    with torch.no_grad():
        out = module(*example)
    for y in [out] if isinstance(out, torch.Tensor) else out:
        assert 0.05 < y.abs().max() < 50, f"output scale {y.abs().max():.3g} is not O(1)"


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
def test_shared_weights_are_shared_in_the_graph(built, exporter):
    g = onnx.load(built("shared_weights", exporter)).graph
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    assert gemms[1].input[1] == gemms[2].input[1]  # fc2 applied twice
    if exporter == "legacy":
        assert any(n.op_type == "Identity" and n.input[0] == gemms[1].input[2] for n in g.node)
    else:
        assert gemms[3].input[2] == gemms[1].input[2]


def test_randomize_depends_on_seed():
    a, _ = zoo.make("resnet_mini", seed=0)
    b, _ = zoo.make("resnet_mini", seed=1)
    c, _ = zoo.make("resnet_mini", seed=0)
    assert not torch.equal(a.stem[1].running_mean, b.stem[1].running_mean)
    assert torch.equal(a.stem[1].running_mean, c.stem[1].running_mean)
