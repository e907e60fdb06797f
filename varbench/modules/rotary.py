"""Rotary position embedding (fla's `RotaryEmbedding` defaults), for RetNet.

Shape legend: B batch, l tokens, H heads, K head dim.
Three parts, so that a scale's step computes the angles once for q and k, and sampling the inverse frequencies
once per generation (RetNet's `weight_terms`): `inv_freq` -> `cos_sin` of positions -> `apply_rotary`.
"""

from __future__ import annotations

import torch


def inv_freq(K: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """The rotation frequencies 1 / base^(2i / K), i < K / 2, fp32 `[K / 2]`."""
    if K % 2:
        raise ValueError(f"rotary needs an even head dim, got {K}")
    return 1.0 / base ** (torch.arange(0, K, 2, device=device, dtype=torch.float32) / K)


def cos_sin(inv_freq_K: torch.Tensor, offset: int, l: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[l, 1, K / 2]` of the angles of positions offset .. offset + l - 1 (computed in fp32, then
    `dtype`)."""
    t = torch.arange(offset, offset + l, device=inv_freq_K.device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq_K).to(dtype)[:, None, :]
    return freqs.cos(), freqs.sin()


def apply_rotary(x_BlHK: torch.Tensor, cos_l1K: torch.Tensor, sin_l1K: torch.Tensor) -> torch.Tensor:
    """Rotate non-interleaved halves over the whole head dim (fla's defaults), in the angles' dtype, back to x's."""
    x1, x2 = x_BlHK.to(cos_l1K.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos_l1K - x2 * sin_l1K, x2 * cos_l1K + x1 * sin_l1K], dim=-1).to(x_BlHK.dtype)
