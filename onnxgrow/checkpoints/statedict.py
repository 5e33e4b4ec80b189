"""State dict files: the teacher's read lazily, the student's written in the teacher's format.

A student tensor is the grown initializer put in the teacher's layout (keys.py) and cast to the
teacher tensor's dtype; tensors that share storage in the teacher (tied weights in a .pt) share
it in the student. Growth runs in float32; a bf16/fp16 checkpoint is cast once, on the way out.
Formats: `.safetensors` (one file) and torch's pickle (`.pt`, `.pth`, `.bin`, loaded with
`weights_only=True`). Hugging Face folders are in hf.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import files
from .. import graph as g
from ..errors import GrowError, MismatchError
from ..torch_export import require_torch
from . import keys as k

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
DTYPE_RTOL = {"float32": None, "float64": None, "float16": 2e-3, "bfloat16": 1.6e-2}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class Checkpoint:
    """The tensors of one or more checkpoint files, {key: torch tensor} read on demand."""

    def __init__(self, paths: list[Path], what: str):
        self.torch = require_torch("reading a checkpoint")
        self.what = what
        self._where: dict[str, object] = {}
        self._loaded: dict[str, object] = {}
        self._maps: dict[str, tuple] = {}  # safetensors key -> (path, byte offset)
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, str] = {}
        for path in paths:
            self._open(path)
        if not self.shapes:
            raise GrowError(f"{what} holds no tensors.")

    def _open(self, path: Path) -> None:
        if not path.is_file():
            raise GrowError(f"{self.what}: {str(path)!r} does not exist or is not a file.")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                handle = safe_open(str(path), framework="pt")
                names = list(handle.keys())
            except Exception as exc:  # safetensors raises its own error types for a corrupt header
                raise GrowError(f"{self.what}: {str(path)!r} is not a readable safetensors file "
                                f"({g.short_message(exc)}).") from None
            for name in names:
                piece = handle.get_slice(name)
                self.shapes[name] = tuple(piece.get_shape())
                self.dtypes[name] = _dtype_name(piece.get_dtype())
                self._where[name] = handle
            self._maps.update(_safetensors_offsets(path))
            return
        if path.suffix not in TORCH_SUFFIXES:
            raise GrowError(f"{self.what}: {str(path)!r} is neither .safetensors nor a torch file "
                            f"({', '.join(TORCH_SUFFIXES)}).")
        try:
            data = self.torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, …
            raise GrowError(f"{self.what}: cannot load {str(path)!r} as a state dict "
                            f"({g.short_message(exc)}).") from None
        if not isinstance(data, dict) or not all(self.torch.is_tensor(v) for v in data.values()):
            inner = [key for key, v in data.items() if isinstance(v, dict)] if isinstance(data, dict) else []
            raise GrowError(f"{self.what}: {str(path)!r} is not a flat state dict {{name: tensor}}"
                            + (f" (it holds dicts under {', '.join(map(repr, inner[:3]))}: save "
                               "`model.state_dict()` alone)" if inner else "") + ".")
        for name, tensor in data.items():
            self.shapes[name] = tuple(tensor.shape)
            self.dtypes[name] = str(tensor.dtype).removeprefix("torch.")
            self._loaded[name] = tensor

    def tensor(self, key: str):
        if key in self._loaded:
            return self._loaded[key]
        return self._where[key].get_tensor(key)

    def teacher(self) -> k.Teacher:
        floats = {key for key, dt in self.dtypes.items() if dt in FLOAT_DTYPES}
        return k.Teacher(self.shapes, floats, self._array)

    def _array(self, key: str) -> np.ndarray:
        """The tensor as numpy: memory-mapped where numpy has its dtype (confirming a key reads
        16 values, not the tensor), else through torch in float32."""
        if key in self._maps and self.dtypes[key] in ("float32", "float16", "float64"):
            path, offset = self._maps[key]
            return np.memmap(path, dtype=self.dtypes[key], mode="r", offset=offset, shape=self.shapes[key])
        return self.tensor(key).detach().float().numpy()

    def tied(self) -> dict[str, str]:
        """{key: the first key sharing its storage} among loaded torch tensors."""
        first: dict[tuple, str] = {}
        out = {}
        for key, tensor in self._loaded.items():
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                     tuple(tensor.stride()))
            if ident in first and tensor.numel():
                out[key] = first[ident]
            else:
                first.setdefault(ident, key)
        return out

    def main_dtype(self) -> str:
        floats = [self.dtypes[key] for key in self.shapes if self.dtypes[key] in FLOAT_DTYPES]
        return max(set(floats), key=floats.count) if floats else "float32"


def _safetensors_offsets(path: Path) -> dict[str, tuple]:
    """{key: (path, byte offset of its data)} from a safetensors header (8-byte length, JSON)."""
    import json

    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {key: (path, 8 + length + entry["data_offsets"][0]) for key, entry in header.items()
            if key != "__metadata__"}


def _dtype_name(safetensors_dtype: str) -> str:
    return {code: name for name, code in SAFETENSORS_DTYPES.items()}.get(safetensors_dtype, safetensors_dtype.lower())


def student_tensors(model, checkpoint: Checkpoint, placed: list[k.Placed], transform=None):
    """(key, torch tensor) of the student in order: each grown initializer in the teacher's
    layout and dtype (`transform(key, array)` may rescale a float32 array first), tensors the
    ONNX does not hold as the teacher has them."""
    torch = checkpoint.torch
    inits = model.graph.initializers
    for p in placed:
        if p.initializer is None:
            yield p.key, checkpoint.tensor(p.teacher_key)
            continue
        value = inits[p.initializer]
        raw = value.const_value.numpy()
        dtype = getattr(torch, checkpoint.dtypes[p.teacher_key])
        with warnings.catch_warnings():  # a read-only map: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            if p.layout == "T" and transform is None:  # torch transposes in blocks on every core
                tensor = torch.from_numpy(raw).t().contiguous().to(dtype)
            else:
                array = layout(raw, p.layout, checkpoint.shapes[p.teacher_key])
                if transform is not None:
                    array = transform(p.key, array)
                tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        yield p.key, tensor
        g.drop_mapped_pages([value])  # written: the ONNX's mapped pages need not stay resident


def laid_out_shape(dims: tuple, how: str, teacher_shape) -> tuple:
    """The shape of an initializer of shape `dims` in the teacher's layout."""
    if how == "T":
        return tuple(dims[::-1])
    if how == "squeeze":
        kept = [d for d in dims if d != 1]
        if len(kept) != len([d for d in teacher_shape if d != 1]):
            raise GrowError(f"cannot lay a tensor of shape {list(dims)} out like {list(teacher_shape)}.")
        it = iter(kept)
        return tuple(1 if d == 1 else next(it) for d in teacher_shape)
    return tuple(dims)


def layout(array: np.ndarray, how: str, teacher_shape) -> np.ndarray:
    """An initializer's array in the teacher's layout (`keys.Placed.layout`)."""
    if how == "T":
        return array.T
    if how == "plus1":
        return array - array.dtype.type(1)
    if how == "squeeze":
        return array.reshape(laid_out_shape(array.shape, how, teacher_shape))
    return array


def unlayout(array: np.ndarray, how: str, onnx_shape) -> np.ndarray:
    """The inverse of `layout`: a student tensor back in the ONNX initializer's layout."""
    if how == "T":
        return array.T
    if how == "plus1":
        return array + array.dtype.type(1)
    if how == "squeeze":
        return array.reshape(onnx_shape)
    return array


def write_safetensors(path: Path, tensors) -> int:
    """Stream (key, torch tensor) pairs into a safetensors file at `path`, one tensor in memory
    at a time (the header, listing every shape, is written first: `tensors` is walked twice, so
    it is a callable returning a fresh iterator). Returns the bytes of tensor data written."""
    import json

    header, offset = {}, 0
    for key, shape, dtype in tensors(meta_only=True):
        size = int(np.prod(shape, dtype=np.int64)) * itemsize(dtype)
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for key, tensor in tensors():
            f.write(_bytes(tensor))
    return offset


def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype named as torch names it."""
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _bytes(tensor) -> memoryview:
    import torch

    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return memoryview(tensor.numpy()).cast("B")


def write_state_dict(tensors, out: Path, tied: dict[str, str] | None = None) -> None:
    """Write (key, tensor) pairs as a torch file; tied keys share storage as in the teacher."""
    torch = require_torch("writing a checkpoint")
    state = dict(tensors)
    for key, first in (tied or {}).items():
        if key in state and first in state and state[key].shape == state[first].shape \
                and torch.equal(state[key], state[first]):
            state[key] = state[first]
    torch.save(state, str(out))


class Student:
    """The student's tensors for `placed` keys: shapes known before any is made (so a
    safetensors header can be written first), each tensor made on demand."""

    def __init__(self, model, checkpoint: Checkpoint, placed: list[k.Placed], transform=None):
        self.model, self.checkpoint, self.placed, self.transform = model, checkpoint, placed, transform

    def shape(self, p: k.Placed) -> tuple:
        if p.initializer is None:
            return self.checkpoint.shapes[p.teacher_key]
        dims = tuple(self.model.graph.initializers[p.initializer].shape.numpy())
        return laid_out_shape(dims, p.layout, self.checkpoint.shapes[p.teacher_key])

    def __call__(self, meta_only: bool = False, keys=None):
        chosen = [p for p in self.placed if keys is None or p.key in keys]
        if meta_only:
            return ((p.key, self.shape(p), self.checkpoint.dtypes[p.teacher_key]) for p in chosen)
        return student_tensors(self.model, self.checkpoint, chosen, self.transform)


def write_student(student: Student, out: Path) -> None:
    if out.suffix == ".safetensors":
        write_safetensors(out, student)
    else:
        write_state_dict(student(), out, student.checkpoint.tied())


def export_state_dict(grown, teacher_path: Path, out: Path, verify: bool = True) -> dict:
    """The grown ONNX as a state dict with the teacher's keys, dtypes and layouts (`out` of the
    teacher's format); verified by rebuilding the ONNX from what was written."""
    if out.suffix != teacher_path.suffix:
        raise GrowError(f"the output {str(out)!r} must be a {teacher_path.suffix or 'suffix-less'} file, "
                        "like the teacher.")
    files.check_output(out, reads=(teacher_path, *([grown] if isinstance(grown, (str, Path)) else [])))
    model = g.load(grown, "grown model")
    checkpoint = Checkpoint([teacher_path], "the teacher checkpoint")
    placed, report = k.place(model, checkpoint.teacher())
    with g.staged(out, source=teacher_path) as tmp:
        write_student(Student(model, checkpoint, placed), Path(tmp))
        if verify:
            report["verify"] = verify_written(model, Checkpoint([Path(tmp)], "the written state dict"),
                                              placed, checkpoint.main_dtype())
    report["keys"] = len(placed)
    report["output"] = str(out)
    return report


def verify_written(model, written: Checkpoint, placed: list[k.Placed], dtype: str) -> dict:
    """Put the written tensors back into the grown graph and compare it with the grown graph in
    onnxruntime: what was written (layouts, dtype, file) holds the grown function, to the dtype's
    rounding. The keys themselves are the mapping's (keys.py); only the user's class can check
    them — the tests load the state dicts strict into their classes and compare with onnxruntime."""
    import onnx_ir as ir

    from ..verification import verify as run_verify

    rebuilt = ir.from_proto(ir.to_proto(model))
    for p in placed:
        if p.initializer is None:
            continue
        value = rebuilt.graph.initializers[p.initializer]
        old = value.const_value
        array = unlayout(written.tensor(p.key).float().numpy(), p.layout, tuple(old.shape))
        value.const_value = ir.tensor(np.ascontiguousarray(array).astype(old.dtype.numpy()), name=value.name)
    rtol = DTYPE_RTOL.get(dtype)
    result = run_verify(model, rebuilt, rtol=rtol)
    if not result.ok:
        raise MismatchError("the written checkpoint does not compute what the grown ONNX computes: "
                        + result.format().splitlines()[0])
    return {**result.to_dict(), "dtype": dtype}
