"""PyTorch DDP set-up from the environment ``torchrun`` provides (no home-made launcher).

``torchrun --nproc_per_node=N -m cpmae train ...`` (or ``torchrun $(which cpmae) train ...``)
sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; a plain ``cpmae train`` runs single-process.
gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``cpmae.device.resolve_device``; under DDP each process takes the GPU of its LOCAL_RANK."""
    from cpmae.device import resolve_device

    dev = resolve_device(requested)
    if dev.type == "cuda":
        if info.enabled:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    return dev


def init(info: DistInfo, device: torch.device) -> None:
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Average of a scalar over all ranks (for logging the global-batch loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. the wall-time budget ran out on rank 0)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
