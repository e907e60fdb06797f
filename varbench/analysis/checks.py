"""Tables of the checks run on the GPU: each kernel against its reference (parity) and the tests that only a GPU runs.

Like varbench.analysis.tables, every function takes the DataFrame of `load_records` and returns a DataFrame of raw
recorded values; `df.attrs` carries `device` and `records`.
"""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.load import latest, numeric

log = logging.getLogger(__name__)


def _short_dtype(dtype) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(dtype).removeprefix("torch."), str(dtype))


def parity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (group, entry, backend, dtype): the worst relative RMS error of the kernel against the reference over
    every compared tensor, which tensor it was, how many were compared, and the error of a check that could not
    run. The device is an index level when the records come from several."""
    rms, err = latest(df, "parity_rel_rms"), latest(df, "parity_error")
    if rms.empty and err.empty:
        log.warning("parity_table: no parity_rel_rms / parity_error records (the GPU parity script writes them)")
        return pd.DataFrame()
    keys = ["device", "group", "name", "backend", "dtype"]
    rows = []
    for key, g in rms.assign(v=numeric(rms) if len(rms) else None).groupby(keys, dropna=False):
        worst = g.loc[g["v"].idxmax()]
        rows.append(dict(zip(keys, key), **{"Worst rel RMS": worst["v"], "Worst at": worst["compared"],
                                            "Checks": len(g)}))
    rows += [dict(zip(keys, [r[k] for k in keys]), Error=r["error"]) for _, r in err.iterrows()]
    table = pd.DataFrame(rows).assign(dtype=lambda d: d["dtype"].map(_short_dtype))
    names = {"group": "Group", "name": "Entry", "backend": "Backend", "dtype": "Dtype"}
    return _indexed_per_device(table, names, records=len(rms) + len(err))


def _what_happened(message) -> str:
    """The line of a test report that says what happened: pytest's first error line ("E   ..."), else the last."""
    lines = [ln.strip() for ln in str(message or "").splitlines() if ln.strip()]
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    if errors:
        return errors[0][:160]
    return lines[-1][:160] if lines else ""


def gpu_test_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (device, test): the newest outcome, its duration, the commit it ran at and, unless it passed, the line of
    its report that says why. The CUDA-only tests skip on CI's CPUs, so this table (from benchmarks/gpu_tests.py)
    is their record. The device is an index level when the records come from several."""
    runs = latest(df, "gpu_test")
    if runs.empty:
        log.warning("gpu_test_table: no gpu_test records (benchmarks/gpu_tests.py writes them)")
        return pd.DataFrame()
    table = pd.DataFrame({
        "device": runs["device"], "Test": runs["test"], "Outcome": runs["value"],
        "Seconds": pd.to_numeric(runs["duration_s"]), "Commit": runs["commit"].str[:12],
        "Report": [("" if v == "passed" else _what_happened(m)) for v, m in zip(runs["value"], runs["message"])],
    })
    return _indexed_per_device(table, {"Test": "Test"}, records=len(runs))


def _indexed_per_device(table: pd.DataFrame, names: dict, records: int) -> pd.DataFrame:
    """`table` indexed by the columns of `names` (renamed to its values), sorted, behind a "Device" level when its
    rows come from several devices; `attrs` name the one device (else None) and the record count."""
    devices = list(table["device"].unique())
    several = len(devices) > 1
    table = table.set_index((["device"] if several else []) + list(names)).sort_index()
    table = table if several else table.drop(columns="device")
    table.index.names = (["Device"] if several else []) + list(names.values())
    table.attrs.update(device=None if several else devices[0], records=records)
    return table
