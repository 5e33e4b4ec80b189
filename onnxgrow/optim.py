"""Carry an AdamW optimizer's state across growth.

Growth in the middle of training meets an optimizer with state. AdamW keeps, per parameter, a
step count t and two running averages: m (exp_avg) of the gradient g and v (exp_avg_sq) of g².
A grown initializer W' is made from a teacher initializer W unit by unit along one or more axes,

    W'[…, j, …] = s_j · W[…, π(j), …]        (π(j) = −1: a fresh unit, not taken from W)

(net2net: copied producer rows have s = 1, the consumer columns they feed are split, s = 1/count;
an RMSNorm gain kept through zero-padding of the stream has s = √(d/d′)). The moments are carried
the way the weight is:

    m'[…, j, …] = s_j · m[…, π(j), …]     v'[…, j, …] = s_j² · v[…, π(j), …]     (0 for fresh units)

so a copied unit's Adam direction m/√v is its source's (times sign s), and a fresh unit starts with
zero moments. A tensor grown along several axes applies each axis's (π, s) in turn; the maps
commute. t is one number per tensor in torch: a carried tensor keeps the teacher's t (bias
correction stays as it was); a tensor the teacher did not have gets no state (torch starts it at
t = 0 with zero moments on its first step).

The mappings come from the widening code, one entry per grown initializer and axis:
    {"initializer": NEW_NAME, "source": OLD_NAME, "axis": AXIS,
     "index": [π(j) for each position j along AXIS], "scale": [s_j for each position]}
A source may itself be grown by an earlier entry (successive widenings chain); entries are
followed in order. Initializers not listed keep their teacher state when the teacher has one of
the same name and shape (unchanged weights), and get none otherwise (brand-new tensors).

Parameters are matched to initializers by name: `module.onnx_names` (what onnxgrow.to_torch
gives) maps a parameter to its initializer; a plain torch module's parameter names are used as
they are. A plain module exported with torch's optimising exporter can hold a weight transposed
under a new initializer name; `adamw_state(module, optimizer, like=onnx_module)` finds each of
`like`'s initializers among the module's parameters by value (as is, or transposed for 2-D);
`match_parameters` says which ones it found (the others were the module's constants).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .errors import GrowError

MOMENTS = ("exp_avg", "exp_avg_sq")


def map_moment(array: np.ndarray, entries: list[dict], power: int) -> np.ndarray:
    """array grown by `entries` (all on distinct axes): gather π(j) along each axis (zeros where
    π(j) = −1) and multiply by s_j**power."""
    out = np.asarray(array)
    for entry in entries:
        axis = entry["axis"] % out.ndim
        index = np.asarray(entry["index"], dtype=np.int64)
        scale = np.asarray(entry["scale"], dtype=np.float64) ** power
        fresh = index < 0
        gathered = np.take(out, np.where(fresh, 0, index), axis=axis)
        shape = [1] * out.ndim
        shape[axis] = len(index)
        factor = np.where(fresh, 0.0, scale).reshape(shape)
        out = (gathered * factor).astype(array.dtype)
    return out


def _check_entries(name: str, entries: list[dict], old_shape) -> None:
    """Refuse entries that cannot describe one growth step of `name` from an array of `old_shape`."""
    axes = [e["axis"] % len(old_shape) for e in entries]
    if len(set(axes)) != len(axes):
        raise GrowError(f"mapping for {name!r} lists axis {axes} more than once in one step; give one entry per axis.")
    for e, axis in zip(entries, axes):
        if len(e["index"]) != len(e["scale"]):
            raise GrowError(f"mapping for {name!r} axis {axis}: index and scale differ in length.")
        if max(e["index"], default=-1) >= old_shape[axis]:
            raise GrowError(f"mapping for {name!r} axis {axis} copies unit {max(e['index'])} but "
                            f"{e['source']!r} has {old_shape[axis]} along that axis.")


def _onnx_names(module) -> dict[str, str]:
    """{parameter name: initializer name} for a to_torch module or a plain one."""
    names = getattr(module, "onnx_names", None)
    return {p: (names.get(p, p) if names else p) for p, _ in module.named_parameters()}


def _step_of(state: dict) -> float:
    step = state.get("step", 0)
    return float(step.item() if hasattr(step, "item") else step)


def match_parameters(module, like) -> dict[str, tuple[str, bool]]:
    """{like's parameter name: (module's parameter name, transposed)} for each of `like`'s
    parameters found among `module`'s by value (as is, or transposed for 2-D). Parameters of
    `like` with no match were constants of `module` (buffers the export folded, such as rotary
    frequencies) and are left out; a value matching several parameters is refused."""
    values = {p: t.detach().cpu().numpy() for p, t in module.named_parameters()}
    out = {}
    for pname, param in like.named_parameters():
        target = param.detach().cpu().numpy()
        found = [(p, False) for p, v in values.items() if v.shape == target.shape and np.array_equal(v, target)]
        found += [(p, True) for p, v in values.items()
                  if v.ndim == 2 and v.T.shape == target.shape and np.array_equal(v.T, target)]
        if len(found) > 1:
            raise GrowError(f"{_onnx_names(like)[pname]!r} equals {len(found)} parameters of the module "
                            f"({[p for p, _ in found]}); cannot tell whose optimizer state it carries.")
        if found:
            out[pname] = found[0]
    return out


def adamw_state(module, optimizer, like=None) -> dict[str, dict]:
    """The optimizer's state per initializer name: {name: {"exp_avg", "exp_avg_sq" (numpy), "step"}}.

    With `like` (e.g. onnxgrow.to_torch of the exported module), the names and layouts are
    `like`'s, its parameters found among `module`'s by `match_parameters`."""
    by_param = {}
    for pname, param in module.named_parameters():
        st = optimizer.state.get(param)
        if st and all(k in st for k in MOMENTS):
            by_param[pname] = dict(step=_step_of(st), **{k: st[k].detach().cpu().numpy().copy() for k in MOMENTS})
    if like is None:
        names = _onnx_names(module)
        return {names[p]: s for p, s in by_param.items()}
    like_names = _onnx_names(like)
    out = {}
    for pname, (source, transposed) in match_parameters(module, like).items():
        if source in by_param:
            st = by_param[source]
            out[like_names[pname]] = dict(step=st["step"], **{k: st[k].T.copy() if transposed else st[k] for k in MOMENTS})
    return out


def grown_state(teacher_state: dict[str, dict], mappings: list[dict]) -> dict[str, dict | None]:
    """The state of every initializer the mappings grew: {name: {"exp_avg", "exp_avg_sq", "step"}},
    or None where its source had no state. Entries are followed in order, grouped by (initializer,
    source) — the axes of one step — and a source may be an initializer an earlier entry grew
    (successive widenings chain: A → A.w128 → A.w128.w8)."""
    groups = defaultdict(list)
    for entry in mappings:
        groups[(entry["initializer"], entry["source"])].append(entry)
    out = {}
    for (name, source), entries in groups.items():
        base = out[source] if source in out else teacher_state.get(source)
        if base is None:
            out[name] = None
            continue
        _check_entries(name, entries, base["exp_avg"].shape)
        out[name] = dict(step=base["step"], **{k: map_moment(base[k], entries, power)
                                               for k, power in zip(MOMENTS, (1, 2))})
    return out


def carry_adamw_state(teacher_state: dict[str, dict], module, optimizer, mappings: list[dict]) -> dict:
    """Fill `optimizer` (a fresh torch.optim.AdamW/Adam over `module`'s parameters) with the
    teacher's state, carried as the weights were (see the module docstring).

    Returns {"carried": [initializer names copied or mapped], "fresh": [names left without state]}."""
    import torch

    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise GrowError("carry_adamw_state does not carry amsgrad's max_exp_avg_sq; use amsgrad=False.")
    grown = grown_state(teacher_state, mappings)
    params = dict(module.named_parameters())
    carried, fresh = [], []
    for pname, name in _onnx_names(module).items():
        param = params[pname]
        shape = tuple(param.shape)
        state = grown[name] if name in grown else teacher_state.get(name)
        if state is None:
            fresh.append(name)
            continue
        if tuple(state["exp_avg"].shape) != shape:
            how = "the mappings make" if name in grown else "no mapping says how it grew from"
            raise GrowError(f"{name!r} has shape {list(shape)} but {how} {list(state['exp_avg'].shape)}; "
                            "pass the growth's mappings (all of them, in order).")
        optimizer.state[param] = _adam_entry(param, state["step"], state, optimizer, torch)
        carried.append(name)
    return dict(carried=carried, fresh=fresh)


def _adam_entry(param, step: float, moments: dict, optimizer, torch) -> dict:
    """One parameter's state as torch's Adam/AdamW keeps it (step a float32 tensor on the CPU,
    or on the parameter's device for capturable/fused optimizers)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    on_device = group.get("capturable") or group.get("fused")
    entry = {"step": torch.tensor(step, dtype=torch.float32, device=param.device if on_device else "cpu")}
    for k in MOMENTS:
        entry[k] = torch.as_tensor(moments[k], dtype=param.dtype).to(param.device).reshape(param.shape).clone()
    return entry
