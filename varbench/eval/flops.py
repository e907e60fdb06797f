"""Analytic forward FLOPs of a ScaleAR model per component (a multiply-add counts 2), per image.

Mixers and intra variants report their own FLOPs (`flops(layout, batch)`), so the table does not depend on a
profiler seeing inside custom kernels. Normalisations, activations and residual adds are not counted (they are
a few FLOPs per element against thousands per token for the matmuls). Training FLOPs are taken as 3x forward
(backward = 2x forward), the convention of MFU reports.
"""

from __future__ import annotations

import torch

from varbench.backbones.scale_ar import ScaleAR


def model_flops(model: ScaleAR, layout=None) -> dict[str, int]:
    """Forward FLOPs per image by component: embed, adaln, intra, mixer, ffn, head, total (RasterAR: `raster_flops`)."""
    if not isinstance(model, ScaleAR):
        return raster_flops(model)
    layout = layout or model.layout
    L, C, V = layout.L, model.width, model.vocab_size
    out = {"embed": 2 * (L - 1) * model.latent_dim * C, "adaln": 0, "intra": 0, "mixer": 0, "ffn": 0}
    # AdaLN projections run once per image, not per token: one per block, or one shared (shared_aln)
    ada_lins = [model.shared_ada_lin[-1]] if model.shared_ada_lin is not None else [b.ada_lin[-1] for b in model.blocks]
    out["adaln"] = sum(2 * C * lin.out_features for lin in ada_lins)
    for block in model.blocks:
        if block.intra is not None:
            out["intra"] += block.intra.flops(layout, 1)
        if block.mixer is not None:
            out["mixer"] += block.mixer.flops(layout, 1)
        out["ffn"] += 2 * L * 2 * C * block.ffn.fc1.out_features
    out["head"] = 2 * C * 2 * C + 2 * L * C * V
    out["total"] = sum(out.values())
    return out


def raster_flops(model) -> dict[str, int]:
    """A RasterAR's forward FLOPs per image, in ScaleAR's components: embed (table look-ups: 0), adaln (per block or
    the group table, once per image), intra (none: 0), mixer, ffn (the gated MLP, if any), head (final adaLN and the
    tied V x C projection at every position)."""
    L, C, V = model.layout.L, model.width, model.vocab_size
    out = {"embed": 0, "adaln": 0, "intra": 0, "mixer": 0, "ffn": 0}
    if model.adaln_group is not None:
        out["adaln"] += 2 * C * model.adaln_group[-1].out_features
    for block in model.blocks:
        if hasattr(block, "ada_lin"):
            out["adaln"] += 2 * C * block.ada_lin[-1].out_features
        out["mixer"] += block.mixer.flops(model.layout, 1)
        if hasattr(block, "mlp"):
            out["ffn"] += 2 * L * C * (block.mlp.fc1.out_features + block.mlp.fc2.in_features)
    out["head"] = 2 * C * 2 * C + 2 * L * C * V
    out["total"] = sum(out.values())
    return out


TRAIN_PER_FORWARD = 3  # the backward pass costs about twice the forward: the gradients of the inputs and weights


def train_flops(forward_flops: int | float) -> int | float:
    """Training FLOPs (forward and backward) from the analytic forward FLOPs, per image or per step: the one rule
    behind every MFU, every training budget and the costs table."""
    return TRAIN_PER_FORWARD * forward_flops


def decoder_flops(tokenizer, batch: int = 1) -> int:
    """FLOPs of the tokenizer decode (post_quant_conv + decoder) for one image, counted by torch's FlopCounterMode
    on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode
    side = tokenizer.patch_nums[-1]
    with torch.device("meta"):
        import copy
        dec = copy.deepcopy(tokenizer).to("meta")
        f_hat = torch.zeros(batch, tokenizer.Cvae, side, side)
        with FlopCounterMode(display=False) as counter:
            dec.decoder(dec.post_quant_conv(f_hat))
    return counter.get_total_flops() // batch
