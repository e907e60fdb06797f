"""Tables that answer the suite's questions from the records: which configuration ranks first and by how much
(`study_ranking`), what each configuration costs (`costs_table`, analytic), and how training scales over the GPUs of
a host (`parallel_scaling`); whether the bench protocol's goals are met is varbench.analysis.goals. The
per-configuration frames they build on are in varbench.analysis.tables."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from varbench.analysis import stats
from varbench.analysis.format import HIGHER_BETTER, QUALITY_NAMES, SECTION, STD
from varbench.analysis.load import RASTER, latest, numeric
from varbench.analysis.quality import KEY, main_tokenizer, quality_long
from varbench.analysis.tables import (
    GFLOPS,
    PARAMS,
    STATE,
    autotune_modes,
    by_model,
    config_frame,
    finish,
    kv_ratio,
    per_key,
)
from varbench.registry import VAR

log = logging.getLogger(__name__)


def parallel_scaling(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Training throughput on 1..N GPUs of one host (task=scaling): per model, parallelism and GPU count the
    images/s, the speed-up and scaling efficiency against the same model on 1 GPU, MFU and peak memory per GPU."""
    runs = df[df["metric"] == "parallel_train_images_per_s"]
    if device is not None:
        runs = runs[runs["device"] == device]
    if runs.empty:
        log.warning("parallel_scaling: no parallel_train_images_per_s records")
        return pd.DataFrame()
    runs = runs.sort_values("date", kind="stable").drop_duplicates(["model", "parallel", "world_size"], keep="last")
    single = runs[runs["world_size"] == 1].set_index("model")["value"].astype(float)
    rows = []
    for _, r in runs.iterrows():
        base = single.get(r["model"])
        rows.append({"Model": r["model"], "Parallel": r["parallel"], "GPUs": int(r["world_size"]),
                     "Batch/GPU": int(r["batch_per_gpu"]), "img/s": float(r["value"]),
                     "Speed-up": float(r["value"]) / base if base else float("nan"),
                     "Efficiency": float(r["value"]) / (base * r["world_size"]) if base else float("nan"),
                     "MFU": float(r["mfu"]),
                     "Peak mem/GPU (bytes)": max((m for m in r["peak_mem_bytes_per_gpu"] if m is not None),
                                                 default=float("nan"))})
    table = pd.DataFrame(rows).sort_values(["Model", "GPUs", "Parallel"]).set_index(["Model", "Parallel", "GPUs"])
    table.attrs.update(device=runs["device"].iloc[0] if runs["device"].nunique() == 1 else None, records=len(runs),
                       autotune=autotune_modes(runs))
    return table


LOSS_TAIL = 5  # logged train_loss values averaged per run (the end of training, less noisy than one batch)
TRAIN_LOSS = f"Train loss (last {LOSS_TAIL} logs)"
VAL_NLL = "Val NLL (nats/token)"
TRAIN_NLL = "Train NLL (nats/token)"
NLL_GAP = "NLL gap (val - train)"  # per seed: how much of the fit does not carry to held-out images


def study_ranking(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """The mixer studies: one ranking per records folder (a study is one grid run: its own tokenizer, data and
    training budget, so rows of two studies are never ranked together), with a leading "Study" index level (the
    folder) when there are several. See `rank_study` for the columns."""
    folders = df["source"].map(lambda source: str(Path(source).parent))
    tables = {folder: table for folder, records in df.groupby(folders, sort=True)
              if not (table := rank_study(records, df, device)).empty}
    if not tables:
        log.warning("study_ranking: no quality metric with 2 or more seeds")
        return pd.DataFrame()
    if len(tables) == 1:
        return next(iter(tables.values()))
    together = pd.concat(tables, names=[SECTION])[merged_columns(t.columns for t in tables.values())]
    return finish(together, df, [*QUALITY_NAMES, "train_loss"], device)


def merged_columns(orders) -> list:
    """The union of several column orders, each column placed right after its predecessor in the order that brought
    it (pd.concat appends new ones at the end: a study's own columns would trail the others')."""
    merged = []
    for columns in orders:
        previous = None
        for column in columns:
            if column not in merged:
                merged.insert(merged.index(previous) + 1 if previous is not None else 0, column)
            previous = column
    return merged


def rank_study(df: pd.DataFrame, everything: pd.DataFrame, device=None) -> pd.DataFrame:
    """One study's configurations with a quality metric over at least 2 seeds, ranked by the quality column most
    of them share (lower FD/FID first; higher accuracy first). Columns: that metric and class accuracy (mean ± std
    over seeds), the training loss at the end of training (mean of the last LOSS_TAIL logs of each run), params,
    seeds, and the gap to the best mean in units of their pooled seed std (how far apart two rows are); the held-out
    NLL (`val_nll`), the same on train images (`train_nll`) and their per-seed difference where recorded; the
    Holm-corrected Welch p-values against VAR on the ranking metric and val NLL (the same family and numbers as
    varbench.analysis.versus.versus_var); each configuration's bench cost (from `everything`, the bench's records
    being outside the study's folder)."""
    per_seed, label = study_per_seed(df)
    if per_seed.empty:
        return pd.DataFrame()
    summary = per_seed.groupby(level=KEY, dropna=False).agg(["mean", "std"])
    table = pd.concat({c: summary[c]["mean"] for c in per_seed.columns} | {f"{c}{STD}": summary[c]["std"]
                                                                        for c in per_seed.columns}, axis=1)
    params = df[(df["metric"] == "train_summary") & df["params"].notna()].drop_duplicates(KEY, keep="last")
    table[PARAMS] = params.set_index(KEY)["params"].reindex(table.index)
    table["Seeds"] = per_seed.groupby(level=KEY, dropna=False).size()
    higher_better = label.startswith(HIGHER_BETTER)
    table = table.sort_values(label, ascending=not higher_better)
    best = table.iloc[0]
    pooled = ((table[f"{label}{STD}"] ** 2 + best[f"{label}{STD}"] ** 2) / 2) ** 0.5
    name = label.split(" (")[0]
    table[f"Gap to best ({name}, seed stds)"] = (table[label] - best[label]).abs() / pooled
    # the fixed tests (varbench.analysis.stats): against VAR, never against the best row picked after the fact
    versus, metrics = against_var(per_seed, label)
    for metric in metrics:
        rows = versus[versus["Metric"] == metric].set_index(KEY)["p (Holm)"] if len(versus) else pd.Series()
        short = "val NLL" if metric == VAL_NLL else name
        table[f"p vs VAR ({short}, Welch t, Holm)"] = rows.reindex(table.index)
    table = pd.concat([table, bench_costs(everything, table.index, device)], axis=1)
    table = by_model(table)
    return finish(table, df, [*QUALITY_NAMES, "train_loss"], device)


def against_var(per_seed: pd.DataFrame, label: str) -> tuple[pd.DataFrame, list[str]]:
    """The study's fixed tests (varbench.analysis.stats.against_reference): every configuration against VAR on the
    ranking metric `label` and, where recorded, the held-out NLL, all in one Holm family (a raster model has no NLL
    in `study_per_seed`'s frame: it is not tested on it, nor counted in the family). Returns the comparisons made
    and the metrics tested."""
    metrics = [label] + ([VAL_NLL] if VAL_NLL in per_seed and per_seed[VAL_NLL].notna().any() else [])
    versus = stats.against_reference(per_seed, metrics, var_key)
    return (versus[versus["Seeds"] > 0] if len(versus) else versus), metrics  # (masked rows: no comparison)


def study_per_seed(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """One study's per-seed values (index: configuration + seed) on its main tokenizer: every quality column of
    the configurations with the ranking metric over >= 2 seeds (the quality column most of them share, first of
    QUALITY_NAMES: FID before FD), the mean of the last LOSS_TAIL training losses, and held-out / training NLL with
    their difference where recorded (none of these four for a raster model). Returns the frame and the ranking
    metric's column name."""
    long = quality_long(df)
    seeds = long.groupby([*KEY, "label"], dropna=False)["seed"].nunique()
    multi = seeds[seeds >= 2]
    if multi.empty:
        return pd.DataFrame(), None
    shared = multi.groupby(level="label").size()
    candidates = shared[shared == shared.max()].index  # of these, the first metric of QUALITY_NAMES (FID, FD, ...)
    metric_of = long.drop_duplicates("label").set_index("label")["metric"]
    label = min(candidates, key=lambda lab: list(QUALITY_NAMES).index(metric_of[lab]))
    configs = multi.xs(label, level="label").index
    long = long[pd.MultiIndex.from_frame(long[KEY]).isin(configs)]
    per_seed = long.pivot_table(index=[*KEY, "seed"], columns="label", values="value")
    per_seed = per_seed[[label, *(c for c in per_seed.columns if c != label)]]  # the ranking metric first
    loss = main_tokenizer(latest(df, "train_loss")).sort_values(["date", "step"], kind="stable")
    # a cell trained twice (its run folder again, by later code) keeps both runs' logs: the tail is the newest run's
    newest_run = loss.groupby([*KEY, "seed"], dropna=False)["commit"].transform("last")
    loss = loss[loss["commit"] == newest_run].sort_values("step", kind="stable")
    loss = loss.assign(value=numeric(loss)).groupby([*KEY, "seed"], dropna=False)["value"]
    loss = loss.apply(lambda v: v.tail(LOSS_TAIL).mean())
    per_seed[TRAIN_LOSS] = loss.reindex(per_seed.index)
    for metric, column in (("val_nll", VAL_NLL), ("train_nll", TRAIN_NLL)):  # task=evaluate's, where recorded
        nll = main_tokenizer(latest(df, metric))
        if len(nll):
            per_seed[column] = nll.assign(value=numeric(nll)).groupby([*KEY, "seed"], dropna=False)["value"].last()
    if {VAL_NLL, TRAIN_NLL} <= set(per_seed):
        per_seed[NLL_GAP] = per_seed[VAL_NLL] - per_seed[TRAIN_NLL]
    # a raster model's loss and NLL are per token of another token sequence (another tokenizer's single scale): not
    # in a column beside the scale-wise models', nor in a test against VAR's
    per_token = [c for c in (TRAIN_LOSS, VAL_NLL, TRAIN_NLL, NLL_GAP) if c in per_seed]
    per_seed.loc[per_seed.index.get_level_values("intra") == RASTER, per_token] = float("nan")
    return per_seed, label



def var_key(key) -> tuple:
    """VAR's configuration key (attention, no intra) at the depth and resolution of `key`: the study's reference."""
    return (*VAR, *key[2:])

# the bench columns the study's ranking shows as each configuration's cost: (bench column, name in the ranking)
COST_COLUMNS = (("Train img/s (b32)", "d16 train img/s (b32, 256 px)"),
                ("Latency b64 (ms)", "d16 latency b64 (ms, 256 px)"))


def bench_costs(df: pd.DataFrame, configs: pd.Index, device=None) -> pd.DataFrame:
    """What each (mixer, intra) of `configs` costs at the bench's shapes (depth 16, 256 px, task=bench): training
    img/s and sampling latency, from the timings of one GPU; missing where that configuration was not benched."""
    frame = config_frame(df, device)
    keys = configs.to_frame(index=False)
    at_bench = pd.MultiIndex.from_arrays([keys["mixer"], keys["intra"], [16] * len(keys), [256] * len(keys)])
    out = pd.DataFrame(index=configs)
    for column, name in COST_COLUMNS:
        values = frame[column].reindex(at_bench) if column in frame.columns else [float("nan")] * len(keys)
        out[name] = list(values)
    return out


def costs_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per model x resolution (task=costs, analytic): params, forward / training / tokenizer-decode GFLOPs per image,
    inference state bytes per image and its ratio to VAR's KV cache at the same depth and resolution."""
    costs = latest(df, "analytic_cost")
    if costs.empty:
        log.warning("costs_table: no analytic_cost records (task=costs)")
        return pd.DataFrame()
    parts = [per_key(costs, "params", PARAMS), per_key(costs, "value", GFLOPS, 1e-9),
             per_key(costs, "train_flops_per_image", "Train GFLOPs/img", 1e-9),
             per_key(costs, "decode_flops_per_image", "Decode GFLOPs/img", 1e-9),
             per_key(costs, "state_bytes_per_image", STATE)]
    table = pd.concat(parts, axis=1)
    table.index.names = KEY
    table = table.assign(**{"State / KV cache": kv_ratio(table[STATE])})
    table = by_model(table).sort_index(level=["Model", "Resolution"])
    return finish(table, df, ["analytic_cost"], None)
