"""Every option of every config group composes through Hydra, and the published recipes build the published models."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from varbench.build import build_model
from varbench.registry import CONFIG_ROOT, list_options

GROUPS = ["mixer", "intra", "model", "tokenizer", "data", "train", "task"]
OPTIONS = [(g, name) for g in GROUPS for name in list_options(g)]


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("group,name", OPTIONS)
def test_every_option_composes(group, name):
    cfg = compose_with(f"{group}={name}")
    assert cfg.task.name in list_options("task")


@pytest.mark.parametrize("model,params", [("var_d16", 310_283_520), ("var_d20", 600_917_136), ("mvar_d16", 464_157_184),
                                          ("mvar_d24", 1_550_067_136)])
def test_recipes_build_the_published_models(model, params):
    cfg = compose_with(f"model={model}", "data=imagenet")
    with torch.device("meta"):
        net = build_model(cfg)
    assert net.num_params() == params
    assert cfg.train.batch_size in (768, 1024) and cfg.train.precision == "fp16"


def test_command_line_mixer_wins_over_the_recipe():
    cfg = compose_with("model=mvar_d16", "mixer=gla")
    assert cfg.mixer._target_.endswith("GLAMixer") and cfg.intra._target_.endswith("IntraScaleAttention")


def test_unknown_option_lists_the_valid_ones():
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException) as err:
        compose_with("mixer=transformer-xl")
    assert "attention" in str(err.value) and "mamba2" in str(err.value)


def test_tiny_default_is_consistent():
    cfg = compose_with()
    assert cfg.task.name == "main" and OmegaConf.select(cfg, "tokenizer.checkpoint") is None
    assert build_model(cfg).layout.patch_nums == tuple(cfg.tokenizer.patch_nums)


@pytest.mark.parametrize("mixer", list_options("mixer"))
def test_matched_parameters_equal_the_reference_configuration(mixer):
    """model.match_params_of sets the FFN width so every mixer's model has the M-VAR cell's parameter count."""
    overrides = ["model.width=256", "model.num_heads=4", "model.depth=3"]
    with torch.device("meta"):
        target = build_model(compose_with(*overrides, "mixer=mamba2", "intra=full")).num_params()
        net = build_model(compose_with(*overrides, f"mixer={mixer}", "model.match_params_of=[mamba2,full]"))
    assert abs(net.num_params() - target) <= 3 * (2 * 256 + 1) / 2
    assert net.blocks[0].ffn.fc1.out_features != 1024 or mixer == "mamba2"  # only the FFN width moved


def test_matching_a_smaller_configuration_is_refused():
    cfg = compose_with("mixer=mamba2", "intra=full", "model.match_params_of=[attention,none]")
    with pytest.raises(ValueError, match="cannot match"):
        build_model(cfg)
