"""The phi ("quant_resi") refinement convs of VAR's multi-scale quantizer and the rule that picks one per scale.

phi(h) = (1 - r) * h + r * conv3x3(h) with r = |quant_resi| (0.5 in VAR). How many convs exist depends on
`share_quant_resi` (official semantics, and official container layouts so the state-dict keys match):

| share_quant_resi | convs | container (keys under `quantize.quant_resi.`) |
|---|---|---|
| 0 | one per scale (or `default_qresi_counts`) | ModuleList -> `{i}.weight` |
| 1 | one, shared | module with `qresi` -> `qresi.weight` |
| n >= 2 | n, partially shared | module with `qresi_ls` ModuleList -> `qresi_ls.{i}.weight` |

Scale k of K uses the conv whose "tick" is nearest to k / (K - 1). Ticks for n convs are linspace(1/(3n), 1-1/(3n), n)
when n == 4 and linspace(1/(2n), 1-1/(2n), n) otherwise (official quirk). The comparison runs in float64 NumPy with
argmin (first minimum wins); this matters: for 10 scales, scales 2 and 7 are near-ties decided by round-off, and the
official result 0,0,1,1,1,2,2,3,3,3 is only reproduced by computing it exactly this way.

Shape legend: B batch, C channels (Cvae), h w map height/width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Phi(nn.Conv2d):
    """Conv3x3 (C -> C, bias) blended with its input: (1 - r) * h + r * conv(h)."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


def phi_ticks(num_phi: int) -> np.ndarray:
    """The float64 tick of each of `num_phi` convs, computed with the official expressions."""
    K = num_phi
    if K == 4:
        return np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
    return np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def phi_indices(num_scales: int, num_phi: int) -> list[int]:
    """Index of the phi conv used by each of `num_scales` scales (nearest tick to k / (K - 1), first on ties).

    With a single scale the official division by K - 1 = 0 would fail; position 0.0 is used instead.
    """
    ticks = phi_ticks(num_phi)
    out = []
    for k in range(num_scales):
        at = k / (num_scales - 1) if num_scales > 1 else 0.0  # Python float, as official `si / (SN - 1)`
        out.append(int(np.argmin(np.abs(ticks - at))))
    return out


def build_quant_resi(channels: int, quant_resi: float, share_quant_resi: int, num_scales: int,
                     default_qresi_counts: int = 0) -> tuple[nn.Module, int]:
    """Build the phi container with the official layout; returns (container, number of phi convs).

    A |quant_resi| <= 1e-6 makes every phi an Identity (no parameters), as official.
    """
    if share_quant_resi < 0:
        raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")

    def make() -> nn.Module:
        return Phi(channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

    if share_quant_resi == 0:
        n = default_qresi_counts or num_scales
        return nn.ModuleList([make() for _ in range(n)]), n
    if share_quant_resi == 1:
        shared = nn.Module()
        shared.qresi = make()
        return shared, 1
    partial = nn.Module()
    partial.qresi_ls = nn.ModuleList([make() for _ in range(share_quant_resi)])
    return partial, share_quant_resi


def phi_modules(container: nn.Module) -> list[nn.Module]:
    """The phi convs of a container built by `build_quant_resi`, in tick order."""
    if isinstance(container, nn.ModuleList):
        return list(container)
    if hasattr(container, "qresi"):
        return [container.qresi]
    return list(container.qresi_ls)
