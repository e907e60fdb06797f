"""The floors of each study's quality metrics (issue 19 item 4): real images of another split against the reference
(`<metric>_floor`: what a perfect generator would score at that sample count) and the tokenizer's reconstructions
of those images (`<metric>_recon`: what a perfect generator over that tokenizer would score), beside the study's
best configuration and VAR, so that a distance is read against the distances it cannot go below. Every evaluation
of a study records the same two rows (task=evaluate; `task.feature_cache` computes them once per data set), each
configuration on its main tokenizer; a study whose configurations read different tokenizers (issue 19's raster arms,
on the single-scale twin of the scale-wise arms' tokenizer) gets a row per tokenizer, its best configuration among
those that read it."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.format import HIGHER_BETTER, QUALITY_NAMES, SECTION
from varbench.analysis.load import model_label
from varbench.analysis.quality import main_tokenizer, quality_label, quality_long, shared_tokenizer, study_of
from varbench.analysis.tables import finish
from varbench.registry import VAR

log = logging.getLogger(__name__)

KINDS = {"_floor": "Real vs real (floor)", "_recon": "Tokenizer reconstructions"}
OWN = "own per cell"  # a grid that trains a tokenizer per cell
# the configurations' side says its own sample count (FID's bias depends on it: a floor of n real images and a
# model's FID-10k are not the same measurement)
BESIDE = ["Best configuration", "Best (mean over seeds)", "VAR (mean over seeds)", "Configurations measured as"]


def floor_records(df: pd.DataFrame) -> pd.DataFrame:
    """The `<metric>_floor` / `<metric>_recon` records of the quality metrics, with their study, base metric, kind,
    label (the base metric's, without a sample count: the floors count their own real images) and tokenizer."""
    rows = df[df["metric"].str.endswith(tuple(KINDS))]
    rows = rows.assign(base=rows["metric"].str.rsplit("_", n=1).str[0], kind=rows["metric"].str[-6:].map(KINDS))
    rows = main_tokenizer(rows[rows["base"].isin(QUALITY_NAMES)])
    labels = [quality_label(b, e) for b, e in zip(rows["base"], rows["feature_extractor"])]
    return rows.assign(study=study_of(rows), label=labels, tok=tokenizer_names(df, rows))


def tokenizer_names(df: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Per row of `rows` (a subset of `df`), the tokenizer a table row names: its id where cells of its study share it
    (decided over all of `df`: a tokenizer is shared whatever metrics each cell recorded), else OWN."""
    names = dict(zip(zip(study_of(df), df["tokenizer_id"].fillna("")), shared_tokenizer(df).replace("", OWN)))
    return [names[key] for key in zip(study_of(rows), rows["tokenizer_id"].fillna(""))]


def floors_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per study and metric: the floor and reconstruction values (the median of the study's records: they agree),
    the real images' count, and the mean over seeds of the study's best configuration and of VAR on that metric
    (the quality tables' values: fixed guidance, main tokenizer)."""
    rows = floor_records(df)
    if rows.empty:
        log.warning("floors_table: no <metric>_floor / <metric>_recon records (task=evaluate writes them)")
        return pd.DataFrame()
    table = rows.pivot_table(index=["study", "base", "label", "tok", "num_samples"], columns="kind", values="value",
                             aggfunc="median")
    table = table.reset_index("num_samples").rename(columns={"num_samples": "Real images (n)"})
    means = configuration_means(df)
    for (study, base, label, tok), _ in table.iterrows():
        ours = means[(means["study"] == study) & (means["metric"] == base) & (means["tok"] == tok)]
        if ours.empty:
            continue
        higher_better = QUALITY_NAMES[base] in HIGHER_BETTER
        best = ours.loc[ours["value"].idxmax() if higher_better else ours["value"].idxmin()]
        var = ours[(ours["mixer"] == VAR[0]) & (ours["intra"] == VAR[1])]
        table.loc[(study, base, label, tok), BESIDE] = [best["model"], best["value"],
                                                        var["value"].iloc[0] if len(var) else float("nan"),
                                                        best["label"]]
    first = [k for k in KINDS.values() if k in table]
    table = table[first + [c for c in table if c not in first]]
    table = table.droplevel("base").rename_axis([SECTION, "Metric", "Tokenizer"]).rename_axis(columns=None)
    return finish(table, df, [f"{m}{k}" for m in QUALITY_NAMES for k in KINDS], device)


def configuration_means(df: pd.DataFrame) -> pd.DataFrame:
    """The mean over seeds of each configuration's quality metrics, per study (one row per study, configuration and
    quality column; `model` its label, `label` the column's (sample count, guidance), `tok` the tokenizer it reads,
    as `floor_records` names it)."""
    # one study at a time: quality_long keeps a configuration run by several studies in the newest one only
    long = pd.concat([quality_long(records).assign(study=study) for study, records in df.groupby(study_of(df))])
    if long.empty:
        return pd.DataFrame(columns=["study", "metric", "label", "mixer", "intra", "model", "tok", "value"])
    long = long.assign(tok=tokenizer_names(df, long))
    means = long.groupby(["study", "metric", "label", "mixer", "intra", "depth", "tok"], dropna=False)["value"].mean()
    means = means.reset_index()
    return means.assign(model=[model_label(m, i, d) for m, i, d in zip(means["mixer"], means["intra"],
                                                                       means["depth"])])
