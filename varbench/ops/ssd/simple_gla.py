"""Mamba-2's SSD scan as fla's simple gated linear attention (`chunk_simple_gla`), behind `ssd_scan_ref`'s signature.

Per head, SSD is h_t = exp(dt_t A) h_(t-1) + (dt_t x_t) B_t^T and y_t = h_t C_t + D x_t: a linear attention with a
scalar decay per head and token. That is fla's simple GLA with q = C, k = B (each group's over its heads),
v = dt x, log decay g = dt A and scale 1; fla's state is (N, P) per head where mamba_ssm's is (P, N). Its backward
runs four kernels where mamba_ssm's runs about ten (`benchmarks/ssd_kernels.py` times both). The element-wise
mapping is plain torch, for Inductor to fuse with the projections around it; fla runs in its own 64-token chunks.

Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor

FLA_CHUNK = 64  # the chunk length fla's chunk_simple_gla runs


def _fla_simple_gla(q, k, v, g, initial_state):
    from varbench.ops.linear_rnn.kernel import fla_call
    return fla_call("chunk_simple_gla", q, k, v, g=g, initial_state=initial_state, scale=1.0,
                    output_final_state=True)


def ssd_scan_simple_gla(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                        initial_state: Optional[Tensor] = None, chunk_size: int = FLA_CHUNK,
                        dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
                        gla: Callable = _fla_simple_gla) -> tuple[Tensor, Tensor]:
    """`ssd_scan_ref` through fla's `chunk_simple_gla` (CUDA only; `gla` stands in for it in the CPU tests).

    Args:
        x, dt, A, B, C, D, initial_state, dt_bias, dt_softplus: as in `ssd_scan_ref`.
        chunk_size (int, Optional): unused: fla runs in chunks of `FLA_CHUNK` (the result does not depend on it).
        gla (Callable, Optional): (q, k, v, g, initial_state) -> (o, final state), fla's layouts.

    Returns:
        y (B, L, H, P) in x's dtype and the final state (B, H, P, N) in fp32.
    """
    del chunk_size
    heads = x.shape[2]
    dt_BLH = dt.float() + dt_bias if dt_bias is not None else dt.float()
    dt_BLH = F.softplus(dt_BLH) if dt_softplus else dt_BLH
    q_BLHN, k_BLHN = (_over_heads(t, heads) for t in (C, B))
    v_BLHP = (x * dt_BLH.unsqueeze(-1)).to(x.dtype)
    state0_BHNP = None if initial_state is None else initial_state.float().transpose(-1, -2)
    o_BLHP, final_BHNP = gla(q_BLHN, k_BLHN, v_BLHP, dt_BLH * A, state0_BHNP)
    y_BLHP = o_BLHP.float()
    if D is not None:
        y_BLHP = y_BLHP + x.float() * (D.view(heads, 1) if D.dim() == 1 else D)
    return y_BLHP.to(x.dtype), final_BHNP.float().transpose(-1, -2).contiguous()


def _over_heads(t_BLGN: Tensor, heads: int) -> Tensor:
    """A group's B or C for each of its heads (heads are grouped contiguously, as in mamba_ssm)."""
    groups = t_BLGN.shape[2]
    if groups == 1:
        return t_BLGN.expand(-1, -1, heads, -1)
    return t_BLGN.repeat_interleave(heads // groups, dim=2)
