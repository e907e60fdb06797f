"""How long the compiled training step takes to compile, beside the speed it then trains at and the eager step's of
the same call (`compile_time_table`; issue 18: "compiling M-VAR takes under 90 s and is faster than eager").

From task=bench's compiled `train_images_per_s` records (varbench's own, not another system's): the first step's
wall time (`timing.first_step_s`: dynamo's trace, Inductor's code generation, the Triton autotuning of every kernel
the step runs, and the step itself), what was compiled (`compile_scope`: the whole model, or the blocks) and in which
Inductor mode. The eager step beside it is the same configuration's eager record of the same commit, GPU and batch,
so a compiled step is compared only with an eager one timed on the same machine. A first step depends on what
Inductor's cache held (a machine that compiled before compiles faster): "Cache files" is the number of files in it
before compiling (`compile_cache`; 0: cold), and a cold and a warm first step of one call are rows apart ("Cache"),
as are first-config and fully tuned Triton autotuning ("Autotune": how long the first step takes depends on it, and
the speed after it too). "Of which torch.compile" is the part of the first step in dynamo's trace and Inductor's
compile of the forward and backward graphs (`timing.compile_phases_s`); the rest is autotuning (the kernel
libraries' Triton autotuners, Inductor's benchmarks) and the step. Records from before `compile_scope`
existed compiled the whole model; from before `timing.first_step_s`, `compile_phases_s` or `compile_cache`, "—"."""

from __future__ import annotations

import logging

import pandas as pd

from varbench.analysis.load import mode_label, var_numerics_training

log = logging.getLogger(__name__)

CALL = ["commit", "device", "model", "resolution", "batch"]  # one call's measurements of one configuration


def _first_step_s(timing) -> float:
    return timing.get("first_step_s", float("nan")) if isinstance(timing, dict) else float("nan")


def _torch_compile_s(timing) -> float:
    """torch.compile's own share of the first step (`timing.compile_phases_s` summed; they do not nest)."""
    phases = timing.get("compile_phases_s") if isinstance(timing, dict) else None
    return sum(phases.values()) if phases else float("nan")


def _cache_files(cache) -> float:
    return cache.get("files", float("nan")) if isinstance(cache, dict) else float("nan")


def _cache_state(files: float) -> str:
    """cold (Inductor's cache held no file before compiling), warm, or "—" (a record from before `compile_cache`)."""
    return "—" if pd.isna(files) else "cold" if files == 0 else "warm"


def compile_time_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per call (commit and GPU), configuration, batch, compile scope and mode, cache (cold or warm) and autotune
    mode: the compiled step's first step (s), torch.compile's part of it (s) and img/s, the eager img/s of the same
    call and configuration, and compiled / eager. VAR's numerics only (fp32 weights, no FP8 matmuls): the
    deviations are tabled in the speed tables."""
    train = var_numerics_training(df)
    if not train["compiled"].eq(True).any():
        log.warning("compile_time_table: no compiled train_images_per_s records (task=bench task.compile=true)")
        return pd.DataFrame()
    train = train.sort_values("date", kind="stable").astype({"batch": int})
    files = train["compile_cache"].map(_cache_files)
    train = train.assign(value=pd.to_numeric(train["value"]), cache_files=files, cache=files.map(_cache_state),
                         tuned=train["autotune"].fillna("—"))
    compiled = train[train["compiled"].eq(True)].drop_duplicates([*CALL, "compile_scope", "compile_mode",
                                                                 "inductor_options", "cache", "tuned"], keep="last")
    eager = train[~train["compiled"].eq(True)].drop_duplicates(CALL, keep="last").set_index(CALL)["value"]
    keys = pd.MultiIndex.from_frame(compiled[CALL])
    table = pd.DataFrame({
        "Compiled": compiled["compile_scope"].to_numpy(), "Mode": mode_label(compiled).to_numpy(),
        "Cache": compiled["cache"].to_numpy(), "Autotune": compiled["tuned"].to_numpy(),
        "First step (s)": compiled["timing"].map(_first_step_s).to_numpy(),
        "Of which torch.compile (s)": compiled["timing"].map(_torch_compile_s).to_numpy(),
        "Cache files": compiled["cache_files"].to_numpy(),
        "Compiled (img/s)": compiled["value"].to_numpy(), "Eager (img/s)": eager.reindex(keys).to_numpy()},
        index=keys)
    table["Compiled / eager"] = table["Compiled (img/s)"] / table["Eager (img/s)"]
    table.index = table.index.set_names(["Commit", "GPU", "Model", "Resolution", "Batch"])
    table.attrs.update(device=None, records=len(compiled) + int(table["Eager (img/s)"].notna().sum()))
    return table.set_index(["Compiled", "Mode", "Cache", "Autotune"], append=True).sort_index()
