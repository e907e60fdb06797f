"""Teacher-forced likelihood of a data split: the model's cross-entropy on its images, in eval mode.

The training loss of a small data set seen many times mixes fit and memorisation; the same objective on the val split
(`val_nll`) tells them apart, and on the train split (`train_nll`) it measures the fit by the very same function, so
val_nll - train_nll is the generalisation gap (the logged training loss is not comparable: class dropout, train mode).
Conditional (no class dropout: the model is in eval mode), in nats per token, averaged over every token of every
scale, the tokenizer frozen and run in fp32 as in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.training.batches import collate, transformer_inputs
from varbench.training.loop import autocast


@torch.no_grad()
def teacher_forced_nll(model, tokenizer, dataset, device: torch.device, batch_size: int, max_images: int,
                 precision: str = "fp32") -> tuple[float, int]:
    """Mean cross-entropy (nats/token) of `model` on the first `max_images` items of `dataset`; returns it and the
    number of images used.

    Args:
        model: a ScaleAR; put in eval mode here.
        tokenizer: its multi-scale VQ-VAE (same patch_nums).
        dataset: (image in [-1, 1], label) items, e.g. the val split; made deterministic where it can be (one
            center crop, no flip: the train split as a token cache holds it).
        device: where to run.
        batch_size (int): images per forward.
        max_images (int): how many items to score (all when the data set is smaller).
        precision (str, Optional): autocast of the model's forward: fp32 | bf16 | fp16. Default: fp32.
    """
    n = min(len(dataset), max_images)
    if n == 0:
        raise ValueError("teacher_forced_nll needs at least one image")
    if hasattr(dataset, "set_deterministic"):
        dataset.set_deterministic()
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, n, batch_size):
        x, labels = collate(dataset, list(range(start, min(n, start + batch_size))))
        gt_BL, x_BLCv = transformer_inputs(tokenizer, x.to(device), from_ids=False)
        with autocast(device, precision):
            logits_BLV = model(labels.to(device), x_BLCv)
        total += F.cross_entropy(logits_BLV.flatten(0, 1).float(), gt_BL.flatten(), reduction="sum").item()
        tokens += gt_BL.numel()
    return total / tokens, n
