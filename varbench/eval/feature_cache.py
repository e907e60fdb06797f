"""Features that every evaluation of a grid computes alike, computed once: the reference images' Inception features,
the training images' features of the memorisation check, and the real images and tokenizer reconstructions of the
floor / recon rows. Cells of a grid run at once, so the first to ask for a key computes it under a file lock while
the others wait, then load it.

The key must name everything the tensors depend on (the feature extractor's weights, the data set, the count and,
for reconstructions, the tokenizer's weights and decode mode): a key that leaves one out would hand one cell's
features to another silently.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from varbench.utils.checkpoint import save_atomic
from varbench.utils.hashing import settings_digest


def cache_path(cache_dir, key: dict) -> Path:
    """`cache_dir/<16 hex digits of the sha256 of key as sorted JSON>.safetensors`."""
    return Path(cache_dir) / f"{settings_digest(key)}.safetensors"


def cached_tensors(cache_dir, key: dict, compute: Callable[[], dict[str, torch.Tensor]]
                   ) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors `compute()` returns for `key`, computed at most once per cache file (the key is stored in its
    metadata); returns (tensors, the cache file)."""
    if any(v in (None, "") for v in key.values()):
        raise ValueError(f"cached_tensors: every part of the cache key must be known, got {key}")
    path = cache_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not path.is_file():
            save_atomic(path, tensors={k: v.contiguous() for k, v in compute().items()},
                        metadata={k: str(v) for k, v in key.items()})
    return load_file(path), path
