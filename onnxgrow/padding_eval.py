"""The abstract evaluation behind padding.PadPlan: what the new channels of every tensor in the
group hold (zero / mean / other, and whether old channels still carry √(d′/d)), in graph order,
and from that how every weight edit fills its new entries. See padding.py for the maths."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import graph as g
from . import padding
from .groups.core import desc
from .padding import (
    HOMOGENEOUS,
    LAYOUT,
    LINEAR_REDUCE,
    MEAN,
    OTHER,
    PASS_THROUGH,
    ZERO,
    ZERO_AT_ZERO,
)

UNKNOWN = (OTHER, False)
CONST = "const"  # computed from constants only (the 1 + w of a Gemma gain)


class Evaluation:
    def __init__(self, plan, graph: ir.Graph):
        self.plan, self.graph = plan, graph
        self.members = plan.group.members
        self.by_node: dict = {}
        for edit in plan.group.edits:
            self.by_node.setdefault(id(edit.node), []).append(edit)

    def run(self) -> None:
        norms = {id(n) for n in self.plan.group.norms}
        for node in self.graph:
            edits = self.by_node.get(id(node), [])
            if id(node) in norms:
                self.norm(node, edits)
            elif any(o in self.members for o in node.outputs if o is not None):
                state = self.node_state(node, edits)
                for out in node.outputs:
                    if out is not None and out in self.members:
                        self.plan.state[out] = state
            for edit in edits:
                if edit.role == "consumer":
                    self.consumer(node, edit)
        missing = [e for e in self.plan.group.edits if id(e) not in self.plan.fill]
        if missing:
            self.plan.refuse(f"the stream's channels reach {desc(missing[0].node)}, which padding "
                             "cannot keep exact.")
        self.tie_embeddings()

    # ------------------------------------------------------------------ helpers
    def inputs(self, node):
        """(member states, param edits, computed non-member inputs) of `node`."""
        states = [self.plan.state.get(v, UNKNOWN) for v in node.inputs if v is not None and v in self.members]
        params = [e for e in self.by_node.get(id(node), []) if e.role == "param"]
        param_idx = {e.index for e in params}
        others = [v for i, v in enumerate(node.inputs) if v is not None and v not in self.members
                  and i not in param_idx]
        return states, params, others

    def set_fill(self, edits, how):
        for edit in edits:
            self.plan.fill[id(edit)] = how

    def from_variance(self, value) -> bool:
        """`value` is computed from a ReduceMean over x² (1/rms or rms): it rescales old channels."""
        return any(node in self.plan.variance for node in g.chain_back(value, 8))

    def centred(self, node, others) -> bool:
        return node.op_type == "Sub" and any(
            v.producer() in self.plan.centring for v in others if v is not None)

    # ------------------------------------------------------------------ rules
    def node_state(self, node, edits):
        producers = [e for e in edits if e.role == "producer"]
        if producers:
            self.set_fill(producers, "pad")
            return (self.plan.mode, False)
        states, params, others = self.inputs(node)
        op = node.op_type
        if op == "LayerNormalization":
            return UNKNOWN  # only reached as a norm (see `norm`)
        if op == "Gather" and params and not states:  # an embedding table: its rows are the stream
            self.set_fill(params, "pad")
            return (self.plan.mode, False)
        if op in ("Add", "Sub", "Sum"):
            return self.additive(node, states, params, others)
        if op in ("Mul", "Div"):
            return self.multiplicative(node, states, params, others)
        if op == "Pow":
            return (ZERO, False) if states == [(ZERO, False)] and not params else UNKNOWN
        if op in PASS_THROUGH and len(states) == 1:
            return states[0]
        if op == "CastLike":  # its second input lends only the type
            return self.plan.state.get(node.inputs[0], UNKNOWN)
        if op in ZERO_AT_ZERO and states and states[0][0] == ZERO:
            return (ZERO, states[0][1]) if op in HOMOGENEOUS or not states[0][1] else UNKNOWN
        if op in LAYOUT or (op in LINEAR_REDUCE) or (op == "MatMul" and len(states) == 1):
            kinds = set(states) | ({(self.plan.mode, False)} if params else set())
            if len(kinds) != 1:
                return UNKNOWN
            state = kinds.pop()
            self.set_fill(params, ZERO if state[0] == ZERO else MEAN)
            return state
        return UNKNOWN

    def additive(self, node, states, params, others):
        if not states and len(params) == 1 and _scalar(others):
            return (CONST, False)  # w + 1: a gain written as (1 + w) (Gemma); filled by its Mul
        kinds = set(states)
        if len(kinds) != 1 or next(iter(kinds))[1]:
            return UNKNOWN
        pad = next(iter(kinds))[0]
        if pad == OTHER:
            return UNKNOWN
        self.set_fill(params, ZERO if pad == ZERO else MEAN)
        if not others:
            return (pad, False)
        if pad == MEAN and self.centred(node, others):
            return (ZERO, False)  # x − mean(x): the new channels μ − μ = 0
        return (MEAN, False) if pad == MEAN else UNKNOWN  # a broadcast shift keeps only the mean

    def multiplicative(self, node, states, params, others):
        if len(states) == 2 and (ZERO, True) in states and (CONST, False) in states and node.op_type == "Mul":
            self.offset_gain(node)
            return (ZERO, False)
        if len(states) == 2:
            zero = [s for s in states if s == (ZERO, False)]
            return (ZERO, False) if zero and node.op_type == "Mul" else UNKNOWN
        if len(states) != 1 or (node.op_type == "Div" and node.inputs[0] not in self.members):
            return UNKNOWN
        pad, scaled = states[0]
        if params:
            if scaled and pad == ZERO and node.op_type == "Mul":
                self.set_fill(params, "gain")  # the norm's gain: old × √(d/d′) compensates
                return (ZERO, False)
            if pad == ZERO and not scaled:
                self.set_fill(params, ZERO)
                return (ZERO, False)
            return UNKNOWN
        if any(self.from_variance(v) for v in others):
            return (ZERO, True) if pad == ZERO and not scaled else UNKNOWN
        return states[0] if pad != OTHER else UNKNOWN  # times a broadcast scalar

    def offset_gain(self, mul):
        """The gain is (c + w): old entries of w become (c + w)·√(d/d′) − c."""
        source = next(v for v in mul.inputs if self.plan.state.get(v) == (CONST, False))
        add = source.producer()
        while add.op_type in PASS_THROUGH:
            add = add.inputs[0].producer()
        (edit,) = [e for e in self.by_node.get(id(add), []) if e.role == "param"]
        (other,) = [v for i, v in enumerate(add.inputs) if i != edit.index]
        self.plan.fill[id(edit)] = "gain"
        self.plan.offsets[id(edit)] = float(g.constant(other).reshape(-1)[0])

    def norm(self, node, edits):
        state = self.plan.state.get(node.inputs[0], UNKNOWN)
        post_norm = ("it normalises a tensor whose new channels would be neither zero nor the mean "
                     "of the old ones — a post-norm stack (a norm's output is added back into the "
                     "residual stream), or a per-channel scale on the stream.")
        if node.op_type == "LayerNormalization":
            if state != (MEAN, False):
                self.plan.refuse(f"{desc(node)}: {post_norm}")
            self.set_fill([e for e in edits if e.index == 1], "gain")
            self.set_fill([e for e in edits if e.index == 2], ZERO)
            self.plan.state[node.outputs[0]] = (ZERO, False)
            return
        if state == (ZERO, False):
            self.plan.variance.add(node)
        elif state == (MEAN, False) and not _squared(node):
            self.plan.centring.add(node)
        else:
            self.plan.refuse(f"{desc(node)}: {post_norm}")

    def consumer(self, node, edit):
        reads = [v for v in node.inputs if v is not None and v in self.members]
        state = self.plan.state.get(reads[0], UNKNOWN) if reads else UNKNOWN
        if state == (ZERO, False):
            self.plan.fill[id(edit)] = "fresh"
        elif state == (ZERO, True):
            self.plan.fill[id(edit)] = "fresh-gain"
        elif state == (MEAN, False):
            self.plan.fill[id(edit)] = ZERO
        else:
            self.plan.refuse(f"{desc(node)} reads stream channels whose padding is not known to be "
                             "zero or the mean.")

    def tie_embeddings(self):
        """An embedding table also read (through a Transpose) by a consumer: one initializer."""
        for edit in self.plan.group.edits:
            if edit.node.op_type != "Gather" or self.plan.fill.get(id(edit)) != "pad":
                continue
            table = edit.node.inputs[0]
            self.tie_by_value(g.constant(table))
            transposes = []
            for use in table.uses():
                reader = use.node
                if reader is edit.node:
                    continue
                if reader.op_type == "Transpose":
                    heads = [e for e in self.plan.group.edits if e.role == "consumer"
                             and any(v is reader.outputs[0] for v in e.node.inputs)]
                    if not heads or any(self.plan.fill[id(e)] not in ("fresh", "tied") for e in heads):
                        break
                    self.set_fill(heads, "tied-skip")
                    transposes.append(reader)
                elif any(e.role == "consumer" and e.node is reader for e in self.plan.group.edits):
                    heads = [e for e in self.plan.group.edits if e.node is reader]
                    self.set_fill(heads, "tied-skip")
                    transposes.append(None)
                else:
                    break
            else:
                if transposes:
                    self.plan.in_place[id(table)] = (table, [t for t in transposes if t is not None])


    def tie_by_value(self, table) -> None:
        """A head weight holding the table's transpose (the dynamo exporter's copy of a tied
        embedding) gets the table's padding, so the two stay equal."""
        for edit in self.plan.group.edits:
            if edit.role != "consumer" or self.plan.fill.get(id(edit)) != "fresh":
                continue
            weight = g.constant(edit.node.inputs[edit.index])
            if weight is not None and weight.shape == table.T.shape and np.array_equal(weight, table.T):
                self.plan.fill[id(edit)] = "tied"


def _scalar(values) -> bool:
    arrays = [g.constant(v) for v in values]
    return len(arrays) == 1 and arrays[0] is not None and arrays[0].size == 1


def _squared(node) -> bool:
    return padding._is_square(node.inputs[0])
