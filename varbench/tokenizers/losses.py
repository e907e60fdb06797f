"""Losses and metrics of VQ-VAE training: PSNR, SSIM, an LPIPS-style perceptual loss, a PatchGAN discriminator.

Nothing here downloads anything: the perceptual loss reads VGG16 weights (and optionally LPIPS' linear heads) from
files the user names; without them it cannot be built (a ValueError, never a silent skip).

Shape legend: B batch, C channels (3 for images), H W image side, h w feature side, V vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from varbench.utils.checkpoint import load_strict, read_state_dict
from varbench.utils.log import progress_bar

# ----- metrics (images in [0, 1]) -----------------------------------------------------------------------------------

def psnr(x_BCHW: torch.Tensor, y_BCHW: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, (B,): 10 log10(range^2 / MSE over C, H, W); +inf for identical images."""
    mse_B = (x_BCHW.double() - y_BCHW.double()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range ** 2 / mse_B)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size), float64 (the separable product of two 1-D Gaussians)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x_BCHW: torch.Tensor, y_BCHW: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004), (B,): Gaussian-window local statistics per channel, the SSIM map over
    the positions where the window fits inside the image ("valid", as the reference MATLAB code and skimage's
    `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`, which crops the padded border),
    averaged over positions and channels. Computed in float64 (the metric is cheap; E[x^2] - E[x]^2 cancels)."""
    if x_BCHW.shape != y_BCHW.shape or x_BCHW.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(x_BCHW.shape)} and "
                         f"{tuple(y_BCHW.shape)}")
    if min(x_BCHW.shape[-2:]) < size:
        raise ValueError(f"ssim window {size}x{size} is larger than the images {tuple(x_BCHW.shape[-2:])}")
    C = x_BCHW.shape[1]
    w_C1ss = gaussian_window(size, sigma).to(x_BCHW.device).expand(C, 1, size, size)
    x, y = x_BCHW.double(), y_BCHW.double()
    blur = lambda t: F.conv2d(t, w_C1ss, groups=C)  # noqa: E731  (local Gaussian mean per channel)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    map_BChw = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return map_BChw.flatten(1).mean(dim=1)


@torch.no_grad()
def evaluate_tokenizer(vae, dataset, *, batch_size: int, device) -> dict:
    """Inference-path reconstruction (img -> ids -> image, clamped) on `dataset`, in float32: mean per-image PSNR (dB)
    and SSIM on [0, 1] images, and per-scale codebook usage (fraction of the V codes chosen at least once)."""
    was_training = vae.training
    vae.eval()
    K, V = len(vae.patch_nums), vae.vocab_size
    hit_KV = torch.zeros(K, V, dtype=torch.bool, device=device)
    psnr_l, ssim_l = [], []
    for img, _ in progress_bar(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="tokenizer eval",
                               unit="batch"):
        img = img.to(device)
        ids = vae.img_to_ids(img)
        x01, y01 = ((img + 1) / 2).clamp(0, 1), ((vae.ids_to_img(ids) + 1) / 2).clamp(0, 1)
        psnr_l.append(psnr(y01, x01))
        ssim_l.append(ssim(y01, x01))
        for k, ids_Bl in enumerate(ids):
            hit_KV[k, ids_Bl.flatten()] = True
    vae.train(was_training)
    return {"psnr": torch.cat(psnr_l).mean().item(), "ssim": torch.cat(ssim_l).mean().item(),
            "usage": hit_KV.float().mean(dim=1).tolist(), "usage_total": hit_KV.any(dim=0).float().mean().item()}


def check_finite(terms: dict, step: int, last_ckpt: str) -> None:
    """Stop (FloatingPointError) before a non-finite loss reaches the weights, naming the step and every term."""
    vals_T = torch.stack([t.detach().float() for t in terms.values()])
    if not bool(torch.isfinite(vals_T).all()):
        listing = ", ".join(f"{k}={v:.6g}" for k, v in zip(terms, vals_T.tolist()))
        raise FloatingPointError(f"non-finite tokenizer loss at update {step}: {listing}. Training stopped before "
                                 f"this update; last good checkpoint: {last_ckpt}")


# ----- perceptual loss ----------------------------------------------------------------------------------------------

# torchvision vgg16().features: the outputs of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS' five taps).
VGG16_TAPS = (3, 8, 15, 22, 29)
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)


class PerceptualLoss(nn.Module):
    """LPIPS(VGG) distance, frozen: unit-normalise the five VGG16 feature maps over channels, square the difference,
    weight the channels, average over positions, sum over taps; mean over the batch.

    Args:
        vgg_weights_path: a torchvision VGG16 state dict (`vgg16-397923af.pth` or a .safetensors); only the
            `features.*` entries are used.
        lpips_weights_path: LPIPS' linear heads for VGG (`lpips/weights/v0.1/vgg.pth`, keys
            `lin{i}.model.1.weight`), giving true LPIPS; None weighs every channel 1/C (a plain normalised VGG
            feature distance, of the same scale).
    """

    def __init__(self, vgg_weights_path, lpips_weights_path=None):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers
        self.features = make_layers(cfgs["D"])[: VGG16_TAPS[-1] + 1]  # vgg16 conv trunk, no classifier, no last pool
        sd = read_state_dict(vgg_weights_path)
        trunk = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
        load_strict(self.features, trunk, f"VGG16 weights {vgg_weights_path}")
        lins = [torch.full((c,), 1.0 / c) for c in VGG16_TAP_CHANNELS]
        if lpips_weights_path is not None:
            lp = read_state_dict(lpips_weights_path)
            names = [f"lin{i}.model.1.weight" for i in range(len(VGG16_TAPS))]
            if sorted(lp) != sorted(names):
                raise ValueError(f"{lpips_weights_path}: expected LPIPS VGG heads with keys {names}, got {sorted(lp)}")
            lins = [lp[n].flatten().float() for n in names]
        for i, w in enumerate(lins):
            self.register_buffer(f"lin{i}", w, persistent=False)
        # LPIPS' input scaling of [-1, 1] images (ImageNet mean/std expressed on [-1, 1]).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Channel-unit-normalised feature maps at the five taps."""
        h, out = (img_B3HW - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x_B3HW: torch.Tensor, y_B3HW: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance between two batches in [-1, 1] (gradient flows to both)."""
        total = x_B3HW.new_zeros(())
        for i, (fx, fy) in enumerate(zip(self.taps(x_B3HW), self.taps(y_B3HW))):
            w = getattr(self, f"lin{i}").to(fx.dtype).view(1, -1, 1, 1)
            total = total + ((fx - fy).square() * w).sum(dim=1).mean()
        return total


# ----- adversarial loss ---------------------------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming `NLayerDiscriminator` layout): conv4x4 s2 + LeakyReLU, then `n_layers` - 1 more
    stride-2 and one stride-1 conv4x4 with doubling width (capped at 8x), then a 1-channel conv4x4: one logit per
    overlapping patch. GroupNorm instead of BatchNorm: no running statistics, so train/eval and small batches behave
    alike and a resume has no extra buffers. Init N(0, 0.02) as taming."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for n in range(1, n_layers + 1):
            c_out = ch * min(2 ** n, 8)
            layers += [nn.Conv2d(c, c_out, 4, 2 if n < n_layers else 1, 1, bias=False),
                       nn.GroupNorm(min(32, c_out), c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h, w)."""
        return self.net(img_B3HW)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[relu(1 - D(real))] + E[relu(1 + D(fake))], halved as in taming."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_adv_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_weight: torch.Tensor) -> torch.Tensor:
    """taming's balance: |grad rec_loss| / (|grad g_loss| + 1e-4) at the decoder's last conv, clamped to [0, 1e4],
    detached (so the adversarial gradient at the output has the reconstruction gradient's size)."""
    g_rec = torch.autograd.grad(rec_loss, last_weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_weight, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()
