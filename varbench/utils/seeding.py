"""Per-item seeding of a data set's random transforms (the random crop, the flip): an item's draws depend on a key of
integers alone (e.g. seed, epoch or update, position in the batch order), never on the process that loads it, so a
batch is the same in-process or in any DataLoader worker, and again when a run resumes at it (a worker's own RNG
restarts with every loader)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def item_seed(*key: int) -> int:
    """A torch seed for `key` (non-negative integers): numpy's SeedSequence, whose output its specification fixes,
    mixes them."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def seeded_item(dataset, index: int, seed: int):
    """`dataset[index]` with its transform drawing from torch's global RNG seeded with `seed` (the caller restores
    the RNG: see `SeededItems`)."""
    torch.manual_seed(seed)
    return dataset[index]


class SeededItems(Dataset):
    """`dataset` read by (seed, index) keys (a batch sampler yields them): item `index` drawn under `seed`, the
    global RNG left as it was."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        seed, index = key
        with torch.random.fork_rng(devices=[]):
            return seeded_item(self.dataset, index, seed)
