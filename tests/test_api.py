"""The Python API: `varbench.build(group, name, **overrides)` for every registry entry (never None) and
`varbench.load` (tests/test_runs.py trains the run it loads)."""

from __future__ import annotations

import pytest

import varbench
from varbench.backbones.scale_ar import ScaleAR
from varbench.intra.full import IntraScaleAttention
from varbench.mixers.gla import GLAMixer
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.registry import CONFIG_ROOT, list_options
from varbench.tokenizers import MultiScaleVQVAE

COMPONENT_GROUPS = ("mixer", "intra", "data")


def test_build_a_model_with_overrides_of_its_entry_and_groups():
    model = varbench.build("model", "tiny", mixer="gla", depth=2, data={"num_classes": 5})
    assert isinstance(model, ScaleAR) and len(model.blocks) == 2 and model.num_classes == 5
    assert isinstance(model.blocks[0].mixer, GLAMixer)


def test_build_a_published_recipe_takes_its_groups():
    model = varbench.build("model", "mvar_d16", data="imagenet", depth=2)  # M-VAR's groups at a small depth
    assert isinstance(model.blocks[0].mixer, Mamba2Mixer) and isinstance(model.blocks[0].intra, IntraScaleAttention)
    assert model.num_classes == 1000 and model.layout.patch_nums[-1] == 16 and model.vocab_size == 4096


def test_build_a_tokenizer():
    tokenizer = varbench.build("tokenizer", "tiny", vocab_size=64)
    assert isinstance(tokenizer, MultiScaleVQVAE) and tokenizer.vocab_size == 64 and not tokenizer.training
    with pytest.raises(ValueError, match="needs checkpoint=<its weight file>"):
        varbench.build("tokenizer", "var")


@pytest.mark.parametrize("group", sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir() and p.name[0] != "_"))
def test_every_group_builds_or_refuses_clearly(group):
    """Every entry of a component group builds (or, for `none`, raises); a settings group raises; never None."""
    if group in ("model", "tokenizer"):
        return  # built above: they need more than their own entry
    for name in list_options(group):
        if group in COMPONENT_GROUPS and name != "none":
            continue  # constructed by the mixer, intra and data tests
        with pytest.raises(ValueError, match="absence of a component|not a component"):
            varbench.build(group, name)


def test_unknown_groups_names_and_fields_are_errors():
    with pytest.raises(ValueError, match="unknown config group 'nope'"):
        varbench.build("nope", "x")
    with pytest.raises(ValueError, match="unknown model 'var_d99'"):
        varbench.build("model", "var_d99")
    with pytest.raises(ValueError, match=r"unknown model fields \['wdith'\]"):
        varbench.build("model", "tiny", wdith=3)
    with pytest.raises(ValueError, match="unknown mixer 'glaa'"):
        varbench.build("model", "tiny", mixer="glaa")
    with pytest.raises(ValueError, match=r"unknown mixer fields \['hedas'\]"):
        varbench.build("model", "tiny", mixer={"hedas": 2})
    with pytest.raises(ValueError, match=r"unknown tokenizer fields \['vocab'\]"):
        varbench.build("tokenizer", "tiny", vocab=3)


def test_build_and_load_are_exported_lazily():
    import subprocess
    import sys
    code = "import sys, varbench; assert 'varbench.runs' not in sys.modules and 'varbench.build' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert callable(varbench.build) and callable(varbench.load) and {"build", "load"} <= set(varbench.__all__)
