"""A Hugging Face folder grown end to end: checkpoint in, checkpoint out.

    export (torch's dynamo exporter, float32, dynamic batch and sequence: input_ids -> logits)
    -> grow (the plan, targets named by the checkpoint's module paths) -> verify (onnxruntime,
    teacher against student) -> write the folder back (hf.py, which verifies it with transformers)

The ONNX files live in a temporary folder (TMPDIR) and are removed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

from .. import graph as g
from ..errors import GrowError, MismatchError
from . import hf


def export_onnx(folder: Path, path: Path) -> Path:
    """The folder's causal LM as ONNX (input_ids -> logits, no cache), in float32."""
    import torch

    config = hf.read_config(folder)
    cls = hf.model_class(config)
    # eager attention: the fused scaled_dot_product_attention op hides the head structure
    lm = cls.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    return export_module(lm, path)


def export_module(lm, path: Path) -> Path:
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return hf.logits(self.lm, input_ids)

    ids = torch.randint(0, max(2, min(lm.config.vocab_size, 50)), (2, 5))
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    try:
        program = torch.onnx.export(LogitsOnly(lm).eval(), (ids,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes=dims, verbose=False)
    except Exception as exc:  # the exporter's own errors are many kinds
        raise GrowError(f"torch's dynamo exporter could not export the model ({g.short_message(exc)}). "
                        "Export it to ONNX yourself, grow that, and write it back with "
                        "`onnxgrow export GROWN.onnx --like FOLDER -o OUT`.") from None
    program.model.ir_version = min(program.model.ir_version, 10)  # onnxruntime refuses newer IR versions
    weights = sum(p.numel() * 4 for p in lm.parameters())  # exported in float32
    program.save(str(path), external_data=weights > g.EXTERNAL_DATA_THRESHOLD // 2)
    return path


def grow_folder(folder: Path, plan, out: Path, *, verify: bool = True, max_shard_size=hf.DEFAULT_MAX_SHARD,
                progress=None) -> dict:
    """Grow the checkpoint in `folder` by `plan` (growth.GrowthPlan) into a new folder `out`. With
    `pad_streams` the stream is padded where the folder can hold it: a config whose one ε also
    serves the heads' q/k norms cannot, so there the stream's channels are copied (and it says so)."""
    say = progress or (lambda message: None)
    hf._check_out_folder(out, folder)
    hf.model_class(hf.read_config(folder))
    times = {}
    with tempfile.TemporaryDirectory(prefix="onnxgrow-hf-", dir=os.environ.get("TMPDIR")) as tmp:
        teacher, student = Path(tmp) / "teacher.onnx", Path(tmp) / "student.onnx"
        start = time.perf_counter()
        export_onnx(folder, teacher)
        times["export"] = time.perf_counter() - start
        say(f"exported {folder} to ONNX ({times['export']:.1f} s)")
        attempts = [plan, dataclasses.replace(plan, pad_streams=False)] if plan.pad_streams else [plan]
        for attempt in attempts:
            summary = _grow_onnx(teacher, student, attempt, verify, progress, times)
            start = time.perf_counter()
            try:
                written = hf.export_folder(str(student), folder, out, max_shard_size=max_shard_size,
                                           verify=verify and attempt.method != "random", progress=say)
            except hf.SharedEpsilon:
                if attempt is attempts[-1]:
                    raise
                say("the config's one ε also serves the q/k norms: growing again with the stream's channels "
                    "copied, not padded")
                continue
            times["write"] = time.perf_counter() - start
            if attempt is not plan:
                summary["lines"].append("stream copied, not padded: the config has one ε for the stream's norms "
                                        "and the heads' q/k norms, and a padded stream needs ε·d/d′ for the first only")
            break
    summary["checkpoint"] = written
    summary["times"] = times
    summary["output"] = str(out)
    return summary


def _grow_onnx(teacher: Path, student: Path, plan, verify: bool, progress, times: dict) -> dict:
    """Grow the ONNX `teacher` by `plan` into `student` and verify it; the growth summary."""
    from .. import window
    from ..growth import grow_model
    from ..verification import verify as run_verify

    start = time.perf_counter()
    model = window.load(str(teacher), plan.targets(), spill=True)
    summary = model.run(lambda m: grow_model(m, plan, progress))
    model.write(student)
    del model
    times["grow"] = time.perf_counter() - start
    if verify:
        start = time.perf_counter()
        report = run_verify(str(teacher), str(student))
        times["verify"] = time.perf_counter() - start
        summary["verify"] = report.to_dict()
        summary["preserving"] = plan.method != "random"
        if not report.ok and plan.method != "random":
            raise MismatchError("the grown ONNX does not match the teacher; nothing was written.", report=report)
    return summary


def grow_module(lm, plan, *, verify: bool = True):
    """A transformers model grown by `plan`: the same route through a temporary folder, the
    grown folder loaded back (in `lm`'s dtype)."""
    with tempfile.TemporaryDirectory(prefix="onnxgrow-hf-module-", dir=os.environ.get("TMPDIR")) as tmp:
        teacher, out = Path(tmp) / "teacher", Path(tmp) / "student"
        lm.save_pretrained(teacher)
        grow_folder(teacher, plan, out, verify=verify)
        return type(lm).from_pretrained(str(out), dtype=lm.dtype)
