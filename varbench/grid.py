"""Grids (`python run.py grid=<name>`): cell ids, completion markers, locks, and the job wrapper that isolates a cell.

A cell is one job of a sweep. Its id is a short hash of its composed config (every default and override, before
interpolations are resolved; `hydra`, the cluster it ran on, `results_dir`, `run_dir`, `cell_id` and `dry_run` left
out: they do not change what it computes, nor do the kernels' tilings of the same sum, `TILING_KEYS`; a given
`tokenizer.checkpoint` enters by its content, `tokenizer_id`, as well as its path; a key added later enters only at a
value other than the one that computes what cells did before it), so a re-run of the grid, a requeued Slurm job and a
dry run all name the same cell the same way, and editing a YAML default gives the affected cells new ids. A cell's
folder (its Hydra output dir and its run_dir: checkpoints, samples, logs) is
`runs/cells/<results namespace>/<cell_id>` (set by the grid files), so a re-run resumes, and a grid recording into
another results_dir never reuses these checkpoints. Markers under `<results_dir>/cells/<cell_id>/`: `done.json` once
every step of the cell ran (a re-run skips it), `failed.json` with the error's traceback tail (a re-run tries again);
both are also appended to `<results_dir>/grid.jsonl` as `cell_complete` / `cell_failed` records. A run holds a lock on
its run_dir, a cell also one on its marker folder (varbench/utils/lock.py): a second process gets an error naming the
holder.

The configs read a cell's id and results folder through resolvers (`${varbench.cell_id:}`,
`${varbench.results_namespace:<results_dir>}`), registered by varbench.resolvers.register_resolvers. This module imports
no torch at import: the sweeper process only plans.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from varbench.utils.hashing import file_id
from varbench.utils.log import get_logger, is_rank_zero, job_logging
from varbench.utils.resume import ADDED_KEYS_AT_OLD_BEHAVIOUR, TILING_KEYS

log = get_logger(__name__)

# top-level config keys that do not change what a cell computes (where it runs, where it records, whether it runs,
# what it shows while it runs, where its shared tokenizer lives: that folder's own key says what it holds; where
# torch.compile caches)
NOT_IDENTITY = ("dry_run", "cluster", "results_dir", "run_dir", "cell_id", "hydra", "logger", "progress",
                "tokenizer_dir", "compile_cache_dir")
ERROR_TAIL = 4000  # characters of traceback kept in failed.json


def identity_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that matter to a cell, normalised ('+key=v' is 'key=v') and sorted (for printing)."""
    out = []
    for item in overrides:
        item = str(item).lstrip("+")
        key = item.split("=", 1)[0].lstrip("~")
        if key.split(".", 1)[0] in NOT_IDENTITY:
            continue
        out.append(item)
    return sorted(out)


def cell_id(cfg: DictConfig) -> str:
    """A stable 12-hex-digit id of a cell from its composed config (see the module docstring). Interpolations are
    hashed as written: the values they read are hashed too, and `run_dir` reads the id itself."""
    container = OmegaConf.to_container(cfg, resolve=False)
    identity = {k: v for k, v in container.items() if k not in NOT_IDENTITY}
    for dotted, old_behaviour in ADDED_KEYS_AT_OLD_BEHAVIOUR.items():  # a cell composed before a key existed keeps
        group, key = dotted.split(".")                                 # its id (and its done marker)
        if isinstance(identity.get(group), dict) and identity[group].get(key, old_behaviour) == old_behaviour:
            identity[group].pop(key, None)
    for group, key in (dotted.split(".") for dotted in TILING_KEYS):
        if isinstance(identity.get(group), dict):
            identity[group].pop(key, None)
    checkpoint = (container.get("tokenizer") or {}).get("checkpoint")
    if isinstance(checkpoint, str) and Path(checkpoint).is_file():
        # a tokenizer retrained into the same path is another tokenizer: its cells must not find the old cells' done
        # markers (issue 19: the study tokenizers retrained in session 12 have the lost ones' paths and other weights)
        identity["tokenizer_id"] = file_id(checkpoint)
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def results_namespace(results_dir) -> str:
    """The folder name under runs/cells/ of a results_dir's cells: its last part and a hash of its absolute path
    ("results-1a2b3c4d"), so two grids recording into different results_dirs never share a cell's checkpoints."""
    path = Path(str(results_dir)).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{path.name or 'root'}-{digest}"


def cell_dir(results_dir, cid: str) -> Path:
    return Path(results_dir) / "cells" / cid


def is_complete(results_dir, cid: str) -> bool:
    """Whether every step of the cell ran (its `done.json` exists)."""
    return (cell_dir(results_dir, cid) / "done.json").is_file()


def status(results_dir, cid: str) -> str:
    """'complete', 'failed' (the last attempt raised) or 'pending'."""
    if is_complete(results_dir, cid):
        return "complete"
    return "failed" if (cell_dir(results_dir, cid) / "failed.json").is_file() else "pending"


def _write_marker(results_dir, cid: str, name: str, payload: dict) -> Path:
    folder = cell_dir(results_dir, cid)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    from varbench.utils.records import finite  # torch: only in the job that ran the cell
    tmp.write_text(json.dumps(finite(payload), indent=1, default=str, allow_nan=False))  # strict JSON, as records
    tmp.replace(folder / name)  # atomic: a reader never sees half a marker
    return folder / name


def mark_complete(results_dir, cid: str, overrides: Iterable[str], config=None, summary: Any = None) -> Path:
    """Write `done.json` (and drop a `failed.json` of an earlier attempt); append a `cell_complete` record."""
    from varbench.utils.records import record  # torch: only in the job that ran the cell
    overrides = identity_overrides(overrides)
    (cell_dir(results_dir, cid) / "failed.json").unlink(missing_ok=True)
    record(Path(results_dir) / "grid.jsonl", "cell_complete", True, "bool", config=config, cell_id=cid,
           overrides=overrides)
    return _write_marker(results_dir, cid, "done.json", {"cell_id": cid, "overrides": overrides, "summary": summary})


def mark_failed(results_dir, cid: str, overrides: Iterable[str], error: str, config=None) -> Path:
    """Write `failed.json` with the error (a traceback tail); append a `cell_failed` record."""
    from varbench.utils.records import record
    overrides = identity_overrides(overrides)
    record(Path(results_dir) / "grid.jsonl", "cell_failed", True, "bool", config=config, cell_id=cid,
           overrides=overrides, error=error)
    return _write_marker(results_dir, cid, "failed.json", {"cell_id": cid, "overrides": overrides, "error": error})


def run_cell(cfg: DictConfig) -> Any:
    """The job function of run.py. A single run (`python run.py ...`) or a plain multirun (`-m`) runs its task and
    raises as usual; a job of a grid (`grid=<name>`) is a cell: skipped when complete, marked complete after its task,
    and when its task raises, the failure is recorded and the job returns so that the other cells go on. Either way
    the run holds its run_dir's lock while it runs (only rank 0 of a multi-process run takes it), and logs as
    `cfg.progress` says (varbench/utils/log.py)."""
    with job_logging(cfg.get("progress", "auto")):
        return _run_job(cfg)


def _run_job(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from varbench.tasks import run_task
    _freeze_cell_id(cfg)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.runtime.choices.get("grid") is None:
        with _lock(cfg.run_dir, "run dir"):
            summary = run_task(cfg)
        if is_rank_zero():  # a task that prints nothing of its own still says where its records went
            log.info("task=%s done: run folder %s, records under %s", cfg.task.name, cfg.run_dir, cfg.results_dir)
        return summary
    cid, results, overrides = cfg.cell_id, cfg.results_dir, list(hydra_cfg.overrides.task)
    if is_complete(results, cid):  # a cell finished by another sweep while this one was queued, or a requeue
        log.info("cell %s is complete: skipped", cid)
        return {"cell_id": cid, "status": "complete", "skipped": True}
    log.info("cell %s: %s (run_dir %s)", cid, " ".join(identity_overrides(overrides)), cfg.run_dir)
    with _lock(cell_dir(results, cid), "grid cell"), _lock(cfg.run_dir, "run dir"):
        return _run_locked_cell(cfg, cid, results, overrides, run_task)


def _lock(folder, what: str):
    """The folder's lock in the process that writes (rank 0); nothing in the other ranks of a multi-process run."""
    from contextlib import nullcontext

    from varbench.utils.lock import FolderLock
    return FolderLock(folder, what) if is_rank_zero() else nullcontext()


def _freeze_cell_id(cfg: DictConfig) -> None:
    """Replace the `${varbench.cell_id:}` interpolation by its value: a task may edit the config later (e.g. the
    main task's per-step overrides), and every record of this run must carry the id it started with."""
    from omegaconf import open_dict
    if "cell_id" in cfg and not OmegaConf.is_interpolation(cfg, "cell_id"):
        return  # a value the user set
    cid = cell_id(cfg)
    with open_dict(cfg):
        cfg.cell_id = cid


def _run_locked_cell(cfg: DictConfig, cid: str, results, overrides: list, run_task) -> dict:
    """A grid cell's task, its resume / failure / completion records (the caller holds the locks)."""
    from varbench.preemption import PreemptionBridge
    try:
        if is_rank_zero():
            record_resume(cfg, cid)
        with PreemptionBridge() as bridge:
            summary = bridge.run(run_task, cfg)
    except Exception as err:  # noqa: BLE001  broad on purpose: a cell's failure is recorded and the sweep goes on
        error = traceback.format_exc()[-ERROR_TAIL:]
        if is_rank_zero():
            path = mark_failed(results, cid, overrides, error, config=cfg)
            log.error("cell %s FAILED: %s: %s (see %s)", cid, type(err).__name__, err, path)
        return {"cell_id": cid, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    if is_rank_zero():
        mark_complete(results, cid, overrides, config=cfg, summary=_small(summary))
    log.info("cell %s complete", cid)
    return {"cell_id": cid, "status": "complete"}


def record_resume(cfg: DictConfig, cid: str) -> int | None:
    """When the cell's run_dir already holds a training checkpoint (a requeued or re-run cell), append a
    `cell_resume` record with the step the train task resumes from and Slurm's restart count; return the step."""
    from varbench.training.checkpoints import latest
    from varbench.utils.records import record
    folder = latest(Path(cfg.run_dir) / "checkpoints")
    if folder is None:
        return None
    step = int(folder.name.split("_")[-1])
    record(Path(cfg.results_dir) / "grid.jsonl", "cell_resume", step, "step", config=cfg, cell_id=cid,
           restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0")), checkpoint=str(folder))
    log.info("cell %s resumes from %s", cid, folder)
    return step


def _small(summary: Any) -> Any:
    """The scalar parts of a task summary (for done.json): nested dicts of numbers and strings."""
    if isinstance(summary, dict):
        return {str(k): _small(v) for k, v in summary.items()
                if isinstance(v, (dict, int, float, str, bool, type(None)))}
    return summary
