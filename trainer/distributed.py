"""torch.distributed through torchrun: the same code on 1 CPU process, N CPU processes (gloo)
or N GPUs (NCCL). No home-made parallelism: DDP wraps the trained module.

Each global batch is split across ranks, so a 2-process run sees the same samples per
step as a 1-process run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) if present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available; use --device cpu")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Tear the process group down. After a clean run every rank first waits for the others:
    a rank that destroys its gloo group and exits while a peer still talks to it can make the
    peer's gloo thread abort the process ("terminate called without an active exception")."""
    if info.enabled and dist.is_initialized():
        if clean:
            barrier(info)
        dist.destroy_process_group()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it builds a shared file: a latent cache, ODE trajectories);
    the other ranks run it after rank 0 is done and find the file. A no-op in one process."""
    on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if on and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if on and dist.get_rank() == 0:
            dist.barrier()
