"""task=main (the default): the whole pipeline on one machine. Train a tokenizer, encode the data set once into a
token cache, train the AR model on it, sample a class-conditional grid, evaluate; every step records under
results_dir. Each step runs with its own task config (varbench/configs/task/<step>.yaml) updated by
`task.overrides.<step>` (varbench.config_schema.step_config); every step's config is checked before the first runs.
Each step's start and summary go to the run's log (run_dir/varbench.log)."""

from __future__ import annotations

import time

from omegaconf import DictConfig, open_dict

from varbench.config_schema import step_config
from varbench.utils.log import get_logger

log = get_logger(__name__)


def main(cfg: DictConfig) -> dict:
    from varbench.tasks import run_task
    summaries, steps = {}, list(cfg.task.steps)
    for i, step in enumerate(steps, 1):
        log.info("step %d/%d: %s", i, len(steps), step)
        start = time.perf_counter()
        summaries[step] = out = run_task(step_config(cfg, step))
        with open_dict(cfg):
            if step == "train_tokenizer":
                cfg.tokenizer.checkpoint = out["checkpoint"]
            elif step == "tokenize":
                cfg.train.token_cache = out["cache_dir"]
        log.info("step %s done in %.1f s: %s", step, time.perf_counter() - start,
                 {k: v for k, v in out.items() if not isinstance(v, dict)})
    return summaries
