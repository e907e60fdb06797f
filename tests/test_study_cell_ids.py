"""The committed study cells keep their ids: a cell's id hashes its composed config, every YAML default included
(varbench/grid.py), so a new default key or value anywhere in the configs would give study_main's done cells new ids,
and the next GPU call would train all of them again. Each done marker's recorded overrides (study_main's and
study_tokenizer's cells in main_proc, study_flops' in flops, study_cifar's in main_cifar, the raster sweep's in
lr_raster), composed as the grid composes them, must give back the id it was recorded under."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra import compose, initialize_config_dir

from varbench import grid
from varbench.registry import CONFIG_ROOT
from varbench.resolvers import register_resolvers

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "results/gpu/h200/study19"
DONE = [marker for grid_records in ("main_proc", "flops", "main_cifar")  # the study's cells, each at its arm's rate
        for marker in sorted((STUDY / grid_records / "cells").glob("*/done.json"))]
SWEEP = sorted((STUDY / "lr_raster/cells").glob("*/done.json"))  # the raster arms' lr sweep (stubbed, not run again)
ADDED = ("task.overrides.evaluate.inception_",)  # keys the study script adds with '+' (not in the grid's config)


def test_every_done_study_main_cell_composes_back_to_its_recorded_id(tmp_path, monkeypatch):
    assert len(DONE) >= 49 + 6 + 26 + 18 and len(SWEEP) >= 6  # sessions 16 and 17's imports
    # a tokenizer enters a cell's id by its path and content: the committed files at the paths the cells used
    for name in ("proc", "proc_b", "cifar", "proc_single"):
        tokenizer = tmp_path / f"runs/study19/{name}/tokenizer/tokenizer.safetensors"
        tokenizer.parent.mkdir(parents=True)
        os.symlink(STUDY / f"tokenizers/{name}.safetensors", tokenizer)
    monkeypatch.chdir(tmp_path)
    register_resolvers()
    changed = []
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        for marker in DONE + SWEEP:
            done = json.loads(marker.read_text())
            overrides = [f"+{o}" if o.startswith(ADDED) else o for o in done["overrides"]]
            recomposed = grid.cell_id(compose(config_name="config", overrides=overrides))
            if recomposed != done["cell_id"]:
                changed.append(f"{done['cell_id']} -> {recomposed}")
    assert not changed, ("a config default changed the ids of done study cells (make the new key optional, or its "
                         "default the old behaviour's absence):\n" + "\n".join(changed))



def test_every_done_study_cell_trained_at_its_arm_s_swept_rate():
    """A study cell's overrides name its own arm's rate (`study.lr.<arm>=`, from best_lr): without it the cell trained
    at study_base's placeholder rate, which the write-up would call the arm's best (session 17's raster grid started
    with one arm's rate missing; benchmarks/gpu_study19.sh now asks best_lr for every arm)."""
    unswept = []
    for marker in DONE:
        overrides = json.loads(marker.read_text())["overrides"]
        (arm,) = [o.split("=", 1)[1] for o in overrides if o.startswith("study.arm=")]
        if not any(o.startswith(f"study.lr.{arm}=") for o in overrides):
            unswept.append(f"{marker.parent.name} ({arm})")
    assert not unswept, f"study cells trained without their arm's swept rate: {unswept}"
