"""Names users know: the PyTorch module path that owns a layer, recovered from what the exporters
record, and the lookup every command uses to turn a user's name into a node.

What the exporters leave behind, most reliable first:
- the dynamo exporter stores `pkg.torch.onnx.name_scopes` in each node's metadata, e.g.
  `['', 'layer1', 'layer1.0', 'layer1.0.conv2', 'conv2d']`: the last entry names the op call, the
  one before it the module that made the call (`layer1.0.conv2`);
- the legacy (TorchScript) exporter scopes node names, `/layer1/layer1.0/conv2/Conv`: one segment
  per module, a child of a ModuleList or Sequential written `parent.index`, the op last;
- parameter initializers often keep the state-dict key, `conv1.weight` (possibly behind a
  Transpose or Cast), but BatchNorm folding and the legacy exporter's Linear layers rename them
  (`onnx::Conv_123`), which is why scopes come first.
Graphs with none of these (other frameworks, hand-built) keep working with node names.

A layer is named, in this order, by: its exact ONNX node name; its exact module path; a dotted
suffix of module paths that is unique (`model.layers.0.mlp.up_proj` finds
`m.model.layers.0.mlp.up_proj`; whole components only).
"""

from __future__ import annotations

import ast
import difflib
import fnmatch

import onnx_ir as ir

from . import graph as g
from . import ops
from .errors import GrowError

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
REWRITE_RULE = "pkg.onnxscript.rewriter.rule_name"
GLOB_CHARS = "*?["


def scope_of(node: ir.Node) -> str | None:
    """The module path of the module that computed `node` (any node), or None if unrecorded."""
    scopes = node.metadata_props.get(NAME_SCOPES)
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = None
        if isinstance(parts, list) and len(parts) >= 2 and parts[-2]:
            return str(parts[-2])
        if isinstance(parts, list):
            return None
    return legacy_scope(node.name)


def legacy_scope(name: str | None) -> str | None:
    """`/layer1/layer1.0/conv2/Conv` → `layer1.0.conv2` (None for names without scopes)."""
    if not name or not name.startswith("/"):
        return None
    components: list[str] = []
    previous = None
    for segment in (s for s in name.split("/")[1:-1] if s):
        if previous is not None and segment.startswith(previous + "."):
            components[-1] = segment  # a container's child, written parent.index
        else:
            components.append(segment)
        previous = segment
    return ".".join(components) or None


def module_path(node: ir.Node) -> str | None:
    """The module path of the module owning the weight of layer `node`, or None."""
    paths = aliases(node)
    return paths[0] if paths else None


def aliases(node: ir.Node) -> list[str]:
    """Every module path recorded for layer `node`, the one to show first.

    The scope names the module that ran the op; the weight's state-dict key names the module that
    owns the weight. They differ where a rewrite fused one layer into another (the dynamo
    exporter's optimiser folds BatchNorm into the Conv and gives it the BatchNorm's scope: then
    the weight's name is the truth) and where a weight is shared (tied embeddings: the LM head
    runs under `lm_head` and reads `embed_tokens.weight`): both names find the layer.
    """
    scope = scope_of(node)
    owner = _parameter_owner(node.inputs[1] if len(node.inputs) > 1 else None)
    fused = "Fuse" in node.metadata_props.get(REWRITE_RULE, "")
    ordered = [owner, scope] if fused else [scope, owner]
    return list(dict.fromkeys(p for p in ordered if p))


def _parameter_owner(value: ir.Value | None, depth: int = 0) -> str | None:
    """`conv1.weight` → `conv1`, looking through ops that only re-lay out the weight."""
    if value is None or depth > 4:
        return None
    if value.is_initializer() and value.name and value.name.endswith(".weight"):
        return value.name[: -len(".weight")] or None
    node = value.producer()
    if node is not None and node.op_type in ops.WEIGHT_WRAPPERS and node.inputs:
        return _parameter_owner(node.inputs[0], depth + 1)
    return None


def layer_names(graph: ir.Graph) -> list[tuple[ir.Node, list[str]]]:
    """Every weight layer of `graph` with its module paths (see `aliases`), in graph order."""
    return [(node, aliases(node)) for node in graph if g.is_weight_layer(node)]


def _index(graph: ir.Graph) -> tuple[dict, list]:
    """{node name: nodes} and `layer_names(graph)`, computed once while the graph is unedited
    (a grow plan resolves many targets)."""
    key = (g.edit_count(graph), graph.num_nodes())
    cached = graph.meta.get("onnxgrow.layer_index")
    if cached is None or cached[0] != key:
        by_name: dict[str, list] = {}
        for node in graph:
            by_name.setdefault(node.name, []).append(node)
        cached = (key, by_name, layer_names(graph))
        graph.meta["onnxgrow.layer_index"] = cached
    return cached[1], cached[2]


def resolve(graph: ir.Graph, text: str, *, what: str = "layer") -> ir.Node:
    """The node `text` names: a node name, a module path, or a unique dotted suffix of one."""
    by_name, layers = _index(graph)
    named = by_name.get(text, [])
    if len(named) > 1:
        raise GrowError(
            f"{len(named)} nodes are named {text!r} ({', '.join(n.op_type for n in named[:5])}), so the "
            "name does not say which one to change. Give the nodes unique names (re-export the model, "
            "or rename them with onnx), or name the layer by its module path.")
    if named:
        return named[0]
    exact = [(n, paths) for n, paths in layers if text in paths]
    matches = exact or [(n, paths) for n, paths in layers if any(p.endswith("." + text) for p in paths)]
    if len(matches) == 1:
        return matches[0][0]
    if len(matches) > 1:
        listed = "; ".join(f"{n.name!r} ({', '.join(paths)})" for n, paths in matches[:10])
        raise GrowError(
            f"{text!r} names {len(matches)} {what}s: {listed}. Name one of them by its node name or "
            "its full module path.")
    raise GrowError(_unknown(graph, text, layers, what))


def _unknown(graph: ir.Graph, text: str, layers, what: str) -> str:
    names = [n.name for n in graph if n.name] + [p for _, paths in layers for p in paths]
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
    if not close:
        close = [paths[0] if paths else n.name for n, paths in layers][:5]
    hint = f" Closest names: {', '.join(repr(c) for c in close)}." if close else ""
    return (f"no {what} named {text!r} in the model (neither a node name nor a PyTorch module "
            f"path).{hint} `onnxgrow inspect MODEL` lists every layer with its module path.")


def select(graph: ir.Graph, pattern: str) -> list[ir.Node]:
    """The weight layers a glob (`layer3.*`, `*`) matches by node name or module path, in graph
    order; a pattern without glob characters names exactly one layer (see `resolve`)."""
    if not any(c in pattern for c in GLOB_CHARS):
        return [resolve(graph, pattern)]
    _, layers = _index(graph)
    chosen = [node for node, paths in layers
              if fnmatch.fnmatchcase(node.name or "", pattern)
              or any(fnmatch.fnmatchcase(p, pattern) for p in paths)]
    if not chosen:  # like a plain name, a glob may leave out a wrapper's leading components
        chosen = [node for node, paths in layers
                  if any(fnmatch.fnmatchcase(s, pattern) for p in paths for s in _suffixes(p))]
    if not chosen:
        raise GrowError(f"{pattern!r} matches no layer (by node name or module path). "
                        "`onnxgrow inspect MODEL` lists them.")
    return chosen


def _suffixes(path: str) -> list[str]:
    """`m.model.layers.0` → [`model.layers.0`, `layers.0`, `0`]."""
    parts = path.split(".")
    return [".".join(parts[i:]) for i in range(1, len(parts))]
