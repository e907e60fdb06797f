"""ImageFolderData: ImageNet-style class folders with VAR's preprocessing, robust to bad files.

Layout: `root/train/<class>/**/*.<image ext>` and `root/val/<class>/**/*` (class = sub-folder name, sorted, as
torchvision's DatasetFolder). When neither `train/` nor `val/` exists but class folders sit directly under root,
root serves every split (with a warning: train and val are then the same images).

Bad files never crash a worker deep inside a run: non-image files are skipped at scan time, and an image that
fails to decode is replaced by the next readable item and flagged in a table shared with DataLoader workers.
`report()` counts both. Shape legend: 3 RGB, H W image side.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from varbench.data.transforms import var_transform

log = logging.getLogger(__name__)
LAYOUT = ("expected ImageNet-style folders: root/train/<class>/<images> and root/val/<class>/<images>, "
          "or root/<class>/<images> for a single split")
# What PIL raises on a truncated, corrupt or hostile file (UnidentifiedImageError is an OSError; some broken
# PNG/JPEG headers raise SyntaxError or ValueError; DecompressionBombError is its own class).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
MAX_EXAMPLES = 5


def split_folder(root: Path, split: str) -> Path:
    """The folder that holds `split`'s class folders (see the module docstring)."""
    if not root.is_dir():
        raise ValueError(f"data root {root} does not exist or is not a folder; {LAYOUT}")
    if (root / split).is_dir():
        return root / split
    if (root / "train").is_dir() or (root / "val").is_dir():
        raise ValueError(f"{root} has no '{split}' folder (it has train/ or val/); {LAYOUT}")
    log.warning("%s has no train/ or val/ folder: using its class folders for split %r (train and val are then "
                "the same images)", root, split)
    return root


def scan(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """(classes, samples [(path, label)], skipped non-image paths) of a folder of class folders."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class folders; {LAYOUT}")
    samples, skipped, empty = [], [], []
    for label, name in enumerate(classes):
        found = 0
        for dirpath, _, filenames in sorted(os.walk(folder / name, followlinks=True)):
            for fname in sorted(filenames):
                path = os.path.join(dirpath, fname)
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((path, label))
                    found += 1
                else:
                    skipped.append(path)
        if not found:
            empty.append(name)
    if empty:
        raise ValueError(f"{folder}: class folders without any image ({', '.join(IMG_EXTENSIONS)}): {empty[:10]}"
                         f"{' ...' if len(empty) > 10 else ''}; remove them or add images")
    return classes, samples, skipped


class ImageFolderData(Dataset):
    """Class folders with VAR's transform; items (img_3HW float in [-1, 1], label int).

    Args:
        root (str | Path): data root (see the module docstring for the layout).
        split (str): "train" or "val".
        image_size (int): output side (resize shorter side to round(1.125 * size), then crop).
        hflip (bool): random horizontal flip for train (VAR: off).
        num_classes (int | None): the class count the model is built for; a ValueError when the folders disagree.
        crop (str | None): "random" / "center" override (None: random for train, center for val).
    """

    def __init__(self, root, split: str = "train", image_size: int = 256, hflip: bool = False,
                 num_classes: int | None = None, crop: str | None = None):
        self.root, self.split, self.image_size, self.hflip = Path(root), split, int(image_size), hflip
        self.folder = split_folder(self.root, split)
        self.classes, self.samples, self.skipped = scan(self.folder)
        self.num_classes = len(self.classes)
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {self.folder} has {self.num_classes} class folders "
                             f"({self.classes[:5]}{' ...' if self.num_classes > 5 else ''}); set data.num_classes="
                             f"{self.num_classes}")
        self.transform = var_transform(self.image_size, split, hflip=hflip, crop=crop)
        # one byte per sample, in shared memory so that flags set in DataLoader workers reach report()
        self._bad = mp.RawArray("b", len(self.samples))
        self._errors: dict[int, str] = {}  # index -> error text, this process only
        self._warned = False
        if self.skipped:
            log.warning("%s: skipped %d non-image files, e.g. %s", self.folder, len(self.skipped), self.skipped[:3])

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        """One line that identifies the data (stored in token-cache metadata)."""
        return (f"ImageFolderData(folder={self.folder}, split={self.split}, image_size={self.image_size}, "
                f"num_items={len(self)}, num_classes={self.num_classes})")

    def set_deterministic(self) -> "ImageFolderData":
        """Center crop and no flip for every split: one fixed crop per image (what a token cache stores)."""
        self.transform = var_transform(self.image_size, self.split, hflip=False, crop="center")
        return self

    def _load(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the full decode here, inside the try of the caller

    def _flag(self, index: int, err: Exception) -> None:
        self._bad[index] = 1
        self._errors[index] = f"{type(err).__name__}: {err}"
        if not self._warned:
            self._warned = True
            log.warning("unreadable image %s (%s); substituting the next readable item (further ones are counted, "
                        "see report())", self.samples[index][0], self._errors[index])

    def __getitem__(self, index: int):
        n = len(self.samples)
        for step in range(n):
            j = (index + step) % n
            if self._bad[j]:
                continue
            try:
                img = self._load(j)
            except DECODE_ERRORS as err:
                self._flag(j, err)
                continue
            return self.transform(img), self.samples[j][1]
        raise RuntimeError(f"no readable image in {self.folder} ({n} files, all failed to decode): {self.report()}")

    def report(self) -> dict:
        """{"skipped_non_image": n, "unreadable": n, "examples": [...]} (unreadable: distinct files seen so far,
        in any process; error texts of files flagged in worker processes are not known here)."""
        bad = np.flatnonzero(np.frombuffer(self._bad, dtype=np.int8))
        examples = [f"{p}: not an image file (skipped)" for p in self.skipped[:MAX_EXAMPLES]]
        examples += [f"{self.samples[i][0]}: unreadable ({self._errors.get(int(i), 'failed in a worker')})"
                     for i in bad[:MAX_EXAMPLES]]
        return {"skipped_non_image": len(self.skipped), "unreadable": int(bad.size), "examples": examples}
