"""Evaluation-grade sampling: N images per class as PNGs, resumable, then one npz in the ADM evaluation layout.

Samples are keyed by content. Everything the images depend on (the sha256 of the model's and the tokenizer's weights
as they are in memory, the sampler settings, the seed, the count, the batch size and the caller's `tag`, e.g. the
checkpoint's file sha256 and the autocast precision) is hashed into the name of their folder, so samples of another
model (a run retrained into the same folder) or of other settings are never reused: they land in another folder.

Layout on disk (`out_dir/<key>/`, key: 16 hex digits of the sha256 of the settings):
    images/{class:04d}_{i:03d}.png   one file per image (written atomically: a killed run never leaves half a PNG)
    manifest.json                    the settings the images were drawn with (checked again on a resume)
    samples.npz                      `arr_0` uint8 (N, H, W, 3) and `arr_1` int64 labels (N,), class-major order:
                                     the layout of openai/guided-diffusion's evaluations (its evaluator reads arr_0)

Determinism. Images are drawn in fixed batches of the class-major list (class 0 images 0..per_class-1, class 1 ...):
batch b holds items [b * batch_size, (b + 1) * batch_size). Each batch has its own generator, seeded from
(seed, class, index) of its first item, so batch b is the same whatever ran before it. A resumed run regenerates
only the batches with a missing PNG and gets the same images as an uninterrupted run (the manifest pins
batch_size, because a batch's composition changes its random draws).

Shape legend: N images, B batch, H W image side, 3 RGB.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from varbench.backbones.raster_ar import is_raster
from varbench.eval.metrics import save_adm_npz
from varbench.eval.samplers import make_sampler
from varbench.utils.hashing import settings_digest, weights_sha256
from varbench.utils.log import get_logger, progress_bar

log = get_logger(__name__)


@dataclass(frozen=True)
class SamplingPreset:
    """The settings that define a sampling setting (a `ScaleSampler`'s, or a RasterAR generate's)."""

    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool


PRESETS = {
    # VAR's FID setting (README, M-VAR README): cfg 1.5 ramped linearly over scales, top-k 900, top-p 0.96
    "eval": SamplingPreset(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False),
    # VAR's demo / visualisation setting: stronger guidance and Gumbel-smoothed codes; never for metrics
    "vis": SamplingPreset(cfg=4.0, top_k=900, top_p=0.95, more_smooth=True),
}


RASTER_PRESETS = {
    # AiM's FID settings (README): constant guidance, temperature 1, no top-k / top-p; cfg 2.0 for AiM-B, 1.75 for L, XL
    "aim_b": SamplingPreset(cfg=2.0, top_k=0, top_p=1.0, more_smooth=False),
    "aim": SamplingPreset(cfg=1.75, top_k=0, top_p=1.0, more_smooth=False),
}


def resolve_preset(preset, raster: bool = False) -> SamplingPreset:
    """A preset name or a SamplingPreset: "eval" | "vis" for scale-wise models, "aim_b" | "aim" for raster ones."""
    if isinstance(preset, SamplingPreset):
        return preset
    own, other = (RASTER_PRESETS, PRESETS) if raster else (PRESETS, RASTER_PRESETS)
    if preset not in own:
        hint = f" ({preset!r} is for {'scale-wise' if raster else 'raster'} models)" if preset in other else ""
        raise ValueError(f"unknown sampling preset {preset!r} for a {'raster' if raster else 'scale-wise'} "
                         f"model{hint}; valid: {sorted(own)} (or a SamplingPreset)")
    return own[preset]


def with_guidance(preset: SamplingPreset, cfg) -> SamplingPreset:
    """`preset` with the guidance scale `cfg` instead of its own (task=evaluate's `task.cfg`: a trained model
    evaluated at another guidance without retraining); None keeps the preset's. A scale-wise model's cfg 0 is no
    guidance (its ramp t: (1 + t) cond - t uncond), a raster model's cfg 1 is (uncond + s (cond - uncond)); a
    negative or non-finite scale is refused."""
    if cfg is None:
        return preset
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"task.cfg = {cfg!r}: expected a finite number >= 0 (the guidance scale), or null (the "
                         f"preset's own, {preset.cfg})")
    return replace(preset, cfg=float(cfg))


def image_sampler(model, tokenizer, p: SamplingPreset, sampler: str = "carry", cuda_graphs: bool = False,
                  decode_mode: str = "eager") -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]:
    """A function (labels_B, generator) -> images (B, 3, H, W) in [0, 1] drawing with the setting `p`: for a ScaleAR
    the sampler named `sampler` (`varbench.eval.samplers`: cfg ramped over scales; its CUDA graphs, captured on the
    first call, are replayed by the later ones), for a RasterAR its generate (constant cfg, one token at a time;
    only the carried-state sampler, no Gumbel smoothing). The tokenizer is switched to `decode_mode`
    (`varbench.tokenizers.fast_decode`) and stays in it."""
    tokenizer.set_decode_mode(decode_mode)
    if not is_raster(model):
        draw = make_sampler(sampler, model, tokenizer, cfg=p.cfg, top_k=p.top_k, top_p=p.top_p,
                            more_smooth=p.more_smooth, cuda_graphs=cuda_graphs)
        return lambda labels_B, generator: draw(labels_B, generator=generator).images
    if p.more_smooth or sampler != "carry":
        raise ValueError(f"a raster model samples with sampler=carry and more_smooth=false only, got sampler="
                         f"{sampler!r}, more_smooth={p.more_smooth}")

    def draw_raster(labels_B: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        images = model.generate(labels_B, cfg=p.cfg, top_k=p.top_k, top_p=p.top_p, generator=generator,
                                tokenizer=tokenizer, cuda_graphs=cuda_graphs).images
        return images.clamp(0, 1)  # VQ-F16 decodes unclamped (as LlamaGen's decode_code); pixels are saved clamped
    return draw_raster


def generate_images(model, tokenizer, labels_B: torch.Tensor, p: SamplingPreset, generator, sampler: str = "carry",
                    cuda_graphs: bool = False, decode_mode: str = "eager") -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] of `labels_B` drawn with the setting `p`: one call of `image_sampler`."""
    return image_sampler(model, tokenizer, p, sampler, cuda_graphs, decode_mode)(labels_B, generator)


def image_seed(seed: int, label: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (seed, class, index) (SeedSequence mixes the three)."""
    state = np.random.SeedSequence([int(seed), int(label), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def png_path(out_dir: Path, label: int, index: int) -> Path:
    return Path(out_dir) / "images" / f"{label:04d}_{index:03d}.png"


def to_uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    """[0, 1] floats -> uint8 (B, H, W, 3), rounded as torchvision's save_image and VAR's sample script do."""
    x = images_B3HW.detach().float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_png(path: Path, img_HW3: np.ndarray) -> None:
    """Write through a temporary name and rename, so a PNG on disk is always complete."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(img_HW3).save(tmp, format="PNG")
    os.replace(tmp, path)


def keyed_file(folder: Path, stem: str, drawn_by: dict, suffix: str = ".png") -> Path:
    """folder/<stem>_<settings_digest(drawn_by)><suffix>: an output named by everything that made it, so a second run
    with other settings writes beside the first file instead of over the one an earlier record points at."""
    return Path(folder) / f"{stem}_{settings_digest(drawn_by)}{suffix}"


def check_manifest(out_dir: Path, settings: dict) -> None:
    """Write the manifest on a fresh run; on a resume, refuse settings that differ from the stored ones (a folder
    named by its settings' key holds other settings only if it was tampered with)."""
    path = Path(out_dir) / "manifest.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != settings:
            diff = {k: (stored.get(k), settings.get(k)) for k in set(stored) | set(settings)
                    if stored.get(k) != settings.get(k)}
            raise ValueError(f"{out_dir} holds samples drawn with other settings (stored, asked): {diff}; "
                             f"use another out_dir or delete it")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


def batches(num_classes: int, per_class: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """The fixed batches of (class, index) pairs, class-major."""
    items = [(c, i) for c in range(num_classes) for i in range(per_class)]
    return [items[s:s + batch_size] for s in range(0, len(items), batch_size)]


@torch.no_grad()
def sample_for_eval(model, tokenizer, out_dir, num_classes: int, per_class: int, batch_size: int = 25,
                    preset="eval", seed: int = 0, device="cpu", *, sampler: str = "carry",
                    tag: dict | None = None, cuda_graphs: bool = False, decode_mode: str = "eager") -> dict:
    """Draw `per_class` images of each of the first `num_classes` classes; skip batches already on disk.

    Args:
        model: a ScaleAR or a RasterAR (eval mode); tokenizer: its VQ-VAE (multi-scale, or VQ-F16), on `device`.
        out_dir: root of the run's samples; they go to `out_dir/<key>` (see the module docstring).
        num_classes, per_class (int): classes 0 .. num_classes - 1, per_class images each (per_class <= 1000).
        batch_size (int): images per generate call (pinned by the manifest: it changes the draws).
        preset: "eval" (VAR's FID setting), "vis"; for a raster model "aim_b" | "aim" (AiM's); or a SamplingPreset.
        seed (int): base seed; image i of class c comes from a batch seeded by (seed, class, index) of its first item.
        device: where to sample.
        sampler (str): "carry" or "prefix_rerun" (see `varbench.eval.samplers`).
        tag (dict, Optional): more settings the images depend on (e.g. the checkpoint's sha256, the autocast
            precision): part of the key and of the manifest.
        cuda_graphs (bool, Optional): replay each scale (token step) as a CUDA graph, captured once and replayed for
            every batch of that size (see `ScaleSampler`); the same kernels in the same order, so not pinned by the
            manifest. Default: False.
        decode_mode (str, Optional): how the tokenizer decodes ("eager", "channels_last", "compiled":
            `varbench.tokenizers.fast_decode`). Other kernels round differently, so a mode other than eager is part of
            the key and the manifest (eager is left out of both: folders drawn before the option keep their key).
            Default: "eager".

    Returns: {"npz": path, "folder": the sample folder, "key": its name, "images": N, "generated": images drawn by
    this call, "skipped": images found on disk}.
    """
    if not 1 <= per_class <= 1000:
        raise ValueError(f"per_class must be in [1, 1000] (3-digit file index), got {per_class}")
    if not 1 <= num_classes <= model.num_classes:
        raise ValueError(f"task.num_classes = {num_classes}: expected an integer in [1, {model.num_classes}] (this "
                         f"model's classes)")
    device, p = torch.device(device), resolve_preset(preset, raster=is_raster(model))
    settings = {"num_classes": num_classes, "per_class": per_class, "batch_size": batch_size, "seed": seed,
                "sampler": sampler, **asdict(p), "weights_sha256": weights_sha256(model, tokenizer), **(tag or {})}
    if decode_mode != "eager":
        settings["decode_mode"] = decode_mode
    key = settings_digest(settings)
    out_dir = Path(out_dir) / key
    check_manifest(out_dir, settings)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    draw = image_sampler(model, tokenizer, p, sampler, cuda_graphs, decode_mode)
    generated = skipped = 0
    for batch in progress_bar(batches(num_classes, per_class, batch_size), desc="sample", unit="batch"):
        missing = [item for item in batch if not png_path(out_dir, *item).is_file()]
        skipped += len(batch) - len(missing)
        if not missing:
            continue
        generator = torch.Generator(device).manual_seed(image_seed(seed, *batch[0]))
        labels_B = torch.tensor([c for c, _ in batch], device=device)
        images = draw(labels_B, generator)
        for item, img_HW3 in zip(batch, to_uint8(images)):
            if item in missing:  # images on disk stay untouched (they are identical anyway)
                write_png(png_path(out_dir, *item), img_HW3)
                generated += 1
    npz = pack_npz(out_dir, num_classes, per_class)
    log.info("%d images (%d classes x %d) in %s: %d drawn now, %d found on disk", num_classes * per_class,
             num_classes, per_class, out_dir, generated, skipped)
    return {"npz": str(npz), "folder": str(out_dir), "key": key, "images": num_classes * per_class,
            "generated": generated, "skipped": skipped}


class PngImages:
    """A lazy sequence of uint8 (H, W, 3) arrays read from PNG files (for save_adm_npz)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i) -> np.ndarray:
        with Image.open(self.paths[i]) as img:
            return np.asarray(img.convert("RGB"))


def pack_npz(out_dir, num_classes: int, per_class: int) -> Path:
    """Read every PNG back (so the npz is exactly what is on disk) into `out_dir/samples.npz`, one at a time."""
    out_dir = Path(out_dir)
    items = [(c, i) for c in range(num_classes) for i in range(per_class)]
    labels_N = np.array([c for c, _ in items], dtype=np.int64)
    return save_adm_npz(out_dir / "samples.npz", PngImages(png_path(out_dir, c, i) for c, i in items), labels_N)
