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

After growth (`after_growth`, with a `Recipe`): the optimizer state is carried as above, reset
(a fresh optimizer), or reset asymmetrically (SPARKLING): each teacher unit keeps its moments at
its own position (the first position that copies it) and every added unit — a copy or a fresh
one — starts from zero, so the copies' Adam steps are not their source's. The learning rate
re-warms linearly to a peak over `rewarm` steps and decays by a cosine to `final` × the base at
`horizon` (LEMON: keep the peak, decay faster than from scratch). Symmetry breaking (`noise`):
a copy's Adam update is its source's whenever its gradient is a multiple of the source's, which
net2net's uneven splits do not change (Adam divides the scale out); so the consumer weights of
copied units get noise that sums to zero over each unit's copies, N(0, noise × std of the weight)
before centring — the copies see identical inputs, so the function is unchanged (HyperCloning's
cancelling noise) and their gradients now differ in direction. `kept_rate` < 1 steps the teacher's
own elements slower than the added ones (a per-element learning rate, applied by scaling AdamW's step).
`recommended_recipe(steps, widened)` is the recipe the language-model experiment recommends after
growing with og.grow(**RECOMMENDED_GROWTH) (README).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import GrowError

MOMENTS = ("exp_avg", "exp_avg_sq")


STATES = ("carried", "reset", "asymmetric")


def added_units(index) -> np.ndarray:
    """True at each position that is not its teacher unit's own: fresh units (π = −1) and every
    copy after the first position of the same source."""
    index = np.asarray(index, dtype=np.int64)
    first = {}
    for j, src in enumerate(index.tolist()):
        first.setdefault(src, j)
    return np.array([src < 0 or first[src] != j for j, src in enumerate(index.tolist())], dtype=bool)


def map_moment(array: np.ndarray, entries: list[dict], power: int, asymmetric: bool = False) -> np.ndarray:
    """array grown by `entries` (all on distinct axes): gather π(j) along each axis (zeros where
    π(j) = −1, and with `asymmetric` at every added unit) and multiply by s_j**power."""
    out = np.asarray(array)
    for entry in entries:
        axis = entry["axis"] % out.ndim
        index = np.asarray(entry["index"], dtype=np.int64)
        scale = np.asarray(entry["scale"], dtype=np.float64) ** power
        fresh = added_units(index) if asymmetric else index < 0
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


def _transposed(module) -> set[str]:
    """Parameters a to_torch module keeps transposed from their initializer (nn.Linear weights of
    MatMul / Gemm(transB=0)): the mappings and the state here are in the initializer's layout."""
    return {p for p, layout in (getattr(module, "onnx_layouts", None) or {}).items() if layout == "T"}


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
        names, flip = _onnx_names(module), _transposed(module)
        return {names[p]: dict(step=s["step"], **{k: s[k].T.copy() if p in flip else s[k] for k in MOMENTS})
                for p, s in by_param.items()}
    like_names, like_flip = _onnx_names(like), _transposed(like)
    out = {}
    for pname, (source, transposed) in match_parameters(module, like).items():
        if source in by_param:
            st = by_param[source]
            flip = transposed != (pname in like_flip)
            out[like_names[pname]] = dict(step=st["step"], **{k: st[k].T.copy() if flip else st[k] for k in MOMENTS})
    return out


def grown_state(teacher_state: dict[str, dict], mappings: list[dict],
                asymmetric: bool = False) -> dict[str, dict | None]:
    """The state of every initializer the mappings grew: {name: {"exp_avg", "exp_avg_sq", "step"}},
    or None where its source had no state; with `asymmetric`, zero at every added unit. Entries
    are followed in order, grouped by (initializer, source) — the axes of one step — and a source
    may be an initializer an earlier entry grew (successive widenings chain: A → A.w128 → A.w128.w8)."""
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
        out[name] = dict(step=base["step"], **{k: map_moment(base[k], entries, power, asymmetric)
                                               for k, power in zip(MOMENTS, (1, 2))})
    return out


def carry_adamw_state(teacher_state: dict[str, dict], module, optimizer, mappings: list[dict],
                      asymmetric: bool = False) -> dict:
    """Fill `optimizer` (a fresh torch.optim.AdamW/Adam over `module`'s parameters) with the
    teacher's state, carried as the weights were (see the module docstring); with `asymmetric`,
    the added units' moments are zero.

    Returns {"carried": [initializer names copied or mapped], "fresh": [names left without state]}."""
    import torch

    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise GrowError("carry_adamw_state does not carry amsgrad's max_exp_avg_sq; use amsgrad=False.")
    grown = grown_state(teacher_state, mappings, asymmetric)
    params = dict(module.named_parameters())
    flip = _transposed(module)
    carried, fresh = [], []
    for pname, name in _onnx_names(module).items():
        param = params[pname]
        shape = tuple(param.shape)
        state = grown[name] if name in grown else teacher_state.get(name)
        if state is None:
            fresh.append(name)
            continue
        if pname in flip:
            state = dict(step=state["step"], **{k: state[k].T for k in MOMENTS})
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


# ----------------------------------------------------------------------------- the recipe after growth


@dataclass(frozen=True)
class Recipe:
    """What to do after growth: optimizer `state` (one of STATES), a linear re-warm-up of the
    learning rate over `rewarm` steps to `peak` × the base rate, a cosine decay to `final` × the
    base at step `horizon` (None: stay at the peak), symmetry-breaking `noise` (relative to
    each weight's std; 0: none), and `kept_rate`: the teacher's own elements (`kept_elements`)
    step at that fraction of the schedule's rate, the added ones at the full rate (1: all alike);
    with `kept_until` the fraction rises linearly to 1 at that step (None: it stays)."""

    state: str = "asymmetric"
    rewarm: int = 0
    peak: float = 1.0
    horizon: int | None = None
    final: float = 0.1
    noise: float = 0.0
    kept_rate: float = 1.0
    kept_until: int | None = None

    def __post_init__(self):
        if self.state not in STATES:
            raise GrowError(f"Recipe state {self.state!r}: choose one of {', '.join(STATES)}.")
        if not 0.0 <= self.kept_rate <= 1.0:
            raise GrowError(f"Recipe kept_rate {self.kept_rate}: a fraction of the schedule's rate, 0 … 1.")
        if self.kept_until is not None and self.kept_until < 1:
            raise GrowError(f"Recipe kept_until {self.kept_until}: the step the teacher's elements reach the full "
                            "rate, at least 1 (None: kept_rate throughout).")
        if self.horizon is not None and self.horizon <= self.rewarm:
            raise GrowError(f"Recipe horizon {self.horizon} must come after the re-warm-up ({self.rewarm} steps).")


# The growth the language-model experiment recommends for a model that will be trained on, as
# og.grow's arguments (README, "Does growth pay?"): netmorph's new units (random, consumer weights
# zero) learn features of their own, where net2net's copies start identical and stay close; a
# normalised residual stream padded (new channels zero, their readers random) rather than copied,
# so that its new channels are new directions; and the new units' random weights at a quarter of
# each grown weight's own std, so that they start quieter than the trained units without being
# lost among them. Over nine seeds of the wider shape (results/lm-explore/, seventh round) the
# copied stream at the weights' own scale fell behind random growth from step 400 on; padded, with
# new units at x0.25, the loss stays below random growth's through step 600 (−0.008 ± 0.003 at
# step 500); x0.25 did as well as the best absolute stds (0.1, 0.2) and a ratio carries across
# model sizes, which an absolute std does not (a fresh model's 0.02 did less well here).
RECOMMENDED_GROWTH = {"method": "netmorph", "pad_streams": True, "new_std": "x0.25"}
RECOMMENDED_METHOD = RECOMMENDED_GROWTH["method"]


def recommended_recipe(steps: int, widened: bool = True) -> Recipe:
    """The recipe after growth that the language-model experiment recommends (README, "Does growth
    pay?"; results/lm-full*/), for a model grown with og.grow(**RECOMMENDED_GROWTH), where `steps` is
    the budget the bigger model would get from scratch: each teacher unit keeps its AdamW moments and
    every added unit starts fresh, the rate re-warms over 30 steps (at most half the schedule) to
    its peak and decays by a cosine to 0.1 × the base rate, and cancelling noise (0.3 × each
    weight's std) breaks the symmetry of split copies (net2net's; netmorph has none); past the
    horizon the rate stays at 0.1 ×. When the growth `widened` layers, the peak is 3 × the base rate
    and the cosine ends at half of `steps` (LEMON: decay faster than from scratch): the new units
    need the pace, and the grown model reaches the from-scratch loss around then (with copied
    streams: both 51 % saved instead of 38 % with the cosine to the whole budget, wider 49 %
    instead of 42 %). After block copies alone the peak is 1 × and the cosine ends at `steps`
    (deeper saved less at 3 ×). Pass it to `after_growth`."""
    if steps < 2:
        raise GrowError(f"recommended_recipe needs at least 2 steps of training after growth, not {steps}.")
    horizon = max(2, round(steps / 2)) if widened else steps
    return Recipe(state="asymmetric", rewarm=min(30, horizon // 2), peak=3.0 if widened else 1.0, horizon=horizon,
                  final=0.1, noise=0.3)


def lr_factor(step: int, recipe: Recipe) -> float:
    """The learning rate at step `step` after growth (0 = the first step), × the base rate."""
    if step < recipe.rewarm:
        return recipe.peak * (step + 1) / recipe.rewarm
    if recipe.horizon is None:
        return recipe.peak
    if step >= recipe.horizon:
        return recipe.final
    progress = (step - recipe.rewarm) / (recipe.horizon - recipe.rewarm)
    return recipe.final + (recipe.peak - recipe.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def unit_sources(name: str, mappings: list[dict], ndim: int) -> dict[int, np.ndarray]:
    """{axis: the teacher unit each position of `name` descends from (−1: fresh)}, following the
    chain of entries back through earlier growth steps (A.w128.w8 ← A.w128 ← A)."""
    by_name = defaultdict(list)
    for entry in mappings:
        by_name[entry["initializer"]].append(entry)
    out = {}
    for name in _chain(name, mappings):
        entries = by_name.get(name, [])
        for entry in entries:
            index = np.asarray(entry["index"], dtype=np.int64)
            axis = entry["axis"] % ndim
            if axis in out:  # a later step re-indexed this axis: compose
                later = out[axis]
                out[axis] = np.where(later < 0, -1, index[np.maximum(later, 0)])
            else:
                out[axis] = index
    return out


def split_axes(name: str, mappings: list[dict]) -> list[int]:
    """The axes along which `name` consumes copied units: some unit has several copies whose
    scales share it out (sum ≈ 1, net2net's split) rather than repeat it (scale ≈ 1 each)."""
    out = []
    for entry in mappings:
        if entry["initializer"] != name:
            continue
        index, scale = np.asarray(entry["index"]), np.abs(np.asarray(entry["scale"], dtype=np.float64))
        units = [u for u in np.unique(index[index >= 0]) if (index == u).sum() > 1]
        if units and all(scale[index == u].sum() < 0.75 * (index == u).sum() for u in units):
            out.append(entry["axis"])
    return out


def split_noise(array: np.ndarray, sources: np.ndarray, axis: int, relative: float,
                rng: np.random.Generator) -> np.ndarray:
    """`array` plus noise along `axis` that sums to zero over the positions copying the same unit
    (`sources`: each position's teacher unit), N(0, relative × std(array)) before centring; units
    with one position are left as they are."""
    axis = axis % array.ndim
    noise = rng.normal(0.0, relative * float(array.std()), size=array.shape)
    moved = np.moveaxis(noise, axis, 0)
    for unit in np.unique(sources[sources >= 0]):
        where = np.flatnonzero(sources == unit)
        moved[where] = moved[where] - moved[where].mean(axis=0) if len(where) > 1 else 0.0
    moved[sources < 0] = 0.0
    return (array + np.moveaxis(moved, 0, axis)).astype(array.dtype)


def break_symmetry(weights: dict[str, np.ndarray], mappings: list[dict], relative: float,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """{name: perturbed array} for every weight in `weights` (≥ 2-D) that consumes split copies:
    cancelling noise along each split axis (`split_noise`), so the grown function is unchanged."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(weights):
        array = np.asarray(weights[name])
        if array.ndim < 2:
            continue
        sources = unit_sources(name, mappings, array.ndim)
        axes = sorted({a % array.ndim for n in _chain(name, mappings) for a in split_axes(n, mappings)})
        for axis in axes:
            array = split_noise(array, sources[axis], axis, relative, rng)
        if axes:
            out[name] = array
    return out


def _chain(name: str, mappings: list[dict]) -> list[str]:
    """`name` and the names it grew from, newest first."""
    source = {e["initializer"]: e["source"] for e in mappings}
    out = [name]
    while out[-1] in source and source[out[-1]] != out[-1]:
        out.append(source[out[-1]])
    return out


def kept_elements(name: str, shape, mappings: list[dict], teacher_names) -> np.ndarray:
    """True at each element of initializer `name` (initializer layout) that is the teacher's own:
    its tensor descends from one of `teacher_names` and, along every grown axis, it sits at its
    teacher unit's own position (not a copy after the first, not a fresh unit)."""
    if _chain(name, mappings)[-1] not in teacher_names:
        return np.zeros(shape, dtype=bool)
    mask = np.ones(shape, dtype=bool)
    for axis, sources in unit_sources(name, mappings, len(shape)).items():
        mask &= ~_along(shape, axis, added_units(sources))
    return mask


def fresh_elements(name: str, shape, mappings: list[dict]) -> np.ndarray:
    """True at each element of initializer `name` that belongs to a fresh unit (π = −1) along
    some grown axis: a new unit's weights, not a copy's."""
    mask = np.zeros(shape, dtype=bool)
    for axis, sources in unit_sources(name, mappings, len(shape)).items():
        mask |= _along(shape, axis, sources < 0)
    return mask


def _along(shape, axis: int, flags: np.ndarray) -> np.ndarray:
    """`flags` (one per position along `axis`) shaped to broadcast over an array of `shape`."""
    view = [1] * len(shape)
    view[axis] = len(flags)
    return np.asarray(flags).reshape(view)


def slow_kept_elements(module, optimizer, mappings: list[dict], teacher_names, rate: float,
                       until: int | None = None) -> int:
    """Make `optimizer`'s steps move the teacher's own elements of `module`'s parameters
    (`kept_elements`) by `rate` × their update, the rest by the full update: a per-element learning
    rate (AdamW's step, weight decay included, is proportional to the rate, so scaling the step is
    scaling the rate; the moments are untouched). With `until`, the fraction rises linearly to 1
    at that step. Returns the number of elements slowed."""
    import torch

    names, flip = _onnx_names(module), _transposed(module)
    scales = {}
    for pname, param in module.named_parameters():
        if not param.requires_grad:
            continue
        shape = tuple(param.shape)[::-1] if pname in flip else tuple(param.shape)
        kept = kept_elements(names[pname], shape, mappings, teacher_names)
        if kept.any():
            kept = kept.T if pname in flip else kept
            scales[param] = torch.as_tensor(np.where(kept, rate, 1.0), dtype=param.dtype, device=param.device)
    before, steps = {}, [0]

    def remember(*_):
        before.update({p: p.detach().clone() for p in scales})

    def scale(*_):
        lift = min(1.0, steps[0] / until) if until else 0.0  # 0: `rate`, 1: the full update
        steps[0] += 1
        with torch.no_grad():
            for p, s in scales.items():
                p.copy_(before[p] + (s + lift * (1.0 - s)) * (p - before[p]))

    optimizer.register_step_pre_hook(remember)
    optimizer.register_step_post_hook(scale)
    return int(sum((s != 1.0).sum().item() for s in scales.values()))


def after_growth(module, optimizer, mappings: list[dict], teacher_state: dict[str, dict] | None,
                 recipe: Recipe, seed: int = 0, teacher_names=None):
    """Prepare a grown `module` (parameters named as initializers, as onnxgrow.to_torch gives) and
    its fresh `optimizer` for training: symmetry-breaking noise on the split copies, the optimizer
    state the recipe asks for, and the learning-rate schedule. Returns (schedule, report):
    schedule(step) is the factor on the base rate (torch.optim.lr_scheduler.LambdaLR takes it);
    report = {"perturbed": [names], "slowed": elements, "carried": [...], "fresh": [...]}.
    `teacher_names` (the teacher's initializer names) is needed for `kept_rate` where there is no
    `teacher_state`."""
    import torch

    names, flip = _onnx_names(module), _transposed(module)
    params = dict(module.named_parameters())
    perturbed = {}
    if recipe.noise:
        current = {names[p]: (t.detach().cpu().numpy().T if p in flip else t.detach().cpu().numpy())
                   for p, t in params.items()}
        perturbed = break_symmetry(current, mappings, recipe.noise, seed)
        with torch.no_grad():
            for p, t in params.items():
                if names[p] in perturbed:
                    value = perturbed[names[p]]
                    t.copy_(torch.as_tensor(value.T.copy() if p in flip else value, dtype=t.dtype))
    state = dict(carried=[], fresh=list(names.values()))
    if recipe.state != "reset" and teacher_state is not None:
        state = carry_adamw_state(teacher_state, module, optimizer, mappings, recipe.state == "asymmetric")
    slowed = 0
    if recipe.kept_rate != 1.0:
        if teacher_names is None and teacher_state is None:
            raise GrowError("Recipe kept_rate needs the teacher's initializer names (teacher_names=) "
                            "or its optimizer state, to tell its own elements from the added ones.")
        slowed = slow_kept_elements(module, optimizer, mappings, teacher_names or set(teacher_state), recipe.kept_rate,
                                    recipe.kept_until)
    return functools.partial(lr_factor, recipe=recipe), dict(perturbed=sorted(perturbed), slowed=slowed, **state)
