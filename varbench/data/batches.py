"""Deterministic, resumable batches: one global permutation per epoch, split contiguously across ranks
(VAR's DistInfiniteBatchSampler), read through a DataLoader with workers and prefetch, and the conversion of a batch
into the transformer's inputs.

Every random draw of an item's transform (the random crop, the flip) is seeded by (seed, epoch, the item's position in
the global batch order), so a batch is a function of (seed, batch index, rank share) alone: the same in-process or in
any worker, the same when a run resumes at that batch, and one image gets the same crop in W processes as in one.

Shape legend: B batch, L tokens of all scales, Cv code width.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from varbench.data.loading import LoaderOptions
from varbench.utils.seeding import item_seed, seeded_item


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
        if seed < 0:  # the transform seeds mix it through numpy's SeedSequence, which takes non-negative entropy
            raise ValueError(f"seed={seed}: valid range 0 .. 2**63 - 1")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = math.ceil(num_items / global_batch)

    def indices(self, epoch: int, batch: int) -> list[int]:
        """This rank's item indices for batch `batch` of epoch `epoch`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_items, generator=g)
        perm = perm.repeat(math.ceil(self.per_epoch * self.global_batch / self.num_items))
        start = self.first_position(batch)
        return perm[start:start + self.global_batch // self.world_size].tolist()

    def first_position(self, batch: int) -> int:
        """Position in the epoch's global order of this rank's first item of batch `batch`."""
        return batch * self.global_batch + self.rank * (self.global_batch // self.world_size)

    def item_seeds(self, epoch: int, batch: int) -> list[int]:
        """The transform seed of each of this rank's items of the batch (see the module docstring); numpy's
        SeedSequence, whose output is fixed by its specification, mixes (seed, epoch, position)."""
        start = self.first_position(batch)
        return [item_seed(self.seed, epoch, p) for p in range(start, start + self.global_batch // self.world_size)]

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, batch) of the `index`-th micro-batch of the run."""
        return divmod(index, self.per_epoch)


class BatchStream(Dataset):
    """The run's micro-batches as a map-style data set: item `index` is the collated `index`-th micro-batch of this
    rank, so DataLoader workers build whole batches, in any number, and the loader hands them back in order.

    Args:
        dataset (Dataset): items (x, label).
        batches (GlobalBatches): the batch order.
    """

    def __init__(self, dataset, batches: GlobalBatches):
        self.dataset, self.batches = dataset, batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch = self.batches.locate(index)
        return collate(self.dataset, self.batches.indices(epoch, batch), self.batches.item_seeds(epoch, batch))


def batch_loader(dataset, batches: GlobalBatches, start: int, stop: int, options: LoaderOptions) -> DataLoader:
    """Micro-batches `start` .. `stop - 1` of the run (x, labels), built by `options.num_workers` workers, each keeping
    `options.prefetch_factor` ready. The loader draws its workers' base seed from a generator of its own: the global
    RNG, checkpointed for exact resume, is never touched by making the loader."""
    return DataLoader(BatchStream(dataset, batches), batch_size=None, sampler=range(start, stop),
                      generator=torch.Generator(), **options.kwargs())


def collate(dataset, indices: list[int], seeds: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items (x, label) of a data set into a batch; with `seeds`, item i's transform draws from torch's global
    RNG seeded with seeds[i], which is restored afterwards (the caller's random stream is left as it was)."""
    if seeds is None:
        items = [dataset[i] for i in indices]
    else:
        with torch.random.fork_rng(devices=[]):
            items = [seeded_item(dataset, i, seed) for i, seed in zip(indices, seeds, strict=True)]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.tensor([int(y) for _, y in items])


@torch.no_grad()
def transformer_inputs(tokenizer, x: torch.Tensor, from_ids: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth ids (B, L) and the teacher-forcing input (B, L - 1, Cv) from images in [-1, 1], or from
    cached ids (B, L) when `from_ids`. The tokenizer runs in fp32 outside autocast, as VAR."""
    with torch.autocast(x.device.type, enabled=False):
        ids = list(torch.split(x, tokenizer.layout.lengths, dim=1)) if from_ids else tokenizer.img_to_ids(x)
        return torch.cat(ids, dim=1), tokenizer.ids_to_var_input(ids)
