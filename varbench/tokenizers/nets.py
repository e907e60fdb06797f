"""Convolutional encoder and decoder of VAR's VQ-VAE (taming / LDM "vq-f16" style).

The module tree and attribute names mirror the official VAR code (`models/basic_vae.py`) so that
`state_dict()` keys are exactly the official ones (see shared/compat/var_vqvae_keys.tsv); a converted
checkpoint therefore loads with no renaming. The arithmetic also follows the official order of operations
(e.g. the attention is two `bmm`s, not SDPA) so that float32 results agree with the official ones to
round-off.

Shape legend: B batch, C channels, H W image or feature height/width, N = H*W positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, affine (as official)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    """Nearest-neighbour x2, then conv3x3 (pad 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Zero-pad right and bottom by one, then conv3x3 stride 2 with no padding (asymmetric, as official)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, pad=(0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3 -> GN -> SiLU -> dropout -> conv3, plus a shortcut (1x1 `nin_shortcut` if C changes)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        # Official: a Dropout only above 1e-6 (an Identity has no state-dict entries either way).
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions: GN, 1x1 `qkv` conv (3C), softmax(q.k * C^-0.5), 1x1 `proj_out`."""

    def __init__(self, channels: int):
        super().__init__()
        self.C = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, stride=1, padding=0)
        self.w_ratio = int(channels) ** (-0.5)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm(x_BCHW))
        B, _, H, W = qkv.shape
        q, k, v = qkv.reshape(B, 3, self.C, H, W).unbind(1)  # channel order: q block, k block, v block
        q_BNC = q.reshape(B, self.C, H * W).permute(0, 2, 1)
        w_BNN = torch.bmm(q_BNC, k.reshape(B, self.C, H * W)).mul_(self.w_ratio)  # [query, key]
        w_BNN = F.softmax(w_BNN, dim=2)
        h_BCN = torch.bmm(v.reshape(B, self.C, H * W), w_BNN.permute(0, 2, 1))
        return x_BCHW + self.proj_out(h_BCN.reshape(B, self.C, H, W))


def make_attn(channels: int, using_sa: bool) -> nn.Module:
    """An AttnBlock, or an Identity (no parameters) when attention is switched off."""
    return AttnBlock(channels) if using_sa else nn.Identity()


def make_mid(channels: int, dropout: float, using_mid_sa: bool) -> nn.Module:
    """The middle stage (ResnetBlock, AttnBlock, ResnetBlock); a bare nn.Module as official, for the key names."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = make_attn(channels, using_mid_sa)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, z_channels, H / 2^(levels-1), W / 2^(levels-1)).

    Level i has `num_res_blocks` ResnetBlocks of width ch*ch_mult[i]; attention follows every block of the last
    (lowest-resolution) level when `using_sa`; a Downsample2x follows every level but the last.
    """

    def __init__(self, *, ch: int = 128, ch_mult=(1, 2, 4, 8), num_res_blocks: int = 2, dropout: float = 0.0,
                 in_channels: int = 3, z_channels: int, double_z: bool = False, using_sa: bool = True,
                 using_mid_sa: bool = True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.downsample_ratio = 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = make_mid(block_in, dropout, using_mid_sa)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1,
                                  padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, in_channels, h * 2^(levels-1), w * 2^(levels-1)), not clamped.

    Levels run from the last to the first, each with num_res_blocks + 1 ResnetBlocks (attention after each at the
    last level when `using_sa`) and an Upsample2x after every level but level 0. `up` is stored in level order
    0..levels-1 (official `insert(0, ...)`), which fixes the key names `decoder.up.{i}`.
    """

    def __init__(self, *, ch: int = 128, ch_mult=(1, 2, 4, 8), num_res_blocks: int = 2, dropout: float = 0.0,
                 in_channels: int = 3, z_channels: int, using_sa: bool = True, using_mid_sa: bool = True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = make_mid(block_in, dropout, using_mid_sa)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(z_BChw))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
