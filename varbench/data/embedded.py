"""EmbeddedShapes: the embedded default data set -- procedural, class-conditional images, no download.

Every image has a global layout that names its class (a shape in a class colour scheme, placed around the centre)
and fine detail that a scale-wise model must still get right at the last scales (stripes, dots, checks, hatching,
windows, sparkles, beads, petals, a textured background and small background pebbles). Position, size, rotation,
colours and background vary per sample, so the coarse scales carry the class and the fine scales carry the sample.

Items are rendered on the fly from a per-item seed: item i of a split is a pure function of (seed, split, i), so the
data set is deterministic, needs no memory, and behaves the same in any number of DataLoader workers. Train and
val draw from different seed streams.

Shape legend: S canvas side (2 x image side: drawn supersampled, then 2x2 box-averaged for anti-aliasing),
H W image side, 3 RGB.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from varbench.data.drawing import Canvas, Pose, background
from varbench.data.shape_classes import CLASSES

# Default items per class when size_per_class is None.
DEFAULT_SIZE_PER_CLASS = {"train": 500, "val": 50}
# Seed stream per split: train and val never share an item seed.
SPLIT_STREAM = {"train": 0, "val": 1}


def pm1_tensor(img_HW3: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1] (the VAR convention, x * 2 - 1 of ToTensor).

    In NumPy on purpose: small multi-threaded torch ops in the main process cost ~10x more on a 2-core CPU."""
    x_3HW = img_HW3.transpose(2, 0, 1).astype(np.float32)
    x_3HW *= 1.0 / 127.5
    x_3HW -= 1.0
    return torch.from_numpy(x_3HW)


class EmbeddedShapes(Dataset):
    """Procedural class-conditional shapes (see the module docstring and `shape_classes.CLASSES`).

    Args:
        split (str): "train" or "val" (disjoint seed streams).
        image_size (int): pixels per side (any size >= 16; drawn at 2x and box-averaged).
        num_classes (int): the first `num_classes` classes of the catalogue (2 .. len(CLASSES)).
        size_per_class (int | None): items per class; None -> 500 for train, 50 for val.
        seed (int): base seed of the whole data set.
        transform (callable | None): maps the rendered uint8 (H, W, 3) array to the item image; default: a float
            (3, H, W) tensor in [-1, 1].

    Items: (img_3HW float in [-1, 1], label int); label = index % num_classes, so any prefix is class-balanced.
    """

    def __init__(self, split: str = "train", image_size: int = 64, num_classes: int = 10,
                 size_per_class: int | None = None, seed: int = 0, transform=None):
        if split not in SPLIT_STREAM:
            raise ValueError(f"split must be one of {sorted(SPLIT_STREAM)}, got {split!r}")
        if not 2 <= num_classes <= len(CLASSES):
            raise ValueError(f"EmbeddedShapes has {len(CLASSES)} classes; num_classes must be in "
                             f"[2, {len(CLASSES)}], got {num_classes}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        size_per_class = DEFAULT_SIZE_PER_CLASS[split] if size_per_class is None else int(size_per_class)
        if size_per_class < 1:
            raise ValueError(f"size_per_class must be >= 1, got {size_per_class}")
        self.split, self.image_size, self.num_classes = split, int(image_size), int(num_classes)
        self.size_per_class, self.seed = size_per_class, int(seed)
        self.transform = transform if transform is not None else pm1_tensor
        self.classes = [name for name, _ in CLASSES[:num_classes]]

    def __len__(self) -> int:
        return self.num_classes * self.size_per_class

    def describe(self) -> str:
        """One line that identifies the data (stored in token-cache metadata)."""
        return (f"EmbeddedShapes(split={self.split}, image_size={self.image_size}, num_classes={self.num_classes}, "
                f"size_per_class={self.size_per_class}, seed={self.seed})")

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """Item `index` as (uint8 (H, W, 3), label) before the transform."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, SPLIT_STREAM[self.split], index])
        canvas = Canvas(2 * self.image_size, rng)
        background(canvas)
        CLASSES[label][1](canvas, Pose.draw(rng))
        return canvas.image(), label

    def __getitem__(self, index: int):
        img_HW3, label = self.render(index)
        return self.transform(img_HW3), label


def grid(dataset: EmbeddedShapes, per_class: int = 8) -> np.ndarray:
    """A (num_classes * H, per_class * W, 3) uint8 mosaic: one row per class (for looking at the data)."""
    rows = []
    for label in range(dataset.num_classes):
        items = [dataset.render(label + j * dataset.num_classes)[0] for j in range(per_class)]
        rows.append(np.concatenate(items, axis=1))
    return np.concatenate(rows, axis=0)
