"""The main job's guidance sweep (`task.guidance_scales`, varbench/tasks/main.py): a grid cell of a seed in
`task.guidance_seeds` evaluates again at each scale in its own process, while its checkpoint exists; the other
seeds evaluate at the preset's scale only; the NLLs, which do not depend on guidance, are recorded once."""

from __future__ import annotations

from collections import Counter

import pytest
from grid_helpers import TINY, cells, records, run_grid, tail

from varbench.config_schema import ConfigError, validate
from varbench.registry import compose


def test_the_guidance_seed_s_cell_evaluates_at_every_scale_and_the_other_seed_s_at_the_preset_s(tmp_path):
    run = run_grid(tmp_path, "mixer=attention", "seed=0,1", "hydra.sweeper.cells=[]",
                   "+task.guidance_scales=[1.0,3.0]", *TINY)
    assert run.returncode == 0, tail(run)
    seed_of = {c["cid"]: int(c["overrides"]["seed"]) for c in cells(run.stdout)}
    assert sorted(seed_of.values()) == [0, 1]
    def seeds_and_scales(metric):
        return Counter((seed_of[r["config"]["cell_id"]], r["cfg"]) for r in records(tmp_path, "evaluate.jsonl", metric))

    assert seeds_and_scales("embedded_fd") == {(0, 1.5): 1, (0, 1.0): 1, (0, 3.0): 1, (1, 1.5): 1}
    assert seeds_and_scales("val_nll") == {(0, 1.5): 1, (1, 1.5): 1}


def test_a_bad_guidance_scale_is_an_error_naming_the_key_and_the_valid_range():
    cfg = compose(["+task.guidance_scales=[3.0,1.0]"])
    with pytest.raises(ConfigError, match=r"task.guidance_scales = \[3.0, 1.0\]: expected .*strictly increasing"):
        validate(cfg)


def test_guidance_scales_without_an_evaluate_step_is_an_error_naming_the_steps():
    cfg = compose(["+task.guidance_scales=[1.0]", "task.steps=[train,sample]"])
    with pytest.raises(ConfigError, match=r"task.guidance_scales = \[1.0\]: task.steps \['train', 'sample'\] has no "
                                          r"evaluate step"):
        validate(cfg)
