"""causal_conv1d's CUDA kernel behind the signature of `reference.causal_conv1d_ref` (CUDA only).

Shape legend: B batch, L tokens, D channels, W kernel width.
The kernel takes x as (B, D, L). It has two code paths: "channel-first" (stride(2) == 1) and "channel-last"
(stride(1) == 1, i.e. a (B, L, D) contiguous tensor transposed). Only the channel-last path accepts initial states,
and only when they are themselves channel-last ((B, W - 1, D) contiguous, transposed) and D is a multiple of 8.
causal_conv1d is imported inside the function, so importing this module never needs it.
"""

from __future__ import annotations

import torch

from varbench.ops.causal_conv.reference import empty_tail, next_tail

VIA = ("initial_states", "pad")


def causal_conv1d(x, weight, bias=None, tail=None, activation=None, via="initial_states"):
    """`causal_conv1d_ref` through `causal_conv1d_fn`.

    Args:
        x (torch.Tensor): inputs of shape (B, L, D), D a multiple of 8.
        weight (torch.Tensor): depthwise kernel of shape (D, W), 2 <= W <= 4.
        bias (torch.Tensor, Optional): shape (D,), weight's dtype. Default: None.
        tail (torch.Tensor, Optional): the W - 1 inputs before x, (B, W - 1, D). Default: zeros.
        activation (str, Optional): None or "silu". Default: None.
        via (str, Optional): how the tail enters the kernel: "initial_states" (the kernel's own argument,
            channel-last) or "pad" (prepend the tail to x and drop the first W - 1 outputs; any layout).
            Default: "initial_states".

    Returns:
        y (B, L, D) in x's dtype and the next tail (B, W - 1, D). The tail is sliced in torch rather than taken
        from the kernel's `final_states`, which is then exact also when L < W - 1.
    """
    from causal_conv1d import causal_conv1d_fn

    if x.shape[-1] % 8:
        raise ValueError(f"causal_conv1d needs channels divisible by 8, got {x.shape[-1]}")
    if via not in VIA:
        raise ValueError(f"via must be one of {VIA}, got {via!r}")
    W = weight.shape[1]
    if via == "initial_states":
        init = None if tail is None else tail.to(x.dtype).contiguous().transpose(1, 2)
        y = causal_conv1d_fn(x.contiguous().transpose(1, 2), weight, bias, initial_states=init, activation=activation)
    else:
        xt = torch.cat([empty_tail(x, W) if tail is None else tail.to(x.dtype), x], dim=1)
        y = causal_conv1d_fn(xt.transpose(1, 2), weight, bias, activation=activation)[..., W - 1:]
    return y.transpose(1, 2), next_tail(x, tail, W)
