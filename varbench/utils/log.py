"""Status output: Python `logging` for what a run says, tqdm bars for the loops a person waits for.

Every module logs through `log = get_logger(__name__)` (never `print`): under the `varbench` command Hydra's logging
config sends the records to the console and to the run's log, `run_dir/varbench.log`, so that file holds the whole
status of a job. Outside Hydra (a notebook, a test) the records go wherever the caller configured logging.

Bars come from `progress_bar`: on stderr, off where stderr is not a terminal (a Slurm log, a subprocess), off
everywhere under `progress=false`, on under `progress=true`, and off in every process of a multi-process run but
rank 0. `job_logging(progress)` wraps a job: it applies the `progress` setting, routes Python warnings into the log,
writes console log records through tqdm (a record never breaks a bar in the middle), and in the processes of a
multi-process run other than rank 0 keeps only warnings and errors (rank 0 tells the status once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

PROGRESS_MODES = ("auto", True, False)
_progress = {"mode": "auto"}


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (call with `__name__`): `varbench.<module>` in the run's log."""
    return logging.getLogger(name)


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its run (torchrun's RANK, else Slurm's SLURM_PROCID; a lone process is)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def bars_shown() -> bool:
    """Whether a bar of this process shows (for libraries that take a `verbose` flag instead of a bar)."""
    mode = _progress["mode"]
    return is_rank_zero() and (mode is True or (mode == "auto" and sys.stderr.isatty()))


def set_progress(mode) -> None:
    """Where bars show: "auto" (only when stderr is a terminal), True (always) or False (never)."""
    if not any(mode == m and type(mode) is type(m) for m in PROGRESS_MODES):
        raise ValueError(f"progress must be one of {list(PROGRESS_MODES)}, got {mode!r}")
    _progress["mode"] = mode


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr (see the module docstring for when it shows); `enabled=False` (a caller's own switch)
    never shows it. Use it as tqdm: iterate over it, or `update(n)` and `close()`."""
    from tqdm.auto import tqdm
    mode = _progress["mode"]
    if not enabled or not is_rank_zero() or mode is False:
        disable = True
    else:
        disable = None if mode == "auto" else False  # None: tqdm's own check (off when stderr is not a terminal)
    return tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def job_logging(progress="auto"):
    """The logging of one job (see the module docstring); everything it changes is restored afterwards."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    before, root = _progress["mode"], logging.getLogger()
    set_progress(progress)
    level = root.level
    if not is_rank_zero():
        root.setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        logging.captureWarnings(False)
        root.setLevel(level)
        _progress["mode"] = before


class _FirstTimeOnly(logging.Filter):
    """Passes only the first record of each logger, level and message, to every handler it filters."""

    def __init__(self):
        super().__init__()
        self.first: dict[tuple, logging.LogRecord] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # each handler asks in turn about the same record object: the first one said passes them all
        return self.first.setdefault((record.name, record.levelno, record.getMessage()), record) is record


@contextlib.contextmanager
def said_once():
    """Within the block, a message said again (same logger, level and text) is dropped: for a job whose parts each
    read the same records and would each repeat the same caveat (task=report's tables)."""
    once, handlers = _FirstTimeOnly(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)

