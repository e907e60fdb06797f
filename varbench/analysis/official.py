"""varbench beside the official VAR code, timed on one machine in one device call (`beside_official_table`,
`beside_official_training_table`; issue 18: "no eager path slower than the official code at any batch", training at
2.5x the official; eager batch 1 is bound by the host, so only a timing of both on the same machine compares them).

The official code's records come from uncommitted harnesses (`benchmarks/gpu_study_plan.md`: the official
FoundationVision/VAR code beside the tree, never committed) that time it with task=bench's own timer and protocol and
write `system: official_var` and the varbench commit of the call (`commit`). varbench's sampling side is task=bench's
eager VAR-d16 sampling at 256 px of the same commit and device: KV cache, no CUDA graphs, the eager decode of the
whole batch, unfused, from fp32 weights (as the official sampler), and beside it the same with the blocks' weights
held in bf16 (`task.block_weights=bf16`: the sampling tasks' default under bf16 autocast, the same values at every
matmul); both with the decode, CFG 1.5, top-k 900, top-p 0.96. Its training side is task=bench's VAR-d16 step at
256 px with VAR's numerics (fp32 weights, bf16 autocast, no FP8 matmuls; any attention backend, tabled as its own
configuration), eager and the fastest compiled, of the same commit, device and batch."""

from __future__ import annotations

import logging
import re

import pandas as pd

log = logging.getLogger(__name__)

OFFICIAL = "official_var"
GIB = 2 ** 30
# a mixer or intra variant's options that choose kernels only (the same math on other kernels), as records name them;
# mamba2's chunk_size and fit_chunk are the SSD kernels' tiling: the chunked scan is exact for every chunk length;
# its fused (mamba_ssm's whole-layer kernel, M-VAR's own use_mem_eff_path) and conv_backend pick kernels of the
# same layer
KERNEL_OPTIONS = (r"(\[((backend|together_below|sdpa_kernels|qk_norm|chunk_size|fit_chunk|conv_backend|fused)"
                  r"=[\w+]+,?)+\])?")


def same_math(name: str, base: str) -> bool:
    """Whether a record's mixer or intra `name` is `base` itself or `base` with kernel choices alone."""
    return re.fullmatch(re.escape(base) + KERNEL_OPTIONS, name) is not None


def _varbench_eager_var(latency: pd.DataFrame, block_weights: str) -> pd.DataFrame:
    """task=bench's eager VAR-d16 sampling at 256 px, the official sampler's own path, its block weights held in
    `block_weights`."""
    return latency[latency["system"].isna() & (latency["model"] == "VAR-d16") & (latency["resolution"] == 256)
                   & (latency["sampler"] == "carry") & ~latency["cuda_graphs"].eq(True)
                   & (latency["decode_mode"] == "eager") & (latency["decode_batch"] == 0)
                   & ~latency["fused_elementwise"].eq(True) & latency["block_weights"].eq(block_weights)]


def _pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Per call (varbench commit and GPU) and batch with an official timing: both sides' latency and peak memory
    allocated, varbench's from fp32 and from bf16 block weights (NaN where that call did not time it), and the
    official record's date."""
    # per call, not `latest`'s one measurement per configuration (that would pair one call's official timing with
    # another's varbench one); never a disturbed or superseded record, and the newest of one call's repeats
    latency = df[(df["metric"] == "sample_latency_ms") & df["disturbed"].isna() & df["superseded"].isna()]
    latency = latency.sort_values("date", kind="stable")
    official = latency[latency["system"] == OFFICIAL]
    keys = ["commit", "device", "batch"]

    def per_call(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.astype({"batch": int}).drop_duplicates(keys, keep="last").set_index(keys)
    theirs = per_call(official)
    pairs = {"official_ms": pd.to_numeric(theirs["value"]), "official_peak": pd.to_numeric(theirs["peak_mem_bytes"])}
    for suffix, block_weights in (("", "fp32"), ("_bf16", "bf16")):
        ours = per_call(_varbench_eager_var(latency, block_weights))
        pairs |= {f"varbench{suffix}_ms": pd.to_numeric(ours["value"]).reindex(theirs.index),
                  f"varbench{suffix}_peak": pd.to_numeric(ours["peak_mem_bytes"]).reindex(theirs.index)}
    return pd.DataFrame(pairs | {"date": theirs["date"]})


def _varbench_var_training(train: pd.DataFrame) -> pd.DataFrame:
    """task=bench's VAR-d16 training steps at 256 px with VAR's numerics: fp32 weights, no FP8 matmuls, any
    attention kernels (`attention[backend=...,sdpa_kernels=...]`: the same math on other kernels)."""
    var = train["mixer"].fillna("").map(lambda name: same_math(name, "attention")) & (train["intra"] == "none")
    return train[train["system"].isna() & var & (train["depth"] == 16) & (train["resolution"] == 256)
                 & (train["param_dtype"] == "fp32") & ~train["fp8"].eq(True)]


def _training_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Per call (varbench commit and GPU) and batch with an official training timing: the official img/s and
    varbench's fastest eager and fastest compiled img/s, each with what it ran (configuration, and Inductor's mode
    when compiled; NaN / NaN where that call did not time it), and the official record's date."""
    train = df[(df["metric"] == "train_images_per_s") & df["disturbed"].isna() & df["superseded"].isna()]
    train = train.sort_values("date", kind="stable").astype({"batch": int})
    keys = ["commit", "device", "batch"]
    theirs = train[train["system"] == OFFICIAL].drop_duplicates(keys, keep="last").set_index(keys)
    ours = _varbench_var_training(train).assign(value=lambda t: pd.to_numeric(t["value"]), ran=lambda t: t["mixer"])
    compiled = ours["compiled"].eq(True)
    ours.loc[compiled, "ran"] += ", " + ours.loc[compiled, "compile_mode"] + " mode" + ours.loc[
        compiled, "compile_scope"].map({"blocks": ", by blocks"}).fillna("")
    pairs = {"official": pd.to_numeric(theirs["value"])}
    for name, rows in (("eager", ours[~compiled]), ("compiled", ours[compiled])):
        fastest = rows.sort_values("value", kind="stable").drop_duplicates(keys, keep="last").set_index(keys)
        pairs |= {name: fastest["value"].reindex(theirs.index), f"{name}_ran": fastest["ran"].reindex(theirs.index)}
    return pd.DataFrame(pairs | {"date": theirs["date"]})


TRAINING_SPEEDUP = 2.5  # issue 18: VAR-d16's compiled training step at 2.5x the official one


def same_call_goals(df: pd.DataFrame, device=None) -> list[tuple[str, float, bool, float, str]]:
    """Issue 18's goals against the official code timed in the same call on `device` (None: any GPU), each from the
    newest call that timed both sides: per batch, eager sampling no slower than the official sampler and its peak
    memory, as the sampling tasks hold the weights (bf16 blocks), no more than the official sampler's; compiled
    training at `TRAINING_SPEEDUP` x the official step. (goal, target, higher is better, measured, the report
    table that pairs them)."""
    def newest(pairs: pd.DataFrame, column: str) -> pd.DataFrame:
        pairs = pairs.dropna(subset=[column]).sort_values("date", kind="stable").reset_index()
        if device is not None:
            pairs = pairs[pairs["device"] == device]
        return pairs.drop_duplicates("batch", keep="last").sort_values("batch")
    pairs = _pairs(df)
    sampling, memory = newest(pairs, "varbench_ms"), newest(pairs, "varbench_bf16_peak")
    training = newest(_training_pairs(df), "compiled")
    return ([(f"VAR-d16 eager sampling latency (b{b}, 256 px, ms; the official's, timed in the same call)", ms, False,
              ours, "report/beside_official.md")
             for b, ms, ours in zip(sampling["batch"], sampling["official_ms"], sampling["varbench_ms"])]
            + [(f"VAR-d16 eager sampling peak memory allocated, bf16 block weights as the sampling tasks hold them "
                f"(b{b}, 256 px, GiB; the official's, timed in the same call)", theirs / GIB, False, ours / GIB,
                "report/beside_official.md")
               for b, theirs, ours in zip(memory["batch"], memory["official_peak"], memory["varbench_bf16_peak"])]
            + [(f"VAR-d16 training img/s under torch.compile (b{b}, 256 px; {TRAINING_SPEEDUP:g}x the official's, "
                f"timed in the same call)", TRAINING_SPEEDUP * ips, True, ours, "report/beside_official_training.md")
               for b, ips, ours in zip(training["batch"], training["official"], training["compiled"])])


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
                          "varbench, bf16 blocks (ms)": pairs["varbench_bf16_ms"],
                          "Official peak (GiB)": pairs["official_peak"] / GIB,
                          "varbench peak (GiB)": pairs["varbench_peak"] / GIB,
                          "varbench, bf16 blocks peak (GiB)": pairs["varbench_bf16_peak"] / GIB})
    table.index = table.index.set_names(["Commit", "GPU", "Batch"])
    ours = pairs[["varbench_ms", "varbench_bf16_ms"]].notna().sum().sum()
    table.attrs.update(device=None, records=len(pairs) + int(ours))
    return table.sort_index()


def beside_official_training_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (varbench commit and GPU) and batch with an official training timing: the official VAR-d16 step's
    img/s beside varbench's fastest eager and fastest compiled VAR-d16 step of the same call (with what each ran),
    and varbench / official (above 1: varbench is faster). A side that call did not time shows "—"."""
    pairs = _training_pairs(df)
    if pairs.empty:
        log.warning("beside_official_training_table: no official_var train_images_per_s records (the uncommitted "
                    "harness)")
        return pd.DataFrame()
    table = pd.DataFrame({"Official VAR (img/s)": pairs["official"], "varbench eager (img/s)": pairs["eager"],
                          "Eager ran": pairs["eager_ran"], "Eager / official": pairs["eager"] / pairs["official"],
                          "varbench compiled (img/s)": pairs["compiled"], "Compiled ran": pairs["compiled_ran"],
                          "Compiled / official": pairs["compiled"] / pairs["official"]})
    table.index = table.index.set_names(["Commit", "GPU", "Batch"])
    table.attrs.update(device=None, records=len(pairs) + int(pairs[["eager", "compiled"]].notna().sum().sum()))
    return table.sort_index()
