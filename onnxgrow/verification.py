"""Run teacher and student in onnxruntime on the same inputs and compare every output.

The comparison rule. For each output, let S = max |t| over every element of the teacher's output
t in every sample (finite values only). An element passes when

    |t - s| <= atol + rtol * S          (defaults: atol = 1e-6, rtol = 5e-5)

and the output passes when every element does and the student has no NaN or Inf where the
teacher is finite. The tolerance scales with the output's largest magnitude, not with each
element: a per-element relative error |t - s| / |t| (Polygraphy's rtol) is meaningless where t
is near zero, and the rounding error of an exact float32 transform grows with the magnitudes
flowing through the network, not with the size of one element. Measured: a correct widening
followed by 160 float32 layers changes the output by 2.4e-5 at S = 7.45, i.e. 3.2e-6 of S, which
passes; a real change moves it by far more, which fails. tests/test_verify.py measures it on
160-layer float32 chains (plain and residual): an exact Net2Net widening or rescaling leaves 3e-7
to 2.5e-6 of S; one of 164k weights changed by 5% moves the output by 4e-4 to 1.8e-3 of S.

An output made by Softmax, LogSoftmax or Sigmoid that fails is judged again by its logits (the op's
input, in both models), at the same tolerance relative to the logits' own scale: probabilities are
a fixed function of the logits, and float32 rounding of logits of size Z moves them by up to ~Z·ε,
which a tolerance scaled by probabilities (S ≤ 1) does not allow for (a 6,625-way Softmax over
logits of size 36: an exact widening moves one probability by 6e-5). The report says so.

The report gives, per output, the largest, mean and 99th-percentile absolute error, the largest
error relative to S, and the smallest tolerance that would have passed: min atol = max|t - s| -
rtol * S at the given rtol, and min rtol = (max|t - s| - atol) / S at the given atol.

Inputs are an .npz file (or a dict) keyed by graph input name, used as one sample, or fresh
seeded random draws: floats N(0, 1); integers in [0, vocab) when they index a constant table
through Gather (token ids into an embedding), else in [0, 10); bools uniform. Dynamic dimensions
(named, unnamed, or declared -1 or 0: old exporters mean "any size" by them) take the sizes in
`dims` ({"batch": 4}; an unnamed one as {"x:2": 224}, INPUT:AXIS) and 1 otherwise. When size 1
makes the teacher fail in onnxruntime (a Resize, pooling or an unpadded convolution on 1x1 images),
the dimensions `dims` leaves open, axis 0 (the batch) aside, are tried at the sizes the model tells
(ultralytics' `imgsz` in its metadata, a metadata entry named like the dimension), then at 32, 64,
128, 256 and 640; the report says which sizes ran.

Sessions: both models run with the same settings — graph optimisation ORT_ENABLE_BASIC
(constant folding and redundant-node removal only; the extended fusions rewrite the two graphs
differently, since their structure differs, and would add rounding differences of their own) and
deterministic compute. On CUDA, TF32 is off and cuDNN picks convolution algorithms by heuristic,
so repeated runs agree. Paths are handed to onnxruntime as paths, so external data (> 2 GB) works
and the weights are not read twice; the models run one after the other, never both at once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import graph, ops
from .errors import GrowError

DEFAULT_ATOL = 1e-6
DEFAULT_RTOL = 5e-5
INT_RANGE = 10  # integer inputs that index no table are drawn in [0, INT_RANGE)
PROVIDERS = ("auto", "cuda", "cpu")
SQUASHING = ("Softmax", "LogSoftmax", "Sigmoid")  # outputs judged by their logits when they fail
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


# ----------------------------------------------------------------------------- the comparison


def compare(teacher: list[np.ndarray], student: list[np.ndarray], atol: float, rtol: float) -> dict:
    """Error statistics of one output over all samples, by the rule in the module docstring."""
    t = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in teacher])
    s = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in student])
    t_finite, s_finite = np.isfinite(t), np.isfinite(s)
    both = t_finite & s_finite
    # where the teacher is NaN/Inf the student must say the same thing; where it is finite, so must the student
    same_special = (np.isnan(t) & np.isnan(s)) | (np.isinf(t) & (t == s))
    nonfinite = int(np.count_nonzero(t_finite & ~s_finite) + np.count_nonzero(~t_finite & ~same_special))
    scale = float(np.abs(t[t_finite]).max()) if t_finite.any() else 0.0
    err = np.abs(t[both] - s[both])
    max_abs = float(err.max()) if err.size else 0.0
    allowed = atol + rtol * scale
    return {
        "max_abs": max_abs,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "p99_abs": float(np.percentile(err, 99)) if err.size else 0.0,
        "max_rel": _ratio(max_abs, scale),
        "scale": scale,
        "min_atol": max(0.0, max_abs - rtol * scale),
        "min_rtol": _ratio(max(0.0, max_abs - atol), scale),
        "allowed": allowed,
        "nonfinite": nonfinite,
        "passed": nonfinite == 0 and max_abs <= allowed,
    }


def _ratio(num: float, den: float) -> float:
    if num == 0:
        return 0.0
    return num / den if den > 0 else float("inf")


# ----------------------------------------------------------------------------- the report


@dataclass
class OutputReport:
    name: str
    shape: list
    passed: bool
    atol: float
    rtol: float
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    p99_abs: float = float("nan")
    max_rel: float = float("nan")
    scale: float = float("nan")
    min_atol: float = float("nan")
    min_rtol: float = float("nan")
    allowed: float = float("nan")
    nonfinite: int = 0
    problem: str | None = None
    judged_by: str | None = None  # a squashed output that passed by its logits: how

    def to_dict(self) -> dict:
        return {k: _json_number(v) for k, v in self.__dict__.items()}


@dataclass
class VerifyReport:
    """What `verify` found: `ok`, one `OutputReport` per output, and how it ran."""

    ok: bool
    provider: str
    provider_note: str
    samples: int
    seed: int
    teacher: str
    student: str
    input_source: str
    inputs: list[dict]
    outputs: list[OutputReport]
    problems: list[str] = field(default_factory=list)
    dims: dict = field(default_factory=dict)  # the sizes the dynamic dimensions were drawn at
    dims_note: str = ""  # how they were chosen, when not given and size 1 did not run

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "provider": self.provider,
            "provider_note": self.provider_note,
            "samples": self.samples,
            "seed": self.seed,
            "teacher": self.teacher,
            "student": self.student,
            "rule": "|teacher - student| <= atol + rtol * max|teacher|, per output",
            "input_source": self.input_source,
            "inputs": self.inputs,
            "dims": dict(self.dims),
            "dims_note": self.dims_note,
            "outputs": [o.to_dict() for o in self.outputs],
            "problems": list(self.problems),
        }

    def format(self) -> str:
        ins = ", ".join(f"{i['name']} {i['dtype']}[{','.join(map(str, i['shape']))}]" for i in self.inputs)
        how = f"random, seed {self.seed}" if self.input_source == "random" else self.input_source
        lines = [
            f"teacher {self.teacher}  vs  student {self.student}",
            f"inputs ({how}, {self.samples} sample{'s' * (self.samples != 1)}): {ins or 'none'}",
            *([f"dynamic dimensions: {_sizes_text(self.dims)}; {self.dims_note}"] if self.dims_note else []),
            f"provider: {self.provider}" + (f" ({self.provider_note})" if self.provider_note else ""),
            "rule: |teacher - student| <= atol + rtol * S, S = max|teacher| of the output",
        ]
        head = ("output", "shape", "max abs", "mean abs", "p99 abs", "max abs/S", "S",
                "min atol", "min rtol", "allowed", "result")
        rows = [head]
        for o in self.outputs:
            result = ("ok" + (f" by {o.judged_by}" if o.judged_by else "") if o.passed
                      else ("FAIL: " + o.problem if o.problem else "FAIL"))
            rows.append((o.name, "x".join(map(str, o.shape)) or "scalar", *(_g(v) for v in (
                o.max_abs, o.mean_abs, o.p99_abs, o.max_rel, o.scale, o.min_atol, o.min_rtol,
                o.allowed)), result))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        lines.extend(f"problem: {p}" for p in self.problems)
        lines.append(f"match on {self.provider}" if self.ok else "MISMATCH: " + self._why())
        return "\n".join(lines)

    def _why(self) -> str:
        parts = []
        for o in self.outputs:
            if o.passed:
                continue
            if o.problem:
                parts.append(f"{o.name}: {o.problem}")
            else:
                parts.append(f"{o.name} differs by up to {_g(o.max_abs)} > allowed {_g(o.allowed)} "
                             f"(= {_g(o.atol)} + {_g(o.rtol)} * {_g(o.scale)})")
        return "; ".join(parts + self.problems)


def _g(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3g}"


def _json_number(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# ----------------------------------------------------------------------------- the models


@dataclass
class _Model:
    label: str
    source: str | bytes  # what onnxruntime loads: a path, or serialised bytes
    inputs: dict  # name -> (numpy dtype or None, shape: tuple of int | str ("?": any size), or None)
    outputs: list[str]
    vocab: dict  # integer input name -> rows of the smallest table it indexes through Gather
    metadata: dict = field(default_factory=dict)  # the model's metadata_props
    squashed: dict = field(default_factory=dict)  # output -> (op, its input): Softmax/LogSoftmax/Sigmoid outputs
    origin: object = None  # what the model was opened from (to add outputs when a squashed one fails)


def _open(model, role: str, tmp: Path) -> _Model:
    """Read what verification needs from `model`, then let the onnx-ir copy go."""
    import onnx
    import onnx_ir as ir

    if isinstance(model, (str, os.PathLike)):
        m = graph.load(model, role)  # clear errors for missing/empty/garbage files; weights mmapped
        label, source = str(model), str(model)
    else:
        if isinstance(model, onnx.ModelProto):
            try:
                m = ir.from_proto(model)
            except Exception as exc:
                raise GrowError(f"the {role} is not a valid ONNX model ({graph.short_message(exc)}).") from None
        elif isinstance(model, ir.Model):
            m = model
        else:
            m = graph.load(model, role)
        label = f"<in-memory {role}>"
        source = _serialise(m, model, tmp / f"{role}.onnx")
    inputs = {}
    for v in m.graph.inputs:
        if v.const_value is not None:  # an initializer listed as input: it has a default
            continue
        dtype = None if v.dtype is None else _numpy_dtype(v.dtype)
        inputs[v.name] = (dtype, graph.static_shape(v, probe=False))  # "?" for any size
    if any(d == 0 for v in m.graph.inputs if v.shape is not None for d in v.shape if isinstance(d, int)):
        source = _without_zero_dims(m, tmp / f"{role}.any-size.onnx")
    vocab = {name: n for name in inputs if (n := _table_rows(m.graph, name)) is not None}
    squashed = {v.name: (p.op_type, p.inputs[0].name) for v in m.graph.outputs
                if (p := v.producer()) is not None and ops.is_onnx(p) and p.op_type in SQUASHING
                and p.inputs and p.inputs[0] is not None and not p.inputs[0].is_graph_input()}
    return _Model(label, source, inputs, [v.name for v in m.graph.outputs], vocab, dict(m.metadata_props),
                  squashed, model)


def _with_outputs(model: _Model, names: list[str], role: str, tmp: Path) -> _Model:
    """`model` with the values `names` as extra graph outputs."""
    m = graph.load(model.origin, role)
    values = {v.name: v for node in m.graph for v in node.outputs if v is not None}
    present = {v.name for v in m.graph.outputs}
    for name in names:
        if name not in present:
            m.graph.outputs.append(values[name])
    source = _serialise(m, None, tmp / f"{role}.with-logits.onnx")
    return _Model(model.label, source, model.inputs, [v.name for v in m.graph.outputs], model.vocab)


def _without_zero_dims(m, path: Path) -> str | bytes:
    """What onnxruntime loads for a model whose inputs declare a dimension 0 ("any size" to the
    exporter): onnxruntime would take only empty tensors there, so the copy declares no size."""
    import onnx_ir as ir

    declared = {v: v.shape for v in m.graph.inputs}
    try:
        for v in m.graph.inputs:
            if v.shape is not None:
                v.shape = ir.Shape([None if isinstance(d, int) and d == 0 else d for d in v.shape])
        return _serialise(m, None, path)
    finally:
        for v, shape in declared.items():
            v.shape = shape


def _serialise(m, original, path: Path) -> str | bytes:
    """Bytes for a small in-memory model; a temporary file with external data for a large one."""
    import onnx
    import onnx_ir as ir

    external = any(isinstance(v.const_value, ir.ExternalTensor) for v in m.graph.initializers.values())
    if not external and graph.weight_bytes(m) < graph.EXTERNAL_DATA_THRESHOLD:
        proto = original if isinstance(original, onnx.ModelProto) else ir.to_proto(m)
        return proto.SerializeToString()
    try:
        ir.save(m, path, external_data=path.name + ".data")  # leaves `m` unchanged
    except OSError as exc:
        raise GrowError(f"cannot read the external data of the in-memory {path.stem} "
                        f"({exc.strerror or exc}: {exc.filename}). Pass the path of the .onnx file "
                        "instead, so its data files are found beside it.") from None
    return str(path)


def _numpy_dtype(dtype) -> np.dtype | None:
    try:
        return np.dtype(dtype.numpy())
    except Exception:
        return None


def _table_rows(g, name: str) -> int | None:
    """Rows of the smallest constant table that input `name` indexes (Gather), or None."""
    start = next(v for v in g.inputs if v.name == name)
    rows, todo, seen = [], [start], set()
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for use in value.uses():
            node = use.node
            if node.op_type == "Gather" and use.idx == 1:
                shape = _const_shape(node.inputs[0])
                axis = graph.attr(node, "axis", 0)
                if shape is not None and len(shape) > 0:
                    rows.append(int(shape[axis]))
            elif node.op_type in ops.RELAYOUT and use.idx == 0:
                todo.extend(node.outputs[:1])
    return min(rows) if rows else None


def _const_shape(value):
    if value is not None and value.const_value is not None and not value.is_graph_input():
        return tuple(value.const_value.shape)
    arr = graph.constant(value)
    return None if arr is None else arr.shape


def _check_same_inputs(t: _Model, s: _Model) -> dict:
    """The teacher's input specs with static sizes from either model; GrowError if they differ."""
    if set(t.inputs) != set(s.inputs):
        raise GrowError(
            f"the teacher and student take different inputs: teacher {sorted(t.inputs)}, student "
            f"{sorted(s.inputs)}. verify feeds both the same inputs, so their input names must match."
        )
    merged = {}
    for name, (t_dtype, t_shape) in t.inputs.items():
        s_dtype, s_shape = s.inputs[name]
        if t_dtype != s_dtype:
            raise GrowError(f"input {name!r} is {t_dtype} in the teacher but {s_dtype} in the student.")
        if t_shape is None or s_shape is None:
            merged[name] = (t_dtype, s_shape if t_shape is None else t_shape)
            continue
        conflict = len(t_shape) != len(s_shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(t_shape, s_shape))
        if conflict:
            raise GrowError(f"input {name!r} has shape {list(t_shape)} in the teacher but "
                            f"{list(s_shape)} in the student.")
        shape = tuple(b if isinstance(b, int) and not isinstance(a, int) else a for a, b in zip(t_shape, s_shape))
        merged[name] = (t_dtype, shape)
    return merged


# ----------------------------------------------------------------------------- inputs


def _dim_key(name: str, axis: int, d: str) -> str:
    """How `dims` names a dynamic dimension: its name, or INPUT:AXIS when it has none."""
    return f"{name}:{axis}" if d == "?" else d


def _dynamic_dims(specs: dict) -> dict:
    """{key: [(input, axis), ...]} for every dimension the inputs leave open."""
    found: dict = {}
    for name, (_, shape) in specs.items():
        for axis, d in enumerate(shape or ()):
            if isinstance(d, str):
                found.setdefault(_dim_key(name, axis, d), []).append((name, axis))
    return found


def _check_dims(dims: dict, dynamic: dict) -> None:
    unknown = sorted(set(dims) - set(dynamic))
    if unknown:
        have = (", ".join(dynamic) + " (INPUT:AXIS names a dimension that has no name)" if dynamic
                else "none: every input dimension is fixed")
        raise GrowError(f"--dim {', '.join(unknown)}: the model's inputs have no such dynamic "
                        f"dimension. Dynamic dimensions: {have}.")


def _input_shape(name: str, shape: tuple, sizes: dict) -> list[int]:
    return [d if isinstance(d, int) else sizes.get(_dim_key(name, axis, d), 1) for axis, d in enumerate(shape)]


def _random_samples(specs: dict, vocab: dict, sizes: dict, samples: int, seed: int) -> list[dict]:
    _check_sample_memory(specs, sizes, samples)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        feed = {}
        for name, (dtype, shape) in specs.items():
            if shape is None:
                raise GrowError(f"input {name!r} has no shape in the model, so no random value can "
                                "be drawn for it: pass the inputs in an .npz file with --inputs.")
            feed[name] = _draw(rng, name, dtype, _input_shape(name, shape, sizes), vocab.get(name))
        out.append(feed)
    return out


def _check_sample_memory(specs: dict, sizes: dict, samples: int) -> None:
    """Refuse dimension sizes whose random inputs cannot fit in memory (drawn as float64)."""
    from .validate import check_allocation

    elements = sum(math.prod(_input_shape(name, shape, sizes))
                   for name, (_, shape) in specs.items() if shape is not None)
    given = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the declared shapes"
    check_allocation(float(elements) * 8 * samples * 2, f"drawing {samples} random samples with {given}",
                     "the inputs")


def _draw(rng, name: str, dtype, shape, rows) -> np.ndarray:
    if dtype is None or dtype.kind not in "fiub":  # bfloat16, float8, strings: numpy cannot draw them
        raise GrowError(f"cannot draw random values for input {name!r} of type {dtype}: pass the "
                        "inputs in an .npz file with --inputs (inputs=... in Python).")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    high = min(rows if rows is not None else INT_RANGE, int(np.iinfo(dtype).max) + 1)
    return rng.integers(0, high, size=shape).astype(dtype)


def _given_samples(inputs, specs: dict) -> tuple[list[dict], str]:
    if isinstance(inputs, (str, os.PathLike)):
        arrays, source = _load_npz(Path(inputs)), str(inputs)
    elif isinstance(inputs, dict):
        arrays, source = dict(inputs), "given arrays"
    else:
        raise GrowError(f"inputs must be a path to an .npz file or a dict of arrays, not "
                        f"{type(inputs).__name__}.")
    missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
    if missing or extra:
        what = "; ".join(filter(None, (
            missing and f"missing {', '.join(map(repr, missing))}",
            extra and f"not inputs of the model: {', '.join(map(repr, extra))}")))
        raise GrowError(f"the inputs in {source} do not match the model's inputs ({what}). The model "
                        f"takes: {', '.join(f'{n} {d}{list(s or [])}' for n, (d, s) in specs.items())}.")
    feed = {}
    for name, (dtype, shape) in specs.items():
        arr = np.asarray(arrays[name])
        if shape is not None and (arr.ndim != len(shape) or any(
                isinstance(d, int) and d != n for d, n in zip(shape, arr.shape))):
            raise GrowError(f"input {name!r} in {source} has shape {list(arr.shape)}; the model "
                            f"expects {list(shape)} (named and '?' dimensions may take any size).")
        if dtype is not None and arr.dtype != dtype:
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise GrowError(f"input {name!r} in {source} is {arr.dtype}; the model expects {dtype}.")
            arr = arr.astype(dtype)
        feed[name] = arr
    return [feed], source


def _load_npz(path: Path) -> dict:
    if not path.is_file():
        raise GrowError(f"the inputs file {str(path)!r} does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("it holds a single array (.npy), not an .npz archive of named arrays")
        with data:
            return {k: data[k] for k in data.files}
    except GrowError:
        raise
    except Exception as exc:
        raise GrowError(f"cannot read the inputs file {str(path)!r} as .npz ({graph.short_message(exc)}). "
                        "Write it with numpy.savez(path, **{input_name: array}).") from None


# ----------------------------------------------------------------------------- onnxruntime


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, why not): whether onnxruntime can really run a model on CUDA here. Probed once."""
    ort = _ort()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime has no CUDA support; install onnxruntime-gpu"
    from onnx import TensorProto, helper

    probe = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with _captured_stderr() as log:
        if hasattr(ort, "preload_dlls"):  # finds CUDA installed from pip (nvidia-* wheels)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.suppress(Exception):
                    ort.preload_dlls()
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                        providers=[("CUDAExecutionProvider", CUDA_OPTIONS)])
            got = sess.get_providers()
            if "CUDAExecutionProvider" in got:
                sess.run(None, {"x": np.ones(1, np.float32)})
            error = None
        except Exception as exc:
            got, error = [], _ort_message(exc)
    if "CUDAExecutionProvider" in got:
        return True, ""
    return False, error or _cuda_reason(log[0])


def _cuda_reason(log: str) -> str:
    m = re.search(r"error: (\S+?): cannot open shared object file", log)
    if m:
        return f"{m.group(1)} missing; install the CUDA{_cuda_version()} libraries onnxruntime-gpu needs"
    m = re.search(r"CUDA failure \d+: ([^;\n]+)", log) or re.search(r"(no CUDA-capable device[^;\n]*)", log)
    if m:
        return m.group(1).strip()
    for line in log.splitlines():
        if "[E:" in line or "error" in line.lower():
            return re.sub(r"^.*?\] ", "", line.strip())[:200]
    return "onnxruntime fell back to CPU"


def _cuda_version() -> str:
    try:
        from onnxruntime.capi import build_and_package_info

        return " " + build_and_package_info.cuda_version.split(".")[0] + ".x"
    except Exception:
        return ""


@contextlib.contextmanager
def _captured_stderr():
    """Collect what native code writes to file descriptor 2 (onnxruntime's log) while in the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    log: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.append(tmp.read().decode(errors="replace"))


def _choose_provider(provider: str) -> tuple[str, str]:
    if provider not in PROVIDERS:
        raise GrowError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}.")
    if provider == "cpu":
        return "cpu", ""
    usable, why = cuda_status()
    if usable:
        return "cuda", ""
    if provider == "cuda":
        raise GrowError(f"CUDA was requested but is not usable here: {why}. Use --provider cpu "
                        "(or auto, which falls back to CPU).")
    return "cpu", f"CUDA not usable: {why}"


def _ort_message(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+ [^(]*\([^)]*\)( const)? ", "", text)  # where in its C++
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)[:400]


class _RunFailed(GrowError):
    """onnxruntime loaded the model but failed running it on a sample."""


def _run(model: _Model, provider: str, feeds: list[dict]) -> tuple[list[dict], str]:
    """Every sample through one session; returns outputs by name and the provider it ran on."""
    sess = _session(model, provider)
    return _outputs(sess, model, feeds), _session_provider(sess)


def _session_provider(sess) -> str:
    return "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"


def _session(model: _Model, provider: str):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures come back as exceptions; the log would repeat them
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.use_deterministic_compute = True
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", CUDA_OPTIONS))
    try:
        sess = ort.InferenceSession(model.source, opts, providers=providers)
    except Exception as exc:
        raise GrowError(f"onnxruntime cannot load {model.label}: {_ort_message(exc)}") from None
    return sess


def _outputs(sess, model: _Model, feeds: list[dict]) -> list[dict]:
    names = [o.name for o in sess.get_outputs()]
    results = []
    for i, feed in enumerate(feeds):
        try:
            values = sess.run(names, feed)
        except Exception as exc:
            raise _RunFailed(f"onnxruntime failed running {model.label} on input sample {i}: "
                             f"{_ort_message(exc)}") from None
        for name, v in zip(names, values):
            if not isinstance(v, np.ndarray):
                raise GrowError(f"output {name!r} of {model.label} is a {type(v).__name__}, not a "
                                "tensor; verify compares tensor outputs only.")
        results.append(dict(zip(names, values)))
    return results


# ----------------------------------------------------------------------------- sizes that run


RETRY_SIZES = graph.PROBE_SIZES[1:]  # 32 ... 640
IMAGE_SIZE_KEYS = ("imgsz", "img_size", "image_size", "input_size")  # metadata holding H, W


def _random_run(t: _Model, specs: dict, vocab: dict, dims: dict, samples: int, seed: int,
                provider: str):
    """Draw samples (see the module docstring) and run the teacher on them; when size 1 of the
    dimensions `dims` leaves open makes it fail, other sizes. Returns the samples, the teacher's
    outputs, the provider, and the sizes of the dynamic dimensions with how they were chosen."""
    dynamic = _dynamic_dims(specs)
    _check_dims(dims, dynamic)
    open_ = [k for k in dynamic if k not in dims]
    sizes = {**{k: 1 for k in open_}, **dims}
    sess = _session(t, provider)
    feeds = _random_samples(specs, vocab, sizes, samples, seed)
    try:
        return feeds, _outputs(sess, t, feeds), _session_provider(sess), sizes, ""
    except _RunFailed as exc:
        failure = exc
    # the batch keeps size 1: growing it only costs time, and a failure is seldom the batch's
    retry = [k for k in open_ if all(axis > 0 or len(specs[n][1]) < 2 for n, axis in dynamic[k])]
    hint = _dims_hint([*(retry or open_), *dims])
    if not retry:
        raise GrowError(f"{str(failure).rstrip('.')}. Its dynamic dimensions were drawn at size 1 "
                        f"({', '.join(open_)}): give the sizes the model needs {hint}."
                        if open_ else str(failure)) from None
    tried = []
    for told, label, chosen in _size_candidates(retry, dynamic, specs, t.metadata):
        candidate = {**sizes, **told}
        try:
            feeds = _random_samples(specs, vocab, candidate, samples, seed)
        except GrowError:  # these sizes cannot fit in memory; larger ones neither
            break
        try:
            outputs = _outputs(sess, t, feeds)
        except _RunFailed:
            tried.append(label)
            continue
        note = f"{chosen}; onnxruntime failed at {', '.join(['size 1', *tried])}: {_reason(failure)}"
        return feeds, outputs, _session_provider(sess), candidate, note
    given = f" (and {_sizes_text(dims)} as given)" if dims else ""
    raise GrowError(f"{str(failure).rstrip('.')}. With {', '.join(retry)} at "
                    f"{', '.join(tried) or 'no other size that fits in memory'}{given} it fails as well: "
                    f"give the sizes the model needs {hint}.") from None


def _reason(exc: Exception) -> str:
    """onnxruntime's words in a _RunFailed message."""
    return str(exc).split(": ", 1)[-1]


def _size_candidates(retry: list, dynamic: dict, specs: dict, metadata: dict):
    """({key: size}, label, as chosen) for each size to try: what the model tells, then powers of two."""
    told, why = {}, []
    for key in IMAGE_SIZE_KEYS:  # (height, width) or one size for both, of NCHW inputs
        hw = _ints(metadata.get(key))
        if hw is None or len(hw) > 2:
            continue
        for k in retry:
            for name, axis in dynamic[k]:
                if len(specs[name][1]) == 4 and axis in (2, 3):
                    told.setdefault(k, hw[axis - 2] if len(hw) == 2 else hw[0])
        if told:
            why.append(f"{key} {metadata[key]}")
        break
    for k in retry:
        size = _ints(metadata.get(k))
        if k not in told and size is not None and len(size) == 1:
            told[k] = size[0]
            why.append(f"{k} {size[0]}")
    if told:
        label = f"{_sizes_text(told)} ({', '.join(why)} in the model's metadata)"
        yield told, label, label
    for size in RETRY_SIZES:
        yield {k: size for k in retry}, str(size), f"{', '.join(retry)} at {size}"


def _ints(text) -> list[int] | None:
    """[ints] from metadata like "640", "[640, 640]" or "(480, 640)"; None otherwise."""
    if text is None:
        return None
    parts = re.findall(r"-?\d+", text)
    if not parts or re.sub(r"[\d\s,\[\]()\-]", "", text):
        return None
    values = [int(v) for v in parts]
    return values if all(v > 0 for v in values) else None


def _sizes_text(sizes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _dims_hint(keys: list) -> str:
    example = " ".join(f"--dim {k}=SIZE" for k in keys[:3])
    return f"with {example} or real inputs with --inputs FILE.npz (dims=, inputs= in Python)"


# ----------------------------------------------------------------------------- verify


def _tolerance(tol, name: str, default: float) -> float:
    if tol is None:
        return default
    if isinstance(tol, dict):
        return float(tol.get(name, tol.get("", default)))
    return float(tol)


def _check_tolerance(tol, outputs: list[str], what: str) -> None:
    values = tol.values() if isinstance(tol, dict) else [] if tol is None else [tol]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
            raise GrowError(f"{what} {v!r}: a tolerance must be a number >= 0.")
    if isinstance(tol, dict):
        unknown = sorted(set(tol) - set(outputs) - {""})
        if unknown:
            raise GrowError(f"{what} names {', '.join(map(repr, unknown))}, which the teacher does "
                            f"not output. Its outputs: {', '.join(outputs)}.")


def verify(teacher, student, *, provider: str = "auto", atol=None, rtol=None, samples: int = 3,
           inputs=None, dims=None, seed: int = 0) -> VerifyReport:
    """Run `teacher` and `student` on the same inputs and compare every output.

    teacher, student: a path, onnx.ModelProto, onnx_ir.Model or onnx-graphsurgeon Graph.
    atol, rtol: a float, a dict {output name: float} ("" for the rest), or None (1e-6, 5e-5).
    inputs: an .npz path or a dict of arrays keyed by input name (one sample); None draws
    `samples` random samples from `seed`, dynamic dimensions sized by `dims` or 1.
    Raises GrowError when the two cannot be compared; a mismatch is `report.ok == False`.
    """
    if not isinstance(samples, int) or samples < 1:
        raise GrowError(f"samples must be a positive integer, not {samples!r}.")
    with tempfile.TemporaryDirectory(prefix="onnxgrow-verify-") as tmp:
        t = _open(teacher, "teacher", Path(tmp))
        s = _open(student, "student", Path(tmp))
        specs = _check_same_inputs(t, s)
        _check_tolerance(atol, t.outputs, "atol")
        _check_tolerance(rtol, t.outputs, "rtol")
        used, note = _choose_provider(provider)
        sizes, sizes_note = {}, ""
        if inputs is not None:
            feeds, source = _given_samples(inputs, specs)
            t_out, t_used = _run(t, used, feeds)
        else:
            vocab = {n: min(v for v in (t.vocab.get(n), s.vocab.get(n)) if v is not None)
                     for n in set(t.vocab) | set(s.vocab)}
            feeds, t_out, t_used, sizes, sizes_note = _random_run(t, specs, vocab, dict(dims or {}),
                                                                  samples, seed, used)
            source = "random"
        s_out, s_used = _run(s, used, feeds)
        reports = [_compare_output(n, [o[n] for o in t_out], [o[n] for o in s_out],
                                   _tolerance(atol, n, DEFAULT_ATOL),
                                   _tolerance(rtol, n, DEFAULT_RTOL))
                   for n in t.outputs if n in s.outputs]
        _judge_by_logits(reports, t, s, feeds, used, Path(tmp))
    if used == "cuda" and "cpu" in (t_used, s_used):
        used, note = "cpu", "the CUDA session fell back to CPU"
    problems = [f"output {n!r} of the teacher is missing from the student" for n in t.outputs
                if n not in s.outputs]
    problems += [f"the student has an extra output {n!r}" for n in s.outputs if n not in t.outputs]
    return VerifyReport(
        ok=not problems and all(r.passed for r in reports),
        provider=used, provider_note=note, samples=len(feeds), seed=seed,
        teacher=t.label, student=s.label, input_source=source,
        inputs=[{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in feeds[0].items()],
        outputs=reports, problems=problems, dims=sizes, dims_note=sizes_note,
    )


def run_model(model, feeds: list[dict], provider: str = "auto") -> tuple[list[list[np.ndarray]], str]:
    """`model`'s outputs, in graph order, on each of `feeds`, and the provider it ran on."""
    with tempfile.TemporaryDirectory(prefix="onnxgrow-run-") as tmp:
        m = _open(model, "model", Path(tmp))
        used, _ = _choose_provider(provider)
        out, used = _run(m, used, feeds)
    return [[o[n] for n in m.outputs] for o in out], used


def _judge_by_logits(reports: list[OutputReport], t: _Model, s: _Model, feeds, provider, tmp: Path) -> None:
    """A failed Softmax/LogSoftmax/Sigmoid output passes when its input (the logits) passes at the
    same tolerance relative to the logits' own scale: the probabilities are a fixed function of the
    logits, and float32 rounding of logits of size Z moves a Softmax over many classes by up to
    ~Z·ε·p, which can exceed a tolerance set by the probabilities' scale of 1."""
    failed = [r for r in reports if not r.passed and not r.problem and r.name in t.squashed
              and t.squashed[r.name] == s.squashed.get(r.name)]
    if not failed:
        return
    logits = sorted({t.squashed[r.name][1] for r in failed})
    t_out, _ = _run(_with_outputs(t, logits, "teacher", tmp), provider, feeds)
    s_out, _ = _run(_with_outputs(s, logits, "student", tmp), provider, feeds)
    for r in failed:
        op, name = t.squashed[r.name]
        inner = _compare_output(name, [o[name] for o in t_out], [o[name] for o in s_out], r.atol, r.rtol)
        if inner.passed:
            r.passed = True
            r.judged_by = (f"its logits {name!r} ({op}'s input): max abs {_g(inner.max_abs)} ≤ allowed "
                           f"{_g(inner.allowed)} at their scale {_g(inner.scale)}")


def _compare_output(name, teacher, student, atol, rtol) -> OutputReport:
    shape = list(teacher[0].shape)
    for a, b in zip(teacher, student):
        if a.shape != b.shape:
            return OutputReport(name, shape, False, atol, rtol,
                                problem=f"shape {list(b.shape)} in the student, {list(a.shape)} in the teacher")
    stats = compare(teacher, student, atol, rtol)
    problem = f"{stats['nonfinite']} NaN/Inf values that the teacher does not have" if stats["nonfinite"] else None
    return OutputReport(name, shape, atol=atol, rtol=rtol, problem=problem, **stats)
