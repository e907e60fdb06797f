"""Rotary position embedding (fla's `RotaryEmbedding` defaults), for RetNet.

Shape legend: B batch, l tokens, H heads, K head dim.
"""

from __future__ import annotations

import torch

from varbench.utils.precision import at_least_fp32


def rotary(x_BlHK: torch.Tensor, offset: int, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of positions offset .. offset + l - 1, non-interleaved halves, over the whole head
    dim (fla's `RotaryEmbedding(dim=K)` defaults); the angles are computed in fp32."""
    K = x_BlHK.shape[-1]
    if K % 2:
        raise ValueError(f"rotary needs an even head dim, got {K}")
    dtype = at_least_fp32(x_BlHK.dtype)
    inv_freq = 1.0 / base ** (torch.arange(0, K, 2, device=x_BlHK.device, dtype=torch.float32) / K)
    t = torch.arange(offset, offset + x_BlHK.shape[1], device=x_BlHK.device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq).to(dtype)[:, None, :]  # [l, 1, K/2]
    cos, sin = freqs.cos(), freqs.sin()
    x1, x2 = x_BlHK.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BlHK.dtype)
