"""fla's pure-torch naive references, the independent cross-check of ours."""

import importlib.util
from pathlib import Path

import pytest


def fla_naive(op: str):
    """fla's `ops/<op>/naive.py`, loaded by file path: it needs only torch and einops, while importing it as
    `fla.ops.<op>.naive` runs `fla/ops/__init__.py`, which imports every Triton kernel (and needs triton).
    flash-linear-attention is a dev dependency, so in CI this never skips."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.skip("flash-linear-attention is not installed")
    path = Path(spec.origin).parent / "ops" / op / "naive.py"
    module_spec = importlib.util.spec_from_file_location(f"fla_naive_{op}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
