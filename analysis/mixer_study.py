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
# # Which inter-scale mixer? Quality, size and cost per configuration
#
# Every number here is read from the measurement records (one JSON line each, `varbench.utils.records`) by
# `varbench.analysis`; nothing is typed by hand. `python run.py task=report` writes the same tables (markdown +
# LaTeX) and figures to `results/report/`. Point `VARBENCH_RECORDS` at another records folder to study it, and
# `VARBENCH_FIGURES` at a folder to keep the figures (default: a temporary folder).
#
# Quality columns name their feature extractor: "FID" only for Inception-v3 features; a Frechet distance in the
# project classifier's feature space is an "FD (embedded classifier)" and is not comparable to an FID.

# %%
import logging
import os
import tempfile
from pathlib import Path

from IPython.display import Image, Markdown, display

import varbench
from varbench.analysis import (
    as_text,
    load_records,
    main_table,
    mixer_ablation,
    quality_vs_flops,
    sample_grids,
    training_curves,
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
        print(f"from {table.attrs.get('records')} records; GPU timings on {table.attrs.get('device')}")


def show_figure(path):
    display(Image(str(path))) if path else print("figure not drawn: its records are missing (see the warnings)")


# %% [markdown]
# ## What was measured
# Records per metric and device: a quick check of what the tables below can draw from.

# %%
display(df.groupby(["metric", "device"]).size().rename("records").to_frame())

# %% [markdown]
# ## Main table: size, quality, speed, memory per model
# Params and forward FLOPs are analytic (`varbench.eval.flops`, recorded by `task=bench`); quality is the mean
# over seeds (± std); timings are medians under the fixed bench protocol.

# %%
show_table(main_table(df))

# %% [markdown]
# ## Mixer ablation: quality mean ± std over seeds, with speed and memory

# %%
ablation = mixer_ablation(df)
show_table(ablation)

# %% [markdown]
# ## Quality against compute
# A mixer is worth its cost if it moves down (better FID / FD) without moving right (more FLOPs).

# %%
show_figure(quality_vs_flops(df, FIGURES / "quality_vs_flops.png"))

# %% [markdown]
# ## Training curves and samples of the grid cells

# %%
show_figure(training_curves(df, FIGURES / "training_curves.png"))

# %%
show_figure(sample_grids(df, FIGURES / "sample_grids.png"))
