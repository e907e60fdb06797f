"""Build the objects of a run from its (Hydra) config: tokenizer, model, data sets, device; and any registry entry
by group and name: `varbench.build(group, name, **overrides)` (this module is callable, see `build`).

Shape of the config (varbench/configs/config.yaml): `tokenizer` (MultiScaleVQVAE arguments + `checkpoint`),
`model` (ScaleAR arguments), `mixer` and `intra` (registry entries), `data` (a data set factory), `train`, `task`.
"""

from __future__ import annotations

import sys
import types

import torch
from omegaconf import DictConfig, OmegaConf

from varbench import registry
from varbench.backbones.raster_ar import RasterAR
from varbench.backbones.scale_ar import ScaleAR
from varbench.registry import factory, load_option
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
    """Pixels per side implied by the tokenizer: latent side (the last scale's, or VQ-F16's `latent_side`) x
    2^(levels - 1)."""
    tok = cfg.tokenizer
    side = tok.latent_side if tok.get("kind") == "vq_f16" else tok.patch_nums[-1]
    return side * 2 ** (len(tok.ch_mult) - 1)


def build_tokenizer(cfg: DictConfig, *, trainable: bool = False, load: bool = True):
    """The tokenizer of the run, loading `tokenizer.checkpoint` when set: VAR's multi-scale VQ-VAE (official .pth or
    varbench .safetensors), or for `tokenizer.kind: vq_f16` AiM's single-scale VQ-F16 (LlamaGen's vq_f16.pt)."""
    if cfg.tokenizer.get("kind") == "vq_f16":
        from varbench.tokenizers.vq_f16 import load_official_vq_f16, vq_f16_from_config
        vq = vq_f16_from_config(cfg.tokenizer)
        if load and cfg.tokenizer.get("checkpoint"):
            load_official_vq_f16(vq, cfg.tokenizer.checkpoint)
        return vq if trainable else vq.eval()
    kwargs = {k: (tuple(v) if OmegaConf.is_list(v) else v) for k, v in cfg.tokenizer.items() if k in TOKENIZER_KEYS}
    vae = MultiScaleVQVAE(**kwargs, test_mode=not trainable)
    if load and cfg.tokenizer.get("checkpoint"):
        load_official_vqvae(vae, cfg.tokenizer.checkpoint)
    return vae


def class_count(cfg: DictConfig) -> int:
    """The classes of the model of `cfg`: the recipe's `model.num_classes` (a published recipe states ImageNet's
    1000, the class count of its released weights), or with `model.num_classes: null` (tiny) the data set's. A recipe
    and a data set that disagree are an error naming both: a class-conditional model is built for its data."""
    recipe, data = cfg.model.get("num_classes"), cfg.data.num_classes
    if recipe is not None and recipe != data:
        raise ValueError(f"model.num_classes={recipe} (the recipe's) contradicts data.num_classes={data} (the data "
                         f"set's): use data with {recipe} classes, or set model.num_classes={data} to build the "
                         f"recipe's architecture for this data set")
    return data


def build_model(cfg: DictConfig, mixer: DictConfig | None = None, intra: DictConfig | None = None,
                patch_nums: tuple[int, ...] | None = None, num_classes: int | None = None):
    """The AR model of `cfg`: a scale-wise ScaleAR, or a raster-order RasterAR for `model.backbone: raster_ar`
    (model=aim_b|aim_l|aim_xl; `build_raster`).

    A ScaleAR gets the `model` group's arguments, the chosen mixer and intra variant (or the given registry
    entries), the tokenizer's vocabulary, code width and scale schedule (or `patch_nums`) and the classes of
    `class_count` (or `num_classes`). With `model.match_params_of: [mixer, intra]` the FFN width is set so that the
    model has that configuration's parameter count (see `matched_mlp_ratio`)."""
    num_classes = num_classes or class_count(cfg)
    if cfg.model.get("backbone") == "raster_ar":
        return build_raster(cfg, mixer, num_classes)
    model_kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    match = model_kwargs.pop("match_params_of", None)
    model_kwargs.pop("num_classes", None)  # resolved above
    mixer, intra = factory(cfg.mixer if mixer is None else mixer), factory(cfg.intra if intra is None else intra)
    shared = dict(vocab_size=cfg.tokenizer.vocab_size, latent_dim=cfg.tokenizer.z_channels, num_classes=num_classes,
                  patch_nums=tuple(patch_nums or cfg.tokenizer.patch_nums))
    if match:
        model_kwargs["mlp_ratio"] = matched_mlp_ratio(mixer, intra, match, {**model_kwargs, **shared})
    return ScaleAR(mixer=mixer, intra=intra, **shared, **model_kwargs)


def matched_mlp_ratio(mixer, intra, match, kwargs: dict) -> float:
    """The FFN width ratio that gives a model with (mixer, intra) the parameter count of the model with the
    registry configuration `match` = [mixer name, intra name] and the same other arguments. Only the FFN hidden
    width changes (the knob fla's and Mamba's own comparisons turn), so cells differ in how they mix tokens, not in
    size; the count matches to within half an FFN unit per block (depth * (2C + 1) / 2 parameters)."""
    ref_mixer, ref_intra = (factory(load_option(group, name)) for group, name in zip(("mixer", "intra"), match))
    with torch.device("meta"):  # counting only: no memory, no init
        target = ScaleAR(mixer=ref_mixer, intra=ref_intra, **kwargs).num_params()
        base = ScaleAR(mixer=mixer, intra=intra, **kwargs)
    dim, depth = base.blocks[0].dim, len(base.blocks)
    hidden = base.blocks[0].ffn.fc1.out_features
    hidden += round((target - base.num_params()) / (depth * (2 * dim + 1)))  # FFN: fc1 (C->H, bias) + fc2 (H->C)
    if hidden < 1:
        raise ValueError(f"cannot match the parameters of {list(match)}: its model is smaller than this one "
                         f"without an FFN")
    return hidden / dim


def build_raster(cfg: DictConfig, mixer: DictConfig | None = None, num_classes: int | None = None) -> RasterAR:
    """The RasterAR of `cfg` (`model.backbone: raster_ar`; model=aim_b|aim_l|aim_xl|raster_tiny): the `model`
    group's arguments, the chosen mixer (or the registry entry `mixer`), the tokenizer's vocabulary and token count
    (`raster_tokens`) and the classes of `class_count` (or `num_classes`). With `model.match_params_of` the gated
    MLP's width is set so that it has the parameters of that reference model (`reference_params`,
    `matched_mlp_hidden`), for a comparison at matched parameters (grid=scale_vs_token)."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    match = kwargs.pop("match_params_of", None)
    kwargs.pop("num_classes", None)  # resolved by class_count
    if kwargs.pop("backbone", None) != "raster_ar":
        raise ValueError(f"model.backbone must be 'raster_ar' for a RasterAR, got {cfg.model.get('backbone')!r}")
    classes = num_classes or class_count(cfg)
    kwargs.update(mixer=factory(cfg.mixer if mixer is None else mixer), vocab_size=cfg.tokenizer.vocab_size,
                  num_tokens=raster_tokens(cfg.tokenizer), num_classes=classes)
    if match:
        kwargs["mlp_hidden"] = matched_mlp_hidden(kwargs, reference_params(cfg, match, classes))
    return RasterAR(**kwargs)


def raster_tokens(tokenizer_cfg) -> int:
    """N, the tokens a raster model reads from the single-scale tokenizer of `tokenizer_cfg`: VQ-f16's latent side
    squared, or the one scale of a scale-wise VQ-VAE config with `patch_nums: [h]` (tokenizer=tiny_single|var_single,
    the same VQ-VAE as the scale-wise arm quantizing its latent as one scale)."""
    if tokenizer_cfg.get("kind") == "vq_f16":
        return tokenizer_cfg.latent_side ** 2
    patch_nums = list(tokenizer_cfg.get("patch_nums") or [])
    if len(patch_nums) != 1:
        raise ValueError(f"a raster model needs a single-scale tokenizer (tokenizer=vq_f16, tiny_single or "
                         f"var_single), got tokenizer.patch_nums={patch_nums}: give it one scale, e.g. "
                         f"[{patch_nums[-1] if patch_nums else 16}]")
    return patch_nums[0] ** 2


def matched_mlp_hidden(kwargs: dict, num_params: int) -> int:
    """The gated-MLP width H that gives RasterAR(**kwargs) `num_params` parameters (to within half an MLP unit per
    block, depth * 3C / 2): the knob a matched-parameter comparison turns, as the scale-wise `matched_mlp_ratio`.
    An MLP adds 3 C H per block (fc1 C -> 2H, fc2 H -> C, no bias) on top of its fixed cost (a second norm, three
    more adaLN rows)."""
    with torch.device("meta"):  # counting only
        one = RasterAR(**{**kwargs, "mlp_hidden": 1}).num_params()
    depth, width = kwargs.get("depth", 24), kwargs.get("width", 768)
    hidden = 1 + round((num_params - one) / (depth * 3 * width))
    if hidden < 1:
        raise ValueError(f"cannot match {num_params} parameters with a raster model of depth {depth}, width {width}: "
                         f"with the smallest MLP it already has {one}; lower its depth or width")
    return hidden


SHARED_WITH_REFERENCE = ("model.depth", "model.width", "model.num_heads", "tokenizer.vocab_size",
                         "tokenizer.z_channels")


def reference_params(cfg: DictConfig, match, num_classes: int) -> int:
    """Parameters of the reference of `model.match_params_of: {model, mixer, intra, tokenizer}` (options of those
    groups, e.g. VAR-tiny: {model: tiny, mixer: attention, intra: none, tokenizer: tiny}) built with this run's
    depth, width, heads, vocabulary, code width and classes: a scale-wise model of the same size and data, which
    the raster model then equals in parameters (its MLP makes up the difference)."""
    unknown = sorted(set(match) - {"model", "mixer", "intra", "tokenizer"})
    if unknown:
        raise ValueError(f"model.match_params_of: unknown groups {unknown}; give options of model, mixer, intra, "
                         f"tokenizer (e.g. {{model: tiny, mixer: attention, intra: none, tokenizer: tiny}})")
    shared = [f"{key}={OmegaConf.select(cfg, key)}" for key in SHARED_WITH_REFERENCE
              if OmegaConf.select(cfg, key) is not None]
    reference = registry.compose([f"{group}={option}" for group, option in match.items()] + shared)
    with torch.device("meta"):  # counting only: no memory, no init
        return build_model(reference, num_classes=num_classes).num_params()


def build_dataset(cfg: DictConfig, split: str):
    """The image data set of the run for `split` ("train" or "val"): items are (image in [-1, 1], label)."""
    from hydra.utils import instantiate

    from varbench.registry import dataset_config
    return instantiate(dataset_config(cfg.data), split=split, image_size=image_size(cfg))


MODEL_GROUPS = ("mixer", "intra", "tokenizer", "data")  # the groups a model is built from besides `model`


def build(group: str, name: str, **overrides):
    """Build any registry entry (a file `varbench/configs/<group>/<name>.yaml`) by group and name, without Hydra.

    - model: a ScaleAR (RasterAR for aim_*) of the entry's recipe, randomly initialised (trained weights:
      `varbench.load`). A recipe such as var_d16 also picks its mixer, intra, tokenizer and data (ImageNet's 1000
      classes, `num_classes=1000`); tiny takes the data group's (default: the embedded set's 10). Overrides: fields
      of the entry (`depth=12`), another option of a group (`mixer="gla"`) or fields of a group (`mixer={"heads":
      2}`, `data={"num_classes": 100}`).
    - tokenizer: a MultiScaleVQVAE in eval mode. `checkpoint=<file>` loads its weights (an official .pth or a
      varbench .safetensors); `checkpoint=None` keeps the random init. An entry that requires a file (var) says so.
    - mixer, intra, data: the component of the entry (`varbench.registry.build`): `build("mixer", "gla", dim=64,
      num_heads=2)`; fields of the YAML are overridden, other keywords go to the constructor.

    Unknown groups, names or fields raise ValueError listing the valid ones; nothing returns None.
    """
    if group == "model":
        return build_model(model_config(name, **overrides))
    if group == "tokenizer":
        return build_tokenizer(OmegaConf.create({"tokenizer": tokenizer_config(name, **overrides)}))
    return registry.build(group, name, **overrides)


def model_config(name: str, **overrides) -> DictConfig:
    """The config of model entry `name` with `build`'s overrides (group options, group fields, model fields)."""
    choices = {g: v for g, v in overrides.items() if g in MODEL_GROUPS and isinstance(v, str)}
    for group, option in {"model": name, **choices}.items():
        load_option(group, option)  # an unknown name fails here, listing the valid ones
    cfg = registry.compose([f"model={name}", *(f"{g}={option}" for g, option in choices.items())])
    for key, value in overrides.items():
        if key in choices:
            continue
        node, fields = (cfg[key], dict(value)) if key in MODEL_GROUPS else (cfg.model, {key: value})
        unknown = sorted(set(fields) - set(node))
        if unknown:
            where = key if key in MODEL_GROUPS else "model"
            raise ValueError(f"unknown {where} fields {unknown} for model {name!r}; valid: {sorted(node)}, or a "
                             f"group: {list(MODEL_GROUPS)}")
        for field, v in fields.items():
            node[field] = v
    return cfg


def tokenizer_config(name: str, **overrides) -> DictConfig:
    """Tokenizer entry `name` with `overrides` (its fields); a required `checkpoint` left unset is an error."""
    node = load_option("tokenizer", name)
    unknown = sorted(set(overrides) - set(node))
    if unknown:
        raise ValueError(f"unknown tokenizer fields {unknown}; valid: {sorted(node)}")
    node = OmegaConf.merge(node, overrides)
    if OmegaConf.is_missing(node, "checkpoint"):
        raise ValueError(f"tokenizer {name!r} needs checkpoint=<its weight file> (e.g. VAR's vae_ch160v4096z32.pth), "
                         f"or checkpoint=None for a randomly initialised one")
    return node


class _CallableModule(types.ModuleType):
    """`varbench.build(group, name, ...)`: importing this submodule makes the package attribute `varbench.build` this
    module (Python sets it on every submodule import), so the module itself is the callable."""

    def __call__(self, group: str, name: str, **overrides):
        return build(group, name, **overrides)


sys.modules[__name__].__class__ = _CallableModule
