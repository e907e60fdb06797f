"""GPU attention backends for scale-structured masks: flex_attention block masks, flash-attn varlen, xformers.

Shape legend: B batch, H heads, L tokens, d head dim, T = B*L packed tokens.
Each backend computes exactly `masked_attention_ref` with the mask of its `kind`; the GPU parity script checks it.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from varbench.layout import ScaleLayout

_compiled_flex = None


def _flex():
    # flex_attention is only fast when compiled; compile it once per process.
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


@lru_cache(maxsize=32)
def _block_mask(patch_nums: tuple[int, ...], kind: str, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask
    layout = ScaleLayout(patch_nums)
    ids = layout.scale_ids(device)
    if kind == "block_causal":
        def mask_mod(b, h, q, kv):
            return ids[q] >= ids[kv]
    elif kind == "block_diag":
        def mask_mod(b, h, q, kv):
            return ids[q] == ids[kv]
    elif kind == "window":
        row, col = layout.positions_in_scale(device)

        def mask_mod(b, h, q, kv):
            near = ((row[q] - row[kv]).abs() <= window) & ((col[q] - col[kv]).abs() <= window)
            return (ids[q] == ids[kv]) & near
    else:
        raise ValueError(f"unknown mask kind {kind!r}; valid: block_causal, block_diag, window")
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=layout.L, KV_LEN=layout.L, device=device)


def flex_masked_attention(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, kind: str, scale: float, window: int = 0):
    """Attention with a flex BlockMask built from the layout's scale ids (cached per layout and device)."""
    block_mask = _block_mask(layout.patch_nums, kind, window, str(q_BHLd.device))
    return _flex()(q_BHLd, k_BHLd, v_BHLd, block_mask=block_mask, scale=scale)


def varlen_block_diag_attention(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, scale: float):
    """Block-diagonal attention through flash-attn's varlen kernel (as M-VAR, but max_seqlen from the layout)."""
    from flash_attn import flash_attn_varlen_func
    B, H, L, d = q_BHLd.shape
    pack = lambda t: t.transpose(1, 2).reshape(B * L, H, d)  # noqa: E731  (B,H,L,d) -> (T,H,d)
    cu = layout.cu_seqlens(B, q_BHLd.device)
    longest = max(layout.lengths)
    o_THd = flash_attn_varlen_func(pack(q_BHLd), pack(k_BHLd), pack(v_BHLd), cu, cu, longest, longest,
                                   softmax_scale=scale)
    return o_THd.view(B, L, H, d).transpose(1, 2)


def xformers_block_diag_attention(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, scale: float):
    """Block-diagonal attention through xformers' BlockDiagonalMask."""
    from xformers.ops import fmha
    B, H, L, d = q_BHLd.shape
    pack = lambda t: t.transpose(1, 2).reshape(1, B * L, H, d)  # noqa: E731
    bias = fmha.BlockDiagonalMask.from_seqlens(list(layout.lengths) * B)
    o = fmha.memory_efficient_attention(pack(q_BHLd), pack(k_BHLd), pack(v_BHLd), attn_bias=bias, scale=scale)
    return o.view(B, L, H, d).transpose(1, 2)
