"""train.init_from (issue 16 item 1): fine-tune from an official or a varbench checkpoint, also into a model with
another mixer: same-named, same-shaped tensors load; the rest keep the recipe's init; both lists are logged,
recorded and kept in the run spec; resume wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers import write_run
from safetensors.torch import load_file
from test_official_weights import SET_A, SET_C, config, golden_overrides

from varbench.build import build_model
from varbench.init_from import check_tokenizer, init_from
from varbench.official import renamed
from varbench.training import checkpoints
from varbench.utils.records import read_records
from varbench.utils.run_spec import read_spec


@pytest.fixture
def var_pth(tmp_path) -> Path:
    torch.save(load_file(str(SET_A / "var_state_dict.safetensors")), tmp_path / "var_d16.pth")
    torch.save(load_file(str(SET_A / "tokenizer_state_dict.safetensors")), tmp_path / "vae.pth")
    return tmp_path / "var_d16.pth"


def fresh_and_initialised(cfg, source):
    """(a model of `cfg` as the recipe initialises it, the same model after init_from(source), the report)."""
    torch.manual_seed(0)
    fresh = build_model(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    return fresh.state_dict(), model.state_dict(), init_from(model, source)


def test_official_var_into_mvar_loads_the_shared_tensors_and_initialises_the_mixers_own(var_pth):
    fresh, got, report = fresh_and_initialised(config(*golden_overrides("mvar")), var_pth)
    official = renamed(load_file(str(SET_A / "var_state_dict.safetensors")), "var")
    assert report.format == "official_var" and report.source == str(var_pth)
    for name in ("word_embed.weight", "class_emb.weight", "pos_1LC", "blocks.1.ffn.fc2.weight", "head.weight"):
        assert name in report.loaded and torch.equal(got[name], official[name].float())
    # M-VAR's 9-way AdaLN has another shape than VAR's 6-way: skipped, kept as initialised
    assert any(s.startswith("blocks.0.ada_lin.1.weight: source (384, 64) vs model (576, 64)") for s in report.skipped)
    own = [n for n in got if n.startswith(("blocks.0.mixer.", "blocks.0.intra."))]
    assert own and set(own) <= set(report.initialised)  # Mamba2 and the intra attention: the recipe's init
    for name in report.initialised + [s.split(":")[0] for s in report.skipped]:
        assert torch.equal(got[name], fresh[name])
    assert "blocks.0.mixer.mat_qkv.weight" in report.unused  # VAR's attention has no place in M-VAR's mixer
    assert not any(n in report.unused for n in ("lvl_1L", "attn_bias_for_masking"))  # derived buffers dropped
    assert sorted(report.loaded + report.initialised + [s.split(":")[0] for s in report.skipped]) == sorted(got)


def test_a_varbench_checkpoint_starts_a_model_with_another_mixer(tmp_path):
    tiny = ["model.depth=2", "model.width=64", "model.num_heads=2", "tokenizer.vocab_size=64"]
    folder, tokenizer_file = write_run(config(*tiny, f"run_dir={tmp_path / 'run'}"))
    source = load_file(str(folder / "model.safetensors"))
    fresh, got, report = fresh_and_initialised(config(*tiny, "mixer=gla"), tmp_path / "run")  # a run directory
    assert report.format == "varbench" and report.source == str(folder / "model.safetensors")
    assert {"word_embed.weight", "blocks.1.ffn.fc1.weight", "blocks.1.ada_lin.1.weight"} <= set(report.loaded)
    assert all(torch.equal(got[n], source[n]) for n in report.loaded)
    assert all(torch.equal(got[n], fresh[n]) for n in report.initialised)
    assert any(n.startswith("blocks.0.mixer.") for n in report.initialised)
    assert any(n.startswith("blocks.0.mixer.") for n in report.unused)
    check_tokenizer(report, tokenizer_file)  # the source's own tokenizer: fine
    with pytest.raises(ValueError, match="was trained with a tokenizer of sha256"):
        check_tokenizer(report, folder / "model.safetensors")


def test_a_source_that_matches_nothing_is_an_error(tmp_path):
    assert SET_C.is_dir(), f"golden set C not found at {SET_C} (shared/ must sit beside the checkout)"
    cfg = config("model.depth=1", "model.width=64", "model.num_heads=1")
    with pytest.raises(ValueError, match=r"no tensor of .*official_aim.* has a name and shape of this model"):
        init_from(build_model(cfg), SET_C / "aim_state_dict.safetensors")


def test_train_init_from_logs_records_and_specs_both_lists_and_resume_wins(var_pth, tmp_path, caplog):
    from varbench.tasks.train import main as train
    overrides = ["task=train", *golden_overrides("var"), "mixer=gla", "data=embedded", "model.num_classes=10",
                 "train=tiny", "train.steps=1", "train.batch_size=2", "train.warmup_iters=1", "train.ckpt_every=1",
                 "data.size_per_class=1", "device=cpu", f"tokenizer.checkpoint={var_pth.parent / 'vae.pth'}",
                 f"train.init_from={var_pth}", f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}"]
    with caplog.at_level(logging.INFO, logger="varbench.tasks.train"):
        train(config(*overrides))
    (record,) = read_records(tmp_path / "res" / "init_from.jsonl")
    assert record["value"] == len(record["loaded"]) > 0 and record["format"] == "official_var"
    assert any(s.startswith("class_emb.weight: source (1001, 64) vs model (11, 64)") for s in record["skipped"])
    assert any(n.startswith("blocks.0.mixer.") for n in record["initialised"])  # GLA's own tensors
    assert "loaded (" in caplog.text and "blocks.0.mixer.mat_qkv.weight" in caplog.text  # the unused, logged
    first = checkpoints.latest(tmp_path / "run" / "checkpoints")
    assert read_spec(first)["init_from"]["loaded"] == record["loaded"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="varbench.tasks.train"):
        train(config(*overrides[:-4], "train.steps=2", *overrides[-4:]))  # the same run, trained further
    assert "resume wins" in caplog.text and len(read_records(tmp_path / "res" / "init_from.jsonl")) == 1
    second = checkpoints.latest(tmp_path / "run" / "checkpoints")
    assert second != first and read_spec(second)["init_from"] == read_spec(first)["init_from"]


def test_official_aim_starts_a_raster_model_with_attention(tmp_path):
    """AiM's Mamba2 weights start a LlamaGen-style raster transformer: all but the mixers load."""
    assert SET_C.is_dir(), f"golden set C not found at {SET_C} (shared/ must sit beside the checkout)"
    from test_official_weights import aim_overrides
    # the aim recipes set mixer.d_state (Mamba2's) for whichever mixer is chosen: removed by name here
    fresh, got, report = fresh_and_initialised(config(*aim_overrides(), "mixer=attention", "~mixer.d_state"),
                                               SET_C / "aim_state_dict.safetensors")
    official = renamed(load_file(str(SET_C / "aim_state_dict.safetensors")), "aim")
    assert report.format == "official_aim"
    assert {"word_embed.weight", "pos_embed.weight", "class_emb.weight", "blocks.3.norm.weight"} <= set(report.loaded)
    assert all(torch.equal(got[n], official[n]) for n in report.loaded)
    assert all(n.startswith("blocks.") and ".mixer." in n for n in report.initialised + report.unused)
    assert all(torch.equal(got[n], fresh[n]) for n in report.initialised)
