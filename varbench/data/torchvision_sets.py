"""TorchvisionData: small standard data sets (CIFAR-10/100, MNIST, Fashion-MNIST, SVHN, STL-10) through torchvision,
resized to the tokenizer's image size and mapped to [-1, 1].

No download unless asked (`download=True`): runs and tests must not reach the network by surprise.
Shape legend: 3 RGB, H W image side.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from varbench.data.transforms import to_pm1, to_rgb

# name -> (class count, how the split is passed: "train" flag or "split" string)
SETS = {"CIFAR10": (10, "train"), "CIFAR100": (100, "train"), "MNIST": (10, "train"), "FashionMNIST": (10, "train"),
        "SVHN": (10, "split"), "STL10": (10, "split")}


def square_transform(size: int) -> T.Compose:
    """PIL image -> float (3, size, size) in [-1, 1]: these sets are square already, so resize without a crop
    (LANCZOS, as VAR's resize)."""
    return T.Compose([T.Lambda(to_rgb), T.Resize((size, size), interpolation=InterpolationMode.LANCZOS),
                      T.ToTensor(), T.Lambda(to_pm1)])


class TorchvisionData(Dataset):
    """A torchvision data set; items (img_3HW float in [-1, 1], label int).

    Args:
        name (str): one of SETS.
        root (str | Path): torchvision root folder (e.g. holding cifar-10-batches-py/).
        split (str): "train" or "val" (val = the set's test split).
        image_size (int): output side.
        download (bool): let torchvision download missing files.
        num_classes (int | None): checked against the set's class count (ValueError when they differ).
    """

    def __init__(self, name: str = "CIFAR10", root="data", split: str = "train", image_size: int = 64,
                 download: bool = False, num_classes: int | None = None):
        if name not in SETS:
            raise ValueError(f"unknown torchvision data set {name!r}; known: {sorted(SETS)}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        count, split_arg = SETS[name]
        if num_classes is not None and int(num_classes) != count:
            raise ValueError(f"data.num_classes={num_classes} but {name} has {count} classes")
        self.name, self.root, self.split, self.image_size = name, Path(root), split, int(image_size)
        self.num_classes = count
        if split_arg == "train":
            kwargs = {"train": split == "train"}
        else:
            kwargs = {"split": "train" if split == "train" else "test"}
        try:
            self.base = getattr(datasets, name)(str(self.root), download=download,
                                                transform=square_transform(self.image_size), **kwargs)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            hint = "" if download else " Set data.download=true to let torchvision download it (needs internet)."
            raise ValueError(f"{name} not found (or corrupted) under {self.root}.{hint} torchvision said: {e}") from e
        self.classes = list(getattr(self.base, "classes", [str(k) for k in range(count)]))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        img_3HW, label = self.base[index]
        return img_3HW, int(label)

    def describe(self) -> str:
        """One line that identifies the data (stored in token-cache metadata)."""
        return f"TorchvisionData(name={self.name}, root={self.root}, split={self.split}, image_size={self.image_size})"
