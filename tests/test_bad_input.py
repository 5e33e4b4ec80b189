"""A corpus of bad input, tried from outside as a user would: each case is a command line run in
its own process (see tests/cli_runner.py) on files built for it in a folder of its own.

Every case must exit 2 with a message on stderr that names what is wrong, print no traceback,
leave every file it reads byte for byte as it was, and write nothing: the case's folder holds
exactly the same files afterwards (no output, no `.onnxgrow-*` temporary folder). A pickle
payload that would create a marker file if it were ever unpickled must leave no marker.
Names with shell metacharacters and unicode are not bad input: they must work.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_cli_errors import conv_model

REPO = Path(__file__).resolve().parents[1]
CASES = {}


def case(expect: str):
    """Register a case builder: f(folder) -> argv; `expect` must appear in the message."""
    def register(build):
        CASES[build.__name__.removeprefix("case_")] = (build, expect)
        return build
    return register


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def good(d: Path, name: str = "m.onnx") -> Path:
    return save(conv_model(), d / name)


def widen(model, d: Path, *extra, width: str = "8", out: Path | None = None) -> list:
    return ["widen", str(model), "--layer", "conv1", "--width", width, "-o", str(out or d / "out.onnx"), *extra]


def edited(d: Path, edit) -> Path:
    model = conv_model()
    edit(model)
    return save(model, d / "m.onnx")


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


class Payload:
    """Unpickling this creates the file `marker`: proof that the loader ran foreign code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- model files


@case("does not exist")
def case_missing_model(d):
    return ["inspect", str(d / "nothere.onnx")]


@case("empty")
def case_empty_file(d):
    (d / "m.onnx").write_bytes(b"")
    return widen(d / "m.onnx", d)


@case("m.onnx")
def case_truncated_protobuf(d):
    data = conv_model().SerializeToString()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return widen(d / "m.onnx", d)


@case("m.onnx")
def case_random_bytes(d):
    (d / "m.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["inspect", str(d / "m.onnx")]


@case("folder")
def case_folder_as_model(d):
    (d / "m.onnx").mkdir()
    return widen(d / "m.onnx", d)


@case("m.onnx")
def case_tensorproto_as_model(d):
    (d / "m.onnx").write_bytes(numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    return ["inspect", str(d / "m.onnx")]


@case("m.onnx")
def case_graphproto_as_model(d):
    (d / "m.onnx").write_bytes(conv_model().graph.SerializeToString())
    return widen(d / "m.onnx", d)


@case("IR version 99")
def case_future_ir_version(d):
    return widen(edited(d, lambda m: setattr(m, "ir_version", 99)), d)


@case("opset 99")
def case_future_opset(d):
    return ["inspect", str(edited(d, lambda m: setattr(m.opset_import[0], "version", 99)))]


@case("com.nowhere")
def case_domain_not_imported(d):
    return widen(edited(d, lambda m: setattr(m.graph.node[1], "domain", "com.nowhere")), d)


@case("Frobnicate")
def case_unknown_op_in_imported_domain(d):
    def edit(m):
        m.graph.node[1].op_type, m.graph.node[1].domain = "Frobnicate", "com.nowhere"
        m.opset_import.append(helper.make_opsetid("com.nowhere", 1))
    return widen(edited(d, edit), d)


@case("later node")
def case_cycle(d):
    def edit(m):  # relu1 reads conv2's output, which reads relu1's
        m.graph.node[1].input[0] = "y"
    return ["inspect", str(edited(d, edit))]


@case("'ghost'")
def case_undefined_input(d):
    return ["inspect", str(edited(d, lambda m: m.graph.node[1].input.__setitem__(0, "ghost")))]


@case("out of topological order")
def case_nodes_out_of_order(d):
    def edit(m):
        nodes = list(m.graph.node)[::-1]
        del m.graph.node[:]
        m.graph.node.extend(nodes)
    return widen(edited(d, edit), d)


@case("defined twice")
def case_duplicate_value_name(d):
    return ["inspect", str(edited(d, lambda m: m.graph.node[1].output.__setitem__(0, "h")))]


@case("two initializers named 'w1'")
def case_duplicate_initializer(d):
    def edit(m):
        other = numpy_helper.from_array(np.full((4, 3, 3, 3), 2.0, np.float32), "w1")
        m.graph.initializer.append(other)
    return ["export", str(edited(d, edit)), "-o", str(d / "out.pt")]


@case("'z'")
def case_output_never_produced(d):
    def edit(m):
        m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
    return ["export", str(edited(d, edit)), "-o", str(d / "out.pt")]


@case("2 nodes are named 'conv1'")
def case_duplicate_node_names(d):
    return widen(edited(d, lambda m: setattr(m.graph.node[2], "name", "conv1")), d)


@case("truncated or corrupt")
def case_initializer_data_shorter_than_dims(d):
    def edit(m):
        w = init(m, "w1")
        w.raw_data = w.raw_data[: len(w.raw_data) // 2]
    return widen(edited(d, edit), d)


@case("truncated or corrupt")
def case_initializer_values_fewer_than_dims(d):
    def edit(m):
        w = init(m, "b1")
        values = numpy_helper.to_array(w)[:2]
        w.ClearField("raw_data")
        w.float_data.extend(values.tolist())
    return ["inspect", str(edited(d, edit))]


@case("zero-size")
def case_zero_size_weight(d):
    def edit(m):
        w = init(m, "w1")
        w.CopyFrom(numpy_helper.from_array(np.zeros((0, 3, 3, 3), np.float32), "w1"))
    return widen(edited(d, edit), d)


def set_group(m: onnx.ModelProto, group: int) -> None:
    m.graph.node[0].attribute.append(helper.make_attribute("group", group))


@case("group=0")
def case_conv_group_zero(d):
    return widen(edited(d, lambda m: set_group(m, 0)), d)


@case("group=0")
def case_export_conv_group_zero(d):
    return ["export", str(edited(d, lambda m: set_group(m, 0))), "-o", str(d / "m.pt")]


@case("does not divide")
def case_conv_group_not_dividing_channels(d):
    return ["inspect", str(edited(d, lambda m: set_group(m, 3)))]


@case("not valid UTF-8")
def case_node_name_not_utf8(d):
    data = conv_model().SerializeToString()
    assert data.count(b"relu1") == 1
    (d / "m.onnx").write_bytes(data.replace(b"relu1", b"relu\xff"))  # same length: still parses
    return widen(d / "m.onnx", d)


def gemm_model(weight: np.ndarray) -> onnx.ModelProto:
    """x[2, 4] -> fc (Gemm with `weight` as B) -> y."""
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@case("3-D B")
def case_export_gemm_3d_weight(d):
    model = save(gemm_model(np.ones((3, 4, 5), np.float32)), d / "m.onnx")
    return ["export", str(model), "-o", str(d / "m.pt")]


@case("sparse initializer 'w'")
def case_export_sparse_initializer_out_of_range(d):
    model = gemm_model(np.ones((4, 3), np.float32))
    del model.graph.initializer[:]
    values = numpy_helper.from_array(np.array([1.5, 2.0], np.float32), "w")
    model.graph.sparse_initializer.append(
        helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 12], np.int64), "i"), [4, 3]))
    return ["export", str(save(model, d / "m.onnx")), "-o", str(d / "m.pt")]


def external(d: Path, location: str | None = None) -> Path:
    """conv_model with every weight in one external file, `m.onnx.data` (or `location`)."""
    model = conv_model()
    onnx.save(model, d / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    if location is not None:
        model = onnx.load(d / "m.onnx", load_external_data=False)
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        save(model, d / "m.onnx")
    return d / "m.onnx"


@case("missing")
def case_external_data_missing(d):
    model = external(d)
    (d / "m.onnx.data").unlink()
    return widen(model, d)


@case("truncated")
def case_external_data_truncated(d):
    model = external(d)
    data = (d / "m.onnx.data").read_bytes()
    (d / "m.onnx.data").write_bytes(data[: len(data) - 100])
    return widen(model, d)


@case("outside the model's folder")
def case_external_data_outside_folder(d):
    (d / "sub").mkdir()
    external(d)
    os.replace(d / "m.onnx.data", d / "outside.data")
    os.replace(d / "m.onnx", d / "sub" / "m.onnx")
    model = d / "sub" / "m.onnx"
    proto = onnx.load(model, load_external_data=False)
    for t in proto.graph.initializer:
        next(e for e in t.external_data if e.key == "location").value = "../outside.data"
    save(proto, model)
    return widen(model, d)


@case("outside the model's folder")
def case_external_data_absolute_path(d):
    return ["inspect", str(external(d, location="/etc/hostname"))]


@case("outside the model's folder")
def case_external_data_symlink_outside_folder(d):
    (d / "sub").mkdir()
    external(d)
    os.replace(d / "m.onnx", d / "sub" / "m.onnx")
    (d / "sub" / "m.onnx.data").symlink_to(d / "m.onnx.data")
    return widen(d / "sub" / "m.onnx", d)


@case("hard links")
def case_external_data_hard_link(d):
    model = external(d)
    os.link(d / "m.onnx.data", d / "elsewhere.data")
    return widen(model, d)


@case("NaN or infinite")
def case_nan_weights(d):
    def edit(m):
        w = numpy_helper.to_array(init(m, "w2")).copy()
        w[0, 0, 0, 0] = np.nan
        init(m, "w2").CopyFrom(numpy_helper.from_array(w, "w2"))
    return widen(edited(d, edit), d)


@case("NaN or infinite")
def case_inf_weights(d):
    def edit(m):
        b = numpy_helper.to_array(init(m, "b1")).copy()
        b[1] = np.inf
        init(m, "b1").CopyFrom(numpy_helper.from_array(b, "b1"))
    return ["deepen", str(edited(d, edit)), "--after", "conv1", "-o", str(d / "out.onnx")]


# ----------------------------------------------------------------------------- options


@case("108.0 TB")
def case_width_huge(d):
    return widen(good(d), d, width="1000000000000")


@case("--width")
def case_width_zero(d):
    return widen(good(d), d, width="0")


@case("--width")
def case_width_not_a_number(d):
    return widen(good(d), d, width="eight")


@case("--seed")
def case_seed_negative(d):
    return widen(good(d), d, "--seed", "-1")


@case("100001x100001 kernel")
def case_kernel_huge(d):
    return ["morph-kernel", str(good(d)), "--layer", "conv1", "--kernel", "100001", "-o", str(d / "out.onnx")]


@case("100001x100001 kernel")
def case_deepen_kernel_huge(d):
    return ["deepen", str(good(d)), "--after", "conv1", "--kernel", "100001", "-o", str(d / "out.onnx")]


def dynamic(d: Path) -> Path:
    """conv_model with a dynamic batch dimension named N."""
    def edit(m):
        for value in (m.graph.input[0], m.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "N"
    return edited(d, edit)


@case("N=1000000000000")
def case_dim_huge(d):
    model = dynamic(d)
    return ["verify", str(model), str(model), "--dim", "N=1000000000000"]


@case("--dim")
def case_dim_expression(d):
    model = dynamic(d)
    return ["verify", str(model), str(model), "--dim", "N=10**12"]


# ----------------------------------------------------------------------------- outputs


@case("is a folder")
def case_output_is_folder(d):
    (d / "o").mkdir()
    return widen(good(d), d, out=d / "o")


@case("is a folder")
def case_output_is_the_current_folder(d):
    return widen(good(d), d, out=Path("."))  # run in `d`


@case("too long")
def case_output_name_too_long(d):
    return widen(good(d), d, out=d / ("a" * 300 + ".onnx"))


@case("does not exist")
def case_output_folder_missing(d):
    return widen(good(d), d, out=d / "no" / "out.onnx")


@case("cannot write")
def case_output_folder_not_writable(d):
    folder = d / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere on a normal file system; /proc takes no files
        folder = Path("/proc")
    return widen(good(d), d, out=folder / "out.onnx")


@case("never modifies its input")
def case_output_is_the_model(d):
    model = good(d)
    return ["morph-kernel", str(model), "--layer", "conv1", "--kernel", "5", "-o", str(model)]


@case("never modifies its input")
def case_output_is_the_model_via_symlink(d):
    model = good(d)
    (d / "link.onnx").symlink_to(model)
    return ["widen", str(model), "--layer", "conv1", "--width", "8", "-o", str(d / "link.onnx")]


@case("never modifies its input")
def case_output_is_the_model_via_dotdot(d):
    model = good(d)
    (d / "sub").mkdir()
    return ["deepen", str(model), "--after", "conv1", "-o", str(d / "sub" / ".." / "m.onnx")]


@case("never modifies its input")
def case_output_is_the_models_external_data(d):
    return ["deepen", str(external(d)), "--after", "conv1", "-o", str(d / "m.onnx.data")]


@case("never modifies its input")
def case_output_data_file_would_replace_the_models(d):
    model = external(d, location="other.onnx.data")
    os.replace(d / "m.onnx.data", d / "other.onnx.data")
    return ["widen", str(model), "--layer", "conv1", "--width", "8", "-o", str(d / "other.onnx")]


@case("never modifies its input")
def case_output_is_the_inputs_npz(d):
    np.savez(d / "x.npz", x=np.ones((1, 3, 8, 8), np.float32))
    return ["widen", str(good(d)), "--layer", "conv1", "--width", "8", "--inputs", str(d / "x.npz"),
            "-o", str(d / "x.npz")]


@case("never modifies its input")
def case_output_is_the_trained_pt(d):
    import torch

    from onnxgrow.torch_export import to_torch

    torch.save(to_torch(conv_model()).state_dict(), d / "w.pt")
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "w.pt")]


@case("never modifies its input")
def case_export_over_the_model(d):
    model = good(d, "m.pt")
    return ["export", str(model), "-o", str(model)]


# ----------------------------------------------------------------------------- .npz inputs


@case("x.npz")
def case_npz_with_pickle(d):
    np.savez(d / "x.npz", x=np.array([Payload(d / "MARKER")], dtype=object))
    return ["verify", str(good(d)), str(good(d, "s.onnx")), "--inputs", str(d / "x.npz")]


@case("'nope'")
def case_npz_wrong_name(d):
    np.savez(d / "x.npz", nope=np.ones((1, 3, 8, 8), np.float32))
    return ["verify", str(good(d)), str(good(d, "s.onnx")), "--inputs", str(d / "x.npz")]


@case("shape [1, 3, 4, 4]")
def case_npz_wrong_shape(d):
    np.savez(d / "x.npz", x=np.ones((1, 3, 4, 4), np.float32))
    return widen(good(d), d, "--inputs", str(d / "x.npz"))


@case("complex128")
def case_npz_wrong_dtype(d):
    np.savez(d / "x.npz", x=np.ones((1, 3, 8, 8), np.complex128))
    return ["verify", str(good(d)), str(good(d, "s.onnx")), "--inputs", str(d / "x.npz")]


@case("x.npz")
def case_npy_named_npz(d):
    with open(d / "x.npz", "wb") as f:
        np.save(f, np.ones((1, 3, 8, 8), np.float32))
    return ["verify", str(good(d)), str(good(d, "s.onnx")), "--inputs", str(d / "x.npz")]


# ----------------------------------------------------------------------------- .pt files


@case("arbitrary code")
def case_pt_with_pickle_payload(d):
    import torch

    torch.save({"w1": Payload(d / "MARKER")}, d / "w.pt")
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "out.onnx")]


@case("not a PyTorch file")
def case_raw_pickle_payload(d):
    (d / "w.pt").write_bytes(pickle.dumps(Payload(d / "MARKER")))
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "out.onnx")]


@case("list")
def case_pt_not_a_state_dict(d):
    import torch

    torch.save([1, 2, 3], d / "w.pt")
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "out.onnx")]


@case("lacks")
def case_pt_state_dict_of_another_model(d):
    import torch

    torch.save({"fc.weight": torch.zeros(2, 2)}, d / "w.pt")
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "out.onnx")]


@case("w.pt")
def case_pt_empty(d):
    (d / "w.pt").write_bytes(b"")
    return ["import-weights", str(good(d)), str(d / "w.pt"), "-o", str(d / "out.onnx")]


# ----------------------------------------------------------------------------- running the corpus


def snapshot(folder: Path) -> dict:
    """Every path under `folder` -> sha256 of its bytes (files), "dir", or its link target."""
    state = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                state[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Build every case in its own folder, run them all once; name -> (code, out, err, before, after)."""
    root = tmp_path_factory.mktemp("bad-input")
    plan, names = [], sorted(CASES)
    for name in names:
        d = root / name
        d.mkdir()
        argv = CASES[name][0](d)
        plan.append({"argv": argv, "cwd": str(d), "stdout": str(root / f"{name}.out"),
                     "stderr": str(root / f"{name}.err"), "before": snapshot(d)})
    (root / "cases.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "cli_runner.py"), str(root / "cases.json"),
                           str(root / "codes.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    codes = json.loads((root / "codes.json").read_text())
    results = {}
    for name, item, code in zip(names, plan, codes, strict=True):
        results[name] = (code, Path(item["stdout"]).read_text(), Path(item["stderr"]).read_text(),
                         item["before"], snapshot(Path(item["cwd"])))
    return results


def test_corpus_is_large_enough():
    assert len(CASES) >= 40, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused(corpus, name):
    code, out, err, before, after = corpus[name]
    expect = CASES[name][1]
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert err.strip(), "no message"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(("error:", "Error:")), err
    assert expect in err, f"{expect!r} not in message: {err}"
    assert "MARKER" not in after, "a pickle payload was executed"
    assert after == before, f"files changed or written: {set(after.items()) ^ set(before.items())}"


# ----------------------------------------------------------------------------- odd but valid names


ODD = "mödel ;$(touch PWNED) `id` & | 'q' \"dq\" 模型"


def test_shell_metacharacters_and_unicode_names_work(tmp_path):
    """Odd file, folder, node and value names are valid input: widen and inspect must succeed."""
    folder = tmp_path / ODD
    folder.mkdir()
    model = conv_model()
    renames = {"conv1": "conv ü;$(touch PWNED)", "h": "h ∑ `id`", "x": "x 入力 $HOME"}
    for node in model.graph.node:
        node.name = renames.get(node.name, node.name)
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    model.graph.input[0].name = renames["x"]
    src = save(model, folder / f"{ODD}.onnx")
    out = folder / f"out {ODD}.onnx"
    for argv in (["widen", src, "--layer", renames["conv1"], "--width", "6", "-o", out], ["inspect", out]):
        done = subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, argv)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert renames["conv1"] in done.stdout
    assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))
    grown = onnx.load(out)
    assert numpy_helper.to_array(next(t for t in grown.graph.initializer if "w1" in t.name)).shape[0] == 6


# ----------------------------------------------------------------------------- infinite bounds


def test_infinite_bounds_are_not_bad_weights(tmp_path):
    """A single ±Inf is a bound, not a diverged weight: torch's clamp(min=…) is Clip with max = +Inf
    (openWakeWord's mel front end), tf2onnx's floor is Max(−Inf, x) (Magika). Both grow; a NaN bound
    and an Inf inside a real weight are still refused (the cases above)."""
    model = conv_model()
    clip, floor = next(n for n in model.graph.node if n.op_type == "Relu"), "floor"
    clip.op_type, clip.input[:] = "Clip", ["h", "lo", "hi"]
    clip.output[:] = ["c"]
    model.graph.node.insert(2, helper.make_node("Max", ["c", floor], ["r"], name="max1"))
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.float32), "lo"),
                                    numpy_helper.from_array(np.array(np.inf, np.float32), "hi"),
                                    numpy_helper.from_array(np.array([-np.inf], np.float32), floor)])
    src = save(model, tmp_path / "m.onnx")
    for argv in (["widen", src, "--layer", "conv1", "--width", "8", "-o", tmp_path / "w.onnx"],
                 ["deepen", src, "--after", "conv1", "--method", "r2r", "-o", tmp_path / "d.onnx"]):
        done = subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, argv)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "match" in done.stdout
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([np.nan], np.float32), floor))
    argv = ["widen", save(model, tmp_path / "nan.onnx"), "--layer", "conv1", "--width", "8", "-o", tmp_path / "n.onnx"]
    done = subprocess.run([sys.executable, "-m", "onnxgrow.cli", *map(str, argv)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "NaN or infinite" in done.stderr, done.stderr
