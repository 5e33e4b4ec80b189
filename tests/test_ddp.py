"""The module from `onnxgrow.to_torch` trains unchanged under DistributedDataParallel
and FSDP (fully_shard), two processes on gloo (CPU)."""

from __future__ import annotations

import os
import socket

import numpy as np
import onnx
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import onnxgrow as og

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP's parameters are DTensors


def _worker(rank: int, model_path: str, out_dir: str, port: int, wrapper: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    try:
        module = og.to_torch(model_path)
        torch.save(module.state_dict(), os.path.join(out_dir, f"start{rank}.pt"))
        if wrapper == "ddp":
            ddp = DistributedDataParallel(module)
        else:
            from torch.distributed.fsdp import fully_shard

            fully_shard(module.conv)  # a layer at its module path, then the whole model
            ddp = fully_shard(module)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ddp.train()
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(STEPS):
            x = torch.randn(4, 3, 6, 5, generator=gen)
            opt.zero_grad()
            (ddp(x) ** 2).mean().backward()
            opt.step()
        end = {n: _full(p).detach().clone() for n, p in module.named_parameters()}
        torch.save(end, os.path.join(out_dir, f"end{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_two_processes_gloo(wrapper, tmp_path):
    from .test_torch_export import (
        conv_bn_net,  # only here: the spawned workers need not import it
    )

    model_path = tmp_path / "m.onnx"
    onnx.save(conv_bn_net(np.random.default_rng(0), conv_bias=False), model_path)
    mp.spawn(_worker, args=(str(model_path), str(tmp_path), _free_port(), wrapper), nprocs=WORLD, join=True)

    start = [torch.load(tmp_path / f"start{r}.pt") for r in range(WORLD)]
    end = [torch.load(tmp_path / f"end{r}.pt") for r in range(WORLD)]
    assert set(end[0]) == {n for n, _ in og.to_torch(model_path).named_parameters()}
    for name in end[0]:
        torch.testing.assert_close(start[0][name], start[1][name], rtol=0, atol=0)
        torch.testing.assert_close(end[0][name], end[1][name], rtol=0, atol=0)  # gradients were averaged
        assert not torch.equal(end[0][name], start[0][name]), f"{name} did not train"
