"""A run is self-describing: its checkpoints carry the architecture and the tokenizer's identity, so that
task=sample / task=evaluate / varbench.load with only the run folder rebuild exactly the trained model and its
tokenizer; a command-line value that contradicts the run is an error; evaluation samples are never reused across
models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_run
from hydra import compose, initialize_config_dir
from PIL import Image

import varbench
from varbench.build import build_tokenizer
from varbench.registry import CONFIG_ROOT
from varbench.runs import keys_set_by, load_run, run_config
from varbench.utils.checkpoint import save_atomic
from varbench.utils.hashing import file_sha256
from varbench.utils.records import read_records
from varbench.utils.run_spec import SPEC_FILE, read_spec

REPO = Path(__file__).resolve().parents[1]
TINY = ["device=cpu", "cell_id=test", "model.depth=1", "model.width=64", "model.num_heads=1",
        "tokenizer.num_res_blocks=1", "tokenizer.vocab_size=64", "data.size_per_class=4", "train.batch_size=8",
        "train.warmup_iters=1", "train.log_every=1", "train.steps=2", "train.ckpt_every=2"]


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def trained_run(tmp_path):
    """A run trained for 2 steps with a tokenizer file of its own (not the random tokenizer of the defaults)."""
    from varbench.tasks.train import main as train
    torch.manual_seed(123)
    tokenizer_file = save_atomic(tmp_path / "tok.safetensors",
                                 tensors=build_tokenizer(config(*TINY), load=False).state_dict())
    common = [*TINY, f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}"]
    train(config("task=train", *common, f"tokenizer.checkpoint={tokenizer_file}"))
    return tmp_path, common, tokenizer_file


def test_sample_with_the_run_dir_only_uses_the_runs_tokenizer(trained_run):
    """Issue 15 Found-1: without tokenizer.checkpoint repeated, sampling used a random tokenizer."""
    from varbench.tasks.sample import main as sample
    tmp_path, common, tokenizer_file = trained_run
    first = sample(config("task=sample", *common, f"tokenizer.checkpoint={tokenizer_file}", "task.per_class=1"))
    expected = read_png(first["grid"])
    again = sample(config("task=sample", *common, "task.per_class=1"))  # the run folder only
    assert again["grid"] == first["grid"] and np.array_equal(read_png(again["grid"]), expected)
    (record,) = read_records(tmp_path / "res" / "sample.jsonl")[-1:]
    assert record["tokenizer_sha256"] == file_sha256(tokenizer_file) and record["run_spec"] is True
    assert record["checkpoint_sha256"] == file_sha256(record["checkpoint"])
    # the spec is in the checkpoint folder, and the Python API rebuilds the same model from the run directory
    folder = Path(record["checkpoint"]).parent
    assert read_spec(folder)["tokenizer"]["sha256"] == file_sha256(tokenizer_file)
    model, tokenizer = varbench.load(tmp_path / "run")
    images = model.generate(tokenizer, torch.tensor([0, 1]), cfg=1.5, top_k=10).images
    assert images.shape == (2, 3, 32, 32) and not model.training and not tokenizer.training


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 20 samples, 32-d features: a singular covariance
def test_a_retrained_run_never_reuses_the_old_samples(trained_run):
    """Issue 15 Found-2: after retraining in the same run dir, evaluate reused the old PNGs (keyed by path)."""
    from varbench.tasks.evaluate import main as evaluate
    from varbench.tasks.train import main as train
    tmp_path, common, tokenizer_file = trained_run
    fast = ["task.per_class=2", "task.num_classes=2", "task.batch_size=4", "task.val_nll_images=0",
            "task.train_nll_images=0", "task.classifier_steps=5", "task.classifier_batch_size=8",
            "task.classifier_width=8", "task.classifier_min_val_accuracy=0"]
    first = evaluate(config("task=evaluate", *common, *fast))
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # retrain into the same folder: the same step folder names
    train(config("task=train", *common, f"tokenizer.checkpoint={tokenizer_file}", "seed=1"))
    second = evaluate(config("task=evaluate", *common, *fast))
    assert second["samples"]["generated"] == 4 and second["samples"]["npz"] != first["samples"]["npz"]
    old, new = (r for r in read_records(tmp_path / "res" / "evaluate.jsonl") if r["metric"] == "embedded_fd")
    assert old["checkpoint"] == new["checkpoint"] and old["checkpoint_sha256"] != new["checkpoint_sha256"]
    assert old["tokenizer_sha256"] == new["tokenizer_sha256"] == file_sha256(tokenizer_file)  # the run's, unasked


@pytest.fixture
def fake_run(tmp_path):
    """A checkpoint with its spec (no training) and the config it was written with."""
    cfg = config("task=evaluate", *TINY, f"run_dir={tmp_path / 'run'}")
    folder, tokenizer_file = write_run(cfg)
    return cfg, folder, tokenizer_file

def test_sample_with_other_settings_keeps_the_grid_an_earlier_record_points_at(trained_run):
    """A second task=sample in the same run folder (another guidance scale) wrote over samples.png, so the first
    record named an image it had not drawn; each grid is now named by what drew it."""
    from varbench.tasks.sample import main as sample
    tmp_path, common, tokenizer_file = trained_run
    first = sample(config("task=sample", *common, "task.per_class=1", "task.cfg=1.5"))
    expected = read_png(first["grid"])
    second = sample(config("task=sample", *common, "task.per_class=1", "task.cfg=3.0"))
    assert second["grid"] != first["grid"] and Path(first["grid"]).parent == Path(second["grid"]).parent
    assert np.array_equal(read_png(first["grid"]), expected)
    old, new = read_records(tmp_path / "res" / "sample.jsonl")[-2:]
    assert (old["value"], new["value"]) == (first["grid"], second["grid"])


def test_a_value_that_contradicts_the_run_is_an_error_naming_both(fake_run):
    cfg, folder, _ = fake_run
    spec = read_spec(folder)
    other = config("task=evaluate", *TINY, "mixer=gla", "model.depth=2")
    with pytest.raises(ValueError, match=r"mixer\._target_: the run has 'varbench\.mixers\.attention\.Block"
                                         r"CausalAttention', the command line 'varbench\.mixers\.gla\.GLAMixer'"):
        run_config(spec, other, ["mixer"])
    with pytest.raises(ValueError, match="model.depth: the run has 1, the command line 2"):
        run_config(spec, other, ["model.depth"])
    # keys the user did not set come from the run, whatever the command line's defaults are
    merged = run_config(spec, other, ["task.seed"])
    assert merged.model.depth == 1 and merged.mixer._target_.endswith("BlockCausalAttention")
    # a kernel choice set by name is the user's; choosing the run's own option keeps the run's fields
    kernel = config("task=evaluate", *TINY, "mixer.backend=reference", "data.size_per_class=9", "mixer.l2_norm=false")
    merged = run_config(spec, kernel, ["mixer", "mixer.backend", "data.size_per_class"])
    assert merged.mixer.backend == "reference" and merged.data.size_per_class == 9 and merged.mixer.l2_norm is True
    with pytest.raises(ValueError, match="mixer.l2_norm: the run has True, the command line False"):
        run_config(spec, kernel, ["mixer.l2_norm"])
    with pytest.raises(ValueError, match="model.depth: the run has 1, the command line 16"):  # a recipe is its values
        run_config(spec, config("task=evaluate", "model=var_d16"), keys_set_by("model", "var_d16"))
    with pytest.raises(ValueError, match="data.num_classes: the run has 10, the command line 5"):
        run_config(spec, config("task=evaluate", *TINY, "data.num_classes=5"), ["data.num_classes"])
    # a config given whole in Python (no command line known): every key must agree
    with pytest.raises(ValueError, match="model.depth"):
        run_config(spec, other, None)


def test_a_recipe_sets_the_groups_its_defaults_list_overrides():
    assert {"model", "mixer", "intra", "tokenizer", "train"} <= set(keys_set_by("model", "var_d16"))
    assert keys_set_by("model", "tiny") == ["model"] and keys_set_by("model.depth", 3) == ["model.depth"]


def test_the_tokenizer_must_be_the_one_the_run_recorded(fake_run, tmp_path):
    cfg, folder, tokenizer_file = fake_run
    other = save_atomic(tmp_path / "other.safetensors",
                        tensors={k: v + 1 if v.is_floating_point() else v
                                 for k, v in build_tokenizer(cfg, load=False).state_dict().items()})
    cfg.tokenizer.checkpoint = str(other)
    with pytest.raises(ValueError, match=f"sha256 {file_sha256(other)}, but the run was trained with "
                                         f"{tokenizer_file} \\(sha256 {file_sha256(tokenizer_file)}\\)"):
        load_run(folder, cfg)
    tokenizer_file.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ValueError, match="the run's tokenizer .* is missing"):
        load_run(folder)
    cfg.tokenizer.checkpoint = str(tmp_path / "moved.safetensors")  # a moved copy passes: its sha256 is the run's
    assert load_run(folder, cfg).tokenizer_file == tmp_path / "moved.safetensors"


def test_a_checkpoint_without_a_spec_is_built_only_when_asked_by_name(fake_run):
    cfg, folder, tokenizer_file = fake_run
    (folder / SPEC_FILE).unlink()
    with pytest.raises(ValueError, match="no run spec"):
        load_run(folder, cfg)
    with pytest.raises(ValueError, match="set tokenizer.checkpoint"):  # never a random tokenizer
        load_run(folder, cfg, architecture_from_command_line=True)
    cfg.tokenizer.checkpoint = str(tokenizer_file)
    run = load_run(folder, cfg, architecture_from_command_line=True)
    assert run.run_spec is False and run.identity()["tokenizer_sha256"] == file_sha256(tokenizer_file)


def test_a_run_without_a_tokenizer_file_keeps_its_tokenizer_in_the_run(tmp_path):
    """A run trained with the random (seeded) tokenizer of the defaults saves it: evaluation loads those weights."""
    from varbench.tasks.train import main as train
    common = [*TINY, "train.steps=1", f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}"]
    train(config("task=train", *common))
    spec = read_spec(tmp_path / "run" / "checkpoints" / "step_00000001")
    assert spec["tokenizer"]["path"] == "../tokenizer.safetensors"  # inside the run: moves with it
    # every training record names those weights (session 21: tokenizer_id None, no tokenizer.checkpoint to hash)
    records = read_records(tmp_path / "res" / "train.jsonl")
    assert {(r["tokenizer_sha256"], r["tokenizer_id"]) for r in records} == {
        (spec["tokenizer"]["sha256"], spec["tokenizer"]["sha256"][:12])}
    shutil.move(tmp_path / "run", tmp_path / "moved")
    run = load_run(tmp_path / "moved")
    assert run.tokenizer_sha256 == spec["tokenizer"]["sha256"]
    # a measurement of it runs only when asked by name (session 21: task=evaluate measured such a run silently)
    assert run.random_tokenizer and run.identity()["random_tokenizer"] is True
    with pytest.raises(ValueError, match="random tokenizer's codes.*tokenizer.checkpoint=.*tokenizer.safetensors"):
        run.refuse_random_tokenizer(config(*TINY), None)
    named = config(*TINY, f"tokenizer.checkpoint={run.tokenizer_file}")
    run.refuse_random_tokenizer(named, ["tokenizer.checkpoint"])
    with pytest.raises(ValueError, match="random tokenizer"):
        run.refuse_random_tokenizer(named, ["mixer"])  # set by a config, not by the user


def test_a_run_with_a_tokenizer_file_is_no_random_tokenizer_run(trained_run):
    tmp_path, _, _ = trained_run
    run = load_run(tmp_path / "run")
    assert not run.random_tokenizer
    run.refuse_random_tokenizer(config(*TINY), None)


def test_the_command_line_is_checked_against_the_run(fake_run, tmp_path):
    """End to end through the varbench command: a contradicting override fails, naming both values."""
    cfg, folder, _ = fake_run
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "task=sample", *TINY, f"run_dir={cfg.run_dir}",
                          f"results_dir={tmp_path / 'res'}", "model.width=32", f"hydra.run.dir={tmp_path / 'h'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "model.width: the run has 64, the command line 32" in out.stderr
    assert json.loads((folder / SPEC_FILE).read_text())["config"]["model"]["width"] == 64


def test_every_form_of_a_runs_checkpoint_names_the_same_weights(trained_run):
    """A run folder, its checkpoints folder, the `latest` pointer file (session 22's audit: read as weights, it
    failed with "expected a flat mapping of str -> Tensor"), a step folder and its model.safetensors."""
    from varbench.runs import find_checkpoint
    from varbench.training import checkpoints
    tmp_path, _, _ = trained_run
    ckpts = tmp_path / "run" / "checkpoints"
    weights = checkpoints.latest(ckpts) / "model.safetensors"
    for source in (tmp_path / "run", ckpts, ckpts / "latest", weights.parent, weights):
        assert find_checkpoint(source) == weights, source



@pytest.mark.parametrize("classes", ["[10]", "[-1]"])
def test_sample_refuses_a_class_the_model_does_not_have(trained_run, classes):
    """Session 22's audit: task.classes=[<num_classes>] drew unconditional samples (the null class of guidance)
    and recorded them as that class."""
    from varbench.tasks.sample import main as sample
    tmp_path, common, _ = trained_run
    with pytest.raises(ValueError, match=r"task\.classes = \[-?1?\d?\]: expected classes in \[0, 9\]"):
        sample(config("task=sample", *common, f"task.classes={classes}"))


def test_a_trained_run_dir_refuses_a_changed_setting_before_anything_runs(trained_run):
    """Session 22's resume audit: a main job whose data set changed trained a new shared tokenizer for minutes, then
    its train step refused to resume and blamed the tokenizer. The config check (task=train's, also the main job's
    train step's) now compares the run spec of the run_dir's checkpoint first; the resumable keys may change."""
    from varbench.tasks import check_config
    tmp_path, common, tokenizer_file = trained_run
    for task in (["task=train"], ["task.steps=[train_tokenizer,train]"]):
        with pytest.raises(ValueError, match=r"cannot resume .*data.size_per_class: saved 4, now 5"):
            check_config(config(*task, *common, f"tokenizer.checkpoint={tokenizer_file}", "data.size_per_class=5"))
    check_config(config("task=train", *common, f"tokenizer.checkpoint={tokenizer_file}", "train.steps=3"))


def test_sampling_under_bf16_holds_the_block_weights_in_bf16_and_draws_the_same_grid(trained_run):
    """task.block_weights=auto (the default) holds a scale model's block weights in bf16 under bf16 autocast: the
    matmuls read the values they read before (the same grid), and the record says which weights ran."""
    from varbench.tasks.sample import main as sample
    tmp_path, common, _ = trained_run
    bf16 = [*common, "task.per_class=1", "task.precision=bf16"]
    as_trained = read_png(sample(config("task=sample", *bf16, "task.block_weights=fp32"))["grid"])
    held = read_png(sample(config("task=sample", *bf16))["grid"])
    assert np.array_equal(held, as_trained)
    fp32_weights, bf16_weights = read_records(tmp_path / "res" / "sample.jsonl")[-2:]
    assert (fp32_weights["block_weights"], bf16_weights["block_weights"]) == ("fp32", "bf16")
    sample(config("task=sample", *common, "task.per_class=1"))  # the run trained in fp32: auto keeps fp32 weights
    assert read_records(tmp_path / "res" / "sample.jsonl")[-1]["block_weights"] == "fp32"


def test_block_weights_in_bf16_are_refused_where_they_would_change_what_runs(trained_run):
    from varbench.tasks.sample import main as sample
    tmp_path, common, _ = trained_run
    with pytest.raises(ValueError, match=r"task.block_weights=bf16 .* task.precision=fp32: use auto or fp32"):
        sample(config("task=sample", *common, "task.block_weights=bf16", "task.precision=fp32"))
    assert not (tmp_path / "res" / "sample.jsonl").exists()
    from test_aim import tiny_raster
    run = load_run(tmp_path / "run", config("task=sample", *common), [], "cpu")
    run.model = tiny_raster()
    assert run.hold_block_weights("auto", "bf16") == "fp32" and run.identity()["block_weights"] == "fp32"
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    with pytest.raises(ValueError, match="AiM's raster model: use auto or fp32"):
        run.hold_block_weights("bf16", "bf16")
