"""Run many `onnxgrow` command lines, each in its own process, for the price of one start-up.

    python tests/cli_runner.py CASES.json RESULTS.json

CASES.json is a list of {"argv": [...], "cwd": "...", "stdout": path, "stderr": path}. The
runner imports what the commands import once, then forks a child per case: the child points
its file descriptors 1 and 2 at the case's files and runs `onnxgrow.cli.main(argv)` exactly as
the console script does (an exception escaping main prints Python's traceback, as it would for
a user). RESULTS.json gets each child's exit status, in order. Used by tests/test_bad_input.py:
forty fresh interpreters would take a minute on two busy cores.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(case: dict) -> None:
    os.chdir(case["cwd"])
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    code = 1
    try:
        from onnxgrow.cli import main

        main(case["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what the interpreter would do with an escaping exception
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    import numpy  # noqa: F401  (the imports every command pays for, paid once)
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import onnxruntime  # noqa: F401

    import onnxgrow.cli  # noqa: F401
    import onnxgrow.layers  # noqa: F401
    import onnxgrow.verification  # noqa: F401
    if any(c["argv"][0] in ("export", "import-weights") for c in cases):
        import torch  # noqa: F401

    codes = []
    for case in cases:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(case)
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    with open(sys.argv[2], "w") as f:
        json.dump(codes, f)


if __name__ == "__main__":
    main()
