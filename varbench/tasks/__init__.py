"""One file per task; `python run.py task=<name>` calls `varbench.tasks.<name>.main(cfg)`."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from varbench.registry import list_options
from varbench.utils.autotune import apply_autotune_mode


def run_task(cfg: DictConfig):
    """Dispatch to the task module named by `cfg.task.name` (one of the files of varbench/configs/task)."""
    name = cfg.task.name
    apply_autotune_mode(cfg.get("autotune"))
    if name not in list_options("task"):
        raise ValueError(f"unknown task {name!r}; valid tasks: {list_options('task')}")
    return importlib.import_module(f"varbench.tasks.{name}").main(cfg)
