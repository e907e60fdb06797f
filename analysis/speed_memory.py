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
from IPython.display import display

from varbench.analysis import (
    gpu_test_table,
    latest,
    parity_table,
    resolution_scaling,
    speed_memory_vs_resolution,
)
from varbench.analysis.notebook import open_records, show_figure, show_table

df, records, FIGURES = open_records()


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
show_figure(path)

# %% [markdown]
# ## Are the kernels right? Worst relative RMS error against the pure-PyTorch reference
# Per mixer, backend and dtype, the worst over every compared tensor (forward, stepwise sampling, carried
# states, gradients); a check that could not run shows its error.

# %%
show_table(parity_table(df))

# %% [markdown]
# ## Do the GPU-only tests pass? The newest outcome of each on the GPU
# CUDA-graph sampling against eager sampling and the fused kernels' own checks skip on CPU machines; their GPU runs
# (`benchmarks/gpu_tests.py`) are the record. Unless a test passed, the last column says why.

# %%
show_table(gpu_test_table(df))
