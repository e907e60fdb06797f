"""task=sample: load a trained model and its tokenizer, draw a class-conditional grid and save it as a PNG
(`samples_<key>.png` in the run folder, named by what drew it).

`python run.py task=sample run_dir=<the training run>`: model and tokenizer come from the run (varbench/runs.py);
the record names the checkpoint and the tokenizer with their sha256. An official checkpoint is built from the named
recipe: `python run.py task=sample model=var_d16 task.checkpoint=var_d16.pth tokenizer.checkpoint=vae_ch160v4096z32.pth`
(M-VAR: model=mvar_dN; AiM: model=aim_b|aim_l|aim_xl with its model.safetensors and vq_f16.pt; varbench/official.py).
A raster model (AiM) guides with a constant `task.cfg` (VAR's ramps it over scales)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from varbench.build import resolve_device
from varbench.eval.sampling import SamplingPreset, generate_images, keyed_file
from varbench.runs import load_for_task
from varbench.tokenizers.fast_decode import resolve_decode_mode
from varbench.training.checkpoints import step_of_weights
from varbench.training.loop import autocast
from varbench.utils.auto import resolve_auto
from varbench.utils.images import save_grid
from varbench.utils.log import get_logger
from varbench.utils.loggers import open_logger
from varbench.utils.records import record

log = get_logger(__name__)


def main(cfg: DictConfig) -> dict:
    """Draw a class-conditional grid with the run's model, save it as samples_<key>.png (named by what drew it:
    `keyed_file`) with its record; return its path and time."""
    device = resolve_device(cfg.device)
    run = load_for_task(cfg, device)
    cfg, tokenizer, model = run.config, run.tokenizer, run.model  # the run's config: task.precision follows it
    t = cfg.task
    classes = list(t.classes) if t.get("classes") else list(range(min(model.num_classes, 10)))
    if not all(isinstance(c, int) and 0 <= c < model.num_classes for c in classes):  # (num_classes: the null class)
        raise ValueError(f"task.classes = {classes}: expected classes in [0, {model.num_classes - 1}], the model's "
                         f"(index {model.num_classes} is the unconditional class of guidance, not a class to draw)")
    labels = torch.tensor(classes, device=device).repeat_interleave(t.per_class)
    run.hold_block_weights(t.block_weights, t.precision)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    cuda = device.type == "cuda"
    graphs = resolve_auto(t.cuda_graphs, "task.cuda_graphs", device)
    decode_mode = resolve_decode_mode(t.decode_mode, "task.decode_mode", device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with autocast(device, t.precision):  # the kernels' dtype of training (fla's DeltaNet has no fp32 chunk path)
        setting = SamplingPreset(cfg=t.cfg, top_k=t.top_k, top_p=t.top_p, more_smooth=t.more_smooth)
        images = generate_images(model, tokenizer, labels, setting, generator, t.sampler, graphs, decode_mode)
    if cuda:
        torch.cuda.synchronize(device)  # the clock stops when the GPU is done, not when the last launch returned
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    # one row per class: transpose the (class, sample) order of the batch
    grid = images.view(len(classes), t.per_class, *images.shape[1:])
    drawn_by = run.weights_key() | asdict(setting) | {
        "seed": cfg.seed, "classes": classes, "per_class": t.per_class, "sampler": t.sampler, "device": str(device),
        "precision": t.precision, "cuda_graphs": graphs, "decode_mode": decode_mode}
    path = save_grid(grid.flatten(0, 1), len(classes), keyed_file(cfg.run_dir, "samples", drawn_by))
    log.info("sample grid %s: %d classes x %d in %.1f s", path, len(classes), t.per_class, seconds)
    with open_logger(cfg, "sample") as logger:  # at the checkpoint's training step (0: a file outside a run)
        logger.log_images("samples", grid.flatten(0, 1), step_of_weights(run.checkpoint) or 0, nrow=t.per_class)
    record(Path(cfg.results_dir) / "sample.jsonl", "sample_grid", str(path), "png", config=cfg, device=device,
           seconds=seconds, images=len(labels), sampler=t.sampler, cuda_graphs=graphs, decode_mode=decode_mode,
           peak_mem_bytes=peak, **run.identity())
    return {"grid": str(path), "seconds": seconds, "images": len(labels)}
