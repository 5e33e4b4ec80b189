"""How a request ends without a result, as the command line reports it.

`GrowError` (exit 2): the request cannot be carried out — bad input, unknown layer, unsupported
pattern. Its message says what is wrong and what would work instead.
`MismatchError` (exit 1): a transform ran, but the student does not compute what the teacher does.
`InternalError` (exit 3): onnxgrow met something its code did not anticipate — a bug, never a
refusal. It is deliberately not a GrowError, so no `except GrowError` can swallow it.

Strict mode (`ONNXGROW_STRICT=1`, which the test suite sets) turns the few places that tolerate an
unexpected exception for the user's sake (one layer's analysis in `inspect`, the best-effort
shape probe) into hard failures, so a bug cannot hide behind a working neighbour.
"""

from __future__ import annotations

import os


class GrowError(Exception):
    """A request onnxgrow cannot carry out. The message is shown to the user as is."""

    exit_code = 2


class MismatchError(GrowError):
    """The student's outputs differ from the teacher's beyond tolerance; carries the report."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class InternalError(Exception):
    """A bug in onnxgrow: an exception its code did not anticipate, with where it happened."""

    exit_code = 3


def strict() -> bool:
    """True when unexpected exceptions must never be tolerated (ONNXGROW_STRICT=1)."""
    return os.environ.get("ONNXGROW_STRICT", "") not in ("", "0")


def tolerate(exc: Exception) -> None:
    """Called where an unexpected exception is tolerated for the user's sake: re-raise in strict
    mode (as the InternalError it is)."""
    if strict():
        if isinstance(exc, InternalError):
            raise exc
        raise InternalError(f"{type(exc).__name__}: {exc}") from exc
