"""What the study would cost at ImageNet scale (issue 19 item 7: "what to run at ImageNet scale next, with its cost
from task=costs"): per configuration at depth 16 and 256 px, the analytic training FLOPs of VAR's published d16
recipe (333,800 iterations at batch 768 on ImageNet-1k, 200 epochs; ../shared/reference/var_mvar_facts.md 3.6) and
the H200-hours they take at the training throughput VAR-d16 reaches compiled on an H200 (bench records), scaled by
each configuration's FLOPs: an estimate that assumes every mixer trains at VAR's FLOP rate, which the table says."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.load import latest
from varbench.analysis.tables import by_model, config_frame, finish, per_key
from varbench.registry import VAR

log = logging.getLogger(__name__)

RECIPE_IMAGES = 333_800 * 768  # VAR-d16's published recipe: iterations x global batch
DEPTH, RESOLUTION = 16, 256
THROUGHPUT = "Train img/s (b32, compiled)"  # the bench column the rate comes from (VAR-d16, one H200)
SEEDS = 3


def scale_up_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per configuration (task=costs at depth 16, 256 px): training GFLOPs per image, the recipe's total EFLOPs,
    H200-hours for one run and for SEEDS seeds at VAR-d16's measured compiled FLOP rate."""
    costs = latest(df, "analytic_cost")
    if costs.empty:
        log.warning("scale_up_table: no analytic_cost records (task=costs)")
        return pd.DataFrame()
    flops = per_key(costs, "train_flops_per_image", "Train GFLOPs/img", quiet=True)
    flops = flops[(flops.index.get_level_values("depth") == DEPTH)
                  & (flops.index.get_level_values("resolution") == RESOLUTION)]
    frame = config_frame(df, device)
    var = (*VAR, DEPTH, RESOLUTION)
    rate = frame.at[var, THROUGHPUT] if THROUGHPUT in frame and var in frame.index else float("nan")
    if var not in flops.index or pd.isna(rate):
        log.warning("scale_up_table: needs VAR-d16's training FLOPs (task=costs) and its compiled bench throughput")
        return pd.DataFrame()
    flop_rate = rate * flops[var]  # the FLOP/s VAR-d16 trains at, compiled, on one GPU
    hours = flops * RECIPE_IMAGES / flop_rate / 3600
    table = pd.DataFrame({"Train GFLOPs/img": flops / 1e9, "Recipe EFLOPs": flops * RECIPE_IMAGES / 1e18,
                          "H200-hours (1 run)": hours, f"H200-hours ({SEEDS} seeds)": SEEDS * hours})
    table.attrs["flop_rate"] = flop_rate
    return finish(by_model(table.sort_values("Train GFLOPs/img")), df, ["analytic_cost", "train_images_per_s"],
                  frame.attrs.get("device"))
