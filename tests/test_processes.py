"""run_in_fresh_process: the exit code tells returned / raised / died, and the child's work is visible after it."""

import os
from pathlib import Path

from varbench.utils.processes import run_in_fresh_process


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def die(code: int) -> None:
    os._exit(code)  # a process that dies without unwinding (as after a CUDA device-side assert)


def raise_error() -> None:
    raise RuntimeError("a failing cell")


def test_returned_raised_and_died_are_told_apart(tmp_path):
    assert run_in_fresh_process(write, str(tmp_path / "out.txt"), "done") == 0
    assert (tmp_path / "out.txt").read_text() == "done"
    assert run_in_fresh_process(raise_error) == 1
    assert run_in_fresh_process(die, 7) == 7
