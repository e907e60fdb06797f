"""What one eager batch-1 VAR-d16 generation asks of the host, per system (varbench, the official VAR) and precision
(`host_dispatch_table`; issue 18: eager batch-1 sampling is bound by the host). From `benchmarks/op_count.py`'s CPU
records: the aten ops dispatched (`aten_ops`, one record per part of the generation), the non-view ones among them
(about the kernels a GPU launches), and the Python function calls (`python_calls`), the tokenizer decode excluded
(the same network in both systems)."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.load import latest, numeric

log = logging.getLogger(__name__)

SYSTEMS = {"varbench": "varbench", "official_var": "official VAR"}
PRECISIONS = {"fp32": "fp32", "bf16-autocast-cpu": "bf16 autocast (CPU)", "bf16-autocast-cuda": "bf16 autocast (CUDA)"}
OPS, KERNELS, CALLS = "Aten ops", "Non-view ops (~kernels)", "Python calls"


def host_dispatch_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per system and precision, per batch-1 generation (CFG 1.5, top-k 900, top-p 0.96), decode excluded: aten
    ops, non-view ops and Python calls. Systems or precisions with no Python-call record show "—" there."""
    ops = latest(df, "aten_ops")
    ops = ops[ops["part"] != "decode"]
    if ops.empty:
        log.warning("host_dispatch_table: no aten_ops records (benchmarks/op_count.py)")
        return pd.DataFrame()
    keys = ["system", "precision"]
    table = ops.assign(value=numeric(ops), kernels=numeric(ops, "kernels")).groupby(keys)[["value", "kernels"]].sum()
    table.columns = [OPS, KERNELS]
    calls = latest(df, "python_calls")
    table[CALLS] = numeric(calls).set_axis(pd.MultiIndex.from_frame(calls[keys])).reindex(table.index) \
        if len(calls) else float("nan")
    table = table.rename(index=SYSTEMS, level="system").rename(index=PRECISIONS, level="precision")
    table.index.names = ["System", "Precision"]
    table.attrs.update(device=None, records=len(ops) + len(calls))
    return table.sort_index()
