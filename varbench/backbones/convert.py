"""Conversion between official VAR / M-VAR checkpoints and varbench's ScaleAR, in both directions.

The key mapping (everything else keeps its official name):

| official (VAR)               | official (M-VAR)              | varbench                    |
|------------------------------|-------------------------------|-----------------------------|
| blocks.{i}.attn.*            | -                             | blocks.{i}.mixer.*          |
| -                            | blocks.{i}.attn.*             | blocks.{i}.intra.*          |
| -                            | blocks.{i}.mamba.*            | blocks.{i}.mixer.*          |

VAR's shared AdaLN (`shared_aln=True`, VAR-d36-s) keeps its names: `shared_ada_lin.1.*` and `blocks.{i}.ada_gss`
(no `blocks.{i}.ada_lin.*`); it exists for VAR only (M-VAR's is broken upstream: 6 chunks made, 9 unpacked).

Buffers the official models store but that are derived from the configuration are dropped on load after
checking that they hold what the configuration implies (a checkpoint for other patch_nums fails here), and
regenerated on export: `lvl_1L`, `attn_bias_for_masking` (VAR block-causal, M-VAR block-diagonal, 0 / -inf),
`blocks.{i}.attn.zero_k_bias` (zeros) and M-VAR's `blocks.{i}.attn.patch_nums` (int32 tokens per scale).
"""

from __future__ import annotations

import re

import torch

from varbench.backbones.scale_ar import ScaleAR
from varbench.utils.checkpoint import load_strict, read_state_dict

_DERIVED = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.(zero_k_bias|patch_nums))$")


def official_flavour(model: ScaleAR) -> str:
    """'var' for (no intra, attention mixer), 'mvar' for (full intra, mamba2 mixer); otherwise no official layout."""
    from varbench.intra.full import IntraScaleAttention
    from varbench.mixers.attention import BlockCausalAttention
    block = model.blocks[0]
    if block.intra is None and isinstance(block.mixer, BlockCausalAttention):
        return "var"
    if isinstance(block.intra, IntraScaleAttention) and type(block.mixer).__name__ == "Mamba2Mixer":
        if block.shared_aln:
            raise ValueError("no official checkpoint layout for M-VAR with shared_aln=True (broken upstream)")
        return "mvar"
    raise ValueError(f"no official checkpoint layout for intra={type(block.intra).__name__}, "
                     f"mixer={type(block.mixer).__name__}; only VAR and M-VAR configurations have one")


def _renames(flavour: str) -> list[tuple[str, str]]:
    if flavour == "var":
        return [(r"^blocks\.(\d+)\.attn\.", r"blocks.\1.mixer.")]
    return [(r"^blocks\.(\d+)\.attn\.", r"blocks.\1.intra."), (r"^blocks\.(\d+)\.mamba\.", r"blocks.\1.mixer.")]


def derived_buffers(model: ScaleAR, flavour: str) -> dict[str, torch.Tensor]:
    """The configuration-derived buffers an official checkpoint of this model holds."""
    layout = model.layout
    allowed = layout.block_causal_mask() if flavour == "var" else layout.block_diag_mask()
    mask = torch.zeros(layout.L, layout.L).masked_fill_(~allowed, -torch.inf).view(1, 1, layout.L, layout.L)
    out = {"lvl_1L": layout.scale_ids().view(1, -1), "attn_bias_for_masking": mask}
    for i in range(len(model.blocks)):
        out[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(model.width)
        if flavour == "mvar":
            out[f"blocks.{i}.attn.patch_nums"] = torch.tensor(layout.lengths, dtype=torch.int32)
    return out


def official_to_varbench(model: ScaleAR, official_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check the derived buffers and rename the rest to varbench keys."""
    flavour = official_flavour(model)
    expected = derived_buffers(model, flavour)
    for name, tensor in official_sd.items():
        if _DERIVED.match(name):
            if name not in expected:
                raise ValueError(f"unexpected buffer {name!r} for a {flavour} checkpoint")
            if tensor.shape != expected[name].shape or not torch.equal(tensor.float(), expected[name].float()):
                raise ValueError(f"buffer {name!r} differs from what patch_nums {model.layout.patch_nums} implies: "
                                 f"the checkpoint was made for another configuration")
    return renamed_official(official_sd, flavour)


def varbench_to_official(model: ScaleAR) -> dict[str, torch.Tensor]:
    """The model's weights under the official key names, with the derived buffers regenerated."""
    flavour = official_flavour(model)
    back = {"var": [(r"^blocks\.(\d+)\.mixer\.", r"blocks.\1.attn.")],
            "mvar": [(r"^blocks\.(\d+)\.intra\.", r"blocks.\1.attn."),
                     (r"^blocks\.(\d+)\.mixer\.", r"blocks.\1.mamba.")]}
    out = {}
    for name, tensor in model.state_dict().items():
        for pattern, repl in back[flavour]:
            name = re.sub(pattern, repl, name)
        out[name] = tensor
    out.update(derived_buffers(model, flavour))
    return out


def load_official(model: ScaleAR, source) -> ScaleAR:
    """Load an official VAR / M-VAR checkpoint (dict, .pth or .safetensors) strictly into `model`."""
    sd = read_state_dict(source)
    load_strict(model, official_to_varbench(model, sd), f"official {official_flavour(model)} checkpoint")
    return model


def scale_ar_from_official_args(flavour: str, args: dict, vocab_size: int, latent_dim: int,
                                mamba2: dict | None = None) -> ScaleAR:
    """The varbench model equivalent to an official `VAR(...)` / `MVAR(...)` constructor call (its keyword
    arguments as a dict, e.g. golden config.json), with the tokenizer's vocab size and code width."""
    from functools import partial
    shared_aln = bool(args.get("shared_aln", False))
    if shared_aln and flavour == "mvar":
        raise ValueError("shared_aln=True is not supported for M-VAR (broken upstream: its blocks unpack 9 chunks "
                         "from the 6 the shared AdaLN makes); only VAR's (d36-s) is")
    if args.get("drop_rate", 0.0) or args.get("attn_drop_rate", 0.0):
        raise ValueError("drop_rate / attn_drop_rate > 0 are not supported (every published recipe uses 0)")
    l2_norm = bool(args.get("attn_l2_norm", True))
    if flavour == "var":
        from varbench.mixers.attention import BlockCausalAttention
        mixer, intra = partial(BlockCausalAttention, l2_norm=l2_norm), None
    elif flavour == "mvar":
        from varbench.intra.full import IntraScaleAttention
        from varbench.mixers.mamba2 import Mamba2Mixer
        keep = ("d_state", "d_conv", "expand", "headdim", "chunk_size")
        mixer = partial(Mamba2Mixer, **{k: v for k, v in (mamba2 or {}).items() if k in keep})
        intra = partial(IntraScaleAttention, l2_norm=l2_norm)
    else:
        raise ValueError(f"flavour must be 'var' or 'mvar', got {flavour!r}")
    return ScaleAR(mixer=mixer, intra=intra, depth=args.get("depth", 16), width=args.get("embed_dim", 1024),
                   num_heads=args.get("num_heads", 16), vocab_size=vocab_size, latent_dim=latent_dim,
                   num_classes=args.get("num_classes", 1000), patch_nums=tuple(args["patch_nums"]),
                   mlp_ratio=args.get("mlp_ratio", 4.0), drop_path_rate=args.get("drop_path_rate", 0.0),
                   norm_eps=args.get("norm_eps", 1e-6), cond_drop_rate=args.get("cond_drop_rate", 0.1),
                   shared_aln=shared_aln)


def renamed_official(official_sd: dict[str, torch.Tensor], flavour: str) -> dict[str, torch.Tensor]:
    """The tensors of an official `flavour` ('var' | 'mvar') checkpoint under varbench names, the configuration-derived
    buffers left out, for a partial load into any model (`train.init_from`); nothing is checked against a model
    (a strict load of the same architecture goes through `official_to_varbench`)."""
    out = {}
    for name, tensor in official_sd.items():
        if not _DERIVED.match(name):
            for pattern, repl in _renames(flavour):
                name = re.sub(pattern, repl, name)
            out[name] = tensor
    return out
