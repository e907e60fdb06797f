"""VAR's weight initialisation (`init_weights`), applied to every configuration of the scale-wise backbone, and
AiM's (`aim_init_`) for the raster backbone.

One rule for every mixer, as M-VAR applied VAR's rule to Mamba2: Linear and Embedding weights are
truncated-normal with std init_std (the bounds are the absolute values +-2, as torch's default), biases 0;
conv kernels std 0.02; affine norms weight 1 bias 0. Parameters that are not owned by those modules (Mamba's
A_log, dt_bias, D; the position tables) keep their own initialisation, and so do those a mixer's library marks
`_no_reinit` (Mamba-1's dt_proj: softplus(bias) log-uniform in [1e-3, 0.1], not softplus(0) = 0.693), unless
`mixer_init="var"` asks for VAR's rule everywhere (the behaviour before issue 15, kept to reproduce old runs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from varbench.mixers.base import NO_REINIT, library_marked

MIXER_INIT = ("library", "var")
_NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@torch.no_grad()
def var_init_(model: nn.Module, *, init_std: float = -1.0, init_head: float = 0.02, init_adaln: float = 0.5,
              init_adaln_gamma: float = 1e-5, conv_std: float = 0.02, gamma_rows: str = "official",
              mixer_init: str = "library") -> None:
    """Initialise a ScaleAR model in place with VAR's rules (var_mvar_facts.md 2.7, 4.6).

    Args:
        init_std (float, Optional): std of Linear/Embedding weights; < 0 means sqrt(1 / (3 C)). Default: -1.
        init_head (float, Optional): multiplier of the head weight. Default: 0.02.
        init_adaln (float, Optional): multiplier of the AdaLN scale/shift rows. Default: 0.5.
        init_adaln_gamma (float, Optional): multiplier of the AdaLN gate rows (VAR's `--alng`). Default: 1e-5.
        conv_std (float, Optional): std of conv kernels. Default: 0.02.
        gamma_rows (str, Optional): "official" multiplies only the first 2C AdaLN rows by init_adaln_gamma, as the
            official code does; with three branches (M-VAR) the FFN gate gamma3 then gets init_adaln (M-VAR's quirk);
            with one branch (mixer=none, intra=none) its C gate rows only. "all" treats every gate row as a gate.
            Default: "official".
        mixer_init (str, Optional): "library" keeps the init of every parameter a mixer's library marks
            `_no_reinit` (`varbench.mixers.base.library_marked`); "var" overwrites them with VAR's rule too.
            Default: "library".
    """
    if gamma_rows not in ("official", "all"):
        raise ValueError(f"gamma_rows must be 'official' or 'all', got {gamma_rows!r}")
    if mixer_init not in MIXER_INIT:
        raise ValueError(f"model.init.mixer_init must be one of {list(MIXER_INIT)}, got {mixer_init!r}")
    C = model.width
    std = math.sqrt(1 / C / 3) if init_std < 0 else init_std
    keep = library_marked(model, NO_REINIT) if mixer_init == "library" else set()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        _module_init_(m, std, conv_std, kept={n for n, _ in m.named_parameters(recurse=False) if prefix + n in keep})
    model.head.weight.mul_(init_head)
    model.head.bias.zero_()
    model.head_nm.ada_lin[-1].weight.mul_(init_adaln)
    model.head_nm.ada_lin[-1].bias.zero_()
    depth = len(model.blocks)
    for block in model.blocks:
        for branch in (block.intra, block.mixer):
            if branch is not None and branch.rescale_out_proj:
                branch.output_projection().weight.div_(math.sqrt(2 * depth))
        block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
        gates = min(2, block.num_branches) if gamma_rows == "official" else block.num_branches
        if block.shared_aln:  # rows of the block's own offset; the shared projection keeps the Linear rule (as VAR)
            block.ada_gss[:, :, gates:].mul_(init_adaln)
            block.ada_gss[:, :, :gates].mul_(init_adaln_gamma)
        else:
            ada_w = block.ada_lin[-1].weight
            ada_w[gates * C:].mul_(init_adaln)
            ada_w[:gates * C].mul_(init_adaln_gamma)
            block.ada_lin[-1].bias.zero_()


def _module_init_(m: nn.Module, std: float, conv_std: float, kept: set[str]) -> None:
    """VAR's rule for one module's own `weight` and `bias`, except those named in `kept`."""
    weight = None if "weight" in kept else getattr(m, "weight", None)
    bias = None if "bias" in kept else getattr(m, "bias", None)
    if isinstance(m, (nn.Linear, nn.Embedding, *_CONVS)):
        if weight is not None:
            nn.init.trunc_normal_(weight, std=conv_std if isinstance(m, _CONVS) else std)
        if bias is not None:
            bias.zero_()
    elif isinstance(m, _NORMS):
        if weight is not None:
            weight.fill_(1.0)
        if bias is not None:
            bias.zero_()


def aim_init_(model: nn.Module, std: float = 0.02) -> None:
    """Initialise a RasterAR in place with AiM's GPT-2 style init (`_init_weights`): embedding tables N(0, std);
    every Linear bias zero; each block's output projection (`out_proj`, `fc2`, or the mixer's
    `output_projection()`) kaiming-uniform / sqrt(depth); the adaLN Linears of the blocks and of the final layer
    zero. The mixers keep the rest of their own init (Mamba2: A_log, dt_bias, D, conv), and `scale_shift_table` its
    randn / sqrt(C)."""
    for table in (model.class_emb, model.word_embed, model.pos_embed):
        nn.init.normal_(table.weight, std=std)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for block in model.blocks:
        outputs = [m for name, m in block.named_modules() if name.split(".")[-1] in ("out_proj", "fc2")]
        outputs += [m for m in [block.mixer.output_projection()] if m is not None and m not in outputs]
        for linear in outputs:
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
            with torch.no_grad():
                linear.weight.div_(math.sqrt(model.depth))
        if hasattr(block, "ada_lin"):
            nn.init.zeros_(block.ada_lin[1].weight)
    nn.init.zeros_(model.head_nm.ada_lin[1].weight)
