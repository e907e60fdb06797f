"""run_in_fresh_process: the exit code tells returned / raised / died, the child's work is visible after it, and a
child past its timeout says where it hangs and is ended. No assertion depends on how fast the machine is: the
timeout counts from the start of the function (not the child's imports), and a child past it ends itself right after
its stack dump (the parent's grace is set far beyond any dump here, so a slow dump is not a failure)."""

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from varbench.utils import processes
from varbench.utils.processes import run_in_fresh_process

NEVER_S = 3600  # longer than any test run: a child that sleeps this long only ends when it is ended


@pytest.fixture
def patient(monkeypatch):
    monkeypatch.setattr(processes, "DUMP_GRACE_S", NEVER_S)


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def die(code: int) -> None:
    os._exit(code)  # a process that dies without unwinding (as after a CUDA device-side assert)


def hang_here(seconds: float) -> None:
    time.sleep(seconds)


def raise_error() -> None:
    raise RuntimeError("a failing cell")


def raise_after(seconds: float) -> None:
    time.sleep(seconds)
    raise RuntimeError("a failing cell")


def test_returned_raised_and_died_are_told_apart(tmp_path):
    assert run_in_fresh_process(write, str(tmp_path / "out.txt"), "done") == 0
    assert (tmp_path / "out.txt").read_text() == "done"
    assert run_in_fresh_process(raise_error) == 1
    assert run_in_fresh_process(die, 7) == 7


def test_a_child_past_its_timeout_prints_its_stack_and_is_ended(capfd, patient):
    # it would sleep past the end of the test run: returning at all means it was ended
    assert run_in_fresh_process(hang_here, NEVER_S, timeout=1) is None
    assert "hang_here" in capfd.readouterr().err  # faulthandler's dump names the function it hangs in
    assert run_in_fresh_process(write, os.devnull, "", timeout=NEVER_S) == 0  # in time: its exit code as before
    assert run_in_fresh_process(raise_after, 0, timeout=NEVER_S) == 1  # raised in time: not a timeout


def crash_after(seconds: float) -> None:
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_unwatched_after(seconds: float) -> None:
    """Dies after its timeout without the dump's own exit, as a child that crashes while it dumps its stacks."""
    faulthandler.cancel_dump_traceback_later()
    crash_after(seconds)


def test_a_child_that_dies_after_its_timeout_counts_as_timed_out(patient):
    """A child can crash while faulthandler dumps its stacks (measured: SIGSEGV inside a Triton compile): that is the
    timeout, not an exit code of its own."""
    assert run_in_fresh_process(crash_unwatched_after, 2, timeout=1) is None
    assert run_in_fresh_process(crash_after, 0, timeout=NEVER_S) == -signal.SIGSEGV  # before its timeout: its own


def _fail_to_load():
    raise RuntimeError("cannot be unpickled")


class Unloadable:
    """Pickles here, raises when the child unpickles it: the child dies before the function runs."""

    def __reduce__(self):
        return _fail_to_load, ()


def test_a_child_that_dies_before_its_function_runs_returns_its_exit_code(patient):
    assert run_in_fresh_process(hang_here, Unloadable(), timeout=1) == 1


def write_pid_and_hang(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(NEVER_S)


def test_sigterm_inside_stop_on_sigterm_stops_the_wait_and_ends_the_child(tmp_path):
    """A limit around the parent (`timeout`'s SIGTERM) raises Stopped where it waits; the child is ended, not left
    running (on a GPU it would hold the device), and SIGTERM's handler is the previous one afterwards."""
    pid_file = tmp_path / "pid"
    previous = signal.getsignal(signal.SIGTERM)

    def terminate_once_the_child_runs():
        while not pid_file.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    with processes.stop_on_sigterm():
        threading.Thread(target=terminate_once_the_child_runs, daemon=True).start()
        with pytest.raises(processes.Stopped, match="SIGTERM"):
            run_in_fresh_process(write_pid_and_hang, str(pid_file), timeout=NEVER_S)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # ended and reaped
    assert signal.getsignal(signal.SIGTERM) is previous
