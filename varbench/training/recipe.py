"""VAR's training recipe as pure functions: parameter groups, peak learning rate, lr and weight-decay schedules
(var_mvar_facts.md 3.2-3.4). Kept free of the loop so that tests can compare values with the formulas."""

from __future__ import annotations

import math

import torch
from torch import nn

from varbench.mixers.base import NO_WEIGHT_DECAY, library_marked

# substrings of parameter names that never decay (VAR's list; `scale_mul` is the attention log-temperature)
NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                 "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")
SCHEDULES = ("lin0", "lin", "lin00", "cos", "exp")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """VAR's rule: 1-D tensors, biases and the named embeddings/temperatures do not decay."""
    return param.ndim == 1 or name.endswith("bias") or any(key in name for key in NO_DECAY_KEYS)


def param_groups(model: nn.Module, marked_no_decay: bool = True) -> list[dict]:
    """Two AdamW groups; `wd_scale` 0 switches weight decay off for the no-decay group.

    Args:
        model (nn.Module): the model (not a compile wrapper: names are matched against its own).
        marked_no_decay (bool, Optional): also keep out of decay every parameter a mixer's library marks
            `_no_weight_decay` (Mamba's A_log and D, ...; `varbench.mixers.base.library_marked`), as the libraries
            train them. False is VAR's rule alone (Mamba-1's 2-D A_log then decays). Default: True.
    """
    marked = library_marked(model, NO_WEIGHT_DECAY) if marked_no_decay else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in marked or no_weight_decay(name, p) else decay).append(p)
    return [{"params": decay, "wd_scale": 1.0}, {"params": no_decay, "wd_scale": 0.0}]


def peak_lr(base_lr: float, global_batch: int, grad_accum: int = 1) -> float:
    """lr = ac * tblr * global_bs / 256 (VAR's `tlr`); global_bs counts one optimizer step's images per pass."""
    return grad_accum * base_lr * global_batch / 256


def lr_factor(it: int, warmup_iters: float, max_iters: int, schedule: str = "lin0", warmup_start: float = 0.005,
              end_factor: float = 0.01) -> float:
    """Multiplier of the peak lr at iteration `it` (VAR's `lr_wd_annealing`).

    Warm-up: linear from `warmup_start` to 1. Then, with progress p in [0, 1] over the remaining iterations:
    lin0 stays at 1 for p < 0.05 and falls linearly to `end_factor` (VAR's default); lin the same with 0.15;
    lin00 falls from the start; cos is a cosine to `end_factor`; exp decays exponentially after p = 0.15.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: {list(SCHEDULES)}")
    warmup_iters = round(warmup_iters)
    if it < warmup_iters:
        return warmup_start + (1 - warmup_start) * it / warmup_iters
    p = (it - warmup_iters) / max(max_iters - 1 - warmup_iters, 1)
    rest = 1 - p
    if schedule == "cos":
        return end_factor + (1 - end_factor) * (0.5 + 0.5 * math.cos(math.pi * p))
    if schedule == "lin00":
        return end_factor + (1 - end_factor) * rest
    flat = 0.05 if schedule == "lin0" else 0.15
    if p < flat:
        return 1.0
    if schedule == "exp":
        return math.exp((p - flat) / (1 - flat) * math.log(end_factor))
    return end_factor + (1 - end_factor) * rest / (1 - flat)


def weight_decay_at(it: int, max_iters: int, start: float = 0.05, end: float | None = None) -> float:
    """Cosine from `start` to `end` over the whole run (end None or 0 means constant, as VAR's twde=0)."""
    end = start if not end else end
    return end + (start - end) * (0.5 + 0.5 * math.cos(math.pi * it / max(max_iters - 1, 1)))


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Write the iteration's lr and weight decay into every group (no-decay groups get 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd * group.get("wd_scale", 1.0)
