"""Bidirectional attention inside each scale (M-VAR's intra-scale branch): the block-diagonal mask.

Shape legend: B batch, L tokens of all scales, l tokens of one scale, C width, H heads, d head dim.
No information crosses scales here, so sampling needs no state: `step` attends over the current scale only.
"""

from __future__ import annotations

import torch

from varbench.layout import ScaleLayout
from varbench.modules.attention import ScaleAttention
from varbench.ops.attention import kernel
from varbench.ops.attention.reference import masked_attention_ref
from varbench.ops.backend import REFERENCE, KernelChoice, cuda_and


class IntraScaleAttention(ScaleAttention, KernelChoice):
    """Softmax attention restricted to the tokens of the same scale.

    Args:
        dim (int): model width.
        num_heads (int): attention heads.
        layer_idx (int, Optional): block index (unused). Default: 0.
        l2_norm (bool, Optional): see `ScaleAttention` (the released M-VAR d16/d20 use False). Default: False.
        backend (str, Optional): "flex" (flex_attention BlockMask), "sdpa_scales" (one unmasked SDPA call per
            scale), "varlen" (flash-attn's varlen kernel, as M-VAR), "torch_varlen" (torch's own varlen flash
            kernel, `torch.nn.attention.varlen`; both varlen backends attend in one call with every scale a packed
            sequence and take bf16 / fp16 q, k, v: autocast), "xformers" (BlockDiagonalMask), "reference" (SDPA,
            dense block-diagonal mask), or "auto" (flex on CUDA, else reference). Default: "auto".
        together_below, sdpa_kernels: the sdpa_scales options, as the attention mixer's
            (`varbench.mixers.attention.BlockCausalAttention`). Defaults: 64, None.
        qk_norm (str, Optional): with `l2_norm`, the normalisation's kernels in training (see `ScaleAttention`).
            Default: "auto".
    """

    def __init__(self, dim: int, num_heads: int, layer_idx: int = 0, l2_norm: bool = False, backend: str = "auto",
                 together_below: int = 64, sdpa_kernels: list[str] | None = None, qk_norm: str = "auto"):
        super().__init__(dim, num_heads, l2_norm, qk_norm)
        self.choose_backend(backend, {"flex": cuda_and(), "sdpa_scales": cuda_and(), "varlen": cuda_and("flash_attn"),
                                      "torch_varlen": cuda_and("torch.nn.attention.varlen"),
                                      "xformers": cuda_and("xformers")}, "intra=full")
        self.together_below = together_below
        self.sdpa_kernels = kernel.check_sdpa_scales_options(together_below, sdpa_kernels, "intra=full")

    def flex_mask(self, device) -> tuple[str, int] | None:
        """The flex BlockMask (kind, window) this module attends with on `device`'s tensors (named, or picked by
        `auto`), built before compiling; None where it runs no flex attention there."""
        return ("block_diag", 0) if self.backend_on(device) == "flex" else None

    def attends_varlen(self, device) -> bool:
        """Whether this module attends with a varlen kernel on `device`'s tensors (its segment ends are then built
        before compiling: `prepare_model_masks`)."""
        return self.backend_on(device) in ("varlen", "torch_varlen")

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        backend = self.run_backend(x_BLC)
        if backend == "sdpa_scales":  # q, k, v cut into the calls' tokens as projected (see `qkv_parts`)
            parts = self.qkv_parts(x_BLC, kernel.sdpa_scales_calls(layout, self.together_below))
            o = kernel.sdpa_scales_block_diag(parts, layout, self.scale, self.together_below, self.sdpa_kernels)
            return self.out(o)
        q, k, v = self.qkv(x_BLC)
        if backend == REFERENCE:
            o = masked_attention_ref(q, k, v, layout.block_diag_mask(q.device), self.scale)
        elif backend == "flex":
            o = kernel.flex_masked_attention(q, k, v, layout, "block_diag", self.scale)
        elif backend in ("varlen", "torch_varlen"):
            impl = "flash_attn" if backend == "varlen" else "torch"
            o = kernel.varlen_block_diag_attention(q, k, v, layout, self.scale, impl)
        else:
            o = kernel.xformers_block_diag_attention(q, k, v, layout, self.scale)
        return self.out(o)

    def step(self, x_BlC: torch.Tensor, layout: ScaleLayout, k: int) -> torch.Tensor:
        q, k_, v = self.qkv(x_BlC)
        return self.out(masked_attention_ref(q, k_, v, None, self.scale))

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        pairs = sum(n * n for n in layout.lengths)
        return batch * (self.qkv_flops(layout.L) + self.score_flops(pairs, self.head_dim, self.num_heads))
