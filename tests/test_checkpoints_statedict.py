"""State dicts out (onnxgrow/checkpoints/statedict.py, keys.py): the grown ONNX as a state dict
with the teacher's keys, layouts and dtypes, that the user's own class — built at the grown
widths — loads with strict=True and that computes the grown ONNX's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import onnxgrow as og
from onnxgrow.checkpoints import history, statedict
from tests import helpers, zoo


def _teacher(tmp_path, exporter):
    module = zoo.randomize_(zoo.MnistCNN(), seed=3)
    x = torch.randn(3, 1, 28, 28)
    path = zoo.export(module, (x,), str(tmp_path / "t.onnx"), exporter=exporter)
    return module, path


def _loads_strict_and_computes_the_student(grown: torch.nn.Module, state: dict, student, x: np.ndarray):
    """`grown` (the user's class at the new widths) takes `state` with strict=True and gives
    onnxruntime's outputs of the grown ONNX on `x`; returns those."""
    grown.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = grown.eval()(torch.from_numpy(x)).numpy()
    want = helpers.run(student, {helpers.session(student).get_inputs()[0].name: x})[0]
    assert np.abs(got - want).max() <= helpers.SCALED_TOL * np.abs(want).max()
    return want


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_the_seed_network_widened_loads_strict_into_its_class_at_the_new_widths(tmp_path, exporter, suffix):
    module, teacher_onnx = _teacher(tmp_path, exporter)
    teacher = tmp_path / f"teacher{suffix}"
    if suffix == ".pt":
        torch.save(module.state_dict(), teacher)
    else:
        save_file(module.state_dict(), str(teacher))
    student = og.grow(teacher_onnx, widen={"conv1": 12, "conv2": 24, "fc1": 48}, method="netmorph")
    out = tmp_path / f"student{suffix}"
    report = statedict.export_state_dict(student, teacher, out)
    assert report["verify"]["ok"]
    state = torch.load(out) if suffix == ".pt" else load_file(str(out))
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    want = _loads_strict_and_computes_the_student(zoo.MnistCNN(c1=12, c2=24, hidden=48), state, student, x)
    assert np.abs(want - module(torch.from_numpy(x)).detach().numpy()).max() < 1e-4  # and it is the teacher


def test_layers_inserted_after_a_layer_have_no_key_and_are_refused(tmp_path):
    module, teacher_onnx = _teacher(tmp_path, "legacy")
    torch.save(module.state_dict(), tmp_path / "t.pt")
    student = og.deepen(teacher_onnx, after="fc1", method="net2net")
    with pytest.raises(og.GrowError, match="deepen --after"):
        statedict.export_state_dict(student, tmp_path / "t.pt", tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists()


def test_a_folded_batchnorm_is_refused_naming_the_module(tmp_path):
    module = zoo.randomize_(zoo.make("resnet_mini")[0], seed=1)
    path = zoo.export(module, (torch.randn(2, 3, 16, 16),), str(tmp_path / "r.onnx"), keep_bn=False)
    torch.save(module.state_dict(), tmp_path / "r.pt")
    student = og.grow(path, widen={"*": "x2"})
    with pytest.raises(og.GrowError, match="BatchNorm .* folded"):
        statedict.export_state_dict(student, tmp_path / "r.pt", tmp_path / "s.pt")


class ResNetW(torch.nn.Module):
    """The zoo's ResNetMini with its widths as arguments: the class a user builds at new widths."""

    def __init__(self, w1=8, w2=16):
        super().__init__()
        self.stem = zoo.conv_bn(3, w1)
        self.layer1 = zoo.BasicBlock(w1, w1)
        self.layer2 = zoo.BasicBlock(w1, w2, stride=2)
        self.fc = torch.nn.Linear(w2, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_resnet_with_batchnorm_kept_loads_strict_at_twice_the_width(tmp_path, exporter):
    module = zoo.randomize_(ResNetW(), seed=2)
    path = zoo.export(module, (torch.randn(3, 3, 16, 16),), str(tmp_path / "r.onnx"), exporter=exporter)
    torch.save(module.state_dict(), tmp_path / "r.pt")
    student = og.grow(path, widen={"*": "x2"})
    statedict.export_state_dict(student, tmp_path / "r.pt", tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt")
    assert set(state) == set(module.state_dict())  # the teacher's keys, no more, no fewer
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    _loads_strict_and_computes_the_student(ResNetW(16, 32), state, student, x)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_a_square_weight_is_told_from_its_transpose(n):
    """Evenly spaced samples of an n×n matrix are its diagonal, which the transpose shares."""
    from onnxgrow.checkpoints import keys

    w = np.random.default_rng(n).normal(size=(n, n)).astype(np.float32)
    assert keys.confirm(w, history.fingerprint(w)) == "same"
    assert keys.confirm(w, history.fingerprint(w.T)) == "T"
    assert keys.confirm(w + 1, history.fingerprint(w)) is None
