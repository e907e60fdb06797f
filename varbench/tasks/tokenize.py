"""task=tokenize: encode the run's data set once with the frozen tokenizer into a token cache.

Writes `task.cache_dir` (default `${run_dir}/token_cache/<split>`, see varbench/data/token_cache.py) and records
the encode throughput (img/s) to `${results_dir}/tokenize.jsonl`. Images are read with `data.num_workers` workers,
each prefetching `data.prefetch_factor` batches (varbench/data/loading.py). With `task.speedup_batches > 0` it also
measures and records how much faster training batches come from the cache than from images encoded on the fly.
Trade-off the user opts into: the cache holds one center crop per image (no flip); VAR re-crops every epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from varbench.build import build_dataset, build_tokenizer, resolve_device
from varbench.data.loading import LoaderOptions, loader_options
from varbench.data.token_cache import TokenCache, write_token_cache
from varbench.eval.timing import speed_mode
from varbench.utils.records import record

OPTIONS = {"name", "split", "cache_dir", "batch_size", "shard_size", "speedup_batches"}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _batches_per_s(loader: DataLoader, step, batches: int, device) -> float:
    """Batches per second of `step(batch)` over `batches` batches of `loader`, after one warm-up batch."""
    it = iter(loader)
    step(next(it))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        step(next(it))
    _sync(device)
    return batches / (time.perf_counter() - t0)


@torch.no_grad()
def measure_cache_speedup(tokenizer, dataset, cache: TokenCache, batches: int = 20, batch_size: int = 64,
                          device="cpu", loader: LoaderOptions | None = None) -> dict:
    """Training batches/s of ground-truth ids: images loaded and encoded on the fly (VAR) vs ids read from `cache`.

    Both sides go through the same DataLoader (`loader`'s workers and prefetch; None: in-process) and end with the
    ids (B, L) on `device`; the teacher-forcing input that training builds from the ids afterwards costs the same
    either way and is left out.
    Returns {"on_the_fly_batches_per_s", "cached_batches_per_s", "speedup", "batch_size", "batches"}.
    """
    batches = min(batches, len(dataset) // batch_size - 1, len(cache) // batch_size - 1)
    if batches < 1:
        raise ValueError(f"measure_cache_speedup needs at least 2 full batches of {batch_size} items "
                         f"(data set: {len(dataset)}, cache: {len(cache)})")
    tokenizer.to(device)

    def encode(batch):
        tokenizer.encode(batch[0].to(device, non_blocking=True))

    def read(batch):
        batch[0].to(device, non_blocking=True)

    options = dict(batch_size=batch_size, shuffle=False, drop_last=True, **(loader or LoaderOptions()).kwargs())
    fly = _batches_per_s(DataLoader(dataset, **options), encode, batches, device)
    cached = _batches_per_s(DataLoader(cache, **options), read, batches, device)
    return {"on_the_fly_batches_per_s": fly, "cached_batches_per_s": cached, "speedup": cached / fly,
            "batch_size": batch_size, "batches": batches}


def task_options(cfg: DictConfig) -> dict:
    """`cfg.task` resolved, with unknown keys refused (a typo is an error, never ignored)."""
    options = OmegaConf.to_container(cfg.task, resolve=True)
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown tokenize options {unknown}; valid: {sorted(OPTIONS)}")
    return options


def main(cfg: DictConfig) -> dict:
    """Write (or resume) the cache; return the writer's summary plus cache_dir and throughput_img_s."""
    t = task_options(cfg)
    checkpoint = cfg.tokenizer.get("checkpoint")
    if not checkpoint:
        raise ValueError("task=tokenize encodes with a trained tokenizer: set tokenizer.checkpoint=<file> "
                         "(task=train_tokenizer writes one; task=main passes it on)")
    device = resolve_device(cfg.device)
    tokenizer = build_tokenizer(cfg).to(device).eval()
    dataset = build_dataset(cfg, t["split"])
    if hasattr(dataset, "set_deterministic"):  # random crops -> one center crop per image (see module docstring)
        dataset.set_deterministic()
    cache_dir, loader = Path(t["cache_dir"]), loader_options(cfg.data, device)
    summary = write_token_cache(tokenizer, dataset, cache_dir, batch_size=t["batch_size"],
                                shard_size=t["shard_size"], device=device, loader=loader,
                                split=t["split"], checkpoint=checkpoint)
    summary.update(cache_dir=str(cache_dir), throughput_img_s=None)
    results = Path(cfg.results_dir) / "tokenize.jsonl"
    if summary["encoded_items"]:  # nothing encoded (every shard already there): no speed to report
        summary["throughput_img_s"] = summary["encoded_items"] / summary["seconds"]
        record(results, "tokenize_throughput", summary["throughput_img_s"], "img/s", config=cfg, device=device,
               split=t["split"], items=summary["encoded_items"], seconds=summary["seconds"], loader=asdict(loader),
               **speed_mode(False, False, device))
    if t["speedup_batches"]:
        cache = TokenCache(cache_dir, tokenizer=tokenizer)
        speed = measure_cache_speedup(tokenizer, dataset, cache, batches=t["speedup_batches"],
                                      batch_size=t["batch_size"], device=device, loader=loader)
        record(results, "token_cache_speedup", speed["speedup"], "x", config=cfg, device=device, split=t["split"],
               loader=asdict(loader), **speed_mode(False, False, device),
               **{k: v for k, v in speed.items() if k != "speedup"})
        summary["speedup"] = speed
    return summary
