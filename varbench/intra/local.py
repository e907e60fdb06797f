"""Attention inside a 2-D window of each scale: token (r, c) of scale k sees tokens (r', c') of scale k with
|r - r'| <= window and |c - c'| <= window. A cheaper intra-scale variant than `full`.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width.
"""

from __future__ import annotations

import torch

from varbench.layout import ScaleLayout
from varbench.modules.attention import ScaleAttention
from varbench.ops.attention.kernel import flex_masked_attention
from varbench.ops.attention.reference import masked_attention_ref
from varbench.ops.backend import KernelChoice, cuda_and


class LocalScaleAttention(ScaleAttention, KernelChoice):
    """Softmax attention inside a (2*window+1)^2 neighbourhood of the same scale.

    Args:
        dim (int): model width.
        num_heads (int): attention heads.
        layer_idx (int, Optional): block index (unused). Default: 0.
        window (int, Optional): half-width of the square window in tokens. Default: 2.
        l2_norm (bool, Optional): see `ScaleAttention`. Default: False.
        backend (str, Optional): "flex" (CUDA), "reference" (SDPA, dense mask) or "auto". Default: "auto".
        qk_norm (str, Optional): with `l2_norm`, the normalisation's kernels in training (see `ScaleAttention`).
            Default: "auto".
    """

    def __init__(self, dim: int, num_heads: int, layer_idx: int = 0, window: int = 2, l2_norm: bool = False,
                 backend: str = "auto", qk_norm: str = "auto"):
        super().__init__(dim, num_heads, l2_norm, qk_norm)
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window
        self.choose_backend(backend, {"flex": cuda_and()}, "intra=local")

    def flex_mask(self, device) -> tuple[str, int] | None:
        """The flex BlockMask (kind, window) this module attends with on `device`'s tensors (named, or picked by
        `auto`), built before compiling; None where it runs no flex attention there."""
        return ("window", self.window) if self.backend_on(device) == "flex" else None

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        q, k, v = self.qkv(x_BLC)
        if self.run_backend(q) == "flex":
            o = flex_masked_attention(q, k, v, layout, "window", self.scale, self.window)
        else:
            o = masked_attention_ref(q, k, v, layout.window_mask(self.window, q.device), self.scale)
        return self.out(o)

    def step(self, x_BlC: torch.Tensor, layout: ScaleLayout, k: int) -> torch.Tensor:
        one_scale = ScaleLayout((layout.patch_nums[k],))
        q, k_, v = self.qkv(x_BlC)
        return self.out(masked_attention_ref(q, k_, v, one_scale.window_mask(self.window, q.device), self.scale))

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        pairs = int(layout.window_mask(self.window).sum())
        return batch * (self.qkv_flops(layout.L) + self.score_flops(pairs, self.head_dim, self.num_heads))
