"""What a model is trained on: the ground-truth ids and the teacher-forcing input of a batch, for either backbone.

- ScaleAR (next-scale): the ids of every scale and the tokenizer's per-scale input (`transformer_inputs`).
- RasterAR (next-token, AiM): the ids (B, N) of a single-scale tokenizer are both the target and the input (the
  model shifts them behind its class token), so the loss is cross-entropy of `model(labels, ids)` against `ids`.
Both backbones drop labels to the null class themselves in training mode (VAR's and AiM's class dropout).

Shape legend: B batch, L tokens (all scales, or the N raster tokens), Cv code width.
"""

from __future__ import annotations

import torch

from varbench.backbones.raster_ar import is_raster
from varbench.data.batches import transformer_inputs


@torch.no_grad()
def teacher_forcing_inputs(model: torch.nn.Module, tokenizer, x: torch.Tensor,
                           from_ids: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ground-truth ids (B, L), the model's second argument) from images in [-1, 1], or from cached ids (B, L)
    when `from_ids`: the teacher-forcing input (B, L - 1, Cv) of a ScaleAR, the ids themselves for a RasterAR.
    The tokenizer runs in fp32 outside autocast."""
    if not is_raster(model):
        return transformer_inputs(tokenizer, x, from_ids)
    if from_ids:
        return x, x
    with torch.autocast(x.device.type, enabled=False):
        ids_BN = tokenizer.encode(x)
    return ids_BN, ids_BN
