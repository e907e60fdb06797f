"""varbench beside the official VAR code, timed on one machine in one device call (`beside_official_table`; issue 18:
"no eager path slower than the official code at any batch"; eager batch 1 is bound by the host, so only a timing
of both on the same machine compares them).

The official sampler's records come from an uncommitted harness (`benchmarks/gpu_study_plan.md`: the official
FoundationVision/VAR code beside the tree, never committed) that times it with task=bench's own timer and writes
`system: official_var` and the varbench commit of the call (`commit`). varbench's side is task=bench's eager VAR-d16
sampling at 256 px of the same commit and device: KV cache, no CUDA graphs, the eager decode of the whole batch,
unfused; both with the decode, CFG 1.5, top-k 900, top-p 0.96."""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

OFFICIAL = "official_var"
GIB = 2 ** 30


def _varbench_eager_var(latency: pd.DataFrame) -> pd.DataFrame:
    """task=bench's eager VAR-d16 sampling at 256 px, the official sampler's own path."""
    return latency[latency["system"].isna() & (latency["model"] == "VAR-d16") & (latency["resolution"] == 256)
                   & (latency["sampler"] == "carry") & ~latency["cuda_graphs"].eq(True)
                   & (latency["decode_mode"] == "eager") & (latency["decode_batch"] == 0)
                   & ~latency["fused_elementwise"].eq(True)]


def _pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Per call (varbench commit and GPU) and batch with an official timing: both sides' latency and peak memory
    allocated (NaN on varbench's where that call did not time it) and the official record's date."""
    # per call, not `latest`'s one measurement per configuration (that would pair one call's official timing with
    # another's varbench one); never a disturbed or superseded record, and the newest of one call's repeats
    latency = df[(df["metric"] == "sample_latency_ms") & df["disturbed"].isna() & df["superseded"].isna()]
    latency = latency.sort_values("date", kind="stable")
    official = latency[latency["system"] == OFFICIAL]
    keys = ["commit", "device", "batch"]

    def per_call(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.astype({"batch": int}).drop_duplicates(keys, keep="last").set_index(keys)
    ours, theirs = per_call(_varbench_eager_var(latency)), per_call(official)
    return pd.DataFrame({"official_ms": pd.to_numeric(theirs["value"]),
                         "varbench_ms": pd.to_numeric(ours["value"]).reindex(theirs.index),
                         "official_peak": pd.to_numeric(theirs["peak_mem_bytes"]),
                         "varbench_peak": pd.to_numeric(ours["peak_mem_bytes"]).reindex(theirs.index),
                         "date": theirs["date"]})


def same_call_goals(df: pd.DataFrame, device=None) -> list[tuple[str, float, float]]:
    """Issue 18's eager goal "no slower than the official code" against the official sampler timed in the same call
    on `device` (None: any GPU): per batch, from the newest call that timed both, (goal, target: the official
    latency, measured: varbench's)."""
    pairs = _pairs(df).dropna(subset=["varbench_ms"]).sort_values("date", kind="stable").reset_index()
    if device is not None:
        pairs = pairs[pairs["device"] == device]
    newest = pairs.drop_duplicates("batch", keep="last").sort_values("batch")
    return [(f"VAR-d16 eager sampling latency (b{batch}, 256 px, ms; the official's, timed in the same call)",
             official_ms, varbench_ms)
            for batch, official_ms, varbench_ms in zip(newest["batch"], newest["official_ms"], newest["varbench_ms"])]


def beside_official_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (varbench commit and GPU) and batch with an official timing: the official VAR-d16 sampler's latency
    and peak memory allocated beside varbench's eager VAR-d16 sampler's from the same call, and official / varbench
    latency (above 1: varbench is faster). A batch varbench did not time in that call shows "—" on its side."""
    pairs = _pairs(df)
    if pairs.empty:
        log.warning("beside_official_table: no official_var sample_latency_ms records (the uncommitted harness)")
        return pd.DataFrame()
    table = pd.DataFrame({"Official VAR (ms)": pairs["official_ms"], "varbench eager (ms)": pairs["varbench_ms"],
                          "Official / varbench": pairs["official_ms"] / pairs["varbench_ms"],
                          "Official peak (GiB)": pairs["official_peak"] / GIB,
                          "varbench peak (GiB)": pairs["varbench_peak"] / GIB})
    table.index = table.index.set_names(["Commit", "GPU", "Batch"])
    table.attrs.update(device=None, records=len(pairs) + int(pairs["varbench_ms"].notna().sum()))
    return table.sort_index()
