"""One file per task; `python run.py task=<name>` calls `varbench.tasks.<name>.main(cfg)` after checking the config.

The check (`check_config`) is the config schema of every group (varbench.config_schema) plus, where a task module
defines one, its own `check_config(cfg)` (e.g. the bench's configurations and mixer options): a config error is
raised before the task writes anything, and for the main job before its first step runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from varbench.config_schema import ConfigError, step_config, validate
from varbench.registry import list_options
from varbench.runs import find_checkpoint
from varbench.training import checkpoints
from varbench.utils.autotune import apply_autotune_mode
from varbench.utils.compile_cache import use_compile_cache

READS_TRAINED_MODEL = ("sample", "evaluate", "edit")  # run alone, the weights must exist before anything runs
# the files a step reads that no earlier step of the same job makes (the main job skips train_tokenizer / tokenize
# when their output is given): {key: the steps that read it}
INPUT_FILES = {"tokenizer.checkpoint": ("train", "tokenize", "sample", "evaluate", "edit"),
               "train.token_cache": ("train",), "train.init_from": ("train",), "task.records": ("report",)}


def task_module(name: str):
    """The module of task `name` (one of the files of varbench/configs/task)."""
    if name not in list_options("task"):
        raise ValueError(f"unknown task {name!r}; valid tasks: {list_options('task')}")
    return importlib.import_module(f"varbench.tasks.{name}")


def alone(cfg: DictConfig) -> DictConfig:
    """`cfg` for a task run alone: under a preset written for the main job (debug=true), its `task.overrides.<task>`
    apply and the other steps' are dropped; the main job's config as it is."""
    if cfg.task.name == "main" or "overrides" not in cfg.task:
        return cfg
    out = cfg.copy()
    with open_dict(out):
        own = out.task.pop("overrides").get(cfg.task.name) or {}
        out.task = OmegaConf.merge(out.task, own)
    return out


def missing_inputs(cfg: DictConfig) -> list[str]:
    """The input files the config names (INPUT_FILES) that a step of this job reads and that do not exist, one
    message each. A run that resumes ignores `train.init_from`, so its file may be gone."""
    steps = set(cfg.task.steps) if cfg.task.name == "main" else {cfg.task.name}
    out = []
    for key, readers in INPUT_FILES.items():
        path, readers = OmegaConf.select(cfg, key, default=None, throw_on_missing=False), steps & set(readers)
        if not path or not readers or Path(path).exists():
            continue
        if key == "train.init_from" and (ckpt_dir := checkpoints.of_run(cfg)) and checkpoints.latest(ckpt_dir):
            continue  # (a resumed run ignores it)
        out.append(f"{key} = {path}: no such file or folder (read by task {', '.join(sorted(readers))})")
    return out


def check_config(cfg: DictConfig, inputs: bool = True) -> None:
    """Raise a ConfigError (or a ValueError of the task's own check) for an invalid config; for the main job, check
    every step's config as it will run. A task that reads a trained model, run alone, needs its weights
    (`task.checkpoint`, or a checkpoint under `run_dir`); as a step of the main job its train step makes them. With
    `inputs`, the input files it names must exist (`missing_inputs`); a grid's dry run checks without them, since an
    earlier cell or stage may make them."""
    cfg = alone(cfg)
    validate(cfg)
    if inputs and (missing := missing_inputs(cfg)):
        raise ConfigError("missing input:\n  " + "\n  ".join(missing))
    if inputs and cfg.task.name in READS_TRAINED_MODEL:
        find_checkpoint(cfg.task.get("checkpoint") or cfg.run_dir)
    steps = list(cfg.task.steps) if cfg.task.name == "main" else [cfg.task.name]
    for step in steps:
        own_check = getattr(task_module(step), "check_config", None)
        if own_check is not None:
            own_check(step_config(cfg, step) if cfg.task.name == "main" else cfg)


def run_task(cfg: DictConfig):
    """Check the config, then dispatch to the task module named by `cfg.task.name`."""
    check_config(cfg)
    apply_autotune_mode(cfg.get("autotune"))
    use_compile_cache(cfg.get("compile_cache_dir"))
    return task_module(cfg.task.name).main(alone(cfg))
