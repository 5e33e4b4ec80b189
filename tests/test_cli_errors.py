"""The bad-input contract of every command: exit 2, one message on stderr, no traceback, and the
input file left byte for byte as it was. Plus: `--help` is instant and imports nothing heavy."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgrow.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
BAD_FILES = ("missing", "empty", "truncated", "text", "png", "folder")


def conv_model() -> onnx.ModelProto:
    """x[1,3,8,8] -> conv1 (3->4, 3x3) -> relu1 -> conv2 (4->2, 3x3) -> y, random parameters."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((4, 3, 3, 3)) * 0.3), ("b1", rng.standard_normal(4) * 0.2),
        ("w2", rng.standard_normal((2, 4, 3, 3)) * 0.3), ("b2", rng.standard_normal(2) * 0.2))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def bad_file(folder: Path, kind: str, good: Path, suffix: str = ".onnx") -> Path:
    path = folder / f"bad_{kind}{suffix}"
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "png":
        path.write_bytes(PNG)
    elif kind == "folder":
        path.mkdir()
    return path


def digest(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else path.exists()


def run_main(capfd, argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.onnx"
    onnx.save(conv_model(), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real PyTorch file (a state dict), the kind import-weights reads."""
    import torch

    path = tmp_path_factory.mktemp("pt") / "trained.pt"
    torch.save({"w1": torch.zeros(4, 3, 3, 3)}, path)
    return path


def commands(model, other, out_dir: Path, trained: Path):
    """argv for every command with `model` as the file under test, `other` a good model."""
    return {
        "inspect": ["inspect", model],
        "inspect --json": ["inspect", model, "--json"],
        "verify (teacher)": ["verify", model, other],
        "verify (student)": ["verify", other, model],
        "widen": ["widen", model, "--layer", "conv1", "--width", "8", "-o", out_dir / "out.onnx"],
        "deepen": ["deepen", model, "--after", "conv1", "-o", out_dir / "out.onnx"],
        "morph-kernel": ["morph-kernel", model, "--layer", "conv1", "--kernel", "5", "-o", out_dir / "out.onnx"],
        "export": ["export", model, "-o", out_dir / "out.pt"],
        "import-weights": ["import-weights", model, trained, "-o", out_dir / "out.onnx"],
    }


COMMANDS = list(commands("M", "G", Path("."), Path("T")))


def assert_refused(code, out, err, names, out_dir: Path):
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert err.strip(), "no message on stderr"
    assert "Traceback" not in out + err
    assert "internal error" not in err
    for name in names:
        assert name in err, f"{name!r} not named in: {err}"
    left = sorted(p.name for p in out_dir.iterdir() if p.name.startswith(("out", ".onnxgrow")))
    assert left == [], f"left behind: {left}"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_model_file(tmp_path, good, trained, capfd, command, kind):
    bad = bad_file(tmp_path, kind, good)
    before, good_before = digest(bad), digest(good)
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    argv = commands(bad, good, out_dir, trained)[command]
    code, out, err = run_main(capfd, argv)
    assert_refused(code, out, err, [bad.name], out_dir)
    assert digest(bad) == before and digest(good) == good_before


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_trained_file(tmp_path, good, trained, capfd, kind):
    bad = bad_file(tmp_path, kind, trained, suffix=".pt")
    before, good_before = digest(bad), digest(good)
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    code, out, err = run_main(capfd, ["import-weights", good, bad, "-o", out_dir / "out.onnx"])
    assert_refused(code, out, err, [bad.name], out_dir)
    assert digest(bad) == before and digest(good) == good_before


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "png"])
def test_bad_inputs_file(tmp_path, good, capfd, kind):
    bad = bad_file(tmp_path, kind, good, suffix=".npz")
    before = digest(bad)
    code, out, err = run_main(capfd, ["verify", good, good, "--inputs", bad])
    assert_refused(code, out, err, [bad.name], tmp_path)
    assert digest(bad) == before


@pytest.mark.parametrize("argv", [
    ["widen", "{m}", "--layer", "conv_nope", "--width", "8", "-o", "{o}"],
    ["deepen", "{m}", "--after", "conv_nope", "-o", "{o}"],
    ["morph-kernel", "{m}", "--layer", "conv_nope", "--kernel", "5", "-o", "{o}"],
], ids=["widen", "deepen", "morph-kernel"])
def test_unknown_layer_names_the_closest(tmp_path, good, capfd, argv):
    before = digest(good)
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    argv = [a.format(m=good, o=out_dir / "out.onnx") for a in argv]
    code, out, err = run_main(capfd, argv)
    assert_refused(code, out, err, ["conv_nope", "conv1"], out_dir)
    assert digest(good) == before


@pytest.mark.parametrize("argv", [
    ["verify", "{m}", "{m}", "--atol", "abc"],
    ["verify", "{m}", "{m}", "--dim", "batch"],
    ["verify", "{m}", "{m}", "--dim", "nosuch=3"],
    ["verify", "{m}", "{m}", "--atol", "nosuch:1e-3"],
    ["verify", "{m}", "{m}", "--provider", "tpu"],
    ["verify", "{m}", "{m}", "--samples", "0"],
    ["widen", "{m}", "--layer", "conv1", "--width", "8"],  # no -o
    ["widen", "{m}", "--layer", "conv1", "--width", "8", "-o", "{m}"],  # over the input
    ["widen", "{m}", "--layer", "conv1", "--width", "8", "-o", "/no/such/folder/out.onnx"],
    ["nosuchcommand"],
])
def test_bad_options_exit_2(good, capfd, argv):
    before = digest(good)
    code, out, err = run_main(capfd, [a.format(m=good) for a in argv])
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert err.strip() and "Traceback" not in out + err and "internal error" not in err
    assert digest(good) == before


def test_a_real_process_exits_2_without_traceback(tmp_path, good):
    bad = bad_file(tmp_path, "png", good)
    for argv in (["inspect", bad], ["widen", bad, "--layer", "conv1", "--width", "8", "-o", tmp_path / "o.onnx"]):
        done = subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, argv)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and bad.name in done.stderr
        assert "Traceback" not in done.stdout + done.stderr


# ----------------------------------------------------------------------------- cheap start


def test_help_is_fast():
    best = min(_timed([sys.executable, "-m", "onnxgrow.cli", "--help"]) for _ in range(3))
    assert best < 1.0, f"`onnxgrow --help` took {best:.2f} s"


def _timed(argv) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "widen" in done.stdout, done.stderr
    return elapsed


def test_cli_imports_no_heavy_modules():
    code = (
        "import sys\n"
        "import onnxgrow.cli as c\n"
        "for argv in (['--help'], ['widen', '--help'], ['verify', '--help'], ['export', '--help']):\n"
        "    try:\n"
        "        c.main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'onnx_ir') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded and "onnxruntime" not in loaded, loaded
