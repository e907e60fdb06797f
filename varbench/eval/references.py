"""What a generator's Frechet distance reads against: the real-vs-real floor and the tokenizer's reconstruction.

A Frechet distance of N images against a reference is not 0 even for a perfect generator (finite N, another split),
and an AR model over a tokenizer cannot beat the tokenizer. So every evaluation records, through the same feature
extractor and against the same reference as its samples:
- `<metric>_floor`: N real images of another split (what a perfect generator would score at this N);
- `<metric>_recon`: the tokenizer's reconstructions of those same N images (the model given perfect tokens).
A sample's number reads between them; recon - floor is what the tokenizer costs.

Shape legend: N images, D feature width, B batch, 3 RGB, H W image side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from varbench.data.batches import collate
from varbench.eval import metrics as m
from varbench.eval.feature_cache import cached_tensors
from varbench.eval.likelihood import scored_items
from varbench.eval.memorisation import memorisation_rows
from varbench.eval.metrics import feature_statistics, frechet_distance
from varbench.utils.hashing import weights_sha256
from varbench.utils.log import progress_bar


@torch.no_grad()
def real_and_reconstructed_features(dataset, tokenizer, features: Callable[[torch.Tensor], torch.Tensor],
                                    num_images: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) of `num_images` items of `dataset` (scored_items: the same ones for every run) and of the
    tokenizer's reconstructions of them (ids of every scale -> image, in fp32 as in training).

    Args:
        dataset: (image in [-1, 1], label) items; made deterministic where it can be (one crop, no flip).
        tokenizer: the run's multi-scale VQ-VAE, on `device`.
        features: images (B, 3, H, W) in [-1, 1] on `device` -> features (B, D).
        num_images (int): how many items (all when the data set is smaller); at least 2.
    """
    items = scored_items(len(dataset), num_images) if num_images >= 2 else []
    if len(items) < 2:  # task.floor_images: null (as many as the samples), 0 (no rows) or >= 2
        raise ValueError(f"the floor / reconstruction rows need at least 2 images (task.floor_images >= 2), asked "
                         f"for {num_images} of a data set of {len(dataset)}")
    if hasattr(dataset, "set_deterministic"):
        dataset.set_deterministic()
    real, recon = [], []
    for start in progress_bar(range(0, len(items), batch_size), desc="floor features", unit="batch"):
        x_B3HW = collate(dataset, items[start:start + batch_size])[0].to(device)
        with torch.autocast(device.type, enabled=False):
            recon_B3HW = tokenizer.ids_to_img(tokenizer.img_to_ids(x_B3HW))
        real.append(features(x_B3HW).float().cpu())
        recon.append(features(recon_B3HW).float().cpu())
    return torch.cat(real), torch.cat(recon)


def floor_features(dataset, tokenizer, features: Callable[[torch.Tensor], torch.Tensor], num_images: int,
                   batch_size: int, device, cache_dir=None, extractor_id: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`real_and_reconstructed_features`; with `cache_dir`, computed once per (extractor, data set, count,
    tokenizer weights, decode mode) and shared by every cell that asks alike (varbench.eval.feature_cache): the
    floor rows of a grid's cells are the same numbers, and at FID-10k they cost 20k feature passes per cell."""
    def compute():
        real, recon = real_and_reconstructed_features(dataset, tokenizer, features, num_images, batch_size, device)
        return {"real": real, "recon": recon}

    if cache_dir is None:
        tensors = compute()
    else:
        key = {"rows": "floor_recon", "extractor": extractor_id, "data": describe(dataset), "length": len(dataset),
               "images": num_images, "tokenizer": weights_sha256(tokenizer),
               "decode_mode": tokenizer.latent_decoder.mode}
        tensors, _ = cached_tensors(cache_dir, key, compute)
    return tensors["real"], tensors["recon"]


def reference_features(reference, extractor, device, batch_size: int, cache_dir, key: dict) -> torch.Tensor:
    """Inception features (N, 2048) of the reference images (a Dataset of uint8 images: the val split), with
    `cache_dir` computed once per `key` (extractor weights, data set, length): every cell compares with the same
    images (10k for CIFAR-10's test split)."""
    def compute():
        return {"features": torch.as_tensor(m.inception_features(reference, extractor, device, batch_size,
                                                                 save_cpu_ram=True))}

    if cache_dir is None:
        return compute()["features"]
    return cached_tensors(cache_dir, {"rows": "reference", **key}, compute)[0]["features"]


def floor_and_recon_rows(metric: str, real_ND, recon_ND, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                         fields: dict) -> list[tuple[str, float, str, dict]]:
    """(metric, value, unit, fields) rows `<metric>_floor` and `<metric>_recon`: the Frechet distance of the real
    and of the reconstructed features against the reference statistics."""
    n = len(real_ND)
    return [(f"{metric}_floor", frechet_distance(*feature_statistics(real_ND), mu_ref, sigma_ref), "fd",
             {**fields, "num_samples": n, "compared": "real images of another split vs the reference"}),
            (f"{metric}_recon", frechet_distance(*feature_statistics(recon_ND), mu_ref, sigma_ref), "fd",
             {**fields, "num_samples": n, "compared": "the tokenizer's reconstructions of those images vs the "
                                                      "reference"})]


def inception_rows(samples_npz, reference, floor_set, tokenizer, *, weights=None, device, batch_size: int = 64,
                   floor_images: int | None = None, train_set=None, train_images: int = 0,
                   cache_dir=None) -> list[tuple[str, float, str, dict]]:
    """Inception rows of an evaluation, every one naming the extractor and its weights' sha256.

    Against an ADM reference batch (`reference` an .npz path): fid (its stored mu / sigma), precision / recall (its
    10k images). Against real images (`reference` a Dataset of uint8 (3, H, W), e.g. the val split): fid, kid,
    precision / recall, and with `train_images` > 0 the memorisation row nn_distance_ratio (samples and reference
    images against that many images of `train_set`: varbench.eval.memorisation; ADM's reference batch is drawn from
    ImageNet's training images, so it is not held out and gets no such row). Then fid_floor / fid_recon of
    `floor_images` images of `floor_set` (default: as many as the samples; 0: none) against the same statistics.
    With `cache_dir`, the reference images', the training images' and the floor's features are computed once per
    data set and weights (varbench.eval.feature_cache) and shared by the evaluations that follow.
    """
    extractor, sha256 = m.inception_extractor(weights, device)
    fields = m.inception_record_fields(sha256)
    gen_ND = m.inception_features(samples_npz, extractor, device, batch_size, save_cpu_ram=True)
    if isinstance(reference, (str, Path)):
        m.check_same_side(samples_npz, reference)
        mu_ref, sigma_ref = m.read_adm_reference(reference)
        fields["reference"] = str(reference)
        pr = m.precision_recall(gen_ND, m.inception_features(reference, extractor, device, batch_size, True),
                                device=device)
        rows = [("fid", frechet_distance(*feature_statistics(gen_ND), mu_ref, sigma_ref), "fd", fields)]
    else:
        fields["reference"] = describe(getattr(reference, "dataset", reference))
        real_ND = reference_features(reference, extractor, device, batch_size, cache_dir,
                                     {"extractor": f"{fields['feature_extractor']} {sha256}",
                                      "data": fields["reference"], "length": len(reference)})
        mu_ref, sigma_ref = feature_statistics(real_ND)
        pr = m.distribution_metrics(gen_ND, real_ND, device=device)
        rows = [("fid", pr["fd"], "fd", fields), ("kid", pr["kd"], "kd", {**fields, "std": pr["kd_std"]})]
        rows += memorisation_rows(gen_ND, real_ND, train_set, lambda x: m.inception_batch_features(extractor, x),
                                  train_images, batch_size, torch.device(device), fields, cache_dir)
    rows += [(k, pr[k], "fraction", {**fields, "neighborhood": 3}) for k in ("precision", "recall")]
    num_floor = len(gen_ND) if floor_images is None else floor_images
    if num_floor:
        real, recon = floor_features(floor_set, tokenizer, lambda x: m.inception_batch_features(extractor, x),
                                     num_floor, batch_size, torch.device(device), cache_dir,
                                     f"{fields['feature_extractor']} {sha256}")
        rows += floor_and_recon_rows("fid", real, recon, mu_ref, sigma_ref,
                                     {**fields, "floor_split": describe(floor_set)})
    return rows


def describe(dataset) -> str:
    return dataset.describe() if hasattr(dataset, "describe") else type(dataset).__name__
