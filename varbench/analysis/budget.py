"""Training budgets of the study's arms from analytic FLOPs (varbench.eval.flops), for grids at matched compute.

An arm is a (mixer, intra) configuration. At matched parameters every arm trains the same steps; at matched training
FLOPs each arm trains `matched_steps` steps, so that steps x batch x training FLOPs per image (3 x the analytic
forward count) equals the reference arm's (VAR's) budget. The knob is the number of steps, not the width: the
arms keep their matched-parameter models, so the two comparisons differ only in compute.

    python -m varbench.analysis.budget grid=study_flops        # prints each arm's steps and FLOPs for the YAML
"""

from __future__ import annotations

import sys

import torch
from omegaconf import DictConfig

from varbench.build import build_model
from varbench.eval.flops import model_flops, train_flops
from varbench.registry import VAR, load_option

REFERENCE = VAR
TOLERANCE = 0.03  # matched arms' budgets agree to this fraction (one step of rounding is far below it)


def train_flops_per_image(cfg: DictConfig, mixer: str, intra: str) -> int:
    """The training FLOPs per image (`eval.flops.train_flops`) of the arm's model as `cfg` builds it (model group,
    tokenizer schedule, data classes, `model.match_params_of`), built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_model(cfg, load_option("mixer", mixer), load_option("intra", intra))
    return train_flops(model_flops(model)["total"])


def budget_flops(cfg: DictConfig, steps: int, arm=REFERENCE) -> int:
    """Training FLOPs of `steps` steps of `arm` at the config's global batch (train.batch_size x grad_accum)."""
    return steps * cfg.train.batch_size * cfg.train.grad_accum * train_flops_per_image(cfg, *arm)


def matched_steps(cfg: DictConfig, arms, budget: int) -> dict[tuple[str, str], int]:
    """Per arm, the number of steps whose training FLOPs are nearest `budget` (at least 1)."""
    if budget <= 0:
        raise ValueError(f"matched_steps: budget={budget} FLOPs must be positive")
    batch = cfg.train.batch_size * cfg.train.grad_accum
    return {tuple(arm): max(1, round(budget / (batch * train_flops_per_image(cfg, *arm)))) for arm in arms}


def spread(budgets: dict) -> float:
    """max / min - 1 of the arms' budgets: how far apart the matched arms are."""
    values = list(budgets.values())
    return max(values) / min(values) - 1


def main(overrides: list[str]) -> None:
    """Print, for the grid composed from `overrides`, each arm's training FLOPs per image and its matched steps at
    the reference's budget (the reference trains `train.steps`)."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT, default_configs

    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    arms = [REFERENCE, *(a for a in default_configs() if a != REFERENCE), ("attention", "local")]
    budget = budget_flops(cfg, cfg.train.steps)
    print(f"budget: {budget:.4g} training FLOPs (VAR, {cfg.train.steps} steps x batch {cfg.train.batch_size})")
    for arm, steps in matched_steps(cfg, arms, budget).items():
        per_image = train_flops_per_image(cfg, *arm)
        used = steps * cfg.train.batch_size * per_image
        print(f"  - {{mixer: {arm[0]}, intra: {arm[1]}, train.steps: {steps}}}   "
              f"# {per_image / 1e9:.2f} GFLOP/img, {used / budget - 1:+.2%} of the budget")


if __name__ == "__main__":
    main(sys.argv[1:])
