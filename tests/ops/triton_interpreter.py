"""Run a script under Triton's interpreter (TRITON_INTERPRET=1), where a Triton kernel runs on CPU tensors: the CPU
tests' way to check a kernel against its torch form. The variable must be set before Triton compiles anything in
the process, so the script runs in a fresh one, beside the test modules (importable by name) and what PYTHONPATH
has (the lent GPU's setup puts varbench there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = str(Path(__file__).parent)


def run_interpreted(script: str) -> subprocess.CompletedProcess:
    """`python -c script` in tests/ops/ under Triton's interpreter; its output captured as text."""
    path = os.pathsep.join([HERE, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else HERE
    return subprocess.run([sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}, timeout=300)
