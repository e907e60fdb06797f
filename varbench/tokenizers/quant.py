"""VAR's multi-scale residual vector quantizer (official `VectorQuantizer2`), with official state-dict names.

Scale k (side p_k) of K quantizes the residual r, area-downsampled to p_k x p_k (the last scale uses r as is); its
code map is bicubic-upsampled back to the latent side (not at the last scale), refined by phi_{m(k)}, added to the
running reconstruction f_hat and subtracted from r. Everything here runs in float32 with autocast off, as official.

Shape legend: B batch, C = Cvae code/latent channels, h w = H W latent side (= patch_nums[-1]), p side of one
scale, l = p*p tokens of one scale, L tokens of all scales, N = B*l vectors, V vocabulary size, K scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from varbench.layout import ScaleLayout
from varbench.modules.fused import fused, runs_fused
from varbench.tokenizers.phi import build_quant_resi, phi_indices, phi_modules


def bicubic_up(h_BCpp: torch.Tensor, side: int) -> torch.Tensor:
    """A scale's code map bicubic-upsampled to the latent side (official; torch's kernel). Its compiled form
    `fused(bicubic_up)` (fused sampling) is Inductor's decomposition of the same arithmetic, one thread per output
    value: torch's CUDA kernel runs one thread per output pixel, each looping over B x C (14.2 ms of a batch-64
    VAR-d16 generation on an H100 in session 33, 256 threads a call)."""
    return F.interpolate(h_BCpp, size=(side, side), mode="bicubic")


class MultiScaleQuantizer(nn.Module):
    """Residual quantizer over the scales `patch_nums`; codebook `embedding` (V, C), phi convs `quant_resi`.

    Args:
        vocab_size (int): V, number of codes.
        Cvae (int): code dimension (= the latent channels).
        patch_nums (Sequence[int]): scale sides, increasing; the last equals the latent side.
        beta (float): commitment weight of the training loss.
        quant_resi (float): phi blend ratio r; |r| <= 1e-6 disables phi.
        share_quant_resi (int): 0 one phi per scale, 1 one shared phi, n >= 2 n partially shared phis.
        default_qresi_counts (int): phi count for share_quant_resi == 0 (0: one per scale).
        using_znorm (bool): cosine-similarity code search instead of squared L2 (False in every VAR checkpoint).
    """

    def __init__(self, vocab_size: int, Cvae: int, patch_nums: Sequence[int], beta: float = 0.25,
                 quant_resi: float = 0.5, share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 using_znorm: bool = False):
        super().__init__()
        self.layout = ScaleLayout(tuple(patch_nums))
        self.patch_nums = self.layout.patch_nums
        self.vocab_size, self.Cvae, self.beta, self.using_znorm = vocab_size, Cvae, beta, using_znorm
        self.quant_resi, n_phi = build_quant_resi(Cvae, quant_resi, share_quant_resi, len(self.patch_nums),
                                                  default_qresi_counts)
        self.phi_index = phi_indices(len(self.patch_nums), n_phi)
        # Codebook usage statistics only (never read by inference), but part of official checkpoints.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.record_hit = 0
        self.embedding = nn.Embedding(vocab_size, Cvae)
        self.fused_elementwise = False  # compiled bicubic upsampling (MultiScaleVQVAE.set_fused_elementwise)

    # ----- building blocks -----------------------------------------------------------------------------------------

    def phi(self, k: int) -> nn.Module:
        """The phi conv used by scale k."""
        return phi_modules(self.quant_resi)[self.phi_index[k]]

    def nearest_ids(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each row (squared L2; first index on ties), (N,) int64."""
        E_VC = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(E_VC.T, dim=0), dim=1)
        # Same expression as official (|z|^2 + |e|^2, then addmm -2 z.e) so that round-off, and hence ties, agree.
        d_NV = z_NC.square().sum(dim=1, keepdim=True) + E_VC.square().sum(dim=1)
        d_NV.addmm_(z_NC, E_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def embed_ids(self, ids_Bl: torch.Tensor, k: int) -> torch.Tensor:
        """Code vectors of scale k's ids as a map, (B, l) -> (B, C, p_k, p_k) (row-major tokens)."""
        p = self.patch_nums[k]
        if ids_Bl.dim() != 2 or ids_Bl.shape[1] != p * p:
            raise ValueError(f"scale {k} ids must have shape (B, {p * p}), got {tuple(ids_Bl.shape)}")
        return self.embedding(ids_Bl).transpose(1, 2).reshape(ids_Bl.shape[0], self.Cvae, p, p)

    def upsample_phi(self, k: int, h_BCpp: torch.Tensor) -> torch.Tensor:
        """Scale k's contribution to f_hat: bicubic-up to the latent side (not at the last scale), then phi."""
        if k != len(self.patch_nums) - 1:
            upsample = fused(bicubic_up) if runs_fused(self) else bicubic_up
            h_BCpp = upsample(h_BCpp, self.patch_nums[-1])
        return self.phi(k)(h_BCpp)

    def check_ids(self, ids) -> list[torch.Tensor]:
        """Validate a per-scale list of (B, l_k) integer ids (or one (B, L) tensor, split by scale)."""
        K, lengths = len(self.patch_nums), self.layout.lengths
        if torch.is_tensor(ids):
            if ids.dim() != 2 or ids.shape[1] != self.layout.L:
                raise ValueError(f"concatenated ids must have shape (B, {self.layout.L}), got {tuple(ids.shape)}")
            ids = self.layout.split(ids)
        if not isinstance(ids, (list, tuple)) or len(ids) != K:
            n = len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise ValueError(f"expected a list of {K} id tensors (one per scale), got {n}")
        B = ids[0].shape[0] if torch.is_tensor(ids[0]) else None
        for k, t in enumerate(ids):
            if not torch.is_tensor(t) or t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
                raise ValueError(f"scale {k} ids must be an integer tensor, got {getattr(t, 'dtype', type(t))}")
            if t.dim() != 2 or t.shape != (B, lengths[k]):
                raise ValueError(f"scale {k} ids must have shape ({B}, {lengths[k]}), got {tuple(t.shape)}")
        return [t.long() for t in ids]

    # ----- latent -> ids / f_hat ----------------------------------------------------------------------------------

    @torch.no_grad()
    def quantize(self, f_BChw: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """Official `f_to_idxBl_or_fhat`: per-scale ids (B, l_k), or the cumulative f_hat after each scale."""
        B, C, H, W = f_BChw.shape
        K = len(self.patch_nums)
        r_BChw = f_BChw.detach().float().clone()
        f_hat = torch.zeros_like(r_BChw)
        out = []
        for k, p in enumerate(self.patch_nums):
            z = F.interpolate(r_BChw, size=(p, p), mode="area") if k != K - 1 else r_BChw
            ids_N = self.nearest_ids(z.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.upsample_phi(k, self.embedding(ids_N.view(B, p, p)).permute(0, 3, 1, 2))
            f_hat.add_(h_BChw)
            r_BChw.sub_(h_BChw)
            out.append(f_hat.clone() if to_fhat else ids_N.reshape(B, p * p))
        return out

    # ----- ids -> f_hat / transformer input ------------------------------------------------------------------------

    def ids_to_fhats(self, ids) -> list[torch.Tensor]:
        """Official `embed_to_fhat` (all_to_max_scale): cumulative f_hat (B, C, H, W) after each scale."""
        ids = self.check_ids(ids)
        side = self.patch_nums[-1]
        f_hat = torch.zeros(ids[0].shape[0], self.Cvae, side, side, device=ids[0].device)
        out = []
        for k, ids_Bl in enumerate(ids):
            f_hat = f_hat + self.upsample_phi(k, self.embed_ids(ids_Bl, k))
            out.append(f_hat)
        return out

    def ids_to_var_input(self, ids) -> torch.Tensor:
        """Official `idxBl_to_var_input`: area-downsampled f_hat after scales 0..k as scale k+1's input,
        (B, L - l_0, C)."""
        ids = self.check_ids(ids)
        f_hat, pieces = None, []
        for k in range(len(self.patch_nums) - 1):
            h_BCpp = self.embed_ids(ids[k], k)
            if f_hat is None:
                side = self.patch_nums[-1]
                f_hat = h_BCpp.new_zeros(h_BCpp.shape[0], self.Cvae, side, side, dtype=torch.float32)
            f_hat, next_BCpp = self.next_scale_input(k, f_hat, h_BCpp)
            pieces.append(next_BCpp.flatten(2).transpose(1, 2))
        if not pieces:  # a single scale has no teacher-forcing input
            return torch.zeros(ids[0].shape[0], 0, self.Cvae, device=ids[0].device)
        return torch.cat(pieces, dim=1)

    def next_scale_input(self, k: int, f_hat_BChw: torch.Tensor, h_BCpp: torch.Tensor):
        """Official `get_next_autoregressive_input`: add scale k's code map to f_hat (out of place).

        Returns (f_hat, next_BCpp): the new f_hat and f_hat area-downsampled to side p_{k+1}, or None after the last
        scale (official returns f_hat again there).
        """
        K = len(self.patch_nums)
        if not 0 <= k < K:
            raise ValueError(f"scale index must be in [0, {K}), got {k}")
        p = self.patch_nums[k]
        if h_BCpp.dim() != 4 or tuple(h_BCpp.shape[1:]) != (self.Cvae, p, p):
            raise ValueError(f"scale {k} code map must have shape (B, {self.Cvae}, {p}, {p}), "
                             f"got {tuple(h_BCpp.shape)}")
        f_hat_BChw = f_hat_BChw + self.upsample_phi(k, h_BCpp)
        if k == K - 1:
            return f_hat_BChw, None
        p_next = self.patch_nums[k + 1]
        return f_hat_BChw, F.interpolate(f_hat_BChw, size=(p_next, p_next), mode="area")

    # ----- VQ-VAE training forward ----------------------------------------------------------------------------------

    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):
        """Training quantization: (straight-through f_hat, usages in % per scale or None, mean vq loss).

        loss = mean over scales of beta * MSE(f_hat.detach(), f) + MSE(f_hat, f.detach()). Codebook-hit EMA is
        updated in training mode (official only updates it when its distributed wrapper is initialized; here a
        single process records too, and hits are all-reduced when torch.distributed is initialized).
        """
        f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        r_BChw, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        K = len(self.patch_nums)
        loss = f_BChw.new_zeros(())
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            for k, p in enumerate(self.patch_nums):
                z = F.interpolate(r_BChw, size=(p, p), mode="area") if k != K - 1 else r_BChw
                ids_N = self.nearest_ids(z.permute(0, 2, 3, 1).reshape(-1, C))
                if self.training:
                    self.record_usage(k, ids_N)
                h_BChw = self.upsample_phi(k, self.embedding(ids_N.view(B, p, p)).permute(0, 3, 1, 2))
                f_hat = f_hat + h_BChw
                r_BChw = r_BChw - h_BChw.detach()
                loss = loss + F.mse_loss(f_hat.detach(), f_BChw) * self.beta + F.mse_loss(f_hat, f_no_grad)
            loss = loss / K
            f_hat_st = (f_hat.detach() - f_no_grad) + f_BChw
        usages = self.usages(B * H * W) if ret_usages else None
        return f_hat_st, usages, loss

    @torch.no_grad()
    def record_usage(self, k: int, ids_N: torch.Tensor) -> None:
        """EMA of code hits: copy on the first record, 0.9 decay for the next 99, then 0.99 (official counter
        advances once per scale, so "100 records" is 100 scale steps, not 100 batches)."""
        hit_V = ids_N.bincount(minlength=self.vocab_size).float()
        if tdist.is_available() and tdist.is_initialized():
            tdist.all_reduce(hit_V)
        ema = self.ema_vocab_hit_SV[k]
        if self.record_hit == 0:
            ema.copy_(hit_V)
        elif self.record_hit < 100:
            ema.mul_(0.9).add_(hit_V.mul(0.1))
        else:
            ema.mul_(0.99).add_(hit_V.mul(0.01))
        self.record_hit += 1

    def usages(self, positions_per_rank: int) -> list[float]:
        """Percentage of codes per scale whose hit EMA reaches the official margin (8% of a uniform share)."""
        world = tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1
        margin = world * positions_per_rank / self.vocab_size * 0.08
        return [(self.ema_vocab_hit_SV[k] >= margin).float().mean().item() * 100 for k in range(len(self.patch_nums))]

    # ----- training hooks (dead-code restart; never used by inference) ----------------------------------------------

    @torch.no_grad()
    def search_inputs(self, f_BChw: torch.Tensor) -> torch.Tensor:
        """Every vector the code search sees on this latent, all scales stacked, (sum_k B*l_k, C): scale k's
        area-downsampled residual (scale 0: the area mean of f itself), as in `forward`."""
        B, C, H, W = f_BChw.shape
        K = len(self.patch_nums)
        r_BChw = f_BChw.detach().float().clone()
        out = []
        for k, p in enumerate(self.patch_nums):
            z_NC = (F.interpolate(r_BChw, size=(p, p), mode="area") if k != K - 1 else r_BChw).permute(0, 2, 3, 1)
            z_NC = z_NC.reshape(-1, C)
            out.append(z_NC)
            ids_N = self.nearest_ids(z_NC)
            r_BChw.sub_(self.upsample_phi(k, self.embedding(ids_N.view(B, p, p)).permute(0, 3, 1, 2)))
        return torch.cat(out)

    def dead_codes(self, threshold: float) -> torch.Tensor:
        """Codes (D,) whose hit EMA, summed over scales, is below `threshold` x a uniform share (none before any
        hit)."""
        hits_V = self.ema_vocab_hit_SV.sum(dim=0)
        if hits_V.sum() <= 0:
            return torch.zeros(0, dtype=torch.long, device=hits_V.device)
        return torch.nonzero(hits_V / hits_V.sum() * self.vocab_size < threshold).flatten()

    @torch.no_grad()
    def restart_codes(self, codes_D: torch.Tensor, f_BChw: torch.Tensor) -> torch.Tensor:
        """Move codes `codes_D` (D,) onto distinct random rows of `search_inputs(f)` (with repeats only when D exceeds
        the rows), using the global torch RNG. Their hit EMA is set to the scale's mean, so that a restarted code
        gets the time a fresh code needs before it can be judged dead again. Returns the new vectors (D, C)."""
        z_NC = self.search_inputs(f_BChw)
        D, N = codes_D.numel(), z_NC.shape[0]
        pick = torch.randperm(N, device=z_NC.device)[:D]
        if D > N:
            pick = torch.cat([pick, torch.randint(N, (D - N,), device=z_NC.device)])
        new_DC = z_NC[pick].to(self.embedding.weight.dtype)
        self.embedding.weight[codes_D] = new_DC
        self.ema_vocab_hit_SV[:, codes_D] = self.ema_vocab_hit_SV.mean(dim=1, keepdim=True)
        return new_DC
