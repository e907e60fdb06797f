"""task=main (the default): the whole pipeline on one machine. Train a tokenizer, encode the data set once into a
token cache, train the AR model on it, sample a class-conditional grid; every step records under results/.
Each step runs with its own task config (varbench/configs/task/<step>.yaml) updated by `task.overrides.<step>`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from varbench.registry import load_option


def step_config(cfg: DictConfig, step: str) -> DictConfig:
    """The run's config with `task` replaced by the step's own task config (plus the main job's overrides)."""
    step_cfg = cfg.copy()
    with open_dict(step_cfg):
        step_cfg.task = OmegaConf.merge(load_option("task", step), cfg.task.overrides.get(step) or {})
    return step_cfg


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
