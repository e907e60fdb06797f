"""The scale layout's attention alone, each way varbench can call the kernels (`attention_kernels_table`; issue 18:
"fuse ... the block-causal attention": which backend and `sdpa_scales` options to time the training step with).

From `benchmarks/attention_backends.py`'s `attention_ms` records: per variant (flex; the dense-mask SDPA reference;
`sdpa_scales:N:K`, the first scales with fewer than N tokens in one masked call and SDPA's kernels K first) the
forward and forward + backward medians (CUDA events around eager calls), TFLOP/s over the pairs the mask allows,
the output's largest distance from the fp64 oracle, and the attention kernels the profiler saw run. A variant of many
calls (sdpa_scales with a small N) is timed with its host launches: inside a compiled training step the host runs
ahead and its kernels alone count, so there the step's profile (report/step_ops.md) is the measure."""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

CALL = ["commit", "device", "batch", "kind", "variant"]  # one call's timing of one variant


def _kernels(names) -> str:
    """The attention kernels a record says ran, short: aten's name without its `aten::_` and `_forward` parts."""
    short = {n.removeprefix("aten::_").removeprefix("scaled_dot_product_").removesuffix("_forward")
             for n in names or () if "backward" not in n}
    return ", ".join(sorted(short))


def attention_kernels_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (commit and GPU), batch, mask kind and variant: forward, backward and forward + backward (ms),
    TFLOP/s of forward + backward, max |out - fp64 oracle| and the forward kernels that ran; the latest timing."""
    rows = df[df["metric"].eq("attention_ms")]
    if rows.empty:
        log.warning("attention_kernels_table: no attention_ms records (benchmarks/attention_backends.py)")
        return pd.DataFrame()
    rows = rows.sort_values("date", kind="stable").drop_duplicates(CALL, keep="last")
    table = pd.DataFrame({
        "Forward (ms)": pd.to_numeric(rows["forward_ms"]), "Backward (ms)": pd.to_numeric(rows["backward_ms"]),
        "Forward + backward (ms)": pd.to_numeric(rows["value"]), "TFLOP/s": pd.to_numeric(rows["tflops"]),
        "Max |out - fp64|": pd.to_numeric(rows["max_abs_diff_out"]),
        "Forward kernels": rows["kernels_ran"].map(_kernels)}).set_axis(rows.index)
    table.index = pd.MultiIndex.from_frame(rows[CALL].astype({"batch": int}),
                                           names=["Commit", "GPU", "Batch", "Kind", "Variant"])
    table.attrs.update(device=None, records=len(rows))
    return table.sort_index()
