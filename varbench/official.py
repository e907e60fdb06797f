"""Official checkpoints (VAR, M-VAR, AiM) on the command line: recognised by their keys, loaded by the converters.

A released weight file carries no architecture, only tensors under the official code's names, so it is recognised by
those names (never by the file's name) and built from the recipe the command line names:

| kind | recognised by                                        | recipes                    | converter (backbones/) |
|------|------------------------------------------------------|----------------------------|------------------------|
| var  | `attn_bias_for_masking`, `blocks.{i}.attn.*`         | model=var_d16 .. var_d30   | convert.py             |
| mvar | `blocks.{i}.mamba.*`                                 | model=mvar_d12 .. mvar_d32 | convert.py             |
| aim  | `mamba.*` + `vqvae.*` (Hugging Face) or `backbone.*` | model=aim_b, aim_l, aim_xl | raster_convert.py      |

varbench's own checkpoints use none of these names (`blocks.{i}.mixer`, `blocks.{i}.intra`, no `backbone.`), so the two
never mix. Loading is strict: the converter checks the derived buffers against the recipe's scale schedule, and every
tensor must find its place. `.pth` files are read with `torch.load(weights_only=True)` only
(`varbench.utils.checkpoint.read_state_dict`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

KINDS = {"var": "VAR (FoundationVision/VAR)", "mvar": "M-VAR (OliverRensu/MVAR)", "aim": "AiM (hp-l33/AiM)"}
RECIPES = {"var": "model=var_d16|var_d20|var_d24|var_d30", "mvar": "model=mvar_d12|mvar_d16|mvar_d20|mvar_d24|"
           "mvar_d30|mvar_d32", "aim": "model=aim_b|aim_l|aim_xl"}
_MVAR_KEY = re.compile(r"^blocks\.\d+\.mamba\.")
_VAR_KEY = re.compile(r"^(attn_bias_for_masking|blocks\.\d+\.attn\.)")


def official_kind(state_dict) -> str | None:
    """'var', 'mvar' or 'aim' when `state_dict`'s keys are an official model's, None for any other (varbench's)."""
    keys = list(state_dict)
    if any(k.startswith(("mamba.", "backbone.")) or k == "lm_head.weight" for k in keys):
        return "aim"
    if any(_MVAR_KEY.match(k) for k in keys):
        return "mvar"
    if any(_VAR_KEY.match(k) for k in keys):
        return "var"
    return None


def model_kind(model: nn.Module) -> str | None:
    """The official layout `model` has ('var', 'mvar', 'aim'), or None (another mixer or intra variant)."""
    from varbench.backbones.convert import official_flavour
    from varbench.backbones.raster_ar import RasterAR
    if isinstance(model, RasterAR):
        return "aim" if type(model.blocks[0].mixer).__name__ == "Mamba2Mixer" else None
    try:
        return official_flavour(model)
    except ValueError:
        return None


def to_varbench(model: nn.Module, state_dict, kind: str) -> dict[str, torch.Tensor]:
    """`state_dict` (official, of `kind`) under `model`'s names, derived buffers checked and dropped (AiM: the AR
    model's tensors only; its tokenizer's `vqvae.*` are `aim_tokenizer_tensors`)."""
    if kind == "aim":
        return renamed(state_dict, kind)
    from varbench.backbones.convert import official_to_varbench
    return official_to_varbench(model, state_dict)


def renamed(state_dict, kind: str) -> dict[str, torch.Tensor]:
    """`state_dict` (official, of `kind`) under varbench names, derived buffers dropped, checked against no model:
    for a partial load into a model of any mixer (`train.init_from`, varbench/init_from.py)."""
    if kind == "aim":
        from varbench.backbones import raster_convert
        return raster_convert.official_to_varbench(raster_convert.split_aim_checkpoint(state_dict)[0])
    from varbench.backbones.convert import renamed_official
    return renamed_official(state_dict, kind)


def aim_tokenizer_tensors(state_dict) -> dict[str, torch.Tensor]:
    """The VQ-F16 tensors a Hugging Face AiM file carries beside the AR model (`vqvae.*`; empty when none)."""
    from varbench.backbones.raster_convert import split_aim_checkpoint
    return split_aim_checkpoint(state_dict)[1]


def load_official_weights(model: nn.Module, state_dict, kind: str, what: str) -> None:
    """Load official weights of `kind` strictly into `model`, built from a recipe of the same kind; a model of
    another layout or size is a ValueError naming the recipes that fit."""
    from varbench.utils.checkpoint import load_strict
    have = model_kind(model)
    if have != kind:
        built = KINDS[have] if have else f"a model with mixer {type(model.blocks[0].mixer).__name__}"
        raise ValueError(f"{what} is an official {KINDS[kind]} checkpoint, but the command line builds {built}: "
                         f"name its recipe ({RECIPES[kind]}); to start another mixer from it, fine-tune with "
                         f"task=train train.init_from=<the file>")
    try:
        load_strict(model, to_varbench(model, state_dict, kind), f"official {kind} checkpoint {what}")
    except ValueError as e:
        raise ValueError(f"{e}\n(the recipe's size must be the checkpoint's: {RECIPES[kind]})") from e


def check_aim_tokenizer(state_dict, tokenizer: nn.Module, tokenizer_file) -> None:
    """A Hugging Face AiM file holds its tokenizer: it must be the one loaded from `tokenizer.checkpoint`."""
    inside = aim_tokenizer_tensors(state_dict)
    own = tokenizer.state_dict()
    differ = sorted(k for k, v in inside.items() if k not in own or own[k].shape != v.shape
                    or not torch.equal(own[k], v.to(own[k].dtype)))
    if differ:
        raise ValueError(f"the AiM checkpoint's own tokenizer (vqvae.*) differs from tokenizer.checkpoint="
                         f"{tokenizer_file} in {len(differ)} tensors (e.g. {differ[:3]}): give the VQ-F16 it was "
                         f"trained with (vq_f16.pt)")
