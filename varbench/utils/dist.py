"""Distributed set-up from the environment a launcher leaves: torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or Slurm
(through submitit's TorchDistributedEnvironment, or SLURM_PROCID/SLURM_NTASKS). No home-made launcher."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a multi-process run (one process per GPU): rank, process count, rank on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes records and checkpoints."""
        return self.rank == 0


def _from_slurm() -> None:
    """Export torchrun-style variables for a Slurm task started by srun/submitit (one task per GPU)."""
    try:
        import submitit
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    except (ImportError, RuntimeError):
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when a launcher started several processes; a no-op for a single process."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
