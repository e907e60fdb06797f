"""Run a function in a fresh process: spawned, so it shares no CUDA context or allocator with its parent."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Callable

DUMP_GRACE_S = 5  # after the child's timeout, how long the parent waits for its stack dump before killing it


class Stopped(Exception):
    """The process got SIGTERM (a limit around it, such as `timeout`'s) inside `stop_on_sigterm`."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within: SIGTERM raises `Stopped` in the main thread, so the caller can record what the signal cut before it
    exits (SIGTERM's default ends the process at once). The previous handler is back afterwards. Off the main thread
    (where no handler can be set) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_in_fresh_process(fn: Callable, *args, timeout: float | None = None) -> int | None:
    """Call `fn(*args)` in a spawned process and wait for it. Returns its exit code: 0 when `fn` returned, 1 when it
    raised (the traceback goes to stderr), another code or a negative signal number when the process died.
    With `timeout` (seconds of `fn`'s own run: the child's start-up and imports do not count), a child still running
    then prints every thread's stack to stderr (where it hangs) and exits: the return is None (also when it dies of
    anything after its timeout, or is killed because the dump never came). `fn` and `args` must pickle (a
    module-level function, plain data)."""
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_watched, args=(writer, fn, timeout, *args))
    child.start()
    writer.close()  # the child holds the only writer: its death reads as EOF
    try:
        return _wait_for(child, reader, timeout)
    except BaseException:  # the parent stopped while waiting (`Stopped`, Ctrl-C): no child left behind on the GPU
        child.kill()
        child.join()
        raise


def _wait_for(child, reader, timeout: float | None) -> int | None:
    """`run_in_fresh_process`'s wait for a started child and its exit code (None: past its timeout)."""
    # the clock starts when fn starts: a spawn that imports torch on a loaded machine can take longer than a timeout
    wait([reader, child.sentinel])
    started = _receive(reader)
    if started is None:  # it died before fn ran (fn or its arguments did not unpickle)
        child.join()
        return child.exitcode
    start = started[1]  # the child's clock (CLOCK_MONOTONIC: one clock for every process of the machine)
    child.join(None if timeout is None else timeout + DUMP_GRACE_S)
    finished = _receive(reader) is not None  # fn returned or raised: its exit code is its own, whatever the time
    if child.exitcode is not None and (child.exitcode == 0 or finished or timeout is None):
        return child.exitcode
    # faulthandler's exit after its dump is code 1; a child can also die while it dumps its stacks (measured: SIGSEGV
    # inside a Triton compile): both are the timeout, not a crash of its own
    timed_out = child.exitcode == 1 or time.monotonic() - start >= timeout
    if child.exitcode is not None and not timed_out:
        return child.exitcode
    child.kill()
    child.join()
    return None


def _receive(conn) -> tuple | None:
    """The child's next message, or None when it sent nothing more (it ended or has not started)."""
    try:
        return conn.recv() if conn.poll() else None
    except EOFError:
        return None


def _watched(conn, fn: Callable, timeout: float | None, *args) -> None:
    from varbench.utils.autotune import apply_autotune_mode
    # a spawned child inherits the environment, not the parent's patched Triton autotuner: put the mode in force
    # again, or `autotune=first` cells would tune every config while their records say "first"
    apply_autotune_mode()
    conn.send(("start", time.monotonic()))
    if timeout is not None:
        # a watchdog thread outside the GIL: it dumps and exits even when fn hangs inside C code
        faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        fn(*args)
    finally:
        if timeout is not None:
            faulthandler.cancel_dump_traceback_later()
        conn.send(("end",))
