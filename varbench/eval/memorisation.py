"""Memorisation check on evaluated samples: are they closer to the training images than fresh images are?

For every generated sample, the distance (L2, in a named feature space: the project classifier's features,
varbench.eval.classifier.classify, or Inception-v3 pool features) to its nearest training image; the same for fresh
held-out images of the same distribution. The ratio of the medians is ~1 for a model that generates new images and
<< 1 for one that reproduces training images. Medians, not means: a few copies among many new images should show in
`copy_fraction`, not move the ratio much.

task=evaluate records one `nn_distance_ratio` per feature space it has (`memorisation_row`): the samples against the
val split's images (held out) and `task.memorisation_train_images` training images (`dataset_features`: a fixed
subset, the same for every run). A copy of a training image outside that subset is not found (its nearest image in
the subset is as far as a fresh image's): with a subset of a fraction f of the training set, a model that only copies
shows a copy_fraction near f, not near 1. Use the whole training set where the features are affordable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from varbench.eval.feature_cache import cached_tensors
from varbench.eval.likelihood import scored_items

# a sample counts as a copy when it is nearer to a training image than this fraction of the fresh images' median
COPY_THRESHOLD = 0.1


def nearest_distances(query_ND: torch.Tensor, reference_MD: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per query row, the Euclidean distance to its nearest reference row, (N,), computed in chunks of `chunk`
    queries (the full N x M distance matrix of 10k x 50k images would not fit)."""
    if query_ND.ndim != 2 or reference_MD.ndim != 2 or query_ND.shape[1] != reference_MD.shape[1]:
        raise ValueError(f"nearest_distances: need (N, D) and (M, D) features with one D; got {tuple(query_ND.shape)} "
                         f"and {tuple(reference_MD.shape)}")
    if len(reference_MD) == 0 or len(query_ND) == 0:
        raise ValueError(f"nearest_distances: empty features (queries {len(query_ND)}, references {len(reference_MD)})")
    ref = reference_MD.double()
    return torch.cat([torch.cdist(q.double(), ref).min(dim=1).values for q in query_ND.split(chunk)])


def memorisation_check(samples_ND: torch.Tensor, heldout_ND: torch.Tensor, train_MD: torch.Tensor,
                       feature_extractor: str) -> dict:
    """The fields of an `nn_distance_ratio` record (varbench.utils.records.record(path, **fields)).

    Args:
        samples_ND: features of the evaluated samples.
        heldout_ND: features of fresh images of the training distribution that the model never saw.
        train_MD: features of the training images.
        feature_extractor: the feature space, as the quality records name it (e.g. the classifier's
            "varbench-classifier/<fingerprint>" or "inception-v3 (torch-fidelity)").

    Returns:
        metric / value / unit, the two medians, the fraction of samples nearer than COPY_THRESHOLD x the fresh
        median (copies), and the three set sizes.
    """
    if not feature_extractor:
        raise ValueError("memorisation_check: feature_extractor must name the feature space of the features")
    samples = nearest_distances(samples_ND, train_MD)
    fresh = nearest_distances(heldout_ND, train_MD)
    fresh_median = float(fresh.median())
    if fresh_median <= 0:
        raise ValueError(f"memorisation_check: the held-out images' median distance to the training set is "
                         f"{fresh_median}: the held-out images are training images (a leaked split)")
    sample_median = float(samples.median())
    return {"metric": "nn_distance_ratio", "value": sample_median / fresh_median, "unit": "ratio",
            "feature_extractor": feature_extractor, "sample_nn_median": sample_median,
            "heldout_nn_median": fresh_median,
            "copy_fraction": float((samples < COPY_THRESHOLD * fresh_median).double().mean()),
            "num_samples": len(samples_ND), "num_heldout": len(heldout_ND), "num_train": len(train_MD)}


@torch.no_grad()
def dataset_features(dataset, features: Callable[[torch.Tensor], torch.Tensor], num_images: int, batch_size: int,
                     device) -> tuple[torch.Tensor, list[int]]:
    """Features (M, D) of `num_images` training images and their indices: `scored_items` with seed 0 (the same
    images for every run of a data set, every class in proportion; all when the set is smaller), each image as
    the model saw it without augmentation (the data set made deterministic where it can be: one crop, no flip).

    Args:
        dataset: (image in [-1, 1], label) items.
        features: images (B, 3, H, W) in [-1, 1] on `device` -> features (B, D).
        num_images (int): how many (>= 1).
        batch_size (int): images per `features` call.
    """
    if num_images < 1:
        raise ValueError(f"dataset_features: num_images must be >= 1, got {num_images}")
    if hasattr(dataset, "set_deterministic"):
        dataset.set_deterministic()
    items = scored_items(len(dataset), num_images)
    parts = [features(torch.stack([torch.as_tensor(dataset[i][0]) for i in chunk]).to(device)).float().cpu()
             for chunk in (items[s:s + batch_size] for s in range(0, len(items), batch_size))]
    return torch.cat(parts), items


def cached_dataset_features(dataset, features: Callable[[torch.Tensor], torch.Tensor], num_images: int,
                            batch_size: int, device, cache_dir,
                            extractor_id: str) -> tuple[torch.Tensor, list[int], Path]:
    """`dataset_features`, computed once per (extractor, data set, count) and kept in `cache_dir`
    (varbench.eval.feature_cache; `extractor_id` must pin the weights): every cell of a grid measures against the
    same training images. Returns (features, indices, the cache file)."""
    if not hasattr(dataset, "describe") or not extractor_id:
        raise ValueError("cached_dataset_features: the cache key needs the data set's describe() and an extractor id")
    key = {"extractor": extractor_id, "data": dataset.describe(), "length": len(dataset), "images": num_images}

    def compute():
        train_MD, items = dataset_features(dataset, features, num_images, batch_size, device)
        return {"features": train_MD, "items": torch.tensor(items)}

    tensors, path = cached_tensors(cache_dir, key, compute)
    return tensors["features"], tensors["items"].tolist(), path


def memorisation_rows(samples_ND: torch.Tensor, heldout_ND: torch.Tensor, train_set,
                      features: Callable[[torch.Tensor], torch.Tensor], num_images: int, batch_size: int, device,
                      fields: dict, cache_dir=None) -> list[tuple[str, float, str, dict]]:
    """task=evaluate's memorisation row in one feature space: `memorisation_check` of the samples and held-out
    features against `num_images` images of `train_set` (`dataset_features`; with `cache_dir`,
    `cached_dataset_features`) as [(metric, value, unit, fields)], `fields` (naming the feature_extractor, its
    weights' sha256 where known, and the held-out `reference`) updated with the check's medians, copy fraction, set
    sizes and which training images; [] when num_images is 0 (task.memorisation_train_images=0). The distances are
    computed on `device` (10k samples x 50k training images x 2048 Inception features is slow on a CPU)."""
    if num_images == 0:
        return []
    extractor = fields.get("feature_extractor", "")
    if cache_dir is None:
        (train_MD, items), cached = dataset_features(train_set, features, num_images, batch_size, device), {}
    else:
        extractor_id = f"{extractor} {fields.get('feature_extractor_sha256', '')}".strip()
        train_MD, items, path = cached_dataset_features(train_set, features, num_images, batch_size, device,
                                                        cache_dir, extractor_id)
        cached = {"train_features": str(path)}
    check = memorisation_check(*(x.to(device) for x in (samples_ND, heldout_ND, train_MD)), extractor)
    metric, value, unit = check.pop("metric"), check.pop("value"), check.pop("unit")
    describe = train_set.describe() if hasattr(train_set, "describe") else type(train_set).__name__
    return [(metric, value, unit, {**fields, **check, **cached, "train_reference": describe,
                                   "train_items": f"{len(items)} of {len(train_set)}, drawn with seed 0 "
                                                  f"(varbench.eval.likelihood.scored_items)"})]
