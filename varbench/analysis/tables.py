"""The tables of the study, computed from the records only (no number is typed by hand).

Every function takes the DataFrame of `load_records` and returns a DataFrame of raw recorded values (rounding
happens only when a table is written, varbench.analysis.format). One configuration is (mixer, intra, depth,
resolution); of repeated measurements the one `load.POLICY` picks counts (`latest`: never disturbed or superseded,
fully tuned before untuned, then the newest; a table's row says which machine and autotune mode timed it). Quality
columns name their feature extractor: "FID" is kept for Inception-v3 features, a Frechet distance in any other
feature space is an "FD".
`df.attrs` carries `device` (the GPU the timings come from) and `records` (how many records fed the table).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from varbench.analysis.format import QUALITY_NAMES, STD, is_quality
from varbench.analysis.load import latest, model_label, numeric, preference_order

log = logging.getLogger(__name__)

KEY = ["mixer", "intra", "depth", "resolution"]
TIMED = ("train_images_per_s", "sample_latency_ms")
SPEED = (*TIMED, "state_bytes_per_image")
STATE = "State (bytes/img)"
TOKEN_MFU = "AdaLN-per-token MFU"  # not "MFU ...": the main table shows the project's own convention only
PARAMS, GFLOPS = "Params", "Fwd GFLOPs/img"


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


def quality_label(metric: str, extractor, num_samples=None, preset=None) -> str:
    """Column name of a quality metric, e.g. "FID (Inception, 50k)", "FD (embedded classifier, 1k)"."""
    ext = extractor_label(extractor)
    name = QUALITY_NAMES[metric]
    if name in ("FID", "KID") and ext != "Inception":
        # FID / KID mean Inception-v3 features; the same distance in another feature space is an FD / KD
        name = name.replace("I", "", 1)
    parts = [ext]
    if num_samples is not None and not pd.isna(num_samples):
        n = int(num_samples)
        parts.append(f"{n // 1000}k" if n % 1000 == 0 else str(n))
    if preset is not None and not pd.isna(preset) and preset != "eval":
        parts.append(str(preset))
    return f"{name} ({', '.join(parts)})"


def quality_long(df: pd.DataFrame, every_tokenizer: bool = False) -> pd.DataFrame:
    """One row per (configuration, seed, quality column): the value `latest` picks, all of one study, on the
    study's main tokenizer (`main_tokenizer`); with `every_tokenizer`, one row per tokenizer too."""
    q = latest(df, QUALITY_NAMES)
    labels = [quality_label(*a) for a in zip(q["metric"], q["feature_extractor"], q["num_samples"], q["preset"])]
    q = q.assign(label=labels, value=numeric(q) if len(q) else q["value"])
    q = one_study(q, [*KEY, "label"])
    q = q if every_tokenizer else main_tokenizer(q)
    unique = [*KEY, "label", "seed"] + (["tokenizer_id"] if every_tokenizer else [])
    q = q.sort_values("date", kind="stable").drop_duplicates(unique, keep="last")
    return q[[*KEY, "seed", "cell_id", "tokenizer_id", "source", "metric", "label", "value", "date"]]


def shared_tokenizer(records: pd.DataFrame) -> pd.Series:
    """Per record, the frozen tokenizer it shares with other cells of its study (`tokenizer_id`), or "" for a
    tokenizer of its own: a grid that trains one tokenizer per cell has no second tokenizer on any configuration,
    just one per seed (their spread is part of the seed variance)."""
    study = records["source"].map(lambda source: str(Path(source).parent))
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
        study=records["source"].map(lambda source: str(Path(source).parent)), tok=shared_tokenizer(records))
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
    q = q.assign(_study=q["source"].map(lambda source: str(Path(source).parent)))
    newest = q.groupby([*keys, "_study"], dropna=False)["date"].transform("max")
    chosen = q.assign(_newest=newest).sort_values("_newest", kind="stable").groupby(keys, dropna=False)["_study"]
    return q[q["_study"] == chosen.transform("last").reindex(q.index)].drop(columns="_study")


def quality_wide(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: mean and std over seeds of every quality column, and the number of seeds."""
    long = quality_long(df)
    if long.empty:
        return pd.DataFrame()
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
    timed = timed[timed["device"] == device]
    parts = []
    sized = latest(df, [*SPEED, "train_summary"])  # the models that were timed or trained (not task=costs' grid)
    sized = sized[sized["params"].notna()]
    if len(sized):
        parts += [per_key(sized, "params", PARAMS, quiet=True),
                  per_key(sized, "fwd_flops_per_image", GFLOPS, 1e-9, quiet=True)]
    train, picked = timed[timed["metric"] == "train_images_per_s"], []
    for (batch, compiled, dtype), g in train.groupby(["batch", "compiled", "param_dtype"]):
        tag = f"b{batch:g}" + (", compiled" if compiled else "") + (f", {dtype} weights" if dtype != "fp32" else "")
        parts += [per_key(g, "value", f"Train img/s ({tag})", picked=picked), per_key(g, "mfu", f"MFU ({tag})"),
                  per_key(g.assign(token_mfu=adaln_per_token_mfu(g)), "token_mfu", f"{TOKEN_MFU} ({tag})")]
    sample = timed[(timed["metric"] == "sample_latency_ms") & timed["sampler"].isin(samplers)]
    for (sampler, batch, graphs), g in sample.groupby(["sampler", "batch", "cuda_graphs"]):
        tag = f"b{batch:g}" + ("" if sampler == "carry" else f" {sampler}") + (", graphs" if graphs else "")
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
    kv = keys[(keys["mixer"] == "attention") & (keys["intra"] == "none")].set_index(["depth", "resolution"])["s"]
    ref = keys.join(kv.rename("kv"), on=["depth", "resolution"])["kv"]
    missing = ref.isna() & keys["s"].notna()  # a state with no KV cache to compare it with
    if missing.any():
        log.warning("State / KV cache: no attention state_bytes_per_image record at depth/resolution %s",
                    sorted(set(zip(keys["depth"][missing], keys["resolution"][missing]))))
    return pd.Series(state.to_numpy() / ref.to_numpy(dtype=float), index=state.index)


ERROR_CHARS = 80


def _bench_errors(df: pd.DataFrame, device) -> pd.Series:
    """Per configuration, the bench stages that failed (out of memory, a kernel refusing a shape) on `device`."""
    err = latest(df, "bench_error")
    err = err[(err["device"] == device) & ~_superseded(err, latest(df, TIMED))]
    if err.empty:
        return pd.Series(dtype=object, name="Bench error")
    short = [str(e).split(". ", 1)[0][:ERROR_CHARS] for e in err["error"]]  # the full text stays in the record
    text = [f"{st} b{b:g}: {e}" if pd.notna(b) else f"{st}: {e}" for st, b, e in zip(err["stage"], err["batch"], short)]
    return err.assign(t=text).groupby(KEY, dropna=False)["t"].agg("; ".join).rename("Bench error")


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
