# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Speed and memory: what a recurrent inter-scale state buys as resolution grows
#
# Attention carries a KV cache that grows with every token of every scale; a recurrent mixer carries a state of
# fixed size. This notebook reads the `task=bench` records (training img/s and MFU, sampling latency with and
# without the tokenizer decode, peak memory, analytic state bytes) and the GPU parity records, through
# `varbench.analysis`. Records: `VARBENCH_RECORDS` (default `results/`); figures: `VARBENCH_FIGURES`.

# %%
import logging
import os
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

import varbench
from varbench.analysis import (
    as_text,
    latest,
    load_records,
    parity_table,
    resolution_scaling,
    speed_memory_vs_resolution,
)

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # missing records are logged
REPO = Path(varbench.__file__).resolve().parents[1]
RECORDS = os.environ.get("VARBENCH_RECORDS", "results")
FIGURES = Path(os.environ.get("VARBENCH_FIGURES") or tempfile.mkdtemp(prefix="varbench_figures_"))
records = Path(RECORDS) if Path(RECORDS).is_absolute() else REPO / RECORDS
df = load_records(records)
print(f"{len(df)} records from {df['source'].nunique()} files under {records}")


def show_table(table):
    """A table as markdown (rounded for reading; the DataFrame keeps the recorded values)."""
    if table.empty:
        print("no records for this table (see the warnings above)")
    else:
        display(Markdown(as_text(table).to_markdown(index=False)))
        print(f"from {table.attrs.get('records')} records; GPU: {table.attrs.get('device')}")


# %% [markdown]
# ## The protocol and the measured matmul peak
# MFU is 3 x forward FLOPs x img/s over the bf16 matmul peak measured in the same run.

# %%
peak = latest(df, "matmul_peak")
display(peak[["device", "value", "unit", "date"]] if len(peak) else "no matmul_peak records")
if "protocol" in df:
    print(*df["protocol"].dropna().unique(), sep="\n")

# %% [markdown]
# ## Per model and resolution
# "State / KV cache" is the inference state per image over attention's KV cache at the same depth and
# resolution; a failed bench stage (out of memory, a kernel refusing a shape) shows as its recorded error.

# %%
show_table(resolution_scaling(df))

# %%
path = speed_memory_vs_resolution(df, FIGURES / "speed_memory_vs_resolution.png")
display(Image(str(path))) if path else print("figure not drawn: no bench records (see the warnings)")

# %% [markdown]
# ## Are the kernels right? Worst relative RMS error against the pure-PyTorch reference
# Per mixer, backend and dtype, the worst over every compared tensor (forward, stepwise sampling, carried
# states, gradients); a check that could not run shows its error.

# %%
show_table(parity_table(df))
