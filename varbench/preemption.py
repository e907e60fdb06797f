"""Preemption and time limits of a grid cell on Slurm: save a checkpoint, then requeue through submitit.

Slurm sends USR2 (`#SBATCH --signal=USR2@<signal_delay_s>`, set by submitit) before a time limit, and at a
preemption. submitit's handler calls the job's `checkpoint()` (hydra-submitit-launcher's: resubmit the same Hydra
overrides, hence the same cell id and run_dir), runs `scontrol requeue` and exits at once, in the middle of a
training step: the requeued job would resume from the last periodic checkpoint only. The bridge first lets the
training loop save: it forwards the signal as SIGUSR1 (varbench.training.loop saves at the end of the current step
and the train task exits), then calls submitit's handler. When no training loop answers within `grace_s` (the
signal came while sampling, say), it calls submitit's handler directly. The requeued job runs the same overrides;
the train task resumes from `run_dir/checkpoints`.

Outside a submitit Slurm job the bridge does nothing. `scontrol requeue <job>` from outside sends SIGTERM only:
the loop saves and exits, Slurm restarts the job from the original submission (the same overrides), it resumes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from varbench.utils.log import get_logger

log = get_logger(__name__)

GRACE_S = float(os.environ.get("VARBENCH_PREEMPT_GRACE_S", "15"))  # < submitit's default signal_delay_s (120)


class PreemptionBridge:
    """Context manager around a cell's task (see the module docstring); `run(fn, *args)` calls the task."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.active = False
        self.pending = None  # (signum, frame) of a USR2 forwarded to the training loop
        self.timer: threading.Timer | None = None

    def __enter__(self):
        current = signal.getsignal(signal.SIGUSR2)
        # only inside submitit's Slurm job, whose handler is installed before the job function runs
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" \
                or getattr(current, "__name__", "") != "checkpoint_and_try_requeue":
            return self
        self.active, self.submitit_handler = True, current
        # SIGUSR1's default action kills the process: until the training loop installs its handler, ignore it
        self.previous_usr1 = signal.signal(signal.SIGUSR1, self._no_training_loop)
        signal.signal(signal.SIGUSR2, self._on_usr2)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            if self.timer is not None:
                self.timer.cancel()
            signal.signal(signal.SIGUSR2, self.submitit_handler)
            signal.signal(signal.SIGUSR1, self.previous_usr1)

    def _no_training_loop(self, signum, frame) -> None:
        """SIGUSR1 while no training loop listens: nothing to save."""

    def _on_usr2(self, signum, frame) -> None:
        if self.pending is not None or signal.getsignal(signal.SIGUSR1) == self._no_training_loop:
            # a second USR2 (the loop did not stop within grace_s), or no loop to save: submitit's way, now
            self.submitit_handler(signum, frame)
            return
        log.warning("%s: preempted or near the time limit; saving a checkpoint first", signal.Signals(signum).name)
        self.pending = (signum, frame)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.timer = threading.Timer(self.grace_s, os.kill, (os.getpid(), signal.SIGUSR2))
        self.timer.daemon = True
        self.timer.start()

    def run(self, fn: Callable, *args) -> Any:
        """Call the task; when it stops because of a forwarded preemption (the train task raises SystemExit after
        saving), hand over to submitit: it requeues the job (or raises UncompletedJobError after max_num_timeout)."""
        try:
            return fn(*args)
        except SystemExit:
            if self.active and self.pending is not None:
                self.timer.cancel()
                self.submitit_handler(*self.pending)  # requeues and exits, or raises
            raise
