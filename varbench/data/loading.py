"""How the run's images are read: DataLoader workers and prefetch (`data.num_workers`, `data.prefetch_factor`).

The two keys sit in the data group because they belong to reading the data, but they configure the loader, not the
data set: `varbench.registry.dataset_config` strips them before the data set is built, `loader_options`
resolves them for a device.

- `data.num_workers`: "auto" (0 on CPU, where tests and small runs decode in-process; `GPU_WORKERS` capped by the
  cores this process may use, minus one for the training process, on CUDA) or an int in 0 .. `MAX_WORKERS`.
- `data.prefetch_factor`: batches each worker keeps ready, an int in 1 .. `MAX_PREFETCH` (unused with 0 workers).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

GPU_WORKERS = 8  # decodes VAR's 256-px JPEGs faster than one H200 trains on them (benchmarks/data_throughput.py)
MAX_WORKERS, MAX_PREFETCH = 256, 64
# the platform's own default (fork on Linux up to Python 3.13), whatever a launcher set as the process default
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class LoaderOptions:
    """DataLoader settings: worker processes, batches prefetched per worker, pinned host memory (for CUDA)."""

    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = False

    def __post_init__(self):
        check_int("data.num_workers", self.num_workers, 0, MAX_WORKERS)
        check_int("data.prefetch_factor", self.prefetch_factor, 1, MAX_PREFETCH)

    def kwargs(self) -> dict:
        """Keyword arguments of `torch.utils.data.DataLoader` (prefetch_factor only with workers, as it requires).
        The workers' start method is named, not inherited: inside a joblib (loky) worker, as `cluster=local_parallel`
        runs cells, the inherited default context is loky's, whose processes DataLoader cannot start."""
        workers = bool(self.num_workers)
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "prefetch_factor": self.prefetch_factor if workers else None,
                "multiprocessing_context": multiprocessing.get_context(START_METHOD) if workers else None}


def check_int(key: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}={value!r}: valid range {low} .. {high} (an integer)")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(device: torch.device) -> int:
    """Workers for `data.num_workers=auto` on `device` (module docstring)."""
    return 0 if device.type == "cpu" else max(0, min(GPU_WORKERS, usable_cores() - 1))


def loader_options(data_cfg: DictConfig, device) -> LoaderOptions:
    """The loader settings of `data_cfg` for `device` (a missing key takes its default: auto, 2)."""
    device = torch.device(device)
    workers = data_cfg.get("num_workers", "auto")
    if workers == "auto":
        workers = auto_workers(device)
    elif isinstance(workers, str):
        raise ValueError(f"data.num_workers={workers!r}: valid values 'auto' or an integer 0 .. {MAX_WORKERS}")
    return LoaderOptions(workers, data_cfg.get("prefetch_factor", 2), pin_memory=device.type == "cuda")
