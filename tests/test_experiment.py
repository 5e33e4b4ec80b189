"""tools/experiment.py: the growth experiment on real digits (a tiny run), and its pieces."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

TOOL = Path(__file__).resolve().parent.parent / "tools" / "experiment.py"
spec = importlib.util.spec_from_file_location("experiment", TOOL)
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One seed, two teacher epochs, one epoch of fine-tuning: net2net, random pad, random init."""
    out = tmp_path_factory.mktemp("quick")
    ex.main(["--quick", "--seeds", "1", "--teacher-epochs", "2", "--student-epochs", "1",
             "--scratch-epochs", "1", "--runs", "wider_net2net,wider_random,deeper_random,scratch_wider",
             "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def test_net2net_student_starts_at_teachers_validation_loss(smoke):
    _, result = smoke
    runs = result["per_seed"]["0"]
    teacher_loss = runs["teacher"]["val_loss"][-1]
    student_loss = runs["wider_net2net"]["val_loss"][0]
    assert abs(student_loss - teacher_loss) <= 1e-5 * teacher_loss
    assert runs["wider_net2net"]["val_acc"][0] == runs["teacher"]["val_acc"][-1]
    assert result["claim"]["epoch0_exact"]
    assert runs["wider_net2net"]["verify_ok"] is True


def test_random_baselines_change_the_function(smoke):
    _, result = smoke
    runs = result["per_seed"]["0"]
    teacher_loss = runs["teacher"]["val_loss"][-1]
    for run in ("wider_random", "deeper_random"):
        assert runs[run]["verify_ok"] is False
        assert abs(runs[run]["val_loss"][0] - teacher_loss) > 1e-3 * teacher_loss


def test_outputs_are_written(smoke):
    out, result = smoke
    table = (out / "table.md").read_text()
    for run in ("teacher", "wider_net2net", "wider_random", "deeper_random", "scratch_wider"):
        assert run in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result["summary"]
    assert len(summary["wider_net2net"]["val_loss"]["mean"]) == 2  # epoch 0 and epoch 1
    assert summary["scratch_wider"]["macs_per_sample"] == summary["wider_net2net"]["macs_per_sample"]
    # the target is the wider architecture's from-scratch final accuracy, not the teacher's
    reach = summary["wider_net2net"]["to_scratch_acc"]["wider"]
    row, ref = reach["per_seed"][0], summary["scratch_wider"]["to_scratch_acc"]["wider"]["per_seed"][0]
    assert row["target_acc"] == ref["target_acc"] == result["per_seed"]["0"]["scratch_wider"]["val_acc"][-1]
    teacher_flops = 6 * summary["teacher"]["macs_per_sample"] * result["n_train"] * 2
    if row["epochs"] is not None:
        assert row["flops"] == 6 * summary["wider_net2net"]["macs_per_sample"] * result["n_train"] * row["epochs"]
        assert row["flops_incl_teacher"] == row["flops"] + teacher_flops
        scratch_flops = 6 * summary["scratch_wider"]["macs_per_sample"] * result["n_train"] * ref["epochs"]
        assert reach["saved"]["per_seed"][0] == pytest.approx(1 - row["flops_incl_teacher"] / scratch_flops)
    assert "deeper" not in reach  # no deeper architecture trained from scratch in this run
    assert "from-scratch final accuracy" in (out / "table.md").read_text()


def test_macs_of_the_digits_teacher_by_hand():
    torch.manual_seed(0)
    model = ex.export_onnx(ex.build_cnn(**ex.arch("digits", "teacher")), 8)
    conv1 = 8 * 8 * 16 * (1 * 3 * 3)
    conv2 = 4 * 4 * 32 * (16 * 3 * 3)
    fc1, fc2 = 32 * 2 * 2 * 64, 64 * 10
    assert ex.macs_per_sample(model) == conv1 + conv2 + fc1 + fc2


def test_macs_count_a_wider_architecture_twice_where_it_doubles():
    teacher = ex.export_onnx(ex.build_cnn(**ex.arch("digits", "teacher")), 8)
    wider = ex.export_onnx(ex.build_cnn(**ex.arch("digits", "wider")), 8)
    conv1 = 8 * 8 * 16 * 9
    conv2 = 4 * 4 * 32 * 16 * 9
    fc = 128 * 64 + 64 * 10
    assert ex.macs_per_sample(wider) - ex.macs_per_sample(teacher) == conv1 + conv2 + fc


def test_first_reach():
    assert ex.first_reach([0.1, 0.5, 0.9, 0.95], 0.9) == 2
    assert ex.first_reach([0.9, 0.5], 0.9) == 0
    assert ex.first_reach([0.1, 0.5], 0.9) is None
    assert ex.first_reach([3.0, 2.5, 2.0], 2.5, lower_is_better=True) == 1


def test_random_init_redraws_only_the_inserted_layers():
    from onnx import numpy_helper

    import onnxgrow as og

    torch.manual_seed(0)
    teacher = ex.export_onnx(ex.build_cnn(**ex.arch("digits", "teacher")), 8)
    layers = {"conv2": ex.node_name(teacher, "Conv", "conv2"), "fc1": ex.node_name(teacher, "Gemm", "fc1")}
    identity = og.deepen(og.deepen(teacher, after=layers["conv2"], method="net2net"),
                         after=layers["fc1"], method="net2net")
    student = ex.redraw_new_layers(teacher, identity, seed=3)
    before = {t.name: numpy_helper.to_array(t) for t in identity.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    old = {t.name for t in teacher.graph.initializer}
    changed = {n for n in after if not np.array_equal(after[n], before[n])}
    assert changed and not changed & old
    weights = [after[n] for n in changed if after[n].ndim >= 2]
    assert len(weights) == 2  # the new conv and the new fc
    for w in weights:
        fan_in = int(np.prod(w.shape[1:]))
        assert abs(w.std() / np.sqrt(2 / fan_in) - 1) < 0.1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_processes(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc_per_node=2", str(TOOL), "--quick", "--seeds", "1", "--teacher-epochs", "2",
           "--student-epochs", "1", "--runs", "wider_net2net,wider_random", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["environment"]["processes"] == 2
    assert result["claim"]["epoch0_exact"]
