"""The tables of the study, computed from the records only (no number is typed by hand).

Every function takes the DataFrame of `load_records` and returns a DataFrame of raw recorded values (rounding
happens only when a table is written, varbench.analysis.format). One configuration is (mixer, intra, depth,
resolution); of repeated measurements the one `load.POLICY` picks counts (`latest`: never disturbed or superseded,
fully tuned before untuned, then the newest; a table's row says which machine and autotune mode timed it). The
quality rows they draw from (one per configuration, seed and quality column) are varbench.analysis.quality's.
`df.attrs` carries `device` (the GPU the timings come from) and `records` (how many records fed the table).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from varbench.analysis.format import QUALITY_NAMES, STD, is_quality
from varbench.analysis.load import latest, model_label, numeric, preference_order
from varbench.analysis.quality import KEY, quality_long, study_of
from varbench.registry import VAR

log = logging.getLogger(__name__)

TIMED = ("train_images_per_s", "sample_latency_ms")
SPEED = (*TIMED, "state_bytes_per_image")
STATE = "State (bytes/img)"
TOKEN_MFU = "AdaLN-per-token MFU"  # not "MFU ...": the main table shows the project's own convention only
PARAMS, GFLOPS = "Params", "Fwd GFLOPs/img"


def quality_wide(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: mean and std over seeds of every quality column, and the number of seeds."""
    # one study at a time (quality_long keeps a configuration run by several studies in the newest one only), and a
    # column whose rows come from several studies (other data, tokenizer or budget: FID-5k of CIFAR-10 beside the
    # procedural matched-FLOPs study's) split into one per study, named by it: a column never mixes studies
    long = pd.concat([quality_long(records).assign(_study=Path(study).name)
                      for study, records in df.groupby(study_of(df))]) if len(df) else quality_long(df)
    if long.empty:
        return pd.DataFrame()
    several = long.groupby("label")["_study"].transform("nunique") > 1
    long = long.assign(label=long["label"].where(~several, long["label"] + " [" + long["_study"] + "]"))
    agg = long.groupby([*KEY, "label"], dropna=False)["value"].agg(["mean", "std", "count"])
    order = long.drop_duplicates("label").assign(rank=lambda d: d["metric"].map(list(QUALITY_NAMES).index))
    labels = list(order.sort_values(["rank", "label"])["label"])
    mean, std = agg["mean"].unstack("label")[labels], agg["std"].unstack("label")[labels].add_suffix(STD)
    seeds = agg["count"].groupby(level=KEY, dropna=False).max().rename("Seeds")
    return pd.concat([mean, std, seeds], axis=1)


def timing_device(df: pd.DataFrame, device=None):
    """The GPU whose timings a table shows: `device`, or the one that ran most of them (logged if several)."""
    counts = latest(df, TIMED)["device"].value_counts()
    if device is not None and device not in counts:
        log.warning("no timings on device %r; recorded devices: %s", device, list(counts.index))
    if device is not None or counts.empty:
        return device
    if len(counts) > 1:
        log.warning("timings from several devices %s; tables show %s (pass device= to pick)", dict(counts),
                    counts.index[0])
    return counts.index[0]


def per_key(g: pd.DataFrame, column: str, name: str, scale: float = 1.0, quiet: bool = False,
            picked: list | None = None) -> pd.Series:
    """One value per configuration (the one `load.POLICY` picks), as a Series named `name`; `quiet` when repeats
    are expected (every bench record of a configuration states its params). The records picked are appended to
    `picked` (with a `column` field naming `name`) when given."""
    g = preference_order(g[g[column].notna()])
    dup = g.duplicated(KEY, keep="last")
    if dup.any() and not quiet:
        log.warning("%s: %d other records of the same configuration ignored (other seeds/cells)", name, dup.sum())
    g = g[~dup]
    if picked is not None:
        picked.append(g.assign(column=name))
    return pd.Series(numeric(g, column).to_numpy() * scale, index=pd.MultiIndex.from_frame(g[KEY]), name=name)


def adaln_per_token_mfu(train: pd.DataFrame) -> pd.Series:
    """Each training record's MFU with AdaLN's FLOPs counted once per token, as the issue's plain-stack reference
    counts them, instead of once per image (what the model computes: one modulation per image, broadcast over its
    L tokens). NaN for records without `flops_by_component` and `L`."""
    def one(rec) -> float:
        flops = rec["flops_by_component"]
        if not isinstance(flops, dict) or pd.isna(rec["L"]):
            return float("nan")
        return float(rec["mfu"]) * (flops["total"] + (rec["L"] - 1) * flops["adaln"]) / flops["total"]
    return train.apply(one, axis=1) if len(train) else pd.Series(dtype=float)


def speed_wide(df: pd.DataFrame, device=None, samplers=("carry",)) -> pd.DataFrame:
    """Per configuration: params, forward GFLOPs, train img/s + MFU per batch, sample latency + peak memory per
    batch and sampler (timings of one device), state bytes per image."""
    device = timing_device(df, device)
    timed = latest(df, TIMED)
    timed = timed[(timed["device"] == device) & timed["system"].isna()]  # the official code's: no configuration here
    parts = []
    sized = latest(df, [*SPEED, "train_summary"])  # the models that were timed or trained (not task=costs' grid)
    sized = sized[sized["params"].notna()]
    if len(sized):
        parts += [per_key(sized, "params", PARAMS, quiet=True),
                  per_key(sized, "fwd_flops_per_image", GFLOPS, 1e-9, quiet=True)]
    train, picked = timed[timed["metric"] == "train_images_per_s"], []
    for (batch, compiled, mode, scope, recipe, dtype), g in train.groupby(["batch", "compiled", "compile_mode",
                                                                            "compile_scope", "fp8_recipe",
                                                                            "param_dtype"]):
        tag = (f"b{batch:g}" + (", compiled" if compiled else "") + (" by blocks" if scope == "blocks" else "")
               + (f" {mode}" if mode not in ("default", "none") else "")
               + {"none": "", "tensorwise": ", fp8 matmuls"}.get(recipe, f", fp8 matmuls {recipe}")
               + (f", {dtype} weights" if dtype != "fp32" else ""))
        parts += [per_key(g, "value", f"Train img/s ({tag})", picked=picked), per_key(g, "mfu", f"MFU ({tag})"),
                  per_key(g.assign(token_mfu=adaln_per_token_mfu(g)), "token_mfu", f"{TOKEN_MFU} ({tag})")]
    sample = timed[(timed["metric"] == "sample_latency_ms") & timed["sampler"].isin(samplers)]
    modes = ["sampler", "batch", "cuda_graphs", "fused_elementwise", "decode_mode", "decode_batch", "block_weights"]
    for (sampler, batch, graphs, fused, decode, chunk, weights), g in sample.groupby(modes):
        tag = (f"b{batch:g}" + ("" if sampler == "carry" else f" {sampler}") + (", graphs" if graphs else "")
               + (", fused" if fused else "") + ("" if decode == "eager" else f", {decode} decode")
               + (f", decode by {chunk:g}" if chunk else "") + (f", {weights} blocks" if weights != "fp32" else ""))
        # a replayed graph writes into its private pool without allocating: only the reserved peak counts it
        memory = ("peak_reserved_bytes", f"Peak reserved {tag} (bytes)") if graphs else \
            ("peak_mem_bytes", f"Peak mem {tag} (bytes)")
        parts += [per_key(g, "value", f"Latency {tag} (ms)", picked=picked), per_key(g, *memory),
                  per_key(g, "latency_wo_decode_ms", f"W/o decode {tag} (ms)")]
    state = latest(df, "state_bytes_per_image")
    if len(state):
        parts.append(per_key(state, "value", STATE))
    if picked:
        parts.append(timing_source(pd.concat(picked)))
    out = pd.concat(parts, axis=1) if parts else pd.DataFrame()
    out.attrs["device"] = device
    return out


TIMED_ON = "Timed on (autotune)"


def timing_source(picked: pd.DataFrame) -> pd.Series:
    """Per configuration, the machine and Triton autotune mode of the timings its row shows, e.g.
    "nvidia-h200-x4, full"; where they differ, each with the columns it gave ("nvidia-h200, full: Train img/s
    (b32); nvidia-h200-x4, first: Latency b1 (ms)")."""
    source = (picked["machine"].fillna("machine not stamped") + ", "
              + picked["autotune"].fillna("no autotune recorded"))
    picked = picked.assign(source=source)

    def describe(g: pd.DataFrame) -> str:
        if g["source"].nunique() == 1:
            return g["source"].iloc[0]
        return "; ".join(f"{src}: {', '.join(cols['column'])}" for src, cols in g.groupby("source", sort=True))
    rows = {key: describe(g) for key, g in picked.groupby(KEY, dropna=False)}
    return pd.Series(rows, name=TIMED_ON, dtype=object).rename_axis(KEY)


def config_frame(df: pd.DataFrame, device=None, samplers=("carry",)) -> pd.DataFrame:
    """Every recorded configuration with every number the tables draw from (index: mixer, intra, depth, res)."""
    speed, quality = speed_wide(df, device, samplers), quality_wide(df)
    frames = [f for f in (speed, quality) if not f.empty]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, axis=1).sort_index()
    out.index.names = KEY
    out.attrs["device"] = speed.attrs.get("device")
    return out


def _select(frame: pd.DataFrame, tests) -> pd.DataFrame:
    """The columns that pass each test, in the order of the tests."""
    cols = [c for test in tests for c in frame.columns if test(c)]
    return frame[list(dict.fromkeys(cols))]


def by_model(frame: pd.DataFrame) -> pd.DataFrame:
    """Index (Model, Resolution), e.g. ("VAR-d16", 256)."""
    keys = frame.index.to_frame(index=False)
    models = [model_label(m, i, d) for m, i, d in zip(keys["mixer"], keys["intra"], keys["depth"])]
    out = frame.set_axis(pd.MultiIndex.from_arrays([models, keys["resolution"]], names=["Model", "Resolution"]))
    return out.sort_index(level="Resolution", sort_remaining=False, kind="stable")


def autotune_modes(records: pd.DataFrame) -> dict[str, int]:
    """How many of these records' timings ran under each Triton autotuning mode (`versions.triton_autotune`)."""
    timed = records[records["metric"].isin([*TIMED, "parallel_train_images_per_s"])]
    return dict(Counter(m for v in timed["versions"] if (m := (v or {}).get("triton_autotune"))))


def finish(table: pd.DataFrame, df: pd.DataFrame, metrics, device) -> pd.DataFrame:
    """Attach what the report's note says: the timing device, how many records the table drew from, under which
    Triton autotuning modes its timings ran, and on which machines."""
    records = latest(df, metrics)
    on_device = records if device is None else records[records["device"] == device]
    table.attrs.update(device=device, records=len(records), autotune=autotune_modes(on_device),
                       machines=timing_machines(on_device))
    return table


def timing_machines(records: pd.DataFrame) -> dict[str, int]:
    """How many of these records' timings came from each machine (the `machine` field the import of a device call
    adds; "unstamped" where none): small-batch latency is bound by the host's CPU, so it compares within one."""
    return dict(Counter(records.loc[records["metric"].isin(TIMED), "machine"].fillna("unstamped")))


def main_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per model: params, forward GFLOPs/img, quality (mean over seeds, +- std), train img/s, MFU, sampling
    latency per batch (carried-state sampler), inference state bytes per image."""
    frame = config_frame(df, device)
    if frame.empty:
        log.warning("main_table: no speed or quality records")
        return frame
    table = _select(frame, [lambda c: c in (PARAMS, GFLOPS), lambda c: is_quality(c.removesuffix(STD)),
                            lambda c: c.startswith(("Train", "MFU", "Latency")), lambda c: c == STATE,
                            lambda c: c == TIMED_ON])
    return finish(by_model(table), df, [*SPEED, *QUALITY_NAMES], frame.attrs["device"])


def mixer_ablation(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per (mixer, intra, depth, resolution): quality mean +- std over seeds and the seed count, train img/s,
    sampling latency and peak memory, inference state bytes."""
    frame = config_frame(df, device)
    if frame.empty:
        log.warning("mixer_ablation: no speed or quality records")
        return frame
    table = _select(frame, [lambda c: is_quality(c.removesuffix(STD)), lambda c: c == "Seeds",
                            lambda c: c.startswith(("Train", "Latency", "Peak")), lambda c: c == STATE,
                            lambda c: c == TIMED_ON])
    table.index.names = ["Mixer", "Intra", "Depth", "Resolution"]
    return finish(table, df, [*SPEED, *QUALITY_NAMES], frame.attrs["device"])


def kv_ratio(state: pd.Series) -> pd.Series:
    """State bytes over attention's (no intra) KV cache bytes at the same depth and resolution."""
    keys = state.index.to_frame(index=False).assign(s=state.to_numpy())
    kv = keys[(keys["mixer"] == VAR[0]) & (keys["intra"] == VAR[1])].set_index(["depth", "resolution"])["s"]
    ref = keys.join(kv.rename("kv"), on=["depth", "resolution"])["kv"]
    missing = ref.isna() & keys["s"].notna()  # a state with no KV cache to compare it with
    if missing.any():
        log.warning("State / KV cache: no attention state_bytes_per_image record at depth/resolution %s",
                    sorted(set(zip(keys["depth"][missing], keys["resolution"][missing]))))
    return pd.Series(state.to_numpy() / ref.to_numpy(dtype=float), index=state.index)


ERROR_CHARS = 80


def bench_errors(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """The bench stages that failed (out of memory, a kernel refusing a shape) and that no later run of the same
    configuration and stage measured after all, on `device` (None: any); `short`: the error's first sentence (the
    full text stays in the record), `where`: stage and batch, `text`: both."""
    err = latest(df, "bench_error")
    if device is not None:
        err = err[err["device"] == device]
    err = err[~_superseded(err, latest(df, TIMED))]
    short = [str(e).split(". ", 1)[0][:ERROR_CHARS] for e in err["error"]]
    where = [f"{st} b{b:g}" if pd.notna(b) else st for st, b in zip(err["stage"], err["batch"])]
    return err.assign(short=short, where=where, text=[f"{w}: {e}" for w, e in zip(where, short)])


def _bench_errors(df: pd.DataFrame, device) -> pd.Series:
    """Per configuration, its failed bench stages (`bench_errors`) in one cell."""
    err = bench_errors(df, device)
    if err.empty:
        return pd.Series(dtype=object, name="Bench error")
    return err.groupby(KEY, dropna=False)["text"].agg("; ".join).rename("Bench error")


def _superseded(err: pd.DataFrame, timed: pd.DataFrame) -> pd.Series:
    """Errors that a later run of the same configuration and stage measured after all (the stage's metric with the
    same batch and sampler; a dead cell's `process` error: any timing of it), on the same device."""
    metric = {"train": "train_images_per_s", "sample": "sample_latency_ms"}

    def later_success(e) -> bool:
        same = timed[(timed[KEY] == e[KEY]).all(axis=1) & (timed["device"] == e["device"])
                     & (timed["date"] > e["date"])]
        if e["stage"] in metric:
            same = same[(same["metric"] == metric[e["stage"]]) & (same["batch"] == e["batch"])]
            if e["stage"] == "sample":
                same = same[same["sampler"] == e["sampler"]]
        return len(same) > 0

    return pd.Series([later_success(e) for _, e in err.iterrows()], index=err.index, dtype=bool)


def resolution_scaling(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per model x resolution: train img/s, sampling latency (every sampler), state bytes per image and the
    state's ratio to attention's KV cache at the same depth and resolution."""
    frame = speed_wide(df, device, samplers=tuple(df["sampler"].dropna().unique()))
    if frame.empty:
        log.warning("resolution_scaling: no records of %s", ", ".join(SPEED))
        return frame
    frame.index.names = KEY
    table = _select(frame, [lambda c: c.startswith(("Train", "Latency")), lambda c: c == STATE])
    if STATE in table:
        table = table.assign(**{"State / KV cache": kv_ratio(table[STATE])})
    if TIMED_ON in frame:
        table = table.assign(**{TIMED_ON: frame[TIMED_ON]})
    errors = _bench_errors(df, frame.attrs["device"])
    if len(errors):
        table = pd.concat([table, errors], axis=1)
        table.index.names = KEY
    table = table.dropna(how="all")  # models known only by their size (trained, never timed)
    table = by_model(table).sort_index(level=["Model", "Resolution"])
    return finish(table, df, SPEED, frame.attrs["device"])
