"""run_in_fresh_process: the exit code tells returned / raised / died, the child's work is visible after it, and a
child past its timeout says where it hangs and is killed."""

import os
import signal
import time
from pathlib import Path

from varbench.utils.processes import run_in_fresh_process


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def die(code: int) -> None:
    os._exit(code)  # a process that dies without unwinding (as after a CUDA device-side assert)


def hang_here(seconds: float) -> None:
    time.sleep(seconds)


def raise_error() -> None:
    raise RuntimeError("a failing cell")


def test_returned_raised_and_died_are_told_apart(tmp_path):
    assert run_in_fresh_process(write, str(tmp_path / "out.txt"), "done") == 0
    assert (tmp_path / "out.txt").read_text() == "done"
    assert run_in_fresh_process(raise_error) == 1
    assert run_in_fresh_process(die, 7) == 7


def test_a_child_past_its_timeout_prints_its_stack_and_is_killed(capfd):
    start = time.monotonic()
    assert run_in_fresh_process(hang_here, 120, timeout=1) is None
    assert time.monotonic() - start < 60  # killed, not waited for
    assert "hang_here" in capfd.readouterr().err  # faulthandler's dump names the function it hangs in
    assert run_in_fresh_process(write, os.devnull, "", timeout=30) == 0  # in time: its exit code as before


def crash_after(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_child_that_dies_after_its_timeout_counts_as_timed_out():
    """A child can crash while faulthandler dumps its stacks: that is the timeout, not an exit code of its own."""
    assert run_in_fresh_process(crash_after, 2, timeout=1) is None
    assert run_in_fresh_process(crash_after, 0, timeout=30) == -signal.SIGSEGV  # before its timeout: its own death
