"""Measurement records (varbench.utils.records) as one pandas DataFrame, and the latest record per configuration.

One row per record. Columns: metric, value, unit, every extra field of the record, the configuration columns
(mixer, intra, depth, resolution, seed, cell_id, and `model`, a label such as "VAR-d16"), commit, device, date
(UTC timestamps), source (the .jsonl file), `tokenizer_id` (which frozen tokenizer: see `tokenizer_id`), and
`config` / `versions` kept as object columns. A configuration column is taken from the record's own field when it has
one (task=bench writes mixer/intra/resolution/depth as fields, with config=None), else from Hydra's choices when
recorded, else from the resolved config it carries (mixer/intra from `_target_`, depth from model.depth, resolution
from the tokenizer's schedule).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import pandas as pd

from varbench.registry import MVAR, VAR, list_options, load_option
from varbench.utils.records import jsonl_files, read_jsonl

log = logging.getLogger(__name__)

RASTER = "raster"  # the `intra` of a raster next-token model's records (task=bench's [mixer, raster] configurations)

RESERVED = ("metric", "value", "unit", "config", "commit", "device", "versions", "date")
CONFIG_COLUMNS = ("mixer", "intra", "depth", "resolution", "seed", "cell_id")
LEADING = ("metric", "value", "unit", "model", *CONFIG_COLUMNS, "commit", "device", "date", "source")
INT_COLUMNS = ("depth", "resolution", "seed")
# extra fields the tables and figures read: always present (missing values where no record has them), so that a
# partial records folder gives a partial table instead of a KeyError
KNOWN_FIELDS = ("batch", "sampler", "mfu", "params", "fwd_flops_per_image", "peak_mem_bytes", "feature_extractor",
                "num_samples", "preset", "step", "run_dir", "group", "name", "backend", "dtype", "compared", "error",
                "stage", "synthetic", "compiled", "cuda_graphs", "disturbed", "superseded", "latency_wo_decode_ms",
                "peak_reserved_bytes", "param_dtype", "L", "flops_by_component", "split", "machine",
                "autotune", "tokenizer_id", "cfg", "decode_mode", "decode_batch", "fused_elementwise", "base_lr",
                "system", "precision", "part", "kernels", "compile_mode", "compile_scope", "fp8", "fp8_recipe",
                "block_weights", "timing", "compile_cache", "inductor_options")
# timings and parity depend on the GPU that ran them: the device is part of their configuration
DEVICE_BOUND = {"train_images_per_s", "sample_latency_ms", "matmul_peak", "parity_rel_rms", "parity_error",
                "bench_error", "gpu_test"}
# fields besides the configuration that tell two measurements of one metric apart
IDENTITY = {
    "train_images_per_s": ("batch", "compiled", "param_dtype", "compile_mode", "compile_scope", "fp8", "fp8_recipe"),
    "sample_latency_ms": ("batch", "sampler", "cuda_graphs", "decode_mode", "decode_batch", "fused_elementwise",
                          "block_weights"),
    "bench_error": ("stage", "batch", "sampler"),
    "parity_rel_rms": ("group", "name", "backend", "dtype", "compared"),
    "parity_error": ("group", "name", "backend", "dtype"),
    "gpu_test": ("test",),
    "train_loss": ("run_dir", "step"),
    "nll_during_training": ("run_dir", "step", "split"),
    "train_summary": ("run_dir",),
    "sample_grid": ("run_dir", "sampler"),
    "aten_ops": ("system", "precision", "part"),  # benchmarks/op_count.py: one record per part of a generation
    "python_calls": ("system", "precision"),
}
QUALITY_METRICS = ("fid", "embedded_fd", "inception_score", "precision", "recall", "class_accuracy",
                   "embedded_precision", "embedded_recall", "embedded_kd", "kid", "nn_distance_ratio")
# cfg: the guidance scale (task=evaluate's task.cfg re-evaluates a trained model at another one)
IDENTITY.update({m: ("feature_extractor", "num_samples", "preset", "cfg", "tokenizer_id") for m in QUALITY_METRICS})
# tokenizer evaluations: the newest per split is the final one
IDENTITY.update({m: ("split",) for m in ("psnr", "ssim", "codebook_usage", "codebook_usage_total")})


@cache
def _short_names(group: str) -> dict:
    """`_target_` -> registry name of a config group (varbench/configs/<group>/<name>.yaml); None -> the null option."""
    return {load_option(group, name).get("_target_"): name for name in list_options(group)}


def short_name(group: str, target: str | None) -> str:
    """The registry name of a `_target_` ("varbench.mixers.gla.GLAMixer" -> "gla"; null -> "none").

    A class no YAML names any more (a renamed or removed component) keeps its class name, lower-cased, so old
    records still get a distinct label; it is logged because it will not match the current registry names.
    """
    names = _short_names(group)
    if target in names:
        return names[target]
    if target is None:
        raise ValueError(f"no {group} option has a null _target_; options: {sorted(names.values())}")
    log.warning("%s _target_ %s matches no configs/%s/*.yaml; labelled by its class name", group, target, group)
    return target.rsplit(".", 1)[-1].lower()


def _choices(rec: dict) -> dict:
    """Hydra's group choices (group -> option name) when a producer recorded them."""
    cfg = rec.get("config") or {}
    runtime = (cfg.get("hydra") or {}).get("runtime") or {}
    return rec.get("choices") or cfg.get("choices") or runtime.get("choices") or {}


def _component(rec: dict, group: str):
    """mixer / intra of a record: its own field, else Hydra's choice, else the config's `_target_`."""
    if isinstance(rec.get(group), str):
        return rec[group]
    choice = _choices(rec).get(group)
    if choice is not None:
        return choice
    node = (rec.get("config") or {}).get(group)
    return short_name(group, node.get("_target_")) if isinstance(node, dict) else None


def _resolution(cfg: dict):
    """Pixels per side implied by the tokenizer (varbench.build.image_size), from a config dict."""
    tok = cfg.get("tokenizer") or {}
    if not tok.get("patch_nums") or not tok.get("ch_mult"):
        return None
    return tok["patch_nums"][-1] * 2 ** (len(tok["ch_mult"]) - 1)


def tokenizer_id(rec: dict):
    """Which frozen tokenizer a record's model was trained on: the record's own `tokenizer_id` field, else the
    tokenizer checkpoint its config names (None where neither is recorded). Two tokenizers on one configuration
    are two measurements of it (the study reports the tokenizer's share of the variance)."""
    if rec.get("tokenizer_id") is not None:
        return str(rec["tokenizer_id"])
    tok = (rec.get("config") or {}).get("tokenizer") or {}
    checkpoint = tok.get("checkpoint") if isinstance(tok, dict) else None
    return None if checkpoint in (None, "???") else str(checkpoint)  # "???": Hydra's unset value


def _option(value) -> str:
    """An overridden field's value in a configuration's name: a list as its items joined by "+" (flash+efficient)."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def model_label(mixer, intra, depth) -> str | None:
    """Short configuration name: VAR-d16 (attention, no intra), M-VAR-d16 (mamba2 + full), else mixer[+intra]-dN
    (a raster next-token model: mixer+raster-dN)."""
    if mixer is None or pd.isna(mixer):
        return None
    suffix = f"-d{int(depth)}" if depth is not None and not pd.isna(depth) else ""
    if (mixer, intra) == VAR:
        return f"VAR{suffix}"
    if (mixer, intra) == MVAR:
        return f"M-VAR{suffix}"
    return f"{mixer}{'' if intra in (None, 'none') else '+' + str(intra)}{suffix}"


def flatten(rec: dict, source: str = "") -> dict:
    """One record as one flat row (see the module docstring)."""
    cfg = rec.get("config") or {}
    row = {k: v for k, v in rec.items() if k not in RESERVED}
    row.update(metric=rec["metric"], value=rec.get("value"), unit=rec.get("unit"), config=rec.get("config"),
               versions=rec.get("versions"), commit=rec.get("commit"), device=rec.get("device"),
               date=rec.get("date"), source=source)
    row["mixer"], row["intra"] = _component(rec, "mixer"), _component(rec, "intra")
    if (cfg.get("model") or {}).get("backbone") == "raster_ar":  # AiM's backbone: one scale, no intra-scale mixing;
        row["intra"] = RASTER  # named as task=bench names it, never as the scale-wise model of the same mixer (VAR)
    for part in ("mixer", "intra"):  # a component with overridden fields is its own configuration: mamba2[fused=True]
        if rec.get(f"{part}_options"):
            row[part] += "[" + ",".join(f"{k}={_option(v)}" for k, v in sorted(rec[f"{part}_options"].items())) + "]"
    row["depth"] = rec.get("depth", (cfg.get("model") or {}).get("depth"))
    row["resolution"] = rec.get("resolution", _resolution(cfg))
    row["seed"] = rec.get("seed", cfg.get("seed"))
    row["cell_id"] = rec.get("cell_id", cfg.get("cell_id"))
    row["tokenizer_id"] = tokenizer_id(rec)
    row["autotune"] = (rec.get("versions") or {}).get("triton_autotune")  # how Triton kernels were tuned, if any
    row["base_lr"] = (cfg.get("train") or {}).get("base_lr")  # tells a learning-rate sweep's cells apart
    if rec["metric"] == "train_images_per_s":  # bench records before task.compile / param_dtype: eager, fp32
        row["compiled"] = bool(rec.get("compiled", False))
        row["param_dtype"] = rec.get("param_dtype", "fp32")
        # ... and compiled in Inductor's default mode before task.compile_mode (eager: none)
        row["compile_mode"] = rec.get("compile_mode") or ("default" if row["compiled"] else "none")
        row["compile_scope"] = rec.get("compile_scope") or ("model" if row["compiled"] else "none")  # ... whole
        # ... and Inductor's options beside its mode (varbench.training.loop.INDUCTOR_OPTIONS), none before session 36
        row["inductor_options"] = ",".join(f"{k}={v}" for k, v in sorted((rec.get("inductor_options") or {}).items()))
        row["fp8"] = bool(rec.get("fp8"))  # ... and with VAR's bf16 matmuls before task.fp8
        row["fp8_recipe"] = rec.get("fp8_recipe") or ("tensorwise" if row["fp8"] else "none")  # ... tensorwise before
    if rec["metric"] == "sample_latency_ms":  # bench records before task.cuda_graphs existed sampled eagerly
        row["cuda_graphs"] = bool(rec.get("cuda_graphs", False))
        row["decode_mode"] = rec.get("decode_mode", "eager")  # ... and decoded eagerly before task.decode_mode
        row["decode_batch"] = rec.get("decode_batch") or 0  # ... the whole batch at once (0) before task.decode_batch
        row["fused_elementwise"] = bool(rec.get("fused_elementwise"))  # ... and unfused before task.fused_elementwise
        row["block_weights"] = rec.get("block_weights", "fp32")  # ... and from fp32 weights before task.block_weights
    if "model" in row:  # the label below owns the name; a producer's own `model` field is kept beside it
        row["model_field"] = row.pop("model")
    row["model"] = model_label(row["mixer"], row["intra"], row["depth"])
    return row


def load_records(path) -> pd.DataFrame:
    """Every record of a .jsonl file, or of every .jsonl file under a folder, as a DataFrame (one row each).

    A damaged line (not JSON: cut short by a full disk or a kill) is skipped with a warning naming its file and line;
    `df.attrs["damaged"]` lists them ("file:line: why")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no records at {path} (a .jsonl file or a folder of them)")
    files, rows, damaged = jsonl_files(path), [], []
    for f in files:
        good, bad = read_jsonl(f)
        rows += [flatten(rec, str(f)) for rec in good]
        damaged += bad
    for line in damaged:
        log.warning("skipped a damaged record line: %s", line)
    df = pd.DataFrame(rows, columns=None if rows else list(LEADING) + ["config", "versions"])
    for col in (*LEADING, *KNOWN_FIELDS, "config", "versions"):
        if col not in df:
            df[col] = None
    df["date"] = pd.to_datetime(df["date"], utc=True, format="ISO8601")
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    extras = sorted(c for c in df.columns if c not in LEADING and c not in ("config", "versions"))
    log.info("loaded %d records from %d files under %s", len(df), len(files), path)
    df = df[[*LEADING, *extras, "config", "versions"]]
    df.attrs["damaged"] = [str(line) for line in damaged]  # the report says how many lines it skipped, and which
    return df


def identity_columns(metric: str, df: pd.DataFrame) -> list[str]:
    """The columns whose values make one measurement of `metric` (configuration + metric-specific fields)."""
    fields = IDENTITY.get(metric, ())
    cols = [*CONFIG_COLUMNS, *fields] + (["device"] if metric in DEVICE_BOUND else [])
    return [c for c in cols if c in df.columns]


def mode_label(train: pd.DataFrame) -> pd.Series:
    """Inductor's mode of each training timing as the tables show it: with the options passed beside it, if any
    (e.g. "reduce-overhead [comprehensive_padding=False]")."""
    return train["compile_mode"] + train["inductor_options"].map(lambda o: f" [{o}]" if o else "")


# timings that depend on how Triton's kernels were tuned (varbench/utils/autotune.py)
TUNED_METRICS = {"train_images_per_s", "sample_latency_ms", "parallel_train_images_per_s", "bench_error"}
UNTUNED = "first"  # the autotune mode whose timings count only where no fully tuned one exists
POLICY = ("The measurement of a configuration: never a `disturbed` or `superseded` record; of the rest, a timing "
          "under fully tuned Triton kernels (autotune full, or no Triton) before one under first-config autotuning; "
          "then the newest.")


def preference_order(df: pd.DataFrame) -> pd.DataFrame:
    """`df` sorted so that, per measurement, the one `POLICY` picks comes last (ties keep file order)."""
    untuned = df["metric"].isin(TUNED_METRICS) & df["autotune"].eq(UNTUNED)
    return df.assign(_untuned=untuned).sort_values(["_untuned", "date"], ascending=[False, True],
                                                   kind="stable").drop(columns="_untuned")


def var_numerics_training(df: pd.DataFrame) -> pd.DataFrame:
    """varbench's own training-step timings (task=bench's `train_images_per_s`; no other system's, none superseded)
    with VAR's numerics: fp32 weights, no FP8 matmuls."""
    return df[(df["metric"] == "train_images_per_s") & df["system"].isna() & df["superseded"].isna()
              & (df["param_dtype"] == "fp32") & ~df["fp8"].eq(True)]


def latest(df: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """The measurement per (metric, configuration), picked by `POLICY` (never by recency alone).

    A record with a `disturbed` note (a timing taken under a load that a control measurement of the same run showed,
    e.g. beside other jobs on the host) or a `superseded` note (a measurement of code with a defect fixed since,
    which the current code would not reproduce) stays in the records as data but is never a table's measurement.
    A timing under first-config autotuning (`autotune: first`) counts only where no fully tuned one of the same
    measurement exists; the tables say per configuration which machine and autotune mode their timings come from.

    Args:
        df: records from `load_records`.
        metrics: a metric name or a list of them to keep (None: all).
    """
    if metrics is not None:
        df = df[df["metric"].isin([metrics] if isinstance(metrics, str) else list(metrics))]
    df = df[df["disturbed"].isna() & df["superseded"].isna()]
    parts = [preference_order(g).drop_duplicates(identity_columns(m, g), keep="last")
             for m, g in df.groupby("metric", sort=True)]
    return pd.concat(parts) if parts else df.iloc[:0]


def numeric(df: pd.DataFrame, column: str = "value") -> pd.Series:
    """A column as floats; a non-numeric entry is an error (a table must never show a number it guessed)."""
    return pd.to_numeric(df[column], errors="raise").astype(float)
