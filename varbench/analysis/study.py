"""Tables that answer the suite's questions from the records: which configuration ranks first and by how much
(`study_ranking`), whether the bench protocol's goals are met (`bench_goals`), what each configuration costs
(`costs_table`, analytic), and how training scales over the GPUs of a host (`parallel_scaling`). The per-configuration
frames they build on are in varbench.analysis.tables."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from varbench.analysis import stats
from varbench.analysis.format import HIGHER_BETTER, QUALITY_NAMES, SECTION, STD
from varbench.analysis.load import latest, numeric
from varbench.analysis.quality import KEY, main_tokenizer, quality_long
from varbench.analysis.tables import (
    GFLOPS,
    PARAMS,
    SPEED,
    STATE,
    TOKEN_MFU,
    autotune_modes,
    by_model,
    config_frame,
    finish,
    kv_ratio,
    per_key,
)

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
    metrics = [label] + ([VAL_NLL] if VAL_NLL in table and table[VAL_NLL].notna().any() else [])
    versus = stats.against_reference(per_seed, metrics, var_key)
    for metric in metrics:
        rows = versus[versus["Metric"] == metric].set_index(KEY)["p (Holm)"] if len(versus) else pd.Series()
        short = "val NLL" if metric == VAL_NLL else name
        table[f"p vs VAR ({short}, Welch t, Holm)"] = rows.reindex(table.index)
    table = pd.concat([table, bench_costs(everything, table.index, device)], axis=1)
    table = by_model(table)
    return finish(table, df, [*QUALITY_NAMES, "train_loss"], device)


def study_per_seed(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """One study's per-seed values (index: configuration + seed) on its main tokenizer: every quality column of
    the configurations with the ranking metric over >= 2 seeds (the quality column most of them share, first of
    QUALITY_NAMES: FID before FD), the mean of the last LOSS_TAIL training losses, and held-out / training NLL with
    their difference where recorded. Returns the frame and the ranking metric's column name."""
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
    loss = main_tokenizer(df[df["metric"] == "train_loss"]).sort_values("step", kind="stable")
    loss = loss.assign(value=numeric(loss)).groupby([*KEY, "seed"], dropna=False)["value"]
    loss = loss.apply(lambda v: v.tail(LOSS_TAIL).mean())
    per_seed[TRAIN_LOSS] = loss.reindex(per_seed.index)
    for metric, column in (("val_nll", VAL_NLL), ("train_nll", TRAIN_NLL)):  # task=evaluate's, where recorded
        nll = main_tokenizer(latest(df, metric))
        if len(nll):
            per_seed[column] = nll.assign(value=numeric(nll)).groupby([*KEY, "seed"], dropna=False)["value"].last()
    if {VAL_NLL, TRAIN_NLL} <= set(per_seed):
        per_seed[NLL_GAP] = per_seed[VAL_NLL] - per_seed[TRAIN_NLL]
    return per_seed, label



def var_key(key) -> tuple:
    """VAR's configuration key (attention, no intra) at the depth and resolution of `key`: the study's reference."""
    return ("attention", "none", *key[2:])

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


# The speed / memory goals of the bench protocol: (goal, target, higher is better). Targets, not measurements.
# The two sampling goals are reported for each sampler mode (eager, CUDA graphs) with the tokenizer decode in the
# latency and without it (the decode is the same call for both sides of each ratio).
SAMPLING_MODES = (("", ""), (", graphs", ", CUDA graphs"))
DECODE_MODES = (("Latency", ""), ("W/o decode", ", decode excluded"))
SAMPLING_GOALS = (("M-VAR-d16 sampling: prefix re-run / carried state latency (b64, 256 px{})", 1.3, True),
                  ("M-VAR-d16 / VAR-d16 sampling latency, carried state vs KV cache (b64, 256 px{})", 1.2, False))
GOALS = (("VAR-d16 training MFU (b32, 256 px)", 0.55, True),
         ("VAR-d16 training MFU under torch.compile (b32, 256 px)", 0.55, True),
         # the same step with AdaLN's FLOPs counted per token, as the 47% reference counts them
         ("VAR-d16 training MFU under torch.compile, AdaLN FLOPs per token (b32, 256 px)", 0.55, True),
         # the reference: a plain PyTorch stack on an H200 (its 47% MFU counts AdaLN FLOPs per token, ours
         # per image, so its images/s is the comparable number)
         ("VAR-d16 training img/s under torch.compile (b32, 256 px; plain-stack reference on an H200)", 284, True),
         ("M-VAR-d16 / VAR-d16 training throughput (b32, 256 px)", 0.7, True),
         ("M-VAR-d16 / VAR-d16 training throughput under torch.compile (b32, 256 px)", 0.7, True),
         *((goal.format(graphs_name + decode_name), target, higher) for goal, target, higher in SAMPLING_GOALS
           for _, graphs_name in SAMPLING_MODES for _, decode_name in DECODE_MODES),
         ("inference state / VAR's KV cache at 1024 px (worst linear mixer)", 0.25, False))
# issue 18's goals against the official code, measured on the same H200 kind with one harness
# (../shared/reference/peer_speed.md: official VAR-d16 trains 199 img/s and M-VAR-d16 98 at b32; they sample b64 in
# 453 / 820 ms and b1 in 123 / 424 ms eager; VAR's sampling peaks at 12.0 GiB allocated at b64): (goal, target,
# higher is better, configuration, bench column, scale of the column). A column ending in FASTEST reads the fastest
# of the columns it begins: the graphed latencies in every decode mode, fused or not (each a varbench setting the
# table names in "Read from")
VAR, MVAR = ("attention", "none", 256), ("mamba2", "full", 256)
FASTEST = " (fastest mode)"
OFFICIAL_GOALS = (
    ("VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)", 500, True, VAR,
     "Train img/s (b32, compiled)", 1),
    ("M-VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)", 250, True, MVAR,
     "Train img/s (b32, compiled)", 1),
    ("VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 1.5x the official)", 300, False, VAR,
     "Latency b64, graphs" + FASTEST, 1),
    ("M-VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 2x the official)", 410, False, MVAR,
     "Latency b64, graphs" + FASTEST, 1),
    ("VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)", 40, False, VAR, "Latency b1, graphs" + FASTEST, 1),
    ("M-VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)", 40, False, MVAR, "Latency b1, graphs" + FASTEST, 1),
    ("VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)", 123.4, False, VAR, "Latency b1 (ms)", 1),
    ("VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)", 452.8, False, VAR, "Latency b64 (ms)", 1),
    ("M-VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)", 424.4, False, MVAR, "Latency b1 (ms)", 1),
    ("M-VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)", 819.9, False, MVAR, "Latency b64 (ms)", 1),
    ("VAR-d16 eager sampling peak memory allocated (b64, 256 px, GiB; the official's)", 12.0, False, VAR,
     "Peak mem b64 (bytes)", 2 ** -30),
    # the decode's activations hold most of that peak: the same, decoding 16 images per call (task.decode_batch=16)
    ("VAR-d16 eager sampling peak memory allocated, 16 images per decode call (b64, 256 px, GiB; the official's)",
     12.0, False, VAR, "Peak mem b64, decode by 16 (bytes)", 2 ** -30))


def bench_goals(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Each goal of GOALS and OFFICIAL_GOALS with the measured value (from the bench records of one GPU), whether it
    is met, by how much it is missed, as a fraction of the target (1 - measured / target, or measured / target - 1),
    and for OFFICIAL_GOALS the bench column it was read from (for the graphed latencies, the fastest mode's)."""
    frame = config_frame(df, device, samplers=("carry", "prefix_rerun"))
    if frame.empty:
        log.warning("bench_goals: no bench records")
        return frame

    def cell(mixer, intra, res, column):
        key = (mixer, intra, 16, res)
        return frame.at[key, column] if key in frame.index and column in frame.columns else float("nan")

    def official(mixer, intra, res, column):  # (value, the column it was read from)
        if not column.endswith(FASTEST):
            return cell(mixer, intra, res, column), column
        prefix = column.removesuffix(FASTEST)
        values = {c: cell(mixer, intra, res, c) for c in frame.columns
                  if c.endswith(" (ms)") and (c == prefix + " (ms)" or c.startswith(prefix + ", "))}
        values = {c: v for c, v in values.items() if not pd.isna(v)}
        return (min(values.values()), min(values, key=values.get)) if values else (float("nan"), "")

    costs = latest(df, "analytic_cost")  # analytic state bytes of every mixer (task=costs), else the bench's own
    state = per_key(costs, "state_bytes_per_image", STATE) if len(costs) else frame.get(STATE, pd.Series(dtype=float))
    kv = state.iloc[:0]
    if len(state):  # without state records there is no index to select from
        state = state[(state.index.get_level_values("resolution") == 1024)
                      & (state.index.get_level_values("depth") == 16)]
        kv = state[state.index.get_level_values("mixer") == "attention"]
        state = state[state.index.get_level_values("mixer") != "attention"]
    measured = [cell(*VAR, "MFU (b32)"), cell(*VAR, "MFU (b32, compiled)"),
                cell(*VAR, f"{TOKEN_MFU} (b32, compiled)"), cell(*VAR, "Train img/s (b32, compiled)"),
                cell(*MVAR, "Train img/s (b32)") / cell(*VAR, "Train img/s (b32)"),
                cell(*MVAR, "Train img/s (b32, compiled)") / cell(*VAR, "Train img/s (b32, compiled)")]
    for ratio in ("rerun", "vs VAR"):  # in SAMPLING_GOALS' order, then its modes' order
        for graphs_tag, _ in SAMPLING_MODES:
            for column, _ in DECODE_MODES:
                carry = cell(*MVAR, f"{column} b64{graphs_tag} (ms)")
                measured.append(cell(*MVAR, f"{column} b64 prefix_rerun{graphs_tag} (ms)") / carry if ratio == "rerun"
                                else carry / cell(*VAR, f"{column} b64{graphs_tag} (ms)"))
    measured.append((state.max() / kv.iloc[0]) if len(state) and len(kv) else float("nan"))
    read = [official(*key, column) for *_, key, column, _ in OFFICIAL_GOALS]
    measured += [value * scale for (value, _), (*_, scale) in zip(read, OFFICIAL_GOALS)]
    sources = [""] * len(GOALS) + [column for _, column in read]
    rows = []
    goals = GOALS + tuple(goal[:3] for goal in OFFICIAL_GOALS)
    for (goal, target, higher), value, source in zip(goals, measured, sources, strict=True):
        met = value >= target if higher else value <= target
        # the shortfall as a fraction of the target
        missed = float("nan")
        if not pd.isna(value) and not met:
            missed = 1 - value / target if higher else value / target - 1
        rows.append({"Goal": goal, "Target": f"{'≥' if higher else '≤'} {target:g}", "Measured": value,
                     "Met": "—" if pd.isna(value) else ("yes" if met else "no"), "Missed by": missed,
                     "Read from": source if not pd.isna(value) else ""})
    table = pd.DataFrame(rows).set_index("Goal")
    return finish(table, df, SPEED, frame.attrs["device"])


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
