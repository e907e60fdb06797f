"""Inside ScaleAR every mixer keeps its library's initialisation and weight-decay rules (issue 15, item 4).

mamba_ssm marks Mamba-1's `dt_proj.bias` `_no_reinit` and `A_log`, `D` (Mamba-1 and Mamba2), `dt_bias` (Mamba2)
`_no_weight_decay`; fla's GatedDeltaNet marks `A_log` and `dt_bias` `_no_weight_decay`. VAR's init must not overwrite
the first, and the optimizer must put the second in the no-decay group.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from varbench.backbones.init import var_init_
from varbench.mixers.base import NO_REINIT, NO_WEIGHT_DECAY, library_marked
from varbench.training import recipe

MIXERS = sorted(p.stem for p in (Path(__file__).parents[1] / "varbench/configs/mixer").glob("*.yaml"))
INTRAS = sorted(p.stem for p in (Path(__file__).parents[1] / "varbench/configs/intra").glob("*.yaml"))

# what the libraries mark, per mixer (relative to the mixer): the audit's result, written out so that a lost marker
# fails here even if the mixer stops declaring it
LIBRARY_NO_DECAY = {"mamba": {"A_log", "D"}, "mamba2": {"A_log", "D", "dt_bias"},
                    "gated_deltanet": {"A_log", "dt_bias"}}
LIBRARY_NO_REINIT = {"mamba": {"dt_proj.weight", "dt_proj.bias"}}


def no_decay_names(model, **kw) -> set[str]:
    groups = recipe.param_groups(model, **kw)
    assert [g["wd_scale"] for g in groups] == [1.0, 0.0]
    ids = {id(p) for p in groups[1]["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_mamba_dt_bias_keeps_mamba_ssm_init():
    """softplus(dt_proj.bias) is log-uniform in [dt_min, dt_max] = [1e-3, 0.1], not softplus(0) = 0.693."""
    torch.manual_seed(0)
    mixer = tiny_model("mamba").blocks[0].mixer
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6, (dt.min(), dt.max())
    # log-uniform over two decades: the log10 spread of 128 draws covers most of them
    assert dt.log10().max() - dt.log10().min() > 1.5
    assert abs(dt.log10().mean().item() + 2) < 0.2


def test_mamba_dt_proj_weight_keeps_mamba_ssm_init():
    """mamba_ssm draws dt_proj.weight from U(-R^-1/2, R^-1/2) (dt_init 'random') to keep dt's variance."""
    torch.manual_seed(0)
    mixer = tiny_model("mamba").blocks[0].mixer
    w, bound = mixer.dt_proj.weight.detach(), mixer.dt_rank ** -0.5
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_var_rule_everywhere_is_a_named_option():
    """`mixer_init='var'` is the old behaviour (VAR's rule on every module): the dt bias becomes 0."""
    torch.manual_seed(0)
    model = tiny_model("mamba", init={"mixer_init": "var"})
    assert torch.equal(model.blocks[0].mixer.dt_proj.bias, torch.zeros_like(model.blocks[0].mixer.dt_proj.bias))
    with pytest.raises(ValueError, match="mixer_init"):
        var_init_(model, mixer_init="mamba")


@pytest.mark.parametrize("mixer", MIXERS)
def test_library_init_survives_var_init(mixer):
    """Every parameter a mixer marks `_no_reinit` comes out of VAR's init unchanged."""
    torch.manual_seed(0)
    model = tiny_model(mixer)
    keep = library_marked(model, NO_REINIT)
    assert {n.split("mixer.", 1)[1] for n in keep if n.startswith("blocks.0.mixer.")} == LIBRARY_NO_REINIT.get(
        mixer, set())
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in keep}
    var_init_(model)
    for n in keep:
        assert torch.equal(params[n], before[n]), n


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("intra", INTRAS)
def test_marked_parameters_never_decay(mixer, intra):
    """The optimizer's no-decay group holds every parameter the library marks `_no_weight_decay`."""
    model = tiny_model(mixer, intra=intra)
    marked = library_marked(model, NO_WEIGHT_DECAY)
    expected = {f"blocks.{i}.mixer.{n}" for i in range(len(model.blocks)) for n in LIBRARY_NO_DECAY.get(mixer, ())}
    assert marked == expected
    assert expected <= no_decay_names(model)


def test_mamba_A_log_and_D_do_not_decay():
    """Mamba-1's A_log is 2-D (E, N): VAR's 1-D rule alone would decay it."""
    model = tiny_model("mamba")
    names = no_decay_names(model)
    assert {"blocks.0.mixer.A_log", "blocks.0.mixer.D", "blocks.1.mixer.A_log"} <= names
    assert model.blocks[0].mixer.A_log.ndim == 2
    assert "blocks.0.mixer.A_log" not in no_decay_names(model, marked_no_decay=False)


def test_markers_survive_a_parameter_copy():
    """FSDP2 and deepcopy replace parameter objects (an attribute on a parameter is lost); the mixers' declared
    markers are names on the module, so the copy keeps them."""
    model = copy.deepcopy(tiny_model("mamba"))
    assert "blocks.0.mixer.A_log" in no_decay_names(model)


@pytest.mark.parametrize("mixer", MIXERS)
def test_declared_markers_name_real_parameters(mixer):
    model = tiny_model(mixer)
    names = dict(model.named_parameters())
    for marker in (NO_REINIT, NO_WEIGHT_DECAY):
        assert library_marked(model, marker) <= set(names)


def test_third_party_attribute_markers_are_read():
    """A library module used as it is (mamba_ssm, fla) marks its parameters by attribute: those count too."""
    model = tiny_model("attention")
    extra = model.blocks[0].mixer.mat_qkv.weight
    extra._no_weight_decay = True
    extra._no_reinit = True
    assert "blocks.0.mixer.mat_qkv.weight" in no_decay_names(model)
    before = extra.detach().clone()
    var_init_(model)
    assert torch.equal(extra, before)


def test_ssm_parameters_keep_their_ranges_in_the_backbone():
    """Mamba2 (mamba_ssm) and GatedDeltaNet (fla): A = exp(A_log) in [1, 16] / [0, 16], softplus(dt_bias) in
    [1e-3, 0.1], D = 1 after the backbone's init."""
    for name, a_low in (("mamba2", 1.0), ("gated_deltanet", 0.0)):
        mixer = tiny_model(name).blocks[0].mixer
        A = mixer.A_log.detach().exp()
        assert A.min() >= a_low and A.max() <= 16, name
        dt = F.softplus(mixer.dt_bias.detach())
        assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6, name
    assert torch.equal(tiny_model("mamba2").blocks[0].mixer.D, torch.ones_like(tiny_model("mamba2").blocks[0].mixer.D))


@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("mamba2", "full"), ("gla", "local"), ("none", "full")])
def test_var_init_divides_the_attention_and_fc2_projections_only(mixer, intra):
    """VAR's init_weights (var_mvar_facts.md 2.7, 4.6): attn.proj and ffn.fc2 are divided by sqrt(2 depth), as is
    M-VAR's intra-scale attn.proj; a linear mixer's projections (M-VAR's Mamba2 out_proj) keep init_std."""
    from torch import nn

    from varbench.modules.attention import ScaleAttention
    depth, std = 4, 0.02
    torch.manual_seed(0)
    model = tiny_model(mixer, intra, depth=depth, width=256, heads=4)
    var_init_(model, init_std=std)
    rescaled = pytest.approx(std / math.sqrt(2 * depth), rel=0.05)
    for block in model.blocks:
        assert block.ffn.fc2.weight.std().item() == rescaled
        branches = [b for b in (block.mixer, block.intra) if b is not None]
        for branch in branches:
            if isinstance(branch, ScaleAttention):
                assert branch.proj.weight.std().item() == rescaled
            else:
                linears = [m for m in branch.modules() if isinstance(m, nn.Linear) and m.weight.numel() >= 4096]
                assert linears and all(m.weight.std().item() == pytest.approx(std, rel=0.05) for m in linears)
        assert len(branches) == (mixer != "none") + (intra != "none")
