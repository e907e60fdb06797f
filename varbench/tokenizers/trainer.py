"""Train VAR's multi-scale VQ-VAE from scratch (VAR never released its tokenizer training).

One update: recon, vq = vae(img) (VAR's training forward: straight-through f_hat, vq loss = mean over scales of
beta * MSE(f_hat.detach(), f) + MSE(f_hat, f.detach())); loss = l1 * |recon - img| + l2 * (recon - img)^2
[+ perceptual * LPIPS] + vq [+ adv * lambda * hinge generator loss]. L1 + L2 together: L2 is what PSNR measures,
L1 weighs small errors more (less blur); in a one-seed sweep dropping either collapsed the codebook. (taming uses
L1 + LPIPS; LPIPS needs weights on disk, so it is opt-in.)
A PatchGAN (hinge) joins after `adv_start` updates, with taming's adaptive lambda when `adaptive_adv`.

Codebook: before the first update every code moves onto a random vector that the code search sees on the first
batch (`data_init_codebook`; VAR's N(0, 1) init leaves most codes far from the encoder's outputs). Dead-code
restart: every `dead_code_every` updates, a code whose hit share (the model's hit EMA
`ema_vocab_hit_SV`, ~100-update window, summed over scales) is below `dead_code_threshold` times the uniform share
1/V is moved onto a random vector that the code search saw on the current batch (an area-downsampled residual of
some scale; the encoder latent itself at scale 0), and its Adam moments are zeroed.

Files in `out_dir`: `tokenizer.safetensors` (official key names: `load_official_vqvae` reads it), `train_state.pt`
(weights + optimizer + step + RNG, loadable with weights_only=True; a run finding it resumes exactly). Losses,
learning rate, codebook usage and val PSNR / SSIM go to the experiment logger the caller opens (varbench/utils/
loggers.py), status lines to the log (`varbench.tokenizers.trainer`).

Shape legend: B batch, 3 RGB, H W image side, C latent channels, K scales, V vocabulary size, D restarted codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from varbench.tokenizers.losses import evaluate_tokenizer
from varbench.tokenizers.update import TrainingParts, TrainOptions, train_step
from varbench.utils.checkpoint import load_object, remove_stale_temps, save_atomic
from varbench.utils.hashing import file_id
from varbench.utils.log import get_logger, progress_bar
from varbench.utils.loggers import ExperimentLogger
from varbench.utils.records import record
from varbench.utils.seeding import SeededItems, item_seed

log = get_logger(__name__)

WEIGHTS, STATE = "tokenizer.safetensors", "train_state.pt"


class StepBatches:
    """The (transform seed, dataset index) keys of updates start..steps-1 (`SeededItems` reads them), one list per
    update: one stream of per-epoch permutations (epoch e drawn from seed and e) cut into batches (a batch may
    straddle two epochs), each item's transform seeded by (seed, update, position). Update s always reads the same
    items, cropped and flipped alike, so a resumed run reads exactly the batches the uninterrupted run would have
    read, with DataLoader workers too."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int):
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start, steps

    def __len__(self) -> int:
        return self.steps - self.start

    def epoch_perm(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()

    def __iter__(self):
        pos, epoch, perm = self.start * self.batch_size, -1, []
        for update in range(self.start, self.steps):
            out = []
            while len(out) < self.batch_size:
                e, i = divmod(pos, self.n)
                if e != epoch:
                    epoch, perm = e, self.epoch_perm(e)
                take = min(self.batch_size - len(out), self.n - i)
                out += perm[i:i + take]
                pos += take
            yield [(item_seed(self.seed, update, p), index) for p, index in enumerate(out)]


def train_tokenizer(vae, train_set, *, device, out_dir, val_set=None, results_path=None, config=None,
                    open_logger: Callable[[int], ExperimentLogger] | None = None, **options) -> dict:
    """Train `vae` (a trainable MultiScaleVQVAE) on a Dataset of (image (3, H, W) in [-1, 1], label).

    `options` are TrainOptions fields. Resumes from `out_dir/train_state.pt` when present. Evaluates on `val_set`
    (every `eval_every` updates and at the end) and records psnr/ssim/codebook usage to `results_path`.
    `open_logger(first_update)` gives the experiment logger (e.g. varbench.utils.loggers.open_logger for the
    phase; the first update is that of a resumed run); None: no experiment logger.
    Returns a summary: step, psnr, ssim, usage, usage_total, checkpoint, train_time_s, losses.
    """
    opt, device, out_dir = TrainOptions(**options), torch.device(device), Path(out_dir)
    if (out_dir / WEIGHTS).exists() and not (out_dir / STATE).exists():
        raise ValueError(f"{out_dir} holds {WEIGHTS} but no {STATE}: cannot resume it; use an empty out_dir")
    p = TrainingParts(vae, opt, device)
    remove_stale_temps(out_dir)  # a killed run's half-written state files
    start = p.load(load_object(out_dir / STATE), out_dir / STATE) if (out_dir / STATE).exists() else 0
    if start == 0:
        torch.manual_seed(opt.seed)
    else:  # the state is the truth: a kill between writing it and the weights left older weights (or none) beside it
        save_atomic(out_dir / WEIGHTS, tensors=p.vae.state_dict())
    writer = open_logger(start) if open_logger is not None else ExperimentLogger()
    log.info("training the tokenizer (%s parameters) from update %d to %d",
             f"{sum(t.numel() for t in vae.parameters()):,}", start, opt.steps)
    with writer:  # closed (what it has flushed) however training ends, the NaN guard included
        t0 = time.perf_counter()
        terms = _updates(p, train_set, device, out_dir, start, writer, val_set, results_path, config)
        summary = {"step": opt.steps, "checkpoint": str(out_dir / WEIGHTS), "train_time_s": time.perf_counter() - t0,
                   "resumed_from": start, "losses": {k: float(v.detach()) for k, v in terms.items()}}
        final = {"tokenizer_id": file_id(out_dir / WEIGHTS)}  # the weights written last: what the cells will use
        if results_path is not None and opt.steps > start:
            record(results_path, "tokenizer_train_time", summary["train_time_s"], "s", config=config, device=device,
                   step=opt.steps, split="train", resumed_from=start, **final)
        if val_set is not None:
            summary.update(_evaluate(p, val_set, opt, device, writer, opt.steps, results_path, config, **final))
    log.info("tokenizer trained to update %d in %.1f s: %s", opt.steps, summary["train_time_s"], summary["checkpoint"])
    return summary


def _updates(p: TrainingParts, train_set, device, out_dir: Path, start: int, writer: ExperimentLogger, val_set,
             results_path, config) -> dict:
    """Updates start+1 .. steps with their logging, checkpoints and periodic evaluations; the last update's terms."""
    opt = p.opt
    last_ckpt = f"{out_dir / STATE} (update {start})" if start else "none written yet"
    sampler = StepBatches(len(train_set), opt.batch_size, opt.seed, start, opt.steps)
    # its own generator: a loader draws a worker base seed when iterated, which must not consume the global RNG
    loader = iter(DataLoader(SeededItems(train_set), batch_sampler=sampler, num_workers=opt.num_workers,
                             generator=torch.Generator().manual_seed(opt.seed)))
    terms = {}
    with progress_bar(desc="tokenizer", total=opt.steps, initial=start, enabled=opt.progress) as bar:
        for step in range(start + 1, opt.steps + 1):  # `step` = the update being made (1-based)
            img = next(loader)[0].to(device, non_blocking=True)
            terms = train_step(p, img, step, last_ckpt)
            bar.update(1)
            if step % opt.log_every == 0 or step == opt.steps:
                _log(writer, bar, p, terms, step, img.shape[0])
            if step % opt.ckpt_every == 0 or step == opt.steps:
                save_atomic(out_dir / STATE, obj=p.state(step))  # the resume file first (a resume rewrites the
                # weights from it): it alone must be consistent
                save_atomic(out_dir / WEIGHTS, tensors=p.vae.state_dict())
                last_ckpt = f"{out_dir / STATE} (update {step})"
            if val_set is not None and opt.eval_every and step % opt.eval_every == 0 and step != opt.steps:
                _evaluate(p, val_set, opt, device, writer, step, results_path, config)
    return terms


def _log(writer: ExperimentLogger, bar, p: TrainingParts, terms: dict, step: int, batch: int) -> None:
    """Loss terms to the progress bar, the log and the experiment logger; usage per scale by the official margin
    (8% of uniform)."""
    vals = {k: float(v.detach()) for k, v in terms.items()}
    shown = {k: f"{vals[k]:.4f}" for k in ("l1", "l2", "vq") if k in vals}
    bar.set_postfix(shown)
    log.info("update %d/%d %s", step, p.opt.steps, " ".join(f"{k} {v}" for k, v in shown.items()))
    side = p.vae.patch_nums[-1]
    usage = {f"usage_train/scale{k}": u / 100 for k, u in enumerate(p.vae.quantize.usages(batch * side * side))}
    writer.log_scalars(step, {**{f"train/{k}": v for k, v in vals.items()}, **usage,
                              "train/lr": p.optim.param_groups[0]["lr"]})


def _evaluate(p: TrainingParts, val_set, opt: TrainOptions, device, writer: ExperimentLogger, step: int, results_path,
              config, **fields) -> dict:
    """evaluate_tokenizer + the log + the experiment logger + one record per metric (with `fields`)."""
    ev = evaluate_tokenizer(p.vae, val_set, batch_size=opt.eval_batch_size, device=device)
    log.info("update %d: val psnr %.2f dB, ssim %.3f, codebook usage %.1f%%", step, ev["psnr"], ev["ssim"],
             100 * ev["usage_total"])
    writer.log_scalars(step, {"val/psnr": ev["psnr"], "val/ssim": ev["ssim"],
                              **{f"usage_val/scale{k}": u for k, u in enumerate(ev["usage"])}})
    if results_path is not None:
        rows = (("psnr", ev["psnr"], "dB", {}), ("ssim", ev["ssim"], "1", {}),
                ("codebook_usage", ev["usage"], "fraction", {"patch_nums": list(p.vae.patch_nums)}),
                ("codebook_usage_total", ev["usage_total"], "fraction", {}))
        for metric, value, unit, extra in rows:
            record(results_path, metric, value, unit, config=config, device=device, step=step, split="val", **extra,
                   **fields)
    return ev
