"""fla's short convolution: a depthwise causal conv that carries its tail, on varbench/ops/causal_conv.

Shape legend: B batch, l tokens of one scale, D channels, W kernel width.
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.ops.causal_conv.reference import causal_conv1d_ref


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution with a carried tail, parameter-compatible with fla's `ShortConvolution`.

    Args:
        hidden_size (int): channels D.
        kernel_size (int): width W (>= 2).
        bias (bool, Optional): channel bias. Default: `False`.
        activation (str, Optional): `silu` or `None`. Default: `silu`.
    """

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False, activation: str | None = "silu"):
        if kernel_size < 2:
            raise ValueError(f"conv_size must be >= 2, got {kernel_size}")
        if activation not in ("silu", "swish", None):
            raise ValueError(f"short-conv activation must be 'silu' or None, got {activation!r}")
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias)
        self.activation = activation

    def forward(self, x_BlD: torch.Tensor, tail_BwD: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve l new tokens after the W - 1 earlier inputs in `tail_BwD` (zeros when `None`): the causal conv of
        varbench/ops/causal_conv, the tail in its layout (the one Mamba's conv carries too).
        Returns the output `[B, l, D]` and the new tail `[B, W - 1, D]`."""
        activation = None if self.activation is None else "silu"
        return causal_conv1d_ref(x_BlD, self.weight.squeeze(1), self.bias, tail_BwD, activation=activation)
