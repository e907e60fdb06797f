"""Attention inside a 2-D window of each scale: token (r, c) of scale k sees tokens (r', c') of scale k with
|r - r'| <= window and |c - c'| <= window. A cheaper intra-scale variant than `full`.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width.
"""

from __future__ import annotations

import torch

from varbench.layout import ScaleLayout
from varbench.mixers.attention import ScaleAttention
from varbench.mixers.base import cuda_and, resolve_backend
from varbench.ops.attention.reference import masked_attention_ref


def window_coords(layout: ScaleLayout, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) row and column of every token inside its own scale (raster order)."""
    rows, cols = [], []
    for p in layout.patch_nums:
        r, c = torch.meshgrid(torch.arange(p, device=device), torch.arange(p, device=device), indexing="ij")
        rows.append(r.flatten())
        cols.append(c.flatten())
    return torch.cat(rows), torch.cat(cols)


def window_mask(layout: ScaleLayout, window: int, device=None) -> torch.Tensor:
    """(L, L) bool: same scale and within the 2-D window."""
    row, col = window_coords(layout, device)
    near = ((row[:, None] - row[None, :]).abs() <= window) & ((col[:, None] - col[None, :]).abs() <= window)
    # one scale (sampling's `step`) is a single block: skip the scale ids, which are built on the CPU and copied,
    # a blocking copy that a CUDA graph cannot capture
    return near if layout.num_scales == 1 else near & layout.block_diag_mask(device)


class LocalScaleAttention(ScaleAttention):
    """Softmax attention inside a (2*window+1)^2 neighbourhood of the same scale.

    Args:
        dim (int): model width.
        num_heads (int): attention heads.
        layer_idx (int, Optional): block index (unused). Default: 0.
        window (int, Optional): half-width of the square window in tokens. Default: 2.
        l2_norm (bool, Optional): see `ScaleAttention`. Default: False.
        backend (str, Optional): "flex" (CUDA), "reference" (SDPA, dense mask) or "auto". Default: "auto".
    """

    rescale_out_proj = True

    def __init__(self, dim: int, num_heads: int, layer_idx: int = 0, window: int = 2, l2_norm: bool = False,
                 backend: str = "auto"):
        super().__init__(dim, num_heads, l2_norm)
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window
        self.backend = resolve_backend(backend, {"flex": cuda_and(), "reference": lambda: True}, "intra=local")

    def flex_mask(self) -> tuple[str, int] | None:
        """The flex BlockMask (kind, window) this module attends with, built before compiling; None without flex."""
        return ("window", self.window) if self.backend == "flex" else None

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        q, k, v = self.qkv(x_BLC)
        if self.backend == "flex" and q.is_cuda:
            from varbench.ops.attention.kernel import flex_masked_attention
            o = flex_masked_attention(q, k, v, layout, "window", self.scale, self.window)
        else:
            o = masked_attention_ref(q, k, v, window_mask(layout, self.window, q.device), self.scale)
        return self.out(o)

    def step(self, x_BlC: torch.Tensor, layout: ScaleLayout, k: int) -> torch.Tensor:
        one_scale = ScaleLayout((layout.patch_nums[k],))
        q, k_, v = self.qkv(x_BlC)
        return self.out(masked_attention_ref(q, k_, v, window_mask(one_scale, self.window, q.device), self.scale))

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        pairs = int(window_mask(layout, self.window).sum())
        return batch * (self.qkv_flops(layout.L) + self.score_flops(pairs, self.head_dim, self.num_heads))

    def output_projection(self):
        return self.proj
