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
from IPython.display import display

from varbench.analysis import (
    generalisation_gap,
    main_table,
    mixer_ablation,
    quality_vs_flops,
    sample_grids,
    study_ranking,
    tokenizer_variance,
    training_curves,
    versus_var,
)
from varbench.analysis.notebook import open_records, show_figure, show_table

df, records, FIGURES = open_records()


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
# ## Fit or memorisation?
# Each study (a records folder) ranked apart. Where `task=evaluate` recorded the teacher-forced NLL on held-out
# images (`val_nll`) and on training images (`train_nll`), their difference is the generalisation gap: a model
# with a low training loss and a large gap has memorised its small training set rather than fit the distribution.
# Sample metrics (FD, FID) cannot tell the two apart: a copy of a training image is a good sample.

# %%
show_table(study_ranking(df))
show_figure(generalisation_gap(df, FIGURES / "generalisation_gap.png"))

# %% [markdown]
# ## Against VAR, with the statistics fixed before looking
# Every configuration against VAR (the fixed reference, never the best row) on the ranking quality column and the
# held-out NLL: difference of means over seeds with a bootstrap 95% interval, Welch's t, Holm-corrected over each
# study's comparisons (varbench.analysis.stats). Only the rows marked significant support a claim. Where a
# configuration was trained on two tokenizers, the tokenizer's share of the variance follows.

# %%
show_table(versus_var(df))
show_table(tokenizer_variance(df))

# %% [markdown]
# ## Training curves and samples of the grid cells

# %%
show_figure(training_curves(df, FIGURES / "training_curves.png"))

# %%
show_figure(sample_grids(df, FIGURES / "sample_grids.png"))
