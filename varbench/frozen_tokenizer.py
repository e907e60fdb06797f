"""One frozen tokenizer per data set: task=main's train_tokenizer and tokenize steps run once, into a folder shared by
every run and grid cell that needs the same tokenizer and token cache.

The folder is `<tokenizer_dir>/<key>` (`tokenizer_dir` in config.yaml, `runs/tokenizers` by default: outside the
repository's results/), the key 16 hex digits of the sha256 of what determines the steps' output (`identity`): the
tokenizer's architecture (`tokenizer`, its `checkpoint` aside), the data set (`data`, its loader knobs aside), each
step's task config as it runs (`task.overrides.<step>` included; knobs that only show progress or place files aside),
the device type and which steps run. The tokenizer has its own seed, `tokenizer_seed` (0 by default, read by
train_tokenizer's `task.seed`), so the cells of a grid, which sweep the AR model's `seed`, share one tokenizer; the
mixer, model, training and evaluation settings of a cell do not enter the key. Neither does the commit: after a change
to the tokenizer's or the data's code, use another tokenizer_dir (the marker names the commit that wrote a folder).

A folder holds `tokenizer/` (task=train_tokenizer's output), `token_cache/<split>/` (task=tokenize's) and, written
last and atomically, `complete.json`: the identity, the checkpoint and cache (relative to the folder), the
checkpoint's `tokenizer_id`, the commit and the steps' summaries. A folder without it is never used: the next run
redoes the steps there, each resuming from its own files (the tokenizer's train state, the cache's finished shards).
Runs side by side (cluster=local_parallel, a Slurm array) wait for each other on the folder's lock
(varbench/utils/lock.py): one runs the steps, the others then find the marker and reuse the folder. A lock held by a
process that died on another host is not seen as dead (lock.py): its waiters wait until their own job ends.

A run that gives `tokenizer.checkpoint` skips train_tokenizer, one that gives `train.token_cache` skips tokenize
(`steps_to_share`); with both given, nothing here runs.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from varbench.config_schema import step_config
from varbench.utils.hashing import file_id, file_sha256, settings_digest
from varbench.utils.lock import FolderLock
from varbench.utils.log import get_logger
from varbench.utils.run_spec import write_json_atomic

log = get_logger(__name__)

SHARED_STEPS = ("train_tokenizer", "tokenize")
MARKER = "complete.json"
POLL_S = 2.0  # how often a waiting run looks at the lock
# task-config keys that change how a step runs or where it writes, never what it writes
NOT_IDENTITY = {"train_tokenizer": ("progress", "log_every", "ckpt_every"),
                "tokenize": ("cache_dir", "speedup_batches")}
DATA_NOT_IDENTITY = ("num_workers", "prefetch_factor")  # loader speed knobs (tokenize encodes one center crop each)


def steps_to_share(cfg: DictConfig) -> list[str]:
    """The tokenizer steps of `task.steps` this run must produce: train_tokenizer unless `tokenizer.checkpoint` is
    given, tokenize unless `train.token_cache` is given. A token cache without its tokenizer is an error."""
    steps = [s for s in cfg.task.steps if s in SHARED_STEPS]
    # select: a `???` checkpoint (tokenizer=var's) reads as not given
    checkpoint, cache = OmegaConf.select(cfg, "tokenizer.checkpoint"), OmegaConf.select(cfg, "train.token_cache")
    if cache and not checkpoint and "train_tokenizer" in steps:
        raise ValueError(f"train.token_cache = {cache} is given but tokenizer.checkpoint is not: a new tokenizer would "
                         f"not match the cache; give the checkpoint that encoded it")
    given = {"train_tokenizer": bool(checkpoint), "tokenize": bool(cache)}
    return [s for s in steps if not given[s]]


def identity(cfg: DictConfig, steps: list[str]) -> dict:
    """What determines the output of `steps` run on `cfg` (see the module docstring)."""
    from varbench.build import resolve_device
    tokenizer = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    tokenizer.pop("checkpoint", None)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    out = {"steps": list(steps), "device": resolve_device(cfg.device).type, "tokenizer": tokenizer,
           "data": {k: v for k, v in data.items() if k not in DATA_NOT_IDENTITY}}
    if "train_tokenizer" not in steps:
        out["tokenizer_sha256"] = file_sha256(cfg.tokenizer.checkpoint)  # a given tokenizer: its weights
    for step in steps:
        task = OmegaConf.to_container(step_config(cfg, step).task, resolve=True)
        out[step] = {k: v for k, v in task.items() if k not in NOT_IDENTITY[step]}
    return out


def shared_folder(cfg: DictConfig, steps: list[str]) -> tuple[Path, dict]:
    """The folder of `steps` for `cfg` and the identity its name hashes."""
    ident = identity(cfg, steps)
    return Path(cfg.tokenizer_dir) / settings_digest(ident), ident


def read_marker(folder) -> dict | None:
    """The complete marker of a shared folder, None when the folder is incomplete (or absent)."""
    path = Path(folder) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def prepare(cfg: DictConfig, steps: list[str], run_step: Callable[[DictConfig, str], dict]) -> dict:
    """Produce `steps` (of SHARED_STEPS) in their shared folder, or reuse it when complete, and point `cfg` at the
    result (`tokenizer.checkpoint`, `train.token_cache`). `run_step(step_cfg, step)` runs one step on a config whose
    run_dir is the folder (and sets its `tokenizer.checkpoint` / `train.token_cache` for the next step).
    Returns {step: summary} (a reused folder's: the summaries of the run that wrote it, with `reused: True`)."""
    folder, ident = shared_folder(cfg, steps)
    with FolderLock(folder, "shared tokenizer", wait_s=math.inf, poll_s=POLL_S):
        marker = read_marker(folder)
        if marker is None:
            log.info("tokenizer steps %s: running them in the shared folder %s", steps, folder)
            marker = _run_steps(cfg, steps, folder, ident, run_step)
            reused = False
        else:
            log.info("tokenizer steps %s: reusing %s (tokenizer_id %s, written by commit %s)", steps, folder,
                     marker.get("tokenizer_id"), marker.get("commit"))
            reused = True
    checkpoint, cache = _checked_outputs(folder, marker)
    with open_dict(cfg):
        if checkpoint is not None:
            cfg.tokenizer.checkpoint = str(checkpoint)
        if cache is not None:
            cfg.train.token_cache = str(cache)
    return {step: {**summary, "shared_folder": str(folder), "reused": reused}
            for step, summary in marker["summaries"].items()}


def _run_steps(cfg: DictConfig, steps: list[str], folder: Path, ident: dict, run_step) -> dict:
    """Run the steps with the folder as run_dir, then write the complete marker (last, atomically)."""
    from varbench.utils.records import finite, git_commit
    in_folder = copy.deepcopy(cfg)  # the steps set its tokenizer.checkpoint / train.token_cache, not the caller's
    with open_dict(in_folder):
        in_folder.run_dir = str(folder)
    summaries = {step: _small(run_step(in_folder, step)) for step in steps}
    checkpoint = Path(in_folder.tokenizer.checkpoint) if "train_tokenizer" in steps else None
    cache = Path(in_folder.train.token_cache) if "tokenize" in steps else None
    marker = {"identity": ident, "summaries": summaries, "commit": git_commit(),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "checkpoint": _relative(checkpoint, folder), "token_cache": _relative(cache, folder),
              "tokenizer_id": file_id(checkpoint or cfg.tokenizer.checkpoint)}
    write_json_atomic(folder / MARKER, finite(marker))
    return marker


def _checked_outputs(folder: Path, marker: dict) -> tuple[Path | None, Path | None]:
    """The marker's checkpoint and cache, checked to be there (and the checkpoint to be the one it names)."""
    checkpoint = _resolve(marker["checkpoint"], folder)
    cache = _resolve(marker["token_cache"], folder)
    for path in (checkpoint, cache):
        if path is not None and not path.exists():
            raise ValueError(f"the shared tokenizer folder {folder} is complete but {path} is missing: delete the "
                             f"folder to redo it")
    if checkpoint is not None and file_id(checkpoint) != marker["tokenizer_id"]:
        raise ValueError(f"{checkpoint} changed after {folder} was completed (tokenizer_id {file_id(checkpoint)}, "
                         f"marker {marker['tokenizer_id']}): delete the folder to redo it")
    return checkpoint, cache


def _relative(path: Path | None, folder: Path) -> str | None:
    """How the marker names a file: relative to the folder when inside it (the folder can move), else as given."""
    if path is None:
        return None
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def _resolve(name: str | None, folder: Path) -> Path | None:
    return None if name is None else Path(name) if Path(name).is_absolute() else folder / name


def _small(summary) -> dict:
    """The JSON-able scalar part of a step's summary (what the marker keeps)."""
    if not isinstance(summary, dict):
        return {}
    return {str(k): _small(v) if isinstance(v, dict) else v for k, v in summary.items()
            if isinstance(v, (dict, int, float, str, bool, type(None)))}
