"""Running `python run.py grid=...` in a folder and reading what it printed and recorded (tests of grids and Slurm)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from varbench.utils.records import read_records

REPO = Path(__file__).resolve().parents[1]
# a tiny main pipeline on 2 classes x 4 images: 2 tokenizer updates, 2 AR steps, a 2-image grid, and evaluate on 2
# images per class with a 2-step classifier ('++': add or override, whatever main.yaml's overrides already hold)
TINY = ["model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.vocab_size=64", "data.num_classes=2",
        "data.size_per_class=4", "train.steps=2", "++task.overrides.train_tokenizer.steps=2",
        "++task.overrides.train_tokenizer.batch_size=4", "++task.overrides.sample.per_class=1",
        "++task.overrides.evaluate.per_class=2", "++task.overrides.evaluate.classifier_steps=2",
        "++task.overrides.evaluate.classifier_batch_size=4",
        "++task.overrides.evaluate.classifier_min_val_accuracy=0.0",
        "device=cpu", "results_dir=results"]  # records under cwd/results (not part of a cell's id)
ROW = re.compile(r"^\[grid\] #\d+\s+(?P<cid>[0-9a-f]{12})\s+(?P<status>\w+)\s+(?P<overrides>.*)$")


def run_grid(cwd: Path, *overrides: str, grid: str = "mixers_tiny", timeout: int = 600) -> subprocess.CompletedProcess:
    """`python run.py grid=<grid> <overrides>` in `cwd` (records under cwd/results, each cell in
    cwd/sweep/<cell_id>)."""
    args = [sys.executable, str(REPO / "run.py"), f"grid={grid}", "hydra.sweep.dir=sweep", *overrides]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
                          check=False)


def cells(stdout: str) -> list[dict]:
    """The cell table the sweeper prints: [{cid, status, overrides: {key: value}}] in launch order."""
    out = []
    for line in stdout.splitlines():
        if m := ROW.match(line):
            pairs = dict(item.split("=", 1) for item in m["overrides"].split())
            out.append({"cid": m["cid"], "status": m["status"], "overrides": pairs, "list": m["overrides"].split()})
    return out


def records(cwd: Path, name: str, metric: str | None = None) -> list[dict]:
    path = cwd / "results" / name
    rows = read_records(path) if path.is_file() else []
    return [r for r in rows if metric is None or r["metric"] == metric]


def tail(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-4000:]}"
