"""Sample grids of the model while it trains (`logger.sample_every`, varbench/configs/logger): what a person looks at
in TensorBoard or W&B between the records. The settings are those of task=sample (varbench/configs/task/sample.yaml).

Shape legend: N images, 3 RGB, H W image side.
"""

from __future__ import annotations

import inspect
import time

import torch

from varbench.registry import load_option

PREVIEW_CLASSES, PREVIEW_PER_CLASS, PREVIEW_SEED = 10, 4, 0


@torch.no_grad()
def log_sample_grid(logger, model, tokenizer, step: int, device: torch.device) -> float:
    """Sample PREVIEW_PER_CLASS images of each of the first PREVIEW_CLASSES classes (one row per class) and log them
    as `samples` at `step`; return the seconds it took. Sampling draws from a generator of its own, so the global
    RNG (and with it an exact resume) is untouched; the model is left in eval mode (the caller restores it); the
    caller's autocast applies.
    Every rank of a multi-process run calls it (a sharded model's forward needs them all); only rank 0's logger
    logs."""
    if "tokenizer" not in inspect.signature(model.generate).parameters:
        raise ValueError(f"logger.sample_every needs a model that samples images through its tokenizer "
                         f"(ScaleAR.generate); {type(model).__name__} does not: set logger.sample_every=0")
    start = time.perf_counter()
    settings = load_option("task", "sample")
    model.eval()
    classes = min(PREVIEW_CLASSES, model.num_classes)
    labels_N = torch.arange(classes, device=device).repeat_interleave(PREVIEW_PER_CLASS)
    generator = torch.Generator(device).manual_seed(PREVIEW_SEED)
    out = model.generate(tokenizer, labels_N, cfg=settings.cfg, top_k=settings.top_k, top_p=settings.top_p,
                         more_smooth=settings.more_smooth, generator=generator)
    logger.log_images("samples", out.images, step, nrow=PREVIEW_PER_CLASS)
    return time.perf_counter() - start
