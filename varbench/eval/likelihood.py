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

from varbench.data.batches import collate
from varbench.data.teacher_forcing import teacher_forcing_inputs
from varbench.utils.log import get_logger, progress_bar
from varbench.utils.precision import autocast

log = get_logger(__name__)


@torch.no_grad()
def teacher_forced_nll(model, tokenizer, dataset, device: torch.device, batch_size: int, max_images: int,
                       precision: str = "fp32") -> tuple[float, int]:
    """Mean cross-entropy (nats/token) of `model` on `max_images` items of `dataset` (`scored_items`: the same ones
    for every model); returns it and the number of images used.

    Args:
        model: a ScaleAR or a RasterAR; put in eval mode here.
        tokenizer: its VQ-VAE (the same patch_nums; a single-scale one for a RasterAR).
        dataset: (image in [-1, 1], label) items, e.g. the val split; made deterministic where it can be (one
            center crop, no flip: the train split as a token cache holds it).
        device: where to run.
        batch_size (int): images per forward.
        max_images (int): how many items to score (all when the data set is smaller).
        precision (str, Optional): autocast of the model's forward: fp32 | bf16 | fp16. Default: fp32.
    """
    items = scored_items(len(dataset), max_images)
    if not items:
        raise ValueError("teacher_forced_nll needs at least one image")
    if hasattr(dataset, "set_deterministic"):
        dataset.set_deterministic()
    model.eval()
    total, tokens = 0.0, 0
    for start in progress_bar(range(0, len(items), batch_size), desc="nll", unit="batch"):
        x, labels = collate(dataset, items[start:start + batch_size])
        gt_BL, inputs = teacher_forcing_inputs(model, tokenizer, x.to(device), from_ids=False)
        with autocast(device, precision):
            logits_BLV = model(labels.to(device), inputs)
        total += F.cross_entropy(logits_BLV.flatten(0, 1).float(), gt_BL.flatten(), reduction="sum").item()
        tokens += gt_BL.numel()
    describe = getattr(dataset, "describe", None)
    log.info("teacher-forced NLL %.4f nats/token on %d images of %s", total / tokens, len(items),
             describe() if describe else type(dataset).__name__)
    return total / tokens, len(items)


def scored_items(length: int, max_items: int, seed: int = 0) -> list[int]:
    """`max_items` indices of a data set of `length` items (all of them when it is smaller), drawn at random with a
    fixed seed and sorted: the same images for every model, and every class in proportion whether the data set is
    ordered by class (an image folder: its first 1,000 ImageNet images are one class) or cycles through them."""
    if max_items >= length:
        return list(range(length))
    picked = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:max_items]
    return sorted(picked.tolist())
