"""A REAL single-node Slurm: the `slurm` fixture starts the local cluster (slurm/start_local_slurm.sh: root, apt) when
none is up and stops it after these tests, so `python -m pytest` needs no set-up of its own.

A tiny grid with cluster=slurm goes through hydra-submitit-launcher to sbatch, runs, and its records come back; one
of its cells is preempted the way Slurm does it (USR2: a time limit or a preemption), saves a checkpoint, is requeued
by submitit and resumes to the same weights as an uninterrupted run; a cell with two Slurm tasks trains with DDP set
up from submitit's environment and takes the same steps as one process. The cluster is part of the test set-up:
when it cannot start these tests fail, never skip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from grid_helpers import REPO, TINY, cells, records, run_grid, tail
from safetensors.torch import load_file

from varbench import grid

TINY_NO_STEPS = [o for o in TINY if not o.startswith("train.steps=")]


SLURM_SCRIPTS = REPO / "slurm"


def slurm_is_up() -> bool:
    """The Slurm tools are on PATH and the debug partition's node takes jobs."""
    if any(shutil.which(t) is None for t in ("sbatch", "sinfo", "squeue", "scancel", "sacct")):
        return False
    state = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%t"], capture_output=True, text=True, check=False)
    return state.returncode == 0 and state.stdout.split()[:1] in (["idle"], ["mix"], ["alloc"])


def run_script(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SCRIPTS / name)], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def slurm():
    """The local Slurm for this module: a cluster already up is used as it is (and left running); otherwise the
    local one is started here and stopped after the last test. A cluster that cannot start fails the tests."""
    started = not slurm_is_up()
    if started:
        out = run_script("start_local_slurm.sh")
        assert out.returncode == 0, \
            f"the local Slurm did not start (slurm/start_local_slurm.sh needs root and apt-get):\n{out.stderr[-3000:]}"
        assert slurm_is_up(), "slurm/start_local_slurm.sh succeeded but the debug partition takes no jobs"
    yield
    if started:
        out = run_script("stop_local_slurm.sh")
        assert out.returncode == 0, f"slurm/stop_local_slurm.sh failed:\n{out.stderr[-3000:]}"


def partial_records(path: Path) -> list[dict]:
    """Records of a JSON-lines file that a job is still appending to (its last line may be half written)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            break
    return rows


def wait_for_training(cwd: Path, mixer_class: str, min_step: int, proc: subprocess.Popen, timeout: float) -> str:
    """The cell id of the cell of `mixer_class` once its training logged `min_step`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for r in partial_records(cwd / "results" / "train.jsonl"):
            if r["metric"] == "train_loss" and r["config"]["mixer"]["_target_"].endswith(mixer_class) \
                    and r["step"] >= min_step:
                return r["config"]["cell_id"]
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"no {mixer_class} training step {min_step} after {timeout}s")


def slurm_job_of(cwd: Path, cid: str) -> str:
    """The Slurm job id (array form '<job>_<index>') that runs cell `cid`, from submitit's task logs."""
    for log in (cwd / "sweep" / ".submitit").glob("*/*_0_log.out"):
        if f" - cell {cid}: " in log.read_text():  # the varbench.grid logger's line (Hydra's format)
            return log.parent.name
    raise AssertionError(f"no submitit log names cell {cid}")


def task_pid(job: str) -> int:
    """The pid of task 0 of step 0 (srun's python) of a running job ('<array>_<index>' or a plain id)."""
    raw = subprocess.run(["squeue", "-h", "-j", job, "-o", "%A"], capture_output=True, text=True, check=True).stdout
    rows = subprocess.run(["scontrol", "listpids", raw.strip()], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    (pid,) = [int(r.split()[0]) for r in rows[1:] if r.split()[2:4] == ["0", "0"]]
    return pid


def preempt_frozen(job: str) -> None:
    """Send USR2 (what Slurm sends before a time limit or at a preemption: #SBATCH --signal=USR2@...) to a job whose
    task is frozen, so that the signal lands in the middle of training however fast the steps are."""
    pid = task_pid(job)
    os.kill(pid, signal.SIGSTOP)
    try:
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        end = time.monotonic() + 30
        while not int(_status(pid)["ShdPnd"], 16) & (1 << (signal.SIGUSR2 - 1)):  # delivered, pending while stopped
            assert time.monotonic() < end, "USR2 never reached the frozen task"
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)


def _status(pid: int) -> dict:
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(r.split(":\t", 1) for r in rows if ":\t" in r)


def final_weights(cwd: Path, cid: str, step: int) -> dict:
    return load_file(str(cwd / "sweep" / cid / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


@pytest.mark.slow
def test_grid_round_trip_on_slurm_and_a_preempted_cell_resumes_exactly(slurm, tmp_path):
    steps = 24
    common = ["seed=0", "hydra.sweeper.cells=[]", *TINY_NO_STEPS, f"train.steps={steps}", "train.log_every=1",
              "train.ckpt_every=1000", "train.deterministic=true"]
    sweep = subprocess.Popen([sys.executable, str(REPO / "run.py"), "grid=mixers_tiny", "hydra.sweep.dir=sweep",
                              "cluster=slurm", "mixer=attention,gla", *common],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cid = wait_for_training(tmp_path, "BlockCausalAttention", min_step=3, proc=sweep, timeout=1200)
        job = slurm_job_of(tmp_path, cid)
        preempt_frozen(job)
        out, err = sweep.communicate(timeout=1800)  # hang guards (here and above): far past a loaded run
    finally:  # a failed test leaves neither its sweep nor its jobs behind
        if sweep.poll() is None:
            sweep.terminate()
            sweep.wait(timeout=60)
            ours = {d.name.split("_")[0] for d in (tmp_path / "sweep" / ".submitit").glob("*_*") if d.is_dir()}
            if ours:
                subprocess.run(["scancel", *sorted(ours)], check=False)
    assert sweep.returncode == 0, f"rc={sweep.returncode}\n{out[-3000:]}\n{err[-4000:]}"

    # the round trip: both cells ran on Slurm and their records came back
    ids = {r["cid"] for r in cells(out)}
    assert len(ids) == 2 and cid in ids and all(grid.is_complete(tmp_path / "results", c) for c in ids)
    summaries = records(tmp_path, "train.jsonl", "train_summary")
    assert {r["config"]["cell_id"] for r in summaries} == ids
    assert all(r["config"]["cluster"]["name"] == "slurm" for r in summaries)

    # the preempted cell: requeued by submitit, resumed from the checkpoint written at the signal
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-j", job, "-o", "State"], capture_output=True, text=True,
                             check=True)
    # the second run's state may still read RUNNING: submitit returns once the result file is written
    assert history.stdout.split()[0] == "REQUEUED" and len(history.stdout.split()) == 2, history.stdout
    (resume,) = [r for r in records(tmp_path, "grid.jsonl", "cell_resume") if r["cell_id"] == cid]
    assert 3 <= resume["value"] < steps and resume["restart_count"] == 1, resume
    assert (tmp_path / "sweep" / cid / "checkpoints" / f"step_{resume['value']:08d}").is_dir()
    logged = [r["step"] for r in records(tmp_path, "train.jsonl", "train_loss") if r["config"]["cell_id"] == cid]
    assert logged == list(range(1, steps + 1))  # each step once: resumed, not restarted

    # the same cell, uninterrupted, here: the same cell id and the same final weights
    ref = tmp_path / "uninterrupted"
    ref.mkdir()
    straight = run_grid(ref, "mixer=attention", *common)
    assert straight.returncode == 0, tail(straight)
    assert [r["cid"] for r in cells(straight.stdout)] == [cid]
    a, b = final_weights(tmp_path, cid, steps), final_weights(ref, cid, steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_task_cell_trains_with_ddp_from_the_slurm_environment(slurm, tmp_path):
    # task=train on a random tokenizer; label dropout draws from each process's own RNG stream: off
    common = ["mixer=attention", "seed=0", "hydra.sweeper.cells=[]", "task=train", "model.depth=1", "model.width=64",
              "model.num_heads=1", "tokenizer.vocab_size=64", "data.num_classes=2",
              "data.size_per_class=4", "train.steps=3", "train.batch_size=8", "train.log_every=1",
              "train.deterministic=true", "model.cond_drop_rate=0.0", "device=cpu",
              "results_dir=results"]
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    two = run_grid(tmp_path / "two", *common, "cluster=slurm", "hydra.launcher.tasks_per_node=2")
    assert two.returncode == 0, tail(two)
    logs = sorted((tmp_path / "two" / "sweep" / ".submitit").glob("*/*_log.out"))
    ranks = [line for log in logs for line in log.read_text().splitlines() if "Starting with JobEnvironment" in line]
    assert len(ranks) == 2 and any("global_rank=1(2)" in line for line in ranks), ranks
    one = run_grid(tmp_path / "one", *common)
    assert one.returncode == 0, tail(one)
    steps = [records(tmp_path / n, "train.jsonl", "train_loss") for n in ("one", "two")]
    assert len(steps[0]) == 3  # rank 0 alone records
    # the same images and update: the same global loss and gradient norm (only the all-reduce order differs)
    for a, b in zip(*steps, strict=True):
        assert a["value"] == pytest.approx(b["value"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
