#!/usr/bin/env python
"""Write the sample models into models/ and list them in models/README.md.

    python tools/build_models.py [--out models]

The sample set of tests/zoo.py (SAMPLE_SET), each as <arch>.<exporter>[.bnfold].onnx for the legacy
and dynamo exporters, BatchNormalization kept and, where the net has BN, folded. Parameters are
randomised with seed 0, so the files are reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from build_zoo import build_all, quiet  # noqa: E402

HEADER = """# Sample models

Small randomly-initialised networks (not trained) for the README, the tests and experiments,
written by `python tools/build_models.py` from the architectures in `tests/zoo.py`; every per-channel
parameter (biases, BatchNorm statistics and affine, LayerNorm gains, layer-scale gammas) holds
distinct random values (`randomize_`, seed 0), so a channel mapped to the wrong place changes the
outputs. Each file runs in onnxruntime and matches torch to a scaled error below 1e-5; IR version 10.

File names: `<arch>.<exporter>[.bnfold].onnx`. `legacy` is `torch.onnx.export(dynamo=False)` (node
names like `/layer1/conv1/Conv`), `dynamo` is `torch.onnx.export(dynamo=True)` with its default
optimisation (node names like `node_Conv_12`, MatMul weights stored pre-transposed). Without
`.bnfold` BatchNormalization nodes are kept; with it each BN that follows a Conv is folded into it.
The whole zoo (more architectures) is written by `python tools/build_zoo.py OUT_DIR`.

| file | inputs | outputs | ops | size |
|---|---|---|---|---|
"""


def describe(path: Path) -> str:
    import onnx

    m = onnx.load(path)
    init = {i.name for i in m.graph.initializer}

    def sig(values):
        out = []
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            dims = "x".join(str(d.dim_value or d.dim_param) for d in t.shape.dim)
            out.append(f"`{v.name}` {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}[{dims}]")
        return ", ".join(out)

    ops = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    op_list = " ".join(f"{k}×{v}" for k, v in sorted(ops.items()))
    return (f"| `{path.name}` | {sig(m.graph.input)} | {sig(m.graph.output)} | {op_list} | "
            f"{path.stat().st_size / 1e3:.0f} kB |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    a = ap.parse_args(argv)
    quiet()
    from tests import zoo

    written = build_all(a.out, zoo.SAMPLE_SET)
    rows = [describe(p) for p in written]
    total = sum(p.stat().st_size for p in written)
    (a.out / "README.md").write_text(HEADER + "\n".join(rows) + f"\n\n{len(written)} files, {total / 1e6:.2f} MB.\n")
    print(f"{len(written)} models, {total / 1e6:.2f} MB, listed in {a.out / 'README.md'}")


if __name__ == "__main__":
    main()
