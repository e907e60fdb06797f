"""Image files the tasks write: sample grids as PNG."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(images_N3HW: torch.Tensor, rows: int, path: Path) -> Path:
    """Tile images in [0, 1] into a grid PNG with `rows` rows."""
    from torchvision.utils import save_image
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images_N3HW.float().cpu(), str(path), nrow=images_N3HW.shape[0] // rows, padding=2, pad_value=1.0)
    return path
