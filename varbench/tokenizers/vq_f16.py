"""LlamaGen's VQ-f16 tokenizer, the one AiM uses (`models/stage1/vq_model.py` of hp-l33/AiM, LlamaGen's `VQModel`).

image (B, 3, H, W) in [-1, 1] --encoder, quant_conv--> pre-quant latent (B, Cv, h, w), h = H / 2^(len(ch_mult) - 1)
--nearest l2-normalised code--> ids (B, h*w), row-major --codes, post_quant_conv, decoder--> image (not clamped).

Shape legend: B batch, 3 RGB, H W image side, Cv code width (embed_dim, 8), h w latent side, N = h*w tokens,
V codebook size.

State-dict keys are the official ones (`encoder.conv_blocks.{i}.res.{j}.conv1`, `encoder.mid.{0,1,2}`,
`quantize.embedding.weight`, `quantize.codebook_used`, ...), so the conversion of `vq_f16.pt` (LlamaGen's
`vq_ds16_c2i.pt`) is the identity on names: `load_official_vq_f16` only unwraps the checkpoint's `model` entry and
loads strictly. The convolutional pieces (ResnetBlock, resampling) are VAR's (`tokenizers.nets`): same arithmetic,
same key names; only the attention block differs (separate q, k, v convolutions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from varbench.tokenizers.fast_decode import DecodeModes, LatentDecoder
from varbench.tokenizers.nets import Downsample2x, ResnetBlock, Upsample2x, group_norm


class QKVAttnBlock(nn.Module):
    """Single-head self-attention over positions with LlamaGen's separate 1x1 `q`, `k`, `v` convs and `proj_out`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, kernel_size=1) for _ in range(4))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.norm(x_BCHW)
        B, C, H, W = h.shape
        q_BNC = self.q(h).reshape(B, C, H * W).permute(0, 2, 1)
        w_BNN = torch.bmm(q_BNC, self.k(h).reshape(B, C, H * W)).mul_(int(C) ** -0.5).softmax(dim=2)
        h_BCN = torch.bmm(self.v(h).reshape(B, C, H * W), w_BNN.permute(0, 2, 1))
        return x_BCHW + self.proj_out(h_BCN.reshape(B, C, H, W))


def _mid(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, 0.0), QKVAttnBlock(channels),
                          ResnetBlock(channels, channels, 0.0)])


def _level(block_in: int, block_out: int, num_blocks: int, attention: bool) -> tuple[nn.Module, int]:
    """One resolution level: `res` blocks, attention after each at the lowest resolution (`attn`)."""
    level, res, attn = nn.Module(), nn.ModuleList(), nn.ModuleList()
    for _ in range(num_blocks):
        res.append(ResnetBlock(block_in, block_out, 0.0))
        block_in = block_out
        if attention:
            attn.append(QKVAttnBlock(block_in))
    level.res, level.attn = res, attn
    return level, block_in


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, res in enumerate(level.res):
        h = res(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class VQF16Encoder(nn.Module):
    """Image -> latent (B, z_channels, H / 2^(levels-1), W / 2^(levels-1))."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, padding=1)
        self.conv_blocks, block_in, in_mult = nn.ModuleList(), ch, (1, *ch_mult)
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            level, block_in = _level(ch * in_mult[i], ch * mult, num_res_blocks, attention=last)
            if not last:
                level.downsample = Downsample2x(block_in)
            self.conv_blocks.append(level)
        self.mid = _mid(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQF16Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, h * 2^(levels-1), w * 2^(levels-1)); levels coarse to fine,
    stored in that order (`conv_blocks.0` is the lowest resolution, unlike VAR's `up`)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _mid(block_in)
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            level, block_in = _level(block_in, ch * ch_mult[i], num_res_blocks + 1, attention=i == len(ch_mult) - 1)
            if i != 0:
                level.upsample = Upsample2x(block_in)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, kernel_size=3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z_BChw)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class L2Quantizer(nn.Module):
    """Nearest-code quantizer over an l2-normalised codebook (inputs normalised too), LlamaGen's `VectorQuantizer`
    with l2_norm=True. `codebook_used` is the official usage ring buffer (kept only so checkpoints load strictly)."""

    def __init__(self, vocab_size: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / vocab_size, 1.0 / vocab_size)
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """(V, Cv): the normalised codes."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def ids(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """(B, h*w) row-major ids of the nearest codes (squared distance of normalised vectors, official order)."""
        B, C, h, w = z_BChw.shape
        z_NC = F.normalize(z_BChw.permute(0, 2, 3, 1).reshape(-1, C), p=2, dim=-1)
        e_VC = self.codebook()
        d_NV = z_NC.pow(2).sum(1, keepdim=True) + e_VC.pow(2).sum(1) - 2 * z_NC @ e_VC.t()
        return d_NV.argmin(dim=1).view(B, h * w)

    def lookup(self, ids_BN: torch.Tensor, side: int) -> torch.Tensor:
        """Codes of row-major ids as a (B, Cv, side, side) map."""
        B = ids_BN.shape[0]
        return self.codebook()[ids_BN].view(B, side, side, -1).permute(0, 3, 1, 2).contiguous()


class VQF16(DecodeModes, nn.Module):
    """AiM's tokenizer. Defaults build the released `vq_f16.pt` (16x downsampling, 16384 codes of width 8).

    Args:
        vocab_size (int, Optional): codebook size V (official `n_embed`). Default: 16384.
        embed_dim (int, Optional): code width Cv. Default: 8.
        z_channels (int, Optional): encoder output / decoder input width. Default: 256.
        ch (int, Optional): base width, a multiple of 32 (official VQModel never passes it: always 128). Default: 128.
        ch_mult (Sequence[int], Optional): width per level; downsampling 2^(len - 1). Default: (1, 1, 2, 2, 4).
        num_res_blocks (int, Optional): ResnetBlocks per encoder level (decoder: one more). Default: 2.
    """

    def __init__(self, *, vocab_size: int = 16384, embed_dim: int = 8, z_channels: int = 256, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2):
        super().__init__()
        if ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {ch}")
        self.vocab_size, self.embed_dim, self.downsample = vocab_size, embed_dim, 2 ** (len(ch_mult) - 1)
        self.encoder = VQF16Encoder(ch, tuple(ch_mult), num_res_blocks, z_channels)
        self.decoder = VQF16Decoder(ch, tuple(ch_mult), num_res_blocks, z_channels)
        self.quantize = L2Quantizer(vocab_size, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.latent_decoder = LatentDecoder(self.post_quant_conv, self.decoder)  # inference decodes, in a decode mode

    def pre_quant(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """quant_conv(encoder(image)): (B, Cv, h, w), before normalisation."""
        if image_B3HW.dim() != 4 or image_B3HW.shape[1] != 3 or image_B3HW.shape[-1] % self.downsample:
            raise ValueError(f"images must be (B, 3, H, W) with H, W multiples of {self.downsample}, "
                             f"got {tuple(image_B3HW.shape)}")
        return self.quant_conv(self.encoder(image_B3HW))

    def encode(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Row-major token ids (B, h*w) of images in [-1, 1]."""
        return self.quantize.ids(self.pre_quant(image_B3HW))

    def quant(self, ids_BN: torch.Tensor) -> torch.Tensor:
        """The normalised codes of ids as a (B, Cv, h, w) map (square latents)."""
        return self.quantize.lookup(self.check_ids(ids_BN), side=round(ids_BN.shape[1] ** 0.5))

    def decode(self, ids_BN: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in about [-1, 1] (not clamped, as official `decode_code`) from row-major ids, in the
        tokenizer's decode mode (`set_decode_mode`)."""
        return self.latent_decoder(self.quant(ids_BN))

    # the tokenizer interface the evaluation shares with the multi-scale VQ-VAE (reconstruction rows)
    def img_to_ids(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Row-major token ids (B, h*w) of images in [-1, 1] (`encode`)."""
        return self.encode(image_B3HW)

    def ids_to_img(self, ids_BN: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) clamped to [-1, 1] from row-major ids, as the multi-scale VQ-VAE's `ids_to_img`."""
        return self.decode(ids_BN).clamp(-1, 1)

    def check_ids(self, ids_BN: torch.Tensor) -> torch.Tensor:
        side = round(ids_BN.shape[-1] ** 0.5) if ids_BN.dim() == 2 else 0
        if ids_BN.dim() != 2 or side * side != ids_BN.shape[1] or ids_BN.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"ids must be integer (B, N) with N a square, got {tuple(ids_BN.shape)} {ids_BN.dtype}")
        if ids_BN.numel() and not (0 <= int(ids_BN.min()) and int(ids_BN.max()) < self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size - 1}] (vocab_size {self.vocab_size}), got range "
                             f"[{int(ids_BN.min())}, {int(ids_BN.max())}]")
        return ids_BN


# official VQConfig field -> VQF16 argument (`ch` is in VQConfig but VQModel never passes it on)
OFFICIAL_VQ_ARGS = {"n_embed": "vocab_size", "embed_dim": "embed_dim", "z_channels": "z_channels", "ch": "ch",
                    "ch_mult": "ch_mult", "num_res_blocks": "num_res_blocks"}


def vq_f16_from_official_config(config: dict) -> VQF16:
    """The VQF16 for official `VQConfig` fields (e.g. a golden config.json's `vq`); unknown fields raise."""
    unknown = sorted(set(config) - set(OFFICIAL_VQ_ARGS))
    if unknown:
        raise ValueError(f"unknown VQ-f16 config fields {unknown}; known: {sorted(OFFICIAL_VQ_ARGS)}")
    return VQF16(**{OFFICIAL_VQ_ARGS[k]: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def load_official_vq_f16(model: VQF16, source) -> VQF16:
    """Load `vq_f16.pt` (a torch file whose `model` entry is the state dict), a .safetensors file or a mapping,
    strictly: every official key must exist with its shape (names are used as they are; see the module docstring)."""
    import os
    from pathlib import Path

    from varbench.utils.checkpoint import load_strict, read_state_dict
    what = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix in (".pt", ".pth") and Path(source).is_file():
        source = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and isinstance(source.get("model"), dict):
        source = source["model"]  # LlamaGen saves {"model": state_dict, ...}
    load_strict(model, read_state_dict(source), f"{what} (VQF16 V={model.vocab_size}, Cv={model.embed_dim})")
    return model


def vq_f16_from_config(cfg) -> VQF16:
    """The VQF16 of a `tokenizer=vq_f16` config (its `checkpoint` is loaded by the caller)."""
    keys = ("vocab_size", "embed_dim", "z_channels", "ch", "ch_mult", "num_res_blocks")
    return VQF16(**{k: tuple(cfg[k]) if k == "ch_mult" else cfg[k] for k in keys})
