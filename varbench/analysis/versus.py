"""The study's fixed tests (varbench.analysis.stats) as tables: every configuration against VAR, and the tokenizer's
share of the variance. One family per study (one records folder: one grid run with its own data and tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from varbench.analysis import stats
from varbench.analysis.format import QUALITY_NAMES, SECTION
from varbench.analysis.load import latest, model_label, numeric
from varbench.analysis.quality import KEY, quality_long, shared_tokenizer
from varbench.analysis.study import VAL_NLL, against_var, study_per_seed
from varbench.analysis.tables import finish

log = logging.getLogger(__name__)

SEEDS = "Seeds (config / VAR)"


def _study(source: str) -> str:
    return str(Path(source).parent)


def _by_study(df: pd.DataFrame, make) -> pd.DataFrame:
    """`make(records)` per study, with a leading SECTION level when there are several."""
    tables = {folder: t for folder, records in df.groupby(df["source"].map(_study), sort=True)
              if not (t := make(records)).empty}
    if not tables:
        return pd.DataFrame()
    return next(iter(tables.values())) if len(tables) == 1 else pd.concat(tables, names=[SECTION])


def versus_var(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per study, configuration and headline metric (the study's ranking quality column and the held-out NLL):
    the difference of means to VAR at the same depth and resolution with its bootstrap 95% interval over seeds,
    Welch's p and the Holm-adjusted p over the study's comparisons (see varbench.analysis.stats)."""
    table = _by_study(df, _versus_var_one)
    if table.empty:
        log.warning("versus_var: no study has VAR and another configuration with quality records over >= 2 seeds")
        return table
    return finish(table, df, [*QUALITY_NAMES, "val_nll"], device)


def _versus_var_one(records: pd.DataFrame) -> pd.DataFrame:
    per_seed, label = study_per_seed(records)
    if per_seed.empty:
        return pd.DataFrame()
    out, _ = against_var(per_seed, label)
    if out.empty:
        return out
    out.insert(0, "Model", [model_label(m, i, d) for m, i, d in zip(out["mixer"], out["intra"], out["depth"])])
    out[SEEDS] = [f"{a} / {b}" for a, b in zip(out["Seeds"], out["Ref. seeds"])]
    out = out.rename(columns={"resolution": "Resolution", "Difference": "Difference (config - VAR)",
                              "CI low": "95% CI low", "CI high": "95% CI high"})
    columns = [SEEDS, "Difference (config - VAR)", "95% CI low", "95% CI high", "p (Welch t)", "p (Holm)",
               "Significant"]
    return out.set_index(["Metric", "Model", "Resolution"])[columns].sort_index(level="Metric", sort_remaining=False)


def tokenizer_variance(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per study and headline metric, the tokenizer and seed variance components of each configuration trained on
    >= 2 tokenizers, and pooled over them (one-way random-effects ANOVA, varbench.analysis.stats)."""
    table = _by_study(df, _tokenizer_variance_one)
    if table.empty:
        log.warning("tokenizer_variance: no configuration has quality or val_nll records on >= 2 tokenizers "
                    "(records' tokenizer_id, or the tokenizer checkpoint of their config)")
        return table
    return finish(table, df, [*QUALITY_NAMES, "val_nll"], device)


def _tokenizer_variance_one(records: pd.DataFrame) -> pd.DataFrame:
    _, label = study_per_seed(records)
    long = quality_long(records, every_tokenizer=True)
    parts = {label: long[long["label"] == label]} if label else {}
    nll = latest(records, "val_nll")
    if len(nll):
        parts[VAL_NLL] = nll.assign(value=numeric(nll))
    tables = {}
    for metric, values in parts.items():
        values = values.assign(config=[model_label(m, i, d) for m, i, d in zip(*(values[k] for k in KEY[:3]))],
                               tokenizer=shared_tokenizer(values).replace("", "own or not recorded"))
        components = stats.variance_components(values[["config", "tokenizer", "value"]])
        if len(components):
            tables[metric] = components.set_index("Group")
    return pd.concat(tables, names=["Metric"]) if tables else pd.DataFrame()
