"""Build the objects of a run from its (Hydra) config: tokenizer, model, data sets, device.

Shape of the config (experiments/config.yaml): `tokenizer` (MultiScaleVQVAE arguments + `checkpoint`),
`model` (ScaleAR arguments), `mixer` and `intra` (registry entries), `data` (a data set factory), `train`, `task`.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from varbench.backbones.scale_ar import ScaleAR
from varbench.registry import factory
from varbench.tokenizers import MultiScaleVQVAE, load_official_vqvae

TOKENIZER_KEYS = ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks", "dropout", "beta", "quant_conv_ks",
                  "quant_resi", "share_quant_resi", "patch_nums", "using_sa", "using_mid_sa")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error, never a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but no GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def image_size(cfg: DictConfig) -> int:
    """Pixels per side implied by the tokenizer: last scale side x 2^(levels - 1)."""
    return cfg.tokenizer.patch_nums[-1] * 2 ** (len(cfg.tokenizer.ch_mult) - 1)


def build_tokenizer(cfg: DictConfig, *, trainable: bool = False, load: bool = True) -> MultiScaleVQVAE:
    """The VQ-VAE of the run; loads `tokenizer.checkpoint` when set (official .pth or varbench .safetensors)."""
    kwargs = {k: (tuple(v) if OmegaConf.is_list(v) else v) for k, v in cfg.tokenizer.items() if k in TOKENIZER_KEYS}
    vae = MultiScaleVQVAE(**kwargs, test_mode=not trainable)
    if load and cfg.tokenizer.get("checkpoint"):
        load_official_vqvae(vae, cfg.tokenizer.checkpoint)
    return vae


def build_model(cfg: DictConfig) -> ScaleAR:
    """The scale-wise AR model: the `model` group's arguments, the chosen mixer and intra variant, and the
    tokenizer's vocabulary, code width and scale schedule."""
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    return ScaleAR(mixer=factory(cfg.mixer), intra=factory(cfg.intra), vocab_size=cfg.tokenizer.vocab_size,
                   latent_dim=cfg.tokenizer.z_channels, num_classes=cfg.data.num_classes,
                   patch_nums=tuple(cfg.tokenizer.patch_nums), **model_kwargs)


def build_dataset(cfg: DictConfig, split: str):
    """The image data set of the run for `split` ("train" or "val"): items are (image in [-1, 1], label)."""
    from hydra.utils import instantiate
    return instantiate(cfg.data, split=split, image_size=image_size(cfg))
