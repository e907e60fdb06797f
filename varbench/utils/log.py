"""Status output: Python `logging` for what a run says, tqdm bars for the loops a person waits for.

Every module logs through `log = get_logger(__name__)` (never `print`): under the `varbench` command Hydra's logging
config sends the records to the console and to the run's log, `run_dir/varbench.log`, so that file holds the whole
status of a job. Outside Hydra (a notebook, a test) the records go wherever the caller configured logging.

Bars come from `progress_bar`: on stderr, off where stderr is not a terminal (a Slurm log, a subprocess), off
everywhere under `progress=false`, on under `progress=true`, and off in every process of a multi-process run but
rank 0 (`enabled=False`). `job_logging(cfg)` wraps a job: it applies `cfg.progress`, routes Python warnings into the
log, and writes console log records through tqdm, so that a record never breaks a bar in the middle.
"""

from __future__ import annotations

import contextlib
import logging
import sys

PROGRESS_MODES = ("auto", True, False)
_progress = {"mode": "auto"}


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (call with `__name__`): `varbench.<module>` in the run's log."""
    return logging.getLogger(name)


def set_progress(mode) -> None:
    """Where bars show: "auto" (only when stderr is a terminal), True (always) or False (never)."""
    if not any(mode == m and type(mode) is type(m) for m in PROGRESS_MODES):
        raise ValueError(f"progress must be one of {list(PROGRESS_MODES)}, got {mode!r}")
    _progress["mode"] = mode


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr (see the module docstring for when it shows); `enabled=False` (e.g. a rank other than
    0, or a caller's own switch) never shows it. Use it as tqdm: iterate over it, or `update(n)` and `close()`."""
    from tqdm.auto import tqdm
    mode = _progress["mode"]
    disable = True if not enabled or mode is False else (None if mode == "auto" else False)  # None: tqdm's tty check
    return tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def job_logging(progress="auto"):
    """The logging of one job: bars as `progress` says (restored afterwards), warnings logged (`py.warnings`), and
    console handlers of the root logger writing through tqdm while the job runs."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    before = _progress["mode"]
    set_progress(progress)
    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        logging.captureWarnings(False)
        _progress["mode"] = before
