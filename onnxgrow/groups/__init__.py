"""Coupled groups: everything that must change when one layer's output channels grow.

Widening layer X from n to q units adds q − n channels to X's output tensor. Those channels flow
forward through channel-wise ops (BatchNormalization, activations, pooling, Transpose, Reshape,
Concat, …) until they reach *consumers* (Conv/Gemm/MatMul) whose input weights must grow; where
they meet another tensor element-wise (a residual Add, a squeeze-excite Mul) that tensor must carry
the same channels, so the walk goes *backward* from it to the *producers* that made it, which grow
with the same mapping. The connected set is the coupled group. It is computed once, here, by one
graph walk; every transform (widening.py) then only decides what numbers the new channels get.

Where the group's channels sit in a tensor is a `Slot`: along `axis`, the tensor's index is
`outer·(total·block) + (offset + i)·block + r` for group channel i < n, so one description covers
a plain channel axis (offset 0, total n, block 1), a slice of a Concat (offset o, total T) and a
Flatten that made each channel a block of H·W features (block H·W). New channels are inserted
right after the group's n channels, at `offset + n`.

A tensor may hold the group's units more than once (`Slot.also_at`): the parts of a split block
joined back by Concat (YOLO's C2f: a half, and the bottleneck sums that added it as their
shortcut). Each copy grows alike, its new units right after it; Split and Slice hand each copy to
the part it lies in (that part's size, and the bounds after it, move), and back from one part the
copy sits at the part's offset, so the layer before grows inside that part only. When the walk
reaches a tensor again with more copies, its Slot becomes the union and the walk goes on from it;
a copy pattern that repeats evenly is written as the repeat (`groups.core.slot_at`). Rules that
follow one copy only (Reshape, Expand, Gather, grouped Conv) refuse several.

Op rules are data: `walk.RULES` maps an op type to the function that, given one input or output known
to carry the group, says where the group sits in every other input and output (or which weight
axis grows). An op without a rule ends the walk with a refusal that names it: an unknown op is
never assumed to be element-wise.

Some ops mix the channels but stay exact under *uniform replication* (every unit copied the same
number of times, as net2net does when the new width is a multiple of the old): the mean over the
channel axis is unchanged, so LayerNormalization over channels and ReduceMean over channels
(RMSNorm, hand-written LayerNorm2d) keep their outputs. They mark the group `uniform_only` and
are listed in `Group.norms`; other widths are reached by padding the stream (onnxgrow/padding.py).

Some channels come in structure the walk discovers on the way: a grouped Conv needs every conv
group to grow alike, a Reshape into attention heads needs whole heads (q, k and v together). The
rule raises `Restructure` with the views worth trying — the layer's channels as `outer` repeats
of `width` units of `block` channels — and `find_group` walks again with each.

Where things live: `core` (Slot, the edits, Group), `walk` (the walk, `RULES`, `find_group`),
`shapes` (static shapes and shape-tensor tracing), and the rules by family — `elementwise`
(element-wise, activations, per-channel norms, pools, reductions), `layout` (Transpose, Reshape,
Concat, Split, Slice, Gather, Expand, Pad, Resize) and `layers` (Conv, ConvTranspose, Gemm, MatMul).
"""

from .core import Group, Restructure, ShapeEdit, Slot, WeightEdit, desc
from .shapes import rank_of, shape_of, static_dim
from .walk import RULES, Walk, find_group

__all__ = ["Group", "Restructure", "ShapeEdit", "Slot", "WeightEdit", "Walk", "RULES", "desc", "static_dim",
           "find_group", "rank_of", "shape_of"]
