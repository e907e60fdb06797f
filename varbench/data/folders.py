"""ImageFolderData: ImageNet-style class folders with VAR's preprocessing; bad files are dropped when indexed.

Layout: `root/train/<class>/**/*.<image ext>` and `root/val/<class>/**/*` (class = sub-folder name, sorted, as
torchvision's DatasetFolder). When neither `train/` nor `val/` exists but class folders sit directly under root,
root serves every split (with a warning: train and val are then the same images).

Indexing (at construction) reads every image's header, never its pixels unless `verify`:
- a file PIL cannot identify (or, with `verify`, cannot decode) is dropped: the data set's items are the readable
  images only, so an index never shifts to another image (or another class). The dropped files are counted and
  listed by `report()` and in `data_index_<split>.json` (in `index_dir`: the run dir under Hydra);
- an image above `max_pixels` (default PIL's decompression-bomb limit, 89.5 Mpixel) is an error naming the path:
  a giant image would be decoded at every use;
- a folder reached twice (a symlink loop, or a link to a folder already indexed) and one image reachable from two
  class folders are errors naming both paths: through a link, one class's images would carry another's label.
An image that passed the header check but fails to decode later is an error naming the path (never replaced).
Shape legend: 3 RGB, H W image side.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from varbench.data.transforms import to_rgb, var_transform

log = logging.getLogger(__name__)
LAYOUT = ("expected ImageNet-style folders: root/train/<class>/<images> and root/val/<class>/<images>, "
          "or root/<class>/<images> for a single split")
# What PIL raises on a truncated, corrupt or hostile file (UnidentifiedImageError is an OSError; some broken
# PNG/JPEG headers raise SyntaxError or ValueError; DecompressionBombError is its own class).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
PIL_BOMB_LIMIT = Image.MAX_IMAGE_PIXELS  # 89,478,485: above it PIL warns, above twice that it refuses to open
MAX_EXAMPLES = 5


class ImageTooLarge(ValueError):
    """An image above `data.max_pixels`: refused, never dropped silently."""


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


def walk_class(folder: Path, seen_dirs: dict[str, str]) -> list[str]:
    """Every file under a class folder (links followed, sorted), refusing a folder reached twice."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            raise ValueError(f"{dirpath} is {seen_dirs[real]} again (a symlink loop, or a link to a folder already "
                             "indexed): remove the link")
        seen_dirs[real] = dirpath
        dirnames.sort()
        files += [os.path.join(dirpath, f) for f in sorted(filenames)]
    return files


def scan(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """(classes, candidate samples [(path, label)], skipped non-image paths) of a folder of class folders."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class folders; {LAYOUT}")
    samples, skipped, empty, seen_dirs, owner = [], [], [], {}, {}
    for label, name in enumerate(classes):
        found = 0
        for path in walk_class(folder / name, seen_dirs):
            if not path.lower().endswith(IMG_EXTENSIONS):
                skipped.append(path)
                continue
            real = os.path.realpath(path)
            if real in owner:
                raise ValueError(f"{path} and {owner[real]} are one image (a link): it would be indexed twice")
            owner[real] = path
            samples.append((path, label))
            found += 1
        if not found:
            empty.append(name)
    if empty:
        raise ValueError(f"{folder}: class folders without any image ({', '.join(IMG_EXTENSIONS)}): {empty[:10]}"
                         f"{' ...' if len(empty) > 10 else ''}; remove them or add images")
    return classes, samples, skipped


def check_image(path: str, max_pixels: int, verify: bool) -> None:
    """Read the header (and with `verify` every pixel); one of DECODE_ERRORS when unreadable, ImageTooLarge when
    the image is above `max_pixels`."""
    try:
        with warnings.catch_warnings():  # PIL's warning above its limit: the check below decides, with the path
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{path}: {err}; shrink or remove it") from err
    with opened as img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"{path} is {w}x{h} = {w * h / 1e6:.1f} Mpixel, above data.max_pixels={max_pixels} "
                             f"({max_pixels / 1e6:.1f} Mpixel): shrink it, remove it or raise data.max_pixels "
                             f"(at most {2 * PIL_BOMB_LIMIT}, PIL's hard limit)")
        if verify:
            to_rgb(img)


class ImageFolderData(Dataset):
    """Class folders with VAR's transform; items (img_3HW float in [-1, 1], label int).

    Args:
        root (str | Path): data root (see the module docstring for the layout).
        split (str): "train" or "val".
        image_size (int): output side (resize shorter side to round(1.125 * size), then crop).
        hflip (bool): random horizontal flip for train (VAR: off).
        num_classes (int | None): the class count the model is built for; a ValueError when the folders disagree.
        crop (str | None): "random" / "center" override (None: random for train, center for val).
        max_pixels (int, Optional): largest image (width x height) accepted, 1 .. 2 x 89,478,485.
            Default: 89,478,485 (PIL's decompression-bomb limit).
        verify (bool, Optional): decode every image when indexing, so that a file with a good header but broken
            pixels is dropped too (slow on large sets). Default: False.
        index_dir (str | Path | None, Optional): where `data_index_<split>.json` goes; None: the run dir when Hydra
            runs the job, else nowhere (`report()` still lists everything). Default: None.
    """

    def __init__(self, root, split: str = "train", image_size: int = 256, hflip: bool = False,
                 num_classes: int | None = None, crop: str | None = None, max_pixels: int = PIL_BOMB_LIMIT,
                 verify: bool = False, index_dir=None):
        if not isinstance(max_pixels, int) or not 1 <= max_pixels <= 2 * PIL_BOMB_LIMIT:
            raise ValueError(f"data.max_pixels={max_pixels!r}: valid range 1 .. {2 * PIL_BOMB_LIMIT} (PIL refuses "
                             "larger images)")
        self.root, self.split, self.image_size, self.hflip = Path(root), split, int(image_size), hflip
        self.max_pixels, self.verify = max_pixels, bool(verify)
        self.folder = split_folder(self.root, split)
        self.classes, candidates, self.skipped = scan(self.folder)
        self.num_classes = len(self.classes)
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {self.folder} has {self.num_classes} class folders "
                             f"({self.classes[:5]}{' ...' if self.num_classes > 5 else ''}); set data.num_classes="
                             f"{self.num_classes}")
        self.samples, self.dropped = self._index(candidates)
        self.transform = var_transform(self.image_size, split, hflip=hflip, crop=crop)
        self._write_index(index_dir)

    def _index(self, candidates: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[dict]]:
        samples, dropped = [], []
        for path, label in candidates:
            try:
                check_image(path, self.max_pixels, self.verify)
            except ImageTooLarge:
                raise
            except DECODE_ERRORS as err:
                dropped.append({"path": path, "label": label, "error": f"{type(err).__name__}: {err}"})
                continue
            samples.append((path, label))
        if not samples:
            raise ValueError(f"no readable image in {self.folder} ({len(candidates)} image files, all unreadable, "
                             f"e.g. {dropped[:2]})")
        if dropped or self.skipped:
            log.warning("%s: dropped %d unreadable images and skipped %d non-image files, e.g. %s",
                        self.folder, len(dropped), len(self.skipped), [d["path"] for d in dropped[:3]])
        return samples, dropped

    def _write_index(self, index_dir) -> None:
        if index_dir is None:
            from hydra.core.hydra_config import HydraConfig
            if not HydraConfig.initialized():
                return
            index_dir = HydraConfig.get().runtime.output_dir
        path = Path(index_dir) / f"data_index_{self.split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"folder": str(self.folder), "split": self.split, **self.report(full=True)},
                                   indent=1))
        self.index_file = path

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        """One line that identifies the data (stored in token-cache metadata, and as the `reference` of every
        evaluation record against it: a folder without train/ and val/ says its split is the training images)."""
        split = self.split if self.folder != self.root else f"{self.split} (the train images: no train/ or val/)"
        return (f"ImageFolderData(folder={self.folder}, split={split}, image_size={self.image_size}, "
                f"num_items={len(self)}, num_classes={self.num_classes})")

    def set_deterministic(self) -> "ImageFolderData":
        """Center crop and no flip for every split: one fixed crop per image (what a token cache stores)."""
        self.transform = var_transform(self.image_size, self.split, hflip=False, crop="center")
        return self

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                rgb = to_rgb(img)  # forces the full decode here
        except DECODE_ERRORS as err:
            raise RuntimeError(f"{path} passed the index's header check but does not decode ({type(err).__name__}: "
                               f"{err}); remove it, or index with data.verify=true to drop such files") from err
        return self.transform(rgb), label

    def report(self, full: bool = False) -> dict:
        """{"indexed", "unreadable", "skipped_non_image", "max_pixels", "verify", "examples"}; with `full`, also
        "dropped" (every unreadable file: path, label, error) and "skipped" (every non-image path)."""
        examples = [f"{p}: not an image file (skipped)" for p in self.skipped[:MAX_EXAMPLES]]
        examples += [f"{d['path']}: unreadable ({d['error']}), dropped" for d in self.dropped[:MAX_EXAMPLES]]
        out = {"indexed": len(self.samples), "unreadable": len(self.dropped), "skipped_non_image": len(self.skipped),
               "max_pixels": self.max_pixels, "verify": self.verify, "examples": examples}
        return {**out, "dropped": self.dropped, "skipped": self.skipped} if full else out
