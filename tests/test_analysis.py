"""varbench.analysis and task=report on the fixture records (tests/fixtures/records: real H100 lines copied from
results/gpu, plus synthetic lines marked `"synthetic": true` for metrics with no real record yet).

Expected numbers are read from the fixture lines themselves, never typed: a table must show the recorded value."""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from varbench.analysis import (
    generalisation_gap,
    gpu_test_table,
    latest,
    load_records,
    main_table,
    mixer_ablation,
    parallel_scaling,
    parity_table,
    quality_label,
    quality_vs_flops,
    resolution_scaling,
    sample_grids,
    speed_memory_vs_resolution,
    training_curves,
    write_table,
)
from varbench.analysis.goals import bench_goals
from varbench.analysis.load import LEADING, flatten, short_name
from varbench.analysis.study import costs_table, study_ranking
from varbench.analysis.tables import config_frame, quality_wide
from varbench.registry import CONFIG_ROOT
from varbench.tasks import run_task
from varbench.tasks.report import FIGURES, TABLES, build_report

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "records"
NUMERICS = REPO / "tests" / "fixtures" / "numerics" / "fp8_h100_real.jsonl"
NOTEBOOKS = sorted((REPO / "analysis").glob("*.py"))


def raw(**match) -> list[dict]:
    """The fixture lines whose fields equal `match`, in file order."""
    lines = [json.loads(ln) for f in sorted(FIXTURE.rglob("*.jsonl")) for ln in f.read_text().splitlines() if ln]
    return [r for r in lines if all(r.get(k) == v for k, v in match.items())]


def real_one(**match) -> dict:
    (rec,) = [r for r in raw(**match) if not r.get("synthetic")]
    return rec


@pytest.fixture(scope="module")
def df():
    return load_records(FIXTURE)


def test_every_record_is_one_row_with_the_flat_columns(df):
    assert len(df) == len(raw())
    assert set(LEADING) <= set(df.columns) and {"config", "versions", "mfu", "batch", "cell_id"} <= set(df.columns)
    bench = df[(df["metric"] == "train_images_per_s") & df["synthetic"].ne(True)]
    assert set(bench["model"]) == {"VAR-d16", "deltanet-d16"} and set(bench["resolution"]) == {256}
    # an evaluation record names its mixer only through config.mixer._target_ and its size through the config
    (row,) = df[(df["metric"] == "fid") & (df["cell_id"] == "in256-d16-deltanet-none-s1")].itertuples()
    assert (row.mixer, row.intra, row.depth, row.resolution, row.seed) == ("deltanet", "none", 16, 256, 1)
    assert row.config["mixer"]["_target_"].endswith("DeltaNetMixer")


def test_short_names_come_from_the_registry():
    assert short_name("mixer", "varbench.mixers.gla.GLAMixer") == "gla"
    assert short_name("intra", "varbench.intra.full.IntraScaleAttention") == "full"
    assert short_name("intra", None) == "none"
    config = {"mixer": {"_target_": "varbench.mixers.attention.BlockCausalAttention"}, "intra": {"_target_": None}}
    assert (flatten({"metric": "m", "config": config})["model"]) == "VAR"
    chosen = flatten({"metric": "m", "config": config, "choices": {"mixer": "gla"}, "model": "var_d16"})
    assert (chosen["mixer"], chosen["intra"], chosen["model_field"]) == ("gla", "none", "var_d16")  # Hydra's choice


def test_a_raster_model_is_never_labelled_as_the_scale_wise_model_of_its_mixer():
    """A raster cell (model=raster_tiny: mixer=attention, intra's default none) is not VAR: its records say so through
    model.backbone, and it is labelled as task=bench labels its raster cells."""
    raster = {"metric": "m", "config": {"model": {"backbone": "raster_ar", "depth": 4}},
              "choices": {"mixer": "attention", "intra": "none"}}
    assert (flatten(raster)["intra"], flatten(raster)["model"]) == ("raster", "attention+raster-d4")
    assert flatten({**raster, "config": {"model": {"depth": 4}}})["model"] == "VAR-d4"  # the scale-wise one


def test_a_raster_arm_is_ranked_on_fid_beside_var_but_its_nll_is_never_tested_against_var_s(tmp_path):
    """A raster model's FID (AiM's metric sampler, `aim_b`) shares the scale-wise models' FID column (VAR's metric
    sampler, `eval`) at one guidance scale; its held-out NLL is in nats per token of another token sequence (one
    16x16 scale, not VAR's 10 scales), so the study tests it against VAR on FID only, and Holm's family has no NLL row
    for it."""
    from varbench.analysis.versus import versus_var
    lines = []
    for mixer, backbone, preset, fids, nlls in (("attention", None, "eval", (235, 236), (4.0, 4.01)),
                                                 ("mamba2", None, "eval", (220, 222), (3.8, 3.82)),
                                                 ("mamba2", "raster_ar", "aim_b", (200, 203), (1.2, 1.21))):
        for seed, (fid, nll) in enumerate(zip(fids, nlls)):
            common = {"mixer": mixer, "intra": "none", "depth": 6, "resolution": 64, "seed": seed,
                      "cell_id": f"{mixer}-{backbone}-{seed}", "date": "2099-01-01T00:00:00+00:00",
                      "config": {"model": {"backbone": backbone} if backbone else {}}}
            lines += [{**common, "metric": "fid", "value": fid, "unit": "fid", "num_samples": 10000, "cfg": 1.5,
                       "feature_extractor": "inception-v3 (torch-fidelity)", "preset": preset},
                      {**common, "metric": "val_nll", "value": nll, "unit": "nats/token"}]
    records = _records(tmp_path, lines)
    table = versus_var(records).reset_index()
    rows = set(zip(table["Metric"], table["Model"]))
    assert rows == {("FID (Inception, 10k, cfg 1.5)", "mamba2-d6"), ("FID (Inception, 10k, cfg 1.5)",
                    "mamba2+raster-d6"), ("Val NLL (nats/token)", "mamba2-d6")}
    # the ranking's p columns are the same tests (session 20: it tested the raster arms' NLL against VAR's)
    ranking = study_ranking(records).reset_index().set_index("Model")
    fid_p, nll_p = "p vs VAR (FID, Welch t, Holm)", "p vs VAR (val NLL, Welch t, Holm)"
    assert ranking[nll_p].isna().tolist() == [m != "mamba2-d6" for m in ranking.index]
    nll = table[table["Metric"] == "Val NLL (nats/token)"].set_index("Model")["p (Holm)"]
    assert ranking.loc["mamba2-d6", nll_p] == nll["mamba2-d6"]
    fid = table[table["Metric"] == "FID (Inception, 10k, cfg 1.5)"].set_index("Model")["p (Holm)"]
    assert ranking[fid_p].dropna().sort_index().tolist() == fid.sort_index().tolist()
    # nor does its NLL share the scale-wise models' column (session 21: 1.2 nats/token beside VAR's 4.0)
    assert ranking["Val NLL (nats/token)"].isna().tolist() == [m == "mamba2+raster-d6" for m in ranking.index]


def test_latest_keeps_the_newest_measurement(df):
    train = latest(df, "train_images_per_s")
    var = train[(train["model"] == "VAR-d16") & (train["resolution"] == 256) & (train["compiled"] != True)]  # noqa: E712
    assert list(var["value"]) == [real_one(metric="train_images_per_s", mixer="attention")["value"]]
    eager = [r for r in raw(metric="train_images_per_s", mixer="attention", resolution=256) if not r.get("compiled")]
    assert len(eager) == 2  # the older one is dropped


def _records(tmp_path, lines: list[dict]):
    """A records folder holding `lines`, loaded."""
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return load_records(tmp_path)


def _variants(tmp_path, base: dict, *changes: dict):
    """Records folder with `base` and one copy per change, each dated one minute later than the one before."""
    return _records(tmp_path, [base] + [{**base, **c, "date": f"2099-01-01T00:0{i}:00+00:00"}
                                        for i, c in enumerate(changes)])


@pytest.mark.parametrize("note", ["disturbed", "superseded"])
def test_a_disturbed_or_superseded_timing_stays_a_record_but_never_the_measurement(tmp_path, note):
    clean = real_one(metric="train_images_per_s", mixer="attention")
    df = _variants(tmp_path, clean, {"value": 1.0, note: "beside a study on the host / a defect fixed since"})
    assert len(df) == 2 and list(latest(df, "train_images_per_s")["value"]) == [clean["value"]]
    assert main_table(df).loc[("VAR-d16", 256), "Train img/s (b32)"] == clean["value"]


def test_the_tables_say_under_which_autotuning_mode_their_timings_ran(tmp_path):
    clean = real_one(metric="train_images_per_s", mixer="attention")
    first = {**clean["versions"], "triton_autotune": "first"}
    df = _variants(tmp_path, clean, {"mixer": "gla", "versions": first})
    assert main_table(df).attrs["autotune"] == {"first": 1}  # the session-1 record predates the field


def test_a_compiled_training_step_gets_its_own_columns(tmp_path):
    eager = real_one(metric="train_images_per_s", mixer="attention")
    flops = {"adaln": 2.0e8, "total": 3.0e11}  # per image: AdaLN modulates once per image
    df = _variants(tmp_path, eager, {"value": 2.0, "mfu": 0.5, "compiled": True, "flops_by_component": flops,
                                     "L": 680})
    row = main_table(df).loc[("VAR-d16", 256)]
    assert row["Train img/s (b32)"] == eager["value"] and row["MFU (b32)"] == eager["mfu"]
    assert row["Train img/s (b32, compiled)"] == 2.0 and row["MFU (b32, compiled)"] == 0.5
    goals = bench_goals(df)
    assert goals.loc["VAR-d16 training MFU under torch.compile (b32, 256 px)", "Measured"] == 0.5
    # the issue's reference counts AdaLN once per token: 679 more AdaLN passes per image in the numerator
    per_token = goals.loc["VAR-d16 training MFU under torch.compile, AdaLN FLOPs per token (b32, 256 px)", "Measured"]
    assert per_token == pytest.approx(0.5 * (3.0e11 + 679 * 2.0e8) / 3.0e11)
    throughput = goals.loc["VAR-d16 training img/s under torch.compile (b32, 256 px; plain-stack reference on an H200)"]
    assert throughput["Measured"] == 2.0 and throughput["Met"] == "no"
    assert throughput["Missed by"] == pytest.approx(1 - 2.0 / 284)


def test_sampling_goals_per_sampler_mode_with_and_without_the_decode(tmp_path):
    """Graphed sampling gets its own columns (eager ones unchanged), and each sampling goal is reported eager and with
    graphs, with the decode in the latency and without it, from the records' own fields."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "latency_wo_decode_ms": 300.0}
    mvar = {**var, "mixer": "mamba2", "intra": "full", "value": 660.0, "latency_wo_decode_ms": 480.0}
    lines = [var, mvar, {**mvar, "sampler": "prefix_rerun", "value": 760.0, "latency_wo_decode_ms": 576.0},
             {**var, "cuda_graphs": True, "value": 420.0, "latency_wo_decode_ms": 240.0, "peak_reserved_bytes": 7e9},
             {**mvar, "cuda_graphs": True, "value": 504.0, "latency_wo_decode_ms": 324.0},
             {**mvar, "cuda_graphs": True, "sampler": "prefix_rerun", "value": 624.0, "latency_wo_decode_ms": 444.0}]
    df = _records(tmp_path, lines)
    assert main_table(df).loc[("VAR-d16", 256), "Latency b64 (ms)"] == var["value"]
    assert main_table(df).loc[("VAR-d16", 256), "Latency b64, graphs (ms)"] == 420.0
    # a replayed graph's memory is in its pool, not allocated: graphed rows show the reserved peak only
    ablation = mixer_ablation(df).loc[("attention", "none", 16, 256)]
    assert ablation["Peak reserved b64, graphs (bytes)"] == 7e9 and "Peak mem b64, graphs (bytes)" not in ablation
    goals = bench_goals(df)["Measured"]
    rerun = "M-VAR-d16 sampling: prefix re-run / carried state latency (b64, 256 px{})"
    vs_var = "M-VAR-d16 / VAR-d16 sampling latency, carried state vs KV cache (b64, 256 px{})"
    assert goals[rerun.format("")] == pytest.approx(760 / 660)
    assert goals[rerun.format(", decode excluded")] == pytest.approx(576 / 480)
    assert goals[rerun.format(", CUDA graphs, decode excluded")] == pytest.approx(444 / 324)
    assert goals[vs_var.format(", CUDA graphs")] == pytest.approx(504 / 420)
    assert goals[vs_var.format(", decode excluded")] == pytest.approx(480 / 300)


def test_a_goal_ratio_divides_two_timings_of_one_call(tmp_path):
    """Session 21: M-VAR / VAR eager b64 read 1.58, M-VAR's time of one call over VAR's of a call 30 hours later
    (each side its own newest timing); that call's own pair gave 1.51. A newer call that timed one side only leaves
    the ratio to the newest call that timed both, and the table names it."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "commit": "a" * 40,
           "machine": "nvidia-h200", "date": "2099-01-01T00:00:00+00:00"}
    mvar = {**var, "mixer": "mamba2", "intra": "full", "value": var["value"] * 1.5}
    lines = [var, mvar, {**var, "commit": "b" * 40, "value": var["value"] * 0.5, "date": "2099-01-02T00:00:00+00:00"}]
    goals = bench_goals(_records(tmp_path, lines))
    row = goals.loc["M-VAR-d16 / VAR-d16 sampling latency, carried state vs KV cache (b64, 256 px)"]
    assert row["Measured"] == pytest.approx(1.5) and row["Read from"] == "one call: aaaaaaa on nvidia-h200"


def test_a_call_whose_timings_were_all_superseded_is_no_call_of_the_goal_ratios(tmp_path, caplog):
    """A device call whose every timing was superseded (a defect fixed since) has no timing to pair: the ratios skip
    it without a warning that the GPU has no timings (the report logged one per such call)."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "commit": "a" * 40,
           "machine": "nvidia-h200", "date": "2099-01-01T00:00:00+00:00"}
    lines = [var, {**var, "mixer": "mamba2", "intra": "full", "value": var["value"] * 1.5},
             {**var, "commit": "b" * 40, "date": "2099-01-02T00:00:00+00:00", "superseded": "a defect fixed since"}]
    with caplog.at_level(logging.WARNING):
        row = bench_goals(_records(tmp_path, lines)).loc[
            "M-VAR-d16 / VAR-d16 sampling latency, carried state vs KV cache (b64, 256 px)"]
    assert row["Measured"] == pytest.approx(1.5) and row["Read from"] == "one call: aaaaaaa on nvidia-h200"
    assert "no timings on device" not in caplog.text


def test_issue_18_goals_set_each_measurement_against_the_official_code_s(tmp_path):
    """The goals of issue 18 (targets from the official code's numbers on the same GPU kind) read the bench's own
    columns: graphed and eager latencies per sampler configuration and batch, the eager sampling peak in GiB."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "peak_mem_bytes": 13 * 2 ** 30}
    mvar = {**var, "mixer": "mamba2", "intra": "full", "value": 800.0}
    lines = [var, mvar, {**var, "cuda_graphs": True, "value": 290.0}, {**mvar, "cuda_graphs": True, "value": 420.0},
             {**var, "batch": 1, "value": 130.0}, {**var, "batch": 1, "cuda_graphs": True, "value": 38.0}]
    goals = bench_goals(_records(tmp_path, lines))
    graphs = goals.loc["VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 1.5x the official)"]
    assert (graphs["Measured"], graphs["Met"]) == (290.0, "yes")
    mvar_graphs = goals.loc["M-VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 2x the official)"]
    assert mvar_graphs["Met"] == "no" and mvar_graphs["Missed by"] == pytest.approx(420 / 410 - 1)
    eager = goals.loc["VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)"]
    assert eager["Measured"] == 130.0 and eager["Met"] == "no"
    assert goals.loc["VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)", "Met"] == "yes"
    assert goals.loc["M-VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)", "Met"] == "yes"
    memory = goals.loc["VAR-d16 eager sampling peak memory allocated (b64, 256 px, GiB; the official's)"]
    assert memory["Measured"] == pytest.approx(13.0) and memory["Met"] == "no"
    assert goals.loc["M-VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)", "Met"] == "—"


def test_each_other_gpu_adds_its_own_measured_and_met_columns_and_the_goals_only_it_measured(tmp_path):
    """The goals' GPU (the one that ran most timings) keeps Measured / Met / Missed by; another GPU's records give
    "Measured on" / "Met on" columns of their own (sessions lent H100s only), and a goal only that GPU measured (the
    official sampler timed in the same call) is a row of its own, "—" on the goals' GPU. Neither GPU's numbers
    leak into the other's columns."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "device": "NVIDIA H200"}
    h100 = {**var, "device": "NVIDIA H100 80GB HBM3", "commit": "h+copy"}
    lines = [{**var, "cuda_graphs": True, "value": 310.0}, {**var, "batch": 1, "cuda_graphs": True, "value": 25.0},
             {**var, "batch": 2, "value": 500.0},  # the H200 ran most timings: the goals' GPU
             {**h100, "cuda_graphs": True, "value": 236.0}, {**h100, "batch": 1, "value": 140.0},
             {"metric": "sample_latency_ms", "unit": "ms", "system": "official_var", "model": "VAR-d16",
              "device": h100["device"], "commit": "h+copy", "batch": 1, "value": 133.0, "date": h100["date"]}]
    goals = bench_goals(_records(tmp_path, lines))
    on, met = "Measured on NVIDIA H100 80GB HBM3", "Met on NVIDIA H100 80GB HBM3"
    graphs = goals.loc["VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 1.5x the official)"]
    assert graphs[["Measured", "Met", on, met]].tolist() == [310.0, "no", 236.0, "yes"]
    b1 = goals.loc["VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)"]
    assert (b1["Measured"], b1["Met"], b1[met]) == (25.0, "yes", "—") and math.isnan(b1[on])
    same_call = goals.loc["VAR-d16 eager sampling latency (b1, 256 px, ms; the official's, timed in the same call)"]
    assert math.isnan(same_call["Measured"]) and same_call["Met"] == "—" and same_call["Target"] == "≤ 133"
    assert same_call[[on, met]].tolist() == [140.0, "no"]
    assert goals.attrs["device"] == "NVIDIA H200" and "NVIDIA H100 80GB HBM3" in goals.attrs["legend"]


def test_a_faster_decode_mode_gets_its_own_columns(tmp_path):
    """Sampling with the tokenizer decoding channels_last (task.decode_mode) is another measurement than the eager
    decode's: its own columns, never the newest of one cell; records before task.decode_mode decoded eagerly."""
    old = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "latency_wo_decode_ms": 300.0}
    old.pop("decode_mode", None)
    fast = {**old, "decode_mode": "channels_last", "value": 390.0, "date": "2099-01-01T00:00:00"}
    row = main_table(_records(tmp_path, [old, fast])).loc[("VAR-d16", 256)]
    assert row["Latency b64 (ms)"] == old["value"] and row["Latency b64, channels_last decode (ms)"] == 390.0


def test_main_table_shows_the_recorded_numbers(df, tmp_path):
    table = main_table(df)
    train = real_one(metric="train_images_per_s", mixer="attention")
    b1 = real_one(metric="sample_latency_ms", mixer="attention", batch=1)
    row = table.loc[("VAR-d16", 256)]
    assert row["Train img/s (b32)"] == train["value"] and row["MFU (b32)"] == train["mfu"]
    assert row["Latency b1 (ms)"] == b1["value"]
    assert row["Params"] == train["params"] and row["Fwd GFLOPs/img"] == train["fwd_flops_per_image"] * 1e-9
    assert row["State (bytes/img)"] == real_one(metric="state_bytes_per_image", mixer="attention")["value"]
    fids = [r["value"] for r in raw(metric="fid", tokenizer_id=None)  # the main tokenizer's (not the second's)
            if r["cell_id"].startswith("in256-d16-attention")]
    assert row["FID (Inception, 50k)"] == pytest.approx(statistics.mean(fids), rel=1e-12)  # a mean: round-off
    assert table.attrs["device"] == train["device"]
    md = write_table(table, tmp_path, "main_table", "Main")[0].read_text()
    assert f"| {train['value']:.1f} " in md and f"| {b1['value']:.1f} " in md


def test_a_wide_table_is_written_one_section_per_study_or_evaluation_and_one_for_speed(tmp_path):
    """report/main_table.md and mixer_ablation.md (98 and 105 columns as one table): one section per study's quality
    columns ("[study]"), per evaluation of the columns one study names, one each of training speed, sampling latency
    and memory; each with the rows that have a value there, beside the size columns (and the seeds, or where the
    timings come from); the values untouched."""
    import pandas as pd

    from varbench.analysis.format import PART, by_column_group
    index = pd.MultiIndex.from_tuples([("VAR-d16", 256), ("VAR-d6", 32), ("gla-d6", 32)], names=["Model", "Resolution"])
    nan = float("nan")
    table = pd.DataFrame({"Params": [310e6, 11e6, 12e6], "Fwd GFLOPs/img": [300.0, 2.0, 2.1],
                          "FID (Inception, 10k, cfg 1.5)": [nan, 235.0, 219.8],
                          "FID (Inception, 10k, cfg 1.5) std": [nan, 1.1, 6.5],
                          "FD (embedded classifier, 500) [study_a]": [nan, 0.43, nan],
                          "FD (embedded classifier, 500) [study_b]": [nan, nan, 0.36], "Seeds": [nan, 3, 3],
                          "Train img/s (b32)": [351.4, nan, nan], "MFU (b32)": [0.41, nan, nan],
                          "Latency b1 (ms)": [nan, 12.5, nan], "Peak mem b1 (bytes)": [nan, 2e9, nan],
                          "Timed on (autotune)": ["h200, full", "cpu", nan]},
                         index=index)
    table.attrs["records"] = 9
    parts = by_column_group(table)
    assert parts.index.names[0] == PART and parts.attrs["records"] == 9
    assert list(dict.fromkeys(parts.index.get_level_values(PART))) == [
        "quality, Inception, 10k, cfg 1.5", "quality, study study_a", "quality, study study_b", "training speed",
        "sampling latency", "memory"]
    training = parts.loc["training speed"].dropna(axis=1, how="all")
    assert list(training.index) == [("VAR-d16", 256)]
    assert list(training.columns) == ["Params", "Fwd GFLOPs/img", "Train img/s (b32)", "MFU (b32)",
                                      "Timed on (autotune)"]
    sampling = parts.loc["sampling latency"].dropna(axis=1, how="all")
    assert list(sampling.index) == [("VAR-d6", 32)] and list(sampling.columns)[-2:] == [
        "Latency b1 (ms)", "Timed on (autotune)"]
    assert list(parts.loc["memory"].dropna(axis=1, how="all").columns)[-2:] == ["Peak mem b1 (bytes)",
                                                                              "Timed on (autotune)"]
    inception = parts.loc["quality, Inception, 10k, cfg 1.5"].dropna(axis=1, how="all")
    assert list(inception.index) == [("VAR-d6", 32), ("gla-d6", 32)] and inception["Seeds"].tolist() == [3, 3]
    assert inception["FID (Inception, 10k, cfg 1.5) std"].tolist() == [1.1, 6.5]
    md = write_table(parts, tmp_path, "main_table", "Main")[0].read_text()
    assert md.count("## Columns: ") == 6 and "235 ± 1.1" in md and " 351.4 |" in md
    section = md.split("## Columns: quality, study study_b")[1].split("##")[0]
    assert "study_a" not in section and "Train img/s" not in section and "| gla-d6 " in section
    assert by_column_group(table[["Params", "Train img/s (b32)"]]).index.names == ["Model", "Resolution"]  # one group


def test_an_embedded_metric_never_lands_in_a_fid_column(df):
    table = main_table(df)
    fid_columns = [c for c in table.columns if c.startswith("FID")]
    assert fid_columns == ["FID (Inception, 50k)", "FID (Inception, 50k) std"]
    embedded = [c for c in table.columns if "embedded classifier" in c]
    assert embedded and all(c.startswith(("FD ", "Class acc. ")) for c in embedded)
    assert table.loc[("VAR-d4", 64), fid_columns].isna().all()  # the embedded grid has FDs, never a FID
    assert quality_label("embedded_fd", "inception-v3").startswith("FD (")
    assert quality_label("fid", "embedded classifier (varbench)").startswith("FD (embedded classifier")


def test_mixer_ablation_mean_and_std_over_seeds(df):
    table = mixer_ablation(df)
    fds = [r["value"] for r in raw(metric="embedded_fd") if r["cell_id"].startswith("emb64-d4-gla")]
    row = table.loc[("gla", "none", 4, 64)]
    col = "FD (embedded classifier, 1k)"
    assert row[col] == pytest.approx(statistics.mean(fds), rel=1e-12)
    assert row[f"{col} std"] == pytest.approx(statistics.stdev(fds), rel=1e-12)
    assert row["Seeds"] == len(fds)
    mvar = real_one(metric="state_bytes_per_image", mixer="mamba2")
    assert table.loc[("mamba2", "full", 16, 256), "State (bytes/img)"] == mvar["value"]


def test_resolution_scaling_ratio_and_errors(df):
    table = resolution_scaling(df)
    kv = real_one(metric="state_bytes_per_image", mixer="attention")["value"]
    delta = real_one(metric="state_bytes_per_image", mixer="deltanet")["value"]
    assert table.loc[("deltanet-d16", 256), "State / KV cache"] == delta / kv
    assert table.loc[("VAR-d16", 256), "State / KV cache"] == 1.0
    (err,) = raw(metric="bench_error")
    assert err["error"] in table.loc[("deltanet-d16", 512), "Bench error"]


def test_an_error_that_a_later_run_measured_after_all_leaves_the_table(tmp_path):
    """A cell killed (stage `process`) or failing one stage, then re-run with success: the error stays a record but
    leaves the table; a failure of another stage, or one not run again, stays in it."""
    (err,) = raw(metric="bench_error")
    train = {**real_one(metric="train_images_per_s", mixer="deltanet"), "resolution": err["resolution"]}
    lines = [{**err, "stage": "process", "batch": None, "error": "killed"},
             {**err, "stage": "sample", "batch": 64, "sampler": "carry", "error": "out of memory"},
             {**train, "date": "2099-01-01T00:00:00+00:00"}]
    shown = resolution_scaling(_records(tmp_path, lines)).loc[("deltanet-d16", err["resolution"]), "Bench error"]
    assert "killed" not in shown and "sample b64: out of memory" in shown


def test_parity_table_reports_the_worst_error(df):
    table = parity_table(df)
    bf16 = [r for r in raw(metric="parity_rel_rms", name="attention") if r["dtype"] == "torch.bfloat16"]
    worst = max(bf16, key=lambda r: r["value"])
    row = table.loc[("mixer", "attention", "flex", "bf16")]
    assert (row["Worst rel RMS"], row["Worst at"], row["Checks"]) == (worst["value"], worst["compared"], len(bf16))
    assert "fp32" in table.loc[("mixer", "deltanet", "fla", "fp32"), "Error"]


def test_gpu_test_table_shows_each_tests_newest_outcome_and_why_it_did_not_pass(df):
    runs = raw(metric="gpu_test")
    table = gpu_test_table(df)
    assert list(table.index) == sorted(r["test"] for r in runs) and set(table["Outcome"]) == {"skipped"}
    assert table["Report"].str.contains("needs a CUDA device").all()
    assert table.attrs["device"] == runs[0]["device"] and table.attrs["records"] == len(runs)


def test_parallel_scaling_efficiency_is_throughput_over_gpus_times_one_gpu(df):
    table = parallel_scaling(df)
    one = raw(metric="parallel_train_images_per_s", world_size=1)[0]
    two = [r for r in raw(metric="parallel_train_images_per_s", world_size=2, parallel="ddp")
           if r["params"] == one["params"]][-1]
    row = table.loc[(table.index.get_level_values("GPUs") == 2) & (table.index.get_level_values("Parallel") == "ddp")
                    & (table["img/s"] == two["value"])].iloc[0]
    assert row["Efficiency"] == pytest.approx(two["value"] / (2 * one["value"]))
    assert row["Peak mem/GPU (bytes)"] == max(two["peak_mem_bytes_per_gpu"])


def test_costs_table_state_ratio_is_state_over_the_kv_cache(df):
    table = costs_table(df)
    kv, mamba2 = (real_one(metric="analytic_cost", mixer=m, intra=i, depth=16, resolution=1024)
                  for m, i in (("attention", "none"), ("mamba2", "full")))
    row = table.loc[("M-VAR-d16", 1024)]
    assert row["State / KV cache"] == pytest.approx(mamba2["state_bytes_per_image"] / kv["state_bytes_per_image"])
    assert row["Params"] == mamba2["params"]


def test_bench_goals_compare_the_recorded_numbers_with_the_targets(df):
    goals = bench_goals(df)
    mfu = goals.loc["VAR-d16 training MFU (b32, 256 px)"]
    (rec,) = [r for r in raw(metric="train_images_per_s", mixer="attention", intra="none", batch=32)
              if not r.get("synthetic")][-1:]
    assert mfu["Measured"] == pytest.approx(rec["mfu"])
    assert mfu["Met"] == ("yes" if rec["mfu"] >= 0.55 else "no")
    if mfu["Met"] == "no":
        assert mfu["Missed by"] == pytest.approx(1 - rec["mfu"] / 0.55)


def test_the_graphed_latency_goals_read_the_fastest_graphed_mode_and_name_it(tmp_path):
    """task.fused_elementwise and the decode modes are varbench settings of their own columns: the graphed latency
    goals read the fastest of them and say which ("Read from"); the eager goals keep the plain eager column."""
    var = {**real_one(metric="sample_latency_ms", mixer="attention", batch=64), "value": 417.0}
    graphs = {**var, "cuda_graphs": True, "value": 390.0}
    lines = [var, graphs, {**graphs, "fused_elementwise": True, "decode_mode": "compiled", "value": 296.0},
             {**graphs, "decode_mode": "compiled", "value": 330.0}, {**var, "fused_elementwise": True, "value": 300.0}]
    df = _records(tmp_path, lines)
    frame = config_frame(df).loc[("attention", "none", 16, 256)]
    assert frame["Latency b64, graphs, fused, compiled decode (ms)"] == 296.0
    assert frame["Latency b64, fused (ms)"] == 300.0
    goals = bench_goals(df)
    fastest = goals.loc["VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 1.5x the official)"]
    assert (fastest["Measured"], fastest["Met"]) == (296.0, "yes")
    assert fastest["Read from"] == "Latency b64, graphs, fused, compiled decode (ms)"
    eager = goals.loc["VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)"]
    assert (eager["Measured"], eager["Read from"]) == (417.0, "Latency b64 (ms)")
    missing = goals.loc["M-VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 2x the official)"]
    assert missing["Measured"] != missing["Measured"] and missing["Read from"] == ""  # NaN: no M-VAR record


def test_the_compiled_training_goal_reads_the_fastest_compile_mode_never_a_numerics_deviation(tmp_path):
    """task.compile_mode is a setting of its own column; the official training goal reads the fastest compiled
    mode and names it, never bf16 weights or FP8 matmuls (deviations from VAR's numerics, tabled on their own)."""
    train = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "compiled": True, "value": 351.0}
    lines = [train, {**train, "compile_mode": "max-autotune-no-cudagraphs", "value": 420.0},
             {**train, "param_dtype": "bf16", "value": 460.0}, {**train, "fp8": True, "value": 480.0},
             {**train, "fp8": True, "fp8_recipe": "rowwise", "value": 490.0},
             {**train, "compile_mode": "reduce-overhead", "value": 360.0},
             {**train, "compile_scope": "blocks", "value": 340.0}]
    df = _records(tmp_path, lines)
    frame = config_frame(df).loc[("attention", "none", 16, 256)]
    assert frame["Train img/s (b32, compiled)"] == 351.0 and frame["Train img/s (b32, compiled, fp8 matmuls)"] == 480
    assert frame["Train img/s (b32, compiled, fp8 matmuls rowwise)"] == 490.0  # each recipe a column of its own
    assert frame["Train img/s (b32, compiled reduce-overhead)"] == 360.0
    assert frame["Train img/s (b32, compiled max-autotune-no-cudagraphs)"] == 420.0
    assert frame["Train img/s (b32, compiled by blocks)"] == 340.0  # task.compile_scope: a column of its own
    goal = bench_goals(df).loc["VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)"]
    assert (goal["Measured"], goal["Read from"]) == (420.0, "Train img/s (b32, compiled max-autotune-no-cudagraphs)")


def test_the_official_goals_read_varbench_s_math_on_other_kernels_too_and_name_the_variant(tmp_path):
    """A configuration with kernel choices alone (attention[backend=sdpa_scales]: VAR's math on other kernels)
    counts for VAR's goal, and the source names it; one with another option (other math) never does."""
    train = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "compiled": True, "value": 351.0}
    lines = [train, {**train, "mixer_options": {"backend": "sdpa_scales"}, "value": 377.0},
             {**train, "mixer_options": {"backend": "sdpa_scales", "l2_norm": False}, "value": 600.0}]
    goal = bench_goals(_records(tmp_path, lines)).loc[
        "VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)"]
    assert (goal["Measured"], goal["Read from"]) == (
        377.0, "Train img/s (b32, compiled) of attention[backend=sdpa_scales]+none")
    alone = bench_goals(_records(tmp_path, lines[:1] + lines[2:])).loc[
        "VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)"]
    assert (alone["Measured"], alone["Read from"]) == (351.0, "Train img/s (b32, compiled)")


@pytest.mark.parametrize("options", [{"chunk_size": 128}, {"chunk_size": 128, "fused": True},
                                     {"conv_backend": "torch"}, {"fit_chunk": True}])
def test_m_var_s_goal_counts_its_math_on_other_kernels(tmp_path, options):
    """mamba2[chunk_size=128] (the SSD kernels' tiling; the chunked scan is exact for every chunk length), the
    whole-layer kernel (fused=true, M-VAR's own use_mem_eff_path), the depthwise conv in torch and chunks fitted to
    short scans (fit_chunk) are M-VAR's math: each counts for M-VAR's training goal, and the source names it;
    another d_state is other math and never does."""
    train = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "mixer": "mamba2", "intra": "full",
             "compiled": True, "value": 238.0}
    lines = [train, {**train, "mixer_options": options, "value": 241.0},
             {**train, "mixer_options": {**options, "d_state": 16}, "value": 300.0}]
    records = _records(tmp_path, lines)
    goal = bench_goals(records).loc["M-VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)"]
    (variant,) = set(records["mixer"]) - {"mamba2"} - {m for m in records["mixer"] if "d_state" in m}
    assert (goal["Measured"], goal["Read from"]) == (241.0, f"Train img/s (b32, compiled) of {variant}+full")


def test_a_chunked_decode_is_its_own_measurement_with_its_own_memory_goal(tmp_path):
    """task.decode_batch: VAR's batch-64 sampling decoding 16 images per call is tabled beside the whole-batch decode,
    never in its place (goal rows and columns of their own); the crossover atlas reads the whole-batch decode, unfused
    (task.fused_elementwise is timed for VAR and M-VAR only)."""
    from varbench.analysis.crossover import FAMILIES, family_records
    base = {"metric": "sample_latency_ms", "unit": "ms", "mixer": "attention", "intra": "none", "depth": 16,
            "resolution": 256, "batch": 64, "sampler": "carry", "cuda_graphs": False, "decode_mode": "eager",
            "device": "NVIDIA H200", "machine": "nvidia-h200", "versions": {"triton_autotune": "full"}}
    lines = [{**base, "value": 417.0, "peak_mem_bytes": 13 * 2 ** 30, "date": "2099-01-01T00:00:00+00:00"},
             {**base, "value": 420.0, "peak_mem_bytes": 7 * 2 ** 30, "decode_batch": 16,
              "date": "2099-01-01T00:01:00+00:00"},
             {**base, "value": 380.0, "fused_elementwise": True, "date": "2099-01-01T00:02:00+00:00"}]
    df = _records(tmp_path, lines)
    frame = config_frame(df).loc[("attention", "none", 16, 256)]
    assert frame["Latency b64 (ms)"] == 417.0 and frame["Latency b64, decode by 16 (ms)"] == 420.0
    goals = bench_goals(df)
    assert goals.loc["VAR-d16 eager sampling peak memory allocated (b64, 256 px, GiB; the official's)",
                     "Measured"] == pytest.approx(13)
    assert goals.loc["VAR-d16 eager sampling peak memory allocated, 16 images per decode call (b64, 256 px, GiB; "
                     "the official's)", "Measured"] == pytest.approx(7)
    latency = next(f for f in FAMILIES if f.column == "Latency, large batch")
    assert list(family_records(df, latency)["v"]) == [417.0]


def test_study_ranking_orders_by_the_quality_mean_and_measures_the_gap_in_seed_stds(df):
    table = study_ranking(df)
    fd = table.columns[0]  # the ranking metric comes first (FID here: the fixture has Inception FID over 2+ seeds)
    assert list(table[fd]) == sorted(table[fd])
    best, second = table.iloc[0], table.iloc[1]
    pooled = ((best[f"{fd} std"] ** 2 + second[f"{fd} std"] ** 2) / 2) ** 0.5
    gap = [c for c in table.columns if c.startswith("Gap to best")][0]
    assert second[gap] == pytest.approx((second[fd] - best[fd]) / pooled)
    assert (table["Seeds"] >= 2).all()
    assert {"p vs VAR (FID, Welch t, Holm)", "p vs VAR (val NLL, Welch t, Holm)"} <= set(table)  # never vs the best
    without_nll = study_ranking(df[~df["metric"].str.endswith("_nll")])
    assert "p vs VAR (FID, Welch t, Holm)" in without_nll and "p vs VAR (val NLL, Welch t, Holm)" not in without_nll
    # each configuration's cost: the bench's timing of the same mixer / intra at depth 16, 256 px
    train = real_one(metric="train_images_per_s", mixer="attention")
    assert table.loc[("VAR-d16", 256), "d16 train img/s (b32, 256 px)"] == train["value"]


def test_study_ranking_shows_the_held_out_nll_and_tests_against_its_lowest(tmp_path):
    from varbench.analysis.study import NLL_GAP, TRAIN_NLL, VAL_NLL
    fid = [r for r in raw(metric="fid", tokenizer_id=None)  # one per configuration and seed, on the main tokenizer
           if r["cell_id"].startswith("in256-d16")]
    nll = [{**r, "metric": "val_nll", "value": 3.0 + 0.1 * i, "unit": "nats/token"} for i, r in enumerate(fid)]
    fit = [{**r, "value": 2.0 + 0.01 * i ** 2, "metric": "train_nll"} for i, r in enumerate(nll)]
    others = [r for r in raw() if not r["metric"].endswith("_nll")]  # the fixture's own NLL lines replaced
    table = study_ranking(_records(tmp_path, others + nll + fit))  # the study's own records folder
    assert (table[VAL_NLL] - table[TRAIN_NLL]).to_numpy() == pytest.approx(table[NLL_GAP].to_numpy())
    gap_std = table[f"{NLL_GAP} std"]  # over seeds of the per-seed gap: here the train values vary, the gap with them
    assert gap_std.notna().all() and (gap_std > 0).all()
    per_config = {}
    for r in nll:  # cell ids are "<configuration>-s<seed>"
        per_config.setdefault(r["cell_id"].rsplit("-s", 1)[0], []).append(r["value"])
    assert sorted(table[VAL_NLL]) == pytest.approx(sorted(statistics.mean(v) for v in per_config.values()))
    p = table["p vs VAR (val NLL, Welch t, Holm)"]  # VAR is the reference: no p of its own
    assert p.isna().sum() == 1 and p[("VAR-d16", 256)] != p[("VAR-d16", 256)]
    from varbench.analysis.versus import versus_var
    same = versus_var(_records(tmp_path, others + nll + fit)).xs(VAL_NLL, level="Metric")["p (Holm)"]
    assert p.drop(("VAR-d16", 256)).to_numpy() == pytest.approx(same.reindex(p.drop(("VAR-d16", 256)).index))


def test_each_records_folder_is_its_own_study(tmp_path):
    """Two grid runs (two folders) are ranked apart, under a Study level: their rows never share a ranking."""
    fid = raw(metric="fid")
    for study, shift in (("a", 0.0), ("b", 100.0)):
        (tmp_path / study).mkdir()
        lines = [{**r, "value": r["value"] + shift} for r in fid]
        (tmp_path / study / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = study_ranking(load_records(tmp_path))
    assert table.index.names[0] == "Study" and set(table.index.get_level_values("Study")) == {
        str(tmp_path / "a"), str(tmp_path / "b")}
    a, b = table.xs(str(tmp_path / "a"), level="Study"), table.xs(str(tmp_path / "b"), level="Study")
    fd = table.columns[0]
    assert list(a.index) == list(b.index) and list(b[fd]) == pytest.approx(list(a[fd] + 100.0))
    gap = [c for c in table.columns if c.startswith("Gap to best")][0]
    assert a[gap].iloc[0] == b[gap].iloc[0] == 0  # each study has its own best
    # written as one section (and one LaTeX table) per study, each with only the columns it fills
    only_b = table.assign(**{"Only b": [None] * len(a) + [1.0] * len(b)})
    md, tex = (p.read_text() for p in write_table(only_b, tmp_path, "ranking", "Ranking"))
    head_a, head_b = f"## Study: {tmp_path / 'a'}", f"## Study: {tmp_path / 'b'}"
    assert md.count("## Study:") == 2 and md.index(head_a) < md.index(head_b)
    assert "Only b" not in md[:md.index(head_b)] and "Only b" in md[md.index(head_b):]
    assert tex.count(r"\begin{table}") == 2


def test_report_regenerates_every_table_and_figure(tmp_path):
    records = tmp_path / "records"  # the fixture and the numerics table's real FP8 lines
    shutil.copytree(FIXTURE, records)
    shutil.copy(NUMERICS, records)
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=report", f"results_dir={records}",
                                                       f"task.out_dir={tmp_path / 'out'}"])
    paths = run_task(cfg)
    expected = ({f"{n}.{e}" for n in TABLES for e in ("md", "tex")}
                | {f"{n}.{e}" for n in FIGURES for e in ("png", "pdf")} | {"README.md"})
    assert set(paths) == expected
    assert all(Path(p).stat().st_size > 0 for p in paths.values())
    readme = (tmp_path / "out" / "README.md").read_text()
    assert f"from {len(raw()) + 2} records" in readme and "synthetic" in readme
    assert all(name in readme for name in expected - {"README.md"})


def test_report_says_a_caveat_of_the_records_once(tmp_path, caplog):
    """Timings from two GPUs: every speed table picks one and said so, the same line once per table."""
    lines = (FIXTURE / "bench_h100_real.jsonl").read_text().splitlines()
    elsewhere = [json.dumps({**json.loads(line), "device": "NVIDIA H200", "depth": 20}) for line in lines]
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "bench.jsonl").write_text("\n".join(lines + elsewhere) + "\n")
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=report", f"results_dir={tmp_path / 'records'}",
                                                       f"task.out_dir={tmp_path / 'out'}"])
    with caplog.at_level(logging.WARNING):
        run_task(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("timings from several devices" in m for m in warned) == 1 and len(warned) == len(set(warned))

def test_missing_records_skip_a_figure_and_say_why(tmp_path, caplog):
    only_parity = load_records(FIXTURE / "parity_h100_real.jsonl")
    with caplog.at_level(logging.WARNING):
        drawn = [f(only_parity, tmp_path / "x.png") for f in (quality_vs_flops, speed_memory_vs_resolution,
                                                             training_curves, sample_grids, generalisation_gap)]
    assert drawn == [None] * 5 and not (tmp_path / "x.png").exists()
    assert all(needed in caplog.text for needed in ("train_nll", "train_loss", "sample_grid", "state_bytes_per_image"))
    paths = build_report(FIXTURE / "parity_h100_real.jsonl", tmp_path / "r")
    assert set(paths) == {"parity_table.md", "parity_table.tex", "README.md"}
    assert "Not generated" in (tmp_path / "r" / "README.md").read_text()


def test_a_report_for_a_device_no_record_names_is_refused_and_the_old_report_kept(tmp_path):
    """Session 22's audit: `task.device=<typo>` only warned, and wrote a report of empty speed tables over the last."""
    build_report(FIXTURE / "parity_h100_real.jsonl", tmp_path / "r")
    with pytest.raises(ValueError, match=r"task.device = 'NVIDIA H2OO': no record .* the records' devices: \['NVIDIA"):
        build_report(FIXTURE / "parity_h100_real.jsonl", tmp_path / "r", device="NVIDIA H2OO")
    assert (tmp_path / "r" / "parity_table.md").is_file()


def test_empty_records_folder_gives_an_empty_report(tmp_path):
    (tmp_path / "records").mkdir()
    assert set(build_report(tmp_path / "records", tmp_path / "out")) == {"README.md"}


@pytest.mark.slow  # a kernel per notebook, which imports torch (through varbench): ~10 s on 2 busy cores
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_headless(notebook, tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("VARBENCH_RECORDS", str(FIXTURE))
    monkeypatch.setenv("VARBENCH_FIGURES", str(tmp_path))
    nb = jupytext.read(notebook)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert '"output_type": "error"' not in text and "records from" in text
    assert list(tmp_path.glob("*.png")), "the notebook drew no figure from the fixture"


def test_studies_merged_keep_each_studys_column_order():
    from varbench.analysis.study import merged_columns
    # a column new to the second study sits after its own predecessor there, not at the end
    assert merged_columns([["FD 200", "Loss", "Val NLL", "Params"], ["FD 500", "Loss", "Val NLL", "Train NLL",
                                                                     "Params"]]) == [
        "FD 500", "FD 200", "Loss", "Val NLL", "Train NLL", "Params"]


def test_generalisation_gap_plots_each_configurations_train_and_val_nll(df, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from varbench.analysis.study import TRAIN_NLL, VAL_NLL
    drawn, errorbar = {}, Axes.errorbar

    def recording_errorbar(ax, x, y, *args, **kwargs):  # the points as drawn, read back per model
        drawn[kwargs["label"]] = (x, y)
        return errorbar(ax, x, y, *args, **kwargs)
    monkeypatch.setattr(Axes, "errorbar", recording_errorbar)
    path = generalisation_gap(df, tmp_path / "gap.png")
    assert path is not None and path.stat().st_size > 0
    table = study_ranking(df)  # one point per configuration: its mean train and val NLL over seeds
    assert set(drawn) == set(table.index.get_level_values("Model"))
    for (model, _), row in table.iterrows():
        assert drawn[model] == pytest.approx((row[TRAIN_NLL], row[VAL_NLL]))


def test_a_table_with_timings_from_several_machines_says_so(tmp_path):
    timed = [r for r in raw() if r["metric"] in ("train_images_per_s", "sample_latency_ms")]
    stamped = [{**r, "machine": "host-a" if i % 2 else "host-b"} for i, r in enumerate(timed)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stamped))
    build_report(tmp_path / "in", tmp_path / "out")
    note = (tmp_path / "out" / "resolution_scaling.md").read_text()
    table = resolution_scaling(load_records(tmp_path / "in"))
    counts = table.attrs["machines"]  # of the timings the table drew from (the newest per configuration)
    assert set(counts) == {"host-a", "host-b"}
    assert f"host-a ({counts['host-a']}), host-b ({counts['host-b']})" in note and "within one machine" in note
    one = _records(tmp_path, timed)  # unstamped records: one "machine", no note
    assert resolution_scaling(one).attrs["machines"] == {"unstamped": len(latest(one, ["train_images_per_s",
                                                                                      "sample_latency_ms"]))}


def test_training_curves_add_the_nll_of_both_splits_when_recorded(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    losses = raw(metric="train_loss")
    nll = [{**r, "metric": "nll_during_training", "split": split, "value": r["value"] + (0.5 if split == "val" else 0)}
           for r in losses for split in ("val", "train")]
    lines, plot = [], Axes.plot

    def recording_plot(ax, x, y, fmt, **kwargs):  # every line as drawn: its style and points
        lines.append((fmt, list(y)))
        return plot(ax, x, y, fmt, **kwargs)
    monkeypatch.setattr(Axes, "plot", recording_plot)
    assert training_curves(_records(tmp_path, losses + nll), tmp_path / "curves.png") is not None
    runs = {r.get("cell_id") or r.get("run_dir") for r in losses}
    assert len(lines) == 3 * len(runs)  # per run: its loss, its val NLL, its train NLL
    dashed = [ys for fmt, ys in lines if fmt == "--"]  # the training split of each run, the loss values unshifted
    assert len(dashed) == len(runs)
    assert sorted(v for ys in dashed for v in ys) == sorted(r["value"] for r in losses)


def test_a_fully_tuned_timing_is_not_hidden_by_a_later_untuned_one(tmp_path):
    tuned = real_one(metric="train_images_per_s", mixer="attention")
    tuned = {**tuned, "machine": "host-a", "versions": {**tuned["versions"], "triton_autotune": "full"}}
    untuned = {"value": 1.0, "machine": "host-b",
               "versions": {**tuned["versions"], "triton_autotune": "first"}}
    df = _variants(tmp_path, tuned, untuned)
    assert list(latest(df, "train_images_per_s")["value"]) == [tuned["value"]]
    row = main_table(df).loc[("VAR-d16", 256)]
    assert row["Train img/s (b32)"] == tuned["value"] and row["Timed on (autotune)"] == "host-a, full"
    only_untuned = _records(tmp_path, [{**tuned, **untuned}])  # no tuned timing: the untuned one, and the row says so
    assert main_table(only_untuned).loc[("VAR-d16", 256), "Timed on (autotune)"] == "host-b, first"


def test_a_missing_seed_is_never_filled_from_another_study(tmp_path):
    from varbench.analysis.quality import quality_long
    base = raw(metric="embedded_fd")[0]
    old = [{**base, "seed": s, "cell_id": f"o{s}", "value": 10.0 + s, "date": "2099-01-01T00:00:00+00:00"}
           for s in (0, 1, 2)]
    new = [{**base, "seed": s, "cell_id": f"n{s}", "value": 1.0 + s, "date": "2099-02-01T00:00:00+00:00"}
           for s in (0, 1)]
    for name, lines in (("old", old), ("new", new)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    long = quality_long(load_records(tmp_path))
    assert sorted(long["value"]) == [1.0, 2.0]  # the newer study's two seeds, not its two plus the old study's third


def test_a_learning_rate_sweeps_cells_never_stand_for_their_configuration(tmp_path):
    """Three cells of one configuration and seed at three rates (grid=study_lr): keeping the newest would show one
    rate's result as the configuration's. Quality tables leave them out; a configuration at one rate stays."""
    from varbench.analysis.quality import quality_long
    base = raw(metric="embedded_fd")[0]
    swept = [{**base, "mixer": "gla", "cell_id": f"lr{i}", "value": 1.0 + i, "config": {"train": {"base_lr": lr}},
              "date": f"2099-01-01T00:0{i}:00+00:00"} for i, lr in enumerate((2e-3, 4e-3, 8e-3))]
    kept = {**base, "mixer": "attention", "cell_id": "var", "value": 5.0, "config": {"train": {"base_lr": 4e-3}}}
    long = quality_long(_records(tmp_path, [*swept, kept]))
    assert list(long["value"]) == [5.0] and list(long["mixer"]) == ["attention"]


def test_a_grid_cells_sample_path_relative_to_where_run_py_ran_is_found(tmp_path, monkeypatch):
    rec = raw(metric="sample_grid")[0]
    png = tmp_path / "runs" / "cells" / "ns" / "c1" / "samples.png"  # a cell's run_dir, relative to run.py's folder
    png.parent.mkdir(parents=True)
    png.write_bytes((FIXTURE / rec["value"]).read_bytes())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sample.jsonl").write_text(json.dumps({**rec, "value": "runs/cells/ns/c1/samples.png"})
                                                       + "\n")
    monkeypatch.chdir(tmp_path)
    assert sample_grids(load_records(tmp_path / "results"), tmp_path / "grids.png") is not None


def test_a_damaged_record_line_is_skipped_named_and_counted_in_the_report(tmp_path, caplog):
    good = raw()[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jsonl").write_text(json.dumps(good) + '\n{"metric": "cut sho\n' + json.dumps(good) + "\n")
    with caplog.at_level(logging.WARNING):
        df = load_records(tmp_path / "in")
    assert len(df) == 2 and f"{tmp_path / 'in' / 'r.jsonl'}:2" in caplog.text
    build_report(tmp_path / "in", tmp_path / "out")
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "1 damaged record lines were skipped" in readme and "r.jsonl:2" in readme


def _fd_line(mixer: str, seed: int, cfg, value: float, minute: int) -> dict:
    """An embedded FD record of task=evaluate at guidance `cfg` (None: a record from before the cfg field)."""
    line = {"metric": "embedded_fd", "value": value, "unit": "fd", "feature_extractor": "varbench-classifier/x",
            "num_samples": 1000, "preset": "eval", "mixer": mixer, "intra": "none", "depth": 2, "resolution": 32,
            "seed": seed, "cell_id": f"{mixer}-s{seed}", "date": f"2099-01-01T00:{minute:02d}:00+00:00"}
    return line if cfg is None else {**line, "cfg": cfg}


def test_the_quality_tables_never_average_two_guidance_scales(tmp_path):
    """A cell re-evaluated at another guidance (task.cfg, newer) neither replaces nor joins its grid's evaluation:
    the tables show the study's fixed scale, named in the column."""
    grid = [_fd_line("attention", s, 1.5, 0.4 + 0.01 * s, s) for s in range(3)]
    again = [_fd_line("attention", 0, cfg, value, 10 + i) for i, (cfg, value) in enumerate(((1.0, 0.9), (3.0, 0.7)))]
    table = quality_wide(_records(tmp_path, grid + again))
    assert [c for c in table.columns if c.startswith("FD")] == ["FD (embedded classifier, 1k, cfg 1.5)",
                                                                 "FD (embedded classifier, 1k, cfg 1.5) std"]
    row = table.loc[("attention", "none", 2, 32)]
    assert row["FD (embedded classifier, 1k, cfg 1.5)"] == pytest.approx(statistics.mean(r["value"] for r in grid))
    assert row["Seeds"] == 3
    old = [_fd_line("attention", s, None, 0.3 + s, s) for s in range(2)]  # records that state no scale keep their
    assert list(quality_wide(_records(tmp_path, old)).columns[:1]) == ["FD (embedded classifier, 1k)"]  # label


def test_a_quality_column_never_mixes_studies(tmp_path):
    """Session 21: main_table's FID-5k column held 7 rows of the matched-FLOPs study (procedural data) and 6 of the
    CIFAR-10 study, VAR's among them from CIFAR-10, the other data set's VAR nowhere. A column that two studies fill
    is one column per study, named by it."""
    for study, offset in (("flops", 0.0), ("cifar", 10.0)):
        (tmp_path / study).mkdir()
        lines = [_fd_line(mixer, s, 1.5, offset + i + 0.1 * s, s) for i, mixer in enumerate(("attention", "gla"))
                 for s in range(2)]
        (tmp_path / study / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = quality_wide(load_records(tmp_path))
    column = "FD (embedded classifier, 1k, cfg 1.5)"
    assert table.loc[("attention", "none", 2, 32), f"{column} [flops]"] == pytest.approx(0.05)
    assert table.loc[("attention", "none", 2, 32), f"{column} [cifar]"] == pytest.approx(10.05)
    assert column not in table


def test_the_training_loss_of_a_cell_trained_twice_is_its_newest_runs(tmp_path):
    """Session 21: 12 cells of the study were trained twice into one run folder (a later commit); the ranking's
    training loss averaged the last logs of both runs interleaved by step."""
    from varbench.analysis.study import TRAIN_LOSS, study_per_seed
    lines = []
    for seed in (0, 1):
        common = {"mixer": "attention", "intra": "none", "depth": 2, "resolution": 32, "seed": seed,
                  "cell_id": f"c{seed}", "run_dir": f"runs/c{seed}"}
        lines += [{**_fd_line("attention", seed, 1.5, 0.4, seed), "cell_id": f"c{seed}"}]
        for commit, loss, hour in (("old", 5.0, 1), ("new", 3.0, 2)):
            lines += [{**common, "metric": "train_loss", "value": loss + step / 1000, "unit": "nats/token",
                       "step": step, "commit": commit, "date": f"2099-01-01T0{hour}:{step:02d}:00+00:00"}
                      for step in (10, 20, 30, 40, 50)]
        lines[-1]["step"] = 55  # the runs' logs need not fall on the same steps
    per_seed, _ = study_per_seed(_records(tmp_path, lines))
    assert per_seed[TRAIN_LOSS].tolist() == pytest.approx([3.0 + (10 + 20 + 30 + 40 + 50) / 5000] * 2)


def test_guidance_table_keeps_a_study_s_scales_when_a_newer_study_evaluates_the_configuration_too(tmp_path):
    """Session 17: study_cifar (newer) evaluated VAR at cfg 1.5, in the same column as study_flops' guidance sweep, and
    the guidance table of study_flops lost its cfg 1.5 values ("—")."""
    from varbench.analysis.guidance import guidance_table
    swept = [_fd_line("attention", 0, cfg, value, i) for i, (cfg, value) in enumerate(((1.0, 0.9), (1.5, 0.8)))]
    for study, lines in (("flops", swept), ("cifar", [_fd_line("attention", 0, 1.5, 0.2, 30)])):
        (tmp_path / study).mkdir()
        (tmp_path / study / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = guidance_table(load_records(tmp_path))
    row = table.loc[("VAR-d2", 32)]
    assert row["FD (embedded classifier, 1k) at cfg 1.5"] == 0.8 and row["FD (embedded classifier, 1k) at cfg 1"] == 0.9


def test_guidance_table_shows_each_models_best_scale_beside_the_fixed_one(df):
    from varbench.analysis.guidance import BEST, FIXED, SEEDS, guidance_table
    table = guidance_table(df)
    lines = [r for r in raw(metric="embedded_fd") if r.get("cfg") is not None]
    family = "FD (embedded classifier, 1k)"
    for mixer, intra, model in (("attention", "none", "VAR-d2"), ("mamba2", "full", "M-VAR-d2")):
        seed0 = {r["cfg"]: r["value"] for r in lines if (r["mixer"], r["intra"], r["seed"]) == (mixer, intra, 0)}
        row = table.loc[(model, 32)]
        assert {c: row[f"{family} at cfg {c:g}"] for c in seed0} == seed0  # seed 0: the only one at every scale
        best = min(seed0, key=seed0.get)
        assert row[BEST] == best and row[f"{family} at best cfg"] == seed0[best] and row[SEEDS] == 1
        assert row[FIXED] == 1.5 and row[f"{family} at fixed cfg"] == seed0[1.5]  # on the same seeds, not all three
    assert ("gla-d2", 32) not in table.index  # evaluated at one scale only
    assert table.loc[("M-VAR-d2", 32), BEST] != table.loc[("VAR-d2", 32), BEST]  # the fixture's two differ


def test_the_official_sampler_sits_beside_varbench_s_eager_one_of_the_same_call_and_in_no_varbench_row(tmp_path):
    """report/beside_official.md pairs an official_var latency (the uncommitted harness) with task=bench's eager
    VAR-d16 sampling of the same commit, GPU and batch: never another call's, nor a graphed, fused or chunked-decode
    timing of the same call; the bf16-block-weights timing (the sampling tasks' way) in columns of its own, its peak
    memory the memory goal's. The official records never become a varbench row of the other tables."""
    from varbench.analysis.official import beside_official_table
    var = {"metric": "sample_latency_ms", "unit": "ms", "mixer": "attention", "intra": "none", "depth": 16,
           "resolution": 256, "sampler": "carry", "device": "NVIDIA H200", "date": "2099-01-01T00:00:00+00:00"}
    lines = [{**var, "value": 120.0, "batch": 1, "commit": "a+copy", "peak_mem_bytes": 2 * 2 ** 30},
             {**var, "value": 400.0, "batch": 64, "commit": "a+copy", "peak_mem_bytes": 12 * 2 ** 30},
             {**var, "value": 30.0, "batch": 1, "commit": "a+copy", "cuda_graphs": True},  # not the official's path
             {**var, "value": 110.0, "batch": 1, "commit": "a+copy", "fused_elementwise": True},
             {**var, "value": 115.0, "batch": 1, "commit": "a+copy", "block_weights": "bf16",
              "peak_mem_bytes": 2 ** 30},  # its own columns
             {**var, "value": 99.0, "batch": 1, "commit": "b+copy"}]  # another call
    official = {"metric": "sample_latency_ms", "unit": "ms", "system": "official_var", "model": "VAR-d16",
                "device": "NVIDIA H200", "date": "2099-01-01T00:00:00+00:00"}
    lines += [{**official, "value": 132.0, "batch": 1, "commit": "a+copy", "peak_mem_bytes": 3 * 2 ** 30},
              {**official, "value": 450.0, "batch": 64, "commit": "a+copy", "peak_mem_bytes": 12 * 2 ** 30},
              {**official, "value": 125.0, "batch": 1, "commit": "c+copy", "peak_mem_bytes": 3 * 2 ** 30}]
    records = _records(tmp_path, lines)
    table = beside_official_table(records)
    assert table.loc[("a+copy", "NVIDIA H200", 1)].tolist() == pytest.approx([132.0, 120.0, 1.1, 115.0, 3.0, 2.0,
                                                                              1.0])
    row = table.loc[("a+copy", "NVIDIA H200", 64)]
    assert row.drop(["varbench, bf16 blocks (ms)", "varbench, bf16 blocks peak (GiB)"]).tolist() == pytest.approx(
        [450.0, 400.0, 1.125, 12.0, 12.0])
    assert row[["varbench, bf16 blocks (ms)", "varbench, bf16 blocks peak (GiB)"]].isna().all()
    row = table.loc[("c+copy", "NVIDIA H200", 1)]  # no varbench timing in that call: nothing paired
    assert row["Official VAR (ms)"] == 125.0 and row.drop(["Official VAR (ms)", "Official peak (GiB)"]).isna().all()
    from varbench.analysis.tables import main_table
    assert set(main_table(records).index.get_level_values("Model")) == {"VAR-d16"}  # no row for the official one
    assert config_frame(records).loc[("attention", "none", 16, 256), "Latency b1, bf16 blocks (ms)"] == 115.0
    # the eager goals against the official sampler of the newest call that timed both (beside peer_speed.md's)
    goals = bench_goals(records)
    same_call = goals.loc["VAR-d16 eager sampling latency (b1, 256 px, ms; the official's, timed in the same call)"]
    assert same_call[["Target", "Measured", "Met", "Read from"]].tolist() == [
        "≤ 132", 120.0, "yes", "report/beside_official.md"]
    assert goals.loc["VAR-d16 eager sampling latency (b64, 256 px, ms; the official's, timed in the same call)",
                     "Measured"] == 400.0
    assert goals.loc["VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)", "Target"] == "≤ 123.4"
    memory = goals.loc["VAR-d16 eager sampling peak memory allocated, bf16 block weights as the sampling tasks hold "
                       "them (b1, 256 px, GiB; the official's, timed in the same call)"]
    assert memory[["Target", "Measured", "Met"]].tolist() == ["≤ 3", 1.0, "yes"]
    assert not any("bf16 block weights" in goal and "(b64" in goal for goal in goals.index)  # not timed at b64


def test_the_official_training_step_sits_beside_varbench_s_fastest_of_the_same_call_with_var_s_numerics(tmp_path):
    """report/beside_official_training.md pairs an official_var training timing with task=bench's VAR-d16 steps of
    the same commit, GPU and batch: the fastest eager and the fastest compiled (any attention backend or Inductor
    mode, named), never one with bf16 weights or FP8 matmuls, another model's or another call's. The official record
    is no varbench configuration of the speed tables; the same-call goal is 2.5x the official img/s."""
    from varbench.analysis.official import beside_official_training_table
    from varbench.analysis.tables import speed_wide
    var = {"metric": "train_images_per_s", "unit": "img/s", "mixer": "attention", "intra": "none", "depth": 16,
           "resolution": 256, "batch": 32, "device": "NVIDIA H200", "commit": "a+copy",
           "date": "2099-01-01T00:00:00+00:00"}
    compiled = {**var, "compiled": True, "param_dtype": "fp32", "fp8": False}
    lines = [{**var, "value": 195.0},
             {**compiled, "value": 350.0, "compile_mode": "default"},
             {**compiled, "value": 420.0, "compile_mode": "default", "mixer_options": {"backend": "sdpa_scales"}},
             {**compiled, "value": 430.0, "compile_mode": "default",  # other kernels, the same math: counted
              "mixer_options": {"backend": "sdpa_scales", "sdpa_kernels": ["flash", "efficient"]}},
             {**compiled, "value": 650.0, "compile_mode": "default",  # other math: never
              "mixer_options": {"backend": "sdpa_scales", "l2_norm": False}},
             {**compiled, "value": 380.0, "compile_mode": "max-autotune-no-cudagraphs"},
             {**compiled, "value": 600.0, "compile_mode": "default", "fp8": True},  # not VAR's numerics
             {**compiled, "value": 610.0, "compile_mode": "default", "param_dtype": "bf16"},
             {**compiled, "value": 700.0, "compile_mode": "default", "mixer": "gla"},  # another model
             {**compiled, "value": 900.0, "compile_mode": "default", "commit": "b+copy"}]  # another call
    official = {"metric": "train_images_per_s", "unit": "img/s", "system": "official_var", "model": "VAR-d16",
                "resolution": 256, "batch": 32, "device": "NVIDIA H200", "date": "2099-01-01T00:00:00+00:00"}
    lines += [{**official, "value": 200.0, "commit": "a+copy"}, {**official, "value": 190.0, "commit": "c+copy"}]
    records = _records(tmp_path, lines)
    table = beside_official_training_table(records)
    row = table.loc[("a+copy", "NVIDIA H200", 32)]
    assert row.tolist() == pytest.approx([200.0, 195.0, "attention", 0.975, 430.0,
                                          "attention[backend=sdpa_scales,sdpa_kernels=flash+efficient], default mode",
                                          2.15])
    alone = table.loc[("c+copy", "NVIDIA H200", 32)]  # no varbench timing in that call: nothing paired
    assert alone["Official VAR (img/s)"] == 190.0 and alone[["varbench eager (img/s)", "Eager ran"]].isna().all()
    assert speed_wide(records).index.get_level_values("mixer").notna().all()  # no row for the official step
    # a list option names its configuration with its items joined, so that a name reads as one token
    assert "attention[backend=sdpa_scales,sdpa_kernels=flash+efficient]" in set(records["mixer"])
    goal = bench_goals(records).loc["VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official's, "
                                    "timed in the same call)"]
    assert goal[["Target", "Measured", "Met", "Read from"]].tolist() == [
        "≥ 500", 430.0, "no", "report/beside_official_training.md"]


def test_the_compile_time_table_pairs_each_compiled_step_with_the_eager_one_of_its_own_call(tmp_path):
    """report/compile_time.md: the first step of each compiled step (scope and mode apart), its img/s, and the eager
    img/s of the same configuration timed by the same commit on the same GPU; never FP8 or another call's eager. The
    files Inductor's cache held before compiling (warm or cold) and torch.compile's phases of the first step beside
    it, "—" before records said; a cold and a warm first step, or one under first-config and one under full
    autotuning, are rows apart."""
    from varbench.analysis.compile_time import compile_time_table
    base = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "commit": "c1"}
    compiled = {**base, "compiled": True, "value": 340.0, "timing": {"first_step_s": 57.5}}
    phases = {"_compile.compile_inner": 12.0, "compile_fx.<locals>.bw_compiler": 8.5}
    lines = [compiled, {**compiled, "compile_scope": "blocks", "value": 330.0,
                        "timing": {"first_step_s": 26.5, "compile_phases_s": phases},
                        "compile_cache": {"dir": "/tmp/torchinductor_me", "files": 812}},
             {**base, "compiled": False, "value": 190.0},
             {**compiled, "fp8": True, "value": 500.0},  # a numerics deviation: not here
             {**base, "compiled": False, "value": 150.0, "commit": "c2"}]  # another call's eager step
    table = compile_time_table(_records(tmp_path, lines)).reset_index()
    assert list(zip(table["Compiled"], table["First step (s)"], table["Compiled (img/s)"])) == [
        ("blocks", 26.5, 330.0), ("model", 57.5, 340.0)]
    assert table["Eager (img/s)"].tolist() == [190.0, 190.0] and table["Compiled / eager"].tolist() == [330 / 190,
                                                                                                     340 / 190]
    assert table["Cache files"].iloc[0] == 812 and math.isnan(table["Cache files"].iloc[1])
    own = table["Of which torch.compile (s)"]
    assert own.iloc[0] == 20.5 and math.isnan(own.iloc[1])
    # Inductor's options beside its mode (since session 36): part of the mode shown, a row apart in one call
    unpadded = {**compiled, "value": 345.0, "inductor_options": {"comprehensive_padding": False}}
    table = compile_time_table(_records(tmp_path, [compiled, unpadded])).reset_index()
    assert list(zip(table["Mode"], table["Compiled (img/s)"])) == [
        ("default", 340.0), ("default [comprehensive_padding=False]", 345.0)]
    cold = {**compiled, "compile_cache": {"dir": "/tmp/fresh", "files": 0}, "timing": {"first_step_s": 180.0},
            "versions": {**compiled["versions"], "triton_autotune": "full"}}
    first = {**cold, "versions": {**compiled["versions"], "triton_autotune": "first"}, "value": 290.0,
             "timing": {"first_step_s": 110.0}}
    warm = {**cold, "compile_cache": {"dir": "/tmp/fresh", "files": 2500}, "timing": {"first_step_s": 44.0}}
    table = compile_time_table(_records(tmp_path, [cold, first, warm])).reset_index()
    assert list(zip(table["Cache"], table["Autotune"], table["First step (s)"])) == [
        ("cold", "first", 110.0), ("cold", "full", 180.0), ("warm", "full", 44.0)]


def test_the_numerics_speed_table_pairs_each_option_with_vars_numerics_of_its_own_call_and_mode(tmp_path):
    """report/numerics_speed.md: a step under FP8 matmuls or bf16 weights beside VAR's-numerics step of the same call
    (commit, GPU), configuration, batch and way of compiling; never another call's or another mode's; an option
    without such a pair is listed with its own number alone."""
    from varbench.analysis.numerics import numerics_speed_table
    base = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "commit": "c1", "compiled": True}
    lines = [{**base, "value": 380.0}, {**base, "value": 390.0, "compile_mode": "reduce-overhead"},
             {**base, "value": 300.0, "compile_mode": "reduce-overhead", "fp8": True},
             {**base, "value": 260.0, "compile_mode": "reduce-overhead", "fp8": True, "fp8_recipe": "rowwise"},
             {**base, "value": 200.0, "compiled": False, "param_dtype": "bf16"},  # no eager step of VAR's numerics
             {**base, "value": 999.0, "commit": "c2"}]  # another call: no pair
    table = numerics_speed_table(_records(tmp_path, lines)).reset_index()
    assert list(zip(table["Compiled"], table["Mode"], table["Numerics option"], table["Option (img/s)"])) == [
        ("eager", "none", "bf16 weights", 200.0), ("model", "reduce-overhead", "FP8 matmuls rowwise", 260.0),
        ("model", "reduce-overhead", "FP8 matmuls tensorwise", 300.0)]
    assert math.isnan(table["VAR's numerics (img/s)"].iloc[0])
    assert table["VAR's numerics (img/s)"].tolist()[1:] == [390.0, 390.0]
    assert table["Option / VAR's numerics"].tolist()[1:] == [260 / 390, 300 / 390]
    assert numerics_speed_table(_records(tmp_path, lines[:2])).empty


def test_the_step_ops_table_sums_a_step_s_operators_by_kind_and_keeps_the_unlisted_ones_apart(tmp_path):
    """report/step_ops.md: each listed operator in the first kind its name matches (flex attention's Inductor
    template is attention, not a fused element-wise kernel; mamba_ssm's ops are mixer kernels, the q/k
    normalisation's custom ops are not; a fused kernel by the ops Inductor named it after, a LayerNorm before the
    GELU fused with it, a kernel named after the custom op it feeds not that op), the profile's last row "not listed",
    their sum the busy time; a record whose profile lacks that last row is not in the table."""
    from varbench.analysis.step_ops import step_ops_table
    ops = [{"op": "aten::mm", "ms_per_step": 20.0}, {"op": "aten::addmm", "ms_per_step": 10.0},
           {"op": "triton_tem_fused_flex_attention_backward_1", "ms_per_step": 8.0},
           {"op": "varbench::ssd_scan_bwd", "ms_per_step": 6.0}, {"op": "aten::_fused_adamw_", "ms_per_step": 3.0},
           {"op": "triton_poi_fused_gelu_view_2", "ms_per_step": 2.0}, {"op": "aten::mul", "ms_per_step": 1.5},
           {"op": "triton_red_fused__log_softmax_nll_loss_forward_3", "ms_per_step": 0.5},
           {"op": "triton_per_fused_add_gelu_native_layer_norm_backward_7", "ms_per_step": 0.25},
           {"op": "triton_poi_fused__to_copy_clamp_min_div_mul_9", "ms_per_step": 0.75},
           {"op": "triton_poi_fused_cat_view_18", "ms_per_step": 0.125},
           {"op": "varbench::qkv_l2_norm_bwd", "ms_per_step": 0.5},
           {"op": "triton_poi_fused_add_qkv_l2_norm_bwd_slice_backward_17", "ms_per_step": 0.0625},
           {"op": "Command Buffer Full", "ms_per_step": 1.0}, {"op": "(the other 99 operators)", "ms_per_step": 7.0}]
    train = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "commit": "c1", "compiled": True}
    lines = [{**train, "timing": {"median_ms": 60.0, "top_ops": ops}},
             {**train, "commit": "c0", "timing": {"median_ms": 70.0, "top_ops": ops[:-1]}}]  # before the last row
    table = step_ops_table(_records(tmp_path, lines))
    (row,) = [row for _, row in table.iterrows()]
    assert list(table.columns).count("q/k L2 norm (ms)") == 1
    assert row.to_dict() == {"Step (ms)": 60.0, "Busy (ms)": 60.6875, "Attention (ms)": 8.0, "GEMMs (ms)": 30.0,
                             "Mixer kernels (ms)": 6.0, "Optimizer (ms)": 3.0, "Loss (log-softmax, NLL) (ms)": 0.5,
                             "LayerNorm (ms)": 0.25, "GELU (ms)": 2.0, "q/k L2 norm (ms)": 1.25,
                             "Other fused element-wise (Inductor) (ms)": 0.1875,
                             "Other element-wise, copies (aten) (ms)": 1.5, "Other listed (ms)": 1.0,
                             "Not listed (ms)": 7.0}
    assert table.index[0][0] == "c1" and table.index[0][-2:] == ("model", "default")
    graphs = {**lines[0], "compile_mode": "reduce-overhead"}  # one call times both modes: two rows, each named
    assert [i[-1] for i in step_ops_table(_records(tmp_path, [lines[0], graphs])).index] == ["default",
                                                                                             "reduce-overhead"]
    unpadded = {**graphs, "inductor_options": {"comprehensive_padding": False}}  # the options beside the mode
    assert [i[-1] for i in step_ops_table(_records(tmp_path, [graphs, unpadded])).index] == [
        "reduce-overhead", "reduce-overhead [comprehensive_padding=False]"]


def test_the_step_ops_table_takes_a_profile_that_lists_every_operator(tmp_path):
    """Since session 27 a bench profile lists every operator (`ops_listed: all`, no last row for the rest): such a
    record is in the table, with nothing "not listed"; one of the top 15 without that last row still is not."""
    from varbench.analysis.step_ops import step_ops_table
    ops = [{"op": "aten::mm", "ms_per_step": 20.0}, {"op": "triton_poi_fused_gelu_view_2", "ms_per_step": 2.0}]
    train = {**real_one(metric="train_images_per_s", mixer="attention", batch=32), "compiled": True}
    lines = [{**train, "commit": "c1", "timing": {"median_ms": 25.0, "top_ops": ops, "ops_listed": "all"}},
             {**train, "commit": "c0", "timing": {"median_ms": 25.0, "top_ops": ops}}]
    table = step_ops_table(_records(tmp_path, lines))
    (row,) = [row for _, row in table.iterrows()]
    assert table.index[0][0] == "c1" and "Not listed (ms)" not in table.columns
    assert row.to_dict() == {"Step (ms)": 25.0, "Busy (ms)": 22.0, "GEMMs (ms)": 20.0, "GELU (ms)": 2.0}


def test_the_ssd_scales_table_sets_each_scale_s_fitted_scan_beside_the_configured_one_with_its_state_passing_bandwidth(
        tmp_path):
    """report/ssd_scales.md: one row per call, batch and scale (the latest timing of each chunk kind); the state
    passing's bandwidth counts the state (batch x heads x head_dim x d_state) three times in fp32 and once in the
    inputs' dtype, over the kernel's time."""
    from varbench.analysis.ssd_scales import ssd_scales_table
    base = {"metric": "ssd_step_us", "unit": "us", "batch": 2, "heads": 4, "head_dim": 8, "d_state": 16,
            "dtype": "torch.bfloat16", "commit": "c1", "device": "NVIDIA H100 80GB HBM3", "config": None,
            "date": "2099-01-01T00:00:00+00:00"}
    kernels = {"_chunk_scan_fwd_kernel": 3.0, "_chunk_state_fwd_kernel": 2.0, "_state_passing_fwd_kernel": 0.5}
    lines = [{**base, "tokens": 4, "chunk_kind": "configured", "chunk_size": 256, "value": 20.0},
             {**base, "tokens": 4, "chunk_kind": "fitted", "chunk_size": 16, "value": 12.0, "kernels": kernels,
              "max_abs_diff_y": 0.0, "max_abs_diff_state": 1e-4},
             {**base, "tokens": 4, "chunk_kind": "fitted", "chunk_size": 16, "value": 10.0, "kernels": kernels,
              "max_abs_diff_y": 0.0, "max_abs_diff_state": 1e-4, "date": "2099-01-01T00:01:00+00:00"}]
    table = ssd_scales_table(_records(tmp_path, lines))
    assert table.index.tolist() == [("c1", "NVIDIA H100 80GB HBM3", 2, 4)]
    row = table.iloc[0]
    assert (row["Configured (us)"], row["Fitted (us)"], row["Speed-up"]) == (20.0, 10.0, 2.0)
    assert (row["Fitted chunk"], row["Chunk scan (us)"], row["State passing (us)"]) == (16, 3.0, 0.5)
    state = 2 * 4 * 8 * 16
    assert row["State passing (GB/s)"] == pytest.approx(state * (3 * 4 + 2) / 0.5e-6 / 1e9)


def test_the_attention_kernels_table_keeps_each_variant_s_latest_timing_and_names_its_forward_kernels(tmp_path):
    """report/attention_kernels.md: one row per call (commit and GPU), batch, mask kind and variant, the latest
    timing of it; its forward kernels named short (the backward ones left out), sorted."""
    from varbench.analysis.attention_kernels import attention_kernels_table
    base = {"metric": "attention_ms", "unit": "ms", "kind": "block_causal", "batch": 32, "commit": "c1",
            "device": "NVIDIA H100 80GB HBM3", "config": None, "date": "2099-01-01T00:00:00+00:00"}
    flex = {**base, "variant": "flex", "value": 1.6, "forward_ms": 0.6, "backward_ms": 1.0, "tflops": 80.0,
            "max_abs_diff_out": 0.008, "kernels_ran": ["triton_tem_fused_flex_attention_0",
                                                       "triton_tem_fused_flex_attention_backward_1"]}
    scales = {**flex, "variant": "sdpa_scales:64:flash", "value": 3.0, "kernels_ran": [
        "aten::_flash_attention_forward", "aten::_flash_attention_backward", "aten::_efficient_attention_forward"]}
    lines = [flex, scales, {**flex, "value": 1.5, "date": "2099-01-01T00:01:00+00:00"}]
    table = attention_kernels_table(_records(tmp_path, lines))
    assert table.index.get_level_values("Variant").tolist() == ["flex", "sdpa_scales:64:flash"]
    assert table["Forward + backward (ms)"].tolist() == [1.5, 3.0]
    assert table["Forward kernels"].tolist() == ["triton_tem_fused_flex_attention_0", "efficient_attention, "
                                                 "flash_attention"]
