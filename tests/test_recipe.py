"""VAR's recipe: schedule values at chosen iterations equal the formulas, and the no-decay groups match."""

import math

import pytest
import torch

from varbench.training import recipe

# d16's published run: 200 epochs of 1669 iterations (bs 768), warm-up ep/50 = 4 epochs, wpe 0.1
MAX_IT, WARM = 200 * 1669, 4 * 1669


@pytest.mark.parametrize("it,expected", [
    (0, 0.005),                                         # warm-up starts at wp0
    (WARM // 2, 0.005 + 0.995 * (WARM // 2) / WARM),    # linear warm-up
    (WARM, 1.0),                                        # peak
    (WARM + int(0.04 * (MAX_IT - 1 - WARM)), 1.0),      # lin0 holds for the first 5 % after warm-up
    (MAX_IT - 1, 0.1),                                  # ends at wpe
])
def test_lin0_lr_factor(it, expected):
    assert recipe.lr_factor(it, WARM, MAX_IT, "lin0", 0.005, 0.1) == pytest.approx(expected, rel=1e-12)


def test_lin0_linear_part_matches_formula():
    it = WARM + (MAX_IT - 1 - WARM) // 2
    p = (it - WARM) / (MAX_IT - 1 - WARM)
    assert recipe.lr_factor(it, WARM, MAX_IT, "lin0", 0.005, 0.1) == pytest.approx(0.1 + 0.9 * (1 - p) / 0.95)


def test_cos_schedule_midpoint():
    it = WARM + (MAX_IT - 1 - WARM) // 2
    p = (it - WARM) / (MAX_IT - 1 - WARM)
    assert recipe.lr_factor(it, WARM, MAX_IT, "cos", 0.005, 0.1) == \
        pytest.approx(0.1 + 0.9 * (0.5 + 0.5 * math.cos(math.pi * p)))


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ValueError, match="lin0"):
        recipe.lr_factor(0, 1, 10, "linear-ish")


def test_peak_lr_and_weight_decay():
    assert recipe.peak_lr(1e-4, 768) == pytest.approx(3e-4)      # d16
    assert recipe.peak_lr(8e-5, 1024) == pytest.approx(3.2e-4)   # d30
    assert recipe.weight_decay_at(123, MAX_IT, 0.05, None) == 0.05
    assert recipe.weight_decay_at(0, 438_200, 0.05, 0.08) == pytest.approx(0.05)
    assert recipe.weight_decay_at(438_199, 438_200, 0.05, 0.08) == pytest.approx(0.08)
    assert recipe.weight_decay_at(219_100, 438_201, 0.05, 0.08) == pytest.approx(0.065)


def test_no_decay_groups_follow_var():
    from helpers import tiny_model
    model = tiny_model("attention", intra="full")
    groups = recipe.param_groups(model)
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert {"pos_1LC", "pos_start", "lvl_embed.weight", "blocks.0.mixer.scale_mul_1H11", "blocks.0.mixer.q_bias",
            "head.bias"} <= names
    assert not names & {"class_emb.weight", "word_embed.weight", "head.weight", "blocks.0.ada_lin.1.weight",
                        "blocks.0.mixer.mat_qkv.weight", "blocks.0.intra.mat_qkv.weight"}
    assert groups[0]["wd_scale"] == 1.0 and groups[1]["wd_scale"] == 0.0
    opt = torch.optim.AdamW(groups, lr=1.0)
    recipe.apply_schedule(opt, 0.5, 0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0] and opt.param_groups[1]["lr"] == 0.5


# var_mvar_facts.md 3.6 (the VAR / M-VAR READMEs' recipes): bs, ep, tblr, wpe, twde (None: = twd), alng
PUBLISHED = {"var_d16": (768, 200, 1e-4, 0.1, None, 1e-3), "var_d20": (768, 250, 1e-4, 0.1, None, 1e-3),
             "var_d24": (768, 350, 8e-5, 0.01, None, 1e-4), "var_d30": (1024, 350, 8e-5, 0.01, 0.08, 1e-5),
             "var_d36": (768, 350, 8e-5, 0.01, 0.08, 5e-6), "mvar_d12": (768, 200, 1e-4, 0.1, None, 1e-3),
             "mvar_d16": (768, 200, 1e-4, 0.1, None, 1e-3), "mvar_d20": (768, 250, 1e-4, 0.1, None, 1e-3),
             "mvar_d24": (768, 350, 8e-5, 0.01, None, 1e-4), "mvar_d30": (1024, 350, 8e-5, 0.01, 0.08, 1e-5),
             "mvar_d32": (1024, 350, 8e-5, 0.01, 0.08, 1e-5)}  # (M-VAR has no d32 recipe: its config takes d30's)


@pytest.mark.parametrize("recipe_name", sorted(PUBLISHED))
def test_a_model_recipe_trains_as_its_published_run(recipe_name):
    """Each recipe's training and init values are the README's (3.6), and the rest VAR's train.py defaults for all
    of them (3.3, 3.7: twd 0.05, tclip 2, ls 0, aln 0.5, hd 0.02, ini auto, sche lin0, wp0 0.005, wp ep/50, AdamW
    betas (0.9, 0.95), fp16): a changed value is a deviation and must be a named option, not a silent edit."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={recipe_name}"])
    t, init = cfg.train, cfg.model.init
    assert (t.batch_size, t.epochs, t.base_lr, t.end_factor, t.weight_decay_end, init.init_adaln_gamma) \
        == PUBLISHED[recipe_name]
    assert (t.weight_decay, t.grad_clip, t.label_smoothing, t.schedule, t.warmup_start, t.warmup_epochs) \
        == (0.05, 2.0, 0.0, "lin0", 0.005, None)
    assert (list(t.betas), t.precision, t.grad_accum) == ([0.9, 0.95], "fp16", 1)
    assert (init.init_adaln, init.init_head, init.init_std) == (0.5, 0.02, -1.0)


@pytest.mark.parametrize("recipe_name,iters,warmup_epochs,peak", [("var_d16", 333_800, 4, 3e-4),
                                                                  ("var_d20", 417_250, 5, 3e-4),
                                                                  ("var_d30", 438_200, 7, 3.2e-4)])
def test_a_recipe_plans_the_published_iterations_warm_up_and_peak_lr(recipe_name, iters, warmup_epochs, peak):
    """var_mvar_facts.md 3.3 / 3.6 on ImageNet-1k's 1,281,167 training images: total iterations, warm-up ep/50 epochs
    and the peak lr tblr * bs / 256 of the published runs."""
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    from varbench.training.loop import make_plan
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        train = compose(config_name="config", overrides=[f"model={recipe_name}"]).train
    plan = make_plan(train, 1_281_167)
    assert (plan.max_iters, plan.warmup_iters) == (iters, warmup_epochs * plan.iters_per_epoch)
    assert plan.peak_lr == pytest.approx(peak)
