"""One entry point for the checkpoint route: a folder or a state dict file, by what TEACHER is."""

from __future__ import annotations

from pathlib import Path


def export_checkpoint(grown, *, like, out, max_shard_size: str | None = None, verify: bool = True) -> dict:
    """Write `grown` (a path or an in-memory model) in the format of `like` — a Hugging Face
    folder or a state dict file (.safetensors, .pt, .pth, .bin) — at `out`; returns the report.
    `max_shard_size` (a folder's largest shard) defaults to transformers' 50GB."""
    from . import hf, statedict

    if Path(like).is_dir():
        return hf.export_folder(grown, Path(like), Path(out), max_shard_size=max_shard_size or hf.DEFAULT_MAX_SHARD,
                                verify=verify)
    return statedict.export_state_dict(grown, Path(like), Path(out), verify=verify)
