"""A lock file per folder (a run dir, a grid cell): two processes never write one run's checkpoints and records.

`<folder>/.varbench.lock` holds the holder's host, pid, Slurm job and start date. A second process that asks for a
held lock gets `LockHeld`, naming the holder. A lock whose holder is gone is taken over: a pid that no longer runs on
this host, or the same Slurm job (array task) requeued after a time-out or a preemption (on any node). A lock of
another host that is not the same Slurm job cannot be checked from here: it stays held, and the error says how to
remove it when its holder is known to be dead.

A process that would rather wait for the holder than fail (cells side by side sharing one frozen tokenizer,
varbench/frozen_tokenizer.py) asks with `wait_s`: it retries every `poll_s` seconds until the lock is free, then takes
it; `LockHeld` only when `wait_s` runs out.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path

from varbench.utils.log import get_logger

log = get_logger(__name__)

NAME = ".varbench.lock"


class LockHeld(RuntimeError):
    """The folder is in use by another process (named in the message)."""


def _slurm_job() -> str | None:
    """This process's Slurm job ("<job>_<array task>" in an array), None outside Slurm."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return None if job is None else f"{job}_{task}" if task is not None else job


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _stale(holder: dict) -> bool:
    """Whether the holder is known to be gone (see the module docstring)."""
    if holder.get("slurm_job") and holder["slurm_job"] == _slurm_job():
        return True  # this very job, requeued: its earlier run is over
    if holder.get("host") == socket.gethostname():
        return holder.get("pid") == os.getpid() or not _alive(int(holder.get("pid", -1)))
    return False


def _describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('since')}"


class FolderLock:
    """`with FolderLock(folder, what): ...` holds `folder`'s lock for the block (created atomically; removed on
    exit, also when the block raises). `wait_s` > 0: wait up to that many seconds (`math.inf`: as long as it takes)
    for a live holder to let go, checking every `poll_s` seconds; 0: `LockHeld` at once."""

    def __init__(self, folder, what: str = "run dir", wait_s: float = 0.0, poll_s: float = 1.0) -> None:
        self.path, self.what, self.wait_s, self.poll_s = Path(folder) / NAME, what, wait_s, poll_s

    def __enter__(self) -> FolderLock:
        deadline, told = time.monotonic() + self.wait_s, False
        while True:
            try:
                return self._take()
            except LockHeld as held:
                if time.monotonic() + self.poll_s > deadline:
                    raise
                if not told:  # once: the log says why this process stands still
                    log.info("waiting for %s", held)
                    told = True
                time.sleep(self.poll_s)

    def _take(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after taking over a stale lock
            tmp = self.path.with_name(f"{NAME}.{socket.gethostname()}.{os.getpid()}")
            tmp.write_text(json.dumps(_me()))
            try:
                os.link(tmp, self.path)  # atomic, and the lock is never seen without its holder
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _stale(holder):
                    raise LockHeld(f"{self.what} {self.path.parent} is in use by {_describe(holder)} (lock "
                                   f"{self.path}); wait for it, or use another folder. If that process is known to "
                                   f"be dead, delete the lock file.") from None
                self.path.unlink(missing_ok=True)  # stale: its holder is gone
                continue
            finally:
                tmp.unlink(missing_ok=True)
            return self
        raise LockHeld(f"{self.what} {self.path.parent}: another process took the lock {self.path} at the same time")

    def _holder(self) -> dict | None:
        """The recorded holder; None for an unreadable lock (damaged: treated as stale)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
