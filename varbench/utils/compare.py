"""How close two tensors are, one definition each: the parity scripts and the op tests measure with these.

Both compute in float64, so the measure adds no rounding of its own to the error it reports.
"""

from __future__ import annotations

import torch


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ||out - ref||_rms / ||ref||_rms (the denominator floored at 1e-30: an all-zero reference
    gives the absolute RMS error scaled up, never a division by zero)."""
    out, ref = out.double(), ref.double()
    return ((out - ref).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()


def rel_max(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative max error max|out - ref| / max|ref|: the worst element, on the reference's scale."""
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max()).item()
