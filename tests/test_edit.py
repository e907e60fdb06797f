"""Zero-shot editing (VAR's demo_zero_shot_edit.ipynb): box masks, the blend at every scale for every registered
mixer (the carried state is the blended sequence's), a keep-everything edit reconstructs the image, the edited logits
of VAR's golden weights equal the notebook's rule written here by hand, and `task=edit` from the command line."""

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from helpers import tiny_model, tiny_tokenizer
from safetensors.torch import load_file

from varbench.backbones.editing import Edit, box_keep_mask
from varbench.backbones.sampling import cfg_ramp
from varbench.eval.samplers import make_sampler
from varbench.registry import list_options

MIXERS = list_options("mixer")


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def image_ids(vae, batch=1, seed=1):
    torch.manual_seed(seed)
    side = vae.patch_nums[-1] * vae.downsample
    return vae.img_to_ids(torch.rand(batch, 3, side, side) * 2 - 1)


@pytest.mark.parametrize("box,match", [
    ([0.1, 0.1, 0.8], "4 fractions"), ("0.1,0.1,0.8,0.8", "4 fractions"), ([0.1, "a", 0.8, 0.8], "4 numbers"),
    ([-0.1, 0.1, 0.8, 0.8], r"y0 = -0.1 is outside the valid range \[0, 1\]"),
    ([0.1, 0.1, 0.8, 1.5], r"x1 = 1.5 is outside"), ([0.1, 0.1, float("nan"), 0.8], "y1 = nan is outside"),
    ([0.5, 0.1, 0.5, 0.8], "y0 < y1 and x0 < x1"), ([0.1, 0.8, 0.9, 0.2], "y0 < y1 and x0 < x1"),
    ([0.5, 0.5, 0.52, 0.52], "covers no token of the 8x8 grid"),
])
def test_bad_box_names_key_value_and_range(box, match):
    with pytest.raises(ValueError, match=match) as err:
        box_keep_mask(box, 8, "inpaint", name="task.box")
    assert "task.box" in str(err.value)


def test_box_mask_follows_var_rounding_and_modes():
    """Rows round(y0 * side):round(y1 * side) with Python's round (half to even: 2.5 -> 2), outpaint keeps the box,
    inpaint generates it; an unknown mode is refused."""
    out = box_keep_mask([0.3125, 0.5, 0.75, 1.0], 8, "outpaint")
    expected = torch.zeros(8, 8)
    expected[2:6, 4:8] = 1
    assert torch.equal(out, expected)
    assert torch.equal(box_keep_mask([0.3125, 0.5, 0.75, 1.0], 8, "inpaint"), 1 - expected)
    with pytest.raises(ValueError, match="mode must be one of"):
        box_keep_mask([0.1, 0.1, 0.8, 0.8], 8, "paint")


def guided_teacher_forcing(model, vae, labels, ids, cfg):
    """Guided logits (B, L, V) of every scale, teacher-forced on `ids` (the hand path; no sampler involved)."""
    x_BLCv = vae.ids_to_var_input(ids)
    cond = model(labels, x_BLCv)
    uncond = model(torch.full_like(labels, model.num_classes), x_BLCv)
    K = model.layout.num_scales
    return torch.cat([(1 + cfg_ramp(cfg, k, K)) * cond[:, s] - cfg_ramp(cfg, k, K) * uncond[:, s]
                      for k, s in enumerate(model.layout.segments())], 1)


@pytest.mark.parametrize("mixer,intra", [(m, i) for m in MIXERS for i in ("none", "full")] + [("attention", "local")])
def test_every_mixer_keeps_the_image_outside_the_edit_and_carries_the_blended_state(mixer, intra, vae):
    """At every scale the kept tokens are the image's own, some generated ones differ from it, and the logits of
    every scale equal teacher forcing on the blended sequence: the carried state (and the prefix re-run) saw the
    blended tokens, not the sampled ones."""
    model = tiny_model(mixer, intra, vae=vae).double()
    image = image_ids(vae)
    vae = copy.deepcopy(vae).double()
    edit = Edit(image, box_keep_mask([0.25, 0.25, 0.75, 0.75], vae.patch_nums[-1], "inpaint"))
    labels = torch.tensor([3, 7, 10])
    for sampler in ("carry", "prefix_rerun"):
        draw = make_sampler(sampler, model, vae, cfg=2.0, top_k=0, top_p=0.0)
        out = draw(labels, generator=torch.Generator().manual_seed(0), return_logits=True, edit=edit)
        generated = 0
        for k, ids_Bl in enumerate(out.ids):
            keep_l = edit.keep(k).flatten()
            assert torch.equal(ids_Bl[:, keep_l], image[k].expand(3, -1)[:, keep_l]), f"scale {k}"
            generated += int((ids_Bl[:, ~keep_l] != image[k].expand(3, -1)[:, ~keep_l]).sum())
        assert generated > 0 and not edit.keep(len(out.ids) - 1).all()
        expected = guided_teacher_forcing(model, vae, labels, out.ids, cfg=2.0)
        torch.testing.assert_close(torch.cat(out.logits, 1), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("mixer,intra", [("attention", "local"), ("mamba2", "full"), ("gla", "none")])
@pytest.mark.parametrize("more_smooth", [False, True])
def test_an_edit_that_keeps_everything_reconstructs_the_image(mixer, intra, more_smooth, vae):
    """A mask of ones keeps every token: the output is the tokenizer's reconstruction of the image, bit for bit,
    with hard tokens and with VAR's Gumbel-smoothed codes."""
    model = tiny_model(mixer, intra, vae=vae)
    torch.manual_seed(2)
    side = vae.patch_nums[-1] * vae.downsample
    img = torch.rand(1, 3, side, side) * 2 - 1
    ids = vae.img_to_ids(img)
    edit = Edit(ids, torch.ones(vae.patch_nums[-1], vae.patch_nums[-1]))
    out = model.generate(vae, torch.tensor([1, 4]), cfg=3.0, top_k=10, top_p=0.9, more_smooth=more_smooth,
                         generator=torch.Generator().manual_seed(0), edit=edit)
    recon = vae.ids_to_img([t.expand(2, -1) for t in vae.img_to_ids(img)]).add(1).mul(0.5)  # same batch: same sums
    assert torch.equal(out.images, recon)
    assert all(torch.equal(a, b.expand(2, -1)) for a, b in zip(out.ids, ids))


def test_edit_refuses_ids_of_another_tokenizer(vae):
    model = tiny_model("attention", vae=vae)
    ids = image_ids(vae)
    for other in (image_ids(tiny_tokenizer(patch_nums=(1, 2, 4))), ids[:1] + ids):  # 3 scales, 5 scales
        edit = Edit(other, torch.ones(4, 4))
        with pytest.raises(ValueError, match=r"ids must be 4 scales of \(1 or 1, p_k\^2\) as the tokenizer's"):
            model.generate(vae, torch.tensor([1]), edit=edit)
    edit = Edit(image_ids(vae, batch=2), torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"ids must be 4 scales of \(1 or 3, p_k\^2\)"):
        model.generate(vae, torch.tensor([1, 2, 3]), edit=edit)
    with pytest.raises(ValueError, match="keep mask must be"):
        Edit(image_ids(vae), torch.ones(3, 3))


# ----- VAR's golden weights against the notebook's rule, by hand ----------------------------------------------------

def golden_var(golden_dir):
    from varbench.backbones.convert import load_official, scale_ar_from_official_args
    from varbench.tokenizers import load_official_vqvae, vqvae_from_official_args
    config = json.loads((golden_dir / "config.json").read_text())

    def load(name):
        return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(golden_dir / name)).items()}
    tok = config["tokenizer"]["args"]
    vae = vqvae_from_official_args(tok)
    load_official_vqvae(vae, load("tokenizer_state_dict.safetensors"))
    model = scale_ar_from_official_args("var", config["var"]["args"], tok["vocab_size"], tok["z_channels"])
    load_official(model, load("var_state_dict.safetensors"))
    io = load("tokenizer_io.safetensors")
    official_ids = [io[f"idx_Bl.{k}"][:1] for k in range(len(vae.patch_nums))]  # the astronaut, by the official code
    return model.eval().double(), vae.eval().double(), official_ids


def notebook_blend(mask_hw, h_BCpp, gt_1Cpp):
    """demo_zero_shot_edit.ipynb's `replace_embedding`, from the facts (shared/reference/var_mvar_facts.md §8)."""
    p = h_BCpp.shape[-1]
    force = F.interpolate(mask_hw[None, None].float(), size=(p, p), mode="bilinear", align_corners=False).gt(0.5).int()
    if p * p <= 3:
        force.fill_(1)
    return gt_1Cpp * force + h_BCpp * (1 - force), force[0, 0].bool()


@pytest.mark.parametrize("inpainting,label", [(True, 207), (True, 1000), (False, 207)])
def test_golden_var_edited_logits_follow_the_notebook_rule(golden_dir, inpainting, label):
    """VAR's golden weights, the official ids of a golden image, the notebook's box (0.1, 0.1, 0.8, 0.8): the logits
    of every scale equal the guided teacher-forced logits of the sequence the notebook's rule builds by hand (mask,
    bilinear resize, > 0.5, all kept at <= 3 tokens, codes blended, f_hat and next input from the blend)."""
    model, vae, gt_ids = golden_var(golden_dir)
    ph = vae.patch_nums[-1]
    mask = torch.zeros(ph, ph)  # get_edit_mask by hand: 1 = keep the image's token
    mask[round(0.1 * ph):round(0.8 * ph), round(0.1 * ph):round(0.8 * ph)] = 1
    mask = 1 - mask if inpainting else mask
    labels, cfg = torch.tensor([label, label]), 3.0
    edit = Edit(gt_ids, box_keep_mask([0.1, 0.1, 0.8, 0.8], ph, "inpaint" if inpainting else "outpaint"))
    out = model.generate(vae, labels, cfg=cfg, top_k=100, top_p=0.95, generator=torch.Generator().manual_seed(0),
                         return_logits=True, edit=edit)
    codebook = vae.quantize.embedding.weight
    f_hat, inputs, generated = torch.zeros(2, vae.Cvae, ph, ph, dtype=torch.double), [], 0
    for k, p in enumerate(vae.patch_nums):
        def codes(ids):
            return codebook[ids].transpose(1, 2).reshape(ids.shape[0], vae.Cvae, p, p)
        h, force = notebook_blend(mask, codes(out.ids[k]), codes(gt_ids[k]))
        assert torch.equal(edit.keep(k), force), f"scale {k}"
        kept = force.flatten()
        assert torch.equal(out.ids[k][:, kept], gt_ids[k].expand(2, -1)[:, kept]), f"scale {k}"
        generated += int((~kept).sum())
        f_hat, next_BCpp = vae.next_scale_input(k, f_hat, h)
        if next_BCpp is not None:
            inputs.append(next_BCpp.flatten(2).transpose(1, 2))
    assert generated > 0
    x_BLCv = torch.cat(inputs, 1)
    cond, uncond = model(labels, x_BLCv), model(torch.full_like(labels, 1000), x_BLCv)
    K = len(vae.patch_nums)
    for k, s in enumerate(model.layout.segments()):
        t = cfg * k / (K - 1)
        torch.testing.assert_close(out.logits[k], (1 + t) * cond[:, s] - t * uncond[:, s], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.images, vae.fhat_to_img(f_hat).add(1).mul(0.5), atol=1e-9, rtol=1e-9)


# ----- the command line -----------------------------------------------------------------------------------------------

TINY = ["model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.num_res_blocks=1", "tokenizer.vocab_size=64",
        "device=cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run (untrained weights with their run spec: editing needs only a model of the run's shape) and a 40x50
    image."""
    from helpers import write_run
    from PIL import Image
    tmp = tmp_path_factory.mktemp("edit")
    write_run(compose_edit(tmp, []))
    torch.manual_seed(0)
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(tmp / "photo.png")
    return tmp


CHECKPOINT = "checkpoints/step_00000001/model.safetensors"


def compose_edit(tmp, overrides):
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "task=edit", f"task.checkpoint={tmp / 'run' / CHECKPOINT}", f"task.image={tmp / 'photo.png'}",
            "task.box=[0.25,0.25,0.75,0.75]", f"run_dir={tmp / 'run'}", f"results_dir={tmp / 'results'}", *TINY,
            *overrides])


def test_cli_edit_writes_the_grid_and_a_record_naming_its_inputs(tiny_run):
    from PIL import Image

    from varbench.utils.records import read_records
    ckpt, image, out = tiny_run / "run" / CHECKPOINT, tiny_run / "photo.png", tiny_run / "cli"
    args = [sys.executable, str(REPO / "run.py"), "task=edit", f"task.checkpoint={ckpt}", f"task.image={image}",
            "task.box=[0.25,0.25,0.75,0.75]", "task.mode=outpaint", "task.label=3", "task.samples=2",
            f"run_dir={out}", f"results_dir={out / 'results'}", *TINY]
    run = subprocess.run(args, cwd=tiny_run, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = compose_edit(tiny_run, [])
    size = cfg.tokenizer.patch_nums[-1] * 2 ** (len(cfg.tokenizer.ch_mult) - 1)
    (rec,) = read_records(out / "results" / "edit.jsonl")
    assert Path(rec["value"]).parent == out and Path(rec["value"]).name.startswith("edit_")
    with Image.open(rec["value"]) as grid:  # one row: input, reconstruction, kept region, 2 edits
        assert grid.size == (5 * (size + 2) + 2, size + 4)
    assert rec["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert rec["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec["checkpoint"] == str(ckpt.resolve()) and rec["image"] == str(image.resolve())
    tokenizer_file = tiny_run / "tokenizer_run.safetensors"  # write_run's, named in the run spec
    assert rec["tokenizer_sha256"] == hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    assert (rec["box"], rec["mode"], rec["label"], rec["samples"]) == ([0.25, 0.25, 0.75, 0.75], "outpaint", 3, 2)


@pytest.mark.parametrize("override,match", [
    ("task.box=[0.25,0.25,0.75,1.5]", r"task.box: x1 = 1.5 is outside the valid range \[0, 1\]"),
    ("task.box=[0.5,0.5,0.5,0.75]", r"task.box = \[0.5, 0.5, 0.5, 0.75\] must have y0 < y1"),
    ("task.mode=paint", r"task.mode = 'paint' must be one of \('inpaint', 'outpaint'\)"),
    ("task.samples=0", "task.samples = 0 must be an integer >= 1"),
    ("task.image=missing.png", "task.image = 'missing.png': no such file"),
    ("task.label=11", r"task.label = 11 must be an integer class in \[0, 10\]"),
    ("task.label=-1", r"task.label = -1 must be an integer class in \[0, 10\]"),
])
def test_task_edit_refuses_bad_input_naming_key_value_and_range(tiny_run, override, match):
    from varbench.tasks.edit import main
    with pytest.raises(ValueError, match=match):
        main(compose_edit(tiny_run, [override]))
