"""Deterministic, resumable batches: one global permutation per epoch, split contiguously across ranks
(VAR's DistInfiniteBatchSampler), and the conversion of a batch into the transformer's inputs.

Shape legend: B batch, L tokens of all scales, Cv code width.
"""

from __future__ import annotations

import math

import torch


class GlobalBatches:
    """Batch b of epoch e holds items perm_e[b*G:(b+1)*G] (G global batch); rank r takes its contiguous share.
    The last batch of an epoch is filled from the start of the permutation, so every batch is full. Because the
    order depends only on (seed, epoch, batch index), a run resumed at (epoch, batch) sees the same items, and
    W processes with G/W images each see exactly the images of one process with G.

    Args:
        num_items (int): size of the data set.
        global_batch (int): images per optimizer micro-step over all ranks.
        seed (int): permutation seed.
        rank, world_size (int): this process and the number of processes.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must be divisible by the {world_size} processes")
        if num_items == 0:
            raise ValueError("the data set is empty")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = math.ceil(num_items / global_batch)

    def indices(self, epoch: int, batch: int) -> list[int]:
        """This rank's item indices for batch `batch` of epoch `epoch`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_items, generator=g)
        perm = perm.repeat(math.ceil(self.per_epoch * self.global_batch / self.num_items))
        start = batch * self.global_batch + self.rank * (self.global_batch // self.world_size)
        return perm[start:start + self.global_batch // self.world_size].tolist()


def collate(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items (x, label) of a data set into a batch."""
    items = [dataset[i] for i in indices]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.tensor([int(y) for _, y in items])


@torch.no_grad()
def transformer_inputs(tokenizer, x: torch.Tensor, from_ids: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth ids (B, L) and the teacher-forcing input (B, L - 1, Cv) from images in [-1, 1], or from
    cached ids (B, L) when `from_ids`. The tokenizer runs in fp32 outside autocast, as VAR."""
    with torch.autocast(x.device.type, enabled=False):
        ids = list(torch.split(x, tokenizer.layout.lengths, dim=1)) if from_ids else tokenizer.img_to_ids(x)
        return torch.cat(ids, dim=1), tokenizer.ids_to_var_input(ids)
