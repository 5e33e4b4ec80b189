"""Test helpers: run models in onnxruntime (CPU) and compare teacher and student.

Kept independent of onnxgrow.verify on purpose, so a bug there cannot hide a bug in a transform.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

# An exact transform of a float32 model changes outputs by rounding only: measured well under
# 1e-5 of the output's largest magnitude on the models here; a channel mapped to the wrong place
# changes them by O(1) of it.
SCALED_TOL = 1e-5


def as_proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return onnx.load(model)
    import onnx_ir as ir

    return ir.to_proto(model)


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(as_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_feeds(model, seed: int = 0, batch: int = 2, vocab: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session(model).get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        if "int" in inp.type:
            dtype = np.int64 if "int64" in inp.type else np.int32
            feeds[inp.name] = rng.integers(0, vocab, size=shape).astype(dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model, feeds) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def scaled_errors(teacher, student, seed: int = 0, **kw) -> list[float]:
    """max|a-b| / max|b| for each output, on the same random inputs."""
    feeds = random_feeds(teacher, seed, **kw)
    errs = []
    for a, b in zip(run(student, feeds), run(teacher, feeds), strict=True):
        assert a.shape == b.shape, f"output shape changed: {a.shape} vs {b.shape}"
        scale = max(float(np.abs(b).max()), 1e-12)
        errs.append(float(np.abs(a.astype(np.float64) - b).max() / scale))
    return errs


def assert_equivalent(teacher, student, tol: float = SCALED_TOL, seeds=(0, 1)) -> None:
    for seed in seeds:
        errs = scaled_errors(teacher, student, seed)
        assert max(errs) <= tol, f"student differs from teacher: scaled errors {errs}"
