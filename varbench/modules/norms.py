"""The RMS norms of the mixers and the raster backbone: plain, gated (fla), grouped and gated (mamba_ssm's Mamba2).

Shape legend: the normalised dim is the last one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from varbench.ops.ssd import kernel as ssd_kernel
from varbench.ops.ssd.reference import gated_rmsnorm_ref
from varbench.utils.precision import upcast


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32 (fla's `RMSNorm(..., dtype=float32)`,
    mamba_ssm's RMSNorm), returned in `out_dtype` or x's."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return y if self.weight is None else y * self.weight.to(y.dtype)

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._norm(x).to(out_dtype or x.dtype)


class FusedRMSNormGated(RMSNorm):
    """RMSNorm(x) * act(g), fla's `FusedRMSNormGated` in plain PyTorch (act: swish/silu or sigmoid)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, activation: str = "swish"):
        if activation not in ("swish", "silu", "sigmoid"):
            raise ValueError(f"gate activation must be 'swish', 'silu' or 'sigmoid', got {activation!r}")
        super().__init__(hidden_size, elementwise_affine, eps)
        self.activation = activation

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        y = self._norm(x)
        gf = g.to(y.dtype)
        return (y * (torch.sigmoid(gf) if self.activation == "sigmoid" else F.silu(gf))).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Holds `norm.weight` of mamba_ssm's `RMSNormGated` (eps 1e-5, norm_before_gate False, one group per G).

    Args:
        hidden_size (int): E.
        eps (float, Optional): added to the mean square. Default: 1e-5.
        group_size (int, Optional): channels normalised together. Default: E.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, y: torch.Tensor, z: torch.Tensor, kernel: bool = False) -> torch.Tensor:
        norm = ssd_kernel.gated_rmsnorm if kernel else gated_rmsnorm_ref
        return norm(y, self.weight, z, eps=self.eps, group_size=self.group_size, norm_before_gate=False)
