"""onnxgrow: grow trained ONNX models with function-preserving transforms.

    import onnxgrow as og
    student = og.widen("teacher.onnx", layer="conv1", width=128, method="net2net", seed=0)
    student = og.deepen(student, after="fc1", method="r2r")
    student = og.grow("teacher.onnx", widen={"*": "x2"}, deepen=["fc1:r2r"])   # a whole plan
    report = og.verify("teacher.onnx", student)      # report.ok, per-output errors, provider
    module = og.to_torch(student)                    # a trainable torch.nn.Module
    og.export_checkpoint(student, like="teacher-folder/", out="grown-folder/")   # back home

Every function takes a path, an onnx.ModelProto, an onnx_ir.Model or an onnx-graphsurgeon Graph,
and never modifies its argument. Names are imported on first use, so `import onnxgrow` is cheap.
"""

from .errors import GrowError, MismatchError

_API = {
    "inspect": ("layers", "describe"),
    "widen": ("widening", "widen"),
    "deepen": ("deepening", "deepen"),
    "grow": ("growth", "grow"),
    "morph_kernel": ("deepening", "morph_kernel"),
    "verify": ("verification", "verify"),
    "to_torch": ("torch_export", "to_torch"),
    "load_weights": ("torch_export", "load_weights"),
    "adamw_state": ("optim", "adamw_state"),
    "carry_adamw_state": ("optim", "carry_adamw_state"),
    "export_checkpoint": ("checkpoints.export", "export_checkpoint"),
    "load": ("graph", "load"),
    "save": ("graph", "save"),
}

__all__ = ["GrowError", "MismatchError", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'onnxgrow' has no attribute {name!r}")
    import importlib

    module_name, attr = _API[name]
    value = getattr(importlib.import_module(f".{module_name}", __name__), attr)
    globals()[name] = value
    return value
