"""Helpers shared by the growth experiments (tools/experiment.py --task digits|lm).

Compute is counted as the papers count it (Kaplan et al. 2020; bert2BERT, LiGO, LEMON): one
training sample costs a forward and a backward pass, ≈ 3 forward passes, so
    training FLOPs = 6 × forward multiply-adds (MACs) × samples (or tokens) seen.
A grown student's compute includes its teacher's whole training. To compare a student with the
bigger architecture trained from scratch, the target is that from-scratch run's *final* quality;
    compute saved = 1 − FLOPs(grown, incl. teacher, to first reach target) / FLOPs(scratch, to first reach it),
per seed, reported as mean ± sample std over the seeds where both reach the target, with how many
seeds reached it.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np


def train_flops(macs: int, samples: int) -> int:
    """Training FLOPs of `samples` samples (or tokens) through a model of `macs` forward MACs each."""
    return 6 * int(macs) * int(samples)


def first_reach(values: list[float], target: float, lower_is_better: bool = False):
    """Index of the first value that reaches `target` (accuracy: ≥; loss with lower_is_better: ≤), or None."""
    if lower_is_better:
        return next((i for i, v in enumerate(values) if v <= target + 1e-12), None)
    return next((i for i, v in enumerate(values) if v >= target - 1e-12), None)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); (nan, nan) for none."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(vals.mean()), float(vals.std(ddof=1) if vals.size > 1 else 0.0)


def compute_saved(grown_flops: list, scratch_flops: list) -> dict:
    """Per-seed 1 − grown/scratch (None where either did not reach the target) and its summary."""
    per_seed = [None if g is None or s is None or s == 0 else 1.0 - g / s
                for g, s in zip(grown_flops, scratch_flops, strict=True)]
    mean, std = mean_std(per_seed)
    return dict(per_seed=per_seed, mean=mean, std=std,
                reached=sum(g is not None for g in grown_flops), seeds=len(grown_flops))


def pm(mean, std, pct=False, digits=4):
    """'mean ± std' (as percentages with pct)."""
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if pct else f"{mean:.{digits}f} ± {std:.{digits}f}"


def gflops(values):
    """'mean ± std' GFLOPs over the values that are not None, or '—'."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    return f"{m / 1e9:.3g} ± {s / 1e9:.2g}"


def saved_cell(saved: dict) -> str:
    """Compute saved as a table cell: '45 ± 3 % (5/5 reach)'."""
    n_both = sum(v is not None for v in saved["per_seed"])
    head = "—" if n_both == 0 else f"{100 * saved['mean']:.0f} ± {100 * saved['std']:.0f} %"
    return f"{head} ({saved['reached']}/{saved['seeds']} reach)"


def macs_per_sample(model) -> int:
    """Multiply-adds of one forward pass for one sample, counted from an ONNX graph with static
    shapes: Conv (C_out·H_out·W_out · C_in/groups·k_h·k_w), Gemm (K·N) and MatMul, weight or
    activation operands alike ([…, M, K] @ […, K, N]: every leading axis · M·K·N)."""
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = [None, *t.dims]  # a weight has no batch axis: pad one so [1:] is its shape
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            shapes[n.output[0]] = [None, *numpy_helper.to_array(n.attribute[0].t).shape]

    def per_sample(name):
        shape = shapes.get(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise RuntimeError(f"no static shape for {name!r}; cannot count its compute")
        return shape

    total = 0
    for n in g.node:
        if n.op_type == "Conv":
            w = per_sample(n.input[1])  # [-, C_out, C_in/groups, k_h, k_w]
            out = per_sample(n.output[0])
            total += int(np.prod(out[1:])) * int(np.prod(w[2:]))
        elif n.op_type == "Gemm":  # A is [batch, K]: one row per sample
            total += int(np.prod(per_sample(n.input[1])[1:]))
        elif n.op_type == "MatMul":
            a, b = per_sample(n.input[0]), per_sample(n.input[1])
            total += int(np.prod(a[1:])) * b[-1]
    return total


class Dist:
    """One process, or one rank of a torchrun launch (DistributedDataParallel: gloo on CPU, nccl
    on CUDA). `device` is this rank's CUDA device when CUDA is present, else the CPU."""

    def __init__(self, use_cuda: bool = False):
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = use_cuda and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        self.main = self.rank == 0

    def wrap(self, module):
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)  # broadcasts rank 0's parameters

    def sum(self, values):
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def environment(dist: Dist, threads: int) -> dict:
    """Where a run ran: host, core count, versions, processes × threads, device."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
    return dict(host=f"{platform.machine()} ({cores} cores)", python=platform.python_version(),
                torch=torch.__version__, processes=dist.world, threads=threads, device=device)


def logger(dist: Dist):
    """A progress printer to stderr (rank 0 only) stamped with seconds since it was made."""
    t0 = time.perf_counter()

    def log(msg):
        if dist.main:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return log
