#!/usr/bin/env python
"""Benchmark: many small edits on a large graph — onnx-ir, onnx-graphsurgeon, onnxgrow deepen.

    python tools/bench_ir.py [--quick] [--nodes 24000] [--inserts 500] [--deepen 20]

Builds (never commits) a chain of blocks MatMul(D×D) → Add(bias) → Relu, D=8, with nodes/3
blocks (24,000 nodes), ir_version 10, opset 17, and inserts an identity MatMul (and a Relu
copy, as onnxgrow's net2net deepen does) after the Relu of `inserts` blocks spread along the
chain, then saves. Each variant runs in a fresh Python process, timed after imports:

  onnx-ir   ir.load → for each insert: new initializer, two nodes, rewire the Relu's users,
            graph.insert_after → ir.save
  gs        onnx.load → gs.import_onnx → for each insert: graph.layer ×2, rewire →
            cleanup().toposort() → gs.export_onnx → onnx.save
  onnxgrow  onnxgrow.graph.load → deepen.deepen_model(after=block's MatMul, net2net) for the
            first `deepen` of the inserts → graph.save. Every call is a whole user-level
            transform (shape inference over the graph, the walk, checks), so its cost is reported
            per call and extrapolated to `inserts` calls.

This is the measurement DESIGN.md quotes for "inserting 500 nodes into a 24k-node graph".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
D = 8


def build(path: Path, blocks: int) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_widen import build_chain

    build_chain(path, D, blocks)


def targets(blocks: int, inserts: int) -> list[int]:
    """Block indices spread evenly along the chain, never the last (its Relu is the graph output)."""
    return [int(i) for i in np.linspace(0, blocks - 2, inserts).round()]


# ----------------------------------------------------------------------------- the variants (child side)


def run_ir(src, dst, blocks, inserts, _):
    import onnx_ir as ir

    t0 = time.perf_counter()
    model = ir.load(src)
    graph = model.graph
    relus = {n.name: n for n in graph if n.op_type == "Relu"}
    eye = np.eye(D, dtype=np.float32)
    for i, k in enumerate(targets(blocks, inserts)):
        t = relus[f"b{k}.relu"].outputs[0]
        users = list(t.uses())
        w = ir.Value(name=f"ins{i}.w", shape=ir.Shape([D, D]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(eye))
        graph.register_initializer(w)
        mm = ir.Node("", "MatMul", [t, w], name=f"ins{i}.fc")
        mm.outputs[0].name = f"ins{i}.m"
        relu = ir.Node("", "Relu", [mm.outputs[0]], name=f"ins{i}.relu")
        relu.outputs[0].name = f"ins{i}.r"
        for use in users:
            use.node.replace_input_with(use.idx, relu.outputs[0])
        graph.insert_after(t.producer(), [mm, relu])
    t1 = time.perf_counter()
    ir.save(model, dst)
    return {"edit": t1 - t0, "save": time.perf_counter() - t1}


def run_gs(src, dst, blocks, inserts, _):
    import onnx
    import onnx_graphsurgeon as gs

    t0 = time.perf_counter()
    graph = gs.import_onnx(onnx.load(src))
    tensors = graph.tensors()
    eye = np.eye(D, dtype=np.float32)
    for i, k in enumerate(targets(blocks, inserts)):
        t = tensors[f"b{k}.r"]
        users = list(t.outputs)
        m = graph.layer(op="MatMul", name=f"ins{i}.fc", inputs=[t, gs.Constant(f"ins{i}.w", eye)],
                        outputs=[gs.Variable(f"ins{i}.m", dtype=np.float32)])[0]
        r = graph.layer(op="Relu", name=f"ins{i}.relu", inputs=[m],
                        outputs=[gs.Variable(f"ins{i}.r", dtype=np.float32)])[0]
        for node in users:
            node.inputs = [r if x is t else x for x in node.inputs]
    graph.cleanup().toposort()
    proto = gs.export_onnx(graph)
    proto.ir_version = 10
    t1 = time.perf_counter()
    onnx.save(proto, dst)
    return {"edit": t1 - t0, "save": time.perf_counter() - t1}


def run_onnxgrow(src, dst, blocks, inserts, calls):
    from onnxgrow import graph as g
    from onnxgrow.deepening import deepen_model

    t0 = time.perf_counter()
    model = g.load(src)
    t1 = time.perf_counter()
    per_call = []
    for k in targets(blocks, inserts)[:calls]:
        t = time.perf_counter()
        deepen_model(model, after=f"b{k}.fc", method="net2net")
        per_call.append(time.perf_counter() - t)
    t2 = time.perf_counter()
    g.save(model, dst)
    return {"load": t1 - t0, "calls": len(per_call), "per_call_median": float(np.median(per_call)),
            "edit": t2 - t0, "save": time.perf_counter() - t2}


VARIANTS = {"onnx-ir": run_ir, "gs": run_gs, "onnxgrow": run_onnxgrow}


def child(variant, src, dst, blocks, inserts, calls):
    sys.path.insert(0, str(ROOT))
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    if variant == "gs":
        import onnx_graphsurgeon  # noqa: F401
    if variant == "onnxgrow":
        import onnxgrow.deepening  # noqa: F401
    result = VARIANTS[variant](src, dst, blocks, inserts, calls)
    out = onnx.load(dst)
    result["nodes_out"] = len(out.graph.node)
    with open("/proc/self/status") as f:
        result["VmHWM"] = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM"))
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,400 nodes, 50 inserts, 5 deepen calls")
    parser.add_argument("--nodes", type=int, default=24000)
    parser.add_argument("--inserts", type=int, default=500)
    parser.add_argument("--deepen", type=int, default=20, help="onnxgrow deepen calls actually run")
    parser.add_argument("--variants", default="onnx-ir,gs,onnxgrow")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        v, src, dst, blocks, inserts, calls = opts.child
        child(v, src, dst, int(blocks), int(inserts), int(calls))
        return
    if opts.quick:
        opts.nodes, opts.inserts, opts.deepen = 2400, 50, 5
    blocks = opts.nodes // 3
    work = Path(tempfile.mkdtemp(prefix="bench_ir-"))
    try:
        src = work / "chain.onnx"
        build(src, blocks)
        print(f"graph: {3 * blocks} nodes, inserting {opts.inserts} × (MatMul + Relu)", flush=True)
        print("| variant | load + edit s | save s | total s | nodes after | peak RSS MiB | note |\n|---|---|---|---|---|---|---|")
        for v in opts.variants.split(","):
            dst = work / f"{v}.onnx"
            cmd = [sys.executable, __file__, "--child", v, str(src), str(dst), str(blocks), str(opts.inserts),
                   str(opts.deepen)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{v} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            note = ""
            if v == "onnxgrow":
                note = (f"{r['calls']} deepen calls, median {r['per_call_median']:.2f} s each → "
                        f"≈{r['per_call_median'] * opts.inserts:.0f} s for {opts.inserts}")
            print(f"| {v} | {r['edit']:.2f} | {r['save']:.2f} | {r['edit'] + r['save']:.2f} | {r['nodes_out']} | "
                  f"{r['VmHWM'] / 2**20:.0f} | {note} |", flush=True)
            os.remove(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
