"""The `onnxgrow` command line: parse, call the API, print, map errors to exit codes.

Exit codes: 0 success; 1 the student differs from the teacher; 2 the request cannot be done
(bad input, unsupported pattern, unknown layer), with a message saying why and what would work;
3 an internal error (a bug: please report it with the `--debug` traceback); 130 / 143 interrupted
by Ctrl-C / SIGTERM (the command unwinds, its temporary files are removed, one line is printed).

Heavy modules (onnx, onnx-ir, onnxruntime, torch) are imported inside the commands, so
`onnxgrow --help` answers at once.
"""

from __future__ import annotations

import os
import signal
import sys


class Signalled(BaseException):
    """SIGINT or SIGTERM arrived: unwind (temporary files are removed on the way), then exit
    128 + signal. A BaseException, so no `except Exception` in the library swallows it, and not
    KeyboardInterrupt, so click does not print its own blank line."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNAL_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _exit_at_once(signum, frame) -> None:
    """Before main() runs there is nothing to clean up: say so in one line and leave."""
    os.write(2, f"{_SIGNAL_WORDS[signum]} by {signal.Signals(signum).name}.\n".encode())
    os._exit(128 + signum)


def _raise_signalled(signum, frame) -> None:
    for sig in _SIGNAL_WORDS:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Signalled(signum)


_swallowed: list = []  # a signal whose Signalled a callback swallowed, to be raised again


def _deliver_again(unraisable) -> None:
    """sys.unraisablehook while a command runs. A handler that runs inside a callback Python
    cannot raise from (a weakref callback such as importlib's module-lock clean-up, a __del__)
    has its Signalled swallowed there, and the run would go on with the signals ignored: raise
    it again a moment later (SIGALRM), from outside the callback."""
    if not isinstance(unraisable.exc_value, Signalled):
        sys.__unraisablehook__(unraisable)
        return
    _swallowed.append(unraisable.exc_value.signum)
    signal.signal(signal.SIGALRM, _raise_swallowed)
    signal.setitimer(signal.ITIMER_REAL, 0.001)


def _raise_swallowed(signum, frame) -> None:
    while frame is not None:
        if frame.f_code is _deliver_again.__code__:  # still inside the hook: raising here is lost
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        frame = frame.f_back
    raise Signalled(_swallowed.pop())


def _install(handler) -> None:
    """Handle SIGINT and SIGTERM with `handler`, except one the parent set to be ignored (a
    background job or `nohup` ignores Ctrl-C, and so does onnxgrow there)."""
    for sig in _SIGNAL_WORDS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


# The console script and `python -m onnxgrow.cli` (never a library import, such as a test
# process's): catch Ctrl-C and SIGTERM before the imports below, which take ~70 ms.
if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "onnxgrow":
    _install(_exit_at_once)

import json  # noqa: E402
import traceback  # noqa: E402

import click  # noqa: E402

from .errors import GrowError, InternalError, MismatchError  # noqa: E402
from .methods import DEEPEN_METHODS, WIDEN_METHODS  # noqa: E402

SEED = click.IntRange(0, 2**63 - 1)  # numpy seeds are non-negative


class _Context:
    debug = False


_ctx = _Context()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks for internal errors.")
@click.version_option(package_name="onnxgrow")
def cli(debug: bool) -> None:
    """Grow trained ONNX models with function-preserving transforms.

    The grown "student" computes what the "teacher" computes; widen and deepen prove it by
    running both in onnxruntime before writing the student.
    """
    _ctx.debug = debug


def main(argv=None) -> None:
    """Console entry point: run the click group and turn exceptions into exit codes.

    SIGINT and SIGTERM unwind the command (its temporary files are removed) and exit 130 / 143
    with one line; the previous handlers are restored on the way out.
    """
    previous = {sig: signal.getsignal(sig) for sig in (*_SIGNAL_WORDS, signal.SIGALRM)}
    previous_hook = sys.unraisablehook
    try:
        _run_cli(argv)
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _run_cli(argv) -> None:
    try:
        sys.unraisablehook = _deliver_again
        _install(_raise_signalled)  # inside the try: a signal from here on is reported as one line
        cli.main(args=argv, prog_name="onnxgrow", standalone_mode=False)
    except Signalled as exc:
        name = signal.Signals(exc.signum).name
        click.echo(f"{_SIGNAL_WORDS[exc.signum]} by {name}; temporary files removed.", err=True)
        sys.exit(128 + exc.signum)
    except click.exceptions.Abort:
        click.echo("aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MismatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except GrowError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if _ctx.debug:
            traceback.print_exc()
        else:
            what = str(exc) if isinstance(exc, InternalError) else f"{type(exc).__name__}: {exc}"
            click.echo(
                f"internal error: {what}\n"
                "This is a bug in onnxgrow. Run again with `onnxgrow --debug ...` for the "
                "traceback and report it.",
                err=True,
            )
        sys.exit(3)
    sys.exit(0)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------------------- inspect


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect(model: str, as_json: bool) -> None:
    """List the layers of MODEL and which transforms apply to each."""
    from .layers import describe, format_table

    info = describe(model)
    if as_json:
        _echo_json(info)
    else:
        click.echo(format_table(info))


# ----------------------------------------------------------------------------- verify


def _parse_tolerance(values: tuple[str, ...], what: str):
    """`--atol 1e-4` or `--atol out:1e-4` (repeatable) -> float | dict | None."""
    if not values:
        return None
    per_output: dict[str, float] = {}
    default = None
    for text in values:
        name, _, number = text.rpartition(":")
        try:
            tol = float(number)
        except ValueError:
            raise GrowError(f"--{what} {text!r}: expected a number or OUTPUT:NUMBER.") from None
        if tol < 0:
            raise GrowError(f"--{what} {text!r}: a tolerance cannot be negative.")
        if name:
            per_output[name] = tol
        else:
            default = tol
    if not per_output:
        return default
    if default is not None:
        per_output[""] = default
    return per_output


def _parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    dims = {}
    for text in values:
        name, sep, number = text.partition("=")
        if not sep or not number.strip().isdigit() or int(number) < 1:
            raise GrowError(f"--dim {text!r}: expected NAME=SIZE with a positive size, e.g. batch=4.")
        dims[name.strip()] = int(number)
    return dims


def _verify_options(f):
    f = click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                     show_default=True, help="onnxruntime execution provider.")(f)
    f = click.option("--atol", multiple=True, help="Absolute tolerance, or OUTPUT:TOL (repeatable).")(f)
    f = click.option("--rtol", multiple=True,
                     help="Tolerance relative to the output's largest magnitude, or OUTPUT:TOL.")(f)
    f = click.option("--samples", type=click.IntRange(1, 1000), default=3, show_default=True,
                     help="Random input draws to compare on.")(f)
    f = click.option("--inputs", "inputs_file", type=str, default=None,
                     help="An .npz file of inputs keyed by graph input name.")(f)
    f = click.option("--dim", "dims", multiple=True,
                     help="Size of a dynamic dimension, NAME=SIZE (INPUT:AXIS=SIZE for an unnamed one).")(f)
    return f


def _run_verify(teacher, student, provider, atol, rtol, samples, inputs_file, dims, seed=0):
    from .verification import verify as run_verify

    return run_verify(
        teacher, student, provider=provider, atol=_parse_tolerance(atol, "atol"),
        rtol=_parse_tolerance(rtol, "rtol"), samples=samples, inputs=inputs_file,
        dims=_parse_dims(dims), seed=seed,
    )


@cli.command()
@click.argument("teacher")
@click.argument("student")
@_verify_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(teacher, student, provider, atol, rtol, samples, inputs_file, dims, seed, as_json):
    """Run TEACHER and STUDENT on the same inputs and compare every output.

    Exit 0 when they match, 1 when they differ, 2 when they cannot be compared.
    """
    report = _run_verify(teacher, student, provider, atol, rtol, samples, inputs_file, dims, seed)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(report.format())
    if not report.ok:
        sys.exit(1)


# ----------------------------------------------------------------------------- widen / deepen


def _grow(model_path, out, transform, no_verify, verify_args, preserving=True, targets=None):
    """Load, transform, write atomically; verify against the teacher before the rename.

    A non-preserving transform (widen --method random) is compared for information only.
    `targets` (the node names or module paths the transform edits around) let a large graph be
    edited through a window (see window.py).
    """
    from . import files, graph, window

    inputs_file = verify_args[4]
    files.check_output(out, reads=(model_path, inputs_file))  # before any work
    model = window.load(model_path, targets, spill=True)
    reads = (inputs_file, *model.data_files())
    files.check_output(out, reads=reads)
    model.check_finite(str(model_path))
    summary = model.run(transform)
    with graph.staged(out, source=model_path, reads=reads) as tmp_path:
        model.write(tmp_path)
        if not no_verify:
            report = _run_verify(model_path, str(tmp_path), *verify_args)
            summary["verify"] = report.to_dict()
            summary["preserving"] = preserving
            if not report.ok and preserving:
                click.echo(report.format(), err=True)
                raise MismatchError(
                    "the student does not match the teacher; nothing was written. Run with "
                    "--no-verify to keep it for inspection, and please report the model.",
                    report=report,
                )
    summary["output"] = str(out)
    return summary


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        _echo_json(summary)
        return
    for line in summary.get("lines", []):
        click.echo(line)
    rep = summary.get("verify")
    if rep:
        worst = max((o["max_abs"] for o in rep["outputs"]), default=0.0)
        verdict = "match" if rep["ok"] else (
            "MISMATCH" if summary.get("preserving", True) else "differs, as expected of a "
            "non-preserving method")
        sizes = ", ".join(f"{k}={v}" for k, v in rep.get("dims", {}).items())
        at = f" at {sizes}: onnxruntime fails at size 1" if rep.get("dims_note") else ""
        click.echo(f"verified on {rep['provider']}: max abs error {worst:.3g} "
                   f"({rep['samples']} samples{at}) → {verdict}")
        for o in rep["outputs"]:
            if o.get("judged_by"):
                click.echo(f"  {o['name']}: over its own tolerance, passed by {o['judged_by']}")
    click.echo(f"wrote {summary['output']}")


def _grow_options(f):
    f = click.option("-o", "--output", "out", required=True, help="Where to write the student.")(f)
    f = click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")(f)
    f = click.option("--no-verify", is_flag=True, help="Skip the teacher/student comparison.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(f)
    return _verify_options(f)


@cli.command()
@click.argument("model")
@click.option("--layer", required=True, help="Name of the Conv/Gemm/MatMul node to widen.")
@click.option("--width", type=click.IntRange(min=1), required=True, help="New output width (channels/features).")
@click.option("--method", type=click.Choice(list(WIDEN_METHODS)), default="net2net", show_default=True)
@click.option("--noise", type=float, default=None,
              help="net2net: spread of the random replica split (default 0.1; 0 = textbook 1/c).")
@_grow_options
def widen(model, layer, width, method, noise, out, seed, no_verify, as_json, **verify_kw):
    """Widen LAYER of MODEL to WIDTH output units, with everything coupled to it."""
    from .widening import widen_model

    summary = _grow(
        model, out,
        lambda m: widen_model(m, layer=layer, width=width, method=method, seed=seed, noise=noise),
        no_verify, _verify_args(verify_kw), preserving=method != "random", targets=[layer],
    )
    _print_summary(summary, as_json)


@cli.command()
@click.argument("model")
@click.option("--after", default=None, help="The Conv/Gemm/MatMul layer (node name or module path) to "
              "insert after.")
@click.option("--block", default=None, help="A residual block to copy after itself (module path such as "
              "model.layers.3, or its index).")
@click.option("--method", type=click.Choice(list(DEEPEN_METHODS)), default=None,
              help="net2net, r2r or zero after a layer (default net2net); zero or r2r for a block "
                   "(default zero).")
@click.option("--kernel", type=click.IntRange(min=1), default=None,
              help="Kernel size of an inserted Conv (odd).")
@click.option("--bn", is_flag=True, help="Add an identity BatchNormalization after the new layer.")
@_grow_options
def deepen(model, after, block, method, kernel, bn, out, seed, no_verify, as_json, **verify_kw):
    """Insert a layer or residual block after layer AFTER, or copy residual block BLOCK."""
    from .deepening import deepen_any

    summary = _grow(
        model, out,
        lambda m: deepen_any(m, after=after, block=block, method=method, kernel=kernel, bn=bn, seed=seed),
        no_verify, _verify_args(verify_kw), targets=[after] if after and not block else None,
    )
    _print_summary(summary, as_json)


@cli.command("morph-kernel")
@click.argument("model")
@click.option("--layer", required=True, help="Name of the Conv node whose kernel grows.")
@click.option("--kernel", type=click.IntRange(min=1), required=True, help="New kernel size (odd, larger).")
@_grow_options
def morph_kernel(model, layer, kernel, out, seed, no_verify, as_json, **verify_kw):
    """Grow the k×k kernel of Conv LAYER to KERNEL×KERNEL (zero-padded: exact)."""
    from .deepening import morph_kernel_model

    summary = _grow(
        model, out, lambda m: morph_kernel_model(m, layer=layer, kernel=kernel),
        no_verify, _verify_args(verify_kw), targets=[layer],
    )
    _print_summary(summary, as_json)


@cli.command()
@click.argument("model")
@click.option("--widen", "widen_specs", multiple=True, metavar="TARGET=WIDTH",
              help="Widen TARGET (node name, module path or glob like 'layer3.*') to WIDTH units or "
                   "by a factor xF (repeatable).")
@click.option("--deepen", "deepen_specs", multiple=True, metavar="TARGET[:METHOD]",
              help="Insert a layer or block after TARGET (repeatable); METHOD net2net, r2r or zero.")
@click.option("--plan", "plan_file", default=None, help="A JSON plan: {\"widen\": {...}, \"deepen\": [...]}.")
@click.option("--method", type=click.Choice(list(WIDEN_METHODS)), default=None,
              help="Widening method (default net2net).")
@click.option("--noise", type=float, default=None, help="net2net: spread of the replica split.")
@click.option("--pad-streams", is_flag=True, default=None,
              help="Pad a normalised residual stream at a multiple of its width too (new channels zero, their "
                   "readers random) instead of copying its channels, wherever padding stays exact.")
@click.option("--new-std", default=None, metavar="STD|xF",
              help="Draw the new units' random weights with this std (e.g. 0.02, a fresh model's init), or F "
                   "times each grown weight's own (e.g. x0.5), instead of each grown weight's own.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@_grow_options
def grow(model, widen_specs, deepen_specs, plan_file, method, noise, pad_streams, new_std, quiet, out, seed,
         no_verify, as_json, **verify_kw):
    """Grow MODEL by a plan: many widen/deepen requests, one verification, one save. The growth the
    language-model experiment recommends before training on: --method netmorph --pad-streams
    --new-std 0.02 (README, "Does growth pay?")."""
    from .growth import grow_model, plan_from, stderr_progress

    seed_given = click.get_current_context().get_parameter_source("seed") != click.core.ParameterSource.DEFAULT
    plan = plan_from(widen_specs, deepen_specs, plan_file, method, seed if seed_given else None, noise,
                     pad_streams, new_std)
    progress = None if quiet or as_json else stderr_progress
    if os.path.isdir(model):  # a Hugging Face folder: checkpoint in, checkpoint out
        from pathlib import Path

        from .checkpoints.hf_grow import grow_folder

        summary = grow_folder(Path(model), plan, Path(out), verify=not no_verify, progress=progress)
        if as_json:
            _echo_json(summary)
            return
        for line in summary.get("lines", []):
            click.echo(line)
        _print_checkpoint(summary["checkpoint"])
        return
    summary = _grow(model, out, lambda m: grow_model(m, plan, progress), no_verify, _verify_args(verify_kw),
                    preserving=plan.method != "random", targets=plan.targets())
    _print_summary(summary, as_json)


def _verify_args(kw):
    return (kw["provider"], kw["atol"], kw["rtol"], kw["samples"], kw["inputs_file"], kw["dims"])


# ----------------------------------------------------------------------------- torch bridge


@cli.command()
@click.argument("model")
@click.option("-o", "--output", "out", required=True,
              help="Where to write: a module (.pt); with --like, a checkpoint like the teacher's.")
@click.option("--like", "like", default=None,
              help="The checkpoint MODEL was exported from: a Hugging Face folder or a state dict "
                   "(.safetensors, .pt, .pth, .bin). OUT is then of the same kind, with its keys.")
@click.option("--max-shard-size", default=None,
              help="With a folder: the largest safetensors shard (default 50GB, as transformers).")
@click.option("--no-verify", is_flag=True, help="With --like: skip loading OUT back and comparing.")
@click.option("--json", "as_json", is_flag=True, help="With --like: print the report as JSON.")
def export(model, out, like, max_shard_size, no_verify, as_json):
    """Convert MODEL to a trainable torch.nn.Module saved with torch.save, or with --like back
    into the checkpoint format it came from (keys, dtypes, layouts and config of the teacher,
    at the grown sizes)."""
    if like is None:
        from .torch_export import export_file

        path = export_file(model, out)
        click.echo(f"wrote {path}")
        return
    from .checkpoints.export import export_checkpoint

    report = export_checkpoint(model, like=like, out=out, max_shard_size=max_shard_size, verify=not no_verify)
    if as_json:
        _echo_json(report)
        return
    _print_checkpoint(report)


def _print_checkpoint(report: dict) -> None:
    matched = ", ".join(f"{n} by {how}" for how, n in report.get("matched", {}).items())
    click.echo(f"keys: {report['keys']} ({matched})")
    for copy in report.get("copies", []):
        click.echo(f"block copy of {copy.get('block') or copy.get('index')}: written as a new item, later items renumbered")
    for key, value in report.get("config", {}).items():
        click.echo(f"config {key}: {value}")
    rep = report.get("verify")
    if rep:
        worst = rep.get("max_abs", max((o["max_abs"] for o in rep.get("outputs", [])), default=0.0))
        how = "loaded with transformers" if "config" in report else "rebuilt from the written tensors"
        click.echo(f"verified ({how}, {rep.get('dtype')}): max abs error {worst:.3g} → match")
    click.echo(f"wrote {report['output']}")


@cli.command("import-weights")
@click.argument("model")
@click.argument("trained")
@click.option("-o", "--output", "out", required=True, help="Where to write the updated model.")
def import_weights(model, trained, out):
    """Write the parameters of TRAINED (.pt from `export`) back into MODEL's initializers."""
    from .torch_export import import_weights_file

    path = import_weights_file(model, trained, out)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
