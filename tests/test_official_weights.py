"""Official weights from the command line (issue 16 item 1, issue 17 item 3): VAR, M-VAR and AiM checkpoints written
in their official layout from the golden sets are recognised by their keys, built from the named recipe, converted
strictly and sampled; the records name their sha256. Recipes carry ImageNet's 1000 classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from varbench.build import build_model
from varbench.official import official_kind
from varbench.registry import CONFIG_ROOT
from varbench.runs import load_run
from varbench.utils.hashing import file_sha256
from varbench.utils.records import read_records

REPO = Path(__file__).resolve().parents[1]
SET_A, SET_C = REPO.parent / "shared" / "golden" / "setA", REPO.parent / "shared" / "golden" / "aim_setC"


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def golden_overrides(flavour: str) -> list[str]:
    """The recipe of `flavour` at the size of golden set A (its config.json), as a user would type it."""
    cfg = json.loads((SET_A / "config.json").read_text())
    tok, args = cfg["tokenizer"]["args"], cfg[flavour]["args"]
    out = [f"model={flavour}_d16", f"model.depth={args['depth']}", f"model.width={args['embed_dim']}",
           f"model.num_heads={args['num_heads']}", f"tokenizer.vocab_size={tok['vocab_size']}",
           f"tokenizer.z_channels={tok['z_channels']}", f"tokenizer.ch={tok['ch']}",
           f"tokenizer.patch_nums=[{','.join(map(str, tok['v_patch_nums']))}]"]
    if flavour == "mvar":
        out.append(f"mixer.d_state={cfg['mvar']['mamba2']['d_state']}")
    return out


def aim_overrides() -> list[str]:
    """model=aim_l (adaLN-group) at the size of golden set C (its config.json)."""
    cfg = json.loads((SET_C / "config.json").read_text())
    m, vq = cfg["mamba_config"], cfg["vq"]
    side = cfg["image_size"] // 2 ** (len(vq["ch_mult"]) - 1)
    return ["model=aim_l" if m["adaln_group"] else "model=aim_b", f"model.depth={m['n_layer']}",
            f"model.width={m['d_model']}", f"model.num_groups={m['num_groups']}",
            f"model.num_classes={m['num_classes']}", f"data.num_classes={m['num_classes']}",
            f"tokenizer.vocab_size={vq['n_embed']}", f"tokenizer.embed_dim={vq['embed_dim']}",
            f"tokenizer.z_channels={vq['z_channels']}", f"tokenizer.ch={vq['ch']}",
            f"tokenizer.ch_mult=[{','.join(map(str, vq['ch_mult']))}]",
            f"tokenizer.num_res_blocks={vq['num_res_blocks']}", f"tokenizer.latent_side={side}"]


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """The golden state dicts written as the releases ship them: VAR / M-VAR / VQ-VAE as flat .pth (torch.save), AiM
    as the Hugging Face model.safetensors (`mamba.*` + `vqvae.*`) and vq_f16.pt ({"model": state dict})."""
    root = tmp_path_factory.mktemp("official")
    for name in ("var", "mvar", "tokenizer"):
        torch.save(load_file(str(SET_A / f"{name}_state_dict.safetensors")), root / f"{name}.pth")
    ar, vq = (load_file(str(SET_C / f"{n}_state_dict.safetensors")) for n in ("aim", "tokenizer"))
    hf = {**{f"mamba.{k}": v for k, v in ar.items() if k != "lm_head.weight"},  # safetensors keeps one of tied tensors
          **{f"vqvae.{k}": v for k, v in vq.items()}}
    save_file(hf, str(root / "model.safetensors"))
    torch.save({"model": vq}, root / "vq_f16.pt")
    return root


def common(tmp_path: Path) -> list[str]:
    return ["device=cpu", "task.per_class=1", "task.classes=[0,207]", "task.precision=fp32",
            f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}"]


@pytest.mark.parametrize("flavour", ["var", "mvar"])
def test_an_official_checkpoint_loads_through_its_converter_and_computes_the_official_logits(official_files, flavour):
    """Built from the recipe on the command line, the loaded model reproduces the official code's logits."""
    cfg = config("task=sample", *golden_overrides(flavour), f"tokenizer.checkpoint={official_files / 'tokenizer.pth'}")
    run = load_run(official_files / f"{flavour}.pth", cfg)
    io = load_file(str(SET_A / f"{flavour}_io.safetensors"))
    with torch.no_grad():
        logits = run.model(io["label_B"], io["x_BLCv_wo_first_l"].float())
    assert (logits - io["logits"].float()).abs().max() < 3e-5  # golden README's fp32 tolerance
    assert run.official == flavour and run.identity()["checkpoint_format"] == f"official_{flavour}"
    assert run.identity()["checkpoint_sha256"] == file_sha256(official_files / f"{flavour}.pth")


def test_the_command_line_samples_an_official_var_checkpoint_and_records_its_sha256(official_files, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "task=sample", *golden_overrides("var"),
                          f"task.checkpoint={official_files / 'var.pth'}",
                          f"tokenizer.checkpoint={official_files / 'tokenizer.pth'}", *common(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = read_records(tmp_path / "res" / "sample.jsonl")
    assert record["checkpoint_sha256"] == file_sha256(official_files / "var.pth")
    assert record["tokenizer_sha256"] == file_sha256(official_files / "tokenizer.pth")
    assert record["checkpoint_format"] == "official_var" and record["images"] == 2
    assert Path(record["value"]).parent == tmp_path / "run" and Path(record["value"]).is_file()


def test_the_command_line_samples_an_official_aim_checkpoint(official_files, tmp_path):
    """AiM's Hugging Face model.safetensors with vq_f16.pt: converted strictly (the training forward equals the
    official logits), sampled token by token, and the record names both sha256."""
    from varbench.tasks.sample import main as sample
    overrides = [*aim_overrides(), f"task.checkpoint={official_files / 'model.safetensors'}",
                 f"tokenizer.checkpoint={official_files / 'vq_f16.pt'}", *common(tmp_path), "task.classes=[0,3]"]
    run = load_run(official_files / "model.safetensors", config("task=sample", *overrides))
    io = load_file(str(SET_C / "aim_io.safetensors"))
    with torch.no_grad():
        logits = run.model(io["cond"][:, 0], io["code"])
    assert (logits - io["logits_train"]).abs().max() < 1e-4  # aim_setC README tolerance
    sample(config("task=sample", *overrides))
    (record,) = read_records(tmp_path / "res" / "sample.jsonl")
    assert record["checkpoint_sha256"] == file_sha256(official_files / "model.safetensors")
    assert record["tokenizer_sha256"] == file_sha256(official_files / "vq_f16.pt")
    assert record["checkpoint_format"] == "official_aim"


def test_an_aim_file_whose_own_tokenizer_differs_from_the_given_one_is_refused(official_files, tmp_path):
    vq = load_file(str(SET_C / "tokenizer_state_dict.safetensors"))
    vq["quantize.embedding.weight"] = vq["quantize.embedding.weight"] + 1
    torch.save({"model": vq}, tmp_path / "other_vq.pt")
    cfg = config("task=sample", *aim_overrides(), f"tokenizer.checkpoint={tmp_path / 'other_vq.pt'}")
    with pytest.raises(ValueError, match=r"own tokenizer \(vqvae\.\*\) differs from tokenizer.checkpoint"):
        load_run(official_files / "model.safetensors", cfg)


def test_an_official_checkpoint_is_recognised_by_its_keys_not_its_name(official_files, tmp_path):
    (tmp_path / "weights.bin").write_bytes((official_files / "mvar.pth").read_bytes())
    cfg = config("task=sample", *golden_overrides("mvar"), f"tokenizer.checkpoint={official_files / 'tokenizer.pth'}")
    assert load_run(tmp_path / "weights.bin", cfg).official == "mvar"
    assert official_kind(build_model(cfg).state_dict()) is None  # varbench's own keys are never official


def test_an_official_checkpoint_needs_its_recipe_and_its_tokenizer(official_files):
    tokenizer = f"tokenizer.checkpoint={official_files / 'tokenizer.pth'}"
    with pytest.raises(ValueError, match=r"official M-VAR .* builds VAR .*model=mvar_d12\|mvar_d16"):
        load_run(official_files / "mvar.pth", config("task=sample", *golden_overrides("var"), tokenizer))
    with pytest.raises(ValueError, match="set tokenizer.checkpoint to the official tokenizer"):
        load_run(official_files / "var.pth", config("task=sample", *golden_overrides("var")))
    with pytest.raises(ValueError, match="holds no architecture"):  # varbench.load(official file)
        load_run(official_files / "var.pth")
    with pytest.raises(ValueError, match=r"missing keys.*\n\(the recipe's size must be the checkpoint's"):
        load_run(official_files / "var.pth", config("task=sample", *golden_overrides("var"), "model.depth=3",
                                                   tokenizer))


def test_a_pickle_that_is_more_than_tensors_is_refused(official_files, tmp_path):
    """Official .pth files are read with torch.load(weights_only=True) only."""
    import collections
    torch.save({"model": load_file(str(SET_A / "var_state_dict.safetensors")), "args": collections.Counter("ab")},
               tmp_path / "ar-ckpt.pth")
    cfg = config("task=sample", *golden_overrides("var"), f"tokenizer.checkpoint={official_files / 'tokenizer.pth'}")
    with pytest.raises(ValueError, match="refusing to load|expected a flat mapping"):
        load_run(tmp_path / "ar-ckpt.pth", cfg)


@pytest.mark.parametrize("recipe,params", [("var_d16", 310_283_520), ("mvar_d16", 464_157_184)])
def test_a_recipe_alone_builds_the_published_1000_class_model(recipe, params):
    with torch.device("meta"):
        model = build_model(config(f"model={recipe}"))
    assert model.num_classes == 1000 and model.num_params() == params


def test_a_recipe_and_a_data_set_with_other_classes_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"model.num_classes=1000 \(the recipe's\) contradicts data.num_classes=10"):
        build_model(config("model=var_d16", "data=embedded"))
    with torch.device("meta"):  # the recipe's architecture for the data set, asked for by name; tiny keeps its data's
        assert build_model(config("model=var_d16", "data=embedded", "model.num_classes=10")).num_classes == 10
        assert build_model(config()).num_classes == 10


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # a handful of samples: a singular covariance
def test_evaluate_measures_an_official_aim_checkpoint_and_records_its_sha256(official_files, tmp_path):
    """task=evaluate with an official checkpoint (AiM's, 10 classes at golden size: the embedded set fits it)."""
    from varbench.tasks import run_task
    from varbench.tasks.evaluate import main as evaluate
    overrides = [*aim_overrides(), "data=embedded", "data.size_per_class=4",
                 f"task.checkpoint={official_files / 'model.safetensors'}",
                 f"tokenizer.checkpoint={official_files / 'vq_f16.pt'}", "device=cpu", "task.precision=fp32",
                 "task.suite=project", "task.preset=aim", "task.num_classes=2", "task.per_class=2",
                 "task.batch_size=4", "task.classifier_steps=2", "task.classifier_batch_size=8",
                 "task.classifier_width=8", "task.classifier_min_val_accuracy=0", f"run_dir={tmp_path / 'run'}",
                 f"results_dir={tmp_path / 'res'}"]
    with pytest.raises(ValueError, match=r"unknown sampling preset 'eval' for a raster model \('eval' is for "
                                         r"scale-wise models\); valid: \['aim', 'aim_b'\]"):
        evaluate(config("task=evaluate", *overrides, "task.val_nll_images=0", "task.train_nll_images=0",
                        "task.preset=eval"))
    run_task(config("task=evaluate", *overrides, "task.val_nll_images=0", "task.train_nll_images=0"))  # checked
    records = read_records(tmp_path / "res" / "evaluate.jsonl")
    assert {r["metric"] for r in records} >= {"embedded_fd", "class_accuracy"}
    assert all(r["checkpoint_sha256"] == file_sha256(official_files / "model.safetensors")
               and r["tokenizer_sha256"] == file_sha256(official_files / "vq_f16.pt")
               and r["checkpoint_format"] == "official_aim" for r in records)
    assert next(r for r in records if r["metric"] == "embedded_fd")["num_samples"] == 4


def test_a_run_spec_older_than_the_recipes_class_count_still_agrees_with_its_recipe(tmp_path):
    """Specs written before model.num_classes existed built the data set's classes: `model=var_d16` on the command
    line agrees with such a run trained on ImageNet, and still contradicts one trained with other classes."""
    from helpers import write_run

    from varbench.runs import keys_set_by, run_config
    from varbench.utils.run_spec import SPEC_FILE, read_spec
    recipe = ["model=var_d16", "model.depth=1", "tokenizer.vocab_size=64", "tokenizer.patch_nums=[1,2]",
              "tokenizer.ch=32", "tokenizer.checkpoint=null"]
    folder, _ = write_run(config("task=evaluate", *recipe, f"run_dir={tmp_path / 'run'}"))
    spec = read_spec(folder)
    del spec["config"]["model"]["num_classes"]  # as written before the key existed
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    keys = [*keys_set_by("model", "var_d16"), "model.depth"]
    assert run_config(spec, config("task=evaluate", *recipe), keys).data.num_classes == 1000
    spec["config"]["data"]["num_classes"] = 10
    with pytest.raises(ValueError, match="model.num_classes: the run has 10, the command line 1000"):
        run_config(spec, config("task=evaluate", *recipe), keys)
