#!/usr/bin/env python
"""Export the whole model zoo (tests/zoo.py) into a folder, e.g. for the contract checker:

    python tools/build_zoo.py /tmp/zoo [--only resnet_mini,vit_mini] [--dynamic-batch] [--raw]
    python /work/shared/tools/grow_eval.py /tmp/zoo out.json

Each architecture is written as <arch>.<exporter>[.bnfold].onnx for the legacy and dynamo exporters,
with BatchNormalization kept and (where the net has BN) folded into the preceding Conv. --dynamic-batch
adds <arch>.<exporter>.dynbatch.onnx (batch dimension symbolic), --raw adds the unoptimised dynamo
export <arch>.dynamo_raw[.bnfold].onnx. Every file is checked against torch in onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def variants(name, has_bn, dynamic_batch, raw):
    """(file name, exporter, keep_bn, dynamic_batch) for one architecture."""
    from tests import zoo

    exporters = zoo.EXPORTERS + (("dynamo_raw",) if raw else ())
    for exporter in exporters:
        for keep_bn in (True, False) if has_bn else (True,):
            yield zoo.file_name(name, exporter, keep_bn), exporter, keep_bn, False
        if dynamic_batch and exporter != "dynamo_raw":
            yield f"{name}.{exporter}.dynbatch.onnx", exporter, True, True


def build_all(out: Path, names, dynamic_batch=False, raw=False, seed=0, log=print) -> list[Path]:
    from tests import zoo

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        has_bn = zoo.has_bn(zoo.ARCHITECTURES[name]()[0])
        for fname, exporter, keep_bn, dyn in variants(name, has_bn, dynamic_batch, raw):
            t = time.process_time()
            path = zoo.build(name, exporter, keep_bn, out / fname, seed=seed, dynamic_batch=dyn)
            log(f"{fname:44s} {os.path.getsize(path) / 1e3:7.1f} kB  {time.process_time() - t:5.2f} s CPU")
            written.append(Path(path))
    return written


def quiet():
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write the .onnx files into")
    ap.add_argument("--only", default="", help="comma-separated architecture names (default: all)")
    ap.add_argument("--dynamic-batch", action="store_true", help="also write dynamic-batch exports")
    ap.add_argument("--raw", action="store_true", help="also write unoptimised dynamo exports")
    ap.add_argument("--seed", type=int, default=0, help="randomisation seed")
    a = ap.parse_args(argv)
    quiet()
    from tests import zoo

    names = [n for n in a.only.split(",") if n] or list(zoo.ARCHITECTURES)
    unknown = [n for n in names if n not in zoo.ARCHITECTURES]
    if unknown:
        ap.error(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(zoo.ARCHITECTURES)}")
    written = build_all(a.out, names, a.dynamic_batch, a.raw, a.seed)
    print(f"{len(written)} models in {a.out}")


if __name__ == "__main__":
    main()
