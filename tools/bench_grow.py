#!/usr/bin/env python
"""Benchmark `onnxgrow grow` (issue 8, item 4) against plain onnx load + save, in one run.

    python tools/bench_grow.py [--quick] [--models nodes,inline,external] [--repeats 3]

Models are the ones tools/bench_widen.py builds (its builders, reused): `nodes` the 24,000-node
chain, `inline` the 101M-parameter FFN stack, `external` the 604M-parameter stack with its
weights in a .data file (2.4 GB; run it only where there is room). Each step runs in a fresh
Python process, timed after its imports; peak RSS is the child's own VmHWM.

  baseline   onnx.load(teacher) + onnx.save of the student (the student written by `grow`,
             loaded untimed first), i.e. what any tool must at least read and write
  widen      window.load → widening.widen_model (one layer, net2net) → write   (nodes only)
  grow100    window.load → growth.grow_model (100 layers of the chain, each → 16) → write
  grow*x2    window.load → growth.grow_model ('*=x2') → write                (inline, external)

as the command line runs them with --no-verify (window.load: a large graph is edited through a
window around the targets when that is possible, see onnxgrow/window.py).

Targets: grow*x2 ≤ 1.5× baseline and peak RSS ≤ 2× the student's size (inline), ≤ 0.5× of it
(external); on the chain one widen ≤ 5× and grow100 ≤ 10× baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import bench_widen as bw  # the model builders


def child(step: str, src: str, dst: str, spec: dict) -> dict:
    import onnx

    from onnxgrow import graph as g
    from onnxgrow import growth, widening, window

    t0 = time.perf_counter()
    if step == "baseline":  # the student is loaded untimed: only its save counts
        student = onnx.load(spec["student"], load_external_data=True)
        t0 = time.perf_counter()
        teacher = onnx.load(src, load_external_data=True)
        del teacher
        bw._onnx_save(student, dst, spec["big"])
        return {"seconds": time.perf_counter() - t0}
    if step == "widen":
        targets, transform = [spec["layer"]], lambda m: widening.widen_model(m, layer=spec["layer"], width=spec["width"])
    else:
        plan = growth.plan_from(widen=spec["widen"])
        targets, transform = plan.targets(), lambda m: growth.grow_model(m, plan)
    model = window.load(src, targets, spill=True)  # as the command line
    model.run(transform)
    with g.staged(dst, source=src) as tmp:
        model.write(tmp)
    return {"seconds": time.perf_counter() - t0}


def run(step: str, src: str, dst: str, spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", step, src, dst, json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def bench(name: str, model: dict, work: Path, repeats: int) -> list[str]:
    src, big = model["path"], model["bytes"] > 2_000_000_000
    student = str(work / f"{name}.grow.onnx")
    if name == "nodes":
        layers = [f"b{k}.fc" for k in range(0, model["nodes"] // 3, max(1, model["nodes"] // 300))][:100]
        steps = {"widen": {"layer": model["layer"], "width": model["width"]},
                 "grow100": {"widen": [f"{layer}=16" for layer in layers]}}
    else:
        steps = {"grow*x2": {"widen": ["*=x2"]}}
    results = {}
    for _ in range(repeats):  # steps alternate with the baseline; the median of each is reported
        for step, spec in steps.items():
            results.setdefault(step, []).append(run(step, src, student, spec))
        results.setdefault("baseline", []).append(run("baseline", src, str(work / "base.onnx"),
                                                      {"student": student, "big": big}))
    results = {step: {"seconds": statistics.median(r["seconds"] for r in runs),
                      "peak_rss": max(r["peak_rss"] for r in runs)} for step, runs in results.items()}
    size = bw.model_bytes(student)
    base = results["baseline"]["seconds"]
    lines = []
    for step, r in results.items():
        lines.append(f"| {name} | {step} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | "
                     f"{r['peak_rss'] / 2**30:.2f} | {r['peak_rss'] / size:.2f} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="nodes,inline")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each step (median seconds, max RSS)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        step, src, dst, spec = args.child
        result = child(step, src, dst, json.loads(spec))
        result["peak_rss"] = bw._status()["VmHWM"]  # not ru_maxrss: Linux carries that across execve
        print("RESULT " + json.dumps(result), flush=True)
        return
    sizes = bw.SIZES["quick" if args.quick else "full"]
    print(bw.machine())
    print(f"median of {args.repeats} run(s) per step")
    print("| model | step | seconds | × baseline | peak RSS GiB | peak RSS ÷ student size |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-grow-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            path = work / f"{name}.onnx"
            if name == "nodes":
                d, blocks, _ = sizes["nodes"]
                model = bw.build_chain(path, d, blocks)
            else:
                d, blocks, external = sizes[name]
                model = bw.build_model(path, d, blocks, external)
            for line in bench(name, model, work, args.repeats):
                print(line, flush=True)


if __name__ == "__main__":
    main()
