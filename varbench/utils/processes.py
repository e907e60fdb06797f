"""Run a function in a fresh process: spawned, so it shares no CUDA context or allocator with its parent."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import time
from typing import Callable

DUMP_GRACE_S = 5  # after the child printed its stacks, how long the parent waits before killing it


def run_in_fresh_process(fn: Callable, *args, timeout: float | None = None) -> int | None:
    """Call `fn(*args)` in a spawned process and wait for it. Returns its exit code: 0 when `fn` returned, 1 when it
    raised (the traceback goes to stderr), another code or a negative signal number when the process died.
    With `timeout` (seconds), a child still running then prints every thread's stack to stderr (where it hangs) and
    is killed: the return is None (also when it dies of anything after its timeout). `fn` and `args` must pickle (a
    module-level function, plain data)."""
    child = mp.get_context("spawn").Process(target=_watched, args=(fn, timeout, *args))
    start = time.monotonic()
    child.start()
    child.join(None if timeout is None else timeout + DUMP_GRACE_S)
    timed_out = timeout is not None and time.monotonic() - start >= timeout
    # a child can die while faulthandler dumps its stacks (measured: SIGSEGV inside a Triton compile): that is
    # still the timeout, not a crash of its own
    if child.exitcode is not None and not (child.exitcode != 0 and timed_out):
        return child.exitcode
    child.kill()
    child.join()
    return None


def _watched(fn: Callable, timeout: float | None, *args) -> None:
    from varbench.utils.autotune import apply_autotune_mode
    # a spawned child inherits the environment, not the parent's patched Triton autotuner: put the mode in force
    # again, or `autotune=first` cells would tune every config while their records say "first"
    apply_autotune_mode()
    if timeout is not None:
        faulthandler.dump_traceback_later(timeout)
    fn(*args)
