"""Run a selection of the test suite on the lent GPU and record every test's outcome as a JSON line.

The CUDA-only tests (CUDA-graph sampling against eager sampling, with each mixer's kernels) skip on the CPU machines
that run CI, so their GPU runs are the only evidence that they pass: this makes that evidence a record, with the
commit, device, versions and date, instead of a log line. Exits with pytest's status.

Usage (after `. benchmarks/gpu_setup.sh`):
    python benchmarks/gpu_tests.py OUT.jsonl [--autotune first] -- tests/test_backbone.py -k "cuda_graph and mamba"
Everything after `--` goes to pytest.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from varbench.utils.autotune import MODES, apply_autotune_mode
from varbench.utils.records import record


class RecordOutcomes:
    """pytest plugin: a record of each test's call, and of its setup or teardown where that did not pass (a skip in
    setup; an error in teardown, which then is the newest record of the test)."""

    def __init__(self, path):
        self.path = path

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            record(self.path, "gpu_test", report.outcome, "outcome", test=report.nodeid, phase=report.when,
                   duration_s=round(report.duration, 3), message=_message(report.longrepr))


def _message(longrepr) -> str | None:
    """A skip's reason (pytest gives (path, line, "Skipped: reason")), or the end of a failure's report."""
    if isinstance(longrepr, tuple):
        return longrepr[2].removeprefix("Skipped: ")
    return str(longrepr)[-2000:] if longrepr else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the .jsonl file the outcomes are appended to")
    parser.add_argument("--autotune", default="full", choices=MODES,
                        help="Triton autotuning mode (varbench/utils/autotune.py)")
    argv = sys.argv[1:] if argv is None else argv
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    apply_autotune_mode(args.autotune)
    return int(pytest.main(["-q", "-p", "no:cacheprovider", *pytest_args], plugins=[RecordOutcomes(args.out)]))


if __name__ == "__main__":
    sys.exit(main())
