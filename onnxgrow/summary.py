"""What a transform reports: one shape for widen, deepen, morph-kernel and grow.

    {"command": "widen", "lines": [human-readable lines],
     "parameters": {"before": a, "after": b}, ...the transform's own details...}

After verifying and writing the student, the command line adds "verify" (the report),
"preserving" (whether the method claims to preserve the function) and "output" (the path).
"""

from __future__ import annotations


def summary(command: str, lines: list[str], before: int, after: int, /, **details) -> dict:
    """A transform's summary; the parameter count goes last among the lines."""
    return {"command": command, "lines": [*lines, parameters_line(before, after)],
            "parameters": {"before": before, "after": after}, **details}


def parameters_line(before: int, after: int) -> str:
    return f"parameters: {before:,} → {after:,} (+{after - before:,})"
