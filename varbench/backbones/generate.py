"""One sampling call for both backbones, so that task=sample, evaluation sampling and task=bench draw from a
scale-wise model (ScaleAR: `generate(tokenizer, labels, ...)`) and a raster next-token model (RasterAR, AiM:
`generate(labels, ..., tokenizer=)`) the same way.

Shape legend: B batch.
"""

from __future__ import annotations

import torch

from varbench.backbones.raster_ar import RasterAR


def generate_images(model, tokenizer, labels_B: torch.Tensor, *, cfg: float, top_k: int = 0, top_p: float = 0.0,
                    more_smooth: bool = False, generator: torch.Generator | None = None, sampler: str = "carry",
                    cuda_graphs: bool = False):
    """Class-conditional samples of `model` decoded by `tokenizer`: the model's generation output, whose `images`
    are (B, 3, H, W) in [0, 1].

    Args are ScaleAR.generate's (top_p 0: no nucleus filter). A RasterAR samples token by token with its carried
    state (`sampler` "carry"), constant guidance `cfg` (AiM's), top-k and top-p; VAR's options that have no raster
    meaning (Gumbel `more_smooth`, the `prefix_rerun` sampler) raise ValueError instead of being ignored."""
    if not isinstance(model, RasterAR):
        return model.generate(tokenizer, labels_B, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth,
                              generator=generator, sampler=sampler, cuda_graphs=cuda_graphs)
    if more_smooth or sampler != "carry":
        raise ValueError(f"a raster model samples token by token with its carried state: more_smooth must be false "
                         f"and sampler 'carry', got more_smooth={more_smooth}, sampler={sampler!r} (VAR's options)")
    return model.generate(labels_B, cfg=cfg, top_k=top_k, top_p=top_p if top_p > 0 else 1.0, generator=generator,
                          tokenizer=tokenizer, cuda_graphs=cuda_graphs)
