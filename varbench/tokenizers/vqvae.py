"""MultiScaleVQVAE: VAR's multi-scale residual VQ-VAE tokenizer (official `models/vqvae.py`, same state-dict keys).

image (B, 3, H, W) in [-1, 1] --encoder, quant_conv--> latent f (B, Cvae, h, w), h = H / 2^(len(ch_mult) - 1)
--multi-scale residual quantization--> ids, one (B, p_k^2) tensor per scale --> f_hat --post_quant_conv, decoder-->
image, clamped to [-1, 1].

Shape legend: B batch, 3 RGB, H W image side, C = Cvae latent/code channels, h w latent side (= patch_nums[-1]),
p side of one scale, l = p*p tokens of one scale, L tokens of all scales, K scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from varbench.layout import ScaleLayout
from varbench.tokenizers.fast_decode import DecodeModes, LatentDecoder
from varbench.tokenizers.nets import Decoder, Encoder
from varbench.tokenizers.quant import MultiScaleQuantizer


class MultiScaleVQVAE(DecodeModes, nn.Module):
    """VAR's VQ-VAE. Defaults build the released `vae_ch160v4096z32.pth` (108,948,355 parameters, 256 px).

    Args:
        vocab_size (int): codebook size V.
        z_channels (int): latent and code dimension Cvae.
        ch (int): base width of encoder/decoder (a multiple of 32: GroupNorm uses 32 groups).
        ch_mult (Sequence[int]): width multiplier per level; downsampling is 2^(len(ch_mult) - 1).
        num_res_blocks (int): ResnetBlocks per encoder level (decoder levels get one more).
        dropout (float): dropout inside ResnetBlocks.
        beta (float): commitment weight of the VQ loss (training forward only).
        quant_conv_ks (int): kernel of quant_conv / post_quant_conv.
        quant_resi (float): phi blend ratio.
        share_quant_resi (int): 0 one phi per scale, 1 shared, n >= 2 n partially shared (VAR: 4).
        patch_nums (Sequence[int]): scale sides; the last is the latent side.
        using_sa (bool): attention blocks at the lowest-resolution level.
        using_mid_sa (bool): attention block in the middle stage.
        test_mode (bool): eval() and requires_grad False on every parameter, as official.
        in_channels (int): image channels.
        default_qresi_counts (int): phi count when share_quant_resi == 0 (0: one per scale).
        using_znorm (bool): cosine code search (False for all VAR checkpoints).
    """

    def __init__(self, *, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, dropout: float = 0.0,
                 beta: float = 0.25, quant_conv_ks: int = 3, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), using_sa: bool = True,
                 using_mid_sa: bool = True, test_mode: bool = True, in_channels: int = 3,
                 default_qresi_counts: int = 0, using_znorm: bool = False):
        super().__init__()
        if ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {ch}")
        net_args = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, dropout=dropout,
                        in_channels=in_channels, z_channels=z_channels, using_sa=using_sa, using_mid_sa=using_mid_sa)
        self.encoder = Encoder(double_z=False, **net_args)
        self.decoder = Decoder(**net_args)
        self.vocab_size, self.Cvae, self.in_channels = vocab_size, z_channels, in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.layout = ScaleLayout(tuple(patch_nums))
        self.patch_nums = self.layout.patch_nums
        self.image_size = self.patch_nums[-1] * self.downsample
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, self.patch_nums, beta=beta, quant_resi=quant_resi,
                                            share_quant_resi=share_quant_resi,
                                            default_qresi_counts=default_qresi_counts,
                                            using_znorm=using_znorm)
        pad = quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        self.latent_decoder = LatentDecoder(self.post_quant_conv, self.decoder)  # inference decodes, in a decode mode
        self.test_mode = test_mode
        if test_mode:
            self.eval()
            self.requires_grad_(False)

    # ----- validation ----------------------------------------------------------------------------------------------

    def _check_img(self, img_B3HW: torch.Tensor) -> None:
        if not torch.is_tensor(img_B3HW) or img_B3HW.dim() != 4:
            shape = tuple(img_B3HW.shape) if torch.is_tensor(img_B3HW) else type(img_B3HW).__name__
            raise ValueError(f"expected an image batch (B, {self.in_channels}, H, W), got {shape}")
        if img_B3HW.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channels, got {img_B3HW.shape[1]} "
                             f"(shape {tuple(img_B3HW.shape)})")
        if tuple(img_B3HW.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected images of size {self.image_size}x{self.image_size} "
                             f"(patch_nums[-1]={self.patch_nums[-1]} x downsample {self.downsample}), "
                             f"got {img_B3HW.shape[2]}x{img_B3HW.shape[3]}")

    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        side = self.patch_nums[-1]
        if not torch.is_tensor(f_BChw) or f_BChw.dim() != 4 or tuple(f_BChw.shape[1:]) != (self.Cvae, side, side):
            shape = tuple(f_BChw.shape) if torch.is_tensor(f_BChw) else type(f_BChw).__name__
            raise ValueError(f"expected a latent of shape (B, {self.Cvae}, {side}, {side}), got {shape}")

    # ----- image <-> latent ----------------------------------------------------------------------------------------

    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latent before quantization, quant_conv(encoder(img)): (B, 3, H, W) -> (B, C, h, w)."""
        self._check_img(img_B3HW)
        return self.quant_conv(self.encoder(img_B3HW))

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decode a reconstruction latent: (B, C, h, w) -> image (B, 3, H, W) clamped to [-1, 1], in the tokenizer's
        decode mode (`set_decode_mode`)."""
        self._check_latent(f_hat_BChw)
        return self.latent_decoder(f_hat_BChw).clamp_(-1, 1)

    # ----- latent / image -> ids -----------------------------------------------------------------------------------

    def latent_to_ids(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Token ids per scale, [(B, p_k^2) int64] (row-major within a scale)."""
        self._check_latent(f_BChw)
        return self.quantize.quantize(f_BChw, to_fhat=False)

    def latent_to_fhats(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Cumulative reconstruction after each scale, [(B, C, h, w)]; the last is the full f_hat."""
        self._check_latent(f_BChw)
        return self.quantize.quantize(f_BChw, to_fhat=True)

    @torch.no_grad()
    def img_to_ids(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Official `img_to_idxBl`: image in [-1, 1] -> [(B, p_k^2) int64] per scale."""
        return self.latent_to_ids(self.encode_latent(img_B3HW))

    # ----- the sequence interface (shared with VQF16: what a raster model and a token cache use) --------------------

    @torch.no_grad()
    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Token ids of all scales in sequence order, (B, L) int64; with one scale (a single-scale tokenizer,
        `patch_nums = (h,)`) the row-major ids of the latent, as VQF16.encode."""
        return torch.cat(self.img_to_ids(img_B3HW), dim=1)

    def decode(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from the ids of all scales in sequence order (B, L), as VQF16.decode."""
        return self.ids_to_img(ids_BL)

    # ----- ids -> latent / transformer input / image ---------------------------------------------------------------

    def embed_ids(self, ids_Bl: torch.Tensor, k: int) -> torch.Tensor:
        """Codebook vectors of scale k's ids as a map: (B, p_k^2) -> (B, C, p_k, p_k)."""
        return self.quantize.embed_ids(ids_Bl, k)

    def ids_to_fhats(self, ids) -> list[torch.Tensor]:
        """Cumulative f_hat (B, C, h, w) after each scale, from per-scale ids [(B, p_k^2)] (or one (B, L) tensor)."""
        return self.quantize.ids_to_fhats(ids)

    def ids_to_var_input(self, ids) -> torch.Tensor:
        """Teacher-forcing input of the transformer (official `x_BLCv_wo_first_l`), (B, L - p_0^2, C)."""
        return self.quantize.ids_to_var_input(ids)

    def ids_to_img(self, ids) -> torch.Tensor:
        """Official `idxBl_to_img(same_shape=True, last_one=True)`: ids -> image (B, 3, H, W) in [-1, 1]."""
        return self.fhat_to_img(self.ids_to_fhats(ids)[-1])

    def next_scale_input(self, k: int, f_hat_BChw: torch.Tensor, h_BChw_k: torch.Tensor):
        """One step of sampling: add scale k's code map h (B, C, p_k, p_k) to f_hat (B, C, h, w).

        h is bicubic-upsampled to the latent side (not at the last scale), refined by phi and added (out of place).
        Returns (f_hat, next_BCpp): next_BCpp is f_hat area-downsampled to p_{k+1} (the next scale's input before
        the transformer's word embedding), or None after the last scale.
        """
        return self.quantize.next_scale_input(k, f_hat_BChw, h_BChw_k)

    def set_fused_elementwise(self, on: bool) -> None:
        """Run `next_scale_input`'s bicubic upsampling as one compiled kernel in eval mode without autograd
        (`quant.bicubic_up`), or torch's kernel again: the tokenizer's part of fused sampling
        (task.fused_elementwise, beside `ScaleAR.set_fused_elementwise`), the same arithmetic, rounded as Inductor's
        kernel rounds it."""
        self.quantize.fused_elementwise = bool(on)

    def empty_fhat(self, batch: int, device=None) -> torch.Tensor:
        """A zero f_hat (batch, C, h, w) float32, the start of sampling."""
        side = self.patch_nums[-1]
        return torch.zeros(batch, self.Cvae, side, side, device=device)

    # ----- training ------------------------------------------------------------------------------------------------

    def forward(self, img_B3HW: torch.Tensor, ret_usages: bool = False):
        """VQ-VAE training forward: (reconstruction (not clamped), usages % per scale or None, vq loss).

        The quantized latent is straight-through (its gradient flows to the encoder as if unquantized).
        """
        f_hat, usages, vq_loss = self.quantize(self.encode_latent(img_B3HW), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, vq_loss
