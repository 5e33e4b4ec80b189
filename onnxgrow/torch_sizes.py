"""ONNX shape arithmetic as Python arithmetic on sizes, for the generated torch.fx code.

An ONNX graph computes run-time sizes with tensors: Shape → Gather → Concat → Reshape. In the
module `onnxgrow.to_torch` builds, those values are Python ints and lists of ints read from
`tensor.shape`, so eager runs see plain ints and torch.compile sees symbolic sizes (SymInts) it
can keep dynamic: no tensor is built and read back (`.tolist()`) between two shape ops.
A 0-D ONNX value is an int, a 1-D one a list of ints. Integer division truncates toward zero,
as ONNX's Div and Mod (fmod=0 aside) do on integers.
"""

from __future__ import annotations

import operator

import torch


def shape(x, start=0, end=None) -> list:
    return list(x.shape)[start:end]


def numel(x):
    return x.numel()


def _index(i, n):
    return i + n if i < 0 else i


def gather(seq, indices):
    """Gather on axis 0 of a 1-D size list: an int index gives an int, a list a list."""
    if isinstance(indices, (list, tuple)):
        return [seq[_index(i, len(seq))] for i in indices]
    return seq[_index(indices, len(seq))]


def slice_(seq, starts, ends, axes=None, steps=None):
    step = steps[0] if steps else 1
    return list(seq)[slice(_clamp(starts[0], len(seq)), _clamp(ends[0], len(seq)), step)]


def _clamp(i, n):
    """ONNX Slice bounds are clamped like Python's (huge ends mean "to the end")."""
    return max(-n - 1, min(n, i))


def concat(*parts) -> list:
    out = []
    for p in parts:
        out += list(p) if isinstance(p, (list, tuple)) else [p]
    return out


def unsqueeze(v) -> list:
    return [v]


def squeeze(v):
    return v[0]


def _trunc_div(a, b):
    q = a // b
    return q + 1 if (q < 0 and q * b != a) else q


def _trunc_mod(a, b):
    return a - _trunc_div(a, b) * b


ELEMENTWISE = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": _trunc_div,
    "Mod": _trunc_mod, "Max": max, "Min": min, "Equal": operator.eq,
}


def _broadcast(*values) -> list[list]:
    """1-D size lists (and ints, as one-element lists) broadcast to one length, as ONNX does."""
    lists = [v if isinstance(v, list) else [v] for v in values]
    n = max(len(v) for v in lists)
    return [v * n if len(v) == 1 else v for v in lists]


def elementwise(op: str, a, b):
    fn = ELEMENTWISE[op]
    if isinstance(a, list) or isinstance(b, list):
        return [fn(x, y) for x, y in zip(*_broadcast(a, b))]
    return fn(a, b)


def neg(v):
    return [-x for x in v] if isinstance(v, list) else -v


def where(cond, a, b):
    if isinstance(cond, list) or isinstance(a, list) or isinstance(b, list):
        return [x if c else y for c, x, y in zip(*_broadcast(cond, a, b))]
    return a if cond else b


def prod(v, keepdims=1):
    out = 1
    for x in v:
        out = out * x
    return [out] if keepdims else out


def as_tensor(v, dtype, like=None):
    """A size value as the ONNX tensor it stands for, where a tensor op consumes it."""
    device = like.device if like is not None else None
    if isinstance(v, list) and any(isinstance(x, torch.SymInt) for x in v):
        return torch.stack([torch.as_tensor(x, device=device) for x in v]).to(dtype) if v else \
            torch.zeros(0, dtype=dtype, device=device)
    return torch.tensor(v, dtype=dtype, device=device)


def arange(start, limit, delta, dtype, like=None):
    return torch.arange(start, limit, delta, dtype=dtype, device=like.device if like is not None else None)


def full(size, value, dtype, like=None):
    return torch.full(list(size), value, dtype=dtype, device=like.device if like is not None else None)
