"""The crossover atlas (varbench.analysis.crossover) on record lists built here, whose answers hold by construction:
a configuration's number is attention's times a chosen factor, so where it overtakes attention is known in advance."""

from __future__ import annotations

import json

import pytest

from varbench.analysis.crossover import (
    FAMILIES,
    LOSS,
    MISSING,
    NOT_COMPARABLE,
    WIN,
    Point,
    cell_text,
    crossover,
    crossover_long,
    crossover_table,
    describe,
)
from varbench.analysis.figures import crossover_atlas as crossover_figure
from varbench.analysis.load import load_records

ATTENTION = 100.0  # attention's number at every resolution; a configuration's is this times its factor
BATCH = {256: 32, 512: 8, 1024: 2}


def rec(metric: str, mixer: str, res: int, value: float, minute: int = 0, machine="nvidia-h200", autotune="full",
        **fields) -> dict:
    """One bench record of VAR's depth 16 without intra (a training step at the bench batch unless `batch` is given;
    a sampling record samples with the carried state, eagerly, unless told otherwise)."""
    base = dict(metric=metric, value=value, unit="", mixer=mixer, intra="none", depth=16, resolution=res,
                machine=machine, device="NVIDIA H200", versions={"triton_autotune": autotune},
                date=f"2099-01-01T00:{minute:02d}:00+00:00", config=None)
    if metric == "train_images_per_s":
        base |= dict(batch=BATCH[res], compiled=False, param_dtype="fp32")
    if metric == "sample_latency_ms":
        base |= dict(batch=1, sampler="carry", cuda_graphs=False, decode_mode="eager", peak_mem_bytes=value * 1e6)
    return base | fields


def load(tmp_path, lines: list[dict]):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load_records(tmp_path)


def train_pair(factors: dict[int, float], **mixer_fields) -> list[dict]:
    """Attention's training records at every resolution of `factors`, and GLA's at ATTENTION x factor."""
    return ([rec("train_images_per_s", "attention", r, ATTENTION) for r in factors]
            + [rec("train_images_per_s", "gla", r, ATTENTION * f, **mixer_fields) for r, f in factors.items()])


def points(long, cost="Train img/s", model="gla-d16") -> list[tuple]:
    rows = long[(long["cost"] == cost) & (long["model"] == model)]
    return [(r.resolution, r.status) for r in rows.itertuples()]


def statuses(*names: str) -> list[Point]:
    """Points at 256 / 512 / 1024 px with these statuses (a win 2x better, a loss 2x worse)."""
    advantage = {WIN: 2.0, LOSS: 0.5}
    return [Point(r, s, 1 if s in advantage else None, advantage.get(s)) for r, s in zip((256, 512, 1024), names)]


@pytest.mark.parametrize("names, resolution, exact, text", [
    ((LOSS, WIN, WIN), 512, True, "512 px, b1: 2.00x"),
    ((WIN, WIN, WIN), 256, True, "256 px, b1: 2.00x"),
    ((MISSING, WIN, WIN), 512, False, "≤ 512 px, b1: 2.00x; missing at 256"),
    ((LOSS, NOT_COMPARABLE, WIN), 1024, False, "≤ 1024 px, b1: 2.00x; n/c at 512"),
    ((WIN, LOSS, WIN), 1024, True, "1024 px, b1: 2.00x; also won at 256"),
    ((WIN, MISSING, WIN), 256, True, "256 px, b1: 2.00x; missing at 512"),
    ((LOSS, LOSS, MISSING), None, True, "none to 512 px (b1: 0.50x); missing at 1024"),
    ((WIN, WIN, LOSS), None, True, "none to 1024 px (b1: 0.50x); also won at 256, 512"),
    ((MISSING, NOT_COMPARABLE, MISSING), None, False, "no comparable pair (missing at 256, 1024; n/c at 512)"),
])
def test_the_crossover_is_the_first_resolution_of_the_last_run_of_wins(names, resolution, exact, text):
    result = crossover(statuses(*names))
    assert (result.resolution, result.exact) == (resolution, exact)
    tagged = text if result.point is None else f"{text} [B]"  # nothing compared: no protocol to name
    assert cell_text(result, "") == text and cell_text(result, "B") == tagged


def test_a_configuration_overtakes_where_its_throughput_passes_attentions(tmp_path):
    df = load(tmp_path, train_pair({256: 0.8, 512: 1.25, 1024: 2.0}))
    long = crossover_long(df)
    assert points(long) == [(256, LOSS), (512, WIN), (1024, WIN)]
    gla = long[(long["cost"] == "Train img/s") & (long["resolution"] == 512)].iloc[0]
    assert gla["batch"] == BATCH[512] and gla["advantage"] == pytest.approx(1.25)
    cell = crossover_table(df).loc["gla-d16", "Train img/s"]
    assert cell.startswith(f"512 px, b{BATCH[512]}: 1.25x [")


def test_a_lower_latency_is_the_advantage(tmp_path):
    lines = [rec("sample_latency_ms", "attention", r, ATTENTION) for r in (256, 512, 1024)]
    lines += [rec("sample_latency_ms", "gla", r, ATTENTION / f) for r, f in ((256, 0.5), (512, 0.8), (1024, 4.0))]
    df = load(tmp_path, lines)
    long = crossover_long(df)
    assert points(long, "Latency b1") == [(256, LOSS), (512, LOSS), (1024, WIN)]
    assert crossover_table(df).attrs["records"] == len(lines)  # each feeds three costs, counted once
    row = long[(long["cost"] == "Latency b1") & (long["resolution"] == 1024)].iloc[0]
    assert row["advantage"] == pytest.approx(4.0) and row["batch"] == 1


def test_records_of_another_machine_autotune_mode_or_mode_are_not_comparable(tmp_path):
    factors = {256: 0.8, 512: 1.25, 1024: 2.0}
    first = dict(versions={"triton_autotune": "first"})
    for change in (dict(machine="nvidia-h200-x4"), first, dict(compiled=True), dict(machine=None), dict(fp8=True),
                   dict(compile_mode="reduce-overhead"), dict(compile_scope="blocks"), dict(param_dtype="bf16")):
        lines = train_pair(factors)
        lines[4] |= change  # GLA at 512 px, measured otherwise
        df = load(tmp_path, lines)
        assert points(crossover_long(df)) == [(256, LOSS), (512, NOT_COMPARABLE), (1024, WIN)], change
        assert crossover_table(df).loc["gla-d16", "Train img/s"].startswith("≤ 1024 px, b2: 2.00x; n/c at 512 [")


def test_a_sampling_record_from_bf16_block_weights_is_not_compared_with_fp32_ones_and_a_mode_is_named(tmp_path):
    lines = [rec("sample_latency_ms", "attention", r, ATTENTION) for r in BATCH]
    lines += [rec("sample_latency_ms", "gla", r, ATTENTION / f) for r, f in {256: 0.8, 512: 1.25, 1024: 2.0}.items()]
    lines[4] |= dict(block_weights="bf16")  # GLA at 512 px
    df = load(tmp_path, lines)
    assert points(crossover_long(df), "Latency b1") == [(256, LOSS), (512, NOT_COMPARABLE), (1024, WIN)]
    sampling, training = FAMILIES[1], FAMILIES[0]
    assert describe(("m", "H200", "full", False, "eager", "bf16"), sampling) == \
        "m (H200), eager sampling, eager decode, bf16 block weights, autotune full"
    assert describe(("m", "H200", "full", False, "eager", "fp32"), sampling) == \
        "m (H200), eager sampling, eager decode, autotune full"  # the defaults go unsaid
    assert describe(("m", "H200", "full", True, "reduce-overhead", "model", "bf16", "rowwise"), training) == \
        "m (H200), compiled training step, Inductor mode reduce-overhead, bf16 weights, FP8 matmuls rowwise, " \
        "autotune full"


@pytest.mark.parametrize("untimed", [dict(versions={"triton_autotune": "first"}), dict(machine=None)])
def test_both_sides_untuned_or_unstamped_are_not_comparable(tmp_path, untimed):
    lines = [dict(line, **untimed) for line in train_pair({256: 0.8, 512: 1.25, 1024: 2.0})]
    df = load(tmp_path, lines)
    assert points(crossover_long(df)) == [(256, NOT_COMPARABLE), (512, NOT_COMPARABLE), (1024, NOT_COMPARABLE)]
    cell = crossover_table(df).loc["gla-d16", "Train img/s"]
    assert cell == "no comparable pair (n/c at 256, 512, 1024)"
    assert crossover_figure(df, tmp_path / "none.png") is None


def test_a_disturbed_record_is_missing_and_a_missing_side_is_named(tmp_path):
    lines = train_pair({256: 0.8, 512: 1.25, 1024: 2.0})
    lines[4]["disturbed"] = "beside other jobs"  # GLA 512 px
    del lines[2]  # attention 1024 px
    assert points(crossover_long(load(tmp_path, lines))) == [(256, LOSS), (512, MISSING), (1024, MISSING)]


def test_the_protocol_with_the_most_comparable_resolutions_is_used_and_named(tmp_path):
    lines = train_pair({256: 2.0}, minute=5)  # machine A: GLA ahead at 256 px only, the newest records
    lines = [dict(line, machine="machine-a") for line in lines]
    lines += [dict(line, machine="machine-b") for line in train_pair({256: 0.5, 512: 0.8, 1024: 1.5})]
    table = crossover_table(load(tmp_path, lines))
    cell = table.loc["gla-d16", "Train img/s"]
    assert cell.startswith("1024 px, b2: 1.50x [")
    letter = cell[-2]
    assert f"{letter}: machine-b (NVIDIA H200), eager training step, fp32 weights, autotune full" in \
        table.attrs["legend"]
    assert "machine-a" not in table.attrs["legend"]  # no cell used it


def test_the_largest_common_batch_is_compared(tmp_path):
    lines = [rec("sample_latency_ms", "attention", 256, ATTENTION * b, batch=b) for b in (1, 4, 16, 64)]
    lines += [rec("sample_latency_ms", "gla", 256, ATTENTION * b / 3, batch=b) for b in (1, 4, 16)]
    long = crossover_long(load(tmp_path, lines))
    row = long[(long["cost"] == "Latency, large batch") & (long["resolution"] == 256)].iloc[0]
    assert (row["batch"], row["status"], row["advantage"]) == (16, WIN, pytest.approx(3.0))


def test_peak_memory_under_cuda_graphs_is_the_reserved_peak(tmp_path):
    graphs = dict(batch=64, cuda_graphs=True, peak_mem_bytes=1.0)  # a replayed graph allocates nothing
    lines = [rec("sample_latency_ms", "attention", 256, ATTENTION, peak_reserved_bytes=8e9, **graphs),
             rec("sample_latency_ms", "gla", 256, ATTENTION, peak_reserved_bytes=2e9, **graphs)]
    long = crossover_long(load(tmp_path, lines))
    row = long[(long["cost"] == "Peak mem, large batch") & (long["resolution"] == 256)].iloc[0]
    assert row["advantage"] == pytest.approx(4.0)


def test_the_state_is_compared_without_a_protocol_and_no_state_wins(tmp_path):
    lines = train_pair({256: 1.0})  # a timing makes GLA and none rows of the atlas
    lines += [rec("train_images_per_s", "none", 256, ATTENTION)]
    lines += [rec("state_bytes_per_image", m, r, s, machine=None, autotune="first")
              for m, states in (("attention", (4e6, 8e6, 16e6)), ("gla", (8e6, 8e6, 8e6)), ("none", (0, 0, 0)))
              for r, s in zip((256, 512, 1024), states)]
    table = crossover_table(load(tmp_path, lines))
    assert table.loc["gla-d16", "State bytes/img"] == "1024 px: 2.00x [A]"  # 512 px: equal, not ahead
    assert table.loc["none-d16", "State bytes/img"] == "256 px: none of its own [A]"
    assert "A: analytic (no timing)" in table.attrs["legend"]


def test_a_cost_whose_every_timing_failed_says_why_and_a_failure_measured_since_is_forgotten(tmp_path):
    """A configuration's training failed at every resolution (its bench_error records): the cell says what failed
    and where instead of "no record of this cost"; a sampling failure that a later run measured after all is not
    named."""
    refused = "Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results. Please upgrade"
    lines = [rec("train_images_per_s", "attention", r, ATTENTION) for r in (256, 512)]
    lines += [rec("sample_latency_ms", m, 256, ATTENTION, minute=5) for m in ("attention", "gated_deltanet")]
    lines += [rec("bench_error", "gated_deltanet", r, 0, error=refused, stage="train", batch=BATCH[r])
              for r in (256, 512)]
    lines += [rec("bench_error", "gated_deltanet", 256, 0, error="CUDA out of memory", stage="sample", batch=1,
                  sampler="carry")]  # minute 0: the sampling record of minute 5 measured it after all
    table = crossover_table(load(tmp_path, lines))
    assert table.loc["gated_deltanet-d16", "Train img/s"] == (
        "failed: Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect results (train b32 at 256 px, "
        "train b8 at 512 px)")
    for cost in ("Latency b1", "Latency, large batch"):
        assert not table.loc["gated_deltanet-d16", cost].startswith("failed")


def test_the_figure_draws_comparable_points_only_and_never_bridges_an_unknown_resolution(tmp_path, monkeypatch):
    import math

    from matplotlib.axes import Axes
    drawn, plot = {}, Axes.plot

    def recording_plot(ax, x, y, *args, **kwargs):  # each line as drawn, per model (one panel: training only)
        drawn[kwargs.get("label")] = (list(x), list(y))
        return plot(ax, x, y, *args, **kwargs)
    monkeypatch.setattr(Axes, "plot", recording_plot)
    lines = train_pair({256: 0.8, 512: 1.0, 1024: 2.0})
    lines[4]["machine"] = "another"  # GLA's 512 px step: not comparable
    path = crossover_figure(load(tmp_path, lines), tmp_path / "atlas.png")
    assert path.is_file() and path.with_suffix(".pdf").is_file()
    x, y = drawn["gla-d16"]
    assert x == [256, 512, 1024] and y[0] == pytest.approx(0.8) and math.isnan(y[1]) and y[2] == pytest.approx(2.0)
