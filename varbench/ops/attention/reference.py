"""Masked softmax attention through SDPA with a dense boolean mask: the oracle of every attention backend.

Shape legend: B batch, H heads, L query tokens, S key tokens, d head dim.
"""

import torch
import torch.nn.functional as F


def masked_attention_ref(q_BHLd: torch.Tensor, k_BHSd: torch.Tensor, v_BHSd: torch.Tensor,
                         mask_LS: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v. `mask_LS` is True where a query may see a key; None means no mask."""
    return F.scaled_dot_product_attention(q_BHLd, k_BHSd, v_BHSd, attn_mask=mask_LS, scale=scale)
