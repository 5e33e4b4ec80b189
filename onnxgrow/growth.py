"""Growth plans: many widen and deepen requests, one load, one verification, one save.

A plan names targets — node names, PyTorch module paths, or globs over both (`layer3.*`, `*`) —
with a width for each widened target (channels, or a factor `x1.5`) and a method for each
insertion. Widening comes first, group by group on the graph as the previous ones left it; the
insertions follow, so a block inserted after a widened layer is built at the new width.

- A factor applies to each selected layer's coupled group once: the group grows from n to the
  allowed width nearest n·f (whole heads, multiples for grouped convolutions and uniformly
  normalised groups, even increments for r2r), and the summary says where it rounded.
- A group that two specs ask different widths of is an error; a group a glob reaches again
  through another of its layers is grown once.
- An explicitly named layer that cannot grow is an error with the reason; a glob skips layers that
  cannot grow and lists them with their reasons (at least one must grow).

A plan is also JSON, so it can be reviewed and replayed:
`{"widen": {"layer3.*": "x2"}, "deepen": ["fc1:r2r"], "method": "net2net", "seed": 0}`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from . import blocks, deepening, names, padding, widening, window
from . import graph as g
from . import groups as gr
from .errors import GrowError
from .methods import DEEPEN_METHODS, R2R, widen_method
from .summary import summary


@dataclass
class GrowthPlan:
    """What to grow: {target: width or "xF"}, ["target[:method]"], and the shared options."""

    widen: dict = field(default_factory=dict)
    deepen: list = field(default_factory=list)
    method: str = "net2net"
    seed: int = 0
    noise: float | None = None
    pad_streams: bool = False  # pad normalised streams at multiples too (new channels zero, not copies)
    new_std: float | str | None = None  # new units' random weights' std: a number, "xF" × each weight's own, None: its own

    def targets(self) -> list[str] | None:
        """The layers the plan names, or None when it selects by glob."""
        named = [*self.widen, *(str(spec).partition(":")[0] for spec in self.deepen)]
        return None if not named or any(c in t for t in named for c in names.GLOB_CHARS) else named

    def to_dict(self) -> dict:
        return {"widen": dict(self.widen), "deepen": list(self.deepen), "method": self.method,
                "seed": self.seed, "noise": self.noise, "pad_streams": self.pad_streams, "new_std": self.new_std}


def plan_from(widen=None, deepen=None, plan_file=None, method=None, seed=None, noise=None, pad_streams=None,
              new_std=None) -> GrowthPlan:
    """A plan from CLI-style specs (`TARGET=WIDTH`, `TARGET[:METHOD]`) and/or a JSON plan file;
    explicit options override the file's."""
    base = _read_plan(plan_file) if plan_file else {}
    plan = GrowthPlan(widen=dict(base.get("widen", {})), deepen=list(base.get("deepen", [])),
                      method=base.get("method", "net2net"), seed=int(base.get("seed", 0)),
                      noise=base.get("noise"), pad_streams=bool(base.get("pad_streams", False)),
                      new_std=base.get("new_std"))
    for spec in widen or ():
        target, sep, width = spec.rpartition("=")
        if not sep or not target:
            raise GrowError(f"--widen {spec!r}: expected TARGET=WIDTH, e.g. 'layer1.*=x2' or 'fc1=128'.")
        plan.widen[target] = width
    plan.deepen += list(deepen or ())
    plan.method = method or plan.method
    plan.seed = plan.seed if seed is None else seed
    plan.noise = plan.noise if noise is None else noise
    plan.pad_streams = plan.pad_streams if pad_streams is None else bool(pad_streams)
    plan.new_std = parse_new_std(plan.new_std if new_std is None else new_std)
    widen_method(plan.method)
    if not plan.widen and not plan.deepen:
        raise GrowError("nothing to grow: give --widen TARGET=WIDTH and/or --deepen TARGET[:METHOD] "
                        "(or --plan PLAN.json).")
    return plan


def parse_new_std(new_std) -> float | str | None:
    """`new_std` as og.grow takes it: a positive number (the new units' std), "xF" (F × each grown
    weight's own std, F > 0), or None (each weight's own); a text holding a number is that number."""
    if new_std is None:
        return None
    text = new_std.strip().lower() if isinstance(new_std, str) else None
    try:
        if text is not None and text.startswith("x"):
            factor = float(text[1:])
            if 0.0 < factor < math.inf:
                return f"x{factor:g}"
        elif not isinstance(new_std, bool):
            value = float(text if text is not None else new_std)
            if 0.0 < value < math.inf:
                return value
    except (TypeError, ValueError):
        pass
    raise GrowError(f"new_std {new_std!r}: the new units' random weights' standard deviation — a positive "
                    "number (e.g. 0.02, a fresh transformer's init), or xF for F times each grown weight's own "
                    "(e.g. x0.5) — or leave it out for each weight's own.")


def _read_plan(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise GrowError(f"cannot read the plan {str(path)!r}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise GrowError(f"the plan {str(path)!r} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict) or not set(data) <= {"widen", "deepen", "method", "seed", "noise", "pad_streams",
                                                        "new_std"}:
        raise GrowError(f"the plan {str(path)!r} must be a JSON object with keys widen (an object "
                        "TARGET -> WIDTH), deepen (a list of TARGET[:METHOD]), method, seed, noise, "
                        "pad_streams, new_std.")
    if not isinstance(data.get("widen", {}), dict) or not isinstance(data.get("deepen", []), list):
        raise GrowError(f"the plan {str(path)!r}: widen must be an object and deepen a list.")
    return data


def parse_width(text, target: str) -> tuple[str, float]:
    """("units", n) for an integer width, ("factor", f) for `xF`."""
    raw = str(text).strip()
    try:
        if raw.lower().startswith("x"):
            factor = float(raw[1:])
            if not 1.0 < factor <= 64.0:
                raise ValueError
            return "factor", factor
        width = int(raw)
        if width < 1:
            raise ValueError
        return "units", width
    except ValueError:
        raise GrowError(f"--widen {target}={raw}: the width must be a whole number of units or a "
                        "factor from x1 (exclusive) to x64, e.g. 128 or x1.5.") from None


def rounded_width(group: gr.Group, factor: float, method: str) -> int:
    """The width the group allows nearest to n·factor (and larger than n)."""
    units = group.width
    wanted = max(units + 1, round(units * factor))

    def allowed(q: int) -> bool:
        if group.uniform_only and method != "random" and q % units and not padding.can_pad(group, q, method):
            return False  # a pre-norm or RMS stream takes any width (padding.py); others multiples
        method_obj = widen_method(method)
        if isinstance(method_obj, R2R) and method_obj.why_not(group) is None:
            try:
                method_obj.check_width("", units * group.outer * group.block,
                                       q * group.outer * group.block, group)
            except GrowError:
                return False
        return True

    for distance in range(0, 4 * units + 4):
        for q in (wanted - distance, wanted + distance):
            if q > units and allowed(q):
                return q * group.outer * group.block
    raise GrowError(f"no width near x{factor} suits this group")


@dataclass
class _Grown:
    spec: str
    request: tuple  # ("units", n) or ("factor", f)
    width: int


def grow_model(model: ir.Model, plan: GrowthPlan, progress=None) -> dict:
    """Carry out `plan` on `model` in place; return the summary (groups, insertions, skips)."""
    graph = model.graph
    say = _progress(graph, progress)
    g.prepare(model)
    before = g.parameter_count(model)
    grown: dict[int, _Grown] = {}  # id(producer) -> the spec and width its group got
    groups, skipped, mappings = [], [], []
    selected = {target: _widest_groups_first(names.select(graph, target)) for target in plan.widen}  # before any edit
    for target, width_text in plan.widen.items():
        kind, amount = parse_width(width_text, target)
        widened = _each_selected(selected[target], target, target, "widen", skipped,
                                 lambda node: _widen_one(graph, node, target, kind, amount, plan, grown))
        for _, record in widened:
            if record is not None:
                mappings += record.pop("mappings")
                groups.append(record)
                say(f"widened {record['layers'][0]} (+{len(record['layers']) - 1} coupled): "
                    f"{record['width']['before']} → {record['width']['after']}")
    if groups:
        g.remove_unused(model)
    insertions = _deepen_all(model, plan, skipped, say)
    lines = [f"{'group':<48} {'width':>14}"]
    lines += [f"{', '.join(r['layers'])[:48]:<48} {r['width']['before']:>6} → {r['width']['after']:<6}"
              + (f" (rounded from ×{r['factor']:g})" if r.get("rounded") else "") for r in groups]
    lines += [f"  {r['layers'][0]}: {note}" for r in groups for note in r.get("notes", [])]
    lines += [f"inserted {i['method']} after {i['after']}" if "after" in i else
              f"copied block {i['block']['path'] or i['block']['index']} ({i['method']})" for i in insertions]
    lines += [f"skipped {s['layer']} ({s['target']}): {s['reason']}" for s in skipped]
    return summary("grow", lines, before, g.parameter_count(model), plan=plan.to_dict(), groups=groups,
                   insertions=insertions, skipped=skipped, mappings=mappings)


def _progress(graph: ir.Graph, progress):
    """What reports progress: `progress`, or for a window's edit a list of messages that
    window.py reports only if the edit is kept (else the whole graph's edit reports)."""
    if progress is None:
        return lambda message: None
    if graph.meta.get("onnxgrow.window"):
        held = graph.meta.setdefault("onnxgrow.progress", [])
        return lambda message: held.append((progress, message))
    return progress


def _widest_groups_first(nodes: list) -> list:
    """`nodes` with the layers whose coupled group has more producers first (stable): under
    grouped-query attention k_proj's group (key/value heads, with their query heads) contains
    q_proj's (query heads per key/value head), so `*=x2` doubles q, k and v alike."""
    if len(nodes) < 2:
        return nodes

    def producers(node) -> int:
        try:
            return len(gr.find_group(node).producers)
        except GrowError:
            return 0

    return sorted(nodes, key=lambda node: -producers(node))


def _widen_one(graph, node, spec, kind, amount, plan, grown) -> dict | None:
    """Widen `node`'s group as `spec` asks; None when an earlier request of the same spec grew it."""
    earlier = grown.get(id(node))
    if earlier is None:
        group = gr.find_group(node)
        earlier = next((grown[id(p)] for p in group.producers if id(p) in grown), None)
    if earlier is not None:
        if earlier.spec == spec or earlier.request == (kind, amount):
            return None  # grown once, as asked
        raise GrowError(f"its coupled group was already grown to {earlier.width} by --widen "
                        f"{earlier.spec!r}; two specs cannot give one group different widths.")
    n = widening.group_width(group)
    width = int(amount) if kind == "units" else rounded_width(group, amount, plan.method)
    done = widening.widen_group(graph, node, group, width, plan.method, plan.seed, plan.noise,
                                pad_streams=plan.pad_streams, new_std=plan.new_std)
    for producer in group.producers:
        grown[id(producer)] = _Grown(spec, (kind, amount), width)
    record = {"spec": spec, "layers": [names.module_path(p) or p.name for p in group.producers],
              "width": {"before": n, "after": width}, "mappings": done["mappings"]}
    if kind == "factor":
        record["factor"] = amount
        record["rounded"] = width != n * amount
    if done.get("notes"):
        record["notes"] = done["notes"]  # a stream padded, or copied where padding was asked for
    return record


def _deepen_all(model, plan, skipped, say) -> list[dict]:
    insertions = []
    indexed = any(str(spec).partition(":")[0].strip().isdigit() for spec in plan.deepen)
    given = blocks.find_blocks(model) if indexed else []  # what a block index of the plan means
    for spec in plan.deepen:
        target, _, method = str(spec).partition(":")
        if method and method not in DEEPEN_METHODS:
            raise GrowError(f"--deepen {spec!r}: unknown method {method!r}; choose one of "
                            f"{', '.join(DEEPEN_METHODS)}.")
        explicit = not any(c in target for c in names.GLOB_CHARS)
        if explicit and _names_a_block(model, target):
            done = blocks.copy_block(model, _as_given(model, target, given), method=method or "zero", seed=plan.seed)
            insertions.append({"spec": spec, "block": done["block"], "method": method or "zero",
                               "nodes": done["nodes"]})
            say(f"copied block {target} ({method or 'zero'})")
            continue
        method = method or "net2net"
        inserted = _each_selected(names.select(model.graph, target), target, spec, "deepen after", skipped,
                                  lambda node: deepening.deepen_node(model, node, method=method, seed=plan.seed))
        for node, done in inserted:
            insertions.append({"spec": spec, "after": names.module_path(node) or node.name,
                               "method": method, "nodes": done["nodes"]})
            say(f"inserted {method} after {insertions[-1]['after']}")
    return insertions


def _as_given(model: ir.Model, target: str, given: list) -> str:
    """A block index of the plan names a block of the model as given (`--deepen 0:zero --deepen
    1:zero` copies blocks 0 and 1, not block 0 and then its copy, which counts as blocks of its
    own): the block's index now, found by its first layer. Paths need no translation."""
    if not target.strip().isdigit() or int(target) >= len(given):
        return target
    first = given[int(target)].describe()["first"]
    now = [b.index for b in blocks.find_blocks(model) if first is not None and b.describe()["first"] == first]
    return str(now[0]) if len(now) == 1 else target


def _each_selected(nodes, target: str, spec: str, verb: str, skipped: list, action) -> list:
    """(node, action(node)) for every layer of `nodes` (what `target` selects). An explicitly named
    layer that cannot be grown is an error; a glob skips such layers, listing why, and must grow at
    least one."""
    explicit = not any(c in target for c in names.GLOB_CHARS)
    done = []
    for node in nodes:
        try:
            done.append((node, action(node)))
        except GrowError as exc:
            if explicit:
                raise GrowError(f"cannot {verb} {target!r}: {exc}") from None
            skipped.append({"target": spec, "layer": node.name, "reason": str(exc)})
    if not done:
        reasons = "; ".join(f"{s['layer']}: {s['reason']}" for s in skipped[-3:])
        raise GrowError(f"no layer selected by {target!r} can be grown ({verb}): {reasons}")
    return done


def _names_a_block(model: ir.Model, target: str) -> bool:
    """True when `target` is not a layer but names a residual block (module path or index)."""
    try:
        names.resolve(model.graph, target)
        return False
    except GrowError:
        pass
    try:
        blocks.resolve_block(blocks.find_blocks(model), target)
        return True
    except GrowError:
        return False


def grow(model, *, widen: dict | None = None, deepen: list | None = None, method: str = "net2net",
         seed: int = 0, noise: float | None = None, pad_streams: bool = False,
         new_std: float | str | None = None, with_summary: bool = False):
    """Grow `model` (path, ModelProto, onnx_ir.Model or gs.Graph; not modified) by a plan; return
    the student as an onnx.ModelProto (a gs.Graph when given one) — with `with_summary`, the pair
    (student, summary), whose "mappings" say where every grown weight's values came from (what an
    optimizer's state needs to follow them: onnxgrow.optim). A transformers model (or the path of
    its folder, through the CLI) comes back as a grown transformers model of its own class.

    `pad_streams`: a normalised residual stream grown to a multiple of its width is padded (new
    channels 0, their readers random) where it is otherwise copied, wherever padding stays exact.
    `new_std`: the standard deviation of the new units' random weights — a number (a fresh model's
    init, e.g. 0.02), or "xF", F × each grown weight's own — instead of each grown weight's own.
    onnxgrow.optim.RECOMMENDED_GROWTH has both."""
    plan = GrowthPlan(widen=dict(widen or {}), deepen=list(deepen or []), method=method, seed=seed,
                      noise=noise, pad_streams=bool(pad_streams), new_std=parse_new_std(new_std))
    widen_method(method)
    if hasattr(model, "save_pretrained") and hasattr(model, "config"):
        from .checkpoints.hf_grow import grow_module

        return grow_module(model, plan)
    student, done = window.edit(model, plan.targets(), lambda m: grow_model(m, plan))
    return (student, done) if with_summary else student


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
