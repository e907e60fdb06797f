"""The ImageNet-scale cost table (varbench/analysis/scale_up.py, issue 19 item 7): VAR's d16 recipe in analytic
training FLOPs per configuration, in H200-hours at VAR-d16's measured compiled FLOP rate."""

import json
from pathlib import Path

import pytest

from varbench.analysis.load import load_records
from varbench.analysis.scale_up import RECIPE_IMAGES, SEEDS, scale_up_table

FIXTURE = Path(__file__).parent / "fixtures" / "records"


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / name).read_text().splitlines()]


def test_hours_are_the_recipe_s_flops_at_var_s_measured_compiled_rate(tmp_path):
    costs, (compiled,) = lines("costs_real.jsonl"), lines("compiled_synthetic.jsonl")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*costs, compiled]))
    table = scale_up_table(load_records(tmp_path))
    flops = {(r["mixer"], r["intra"]): r["train_flops_per_image"] for r in costs if r["resolution"] == 256}
    rate = compiled["value"] * flops[("attention", "none")]
    var, mvar = table.loc[("VAR-d16", 256)], table.loc[("M-VAR-d16", 256)]
    assert var["H200-hours (1 run)"] == pytest.approx(RECIPE_IMAGES / compiled["value"] / 3600)
    assert mvar["H200-hours (1 run)"] == pytest.approx(flops[("mamba2", "full")] * RECIPE_IMAGES / rate / 3600)
    assert mvar[f"H200-hours ({SEEDS} seeds)"] == pytest.approx(SEEDS * mvar["H200-hours (1 run)"])
    assert mvar["Recipe EFLOPs"] == pytest.approx(flops[("mamba2", "full")] * RECIPE_IMAGES / 1e18)
    assert len(table) == 4  # depth 16 at 256 px only


def test_without_var_s_compiled_throughput_there_is_no_estimate(tmp_path):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines("costs_real.jsonl")))
    assert scale_up_table(load_records(tmp_path)).empty
