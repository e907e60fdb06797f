"""task=train: train the scale-wise AR model of the config (tokenizer frozen) on images or on a token cache.

Every checkpoint carries the run spec (varbench/runs.py): the architecture and the tokenizer's path and sha256, so
task=sample / task=evaluate / varbench.load rebuild exactly this model from the run directory alone."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from varbench.build import build_dataset, build_model, build_tokenizer, resolve_device
from varbench.eval.flops import model_flops
from varbench.runs import describe_run, training_tokenizer_file
from varbench.training.loop import train_ar
from varbench.utils.dist import init_distributed
from varbench.utils.records import record


def main(cfg: DictConfig) -> dict:
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)  # every process builds the same weights
    tokenizer = build_tokenizer(cfg).to(device)
    model = build_model(cfg).to(device)
    tokenizer_file = training_tokenizer_file(cfg, tokenizer, write=info.is_main)
    spec = describe_run(cfg, tokenizer_file) if info.is_main else None  # written into every checkpoint
    torch.manual_seed(cfg.seed * info.world_size + info.rank)  # then each draws its own dropout / crops (VAR)
    cache = cfg.train.get("token_cache")
    if cache:
        from varbench.data.token_cache import TokenCache, tokenizer_fingerprint
        dataset = TokenCache(cache, fingerprint=tokenizer_fingerprint(tokenizer))
    else:
        dataset = build_dataset(cfg, "train")
    nll_sets = {split: build_dataset(cfg, split) for split in ("val", "train")} if cfg.train.nll_every else {}
    summary = train_ar(model, tokenizer, dataset, cfg, device, info, from_ids=bool(cache), nll_sets=nll_sets,
                       spec=spec)
    summary.update(params=model.num_params(), fwd_flops_per_image=model_flops(model)["total"],
                   peak_mem_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                   checkpoint=str(Path(cfg.run_dir) / "checkpoints"),
                   backends={"mixer": model.mixer_backend,
                             "intra": getattr(getattr(model.blocks[0], "intra", None), "backend", None)})
    if summary["interrupted"]:
        raise SystemExit(f"interrupted by {summary['interrupted']} at step {summary['steps']}; the checkpoint is "
                         f"saved: run the same command (same run_dir) to resume exactly")
    if summary["images_per_s"] == 0:  # resumed at its last step: this call trained nothing, so it measures nothing
        print(f"[train] {cfg.run_dir} is already trained to step {summary['steps']}: nothing recorded")
        return summary
    if info.is_main:
        record(Path(cfg.results_dir) / "train.jsonl", "train_summary", summary["final_loss"], "nats/token", config=cfg,
               device=device, **summary)
    return summary
