"""The floors of each study's quality metrics (issue 19 item 4): real images of another split against the reference
(`<metric>_floor`: what a perfect generator would score at that sample count) and the tokenizer's reconstructions
of those images (`<metric>_recon`: what a perfect generator over that tokenizer would score), beside the study's
best configuration and VAR, so that a distance is read against the distances it cannot go below. Every evaluation
of a study records the same two rows (task=evaluate; `task.feature_cache` computes them once per data set), on the
study's main tokenizer."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.format import HIGHER_BETTER, QUALITY_NAMES, SECTION
from varbench.analysis.load import model_label
from varbench.analysis.quality import main_tokenizer, quality_label, quality_long, study_of
from varbench.analysis.tables import finish

log = logging.getLogger(__name__)

KINDS = {"_floor": "Real vs real (floor)", "_recon": "Tokenizer reconstructions"}


def floor_records(df: pd.DataFrame) -> pd.DataFrame:
    """The `<metric>_floor` / `<metric>_recon` records of the quality metrics, with their study, base metric, kind
    and label (the base metric's, without a sample count: the floors count their own real images)."""
    rows = df[df["metric"].str.endswith(tuple(KINDS))]
    rows = rows.assign(base=rows["metric"].str.rsplit("_", n=1).str[0], kind=rows["metric"].str[-6:].map(KINDS))
    rows = main_tokenizer(rows[rows["base"].isin(QUALITY_NAMES)])
    labels = [quality_label(b, e) for b, e in zip(rows["base"], rows["feature_extractor"])]
    return rows.assign(study=study_of(rows), label=labels)


def floors_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per study and metric: the floor and reconstruction values (the median of the study's records: they agree),
    the real images' count, and the mean over seeds of the study's best configuration and of VAR on that metric
    (the quality tables' values: fixed guidance, main tokenizer)."""
    rows = floor_records(df)
    if rows.empty:
        log.warning("floors_table: no <metric>_floor / <metric>_recon records (task=evaluate writes them)")
        return pd.DataFrame()
    table = rows.pivot_table(index=["study", "base", "label", "num_samples"], columns="kind", values="value",
                             aggfunc="median")
    table = table.reset_index("num_samples").rename(columns={"num_samples": "Real images (n)"})
    means = configuration_means(df)
    for (study, base, label), _ in table.iterrows():
        ours = means[(means["study"] == study) & (means["metric"] == base)]
        if ours.empty:
            continue
        higher_better = QUALITY_NAMES[base] in HIGHER_BETTER
        best = ours.loc[ours["value"].idxmax() if higher_better else ours["value"].idxmin()]
        var = ours[(ours["mixer"] == "attention") & (ours["intra"] == "none")]
        table.loc[(study, base, label), ["Best configuration", "Best (mean over seeds)", "VAR (mean over seeds)"]] = [
            best["model"], best["value"], var["value"].iloc[0] if len(var) else float("nan")]
    first = [k for k in KINDS.values() if k in table]
    table = table[first + [c for c in table if c not in first]]
    table = table.droplevel("base").rename_axis([SECTION, "Metric"]).rename_axis(columns=None)
    return finish(table, df, [f"{m}{k}" for m in QUALITY_NAMES for k in KINDS], device)


def configuration_means(df: pd.DataFrame) -> pd.DataFrame:
    """The mean over seeds of each configuration's quality metrics, per study (one row per study, configuration and
    metric; `model` its label)."""
    # one study at a time: quality_long keeps a configuration run by several studies in the newest one only
    long = pd.concat([quality_long(records).assign(study=study) for study, records in df.groupby(study_of(df))])
    if long.empty:
        return pd.DataFrame(columns=["study", "metric", "mixer", "intra", "model", "value"])
    means = long.groupby(["study", "metric", "mixer", "intra", "depth"], dropna=False)["value"].mean().reset_index()
    return means.assign(model=[model_label(m, i, d) for m, i, d in zip(means["mixer"], means["intra"],
                                                                       means["depth"])])
