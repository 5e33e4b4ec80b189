"""Hugging Face folders: the grown ONNX written back as a folder `from_pretrained` loads.

A folder is config.json, the weights (model.safetensors, shards under
model.safetensors.index.json, or pytorch_model*.bin) and everything else (tokenizer, generation
config), which is copied unchanged. The student's weights are the teacher's keys at the grown
shapes (keys.py), written as safetensors shards of at most `max_shard_size` bytes.

A config describes a uniform model, so its sizes are derived from the grown tensors and checked
against the class itself: the model class is built from the new config on torch's meta device and
every parameter's shape must be the student's. The sizes tried:
- the layer count (`num_hidden_layers`, `n_layer`, …) from the items of the renumbered container,
  and per-layer lists (`layer_types`) with each copy's entry repeated after its original;
- the stream width (`hidden_size`, `n_embd`, `d_model`) from the input embedding;
- head counts from the grown q/k/v rows over the head size, which growth never changes
  (`head_dim` is written explicitly when hidden / heads no longer gives it);
- the FFN width from the tensors that had the teacher's.
No config of the class giving the student's shapes (a plan that widened one layer's FFN): refused,
naming the first shapes that disagree; the state-dict route still works.

Constants the class derives from the config are compensated in the weights:
- Gemma multiplies the embeddings by √hidden_size, which the grown graph keeps at √d while the
  class will use √d′: the embedding is scaled by √(d/d′), and with a tied head the final norm's
  gain (1 + w) by √(d′/d), so x̂·(1 + w′) = √(d′/d)·x̂·(1 + w) undoes the head's √(d/d′);
- padding the stream to a non-multiple d′ leaves every stream norm's ε as ε·d/d′ (padding.py):
  the config's `rms_norm_eps` becomes that. A config with one ε for stream norms and per-head q/k
  norms (Qwen3, OLMo2) then shifts the head norms by a little; the verification decides.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .. import graph as g
from ..errors import GrowError, MismatchError
from . import history
from . import keys as k
from . import statedict as sd

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DEFAULT_MAX_SHARD = "50GB"  # transformers' save_pretrained default
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
HIDDEN_FIELDS = ("hidden_size", "n_embd", "d_model")
HEAD_FIELDS = ("num_attention_heads", "n_head")
KV_FIELDS = ("num_key_value_heads",)
FFN_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")
EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps")
EMBED_SCALED = ("gemma", "gemma2", "gemma3", "gemma3_text")
EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")  # input tables
TESTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2", "phi3", "gpt_neox", "gpt2", "bert")


def weight_paths(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, shards in index order."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise GrowError(f"{str(index)!r} is not a valid shard index (expected a weight_map).") from None
            return [folder / name for name in dict.fromkeys(weight_map.values())]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise GrowError(f"{str(folder)!r} has no weights: expected model.safetensors (or shards with "
                    "model.safetensors.index.json) or pytorch_model.bin.")


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise GrowError(f"{str(folder)!r} is not a Hugging Face model folder: it has no config.json.")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise GrowError(f"{str(path)!r} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise GrowError(f"{str(path)!r} has no model_type: not a transformers config.")
    return config


def model_class(config: dict):
    """The transformers class a folder's user loads (its `architectures`), or a GrowError naming
    the families transformers knows."""
    try:
        import transformers
    except ImportError:
        raise GrowError("Hugging Face folders need transformers: pip install 'onnxgrow[hf]'.") from None
    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config["model_type"] not in CONFIG_MAPPING:
        raise GrowError(f"transformers does not know the family {config['model_type']!r}, so no class can load "
                        f"the folder. Folders are written for the {len(CONFIG_MAPPING)} families it knows "
                        f"(tested: {', '.join(TESTED_FAMILIES)}). Export to a state dict file instead "
                        "(-o OUT.safetensors), which your own class loads.")
    return transformers.AutoModelForCausalLM


# ----------------------------------------------------------------------------- the grown config


def grown_config(config: dict, teacher: sd.Checkpoint, student: dict[str, tuple], renumbered: dict,
                 padded: bool = False) -> dict:
    """The config whose class holds exactly the `student` shapes ({key: shape}); `padded`: the
    stream grew by padding (its norms' ε scaled by d/d′), also at a multiple of its width."""
    new = dict(config)
    layers = renumbered.get("layers")
    if layers is not None:
        for name in LAYER_FIELDS:
            if isinstance(config.get(name), int) and config[name] == len(layers["old"]):
                new[name] = len(layers["new"])
        for name, value in config.items():
            if isinstance(value, list) and len(value) == len(layers["old"]) and name not in ("architectures",):
                new[name] = [value[i] for i in layers["new"]]
    d, d_new = _hidden(config, teacher, student)
    for name in HIDDEN_FIELDS:
        if config.get(name) == d:
            new[name] = d_new
    if d_new != d and (d_new % d or padded):
        for name in EPS_FIELDS:
            if isinstance(config.get(name), float):
                new[name] = config[name] * d / d_new
    heads = next((config[f] for f in HEAD_FIELDS if isinstance(config.get(f), int)), None)
    head_dim = config.get("head_dim") or (d // heads if heads else None)
    choices = {}
    if heads and head_dim:
        for names_, value in ((HEAD_FIELDS, heads), (KV_FIELDS, config.get("num_key_value_heads"))):
            field = next((f for f in names_ if isinstance(config.get(f), int)), None)
            if field and value:
                choices[field] = sorted({s // head_dim for t, s in _dim_pairs(teacher, student)
                                         if t == value * head_dim and s % head_dim == 0} | {value})
    ffn_field = next((f for f in FFN_FIELDS if f in config), None)
    ffn = config.get(ffn_field) if ffn_field else None
    if ffn_field and ffn is None and config["model_type"] == "gpt2":
        ffn = 4 * d
    if ffn_field and ffn:
        choices[ffn_field] = sorted({s for t, s in _dim_pairs(teacher, student) if t == ffn} | {ffn})
    chosen = _consistent(new, choices, student, heads, head_dim)
    if ffn_field and config.get(ffn_field) is None and chosen.get(ffn_field) == 4 * d_new:
        chosen[ffn_field] = None  # GPT-2's n_inner: None means 4 × n_embd, still true
    return chosen


def _stream_padded(model) -> bool:
    """Whether growth padded the residual stream (also at a multiple of its width: pad_streams)
    rather than copied its channels: its mappings in the growth history say so."""
    past = history.read(history.metadata_of(model)) or {"steps": []}
    return any(m.get("padded") for step in past["steps"] for m in step["mappings"])


def _hidden(config, teacher, student) -> tuple[int, int]:
    d = next((config[f] for f in HIDDEN_FIELDS if isinstance(config.get(f), int)), None)
    vocab = config.get("vocab_size")
    for key, shape in teacher.shapes.items():
        if len(shape) == 2 and shape == (vocab, d) and key in student:
            return d, student[key][1]
    raise GrowError("cannot find the input embedding ([vocab_size, hidden_size]) among the checkpoint's "
                    "tensors, so the grown hidden size is unknown.")


def _dim_pairs(teacher, student):
    for key, shape in teacher.shapes.items():
        if key in student and len(student[key]) == len(shape):
            yield from zip(shape, student[key])


def _consistent(new: dict, choices: dict, student: dict, heads, head_dim) -> dict:
    """The first combination of `choices` whose class has exactly the student's shapes."""
    problems = []
    # the most grown sizes first: what a plan that grew every layer alike made (one class to build)
    for combo in itertools.product(*(sorted(v, reverse=True) for v in choices.values())):
        candidate = dict(new, **dict(zip(choices, combo)))
        h = next((candidate[f] for f in HEAD_FIELDS if f in candidate), None)
        hidden = next((candidate[f] for f in HIDDEN_FIELDS if f in candidate), None)
        if head_dim and h and hidden and hidden != h * head_dim and "head_dim" not in candidate:
            candidate["head_dim"] = head_dim
        problem = _shape_problem(candidate, student, head_dim)
        if problem is None:
            return candidate
        problems.append((sum(combo), problem))
    closest = max(problems)[1] if problems else "no sizes to try"  # the most grown sizes: what was meant
    raise GrowError(f"no {new.get('model_type')} config describes the grown model: {closest}. A "
                    "config holds one size per kind for all layers (one intermediate_size, one head "
                    "count), so a plan that widens some layers only cannot be a folder; widen every layer "
                    "alike ('*=x2'), or export a state dict (-o OUT.safetensors) for a class that allows it.")


def _shape_problem(config: dict, student: dict, head_dim: int | None = None) -> str | None:
    """Why the class built from `config` would not hold the `student` shapes with heads of
    `head_dim` (shapes alone cannot tell 4 heads of 16 from 8 heads of 8), or None."""
    try:
        model = _meta_model(config)
    except Exception as exc:  # the class refuses the sizes (e.g. hidden not divisible by heads)
        return f"the class refuses the config ({g.short_message(exc)})"
    sizes = {getattr(m, a) for m in model.modules() for a in ("head_dim", "head_size", "attention_head_size")
             if isinstance(getattr(m, a, None), int)}
    if head_dim and sizes and sizes != {head_dim}:
        return f"its attention heads would be of size {sorted(sizes)}, not {head_dim}"
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    unclaimed = [shape for name, shape in shapes.items() if name not in student]
    for key, shape in student.items():
        if key not in shapes:  # renamed on load (GPT-NeoX's embed_out is lm_head in the class)
            if tuple(shape) in unclaimed:
                unclaimed.remove(tuple(shape))
                continue
            return f"the class has no tensor {key!r} of shape {list(shape)}"
        if shapes[key] != tuple(shape):
            return f"{key} would be {list(shapes[key])} but the grown tensor is {list(shape)}"
    return None


def _meta_model(config: dict):
    """The class `config` names, built on torch's meta device: shapes without memory."""
    import torch

    cls, cfg = model_class(config), _config_object(config)
    with torch.device("meta"):
        return cls.from_config(cfg) if hasattr(cls, "from_config") else cls._from_config(cfg)


def _config_object(config: dict):
    import transformers

    cfg_cls = transformers.AutoConfig.for_model(config["model_type"]).__class__
    return cfg_cls.from_dict(config)


# ----------------------------------------------------------------------------- writing


def parse_size(text) -> int:
    if isinstance(text, int):
        return text
    raw = str(text).strip().upper()
    for unit, factor in (("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 10**9), ("MB", 10**6),
                         ("KB", 10**3), ("B", 1)):
        if raw.endswith(unit):
            try:
                return int(float(raw[: -len(unit)]) * factor)
            except ValueError:
                break
    if raw.isdigit():
        return int(raw)
    raise GrowError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000.")


def export_folder(grown, teacher_dir: Path, out: Path, *, max_shard_size=DEFAULT_MAX_SHARD, verify: bool = True,
                  progress=None) -> dict:
    """The grown ONNX written as a Hugging Face folder like `teacher_dir` (see the module docstring)."""
    say = progress or (lambda message: None)
    config = read_config(teacher_dir)
    model_class(config)
    limit = parse_size(max_shard_size)
    _check_out_folder(out, teacher_dir)
    model = g.load(grown, "grown model")
    checkpoint = sd.Checkpoint(weight_paths(teacher_dir), f"the teacher folder {str(teacher_dir)!r}")
    placed, report = k.place(model, checkpoint.teacher())
    untied = _untie(model, config, placed, checkpoint)
    student = sd.Student(model, checkpoint, placed)
    shapes = {key: shape for key, shape, _ in student(meta_only=True)}
    new_config = grown_config(config, checkpoint, shapes, _layers(placed, config), _stream_padded(model))
    if untied:
        new_config["tie_word_embeddings"] = False
        report["untied"] = untied
        placed += _untied_aliases(new_config, placed, shapes)
    student.transform = _compensation(config, new_config, placed)
    staging = Path(out).parent / f".onnxgrow-{os.getpid()}-{Path(out).name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _copy_others(teacher_dir, staging)
        (staging / CONFIG).write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        _write_shards(student, staging, limit, say)
        if verify:
            report["verify"] = _verify_or_explain(model, staging, config, new_config, checkpoint)
        os.replace(staging, out) if not Path(out).exists() else _replace_empty(staging, Path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.update(keys=len(placed), output=str(out),
                  config={key: new_config[key] for key in new_config if new_config[key] != config.get(key)})
    return report


def _verify_or_explain(model, folder: Path, config: dict, new_config: dict, checkpoint) -> dict:
    dtype = config.get("torch_dtype") or config.get("dtype") or checkpoint.main_dtype()
    try:
        return verify_folder(model, folder, dtype)
    except MismatchError as exc:
        eps = next((f for f in EPS_FIELDS if new_config.get(f) != config.get(f)), None)
        if eps is None or exc.report["max_rel"] > 1e-3:  # ε moves logits a little, not by their size
            raise
        d = next(config[f] for f in HIDDEN_FIELDS if f in config)
        d_new = next(new_config[f] for f in HIDDEN_FIELDS if f in new_config)
        why, fix = ((f"padding to a width that is not a multiple of {d}",
                     f"Grow the stream to a multiple of {d} ({2 * d}, {3 * d}), which keeps every ε,")
                    if d_new % d else ("the stream padded: pad_streams",
                                       "Grow it without --pad-streams (its channels copied keep every ε),"))
        raise SharedEpsilon(
            f"{exc} The grown stream's norms use ε·d/d′ ({why}), but the config has one {eps} for them and "
            f"for norms over each head's q and k, which keep ε: the class cannot express both. {fix} or "
            "export a state dict (-o OUT.safetensors) for a class with two ε.") from None


class SharedEpsilon(GrowError):
    """A padded stream's norms need ε·d/d′ where the config's one ε also serves norms that keep ε."""


def _check_out_folder(out: Path, teacher_dir: Path) -> None:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GrowError(f"the output {str(out)!r} exists and is not an empty folder; onnxgrow never "
                        "writes into an existing checkpoint. Give a new folder.")
    if out.resolve() == teacher_dir.resolve():
        raise GrowError("the output folder is the teacher's; give a new folder.")


def _replace_empty(staging: Path, out: Path) -> None:
    out.rmdir()
    os.replace(staging, out)


def _copy_others(teacher_dir: Path, staging: Path) -> None:
    """Everything but the weights and config.json, unchanged (tokenizer, generation config, …)."""
    for item in teacher_dir.iterdir():
        if item.name == CONFIG or item.name in WEIGHT_FILES or _is_shard(item.name):
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        else:
            shutil.copy2(item, staging / item.name)


def _is_shard(name: str) -> bool:
    return (name.startswith("model-") and name.endswith(".safetensors")) or (
        name.startswith("pytorch_model-") and name.endswith(".bin"))


def _write_shards(student: sd.Student, folder: Path, limit: int, say) -> None:
    shards, current, size = [], [], 0
    for key, shape, dtype in student(meta_only=True):
        nbytes = int(np.prod(shape, dtype=np.int64)) * sd.itemsize(dtype)
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        sd.write_safetensors(folder / "model.safetensors", student)
        return
    weight_map, total = {}, 0
    for i, keys_ in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        chosen = set(keys_)
        total += sd.write_safetensors(folder / name, lambda meta_only=False, c=chosen: student(meta_only, c))
        weight_map.update({key: name for key in keys_})
        say(f"wrote {name}")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _layers(placed: list[k.Placed], config: dict) -> dict:
    """{"layers": {"old": [old index of each teacher layer], "new": [old index of each student
    layer]}} for the container the layer count counts, when copies renumbered it."""
    pairs = {}
    for p in placed:
        a, b = _item(p.teacher_key), _item(p.key)
        if a and b and a[0] == b[0]:
            pairs.setdefault(b[0], {})[b[1]] = a[1]
    count = next((config[f] for f in LAYER_FIELDS if isinstance(config.get(f), int)), None)
    for container, new_to_old in pairs.items():
        old = sorted(set(new_to_old.values()))
        if len(old) == count and len(new_to_old) != count:
            return {"layers": {"old": old, "new": [new_to_old[i] for i in sorted(new_to_old)]}}
    return {}


def _item(key: str):
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]), int(part)
    return None


def _untie(model, config: dict, placed: list[k.Placed], checkpoint: sd.Checkpoint) -> str | None:
    """With tied embeddings the class reads its LM head from the input embedding. Widening the
    stream by copies splits the head's input columns (net2net) where the table's columns are
    copied, so the student's head is a tensor of its own: it is written as the output
    embedding's key, and the config unties it (exact; the folder has one more tensor). Returns
    the head's key, or None while the head still is the table."""
    if not _tied(config):
        return None
    head = _head_initializer(model)
    embed = next((p for p in placed if p.initializer is not None and p.key.endswith(EMBEDDINGS)), None)
    if head is None or embed is None or head[0] == embed.initializer:
        return None
    table = sd.layout(model.graph.initializers[embed.initializer].const_value.numpy(), embed.layout,
                      checkpoint.shapes[embed.teacher_key])
    weight = model.graph.initializers[head[0]].const_value.numpy()
    weight = weight.T if head[1] == "T" else weight
    if weight.shape == table.shape and np.array_equal(weight, table):
        return None
    key = _output_embedding_key(config)
    placed.append(k.Placed(key, embed.teacher_key, head[0], head[1]))
    return key


def _untied_aliases(config: dict, placed: list[k.Placed], shapes: dict) -> list[k.Placed]:
    """Tensors that the tied class aliased and the untied one reads under a key of its own
    (BERT's MLM decoder bias is `cls.predictions.bias`): the same tensor under that key, as the
    class's `_tied_weights_keys` ({target: source}) says."""
    tied = getattr(model_class(config), "_tied_weights_keys", None)
    if not isinstance(tied, dict):
        return []
    wanted = set(_meta_model(config).state_dict())
    by_key = {p.key: p for p in placed}
    return [k.Placed(target, by_key[source].teacher_key, by_key[source].initializer, by_key[source].layout)
            for target, source in tied.items()
            if target in wanted and target not in shapes and source in by_key]


def _tied(config: dict) -> bool:
    return bool(config.get("tie_word_embeddings", _config_object(config).tie_word_embeddings))


def _head_initializer(model) -> tuple[str, str] | None:
    """(name, layout against torch's [out, in]) of the weight of the layer computing the first
    output: a MatMul holds [in, out] ("T"), a Gemm with transB [out, in]."""
    node = next((n for n in g.chain_back(model.graph.outputs[0], 6) if g.is_weight_layer(n)), None)
    if node is None:
        return None
    name, transposed = history.behind_wrappers(node.inputs[1])
    if name not in model.graph.initializers:
        return None
    flipped = (node.op_type == "MatMul" or not g.attr(node, "transB", 0)) != transposed
    return name, "T" if flipped else "same"


def _output_embedding_key(config: dict) -> str:
    lm = _meta_model(config)
    head = lm.get_output_embeddings()
    return next(name for name, module in lm.named_modules() if module is head) + ".weight"


def _compensation(config: dict, new_config: dict, placed: list[k.Placed]):
    """Gemma's √hidden_size embedding scale (see the module docstring), or None."""
    if config["model_type"] not in EMBED_SCALED:
        return None
    d = next(config[f] for f in HIDDEN_FIELDS if f in config)
    d_new = next(new_config[f] for f in HIDDEN_FIELDS if f in new_config)
    if d == d_new:
        return None
    tied = new_config.get("tie_word_embeddings", _tied(config))

    def transform(key: str, array: np.ndarray) -> np.ndarray:
        if key.endswith("embed_tokens.weight"):
            return (array.astype(np.float64) * math.sqrt(d / d_new)).astype(array.dtype)
        if tied and key in ("model.norm.weight", "model.language_model.norm.weight"):
            return ((1.0 + array.astype(np.float64)) * math.sqrt(d_new / d) - 1.0).astype(array.dtype)
        return array

    return transform


# ----------------------------------------------------------------------------- verification


def logits(lm, input_ids):
    """The logits of a transformers LM on `input_ids`, without a key/value cache."""
    import inspect

    no_cache = {"use_cache": False} if "use_cache" in inspect.signature(lm.forward).parameters else {}
    return lm(input_ids=input_ids, **no_cache).logits


def verify_folder(model, folder: Path, dtype: str | None, samples: int = 2, seed: int = 0) -> dict:
    """Load `folder` as its users will (transformers, in float32) and compare its logits with
    onnxruntime's on the grown ONNX `model`, on random token ids (the verify rule)."""
    import torch

    from ..verification import DEFAULT_ATOL, DEFAULT_RTOL, compare, run_model

    config = read_config(folder)
    inputs = [v.name for v in model.graph.inputs]
    if "input_ids" not in inputs or any(n not in ("input_ids", "attention_mask", "position_ids") for n in inputs):
        raise GrowError(f"cannot verify the folder: the ONNX's inputs {inputs} are not token ids (and an "
                        "attention mask). Pass --no-verify to write it unchecked.")
    rng = np.random.default_rng(seed)
    vocab = config.get("vocab_size", 2)
    feeds = []
    for batch, seq in ((1, 5), (2, 7))[:samples]:
        ids = rng.integers(0, vocab, (batch, seq)).astype(np.int64)
        feed = {"input_ids": ids}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones_like(ids)
        if "position_ids" in inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(seq), ids.shape).copy()
        feeds.append(feed)
    got, provider = run_model(model, feeds)  # first, and let go: never both models in memory at once
    lm = model_class(config).from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        want = [logits(lm, torch.from_numpy(feed["input_ids"])).float().numpy() for feed in feeds]
    del lm
    rtol = sd.DTYPE_RTOL.get(str(dtype).removeprefix("torch."), None) or DEFAULT_RTOL
    result = compare([o[0] for o in got], want, DEFAULT_ATOL, rtol)
    result.update(provider=provider, dtype=str(dtype), rtol=rtol)
    if not result["passed"]:
        raise MismatchError(f"the written folder, loaded with transformers, does not give the grown ONNX's "
                            f"logits: max error {result['max_abs']:.3g} ({result['max_rel']:.3g} of the largest "
                            "logit); nothing was written.", report=result)
    return result
