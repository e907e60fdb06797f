"""Load official VAR VQ-VAE checkpoints (`vae_ch160v4096z32.pth`) into MultiScaleVQVAE.

The conversion is the identity on names: MultiScaleVQVAE keeps the official module tree and attribute names
(`encoder.down.{i}.block.{j}.conv1`, `decoder.up.{i}.upsample.conv`, `quantize.quant_resi.qresi_ls.{m}`,
`quantize.ema_vocab_hit_SV`, ...). Keeping them means a released checkpoint, the golden state dicts and any
state dict saved by the official code load with `strict=True` and no renaming table that could silently drift;
a checkpoint saved by varbench also loads back into the official class. The only work done here is validation:
a strict comparison of names and shapes with a readable error, float dtype conversion (e.g. the golden float8
weights), and refusing files that are not a flat str -> Tensor mapping (pickles with arbitrary objects are
rejected by `torch.load(weights_only=True)`, which never runs their code).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from varbench.tokenizers.vqvae import MultiScaleVQVAE
from varbench.utils.checkpoint import load_strict, read_state_dict

# Constructor defaults of the official `models.vqvae.VQVAE` (used for keys missing from `args`; note official ch=128).
OFFICIAL_VQVAE_DEFAULTS = dict(vocab_size=4096, z_channels=32, ch=128, dropout=0.0, beta=0.25, using_znorm=False,
                               quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0,
                               v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), test_mode=True)
# Fixed inside the official class (not constructor arguments).
OFFICIAL_VQVAE_FIXED = dict(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, using_sa=True, using_mid_sa=True, in_channels=3)


def vqvae_from_official_args(args: Mapping, **overrides) -> MultiScaleVQVAE:
    """Build a MultiScaleVQVAE from the keyword arguments of the official `VQVAE(...)` constructor.

    `v_patch_nums` becomes `patch_nums`; `test_mode` is ignored (the model is built for inference unless
    `overrides` says otherwise); missing keys take the official defaults; unknown keys raise ValueError.
    `overrides` are passed to MultiScaleVQVAE last (e.g. test_mode=False).
    """
    unknown = sorted(set(args) - set(OFFICIAL_VQVAE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown official VQVAE arguments {unknown}; known: {sorted(OFFICIAL_VQVAE_DEFAULTS)}")
    a = {**OFFICIAL_VQVAE_DEFAULTS, **args}
    kwargs = dict(OFFICIAL_VQVAE_FIXED)
    kwargs.update(vocab_size=a["vocab_size"], z_channels=a["z_channels"], ch=a["ch"], dropout=a["dropout"],
                  beta=a["beta"], using_znorm=a["using_znorm"], quant_conv_ks=a["quant_conv_ks"],
                  quant_resi=a["quant_resi"], share_quant_resi=a["share_quant_resi"],
                  default_qresi_counts=a["default_qresi_counts"], patch_nums=tuple(a["v_patch_nums"]))
    kwargs.update(overrides)
    return MultiScaleVQVAE(**kwargs)


def load_official_vqvae(model: MultiScaleVQVAE, state_dict_or_path) -> MultiScaleVQVAE:
    """Load an official VQ-VAE state dict (a mapping, or a `.pth` / `.safetensors` path) strictly into `model`.

    Names are used as is (see the module docstring). Floating tensors are converted to the model's dtype.
    Raises ValueError naming the missing and unexpected keys and any shape mismatch, or when the input is not a
    flat str -> Tensor mapping. Returns `model`.
    """
    what = (f"{state_dict_or_path if isinstance(state_dict_or_path, (str, os.PathLike)) else 'state dict'} "
            f"(MultiScaleVQVAE {model.vocab_size=}, {model.Cvae=}, {model.patch_nums=})")
    load_strict(model, read_state_dict(state_dict_or_path), what)
    return model
