"""Depthwise causal conv1d that carries its left context, so a sequence can be fed in pieces (one scale at a time).

Shape legend: B batch, L tokens, D channels, W kernel width.
Layout is channel-last (B, L, D), the layout the mixers produce and the one in which causal_conv1d's CUDA kernel
accepts initial states. The carried context ("tail") is the last W - 1 inputs, (B, W - 1, D), zeros at the start.
Same function as mamba_ssm's `causal_conv1d_ref(x.transpose(1, 2), weight, bias, initial_states=tail.transpose(1, 2))`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.utils.precision import at_least_fp32, no_autocast


def empty_tail(x: torch.Tensor, width: int) -> torch.Tensor:
    """The context before the first token: W - 1 zero inputs, (B, W - 1, D)."""
    return x.new_zeros(x.shape[0], width - 1, x.shape[2])


def next_tail(x: torch.Tensor, tail: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last W - 1 inputs of cat(tail, x): the context the next piece needs, (B, W - 1, D) contiguous in x's dtype.

    The old tail enters only a piece shorter than W - 1. Concatenating every piece whole copied all of x to keep W - 1
    rows (M-VAR-d16's carried-state sampling: 15 of its 337 ms of GPU time at batch 64, session 40), and the
    returned view held that copy alive with the state until the next scale. The tail is a copy, so a state never
    keeps x's storage (in Mamba2, a slice of in_proj's whole output)."""
    if x.shape[1] < width - 1:
        x = torch.cat([empty_tail(x, width) if tail is None else tail.to(x.dtype), x], dim=1)
    return x[:, x.shape[1] - (width - 1):].clone(memory_format=torch.contiguous_format)


@no_autocast
def causal_conv1d_ref(x, weight, bias=None, tail=None, activation=None):
    """y_t = act(bias + sum_{i<W} weight[:, i] * x_{t-W+1+i}), where inputs before token 0 come from `tail`.

    Args:
        x (torch.Tensor): inputs of shape (B, L, D).
        weight (torch.Tensor): depthwise kernel of shape (D, W) (an nn.Conv1d weight (D, 1, W) squeezed).
        bias (torch.Tensor, Optional): shape (D,). Default: None.
        tail (torch.Tensor, Optional): the W - 1 inputs before x, (B, W - 1, D). Default: zeros (sequence start).
        activation (str, Optional): None or "silu". Default: None.

    Returns:
        y (B, L, D) in x's dtype (computed in fp32, fp64 for fp64 inputs) and the next tail (B, W - 1, D).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    D, W = weight.shape
    dtype = at_least_fp32(x.dtype)
    xt = torch.cat([empty_tail(x, W) if tail is None else tail.to(x.dtype), x], dim=1)
    w = weight.to(dtype)[:, None, :]
    b = None if bias is None else bias.to(dtype)
    y = F.conv1d(xt.to(dtype).transpose(1, 2), w, b, groups=D).transpose(1, 2)  # (B, L, D): no padding needed
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), next_tail(x, tail, W)
