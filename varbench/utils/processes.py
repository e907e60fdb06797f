"""Run a function in a fresh process: spawned, so it shares no CUDA context or allocator with its parent."""

from __future__ import annotations

import multiprocessing as mp
from typing import Callable


def run_in_fresh_process(fn: Callable, *args) -> int:
    """Call `fn(*args)` in a spawned process and wait for it. Returns its exit code: 0 when `fn` returned, 1 when it
    raised (the traceback goes to stderr), another code or a negative signal number when the process died.
    `fn` and `args` must pickle (a module-level function, plain data)."""
    child = mp.get_context("spawn").Process(target=fn, args=args)
    child.start()
    child.join()
    return child.exitcode
