"""Random torch networks for property-based tests: random DAGs of conv / BN / activation / pool /
residual add / concat / squeeze-excite / depthwise blocks with random widths, then a flatten or
pooled head into linear layers. `build(recipe)` turns a recipe drawn by `recipes()` into a module.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import strategies as st

ACTS = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU, "leaky": nn.LeakyReLU,
    "none": nn.Identity,
}
BLOCKS = ("conv", "conv", "dwconv", "pool", "add", "concat", "se")


@st.composite
def recipes(draw):
    """A list of block specs; each refers to earlier tensors by index."""
    steps = []
    shapes = [(3, 8)]  # (channels, spatial) of each tensor so far; tensor 0 is the input
    for _ in range(draw(st.integers(2, 7))):
        kind = draw(st.sampled_from(BLOCKS))
        src = draw(st.integers(0, len(shapes) - 1))
        c, s = shapes[src]
        act = draw(st.sampled_from(sorted(ACTS)))
        bn = draw(st.booleans())
        if kind == "conv":
            out, k = draw(st.integers(2, 10)), draw(st.sampled_from([1, 3]))
            steps.append(("conv", src, out, k, bn, act))
            shapes.append((out, s))
        elif kind == "dwconv":
            steps.append(("dwconv", src, c, 3, bn, act))
            shapes.append((c, s))
        elif kind == "pool" and s >= 4:
            steps.append(("pool", src, draw(st.sampled_from(["max", "avg"]))))
            shapes.append((c, s // 2))
        elif kind in ("add", "concat"):
            same = [i for i, (_, s2) in enumerate(shapes) if s2 == s and i != src and i > 0]
            if not same or src == 0:
                continue
            other = draw(st.sampled_from(same))
            steps.append((kind, src, other))
            shapes.append((c if kind == "add" else c + shapes[other][0], s))
        elif kind == "se" and src > 0:
            steps.append(("se", src, draw(st.integers(2, 4))))
            shapes.append((c, s))
    head = draw(st.sampled_from(["gap", "flatten"]))
    hidden = draw(st.integers(3, 12))
    return {"steps": steps, "head": head, "hidden": hidden,
            "head_act": draw(st.sampled_from(["relu", "tanh", "none"]))}


class RandomNet(nn.Module):
    def __init__(self, recipe):
        super().__init__()
        self.recipe = recipe
        self.layers = nn.ModuleList()
        shapes = [(3, 8)]
        for step in recipe["steps"]:
            kind, src = step[0], step[1]
            c, s = shapes[src]
            if kind in ("conv", "dwconv"):
                out, k, bn, act = step[2], step[3], step[4], step[5]
                groups = c if kind == "dwconv" else 1
                self.layers.append(nn.Sequential(
                    nn.Conv2d(c, out, k, padding=k // 2, groups=groups),
                    nn.BatchNorm2d(out) if bn else nn.Identity(), ACTS[act]()))
                shapes.append((out, s))
            elif kind == "pool":
                self.layers.append(nn.MaxPool2d(2) if step[2] == "max" else nn.AvgPool2d(2))
                shapes.append((c, s // 2))
            elif kind == "add":
                other = shapes[step[2]][0]
                self.layers.append(nn.Conv2d(other, c, 1) if other != c else nn.Identity())
                shapes.append((c, s))
            elif kind == "concat":
                self.layers.append(nn.Identity())
                shapes.append((c + shapes[step[2]][0], s))
            elif kind == "se":
                self.layers.append(nn.Sequential(
                    nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, step[2], 1), nn.ReLU(),
                    nn.Conv2d(step[2], c, 1), nn.Sigmoid()))
                shapes.append((c, s))
        c, s = shapes[-1]
        features = c if recipe["head"] == "gap" else c * s * s
        self.fc1 = nn.Linear(features, recipe["hidden"])
        self.act = ACTS[recipe["head_act"]]()
        self.fc2 = nn.Linear(recipe["hidden"], 4)

    def forward(self, x):
        tensors = [x]
        for step, layer in zip(self.recipe["steps"], self.layers):
            kind, src = step[0], tensors[step[1]]
            if kind in ("conv", "dwconv", "pool"):
                tensors.append(layer(src))
            elif kind == "add":
                tensors.append(src + layer(tensors[step[2]]))
            elif kind == "concat":
                tensors.append(torch.cat([src, tensors[step[2]]], dim=1))
            elif kind == "se":
                tensors.append(src * layer(src))
        y = tensors[-1]
        y = y.mean((2, 3)) if self.recipe["head"] == "gap" else torch.flatten(y, 1)
        return self.fc2(self.act(self.fc1(y)))


def example_input():
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
