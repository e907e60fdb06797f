"""Conversion of official AiM checkpoints (hp-l33/AiM `MambaLMHeadModel`) to varbench's RasterAR, both directions.

Sources: the golden set's state dict (`MambaLMHeadModel` keys), or the Hugging Face `model.safetensors` of
hp-l33/aim-base|large|xlarge, which stores the whole `AiM` module: the AR model under `mamba.` and its tokenizer
under `vqvae.` (VQ-f16 keys, see `varbench.tokenizers.vq_f16`). `split_aim_checkpoint` separates the two.

| official (MambaLMHeadModel)                          | varbench (RasterAR)               |
|------------------------------------------------------|-----------------------------------|
| backbone.embeddings.word_embeddings.weight           | word_embed.weight                 |
| lm_head.weight                                       | - (tied: must equal word_embed)   |
| backbone.embeddings.position_embeddings.weight       | pos_embed.weight                  |
| backbone.cls_embed.embedding_table.weight            | class_emb.weight                  |
| backbone.adaln_group.1.*                             | adaln_group.1.*                   |
| backbone.layers.{i}.norm.weight / norm2.weight       | blocks.{i}.norm.weight / norm2    |
| backbone.layers.{i}.mixer.* (mamba_ssm Mamba2)       | blocks.{i}.mixer.* (Mamba2Mixer)  |
| backbone.layers.{i}.mlp.fc1/fc2.weight               | blocks.{i}.mlp.fc1/fc2.weight     |
| backbone.layers.{i}.adaLN_modulation.1.*             | blocks.{i}.ada_lin.1.*            |
| backbone.layers.{i}.scale_shift_table                | blocks.{i}.scale_shift_table      |
| backbone.norm_f.weight                               | norm_f.weight                     |
| backbone.final_layer.norm_final.weight               | head_nm.norm.weight               |
| backbone.final_layer.adaLN_modulation.1.*            | head_nm.ada_lin.1.*               |

A tied checkpoint may hold either name of the shared head/embedding matrix (safetensors keeps one of shared
tensors) or both (then they must be equal). Loading is strict: missing, extra or mis-shaped keys raise.
"""

from __future__ import annotations

import re

import torch

from varbench.backbones.raster_ar import RasterAR
from varbench.utils.checkpoint import load_strict, read_state_dict

_RENAMES = [  # (official, varbench), applied in order
    (r"^backbone\.embeddings\.word_embeddings\.", "word_embed."),
    (r"^backbone\.embeddings\.position_embeddings\.", "pos_embed."),
    (r"^backbone\.cls_embed\.embedding_table\.", "class_emb."),
    (r"^backbone\.layers\.(\d+)\.adaLN_modulation\.", r"blocks.\1.ada_lin."),
    (r"^backbone\.layers\.(\d+)\.", r"blocks.\1."),
    (r"^backbone\.final_layer\.norm_final\.", "head_nm.norm."),
    (r"^backbone\.final_layer\.adaLN_modulation\.", "head_nm.ada_lin."),
    (r"^backbone\.", ""),
]
_WORD, _HEAD = "backbone.embeddings.word_embeddings.weight", "lm_head.weight"


def split_aim_checkpoint(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(AR model keys, tokenizer keys) of an AiM checkpoint: a Hugging Face `AiM` file (`mamba.*` + `vqvae.*`) or a
    bare `MambaLMHeadModel` state dict (no tokenizer)."""
    if not any(k.startswith("mamba.") for k in sd):
        return dict(sd), {}
    stray = sorted(k for k in sd if not k.startswith(("mamba.", "vqvae.")))
    if stray:
        raise ValueError(f"AiM checkpoint keys outside 'mamba.' and 'vqvae.': {stray[:10]}")
    ar = {k[len("mamba."):]: v for k, v in sd.items() if k.startswith("mamba.")}
    return ar, {k[len("vqvae."):]: v for k, v in sd.items() if k.startswith("vqvae.")}


def official_to_varbench(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `MambaLMHeadModel` state dict to RasterAR keys, resolving the tied head."""
    sd = dict(sd)
    if _HEAD in sd and _WORD in sd and not torch.equal(sd[_HEAD], sd[_WORD]):
        raise ValueError(f"{_HEAD} differs from {_WORD}: AiM ties them; this checkpoint is not a tied AiM model")
    if _HEAD in sd:
        sd.setdefault(_WORD, sd[_HEAD])
        del sd[_HEAD]
    out = {}
    for name, tensor in sd.items():
        if not name.startswith("backbone."):
            raise ValueError(f"unexpected key {name!r} in an AiM checkpoint (keys start with 'backbone.' or are "
                             f"'{_HEAD}')")
        for pattern, repl in _RENAMES:
            name, hits = re.subn(pattern, repl, name)
            if hits:
                break
        out[name] = tensor
    return out


def varbench_to_official(model: RasterAR) -> dict[str, torch.Tensor]:
    """The model's weights under `MambaLMHeadModel` names (lm_head included, tied to the word embeddings)."""
    back = [(r"^word_embed\.", "backbone.embeddings.word_embeddings."),
            (r"^pos_embed\.", "backbone.embeddings.position_embeddings."),
            (r"^class_emb\.", "backbone.cls_embed.embedding_table."),
            (r"^blocks\.(\d+)\.ada_lin\.", r"backbone.layers.\1.adaLN_modulation."),
            (r"^blocks\.(\d+)\.", r"backbone.layers.\1."),
            (r"^head_nm\.norm\.", "backbone.final_layer.norm_final."),
            (r"^head_nm\.ada_lin\.", "backbone.final_layer.adaLN_modulation."),
            (r"^", "backbone.")]
    out = {}
    for name, tensor in model.state_dict().items():
        for pattern, repl in back:
            name, hits = re.subn(pattern, repl, name)
            if hits:
                break
        out[name] = tensor
    out[_HEAD] = out[_WORD]
    return out


def load_official_aim(model: RasterAR, source) -> dict[str, torch.Tensor]:
    """Load an official AiM checkpoint (mapping, .safetensors or .pt/.bin) strictly into `model`. Returns the
    tokenizer's state dict found beside it (empty for a bare MambaLMHeadModel file), for `load_official_vq_f16`."""
    ar, vq = split_aim_checkpoint(read_state_dict(source))
    what = "official AiM checkpoint" + ("" if isinstance(source, dict) else f" {source}")
    load_strict(model, official_to_varbench(ar), f"{what} (RasterAR depth={model.depth}, width={model.width})")
    return vq


def raster_ar_from_official_config(config: dict, **overrides) -> RasterAR:
    """The RasterAR equal to `MambaLMHeadModel(MambaConfig(**config))` (e.g. golden config.json's `mamba_config`,
    or the Hugging Face config), Mamba2 with mamba_ssm's defaults (d_state 128) updated by `ssm_cfg`."""
    from functools import partial

    from varbench.mixers.mamba2 import Mamba2Mixer
    fixed = {"attn_layer_idx": [], "rms_norm": True, "tie_embeddings": True}  # AiM's; other values: not supported
    c = {"d_model": 1024, "d_intermediate": 0, "n_layer": 48, "vocab_size": 16384, "ssm_cfg": {"layer": "Mamba2"},
         "num_classes": 1000, "num_tokens": 256, "adaln_group": False, "num_groups": 1, **fixed, **config}
    ssm = dict(c["ssm_cfg"])
    unsupported = {k: c[k] for k, v in fixed.items() if c[k] != v}
    if ssm.pop("layer", "Mamba1") != "Mamba2" or unsupported:
        raise ValueError(f"only AiM's configuration is supported (Mamba2 layers, RMSNorm, tied head, no attention "
                         f"layers); got ssm_cfg={c['ssm_cfg']}, {unsupported}")
    mixer = partial(Mamba2Mixer, **{"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, **ssm})
    kwargs = dict(mixer=mixer, depth=c["n_layer"], width=c["d_model"], vocab_size=c["vocab_size"],
                  num_classes=c["num_classes"], num_tokens=c["num_tokens"], adaln_group=c["adaln_group"],
                  num_groups=c["num_groups"], mlp_hidden=_gated_mlp_width(c["d_intermediate"]),
                  sample_positions="official")
    return RasterAR(**{**kwargs, **overrides})


def _gated_mlp_width(d_intermediate: int) -> int:
    # mamba_ssm's GatedMLP rounds its hidden width up to a multiple of 128
    return 0 if d_intermediate == 0 else -(-d_intermediate // 128) * 128
