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

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from varbench.tokenizers.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_adv_weight,
    check_finite,
    evaluate_tokenizer,
    hinge_d_loss,
)
from varbench.utils.checkpoint import load_object, remove_stale_temps, save_atomic
from varbench.utils.log import get_logger, progress_bar
from varbench.utils.loggers import ExperimentLogger
from varbench.utils.precision import autocast
from varbench.utils.records import record
from varbench.utils.resume import refuse_changed_config
from varbench.utils.run_spec import file_id

log = get_logger(__name__)

WEIGHTS, STATE = "tokenizer.safetensors", "train_state.pt"
AMP = (None, "bf16", "fp16")  # `amp` words; None is fp32 (the autocast itself: varbench/utils/precision.py)
# Options that may change when a run is resumed (they do not change what the updates compute); `tensorboard` was
# an option of older versions (now the experiment logger's business): their train_state.pt still resumes.
RESUMABLE = {"steps", "log_every", "ckpt_every", "eval_every", "eval_batch_size", "num_workers", "progress",
             "tensorboard"}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of `train_tokenizer` (the `task` group of varbench/configs/task/train_tokenizer.yaml).

    steps, batch_size, lr, betas, weight_decay, warmup_steps: AdamW, linear warm-up then constant lr.
    l1_weight, l2_weight, vq_weight: reconstruction (on [-1, 1] images) and VAR's vq loss.
    perceptual_weight: LPIPS(VGG16); needs `vgg_weights_path` (torchvision state dict), `lpips_weights_path` optional.
    adv_weight, adv_start, adaptive_adv, disc_ch, disc_layers: PatchGAN hinge loss from update `adv_start`.
    data_init_codebook: before the first update, every code moves onto a random code-search vector of the first batch.
    dead_code_threshold (fraction of a uniform share 1/V), dead_code_every (updates; 0: never).
    amp: None | "bf16" | "fp16". seed: global torch RNG at a fresh start, batch order, discriminator init.
    log_every, ckpt_every, eval_every (0: only at the end), eval_batch_size, num_workers.
    progress: a progress bar (where varbench.utils.log shows bars).
    """
    steps: int
    batch_size: int
    lr: float
    betas: tuple = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    vq_weight: float = 1.0
    perceptual_weight: float = 0.0
    vgg_weights_path: str | None = None
    lpips_weights_path: str | None = None
    adv_weight: float = 0.0
    adv_start: int = 0
    adaptive_adv: bool = True
    disc_ch: int = 64
    disc_layers: int = 3
    data_init_codebook: bool = True
    dead_code_threshold: float = 0.1
    dead_code_every: int = 100
    amp: str | None = None
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    eval_every: int = 0
    eval_batch_size: int = 64
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        for name in ("vgg_weights_path", "lpips_weights_path"):  # plain str: the options are saved in train_state.pt
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps=}, {self.batch_size=}, "
                             f"{self.lr=}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {list(AMP)}, got {self.amp!r}")
        if self.perceptual_weight > 0 and not self.vgg_weights_path:
            raise ValueError("perceptual_weight > 0 needs VGG16 weights on disk: set vgg_weights_path to a torchvision "
                             "vgg16 state dict (e.g. vgg16-397923af.pth) and optionally lpips_weights_path to LPIPS' "
                             "vgg.pth; nothing is downloaded")
        if min(self.log_every, self.ckpt_every) < 1 or min(self.dead_code_every, self.eval_every, self.adv_start) < 0:
            raise ValueError("log_every and ckpt_every must be >= 1; dead_code_every, eval_every, adv_start >= 0")


class StepBatches:
    """Dataset indices of updates start..steps-1, one list per update: one stream of per-epoch permutations (epoch e
    drawn from seed and e) cut into batches (a batch may straddle two epochs). Update s always reads the same items,
    so a resumed run reads exactly the batches the uninterrupted run would have read."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int):
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start, steps

    def __len__(self) -> int:
        return self.steps - self.start

    def epoch_perm(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()

    def __iter__(self):
        pos, epoch, perm = self.start * self.batch_size, -1, []
        for _ in range(len(self)):
            out = []
            while len(out) < self.batch_size:
                e, i = divmod(pos, self.n)
                if e != epoch:
                    epoch, perm = e, self.epoch_perm(e)
                take = min(self.batch_size - len(out), self.n - i)
                out += perm[i:i + take]
                pos += take
            yield out


@torch.no_grad()
def restart_dead_codes(vae, img_B3HW: torch.Tensor, threshold: float, optimizer=None) -> int:
    """Apply the dead-code rule on this batch (see the module docstring); returns how many codes moved."""
    q = vae.quantize
    codes_D = q.dead_codes(threshold)
    if codes_D.numel():
        q.restart_codes(codes_D, vae.encode_latent(img_B3HW))
        state = optimizer.state.get(q.embedding.weight, {}) if optimizer is not None else {}
        for name in ("exp_avg", "exp_avg_sq"):  # stale moments would drag the code back where it was unused
            if name in state:
                state[name][codes_D] = 0
    return codes_D.numel()


class _Parts:
    """What a run trains and carries: model, optimizers, optional discriminator / perceptual net, grad scaler."""

    def __init__(self, vae, opt: TrainOptions, device):
        adamw = dict(lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
        self.vae, self.opt = vae.to(device).train(), opt
        self.optim = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], **adamw)
        self.perceptual = (PerceptualLoss(opt.vgg_weights_path, opt.lpips_weights_path).to(device)
                           if opt.perceptual_weight > 0 else None)
        self.disc = self.d_optim = None
        if opt.adv_weight > 0:
            with torch.random.fork_rng(devices=[]):  # init from the seed, not from the caller's RNG
                torch.manual_seed(opt.seed)
                self.disc = PatchDiscriminator(vae.in_channels, opt.disc_ch, opt.disc_layers).to(device)
            self.d_optim = torch.optim.AdamW(self.disc.parameters(), **adamw)
        self.scaler = torch.amp.GradScaler(device.type, enabled=opt.amp == "fp16")
        self.autocast = lambda: autocast(device, opt.amp or "fp32")

    def state(self, step: int) -> dict:
        s = {"step": step, "model": self.vae.state_dict(), "record_hit": self.vae.quantize.record_hit,
             "optimizer": self.optim.state_dict(), "scaler": self.scaler.state_dict(),
             "rng_cpu": torch.get_rng_state(), "hparams": dataclasses.asdict(self.opt),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if self.disc is not None:
            s.update(disc=self.disc.state_dict(), disc_optimizer=self.d_optim.state_dict())
        return s

    def load(self, s: dict, where) -> int:
        """Restore state `s` (read from `where`); returns its step."""
        refuse_changed_config(s["hparams"], dataclasses.asdict(self.opt), RESUMABLE, where)
        if s["step"] > self.opt.steps:
            raise ValueError(f"cannot resume: the saved run is at update {s['step']}, beyond steps={self.opt.steps}")
        self.vae.load_state_dict(s["model"])
        self.vae.quantize.record_hit = s["record_hit"]
        self.optim.load_state_dict(s["optimizer"])
        self.scaler.load_state_dict(s["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(s["disc"])
            self.d_optim.load_state_dict(s["disc_optimizer"])
        torch.set_rng_state(s["rng_cpu"])
        if s["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng_cuda"])
        return s["step"]


def generator_terms(p: _Parts, img_B3HW: torch.Tensor, step: int) -> tuple[dict, torch.Tensor]:
    """Loss terms of the tokenizer update (dict incl. "total") and the unclamped reconstruction."""
    o = p.opt
    with p.autocast():
        recon, _, vq = p.vae(img_B3HW)
    recon = recon.float()
    terms = {"l1": (recon - img_B3HW).abs().mean(), "l2": F.mse_loss(recon, img_B3HW), "vq": vq}
    rec = o.l1_weight * terms["l1"] + o.l2_weight * terms["l2"]
    if p.perceptual is not None:
        with p.autocast():
            terms["perceptual"] = p.perceptual(recon, img_B3HW).float()
        rec = rec + o.perceptual_weight * terms["perceptual"]
    total = rec + o.vq_weight * vq
    if p.disc is not None and step >= o.adv_start:
        p.disc.requires_grad_(False)  # the generator loss must not leave gradients in the discriminator
        with p.autocast():
            terms["g_adv"] = -p.disc(recon).float().mean()
        p.disc.requires_grad_(True)
        lam = adaptive_adv_weight(rec, terms["g_adv"], p.vae.decoder.conv_out.weight) if o.adaptive_adv else 1.0
        terms["adv_lambda"] = torch.as_tensor(lam, device=recon.device)
        total = total + o.adv_weight * lam * terms["g_adv"]
    terms["total"] = total
    return terms, recon


def train_step(p: _Parts, img_B3HW: torch.Tensor, step: int, last_ckpt: str) -> dict:
    """Update `step` (1-based): lr, tokenizer update, discriminator update (after adv_start), dead-code restart."""
    o = p.opt
    for group in p.optim.param_groups + (p.d_optim.param_groups if p.d_optim else []):
        group["lr"] = o.lr * min(1.0, step / max(o.warmup_steps, 1))
    if step == 1 and o.data_init_codebook:  # a one-draw k-means init (as EnCodec): no code starts out of reach
        with torch.no_grad():
            V = p.vae.vocab_size
            p.vae.quantize.restart_codes(torch.arange(V, device=img_B3HW.device), p.vae.encode_latent(img_B3HW))
    terms, recon = generator_terms(p, img_B3HW, step - 1)
    if p.disc is not None and step - 1 >= o.adv_start:
        with p.autocast():
            terms["d_hinge"] = hinge_d_loss(p.disc(img_B3HW).float(), p.disc(recon.detach()).float())
    check_finite(terms, step, last_ckpt)
    p.optim.zero_grad(set_to_none=True)
    p.scaler.scale(terms["total"]).backward()
    p.scaler.step(p.optim)
    if "d_hinge" in terms:
        p.d_optim.zero_grad(set_to_none=True)
        p.scaler.scale(terms["d_hinge"]).backward()
        p.scaler.step(p.d_optim)
    p.scaler.update()
    if o.dead_code_every and step % o.dead_code_every == 0:
        terms["restarted"] = torch.tensor(float(restart_dead_codes(p.vae, img_B3HW, o.dead_code_threshold, p.optim)))
    return terms


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
    p = _Parts(vae, opt, device)
    remove_stale_temps(out_dir)  # a killed run's half-written state files
    start = p.load(load_object(out_dir / STATE), out_dir / STATE) if (out_dir / STATE).exists() else 0
    if start == 0:
        torch.manual_seed(opt.seed)
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


def _updates(p: _Parts, train_set, device, out_dir: Path, start: int, writer: ExperimentLogger, val_set,
             results_path, config) -> dict:
    """Updates start+1 .. steps with their logging, checkpoints and periodic evaluations; the last update's terms."""
    opt = p.opt
    last_ckpt = f"{out_dir / STATE} (update {start})" if start else "none written yet"
    sampler = StepBatches(len(train_set), opt.batch_size, opt.seed, start, opt.steps)
    # its own generator: a loader draws a worker base seed when iterated, which must not consume the global RNG
    loader = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=opt.num_workers,
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
                save_atomic(out_dir / STATE, obj=p.state(step))  # the resume file first: it alone must be consistent
                save_atomic(out_dir / WEIGHTS, tensors=p.vae.state_dict())
                last_ckpt = f"{out_dir / STATE} (update {step})"
            if val_set is not None and opt.eval_every and step % opt.eval_every == 0 and step != opt.steps:
                _evaluate(p, val_set, opt, device, writer, step, results_path, config)
    return terms


def _log(writer: ExperimentLogger, bar, p: _Parts, terms: dict, step: int, batch: int) -> None:
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


def _evaluate(p: _Parts, val_set, opt: TrainOptions, device, writer: ExperimentLogger, step: int, results_path,
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
