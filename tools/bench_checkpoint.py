#!/usr/bin/env python
"""Benchmark writing a grown ONNX back into a Hugging Face folder, in one run.

    python tools/bench_checkpoint.py TEACHER_FOLDER [--work DIR] [--widen '*=x1.5']
                                     [--write-widen PLAN] [--repeats 1] [--no-grow-verify] [--keep]

TEACHER_FOLDER: e.g. one written by tools/build_tinyllama.py. Each step runs in a fresh Python
process (this script with --child), timed after its imports; peak RSS is the child's own VmHWM
(file-backed pages it touched included), read from /proc/self/status. Everything is written under
DIR (default: a new /tmp/bench-ckpt-*; TMPDIR of the grow step points there too) and removed at
the end unless --keep; DIR/log.txt keeps every child's stderr.

  grow       onnxgrow.checkpoints.hf_grow.grow_folder(teacher, plan_from(widen=[WIDEN]), DIR/grown,
             verify=True): export (torch dynamo) → grow → verify (onnxruntime, teacher vs student
             ONNX) → write (export_folder, which loads the folder with transformers and compares
             logits). The phases are timed by wrapping hf_grow.export_onnx, verification.verify and
             hf.export_folder in the child, so a step that fails still says where its time went (the
             summary's `times` dict when it succeeds). The grown ONNX is hard-linked into DIR/onnx/
             once export_folder returns (grow_folder deletes its temporary folder next).
  write      onnxgrow.checkpoints.hf.export_folder(grown.onnx, teacher, out, verify=False): writing only.
  baseline   transformers: from_pretrained(student folder, dtype=float32) + save_pretrained, the
             student folder being grow's output (or write's when grow failed): the same sizes.

If the WIDEN plan's ONNX cannot be written as a folder (a config refusal) and --write-widen is
given, that plan is grown end to end too and write/baseline use its ONNX and folder. write and
baseline alternate, --repeats times each (median seconds, max peak RSS). Targets: write ≤ 1.5×
baseline's time, write's peak RSS ≤ 1.2× the student's weight bytes.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_widen import _status  # noqa: E402  (the child's VmHWM, as bench_widen and bench_grow read it)


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.name.endswith(".safetensors") or p.name.endswith(".bin"))


def onnx_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# ----------------------------------------------------------------------------- the steps (child side)


def _link_all(src_dir: Path, stem: str, dst_dir: Path) -> list[str]:
    """Hard-link (or, across file systems, copy) every file of src_dir whose name starts with stem."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for item in src_dir.iterdir():
        if item.is_file() and item.name.startswith(stem):
            target = dst_dir / item.name
            if target.exists():
                target.unlink()
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
            done.append(item.name)
    return done


def _preload(folder):
    """The imports every step needs, before its clock starts: torch, onnxruntime, transformers and
    the folder's model class (transformers loads its modules lazily, on first attribute access)."""
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from onnxgrow.checkpoints import hf

    return hf.model_class(hf.read_config(Path(folder)))


def step_grow(spec: dict) -> dict:
    """grow_folder end to end. Its phases are timed by wrapping the functions it calls (so a failing
    step still reports where its time went); the grown ONNX is hard-linked into spec["onnx_dir"]."""
    import traceback

    from onnxgrow import verification
    from onnxgrow.checkpoints import hf, hf_grow
    from onnxgrow.growth import plan_from

    phases, kept = [], {}

    def timed(name, fn, after=None):
        def wrapper(*args, **kw):
            before_rss = _status()["VmHWM"]
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                phases.append({"phase": name, "start": start - t0, "seconds": time.perf_counter() - start,
                               "peak_rss": _status()["VmHWM"], "peak_rss_before": before_rss})
                if after:  # untimed
                    after(*args)
        return wrapper

    def keep(grown, *args):  # after export_folder: grow_folder deletes its temporary folder next
        # (not before: onnxgrow refuses to read external data with more than one hard link)
        grown = Path(grown)
        kept["files"] = _link_all(grown.parent, grown.name, Path(spec["onnx_dir"]))
        kept["onnx"] = str(Path(spec["onnx_dir"]) / grown.name)

    _preload(spec["teacher"])
    hf_grow.export_onnx = timed("export", hf_grow.export_onnx)
    verification.verify = timed("verify", verification.verify)  # imported by grow_folder at call time
    hf.export_folder = timed("write", hf.export_folder, after=keep)
    plan = plan_from(widen=spec["widen"])
    t0 = time.perf_counter()
    result = {}
    try:
        summary = hf_grow.grow_folder(Path(spec["teacher"]), plan, Path(spec["out"]), verify=spec["verify"])
        checkpoint = summary.get("checkpoint", {})
        result.update(times=summary["times"], config=checkpoint.get("config"), keys=checkpoint.get("keys"),
                      verify_ok=(summary.get("verify") or {}).get("ok"),
                      folder_verify=_short(checkpoint.get("verify")))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["seconds"] = time.perf_counter() - t0
    result["phases"] = phases
    after_export = next((p["start"] + p["seconds"] for p in phases if p["phase"] == "export"), None)
    next_start = next((p["start"] for p in phases if p["phase"] in ("verify", "write")), None)
    if after_export is not None and next_start is not None:  # grow: between the export and the next phase
        peak = next(p["peak_rss_before"] for p in phases if p["phase"] in ("verify", "write"))
        phases.append({"phase": "grow", "start": after_export, "seconds": next_start - after_export,
                       "peak_rss": peak})
    phases.sort(key=lambda p: p["start"])
    result["onnx"] = kept.get("onnx")
    return result


def _short(report):
    if not report:
        return None
    return {k: report.get(k) for k in ("passed", "max_abs", "max_rel", "provider", "dtype", "rtol")}


def step_prepare(spec: dict) -> dict:
    """The grown ONNX without grow_folder: export, grow, write (no verification)."""
    from onnxgrow import window
    from onnxgrow.checkpoints import hf_grow
    from onnxgrow.growth import grow_model, plan_from

    t0 = time.perf_counter()
    onnx_dir = Path(spec["onnx_dir"])
    onnx_dir.mkdir(parents=True, exist_ok=True)
    teacher, student = onnx_dir / "teacher.onnx", onnx_dir / "student.onnx"
    hf_grow.export_onnx(Path(spec["teacher"]), teacher)
    plan = plan_from(widen=spec["widen"])
    model = window.load(str(teacher), plan.targets(), spill=True)
    model.run(lambda m: grow_model(m, plan, None))
    model.write(student)
    for p in onnx_dir.iterdir():
        if p.name.startswith("teacher.onnx"):
            p.unlink()
    return {"seconds": time.perf_counter() - t0, "onnx": str(student)}


def step_baseline(spec: dict) -> dict:
    import torch
    import transformers

    cls = _preload(spec["student"])
    t0 = time.perf_counter()
    model = cls.from_pretrained(spec["student"], dtype=torch.float32)
    t1 = time.perf_counter()
    load_rss = _status()["VmHWM"]
    model.save_pretrained(spec["out"])
    return {"seconds": time.perf_counter() - t0, "load": t1 - t0, "save": time.perf_counter() - t1,
            "peak_after_load": load_rss, "transformers": transformers.__version__}


def step_write(spec: dict) -> dict:
    _preload(spec["teacher"])
    from onnxgrow.checkpoints import hf

    t0 = time.perf_counter()
    report = hf.export_folder(spec["onnx"], Path(spec["teacher"]), Path(spec["out"]), verify=False)
    return {"seconds": time.perf_counter() - t0, "config": report.get("config")}


STEPS = {"grow": step_grow, "prepare": step_prepare, "baseline": step_baseline, "write": step_write}


def child_main(step: str, spec: str) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    result = STEPS[step](json.loads(spec))
    result.update(_status())
    result["peak_rss"] = result["VmHWM"]  # not ru_maxrss: Linux carries that across execve
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- the parent


def run(step: str, spec: dict, log: Path, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", step, json.dumps(spec)]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n===== {step} {time.strftime('%H:%M:%S')} {json.dumps(spec)}\n")
        f.flush()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, check=False,
                             env=dict(os.environ, TQDM_DISABLE="1", **(env or {})))
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = log.read_text()[-4000:]
        how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
        return {"failed": f"{step}: {how} after {wall:.0f} s", "log_tail": tail}
    result = json.loads(lines[-1][7:])
    result["wall"] = wall
    return result


def machine() -> str:
    load = os.getloadavg()
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem / 2**30:.0f} GiB RAM, "
            f"load average {load[0]:.1f}; Python {platform.python_version()}")


def gib(n) -> str:
    return f"{n / 2**30:.2f}"


def show(result: dict) -> None:
    print(json.dumps({k: v for k, v in result.items() if k not in ("log_tail", "traceback")}), flush=True)
    if "traceback" in result:
        print(result["traceback"], flush=True)
    if "log_tail" in result:
        print(result["log_tail"], flush=True)


def now() -> str:
    return time.strftime("%H:%M:%S")


def grow_row(label: str, g: dict, base, student_bytes) -> list[str]:
    if "failed" in g:
        return [f"| {label} | {g['failed']} | | | | |"]
    rows = []
    total = g["seconds"]
    ratio = f"{total / base:.2f}" if base else "—"
    per = f"{g['peak_rss'] / student_bytes:.2f}" if student_bytes else "—"
    status = "ok" if "error" not in g else "FAILED: " + g["error"].split(". ")[0][:160]
    rows.append(f"| {label}: whole child ({status}) | {total:.1f} | {ratio} | {gib(g['peak_rss'])} | {per} | |")
    for ph in g["phases"]:
        rss = gib(ph["peak_rss"]) if "peak_rss" in ph else ""
        rows.append(f"| &nbsp;&nbsp;{ph['phase']} | {ph['seconds']:.1f} | | {rss} (peak so far) | | |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", nargs="?", type=Path)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new one under /tmp)")
    parser.add_argument("--widen", default="*=x1.5", help="the plan of the end-to-end grow step")
    parser.add_argument("--write-widen", default=None,
                        help="if the --widen plan's grown ONNX cannot be written as a folder, grow with this "
                             "plan too (end to end) and benchmark writing on its ONNX")
    parser.add_argument("--repeats", type=int, default=1, help="runs of baseline and write each")
    parser.add_argument("--no-grow-verify", action="store_true", help="grow_folder(verify=False)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return
    if args.teacher is None:
        parser.error("give the teacher folder")
    teacher = args.teacher.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir="/tmp"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    log = work / "log.txt"
    print(f"machine: {machine()}", flush=True)
    print(f"teacher: {teacher} ({weight_bytes(teacher) / 1e9:.2f} GB of weights); work: {work}; log: {log}",
          flush=True)
    for name in ("onnx", "onnx2", "grown", "grown2", "write-out", "baseline-out", "student-folder"):
        shutil.rmtree(work / name, ignore_errors=True)
    env = {"TMPDIR": str(work / "tmp")}
    grows = []  # (plan, result)

    def grow(plan: str, suffix: str) -> dict:
        print(f"[{now()}] grow: grow_folder --widen {plan!r}", flush=True)
        r = run("grow", {"teacher": str(teacher), "out": str(work / f"grown{suffix}"), "widen": [plan],
                         "verify": not args.no_grow_verify, "onnx_dir": str(work / f"onnx{suffix}")}, log, env)
        show(r)
        grows.append((plan, r))
        return r

    def write(onnx_path: str) -> dict:
        shutil.rmtree(work / "write-out", ignore_errors=True)
        print(f"[{now()}] write: export_folder({onnx_path}, verify=False)", flush=True)
        r = run("write", {"onnx": onnx_path, "teacher": str(teacher), "out": str(work / "write-out")}, log)
        show(r)
        return r

    g = grow(args.widen, "")
    student_folder = work / "grown" if "error" not in g and "failed" not in g else None
    results, failures = {"baseline": [], "write": []}, []
    onnx_path, write_plan = g.get("onnx"), args.widen
    first = write(onnx_path) if onnx_path else {"failed": "no grown ONNX (grow failed before writing)"}
    if "failed" in first and args.write_widen:
        failures.append((args.widen, first))
        write_plan = args.write_widen
        g2 = grow(args.write_widen, "2")
        onnx_path = g2.get("onnx")
        if onnx_path is None:
            print(f"[{now()}] prepare: the grown ONNX without grow_folder", flush=True)
            p = run("prepare", {"teacher": str(teacher), "widen": [args.write_widen],
                                "onnx_dir": str(work / "onnx2")}, log, env)
            show(p)
            onnx_path = p.get("onnx")
        student_folder = work / "grown2" if "error" not in g2 and "failed" not in g2 else None
        first = write(onnx_path) if onnx_path else {"failed": "no grown ONNX for the write plan either"}
    if "failed" in first:
        failures.append((write_plan, first))
    else:
        results["write"].append(first)

    student_bytes = 0
    for i in range(args.repeats if results["write"] else 0):
        if i:
            w = write(onnx_path)
            if "failed" in w:
                failures.append((write_plan, w))
                break
            results["write"].append(w)
        student_bytes = weight_bytes(work / "write-out")
        if student_folder is None:  # the baseline must not read the folder write rewrites
            student_folder = work / "student-folder"
            (work / "write-out").rename(student_folder)
        b_out = work / "baseline-out"
        shutil.rmtree(b_out, ignore_errors=True)
        print(f"[{now()}] baseline: from_pretrained + save_pretrained of {student_folder}", flush=True)
        b = run("baseline", {"student": str(student_folder), "out": str(b_out)}, log)
        show(b)
        shutil.rmtree(b_out, ignore_errors=True)
        if "failed" in b:
            failures.append(("baseline", b))
            break
        results["baseline"].append(b)

    # ------------------------------------------------------------------ the table
    print()
    print(f"machine: {machine()}")
    print(f"teacher {teacher.name}: {weight_bytes(teacher) / 1e9:.2f} GB of weights"
)
    if results["write"]:
        print(f"write plan --widen {write_plan!r}: student {student_bytes / 1e9:.2f} GB of weights "
              f"({gib(student_bytes)} GiB), grown ONNX {onnx_bytes(Path(onnx_path)) / 1e9:.2f} GB; config changes "
              f"{results['write'][-1].get('config')}; median of {len(results['write'])} run(s)")
    print()
    print("| step | seconds | × baseline | peak RSS GiB | peak RSS ÷ student weights | target |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r["seconds"] for r in results["baseline"]) if results["baseline"] else None
    for step, target in (("baseline", ""), ("write", "≤ 1.5×, ≤ 1.2×")):
        runs = results[step]
        if not runs:
            print(f"| {step} | failed | | | | {target} |")
            continue
        sec = statistics.median(r["seconds"] for r in runs)
        rss = max(r["peak_rss"] for r in runs)
        ratio = f"{sec / base:.2f}" if base else "—"
        extra = ""
        if step == "baseline":
            extra = (f" (load {statistics.median(r['load'] for r in runs):.1f} s + save "
                     f"{statistics.median(r['save'] for r in runs):.1f} s)")
        print(f"| {step}{extra} | {sec:.1f} | {ratio} | {gib(rss)} | {rss / student_bytes:.2f} | {target} |")
    for plan, r in grows:
        same = plan == write_plan and student_bytes
        for row in grow_row(f"grow_folder --widen {plan!r}", r, base if same else None,
                            student_bytes if same else 0):
            print(row)
    print()
    for plan, r in grows:
        if "error" in r:
            print(f"grow_folder --widen {plan!r} FAILED: {r['error']}")
        elif "failed" not in r:
            print(f"grow_folder --widen {plan!r}: ONNX verify ok={r.get('verify_ok')}; folder loaded with "
                  f"transformers: {r.get('folder_verify')}")
    for plan, f in failures:
        print(f"FAILED ({plan}): {f['failed']}; " + (f.get("log_tail", "").strip().splitlines() or [""])[-1])
    if not args.keep:
        for name in ("onnx", "onnx2", "grown", "grown2", "write-out", "baseline-out", "student-folder", "tmp"):
            shutil.rmtree(work / name, ignore_errors=True)


if __name__ == "__main__":
    main()
