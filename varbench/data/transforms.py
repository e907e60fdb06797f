"""VAR's image preprocessing (official `utils/data.py::build_dataset`), as torchvision transforms on PIL images.

train: resize the shorter side to round(1.125 * size) with LANCZOS, RandomCrop(size), [RandomHorizontalFlip],
       ToTensor, x * 2 - 1.
val:   same resize, CenterCrop(size), ToTensor, x * 2 - 1.
VAR trains without horizontal flips (`--hflip=False`), hence hflip=False by default.

Before either, `to_rgb` turns any PIL mode into 8-bit RGB: grey and palette images by their values, 16-bit grey
scaled from 0..65535 (PIL's own conversion clips it, so most of it turns white), and transparency composited over
a white background (`ALPHA_BACKGROUND`; PIL's conversion drops alpha and shows whatever colour the transparent pixels
store, often black).

Shape legend: 3 RGB, H W image side.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

MID_RESO = 1.125  # VAR's `--mid_reso`: resize factor before the crop
CROPS = ("random", "center")
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (32-bit int) is read as 16-bit: 0..65535
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `img` (any mode PIL opens), as the module docstring says; a ValueError for a mode whose
    value range is unknown (float "F") or a 32-bit "I" image with values outside 0..65535."""
    if img.mode in SIXTEEN_BIT_GREY:
        grey = np.asarray(img).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"32-bit grey image with values in [{grey.min()}, {grey.max()}]: only 0..65535 "
                             "(16-bit) is understood")
        return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise ValueError("floating-point image (mode F): its value range is unknown; convert it to 8 or 16 bits")
    if img.mode in TRANSPARENT_MODES or "transparency" in img.info:  # palette / grey / RGB with a tRNS colour
        background = Image.new("RGBA", img.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def to_pm1(x_3HW: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (VAR's `normalize_01_into_pm1`); a module-level function so the transform pickles
    into DataLoader workers under any start method."""
    return x_3HW.mul(2.0).sub_(1.0)


def mid_size(size: int) -> int:
    """Shorter side after VAR's resize: round(1.125 * size) (288 for 256)."""
    return round(MID_RESO * size)


def var_transform(size: int, split: str, hflip: bool = False, crop: str | None = None) -> T.Compose:
    """VAR's preprocessing for `split` ("train" or "val"): PIL image -> float (3, size, size) in [-1, 1].

    Args:
        size (int): output side.
        split (str): "train" (random crop, optional flip) or "val" (center crop, never flipped).
        hflip (bool): random horizontal flip (train only; VAR's default is off).
        crop (str | None): override the crop: "random" or "center" (e.g. "center" for a token cache, which stores
            one deterministic crop per image); None picks by split.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    crop = crop or ("random" if split == "train" else "center")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS} or None, got {crop!r}")
    steps = [T.Resize(mid_size(size), interpolation=InterpolationMode.LANCZOS),
             T.RandomCrop(size) if crop == "random" else T.CenterCrop(size)]
    if hflip and split == "train":
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Lambda(to_pm1)]
    return T.Compose(steps)


def is_deterministic(transform: T.Compose) -> bool:
    """True when the transform has no random step (same image -> same tensor every call)."""
    random_steps = (T.RandomCrop, T.RandomHorizontalFlip, T.RandomResizedCrop)
    return not any(isinstance(t, random_steps) for t in getattr(transform, "transforms", [transform]))
