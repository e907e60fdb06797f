"""Run dirs: a lock per run dir (a second process is refused, naming the holder; a dead holder's lock is taken over),
and a finished training re-run records nothing new (no NaN summary at 0 img/s)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from varbench.grid import run_cell
from varbench.registry import CONFIG_ROOT
from varbench.utils.lock import NAME, FolderLock, LockHeld
from varbench.utils.records import read_records

TINY = ["model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.num_res_blocks=1", "tokenizer.vocab_size=64",
        "data.num_classes=2", "data.size_per_class=4", "train.batch_size=4", "train.steps=2", "device=cpu"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    (tmp_path / NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "since": "then"}))
    with pytest.raises(LockHeld, match=f"in use by pid {os.getppid()} on {os.uname().nodename}"):
        FolderLock(tmp_path).__enter__()


def test_a_stale_lock_of_a_dead_pid_is_taken_over_and_released(tmp_path):
    (tmp_path / NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid(), "since": "then"}))
    with FolderLock(tmp_path):
        assert json.loads((tmp_path / NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / NAME).exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    (tmp_path / NAME).write_text(json.dumps({"host": "other-node", "pid": 1, "slurm_job": "77", "since": "then"}))
    with FolderLock(tmp_path):
        pass
    (tmp_path / NAME).write_text(json.dumps({"host": "other-node", "pid": 1, "slurm_job": "78", "since": "then"}))
    with pytest.raises(LockHeld, match="Slurm job 78"):
        FolderLock(tmp_path).__enter__()


def _train(tmp_path):
    """`python run.py task=train` in this process (run_cell, as run.py calls it, with Hydra's config in place)."""
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["task=train", f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'results'}",
                                 *TINY])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra hands the job its config without the hydra node
    return run_cell(cfg)


def test_a_run_dir_in_use_is_refused_and_a_finished_training_is_not_recorded_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="varbench")
    _train(tmp_path)
    _train(tmp_path)  # resumes at its last step: nothing to train, nothing to record
    summaries = [r for r in read_records(tmp_path / "results" / "train.jsonl") if r["metric"] == "train_summary"]
    assert len(summaries) == 1 and summaries[0]["value"] is not None and summaries[0]["images_per_s"] > 0
    assert "already trained" in caplog.text
    (tmp_path / "run" / NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(),
                                                     "since": "then"}))  # another live process holds the run dir
    with pytest.raises(LockHeld, match=f"run dir {tmp_path / 'run'} is in use by pid {os.getppid()}"):
        _train(tmp_path)
