"""Quality against the guidance scale: each configuration at every scale it was evaluated at (task=evaluate's
`task.cfg`), its best scale and the study's fixed one. The other tables show the fixed scale only
(varbench.analysis.quality.fixed_guidance): a model's best scale is picked after looking, so it is shown beside the
fixed one, never instead of it."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.format import HIGHER_BETTER, QUALITY_NAMES, SECTION
from varbench.analysis.quality import KEY, fixed_guidance, guidance_key, quality_long, study_of
from varbench.analysis.tables import by_model, finish

log = logging.getLogger(__name__)

BEST, FIXED, SEEDS = "Best cfg", "Fixed cfg", "Seeds (at every cfg)"


def guidance_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per study and configuration evaluated at 2 or more guidance scales: the study's ranking quality column (the
    one most such configurations have, first of QUALITY_NAMES) as the mean over the seeds evaluated at every one of
    its scales, one column per scale; the best scale and its value ("best guidance per model", chosen after the
    fact); the study's fixed scale (the one its other tables show) and its value on the same seeds."""
    # each study's rows on their own: across studies, quality_long keeps one study per configuration and column
    long = quality_long(df, every_guidance=True) if df.empty else pd.concat(
        [quality_long(records, every_guidance=True) for _, records in df.groupby(study_of(df))])
    long = long[long["cfg"].notna()]
    if long.empty:
        log.warning("guidance_table: no quality record states its guidance scale (task=evaluate's cfg field)")
        return pd.DataFrame()
    fixed = fixed_guidance(long).assign(study=study_of).groupby("study")["cfg"].first()
    long = long.assign(study=study_of(long), cfg=guidance_key(long["cfg"]))
    scales = long.groupby(["study", *KEY, "family"], dropna=False)["cfg"].nunique()
    swept = scales[scales >= 2]
    if swept.empty:
        log.warning("guidance_table: no configuration was evaluated at 2 or more guidance scales")
        return pd.DataFrame()
    tables = {study: table for study, families in swept.groupby(level="study")
              if not (table := one_study(long[long["study"] == study], families, fixed.get(study))).empty}
    if not tables:
        log.warning("guidance_table: no seed was evaluated at 2 or more guidance scales of one configuration")
        return pd.DataFrame()
    table = pd.concat(tables, names=[SECTION]) if len(tables) > 1 else next(iter(tables.values()))
    return finish(table, df, list(QUALITY_NAMES), device)


def one_study(long: pd.DataFrame, swept: pd.Series, fixed_cfg) -> pd.DataFrame:
    """One study's rows of `guidance_table` (`swept`: its (configuration, family) pairs with several scales)."""
    counts = swept.groupby(level="family").size()
    metric_of = long.drop_duplicates("family").set_index("family")["metric"]
    family = min(counts[counts == counts.max()].index, key=lambda f: list(QUALITY_NAMES).index(metric_of[f]))
    rows = {}
    for key, g in long[long["family"] == family].groupby(KEY, dropna=False):
        per_seed = g.pivot_table(index="seed", columns="cfg", values="value").dropna()  # seeds at every scale
        if per_seed.shape[1] < 2 or per_seed.empty:
            continue
        means = per_seed.mean()
        best = means.idxmax() if family.startswith(HIGHER_BETTER) else means.idxmin()
        rows[key] = {**{f"{family} at cfg {c:g}": v for c, v in means.items()}, BEST: best,
                     f"{family} at best cfg": means[best], FIXED: fixed_cfg,
                     f"{family} at fixed cfg": means.get(fixed_cfg, float("nan")), SEEDS: len(per_seed)}
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=KEY)
    scale_columns = sorted((c for c in table.columns if " at cfg " in c), key=lambda c: float(c.rsplit(" ", 1)[1]))
    table = table[[*scale_columns, BEST, f"{family} at best cfg", FIXED, f"{family} at fixed cfg", SEEDS]]
    return by_model(table)
