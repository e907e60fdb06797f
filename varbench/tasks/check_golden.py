"""task=check_golden: the golden parity check (same as `python -m varbench.compat check-golden DIR`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from varbench.compat.golden import check_golden
from varbench.utils.records import record


def main(cfg: DictConfig) -> dict:
    """Compare varbench with the official tensors of `task.directory`; record each part; exit non-zero if one fails."""
    rows = check_golden(cfg.task.directory, list(cfg.task.parts))
    for r in rows:
        record(Path(cfg.results_dir) / "golden.jsonl", "golden_max_abs_error", r.error, "abs", config=cfg,
               device="cpu", tensor=r.name, tolerance=r.tolerance, passed=r.passed)
    failed = [r.name for r in rows if not r.passed]
    if failed:
        raise SystemExit(f"golden check failed for {failed}")
    return {r.name: r.error for r in rows}
