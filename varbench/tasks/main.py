"""task=main (the default): the whole pipeline on one machine. Train a tokenizer, encode the data set once into a
token cache, train the AR model on it, sample a class-conditional grid, evaluate; every step records under
results_dir. Each step runs with its own task config (varbench/configs/task/<step>.yaml) updated by
`task.overrides.<step>` (varbench.config_schema.step_config); every step's config is checked before the first runs."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from varbench.config_schema import step_config


def main(cfg: DictConfig) -> dict:
    from varbench.tasks import run_task
    summaries = {}
    for step in cfg.task.steps:
        summaries[step] = out = run_task(step_config(cfg, step))
        with open_dict(cfg):
            if step == "train_tokenizer":
                cfg.tokenizer.checkpoint = out["checkpoint"]
            elif step == "tokenize":
                cfg.train.token_cache = out["cache_dir"]
        print(f"[main] {step}: {({k: v for k, v in out.items() if not isinstance(v, dict)})}")
    return summaries
