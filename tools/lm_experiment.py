"""Does growth pay on a language model? A byte-level Llama-style decoder on the Python standard
library's own source, grown with onnxgrow and measured as the growth papers measure it.

Data. Every `.py` file of at most MAX_FILE_BYTES under the stdlib packages in PACKAGES (found
through `sysconfig.get_paths()["stdlib"]`; test folders excluded), in sorted order of relative
path. A file is held out for validation when crc32(relative path) % VAL_MODULUS == 0, so the split
is by file and the same everywhere. Bytes are the tokens (vocabulary 256). The corpus is the same
on every machine with the same Python version (patch releases can touch a few files: results.json
records the corpus's size and sha256).

Model. A Llama-style decoder in plain torch whose export looks like a transformers export:
`embed_tokens`, `layers.N.input_layernorm`, `layers.N.self_attn.{q,k,v,o}_proj`,
`layers.N.post_attention_layernorm`, `layers.N.mlp.{gate,up,down}_proj`, `norm`, `lm_head`;
RMSNorm (x·rsqrt(mean x² + ε)·g), rotary embeddings (rotate-half), grouped-query attention
(kv_heads ≤ heads, repeat_kv), SwiGLU MLP (down(silu(gate x) ⊙ up x)), causal softmax attention.

Runs, per seed. The teacher (SHAPES["teacher"], small so that the bigger shapes are worth their
compute) trains for teacher_steps with a warm-up and a cosine decay, as a released checkpoint
would have; it is exported (torch.onnx.export, dynamo, IR 10) and grown with `onnxgrow.grow` into
three shapes: wider (width, heads and FFN ×2), deeper (a copy of each block inserted after it,
branch outputs zero), both. Each student is verified against the teacher in onnxruntime,
converted with onnxgrow.to_torch and trained on with a recipe after growth (RECIPES, applied by
onnxgrow.optim.after_growth): optimizer state carried, reset, or reset asymmetrically (teacher
units keep their moments, added units start fresh); the learning rate re-warmed and decayed by a
cosine that ends at `decay` × the from-scratch steps; cancelling noise on the split copies. Random
growth (every element that is not the teacher's own drawn as for a fresh model) is trained with its
shape's recommended recipe without noise, r2r (new units in ±V pairs, block copies with paired
outputs) with `asym` without noise (`{shape}_r2r_RECIPE`: with others). netmorph (new units
random, their consumer weights zero) is trained with the recommended recipe and the sweeps'
(NETMORPH_GRID), also with its new units drawn at a fresh model's scale (`netmorph_fresh`: re-drawn
here; `netmorph_pad_std`: og.grow's new_std), with the residual stream padded with zero channels
instead of copied (`netmorph_pad`: og.grow's pad_streams), and with its new SwiGLU units chosen by
GradMax (`netmorph_gradmax`, `netmorph_pad_gradmax`: `gradmax_units`). The recommended growth is
`netmorph_pad_stdx25` = og.grow(**onnxgrow.optim.RECOMMENDED_GROWTH) (RECOMMENDED_GROWTH here; `_stdN`: new
units at std N/1000, `_stdxN` at N/100 of each grown weight's own, `_std` at the fresh model's INIT_STD). --width-factor N grows wider and both to N × the teacher's width.
Baselines: each big shape trained from scratch, and the teacher trained on without growth
(control_steps, the recommended recipe without noise).

Compute: forward MACs per token are counted from the shapes (`macs_per_token`: every matrix
product, attention scores over the full causal window included); training FLOPs = 6 × MACs ×
tokens (tools/exp_common.py), with the teacher given (only training after growth counts: a
released checkpoint, LEMON's framing) and with the teacher's training counted. Target per shape:
the from-scratch run's final validation loss. A student stops at the first evaluation that
reaches it, or once its own compute has passed what the from-scratch run needed.

    python tools/experiment.py --task lm --quick        # results/lm-quick/, minutes on 2 CPU cores
    python tools/experiment.py --task lm --full --teacher-width 16   # a capacity-bound set-up (results/lm-explore/)
    torchrun --nproc_per_node=2 tools/experiment.py --task lm --full   # results/lm-full/ (DDP, gloo)
    python tools/experiment.py --task lm --full --seed 0 --scratch-steps 1000 --student-steps 1000 \
        --control-steps 5000 --runs scratch_both,both_netmorph_asym_peak_3_decay_05,both_random,teacher_continued
        # results/lm-full-both/
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import sysconfig
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import exp_common as C
from onnxgrow.optim import after_growth, lr_factor

PACKAGES = ("asyncio", "collections", "concurrent", "email", "html", "http", "importlib", "json",
            "logging", "multiprocessing", "re", "tomllib", "unittest", "urllib", "wsgiref", "xml",
            "xmlrpc", "zoneinfo")
MAX_FILE_BYTES = 64 * 1024
VAL_MODULUS = 10
VOCAB = 256

def shapes_for(width: int = 16, layers: int = 2, factor: int = 2) -> dict:
    """The teacher (width, layers; heads of 16 dims, at least 2; SwiGLU FFN 2.75 × width) and the
    shapes grown from it: wider (× `factor` width, heads and FFN), deeper (×2 layers), both."""
    heads = max(2, width // 16)
    teacher = dict(d=width, layers=layers, heads=heads, kv_heads=heads, ffn=11 * width // 4)
    wide = dict(teacher, d=factor * width, heads=factor * heads, kv_heads=factor * heads, ffn=factor * teacher["ffn"])
    return {"teacher": teacher, "wider": wide, "deeper": dict(teacher, layers=2 * layers),
            "both": dict(wide, layers=2 * layers)}


def growth_for(layers: int = 2, factor: int = 2) -> dict:
    """How each student is grown from a teacher of `layers` blocks: og.grow's widen targets (every
    width × `factor`) and deepen specs (a zero-output copy inserted after each block)."""
    copies = [f"layers.{i}:zero" for i in range(layers)]
    return {"wider": dict(widen={"*": f"x{factor}"}, deepen=[]), "deeper": dict(widen={}, deepen=copies),
            "both": dict(widen={"*": f"x{factor}"}, deepen=copies)}


SHAPES = shapes_for()  # --teacher-width / --teacher-layers replace both (main)
GROWTH = growth_for()
MODES = {
    "quick": dict(seeds=1, seq=64, batch=16, teacher_steps=100, student_steps=200, scratch_steps=200,
                  control_steps=300, eval_every=25, val_windows=64),
    "full": dict(seeds=3, seq=128, batch=16, teacher_steps=15000, student_steps=1500, scratch_steps=1500,
                 control_steps=7500, eval_every=100, val_windows=128),
}
LR, BETAS, WEIGHT_DECAY, WARMUP, INIT_STD, FINAL_LR = 3e-3, (0.9, 0.95), 0.01, 30, 0.02, 0.1
GOAL_SAVED = 0.45  # issue 19: function-preserving growth must save this much, the teacher given
EARLY_EVALS = (5, 10, 20)  # extra evaluations right after a start: the loss spike after growth

# Recipes after growth (onnxgrow.optim.Recipe): optimizer state, re-warm-up steps, peak (× LR),
# cosine decay to FINAL_LR × LR at `decay` × the from-scratch steps, symmetry-breaking noise, and
# the rate of the teacher's own elements (× the schedule's).
RECIPES = {
    "asym": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=1.0, noise=0.3),
    "carried": dict(state="carried", rewarm=0, peak=1.0, decay=1.0, noise=0.3),
    "reset": dict(state="reset", rewarm=WARMUP, peak=1.0, decay=1.0, noise=0.3),
    "asym_decay_half": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=0.5, noise=0.3),
    "asym_no_noise": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=1.0, noise=0.0),
    "asym_rewarm300": dict(state="asymmetric", rewarm=300, peak=1.0, decay=1.0, noise=0.3),
    "asym_peak_half": dict(state="asymmetric", rewarm=WARMUP, peak=0.5, decay=1.0, noise=0.3),
    "asym_slow_kept": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=1.0, noise=0.3, kept_rate=0.3),
    "asym_noise_06": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=1.0, noise=0.6),
    "asym_noise_1": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=1.0, noise=1.0),
    "asym_decay_055": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=0.55, noise=0.3),
    "asym_decay_07": dict(state="asymmetric", rewarm=WARMUP, peak=1.0, decay=0.7, noise=0.3),
}
NET2NET_RECIPES = list(RECIPES)  # the recipes net2net was tried with on wider (the previous record's grid)
# the peak sweep: `asym` re-warmed to N × the base rate
RECIPES.update({f"asym_peak_{str(peak).replace('.', '')}": dict(RECIPES["asym"], peak=float(peak))
                for peak in (1.5, 2, 3, 4)})
# the 3 × peak with the teacher's own elements at a fraction of its rate (the new units at the full rate)
RECIPES.update({f"asym_peak_3_kept_{str(rate).replace('.', '')}": dict(RECIPES["asym_peak_3"], kept_rate=rate)
                for rate in (0.33, 0.5)})
# the 3 × peak with a faster decay (LEMON): the cosine ends at `decay` × the from-scratch steps
RECIPES.update({f"asym_peak_3_decay_{str(d).replace('.', '')}": dict(RECIPES["asym_peak_3"], decay=d)
                for d in (0.5, 0.6, 0.7)})
# the faster decay with a longer re-warm-up: the preserved function kept longer, random growth's repair slower
RECIPES.update({f"asym_peak_3_decay_05_rewarm{n}": dict(RECIPES["asym_peak_3_decay_05"], rewarm=n) for n in (100, 200)})
# … with the teacher's own elements near the teacher's final rate (the annealed function kept, the new units at 3 ×)
RECIPES.update({f"asym_peak_3_decay_05_kept_{str(rate).replace('.', '')}": dict(RECIPES["asym_peak_3_decay_05"], kept_rate=rate)
                for rate in (0.05, 0.15, 0.33)})
# … with the teacher's own elements nearly still at first, their rate rising to the schedule's by `kept_until` ×
# the from-scratch steps (LLaMA-Pro trains only the new parts; here only at first)
RECIPES.update({f"asym_peak_3_decay_05_thaw_{str(until).replace('.', '')}": dict(RECIPES["asym_peak_3_decay_05"],
                                                                             kept_rate=0.0, kept_until=until)
                for until in (0.2, 0.5)})
# … with more cancelling noise (it perturbs only split copies' readers: none in netmorph, whose stream copies read zero)
RECIPES["asym_peak_3_decay_05_noise_1"] = dict(RECIPES["asym_peak_3_decay_05"], noise=1.0)
DEFAULT_RECIPE = "asym"  # the base recipe every variant departs from
# the recommended growth of each shape, as a method of RUNS: og.grow(**onnxgrow.optim.RECOMMENDED_GROWTH) —
# netmorph, the stream padded, new units at a quarter of each grown weight's std (`netmorph_pad_stdx25`); after
# block copies alone nothing is padded or drawn, so plain `netmorph` grows the same weights
RECOMMENDED_GROWTH = {"wider": "netmorph_pad_stdx25", "deeper": "netmorph", "both": "netmorph_pad_stdx25"}
# … and recipe: onnxgrow.optim.recommended_recipe(steps, widened) — after widening a peak of 3 × and the cosine
# over half the budget, after block copies alone `asym` (README, results/lm-full*/)
RECOMMENDED_RECIPE = {"wider": "asym_peak_3_decay_05", "deeper": DEFAULT_RECIPE, "both": "asym_peak_3_decay_05"}
BASELINE_RECIPE = dict(RECIPES[DEFAULT_RECIPE], noise=0.0)  # r2r and the control
# the recipes tried on each shape: every one on wider, the default on deeper, and on both the default
# and LEMON's faster decay at the horizon that saves 30 % if reached
GRID = {"wider": NET2NET_RECIPES + ["asym_peak_3_decay_05", "asym_peak_3_decay_05_noise_1"], "deeper": [DEFAULT_RECIPE], "both": [DEFAULT_RECIPE, "asym_decay_07"]}
# netmorph (the recommended method) after growth: the new units' pace (peak), the teacher's elements slowed
# (kept), LEMON's faster decay
NETMORPH_GRID = {"wider": [DEFAULT_RECIPE, "asym_peak_15", "asym_peak_2", "asym_peak_3", "asym_peak_4",
                           "asym_peak_3_kept_033", "asym_peak_3_kept_05", "asym_peak_3_decay_05",
                           "asym_peak_3_decay_06", "asym_peak_3_decay_07", "asym_peak_3_decay_05_rewarm100",
                           "asym_peak_3_decay_05_rewarm200", "asym_peak_3_decay_05_noise_1",
                           "asym_peak_3_decay_05_kept_005", "asym_peak_3_decay_05_kept_015",
                           "asym_peak_3_decay_05_kept_033", "asym_peak_3_decay_05_thaw_02",
                           "asym_peak_3_decay_05_thaw_05"],
                 "deeper": [DEFAULT_RECIPE, "asym_peak_3"],
                 "both": [DEFAULT_RECIPE, "asym_peak_2", "asym_peak_3", "asym_peak_3_decay_05", "asym_peak_3_decay_06"]}
# netmorph with its new units at a fresh model's scale, and with the residual stream padded
FRESH_GRID = {"wider": [DEFAULT_RECIPE, "asym_peak_3_decay_05", "asym_peak_3_decay_06"], "both": [DEFAULT_RECIPE]}
PAD_GRID = {"wider": [DEFAULT_RECIPE, "asym_peak_2", "asym_peak_3", "asym_peak_4", "asym_peak_3_decay_05",
                      "asym_peak_3_decay_06", "asym_peak_3_decay_05_rewarm100", "asym_peak_3_decay_05_rewarm200"],
            "both": [DEFAULT_RECIPE, "asym_peak_2", "asym_peak_3", "asym_peak_3_decay_05"]}
# … both: the stream padded and the new units at a fresh model's scale, as random growth draws them
FRESH_PAD_GRID = {"wider": ["asym_peak_3_decay_05"]}
# … the same through og.grow's own options (pad_streams, new_std: onnxgrow.optim.RECOMMENDED_GROWTH)
STD_PAD_GRID = {"wider": ["asym_peak_3_decay_05", "asym_peak_3_decay_06"], "both": ["asym_peak_3_decay_05"]}
# … new_std other than a fresh model's: in thousandths (`_std10`: 0.010), or hundredths of each grown weight's own
# std (`_stdx50`: "x0.5")
STD_SWEEP = {"wider": ["05", "10", "50", "100", "200", "x25", "x50"], "both": ["100", "x25"]}
# net2net (every new unit a split copy: active from the start) with the residual stream padded
NET2NET_PAD_GRID = {"wider": ["asym_peak_3_decay_05"], "both": ["asym_peak_3_decay_05"]}
# netmorph with GradMax's new units (the MLP's), on the recommended schedule after widening (wider only:
# native_student finds the weights by the export's names, which inserted blocks do not keep)
GRADMAX_GRID = {"wider": ["asym_peak_3_decay_05"]}
# r2r (new units in ±V pairs) on the recommended schedule after widening
R2R_GRID = {"wider": ["asym_peak_3_decay_05"], "both": ["asym_peak_3_decay_05"]}
# random growth on other recipes than its shape's recommended one (`{shape}_random`)
RANDOM_GRID = {"wider": ["asym_peak_3", "asym_peak_3_kept_033", "asym_peak_3_kept_05", "asym_peak_3_decay_06",
                         "asym_peak_3_decay_07", "asym_peak_3_decay_05_rewarm100", "asym_peak_3_decay_05_rewarm200",
                         "asym_peak_3_decay_05_kept_005", "asym_peak_3_decay_05_kept_015",
                         "asym_peak_3_decay_05_kept_033", "asym_peak_3_decay_05_thaw_02",
                         "asym_peak_3_decay_05_thaw_05"],
               "both": ["asym_peak_3", "asym_peak_3_decay_06"]}

def new_std_of(flags: list[str]) -> float | str | None:
    """og.grow's new_std for a method's flags: `std` a fresh model's (INIT_STD), `std10` 0.010 (thousandths),
    `stdx50` "x0.5" (hundredths of each grown weight's own std)."""
    std = next((f for f in flags if f.startswith("std")), None)
    if std is None:
        return None
    if std == "std":
        return INIT_STD
    return f"x{int(std[4:]) / 100:g}" if std[3] == "x" else int(std[3:]) / 1000


# the growth variants of RUNS beside net2net, r2r and random growth: (method, {shape: recipes}, what it is);
# run `{shape}_{method}_{recipe}`. netmorph: new units random at the weights' scale, their consumer weights zero,
# the residual stream's new channels copies (its readers take the original, the copy starts at zero weight);
# the block copies are net2net's (zero output), so on deeper it grows the net2net student's weights
_GRADMAX = "netmorph with its new SwiGLU units' up rows turned to the largest gradient of their zero down columns (GradMax)"
_PADDED = "netmorph with the residual stream padded and the new units"
VARIANTS = [
    ("netmorph", NETMORPH_GRID, "netmorph"),
    ("netmorph_gradmax", GRADMAX_GRID, _GRADMAX),
    ("netmorph_pad_gradmax", GRADMAX_GRID, f"{_GRADMAX}, the residual stream padded"),
    ("net2net_pad", NET2NET_PAD_GRID, "net2net with the residual stream padded with zero channels (random readers) "
                                      "instead of split"),
    ("netmorph_fresh", FRESH_GRID, f"netmorph with the new units drawn as a fresh model's (N(0, {INIT_STD}))"),
    ("netmorph_pad_std", STD_PAD_GRID, f"{_PADDED}' random weights at a fresh model's std ({INIT_STD}), by og.grow's "
                                       "own pad_streams and new_std"),
    *((f"netmorph_pad_std{_std}", {shape: ["asym_peak_3_decay_05"] for shape, stds in STD_SWEEP.items() if _std in stds},
       f"{_PADDED}' random weights at std {new_std_of(['std' + _std])}")
      for _std in dict.fromkeys(std for stds in STD_SWEEP.values() for std in stds)),
    ("netmorph_pad_fresh", FRESH_PAD_GRID, f"{_PADDED} drawn as a fresh model's (N(0, {INIT_STD}))"),
    ("netmorph_pad", PAD_GRID, "netmorph with the residual stream padded with zero channels (random readers) instead "
                               "of copied"),
]

# name: (kind, shape, method, recipe, description)
RUNS = {
    "teacher": ("teacher", "teacher", None, None, "the teacher, trained from scratch (warm-up, cosine)"),
    "teacher_continued": ("control", "teacher", None, BASELINE_RECIPE,
                          f"no growth: the teacher trained on (recipe `{DEFAULT_RECIPE}` without noise, its AdamW "
                          f"state kept)"),
}
for _shape in ("wider", "deeper", "both"):
    for _name, _recipe in RECIPES.items():
        if _name in GRID[_shape]:
            RUNS[f"{_shape}_net2net_{_name}"] = ("grown", _shape, "net2net", _recipe,
                                                 f"{_shape}, net2net, recipe `{_name}` ({_recipe})")
    RUNS.update({
        f"{_shape}_r2r": ("grown", _shape, "r2r", BASELINE_RECIPE, f"{_shape}, r2r (new units in ±V pairs, blocks "
                                                                  f"with paired outputs), recipe `{DEFAULT_RECIPE}` "
                                                                  f"without noise"),
        f"{_shape}_random": ("grown", _shape, "random", dict(RECIPES[RECOMMENDED_RECIPE[_shape]], noise=0.0),
                             f"{_shape}, random growth (not preserving), the shape's recommended recipe "
                             f"`{RECOMMENDED_RECIPE[_shape]}` without noise"),
        f"scratch_{_shape}": ("scratch", _shape, None, None, f"the {_shape} architecture from scratch (warm-up, cosine)"),
    })
    for _name in R2R_GRID.get(_shape, []):
        RUNS[f"{_shape}_r2r_{_name}"] = ("grown", _shape, "r2r", dict(RECIPES[_name], noise=0.0),
                                         f"{_shape}, r2r, recipe `{_name}` without noise")
    for _name in RANDOM_GRID.get(_shape, []):
        RUNS[f"{_shape}_random_{_name}"] = ("grown", _shape, "random", dict(RECIPES[_name], noise=0.0),
                                            f"{_shape}, random growth, recipe `{_name}` without noise")
    for _method, _grid, _what in VARIANTS:
        for _name in _grid.get(_shape, []):
            RUNS[f"{_shape}_{_method}_{_name}"] = ("grown", _shape, _method, RECIPES[_name],
                                                   f"{_shape}, {_what}, recipe `{_name}`")


# the record's runs (results/lm-full/): per shape from scratch, the recommended run, random growth on its schedule
# and on the previous one, net2net, and netmorph at the previous recipes and in its variants; the teacher trained on
RECORD_RUNS = (
    "teacher_continued",
    "scratch_wider", "wider_net2net_asym", "wider_random", "wider_random_asym_peak_3", "wider_netmorph_asym",
    "wider_netmorph_asym_peak_3", "wider_netmorph_asym_peak_3_decay_05", "wider_r2r_asym_peak_3_decay_05",
    "wider_netmorph_fresh_asym_peak_3_decay_05", "wider_netmorph_pad_asym", "wider_netmorph_pad_asym_peak_3",
    "wider_netmorph_pad_asym_peak_3_decay_05", "wider_netmorph_pad_std_asym_peak_3_decay_05",
    "wider_netmorph_pad_stdx25_asym_peak_3_decay_05", "wider_net2net_asym_peak_3_decay_05",
    "scratch_deeper", "deeper_random", "deeper_netmorph_asym",
    "scratch_both", "both_net2net_asym", "both_random", "both_random_asym_peak_3", "both_netmorph_asym",
    "both_netmorph_asym_peak_3", "both_netmorph_asym_peak_3_decay_05", "both_netmorph_pad_asym",
    "both_netmorph_pad_asym_peak_3_decay_05", "both_netmorph_pad_std_asym_peak_3_decay_05",
    "both_netmorph_pad_stdx25_asym_peak_3_decay_05",
)


def full_runs() -> list[str]:
    """What full mode trains by default: the runs of the record's table (results/lm-full/); every other
    run (the sweeps and probes of results/lm-explore/) only when --runs names it."""
    return list(RECORD_RUNS)


def recommended() -> dict[str, str]:
    """The recommended function-preserving run of each shape."""
    return {shape: f"{shape}_{RECOMMENDED_GROWTH[shape]}_{RECOMMENDED_RECIPE[shape]}" for shape in ("wider", "deeper", "both")}


def quick_runs() -> list[str]:
    """What quick mode trains: the control, and per shape from scratch, the recommended run and
    random growth."""
    return ["teacher_continued", *(r for s, run in recommended().items() for r in (f"scratch_{s}", run, f"{s}_random"))]


def recipe_for(spec: dict, steps: int):
    """The onnxgrow.optim.Recipe of a RECIPES entry, its decay horizon `decay` × `steps`."""
    from onnxgrow.optim import Recipe

    horizon = max(2, round(spec["decay"] * steps))
    return Recipe(state=spec["state"], rewarm=min(spec["rewarm"], horizon // 2), peak=spec["peak"], final=FINAL_LR,
                  horizon=horizon, noise=spec["noise"], kept_rate=spec.get("kept_rate", 1.0),
                  kept_until=round(spec["kept_until"] * steps) if "kept_until" in spec else None)


def fresh_schedule(steps: int):
    """Warm-up over WARMUP steps, then a cosine to FINAL_LR × LR at `steps`: training from scratch."""
    from onnxgrow.optim import Recipe, lr_factor

    steps = max(2, steps)
    return functools.partial(lr_factor, recipe=Recipe(rewarm=min(WARMUP, steps // 2), horizon=steps, final=FINAL_LR))


# ----------------------------------------------------------------------------- data


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[str]:
    """Relative paths of the corpus files, sorted: the fixed rule of the module docstring."""
    root = root or stdlib_root()
    chosen = []
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            rel = path.relative_to(root)
            if any(part.startswith("test") for part in rel.parts[:-1]) or path.stat().st_size > MAX_FILE_BYTES:
                continue
            chosen.append(rel.as_posix())
    return sorted(chosen)


def is_validation(rel_path: str) -> bool:
    return zlib.crc32(rel_path.encode()) % VAL_MODULUS == 0


@functools.lru_cache(maxsize=None)
def load_corpus() -> dict:
    """{'train', 'val': uint8 arrays of the concatenated files, 'files': (n_train, n_val), 'sha256'}."""
    root = stdlib_root()
    parts = {"train": [], "val": []}
    digest = hashlib.sha256()
    for rel in corpus_files(root):
        data = (root / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + data)
        parts["val" if is_validation(rel) else "train"].append(data)
    out = {k: np.frombuffer(b"".join(v), dtype=np.uint8).copy() for k, v in parts.items()}
    out.update(files=(len(parts["train"]), len(parts["val"])), sha256=digest.hexdigest())
    return out


def validation_windows(val: np.ndarray, seq: int, count: int) -> np.ndarray:
    """`count` evenly spaced non-overlapping windows of seq+1 bytes from the validation text."""
    n = len(val) // (seq + 1)
    picks = np.linspace(0, n - 1, num=min(count, n)).astype(np.int64)
    return np.stack([val[i * (seq + 1):(i + 1) * (seq + 1)] for i in picks])


# ----------------------------------------------------------------------------- model


class LlamaRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.head_dim = d // heads
        self.q_proj = nn.Linear(d, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        hd = self.head_dim
        q, k, v = (p(x).view(b, t, -1, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = q.shape[1] // k.shape[1]
        if groups > 1:  # repeat_kv
            k, v = (z[:, :, None].expand(b, z.shape[1], groups, t, hd).reshape(b, -1, t, hd) for z in (k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd) + mask
        return self.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int, eps: float):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(d, eps)
        self.self_attn = LlamaAttention(d, heads, kv_heads)
        self.post_attention_layernorm = LlamaRMSNorm(d, eps)
        self.mlp = LlamaMLP(d, ffn)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class ByteLlama(nn.Module):
    """A Llama-style decoder over bytes (see the module docstring); weights N(0, INIT_STD), gains 1."""

    def __init__(self, d: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int = VOCAB,
                 theta: float = 10000.0, eps: float = 1e-6):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaDecoderLayer(d, heads, kv_heads, ffn, eps) for _ in range(layers))
        self.norm = LlamaRMSNorm(d, eps)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        head_dim = d // heads
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, INIT_STD)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        freqs = torch.arange(t, device=input_ids.device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        mask = torch.full((t, t), float("-inf"), device=input_ids.device).triu(1)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, angles.cos(), angles.sin(), mask)
        return self.lm_head(self.norm(x))


def build_lm(**shape) -> ByteLlama:
    return ByteLlama(**shape)


def macs_per_token(d: int, layers: int, heads: int, kv_heads: int, ffn: int, seq: int, vocab: int = VOCAB) -> int:
    """Forward multiply-adds per token: q/k/v/o projections, QKᵀ and attention·V over the whole
    seq × seq window (the model computes it and masks), the SwiGLU MLP, and the LM head.
    Embedding lookups, norms, RoPE and softmax are element-wise and not counted."""
    head_dim = d // heads
    projections = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
    attention = 2 * heads * head_dim * seq
    mlp = 3 * d * ffn
    return layers * (projections + attention + mlp) + d * vocab


def export_onnx(module, seq: int = 16, dynamic: bool = True):
    """torch.onnx.export (dynamo, the default optimisation), IR version 10, input `input_ids`
    [batch, seq] (dynamic unless `dynamic` is False), output `logits`."""
    import logging

    import torch

    module = copy.deepcopy(module).cpu().eval()
    example = (torch.zeros(1, seq, dtype=torch.int64),)
    shapes = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}} if dynamic else None
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, example, dynamo=True, input_names=["input_ids"],
                                        output_names=["logits"], dynamic_shapes=shapes, verbose=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    model = program.model_proto
    model.ir_version = 10
    return model


# ----------------------------------------------------------------------------- growth


def grow(teacher, shape: str, method: str, seed: int):
    """The grown student as (onnx.ModelProto, channel mappings for onnxgrow.optim), via og.grow.

    `random` is the same growth without preservation, new parts drawn as a fresh model draws them
    (`redraw_added`): widening with og.grow's `random` method, the block copies inserted as for
    net2net, then every element that is not the teacher's own re-drawn."""
    import onnxgrow as og

    spec = GROWTH[shape]
    if method != "random":
        deepen = [d.replace(":zero", ":r2r") for d in spec["deepen"]] if method == "r2r" else spec["deepen"]
        base, *flags = method.split("_")  # netmorph_pad_gradmax: netmorph, the stream padded, GradMax's units
        student, done = og.grow(teacher, **grow_kwargs(spec["widen"], deepen), method=base, seed=seed,
                                pad_streams="pad" in flags, new_std=new_std_of(flags), with_summary=True)
        if "fresh" in flags:
            student = fresh_new_units(student, done["mappings"], seed)
        if "gradmax" in flags:
            student = gradmax_units(student, shape, seed, padded="pad" in flags)
        return student, done["mappings"]
    wide, done = (og.grow(teacher, widen=spec["widen"], method="random", seed=seed, with_summary=True)
                  if spec["widen"] else (teacher, {"mappings": []}))
    deep = og.grow(wide, deepen=spec["deepen"], method="net2net", seed=seed) if spec["deepen"] else wide
    return redraw_added(teacher, wide, deep, done["mappings"], seed), done["mappings"]


def grow_kwargs(widen: dict, deepen: list) -> dict:
    """og.grow's keyword arguments, leaving out an empty widen or deepen."""
    return {k: v for k, v in (("widen", widen), ("deepen", deepen)) if v}


def fresh_new_units(student, mappings: list[dict], seed: int):
    """netmorph's student with its new units' incoming weights re-drawn as a fresh model's
    (N(0, INIT_STD)) instead of at the trained weights' scale: the elements at a fresh unit
    (π = −1 along some axis) that netmorph left non-zero. Their consumer weights stay zero, so the
    function is unchanged."""
    import onnx
    from onnx import numpy_helper

    from onnxgrow.optim import fresh_elements

    grown = {e["initializer"] for e in mappings}
    out = onnx.ModelProto()
    out.CopyFrom(student)
    rng = np.random.default_rng(seed + 104729)
    for init in out.graph.initializer:
        if init.name not in grown:
            continue
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        redraw = fresh_elements(init.name, w.shape, mappings) & (w != 0)
        drawn = rng.normal(0.0, INIT_STD, w.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(np.where(redraw, drawn, w).astype(np.float32), init.name))
    return out


def gradmax_units(student, shape: str, seed: int, padded: bool = False):
    """netmorph's student with the `up` rows of its new SwiGLU units (those whose `down` column is
    zero) turned, at their norm, to where the zero `down` column's gradient is largest (GradMax,
    Evci et al. 2022, for down(silu(gate·x) ⊙ up·x)): for unit j the column's gradient is
    M_j·u_j with M_j = Σ_t silu(g_j·x_t) δ_t x_tᵀ (x: the MLP's input, δ: the loss gradient at its
    output, over `gradmax_batch` training windows), so u_j is M_j's top right singular vector. The
    `down` columns stay zero, so the function is unchanged (og.verify checks it as for every student)."""
    import onnx
    from onnx import numpy_helper

    module, where = native_student(student, shape, padded)
    signals = mlp_signals(module, gradmax_batch(seed))
    out = onnx.ModelProto()
    out.CopyFrom(student)
    by_name = {init.name: init for init in out.graph.initializer}
    with torch.no_grad():
        for index, layer in enumerate(module.layers):
            mlp, (x, delta) = layer.mlp, signals[index]
            new = torch.nonzero((mlp.down_proj.weight == 0).all(dim=0)).flatten()
            up = mlp.up_proj.weight.detach().clone()
            gates = F.silu(x @ mlp.gate_proj.weight[new].T)
            for k, unit in enumerate(new.tolist()):
                direction = torch.linalg.svd((delta * gates[:, k:k + 1]).T @ x)[2][0]
                up[unit] = direction * up[unit].norm()
            name, transposed = where[f"layers.{index}.mlp.up_proj.weight"]
            array = up.numpy().T if transposed else up.numpy()
            by_name[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
    return out


def gradmax_batch(seed: int, windows: int = 64, seq: int = 128) -> torch.Tensor:
    """The training windows GradMax measures its gradients on."""
    data = load_corpus()["train"]
    starts = np.random.default_rng(seed + 31337).integers(0, len(data) - seq - 1, size=windows)
    return torch.as_tensor(np.stack([data[s:s + seq + 1] for s in starts]).astype(np.int64))


def native_student(student, shape: str, padded: bool = False):
    """(a ByteLlama of `shape` holding the grown ONNX `student`'s weights, {parameter: (initializer,
    transposed)}). A fresh ByteLlama's export names its initializers as the teacher's did, and the
    growth history in the student's metadata gives each of its initializers the teacher's name; the
    logits are checked against the student's. `padded`: the stream was zero-padded, so its norms' ε is × d/d′ (onnxgrow.padding)."""
    from onnx import numpy_helper

    import onnxgrow as og
    from onnxgrow.checkpoints import history
    from onnxgrow.optim import match_parameters

    module = build_lm(**SHAPES[shape])
    if padded:
        for norm in (m for m in module.modules() if isinstance(m, LlamaRMSNorm)):
            norm.eps *= SHAPES["teacher"]["d"] / SHAPES[shape]["d"]
    with torch.no_grad():  # distinct values everywhere (norm gains start equal), so each is found
        for param in module.parameters():
            param.normal_()
    like = og.to_torch(export_onnx(module))
    layouts = getattr(like, "onnx_layouts", None) or {}
    grown = history.origins(history.read(history.metadata_of(student)), {t.name for t in student.graph.initializer})
    init_of = {grown[t.name][0]: t for t in student.graph.initializer if t.name in grown}
    where = {}
    for like_name, (param, transposed) in match_parameters(module, like).items():
        init = init_of[like.onnx_names[like_name]]
        transposed = transposed != (layouts.get(like_name) == "T")  # initializer → like's layout → module's
        array = numpy_helper.to_array(init).copy()
        array = array.T if transposed else array
        target = module.get_parameter(param)
        if tuple(array.shape) != tuple(target.shape):
            raise RuntimeError(f"{init.name} {array.shape} does not fit {param} {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
        where[param] = (init.name, transposed)
    probe = torch.zeros(2, 16, dtype=torch.long) + torch.arange(16)
    with torch.no_grad():
        got, expected = module(probe), og.to_torch(student)(probe)
    if (got - expected).abs().max() > 1e-4 * expected.abs().max():
        raise RuntimeError("the ByteLlama with the student's weights computes another function than the student")
    return module, where


def mlp_signals(module, batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block of a ByteLlama, (x: the MLP's input, δ: the loss gradient at its output), one row per
    token of `batch` (next-byte cross-entropy); the parameters' .grad are left filled."""
    caps = {}

    def keep_input(index):
        def hook(mod, inputs, output):
            caps[index, "x"] = inputs[0].detach()
        return hook

    def keep_output_grad(index):
        def hook(mod, inputs, output):
            output.register_hook(lambda grad: caps.__setitem__((index, "d"), grad.detach()))
        return hook

    hooks = [h for i, layer in enumerate(module.layers)
             for h in (layer.mlp.up_proj.register_forward_hook(keep_input(i)),
                       layer.mlp.down_proj.register_forward_hook(keep_output_grad(i)))]
    module.zero_grad()
    logits = module(batch[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).backward()
    for h in hooks:
        h.remove()
    return [(caps[i, "x"].reshape(-1, caps[i, "x"].shape[-1]), caps[i, "d"].reshape(-1, caps[i, "d"].shape[-1]))
            for i in range(len(module.layers))]


def redraw_added(teacher, wide, student, mappings: list[dict], seed: int):
    """The random-growth baseline: `student` with every float element that is not the teacher's
    own re-drawn as `build_lm` draws a fresh model (1-D gains 1, matrices N(0, INIT_STD)): the
    added units of each widened tensor (`mappings`, onnxgrow.optim.kept_elements) and the whole of
    each tensor `wide` (the widened model before block copies were inserted) lacks. og.grow's own
    random units are drawn at the scale of the trained weights, which starts a byte LM at a loss
    of ~30: a baseline no one would use."""
    import onnx
    from onnx import numpy_helper

    from onnxgrow.optim import kept_elements

    teacher_names = {t.name for t in teacher.graph.initializer}
    before = {t.name for t in wide.graph.initializer}
    grown = {e["initializer"] for e in mappings}
    out = onnx.ModelProto()
    out.CopyFrom(student)
    rng = np.random.default_rng(seed + 7919)
    for init in out.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim == 0 or (init.name in before and init.name not in grown):
            continue
        keep = (kept_elements(init.name, w.shape, mappings, teacher_names) if init.name in before
                else np.zeros(w.shape, dtype=bool))
        fresh = np.ones_like(w) if w.ndim == 1 else rng.normal(0.0, INIT_STD, w.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(np.where(keep, w, fresh).astype(np.float32), init.name))
    return out


# ----------------------------------------------------------------------------- training


def adamw(module):
    return torch.optim.AdamW(module.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)


def eval_points(steps: int, every: int) -> list[int]:
    """Steps after which the validation loss is measured: 0, EARLY_EVALS, every `every`, the last."""
    return sorted({0, steps, *(s for s in EARLY_EVALS if s < steps), *range(0, steps, every)})


def evaluate(module, windows, dist, chunk: int = 64) -> float:
    """Mean next-byte cross-entropy (nats) over the validation windows, this rank's share summed
    over ranks."""
    module.eval()
    mine = windows[dist.rank::dist.world]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(mine), chunk):
            w = mine[i:i + chunk].long()
            logits = module(w[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
            count += w[:, 1:].numel()
    total, count = dist.sum([total, count])
    return total / count


def train(module, optimizer, data: dict, steps: int, stream: int, schedule, dist, progress, stop=None) -> dict:
    """AdamW steps at LR × schedule(step) on global batches of random windows drawn from a generator seeded with `stream`
    (each rank takes its rows; its loss is its share of the global mean, so DDP's gradient
    average equals the one-process gradient). Returns the curve at eval_points; `stop(step,
    val_loss)` may end the run at an evaluation by returning the reason."""
    cfg, tokens, windows = data["cfg"], data["train"], data["val"]
    seq, batch = cfg["seq"], cfg["batch"]
    model = dist.wrap(module)
    gen = torch.Generator().manual_seed(stream)
    offsets = torch.arange(seq + 1, device=tokens.device)
    points = eval_points(steps, cfg["eval_every"])
    curve = dict(steps=[], val_loss=[], train_loss=[])
    recent = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step in points:
            loss = evaluate(module, windows, dist)
            curve["steps"].append(step)
            curve["val_loss"].append(loss)
            curve["train_loss"].append(float(np.mean(recent)) if recent else None)
            recent = []
            progress(step, steps, loss)
            reason = stop(step, loss) if stop else None
            if reason:
                curve["stopped"] = reason
                break
        if step == steps:
            break
        model.train()
        starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=gen).to(tokens.device)
        rows = (starts[dist.rank::dist.world, None] + offsets).reshape(-1)
        w = tokens[rows].view(-1, seq + 1).long()
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        for group in optimizer.param_groups:
            group["lr"] = LR * schedule(step)
        optimizer.zero_grad(set_to_none=True)
        (loss * dist.world / (batch * seq)).backward()
        optimizer.step()
        recent.append(loss.item() / w[:, 1:].numel())
    curve["seconds"] = round(time.perf_counter() - t0, 2)
    return curve


# ----------------------------------------------------------------------------- the experiment


def run_order(runs: list[str]) -> list[str]:
    """Runs in the order they train: from-scratch runs first (their final loss is each student's
    target), then the control, then the students."""
    rank = dict(scratch=0, control=1, grown=2)
    return sorted(runs, key=lambda r: (rank[RUNS[r][0]], list(RUNS).index(r)))


def run_seed(seed: int, cfg: dict, runs: list[str], dist, log, models_dir: Path | None,
             earlier: dict | None = None, teacher_cache: Path | None = None, on_record=None) -> dict:
    """Teacher, baselines and students for one seed: {run: record}. Runs recorded in `earlier`
    (this seed's records of an earlier run with the same config) are taken from it instead of
    trained again: from-scratch runs always, the teacher's continuation only when the teacher
    trained here has exactly the recorded curve. `on_record(out)` is called after each run with the
    records so far (so that a crash later loses none of them)."""
    import torch

    corpus = load_corpus()
    data = dict(cfg=cfg, train=torch.from_numpy(corpus["train"]).to(dist.device),
                val=torch.from_numpy(validation_windows(corpus["val"], cfg["seq"], cfg["val_windows"])).to(dist.device))

    def fit(run, module, optimizer, steps, stream, schedule, stop=None):
        def progress(step, total, loss):
            log(f"seed {seed} {run:<26} step {step:>5}/{total}  val_loss {loss:.4f}")

        return train(module, optimizer, data, steps, stream, schedule, dist, progress, stop)

    out = {}
    torch.manual_seed(seed)
    teacher = build_lm(**SHAPES["teacher"]).to(dist.device)
    teacher_opt = adamw(teacher)
    cached = teacher_cache_path(teacher_cache, seed, cfg)
    if cached is not None and cached.exists():
        kept = torch.load(cached, map_location=dist.device, weights_only=False)
        teacher.load_state_dict(kept["model"])
        teacher_opt.load_state_dict(kept["optimizer"])
        out["teacher"] = kept["record"]
        log(f"seed {seed}: the teacher from {cached}")
    else:
        out["teacher"] = fit("teacher", teacher, teacher_opt, cfg["teacher_steps"], 1000 * seed,
                             fresh_schedule(cfg["teacher_steps"]))
        if cached is not None and dist.main:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(model=teacher.state_dict(), optimizer=teacher_opt.state_dict(), record=out["teacher"]),
                       cached)
    out["teacher"]["macs_per_token"] = macs_per_token(**SHAPES["teacher"], seq=cfg["seq"])
    reused = reusable(earlier or {}, out["teacher"])
    if reused:
        log(f"seed {seed}: reusing {', '.join(r for r in reused if r in runs)} from the earlier results")
    teacher_onnx = export_onnx(teacher)
    if models_dir is not None and dist.main:
        models_dir.mkdir(parents=True, exist_ok=True)
        (models_dir / "teacher.onnx").write_bytes(teacher_onnx.SerializeToString())
    teacher_state = None
    grown = {}
    for run in run_order(runs):
        kind, shape, method, spec, _ = RUNS[run]
        # the students and the control share one stream of batches; each from-scratch shape has its own,
        # fixed whatever runs RUNS lists
        stream = 1000 * seed + 1 + (10 + ("wider", "deeper", "both").index(shape) if kind == "scratch" else 0)
        if run in reused:
            out[run] = reused[run]
            continue
        if kind == "scratch":
            torch.manual_seed(seed + 1)
            module = build_lm(**SHAPES[shape]).to(dist.device)
            out[run] = fit(run, module, adamw(module), cfg["scratch_steps"], stream, fresh_schedule(cfg["scratch_steps"]))
        elif kind == "control":
            module = copy.deepcopy(teacher)
            opt = adamw(module)
            opt.load_state_dict(teacher_opt.state_dict())
            if spec["state"] == "reset":
                opt = adamw(module)
            schedule = functools.partial(lr_factor, recipe=recipe_for(spec, cfg["control_steps"]))
            out[run] = fit(run, module, opt, cfg["control_steps"], stream, schedule)
        else:
            if (shape, method) not in grown:
                inputs = data["val"][:4, :-1].long().cpu().numpy()
                grown[(shape, method)] = grow_and_verify(teacher_onnx, shape, method, seed, dist, log, inputs)
                if models_dir is not None and dist.main:
                    path = models_dir / f"{shape}_{method}.onnx"
                    path.write_bytes(grown[(shape, method)][0].SerializeToString())
            student, mappings, rec = grown[(shape, method)]
            if teacher_state is None:
                teacher_state, constants = teacher_layout(teacher, teacher_opt, teacher_onnx)
            module = trainable(student, constants).to(dist.device)
            check_architecture(module, shape)
            opt = adamw(module)
            schedule, report = after_growth(module, opt, mappings, teacher_state,
                                            recipe_for(spec, cfg["scratch_steps"]), seed=seed)
            rec = dict(rec, state_carried=len(report["carried"]), state_fresh=len(report["fresh"]),
                       perturbed=len(report["perturbed"]))
            if report["perturbed"]:
                rec["start_loss_perturbed"] = evaluate(module, data["val"], dist)
            stop = student_stop(out, shape, cfg, macs=macs_per_token(**SHAPES[shape], seq=cfg["seq"]))
            out[run] = dict(rec, **fit(run, module, opt, cfg["student_steps"], stream, schedule, stop))
        out[run].update(macs_per_token=macs_per_token(**SHAPES[shape], seq=cfg["seq"]), spec=run_spec(run))
        if on_record is not None and dist.main:
            on_record(out)
    return out


def teacher_cache_path(folder: Path | None, seed: int, cfg: dict) -> Path | None:
    """Where a trained teacher of this seed, shape and training config is kept (None: no cache)."""
    if folder is None:
        return None
    key = dict(seed=seed, shape=SHAPES["teacher"], steps=cfg["teacher_steps"], seq=cfg["seq"], batch=cfg["batch"],
               eval_every=cfg["eval_every"], val_windows=cfg["val_windows"],
               recipe=[LR, BETAS, WEIGHT_DECAY, WARMUP, INIT_STD, FINAL_LR], torch=torch.__version__)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"teacher-{digest}.pt"


def run_spec(run: str) -> dict:
    """What defines a run beyond the config and the teacher: kept in its record, compared by --reuse."""
    kind, shape, method, recipe, _ = RUNS[run]
    spec = dict(kind=kind, shape=shape, method=method, recipe=recipe, growth=GROWTH.get(shape))
    if method == "random":
        spec["new_units"] = f"fresh: N(0, {INIT_STD}), gains 1"  # redraw_added
    return spec


def reusable(earlier: dict, teacher: dict) -> dict:
    """The runs of an earlier record of this seed that this run may take as they are: the ones that
    do not start from the teacher, and those that do when the teacher's curve is the same and the
    run is defined as it is now (`run_spec`; a record without one is trained again)."""
    same_teacher = earlier.get("teacher", {}).get("val_loss") == teacher["val_loss"]
    return {run: rec for run, rec in earlier.items()
            if run in RUNS and RUNS[run][0] != "teacher"
            and (RUNS[run][0] == "scratch" or (same_teacher and rec.get("spec") == run_spec(run)))}


def student_stop(out: dict, shape: str, cfg: dict, macs: int):
    """A student's stopping rule: it ends at the first evaluation that reaches the from-scratch
    run's final loss (what the compute-saved figure needs), or once its own compute (the teacher
    given) has passed what the from-scratch run needed, after which growth cannot pay."""
    scratch = out.get(f"scratch_{shape}")
    if scratch is None:
        return None
    target = scratch["val_loss"][-1]
    budget = reach_flops(scratch, cfg, target)

    def stop(step, loss):
        if loss <= target:
            return "reached the from-scratch loss"
        if C.train_flops(macs, step * cfg["batch"] * cfg["seq"]) >= budget:
            return "used the from-scratch compute without reaching its loss"
        return None

    return stop


def grow_and_verify(teacher_onnx, shape: str, method: str, seed: int, dist, log, inputs):
    """(student, mappings, record): grown by og.grow, checked by og.verify on rank 0 on `inputs`
    (validation text, so attention sees whole windows rather than the one-token default)."""
    import onnxgrow as og

    t0 = time.perf_counter()
    student, mappings = grow(teacher_onnx, shape, method, seed)
    rec = dict(grow_seconds=round(time.perf_counter() - t0, 2))
    if dist.main:
        check = og.verify(teacher_onnx, student, inputs={"input_ids": inputs})
        rec.update(verify_ok=bool(check.ok), verify=check.to_dict())
        worst = max(o["max_rel"] for o in rec["verify"]["outputs"])
        log(f"seed {seed} {shape} grown with {method}: verify {'match' if check.ok else 'DIFFERS'} "
            f"(max |teacher - student| / max |teacher| = {worst:.1e})")
    return student, mappings, rec


def teacher_layout(teacher, optimizer, teacher_onnx):
    """The teacher's AdamW state keyed and laid out as the exported graph's initializers, and the
    names of the initializers that were constants of the torch module (folded buffers such as the
    rotary frequencies, which onnxgrow.to_torch would otherwise make trainable)."""
    import onnxgrow as og
    from onnxgrow.optim import adamw_state, match_parameters

    like = og.to_torch(teacher_onnx)
    matched = match_parameters(teacher, like)
    constants = {like.onnx_names[p] for p, _ in like.named_parameters() if p not in matched}
    return adamw_state(teacher, optimizer, like=like), constants


def check_architecture(module, shape: str) -> None:
    """The grown student must have as many trainable parameters as the `shape` model from scratch:
    its compute is counted from SHAPES[shape], so a growth that made something else is an error."""
    grown = sum(p.numel() for p in module.parameters() if p.requires_grad)
    expected = sum(p.numel() for p in ByteLlama(**SHAPES[shape]).parameters())
    if grown != expected:
        raise RuntimeError(f"the {shape} student has {grown:,} trainable parameters, the {shape} architecture "
                           f"{expected:,}: GROWTH[{shape!r}] does not make SHAPES[{shape!r}]")


def trainable(model, constants: set[str]):
    """onnxgrow.to_torch(model) with the initializers named in `constants` frozen."""
    import onnxgrow as og

    module = og.to_torch(model)
    for name, param in module.named_parameters():
        if module.onnx_names[name] in constants:
            param.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- summary


def flops_curve(rec: dict, cfg: dict, offset: int = 0) -> list[int]:
    """Cumulative training FLOPs at each evaluation of a run (plus `offset`, the teacher's)."""
    tokens_per_step = cfg["batch"] * cfg["seq"]
    return [offset + C.train_flops(rec["macs_per_token"], s * tokens_per_step) for s in rec["steps"]]


def reach_flops(rec: dict, cfg: dict, target: float, offset: int = 0):
    """FLOPs (incl. `offset`) at the first evaluation whose validation loss is ≤ target, or None."""
    i = C.first_reach(rec["val_loss"], target, lower_is_better=True)
    return None if i is None else flops_curve(rec, cfg, offset)[i]


def summarise(per_seed: dict, cfg: dict) -> dict:
    """Curves (mean ± std), loss spike after growth, and compute saved per shape."""
    seeds = sorted(per_seed)
    runs = [r for r in RUNS if all(r in per_seed[s] for s in seeds)]
    teacher_flops = [flops_curve(per_seed[s]["teacher"], cfg)[-1] for s in seeds]
    summary = {}
    for run in runs:
        recs = [per_seed[s][run] for s in seeds]
        kind = RUNS[run][0]
        offsets = teacher_flops if kind in ("grown", "control") else [0] * len(seeds)
        longest = max(recs, key=lambda r: len(r["steps"]))  # students stop early, each seed when it may
        loss = np.full((len(recs), len(longest["steps"])), np.nan)
        for i, r in enumerate(recs):
            loss[i, :len(r["val_loss"])] = r["val_loss"]
        stats = [C.mean_std(col[~np.isnan(col)]) for col in loss.T]
        rec = dict(description=RUNS[run][4], macs_per_token=recs[0]["macs_per_token"], steps=longest["steps"],
                   flops=flops_curve(longest, cfg, offsets[0]),
                   val_loss=dict(mean=[m for m, _ in stats], std=[sd for _, sd in stats]),
                   final_loss=C.mean_std([r["val_loss"][-1] for r in recs]),
                   stopped=[r.get("stopped") for r in recs])
        if kind in ("grown", "control"):
            start = loss[:, 0]
            early = loss[:, [i for i, s in enumerate(longest["steps"]) if s <= max(EARLY_EVALS)]]
            rec["start_loss"] = C.mean_std(start)
            rec["spike"] = C.mean_std(np.nanmax(early, 1) - start)
        if "verify_ok" in recs[0]:
            rec["verify_ok"] = [r["verify_ok"] for r in recs]
            rec["verify_max_rel"] = max(o["max_rel"] for r in recs for o in r["verify"]["outputs"])
        summary[run] = rec
    for shape in ("wider", "deeper", "both"):
        ref = f"scratch_{shape}"
        if ref not in summary:
            continue
        targets = [per_seed[s][ref]["val_loss"][-1] for s in seeds]
        scratch = [reach_flops(per_seed[s][ref], cfg, t) for s, t in zip(seeds, targets)]
        for run in [r for r in summary if RUNS[r][1] in (shape, "teacher") and RUNS[r][0] != "teacher"]:
            offsets = teacher_flops if RUNS[run][0] in ("grown", "control") else [0] * len(seeds)
            got = [reach_flops(per_seed[s][run], cfg, t, o) for s, t, o in zip(seeds, targets, offsets)]
            given = [reach_flops(per_seed[s][run], cfg, t) for s, t in zip(seeds, targets)]
            summary[run].setdefault("to_target", {})[shape] = dict(
                target=targets, flops=got, saved=C.compute_saved(got, scratch),
                flops_teacher_given=given, saved_teacher_given=C.compute_saved(given, scratch))
        if "teacher_continued" in summary:
            budget = [flops_curve(per_seed[s][ref], cfg)[-1] for s in seeds]
            # the teacher given, as a user holding its checkpoint has it: trained on with the compute
            # the big shape used from scratch (a plateaued teacher's own training can exceed that compute)
            at_budget = [loss_within(per_seed[s]["teacher_continued"], cfg, f) for s, f in zip(seeds, budget)]
            summary[ref]["capacity_margin"] = C.mean_std([c - t for c, t in zip(at_budget, targets)])
    for run, rec in summary.items():
        reach = rec.get("to_target", {})
        if RUNS[run][0] in ("grown", "control") and reach:
            for key, saved in (("compute_saved", "saved"), ("compute_saved_teacher_given", "saved_teacher_given")):
                per_shape = {shape: {k: r[saved][k] for k in ("mean", "std", "reached")} for shape, r in reach.items()}
                rec[key] = per_shape if RUNS[run][0] == "control" else next(iter(per_shape.values()))
    return summary


def loss_within(rec: dict, cfg: dict, flops: int) -> float:
    """A run's validation loss at its last evaluation within `flops` (≥ 0) of its own training."""
    curve = flops_curve(rec, cfg)
    return [loss for loss, f in zip(rec["val_loss"], curve) if f <= flops][-1]


# ----------------------------------------------------------------------------- reporting


def verdict(run: str, shape: str, saved: dict) -> str | None:
    """A plain sentence where growth did not pay for `run` on `shape`, else None."""
    if saved["reached"] == 0:
        return f"`{run}` never reached the {shape} from-scratch loss within its steps: growth did not pay."
    if saved["reached"] < saved["seeds"]:
        return (f"`{run}` reached the {shape} from-scratch loss in only {saved['reached']}/{saved['seeds']} "
                f"seeds: growth did not reliably pay.")
    if saved["mean"] <= 0:
        return (f"`{run}` needed more compute than the {shape} model from scratch once the teacher's own training "
                f"is counted: growing a teacher trained for it did not pay.")
    return None


def compute_table(summary: dict, shape: str) -> list[str]:
    scratch = summary[f"scratch_{shape}"]
    ref = scratch["to_target"][shape]
    lines = [f"### {shape} ({SHAPES[shape]['layers']} layers, width {SHAPES[shape]['d']}): target "
             f"{C.pm(*C.mean_std(ref['target']))} (the from-scratch final validation loss)", ""]
    if "capacity_margin" in scratch:
        margin, spread = scratch["capacity_margin"]
        lines += [f"Capacity: with the from-scratch run's compute (the teacher given) the teacher trained "
                  f"on ends {abs(margin):.4f} ± {spread:.4f} nats/byte {'above' if margin > 0 else 'below'} this "
                  f"target (per seed, paired).", ""]
    lines += ["| run | verify | start loss | spike (≤ step 20) | loss at the end | reached | GFLOPs to target, "
              "teacher given | saved, teacher given | GFLOPs incl. teacher | saved incl. teacher |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for run, rec in summary.items():
        reach = rec.get("to_target", {}).get(shape)
        if reach is None:
            continue
        ok = rec.get("verify_ok")
        verify = "—" if not ok else (f"match ({rec['verify_max_rel']:.0e})" if all(ok) else
                                     f"differs ({rec['verify_max_rel']:.0e})")
        start = C.pm(*rec["start_loss"]) if "start_loss" in rec else "—"
        spike = C.pm(*rec["spike"]) if "spike" in rec else "—"
        final = C.pm(*rec["final_loss"])
        reference = run == f"scratch_{shape}"
        given = "(reference)" if reference else C.saved_cell(reach["saved_teacher_given"])
        counted = "(reference)" if reference else C.saved_cell(reach["saved"])
        lines.append(f"| {run} | {verify} | {start} | {spike} | {final} | "
                     f"{reach['saved']['reached']}/{reach['saved']['seeds']} | "
                     f"{C.gflops(reach['flops_teacher_given'])} | {given} | {C.gflops(reach['flops'])} | {counted} |")
        if RUNS[run][0] == "grown":
            notes.append(verdict(run, shape, reach["saved"]))
    notes += against_no_growth(summary, shape) + against_the_goal(summary, shape)
    return lines + [""] + [n for n in notes if n] + [""]


def against_the_goal(summary: dict, shape: str) -> list[str]:
    """Whether the recommended run meets the goal: the target in every seed, ≥ 45 % saved with the
    teacher given, and less compute than random growth and the teacher trained on."""
    run = recommended()[shape]
    reach = summary.get(run, {}).get("to_target", {}).get(shape)
    if reach is None:
        return []
    start = summary[run].get("start_loss")
    if start and start[0] <= min(reach["target"]):
        return [f"**Not a test of growth** on {shape}: the teacher starts at {start[0]:.4f}, already at or below the "
                f"target ({min(reach['target']):.4f}); this shape is not worth its compute at this budget."]
    given = reach["saved_teacher_given"]
    short = []
    if given["reached"] < given["seeds"]:
        short.append(f"it reaches the target in {given['reached']}/{given['seeds']} seeds")
    if not given["mean"] >= GOAL_SAVED:
        short.append(f"it saves {100 * given['mean']:.0f} % with the teacher given, {100 * GOAL_SAVED:.0f} % wanted")
    mine = C.mean_std(reach["flops_teacher_given"])[0]
    for other, what in ((f"{shape}_random", "random growth"), ("teacher_continued", "the teacher trained on")):
        theirs = summary.get(other, {}).get("to_target", {}).get(shape)
        if theirs and theirs["saved"]["reached"] and not mine < C.mean_std(theirs["flops_teacher_given"])[0]:
            other_flops = C.mean_std(theirs["flops_teacher_given"])[0]
            short.append(f"{what} needs {'as little' if other_flops == mine else 'less'} ({other_flops / 1e9:.3g} vs "
                         f"{mine / 1e9:.3g} GFLOPs, teacher given)")
    if not short:
        return [f"**Goal met** by the recommended `{run}`: the target in every seed, "
                f"{100 * given['mean']:.0f} % saved with the teacher given, less compute than random growth and "
                f"than the teacher trained on."]
    return [f"**Goal not met** by the recommended `{run}`: " + "; ".join(short) + "."]


def against_no_growth(summary: dict, shape: str) -> list[str]:
    """Sentences comparing the students with the teacher trained on without growth, where that
    control reaches the target too (then the bigger model is not worth its compute at this budget)."""
    control = summary.get("teacher_continued", {}).get("to_target", {}).get(shape)
    if control is None:
        return []
    reached, seeds = control["saved"]["reached"], control["saved"]["seeds"]
    if reached == 0:
        return [f"The teacher trained on without growth never reaches the {shape} target within its steps: "
                f"here the bigger architecture is better."]
    control_flops = C.mean_std(control["flops"])[0]
    lines = [f"The teacher trained on without growth reaches the {shape} target too, in {reached}/{seeds} "
             f"seeds ({control_flops / 1e9:.3g} GFLOPs where it does): at this budget the bigger architecture "
             f"is {'not better per FLOP' if reached == seeds else 'barely better'}."]
    for run, rec in summary.items():
        reach = rec.get("to_target", {}).get(shape)
        if RUNS[run][0] == "grown" and reach and reach["saved"]["reached"]:
            grown_flops = C.mean_std(reach["flops"])[0]
            if grown_flops > control_flops:
                lines.append(f"`{run}` needed more compute than training the teacher on without growth "
                             f"({grown_flops / 1e9:.3g} vs {control_flops / 1e9:.3g} GFLOPs): against not "
                             f"growing, growth did not pay.")
    return lines


def write_table(path: Path, result: dict):
    cfg, summary, corpus = result["config"], result["summary"], result["corpus"]
    n = len(result["per_seed"])
    t = SHAPES["teacher"]
    lines = [
        f"# Does growth pay? A byte-level Llama on the Python standard library ({result['mode']} mode)", "",
        f"**Data.** {corpus['files'][0]} train / {corpus['files'][1]} validation files "
        f"({corpus['bytes'][0]:,} / {corpus['bytes'][1]:,} bytes; split by file), every .py file of at most "
        f"{MAX_FILE_BYTES // 1024} KB under the stdlib packages {', '.join(PACKAGES)} of Python "
        f"{corpus['python']} (sha256 {corpus['sha256'][:12]}; the same corpus wherever that Python version is "
        f"installed). Validation: {cfg['val_windows']} windows of {cfg['seq']} bytes.",
        f"**Model.** Teacher: {t['layers']} layers, width {t['d']}, {t['heads']} heads ({t['kv_heads']} kv), "
        f"SwiGLU FFN {t['ffn']}, RMSNorm, RoPE. Students: wider (×2 width, heads, FFN), deeper (a copy of each "
        f"block after it), both. **Recipe.** AdamW lr {LR}, betas {BETAS}, weight decay {WEIGHT_DECAY}, "
        f"batch {cfg['batch']} × {cfg['seq']} bytes. The teacher and the from-scratch runs: warm-up {WARMUP} "
        f"steps, cosine to {FINAL_LR} × lr at their last step. After growth (onnxgrow.optim.after_growth), "
        f"recommended: {', '.join(f'{RECOMMENDED_GROWTH[s]} growth with recipe `{r}` ({s})' for s, r in RECOMMENDED_RECIPE.items())}"
        f" (og.grow(**onnxgrow.optim.RECOMMENDED_GROWTH)): "
        + "; ".join(f"`{k}` {v}" for k, v in RECIPES.items()) + " (decay: the "
        f"cosine ends at that fraction of the from-scratch steps). Teacher {cfg['teacher_steps']} steps, students "
        f"at most {cfg['student_steps']} more, the control {cfg['control_steps']} more, from scratch "
        f"{cfg['scratch_steps']}. {n} seed(s), mean ± sample std.",
        "**Compute.** Training FLOPs = 6 × forward multiply-adds × tokens, counted two ways: the teacher given "
        "(a released small checkpoint; LEMON's framing: only training after growth counts) and the teacher's "
        "training counted. Compute saved = 1 − FLOPs(run, to first reach the target) / FLOPs(from scratch, to "
        "first reach its own final loss), per seed, checked at each evaluation.", "",
    ]
    for shape in ("wider", "deeper", "both"):
        if f"scratch_{shape}" in summary and "to_target" in summary[f"scratch_{shape}"]:
            lines += compute_table(summary, shape)
    lines += ["## All runs", "", "Students stop at the first evaluation that reaches their target, or once they "
              "have used the from-scratch run's compute to reach it.", "",
              "| run | fwd MACs/token | steps (longest seed) | val loss at the end | GFLOPs at the end (incl. teacher) |",
              "|---|---|---|---|---|"]
    for run, rec in summary.items():
        lines.append(f"| {run} | {rec['macs_per_token']:,} | {rec['steps'][-1]} | "
                     f"{C.pm(*rec['final_loss'])} | {rec['flops'][-1] / 1e9:.3g} |")
    env = result["environment"]
    lines += ["", "Runs: " + "; ".join(f"`{r}` {RUNS[r][4]}" for r in summary) + ".", "",
              f"Wall time {result['wall_seconds']:.0f} s on {env['host']}, {env['device']} "
              f"({env['processes']} process(es) × {env['threads']} thread(s))"
              + (f", plus {result['reused']['wall_seconds']:.0f} s of an earlier run whose runs this one reused "
                 f"(--reuse)." if "reused" in result else "."), ""]
    path.write_text("\n".join(lines))


def plot(path: Path, result: dict):
    """Validation loss against cumulative training FLOPs, one panel per student shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    shapes = [s for s in ("wider", "deeper", "both") if any(RUNS[r][1] == s for r in summary)] or ["wider"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.8), squeeze=False)
    style = {"teacher": dict(color="grey", lw=2.5), "teacher_continued": dict(color="grey", ls=":"),
             "r2r": dict(color="tab:green"), "random": dict(color="tab:red"), "scratch": dict(color="black", ls="--"),
             f"net2net_{DEFAULT_RECIPE}": dict(color="tab:blue")}
    other = dict(color="tab:gray", lw=0.6, alpha=0.5)  # every other recipe and variant: table.md names them
    for ax, shape in zip(axes[0], shapes):
        looks = dict(style, **{recommended()[shape][len(shape) + 1:]: dict(color="magenta", lw=2.5)})
        others = 0
        for run, rec in summary.items():
            kind, run_shape, _, _, _ = RUNS[run]
            if run_shape not in (shape, "teacher"):
                continue
            key = run if kind in ("teacher", "control") else ("scratch" if kind == "scratch" else run[len(shape) + 1:])
            x = np.array(rec["flops"]) / 1e9
            m, sd = np.array(rec["val_loss"]["mean"]), np.array(rec["val_loss"]["std"])
            look = looks.get(key)
            if look is None:
                others += 1
                ax.plot(x, m, label="other recipes and variants" if others == 1 else "_nolegend_", **other)
                continue
            ax.plot(x, m, marker=".", ms=3, label=run, **look)
            ax.fill_between(x, m - sd, m + sd, color=look["color"], alpha=0.15)
        if f"scratch_{shape}" in summary:
            ax.axhline(summary[f"scratch_{shape}"]["val_loss"]["mean"][-1], color="black", lw=0.6, alpha=0.5)
        ax.set_title(f"{shape} ({len(result['per_seed'])} seeds)")
        ax.set_xlabel("cumulative training GFLOPs (students include their teacher's)")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse(argv):
    import argparse

    p = argparse.ArgumentParser(prog="experiment.py --task lm", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="a few minutes on 2 CPU cores (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="the record: more steps and seeds")
    p.add_argument("--seeds", type=int)
    p.add_argument("--seed", type=int, help="train only this seed (of 0 … seeds − 1), e.g. one process per seed; "
                                            "--merge combines their results.json")
    p.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS_JSON",
                   help="write the table of these results.json (one or more seeds each, the same config) "
                        "instead of training; a run's records-seedS.json (written after each of its runs) "
                        "counts as one")
    for key in ("teacher_steps", "student_steps", "scratch_steps", "control_steps", "eval_every", "seq", "batch",
                "val_windows"):
        p.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    p.add_argument("--runs", help="comma-separated subset of: " + ", ".join(r for r in RUNS if r != "teacher"))
    p.add_argument("--out", type=Path, help="output folder (default results/lm-<mode>)")
    p.add_argument("--reuse", type=Path, metavar="RESULTS_JSON",
                   help="take runs recorded in an earlier results.json of the same config and corpus instead of "
                        "training them again (runs from the teacher only if its curve is reproduced exactly); "
                        "an interrupted run's records-seedS.json resumes it")
    p.add_argument("--teacher-width", type=int, help="the teacher's width (default 16); the students follow")
    p.add_argument("--teacher-layers", type=int, help="the teacher's number of blocks (default 2)")
    p.add_argument("--width-factor", type=int, help="wider and both have this many times the teacher's width (default 2)")
    p.add_argument("--teacher-cache", type=Path, metavar="DIR",
                   help="keep each trained teacher (weights, optimizer state, curve) here and load it when the "
                        "same seed, shape and training config come again")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / processes)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is present")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    return args


def load_earlier(path: Path, cfg: dict, corpus: dict) -> dict:
    """{seed: {run: record}} of an earlier results.json, which must have this config and corpus."""
    earlier = json.loads(path.read_text())
    if earlier["config"] != cfg or earlier["shapes"] != SHAPES or earlier["corpus"]["sha256"] != corpus["sha256"]:
        raise SystemExit(f"{path}: recorded with another config, shapes or corpus; --reuse needs the same")
    return {int(seed): runs for seed, runs in earlier["per_seed"].items()}


def merge(paths: list[Path], out_dir: Path) -> dict:
    """One result from several results.json of the same config, shapes and corpus: their seeds
    joined (one process per seed), and a seed found in several of them gets the runs of all, a
    later file's run replacing an earlier one's (runs added to a record afterwards); such files must
    agree on that seed's teacher. The summary and the recommended runs are made anew."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        if any(part[k] != first[k] for k in ("config", "shapes")) or part["corpus"]["sha256"] != first["corpus"]["sha256"]:
            raise SystemExit(f"{path}: recorded with another config, shapes or corpus than {paths[0]}; cannot merge")
    SHAPES.update(first["shapes"])
    per_seed, replaced = {}, []
    for path, part in zip(paths, parts):
        for seed, runs in part["per_seed"].items():
            if seed in per_seed:
                before = per_seed[seed]["teacher"]["val_loss"][-1]
                if abs(runs["teacher"]["val_loss"][-1] - before) > 1e-4:
                    raise SystemExit(f"{path}: seed {seed}'s teacher ends at {runs['teacher']['val_loss'][-1]:.4f}, "
                                     f"not {before:.4f} as in an earlier file; cannot join their runs")
                replaced += [f"seed {seed} {run} from {path}" for run, rec in runs.items()
                             if run != "teacher" and per_seed[seed].get(run, rec) != rec]
                runs = dict(per_seed[seed], **{run: rec for run, rec in runs.items() if run != "teacher"})
            per_seed[seed] = runs
    per_seed = dict(sorted(per_seed.items(), key=lambda kv: int(kv[0])))
    result = dict(first, per_seed=per_seed, summary=summarise(per_seed, first["config"]),
                  recipes={k: v for part in parts for k, v in part["recipes"].items()}, recommended=recommended(),
                  wall_seconds=max(p["wall_seconds"] for p in parts),
                  merged=dict(paths=[str(p) for p in paths], wall_seconds=[p["wall_seconds"] for p in parts],
                              replaced=replaced))
    write_result(out_dir, result)
    return result


def write_json(path: Path, data: dict) -> None:
    """`path` replaced whole, never left half-written (onnxgrow's staged write)."""
    from onnxgrow.files import staged

    path.parent.mkdir(parents=True, exist_ok=True)
    with staged(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def write_result(out_dir: Path, result: dict) -> None:
    write_json(out_dir / "results.json", result)
    write_table(out_dir / "table.md", result)
    plot(out_dir / "curves.png", result)


def record_header(mode: str, cfg: dict, corpus: dict) -> dict:
    """What a results.json says about its set-up (before the per-seed records and the summary)."""
    import platform

    return dict(
        mode=mode, config=cfg,
        corpus=dict(files=corpus["files"], bytes=(len(corpus["train"]), len(corpus["val"])),
                    sha256=corpus["sha256"], python=platform.python_version(), packages=PACKAGES,
                    max_file_bytes=MAX_FILE_BYTES, val_rule=f"crc32(relative path) % {VAL_MODULUS} == 0"),
        shapes=SHAPES, growth=GROWTH, recipes=RECIPES, recommended=recommended(),
        recipe=dict(lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, warmup=WARMUP, init_std=INIT_STD, final_lr=FINAL_LR,
                    train_flops="6 x forward MACs x tokens"))


def main(argv, repo: Path) -> int:
    import os

    import torch

    args = parse(argv)
    out_dir = args.out or repo / "results" / f"lm-{args.mode}"
    if args.merge:
        merge(args.merge, out_dir)
        print(f"wrote {out_dir}/table.md, results.json, curves.png")
        return 0
    cfg = dict(MODES[args.mode])
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    if args.teacher_width or args.teacher_layers or args.width_factor:
        width, layers = args.teacher_width or SHAPES["teacher"]["d"], args.teacher_layers or SHAPES["teacher"]["layers"]
        factor = args.width_factor or 2
        SHAPES.update(shapes_for(width, layers, factor))
        GROWTH.update(growth_for(layers, factor))
    seeds = range(cfg["seeds"]) if args.seed is None else [args.seed]
    if args.seed is not None and not 0 <= args.seed < cfg["seeds"]:
        raise SystemExit(f"--seed {args.seed}: choose one of 0 … {cfg['seeds'] - 1} (--seeds {cfg['seeds']})")
    runs = full_runs() if args.mode == "full" else quick_runs()
    if args.runs:
        runs = [r.strip() for r in args.runs.split(",") if r.strip() and r.strip() != "teacher"]
        unknown = [r for r in runs if r not in RUNS]
        if unknown:
            raise SystemExit(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    dist = C.Dist(use_cuda=not args.cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or max(1, cores // dist.world)
    torch.set_num_threads(threads)
    log = C.logger(dist)
    corpus = load_corpus()
    log(f"lm {args.mode} mode: seed(s) {', '.join(map(str, seeds))}; corpus {len(corpus['train']):,} train / "
        f"{len(corpus['val']):,} validation bytes; runs teacher + {', '.join(runs)}; "
        f"{dist.world} process(es) × {threads} thread(s) on {dist.device}")
    earlier = load_earlier(args.reuse, cfg, corpus) if args.reuse else {}
    header = dict(record_header(args.mode, cfg, corpus), environment=C.environment(dist, threads))
    t0 = time.perf_counter()

    def recorder(seed):
        def on_record(out):  # a record --reuse and --merge take, written after each run
            write_json(out_dir / f"records-seed{seed}.json", dict(header, per_seed={str(seed): out},
                                                                   wall_seconds=round(time.perf_counter() - t0, 1)))
        return on_record

    per_seed = {s: run_seed(s, cfg, runs, dist, log, out_dir / "models" if s == 0 else None, earlier.get(s),
                            args.teacher_cache, recorder(s)) for s in seeds}
    if dist.main:
        result = dict(header, summary=summarise(per_seed, cfg), per_seed=per_seed,
                      wall_seconds=round(time.perf_counter() - t0, 1))
        if args.reuse:
            before = json.loads(args.reuse.read_text())  # its own reused runs' time included
            result["reused"] = dict(path=str(args.reuse), wall_seconds=before["wall_seconds"]
                                    + before.get("reused", {}).get("wall_seconds", 0))
        write_result(out_dir, result)
        log(f"wrote {out_dir}/table.md, results.json, curves.png")
    dist.close()
    return 0
