"""Shared fixtures: zoo models are built once per test run and shared by every test file (and
every xdist worker) through a cache folder beside pytest's temporary directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# unexpected exceptions are bugs: never tolerated under test (see onnxgrow/errors.py)
os.environ["ONNXGROW_STRICT"] = "1"


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory):
    """zoo_model(arch, exporter="legacy", keep_bn=True) -> path of the built, randomised model."""
    from tests import zoo

    cache = tmp_path_factory.getbasetemp().parent / "onnxgrow-zoo-cache"
    cache.mkdir(exist_ok=True)

    def build(arch: str, exporter: str = "legacy", keep_bn: bool = True) -> str:
        path = cache / zoo.file_name(arch, exporter, keep_bn)
        if not path.exists():
            tmp = cache / f".{os.getpid()}-{path.name}"
            zoo.build(arch, exporter, keep_bn, str(tmp))
            os.replace(tmp, path)  # atomic: a parallel worker may build the same model
        return str(path)

    return build


def _zoo_hash() -> str:
    import hashlib

    return hashlib.sha256((Path(__file__).parent / "llm_zoo.py").read_bytes()).hexdigest()[:10]


@pytest.fixture(scope="session")
def llm_model(tmp_path_factory):
    """llm_model(family, variant="dynamo") -> path of a tiny random transformers decoder (see
    tests/llm_zoo.py), built once per test run and shared by xdist workers."""
    from tests import llm_zoo

    cache = tmp_path_factory.getbasetemp().parent / "onnxgrow-llm-cache"
    cache.mkdir(exist_ok=True)

    def build(family: str, variant: str = "dynamo") -> str:
        path = cache / f"{family}.{variant}.{_zoo_hash()}.onnx"  # a changed zoo is rebuilt
        if not path.exists():
            tmp = cache / f".{os.getpid()}-{path.name}"
            llm_zoo.build(family, variant, tmp)
            os.replace(tmp, path)
        return str(path)

    return build


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """hf_folder(family, dtype="float32") -> a Hugging Face folder (save_pretrained) holding the
    very weights llm_model(family) was exported from, built once per test run."""
    from tests import llm_zoo

    cache = tmp_path_factory.getbasetemp().parent / "onnxgrow-llm-cache"
    cache.mkdir(exist_ok=True)

    def build(family: str, dtype: str = "float32") -> str:
        import torch

        path = cache / f"{family}.{dtype}.{_zoo_hash()}.hf"
        if not path.exists():
            tmp = cache / f".{os.getpid()}-{path.name}"
            llm_zoo.make(family).lm.to(getattr(torch, dtype)).save_pretrained(tmp)
            try:
                os.replace(tmp, path)
            except OSError:  # a parallel worker made it first
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return str(path)

    return build
