"""task=train_tokenizer: train the `tokenizer` VQ-VAE of the config from scratch on the run's data set.

Writes `${run_dir}/tokenizer/` (tokenizer.safetensors with official key names, train_state.pt for an exact resume)
and records psnr, ssim, codebook usage and train time to `${results_dir}/train_tokenizer.jsonl`; losses and val
metrics also go to the experiment logger (`logger=`, phase train_tokenizer: varbench/utils/loggers.py).
The task group (varbench/configs/task/train_tokenizer.yaml) holds `name` plus the fields of `TrainOptions`; `tokenizer`
gives the architecture (its `checkpoint` is ignored: training starts from a fresh init seeded by `task.seed`, the
top-level `tokenizer_seed` unless set).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from varbench.build import build_dataset, build_tokenizer, resolve_device
from varbench.tokenizers.trainer import train_tokenizer
from varbench.tokenizers.update import TrainOptions
from varbench.utils.loggers import open_logger


def task_options(cfg: DictConfig) -> dict:
    """`cfg.task` without `name`, checked against TrainOptions (an unknown key is an error, never ignored)."""
    options = OmegaConf.to_container(cfg.task, resolve=True)
    options.pop("name", None)
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown train_tokenizer options {unknown}; valid: {sorted(known)}")
    return options


def main(cfg: DictConfig) -> dict:
    """Train, evaluate on the val split, return the summary (psnr, ssim, usage, usage_total, checkpoint, ...)."""
    options = task_options(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.task.seed)  # the tokenizer's initial weights: its own seed (tokenizer_seed by default)
    vae = build_tokenizer(cfg, trainable=True, load=False)
    return train_tokenizer(vae, build_dataset(cfg, "train"), device=device, out_dir=Path(cfg.run_dir) / "tokenizer",
                           val_set=build_dataset(cfg, "val"),
                           results_path=Path(cfg.results_dir) / "train_tokenizer.jsonl", config=cfg,
                           open_logger=lambda start: open_logger(cfg, "train_tokenizer", purge_step=start), **options)
