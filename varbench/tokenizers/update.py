"""One update of the multi-scale VQ-VAE's training (`train_step`) and what it carries (`TrainingParts`): the options,
the model with its optimizer, the optional discriminator and perceptual net, the losses of the update and the
dead-code restart. The rules are in `varbench/tokenizers/trainer.py`'s docstring; the loop, checkpoints and
evaluations around the updates are there too.

Shape legend: B batch, 3 RGB, H W image side, D restarted codes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from varbench.tokenizers.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_adv_weight,
    check_finite,
    hinge_d_loss,
)
from varbench.utils.precision import autocast
from varbench.utils.resume import refuse_changed_config

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


@torch.no_grad()
def restart_dead_codes(vae, img_B3HW: torch.Tensor, threshold: float, optimizer=None) -> int:
    """Apply the dead-code rule on this batch (varbench/tokenizers/trainer.py's docstring); returns how many codes
    moved."""
    q = vae.quantize
    codes_D = q.dead_codes(threshold)
    if codes_D.numel():
        q.restart_codes(codes_D, vae.encode_latent(img_B3HW))
        state = optimizer.state.get(q.embedding.weight, {}) if optimizer is not None else {}
        for name in ("exp_avg", "exp_avg_sq"):  # stale moments would drag the code back where it was unused
            if name in state:
                state[name][codes_D] = 0
    return codes_D.numel()


class TrainingParts:
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


def generator_terms(p: TrainingParts, img_B3HW: torch.Tensor, step: int) -> tuple[dict, torch.Tensor]:
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


def train_step(p: TrainingParts, img_B3HW: torch.Tensor, step: int, last_ckpt: str) -> dict:
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
