"""ONNX operators as torch functions: `OPS`, and `onnx_op` / `OnnxOp`, through which the code
that onnxgrow/torch_graph.py generates runs the ops no torch layer or function covers exactly.

Semantics follow the ONNX operator specification (opset differences noted per op) so that eval
outputs match onnxruntime to float rounding, with two deliberate train-mode behaviours:
- BatchNormalization in `module.train()` normalises with batch statistics and updates the running
  statistics in place exactly like `torch.nn.BatchNorm`: ONNX momentum m (running = running·m +
  batch·(1−m)) is torch momentum 1−m, and the running variance takes the unbiased batch variance.
- Dropout in `module.train()` zeroes elements with probability `ratio` and scales by 1/(1−ratio).
Sizes read from tensors at run time (Reshape targets, Shape→Gather→Concat chains, Slice bounds)
are evaluated on every call, so a batch size other than the exported one works.
Known difference: Resize in nearest mode with a non-integer scale can pick the neighbouring
source pixel where the source coordinate falls on a rounding tie in float32 (6 of 600 mode/scale
combinations measured against onnxruntime 1.31; none with integer scales or in linear mode).
"""

from __future__ import annotations

import math
from functools import reduce
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Node(NamedTuple):
    """One ONNX node as the op implementations read it: op type, attributes, which outputs are used."""

    op: str
    name: str
    inputs: tuple  # value names; "" for an omitted optional input
    outputs: tuple
    attrs: dict  # Python values; tensor attributes as CPU torch tensors


# ----------------------------------------------------------------------------- helpers

DTYPES = {  # ONNX TensorProto.DataType -> torch dtype
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
    12: torch.uint32, 13: torch.uint64, 16: torch.bfloat16,
}


def _ints(t) -> list:
    """Sizes from a tensor, or as given when they are already Python ints (symbolic ones too)."""
    if isinstance(t, (list, tuple)):
        return list(t)
    if not torch.is_tensor(t):
        return [t]
    return [int(v) for v in t.reshape(-1).tolist()]


def _scalar(v):
    """One size: a Python int as given (symbolic ones too), or read from a 0-D/1-element tensor."""
    return int(v) if torch.is_tensor(v) else v


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def torch_pad(begin, end) -> list:
    """ONNX pads (begin per axis, end per axis) -> F.pad's list, last axis first."""
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


def _spatial_pads(node: Node, spatial, kernel, strides, dilations):
    """(begin, end) pads of a Conv or pooling window, auto_pad resolved for this input size."""
    n = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(node.attrs.get("pads", [0] * 2 * n))
    return pads[:n], pads[n:]


def _window(node: Node, x, kernel=None):
    a = node.attrs
    kernel = list(kernel if kernel is not None else a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    begin, end = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _unary(fn):
    return lambda m, node, x: fn(x)


def _binary(fn):
    return lambda m, node, a, b: fn(a, b)


# ----------------------------------------------------------------------------- conv, linear


def op_conv(m, node, x, w, b=None):
    kernel, strides, dilations, begin, end = _window(node, x, w.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    group = node.attrs.get("group", 1)
    if begin != end:
        x = F.pad(x, torch_pad(begin, end))
        begin = [0] * len(kernel)
    return conv(x, w, b, strides, begin, dilations, group)


def op_conv_transpose(m, node, x, w, b=None):
    a = node.attrs
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    out_pad = list(a.get("output_padding", [0] * n))
    group = a.get("group", 1)
    spatial = list(x.shape[2:])
    full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(spatial, strides, kernel, dilations)]
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(a["output_shape"])[-n:] if "output_shape" in a else [i * s for i, s in zip(spatial, strides)]
        begin, end = [], []
        for f, p, t in zip(full, out_pad, target):
            total = f + p - t
            if auto == "SAME_UPPER":
                begin.append(total // 2), end.append(total - total // 2)
            else:
                begin.append(total - total // 2), end.append(total // 2)
    elif auto == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(a.get("pads", [0] * 2 * n))
        begin, end = pads[:n], pads[n:]
    deconv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    fits = all(p < max(s, d) for p, s, d in zip(out_pad, strides, dilations))
    if begin == end and min(begin) >= 0 and fits:
        return deconv(x, w, b, strides, begin, out_pad, group, dilations)
    # General case: the full transposed convolution, zero-extended by output_padding, cropped.
    y = deconv(x, w, None, strides, 0, 0, group, dilations)
    for i in range(n):
        lo, hi = begin[i], full[i] + out_pad[i] - end[i]
        extra_lo, extra_hi = max(0, -lo), max(0, hi - full[i])
        if extra_lo or extra_hi:
            pad = [0, 0] * (n - 1 - i) + [extra_lo, extra_hi]
            y = F.pad(y, pad)
        y = y.narrow(2 + i, lo + extra_lo, hi - lo)
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


def op_gemm(m, node, a_, b_, c=None):
    if a_.dim() != 2 or b_.dim() != 2:  # matmul would broadcast: another computation
        raise ValueError(f"Gemm multiplies 2-D matrices, got A {a_.dim()}-D and B {b_.dim()}-D")
    a = node.attrs
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if a.get("transA", 0):
        a_ = a_.transpose(0, 1)
    if alpha == 1.0 and beta == 1.0 and a.get("transB", 0) and (c is None or c.dim() == 1):
        return F.linear(a_, b_, c)
    if a.get("transB", 0):
        b_ = b_.transpose(0, 1)
    y = a_ @ b_
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta)
    return y


def op_matmul(m, node, a, b):
    return torch.matmul(a, b)


def op_einsum(m, node, *xs):
    return torch.einsum(node.attrs["equation"], *xs)


# ----------------------------------------------------------------------------- arithmetic


def op_div(m, node, a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def op_pow(m, node, a, b):
    return torch.pow(a, b).to(a.dtype)


def op_mod(m, node, a, b):
    return torch.fmod(a, b) if node.attrs.get("fmod", 0) else torch.remainder(a, b)


def op_variadic(fn):
    return lambda m, node, *xs: reduce(fn, xs)


def op_mean(m, node, *xs):
    return reduce(torch.add, xs) / len(xs)


def op_clip(m, node, x, lo=None, hi=None):
    if m.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if lo is not None and hi is not None:
        return torch.clamp(x, lo, hi)
    if lo is not None:
        return torch.clamp(x, min=lo)
    if hi is not None:
        return torch.clamp(x, max=hi)
    return x


# ----------------------------------------------------------------------------- activations


def op_leaky_relu(m, node, x):
    return F.leaky_relu(x, node.attrs.get("alpha", 0.01))


def op_prelu(m, node, x, slope):
    return torch.where(x >= 0, x, x * slope)


def op_hard_sigmoid(m, node, x):
    return torch.clamp(x * node.attrs.get("alpha", 0.2) + node.attrs.get("beta", 0.5), 0.0, 1.0)


def op_elu(m, node, x):
    return F.elu(x, node.attrs.get("alpha", 1.0))


def op_celu(m, node, x):
    return F.celu(x, node.attrs.get("alpha", 1.0))


def op_selu(m, node, x):
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def op_thresholded_relu(m, node, x):
    return torch.where(x > node.attrs.get("alpha", 1.0), x, torch.zeros_like(x))


def op_gelu(m, node, x):
    return F.gelu(x, approximate=node.attrs.get("approximate", "none"))


def _softmax(fn):
    def op(m, node, x):
        if m.opset >= 13:
            return fn(x, _axis(node.attrs.get("axis", -1), x.dim()))
        axis = _axis(node.attrs.get("axis", 1), x.dim())
        if axis == x.dim() - 1:
            return fn(x, axis)
        # Before opset 13 the input is coerced to 2-D: [prod(shape[:axis]), prod(shape[axis:])].
        return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)

    return op


def op_hardmax(m, node, x):
    axis = _axis(node.attrs.get("axis", -1 if m.opset >= 13 else 1), x.dim())
    shape = x.shape
    if m.opset < 13:
        x = x.reshape(math.prod(shape[:axis]), -1)
        axis = 1
    y = F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)
    return y.reshape(shape)


# ----------------------------------------------------------------------------- normalisation


def op_batch_norm(m, node, x, scale, bias, mean, var):
    eps = node.attrs.get("epsilon", 1e-5)
    if m.training:
        return F.batch_norm(x, mean, var, scale, bias, True, 1.0 - node.attrs.get("momentum", 0.9), eps)
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


def op_layer_norm(m, node, x, scale, bias=None):
    a = node.attrs
    axis = _axis(a.get("axis", -1), x.dim())
    eps = a.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    if scale.shape == shape and (bias is None or bias.shape == shape):
        y = F.layer_norm(x, shape, scale, bias, eps)
    else:
        y = F.layer_norm(x, shape, None, None, eps) * scale
        if bias is not None:
            y = y + bias
    if len(node.outputs) == 1:
        return y
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return y, mean, inv_std


def op_instance_norm(m, node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attrs.get("epsilon", 1e-5))


def op_group_norm(m, node, x, scale, bias):
    groups = node.attrs["num_groups"]
    eps = node.attrs.get("epsilon", 1e-5)
    channels = x.shape[1]
    if scale.numel() == channels:  # opset 21: per-channel affine
        return F.group_norm(x, groups, scale, bias, eps)
    # Opset 18: scale and bias are per group.
    y = F.group_norm(x, groups, None, None, eps)
    shape = [1, channels] + [1] * (x.dim() - 2)
    rep = channels // groups
    return y * scale.repeat_interleave(rep).reshape(shape) + bias.repeat_interleave(rep).reshape(shape)


def op_lrn(m, node, x):
    a = node.attrs
    return F.local_response_norm(x, a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))


def op_dropout(m, node, x, ratio=None, training_mode=None):
    p = node.attrs.get("ratio", 0.5) if m.opset < 12 else (0.5 if ratio is None else float(ratio))
    if len(node.outputs) == 1 or not node.outputs[1]:
        return F.dropout(x, p, m.training) if p > 0 else x
    if not m.training or p == 0:
        return x, torch.ones_like(x, dtype=torch.bool)
    mask = torch.rand_like(x) >= p
    return x * mask / (1.0 - p), mask


# ----------------------------------------------------------------------------- pooling


def op_max_pool(m, node, x):
    kernel, strides, dilations, begin, end = _window(node, x)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if begin != end or any(2 * p > k for p, k in zip(begin, kernel)):
        x = F.pad(x, torch_pad(begin, end), value=float("-inf"))
        begin = [0] * len(kernel)
    return pool(x, kernel, strides, begin, dilations, ceil)


def op_average_pool(m, node, x):
    kernel, strides, _, begin, end = _window(node, x)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(kernel) - 1]
    ceil = bool(node.attrs.get("ceil_mode", 0))
    include = bool(node.attrs.get("count_include_pad", 0))
    if begin == end and all(2 * p <= k for p, k in zip(begin, kernel)):
        return pool(x, kernel, strides, begin, ceil, include)
    pads = torch_pad(begin, end)
    y = pool(F.pad(x, pads), kernel, strides, 0, ceil, True)
    if include:
        return y
    # Window sums over the zero-padded input, divided by the count of real elements per window.
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    return y / pool(F.pad(ones, pads), kernel, strides, 0, ceil, True)


def op_global_average_pool(m, node, x):
    return x.mean(tuple(range(2, x.dim())), keepdim=True)


def op_global_max_pool(m, node, x):
    return x.amax(tuple(range(2, x.dim())), keepdim=True)


# ----------------------------------------------------------------------------- reductions


def _reduce(fn):
    def op(m, node, x, axes=None):
        a = node.attrs
        axes = _ints(axes) if axes is not None else list(a.get("axes", []))
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted(_axis(i, x.dim()) for i in axes))
        return fn(x, dims, keep)

    return op


def _prod(x, dims, keep):
    for d in reversed(dims):
        x = x.prod(d, keepdim=keep)
    return x


REDUCERS = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


def _arg(fn):
    def op(m, node, x):
        a = node.attrs
        axis = _axis(a.get("axis", 0), x.dim())
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = fn(x.flip(axis), axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, axis, keepdim=keep)

    return op


def op_cumsum(m, node, x, axis):
    axis = _axis(_scalar(axis), x.dim())
    if node.attrs.get("reverse", 0):
        x = x.flip(axis)
    y = x.cumsum(axis)
    if node.attrs.get("exclusive", 0):
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], axis)
    return y.flip(axis) if node.attrs.get("reverse", 0) else y


# ----------------------------------------------------------------------------- shapes


def op_flatten(m, node, x):
    axis = _axis(node.attrs.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def op_reshape(m, node, x, shape=None):
    target = _ints(shape) if shape is not None else list(node.attrs["shape"])
    if not node.attrs.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def op_transpose(m, node, x):
    perm = node.attrs.get("perm")
    return x.permute(list(perm) if perm is not None else list(range(x.dim() - 1, -1, -1)))


def op_squeeze(m, node, x, axes=None):
    axes = _ints(axes) if axes is not None else node.attrs.get("axes")
    if axes is None or len(axes) == 0:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


def op_unsqueeze(m, node, x, axes=None):
    axes = _ints(axes) if axes is not None else list(node.attrs["axes"])
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


def op_concat(m, node, *xs):
    return torch.cat(xs, node.attrs["axis"])


def op_split(m, node, x, split=None):
    a = node.attrs
    axis = _axis(a.get("axis", 0), x.dim())
    size = x.shape[axis]
    n = len(node.outputs)
    if split is not None and len(_ints(split)) > 0:
        sizes = _ints(split)
    elif "split" in a:
        sizes = list(a["split"])
    elif "num_outputs" in a:
        chunk = -(-size // a["num_outputs"])
        sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
    else:
        sizes = [size // n] * n
    return torch.split(x, sizes, axis)


class Sequence(list):
    """An ONNX sequence value (a list of tensors), kept whole when it is a node's one output."""


def op_split_to_sequence(m, node, x, split=None):
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    if split is None:
        parts = torch.split(x, 1, axis)
        if not node.attrs.get("keepdims", 1):
            parts = [p.squeeze(axis) for p in parts]
    elif not torch.is_tensor(split) or split.dim() == 0:
        parts = torch.split(x, _scalar(split), axis)
    else:
        parts = torch.split(x, _ints(split), axis)
    return Sequence(parts)


def op_sequence_at(m, node, sequence, position):
    return sequence[_scalar(position)]


def op_slice(m, node, x, starts=None, ends=None, axes=None, steps=None):
    if m.opset < 10:
        a = node.attrs
        starts, ends, axes, steps = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    else:
        starts, ends = _ints(starts), _ints(ends)
        axes = _ints(axes) if axes is not None else None
        steps = _ints(steps) if steps is not None else None
    axes = list(range(len(starts))) if axes is None else [_axis(i, x.dim()) for i in axes]
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x[tuple(index)]


def op_gather(m, node, x, indices):
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    dim = x.shape[axis]
    idx = torch.where(indices < 0, indices + dim, indices)
    flat = x.index_select(axis, idx.reshape(-1).to(torch.int64))
    return flat.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


def op_gather_elements(m, node, x, indices):
    axis = _axis(node.attrs.get("axis", 0), x.dim())
    idx = torch.where(indices < 0, indices + x.shape[axis], indices)
    return torch.gather(x, axis, idx.to(torch.int64))


def _linear_index(idx, dims):
    """Row-major flat index of the last axis of `idx` (coordinates into `dims`, may be negative)."""
    flat = torch.zeros(idx.shape[:-1], dtype=torch.int64, device=idx.device)
    for j, dim in enumerate(dims):
        coord = idx[..., j].to(torch.int64)
        flat = flat * dim + torch.where(coord < 0, coord + dim, coord)
    return flat


def op_gather_nd(m, node, data, indices):
    b = node.attrs.get("batch_dims", 0)
    k = indices.shape[-1]
    n = math.prod(data.shape[:b])
    rest = tuple(data.shape[b + k:])
    flat = data.reshape((n, math.prod(data.shape[b:b + k])) + rest)
    linear = _linear_index(indices.reshape(n, -1, k), data.shape[b:b + k])
    rows = torch.arange(n, device=data.device).unsqueeze(1)
    return flat[rows, linear].reshape(tuple(indices.shape[:-1]) + rest)


SCATTER_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def op_scatter_nd(m, node, data, indices, updates):
    k = indices.shape[-1]
    rest = tuple(data.shape[k:])
    flat = data.reshape((math.prod(data.shape[:k]),) + rest)
    linear = _linear_index(indices.reshape(-1, k), data.shape[:k])
    upd = updates.reshape((-1,) + rest)
    reduction = node.attrs.get("reduction", "none")
    if reduction in SCATTER_REDUCE:
        index = linear.reshape((-1,) + (1,) * len(rest)).expand_as(upd)
        out = flat.scatter_reduce(0, index, upd, SCATTER_REDUCE[reduction])
    else:
        out = flat.index_put((linear,), upd, accumulate=reduction == "add")
    return out.reshape(data.shape)


def op_shape(m, node, x):
    shape = list(x.shape)[slice(node.attrs.get("start", 0), node.attrs.get("end"))]
    return torch.tensor(shape, dtype=torch.int64, device=x.device)


def op_size(m, node, x):
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def op_expand(m, node, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def op_tile(m, node, x, repeats):
    return x.repeat(_ints(repeats))


def op_cast(m, node, x):
    return x.to(DTYPES[node.attrs["to"]])


def op_cast_like(m, node, x, like):
    return x.to(like.dtype)


def op_constant_of_shape(m, node, shape):
    value = node.attrs.get("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)


def op_range(m, node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def op_where(m, node, cond, a, b):
    return torch.where(cond, a, b)


def op_trilu(m, node, x, k=None):
    k = 0 if k is None else _scalar(k)
    return torch.triu(x, k) if node.attrs.get("upper", 1) else torch.tril(x, k)


def op_identity(m, node, x):
    return x


def op_nonzero(m, node, x):
    return torch.nonzero(x).transpose(0, 1)


def op_depth_to_space(m, node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    if node.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def op_space_to_depth(m, node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ----------------------------------------------------------------------------- Pad, Resize

PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def op_pad(m, node, x, pads=None, value=None, axes=None):
    a = node.attrs
    mode = PAD_MODES[a.get("mode", "constant")]
    if m.opset < 11:
        pads, value = list(a["pads"]), a.get("value", 0.0)
    else:
        pads = _ints(pads)
        value = 0.0 if value is None or value.numel() == 0 else value.item()
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [_axis(i, rank) for i in _ints(axes)]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    first = next((i for i in range(rank) if begin[i] or end[i]), rank)
    if first == rank:
        return x
    torch_pads = torch_pad(begin[first:], end[first:])
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode=mode)


def _source_coords(out: int, size: int, scale: float, mode: str, device):
    """ONNX Resize: the input coordinate of each output index along one axis (float32, as ORT)."""
    x = torch.arange(out, dtype=torch.float32, device=device)
    s = torch.tensor(scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) / s - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / s - 0.5 if out > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / s
    if mode == "half_pixel_symmetric":
        adjustment = out / (scale * size)
        offset = size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / s - 0.5
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r}")


NEAREST = {
    "round_prefer_floor": lambda c: torch.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
    "floor": torch.floor,
    "ceil": torch.ceil,
}


def _repeats_each(coord: str, nearest: str) -> bool:
    """Whether nearest sampling at an integer scale s picks source i // s for output i: the source
    coordinate i/s (asymmetric) or (i+0.5)/s (tf_half_pixel_for_nn) floored, or (i+0.5)/s - 0.5
    (half_pixel) rounded — it lies strictly within half a pixel of i // s, so no tie."""
    return ((coord in ("asymmetric", "tf_half_pixel_for_nn") and nearest == "floor")
            or (coord in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round")))


def _repeat_each(x, axis: int, s: int):
    """Each element of `axis` repeated s times, by views and one copy: the backward is a sum, not an
    index_add (torch 2.13's inductor corrupts memory in a fused index_add of a UNet's upsampling)."""
    shape = list(x.shape)
    expanded = x.unsqueeze(axis + 1).expand(*shape[:axis + 1], s, *shape[axis + 1:])
    return expanded.flatten(axis, axis + 1)


def op_resize(m, node, x, roi=None, scales=None, sizes=None):
    """Separable, axis by axis: nearest picks source indices; linear blends the two neighbours of
    the source coordinate, clamped into the input as onnxruntime does."""
    a = node.attrs
    if node.op == "Upsample" or m.opset < 11:  # Upsample and Resize-10: scales only, asymmetric
        scales = roi if roi is not None else a.get("scales")
        sizes = None
        coord, nearest = "asymmetric", "floor"
        scales = list(scales.tolist() if torch.is_tensor(scales) else scales)
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        scales = (scales.tolist() if torch.is_tensor(scales) else list(scales)) if scales is not None else None
        sizes = _ints(sizes) if sizes is not None else None
        scales, sizes = scales or None, sizes or None  # an empty input means "not given"
    rank = x.dim()
    axes = [_axis(i, rank) for i in a.get("axes", range(rank))]
    shape = [x.shape[i] for i in axes]
    if sizes is not None:
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            scales = [o / i for o, i in zip(sizes, shape)]
        else:
            pick = min if policy == "not_larger" else max
            common = pick(o / i for o, i in zip(sizes, shape))
            scales = [common] * len(axes)
            sizes = [int(math.floor(i * common + 0.5)) for i in shape]
    else:
        sizes = [int(math.floor(i * s)) for i, s in zip(shape, scales)]
    linear = a.get("mode", "nearest") == "linear"
    for axis, size, out, scale in zip(axes, shape, sizes, scales):
        if out == size and scale == 1.0:
            continue
        if not linear and _repeats_each(coord, nearest) and float(scale).is_integer() and out == size * int(scale):
            x = _repeat_each(x, axis, int(scale))
            continue
        coords = _source_coords(out, size, scale, coord, x.device)
        if not linear:
            idx = NEAREST[nearest](coords).clamp(0, size - 1).to(torch.int64)
            x = x.index_select(axis, idx)
            continue
        coords = coords.clamp(0, size - 1)
        lo = coords.floor()
        w = (coords - lo).to(x.dtype)
        lo = lo.to(torch.int64)
        hi = (lo + 1).clamp(max=size - 1)
        view = [1] * rank
        view[axis] = out
        w = w.reshape(view)
        x = x.index_select(axis, lo) * (1 - w) + x.index_select(axis, hi) * w
    return x


# ----------------------------------------------------------------------------- the table

OPS = {
    "Conv": op_conv,
    "ConvTranspose": op_conv_transpose,
    "Gemm": op_gemm,
    "MatMul": op_matmul,
    "Einsum": op_einsum,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": op_div,
    "Pow": op_pow,
    "Mod": op_mod,
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Erf": _unary(torch.erf),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _unary(torch.isinf),
    "Min": op_variadic(torch.minimum),
    "Max": op_variadic(torch.maximum),
    "Sum": op_variadic(torch.add),
    "Mean": op_mean,
    "Clip": op_clip,
    "Relu": _unary(torch.relu),
    "LeakyRelu": op_leaky_relu,
    "PRelu": op_prelu,
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": op_hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Elu": op_elu,
    "Celu": op_celu,
    "Selu": op_selu,
    "ThresholdedRelu": op_thresholded_relu,
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Mish": _unary(F.mish),
    "Gelu": op_gelu,
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "Hardmax": op_hardmax,
    "BatchNormalization": op_batch_norm,
    "LayerNormalization": op_layer_norm,
    "InstanceNormalization": op_instance_norm,
    "GroupNormalization": op_group_norm,
    "LRN": op_lrn,
    "Dropout": op_dropout,
    "MaxPool": op_max_pool,
    "AveragePool": op_average_pool,
    "GlobalAveragePool": op_global_average_pool,
    "GlobalMaxPool": op_global_max_pool,
    **{name: _reduce(fn) for name, fn in REDUCERS.items()},
    "ArgMax": _arg(torch.argmax),
    "ArgMin": _arg(torch.argmin),
    "CumSum": op_cumsum,
    "Flatten": op_flatten,
    "Reshape": op_reshape,
    "Transpose": op_transpose,
    "Squeeze": op_squeeze,
    "Unsqueeze": op_unsqueeze,
    "Concat": op_concat,
    "Split": op_split,
    "SplitToSequence": op_split_to_sequence,
    "SequenceAt": op_sequence_at,
    "Slice": op_slice,
    "Gather": op_gather,
    "GatherElements": op_gather_elements,
    "GatherND": op_gather_nd,
    "ScatterND": op_scatter_nd,
    "Shape": op_shape,
    "Size": op_size,
    "Expand": op_expand,
    "Tile": op_tile,
    "Cast": op_cast,
    "CastLike": op_cast_like,
    "ConstantOfShape": op_constant_of_shape,
    "Range": op_range,
    "Where": op_where,
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "Not": _unary(torch.logical_not),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Trilu": op_trilu,
    "Identity": op_identity,
    "NonZero": op_nonzero,
    "DepthToSpace": op_depth_to_space,
    "SpaceToDepth": op_space_to_depth,
    "Pad": op_pad,
    "Resize": op_resize,
    "Upsample": op_resize,
}


# ----------------------------------------------------------------------------- in generated code

LATEST_OPSET = 23


class _Context(NamedTuple):
    opset: int = LATEST_OPSET
    training: bool = False


def onnx_op(op: str, *inputs, attrs=None, opset: int = LATEST_OPSET, outputs=("y",)):
    """Run ONNX op `op` (its attributes `attrs`) on `inputs`: the generated code's one entry here.

    `outputs` names which outputs are used ("" for an unused one); a one-output op gives a tensor.
    """
    node = Node(op, "", (), tuple(outputs), attrs or {})
    result = OPS[op](_Context(opset), node, *inputs)
    if len(outputs) == 1 and isinstance(result, (tuple, list)) and not isinstance(result, Sequence):
        return result[0]
    return result


class OnnxOp(nn.Module):
    """An ONNX op whose result depends on train/eval mode, where no torch layer matches it exactly
    (BatchNormalization with shared statistics, Dropout with a run-time ratio)."""

    def __init__(self, op: str, attrs: dict, opset: int, outputs=("y",)):
        super().__init__()
        self.op, self.attrs, self.opset, self.outputs = op, dict(attrs), int(opset), tuple(outputs)

    def forward(self, *inputs):
        node = Node(self.op, "", (), self.outputs, self.attrs)
        return OPS[self.op](_Context(self.opset, self.training), node, *inputs)

    def extra_repr(self) -> str:
        return f"{self.op}, opset={self.opset}"
