"""The depthwise causal conv1d as W shifted multiply-adds in torch: a form torch.compile fuses.

Shape legend: B batch, L tokens, D channels, W kernel width.
Same function and signature as `reference.causal_conv1d_ref`. Under torch.compile Inductor fuses the shifts with
what surrounds them (the split of in_proj's output before, the SiLU and the next split after) into one kernel
forward and a few backward, where causal_conv1d's CUDA kernel is an opaque node that wants its input channel-last:
Inductor then writes copies around it. Eager, it is W + 2 kernels; the CUDA kernel is one.
Numerics as the CUDA kernel's: fp32 accumulation from the bias, weight tap 0 first, SiLU in fp32, one rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.ops.causal_conv.reference import empty_tail
from varbench.utils.precision import at_least_fp32, no_autocast


@no_autocast
def causal_conv1d_shifts(x, weight, bias=None, tail=None, activation=None):
    """`causal_conv1d_ref` as shifted multiply-adds.

    Args:
        x (torch.Tensor): inputs of shape (B, L, D).
        weight (torch.Tensor): depthwise kernel of shape (D, W).
        bias (torch.Tensor, Optional): shape (D,). Default: None.
        tail (torch.Tensor, Optional): the W - 1 inputs before x, (B, W - 1, D). Default: zeros (sequence start).
        activation (str, Optional): None or "silu". Default: None.

    Returns:
        y (B, L, D) in x's dtype (computed in fp32, fp64 for fp64 inputs) and the next tail (B, W - 1, D).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    L, W = x.shape[1], weight.shape[1]
    dtype = at_least_fp32(x.dtype)
    xt_BtD = torch.cat([empty_tail(x, W) if tail is None else tail.to(x.dtype), x], dim=1)  # t = L + W - 1
    w_DW = weight.to(dtype)
    y = torch.zeros((), dtype=dtype, device=x.device) if bias is None else bias.to(dtype)
    for i in range(W):  # output t reads input t + i of xt, i.e. token t - (W - 1) + i
        y = y + w_DW[:, i] * xt_BtD[:, i:i + L].to(dtype)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), xt_BtD[:, xt_BtD.shape[1] - (W - 1):]
