"""task=costs: the analytic costs of every configuration, without a GPU. Per depth of `task.depths`, resolution of
`task.resolutions` and (mixer, intra) configuration (default: every registered mixer without intra, plus M-VAR):
parameters, forward FLOPs per image by component (training counts 3x), the tokenizer decode's FLOPs, and the bytes
of the inference state per image (KV cache, or recurrent state + conv tail). Models are built on the meta device
(no memory, no init), so VAR-d30 at 1024 px costs nothing. One `analytic_cost` record per cell in costs.jsonl; a
re-run replaces the records of the cells it computes (never appends a second copy a report would count twice)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from varbench.build import build_model
from varbench.config_schema import check_pairs, check_resolutions
from varbench.eval.flops import decoder_flops, model_flops, train_flops
from varbench.layout import PATCH_NUMS
from varbench.registry import default_configs, load_option
from varbench.tokenizers import MultiScaleVQVAE
from varbench.utils.records import make_record, replace_records

CELL = ("mixer", "intra", "depth", "resolution")  # what one analytic_cost record is of


def check_config(cfg: DictConfig) -> None:
    """Refuse a configuration or resolution whose costs cannot be computed, before anything runs (as task=bench)."""
    check_pairs(cfg.task.configs)
    check_resolutions(cfg.task.resolutions)


def main(cfg: DictConfig) -> dict:
    """Record the analytic costs of every (depth, resolution, configuration) in results_dir/costs.jsonl, replacing
    earlier ones; return where, and how many cells."""
    t, out = cfg.task, Path(cfg.results_dir) / "costs.jsonl"
    lines = []
    for res in t.resolutions:
        with torch.device("meta"):
            decode = decoder_flops(MultiScaleVQVAE(patch_nums=PATCH_NUMS[res]))
        for depth in t.depths:
            sized = cfg.copy()
            with open_dict(sized):
                sized.model.depth = depth  # width and heads follow depth (VAR's rule) in the var/mvar recipes
            for mixer, intra in t.configs or default_configs():
                with torch.device("meta"):
                    model = build_model(sized, load_option("mixer", mixer), load_option("intra", intra),
                                        PATCH_NUMS[res], num_classes=1000)
                flops = model_flops(model)
                lines.append(make_record(
                    "analytic_cost", flops["total"], "FLOP/img (forward)", config=None, device="cpu", mixer=mixer,
                    intra=intra, depth=depth, resolution=res, L=model.layout.L, params=model.num_params(),
                    flops_by_component=flops, train_flops_per_image=train_flops(flops["total"]),
                    decode_flops_per_image=decode, dtype="bf16 (recurrent states fp32)",
                    state_bytes_per_image=model.state_bytes(1)))
    cells = {tuple(line[k] for k in CELL) for line in lines}
    replaced = replace_records(out, lines, lambda old: old.get("metric") == "analytic_cost"
                               and tuple(old.get(k) for k in CELL) in cells)
    return {"records": str(out), "cells": len(lines), "replaced": replaced}
