"""task=main (the default): the whole pipeline on one machine. Train a tokenizer, encode the data set once into a
token cache, train the AR model on it, sample a class-conditional grid, evaluate; every step records under
results_dir. Each step runs with its own task config (varbench/configs/task/<step>.yaml) updated by
`task.overrides.<step>` (varbench.config_schema.step_config); every step's config is checked before the first runs.
Each step's start and summary go to the run's log (run_dir/varbench.log).

The tokenizer steps (train_tokenizer, tokenize) run once per tokenizer, not once per run: into a folder under
`tokenizer_dir` keyed by what determines them, which every run and grid cell with the same tokenizer, data and step
settings reuses (varbench/frozen_tokenizer.py). Their records go to the results_dir of the run that ran them. With
`tokenizer.checkpoint` given, train_tokenizer is skipped; with `train.token_cache` given, tokenize is."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, open_dict

from varbench import frozen_tokenizer
from varbench.config_schema import step_config
from varbench.utils.log import get_logger

log = get_logger(__name__)


def main(cfg: DictConfig) -> dict:
    """Run `task.steps` in order, the tokenizer steps through their shared folder; return {step: summary}."""
    summaries, steps = {}, list(cfg.task.steps)
    if {"train", "evaluate"} <= set(steps) and "train_tokenizer" not in steps and not cfg.tokenizer.get("checkpoint"):
        # (task=train alone may train on a seeded random tokenizer, for timing; a measured run may not)
        raise ValueError(f"tokenizer.checkpoint = None with task.steps {steps}: the model would train on a random "
                         "tokenizer's codes and then be evaluated; give tokenizer.checkpoint=<file> (a study grid's "
                         "frozen tokenizer) or add train_tokenizer to task.steps")
    shared = frozen_tokenizer.steps_to_share(cfg)
    for i, step in enumerate(steps, 1):
        log.info("step %d/%d: %s", i, len(steps), step)
        if step in frozen_tokenizer.SHARED_STEPS and step not in shared:
            given = cfg.tokenizer.checkpoint if step == "train_tokenizer" else cfg.train.token_cache
            log.info("step %s skipped: its output is given (%s)", step, given)
            summaries[step] = {"skipped": True, "given": str(given)}
        elif step in frozen_tokenizer.SHARED_STEPS:
            if step == shared[0]:  # the first shared step produces them all (the folder's steps run together)
                summaries |= frozen_tokenizer.prepare(cfg, shared, run_step)
        else:
            summaries[step] = run_step(cfg, step)
        if step == "evaluate":
            summaries |= guidance_sweep(cfg)
    return summaries


def guidance_sweep(cfg: DictConfig) -> dict:
    """The evaluate step again at each of `task.guidance_scales`, in a run whose seed is in `task.guidance_seeds`
    ([0] when absent; both keys are optional: varbench/configs/task/main.yaml). It runs in the run's own process,
    while its checkpoint exists (a grid cell's is gone with the machine that trained it), and a cell is done only
    when every scale is recorded. No NLL rows: they do not depend on guidance."""
    scales = cfg.task.get("guidance_scales")
    if not scales or cfg.seed not in cfg.task.get("guidance_seeds", [0]):
        return {}
    no_nll = {"val_nll_images": 0, "train_nll_images": 0}
    return {f"evaluate_cfg{scale}": run_step(cfg, "evaluate", {"cfg": scale, **no_nll}) for scale in scales}


def run_step(cfg: DictConfig, step: str, task_values: dict | None = None) -> dict:
    """Run one step on `cfg` (its task config from `step_config`, with `task_values` set in it); pass the tokenizer
    steps' outputs on to the next steps (`tokenizer.checkpoint`, `train.token_cache`); return the step's summary."""
    from varbench.tasks import run_task
    start = time.perf_counter()
    step_cfg = step_config(cfg, step)
    with open_dict(step_cfg):
        step_cfg.task.update(task_values or {})
    out = run_task(step_cfg)
    release_cached_gpu_memory()
    with open_dict(cfg):
        if step == "train_tokenizer":
            cfg.tokenizer.checkpoint = out["checkpoint"]
        elif step == "tokenize":
            cfg.train.token_cache = out["cache_dir"]
    log.info("step %s done in %.1f s: %s", step, time.perf_counter() - start,
             {k: v for k, v in out.items() if not isinstance(v, dict)})
    return out


def release_cached_gpu_memory() -> None:
    """Give the blocks a finished step left in PyTorch's CUDA cache back to the device. Grid cells share one GPU
    (12 processes under MPS in the study): each process's cache would otherwise keep its training peak reserved
    through sampling and evaluation, and the cells' peaks add up (138 of 143 GiB in session 12's lr waves)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
