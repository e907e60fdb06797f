"""The quality records of a study as rows: one per (configuration, seed, quality column), on the study's main
tokenizer. Quality columns name their feature extractor: "FID" is kept for Inception-v3 features, a Frechet distance
in any other feature space is an "FD" (likewise KID / KD)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from varbench.analysis.format import QUALITY_NAMES
from varbench.analysis.load import latest, numeric

log = logging.getLogger(__name__)

KEY = ["mixer", "intra", "depth", "resolution"]  # one configuration


def extractor_label(extractor) -> str:
    """Short name of a recorded feature extractor ("inception-v3 (torch-fidelity)" -> "Inception")."""
    if extractor is None or pd.isna(extractor):
        log.warning("a quality record has no feature_extractor field; its column says so")
        return "extractor not recorded"
    low = str(extractor).lower()
    if "inception" in low:
        return "Inception"
    if "embedded" in low or "classifier" in low:
        return "embedded classifier"
    return str(extractor)


# each model family's own metric sampler (varbench.eval.sampling): VAR's "eval" for scale-wise models, AiM's for raster
# ones. One column holds both, each family sampled its own way at the guidance scale the column names (the question
# "are scales needed" compares the two families as their papers evaluate them); any other preset ("vis") is named.
METRIC_PRESETS = ("eval", "aim_b", "aim")


def quality_label(metric: str, extractor, num_samples=None, preset=None, cfg=None) -> str:
    """Column name of a quality metric, e.g. "FID (Inception, 50k)", "FD (embedded classifier, 1k, cfg 1.5)": the
    guidance scale where the record states it (task=evaluate's `cfg` field; older records do not), and the sampling
    preset unless it is a family's metric preset (METRIC_PRESETS)."""
    ext = extractor_label(extractor)
    name = QUALITY_NAMES[metric]
    if name in ("FID", "KID") and ext != "Inception":
        # FID / KID mean Inception-v3 features; the same distance in another feature space is an FD / KD
        name = name.replace("I", "", 1)
    parts = [ext]
    if num_samples is not None and not pd.isna(num_samples):
        n = int(num_samples)
        parts.append(f"{n // 1000}k" if n % 1000 == 0 else str(n))
    if preset is not None and not pd.isna(preset) and preset not in METRIC_PRESETS:
        parts.append(str(preset))
    if cfg is not None and not pd.isna(cfg):
        parts.append(f"cfg {float(cfg):g}")
    return f"{name} ({', '.join(parts)})"


def quality_long(df: pd.DataFrame, every_tokenizer: bool = False, every_guidance: bool = False) -> pd.DataFrame:
    """One row per (configuration, seed, quality column): the value `latest` picks, all of one study, on the
    study's main tokenizer (`main_tokenizer`) and at its fixed guidance (`fixed_guidance`); with `every_tokenizer`,
    one row per tokenizer too; with `every_guidance`, every guidance scale evaluated (each its own column: the
    label names the scale). `family` is the label without the guidance scale."""
    q = latest(df, QUALITY_NAMES)
    described = list(zip(q["metric"], q["feature_extractor"], q["num_samples"], q["preset"]))
    q = q.assign(label=[quality_label(*a, cfg=c) for a, c in zip(described, q["cfg"])],
                 family=[quality_label(*a) for a in described], value=numeric(q) if len(q) else q["value"])
    q = one_study(q, [*KEY, "label"])
    q = q if every_tokenizer else main_tokenizer(q)
    q = q if every_guidance else fixed_guidance(q)
    unique = [*KEY, "label", "seed"] + (["tokenizer_id"] if every_tokenizer else [])
    q = without_lr_sweeps(q, unique)
    q = q.sort_values("date", kind="stable").drop_duplicates(unique, keep="last")
    return q[[*KEY, "seed", "cell_id", "tokenizer_id", "source", "metric", "label", "family", "cfg", "value",
              "date"]]


def without_lr_sweeps(q: pd.DataFrame, unique: list[str]) -> pd.DataFrame:
    """`q` without the cells of a learning-rate sweep (grid=study_lr): one configuration and seed at several
    `train.base_lr` measure the rate, not the configuration, and keeping the newest would silently show one rate's
    result as the configuration's. `varbench.analysis.best_lr` reads them; the left-out configurations are logged."""
    rates = q.groupby(unique, dropna=False)["base_lr"].transform("nunique")
    swept = q[rates > 1]
    if len(swept):
        log.warning("quality tables leave out %d records of learning-rate sweeps (%s): best_lr reads them",
                    len(swept), sorted(set(swept["model"].dropna())))
    return q[rates <= 1]


def study_of(records: pd.DataFrame) -> pd.Series:
    """Per record, its study: the records folder it was read from (one grid run)."""
    return records["source"].map(lambda source: str(Path(source).parent))


def guidance_key(cfg: pd.Series) -> pd.Series:
    """Guidance scales as comparable keys: "" where the record states none (records before task.cfg existed)."""
    return cfg.map(lambda c: "" if c is None or pd.isna(c) else float(c))


def fixed_guidance(records: pd.DataFrame) -> pd.DataFrame:
    """The quality records of each study at its fixed guidance: the scale most of the study's quality records were
    sampled with (the grid's own; a `task.cfg` re-evaluation of a few cells adds other scales, which the tables
    never average with it). A tie goes to records without a scale, then to the smaller scale (with a warning)."""
    if records.empty:
        return records
    study, key = study_of(records), guidance_key(records["cfg"])
    fixed = {}
    for name, keys in key.groupby(study):
        counts = keys.value_counts()
        top = sorted(counts[counts == counts.max()].index, key=lambda c: (c != "", c or 0.0))
        if len(top) > 1:
            log.warning("study %s: guidance scales %s have as many quality records each; its tables show cfg %s",
                        name, top, top[0])
        fixed[name] = top[0]
    return records[key.to_numpy() == study.map(fixed).to_numpy()]


def shared_tokenizer(records: pd.DataFrame) -> pd.Series:
    """Per record, the frozen tokenizer it shares with other cells of its study (`tokenizer_id`), or "" for a
    tokenizer of its own: a grid that trains one tokenizer per cell has no second tokenizer on any configuration,
    just one per seed (their spread is part of the seed variance)."""
    study = study_of(records)
    tok = records["tokenizer_id"].fillna("")
    cells = records["cell_id"].fillna(records.index.to_series().astype(str))
    shared = cells.groupby([study, tok]).transform("nunique") > 1
    return tok.where(shared, "")


def main_tokenizer(records: pd.DataFrame) -> pd.DataFrame:
    """The records of each configuration on its study's main tokenizer: where a configuration was trained on
    several (the tokenizer-variance cells), the one most of the study's records use (ties: the first in sort
    order); a configuration with one tokenizer keeps it (a grid that trains one tokenizer per cell)."""
    if records.empty:
        return records
    frame = records[KEY].astype(object).fillna("").assign(
        study=study_of(records), tok=shared_tokenizer(records))
    frame["uses"] = frame.groupby("study")["tok"].transform(lambda t: t.map(t.value_counts()))
    chosen = frame.sort_values(["uses", "tok"], ascending=[False, True], kind="stable")
    chosen = chosen.drop_duplicates(["study", *KEY]).set_index(["study", *KEY])["tok"]
    picked = chosen.reindex(pd.MultiIndex.from_frame(frame[["study", *KEY]])).to_numpy()
    return records[frame["tok"].to_numpy() == picked]


def one_study(q: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys`, only the records of one study (one records folder: a grid run with its own tokenizer and data),
    the one with the newest record: seeds are never pooled across studies, nor a missing seed filled from another."""
    if q.empty:
        return q
    q = q.assign(_study=study_of(q))
    newest = q.groupby([*keys, "_study"], dropna=False)["date"].transform("max")
    chosen = q.assign(_newest=newest).sort_values("_newest", kind="stable").groupby(keys, dropna=False)["_study"]
    return q[q["_study"] == chosen.transform("last").reindex(q.index)].drop(columns="_study")
