"""The tree passes its own linter: ruff with the rules of pyproject.toml ([tool.ruff.lint]: pycodestyle, pyflakes,
import order; lines up to 120 characters)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_to_fix():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
