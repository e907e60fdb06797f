"""Token cache: encode a data set ONCE with a frozen tokenizer, then train the AR model from the stored ids.

VAR encodes every batch on the fly with the frozen VQ-VAE (the encoder costs about as much as a small AR model).
A cache removes that cost, at a price the user opts into: it stores ONE deterministic crop per image (center crop,
no flip), whereas VAR re-draws a random crop every epoch. The writer refuses data sets with random transforms;
call `dataset.set_deterministic()` first (task=tokenize does). Any tokenizer with `encode(images) -> ids (B, L)`
writes one: VAR's VQ-VAE (every scale in sequence order; one scale for raster models) or AiM's VQ-F16 (its row-major
ids; `patch_nums` is then [latent side]).

On disk, `out_dir/`:
  meta.json                    patch_nums, vocab_size, seq_len, num_items, shard_size, ids dtype, tokenizer
                               fingerprint (+ checkpoint path and sha256), data set description, split
  shard_{i:05d}.safetensors    ids (n, L) int16 when vocab_size <= 32767 else int32, labels (n,) int64
Shards are written atomically (temp file + rename), so an existing shard is complete: a rerun skips it (resume).

Shape legend: N items, L tokens of all scales (sum of p_k^2), B batch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from varbench.data.loading import LoaderOptions
from varbench.data.transforms import is_deterministic
from varbench.utils.checkpoint import save_atomic
from varbench.utils.hashing import file_sha256, weights_sha256
from varbench.utils.log import get_logger, progress_bar
from varbench.utils.run_spec import write_json_atomic

log = get_logger(__name__)

FORMAT = 1
META = "meta.json"
# keys that must agree between an existing cache and a new write (else it is another cache: refuse to mix)
IDENTITY = ("format", "patch_nums", "vocab_size", "seq_len", "num_items", "shard_size", "ids_dtype",
            "tokenizer_fingerprint", "dataset", "split")


def shard_path(out_dir: Path, i: int) -> Path:
    return Path(out_dir) / f"shard_{i:05d}.safetensors"


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """First 16 hex digits of the sha256 over the state dict (`weights_sha256`)."""
    return weights_sha256(tokenizer)[:16]


def ids_dtype(vocab_size: int) -> torch.dtype:
    """int16 halves the cache when every id fits (vocab <= 32767, e.g. VAR's 4096), else int32."""
    return torch.int16 if vocab_size <= 32767 else torch.int32


def _shard_rows(path: Path) -> int | None:
    """Rows of a shard file, read from its header only (None when absent)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("ids").get_shape()[0]


def token_patch_nums(tokenizer, dataset) -> list[int]:
    """The scale sides of the ids `tokenizer` writes for `dataset`: a VQ-VAE's `patch_nums` (one for a single-scale
    one), or for a tokenizer without scales (VQ-F16, resolution-free) the one side its images' latent has."""
    if hasattr(tokenizer, "patch_nums"):
        return list(tokenizer.patch_nums)
    return [int(torch.as_tensor(dataset[0][0]).shape[-1]) // tokenizer.downsample]


def build_meta(tokenizer, dataset, shard_size: int, split, description, checkpoint) -> dict:
    """The meta.json of a cache of `dataset` encoded by `tokenizer`."""
    describe = getattr(dataset, "describe", None)
    patch_nums = token_patch_nums(tokenizer, dataset)
    return {"format": FORMAT, "patch_nums": patch_nums, "vocab_size": int(tokenizer.vocab_size),
            "seq_len": int(sum(p * p for p in patch_nums)), "num_items": len(dataset),
            "shard_size": int(shard_size), "ids_dtype": str(ids_dtype(tokenizer.vocab_size)).replace("torch.", ""),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "tokenizer_checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
            "dataset": description or (describe() if describe else type(dataset).__name__),
            "split": split or getattr(dataset, "split", None), "num_classes": getattr(dataset, "num_classes", None),
            "crop": "one deterministic crop per image (center crop, no flip)"}


def _check_same_cache(out_dir: Path, meta: dict) -> None:
    old = json.loads((out_dir / META).read_text())
    diff = {k: (old.get(k), meta[k]) for k in IDENTITY if old.get(k) != meta[k]}
    if diff:
        raise ValueError(f"{out_dir} already holds another token cache (differs in {diff}, (old, new)); "
                         f"delete it or pick another cache_dir")


def shard_batches(shard: range, batch_size: int) -> list[list[int]]:
    """The item indices of one shard in batches of `batch_size` (the last one shorter); a batch never spans shards."""
    return [list(shard[i:i + batch_size]) for i in range(0, len(shard), batch_size)]


@torch.no_grad()
def _encode(tokenizer, batches, count: int, device, dtype, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n, L) dtype, labels (n,) int64) of the next `count` batches of the loader iterator `batches`; `bar`
    counts the images."""
    ids, labels = [], []
    for _ in range(count):
        img_B3HW, label_B = next(batches)
        bar.update(img_B3HW.shape[0])
        ids_BL = tokenizer.encode(img_B3HW.to(device, non_blocking=True))  # every scale in sequence order
        ids.append(ids_BL.to("cpu", dtype))
        labels.append(torch.as_tensor(label_B, dtype=torch.int64))
    return torch.cat(ids), torch.cat(labels)


def write_token_cache(tokenizer, dataset: Dataset, out_dir, batch_size: int = 64, shard_size: int = 4096,
                      device="cpu", loader: LoaderOptions | None = None, *, split: str | None = None,
                      description: str | None = None, checkpoint=None) -> dict:
    """Encode `dataset` with the frozen `tokenizer` into shards under `out_dir` (resumable; see module docstring).

    The tokenizer is moved to `device` and must be in eval mode. Images are read by one DataLoader over every shard
    still to write, with `loader`'s workers and prefetch (None: in-process). `checkpoint` (its weight file,
    optional) is hashed into meta.json. Returns {"num_items", "encoded_items", "seconds", "shards_written",
    "shards_skipped", "out_dir"}; seconds covers loading + encoding of the shards written by this call.
    """
    transform = getattr(dataset, "transform", None)
    if transform is not None and not is_deterministic(transform):
        raise ValueError("the data set applies a random transform, but a token cache stores one crop per image: "
                         "call dataset.set_deterministic() first (center crop, no flip)")
    if tokenizer.training:
        raise ValueError("the tokenizer is in training mode; a cache must be written with a frozen, eval() tokenizer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = build_meta(tokenizer, dataset, shard_size, split, description, checkpoint)
    if (out_dir / META).is_file():
        _check_same_cache(out_dir, meta)
    write_json_atomic(out_dir / META, meta)
    tokenizer.to(device)
    dtype, n = ids_dtype(tokenizer.vocab_size), len(dataset)
    shards = [(i, range(i * shard_size, min((i + 1) * shard_size, n))) for i in range(math.ceil(n / shard_size))]
    todo = [(i, shard) for i, shard in shards if _shard_rows(shard_path(out_dir, i)) != len(shard)]
    summary = {"num_items": n, "encoded_items": 0, "seconds": 0.0, "shards_written": 0,
               "shards_skipped": len(shards) - len(todo), "out_dir": str(out_dir)}
    if not todo:
        return summary
    plan = [shard_batches(shard, batch_size) for _, shard in todo]
    bar = progress_bar(desc="tokenize", total=n, initial=n - sum(len(shard) for _, shard in todo), unit="img")
    t0 = time.perf_counter()
    batches = iter(DataLoader(dataset, batch_sampler=[b for shard in plan for b in shard],
                              **(loader or LoaderOptions()).kwargs()))
    for (i, shard), shard_plan in zip(todo, plan):
        ids_NL, labels_N = _encode(tokenizer, batches, len(shard_plan), device, dtype, bar)
        save_atomic(shard_path(out_dir, i), tensors={"ids": ids_NL, "labels": labels_N})
        summary["encoded_items"] += len(shard)
        summary["shards_written"] += 1
    bar.close()
    summary["seconds"] = time.perf_counter() - t0
    log.info("token cache %s: %d of %d images encoded in %.1f s (%d shards written, %d already there)", out_dir,
             summary["encoded_items"], n, summary["seconds"], summary["shards_written"], summary["shards_skipped"])
    return summary


class TokenCache(Dataset):
    """A written token cache as a data set: items (ids_L int64, label int). All shards are loaded into memory
    (N * L * 2 bytes for int16: 1.7 GB for ImageNet-1k at VAR's 680 tokens).

    Args:
        out_dir: the cache folder.
        tokenizer: when given, the cache must have been written by these weights and scales (else ValueError).
        fingerprint (str | None): alternatively, the expected `tokenizer_fingerprint`.
    """

    def __init__(self, out_dir, tokenizer=None, fingerprint: str | None = None):
        self.out_dir = Path(out_dir)
        if not (self.out_dir / META).is_file():
            raise ValueError(f"no token cache at {self.out_dir} ({META} missing); write one with task=tokenize")
        self.meta = json.loads((self.out_dir / META).read_text())
        if tokenizer is not None:
            fingerprint = tokenizer_fingerprint(tokenizer)
            if hasattr(tokenizer, "patch_nums") and list(tokenizer.patch_nums) != self.meta["patch_nums"]:
                raise ValueError(f"token cache {self.out_dir} has patch_nums {self.meta['patch_nums']}, the "
                                 f"tokenizer {list(tokenizer.patch_nums)}")
        if fingerprint is not None and fingerprint != self.meta["tokenizer_fingerprint"]:
            raise ValueError(f"token cache {self.out_dir} was made with another tokenizer (fingerprint "
                             f"{self.meta['tokenizer_fingerprint']}, checkpoint {self.meta['tokenizer_checkpoint']}); "
                             f"this run's tokenizer has fingerprint {fingerprint}: re-run task=tokenize")
        self.patch_nums, self.vocab_size = tuple(self.meta["patch_nums"]), self.meta["vocab_size"]
        self.num_classes, self.split = self.meta.get("num_classes"), self.meta.get("split")
        self.ids_NL, self.labels_N = self._load()

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file
        n, size = self.meta["num_items"], self.meta["shard_size"]
        paths = [shard_path(self.out_dir, i) for i in range(math.ceil(n / size))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"token cache {self.out_dir} is incomplete: missing {missing[:5]} ({len(missing)} of "
                             f"{len(paths)} shards); re-run task=tokenize to resume it")
        shards = [load_file(str(p)) for p in paths]
        ids, labels = torch.cat([s["ids"] for s in shards]), torch.cat([s["labels"] for s in shards])
        if ids.shape != (n, self.meta["seq_len"]) or labels.shape != (n,):
            raise ValueError(f"token cache {self.out_dir}: shards hold ids {tuple(ids.shape)}, labels "
                             f"{tuple(labels.shape)}; meta.json says ({n}, {self.meta['seq_len']})")
        return ids, labels

    def __len__(self) -> int:
        return self.ids_NL.shape[0]

    def __getitem__(self, index: int):
        return self.ids_NL[index].long(), int(self.labels_N[index])
