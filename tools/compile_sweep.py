#!/usr/bin/env python
"""Sweep: torch.compile trains every zoo model converted by `onnxgrow.to_torch`.

    python tools/compile_sweep.py [--backend inductor] [--models a,b] [--json out.json]

For each model of tests/zoo.py (legacy and dynamo exports, dynamic batch) and tests/llm_zoo.py
(dynamo exports): convert, compile, train forward + backward + AdamW step over batch sizes
1, 1, 2, 3, 4; then write the trained weights back to ONNX and compare the compiled module in
eval mode with onnxruntime on batch 3. Each model runs in a process of its own, so an abort
inside torch is recorded as one row, not the end of the sweep.

A row: model, ok, graph breaks, graphs compiled for training (≤ 2 expected: batch 1, then one
dynamic graph; eval mode compiles once more),
max relative error to onnxruntime after write-back, seconds, and the error if any.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCHES = (1, 1, 2, 3, 4)
TOL = 1e-4


def models() -> list[str]:
    from tests import llm_zoo, zoo

    names = [f"{arch}.{exporter}" for arch in zoo.ARCHITECTURES for exporter in ("legacy", "dynamo")]
    return names + [f"{family}.llm" for family in llm_zoo.FAMILIES]


def one(name: str, backend: str) -> dict:
    """Run one model in this process (the child side of `main`)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from torch._dynamo.utils import counters

    import onnxgrow as og
    from tests import llm_zoo, zoo

    arch, kind = name.rsplit(".", 1)
    folder = Path(tempfile.mkdtemp())
    if kind == "llm":
        path = llm_zoo.build(arch, "dynamo", path=folder / "m.onnx")
        rng = np.random.default_rng(0)
        make = lambda b: (torch.from_numpy(rng.integers(0, 50, (b, 6))),)  # noqa: E731
    else:
        path = str(zoo.build(arch, kind, path=folder / "m.onnx", dynamic_batch=True))
        _, example = zoo.make(arch)
        make = lambda b: tuple(  # noqa: E731
            torch.randn(b, *x.shape[1:]) if x.is_floating_point() else torch.randint(0, 8, (b, *x.shape[1:]))
            for x in example)
    module = og.to_torch(path).train()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, backend=backend)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    for b in BATCHES:
        out = compiled(*make(b))
        outs = out if isinstance(out, tuple) else (out,)
        sum(o.float().pow(2).mean() for o in outs if o.is_floating_point()).backward()
        opt.step()
        opt.zero_grad()
    breaks, graphs = sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]
    trained = og.load_weights(path, module)
    trained.ir_version = 10
    compiled.eval()
    inputs = make(3)
    session = ort.InferenceSession(trained.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, dict(zip(module.input_names, (x.numpy() for x in inputs))))
    with torch.no_grad():
        got = compiled(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    err = max(float(np.abs(g.numpy() - w).max() / max(np.abs(w).max(), 1e-12)) for g, w in zip(got, want))
    return {"breaks": breaks, "graphs": graphs, "error": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--models", help="comma-separated names (default: all; see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.backend)), flush=True)
        return 0
    names = args.models.split(",") if args.models else models()
    if args.list:
        print("\n".join(names))
        return 0
    rows = []
    for name in names:
        start = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--one", name, "--backend", args.backend],
                           capture_output=True, text=True, cwd=ROOT)
        row = {"model": name, "seconds": round(time.perf_counter() - start, 1)}
        result = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        if p.returncode == 0 and result:
            row.update(json.loads(result[-1][7:]))
            row["ok"] = row["breaks"] == 0 and row["graphs"] <= 2 and row["error"] <= TOL
        else:
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            row.update(ok=False, exit=p.returncode, failure=tail[:300])
        rows.append(row)
        print(json.dumps(row), flush=True)
    passed = sum(r["ok"] for r in rows)
    print(f"{passed}/{len(rows)} models train under torch.compile({args.backend}) with ≤ 2 graphs, no break, "
          f"outputs within {TOL:g} of onnxruntime after write-back")
    if args.json:
        args.json.write_text(json.dumps({"backend": args.backend, "rows": rows}, indent=1))
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
