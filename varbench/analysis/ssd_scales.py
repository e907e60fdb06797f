"""One scale's SSD scan as M-VAR's sampler runs it, the configured chunk against the chunk fitted to the scale
(`ssd_scales_table`; issue 18 goal 2, M-VAR sampling; mamba2's `fit_chunk`).

From `benchmarks/ssd_scales.py`'s `ssd_step_us` records: per call (commit and GPU), batch and scale (its tokens) the
scan's time in each chunk, and the fitted scan's kernels. The state-passing kernel moves the whole state whatever the
scale: it reads the chunk's state and the carried one (fp32) and writes the final state (fp32) and the state entering
the chunk (in the inputs' dtype). Its bytes over its time is the bandwidth it reaches: near the GPU's memory
bandwidth, only a kernel that moves fewer bytes (one that folds the passing into the chunk-state kernel) is faster."""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

CALL = ["commit", "device", "batch", "tokens"]  # one call's timing of one scale
STATE_PASSING = "_state_passing_fwd_kernel"
FP32_PASSES = 3  # the chunk's state and the carried one read, the final state written
ITEM_BYTES = {"torch.bfloat16": 2, "torch.float16": 2, "torch.float32": 4}


def state_passing_bytes(rows: pd.DataFrame) -> pd.Series:
    """Bytes one state-passing call moves over a one-chunk scan: the state (batch x heads x head_dim x d_state)
    three times in fp32 and once in the inputs' dtype."""
    elements = rows["batch"] * rows["heads"] * rows["head_dim"] * rows["d_state"]
    return elements * (FP32_PASSES * 4 + rows["dtype"].map(ITEM_BYTES))


def _kernel_us(kernels: pd.Series, name: str) -> pd.Series:
    return kernels.map(lambda k: k.get(name) if isinstance(k, dict) else None).astype(float)


def ssd_scales_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (commit and GPU), batch and scale: the scan in the configured and in the fitted chunk (us, and the
    speed-up, configured / fitted), the fitted scan's chunk-scan, chunk-state and state-passing kernels (us), the
    state passing's bandwidth (GB/s) and the fitted scan's largest differences from the configured one's output and
    final state; the latest timing of each."""
    rows = df[df["metric"].eq("ssd_step_us")]
    if rows.empty:
        log.warning("ssd_scales_table: no ssd_step_us records (benchmarks/ssd_scales.py)")
        return pd.DataFrame()
    rows = rows.sort_values("date", kind="stable").drop_duplicates([*CALL, "chunk_kind"], keep="last")
    rows = rows.astype({"batch": int, "tokens": int, "chunk_size": int}).assign(
        passing_bytes=state_passing_bytes(rows))
    configured = rows[rows["chunk_kind"].eq("configured")].set_index(CALL)
    fitted = rows[rows["chunk_kind"].eq("fitted")].set_index(CALL)
    passing_us = _kernel_us(fitted["kernels"], STATE_PASSING)
    table = pd.DataFrame({
        "Configured chunk": configured["chunk_size"], "Configured (us)": configured["value"].astype(float),
        "Fitted chunk": fitted["chunk_size"], "Fitted (us)": fitted["value"].astype(float),
        "Chunk scan (us)": _kernel_us(fitted["kernels"], "_chunk_scan_fwd_kernel"),
        "Chunk state (us)": _kernel_us(fitted["kernels"], "_chunk_state_fwd_kernel"),
        "State passing (us)": passing_us,
        "State passing (GB/s)": fitted["passing_bytes"] / passing_us / 1e3,
        "Max |y diff|": fitted["max_abs_diff_y"].astype(float),
        "Max |state diff|": fitted["max_abs_diff_state"].astype(float)})
    table.insert(4, "Speed-up", table["Configured (us)"] / table["Fitted (us)"])
    table.index = table.index.set_names(["Commit", "GPU", "Batch", "Tokens"])
    table.attrs.update(device=None, records=len(rows))
    return table.sort_index()
