"""task=report: regenerate every table (markdown + LaTeX) and figure of the study from the records.

`python run.py task=report` reads every .jsonl under `task.records` (default: results_dir) and writes into
`task.out_dir` (default: results_dir/report) the tables of varbench.analysis.tables, the figures of
varbench.analysis.figures and a README.md listing what was generated, from how many records, and what could not
be generated for lack of records. Outputs of an earlier report that this one cannot regenerate are removed, so
the folder never shows a stale number.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from varbench.analysis import (
    attention_kernels,
    checks,
    compile_time,
    crossover,
    figures,
    floors,
    goals,
    guidance,
    host,
    numerics,
    official,
    sample_sheet,
    scale_up,
    ssd_scales,
    stats,
    step_ops,
    study,
    tables,
    versus,
)
from varbench.analysis.format import by_column_group, write_table
from varbench.analysis.load import POLICY, load_records
from varbench.utils.log import get_logger, said_once

log = get_logger(__name__)

BENCH = "train_images_per_s / sample_latency_ms / state_bytes_per_image (task=bench)"
QUALITY = "fid / embedded_fd / class_accuracy / ... (the evaluation task)"
# name -> (function, title, the records it needs)
TABLES = {
    # (written one section per study or evaluation, and one for speed: as one table they were 98 and 105 columns)
    "main_table": (lambda df, device: by_column_group(tables.main_table(df, device)),
                   "Main results: size, quality, speed and memory per model", f"{BENCH} or {QUALITY}"),
    "mixer_ablation": (lambda df, device: by_column_group(tables.mixer_ablation(df, device)),
                       "Inter-scale mixer ablation (quality mean ± std over seeds)", f"{BENCH} or {QUALITY}"),
    "resolution_scaling": (tables.resolution_scaling, "Speed and inference state vs resolution", BENCH),
    "parity_table": (lambda df, device: checks.parity_table(df), "Kernel vs reference parity (worst relative RMS)",
                     "parity_rel_rms / parity_error (the GPU parity script)"),
    "gpu_tests": (lambda df, device: checks.gpu_test_table(df),
                  "Tests that only a GPU runs: the newest outcome of each",
                  "gpu_test (benchmarks/gpu_tests.py)"),
    "study_ranking": (study.study_ranking, "Mixer study: configurations ranked by quality (mean ± std over seeds)",
                      f"{QUALITY} of 2 or more seeds per configuration"),
    "versus_var": (versus.versus_var, "Each configuration against VAR at the same depth and resolution: difference "
                   f"of means over seeds (n: the Seeds column) with a percentile bootstrap {stats.LEVEL:.0%} interval "
                   f"({stats.N_RESAMPLES:,} resamples of the seeds, generator seed {stats.BOOTSTRAP_SEED}), Welch's "
                   f"two-sided t-test, p Holm-corrected over every comparison of the study (significant: p < "
                   f"{stats.ALPHA})", f"{QUALITY} or val_nll of 2 or more seeds"),
    "tokenizer_variance": (versus.tokenizer_variance, "Tokenizer and seed variance components (one-way "
                           "random-effects ANOVA per configuration)", f"{QUALITY} or val_nll on 2 or more tokenizers"),
    "floors": (floors.floors_table, "Floors of each study's quality metrics: real images of another split and the "
               "tokenizer's reconstructions of them against the reference, beside the best configuration and VAR "
               "(means over seeds; the floors count their own real images, n)",
               f"<metric>_floor and <metric>_recon (task=evaluate), and {QUALITY}"),
    "guidance": (guidance.guidance_table, "Quality against the guidance scale: the ranking quality column, mean over "
                 "the seeds evaluated at every scale; each model's best scale (picked after the fact) beside the "
                 "study's fixed one", f"{QUALITY} at 2 or more guidance scales (task=evaluate task.cfg=<scale>)"),
    "costs_table": (study.costs_table, "Analytic parameters, FLOPs and inference state per model and resolution",
                    "analytic_cost (task=costs)"),
    "crossover_atlas": (crossover.crossover_table, "Crossover atlas: where each configuration overtakes attention "
                        "in training throughput, sampling latency and memory", f"{BENCH} of attention and another "
                        "configuration at one depth"),
    "scale_up": (scale_up.scale_up_table, "What each configuration would cost at ImageNet scale: VAR's d16 recipe "
                 "(333,800 iterations at batch 768) in analytic training FLOPs (task=costs, depth 16, 256 px), in "
                 "H200-hours at the FLOP rate VAR-d16 trains at compiled on one H200 (an estimate: it assumes every "
                 "mixer trains at VAR's rate)", "analytic_cost (task=costs) and VAR-d16's compiled train_images_per_s"),
    "bench_goals": (goals.bench_goals, "Speed and memory goals of the bench protocol (targets vs measured)", BENCH),
    "host_dispatch": (host.host_dispatch_table, "What one eager batch-1 VAR-d16 generation (CFG 1.5, top-k 900, "
                      "top-p 0.96) asks of the host, tokenizer decode excluded: aten ops dispatched, the non-view "
                      "ones among them (about the kernels a GPU launches) and Python function calls; varbench and the "
                      "official VAR counted by one counter on a CPU (the counts do not depend on the width)",
                      "aten_ops and python_calls (benchmarks/op_count.py)"),
    "beside_official": (official.beside_official_table, "The official VAR-d16 sampler beside varbench's eager one, "
                        "timed on one machine in one device call (CFG 1.5, top-k 900, top-p 0.96, decode included; "
                        "the same timer)", "sample_latency_ms of system official_var (the uncommitted harness) and "
                        "task=bench's eager VAR-d16 of the same commit"),
    "beside_official_training": (official.beside_official_training_table, "The official VAR-d16 training step beside "
                                 "varbench's fastest eager and compiled ones, timed on one machine in one device call "
                                 "(batch 32, forward + cross-entropy + backward + fused AdamW, bf16 autocast, the "
                                 "same timer)", "train_images_per_s of system official_var (the uncommitted harness) "
                                 "and task=bench's VAR-d16 training of the same commit"),
    "compile_time": (compile_time.compile_time_table, "How long the compiled training step takes to compile (its first "
                     "step: trace, code generation, Triton autotuning, one step) beside the speed it then trains at "
                     "and the eager step's of the same call",
                     "task=bench's compiled train_images_per_s (task.compile)"),
    "numerics_speed": (numerics.numerics_speed_table, "The training step under a numerics option (FP8 matmuls, bf16 "
                       "weights) beside VAR's numerics (bf16 autocast, fp32 weights), timed in the same call",
                       "task=bench's train_images_per_s under task.fp8 or task.param_dtype=bf16, and the same call's "
                       "step under VAR's numerics"),
    "step_ops": (step_ops.step_ops_table, "Where a training step's GPU time goes: the profile's operators by kind of "
                 "kernel, a fused kernel by the ops it fuses (ms per step; in a profile of the top 15, the rest as "
                 "'not listed'), beside the step's median wall time", "task=bench's train_images_per_s with its "
                 "operators accounted for (timing.top_ops: since session 27 all, sessions 24-26 the top 15 and the "
                 "rest)"),
    "attention_kernels": (attention_kernels.attention_kernels_table, "The scale layout's attention alone at VAR-d16's "
                          "shapes, each way varbench can call the kernels: forward and forward + backward (eager "
                          "calls, so a variant of many calls includes its host launches), the distance of its output "
                          "from the fp64 oracle and the kernels that ran", "attention_ms "
                          "(benchmarks/attention_backends.py)"),
    "ssd_scales": (ssd_scales.ssd_scales_table, "One scale's SSD scan as M-VAR-d16's sampler runs it (from a carried "
                   "state), in the configured chunk and in the chunk fitted to the scale (mamba2's fit_chunk): time "
                   "per scan, the fitted scan's largest kernels, the bandwidth its state passing reaches and its "
                   "largest differences from the configured chunk's", "ssd_step_us (benchmarks/ssd_scales.py)"),
    "parallel_scaling": (study.parallel_scaling, "Training throughput on the GPUs of one host (DDP / FSDP2)",
                         "parallel_train_images_per_s (task=scaling under torchrun)"),
}
FIGURES = {
    "quality_vs_flops": (figures.quality_vs_flops, "quality vs FLOPs",
                         f"{QUALITY} and fwd_flops_per_image (task=bench) of the same configuration"),
    "speed_memory_vs_resolution": (figures.speed_memory_vs_resolution, "speed and memory vs resolution", BENCH),
    "crossover_atlas": (figures.crossover_atlas, "advantage over attention vs resolution per cost",
                        f"{BENCH} of attention and another configuration, comparable at some resolution"),
    "generalisation_gap": (figures.generalisation_gap, "held-out vs training NLL per study",
                           "val_nll and train_nll (task=evaluate) of 2 or more seeds per configuration"),
    "training_curves": (lambda df, path, device: figures.training_curves(df, path), "training loss curves",
                        "train_loss (task=train)"),
    "sample_grids": (lambda df, path, device: sample_sheet.sample_grids(df, path), "sample grids",
                     "sample_grid with its PNG on disk (task=sample)"),
}


def _note(table: pd.DataFrame) -> str:
    device = table.attrs.get("device")
    timed = f" GPU: {device}." if device else ""
    modes = table.attrs.get("autotune") or {}
    if modes:
        timed += " Triton autotuning of the timings: " + ", ".join(f"{m} ({n})" for m, n in sorted(modes.items()))
        first = " ('first': each Triton kernel ran its first working config, not its tuned one)"
        timed += (first if "first" in modes else "") + "."
    if table.attrs.get("legend"):  # a table whose cells need a key (crossover_atlas's protocol letters)
        timed += " " + table.attrs["legend"]
    machines = table.attrs.get("machines") or {}
    if len(machines) > 1:
        timed += (" Timings from several machines: " + ", ".join(f"{m} ({n})" for m, n in sorted(machines.items()))
                  + "; eager batch-1 latency is bound by the host's CPU, so compare it within one machine"
                  " (the records' `machine` field).")
    return f"From {table.attrs.get('records', 0)} records. {POLICY}{timed}"


def _clear(out_dir: Path) -> None:
    """Remove this report's own outputs from an earlier run (only the files it would write)."""
    for name in TABLES:
        for ext in ("md", "tex"):
            (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
    for name in FIGURES:
        for ext in ("png", "pdf"):
            (out_dir / f"{name}.{ext}").unlink(missing_ok=True)


def _readme(df: pd.DataFrame, records, made: dict, skipped: dict) -> str:
    """The report's index: what was generated, from which records, and what was not."""
    files = df["source"].nunique()
    lines = ["# varbench report", "",
             f"Generated by `python run.py task=report` from {len(df)} records in {files} files under `{records}`.",
             "Every number comes from those records; regenerate instead of editing.", ""]
    damaged = df.attrs.get("damaged") or []
    if damaged:
        lines += [f"**{len(damaged)} damaged record lines were skipped** (not JSON: cut short, e.g. by a full disk):",
                  ""] + [f"- `{line}`" for line in damaged] + [""]
    synthetic = int(df["synthetic"].eq(True).sum())
    if synthetic:
        lines += [f"**{synthetic} records are marked synthetic (test fixtures), not measurements.**", ""]
    if len(df):
        span = f"Dates {df['date'].min():%Y-%m-%d %H:%M} to {df['date'].max():%Y-%m-%d %H:%M} UTC"
        where = f"commits {sorted(df['commit'].dropna().unique())}; devices {sorted(df['device'].dropna().unique())}"
        lines += [f"{span}; {where}.", ""]
    lines += ["## Generated", ""] + ([f"- [{name}]({name}) — {what}" for name, what in made.items()] or ["nothing"])
    lines += [""]
    if skipped:
        lines += ["## Not generated (missing records)", ""] + [f"- {n}: {why}" for n, why in skipped.items()] + [""]
    counts = df["metric"].value_counts().sort_index()
    lines += ["## Records per metric", "", counts.rename("records").to_frame().to_markdown(), ""]
    return "\n".join(lines)


def build_report(records, out_dir, device=None) -> dict[str, str]:
    """Write every table and figure from the records under `records` into `out_dir`.

    Returns:
        dict: file name -> path of every file written (tables .md/.tex, figures .png, README.md).
    """
    df = load_records(records)
    if device is not None and device not in set(df["device"].dropna()):  # (before the old report is cleared)
        raise ValueError(f"task.device = {device!r}: no record under {records} names it; the records' devices: "
                         f"{sorted(df['device'].dropna().unique())}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    made, skipped, paths = {}, {}, {}
    for name, (make, title, needs) in TABLES.items():
        table = make(df, device)
        if table.empty:
            skipped[name] = f"needs {needs}"
            continue
        for path in write_table(table, out_dir, name, title, _note(table), data=f"records under {records}"):
            made[path.name], paths[path.name] = f"{title} ({table.attrs.get('records')} records)", str(path)
    for name, (draw, what, needs) in FIGURES.items():
        path = draw(df, out_dir / f"{name}.png", device)
        if path is None:
            skipped[f"{name}.png"] = f"{what}: needs {needs} (the log says what was found)"
            continue
        for drawn in (path, path.with_suffix(".pdf")):  # the PNG to look at, the PDF for a paper
            made[drawn.name], paths[drawn.name] = what, str(drawn)
    readme = out_dir / "README.md"
    readme.write_text(_readme(df, records, made, skipped))
    paths["README.md"] = str(readme)
    log.info("report: %d files in %s from %d records; not generated: %s", len(paths), out_dir, len(df),
             sorted(skipped) or "none")
    return paths


def main(cfg: DictConfig) -> dict[str, str]:
    """Write every table and figure of the records under `task.records` into `task.out_dir`; return {name: path}."""
    t = cfg.task
    with said_once():  # each table reads the same records: a caveat about them is said once, not once per table
        return build_report(t.records, t.out_dir, device=t.get("device"))
