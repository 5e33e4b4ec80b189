#!/usr/bin/env python
"""Benchmark: widen one layer of a large model, against a plain onnx load + save of it.

    python tools/bench_widen.py [--quick] [--repeats 3] [--no-graphsurgeon] [--profile]

Builds (never commits, deletes afterwards) three float32 models, ir_version 10, opset 17. Two
are transformer-style FFN stacks — residual stream D, hidden 4D, blocks LayerNorm → MatMul → Add
→ Relu → MatMul → Add → residual Add — widened at the middle block's fc1 (hidden doubled):

  inline    D=1024, 12 blocks: 101M parameters, 403 MB in one .onnx file
  external  D=2048, 18 blocks: 604M parameters, 2.4 GB in a .data file beside the .onnx
  nodes     a chain of 8,000 blocks MatMul(8×8) → Add → Relu: 24,000 nodes, 0.6M parameters,
            3.6 MB — the per-node costs, which the weight-heavy models (84 and 126 nodes) hide

(--quick: 12.6M inline, 38M external, 2,400 nodes; under 2 GB onnxgrow and the baseline save
inline.)

Each step runs in a fresh Python process, timed around the work only (imports excluded), with
the parent sampling the child's /proc status every 20 ms:

  onnx      onnx.load (external data loaded) + onnx.save (external data above 2 GB) — the baseline
  onnxgrow  onnxgrow.window.load → widening.widen_model(net2net, the middle block's fc1 doubled) →
            write; the Python pieces the CLI calls, without its onnxruntime check (what `onnxgrow
            widen --no-verify` does: a window of the 24,000-node chain, the whole graph of the others)
  onnx-ir   the same net2net edit by hand on bare onnx-ir: ir.load → new fc1/bias/fc2 → ir.save
  gs        the same edit by hand in onnx-graphsurgeon: onnx.load → gs.import_onnx → edit →
            gs.export_onnx → onnx.save (once per model: it is slow)

Reported: time as a ratio to the baseline's median, peak RSS (VmHWM, which counts memory-mapped
file pages that were touched) and peak anonymous RSS (sampled RssAnon: memory that is really
allocated) as ratios to the model's size on disk. Targets (issue 3): time ≤ 1.5×, memory ≤ 2.5×.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
GIB = 1 << 30
TIME_TARGET, MEMORY_TARGET = 1.5, 2.5
SIZES = {  # name: (D, blocks, external data); "nodes" is the chain of build_chain
    "full": {"inline": (1024, 12, False), "external": (2048, 18, True), "nodes": (8, 8000, False)},
    "quick": {"inline": (512, 6, False), "external": (768, 8, True), "nodes": (8, 800, False)},
}


# ----------------------------------------------------------------------------- the models


def build_model(path: Path, d: int, blocks: int, external: bool, seed: int = 0) -> dict:
    """Write the FFN stack to `path` (weights in `path`.data when `external`); describe it."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    h = 4 * d
    nodes, inits = [], []
    data = open(str(path) + ".data", "wb") if external else None
    offset = 0

    def weight(name, shape, scale):
        nonlocal offset
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(scale)
        if data is None:
            inits.append(onnx.numpy_helper.from_array(array, name))
            return
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", path.name + ".data"), ("offset", offset), ("length", array.nbytes)):
            t.external_data.add(key=key, value=str(value))
        array.tofile(data)
        offset += array.nbytes
        inits.append(t)

    x = "x"
    for k in range(blocks):
        p = f"blk{k}"
        weight(f"{p}.ln.g", (d,), 1.0)
        weight(f"{p}.ln.b", (d,), 0.1)
        weight(f"{p}.fc1.w", (d, h), d ** -0.5)
        weight(f"{p}.fc1.b", (h,), 0.1)
        weight(f"{p}.fc2.w", (h, d), h ** -0.5)
        weight(f"{p}.fc2.b", (d,), 0.1)
        nodes += [
            helper.make_node("LayerNormalization", [x, f"{p}.ln.g", f"{p}.ln.b"], [f"{p}.n"],
                             name=f"{p}.ln", axis=-1),
            helper.make_node("MatMul", [f"{p}.n", f"{p}.fc1.w"], [f"{p}.a"], name=f"{p}.fc1"),
            helper.make_node("Add", [f"{p}.a", f"{p}.fc1.b"], [f"{p}.ab"], name=f"{p}.fc1.add"),
            helper.make_node("Relu", [f"{p}.ab"], [f"{p}.r"], name=f"{p}.relu"),
            helper.make_node("MatMul", [f"{p}.r", f"{p}.fc2.w"], [f"{p}.m"], name=f"{p}.fc2"),
            helper.make_node("Add", [f"{p}.m", f"{p}.fc2.b"], [f"{p}.mb"], name=f"{p}.fc2.add"),
            helper.make_node("Add", [x, f"{p}.mb"], [f"{p}.out"], name=f"{p}.res"),
        ]
        x = f"{p}.out"
    graph = helper.make_graph(
        nodes, "ffn_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, d])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 16, d])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    if data is not None:
        data.close()
    onnx.save(model, path)
    return {"path": str(path), "external": external, "params": blocks * (8 * d * d + 7 * d),
            "bytes": model_bytes(path), "layer": f"blk{blocks // 2}.fc1", "width": 2 * h,
            "growth": 8 * d * d + 4 * d}


def build_chain(path: Path, d: int, blocks: int) -> dict:
    """A long chain of small blocks MatMul(d×d) → Add(bias) → Relu: many nodes, few weights."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(blocks):
        p = f"b{k}"
        inits += [onnx.numpy_helper.from_array(rng.standard_normal((d, d), dtype=np.float32) * 0.3, f"{p}.w"),
                  onnx.numpy_helper.from_array(rng.standard_normal(d, dtype=np.float32) * 0.1, f"{p}.b")]
        nodes += [helper.make_node("MatMul", [x, f"{p}.w"], [f"{p}.m"], name=f"{p}.fc"),
                  helper.make_node("Add", [f"{p}.m", f"{p}.b"], [f"{p}.a"], name=f"{p}.add"),
                  helper.make_node("Relu", [f"{p}.a"], [f"{p}.r"], name=f"{p}.relu")]
        x = f"{p}.r"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", d])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return {"path": str(path), "external": False, "params": blocks * (d * d + d), "bytes": model_bytes(path),
            "layer": f"b{blocks // 2}.fc", "width": 2 * d, "growth": 2 * d * d + d, "nodes": 3 * blocks}


def model_bytes(path) -> int:
    path = Path(path)
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# ----------------------------------------------------------------------------- the steps (child side)


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _net2net_arrays(w1, b1, w2, seed=0):
    """Textbook net2net doubling of the hidden units between fc1 and fc2 (each unit copied once)."""
    src = np.random.default_rng(seed).permutation(w1.shape[1])
    return (np.concatenate([w1, w1[:, src]], axis=1), np.concatenate([b1, b1[src]]),
            np.concatenate([w2 * 0.5, w2[src] * 0.5], axis=0).astype(w2.dtype))


def _onnx_save(model, dst: str, big: bool) -> None:
    """The baseline's save: one file, or one external data file beside it."""
    import onnx

    if big:
        onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=Path(dst).name + ".data", size_threshold=1024)
    else:
        onnx.save(model, dst)


def step_onnx(src: str, dst: str, args) -> dict:
    import onnx

    t0 = time.perf_counter()
    model = onnx.load(src, load_external_data=True)
    t1 = time.perf_counter()
    _onnx_save(model, dst, args["big"])
    return {"phases": {"load": t1 - t0, "save": time.perf_counter() - t1}}


def step_onnxgrow(src: str, dst: str, args) -> dict:
    sys.path.insert(0, str(ROOT))
    from onnxgrow import graph as g
    from onnxgrow import widening, window

    phases, memory = {}, {}

    def timed(name, fn):  # wrap a graph helper widen_model calls, to split its time
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
                memory[name] = _status()
        return wrapper

    for name in ("infer_shapes", "remove_unused", "parameter_count"):
        setattr(g, name, timed(name, getattr(g, name)))
    t0 = time.perf_counter()
    model = window.load(src, [args["layer"]], spill=True)  # as the command line
    t1 = time.perf_counter()
    memory["load"] = _status()
    summary = model.run(lambda m: widening.widen_model(m, layer=args["layer"], width=args["width"],
                                                       method="net2net"))
    t2 = time.perf_counter()
    memory["widen"] = _status()
    with g.staged(dst, source=src) as tmp:
        model.write(tmp)
    t3 = time.perf_counter()
    phases = {"load": t1 - t0, "widen (all)": t2 - t1, **phases, "save": t3 - t2}
    return {"phases": phases, "parameters": summary["parameters"], "memory_at": memory}


def step_ir(src: str, dst: str, args) -> dict:
    import onnx_ir as ir

    t0 = time.perf_counter()
    model = ir.load(src)
    t1 = time.perf_counter()
    graph = model.graph
    fc1 = next(n for n in graph if n.name == args["layer"])
    add1 = next(iter(fc1.outputs[0].uses())).node
    fc2 = next(iter(next(iter(add1.outputs[0].uses())).node.outputs[0].uses())).node
    w1, b1, w2 = (v.const_value.numpy() for v in (fc1.inputs[1], add1.inputs[1], fc2.inputs[1]))
    for node, array in zip((fc1, add1, fc2), _net2net_arrays(w1, b1, w2)):
        old = node.inputs[1]
        value = ir.Value(name=old.name + ".wide", shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(array))
        graph.register_initializer(value)
        node.replace_input_with(1, value)
        del graph.initializers[old.name]
    t2 = time.perf_counter()
    if args["big"]:
        ir.save(model, dst, external_data=Path(dst).name + ".data")
    else:
        ir.save(model, dst)
    return {"phases": {"load": t1 - t0, "edit": t2 - t1, "save": time.perf_counter() - t2}}


def step_gs(src: str, dst: str, args) -> dict:
    import onnx
    import onnx_graphsurgeon as gs

    t0 = time.perf_counter()
    graph = gs.import_onnx(onnx.load(src, load_external_data=True))
    t1 = time.perf_counter()
    fc1 = next(n for n in graph.nodes if n.name == args["layer"])
    add1 = fc1.outputs[0].outputs[0]
    relu = add1.outputs[0].outputs[0]
    fc2 = relu.outputs[0].outputs[0]
    w1, b1, w2 = (n.inputs[1].values for n in (fc1, add1, fc2))
    for node, array in zip((fc1, add1, fc2), _net2net_arrays(w1, b1, w2)):
        node.inputs[1] = gs.Constant(node.inputs[1].name + ".wide", array)
    graph.cleanup().toposort()
    proto = gs.export_onnx(graph)
    t2 = time.perf_counter()
    _onnx_save(proto, dst, args["big"])
    return {"phases": {"load": t1 - t0, "edit": t2 - t1, "save": time.perf_counter() - t2}}


STEPS = {"onnx": step_onnx, "onnxgrow": step_onnxgrow, "onnx-ir": step_ir, "gs": step_gs}


def child(step: str, src: str, dst: str, args: dict, profile: str | None) -> None:
    fn = STEPS[step]
    if step == "onnxgrow":  # import outside the timed region, as the other steps do
        sys.path.insert(0, str(ROOT))
        import onnxgrow.graph  # noqa: F401
        import onnxgrow.widening  # noqa: F401
    else:
        import onnx  # noqa: F401
        import onnx_ir  # noqa: F401
        if step == "gs":
            import onnx_graphsurgeon  # noqa: F401
    before = _status()
    t0 = time.perf_counter()
    if profile:
        import cProfile
        prof = cProfile.Profile()
        result = prof.runcall(fn, src, dst, args)
        prof.dump_stats(profile)
    else:
        result = fn(src, dst, args)
    result["seconds"] = time.perf_counter() - t0
    result["rss_after_imports"] = before["VmRSS"]
    result.update(_status())
    result["out_bytes"] = model_bytes(dst)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- the steps (parent side)


def run_step(step: str, model: dict, work: Path, profile: str | None = None) -> dict:
    out_dir = Path(tempfile.mkdtemp(prefix=f"out-{step}-", dir=work))
    dst = out_dir / "out.onnx"
    args = {"layer": model["layer"], "width": model["width"], "big": model["bytes"] > 2_000_000_000}
    cmd = [sys.executable, __file__, "--child", step, model["path"], str(dst), json.dumps(args)]
    if profile:
        cmd += ["--profile-to", profile]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_anon = peak_file = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
                    elif line.startswith("RssFile:"):
                        peak_file = max(peak_file, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    shutil.rmtree(out_dir, ignore_errors=True)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"step {step} on {model['path']} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["peak_anon"] = max(peak_anon, result["RssAnon"])
    result["peak_file"] = max(peak_file, result["RssFile"])
    return result


def warm_cache(path: str) -> None:
    """Read the model once so every step starts with it in the page cache (none pays a cold read)."""
    for p in (path, path + ".data"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    import onnx
    import onnx_ir
    versions = f"Python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, " \
               f"onnx-ir {onnx_ir.__version__}"
    try:
        import onnx_graphsurgeon
        versions += f", onnx-graphsurgeon {onnx_graphsurgeon.__version__}"
    except ImportError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, load average "
            f"{os.getloadavg()[0]:.1f} at start; {versions}")


def summarise(name: str, model: dict, results: dict) -> list[str]:
    base = statistics.median(r["seconds"] for r in results["onnx"])
    size = model["bytes"]
    rows = []
    for step, runs in results.items():
        secs = [r["seconds"] for r in runs]
        hwm = [r["VmHWM"] for r in runs]
        anon = [r["peak_anon"] for r in runs]
        t_min, t_med = min(secs), statistics.median(secs)
        verdict = ""
        extra = [r["VmHWM"] - r["rss_after_imports"] for r in runs]
        if step == "onnxgrow":
            ok_t = t_med / base <= TIME_TARGET
            verdict = f" time {'ok' if ok_t else 'MISSED'}"
            if size >= 100e6:  # below that the interpreter and its imports dominate the peak
                ok_m = statistics.median(hwm) / size <= MEMORY_TARGET
                verdict += f", memory {'ok' if ok_m else 'MISSED'}"
        rows.append(
            f"| {name} | {step} | {len(runs)} | {t_min:.2f} / {t_med:.2f} | "
            f"{t_min / base:.2f} / {t_med / base:.2f} | "
            f"{min(hwm) / GIB:.2f} / {statistics.median(hwm) / GIB:.2f} | "
            f"{statistics.median(hwm) / size:.2f} | {statistics.median(anon) / GIB:.2f} | "
            f"{statistics.median(anon) / size:.2f} | {statistics.median(extra) / size:.2f} |{verdict}")
    return rows


TABLE_HEAD = ("| model | step | runs | seconds min / median | × baseline min / median | "
              "peak RSS GiB min / median | peak RSS ÷ size | peak anon GiB | anon ÷ size | "
              "(peak − imports) ÷ size |\n|---|---|---|---|---|---|---|---|---|---|")


def phase_lines(name: str, results: dict) -> list[str]:
    lines = []
    for step, runs in results.items():
        best = min(runs, key=lambda r: r["seconds"])
        parts = ", ".join(f"{k} {v:.2f}" for k, v in best["phases"].items())
        lines.append(f"- {name} / {step} (fastest run, seconds): {parts}")
        if "memory_at" in best:
            mem = ", ".join(f"{k} {v['VmRSS'] / GIB:.2f}/{v['VmHWM'] / GIB:.2f}"
                            for k, v in best["memory_at"].items())
            lines.append(f"  - RSS / high-water GiB after each phase: {mem}")
    return lines


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models (seconds, not minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="inline,external,nodes",
                        help="comma-separated from inline,external,nodes")
    parser.add_argument("--steps", default="onnx,onnxgrow,onnx-ir",
                        help="repeated steps, comma-separated from onnx,onnxgrow,onnx-ir,gs")
    parser.add_argument("--no-graphsurgeon", action="store_true", help="skip the single gs run")
    parser.add_argument("--profile", action="store_true",
                        help="also run onnxgrow once under cProfile and print the top functions")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new one in /tmp)")
    parser.add_argument("--json", default=None, help="write all raw results here")
    parser.add_argument("--child", nargs=4, metavar=("STEP", "SRC", "DST", "ARGS"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        step, src, dst, args = opts.child
        child(step, src, dst, json.loads(args), opts.profile_to)
        return

    sizes = SIZES["quick" if opts.quick else "full"]
    steps = opts.steps.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench_widen-", dir=opts.work))
    need = sum(4 * sizes[m][1] * (8 * sizes[m][0] ** 2) for m in opts.models.split(","))
    free = shutil.disk_usage(work).free
    if free < 3.5 * need:
        raise SystemExit(f"need about {3.5 * need / GB:.1f} GB free in {work}, have {free / GB:.1f} GB")
    print(f"machine: {machine()}", flush=True)
    table, phases, raw = [], [], {}
    started = time.perf_counter()
    try:
        for name in opts.models.split(","):
            d, blocks, external = sizes[name]
            t = time.perf_counter()
            if name == "nodes":
                model = build_chain(work / f"{name}.onnx", d, blocks)
            else:
                model = build_model(work / f"{name}.onnx", d, blocks, external)
            print(f"built {name}: {model['params'] / 1e6:.1f}M parameters, {model['bytes'] / GB:.2f} GB"
                  f"{' (external data)' if external else ''}"
                  f"{', %d nodes' % model['nodes'] if 'nodes' in model else ''} in {time.perf_counter() - t:.1f} s; "
                  f"widening {model['layer']} {model['width'] // 2} -> {model['width']}", flush=True)
            warm_cache(model["path"])
            results = {s: [] for s in steps}
            for rep in range(opts.repeats):
                for step in (steps if rep % 2 == 0 else steps[::-1]):  # alternate the order
                    r = run_step(step, model, work)
                    results[step].append(r)
                    print(f"  {name} {step:9s} run {rep + 1}: {r['seconds']:6.2f} s, "
                          f"peak RSS {r['VmHWM'] / GIB:.2f} GiB, peak anon {r['peak_anon'] / GIB:.2f} GiB",
                          flush=True)
            if not opts.no_graphsurgeon and "gs" not in steps:
                r = run_step("gs", model, work)
                results["gs"] = [r]
                print(f"  {name} gs        run 1: {r['seconds']:6.2f} s, peak RSS {r['VmHWM'] / GIB:.2f} GiB",
                      flush=True)
            if opts.profile:
                prof = str(work / f"{name}.prof")
                run_step("onnxgrow", model, work, profile=prof)
                import pstats
                print(f"\ncProfile of onnxgrow on {name} (cumulative, top 25):")
                pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            if "onnxgrow" in results:
                counted = results["onnxgrow"][0]["parameters"]
                p0, p1 = counted["before"], counted["after"]
                if p1 != p0 + model["growth"]:
                    raise SystemExit(f"onnxgrow grew {p0:,} -> {p1:,} parameters; expected "
                                     f"+{model['growth']:,}")
            label = (f"{name}: {model['nodes']} nodes, {model['bytes'] / 1e6:.1f} MB" if "nodes" in model else
                     f"{name}: {model['params'] / 1e6:.0f}M, {model['bytes'] / GB:.2f} GB")
            table += summarise(label, model, results)
            phases += phase_lines(name, results)
            raw[name] = {"model": model, "results": results}
            for p in (model["path"], model["path"] + ".data"):
                if os.path.exists(p):
                    os.remove(p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{TABLE_HEAD}\n" + "\n".join(table))
    print("\nPhases:\n" + "\n".join(phases))
    print(f"\ntargets: onnxgrow time ≤ {TIME_TARGET}× the baseline, peak RSS ≤ {MEMORY_TARGET}× the model size; "
          f"whole benchmark {time.perf_counter() - started:.0f} s")
    if opts.json:
        Path(opts.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
