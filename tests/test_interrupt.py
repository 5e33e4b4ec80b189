"""Interruption, as schedulers and users deliver it, of a `widen` whose write takes a moment.

SIGKILL at any stage never leaves a partial output (absent, or byte-identical to an
uninterrupted run's), and the next run into the same folder removes the dead run's temporary
folder — never a live run's. SIGTERM and SIGINT (Ctrl-C) unwind, remove the temporary folder,
write nothing, and exit 143 / 130 with one line, also when Ctrl-C comes during start-up.

The signals land at stages, not at times: the run freezes itself (SIGSTOP) at an audited event
— an import, the student's file opened in its temporary folder, the rename into place — and the
test signals it there, so a loaded machine changes how long a test takes, never what it proves.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgrow import files

REPO = Path(__file__).resolve().parents[1]
IN, HIDDEN, OUT, WIDER = 2048, 4096, 256, 6144  # ~36 MB of weights in, ~54 MB out

# stage -> (audit event, words its first argument contains): the run freezes at the first match
STAGES = {
    "start-up": ("import", ("click",)),  # before main(): onnxgrow's first handler is in place
    "importing numpy": ("import", ("numpy",)),
    "importing onnx-ir": ("import", ("onnx_ir",)),
    "writing": ("open", (files.PREFIX, "student.onnx")),  # the temporary folder exists, locked
    "renaming": ("os.rename", (files.PREFIX, "student.onnx")),  # written, not yet in place
}

# runs `python -m onnxgrow.cli ARGS` with an audit hook that freezes it at one stage
FREEZE_AT = textwrap.dedent("""
    import os, runpy, signal, sys
    event, words = sys.argv[1], sys.argv[2].split("|")
    del sys.argv[1:3]
    frozen = []
    def freeze(name, args):
        if not frozen and name == event and args and all(w in str(args[0]) for w in words):
            frozen.append(1)
            os.kill(os.getpid(), signal.SIGSTOP)
    sys.addaudithook(freeze)
    runpy.run_module("onnxgrow.cli", run_name="__main__", alter_sys=True)
""")


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


def start(model: Path, out: Path, frozen_at: str | None = None, **popen) -> subprocess.Popen:
    """Start `onnxgrow widen`; with `frozen_at`, it stops itself at that stage (see STAGES) and
    this returns once it has."""
    args = ["widen", str(model), "--layer", "fc1", "--width", str(WIDER), "--no-verify", "-o", str(out)]
    if frozen_at is None:
        argv = [sys.executable, "-m", "onnxgrow.cli", *args]
    else:
        event, words = STAGES[frozen_at]
        argv = [sys.executable, "-c", FREEZE_AT, event, "|".join(words), *args]
    popen.setdefault("preexec_fn", as_from_a_terminal)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    if frozen_at is not None:
        wait_until_stopped(proc, frozen_at)
    return proc


def as_from_a_terminal() -> None:
    """Ctrl-C delivered as in a terminal, also where this test runs as a background job (which
    ignores SIGINT, and so would onnxgrow: see the last test)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_stopped(proc: subprocess.Popen, stage: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state == "T":
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {stage}: {proc.communicate()}")
        time.sleep(0.002)
    raise AssertionError(f"the run never reached {stage}")


def signal_frozen(proc: subprocess.Popen, sig: int) -> None:
    """Deliver `sig` to a frozen run where it stands (SIGCONT after it: it is pending on resume)."""
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)


def temp_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(files.PREFIX))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(big_model, tmp_path_factory) -> str:
    """An uninterrupted run's output digest."""
    out = tmp_path_factory.mktemp("ref") / "student.onnx"
    proc = start(big_model, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    model = onnx.load(out)
    assert numpy_helper.to_array(next(t for t in model.graph.initializer if t.dims[0] == WIDER)).shape == (WIDER, IN)
    return digest(out)


def test_sigkill_never_leaves_a_partial_output_and_the_next_run_cleans_up(big_model, reference, tmp_path):
    out = tmp_path / "student.onnx"
    for stage in STAGES:
        proc = start(big_model, out, frozen_at=stage)
        proc.kill()
        proc.wait(timeout=60)
        assert not out.exists(), f"an output after SIGKILL at {stage}"
        stale = temp_folders(tmp_path)
        assert bool(stale) == (stage in ("writing", "renaming")), (stage, stale)
        if stage == "renaming":  # complete, but never put in place
            assert digest(stale[0] / out.name) == reference
    proc = start(big_model, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == reference
    assert temp_folders(tmp_path) == [], "the dead runs' temporary folders were left behind"


def test_a_live_runs_temporary_folder_is_never_removed(big_model, reference, tmp_path):
    out = tmp_path / "student.onnx"
    proc = start(big_model, out, frozen_at="writing")
    live = temp_folders(tmp_path)
    assert len(live) == 1
    assert files.clear_stale(tmp_path) == []
    assert temp_folders(tmp_path) == live
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == reference
    assert temp_folders(tmp_path) == []


@pytest.mark.parametrize("stage", ["writing", "renaming"])
@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_during_the_write_clean_up(big_model, reference, tmp_path, sig, code, word, stage):
    out = tmp_path / "student.onnx"
    proc = start(big_model, out, frozen_at=stage)
    assert len(temp_folders(tmp_path)) == 1
    signal_frozen(proc, sig)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(word), err
    assert "Traceback" not in stdout + err
    assert temp_folders(tmp_path) == []
    if out.exists():  # frozen in the rename's audit hook, the signal may be handled just after it
        assert stage == "renaming" and digest(out) == reference, "a partial output"


@pytest.mark.parametrize("stage", ["start-up", "importing numpy", "importing onnx-ir"])
def test_ctrl_c_during_start_up_prints_one_line(big_model, tmp_path, stage):
    proc = start(big_model, tmp_path / "student.onnx", frozen_at=stage)
    signal_frozen(proc, signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted"), err
    assert "Traceback" not in stdout + err
    assert list(tmp_path.iterdir()) == []


SWALLOWING_COMMAND = textwrap.dedent("""
    import signal, time
    from onnxgrow import cli

    class Dropped:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
            self.handled = True  # the handler runs here, where Python cannot raise

    @cli.cli.command("drop")
    def drop():
        Dropped()
        time.sleep(60)
        print("finished")

    cli.main(["drop"])
""")


def test_a_signal_swallowed_by_a_callback_still_interrupts():
    """Ctrl-C handled inside a __del__ or weakref callback (importlib's module-lock clean-up is
    one) cannot raise there: the run must still stop, not go on with the signal lost."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWING_COMMAND], cwd=REPO, capture_output=True,
                          text=True, timeout=120, preexec_fn=as_from_a_terminal)
    assert (proc.returncode, proc.stdout) == (130, ""), proc.stderr
    assert proc.stderr == "interrupted by SIGINT; temporary files removed.\n"


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
    proc = start(big_model, out, frozen_at="writing",
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    signal_frozen(proc, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert digest(out) == reference
