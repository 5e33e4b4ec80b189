"""Interruption, as schedulers and users deliver it, of a `widen` whose write takes a moment.

SIGKILL at seeded moments never leaves a partial output (absent, or byte-identical to an
uninterrupted run's), and the next run into the same folder removes the dead run's temporary
folder — never a live run's. SIGTERM and SIGINT (Ctrl-C) unwind, remove the temporary folder,
write nothing, and exit 143 / 130 with one line, also when Ctrl-C comes during start-up.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgrow import files

REPO = Path(__file__).resolve().parents[1]
IN, HIDDEN, OUT, WIDER = 2048, 4096, 256, 6144  # ~36 MB of weights in, ~54 MB out


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """x[1, IN] -> fc1 (Gemm) -> relu -> fc2 (Gemm) -> y, random float32 weights and biases."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name)
             for name, shape in (("w1", (HIDDEN, IN)), ("b1", (HIDDEN,)), ("w2", (OUT, HIDDEN)), ("b2", (OUT,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])], inits)
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def start(model: Path, out: Path, **popen) -> subprocess.Popen:
    argv = [sys.executable, "-m", "onnxgrow.cli", "widen", str(model), "--layer", "fc1",
            "--width", str(WIDER), "--no-verify", "-o", str(out)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def temp_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(files.PREFIX))


def wait_for_temp_folder(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> bool:
    """Wait until `proc` has created its temporary folder (it is writing); False if it ended."""
    deadline = time.monotonic() + timeout
    mine = f"{files.PREFIX}{proc.pid}-"
    while time.monotonic() < deadline:
        if any(p.name.startswith(mine) for p in temp_folders(folder)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the run never started writing")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(big_model, tmp_path_factory):
    """An uninterrupted run's output digest and its duration in seconds."""
    out = tmp_path_factory.mktemp("ref") / "student.onnx"
    began = time.monotonic()
    proc = start(big_model, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    model = onnx.load(out)
    assert numpy_helper.to_array(next(t for t in model.graph.initializer if t.dims[0] == WIDER)).shape == (WIDER, IN)
    return digest(out), time.monotonic() - began


def test_sigkill_never_leaves_a_partial_output_and_the_next_run_cleans_up(big_model, reference, tmp_path):
    ref_digest, duration = reference
    rng = np.random.default_rng(11)
    moments = [("any time", t) for t in rng.uniform(0.1, 1.0, 3) * duration]
    moments += [("while writing", t) for t in rng.uniform(0.0, 0.02, 2)]
    out = tmp_path / "student.onnx"
    stale_seen = 0
    for when, delay in moments:
        proc = start(big_model, out)
        if when == "while writing" and not wait_for_temp_folder(proc, tmp_path):
            pytest.fail("the run finished before it was seen writing")
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        if out.exists():
            assert digest(out) == ref_digest, f"partial output after SIGKILL {when} (+{delay:.3f} s)"
            out.unlink()
        stale_seen += bool(temp_folders(tmp_path))
    assert stale_seen, "no kill landed during a write: the test proves nothing about cleanup"
    proc = start(big_model, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == ref_digest
    assert temp_folders(tmp_path) == [], "the dead runs' temporary folders were left behind"


def test_a_live_runs_temporary_folder_is_never_removed(big_model, reference, tmp_path):
    out = tmp_path / "student.onnx"
    proc = start(big_model, out)
    assert wait_for_temp_folder(proc, tmp_path)
    assert files.clear_stale(tmp_path) == []
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == reference[0]
    assert temp_folders(tmp_path) == []


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_during_the_write_clean_up(big_model, tmp_path, sig, code, word):
    out = tmp_path / "student.onnx"
    proc = start(big_model, out)
    assert wait_for_temp_folder(proc, tmp_path)
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(word), err
    assert "Traceback" not in stdout + err
    assert not out.exists() and temp_folders(tmp_path) == []


def catches_sigterm(pid: int) -> bool:
    """True once the process has installed a SIGTERM handler (onnxgrow's first act)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def test_ctrl_c_during_start_up_prints_one_line(big_model, tmp_path):
    rng = np.random.default_rng(5)
    for delay in rng.uniform(0.0, 0.07, 4):
        proc = start(big_model, tmp_path / "student.onnx")
        while not catches_sigterm(proc.pid):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted"), (delay, err)
        assert "Traceback" not in stdout + err
        assert list(tmp_path.iterdir()) == []


def test_clear_stale_removes_only_dead_runs_folders(tmp_path):
    """Without a lock file (killed before locking) the pid decides; other names are left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{files.PREFIX}{gone.pid}-abc"
    alive = tmp_path / f"{files.PREFIX}{os.getpid()}-def"
    foreign = tmp_path / f"{files.PREFIX}notours"
    for folder in (dead, alive, foreign):
        folder.mkdir()
        (folder / "student.onnx").write_bytes(b"partial")
    assert files.clear_stale(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, foreign.name])


def test_ctrl_c_stays_ignored_where_the_parent_ignores_it(big_model, reference, tmp_path):
    """A background job or `nohup` ignores SIGINT: onnxgrow must not take that back."""
    out = tmp_path / "student.onnx"
    proc = start(big_model, out, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert wait_for_temp_folder(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == reference[0]
