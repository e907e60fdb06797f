"""Memorisation check on evaluated samples: are they closer to the training images than fresh images are?

For every generated sample, the distance (L2, in a named feature space: the project classifier's features,
varbench.eval.classifier.classify, or Inception-v3 pool features) to its nearest training image; the same for fresh
held-out images of the same distribution. The ratio of the medians is ~1 for a model that generates new images and
<< 1 for one that reproduces training images. Medians, not means: a few copies among many new images should show in
`copy_fraction`, not move the ratio much.
"""

from __future__ import annotations

import torch

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
