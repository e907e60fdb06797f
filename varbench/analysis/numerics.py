"""The training step under a numerics option beside VAR's numerics, timed in the same call (`numerics_speed_table`;
issue 18: "anything else [than VAR's numerics], such as FP8 matmuls, is a named, recorded option").

VAR trains under bf16 autocast with fp32 master weights. task=bench can time two deviations from that: FP8 matmuls in
the blocks' linear layers (`task.fp8`, recipe `task.fp8_recipe`; varbench/training/fp8.py) and bf16 weights
(`task.param_dtype`). A deviation's step is paired with VAR's-numerics step of the same call (commit and GPU), the
same configuration and batch, compiled the same way (scope and Inductor mode), so the ratio is of one machine. The
loss-curve check of FP8 against bf16 is a test (tests/test_fp8.py, on the CPU and on a GPU), not a table.
"""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.compile_time import CALL

log = logging.getLogger(__name__)

HOW = ["compiled_as", "compile_mode"]  # how the step ran (eager, or the compiled scope; Inductor's mode): pairs alike


def deviation_name(fp8: bool, fp8_recipe: str, param_dtype: str) -> str:
    """A training record's numerics option in words ("" for VAR's numerics)."""
    parts = [f"FP8 matmuls {fp8_recipe}"] if fp8 else []
    return ", ".join(parts + ([f"{param_dtype} weights"] if param_dtype != "fp32" else []))


def numerics_speed_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call, configuration, batch, way of running the step and numerics option: the option's img/s beside VAR's
    numerics' img/s of the same call, and their ratio. Empty when no record deviates from VAR's numerics."""
    train = df[(df["metric"] == "train_images_per_s") & df["system"].isna() & df["superseded"].isna()]
    train = train.sort_values("date", kind="stable").copy()
    train["batch"], train["value"] = train["batch"].astype(int), pd.to_numeric(train["value"])
    train["compiled_as"] = train["compile_scope"].where(train["compiled"].eq(True), "eager")
    train["deviation"] = [deviation_name(*r) for r in zip(train["fp8"], train["fp8_recipe"], train["param_dtype"])]
    options = train[train["deviation"] != ""]
    if options.empty:
        log.warning("numerics_speed_table: no training record under FP8 matmuls or bf16 weights (task.fp8, "
                    "task.param_dtype)")
        return pd.DataFrame()
    keys = [*CALL, *HOW]
    var = train[train["deviation"] == ""].drop_duplicates(keys, keep="last").set_index(keys)["value"]
    options = options.drop_duplicates([*keys, "deviation"], keep="last")
    index = pd.MultiIndex.from_frame(options[keys])
    table = pd.DataFrame({"Numerics option": options["deviation"].to_numpy(),
                          "VAR's numerics (img/s)": var.reindex(index).to_numpy(),
                          "Option (img/s)": options["value"].to_numpy()}, index=index)
    table["Option / VAR's numerics"] = table["Option (img/s)"] / table["VAR's numerics (img/s)"]
    table.index = table.index.set_names(["Commit", "GPU", "Model", "Resolution", "Batch", "Compiled", "Mode"])
    table.attrs.update(device=None, records=len(options) + int(table["VAR's numerics (img/s)"].notna().sum()))
    return table.set_index("Numerics option", append=True).sort_index()
